//! One grammar for every command, `--json` everywhere, and binary keys and values (issue 14,
//! defects 9 and 10).

mod common;

use std::process::Command;

use common::{stderr, Chd};

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Defect 10: keys and values given as arguments had to be UTF-8, so a binary key could not be
/// stored at all.
#[test]
fn binary_keys_and_values_through_hex_and_files() {
    let chd = Chd::start(&["--nodes", "3"]);
    // A key and a value that are not UTF-8, with a NUL and a newline in them.
    assert!(chd.ctl(&["set", "--hex", "00ff0a80", "c3280aff"]).status.success());
    let out = chd.ctl(&["get", "--hex", "00ff0a80"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "c3280aff\n", "{}", stderr(&out));
    // Without --hex the raw bytes go to the pipe, exactly.
    assert!(chd.ctl(&["set", "--hex", "6b", "c3280aff"]).status.success());
    assert_eq!(chd.ctl(&["get", "k"]).stdout, [0xc3, 0x28, 0x0a, 0xff]);
    let keys = chd.ctl(&["keys", "--hex", "--prefix", "00"]);
    assert_eq!(String::from_utf8_lossy(&keys.stdout), "00ff0a80\n");
    assert_eq!(chd.ctl(&["exists", "--hex", "00ff0a80"]).status.code(), Some(0));
    // A value from a file, byte for byte, and from stdin with --value-file -.
    let value: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let file = chd.dir.path().join("value.bin");
    std::fs::write(&file, &value).unwrap();
    assert!(chd.ctl(&["set", "f", "--value-file", file.to_str().unwrap()]).status.success());
    assert_eq!(chd.ctl(&["get", "f"]).stdout, value);
    assert!(chd.ctl_stdin(&["set", "s", "--value-file", "-"], &value[..300]).status.success());
    assert_eq!(chd.ctl(&["get", "s"]).stdout, &value[..300]);
    let missing = chd.ctl(&["set", "f", "--value-file", "/nonexistent/x"]);
    assert_eq!(missing.status.code(), Some(6), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("cannot open /nonexistent/x"), "{}", stderr(&missing));
    assert_eq!(chd.ctl(&["set", "--hex", "0g", "00"]).status.code(), Some(2));
    assert!(chd.ctl(&["del", "--hex", "00ff0a80"]).status.success());
    assert_eq!(chd.ctl(&["get", "--hex", "00ff0a80"]).status.code(), Some(1));
}

/// Defect 9: `--json` was only on some commands.
#[test]
fn every_command_answers_in_json() {
    let chd = Chd::start(&["--nodes", "3"]);
    assert_eq!(json(&chd.ctl(&["--json", "set", "a", "1"])), serde_json::json!({"key": "a", "bytes": 1}));
    assert_eq!(json(&chd.ctl(&["get", "a", "--json"])), serde_json::json!({"key": "a", "value": "1"}));
    assert!(chd.ctl(&["set", "--hex", "62", "ff"]).status.success());
    assert_eq!(json(&chd.ctl(&["get", "b", "--json"])), serde_json::json!({"key": "b", "value_hex": "ff"}));
    assert_eq!(json(&chd.ctl(&["exists", "a", "--json"])), serde_json::json!({"key": "a", "exists": true}));
    let missing = chd.ctl(&["get", "nope", "--json"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&missing.stdout).unwrap()["found"], false);
    // keys: JSON lines.
    let keys = chd.ctl(&["keys", "--json"]);
    let mut lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&keys.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    lines.sort_by_key(|v| v.to_string());
    assert_eq!(lines, [serde_json::json!({"key": "a"}), serde_json::json!({"key": "b"})]);
    assert_eq!(json(&chd.ctl(&["del", "a", "--json"])), serde_json::json!({"key": "a", "deleted": true}));
    assert_eq!(json(&chd.ctl(&["status", "--check", "--json"]))["healthy"], true);
    assert_eq!(json(&chd.ctl(&["repair", "--json"]))["unreachable_nodes"], serde_json::json!([]));
    assert_eq!(json(&chd.ctl(&["node", "restart", "1", "--json"]))["node"], 1);
    assert!(json(&chd.ctl(&["ring", "--json"]))["nodes"].is_array());
}

/// Defect 9: `ring --plan add 2` but `node add --count 2`; the plan's headers read `SEND SEND
/// RECEIVE RECEIVE`; the ring's KEYSPACE column summed to 300% unexplained.
#[test]
fn ring_plan_takes_count_like_node_add_and_its_tables_say_what_they_show() {
    let chd = Chd::start(&["--nodes", "4"]);
    let by_count = json(&chd.ctl(&["ring", "--plan", "add", "--count", "2", "--json"]));
    assert_eq!(by_count["what"], json(&chd.ctl(&["ring", "--plan", "add", "2", "--json"]))["what"]);
    assert!(by_count["what"].as_str().unwrap().contains('2') || by_count["what"].as_str().unwrap().contains("nodes"));
    assert_eq!(chd.ctl(&["ring", "--plan", "remove"]).status.code(), Some(2));
    assert_eq!(chd.ctl(&["ring", "--count", "2"]).status.code(), Some(2));
    let plan = String::from_utf8_lossy(&chd.ctl(&["ring", "--plan", "remove", "2"]).stdout).into_owned();
    let header: Vec<&str> = plan.lines().nth(1).unwrap().split_whitespace().collect();
    let mut unique = header.clone();
    unique.dedup();
    assert_eq!(header, unique, "ambiguous headers: {plan}");
    assert!(header.contains(&"SEND_BYTES") && header.contains(&"RECV_KEYS"), "{plan}");
    let ring = String::from_utf8_lossy(&chd.ctl(&["ring"]).stdout).into_owned();
    assert!(ring.contains("KEYS_HELD") && ring.contains("each key is on 3 nodes, so they add up to 300%"), "{ring}");
}

/// Defect 9: KEY, VALUE, ID and --count had no help.
#[test]
fn every_argument_has_help() {
    for cmd in
        [&["set"][..], &["get"], &["del"], &["exists"], &["keys"], &["ring"], &["node", "add"], &["node", "remove"]]
    {
        let out = Command::new(common::CHCTL).args(cmd).arg("-h").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        let mut in_args = false;
        for line in help.lines() {
            if line == "Arguments:" || line == "Options:" {
                in_args = true;
                continue;
            }
            let t = line.trim_start();
            // An argument line: its name, then at least two spaces, then its help.
            if in_args && (t.starts_with('<') || t.starts_with('-')) {
                assert!(t.contains("  "), "{cmd:?}: no help for {t:?}:\n{help}");
            }
        }
    }
}
