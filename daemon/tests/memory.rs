//! Issue 9: memory stays bounded whatever clients send, also with maximal values and a hung
//! worker. Its own test binary, so that it does not share the machine with other heavy tests.

mod common;

use chd_data::proto::{Request, Response};
use common::*;

/// chd's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Issue 9: memory stays bounded whatever clients send. 8 clients write maximal (32 MiB) values
/// while one worker hangs (it is stopped again each time chd replaces it): chd's peak resident
/// memory stays under 1 GiB. `CHD_TEST_SECONDS` sets how long (default 15 s; the README's
/// figure is from 60 s).
#[test]
fn memory_stays_bounded_under_maximal_values_with_a_hung_worker() {
    let chd = Chd::start(&[]);
    let secs: u64 = std::env::var("CHD_TEST_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let value = vec![7u8; chd_data::proto::MAX_VALUE];
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let (socket, value, stop) = (chd.socket.clone(), value.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut acked = 0u32;
                let mut c = None;
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let client = match c.as_mut() {
                        Some(c) => c,
                        None => match Client::connect(&socket) {
                            Ok(n) => c.insert(n),
                            Err(_) => continue,
                        },
                    };
                    match client.call(Request::Set { key: format!("max-{t}-{}", i % 2).into(), value: value.clone() }) {
                        Ok(Ok(Response::Done)) => acked += 1,
                        Ok(_) => {}
                        Err(_) => c = None,
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect();
    let start = std::time::Instant::now();
    let mut stopped = Vec::new();
    while start.elapsed() < std::time::Duration::from_secs(secs) {
        // Keep node 1 hung: stop each new worker of it as soon as it appears.
        if let Some(pid) = chd
            .try_status()
            .and_then(|s| s["nodes"].as_array().unwrap().iter().find(|n| n["id"] == 1).and_then(|n| n["pid"].as_u64()))
        {
            let pid = pid as u32;
            if !stopped.contains(&pid) && alive(pid) {
                signal(pid, libc::SIGSTOP);
                stopped.push(pid);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked: u32 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let peak = peak_rss(chd.pid());
    eprintln!(
        "8 clients x 32 MiB for {secs} s with node 1 hung ({} workers stopped): {acked} writes acknowledged, chd peak RSS {} MiB",
        stopped.len(),
        peak >> 20
    );
    assert!(acked > 0, "no write was acknowledged");
    assert!(peak < 1 << 30, "chd's peak RSS {} MiB is over 1 GiB", peak >> 20);
    for pid in stopped {
        if alive(pid) {
            signal(pid, libc::SIGCONT);
        }
    }
}
