//! Issue 12: chd speaks RESP. Real Redis tools (redis-cli, redis-benchmark, the `redis` Python
//! client) against a real chd; malformed input gets Redis's protocol errors and a closed
//! connection. A test whose tool is missing says so and passes (CI installs them all).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn resp_socket(chd: &Chd) -> PathBuf {
    // The default: `<socket stem>-resp.sock` next to chd's socket.
    chd.socket.with_file_name("chd-resp.sock")
}

fn have(tool: &str, arg: &str) -> bool {
    let ok =
        Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: {tool} is not installed (CI installs it: see .ci/run)");
    }
    ok
}

fn cli(sock: &Path, args: &[&str]) -> String {
    let out = Command::new("redis-cli").arg("-s").arg(sock).args(args).output().unwrap();
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim_end_matches('\n').to_string()
}

/// One raw connection: sends `bytes`, returns everything chd sent until it closed.
fn raw(sock: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("chd closes the connection");
    out
}

fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[test]
fn redis_cli_commands_pipe_load_and_scan() {
    if !have("redis-cli", "--version") {
        return;
    }
    let chd = Chd::start(&[]);
    let s = resp_socket(&chd);
    assert_eq!(cli(&s, &["PING"]), "PONG");
    assert_eq!(cli(&s, &["SET", "greeting", "hello"]), "OK");
    assert_eq!(cli(&s, &["GET", "greeting"]), "hello");
    assert_eq!(cli(&s, &["SET", "greeting", "x", "NX"]), "");
    assert_eq!(cli(&s, &["SET", "greeting", "bye", "XX", "GET"]), "hello");
    assert_eq!(cli(&s, &["SETNX", "greeting", "x"]), "0");
    assert_eq!(cli(&s, &["GETSET", "greeting", "hi"]), "bye");
    assert_eq!(cli(&s, &["INCR", "n"]), "1");
    assert_eq!(cli(&s, &["INCRBY", "n", "10"]), "11");
    assert_eq!(cli(&s, &["DECRBY", "n", "2"]), "9");
    assert_eq!(cli(&s, &["INCR", "greeting"]), "ERR value is not an integer or out of range");
    assert_eq!(cli(&s, &["INCRBYFLOAT", "f", "10.5"]), "10.5");
    assert_eq!(cli(&s, &["INCRBYFLOAT", "f", "0.1"]), "10.6");
    assert_eq!(cli(&s, &["INCRBYFLOAT", "f", "x"]), "ERR value is not a valid float");
    assert_eq!(cli(&s, &["SET", "big", "9223372036854775807"]), "OK");
    assert_eq!(cli(&s, &["INCR", "big"]), "ERR increment or decrement would overflow");
    assert_eq!(cli(&s, &["MSET", "a", "1", "b", "2"]), "OK");
    assert_eq!(cli(&s, &["MGET", "a", "nope", "b"]), "1\n\n2");
    assert_eq!(cli(&s, &["MSETNX", "a", "x", "c", "3"]), "0");
    assert_eq!(cli(&s, &["MSETNX", "c", "3", "d", "4"]), "1");
    assert_eq!(cli(&s, &["EXISTS", "a", "c", "nope", "a"]), "3");
    assert_eq!(cli(&s, &["DEL", "a", "nope"]), "1");
    assert_eq!(cli(&s, &["TYPE", "b"]), "string");
    assert_eq!(cli(&s, &["TYPE", "a"]), "none");
    assert_eq!(cli(&s, &["TTL", "b"]), "-1");
    assert_eq!(cli(&s, &["PTTL", "a"]), "-2");
    assert_eq!(cli(&s, &["APPEND", "b", "xyz"]), "4");
    assert_eq!(cli(&s, &["GETRANGE", "b", "1", "-1"]), "xyz");
    assert_eq!(cli(&s, &["SETRANGE", "b", "1", "AB"]), "4");
    assert_eq!(cli(&s, &["GET", "b"]), "2ABz");
    assert_eq!(cli(&s, &["STRLEN", "b"]), "4");
    assert_eq!(cli(&s, &["GETDEL", "b"]), "2ABz");
    assert_eq!(cli(&s, &["GET", "b"]), "");
    // Redis's texts for errors that clients and people parse.
    assert_eq!(cli(&s, &["GET"]), "ERR wrong number of arguments for 'get' command");
    assert_eq!(cli(&s, &["FOO", "a", "b"]), "ERR unknown command 'FOO', with args beginning with: 'a' 'b' ");
    assert_eq!(cli(&s, &["SET", "k", "v", "BOGUS"]), "ERR syntax error");
    assert_eq!(cli(&s, &["SELECT", "0"]), "OK");
    assert_eq!(cli(&s, &["SELECT", "1"]), "ERR DB index is out of range");
    assert!(cli(&s, &["SET", "k", "v", "EX", "10"]).contains("does not support key expiry"));
    for refused in ["MULTI", "RENAME", "LPUSH", "HSET", "SADD", "SUBSCRIBE", "EVAL"] {
        let out = cli(&s, &[refused, "x", "y", "z"]);
        assert!(out.contains("is not supported by chd"), "{refused}: {out}");
    }
    assert!(cli(&s, &["INFO"]).contains("# chd"));
    assert!(cli(&s, &["INFO", "chd"]).contains("node0:state=up"));
    assert_eq!(cli(&s, &["CONFIG", "GET", "replicas"]), "replicas\n3");
    assert!(cli(&s, &["COMMAND", "COUNT"]).parse::<u32>().unwrap() > 30);
    assert_eq!(cli(&s, &["CLIENT", "SETNAME", "me"]), "OK");

    // Bulk load with --pipe, then list it with --scan.
    let mut input = Vec::new();
    for i in 0..1000 {
        input.extend(resp_command(&[b"SET", format!("bulk:{i}").as_bytes(), format!("v{i}").as_bytes()]));
    }
    let mut child = Command::new("redis-cli")
        .arg("-s")
        .arg(&s)
        .arg("--pipe")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("errors: 0, replies: 1000"), "{text}");
    let mut scanned: Vec<String> = cli(&s, &["--scan", "--pattern", "bulk:*"]).lines().map(String::from).collect();
    scanned.sort();
    let mut want: Vec<String> = (0..1000).map(|i| format!("bulk:{i}")).collect();
    want.sort();
    assert_eq!(scanned, want);
    // KEYS and DBSIZE agree on everything that exists.
    let all = cli(&s, &["KEYS", "*"]).lines().count();
    assert_eq!(cli(&s, &["DBSIZE"]), all.to_string());
    assert_eq!(cli(&s, &["KEYS", "bulk:99*"]).lines().count(), 11);
    assert!(!cli(&s, &["RANDOMKEY"]).is_empty());
}

#[test]
fn redis_benchmark_runs_without_errors() {
    if !have("redis-benchmark", "--version") {
        return;
    }
    let chd = Chd::start(&[]);
    let s = resp_socket(&chd);
    let out: Output = Command::new("redis-benchmark")
        .arg("-s")
        .arg(&s)
        .args(["-t", "set,get,incr,mset", "-n", "2000", "-r", "1000", "-q"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    // Progress lines are separated by \r; the results are the lines with "requests per second".
    let results: Vec<&str> = text.split(['\r', '\n']).filter(|l| l.contains("requests per second")).collect();
    for t in ["SET", "GET", "INCR", "MSET"] {
        assert!(results.iter().any(|l| l.trim_start().starts_with(t)), "no {t} result in:\n{text}");
    }
    assert!(!text.contains("ERR") && !text.to_lowercase().contains("error"), "{text}");
    eprintln!("{}", results.join("\n"));
}

#[test]
fn redis_py_pipelines_scan_iter_and_resp3() {
    let ok = Command::new("python3").args(["-c", "import redis"]).status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: python3 with the redis package is not installed (CI: pip install redis)");
        return;
    }
    let chd = Chd::start(&[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/resp_client.py");
    let out = Command::new("python3").arg(script).arg(resp_socket(&chd)).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn values_cross_between_resp_and_chctl_byte_for_byte() {
    let chd = Chd::start(&[]);
    let s = resp_socket(&chd);
    let value: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let reply = raw(&s, &[resp_command(&[b"SET", b"bin", &value]), resp_command(&[b"QUIT"])].concat());
    assert_eq!(reply, b"+OK\r\n+OK\r\n");
    assert_eq!(chd.get("bin"), Some(value.clone()));
    // And the other way.
    let rev: Vec<u8> = value.iter().rev().copied().collect();
    let out = chd.ctl_stdin(&["set", "bin2", "-"], &rev);
    assert!(out.status.success());
    let reply = raw(&s, &[resp_command(&[b"GET", b"bin2"]), resp_command(&[b"QUIT"])].concat());
    let mut want = format!("${}\r\n", rev.len()).into_bytes();
    want.extend_from_slice(&rev);
    want.extend_from_slice(b"\r\n+OK\r\n");
    assert!(reply == want, "GET through RESP differs from what chctl stored");
    // chctl sees keys set through RESP, and not deleted ones.
    raw(&s, &[resp_command(&[b"DEL", b"bin"]), resp_command(&[b"QUIT"])].concat());
    let keys = chd.ctl(&["keys"]);
    assert_eq!(String::from_utf8_lossy(&keys.stdout), "bin2\n");
    assert!(chd.ctl(&["exists", "bin2"]).status.success());
    assert_eq!(chd.ctl(&["exists", "bin"]).status.code(), Some(1));
    // Prefix and limit, over keys spread across partitions.
    let mut c = chd.client();
    c.set_many((0..300).map(|i| (format!("p:{i}"), "v".to_string())));
    c.set_many((0..50).map(|i| (format!("q:{i}"), "v".to_string())));
    let listed = |args: &[&str]| -> Vec<String> {
        let out = chd.ctl(args);
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect()
    };
    let mut p = listed(&["keys", "--prefix", "p:"]);
    p.sort();
    let mut want: Vec<String> = (0..300).map(|i| format!("p:{i}")).collect();
    want.sort();
    assert_eq!(p, want);
    let some = listed(&["keys", "--prefix", "q:", "--limit", "7"]);
    assert_eq!(some.len(), 7);
    assert!(some.iter().all(|k| k.starts_with("q:")));
    assert_eq!(listed(&["keys"]).len(), 351);
}

#[test]
fn malformed_resp_gets_redis_protocol_errors_and_a_closed_connection() {
    let chd = Chd::start(&[]);
    let s = resp_socket(&chd);
    let cases: &[(&[u8], &str)] = &[
        (b"*1\r\n$1073741824\r\n", "-ERR Protocol error: invalid bulk length\r\n"),
        (b"*1\r\n$-5\r\n", "-ERR Protocol error: invalid bulk length\r\n"),
        (b"*x\r\n", "-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*4294967296\r\n", "-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*1\r\n*1\r\n$4\r\nPING\r\n", "-ERR Protocol error: expected '$', got '*'\r\n"),
        (b"*2\r\n$3\r\nGET\r\n:1\r\n", "-ERR Protocol error: expected '$', got ':'\r\n"),
        (b"SET \"unterminated\r\n", "-ERR Protocol error: unbalanced quotes in request\r\n"),
    ];
    for (input, want) in cases {
        let got = raw(&s, input);
        assert_eq!(String::from_utf8_lossy(&got), *want, "input {:?}", String::from_utf8_lossy(input));
    }
    // An unterminated line longer than 64 KiB is refused, not buffered on.
    let got = raw(&s, &vec![b'a'; 70 * 1024]);
    assert_eq!(String::from_utf8_lossy(&got), "-ERR Protocol error: too big inline request\r\n");
    let mut long = b"*1\r\n$".to_vec();
    long.extend(vec![b'1'; 70 * 1024]);
    assert_eq!(String::from_utf8_lossy(&raw(&s, &long)), "-ERR Protocol error: too big bulk count string\r\n");
    // Requests before the bad one are answered first, in order.
    let got = raw(&s, b"PING\r\n*1\r\n$4\r\nPING\r\n*1\r\n$99999999999\r\n");
    assert_eq!(String::from_utf8_lossy(&got), "+PONG\r\n+PONG\r\n-ERR Protocol error: invalid bulk length\r\n");
    // chd is unharmed.
    assert_eq!(raw(&s, b"PING\r\nQUIT\r\n"), b"+PONG\r\n+OK\r\n");
}

#[test]
fn deep_pipelines_are_answered_in_order() {
    let chd = Chd::start(&[]);
    let s = resp_socket(&chd);
    let n = 3000;
    let mut stream = UnixStream::connect(&s).unwrap();
    let mut reader = stream.try_clone().unwrap();
    // The whole pipeline is written before any reply is read, from another thread: chd must
    // keep reading (within its in-flight bounds) and keep the replies in request order.
    let writer = std::thread::spawn(move || {
        let mut buf = Vec::new();
        for i in 0..n {
            buf.extend(resp_command(&[b"INCR", b"ctr"]));
            if i % 3 == 0 {
                buf.extend(resp_command(&[b"ECHO", format!("e{i}").as_bytes()]));
            }
        }
        buf.extend(resp_command(&[b"QUIT"]));
        stream.write_all(&buf).unwrap();
    });
    let mut out = Vec::new();
    reader.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    reader.read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    let mut want = String::new();
    for i in 0..n {
        want += &format!(":{}\r\n", i + 1);
        if i % 3 == 0 {
            let e = format!("e{i}");
            want += &format!("${}\r\n{e}\r\n", e.len());
        }
    }
    want += "+OK\r\n";
    assert!(String::from_utf8_lossy(&out) == want, "replies out of order or missing");
}

/// Regression (found by chd-difftest): a key-listing command ran as a task while the next
/// requests of the pipeline were read and run, so a DEL sent after KEYS or DBSIZE could remove
/// a key before the listing saw it. Redis answers each command as if the later ones had not
/// been sent.
#[test]
fn a_listing_is_not_changed_by_later_requests_of_the_pipeline() {
    let chd = Chd::start(&[]);
    let s = resp_socket(&chd);
    for round in 0..5 {
        let mut bytes = Vec::new();
        let keys: Vec<String> = (0..8).map(|i| format!("r{round}:{i}")).collect();
        for k in &keys {
            bytes.extend(resp_command(&[b"SET", k.as_bytes(), b"v"]));
        }
        bytes.extend(resp_command(&[b"DBSIZE"]));
        bytes.extend(resp_command(&[b"KEYS", format!("r{round}:*").as_bytes()]));
        for k in &keys {
            bytes.extend(resp_command(&[b"DEL", k.as_bytes()]));
        }
        bytes.extend(resp_command(&[b"QUIT"]));
        let out = raw(&s, &bytes);
        let text = String::from_utf8_lossy(&out);
        let after_sets = text.strip_prefix(&"+OK\r\n".repeat(8)).expect("8 SETs answered OK");
        assert!(after_sets.starts_with(":8\r\n*8\r\n"), "round {round}: DBSIZE and KEYS must see all 8 keys: {text:?}");
        assert!(text.ends_with(&format!("{}+OK\r\n", ":1\r\n".repeat(8))), "{text:?}");
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_client_that_does_not_read_is_slowed_not_buffered() {
    let chd = Chd::start(&[]);
    let s = resp_socket(&chd);
    let before = rss_kib(chd.pid());
    // 160 MiB of pipelined requests whose replies are as large; nothing is read for a while.
    let (n, size) = (40_000usize, 4096usize);
    let mut stream = UnixStream::connect(&s).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent2 = sent.clone();
    let writer = std::thread::spawn(move || {
        let one = resp_command(&[b"ECHO", &vec![b'x'; size]]);
        for _ in 0..n {
            stream.write_all(&one).unwrap();
            sent2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        stream.write_all(&resp_command(&[b"QUIT"])).unwrap();
    });
    // The writer stalls once chd stops reading: its bounds plus the socket buffers.
    let mut last = 0;
    wait_for("the client's writes to stall", Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = sent.load(std::sync::atomic::Ordering::SeqCst);
        let stalled = now == last && now > 0;
        last = now;
        stalled
    });
    assert!(last < n / 4, "chd took {last} of {n} requests without anyone reading a reply");
    let grown = rss_kib(chd.pid()).saturating_sub(before);
    eprintln!("stalled after {last} of {n} requests; chd grew by {grown} KiB");
    assert!(grown < 64 * 1024, "chd grew by {grown} KiB for one client that does not read");
    // Reading resumes the flow; every reply arrives.
    let mut total = 0usize;
    let mut buf = vec![0; 1 << 20];
    loop {
        let k = reader.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        total += k;
    }
    writer.join().unwrap();
    let reply_len = format!("${size}\r\n").len() + size + 2;
    assert_eq!(total, n * reply_len + 5);
}

#[test]
fn resp3_after_hello_3() {
    let chd = Chd::start(&[]);
    let s = resp_socket(&chd);
    let got = raw(&s, b"HELLO 3\r\nGET nope\r\nHELLO 2\r\nGET nope\r\nHELLO 4\r\nQUIT\r\n");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("%7\r\n$6\r\nserver\r\n$3\r\nchd\r\n"), "{text}");
    assert!(text.contains("$5\r\nproto\r\n:3\r\n"), "{text}");
    assert!(text.contains("\r\n_\r\n*14\r\n"), "RESP3 null, then HELLO 2's flat map: {text}");
    assert!(text.ends_with("$-1\r\n-NOPROTO unsupported protocol version\r\n+OK\r\n"), "{text}");
}

#[test]
fn tcp_needs_auth_and_a_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chd.toml");
    std::fs::write(&config, "requirepass = \"s3cret\"\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = |extra: &[&str]| {
        let mut c = Command::new(CHD);
        c.arg("--config").arg(&config).arg("--data-dir").arg(dir.path().join("data"));
        c.arg("--socket").arg(dir.path().join("chd.sock")).args(extra);
        c
    };
    // A non-loopback address is refused before anything starts.
    let out = base(&["--resp-listen", "0.0.0.0:1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    let addr = format!("127.0.0.1:{port}");
    let mut child = base(&["--resp-listen", &addr]).stderr(Stdio::null()).spawn().unwrap();
    let talk = |bytes: &[u8]| -> Option<String> {
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).ok()?;
        Some(String::from_utf8_lossy(&out).into_owned())
    };
    wait_for("the TCP endpoint", Duration::from_secs(60), || talk(b"QUIT\r\n").is_some());
    let got = talk(b"GET k\r\nAUTH wrong\r\nAUTH s3cret\r\nSET k v\r\nGET k\r\nSHUTDOWN\r\nQUIT\r\n").unwrap();
    let lines: Vec<&str> = got.split("\r\n").collect();
    assert_eq!(lines[0], "-NOAUTH Authentication required.");
    assert_eq!(lines[1], "-WRONGPASS invalid username-password pair or user is disabled.");
    assert_eq!(&lines[2..6], ["+OK", "+OK", "$1", "v"]);
    assert!(lines[6].starts_with("-ERR SHUTDOWN is only accepted on chd's Unix socket"), "{got}");
    // Before AUTH a request stays small, as in Redis.
    let got = talk(format!("*2\r\n$3\r\nGET\r\n${}\r\n", 1 << 20).as_bytes()).unwrap();
    assert_eq!(got, "-ERR Protocol error: unauthenticated bulk length\r\n");
    // A client that never authenticates is closed after 10 s, so idle strangers cannot hold
    // the endpoint's connection slots; one that did authenticate may stay idle.
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut authed = std::net::TcpStream::connect(&addr).unwrap();
    authed.write_all(b"AUTH s3cret\r\n").unwrap();
    let started = std::time::Instant::now();
    assert_eq!(idle.read(&mut [0; 16]).unwrap(), 0, "closed without a word");
    assert!(started.elapsed() >= Duration::from_secs(8), "{:?}", started.elapsed());
    authed.write_all(b"PING\r\n").unwrap();
    let mut reply = [0; 12];
    authed.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    authed.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"+OK\r\n+PONG\r\n");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn shutdown_over_the_unix_socket_stops_chd_gracefully() {
    let mut chd = Chd::start(&[]);
    let s = resp_socket(&chd);
    let _ = raw(&s, b"SET k v\r\nSHUTDOWN\r\n");
    let status = chd.child.as_mut().unwrap().wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!s.exists(), "the RESP socket is removed on a graceful stop");
    chd.child = None;
    chd.restart();
    assert_eq!(chd.get("k").as_deref(), Some(&b"v"[..]));
}

#[test]
fn the_resp_socket_checks_peer_credentials_like_the_main_socket() {
    // Needs root to connect as another user; CI runs the suite as root once.
    if nix_uid() != 0 || !have("setpriv", "--version") || !have("redis-cli", "--version") {
        eprintln!("SKIPPED: needs root, setpriv and redis-cli");
        return;
    }
    // A socket mode that lets anyone reach the socket, so that only the credential check stands.
    let chd = Chd::start(&["--socket-mode", "0666"]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(chd.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "redis-cli", "-s"])
        .arg(resp_socket(&chd))
        .args(["SET", "k", "v"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("permission denied: uid 65534"), "{text}");
    assert_eq!(chd.get("k"), None);
}

fn nix_uid() -> u32 {
    // SAFETY: getuid(2) cannot fail.
    unsafe { libc::getuid() }
}
