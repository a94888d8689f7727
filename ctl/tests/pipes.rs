//! A closed stdout is a quiet, normal end; a full one is one line on stderr (issue 14, defect 1).

mod common;

use std::process::Stdio;

use common::{closed_pipe, stderr, Chd};

#[test]
fn a_reader_that_went_away_ends_chctl_quietly_with_exit_0() {
    let chd = Chd::start(&["--nodes", "3"]);
    chd.set("k", &"x".repeat(100_000));
    for args in [&["status"][..], &["status", "--json"], &["get", "k"], &["keys"], &["ring"], &["exists", "k"]] {
        let out = chd.ctl_to(args, closed_pipe());
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
}

#[test]
fn a_full_output_is_one_line_on_stderr_and_a_failure_not_a_panic() {
    let chd = Chd::start(&["--nodes", "3"]);
    chd.set("k", "value");
    for args in [&["status", "--json"][..], &["status"], &["get", "k"]] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let out = chd.ctl_to(args, Stdio::from(full));
        let code = out.status.code();
        assert!(code.is_some_and(|c| c != 0 && c != 101), "{args:?}: {code:?}");
        assert_eq!(stderr(&out), "chctl: cannot write output: No space left on device\n", "{args:?}");
    }
}
