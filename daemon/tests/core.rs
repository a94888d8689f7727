//! Issue 2: the vertical slice, with real chd and chctl processes.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use chd_data::proto::{encode_frame, read_frame, ClientFrame, Request, ServerFrame, MAX_FRAME};
use common::*;

#[test]
fn many_keys_round_trip_and_each_sits_on_exactly_r_nodes() {
    let chd = Chd::start(&[]);
    let mut c = chd.client();
    for i in 0..500 {
        assert!(c.set(&format!("key-{i}"), &format!("value-{i}")));
    }
    // Through chctl too, as a user would.
    chd.set("hello", "world");
    assert_eq!(chd.get("hello").as_deref(), Some(&b"world"[..]));
    for i in 0..500 {
        assert_eq!(c.get(&format!("key-{i}")), Some(format!("value-{i}").into_bytes()));
    }
    assert_eq!(chd.stored_copies(), 3 * 501);
    let status = chd.status();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    for n in nodes {
        assert_eq!(n["state"], "up");
        // `id` names the node's folder.
        assert!(chd.data.join("nodes").join(n["id"].to_string()).is_dir());
    }
}

#[test]
fn binary_values_pass_through_stdin_byte_for_byte() {
    let chd = Chd::start(&[]);
    let value: Vec<u8> = (0..=255u8).chain([0, b'\n', 0xff, b'\r']).cycle().take(100_000).collect();
    let out = chd.ctl_stdin(&["set", "bin", "-"], &value);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(chd.get("bin").unwrap(), value);
    let out = chd.ctl_stdin(&["set", "empty", "-"], b"");
    assert!(out.status.success());
    assert_eq!(chd.get("empty").unwrap(), b"");
}

#[test]
fn deleted_keys_are_gone_and_missing_keys_exit_1() {
    let chd = Chd::start(&[]);
    chd.set("k", "v");
    let out = chd.ctl(&["del", "k"]);
    assert!(out.status.success());
    let out = chd.ctl(&["get", "k"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no such key"), "{err}");
    assert_eq!(chd.stored_copies(), 0, "tombstones are not counted as keys");
    // A value written after the delete is visible again.
    chd.set("k", "again");
    assert_eq!(chd.get("k").as_deref(), Some(&b"again"[..]));
}

#[test]
fn kill_9_of_chd_loses_no_acknowledged_write_and_leaves_no_worker() {
    let mut chd = Chd::start(&[]);
    let loads = Load::start(&chd.socket, "k9-", 4);
    wait_for("writes under load", Duration::from_secs(30), || chd.stored_copies() > 300);
    let workers = chd.worker_pids();
    assert_eq!(workers.len(), 4);
    chd.kill9();
    let acked = Load::finish(loads);
    wait_for("workers to die with chd", Duration::from_secs(5), || workers.iter().all(|&p| !alive(p)));
    chd.restart();
    check_acked(&chd, &acked);
    // Writes that were still on their way to a third replica are completed by the startup
    // repair: once things settle, every key is on exactly R nodes again.
    settle(&chd, live_keys(&chd, "k9-", 4));
    // Versions kept growing across the restart: new writes win over old ones.
    let (k, _) = acked.iter().next().unwrap();
    chd.set(k, "after-restart");
    assert_eq!(chd.get(k).as_deref(), Some(&b"after-restart"[..]));
}

#[test]
fn sigterm_stops_cleanly() {
    let mut chd = Chd::start(&[]);
    chd.set("a", "1");
    let workers = chd.worker_pids();
    let status = chd.term();
    assert!(status.success(), "chd exited with {status}");
    assert!(!chd.socket.exists(), "socket file left behind");
    assert!(workers.iter().all(|&p| !alive(p)));
    chd.restart();
    assert_eq!(chd.get("a").as_deref(), Some(&b"1"[..]));
}

/// A clean stop saves every worker's index and the next start loads it instead of reading the
/// log: every replica then holds the same keys (repair finds nothing to copy, with the repair
/// after a start switched off so that it cannot mend a short index first), and every
/// acknowledged write, overwrite and delete reads back.
#[test]
fn a_clean_restart_loads_saved_indexes_and_keeps_every_write() {
    let mut chd = Chd::start(&["--startup-repair", "false"]);
    let mut c = chd.client();
    let mut expected: std::collections::BTreeMap<String, Option<String>> = Default::default();
    c.set_many((0..3000).map(|i| (format!("k{i}"), format!("v{i}"))));
    c.set_many((0..3000).step_by(3).map(|i| (format!("k{i}"), format!("again{i}"))));
    for i in 0..3000 {
        expected.insert(format!("k{i}"), Some(if i % 3 == 0 { format!("again{i}") } else { format!("v{i}") }));
    }
    for i in (0..3000).step_by(97) {
        assert!(chd.ctl(&["del", &format!("k{i}")]).status.success());
        expected.insert(format!("k{i}"), None);
    }
    drop(c);
    assert!(chd.term().success());
    let nodes = chd.data.join("nodes");
    let index = |n: u32| nodes.join(n.to_string()).join("log").join("index");
    for n in 0..4 {
        assert!(index(n).exists(), "node {n} saved no index at a clean stop");
    }
    chd.restart();
    for n in 0..4 {
        // The first write of a start (the write-ahead log's checkpoint) makes it stale.
        assert!(!index(n).exists(), "node {n}: the saved index outlived the start");
    }
    let repair = chd.ctl(&["repair"]);
    let said = String::from_utf8_lossy(&repair.stdout);
    assert!(repair.status.success() && said.contains(" 0 differed"), "{said}");
    let mut c = chd.client();
    for (k, v) in &expected {
        assert_eq!(c.get(k), v.as_ref().map(|v| v.as_bytes().to_vec()), "{k}");
    }
}

#[test]
fn ctrl_c_to_the_process_group_is_one_clean_shutdown() {
    use std::os::unix::process::CommandExt;
    let mut chd = Chd::start(&[]);
    chd.set("a", "1");
    chd.kill9();
    // As a terminal does: chd in its own process group, SIGINT to the whole group, workers
    // included. The workers must leave the shutdown to chd.
    let mut cmd = chd.command();
    cmd.process_group(0).stderr(std::fs::File::create(chd.dir.path().join("fg.log")).unwrap());
    chd.child = Some(cmd.spawn().unwrap());
    chd.wait_all_up(Duration::from_secs(30));
    chd.set("b", "2");
    let pid = chd.pid();
    // SAFETY: plain kill(2) of a process group we started.
    assert_eq!(unsafe { libc::kill(-(pid as i32), libc::SIGINT) }, 0);
    let status = chd.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(chd.dir.path().join("fg.log")).unwrap();
    assert!(!log.contains("respawning") && !log.contains("uncleanly"), "workers died before chd stopped them:\n{log}");
    assert_eq!(log.matches("worker stopped cleanly").count(), 4, "{log}");
    chd.restart();
    assert_eq!(chd.get("b").as_deref(), Some(&b"2"[..]));
}

#[test]
fn bad_frames_get_errors_and_chd_keeps_serving() {
    let chd = Chd::start(&[]);
    chd.set("safe", "1");

    // Garbage: an error reply, then the connection closes.
    let mut s = UnixStream::connect(&chd.socket).unwrap();
    s.write_all(&[0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0x99]).unwrap();
    let reply = read_frame(&mut s, MAX_FRAME).unwrap().unwrap();
    let f: ServerFrame = chd_data::proto::decode_body(&reply).unwrap();
    assert!(matches!(f.response, Err(chd_data::Error::Malformed(_))), "{f:?}");
    assert_eq!(s.read(&mut [0; 16]).unwrap(), 0, "connection should be closed");

    // An oversized length prefix: refused without sending the body.
    let mut s = UnixStream::connect(&chd.socket).unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let reply = read_frame(&mut s, MAX_FRAME).unwrap().unwrap();
    let f: ServerFrame = chd_data::proto::decode_body(&reply).unwrap();
    assert!(matches!(f.response, Err(chd_data::Error::FrameTooLarge { .. })), "{f:?}");

    // A request before hello.
    let mut s = UnixStream::connect(&chd.socket).unwrap();
    let mut buf = Vec::new();
    encode_frame(&ClientFrame { id: 9, request: Request::Get { key: b"safe".to_vec() } }, &mut buf);
    s.write_all(&buf).unwrap();
    let f: ServerFrame = chd_data::proto::decode_body(&read_frame(&mut s, MAX_FRAME).unwrap().unwrap()).unwrap();
    assert_eq!(f.id, 9);
    assert_eq!(f.response, Err(chd_data::Error::HelloRequired));

    // An oversized key, after a proper hello.
    let mut c = chd.client();
    let r = c.call(Request::Set { key: vec![b'k'; 70_000], value: b"v".to_vec() }).unwrap();
    assert!(matches!(r, Err(chd_data::Error::KeyTooLarge { .. })), "{r:?}");

    // A truncated frame, then a hang-up.
    let mut s = UnixStream::connect(&chd.socket).unwrap();
    s.write_all(&[0, 0, 1, 0, 1, 2]).unwrap();
    drop(s);

    // Everyone else is still served, and nothing stored changed.
    assert_eq!(chd.get("safe").as_deref(), Some(&b"1"[..]));
    assert_eq!(chd.stored_copies(), 3);
}

#[test]
fn a_value_over_the_limit_is_refused_and_nothing_is_stored() {
    let chd = Chd::start(&[]);
    let big = vec![b'x'; chd_data::proto::MAX_VALUE + 1];
    let out = chd.ctl_stdin(&["set", "big", "-"], &big);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limit"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(chd.get("big"), None);
}

#[test]
fn bad_settings_are_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for args in [
        &["--replicas", "2", "--write-quorum", "3"][..],
        &["--nodes", "2", "--replicas", "3"],
        &["--nodes", "0"],
        &["--write-quorum", "0"],
    ] {
        let out = std::process::Command::new(CHD)
            .args(["--config", "/dev/null", "--data-dir"])
            .arg(&data)
            .arg("--socket")
            .arg(dir.path().join("s"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(!data.exists(), "{args:?} created the data dir");
    }
}

#[test]
fn a_second_chd_is_refused_and_a_stale_socket_is_replaced() {
    let mut chd = Chd::start(&[]);
    let out = chd.command().output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another chd"));
    // Another data dir on the same socket.
    let out = std::process::Command::new(CHD)
        .args(["--config", "/dev/null", "--data-dir"])
        .arg(chd.dir.path().join("other"))
        .arg("--socket")
        .arg(&chd.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another chd is serving socket"));
    chd.set("x", "1");
    chd.kill9();
    assert!(chd.socket.exists(), "kill -9 leaves the socket file behind");
    chd.restart();
    assert_eq!(chd.get("x").as_deref(), Some(&b"1"[..]));
}

#[test]
fn socket_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let chd = Chd::start(&[]);
    let mode = std::fs::metadata(&chd.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn only_root_chds_user_and_the_allowed_group_may_connect() {
    use std::os::unix::process::CommandExt;
    // Needs a second user; only root can run a client as one.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: the stranger check runs in CI as root");
        return;
    }
    let nobody = 65534;
    let nogroup = std::process::Command::new("getent").args(["group", "nogroup"]).output().unwrap();
    let group = if nogroup.status.success() { "nogroup" } else { "nobody" };
    // The socket file's mode would stop a stranger already; open it so the credential check is
    // what is tested.
    let chd = Chd::start(&["--socket-mode", "0666"]);
    chd.set("k", "v");
    std::fs::set_permissions(chd.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let get_as = |chd: &Chd, gid: u32| {
        std::process::Command::new(chctl_path())
            .arg("--socket")
            .arg(&chd.socket)
            .args(["get", "k"])
            .uid(nobody)
            .gid(gid)
            .output()
            .unwrap()
    };
    let out = get_as(&chd, nobody);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("permission denied"), "{err}");
    drop(chd);

    // 0660: the socket is given to the allowed group, which is what lets its members in.
    let chd = Chd::start(&["--socket-mode", "0660", "--allowed-group", group]);
    chd.set("k", "v");
    std::fs::set_permissions(chd.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = get_as(&chd, nix_gid(group));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"v");
}

fn nix_gid(group: &str) -> u32 {
    let out = std::process::Command::new("getent").args(["group", group]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split(':').nth(2).unwrap().trim().parse().unwrap()
}

#[test]
fn errors_from_chd_are_one_clear_line() {
    let chd = Chd::start(&[]);
    for (args, expect) in [
        (&["node", "remove", "99"][..], "chctl: no node with id 99; see `chctl status`"),
        (&["set", "", "x"], "chctl: key must not be empty"),
        (&["node", "restart", "42"], "chctl: no node with id 42; see `chctl status`"),
    ] {
        let out = chd.ctl(args);
        assert_eq!(out.status.code(), Some(4), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), expect, "{args:?}");
    }
}
