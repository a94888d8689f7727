//! The checker against hand-written histories, a brute-force reference and simulated registers.

use super::*;
use crate::synth::{self, Rng};

fn op(kind: Kind, value: Option<&str>, start: f64, end: Option<f64>, ok: bool) -> Op {
    Op { key: "x".to_string(), op: kind, value: value.map(str::to_string), start, end, ok }
}
fn w(v: &str, start: f64, end: f64) -> Op {
    op(Kind::Write, Some(v), start, Some(end), true)
}
fn r(v: Option<&str>, start: f64, end: f64) -> Op {
    op(Kind::Read, v, start, Some(end), true)
}
fn d(start: f64, end: f64) -> Op {
    op(Kind::Delete, None, start, Some(end), true)
}
/// A write with unknown outcome: the client timed out.
fn w_unknown(v: &str, start: f64) -> Op {
    op(Kind::Write, Some(v), start, None, true)
}
fn d_unknown(start: f64) -> Op {
    op(Kind::Delete, None, start, None, true)
}
fn on(key: &str, mut o: Op) -> Op {
    o.key = key.to_string();
    o
}

/// Asserts the history is rejected on key "x", the culprit and `involved` in the window.
fn assert_rejected(ops: &[Op], culprit: &Op, involved: &[&Op]) -> Violation {
    let report = check(ops);
    assert!(!report.ok(), "accepted a bad history: {ops:#?}");
    assert_eq!(report.violations.len(), 1, "{report}");
    let v = report.violations[0].clone();
    assert_eq!(v.key, "x");
    assert_eq!(&v.culprit, culprit, "{}", v.explain());
    for o in involved.iter().chain([&culprit]) {
        assert!(v.ops.contains(o), "window lacks {o:?}:\n{}", v.explain());
    }
    assert!(v.explain().contains("key \"x\""));
    // The window alone is a violation: whoever reads it can trust it.
    assert!(!check(&v.ops).ok(), "the window passes:\n{}", v.explain());
    v
}

fn assert_accepted(ops: &[Op]) {
    let report = check(ops);
    assert!(report.ok(), "rejected a linearizable history:\n{report}");
}

#[test]
fn stale_read_is_rejected_naming_the_newer_write() {
    let newer = w("b", 2.0, 3.0);
    let stale = r(Some("a"), 4.0, 5.0);
    let v = assert_rejected(&[w("a", 0.0, 1.0), newer.clone(), stale.clone()], &stale, &[&newer]);
    // The minimal window: the write of "a" is not needed to see the contradiction.
    assert_eq!(v.ops, vec![newer, stale]);
}

#[test]
fn lost_acknowledged_write_is_rejected() {
    // "b" acknowledged, then reads return the value before it, as after a restart that lost it.
    let lost = w("b", 2.0, 3.0);
    let after = r(Some("a"), 10.0, 10.5);
    let ops = [w("a", 0.0, 1.0), r(Some("a"), 1.5, 1.8), lost.clone(), after.clone(), r(Some("a"), 11.0, 11.5)];
    assert_rejected(&ops, &after, &[&lost]);
    // And a first write lost outright: the key reads absent after it was acknowledged.
    let lost = w("a", 0.0, 1.0);
    let absent = r(None, 2.0, 3.0);
    assert_rejected(&[lost.clone(), absent.clone()], &absent, &[&lost]);
}

#[test]
fn resurrected_delete_is_rejected() {
    let del = d(2.0, 3.0);
    let ghost = r(Some("a"), 4.0, 5.0);
    assert_rejected(&[w("a", 0.0, 1.0), r(Some("a"), 1.2, 1.4), del.clone(), ghost.clone()], &ghost, &[&del]);
}

#[test]
fn read_of_a_never_written_value_is_rejected() {
    let bogus = r(Some("zzz"), 2.0, 3.0);
    let v = assert_rejected(&[w("a", 0.0, 1.0), bogus.clone()], &bogus, &[]);
    assert!(v.message.contains("never written"), "{}", v.message);
    // Even as the very first operation.
    let v = assert_rejected(std::slice::from_ref(&bogus), &bogus, &[]);
    assert!(v.message.contains("never written"), "{}", v.message);
}

#[test]
fn read_going_back_in_time_is_rejected() {
    // Two sequential reads during a slow write: once "b" is seen, "a" may not come back.
    let slow = w("b", 2.0, 10.0);
    let new = r(Some("b"), 3.0, 4.0);
    let old = r(Some("a"), 5.0, 6.0);
    assert_rejected(&[w("a", 0.0, 1.0), slow.clone(), new.clone(), old.clone()], &old, &[&slow, &new]);
}

#[test]
fn only_the_bad_key_is_reported() {
    let mut ops = Vec::new();
    for (i, k) in ["a", "b", "c"].iter().enumerate() {
        let t = i as f64 * 0.1;
        ops.push(on(k, w("1", t, t + 1.0)));
        ops.push(on(k, r(Some("1"), t + 2.0, t + 3.0)));
    }
    ops.push(on("b", r(None, 5.0, 6.0)));
    let report = check(&ops);
    assert_eq!((report.keys, report.ops), (3, 7));
    assert_eq!(report.violations.iter().map(|v| v.key.as_str()).collect::<Vec<_>>(), ["b"]);
}

#[test]
fn an_unknown_write_cannot_explain_a_read_that_ended_before_it_started() {
    let early = r(Some("b"), 1.0, 2.0);
    assert_rejected(&[w("a", 0.0, 0.5), early.clone(), w_unknown("b", 3.0)], &early, &[]);
}

#[test]
fn an_unknown_delete_takes_effect_at_most_once() {
    // One unknown delete may explain the first read of null, not also the one after "b".
    let second = r(None, 6.0, 7.0);
    let ops = [w("a", 0.0, 1.0), d_unknown(0.5), r(None, 2.0, 3.0), w("b", 4.0, 5.0), second.clone()];
    assert_rejected(&ops, &second, &[]);
    // Two of them may explain both.
    let mut two = ops.to_vec();
    two.push(d_unknown(0.6));
    assert_accepted(&two);
}

#[test]
fn repeated_values_are_handled() {
    // A second, unknown write of "a" may explain reading "a" again after "b"...
    let ops = [w("a", 0.0, 1.0), w("b", 2.0, 3.0), w_unknown("a", 4.0), r(Some("a"), 5.0, 6.0)];
    assert_accepted(&ops);
    // ...but not if it started after the read ended.
    let late = r(Some("a"), 5.0, 6.0);
    assert_rejected(&[w("a", 0.0, 1.0), w("b", 2.0, 3.0), w_unknown("a", 7.0), late.clone()], &late, &[]);
    // Two known writes of the same value.
    assert_accepted(&[w("a", 0.0, 1.0), w("b", 2.0, 3.0), w("a", 4.0, 5.0), r(Some("a"), 6.0, 7.0)]);
}

#[test]
fn concurrent_writes_and_reads_linearize_in_either_order() {
    for (first, second) in [("a", "b"), ("b", "a")] {
        // Both writes overlap; the reads after them see one order consistently.
        assert_accepted(&[w("a", 0.0, 10.0), w("b", 1.0, 9.0), r(Some(second), 11.0, 12.0)]);
        assert_accepted(&[w("a", 0.0, 10.0), w("b", 1.0, 9.0), r(Some(first), 2.0, 3.0), r(Some(second), 4.0, 5.0)]);
        // A read overlapping a write sees the old or the new value.
        assert_accepted(&[w("a", 0.0, 1.0), w("b", 2.0, 5.0), r(Some(first), 3.0, 4.0), r(Some("b"), 6.0, 7.0)]);
    }
    // Equal instants count as overlapping (intervals are closed).
    assert_accepted(&[w("a", 0.0, 1.0), r(Some("a"), 1.0, 1.0)]);
    assert_accepted(&[r(Some("a"), 1.0, 2.0), w("a", 2.0, 3.0)]);
}

#[test]
fn unknown_write_may_take_effect_late_or_never() {
    // Took effect long after the client gave up.
    assert_accepted(&[w_unknown("a", 0.0), r(None, 1.0, 2.0), r(Some("a"), 100.0, 101.0), r(Some("a"), 102.0, 103.0)]);
    // An error reply (ok: false) and it took effect anyway.
    assert_accepted(&[op(Kind::Write, Some("a"), 0.0, Some(0.5), false), r(Some("a"), 1.0, 2.0)]);
    // Never took effect.
    assert_accepted(&[w_unknown("a", 0.0), r(None, 1.0, 2.0), r(None, 100.0, 101.0)]);
    // Took effect after a later acknowledged write: the value comes back once, then stays.
    assert_accepted(&[w_unknown("a", 0.0), w("b", 1.0, 2.0), r(Some("b"), 3.0, 4.0), r(Some("a"), 5.0, 6.0)]);
    // A read with unknown outcome constrains nothing.
    assert_accepted(&[w("a", 0.0, 1.0), op(Kind::Read, Some("zzz"), 2.0, None, false)]);
}

#[test]
fn read_of_absent_before_any_write_is_fine() {
    assert_accepted(&[r(None, 0.0, 1.0), w("a", 2.0, 3.0), r(Some("a"), 4.0, 5.0), d(6.0, 7.0), r(None, 8.0, 9.0)]);
    assert_accepted(&[]);
}

#[test]
fn explanation_shows_relative_times_and_the_culprit() {
    let text = check(&[w("a", 100.0, 101.0), w("b", 102.0, 103.0), r(Some("a"), 104.0, 105.0)]).to_string();
    assert!(text.starts_with("NOT LINEARIZABLE"), "{text}");
    assert!(text.contains("+0.0000") && text.contains("+3.0000"), "{text}");
    assert!(text.contains("read -> \"a\"  <== "), "{text}");
}

#[test]
fn check_file_reads_the_history_format() {
    let dir = std::env::temp_dir().join(format!("chd-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("h.jsonl");
    let mut out = Vec::new();
    for o in [w("a", 0.0, 1.0), r(Some("b"), 2.0, 3.0)] {
        crate::history::write(&mut out, &o).unwrap();
    }
    std::fs::write(&path, out).unwrap();
    let report = check_file(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(report.violations.len(), 1);
    assert!(check_file(&dir.join("missing")).is_err());
}

// ---------------------------------------------------------------------------------------------
// A brute-force reference: every order of the known operations and of any subset of the unknown
// mutations, no pruning. Exponential, for histories of a handful of operations.

fn brute_force(ops: &[Op]) -> bool {
    let known: Vec<&Op> = ops.iter().filter(|o| o.known()).collect();
    let unknown: Vec<&Op> = ops.iter().filter(|o| !o.known() && o.op != Kind::Read).collect();
    fn go<'a>(known: &[&'a Op], unknown: &[&'a Op], done_k: u32, done_u: u32, state: Option<&'a str>) -> bool {
        if done_k.count_ones() as usize == known.len() {
            return true;
        }
        let min_end = (0..known.len())
            .filter(|i| done_k & (1 << i) == 0)
            .map(|i| known[i].end.unwrap())
            .fold(f64::INFINITY, f64::min);
        let apply = |o: &'a Op| match o.op {
            Kind::Write => Some(Some(o.value.as_deref().unwrap())),
            Kind::Delete => Some(None),
            Kind::Read => (o.value.as_deref() == state).then_some(state),
        };
        for i in 0..known.len() {
            if done_k & (1 << i) == 0 && known[i].start <= min_end {
                if let Some(s) = apply(known[i]) {
                    if go(known, unknown, done_k | 1 << i, done_u, s) {
                        return true;
                    }
                }
            }
        }
        for i in 0..unknown.len() {
            if done_u & (1 << i) == 0 && unknown[i].start <= min_end {
                let s = apply(unknown[i]).unwrap();
                if go(known, unknown, done_k, done_u | 1 << i, s) {
                    return true;
                }
            }
        }
        false
    }
    go(&known, &unknown, 0, 0, None)
}

fn random_small_history(rng: &mut Rng) -> Vec<Op> {
    let n = 1 + rng.index(7);
    (0..n)
        .map(|_| {
            // Integer times make equal instants frequent.
            let start = rng.index(8) as f64;
            let end = start + rng.index(4) as f64;
            let kind = [Kind::Write, Kind::Write, Kind::Read, Kind::Read, Kind::Delete][rng.index(5)];
            let value = match kind {
                Kind::Write => Some(["a", "b", "c"][rng.index(3)].to_string()),
                Kind::Read => [None, Some("a"), Some("b"), Some("c")][rng.index(4)].map(str::to_string),
                Kind::Delete => None,
            };
            let (end, ok) = match rng.index(6) {
                0 => (None, true),
                1 => (Some(end), false),
                _ => (Some(end), true),
            };
            Op { key: "x".to_string(), op: kind, value, start, end, ok }
        })
        .collect()
}

#[test]
fn agrees_with_brute_force_on_small_random_histories() {
    let mut rng = Rng::new(7);
    let (mut good, mut bad) = (0, 0);
    for _ in 0..30_000 {
        let ops = random_small_history(&mut rng);
        let expected = brute_force(&ops);
        let report = check(&ops);
        assert_eq!(report.ok(), expected, "disagrees with brute force on {ops:#?}\n{report}");
        if expected {
            good += 1;
        } else {
            bad += 1;
            // The window must fail on its own too.
            assert!(!brute_force(&report.violations[0].ops), "{report}");
        }
    }
    // Both verdicts well represented, or the comparison proves little.
    assert!(good > 5_000 && bad > 5_000, "{good} good, {bad} bad");
}

#[test]
fn agrees_with_brute_force_when_values_are_unique() {
    // Unique written values exercise the determined pools (fact 4 of the module doc).
    let mut rng = Rng::new(11);
    for _ in 0..20_000 {
        let mut ops = random_small_history(&mut rng);
        let mut n = 0;
        for o in ops.iter_mut().filter(|o| o.op == Kind::Write) {
            n += 1;
            o.value = Some(format!("v{n}"));
        }
        for o in ops.iter_mut().filter(|o| o.op == Kind::Read) {
            o.value = [None, Some(format!("v{}", 1 + rng.index(n.max(1))))][rng.index(2)].clone();
        }
        assert_eq!(check(&ops).ok(), brute_force(&ops), "disagrees with brute force on {ops:#?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Simulated registers: linearizable by construction; one corrupted read makes them fail.

fn corrupt_one_read(ops: &mut [Op], rng: &mut Rng) -> Option<Op> {
    let reads: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].op == Kind::Read && ops[i].known()).collect();
    let i = *reads.get(rng.index(reads.len().max(1)))?;
    ops[i].value = Some("never-written".to_string());
    Some(ops[i].clone())
}

#[test]
fn simulated_histories_pass_and_fail_once_corrupted() {
    let mut rng = Rng::new(3);
    for seed in 0..60 {
        let cfg = if seed % 2 == 0 { synth::Config::contended(seed, 400) } else { synth::Config::torture(seed, 2_000) };
        let mut ops = synth::generate(&cfg);
        assert!(ops.iter().any(|o| !o.known()));
        let report = check(&ops);
        assert!(report.ok(), "seed {seed}: {report}");
        assert_eq!(report.ops, ops.len());

        let Some(bad) = corrupt_one_read(&mut ops, &mut rng) else { continue };
        let report = check(&ops);
        assert_eq!(report.violations.len(), 1, "seed {seed}: {report}");
        let v = &report.violations[0];
        assert_eq!(v.key, bad.key);
        assert_eq!(v.culprit, bad, "seed {seed}: {}", v.explain());
        assert!(v.ops.contains(&bad));
        assert!(v.message.contains("never written"), "{}", v.message);
        assert!(!check(&v.ops).ok(), "seed {seed}: the window passes:\n{}", v.explain());
        if seed % 2 == 1 {
            // Unique values, light contention: the window is a handful of operations.
            assert!(v.ops.len() <= 10, "seed {seed}: a large window:\n{}", v.explain());
        }
    }
}

#[test]
fn simulated_histories_fail_when_a_read_sees_an_older_value() {
    // Replace a read's value by the value of a write that completed before the last change it
    // saw began: the stale read of a lagging replica.
    let mut rng = Rng::new(5);
    let mut caught = 0;
    for seed in 100..140 {
        let mut ops = synth::generate(&synth::Config::torture(seed, 1_500));
        let reads: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].op == Kind::Read && ops[i].known()).collect();
        let i = reads[rng.index(reads.len())];
        let (key, start, seen) = (ops[i].key.clone(), ops[i].start, ops[i].value.clone());
        // An acknowledged write of another value to the same key, followed by an acknowledged
        // write of yet another value, both done before the read started.
        let done: Vec<&Op> =
            ops.iter().filter(|o| o.key == key && o.known() && o.end.unwrap() < start && o.op == Kind::Write).collect();
        let Some(old) = done.iter().rev().skip(1).find(|o| o.value != seen) else { continue };
        let newer_exists = done.iter().any(|o| o.start > old.end.unwrap() && o.value != old.value);
        if !newer_exists {
            continue;
        }
        ops[i].value = old.value.clone();
        let bad = ops[i].clone();
        let report = check(&ops);
        assert!(!report.ok(), "seed {seed}: a stale read passed: {bad:?}");
        assert_eq!(report.violations[0].key, key);
        caught += 1;
    }
    assert!(caught > 20, "only {caught} cases built");
}

/// Scale: a simulated 10-minute torture history. Debug builds check a tenth of it; the full
/// size is timed with `cargo test --release -p chd-torture -- --ignored ten_minute`.
#[test]
fn checks_a_long_history() {
    timed_check(40_000);
}

#[test]
#[ignore = "benchmark: run in release mode"]
fn ten_minute_history_in_release() {
    let elapsed = timed_check(400_000);
    assert!(elapsed.as_secs_f64() < 30.0, "{elapsed:?}");
}

fn timed_check(n: usize) -> std::time::Duration {
    let ops = synth::generate(&synth::Config::torture(42, n));
    let span = ops.last().unwrap().start - ops[0].start;
    let started = std::time::Instant::now();
    let report = check(&ops);
    let elapsed = started.elapsed();
    eprintln!(
        "checked {} ops over {span:.0} s of history ({} unknown outcome, {} keys) in {elapsed:.2?}",
        report.ops, report.unknown, report.keys
    );
    assert!(report.ok(), "{report}");
    elapsed
}

#[test]
fn many_unknown_writes_observed_much_later_stay_cheap() {
    // A stall: 20 writes time out together, take effect, and are read back one by one long after,
    // with plenty of traffic in between. Each may take effect anywhere in a long interval, so a
    // search placing them speculatively would meet 2^20 subsets.
    let mut ops: Vec<Op> = (0..20).map(|i| w_unknown(&format!("u{i}"), i as f64 * 0.001)).collect();
    let mut t = 1.0;
    for j in 0..200 {
        ops.push(w(&format!("x{j}"), t, t + 0.1));
        ops.push(r(Some(&format!("x{j}")), t + 0.2, t + 0.3));
        t += 1.0;
    }
    for i in 0..20 {
        ops.push(r(Some(&format!("u{i}")), t, t + 0.1));
        t += 1.0;
    }
    let started = std::time::Instant::now();
    let report = check_with(&ops, &Options { max_steps_per_key: 2_000_000, ..Options::default() });
    assert!(report.ok(), "{report} after {:?}", started.elapsed());
}
