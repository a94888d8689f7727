//! Issue 3: dead, hung and wiped workers are noticed, respawned and rebuilt, and clients notice
//! nothing but a little latency.

mod common;

use std::time::{Duration, Instant};

use chd_data::proto::Request;
use common::*;

#[test]
fn a_killed_worker_is_respawned_and_catches_up() {
    let chd = Chd::start(&[]);
    let loads = Load::start(&chd.socket, "kw-", 4);
    wait_for("writes", Duration::from_secs(30), || chd.stored_copies() > 300);
    let old = chd.node(1)["pid"].as_u64().unwrap() as u32;
    signal(old, libc::SIGKILL);
    wait_for("node 1 respawned", Duration::from_secs(10), || {
        let n = chd.node(1);
        n["pid"].as_u64().is_some_and(|p| p as u32 != old) && n["restarts"] == 1
    });
    std::thread::sleep(Duration::from_millis(300)); // keep writing while it catches up
    let acked = Load::finish(loads);
    check_acked(&chd, &acked);
    let live = live_keys(&chd, "kw-", 4);
    settle(&chd, live);
}

#[test]
fn a_hung_worker_is_detected_killed_and_clients_keep_going() {
    let chd = Chd::start(&[]);
    let mut c = chd.client();
    for i in 0..50 {
        assert!(c.set(&format!("pre-{i}"), "x"));
    }
    let victim = chd.node(2)["pid"].as_u64().unwrap() as u32;
    signal(victim, libc::SIGSTOP);
    let stopped = Instant::now();
    // While it hangs, reads and writes go on, each within the documented bound.
    let mut worst = Duration::ZERO;
    let mut i = 0;
    while chd.node(2)["pid"].as_u64() == Some(u64::from(victim)) {
        let t = Instant::now();
        assert!(c.set(&format!("during-{i}"), "y"), "write failed while a node hung");
        assert_eq!(c.get(&format!("pre-{}", i % 50)).as_deref(), Some(&b"x"[..]));
        worst = worst.max(t.elapsed());
        i += 1;
        assert!(stopped.elapsed() < Duration::from_secs(15), "hung worker never detected");
    }
    let detected = stopped.elapsed();
    let _ = unsafe { libc::kill(victim as i32, libc::SIGCONT) }; // long dead by now
    assert!(worst < Duration::from_millis(3500), "a request took {worst:?} while a node hung");
    assert!(detected < Duration::from_secs(6), "detection took {detected:?}");
    settle(&chd, 50 + i);
    eprintln!("hung worker detected and replaced after {detected:?}; worst request {worst:?}");
}

#[test]
fn a_worker_whose_directory_is_deleted_is_rebuilt_from_replicas() {
    let chd = Chd::start(&[]);
    let loads = Load::start(&chd.socket, "rm-", 4);
    wait_for("writes", Duration::from_secs(30), || chd.stored_copies() > 600);
    let pid = chd.node(3)["pid"].as_u64().unwrap() as u32;
    // Delete the files under the running worker, then kill it: it comes back to nothing.
    std::fs::remove_dir_all(chd.data.join("nodes/3")).unwrap();
    signal(pid, libc::SIGKILL);
    wait_for("node 3 rebuilding or back", Duration::from_secs(10), || {
        chd.node(3)["pid"].as_u64().is_some_and(|p| p as u32 != pid)
    });
    let acked = Load::finish(loads);
    check_acked(&chd, &acked);
    let live = live_keys(&chd, "rm-", 4);
    settle(&chd, live);
    assert!(chd.log().contains("rebuilding the node from its replicas"), "{}", chd.log());
}

#[test]
fn a_corrupt_database_is_moved_aside_and_rebuilt() {
    let mut chd = Chd::start(&[]);
    let mut c = chd.client();
    for i in 0..300 {
        assert!(c.set(&format!("c-{i}"), &format!("v{i}")));
    }
    drop(c);
    assert!(chd.term().success());
    // Overwrite every file of node 0's database with garbage.
    for entry in walk(&chd.data.join("nodes/0")) {
        let len = std::fs::metadata(&entry).unwrap().len().max(64) as usize;
        std::fs::write(&entry, vec![0xa5; len]).unwrap();
    }
    chd.restart();
    let mut c = chd.client();
    for i in 0..300 {
        assert_eq!(c.get(&format!("c-{i}")), Some(format!("v{i}").into_bytes()));
    }
    settle(&chd, 300);
    let quarantined: Vec<_> = std::fs::read_dir(chd.data.join("quarantine")).unwrap().collect();
    assert_eq!(quarantined.len(), 1, "the corrupt database must be kept, not deleted");
}

#[test]
fn repair_fixes_a_stale_replica_and_then_finds_nothing() {
    // Without the automatic pass at start, so that `chctl repair` is the one to find the damage.
    let mut chd = Chd::start(&["--startup-repair", "false"]);
    let victim = chd.node(0)["pid"].as_u64().unwrap() as u32;
    signal(victim, libc::SIGSTOP);
    // Writes acknowledged by the other replicas while node 0 misses them; then chd dies before
    // node 0 could be found hung and caught up.
    let mut c = chd.client();
    for i in 0..100 {
        assert!(c.set(&format!("r-{i}"), "new"));
    }
    drop(c);
    chd.kill9();
    wait_for("old worker gone", Duration::from_secs(5), || !alive(victim));
    chd.restart();
    let out = chd.ctl(&["repair", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(first["keys_repaired"].as_u64().unwrap() > 0, "{first}");
    assert!(first["partitions_differing"].as_u64().unwrap() > 0, "{first}");
    let second: serde_json::Value = serde_json::from_slice(&chd.ctl(&["repair", "--json"]).stdout).unwrap();
    assert_eq!(second["partitions_differing"], 0, "{second}");
    assert_eq!(second["keys_repaired"], 0, "{second}");
    assert_eq!(second["partitions_checked"], first["partitions_checked"]);
    assert_eq!(chd.stored_copies(), 300);
}

/// A torture run failed on this: a node killed six times in 16 s by the nemesis was marked
/// failed ("crashed too often") and stayed failed, waiting for a person. Kills are what
/// restarting heals; only crashes of the worker's own count toward giving up.
#[test]
fn a_node_killed_again_and_again_is_restarted_every_time() {
    let chd = Chd::start(&[]);
    chd.set("k", "v");
    let mut last = 0;
    // One more kill than the crashes that mark a node failed.
    for kills in 0..6 {
        let mut pid = None;
        wait_for("node 1 up again", Duration::from_secs(30), || {
            let n = chd.node(1);
            assert_ne!(n["state"], "failed", "marked failed after {kills} kills: {n}");
            pid = n["pid"].as_u64().filter(|&p| p != last && n["state"] == "up");
            pid.is_some()
        });
        let pid = pid.unwrap();
        signal(pid as u32, libc::SIGKILL);
        last = pid;
    }
    chd.wait_all_up(Duration::from_secs(30));
    assert_eq!(chd.get("k").as_deref(), Some(&b"v"[..]));
    assert!(chd.node(1)["restarts"].as_u64().unwrap() >= 6);
}

#[test]
fn a_crash_looping_node_is_marked_failed_until_restarted() {
    let chd = Chd::start(&[]);
    chd.set("k", "v");
    chd.crash_loop_until_failed(1);
    // The others keep serving.
    chd.set("k2", "v2");
    assert_eq!(chd.get("k").as_deref(), Some(&b"v"[..]));
    let out = chd.ctl(&["node", "restart", "1"]);
    assert!(out.status.success());
    chd.wait_all_up(Duration::from_secs(30));
    wait_for("R copies", Duration::from_secs(30), || chd.stored_copies() == 6);
}

#[test]
fn node_rebuild_copies_every_range_back_and_keeps_the_old_data() {
    let chd = Chd::start(&[]);
    let mut c = chd.client();
    for i in 0..2000 {
        assert!(c.set(&format!("nb-{i}"), "0123456789"));
    }
    let before = chd.node(2)["keys"].as_u64().unwrap();
    let out = chd.ctl(&["node", "rebuild", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("rebuilt"), "{summary}");
    assert_eq!(chd.node(2)["keys"].as_u64().unwrap(), before);
    assert_eq!(std::fs::read_dir(chd.data.join("quarantine")).unwrap().count(), 1);
    for i in (0..2000).step_by(37) {
        assert!(c.get(&format!("nb-{i}")).is_some());
    }
    let r = c.call(Request::NodeRebuild { id: 99, engine: None }).unwrap();
    assert_eq!(r, Err(chd_data::Error::NoSuchNode(99)));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
