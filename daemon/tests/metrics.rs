//! Issue 14, metrics: `chctl stats --json` and the Prometheus endpoint (`--metrics-listen`)
//! count exactly the operations a client did, on both front ends, and /metrics is valid
//! Prometheus text with the documented names.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use chd_data::proto::Request;
use common::*;
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("chd answers and closes");
    let (head, body) = out.split_once("\r\n\r\n").expect("a head and a body");
    (head.to_string(), body.to_string())
}

fn resp(chd: &Chd, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(chd.socket.with_file_name("chd-resp.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

/// Parses Prometheus text: every sample line is `name{labels} value` (or `name value`), every
/// sample's family has a `# TYPE` line before it. Returns samples keyed by `name{labels}`.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample and its value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad name: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "bad labels: {line}");
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|k| k == "histogram")))
            .unwrap_or(name);
        assert!(types.contains_key(family), "no # TYPE before {line}");
        assert!(samples.insert(series.to_string(), value).is_none(), "duplicate sample {series}");
    }
    samples
}

fn stats(chd: &Chd) -> Value {
    let out = chd.ctl(&["stats", "--json"]);
    assert!(out.status.success(), "stats: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn command<'a>(s: &'a Value, api: &str, name: &str) -> &'a Value {
    s["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["api"] == api && c["command"] == name)
        .unwrap_or_else(|| panic!("no {api} {name} in {s}"))
}

fn nodes_sum(s: &Value, f: impl Fn(&Value) -> u64) -> u64 {
    s["nodes"].as_array().unwrap().iter().map(f).sum()
}

#[test]
fn stats_and_prometheus_count_what_clients_did() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // No startup repair: the repair count is then exactly the one asked for below.
    let chd = Chd::start(&["--metrics-listen", &addr, "--startup-repair", "false"]);

    for i in 0..5 {
        chd.set(&format!("k{i}"), &format!("value {i}"));
    }
    for i in 0..3 {
        assert_eq!(chd.get(&format!("k{i}")).unwrap(), format!("value {i}").as_bytes());
    }
    assert_eq!(chd.get("missing"), None);
    // A refused request counts under its kind of error.
    let mut c = Client::connect(&chd.socket).unwrap();
    assert_eq!(c.call(Request::Get { key: vec![] }).unwrap(), Err(chd_data::Error::EmptyKey));
    // RESP: one SET, one GET (answered from the cache), one unknown command.
    let out = resp(&chd, b"SET r 1\r\nGET r\r\nNOSUCHCMD\r\nQUIT\r\n");
    assert!(out.starts_with(b"+OK\r\n$1\r\n1\r\n-ERR unknown command"), "{}", String::from_utf8_lossy(&out));
    let repaired = chd.ctl(&["repair"]);
    assert!(repaired.status.success(), "{}", String::from_utf8_lossy(&repaired.stderr));

    let s = stats(&chd);
    let set = command(&s, "chd", "set");
    assert_eq!(set["outcomes"], serde_json::json!({ "ok": 5 }));
    assert_eq!(set["latency_us"]["count"], 5);
    let p = |k: &str| set["latency_us"][k].as_u64().unwrap();
    assert!(p("p50") > 0 && p("p50") <= p("p99") && p("p99") <= p("p999"), "{set}");
    assert_eq!(command(&s, "chd", "get")["outcomes"], serde_json::json!({ "ok": 4, "invalid": 1 }));
    assert_eq!(command(&s, "chd", "repair")["outcomes"], serde_json::json!({ "ok": 1 }));
    assert_eq!(command(&s, "resp", "set")["outcomes"], serde_json::json!({ "ok": 1 }));
    assert_eq!(command(&s, "resp", "get")["outcomes"], serde_json::json!({ "ok": 1 }));
    assert_eq!(command(&s, "resp", "other")["outcomes"], serde_json::json!({ "error": 1 }));
    // Reads of keys just written come from the cache; the missing key did not.
    assert_eq!((s["cache_hits"].as_u64(), s["cache_misses"].as_u64()), (Some(4), Some(1)));
    assert_eq!((s["repairs"].as_u64(), s["rebuilds"].as_u64()), (Some(1), Some(0)));
    let api = |name: &str| s["apis"].as_array().unwrap().iter().find(|a| a["api"] == name).unwrap().clone();
    assert!(api("chd")["bytes_in"].as_u64().unwrap() > 5 * "value 0".len() as u64);
    assert_eq!(api("resp")["bytes_in"], "SET r 1\r\nGET r\r\nNOSUCHCMD\r\nQUIT\r\n".len());
    assert_eq!(api("resp")["bytes_out"], out.len());
    // 6 keys on 3 replicas each; every node wrote its share in synced batches.
    assert_eq!(nodes_sum(&s, |n| n["keys"].as_u64().unwrap()), 18);
    assert!(nodes_sum(&s, |n| n["batch_size"]["sum"].as_u64().unwrap()) >= 18, "{s}");
    for n in s["nodes"].as_array().unwrap() {
        assert_eq!(n["reachable"], true);
        assert!(n["sync_us"]["count"].as_u64().unwrap() >= 1, "{n}");
        assert_eq!(n["sync_us"]["count"], n["batch_size"]["count"], "one sync per batch: {n}");
    }

    let (head, body) = http_get(port, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    let m = parse_prometheus(&body);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in\n{body}"));
    assert_eq!(get(r#"chd_requests_total{api="chd",command="set",outcome="ok"}"#), 5.0);
    assert_eq!(get(r#"chd_requests_total{api="chd",command="get",outcome="invalid"}"#), 1.0);
    assert_eq!(get(r#"chd_requests_total{api="resp",command="other",outcome="error"}"#), 1.0);
    assert_eq!(get(r#"chd_request_duration_seconds_count{api="chd",command="set"}"#), 5.0);
    assert_eq!(get(r#"chd_request_duration_seconds_bucket{api="chd",command="set",le="+Inf"}"#), 5.0);
    let set_sum = get(r#"chd_request_duration_seconds_sum{api="chd",command="set"}"#);
    assert!(set_sum > 0.0 && set_sum < 60.0, "{set_sum}");
    // Buckets are cumulative: never decreasing with `le`.
    let buckets: Vec<f64> = m
        .iter()
        .filter(|(k, _)| k.starts_with(r#"chd_request_duration_seconds_bucket{api="chd",command="set","#))
        .map(|(_, v)| *v)
        .collect();
    assert!(buckets.iter().all(|&v| v <= 5.0) && buckets.len() > 20, "{buckets:?}");
    let keys: f64 = (0..4).map(|n| get(&format!("chd_node_keys{{node=\"{n}\"}}"))).sum();
    assert_eq!(keys, 18.0);
    for n in 0..4 {
        assert!(get(&format!("chd_node_bytes{{node=\"{n}\"}}")) > 0.0);
        assert!(get(&format!("chd_node_fsync_seconds_count{{node=\"{n}\"}}")) >= 1.0);
        assert!(get(&format!("chd_node_batch_size_count{{node=\"{n}\"}}")) >= 1.0);
    }
    assert_eq!(get("chd_cache_hits_total"), 4.0);
    assert_eq!(get("chd_cache_misses_total"), 1.0);
    assert_eq!(get("chd_repairs_total"), 1.0);
    assert_eq!(get("chd_rebuilds_total"), 0.0);

    let (head, _) = http_get(port, "/");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[test]
fn metrics_listen_refuses_an_address_other_than_loopback() {
    let chd = Chd::unstarted(&["--metrics-listen", "0.0.0.0:9646"]);
    let out = chd.command().output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"), "{}", String::from_utf8_lossy(&out.stderr));
}
