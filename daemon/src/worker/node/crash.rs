//! The whole storage stack of a node (`Node`, the write-ahead log, the append log, value files)
//! crashed at every write and sync it makes, on a simulated disk.
//!
//! A seeded workload of batches (puts of small and large values, deletes, each batch synced)
//! runs once on real files while [`tap`] records every durable-state operation, so the state
//! of the disk after any prefix of those operations is known ([`Disk`]). At each crash point a
//! plausible power cut is drawn from that state and written to a fresh directory: each file
//! keeps a random subset of its unsynced pages (one of them torn at a 512-byte sector), a
//! random size between its synced and its written one, and each directory a random prefix of
//! its unsynced changes; or, one time in four, a killed process (every write kept). The stack
//! is opened on it and must:
//! - open (every such state is a database an intact disk can hold: refusing it is a bug);
//! - hold, for every key, the last write of the last acknowledged batch that touched it, or
//!   a later write issued before the crash;
//! - count, in its counters, exactly what a recount of the records finds, and report a
//!   highest version no lower than any stored one.
//!
//! `CHD_CRASH_POINTS` (default 100000) sets how many crash points a run checks,
//! `CHD_CRASH_SEED` the first workload's seed (printed; default from the clock), so a failure
//! can be repeated with the seed and the crash point it names.

use std::collections::BTreeMap;
use std::path::Path;

use chd_data::Record;

use super::*;
use crate::storage::append::{AppendLog, Shape};
use crate::storage::fsio::tap::{self, Event, Tap};
use crate::storage::sim::{shm, Disk, Rng};
use crate::storage::wal::Wal;

const WAL_BYTES: u64 = 16 << 10;
const SHAPE: Shape = Shape { segment_bytes: 4096, rebuild_min: 16 };
const PARTITIONS: u32 = 4;
const KEYS: u64 = 24;

type Stack = Node<Wal<AppendLog>>;

fn open(dir: &Path) -> io::Result<Stack> {
    let engine = Wal::open_sized(AppendLog::open_shaped(dir, SHAPE)?, dir, WAL_BYTES)?;
    Node::open(engine, dir, PARTITIONS)
}

fn key(k: u64) -> Vec<u8> {
    format!("key-{k:02}").into_bytes()
}

/// One workload: its recorded operations and what it wrote and when.
struct Run {
    seed: u64,
    _root: tempfile::TempDir,
    start: Disk,
    events: Vec<Event>,
    /// Per write: (event index at which it was issued, batch, key, record).
    writes: Vec<(usize, usize, u64, Record)>,
    /// Event index at which each batch's sync had returned.
    acks: Vec<usize>,
    /// The records after each acknowledged batch (index 0: before any).
    states: Vec<BTreeMap<u64, Record>>,
}

fn run(seed: u64, batches: usize) -> Run {
    let mut rng = Rng::new(seed);
    let root = shm();
    let mut node = open(root.path()).unwrap();
    let start = Disk::snapshot(root.path());
    tap::start(Tap::default());
    let (mut writes, mut acks, mut states) = (Vec::new(), Vec::new(), vec![BTreeMap::new()]);
    let mut state = BTreeMap::new();
    let mut version = 0;
    for batch in 0..batches {
        for _ in 0..1 + rng.below(8) {
            let k = rng.below(KEYS);
            // Now and then past the version ceiling, so that batches raise it.
            version += if rng.below(16) == 0 { CEILING_STEP } else { 1 };
            let value = match rng.below(10) {
                0..=1 => None,
                2 => Some(vec![version as u8; 4500 + rng.below(6000) as usize]),
                _ => Some(vec![version as u8; rng.below(400) as usize]),
            };
            let record = Record { version, value };
            writes.push((tap::len(), batch, k, record.clone()));
            node.put(&key(k), &record).unwrap();
            state.insert(k, record);
        }
        node.sync().unwrap();
        acks.push(tap::len());
        states.push(state.clone());
    }
    let events = tap::stop().unwrap().events;
    drop(node);
    Run { seed, _root: root, start, events, writes, acks, states }
}

/// Opens the stack after a crash at event `at` (drawn with `rng`) and checks it; `Err` says why.
fn check(run: &Run, disk: &Disk, at: usize, rng: &mut Rng) -> Result<(), String> {
    let killed = rng.below(4) == 0;
    let dir = shm();
    disk.crash_into(dir.path(), killed, rng);
    let how = if killed { "kill" } else { "power cut" };
    let mut node = open(dir.path()).map_err(|e| format!("{how}: an intact database was refused: {e}"))?;
    let acked = run.acks.partition_point(|&a| a <= at);
    let durable = &run.states[acked];
    let mut stored_max = 0;
    for k in 0..KEYS {
        let got = node.get(&key(k)).map_err(|e| format!("{how}: key {k}: {e}"))?;
        let later: Vec<&Record> =
            run.writes.iter().filter(|w| w.1 == acked && w.0 < at && w.2 == k).map(|w| &w.3).collect();
        let ok = match &got {
            None => durable.get(&k).is_none(),
            Some(r) => durable.get(&k) == Some(r) || later.contains(&r),
        };
        if !ok {
            let v = |r: Option<&Record>| r.map(|r| (r.version, r.value.as_ref().map(Vec::len)));
            return Err(format!(
                "{how}: key {k} holds {:?}; acknowledged {:?}, issued since {:?}",
                v(got.as_ref()),
                v(durable.get(&k)),
                later.iter().map(|r| v(Some(r))).collect::<Vec<_>>()
            ));
        }
        stored_max = stored_max.max(got.map_or(0, |r| r.version));
    }
    let (live, max) = super::tests::truth(&node.engine);
    if node.max_version() < max.max(stored_max) {
        return Err(format!("{how}: highest version {} below a stored {max}", node.max_version()));
    }
    if !node.dirty && node.live_keys() != live {
        return Err(format!("{how}: counters trusted at open say {} live keys, the records {live}", node.live_keys()));
    }
    for _ in 0..100 {
        if !node.dirty {
            break;
        }
        node.sync().map_err(|e| format!("{how}: sync after open: {e}"))?;
    }
    if node.live_keys() != live {
        return Err(format!("{how}: {} live keys after the recount, the records {live}", node.live_keys()));
    }
    Ok(())
}

#[test]
fn every_crash_point_of_the_whole_stack_keeps_acknowledged_writes_and_exact_counters() {
    let points: usize = std::env::var("CHD_CRASH_POINTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let first: u64 = std::env::var("CHD_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000
    });
    println!("whole-stack crash test: CHD_CRASH_SEED={first} CHD_CRASH_POINTS={points}");
    let started = std::time::Instant::now();
    let (mut checked, mut seed, mut runs) = (0, first, 0);
    while checked < points {
        let run = run(seed, 60);
        let mut disk = run.start.clone();
        for at in 0..=run.events.len() {
            if checked >= points {
                break;
            }
            if at > 0 {
                disk.apply(&run.events[at - 1]);
            }
            let mut rng = Rng::new(run.seed.wrapping_mul(1_000_003).wrapping_add(at as u64));
            if let Err(why) = check(&run, &disk, at, &mut rng) {
                panic!("CHD_CRASH_SEED={} crash point {at} of {}: {why}", run.seed, run.events.len());
            }
            checked += 1;
        }
        seed += 1;
        runs += 1;
    }
    println!(
        "whole-stack crash test: {checked} crash points in {runs} workloads (seeds {first}..{seed}), {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
