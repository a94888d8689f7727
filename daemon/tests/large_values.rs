//! Issue 9, defect 4: huge writes must not get healthy workers killed as hung. A worker busy
//! writing and syncing 30 MiB values still answers pings (from its reader thread, and chd's
//! link sends pings ahead of queued writes), so chd keeps it, and the sets succeed.

mod common;

use chd_data::proto::{Request, Response};
use common::*;

#[test]
// What is missing (measured on the worker-health branch, 2 cores):
// - the sets fail with "0 (or 1) of 2": the coordinator gives a put 3 s
//   (coordinator::CALL_TIMEOUT), and 12 concurrent puts of 30 MiB to 3 replicas take longer.
//   A put's deadline must allow for its size, or chd must wait as long as the worker makes
//   progress (Pong::batches).
// - workers are still declared hung at times (release and debug), though a worker answers a
//   ping as soon as it reads it: traced, the ping never reached the worker, because it sat in
//   chd's link behind a 30 MiB frame chd was still writing. chd's runtime threads are busy
//   encoding and decoding 30 MiB `Vec<u8>`s with postcard one byte at a time (about 50 ms each
//   way per 30 MiB in release, 1.9 s / 4.4 s in debug; 12 sets cost seconds of CPU on 2
//   cores), so the link's writer and reader tasks hardly run. `#[serde(with = "serde_bytes")]`
//   on record and request values (the same postcard encoding, so wire-compatible) makes these
//   copies; encoding large frames off the runtime (spawn_blocking) would help too.
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
