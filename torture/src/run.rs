//! One torture run: start chd, run the load and the nemesis, then the verdict.
//!
//! Verdict: stop the faults and the load, wait for every node to be up (a node not up within
//! 60 s is "stuck"), `chctl repair`, read every key, kill -9 chd, restart it, read every key
//! again (all of these reads are in the history), then check the whole history and compute
//! the [`crate::summary`] figures. The run passes only with no violation, no lost write, no
//! panic in chd's log, no stuck node and no error while exactly one node was down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chd_data::proto::Request;
use serde::Serialize;

use crate::check;
use crate::cluster::{is_root, lossy, Cluster};
use crate::history::{self, Kind, Op};
use crate::load::{self, cold_key_name, key_name, Clock, Load, LoadConfig, Recorder, Session};
use crate::nemesis::{FaultKind, FaultRecord, Nemesis, Schedule};
use crate::summary::{self, LostWrite, OneDown, Outcomes};

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub seconds: u64,
    pub seed: u64,
    pub out: PathBuf,
    pub clients: usize,
    pub keys: usize,
    pub cold_keys: usize,
    pub nodes: u32,
    /// chd's `--engine`.
    pub engine: String,
    pub faults: Vec<FaultKind>,
    pub chd: PathBuf,
    pub chctl: PathBuf,
    pub op_timeout: Duration,
    pub large_share: f64,
    pub tmpfs_mib: u64,
    /// Keep chd's data dir after a passing run (it is always kept after a failing one).
    pub keep_data: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ViolationReport {
    pub key: String,
    pub message: String,
    /// The operation whose addition first made the key's history non-linearizable.
    pub first_bad_op: Option<String>,
    /// Faults around it: the likely cause.
    pub preceding_faults: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LostReport {
    #[serde(flatten)]
    pub lost: LostWrite,
    pub faults_between: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub seed: u64,
    pub seconds: u64,
    pub clients: usize,
    pub keys: usize,
    pub cold_keys: usize,
    pub faults_enabled: Vec<FaultKind>,
    pub ops_total: u64,
    pub ops: BTreeMap<&'static str, Outcomes>,
    pub faults_total: u64,
    pub faults: BTreeMap<FaultKind, u64>,
    pub faults_skipped: BTreeMap<FaultKind, u64>,
    pub lost_writes: u64,
    pub lost: Vec<LostReport>,
    pub violations: u64,
    pub violation_details: Vec<ViolationReport>,
    /// Keys the checker could not decide within its budget (not a failure, but not a pass
    /// for those keys either).
    pub inconclusive: Vec<String>,
    pub panics: u64,
    pub panic_lines: Vec<String>,
    /// Nodes not up within 60 s at the verdict, with their states.
    pub stuck: Vec<String>,
    pub one_node_down: OneDown,
    /// Longest seconds from a fault's start to the next success of each operation kind;
    /// `null`: none ever succeeded again.
    pub unavailability: BTreeMap<FaultKind, BTreeMap<&'static str, Option<f64>>>,
    pub repair: String,
    pub final_reads_failed: u64,
    pub verdict: &'static str,
    pub reasons: Vec<String>,
    pub out: PathBuf,
}

pub fn run(mut cfg: RunConfig) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("cannot create {}", cfg.out.display()))?;
    for f in ["history.jsonl", "faults.jsonl", "errors.jsonl", "chd.log", "summary.json"] {
        let _ = std::fs::remove_file(cfg.out.join(f));
    }
    for (what, p) in [("chd", &cfg.chd), ("chctl", &cfg.chctl)] {
        if !p.exists() {
            anyhow::bail!(
                "{what} not found at {}; build it first (cargo build --release -p chd -p chctl) or pass --{what}",
                p.display()
            );
        }
    }
    let tmpfs = if cfg.faults.contains(&FaultKind::DiskFull) {
        if is_root() {
            Some(cfg.tmpfs_mib)
        } else {
            eprintln!("chd-torture: not root, so no tmpfs to fill: disk-full faults are off");
            cfg.faults.retain(|k| *k != FaultKind::DiskFull);
            None
        }
    } else {
        None
    };
    let clock = Clock::start();
    let mut cluster = Cluster::new(cfg.chd.clone(), cfg.chctl.clone(), &cfg.out, cfg.nodes, tmpfs)?;
    cluster.engine.clone_from(&cfg.engine);
    cluster.start()?;
    anyhow::ensure!(cluster.wait_all_up(Duration::from_secs(60)), "chd's nodes did not come up at the start");
    let rec = Arc::new(Recorder::create(&cfg.out, clock)?);
    let load_cfg = LoadConfig {
        clients: cfg.clients,
        keys: cfg.keys,
        cold_keys: cfg.cold_keys,
        seed: cfg.seed,
        large_share: cfg.large_share,
        op_timeout: cfg.op_timeout,
    };
    let cold = load::write_cold_keys(&load_cfg, &cluster.socket, &rec);
    anyhow::ensure!(cold == cfg.cold_keys, "only {cold} of {} cold keys could be written", cfg.cold_keys);
    let load = Load::start(&load_cfg, &cluster.socket, &rec);
    let until = clock.now() + cfg.seconds as f64;
    let mut schedule = Schedule::new(cfg.seed, &cfg.faults);
    let (records, broken) = {
        let mut nemesis = Nemesis::new(&mut cluster, clock, &cfg.out)?;
        nemesis.run(&mut schedule, until);
        // Without faults, still load for the whole time.
        while clock.now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
        (std::mem::take(&mut nemesis.records), nemesis.broken.take())
    };
    load.finish();
    let load_end = clock.now();
    eprintln!("[{load_end:7.2}] load stopped; verdict");

    // The verdict.
    let mut reasons = Vec::new();
    if let Some(b) = &broken {
        reasons.push(b.clone());
        let _ = cluster.start();
    }
    let mut stuck = stuck_nodes(&cluster);
    let repair = match cluster.chctl(&["repair"], Duration::from_secs(120)) {
        Ok(o) if o.status.success() => lossy(&o.stdout),
        Ok(o) => format!("failed: {}", lossy(&o.stderr)),
        Err(e) => format!("failed: {e:#}"),
    };
    let all_keys: Vec<String> = (0..cfg.keys).map(key_name).chain((0..cfg.cold_keys).map(cold_key_name)).collect();
    let final_from = clock.now();
    let mut final_failed = read_every_key(&cluster, &rec, &all_keys, cfg.op_timeout);
    cluster.kill9();
    match cluster.start() {
        Ok(()) => {
            if stuck.is_empty() {
                stuck = stuck_nodes(&cluster).into_iter().map(|s| format!("after the final restart: {s}")).collect();
            }
            final_failed += read_every_key(&cluster, &rec, &all_keys, cfg.op_timeout);
        }
        Err(e) => reasons.push(format!("chd did not restart for the final reads: {e:#}")),
    }
    // The tmpfs goes away with the cluster, and a failed run must keep its data to be looked
    // at: copy it out first (deleted again below if the run passes).
    let mut data_dir = cluster.data.clone();
    if cluster.tmpfs.is_some() {
        cluster.stop();
        let kept = cfg.out.join("data");
        let _ = std::fs::remove_dir_all(&kept);
        match std::process::Command::new("cp").arg("-a").arg(&data_dir).arg(&kept).status() {
            Ok(s) if s.success() => data_dir = kept,
            other => eprintln!("chd-torture: could not copy the data dir out of the tmpfs: {other:?}"),
        }
    }
    cluster.shutdown();
    rec.flush();
    drop(cluster);

    let ops = history::read(std::io::BufReader::new(std::fs::File::open(cfg.out.join("history.jsonl"))?))?;
    let (load_ops, finals): (Vec<Op>, Vec<Op>) = ops.iter().cloned().partition(|o| o.start < final_from);
    let report = check::check(&ops);
    let violation_details: Vec<ViolationReport> =
        report.violations.iter().enumerate().map(|(i, v)| locate(&ops, &records, &v.key, &v.message, i < 20)).collect();
    let lost: Vec<LostReport> = summary::lost_writes(&load_ops, &finals)
        .into_iter()
        .map(|l| LostReport {
            faults_between: summary::faults_between(&records, l.acknowledged_at, l.read_at, 0.0),
            lost: l,
        })
        .collect();
    let log = std::fs::read_to_string(cfg.out.join("chd.log")).unwrap_or_default();
    let panic_lines: Vec<String> = log.lines().filter(|l| l.contains("panicked")).map(String::from).collect();
    let one_node_down = summary::one_down_errors(&load_ops, &records, load_end);

    if !report.ok() {
        reasons.push(format!("{} keys not linearizable", report.violations.len()));
    }
    if !lost.is_empty() {
        reasons.push(format!("{} acknowledged writes lost", lost.len()));
    }
    if !panic_lines.is_empty() {
        reasons.push(format!("{} panics in chd's log", panic_lines.len()));
    }
    if !stuck.is_empty() {
        let last: Vec<String> = summary::faults_between(&records, load_end - 15.0, load_end, 0.0);
        reasons.push(format!("nodes not up within 60 s: {}; the last faults: {}", stuck.join(", "), last.join(", ")));
    }
    if one_node_down.failed > 0 {
        reasons.push(format!("{} operations failed while exactly one node was down", one_node_down.failed));
    }
    if final_failed > 0 {
        reasons.push(format!("{final_failed} final reads failed"));
    }
    let mut faults = BTreeMap::new();
    let mut faults_skipped = BTreeMap::new();
    for r in &records {
        *(if r.skipped { &mut faults_skipped } else { &mut faults }).entry(r.kind).or_insert(0u64) += 1;
    }
    let summary = Summary {
        seed: cfg.seed,
        seconds: cfg.seconds,
        clients: cfg.clients,
        keys: cfg.keys,
        cold_keys: cfg.cold_keys,
        faults_enabled: cfg.faults.clone(),
        ops_total: ops.len() as u64,
        ops: summary::ops_by_kind(&ops),
        faults_total: faults.values().sum(),
        faults,
        faults_skipped,
        lost_writes: lost.len() as u64,
        lost,
        violations: report.violations.len() as u64,
        violation_details,
        inconclusive: report.inconclusive.clone(),
        panics: panic_lines.len() as u64,
        panic_lines,
        stuck,
        one_node_down,
        unavailability: summary::unavailability(&load_ops, &records),
        repair,
        final_reads_failed: final_failed,
        verdict: if reasons.is_empty() { "pass" } else { "fail" },
        reasons,
        out: cfg.out.clone(),
    };
    std::fs::write(cfg.out.join("summary.json"), serde_json::to_string_pretty(&summary)? + "\n")?;
    // Only a failed run needs its data dir.
    if summary.verdict == "pass" && !cfg.keep_data {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(summary)
}

/// Nodes not up within 60 s, as "id state".
fn stuck_nodes(cluster: &Cluster) -> Vec<String> {
    if cluster.wait_all_up(Duration::from_secs(60)) {
        return Vec::new();
    }
    match cluster.status() {
        None => vec!["chd does not answer".into()],
        Some(s) => {
            let mut v: Vec<String> = s
                .nodes
                .iter()
                .filter(|n| n.state != chd_data::proto::NodeState::Up)
                .map(|n| format!("node {} {}", n.id, n.state.as_str()))
                .collect();
            if let Some(m) = s.migration.filter(|m| !m.finished) {
                v.push(format!("{} unfinished", m.what));
            }
            v
        }
    }
}

/// Reads every key once, retrying failed reads for at most 30 s in all (every attempt is
/// recorded); returns the keys that could not be read at all.
fn read_every_key(cluster: &Cluster, rec: &Recorder, keys: &[String], timeout: Duration) -> u64 {
    let mut session = Session::new(&cluster.socket, "chd-torture verdict", timeout);
    let mut failed = 0;
    let mut retry_budget = 30u32;
    for key in keys {
        let read = |session: &mut Session| session.run(rec, key, Request::Get { key: key.clone().into_bytes() }, None);
        let mut ok = read(&mut session);
        while !ok && retry_budget > 0 {
            retry_budget -= 1;
            std::thread::sleep(Duration::from_secs(1));
            ok = read(&mut session);
        }
        failed += u64::from(!ok);
    }
    failed
}

/// Finds the operation at which `key`'s history stops being linearizable, by checking ever
/// longer prefixes (by start; operations still running when the next one starts count as
/// unknown), and the faults around it.
pub fn locate(ops: &[Op], faults: &[FaultRecord], key: &str, message: &str, search: bool) -> ViolationReport {
    let mut mine: Vec<Op> = ops.iter().filter(|o| o.key == key).cloned().collect();
    mine.sort_by(|a, b| a.start.partial_cmp(&b.start).unwrap());
    let mut r = ViolationReport {
        key: key.to_string(),
        message: message.to_string(),
        first_bad_op: None,
        preceding_faults: Vec::new(),
    };
    if !search || mine.is_empty() {
        return r;
    }
    let bad = |n: usize| {
        // Operations still running when the first excluded one started may depend on it.
        let cut = mine.get(n).map_or(f64::INFINITY, |o| o.start);
        let prefix: Vec<Op> = mine[..n]
            .iter()
            .map(|o| {
                let mut o = o.clone();
                if o.end.is_some_and(|e| e > cut) {
                    o.end = None;
                    o.ok = false;
                    if o.op == Kind::Read {
                        o.value = None;
                    }
                }
                o
            })
            .collect();
        !check::check(&prefix).ok()
    };
    // Smallest n with a bad prefix of n operations.
    let (mut lo, mut hi) = (1, mine.len());
    if !bad(hi) {
        return r;
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if bad(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    // The op whose start made it bad may be a read answered later; name the whole op.
    let op = &mine[lo - 1];
    r.first_bad_op = serde_json::to_string(op).ok();
    r.preceding_faults = summary::faults_between(faults, op.start - 10.0, op.end.unwrap_or(op.start), 0.0);
    r
}

/// The readable table.
pub fn print(s: &Summary) {
    println!();
    println!(
        "chd-torture: seed {}, {} s, {} clients, {} keys (+{} cold)",
        s.seed, s.seconds, s.clients, s.keys, s.cold_keys
    );
    println!("{:<10} {:>10} {:>10}", "OP", "OK", "FAILED");
    for (k, o) in &s.ops {
        println!("{k:<10} {:>10} {:>10}", o.ok, o.failed);
    }
    println!("{:<10} {:>10}", "total", s.ops_total);
    println!();
    println!(
        "{:<20} {:>6} {:>8} {:>12} {:>12} {:>12}",
        "FAULT", "COUNT", "SKIPPED", "MAX WRITE", "MAX READ", "MAX DEL"
    );
    let secs = |v: Option<&Option<f64>>| match v {
        Some(Some(x)) => format!("{x:.2}s"),
        Some(None) => "never".into(),
        None => "-".into(),
    };
    for k in FaultKind::ALL {
        let (n, skipped) = (s.faults.get(&k).copied().unwrap_or(0), s.faults_skipped.get(&k).copied().unwrap_or(0));
        if n == 0 && skipped == 0 {
            continue;
        }
        let u = s.unavailability.get(&k);
        println!(
            "{:<20} {:>6} {:>8} {:>12} {:>12} {:>12}",
            k.name(),
            n,
            skipped,
            secs(u.and_then(|u| u.get("write"))),
            secs(u.and_then(|u| u.get("read"))),
            secs(u.and_then(|u| u.get("delete")))
        );
    }
    println!("{:<20} {:>6}", "total", s.faults_total);
    println!("(MAX: longest time from a fault's start to the next successful operation of that kind)");
    println!();
    let d = &s.one_node_down;
    println!(
        "one node down: {} windows, {:.1} s, {} ops, {} failed (error rate {:.4})",
        d.windows, d.seconds, d.ops, d.failed, d.error_rate
    );
    for e in &d.examples {
        println!("  {e}");
    }
    println!("repair: {}", s.repair);
    println!("lost writes: {}", s.lost_writes);
    for l in s.lost.iter().take(10) {
        println!(
            "  {}: expected {:?} (acknowledged at {:.2}), read {:?} at {:.2}; faults between: {}",
            l.lost.key,
            l.lost.expected,
            l.lost.acknowledged_at,
            l.lost.read,
            l.lost.read_at,
            l.faults_between.join(", ")
        );
    }
    println!("violations: {}", s.violations);
    for v in s.violation_details.iter().take(10) {
        println!("  {}: {}", v.key, v.message);
        if let Some(op) = &v.first_bad_op {
            println!("    first bad op: {op}");
            println!("    faults around it: {}", v.preceding_faults.join(", "));
        }
    }
    if !s.inconclusive.is_empty() {
        println!("keys the checker could not decide: {}", s.inconclusive.join(", "));
    }
    println!("panics in chd.log: {}", s.panics);
    for l in s.panic_lines.iter().take(5) {
        println!("  {l}");
    }
    if !s.stuck.is_empty() {
        println!("stuck: {}", s.stuck.join(", "));
    }
    println!();
    println!("verdict: {} (seed {}; files in {})", s.verdict.to_uppercase(), s.seed, s.out.display());
    for r in &s.reasons {
        println!("  - {r}");
    }
}

/// The default place of chd and chctl: next to this executable.
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default().join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_violation_is_located_at_the_stale_read_and_names_the_fault_before_it() {
        let op = |k: Kind, v: &str, s: f64| Op {
            key: "k".into(),
            op: k,
            value: Some(v.into()),
            start: s,
            end: Some(s + 0.1),
            ok: true,
        };
        let mut ops = Vec::new();
        for i in 0..50 {
            ops.push(op(Kind::Write, &format!("v{i}"), i as f64));
            ops.push(op(Kind::Read, &format!("v{i}"), i as f64 + 0.2));
        }
        ops.push(op(Kind::Read, "v10", 60.0)); // stale: v49 was acknowledged long before
        for i in 61..70 {
            ops.push(op(Kind::Read, "v49", i as f64));
        }
        let kill = FaultRecord {
            kind: FaultKind::KillChd,
            start: 55.0,
            end: 56.0,
            node: None,
            detail: String::new(),
            skipped: false,
            all_up_before: true,
            all_up_at: None,
            killed: Vec::new(),
        };
        let r = locate(&ops, &[kill], "k", "stale read", true);
        let bad: Op = serde_json::from_str(r.first_bad_op.as_deref().expect("located")).unwrap();
        assert_eq!((bad.start, bad.value.as_deref()), (60.0, Some("v10")));
        assert_eq!(r.preceding_faults, ["kill-chd at 55.00-56.00"]);
    }
}
