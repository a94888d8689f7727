//! Synthetic histories from a simulated register, for the checker's tests and benchmark.
//!
//! Clients run one operation at a time against a perfect (linearizable) register per key: each
//! operation takes effect at one instant inside its interval, so the history is linearizable by
//! construction. Some operations end with an unknown outcome, as under faults: the client gives
//! up (`end: null`) or gets an error (`ok: false`), and the operation took effect inside its
//! interval, long after the client gave up, or never. Stalls (a stopped server) make every
//! operation started during them slow, and those slower than the deadline time out together.

use crate::history::{Kind, Op};

pub use crate::rng::Rng;

/// What to simulate. Times are in seconds.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub clients: usize,
    pub keys: usize,
    /// Number of operations in the history.
    pub ops: usize,
    pub read_ratio: f64,
    pub delete_ratio: f64,
    /// Probability that an operation, outside stalls, ends with an unknown outcome.
    pub unknown_ratio: f64,
    /// Mean latency of an operation, and mean pause of a client between two.
    pub latency: f64,
    pub think: f64,
    /// A client gives up on an operation after this long (`end: null`).
    pub deadline: f64,
    /// Mean time between stalls (0: none) and mean stall length.
    pub stall_every: f64,
    pub stall_mean: f64,
    /// `Some(n)`: written values are drawn from `n` names, so writes repeat values; `None`:
    /// every write has a unique value, as the torture load does.
    pub value_space: Option<usize>,
}

impl Config {
    /// Roughly the torture load: 8 clients on 40 keys, unique values, about 5% unknown outcomes,
    /// stalls of a second or two every few seconds.
    pub fn torture(seed: u64, ops: usize) -> Config {
        Config {
            seed,
            clients: 8,
            keys: 40,
            ops,
            read_ratio: 0.45,
            delete_ratio: 0.15,
            unknown_ratio: 0.045,
            latency: 0.004,
            think: 0.008,
            deadline: 1.0,
            stall_every: 20.0,
            stall_mean: 1.5,
            value_space: None,
        }
    }

    /// A small, highly concurrent history: few keys, few values, long latencies.
    pub fn contended(seed: u64, ops: usize) -> Config {
        Config {
            seed,
            clients: 5,
            keys: 2,
            ops,
            read_ratio: 0.5,
            delete_ratio: 0.15,
            unknown_ratio: 0.1,
            latency: 0.02,
            think: 0.005,
            deadline: 0.06,
            stall_every: 0.0,
            stall_mean: 0.0,
            value_space: Some(4),
        }
    }
}

/// Generates a linearizable history, ordered by start time.
pub fn generate(cfg: &Config) -> Vec<Op> {
    let mut rng = Rng::new(cfg.seed);
    let mut clock: Vec<f64> = (0..cfg.clients).map(|_| rng.unit() * cfg.think).collect();
    let mut next_stall = if cfg.stall_every > 0.0 { rng.exp(cfg.stall_every) } else { f64::INFINITY };
    let mut stall_end = f64::NEG_INFINITY;
    let mut ops = Vec::with_capacity(cfg.ops);
    // (instant the operation takes effect, index into ops); reads get their value from it.
    let mut effects: Vec<(f64, usize)> = Vec::with_capacity(cfg.ops);
    for n in 0..cfg.ops {
        let c = (0..cfg.clients).min_by(|&a, &b| clock[a].total_cmp(&clock[b])).unwrap_or(0);
        let start = clock[c];
        while start >= next_stall {
            stall_end = next_stall + rng.exp(cfg.stall_mean);
            next_stall = stall_end + rng.exp(cfg.stall_every);
        }
        let mut latency = rng.exp(cfg.latency);
        if rng.chance(0.01) {
            latency *= 20.0; // a slow disk, a compaction: a tail
        }
        let stalled = start < stall_end;
        if stalled {
            latency += stall_end - start;
        }
        let key = format!("k{}", rng.index(cfg.keys));
        let roll = rng.unit();
        let (kind, value) = if roll < cfg.read_ratio {
            (Kind::Read, None)
        } else if roll < cfg.read_ratio + cfg.delete_ratio {
            (Kind::Delete, None)
        } else {
            let v = match cfg.value_space {
                Some(space) => format!("v{}", rng.index(space)),
                None => format!("c{c}-{n}"),
            };
            (Kind::Write, Some(v))
        };
        let effect_at = start + rng.unit() * latency.min(cfg.deadline * 3.0);
        let mut op = Op { key, op: kind, value, start, end: Some(start + latency), ok: true };
        let mut effect = Some(effect_at);
        if latency > cfg.deadline {
            op.end = None;
            if stalled && rng.chance(0.5) {
                effect = Some(stall_end + rng.unit() * cfg.latency); // applied when the server resumes
            } else if rng.chance(0.5) {
                effect = None;
            }
        } else if rng.chance(cfg.unknown_ratio) {
            if rng.chance(0.5) {
                op.ok = false;
            } else {
                op.end = None;
            }
            effect = match rng.index(3) {
                0 => None,
                1 => Some(effect_at),
                _ => Some(start + latency + rng.unit() * 2.0), // took effect long after the client gave up
            };
        }
        // The client waits for the answer or until its deadline, whichever comes first.
        clock[c] = start + latency.min(cfg.deadline) + rng.exp(cfg.think);
        if let Some(at) = effect {
            effects.push((at, ops.len()));
        }
        ops.push(op);
    }
    effects.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut register: std::collections::HashMap<String, Option<String>> = std::collections::HashMap::new();
    for (_, i) in effects {
        let op = &mut ops[i];
        let slot = register.entry(op.key.clone()).or_default();
        match op.op {
            Kind::Write => *slot = op.value.clone(),
            Kind::Delete => *slot = None,
            Kind::Read => op.value = slot.clone(),
        }
    }
    ops.sort_by(|a, b| a.start.total_cmp(&b.start));
    ops
}
