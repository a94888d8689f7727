//! Exit statuses a script can act on (issue 14, defect 2).

mod common;

use std::process::Command;

use common::{stderr, Chd};

#[test]
fn chd_not_running_is_exit_3_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    for args in [&["get", "k"][..], &["status", "--check"], &["exists", "k"], &["bench", "--seconds", "1"]] {
        let out = Command::new(common::CHCTL).arg("--socket").arg(&socket).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn each_kind_of_failure_has_its_own_exit_status() {
    let chd = Chd::start(&["--nodes", "3"]);
    chd.set("here", "v");
    let code = |args: &[&str]| {
        let out = chd.ctl(args);
        // clap's usage errors show the usage too; every other failure is one line.
        let one_line = matches!(out.status.code(), Some(0 | 2)) || stderr(&out).lines().count() == 1;
        assert!(one_line, "{args:?}: {}", stderr(&out));
        out.status.code()
    };
    assert_eq!(code(&["get", "here"]), Some(0));
    assert_eq!(code(&["get", "missing"]), Some(1));
    assert_eq!(code(&["exists", "here"]), Some(0));
    assert_eq!(code(&["exists", "missing"]), Some(1));
    assert_eq!(code(&["get"]), Some(2));
    assert_eq!(code(&["ring", "--plan", "frobnicate"]), Some(2));
    assert_eq!(code(&["set", "", "v"]), Some(4));
    assert_eq!(code(&["node", "restart", "99"]), Some(4));
}

#[test]
fn status_check_says_all_up_in_one_line() {
    let chd = Chd::start(&["--nodes", "3"]);
    let out = chd.ctl(&["status", "--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "chd: all 3 nodes up\n");
}

#[test]
fn help_documents_the_exit_statuses() {
    let out = Command::new(common::CHCTL).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for line in ["Exit status:", "1  no such key", "3  cannot reach chd", "5  chd cannot serve it now"] {
        assert!(help.contains(line), "{line:?} not in:\n{help}");
    }
}
