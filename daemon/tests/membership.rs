//! Issue 4: nodes join, leave and are replaced while clients keep reading and writing.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn node_ids(chd: &Chd) -> Vec<u64> {
    chd.status()["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_u64().unwrap()).collect()
}

fn ctl_ok(chd: &Chd, args: &[&str]) -> String {
    let out = chd.ctl(args);
    assert!(out.status.success(), "chctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn grow_from_3_to_5_and_shrink_back_under_load() {
    let chd = Chd::start(&["--nodes", "3"]);
    let mut c = chd.client();
    c.set_many((0..2000).map(|i| (format!("base-{i}"), format!("v{i}"))));
    let loads = Load::start(&chd.socket, "grow-", 3);

    // The dry run says what will move: only the new node receives.
    let plan: serde_json::Value = serde_json::from_str(&ctl_ok(&chd, &["ring", "--json", "--plan", "add"])).unwrap();
    let new = plan["nodes"].as_array().unwrap().iter().find(|n| n["share_before"] == 0.0).unwrap().clone();
    assert!(new["receive_records"].as_u64().unwrap() > 1000, "{plan}");
    for n in plan["nodes"].as_array().unwrap() {
        if n["id"] != new["id"] {
            assert_eq!(n["receive_records"], 0, "{plan}");
        }
    }

    for _ in 0..2 {
        let out = ctl_ok(&chd, &["node", "add"]);
        assert!(out.contains("done"), "{out}");
        eprint!("{out}");
    }
    assert_eq!(node_ids(&chd), vec![0, 1, 2, 3, 4]);
    let ring: serde_json::Value = serde_json::from_str(&ctl_ok(&chd, &["ring", "--json"])).unwrap();
    for n in ring["nodes"].as_array().unwrap() {
        let share = n["share"].as_f64().unwrap();
        assert!((share - 0.6).abs() < 0.02, "unbalanced after growing: {ring}");
    }

    eprint!("{}", ctl_ok(&chd, &["node", "remove", "4"]));
    eprint!("{}", ctl_ok(&chd, &["node", "remove", "1"]));
    assert_eq!(node_ids(&chd), vec![0, 2, 3]);
    assert!(!chd.data.join("nodes/4").exists() && !chd.data.join("nodes/1").exists(), "left nodes' databases remain");

    let acked = Load::finish(loads);
    check_acked(&chd, &acked);
    for i in (0..2000).step_by(7) {
        assert_eq!(c.get(&format!("base-{i}")), Some(format!("v{i}").into_bytes()));
    }
    settle(&chd, 2000 + live_keys(&chd, "grow-", 3));
}

#[test]
fn kill_9_of_chd_mid_migration_resumes_it() {
    let mut chd = Chd::start(&["--nodes", "3"]);
    let mut c = chd.client();
    c.set_many((0..20_000).map(|i| (format!("mig-{i}"), format!("value-{i}"))));
    drop(c);
    let loads = Load::start(&chd.socket, "mid-", 2);
    let mut add = Command::new(chctl_path())
        .arg("--socket")
        .arg(&chd.socket)
        .args(["node", "add"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the migration to be under way", Duration::from_secs(30), || {
        chd.try_status().is_some_and(|s| s["migration"]["partitions_done"].as_u64().is_some_and(|d| d > 0))
    });
    let status = chd.status();
    assert_eq!(status["migration"]["finished"], false, "migration finished before it could be interrupted");
    chd.kill9();
    let _ = add.wait();
    let acked = Load::finish(loads);
    chd.restart();
    wait_for("the migration to finish after restart", Duration::from_secs(120), || {
        chd.try_status().is_some_and(|s| s["migration"]["finished"] == true)
    });
    assert_eq!(node_ids(&chd), vec![0, 1, 2, 3]);
    check_acked(&chd, &acked);
    let mut c = chd.client();
    for i in (0..20_000).step_by(13) {
        assert_eq!(c.get(&format!("mig-{i}")), Some(format!("value-{i}").into_bytes()));
    }
    settle(&chd, 20_000 + live_keys(&chd, "mid-", 2));
}

#[test]
fn replace_a_node_whose_directory_was_deleted() {
    let chd = Chd::start(&[]);
    let mut c = chd.client();
    c.set_many((0..3000).map(|i| (format!("rep-{i}"), format!("v{i}"))));
    let before: Vec<u32> = {
        let ring: serde_json::Value = serde_json::from_str(&ctl_ok(&chd, &["ring", "--json"])).unwrap();
        vec![ring["nodes"][2]["partitions"].as_u64().unwrap() as u32]
    };
    std::fs::remove_dir_all(chd.data.join("nodes/2")).unwrap();
    signal(chd.node(2)["pid"].as_u64().unwrap() as u32, libc::SIGKILL);
    let out = ctl_ok(&chd, &["node", "replace", "2"]);
    assert!(out.contains("done"), "{out}");
    assert_eq!(node_ids(&chd), vec![0, 1, 3, 4]);
    let ring: serde_json::Value = serde_json::from_str(&ctl_ok(&chd, &["ring", "--json"])).unwrap();
    let new = ring["nodes"].as_array().unwrap().iter().find(|n| n["id"] == 4).unwrap();
    assert_eq!(
        new["partitions"].as_u64().unwrap() as u32,
        before[0],
        "the new node takes exactly the old one's ranges"
    );
    for i in 0..3000 {
        assert_eq!(c.get(&format!("rep-{i}")), Some(format!("v{i}").into_bytes()));
    }
    settle(&chd, 3000);
}
