//! Keys and values over chd's limits are refused by chctl before sending (issue 14, defect 6).

mod common;

use common::{stderr, Chd};

#[test]
fn a_value_over_the_limit_on_stdin_is_refused_with_exit_4() {
    let chd = Chd::start(&["--nodes", "3"]);
    let out = chd.ctl_stdin(&["set", "big", "-"], &vec![b'x'; 40 << 20]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(stderr(&out), "chctl: value is more than 33554432 bytes; the limit is 33554432\n");
    assert_eq!(chd.ctl(&["exists", "big"]).status.code(), Some(1), "nothing was stored");
    // Exactly at the limit is fine.
    let out = chd.ctl_stdin(&["set", "big", "-"], &vec![b'x'; 32 << 20]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_key_over_the_limit_is_refused_with_exit_4() {
    let chd = Chd::start(&["--nodes", "3"]);
    let key = "k".repeat(64 * 1024 + 1);
    for args in [&["set", &key, "v"][..], &["get", &key], &["del", &key], &["exists", &key]] {
        let out = chd.ctl(args);
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        assert_eq!(stderr(&out), "chctl: key is 65537 bytes; the limit is 65536\n");
    }
}
