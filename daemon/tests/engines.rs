//! Storage engines as a user chooses them: `engine` picks the engine of new node databases, a
//! database keeps its engine across restarts, `chctl node rebuild ID --engine E` converts one
//! node from its peers, and `chctl status` shows each node's engine.

mod common;

use std::time::Duration;

use common::{wait_for, Chd};

fn engines(chd: &Chd) -> Vec<String> {
    let status = chd.status();
    let mut nodes: Vec<_> = status["nodes"].as_array().unwrap().clone();
    nodes.sort_by_key(|n| n["id"].as_u64());
    nodes.iter().map(|n| n["engine"].as_str().unwrap_or("-").to_string()).collect()
}

#[test]
fn sled_serves_and_a_node_converts_to_the_append_log_and_back() {
    let mut chd = Chd::start(&["--engine", "sled"]);
    assert_eq!(engines(&chd), ["sled"; 4]);
    for n in 0..4 {
        assert!(chd.data.join(format!("nodes/{n}/db")).exists(), "node {n} has no sled database");
    }
    let mut client = chd.client();
    let pairs: Vec<(String, String)> = (0..300).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
    client.set_many(pairs.clone());

    let out = chd.ctl(&["node", "rebuild", "1", "--engine", "append"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    chd.wait_all_up(Duration::from_secs(60));
    assert_eq!(engines(&chd), ["sled", "append", "sled", "sled"]);
    assert!(chd.data.join("nodes/1/log").is_dir() && !chd.data.join("nodes/1/db").exists());

    // Every key is on every replica it belongs to: the rebuilt node holds its share again.
    let copies: u64 = 3 * pairs.len() as u64;
    wait_for("3 copies of every key", Duration::from_secs(30), || chd.stored_copies() == copies);

    // A restart keeps each database's engine, whatever `engine` says for new ones.
    assert!(chd.term().success());
    chd.args = vec!["--engine".into(), "append".into()];
    chd.restart();
    assert_eq!(engines(&chd), ["sled", "append", "sled", "sled"]);
    let mut client = chd.client();
    for (k, v) in &pairs {
        assert_eq!(client.get(k).as_deref(), Some(v.as_bytes()), "{k}");
    }

    // Back to sled, and a rebuild without --engine keeps the node's engine.
    let out = chd.ctl(&["node", "rebuild", "1", "--engine", "sled"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    chd.wait_all_up(Duration::from_secs(60));
    let out = chd.ctl(&["node", "rebuild", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    chd.wait_all_up(Duration::from_secs(60));
    assert_eq!(engines(&chd), ["sled"; 4]);
    for (k, v) in &pairs {
        assert_eq!(chd.get(k).as_deref(), Some(v.as_bytes()), "{k}");
    }
}

#[test]
fn status_names_the_resp_socket_and_a_bad_engine_is_refused() {
    let chd = Chd::start(&[]);
    let status = chd.status();
    let resp = status["resp_socket"].as_str().expect("resp_socket in status");
    assert!(resp.ends_with("chd-resp.sock"), "{resp}");
    let out = chd.ctl(&["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("RESP socket {resp}")));
    assert_eq!(engines(&chd), ["append"; 4]);

    let out = chd.ctl(&["node", "rebuild", "1", "--engine", "rocksdb"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let out = chd.command().arg("--engine").arg("rocksdb").arg("check-config").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("append, sled"), "{}", String::from_utf8_lossy(&out.stderr));
}
