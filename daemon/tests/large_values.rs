//! Issue 9, defect 4: huge writes must not get healthy workers killed as hung. A worker busy
//! writing and syncing 30 MiB values still answers pings (from its reader thread, and chd's
//! link sends pings ahead of queued writes), so chd keeps it, and the sets succeed.

mod common;

use chd_data::proto::{Request, Response};
use common::*;

#[test]
// What is missing (measured on the worker-health branch, 2 cores):
// - release build: no worker is killed as hung any more, but the sets fail with "0 (or 1) of
//   2": the coordinator gives a put 3 s (coordinator::CALL_TIMEOUT), and 12 concurrent puts of
//   30 MiB to 3 replicas take longer. A put's deadline must allow for its size, or chd must
//   wait as long as the worker makes progress (Pong::batches).
// - debug build: workers are still declared hung, because chd's own runtime threads are busy
//   for seconds encoding and decoding 30 MiB `Vec<u8>`s with postcard one byte at a time
//   (1.9 s to encode, 4.4 s to decode 30 MiB without optimizations), so the pinger and the
//   link's reader do not run. `#[serde(with = "serde_bytes")]` on record and request values
//   (same postcard encoding, so wire-compatible) makes these copies.
#[ignore = "needs chd-side changes: put deadlines for large values, and fast value encoding"]
fn concurrent_30_mib_sets_succeed_and_no_worker_is_killed_as_hung() {
    let chd = Chd::start(&[]);
    let value = "v".repeat(30 << 20);
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (socket, value) = (chd.socket.clone(), value.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket).unwrap();
                (0..3)
                    .map(|i| {
                        let r =
                            c.call(Request::Set { key: format!("big-{t}-{i}").into(), value: value.clone().into() });
                        (matches!(r, Ok(Ok(Response::Done))), format!("big-{t}-{i}: {r:?}"))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<(bool, String)> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let nodes = chd.status()["nodes"].as_array().unwrap().clone();
    assert!(nodes.iter().all(|n| n["restarts"] == 0), "a busy worker was restarted: {nodes:?}\n{}", chd.log());
    assert!(!chd.log().contains("hung"), "{}", chd.log());
    let failed: Vec<&String> = results.iter().filter(|(ok, _)| !ok).map(|(_, r)| r).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(chd.client().get("big-3-2").map(|v| v.len()), Some(30 << 20));
}
