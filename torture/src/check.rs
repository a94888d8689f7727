//! Per-key linearizability checker for a register with read, write and delete.
//!
//! # Model
//! Each key is a register whose value is a string or absent (null), initially absent. A write
//! sets it, a delete makes it absent, a read returns it (null when absent). An operation with a
//! known outcome (`ok: true` and an `end`) takes effect at one instant of `[start, end]`. An
//! operation with an unknown outcome takes effect at one instant after `start`, or never; a read
//! with an unknown outcome constrains nothing and is dropped.
//!
//! # Search
//! Linearizability is local (P-compositional): the history is linearizable iff each key's
//! sub-history is, so every key is checked on its own, on as many threads as there are cores.
//!
//! A key is checked with the Wing–Gong / Lowe search as Porcupine implements it (`checker.go`):
//! the call and return entries of the known operations, sorted by time (calls before returns at
//! equal times: intervals are closed), form a doubly linked list. Any call met before the first
//! return may be linearized next; linearizing it *lifts* its two entries out of the list, and
//! backtracking *unlifts* them. Reaching a return means the operation it ends cannot be placed
//! any more, so the search backtracks. A cache of configurations already explored (the set of
//! linearized operations and the register state) cuts every path into one already known to fail.
//!
//! # Unknown outcomes, and why the pruning is sound
//! Porcupine gives an unknown operation a return at +infinity, so the search may place it at
//! every step: with hundreds of them per key that is a state space the cache cannot tame. Here
//! unknown writes and deletes (together "mutations") are instead kept out of the list, in pools
//! per value, and placed only when a read needs them. This rests on three facts.
//!
//! 1. **Canonical placement.** Take any linearization. A placed unknown mutation `u` of value
//!    `v` is followed by the operations up to the next mutation, all reads that see `v`. If there
//!    are none, or if the register already held `v` before `u`, removing `u` changes no read's
//!    result; removing an operation never breaks real-time order. Repeating this gives a
//!    linearization in which every placed unknown mutation sits right before a read of its value
//!    that would otherwise see another value. So the search places an unknown mutation only as
//!    part of linearizing such a read ("just in time"), and an unplaced one is "never took
//!    effect" (equivalently: took effect after everything else). A history whose known
//!    operations are all linearized is accepted.
//! 2. **Availability.** Placing `u` right before the read `r` is allowed by real time iff `u`
//!    started no later than every known operation not yet linearized ended (`r` included),
//!    i.e. `u.start <= min_end`. That bound only grows as operations are linearized, so an
//!    available mutation stays available, and available mutations of the same value are
//!    interchangeable. The search therefore tracks only how many of each value's pool it used,
//!    and may use one more iff more than that many have `start <= min_end`.
//! 3. **Dropping** (before the search). An unknown mutation of `v` is dropped if no known read
//!    of `v` ended at or after its start: a read it serves is linearized after it, so it ends
//!    after `u.start`; without one, (1) removes `u`.
//! 4. **Unique values.** When an unknown write is the only write of its value `v` in the key's
//!    history (the torture load writes unique values) and the initial state is null, the
//!    register can hold `v` only after that write was placed, which happens only just in time
//!    for a read of `v`. So its pool is used iff a read of `v` is linearized: the count follows
//!    from the linearized set and is left out of the cache key below. (Turning such a write into
//!    a known one ending at the first read of `v` would also be sound, but the search would
//!    then try it at every step of that long interval: 2^k subsets for k writes that timed out
//!    together and were read much later.)
//!
//! # Memoisation, and why it segments the history
//! A configuration is (linearized known operations `K`, register state, counts used per pool).
//! The unknown mutations used are determined up to interchangeability by `K` (which fixes
//! `min_end`, hence which are available) and those counts, so this is the whole future of the
//! search. `K` is stored compactly: known operations are numbered by start time, `f` is the
//! first one not linearized, and `K` is `{0..f}` plus the few operations after `f` already
//! linearized; those overlap operation `f`, so there are at most as many as the concurrency.
//!
//! That key also gives the segmentation of a long history: at a quiet point (every known
//! operation before it ended, every one after it starts later) all paths that linearized the
//! past arrive with the same `K = {0..f}`, so they differ only by state and pool counts. Each
//! such boundary configuration is explored once; a failed one is never explored again, and the
//! cache holds a few words per configuration, not a bitset of the whole history. Unknown
//! operations do not block quiet points: they live in the pools, whose counts are in the key.
//! The cache also prunes by dominance: a configuration that used at least as many of every
//! pool as a failed one with the same `K` and state has fewer options, so it fails too. To reach
//! the dominating configurations first, each node tries its plain steps before those that use a
//! pool.
//!
//! # Cost
//! With unique written values (the torture load) the only pool is the unknown deletes, counts
//! are totally ordered, and the search is close to linear: a simulated 10-minute history of
//! 400k operations on 40 keys checks in a fraction of a second. Many repeated values, heavy
//! contention on one key *and* a violation can make the exhaustive part exponential (counts of
//! several pools are incomparable); [`Options::max_steps_per_key`] then bounds the work and the
//! key is reported inconclusive, which [`Report::ok`] counts as a failure.
//!
//! # Explaining a violation
//! A key that fails is reduced to a small window that still fails, so a person can read it:
//! - The smallest prefix: `H_t` keeps known operations ended by `t`, turns those in flight at
//!   `t` into unknown outcomes and drops those that start later. If `H` is linearizable so is
//!   every `H_t` (restrict the linearization), so failure is monotone in `t`: binary search.
//! - The latest start: at a quiet point `c` of `H_t`, the operations after `c` (and the unknown
//!   mutations) from an *arbitrary* initial state must still linearize if `H_t` does (the state
//!   at `c` is some value). Failure of that window is monotone in `c` too: binary search for
//!   the latest `c` whose window still fails, from any initial state. The window is what a
//!   [`Violation`] holds, and the operation completing at `t` is the culprit.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::history::{Kind, Op};

/// Tuning of a check.
#[derive(Clone, Debug)]
pub struct Options {
    /// Search work (steps and cache comparisons) allowed per key before the key is reported
    /// inconclusive. Explaining a violation may take up to four times as much again.
    pub max_steps_per_key: u64,
    /// Threads checking keys in parallel.
    pub threads: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options { max_steps_per_key: 100_000_000, threads: std::thread::available_parallelism().map_or(1, |n| n.get()) }
    }
}

/// The verdict on a whole history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub keys: usize,
    pub ops: usize,
    /// Operations whose outcome is unknown (`ok: false` or `end: null`).
    pub unknown: usize,
    /// At most one per key, ordered by key.
    pub violations: Vec<Violation>,
    /// Keys whose search exceeded [`Options::max_steps_per_key`]: neither proven nor refuted.
    pub inconclusive: Vec<String>,
}

impl Report {
    /// Whether the history is proven linearizable.
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.inconclusive.is_empty()
    }
}

/// A key whose history is not linearizable, with a small window of it that already is not.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    pub key: String,
    pub message: String,
    /// The operation whose completion made the history non-linearizable.
    pub culprit: Op,
    /// The window: operations of the key, ordered by start, that admit no linearization from
    /// any initial state (or from the initial null state if the window starts at the beginning).
    pub ops: Vec<Op>,
}

impl Violation {
    /// A short readable account: the message, then the window's operations with times relative
    /// to its first start, the culprit marked.
    pub fn explain(&self) -> String {
        use std::fmt::Write as _;
        let base = self.ops.iter().map(|o| o.start).fold(f64::INFINITY, f64::min);
        let base = if base.is_finite() { base } else { 0.0 };
        let mut s = format!(
            "key {:?}: {}\n  {} operation(s), times in seconds relative to {base:.6}:\n",
            self.key,
            self.message,
            self.ops.len()
        );
        for op in &self.ops {
            let end = match op.end {
                Some(e) => format!("{:+9.4}", e - base),
                None => format!("{:>9}", "?"),
            };
            let outcome = if op.known() { "" } else { "  (outcome unknown)" };
            let mark = if *op == self.culprit { "  <== " } else { "" };
            let _ = writeln!(s, "  [{:+9.4}, {end}]  {}{outcome}{mark}", op.start - base, describe(op));
        }
        s
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.ok() { "linearizable" } else { "NOT LINEARIZABLE" };
        writeln!(
            f,
            "{verdict}: {} operations ({} with unknown outcome) on {} keys, {} violation(s), {} inconclusive",
            self.ops,
            self.unknown,
            self.keys,
            self.violations.len(),
            self.inconclusive.len()
        )?;
        for v in &self.violations {
            write!(f, "{}", v.explain())?;
        }
        for k in &self.inconclusive {
            writeln!(f, "key {k:?}: search budget exhausted, verdict unknown")?;
        }
        Ok(())
    }
}

/// Checks a whole history with default [`Options`].
pub fn check(ops: &[Op]) -> Report {
    check_with(ops, &Options::default())
}

/// Reads a history file (see [`crate::history`]) and checks it.
pub fn check_file(path: &Path) -> anyhow::Result<Report> {
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let ops =
        crate::history::read(std::io::BufReader::new(file)).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(check(&ops))
}

/// Checks a whole history: each key on its own, keys in parallel on `opts.threads` threads.
pub fn check_with(ops: &[Op], opts: &Options) -> Report {
    let mut by_key: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut keys: Vec<(&str, Vec<&Op>)> = by_key.into_iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    // Largest keys first, so one big key does not start last on an idle machine.
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(keys[i].1.len()));

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Outcome)>> = Mutex::new(Vec::with_capacity(keys.len()));
    let threads = opts.threads.clamp(1, keys.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = order.get(n) else { break };
                let outcome = check_key(keys[i].0, &keys[i].1, opts.max_steps_per_key);
                results.lock().unwrap_or_else(|e| e.into_inner()).push((i, outcome));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|r| r.0);

    let mut report = Report {
        keys: keys.len(),
        ops: ops.len(),
        unknown: ops.iter().filter(|o| !o.known()).count(),
        ..Report::default()
    };
    for (i, outcome) in results {
        match outcome {
            Outcome::Linearizable => {}
            Outcome::Violation(v) => report.violations.push(*v),
            Outcome::GaveUp => report.inconclusive.push(keys[i].0.to_string()),
        }
    }
    report
}

enum Outcome {
    Linearizable,
    Violation(Box<Violation>),
    GaveUp,
}

/// Checks one key's operations (all with that key).
fn check_key(key: &str, ops: &[&Op], budget: u64) -> Outcome {
    let recs = records(ops);
    match decide(&recs, NULL, &mut { budget }) {
        Verdict::Linearizable => Outcome::Linearizable,
        Verdict::GaveUp => Outcome::GaveUp,
        Verdict::Violation => Outcome::Violation(Box::new(explain_failure(key, ops, &recs, budget.saturating_mul(4)))),
    }
}

// ---------------------------------------------------------------------------------------------
// Records: a key's operations with values interned.

/// The absent value; a key's values are numbered from 1 in order of appearance.
const NULL: u32 = 0;
/// An initial state equal to whatever is read first: used for windows cut out of a history.
const ANY: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Rec {
    /// A mutation sets the register to `val`; a read expects `val`.
    mutation: bool,
    val: u32,
    start: f64,
    /// `None`: unknown outcome.
    end: Option<f64>,
    /// Index into the key's operations.
    src: usize,
}

fn records(ops: &[&Op]) -> Vec<Rec> {
    let mut names: HashMap<&str, u32> = HashMap::new();
    ops.iter()
        .enumerate()
        .map(|(src, op)| {
            let val = match (op.op, op.value.as_deref()) {
                (Kind::Delete, _) | (_, None) => NULL,
                (_, Some(v)) => {
                    let n = names.len() as u32 + 1;
                    *names.entry(v).or_insert(n)
                }
            };
            Rec {
                mutation: op.op != Kind::Read,
                val,
                start: op.start,
                // A reversed interval is treated as an instant rather than rejected.
                end: if op.known() { op.end.map(|e| e.max(op.start)) } else { None },
                src,
            }
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Linearizable,
    Violation,
    GaveUp,
}

fn decide(recs: &[Rec], initial: u32, budget: &mut u64) -> Verdict {
    search(&prepare(recs, initial), initial, budget)
}

// ---------------------------------------------------------------------------------------------
// Preparation: drop unobserved unknown mutations, pool the others (facts 3 and 4 of the module doc).

#[derive(Clone, Copy, Debug)]
struct Known {
    start: f64,
    end: f64,
    mutation: bool,
    val: u32,
}

struct Prepared {
    /// Sorted by (start, end).
    known: Vec<Known>,
    /// Indexed by value: the start times, sorted, of the unknown mutations still useful.
    pools: Vec<Vec<f64>>,
    /// Indexed by value: the pool's use follows from the linearized set (fact 4).
    determined: Vec<bool>,
}

fn prepare(recs: &[Rec], initial: u32) -> Prepared {
    let values = recs.iter().map(|r| r.val as usize + 1).max().unwrap_or(1);
    let mut read_ends: HashMap<u32, Vec<f64>> = HashMap::new();
    let mut writers = vec![0usize; values];
    let mut known = Vec::new();
    for r in recs {
        match (r.mutation, r.end) {
            (false, Some(end)) => {
                read_ends.entry(r.val).or_default().push(end);
                known.push(Known { start: r.start, end, mutation: false, val: r.val });
            }
            (false, None) => {} // a read with unknown outcome constrains nothing
            (true, Some(end)) => {
                writers[r.val as usize] += 1;
                known.push(Known { start: r.start, end, mutation: true, val: r.val });
            }
            (true, None) => writers[r.val as usize] += 1,
        }
    }
    let mut pools = vec![Vec::new(); values];
    for r in recs.iter().filter(|r| r.mutation && r.end.is_none()) {
        let observed = read_ends.get(&r.val).is_some_and(|ends| ends.iter().any(|&e| e >= r.start));
        if observed {
            pools[r.val as usize].push(r.start);
        }
    }
    known.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.end.total_cmp(&b.end)));
    for p in &mut pools {
        p.sort_by(f64::total_cmp);
    }
    let determined = (0..values).map(|v| v as u32 != NULL && initial == NULL && writers[v] == 1).collect();
    Prepared { known, pools, determined }
}

// ---------------------------------------------------------------------------------------------
// The search.

/// FxHash: the cache keys are a few machine words, SipHash would dominate the search.
#[derive(Default)]
struct Fx(u64);

impl Fx {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

/// `K` as `{0..f}` plus the bitset words from word `f / 64` up to the last linearized operation.
#[derive(Hash, PartialEq, Eq)]
struct CacheKey {
    f: u32,
    state: u32,
    words: Box<[u64]>,
}

/// Pool counts used that the cache key holds (not the determined ones), sorted by value, zero
/// counts absent.
type Used = Vec<(u32, u32)>;

fn used_of(used: &Used, val: u32) -> u32 {
    used.binary_search_by_key(&val, |u| u.0).map_or(0, |i| used[i].1)
}

/// Pool counts used: all of them by value, and the part the cache key holds.
struct Pools {
    count: Vec<u32>,
    keyed: Used,
}

impl Pools {
    fn add(&mut self, p: &Prepared, val: u32, delta: i32) {
        let v = val as usize;
        self.count[v] = self.count[v].wrapping_add_signed(delta);
        if p.determined[v] {
            return;
        }
        match self.keyed.binary_search_by_key(&val, |u| u.0) {
            Ok(i) if self.count[v] == 0 => {
                self.keyed.remove(i);
            }
            Ok(i) => self.keyed[i].1 = self.count[v],
            Err(i) => self.keyed.insert(i, (val, self.count[v])),
        }
    }
}

/// Whether `a` used no more of any pool than `b`.
fn covers(a: &Used, b: &Used) -> bool {
    a.iter().all(|&(v, n)| used_of(b, v) >= n)
}

struct Frame {
    op: u32,
    state: u32,
    f: u32,
    /// The pool value used just in time for this read, if any.
    pooled: Option<u32>,
}

/// Decides whether the known operations of `p` linearize from `initial`, spending at most
/// `budget` units of work (taken from it).
fn search(p: &Prepared, initial: u32, budget: &mut u64) -> Verdict {
    let n = p.known.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Entry i < n is the call of operation i, entry n + i its return; then head and tail.
    let head = 2 * n;
    let tail = 2 * n + 1;
    let time = |e: usize| if e < n { p.known[e].start } else { p.known[e - n].end };
    let mut order: Vec<usize> = (0..2 * n).collect();
    order.sort_by(|&a, &b| time(a).total_cmp(&time(b)).then((a >= n).cmp(&(b >= n))).then(a.cmp(&b)));
    let mut next = vec![0usize; 2 * n + 2];
    let mut prev = vec![0usize; 2 * n + 2];
    let mut last = head;
    for &e in &order {
        next[last] = e;
        prev[e] = last;
        last = e;
    }
    next[last] = tail;
    prev[tail] = last;

    let mut lin = vec![0u64; n.div_ceil(64)];
    let mut f = 0usize;
    let mut state = initial;
    let mut used = Pools { count: vec![0; p.pools.len()], keyed: Vec::new() };
    let mut stack: Vec<Frame> = Vec::new();
    let mut cache: HashMap<CacheKey, Vec<Used>, BuildHasherDefault<Fx>> = HashMap::default();
    let mut entry = next[head];
    // Each node's children are tried in two passes over the candidates: plain steps, then steps
    // that use a pool. The configurations using fewer pool units are so reached first, and the
    // dominance check then prunes the others instead of exploring them all.
    let mut pool_pass = false;
    loop {
        if next[head] == tail {
            return Verdict::Linearizable;
        }
        if *budget == 0 {
            return Verdict::GaveUp;
        }
        *budget -= 1;
        if entry < n {
            let op = p.known[entry];
            let plain = op.mutation || state == op.val || state == ANY;
            let ok = if pool_pass {
                // Just in time: an unknown mutation of the value read, placed right before.
                !plain && {
                    let mut e = entry;
                    while e < n {
                        e = next[e];
                    }
                    let min_end = p.known[e - n].end;
                    let available = p.pools[op.val as usize].partition_point(|&s| s <= min_end);
                    available > used.count[op.val as usize] as usize
                }
            } else {
                plain
            };
            let pooled = pool_pass.then_some(op.val);
            if !ok {
                entry = next[entry];
                continue;
            }
            lin[entry / 64] |= 1 << (entry % 64);
            if let Some(v) = pooled {
                used.add(p, v, 1);
            }
            let mut nf = f;
            while nf < n && lin[nf / 64] & (1 << (nf % 64)) != 0 {
                nf += 1;
            }
            let key = cache_key(&lin, nf, stack.len() + 1, op.val);
            let seen = cache.entry(key).or_default();
            *budget = budget.saturating_sub(seen.len() as u64);
            if seen.iter().any(|s| covers(s, &used.keyed)) {
                // Explored already, with at least as many options: it failed.
                lin[entry / 64] &= !(1 << (entry % 64));
                if let Some(v) = pooled {
                    used.add(p, v, -1);
                }
                entry = next[entry];
                continue;
            }
            seen.retain(|s| !covers(&used.keyed, s));
            seen.push(used.keyed.clone());
            stack.push(Frame { op: entry as u32, state, f: f as u32, pooled });
            pool_pass = false;
            state = op.val;
            f = nf;
            // Lift the call and its return out of the list.
            let r = entry + n;
            next[prev[entry]] = next[entry];
            prev[next[entry]] = prev[entry];
            next[prev[r]] = next[r];
            prev[next[r]] = prev[r];
            entry = next[head];
        } else if !pool_pass {
            pool_pass = true;
            entry = next[head];
        } else {
            // A return: the operation it ends can no longer be placed. Backtrack.
            let Some(frame) = stack.pop() else {
                return Verdict::Violation;
            };
            let e = frame.op as usize;
            state = frame.state;
            f = frame.f as usize;
            lin[e / 64] &= !(1 << (e % 64));
            if let Some(v) = frame.pooled {
                used.add(p, v, -1);
            }
            pool_pass = frame.pooled.is_some();
            // Unlift in the reverse order of the lift.
            let r = e + n;
            next[prev[r]] = r;
            prev[next[r]] = r;
            next[prev[e]] = e;
            prev[next[e]] = e;
            entry = next[e];
        }
    }
}

fn cache_key(lin: &[u64], f: usize, linearized: usize, state: u32) -> CacheKey {
    let mut extra = linearized - f; // operations after f already linearized
    let first = f / 64;
    let mut last = first;
    if extra > 0 {
        let mut w = first;
        let mut word = lin[w] & (!0u64 << (f % 64));
        loop {
            extra -= word.count_ones() as usize;
            if extra == 0 {
                break;
            }
            w += 1;
            word = lin[w];
        }
        last = w + 1;
    }
    CacheKey { f: f as u32, state, words: lin[first..last].into() }
}

// ---------------------------------------------------------------------------------------------
// Explanation: the smallest failing prefix, then the latest quiet point that still fails.

/// `H_t`: known operations ended by `t`; those in flight at `t` turned unknown; later dropped.
fn prefix(recs: &[Rec], t: f64) -> Vec<Rec> {
    recs.iter().filter(|r| r.start <= t).map(|r| Rec { end: r.end.filter(|&e| e <= t), ..*r }).collect()
}

/// Start times of the known operations that begin a quiet point (everything known before them
/// has ended), ascending.
fn quiet_points(recs: &[Rec]) -> Vec<f64> {
    let mut known: Vec<(f64, f64)> = recs.iter().filter_map(|r| r.end.map(|e| (r.start, e))).collect();
    known.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut cuts = Vec::new();
    let mut max_end = f64::NEG_INFINITY;
    for (i, &(s, e)) in known.iter().enumerate() {
        if i > 0 && max_end < s && cuts.last() != Some(&s) {
            cuts.push(s);
        }
        max_end = max_end.max(e);
    }
    cuts
}

/// The operations from quiet point `c` on, plus all unknown mutations.
fn window(recs: &[Rec], c: f64) -> Vec<Rec> {
    recs.iter().filter(|r| r.end.is_none_or(|_| r.start >= c)).copied().collect()
}

/// Smallest index in `lo..hi` where `fails` holds, assuming it is monotone and holds at `hi - 1`.
fn first_failing(lo: usize, hi: usize, mut fails: impl FnMut(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (lo, hi - 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fails(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Builds the violation of a key whose history failed. `budget` bounds the work of all the
/// searches together; a search that runs out counts as passing, which only makes the window
/// larger (the whole history is known to fail).
fn explain_failure(key: &str, ops: &[&Op], recs: &[Rec], mut budget: u64) -> Violation {
    let mut ends: Vec<f64> = recs.iter().filter_map(|r| r.end).collect();
    ends.sort_by(f64::total_cmp);
    ends.dedup();
    // The whole history fails, hence so does the prefix at the last end: a valid upper bound.
    let i = first_failing(0, ends.len(), |i| decide(&prefix(recs, ends[i]), NULL, &mut budget) == Verdict::Violation);
    let t = ends[i];
    let ht = prefix(recs, t);
    let cuts = quiet_points(&ht);
    // Latest quiet point whose window fails from any initial state; `None`: the whole prefix.
    let mut fails_from = |j: usize| decide(&window(&ht, cuts[j]), ANY, &mut budget) == Verdict::Violation;
    let cut = if cuts.is_empty() || !fails_from(0) {
        None
    } else {
        // Failure is monotone decreasing in the cut: find the first cut that passes, minus one.
        let passing = first_failing(0, cuts.len() + 1, |j| j == cuts.len() || !fails_from(j));
        Some(cuts[passing - 1])
    };
    let c = cut.unwrap_or(f64::NEG_INFINITY);

    // The culprit: an operation completing at t, a read if there is one.
    let culprit = ht
        .iter()
        .filter(|r| r.end == Some(t))
        .min_by_key(|r| r.mutation)
        .map(|r| ops[r.src].clone())
        .unwrap_or_else(|| ops[recs[0].src].clone());

    // Shown: the operations that start in the window (but reads of unknown outcome), and the
    // unknown mutations from before it that reads in it could observe. Those are available
    // throughout the window and interchangeable per value, and each read uses at most one, so
    // the latest `n` of a value read `n` times in the window give the same verdict as all.
    let mut shown: Vec<Op> =
        ht.iter().filter(|r| r.start >= c && (r.mutation || ops[r.src].known())).map(|r| ops[r.src].clone()).collect();
    let mut reads_in_window: HashMap<u32, usize> = HashMap::new();
    for r in ht.iter().filter(|r| r.start >= c && !r.mutation && r.end.is_some()) {
        *reads_in_window.entry(r.val).or_default() += 1;
    }
    let mut before: Vec<&Rec> = ht.iter().filter(|r| r.start < c && r.mutation && r.end.is_none()).collect();
    before.sort_by(|a, b| b.start.total_cmp(&a.start));
    for r in before {
        if let Some(n @ 1..) = reads_in_window.get_mut(&r.val) {
            *n -= 1;
            shown.push(ops[r.src].clone());
        }
    }
    shown.sort_by(|a, b| a.start.total_cmp(&b.start));

    let never_written = culprit.op == Kind::Read
        && culprit
            .value
            .as_ref()
            .is_some_and(|v| !ops.iter().any(|o| o.op == Kind::Write && o.value.as_ref() == Some(v)));
    let message = if never_written {
        format!(
            "a read returned {:?}, a value never written to key {key:?}",
            culprit.value.as_deref().unwrap_or_default()
        )
    } else {
        let from = if cut.is_some() {
            "from any state the key could hold at the window's start"
        } else {
            "from the initial absent state"
        };
        format!(
            "{} ending at {t:.6} cannot be linearized: the {} operations shown admit no order ({from})",
            describe(&culprit),
            shown.len()
        )
    };
    Violation { key: key.to_string(), message, culprit, ops: shown }
}

fn describe(op: &Op) -> String {
    let v = |v: &Option<String>| v.as_ref().map_or("null".to_string(), |s| format!("{s:?}"));
    match op.op {
        Kind::Write => format!("write {}", v(&op.value)),
        Kind::Read => format!("read -> {}", v(&op.value)),
        Kind::Delete => "delete".to_string(),
    }
}

#[cfg(test)]
mod tests;
