//! Races of membership changes (issue 11, items 1 and 2), each interleaving forced with chd's
//! debug pause points (`CHD_TEST_PAUSE_AT`), never by timing.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{chctl_path, wait_for, Chd};

/// Starts chd that pauses at `point` (debug builds), with `args`; does not wait for it.
fn start_pausing(args: &[&str], point: &str) -> (Chd, PathBuf) {
    let mut chd = Chd::unstarted(args);
    let pause = chd.dir.path().join("pause");
    let log = std::fs::File::create(chd.dir.path().join("chd.log")).unwrap();
    let child = chd
        .command()
        .env("CHD_TEST_PAUSE_AT", point)
        .env("CHD_TEST_PAUSE_FILE", &pause)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    chd.child = Some(child);
    chd.wait_all_up(Duration::from_secs(60));
    (chd, pause)
}

fn ctl_bg(chd: &Chd, args: &[&str]) -> Child {
    Command::new(chctl_path())
        .arg("--socket")
        .arg(&chd.socket)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(what: &str, child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Item 2: after a change, chd dropped the partitions a node no longer owned without the
/// membership lock. A second change could give such a partition back to the node, copy it
/// there and count its writes, and then the first drop wiped it.
#[test]
fn a_partition_given_back_while_it_is_being_dropped_is_not_wiped() {
    let (chd, pause) = start_pausing(&["--nodes", "3"], "drop-decided");
    let mut c = chd.client();
    c.set_many((0..600).map(|i| (format!("k{i}"), format!("v{i}"))));

    // Adding node 3 takes partitions from nodes 0-2; the drop of those stops once decided.
    let add = ctl_bg(&chd, &["node", "add"]);
    wait_for("the drop to be decided", Duration::from_secs(60), || pause.exists());
    // Removing node 3 gives every partition back to nodes 0-2. Either it runs now (the race)
    // or it waits for the drop; once it is one or the other, the drop goes on.
    let remove = ctl_bg(&chd, &["node", "remove", "3"]);
    wait_for("the removal to run or to wait", Duration::from_secs(60), || {
        let log = chd.log();
        log.contains("membership change done change=remove node 3") || log.contains("waits for the membership lock")
    });
    std::fs::remove_file(&pause).unwrap();
    finish("node add", add);
    finish("node remove 3", remove);
    wait_for("the removal to be done", Duration::from_secs(60), || {
        chd.log().contains("membership change done change=remove node 3")
    });

    // Every node again holds every record: nothing to repair, nothing lost.
    let out = chd.ctl(&["repair", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["partitions_differing"], 0, "a drop wiped a partition given back: {report}");
    assert_eq!(report["keys_repaired"], 0, "{report}");
    for i in (0..600).step_by(13) {
        assert_eq!(c.get(&format!("k{i}")), Some(format!("v{i}").into_bytes()));
    }
}

/// A node that left cleanly went to quarantine when a worker of one of its new owners was
/// restarting at the moment chd confirmed its records (found by the power-cut test, seed
/// 1795688271910008235): a hiccup must only delay the confirmation.
#[test]
fn a_new_owner_restarting_during_the_confirmation_does_not_quarantine_the_leaving_node() {
    let (chd, pause) = start_pausing(&["--nodes", "4"], "retire-confirm");
    let mut c = chd.client();
    c.set_many((0..400).map(|i| (format!("k{i}"), format!("v{i}"))));

    let remove = ctl_bg(&chd, &["node", "remove", "3"]);
    // Paused with the confirmers chosen: nodes 0, 1 and 2 (all of them own every partition
    // once node 3 is gone). One of them dies before the copy that confirms node 3's records.
    wait_for("the confirmation to be about to start", Duration::from_secs(60), || pause.exists());
    let pid = chd.node(0)["pid"].as_u64().unwrap() as u32;
    common::signal(pid, libc::SIGKILL);
    wait_for("chd to notice", Duration::from_secs(30), || chd.log().contains("worker exited; respawning node=0"));
    std::fs::remove_file(&pause).unwrap();
    finish("node remove 3", remove);
    wait_for("node 3 to be gone", Duration::from_secs(60), || {
        let log = chd.log();
        log.contains("database deleted") || log.contains("database kept in quarantine")
    });

    let log = chd.log();
    assert!(log.contains("node=3") && log.contains("database deleted"), "{log}");
    let quarantine = chd.data.join("quarantine");
    let kept = std::fs::read_dir(&quarantine).map_or(0, |d| d.count());
    assert_eq!(kept, 0, "node 3 left cleanly yet was quarantined:\n{log}");
    for i in (0..400).step_by(7) {
        assert_eq!(c.get(&format!("k{i}")), Some(format!("v{i}").into_bytes()));
    }
}
