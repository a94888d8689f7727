//! Issue 9: chd heals by itself from the faults one host really has, with no restart and no
//! person: every worker killed at once, every owner of a partition restarting together, a kill
//! during the first start of a data dir, huge values through every path. Each test names the
//! defect it guards.

mod common;

use std::time::{Duration, Instant};

use chd_data::proto::{Request, Response};
use common::*;

/// Runs `cmd` and returns its exit status; a chd still running after `limit` is killed and the
/// test fails.
fn exit_within(cmd: &mut std::process::Command, limit: Duration) -> std::process::ExitStatus {
    let mut child = cmd.stdout(std::process::Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chd still running after {limit:?}; it should have stopped");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pid_of(chd: &Chd, id: u64) -> u32 {
    chd.node(id)["pid"].as_u64().unwrap() as u32
}

/// Defect 1: after kill -9 of every worker, each respawned node waited for an `up` peer that
/// never came, and reads failed for as long as chd lived.
#[test]
fn killing_every_worker_at_once_heals_without_a_restart() {
    let chd = Chd::start(&[]);
    let mut c = chd.client();
    let pairs: Vec<(String, String)> = (0..300).map(|i| (format!("all-{i}"), format!("v{i}"))).collect();
    c.set_many(pairs.clone());
    let pids = chd.worker_pids();
    assert_eq!(pids.len(), 4);
    let t0 = Instant::now();
    for &p in &pids {
        signal(p, libc::SIGKILL);
    }
    wait_for("every node up again", Duration::from_secs(20), || {
        chd.try_status().is_some_and(|s| {
            s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["state"] == "up" && n["pid"].as_u64().is_some_and(|p| !pids.contains(&(p as u32))))
        })
    });
    let healed = t0.elapsed();
    let mut c = chd.client();
    for (k, v) in &pairs {
        assert_eq!(c.get(k).as_deref(), Some(v.as_bytes()), "{k}");
    }
    assert!(c.set("after", "x"));
    eprintln!("every worker killed at once: serving reads again after {healed:?}");
}

/// Defect 1, second form: every owner of a partition restarts together (two workers found hung
/// at once while the third is down).
#[test]
fn every_owner_restarting_together_heals() {
    let chd = Chd::start(&["--nodes", "3"]);
    let mut c = chd.client();
    let pairs: Vec<(String, String)> = (0..200).map(|i| (format!("own-{i}"), format!("v{i}"))).collect();
    c.set_many(pairs.clone());
    let (a, b, z) = (pid_of(&chd, 0), pid_of(&chd, 1), pid_of(&chd, 2));
    signal(a, libc::SIGSTOP);
    signal(b, libc::SIGSTOP);
    signal(z, libc::SIGKILL);
    wait_for("all three replaced and up", Duration::from_secs(30), || {
        chd.try_status().is_some_and(|s| {
            s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["state"] == "up" && n["pid"].as_u64().is_some_and(|p| ![a, b, z].contains(&(p as u32))))
        })
    });
    let mut c = chd.client();
    for (k, v) in &pairs {
        assert_eq!(c.get(k).as_deref(), Some(v.as_bytes()), "{k}");
    }
}

/// Defect 2: chd killed during the first start of a new data dir (cluster.json written, no node
/// given its identity yet) left every node `rebuilding` forever on the next start.
#[test]
fn a_kill_during_the_first_start_does_not_brick_the_data_dir() {
    let mut chd = Chd::unstarted(&[]);
    // A debug build stops dead at this point when asked to (no sleep, no race).
    let status = exit_within(chd.command().env("CHD_TEST_CRASH_AT", "cluster-created"), Duration::from_secs(30));
    assert!(!status.success(), "the crash hook did not fire");
    assert!(chd.data.join("cluster.json").exists());
    chd.restart();
    chd.set("k", "v");
    assert_eq!(chd.get("k").as_deref(), Some(&b"v"[..]));
    assert!(!chd.log().contains("rebuilding the node"), "{}", chd.log());
}

/// Defect 6: `node rebuild` right after `node restart` (or right after the worker was killed)
/// printed "rebuilt: 0 records" and did nothing.
#[test]
fn a_rebuild_asked_while_the_worker_restarts_is_carried_out() {
    let chd = Chd::start(&[]);
    let mut c = chd.client();
    c.set_many((0..500).map(|i| (format!("rb-{i}"), "0123456789".to_string())));
    let keys = chd.node(1)["keys"].as_u64().unwrap();
    let keys2 = chd.node(2)["keys"].as_u64().unwrap();
    assert!(chd.ctl(&["node", "restart", "1"]).status.success());
    let out = chd.ctl(&["node", "rebuild", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("node 1 up", Duration::from_secs(30), || chd.node(1)["state"] == "up");
    assert_eq!(std::fs::read_dir(chd.data.join("quarantine")).unwrap().count(), 1, "nothing was rebuilt");
    assert_eq!(chd.node(1)["keys"].as_u64().unwrap(), keys);

    // And right after a kill -9 of the worker.
    signal(pid_of(&chd, 2), libc::SIGKILL);
    let out = chd.ctl(&["node", "rebuild", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("node 2 up", Duration::from_secs(30), || chd.node(2)["state"] == "up");
    assert_eq!(std::fs::read_dir(chd.data.join("quarantine")).unwrap().count(), 2, "the second rebuild was dropped");
    wait_for("node 2 holds its keys again", Duration::from_secs(30), || chd.node(2)["keys"].as_u64() == Some(keys2));
}

/// Defect 7: raising W on an existing data dir lowered the read quorum until startup repair
/// ended, so a read could miss a write acknowledged under the old W.
#[test]
fn raising_the_write_quorum_of_an_existing_data_dir_is_refused() {
    let mut chd = Chd::start(&["--write-quorum", "1"]);
    chd.set("k", "v");
    assert!(chd.term().success());
    chd.args = vec!["--write-quorum".into(), "2".into()];
    let log = chd.dir.path().join("refused.log");
    let mut cmd = chd.command();
    cmd.stderr(std::fs::File::create(&log).unwrap());
    assert!(!exit_within(&mut cmd, Duration::from_secs(30)).success(), "chd started with a raised write quorum");
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(err.contains("write_quorum"), "{err}");
    // The data dir's own W applies when none is given.
    chd.args.clear();
    chd.restart();
    assert_eq!(chd.status()["write_quorum"], 1);
    assert_eq!(chd.get("k").as_deref(), Some(&b"v"[..]));
}

/// Defect 5: repair batched 256 records with no byte limit; with large values the frame went
/// over the worker's frame limit and the receiving worker crash-looped until it was marked
/// failed. Rebuild, catch-up, repair and migration share that copy path.
#[test]
fn large_values_are_copied_in_bounded_batches() {
    let mut chd = Chd::start(&["--nodes", "3", "--startup-repair", "false"]);
    let mut c = chd.client();
    // 10 values of 8 MiB: one batch of them is over the worker's frame limit (64 MiB).
    let big: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    for i in 0..10 {
        let r = c.call(Request::Set { key: format!("big-{i}").into(), value: big.clone() }).unwrap();
        assert_eq!(r, Ok(Response::Done));
    }
    drop(c);
    assert!(chd.term().success());
    // Node 0 loses its data; at the next start it is rebuilt from nodes 1 and 2.
    std::fs::remove_dir_all(chd.data.join("nodes/0")).unwrap();
    chd.restart();
    assert_eq!(chd.node(0)["restarts"], 0, "the receiving worker crashed");
    assert_eq!(chd.node(0)["keys"], 10);
    let mut c = chd.client();
    for i in 0..10 {
        assert!(c.get(&format!("big-{i}")).is_some_and(|v| v == big), "big-{i}");
    }
}
