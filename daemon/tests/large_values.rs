//! Issue 9, defect 4: huge writes must not get healthy workers killed as hung. A worker busy
//! writing and syncing 30 MiB values still answers pings (from its reader thread, and chd's
//! link sends pings ahead of queued writes), so chd keeps it, and the sets succeed.

mod common;

use chd_data::proto::{Request, Response};
use common::*;

#[test]
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
