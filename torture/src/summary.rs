//! What a run found, computed from its history and its fault log alone (no I/O), so each
//! figure can be tested with a hand-made history.
//!
//! - **Lost writes**: for each key, the acknowledged writes/deletes that nothing acknowledged
//!   later (no acknowledged write or delete started after they ended) are the candidates for
//!   its final state; an unknown-outcome write or delete may also be it. A final read that
//!   returns none of these lost an acknowledged write.
//! - **Unavailability** after a fault: from the fault's start to the end of the first
//!   successful operation of each kind that started after it.
//! - **Errors while one node is down**: operations that started inside the window of a fault
//!   that takes down exactly one node (started with every node up), from its start until
//!   status showed every node up again (or the next fault, if it never did).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::{Kind, Op};
use crate::nemesis::{FaultKind, FaultRecord};

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Outcomes {
    pub ok: u64,
    pub failed: u64,
}

/// Operations by kind ("write", "read", "delete") and outcome.
pub fn ops_by_kind(ops: &[Op]) -> BTreeMap<&'static str, Outcomes> {
    let mut m: BTreeMap<&'static str, Outcomes> = BTreeMap::new();
    for op in ops {
        let e = m.entry(kind_name(op.op)).or_default();
        if op.known() {
            e.ok += 1;
        } else {
            e.failed += 1;
        }
    }
    m
}

pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Write => "write",
        Kind::Read => "read",
        Kind::Delete => "delete",
    }
}

/// An acknowledged write or delete whose effect a final read does not show.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LostWrite {
    pub key: String,
    /// What the latest acknowledged write left (`None`: deleted).
    pub expected: Option<String>,
    pub acknowledged_at: f64,
    pub read: Option<String>,
    pub read_at: f64,
}

/// Lost writes: `load` is the history before the final reads, `finals` the final reads (only
/// successful ones are judged).
pub fn lost_writes(load: &[Op], finals: &[Op]) -> Vec<LostWrite> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in load.iter().filter(|o| o.op != Kind::Read) {
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut lost = Vec::new();
    for read in finals.iter().filter(|r| r.op == Kind::Read && r.known()) {
        let Some(ops) = by_key.get(read.key.as_str()) else { continue };
        let acked: Vec<&&Op> = ops.iter().filter(|o| o.known()).collect();
        let Some(latest_start) = acked.iter().map(|o| o.start).reduce(f64::max) else { continue };
        // Candidates: acknowledged ops not followed by another acknowledged one, and every
        // unknown-outcome op (it may take effect at any time after its start).
        let candidates: Vec<&&Op> =
            ops.iter().filter(|o| !o.known() || o.end.is_some_and(|e| e >= latest_start)).collect();
        if candidates.iter().any(|o| o.value == read.value) {
            continue;
        }
        let last = acked.iter().max_by(|a, b| a.end.partial_cmp(&b.end).unwrap()).expect("non-empty");
        lost.push(LostWrite {
            key: read.key.clone(),
            expected: last.value.clone(),
            acknowledged_at: last.end.unwrap_or(last.start),
            read: read.value.clone(),
            read_at: read.start,
        });
    }
    lost
}

/// Longest unavailability (seconds) after each fault kind, per operation kind; `None` when no
/// operation of that kind succeeded after a fault of that kind before `run_end`.
pub fn unavailability(ops: &[Op], faults: &[FaultRecord]) -> BTreeMap<FaultKind, BTreeMap<&'static str, Option<f64>>> {
    // Per op kind: successful ops sorted by start, to find the first one after a time.
    let mut ok: BTreeMap<&'static str, Vec<(f64, f64)>> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.known()) {
        ok.entry(kind_name(op.op)).or_default().push((op.start, op.end.unwrap_or(op.start)));
    }
    for v in ok.values_mut() {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
    let mut out: BTreeMap<FaultKind, BTreeMap<&'static str, Option<f64>>> = BTreeMap::new();
    for f in faults.iter().filter(|f| !f.skipped) {
        let per = out.entry(f.kind).or_default();
        for kind in ["write", "read", "delete"] {
            let after = ok.get(kind).and_then(|v| {
                let i = v.partition_point(|&(s, _)| s < f.start);
                v[i..].iter().map(|&(_, e)| e).reduce(f64::min)
            });
            // None: never again, the worst there is.
            let gap = after.map(|e| e - f.start);
            let slot = per.entry(kind).or_insert(Some(0.0));
            *slot = match (*slot, gap) {
                (None, _) | (_, None) => None,
                (Some(a), Some(b)) => Some(a.max(b)),
            };
        }
    }
    out
}

/// Windows during which exactly one node was down: (start, end, fault index).
pub fn one_down_windows(faults: &[FaultRecord], run_end: f64) -> Vec<(f64, f64, usize)> {
    let mut w = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        if f.skipped || !f.all_up_before || !f.kind.one_node_down() {
            continue;
        }
        let next = faults.get(i + 1).map_or(run_end, |n| n.start);
        let end = f.all_up_at.unwrap_or(next).min(next);
        w.push((f.start, end, i));
    }
    w
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OneDown {
    pub windows: usize,
    pub seconds: f64,
    pub ops: u64,
    pub failed: u64,
    pub error_rate: f64,
    /// The first failed operations, with the fault they fell in.
    pub examples: Vec<String>,
}

pub fn one_down_errors(ops: &[Op], faults: &[FaultRecord], run_end: f64) -> OneDown {
    let windows = one_down_windows(faults, run_end);
    let mut r = OneDown {
        windows: windows.len(),
        seconds: windows.iter().map(|(s, e, _)| e - s).fold(0.0, |a, b| a + b),
        ..OneDown::default()
    };
    for op in ops {
        // Only operations wholly inside a window count: one still running when the next fault
        // struck (say chd was killed) may fail because of that fault.
        let inside = |(s, e, _): &&(f64, f64, usize)| op.start >= *s && op.end.unwrap_or(f64::INFINITY) <= *e;
        let Some(&(_, _, i)) = windows.iter().find(inside) else { continue };
        r.ops += 1;
        if !op.known() {
            r.failed += 1;
            if r.examples.len() < 10 {
                let f = &faults[i];
                r.examples.push(format!(
                    "{} {} at {:.3} failed during {} (node {:?}) started at {:.3}",
                    kind_name(op.op),
                    op.key,
                    op.start,
                    f.kind.name(),
                    f.node,
                    f.start
                ));
            }
        }
    }
    r.error_rate = if r.ops == 0 { 0.0 } else { r.failed as f64 / r.ops as f64 };
    r
}

/// The faults that started in `[from - margin, to]`, oldest first: what preceded a failure.
pub fn faults_between(faults: &[FaultRecord], from: f64, to: f64, margin: f64) -> Vec<String> {
    faults
        .iter()
        .filter(|f| !f.skipped && f.end >= from - margin && f.start <= to)
        .map(|f| {
            format!(
                "{} at {:.2}-{:.2}{}",
                f.kind.name(),
                f.start,
                f.end,
                f.node.map_or(String::new(), |n| format!(" node {n}"))
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, kind: Kind, value: Option<&str>, start: f64, end: f64, ok: bool) -> Op {
        Op { key: key.into(), op: kind, value: value.map(Into::into), start, end: Some(end), ok }
    }

    fn fault(kind: FaultKind, start: f64, end: f64, all_up_at: Option<f64>) -> FaultRecord {
        FaultRecord {
            kind,
            start,
            end,
            node: Some(1),
            detail: String::new(),
            skipped: false,
            all_up_before: true,
            all_up_at,
            killed: Vec::new(),
        }
    }

    #[test]
    fn a_final_read_of_an_older_acknowledged_value_is_a_lost_write() {
        let load = [op("k", Kind::Write, Some("a"), 1.0, 1.1, true), op("k", Kind::Write, Some("b"), 2.0, 2.1, true)];
        let lost = lost_writes(&load, &[op("k", Kind::Read, Some("a"), 9.0, 9.1, true)]);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].expected.as_deref(), Some("b"));
        assert_eq!(lost[0].read.as_deref(), Some("a"));
        assert!(lost_writes(&load, &[op("k", Kind::Read, Some("b"), 9.0, 9.1, true)]).is_empty());
        // A missing key after an acknowledged write is lost too.
        assert_eq!(lost_writes(&load, &[op("k", Kind::Read, None, 9.0, 9.1, true)]).len(), 1);
    }

    #[test]
    fn concurrent_and_unknown_writes_may_each_be_the_final_value() {
        let load = [
            op("k", Kind::Write, Some("a"), 1.0, 3.0, true),
            op("k", Kind::Write, Some("b"), 2.0, 2.5, true),
            op("k", Kind::Write, Some("u"), 0.5, 0.6, false),
            op("k", Kind::Delete, None, 4.0, 4.1, false),
        ];
        for v in [Some("a"), Some("b"), Some("u"), None] {
            assert!(lost_writes(&load, &[op("k", Kind::Read, v, 9.0, 9.1, true)]).is_empty(), "{v:?}");
        }
        // An acknowledged delete leaves nothing; the value before it is lost.
        let load = [op("k", Kind::Write, Some("a"), 1.0, 1.1, true), op("k", Kind::Delete, None, 2.0, 2.1, true)];
        assert!(lost_writes(&load, &[op("k", Kind::Read, None, 9.0, 9.1, true)]).is_empty());
        assert_eq!(lost_writes(&load, &[op("k", Kind::Read, Some("a"), 9.0, 9.1, true)]).len(), 1);
        // A failed final read and a key never acknowledged judge nothing.
        assert!(lost_writes(&load, &[op("k", Kind::Read, Some("z"), 9.0, 9.1, false)]).is_empty());
        assert!(lost_writes(&load, &[op("j", Kind::Read, Some("z"), 9.0, 9.1, true)]).is_empty());
    }

    #[test]
    fn unavailability_runs_from_the_fault_to_the_next_success_of_each_kind() {
        let ops = [
            op("k", Kind::Write, Some("a"), 9.5, 10.2, true), // started before: does not count
            op("k", Kind::Write, Some("b"), 10.1, 11.0, false), // failed: does not count
            op("k", Kind::Write, Some("c"), 11.5, 12.5, true),
            op("k", Kind::Read, None, 10.0, 10.3, true),
            op("k", Kind::Write, Some("d"), 20.0, 20.2, true),
            op("k", Kind::Read, None, 21.0, 21.1, true),
        ];
        let faults = [fault(FaultKind::KillChd, 10.0, 10.5, None), fault(FaultKind::KillChd, 20.0, 20.1, None)];
        let u = unavailability(&ops, &faults);
        let k = &u[&FaultKind::KillChd];
        assert!((k["write"].unwrap() - 2.5).abs() < 1e-9);
        assert!((k["read"].unwrap() - 1.1).abs() < 1e-9);
        assert_eq!(k["delete"], None, "no delete ever succeeded");
    }

    #[test]
    fn errors_count_only_inside_one_node_down_windows() {
        let mut stop_chd = fault(FaultKind::StopChd, 5.0, 8.0, Some(8.1));
        stop_chd.node = None;
        let mut not_all_up = fault(FaultKind::KillOne, 20.0, 20.0, Some(21.0));
        not_all_up.all_up_before = false;
        let faults = [
            fault(FaultKind::KillOne, 1.0, 1.0, Some(2.0)),
            stop_chd,
            fault(FaultKind::StopOne, 10.0, 13.0, None), // never healed: until the next fault
            not_all_up,
        ];
        let ops = [
            op("k", Kind::Write, Some("a"), 1.5, 1.6, true),
            op("k", Kind::Write, Some("b"), 1.7, 1.9, false),
            op("k", Kind::Write, Some("c"), 6.0, 9.0, false), // chd stopped: not one node
            op("k", Kind::Read, None, 15.0, 15.1, false),     // in the unhealed window
            op("k", Kind::Read, None, 20.5, 20.6, false),     // started degraded: not counted
            op("k", Kind::Read, None, 2.5, 2.6, false),       // after healing
        ];
        let r = one_down_errors(&ops, &faults, 30.0);
        assert_eq!(r.windows, 2);
        assert!((r.seconds - (1.0 + 10.0)).abs() < 1e-9);
        assert_eq!((r.ops, r.failed), (3, 2));
        assert!(r.examples[0].contains("kill-one"), "{:?}", r.examples);
        assert!((r.error_rate - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn ops_are_counted_by_kind_and_outcome() {
        let ops = [
            op("k", Kind::Write, Some("a"), 1.0, 1.1, true),
            op("k", Kind::Write, Some("b"), 1.0, 1.1, false),
            Op { key: "k".into(), op: Kind::Read, value: None, start: 1.0, end: None, ok: true },
        ];
        let m = ops_by_kind(&ops);
        assert_eq!(m["write"], Outcomes { ok: 1, failed: 1 });
        assert_eq!(m["read"], Outcomes { ok: 0, failed: 1 });
    }
}
