//! Operating chd as its users expect (issue 14): `check-config` refuses what chd would refuse,
//! logs are plain text (or JSON) with debug lines when asked, and a failed node makes `status`
//! and `repair` fail.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;

fn check_config(chd: &Chd, args: &[&str]) -> Output {
    let mut c = Command::new(CHD);
    c.arg("check-config").arg("--config").arg("/dev/null").arg("--data-dir").arg(&chd.data);
    c.arg("--socket").arg(&chd.socket).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Issue 14, defect 4: check-config approved `--replicas 2` and `--nodes 7` on an existing
/// R=3, 4-node data dir, and `log_level = "verbose"`; chd then refused the first, silently
/// ignored the second, and logged nothing at all with the third.
#[test]
fn check_config_refuses_exactly_what_chd_refuses_on_an_existing_data_dir() {
    let mut chd = Chd::start(&[]);
    // Beside the running chd: check-config only reads cluster.json.
    let ok = check_config(&chd, &[]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let shown = text(&ok.stdout);
    assert!(shown.contains("nodes = 4\n") && shown.contains("replicas = 3\n"), "{shown}");
    // Lowering W is allowed; the same values as the data dir's are fine.
    for same in [&["--nodes", "4"][..], &["--replicas", "3"], &["--write-quorum", "1"]] {
        let out = check_config(&chd, same);
        assert!(out.status.success(), "{same:?}: {}", text(&out.stderr));
    }
    chd.term();
    // A node count other than the data dir's is ignored, loudly: membership changes at run
    // time, and a chd that systemd restarts after a crash must come back whatever the file says.
    let check = check_config(&chd, &["--nodes", "7"]);
    assert!(check.status.success(), "{}", text(&check.stderr));
    let why = text(&check.stderr);
    for s in ["nodes = 7 is ignored", "has 4 nodes", "chctl node add", "chctl node remove"] {
        assert!(why.contains(s), "check-config --nodes 7: {s:?} not in {why}");
    }
    assert!(text(&check.stdout).contains("nodes = 4\n"), "{}", text(&check.stdout));
    let refused: [(&[&str], &[&str]); 2] = [
        (&["--replicas", "2"], &["replicas", "created with 3 replicas"]),
        (&["--write-quorum", "3"], &["write_quorum", "raising it is not supported"]),
    ];
    for (args, says) in refused {
        let check = check_config(&chd, args);
        assert_eq!(check.status.code(), Some(1), "check-config {args:?} must refuse");
        let why = text(&check.stderr);
        for s in says {
            assert!(why.contains(s), "check-config {args:?}: {s:?} not in {why}");
        }
        // chd refuses the same with the same words, before it serves.
        let start = chd.command().args(args).output().unwrap();
        assert_eq!(start.status.code(), Some(1), "chd {args:?} must refuse to start");
        assert_eq!(text(&start.stderr), why, "chd {args:?} and check-config must say the same");
    }
    let file = chd.dir.path().join("chd.toml");
    std::fs::write(&file, "log_level = \"verbose\"\n").unwrap();
    let out = Command::new(CHD)
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(&chd.data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("log_level: \"verbose\" is not a level"), "{}", text(&out.stderr));
}

/// Issue 14, defect 7: `--log-level debug` added nothing, and log files held escape codes and
/// Rust Debug output.
#[test]
fn debug_level_adds_debug_lines_in_plain_text() {
    let chd = Chd::start(&["--log-level", "debug"]);
    chd.set("k", "v");
    let log = chd.log();
    assert!(log.contains("DEBUG") && log.contains("request done") && log.contains("request=set"), "{log}");
    assert!(log.contains("client connected"), "{log}");
    assert!(!log.contains('\x1b'), "colour in a log file: {log}");
    assert!(!log.contains("Some("), "Debug output in the log: {log}");
}

/// Issue 14, defect 7: `--log-format json` writes one JSON object per line.
#[test]
fn json_log_format_is_one_object_per_line() {
    let chd = Chd::start(&["--log-format", "json"]);
    chd.set("k", "v");
    let log = chd.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.iter().any(|l| l.contains("chd is ready")), "{log}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{l}");
    }
}

/// Issue 14, defect 8: `status` and `repair` exited 0 while a node was failed, and `node
/// rebuild` said "wait for them", though a failed node never comes back by waiting.
#[test]
fn a_failed_node_fails_status_and_repair_and_rebuild_says_what_to_do() {
    let chd = Chd::start(&[]);
    chd.set("k", "v");
    chd.crash_loop_until_failed(1);
    for args in [&["status"][..], &["status", "--json"], &["repair"]] {
        let out = chd.ctl(args);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {}", text(&out.stderr));
        assert!(!out.stdout.is_empty(), "{args:?} still prints its report");
        assert!(text(&out.stderr).contains("chctl node restart 1"), "{args:?}: {}", text(&out.stderr));
    }
    assert!(text(&chd.ctl(&["status"]).stdout).contains("failed"));
    let out = chd.ctl(&["node", "rebuild", "2"]);
    let why = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{why}");
    assert!(!why.contains("wait") && why.contains("node 1 is failed") && why.contains("chctl node replace 1"), "{why}");
    assert!(chd.ctl(&["node", "restart", "1"]).status.success());
    chd.wait_all_up(Duration::from_secs(30));
    assert_eq!(chd.ctl(&["status"]).status.code(), Some(0));
}
