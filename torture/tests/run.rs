//! A short torture against the real chd: a fixed seed, the faults chd is expected to survive
//! today, and the verdict a CI job relies on.
//!
//! chd and chctl must sit next to chd-torture. `cargo test --workspace` builds them; for
//! `cargo test -p chd-torture` alone this test builds them itself (same profile).

use std::path::{Path, PathBuf};
use std::process::Command;

const TORTURE: &str = env!("CARGO_BIN_EXE_chd-torture");

fn ensure_built(dir: &Path) {
    if dir.join("chd").exists() && dir.join("chctl").exists() {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.args(["build", "-p", "chd", "-p", "chctl"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        c.arg("--release");
    }
    assert!(c.status().unwrap().success(), "cannot build chd and chctl");
}

#[test]
fn a_short_run_with_survivable_faults_passes_and_writes_its_summary() {
    let bin_dir: PathBuf = Path::new(TORTURE).parent().unwrap().to_path_buf();
    ensure_built(&bin_dir);
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(TORTURE)
        .args(["--seconds", "15", "--seed", "7", "--clients", "4", "--faults", "kill-one,stop-one,stop-chd,kill-chd"])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("summary.json")).unwrap_or_else(|e| panic!("{e}: {stderr}")),
    )
    .unwrap();
    assert_eq!(summary["verdict"], "pass", "{stdout}\n{stderr}");
    assert!(run.status.success());
    assert!(stdout.contains("seed 7"), "the seed is printed: {stdout}");
    assert_eq!(summary["seed"], 7);
    for field in ["ops_total", "faults_total", "lost_writes", "violations"] {
        assert!(summary[field].is_u64(), "{field}: {summary}");
    }
    assert!(summary["faults"].is_object());
    assert!(summary["ops_total"].as_u64().unwrap() > 100, "{summary}");
    assert!(summary["faults_total"].as_u64().unwrap() >= 3, "{summary}");
    assert_eq!(summary["lost_writes"], 0);
    assert_eq!(summary["violations"], 0);
    // The history is in the shared format, one operation a line, and the checker reads it.
    let check = Command::new(TORTURE).arg("check").arg(out.path().join("history.jsonl")).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let faults = std::fs::read_to_string(out.path().join("faults.jsonl")).unwrap();
    assert_eq!(faults.lines().count() as u64, summary["faults_total"].as_u64().unwrap());
}
