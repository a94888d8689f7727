//! Guarantee 2: reads never go back in time, also while nodes die, hang and catch up.
//!
//! One writer per key writes 1, 2, 3, ... while readers read. For a register written with
//! increasing values, linearizability comes down to: a read returns at least the newest value
//! acknowledged before it started, at least the newest value any other read returned before it
//! started, and nothing that was not yet being written when it ended.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chd_data::proto::{Request, Response};
use common::*;

#[derive(Clone, Copy, Debug)]
struct Op {
    key: usize,
    start: Instant,
    end: Instant,
    value: u64,
    /// For writes: acknowledged (a failed write may or may not have taken effect).
    acked: bool,
}

const KEYS: usize = 4;

#[test]
fn reads_never_go_back_while_nodes_fail() {
    let chd = Chd::start(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();

    let writer = {
        let (socket, stop) = (chd.socket.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = Client::connect(&socket).unwrap();
            let mut writes: Vec<Op> = Vec::new();
            let mut next = [1u64; KEYS];
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let key = i % KEYS;
                i += 1;
                let value = next[key];
                let start = Instant::now();
                let r = c.call(Request::Set { key: format!("lin-{key}").into(), value: value.to_string().into() });
                let end = Instant::now();
                next[key] += 1;
                writes.push(Op { key, start, end, value, acked: matches!(r, Ok(Ok(Response::Done))) });
            }
            writes
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (socket, stop) = (chd.socket.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket).unwrap();
                let mut reads: Vec<Op> = Vec::new();
                let mut i = r;
                while !stop.load(Ordering::SeqCst) {
                    let key = i % KEYS;
                    i += 1;
                    let start = Instant::now();
                    let r = c.call(Request::Get { key: format!("lin-{key}").into() });
                    let end = Instant::now();
                    if let Ok(Ok(Response::Value(v))) = r {
                        let value = v.map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap());
                        reads.push(Op { key, start, end, value, acked: true });
                    }
                }
                reads
            })
        })
        .collect();

    // Failures while the history is recorded: a killed worker, then a hung one.
    std::thread::sleep(Duration::from_millis(500));
    signal(chd.node(1)["pid"].as_u64().unwrap() as u32, libc::SIGKILL);
    wait_for("node 1 back up", Duration::from_secs(20), || chd.node(1)["state"] == "up");
    let hung = chd.node(2)["pid"].as_u64().unwrap() as u32;
    signal(hung, libc::SIGSTOP);
    wait_for("node 2 replaced", Duration::from_secs(20), || {
        chd.node(2)["pid"].as_u64().is_some_and(|p| p as u32 != hung) && chd.node(2)["state"] == "up"
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);

    let writes = writer.join().unwrap();
    let reads: Vec<Op> = readers.into_iter().flat_map(|r| r.join().unwrap()).collect();
    let acked = writes.iter().filter(|w| w.acked).count();
    assert!(acked > 50 && reads.len() > 50, "too little history: {} writes, {} reads", writes.len(), reads.len());
    let attempted_by = |key: usize, t: Instant| {
        // Every value up to that of the last write started before t may have taken effect.
        writes.iter().filter(|w| w.key == key && w.start <= t).map(|w| w.value).max().unwrap_or(0)
    };
    for r in &reads {
        let acked_before =
            writes.iter().filter(|w| w.key == r.key && w.acked && w.end < r.start).map(|w| w.value).max().unwrap_or(0);
        let seen_before =
            reads.iter().filter(|o| o.key == r.key && o.end < r.start).map(|o| o.value).max().unwrap_or(0);
        assert!(r.value >= acked_before, "read {r:?} missed acknowledged write {acked_before}");
        assert!(r.value >= seen_before, "read {r:?} went back from {seen_before} seen by an earlier read");
        assert!(r.value <= attempted_by(r.key, r.end), "read {r:?} returned a value never written");
    }
    eprintln!("checked {} reads against {} acknowledged writes over {:?}", reads.len(), acked, t0.elapsed());
}
