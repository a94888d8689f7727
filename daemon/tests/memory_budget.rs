//! The memory budget as a user meets it: past `max_memory` new keys are refused with Redis's
//! `-OOM` error (chctl: exit 4), while overwrites, deletes and reads go on and every process
//! stays up; `chctl status` and INFO show the budget and what is used.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::Chd;

const OOM: &str = "-OOM command not allowed when used memory > 'maxmemory'.";

fn set_command(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = b"*3\r\n$3\r\nSET\r\n".to_vec();
    for a in [key, value] {
        out.extend(format!("${}\r\n", a.len()).bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Sends `commands` on one connection, pipelined, and returns one reply line each.
fn pipeline(sock: &std::path::Path, commands: &[Vec<u8>]) -> Vec<String> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&commands.concat()).unwrap();
    let mut r = BufReader::new(s);
    (0..commands.len())
        .map(|_| {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            line.trim_end().to_string()
        })
        .collect()
}

/// INFO's memory section, as its bulk reply's text.
fn info_memory(sock: &std::path::Path) -> String {
    use std::io::Read;
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nmemory\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut header = String::new();
    r.read_line(&mut header).unwrap();
    let len: usize = header.trim_end().strip_prefix('$').expect("a bulk reply").parse().unwrap();
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

#[test]
fn past_the_budget_new_keys_are_refused_and_everything_else_goes_on() {
    let args = ["--nodes", "3", "--read-cache-mib", "0"];
    // What chd holds with nothing stored, to set a budget that a few thousand keys exceed.
    // Measured after a restart, as the budget's own start will be: a worker that loads its
    // saved index holds more than one that started empty.
    let mut chd = Chd::start(&[&args[..], &["--max-memory", "0"]].concat());
    assert!(chd.term().success());
    chd.restart();
    let idle = chd.status()["memory_used"].as_u64().unwrap();
    assert!(idle > 0);
    assert!(chd.term().success());
    let budget = (idle + (32 << 20)).max(64 << 20);
    chd.args = [&args[..], &["--max-memory", &format!("{budget}B")]].concat().iter().map(|s| s.to_string()).collect();
    chd.restart();
    assert_eq!(chd.status()["memory_budget"].as_u64(), Some(budget));

    let sock = chd.socket.with_file_name("chd-resp.sock");
    assert_eq!(pipeline(&sock, &[set_command(b"first", b"1")]), ["+OK"]);
    // Long keys: each costs its bytes in three workers' indexes.
    let key = |i: u64| format!("{i:0>1000}").into_bytes();
    let (mut written, start) = (0u64, Instant::now());
    let refused = loop {
        assert!(start.elapsed() < Duration::from_secs(120), "{written} keys written, never refused");
        let batch: Vec<Vec<u8>> = (written..written + 200).map(|i| set_command(&key(i), b"v")).collect();
        let replies = pipeline(&sock, &batch);
        if let Some(at) = replies.iter().position(|r| r != "+OK") {
            assert_eq!(replies[at], OOM, "after {} keys", written + at as u64);
            break written + at as u64;
        }
        written += 200;
    };
    let status = chd.status();
    assert!(status["memory_used"].as_u64().unwrap() >= budget, "{status}");
    assert!(status["nodes"].as_array().unwrap().iter().all(|n| n["memory"].as_u64().is_some_and(|m| m > 0)));

    // Still full: a new key is refused on both sockets, an existing one is overwritten and
    // deleted, reads answer, and no process was lost.
    let pids = chd.worker_pids();
    assert_eq!(pipeline(&sock, &[set_command(b"brand-new", b"x")]), [OOM]);
    let out = chd.ctl(&["set", "brand-new-too", "x"]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of memory"));
    assert_eq!(pipeline(&sock, &[set_command(b"first", b"2")]), ["+OK"]);
    assert_eq!(chd.get("first").as_deref(), Some(&b"2"[..]));
    assert_eq!(pipeline(&sock, &[set_command(&key(0), b"again")]), ["+OK"]);
    assert_eq!(pipeline(&sock, &[b"*2\r\n$3\r\nDEL\r\n$5\r\nfirst\r\n".to_vec()]), [":1"]);
    assert_eq!(chd.get("first"), None);
    assert!(refused > 0);
    let text = info_memory(&sock);
    assert!(text.contains(&format!("maxmemory:{budget}\r\n")), "{text}");
    assert!(text.contains("maxmemory_policy:noeviction"), "{text}");
    assert_eq!(chd.worker_pids(), pids);
    assert!(common::alive(chd.pid()));
}

#[test]
fn a_budget_below_the_minimum_is_refused_at_start() {
    let chd = Chd::unstarted(&["--max-memory", "1MiB"]);
    let out = chd.command().arg("--check-config").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_memory: 1MiB is below the smallest budget, 64MiB"), "{err}");
}
