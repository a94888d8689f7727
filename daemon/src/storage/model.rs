//! Model tests of the engines against a `BTreeMap`, across crashes: random puts, deletes,
//! syncs, and crashes drawn on the simulated disk ([`super::sim`]: a power cut, or a killed
//! process). After each crash the engine opens again and holds what the model allows:
//! - the append log alone: the state after some operation at or after the last sync (it keeps
//!   a prefix of its writes, and every write before a returned sync);
//! - the append log behind the write-ahead log: the state at the last sync, or, when it says
//!   it holds writes of an unframed batch ([`Engine::holds_unlogged_writes`]), for each key its
//!   value at the last sync or one written since.
//!
//! `CHD_MODEL_CASES` (default 100) sets the number of cases; `CHD_MODEL_SEED` the first seed
//! (printed).

use std::collections::BTreeMap;
use std::path::Path;

use super::append::{AppendLog, Shape};
use super::fsio::tap::{self, Tap};
use super::sim::{shm, Disk, Rng};
use super::wal::{Wal, CHECKPOINT_KEY};
use super::Engine;

type State = BTreeMap<Vec<u8>, Vec<u8>>;

const SHAPE: Shape = Shape { segment_bytes: 2048, rebuild_min: 16 };
const WAL_BYTES: u64 = 8 << 10;

/// The engine's keys below the write-ahead log's own (`ff ff ff ff ff ...`).
fn state(e: &dyn Engine) -> State {
    e.scan(b"", b"\xff", usize::MAX).unwrap().into_iter().collect()
}

fn open(dir: &Path, wal: bool) -> Box<dyn Engine> {
    let log = AppendLog::open_shaped(dir, SHAPE).unwrap_or_else(|e| panic!("an intact log was refused: {e}"));
    match wal {
        false => Box::new(log),
        true => Box::new(Wal::open_sized(log, dir, WAL_BYTES).unwrap_or_else(|e| panic!("refused: {e}"))),
    }
}

/// One case: `ops` random operations; panics with what went wrong.
fn case(seed: u64, ops: usize, wal: bool) {
    let mut rng = Rng::new(seed);
    let mut dir = shm();
    let mut engine = open(dir.path(), wal);
    let mut disk = Disk::snapshot(dir.path());
    tap::start(Tap::default());
    let mut model = State::new();
    // The model after each operation since the last sync (the first: at the sync).
    let mut since_sync = vec![model.clone()];
    for step in 0..ops {
        let key = format!("k{}", rng.below(12)).into_bytes();
        match rng.below(100) {
            0..=54 => {
                let value: Vec<u8> = (0..rng.below(300) as usize).map(|i| (step + i) as u8).collect();
                engine.put(&key, &value).unwrap();
                model.insert(key, value);
                since_sync.push(model.clone());
            }
            55..=79 => {
                engine.delete(&key).unwrap();
                model.remove(&key);
                since_sync.push(model.clone());
            }
            80..=91 => {
                engine.sync().unwrap();
                since_sync = vec![model.clone()];
            }
            _ => {
                for e in &tap::stop().unwrap().events {
                    disk.apply(e);
                }
                drop(engine);
                let killed = rng.coin();
                let crashed = shm();
                disk.crash_into(crashed.path(), killed, &mut rng);
                engine = open(crashed.path(), wal);
                let got = state(&*engine);
                let how = if killed { "kill" } else { "power cut" };
                let allowed = match (wal, engine.holds_unlogged_writes()) {
                    (false, _) => since_sync.contains(&got),
                    (true, false) => got == since_sync[0],
                    (true, true) => {
                        let mut keys: std::collections::BTreeSet<&Vec<u8>> = got.keys().collect();
                        keys.extend(since_sync.iter().flat_map(|m| m.keys()));
                        keys.into_iter().all(|k| since_sync.iter().any(|m| m.get(k) == got.get(k)))
                    }
                };
                assert!(
                    allowed,
                    "seed {seed} step {step}, {how}: a state that is not allowed ({} keys; {} at the last sync)",
                    got.len(),
                    since_sync[0].len()
                );
                if wal && engine.holds_unlogged_writes() {
                    engine.forget_unlogged_writes().unwrap();
                }
                model = got;
                since_sync = vec![model.clone()];
                dir = crashed;
                disk = Disk::snapshot(dir.path());
                tap::start(Tap::default());
            }
        }
        if !wal || !engine.holds_unlogged_writes() {
            assert_eq!(engine.get(b"k3").unwrap(), model.get(&b"k3"[..]).cloned(), "seed {seed} step {step}");
        }
    }
    tap::stop();
    engine.sync().unwrap();
    assert_eq!(state(&*engine), model, "seed {seed}: the end");
    assert!(!wal || engine.get(CHECKPOINT_KEY).unwrap().is_some());
    drop(engine);
    assert_eq!(state(&*open(dir.path(), wal)), model, "seed {seed}: a synced state did not come back");
}

fn cases(wal: bool) {
    let n: u64 = std::env::var("CHD_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let first: u64 = std::env::var("CHD_MODEL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000
    });
    println!("engine model test (write-ahead log: {wal}): CHD_MODEL_SEED={first} CHD_MODEL_CASES={n}");
    for seed in first..first + n {
        case(seed, 300, wal);
    }
}

#[test]
fn the_append_log_matches_a_map_across_crashes() {
    cases(false);
}

#[test]
fn the_append_log_behind_the_write_ahead_log_matches_a_map_across_crashes() {
    cases(true);
}
