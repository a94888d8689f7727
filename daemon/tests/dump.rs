//! `chctl dump`, `chctl restore` and `chctl quarantine` against a real chd (and a real
//! redis-server for `dump --format resp`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chd_data::proto::{Request, Response};
use common::{chctl_path, wait_for, Chd};

/// The keys and values every test stores: binary keys (NUL, 0xff, CR LF, bytes that look like
/// RESP), an empty value, a large value (stored in a value file), and many small ones.
fn dataset() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut d: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (vec![0, 255, b'\r', b'\n', 1], vec![0, 1, 2, 255, b'\r', b'\n']),
        (b"*3\r\n$3\r\nSET\r\n".to_vec(), b"$-1\r\n".to_vec()),
        (b"empty".to_vec(), Vec::new()),
        (b"large".to_vec(), (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect()),
    ];
    d.extend((0..300u32).map(|i| (format!("p:{i}").into_bytes(), format!("value {i}").into_bytes())));
    d.extend((0..50u32).map(|i| (format!("q:{i}").into_bytes(), vec![i as u8; 5000 + i as usize])));
    d
}

fn store(chd: &Chd, data: &[(Vec<u8>, Vec<u8>)]) {
    let mut c = chd.client();
    for (k, v) in data {
        assert_eq!(c.call(Request::Set { key: k.clone(), value: v.clone() }).unwrap(), Ok(Response::Done));
    }
}

/// Decodes a chd-format dump (the format documented in chctl's `dump` module).
fn decode(mut b: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    assert_eq!(&b[..12], b"CHD-DUMP\0\0\0\x01", "header");
    b = &b[12..];
    let mut out = Vec::new();
    let take = |b: &mut &[u8], n: usize| {
        let (h, t) = b.split_at(n);
        *b = t;
        h.to_vec()
    };
    loop {
        match take(&mut b, 1)[0] {
            1 => {
                let kl = u32::from_be_bytes(take(&mut b, 4).try_into().unwrap()) as usize;
                let k = take(&mut b, kl);
                let vl = u32::from_be_bytes(take(&mut b, 4).try_into().unwrap()) as usize;
                out.push((k, take(&mut b, vl)));
            }
            0 => {
                assert_eq!(u64::from_be_bytes(take(&mut b, 8).try_into().unwrap()), out.len() as u64);
                assert!(b.is_empty());
                return out;
            }
            t => panic!("tag {t}"),
        }
    }
}

/// `chctl ARGS > file`; returns the file's bytes.
fn ctl_to_file(chd: &Chd, args: &[&str], file: &Path) -> Vec<u8> {
    let out = std::fs::File::create(file).unwrap();
    let st = Command::new(chctl_path())
        .arg("--socket")
        .arg(&chd.socket)
        .args(args)
        .stdout(out)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(st.status.success(), "chctl {args:?}: {}", String::from_utf8_lossy(&st.stderr));
    std::fs::read(file).unwrap()
}

/// Asserts two key sets are equal, naming the first difference (values may be megabytes).
fn assert_same(got: Vec<(Vec<u8>, Vec<u8>)>, want: Vec<(Vec<u8>, Vec<u8>)>, what: &str) {
    let (mut got, mut want) = (got, want);
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len(), "{what}: key count");
    for ((gk, gv), (wk, wv)) in got.iter().zip(&want) {
        assert_eq!(gk, wk, "{what}: keys differ");
        assert!(gv == wv, "{what}: value of {gk:?}: {} bytes, want {} bytes", gv.len(), wv.len());
    }
}

#[test]
fn dump_and_restore_round_trip_into_a_fresh_chd_without_overwriting_newer_data() {
    let a = Chd::start(&[]);
    let data = dataset();
    store(&a, &data);
    a.set("deleted", "gone");
    assert!(a.ctl(&["del", "deleted"]).status.success());

    let file = a.dir.path().join("dump");
    let dumped = ctl_to_file(&a, &["dump"], &file);
    assert_same(decode(&dumped), data.clone(), "the dump holds exactly the live keys");

    let prefixed = ctl_to_file(&a, &["dump", "--prefix", "p:"], &a.dir.path().join("p"));
    let want: Vec<_> = data.iter().filter(|(k, _)| k.starts_with(b"p:")).cloned().collect();
    assert_same(decode(&prefixed), want, "--prefix p:");

    // A fresh chd, where one key was already written after the dump: it is newer and kept.
    let b = Chd::start(&[]);
    b.set("p:7", "newer");
    // A key deleted here has no value now: the dump's value is restored.
    b.set("p:8", "deleted later");
    assert!(b.ctl(&["del", "p:8"]).status.success());
    let out = b.ctl(&["restore", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("restored {} keys", data.len() - 1)), "{said}");
    assert!(said.contains("kept 1 key that has a value") && said.contains("p:7"), "{said}");
    assert_eq!(b.get("p:7").as_deref(), Some(&b"newer"[..]));
    assert_eq!(b.get("p:8").as_deref(), Some(&b"value 8"[..]));
    let mut want = data.clone();
    want.iter_mut().find(|(k, _)| k == b"p:7").unwrap().1 = b"newer".to_vec();
    let restored = ctl_to_file(&b, &["dump"], &b.dir.path().join("dump"));
    assert_same(decode(&restored), want, "restored without --force");

    // --force replaces it, from stdin; then both chds hold byte-identical dumps (same order:
    // partitions, then keys ascending).
    let out = b.ctl_stdin(&["restore", "--force"], &dumped);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(b.get("p:7").as_deref(), Some(&b"value 7"[..]));
    assert!(ctl_to_file(&b, &["dump"], &b.dir.path().join("dump")) == dumped, "the restored chd dumps the same");

    // A dump cut short is reported as such: exit 6, not a silent partial success.
    let c = Chd::start(&[]);
    let out = c.ctl_stdin(&["restore"], &dumped[..dumped.len() - 3]);
    assert_eq!(out.status.code(), Some(6));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("truncated") && err.contains(&format!("the {} keys before it were restored", data.len())),
        "{err}"
    );
    let out = c.ctl_stdin(&["restore"], b"not a dump at all");
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a chd dump"));
}

/// A minimal RESP client: one command, one reply (bulk, integer or simple string).
struct Resp(BufReader<UnixStream>);

impl Resp {
    fn call(&mut self, args: &[&[u8]]) -> Option<Vec<u8>> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend(format!("${}\r\n", a.len()).into_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        self.0.get_mut().write_all(&req).unwrap();
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        let body = line.trim_end();
        match body.as_bytes()[0] {
            b'$' if body == "$-1" => None,
            b'$' => {
                let mut v = vec![0; body[1..].parse::<usize>().unwrap() + 2];
                self.0.read_exact(&mut v).unwrap();
                v.truncate(v.len() - 2);
                Some(v)
            }
            b':' | b'+' => Some(body.as_bytes()[1..].to_vec()),
            _ => panic!("redis answered {body}"),
        }
    }
}

struct Redis(std::process::Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dump_as_resp_loads_into_a_real_redis_with_every_key_equal() {
    if Command::new("redis-server").arg("--version").output().is_err() {
        eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server; CI installs it)");
        return;
    }
    let chd = Chd::start(&[]);
    let data = dataset();
    store(&chd, &data);

    let sock = chd.dir.path().join("redis.sock");
    let _redis = Redis(
        Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&sock)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(chd.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("redis-server's socket", Duration::from_secs(10), || UnixStream::connect(&sock).is_ok());

    let mut dump = Command::new(chctl_path())
        .arg("--socket")
        .arg(&chd.socket)
        .args(["dump", "--format", "resp"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = Command::new("redis-cli")
        .arg("-s")
        .arg(&sock)
        .arg("--pipe")
        .stdin(dump.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(dump.wait().unwrap().success());
    let said = String::from_utf8_lossy(&pipe.stdout);
    assert!(pipe.status.success(), "redis-cli --pipe: {said} {}", String::from_utf8_lossy(&pipe.stderr));
    assert!(said.contains(&format!("errors: 0, replies: {}", data.len())), "{said}");

    let mut redis = Resp(BufReader::new(UnixStream::connect(&sock).unwrap()));
    assert_eq!(redis.call(&[b"DBSIZE"]), Some(data.len().to_string().into_bytes()));
    for (k, v) in &data {
        let got = redis.call(&[b"GET", k]);
        assert!(got.as_ref() == Some(v), "key {k:?}: {:?} bytes in redis, {} in chd", got.map(|g| g.len()), v.len());
    }
}

#[test]
fn quarantine_lists_and_purges_only_what_is_redundant() {
    let chd = Chd::start(&[]);
    chd.set("k", "v");
    let q = chd.data.join("quarantine");
    let json = |args: &[&str]| -> serde_json::Value {
        let out = chd.ctl(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(json(&["quarantine", "list", "--json"])["entries"].as_array().unwrap().len(), 0);

    // A rebuild sets node 1's database aside; once node 1 is up again that copy is redundant.
    let out = chd.ctl(&["node", "rebuild", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    chd.wait_all_up(Duration::from_secs(60));
    // Beside it: a database of a node that left unconfirmed, and something chd did not make.
    std::fs::create_dir_all(q.join("node-99-1000")).unwrap();
    std::fs::create_dir_all(q.join("my-notes")).unwrap();

    let listed = json(&["quarantine", "list", "--json"]);
    let entries = listed["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{listed}");
    let rebuilt = entries.iter().find(|e| e["node"] == 1).expect("node 1's old database");
    assert!(rebuilt["bytes"].as_u64().unwrap() > 0);
    assert!(rebuilt["unsafe_because"].is_null(), "{rebuilt}");
    let name = rebuilt["name"].as_str().unwrap().to_string();
    let text = String::from_utf8_lossy(&chd.ctl(&["quarantine", "list"]).stdout).into_owned();
    assert!(text.contains(&name) && text.contains("only copy") && text.contains("unknown name"), "{text}");

    // Too young for a week: nothing goes.
    let purged = json(&["quarantine", "purge", "--older-than", "7d", "--json"]);
    assert!(purged["purged"].as_array().unwrap().is_empty());
    assert!(q.join(&name).exists());

    let purged = json(&["quarantine", "purge", "--older-than", "0", "--json"]);
    let gone: Vec<&str> = purged["purged"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(gone, [name.as_str()]);
    assert!(!q.join(&name).exists());
    assert!(q.join("node-99-1000").exists() && q.join("my-notes").exists(), "unsafe entries are kept");
    assert_eq!(chd.get("k").as_deref(), Some(&b"v"[..]));

    let out = chd.ctl(&["quarantine", "purge", "--older-than", "soon"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Sum of `tombstones=N` over chd's "purged tombstones" log lines.
fn purged_in_log(chd: &Chd) -> u64 {
    chd.log()
        .lines()
        .filter(|l| l.contains("purged tombstones"))
        .filter_map(|l| l.split("tombstones=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn tombstones_are_purged_once_every_replica_has_them_and_deleted_keys_stay_deleted() {
    let mut chd = Chd::start(&["--tombstone-grace", "0"]);
    let mut c = chd.client();
    c.set_many((0..40).map(|i| (format!("t:{i}"), format!("v{i}"))));
    for i in 0..20 {
        let r = c.call(Request::Del { key: format!("t:{i}").into_bytes() }).unwrap();
        assert_eq!(r, Ok(Response::Done));
    }
    // Every delete is on all 3 replicas (W=2 acknowledged, the third follows): 60 tombstones.
    wait_for("60 tombstones purged", Duration::from_secs(60), || purged_in_log(&chd) >= 60);
    assert_eq!(purged_in_log(&chd), 60, "only tombstones are purged, each once per replica");
    let check = |chd: &Chd| {
        for i in 0..40 {
            let want = (i >= 20).then(|| format!("v{i}").into_bytes());
            assert_eq!(chd.get(&format!("t:{i}")), want, "t:{i}");
        }
    };
    check(&chd);
    // Nothing comes back through repair or a restart.
    assert!(chd.ctl(&["repair"]).status.success());
    chd.term();
    chd.restart();
    check(&chd);
    assert_eq!(chd.ctl(&["keys", "--prefix", "t:"]).stdout.iter().filter(|&&b| b == b'\n').count(), 20);

    let bad =
        Command::new(common::CHD).args(["check-config", "--config", "/dev/null", "--tombstone-grace", "soon"]).output();
    let bad = bad.unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tombstone_grace"));
    let good = Command::new(common::CHD).args(["check-config", "--config", "/dev/null"]).output().unwrap();
    assert!(String::from_utf8_lossy(&good.stdout).contains("tombstone_grace = \"10d\""));
}

#[test]
fn a_dump_of_large_values_holds_only_a_few_in_memory() {
    let chd = Chd::start(&[]);
    let mut c = chd.client();
    let (count, size) = (24u8, 4usize << 20);
    for i in 0..count {
        let r = c.call(Request::Set { key: vec![b'L', i], value: vec![i; size] }).unwrap();
        assert_eq!(r, Ok(Response::Done));
    }
    // Reaped by wait4 below, which also reports its peak memory (std's wait does not).
    #[allow(clippy::zombie_processes)]
    let child = Command::new(chctl_path())
        .arg("--socket")
        .arg(&chd.socket)
        .arg("dump")
        .stdout(std::fs::File::create("/dev/null").unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: wait4 on our own child, with valid out-pointers.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "chctl dump failed: {status}");
    let peak_mib = usage.ru_maxrss as usize / 1024;
    let total_mib = (count as usize * size) >> 20;
    eprintln!("chctl dump of {total_mib} MiB peaked at {peak_mib} MiB");
    // About 32 MiB of values in flight, plus one frame being decoded: well under the total.
    assert!(peak_mib < 64, "chctl dump peaked at {peak_mib} MiB for {total_mib} MiB of values");
}
