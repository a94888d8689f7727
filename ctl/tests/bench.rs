//! `chctl bench` leaves the store as it found it and refuses impossible arguments (issue 14,
//! defect 3).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, Chd};

fn keys(chd: &Chd, prefix: &str) -> String {
    let out = chd.ctl(&["keys", "--prefix", prefix]);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bench_deletes_what_it_wrote_and_touches_no_other_key() {
    let chd = Chd::start(&["--nodes", "3"]);
    chd.set("bench:0:0", "mine");
    let out = chd.ctl(&["bench", "--clients", "2", "--seconds", "0.3", "--keys", "50"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("durable set") && report.contains("get"), "{report}");
    assert_eq!(keys(&chd, "chctl-bench:"), "", "bench left keys behind");
    assert_eq!(keys(&chd, ""), "bench:0:0\n");
    assert_eq!(chd.ctl(&["get", "bench:0:0"]).stdout, b"mine");
}

#[test]
fn bench_cleans_up_when_interrupted() {
    let chd = Chd::start(&["--nodes", "3"]);
    let child = chd
        .command(&["bench", "--seconds", "60", "--keys", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while keys(&chd, "chctl-bench:").is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "bench wrote nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted; deleted the"), "{}", stderr(&out));
    assert_eq!(keys(&chd, "chctl-bench:"), "", "bench left keys behind");
}

#[test]
fn impossible_arguments_are_usage_errors_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    for (args, says) in [
        (&["--seconds", "0"][..], "--seconds must be more than 0"),
        (&["--seconds", "-1"], "--seconds must be more than 0"),
        (&["--clients", "0"], "--clients must be 1 to 1024"),
        (&["--clients", "2000"], "chd accepts at most 1024 connections"),
    ] {
        let out = Command::new(common::CHCTL).arg("--socket").arg(&socket).arg("bench").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "{args:?}");
    }
}
