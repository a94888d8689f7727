//! The nemesis: one fault at a time, chosen by the seed, every 1-3 s.
//!
//! [`Schedule`] is pure: the seed alone decides the sequence of fault kinds, gaps, hold times
//! and the number that picks a target, so a failing run can be repeated. [`Nemesis`] carries
//! the faults out against the [`Cluster`] and logs each in `faults.jsonl` with its times.
//!
//! Invariant: no fault destroys more than R-W (= 1) replica of any partition at once. Before a
//! destructive fault (deleting or corrupting a node's files) and before a membership change,
//! the nemesis waits until every node is up (and skips the fault if that does not happen), and
//! it destroys one node's files only.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use chd_data::proto::NodeState;
use serde::{Deserialize, Serialize};

use crate::cluster::{lossy, signal, Cluster, Node};
use crate::load::Clock;
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// kill -9 of one worker.
    KillOne,
    /// kill -9 of every worker at once.
    KillAll,
    /// SIGSTOP of one worker for 1-6 s.
    StopOne,
    /// SIGSTOP of chd for 1-6 s.
    StopChd,
    /// kill -9 of chd, then a restart.
    KillChd,
    /// A graceful stop of chd (SIGTERM: its workers close their databases and save their
    /// indexes), then a start, as `systemctl restart` does.
    RestartChd,
    /// rm -rf of one node's directory while chd runs, then kill -9 of its worker.
    DeleteDir,
    /// kill -9 of chd, rm -rf of one node's directory, restart.
    DeleteDirStopped,
    /// Bytes overwritten in the middle of one node's `db` while its worker is dead.
    Corrupt,
    /// The data dir's filesystem filled until ENOSPC, held 1-3 s, freed.
    DiskFull,
    NodeAdd,
    NodeRemove,
    NodeReplace,
}

impl FaultKind {
    pub const ALL: [FaultKind; 13] = [
        FaultKind::KillOne,
        FaultKind::KillAll,
        FaultKind::StopOne,
        FaultKind::StopChd,
        FaultKind::KillChd,
        FaultKind::RestartChd,
        FaultKind::DeleteDir,
        FaultKind::DeleteDirStopped,
        FaultKind::Corrupt,
        FaultKind::DiskFull,
        FaultKind::NodeAdd,
        FaultKind::NodeRemove,
        FaultKind::NodeReplace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillOne => "kill-one",
            FaultKind::KillAll => "kill-all",
            FaultKind::StopOne => "stop-one",
            FaultKind::StopChd => "stop-chd",
            FaultKind::KillChd => "kill-chd",
            FaultKind::RestartChd => "restart-chd",
            FaultKind::DeleteDir => "delete-dir",
            FaultKind::DeleteDirStopped => "delete-dir-stopped",
            FaultKind::Corrupt => "corrupt",
            FaultKind::DiskFull => "disk-full",
            FaultKind::NodeAdd => "node-add",
            FaultKind::NodeRemove => "node-remove",
            FaultKind::NodeReplace => "node-replace",
        }
    }

    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Faults during which exactly one node is down while chd itself keeps serving: with R=3
    /// and W=2 no operation may fail while one of these lasts.
    pub fn one_node_down(self) -> bool {
        matches!(self, FaultKind::KillOne | FaultKind::StopOne | FaultKind::DeleteDir)
    }

    fn destructive(self) -> bool {
        matches!(self, FaultKind::DeleteDir | FaultKind::DeleteDirStopped | FaultKind::Corrupt)
    }

    fn membership(self) -> bool {
        matches!(self, FaultKind::NodeAdd | FaultKind::NodeRemove | FaultKind::NodeReplace)
    }
}

/// One fault as the seed decides it, before it meets the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub kind: FaultKind,
    /// Pause before the fault.
    pub gap: Duration,
    /// How long a stop or a full disk is held.
    pub hold: Duration,
    /// Picks the target among the candidates found at run time, and the variant.
    pub pick: u64,
}

/// The seeded sequence of faults over the enabled kinds.
///
/// Kinds are dealt from a shuffled deck of the enabled kinds, refilled when empty: the order
/// is random, and every kind comes up equally often in a long run.
pub struct Schedule {
    rng: Rng,
    enabled: Vec<FaultKind>,
    deck: Vec<FaultKind>,
}

impl Schedule {
    pub fn new(seed: u64, enabled: &[FaultKind]) -> Schedule {
        Schedule { rng: Rng::derive(seed, 1), enabled: enabled.to_vec(), deck: Vec::new() }
    }
}

impl Iterator for Schedule {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        if self.enabled.is_empty() {
            return None;
        }
        if self.deck.is_empty() {
            self.deck = self.enabled.clone();
            for i in (1..self.deck.len()).rev() {
                let j = self.rng.below(i as u64 + 1) as usize;
                self.deck.swap(i, j);
            }
        }
        let kind = self.deck.pop().expect("refilled above");
        // 1 to 3 s, start to start, shorter ones likelier (mean 1.4 s): holds of 1-6 s and
        // membership changes take their own time, and a 10-minute run should still see a few
        // hundred faults.
        let u = self.rng.unit();
        let gap = Duration::from_millis(1000 + (2000.0 * u.powi(4)) as u64);
        let hold = match kind {
            FaultKind::StopOne | FaultKind::StopChd => Duration::from_millis(self.rng.range(1000, 6000)),
            FaultKind::DiskFull => Duration::from_millis(self.rng.range(1000, 3000)),
            _ => Duration::ZERO,
        };
        Some(Planned { kind, gap, hold, pick: self.rng.next_u64() })
    }
}

/// The membership change actually made, keeping the node count within `min..=max`.
pub fn bounded_change(kind: FaultKind, nodes: usize, min: usize, max: usize) -> FaultKind {
    match kind {
        FaultKind::NodeAdd if nodes >= max => FaultKind::NodeRemove,
        FaultKind::NodeRemove if nodes <= min => FaultKind::NodeAdd,
        k => k,
    }
}

/// One fault as it happened, a line of `faults.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub start: f64,
    pub end: f64,
    pub node: Option<u32>,
    pub detail: String,
    /// Not carried out (the reason is in `detail`).
    pub skipped: bool,
    /// Every node was up when the fault started.
    pub all_up_before: bool,
    /// When status first showed every node up again after the fault, if before the next one.
    pub all_up_at: Option<f64>,
    /// Workers the fault killed (or that chd killed while the fault held them stopped).
    #[serde(default)]
    pub killed: Vec<u32>,
}

pub const MIN_NODES: usize = 3;
pub const MAX_NODES: usize = 6;

pub struct Nemesis<'a> {
    pub cluster: &'a mut Cluster,
    pub clock: Clock,
    log: BufWriter<File>,
    pub records: Vec<FaultRecord>,
    /// Set when chd could not be restarted: nothing more can be done.
    pub broken: Option<String>,
    /// A membership change running in the background (chctl following it), and what it is.
    change: Option<(std::thread::JoinHandle<anyhow::Result<std::process::Output>>, String)>,
    /// Worker pids killed by recent faults: a node still reported up with one of them has not
    /// been noticed dead yet, so it does not count as up.
    killed: Vec<u32>,
}

impl<'a> Nemesis<'a> {
    pub fn new(cluster: &'a mut Cluster, clock: Clock, out: &Path) -> anyhow::Result<Nemesis<'a>> {
        let log = BufWriter::new(File::create(out.join("faults.jsonl"))?);
        Ok(Nemesis { cluster, clock, log, records: Vec::new(), broken: None, change: None, killed: Vec::new() })
    }

    /// Runs faults from `schedule` until `until` (run time, seconds).
    pub fn run(&mut self, schedule: &mut Schedule, until: f64) {
        let mut pending: Option<FaultRecord> = None;
        for planned in schedule.by_ref() {
            // Faults start every 1-3 s, counted from the start of the previous one; one that is
            // still being held when the next is due delays it (one fault at a time).
            let last_start = pending.as_ref().map(|p| p.start);
            let next_at = last_start.map_or(self.clock.now(), |s| s.max(0.0)) + planned.gap.as_secs_f64();
            // During the gap, watch for the moment the last fault has healed.
            while self.clock.now() < next_at.min(until) {
                if let Some(p) = pending.as_mut().filter(|p| p.all_up_at.is_none()) {
                    if self.cluster.all_up_without(&p.killed) {
                        p.all_up_at = Some(self.clock.now());
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Some(p) = pending.take() {
                self.log(p);
            }
            if self.clock.now() >= until || self.broken.is_some() {
                break;
            }
            let record = self.inject(&planned);
            self.killed.extend(&record.killed);
            let excess = self.killed.len().saturating_sub(256);
            self.killed.drain(..excess);
            eprintln!(
                "[{:7.2}] {:<18} {}{}",
                record.start,
                record.kind.name(),
                record.node.map_or(String::new(), |n| format!("node {n} ")),
                record.detail
            );
            pending = Some(record);
        }
        self.finish_change();
        if let Some(mut p) = pending.take() {
            if self.cluster.all_up_without(&p.killed) {
                p.all_up_at = Some(self.clock.now());
            }
            self.log(p);
        }
    }

    fn log(&mut self, r: FaultRecord) {
        let _ = serde_json::to_writer(&mut self.log, &r);
        let _ = self.log.write_all(b"\n");
        let _ = self.log.flush();
        self.records.push(r);
    }

    /// Carries out one fault.
    pub fn inject(&mut self, p: &Planned) -> FaultRecord {
        let nodes = self.cluster.nodes();
        let all_up_before = nodes.as_ref().is_some_and(|n| {
            n.iter().all(|n| n.state == NodeState::Up && n.pid.is_none_or(|p| !self.killed.contains(&p)))
        });
        let mut kind = p.kind;
        if kind.membership() {
            kind = bounded_change(kind, nodes.as_ref().map_or(0, Vec::len), MIN_NODES, MAX_NODES);
        }
        let mut r = FaultRecord {
            kind,
            start: self.clock.now(),
            end: 0.0,
            node: None,
            detail: String::new(),
            skipped: false,
            all_up_before,
            all_up_at: None,
            killed: Vec::new(),
        };
        if kind.destructive() || kind.membership() {
            // One membership change at a time, and nothing destroyed while data moves.
            self.finish_change();
        }
        if (kind.destructive() || kind.membership()) && !all_up_before {
            // Never destroy a second replica, never change membership on a degraded cluster.
            if !self.cluster.wait_all_up_without(&self.killed, Duration::from_secs(30)) {
                r.skipped = true;
                r.detail = "skipped: not every node came up within 30 s".into();
                r.end = self.clock.now();
                return r;
            }
            r.start = self.clock.now();
            r.all_up_before = true;
        }
        let result = self.act(kind, p, &mut r);
        match result {
            Err(e) if e.is::<NoTarget>() => {
                r.skipped = true;
                r.detail = "skipped: no worker running to aim at".into();
            }
            Err(e) => r.detail = format!("{} failed: {e:#}", r.detail).trim().to_string(),
            Ok(()) => {}
        }
        r.end = self.clock.now();
        r
    }

    /// Waits for the membership change running in the background, if any, and logs how it
    /// ended. A chctl cut off by a fault (chd killed or stopped meanwhile) is no failure of
    /// chd: the change resumes, and the verdict checks that it finished.
    fn finish_change(&mut self) {
        let Some((handle, what)) = self.change.take() else { return };
        match handle.join() {
            Ok(Ok(out)) if out.status.success() => {
                let text = lossy(&out.stdout);
                eprintln!("[{:7.2}] {what}: {}", self.clock.now(), text.lines().last().unwrap_or(""));
            }
            Ok(Ok(out)) => eprintln!("[{:7.2}] {what}: chctl ended: {}", self.clock.now(), lossy(&out.stderr).trim()),
            Ok(Err(e)) => eprintln!("[{:7.2}] {what}: {e:#}", self.clock.now()),
            Err(_) => eprintln!("[{:7.2}] {what}: chctl thread panicked", self.clock.now()),
        }
    }

    /// Nodes to pick a target from: those with a live worker.
    fn target(&self, pick: u64) -> Option<Node> {
        let nodes: Vec<Node> = self.cluster.nodes()?.into_iter().filter(|n| n.pid.is_some()).collect();
        (!nodes.is_empty()).then(|| nodes[(pick % nodes.len() as u64) as usize].clone())
    }

    fn restart_chd(&mut self) -> anyhow::Result<()> {
        if let Err(e) = self.cluster.start() {
            self.broken = Some(format!("chd could not be restarted: {e:#}"));
            return Err(e);
        }
        Ok(())
    }

    fn act(&mut self, kind: FaultKind, p: &Planned, r: &mut FaultRecord) -> anyhow::Result<()> {
        match kind {
            FaultKind::KillOne => {
                let n = self.target(p.pick).ok_or(NoTarget)?;
                r.node = Some(n.id);
                signal(n.pid.unwrap_or(0), libc::SIGKILL);
                r.killed = n.pid.into_iter().collect();
                r.detail = format!("pid {}", n.pid.unwrap_or(0));
            }
            FaultKind::KillAll => {
                let pids: Vec<u32> = self.cluster.nodes().unwrap_or_default().iter().filter_map(|n| n.pid).collect();
                if pids.is_empty() {
                    return Err(NoTarget.into());
                }
                for &pid in &pids {
                    signal(pid, libc::SIGKILL);
                }
                r.detail = format!("pids {pids:?}");
                r.killed = pids;
            }
            FaultKind::StopOne => {
                let n = self.target(p.pick).ok_or(NoTarget)?;
                r.node = Some(n.id);
                let pid = n.pid.unwrap_or(0);
                signal(pid, libc::SIGSTOP);
                std::thread::sleep(p.hold);
                let alive = signal(pid, libc::SIGCONT) && !is_zombie(pid);
                if !alive {
                    r.killed.push(pid);
                }
                r.detail = format!(
                    "pid {pid} for {:.1} s{}",
                    p.hold.as_secs_f64(),
                    if alive { "" } else { " (killed meanwhile)" }
                );
            }
            FaultKind::StopChd => {
                let pid = self.cluster.pid().ok_or_else(|| anyhow::anyhow!("chd not running"))?;
                signal(pid, libc::SIGSTOP);
                std::thread::sleep(p.hold);
                signal(pid, libc::SIGCONT);
                r.detail = format!("for {:.1} s", p.hold.as_secs_f64());
            }
            FaultKind::KillChd => {
                self.cluster.kill9();
                self.restart_chd()?;
            }
            FaultKind::RestartChd => {
                self.cluster.stop();
                self.restart_chd()?;
            }
            FaultKind::DeleteDir => {
                let n = self.target(p.pick).ok_or(NoTarget)?;
                r.node = Some(n.id);
                let dir = self.cluster.node_dir(n.id);
                r.detail = format!("{} then kill -9 pid {}", dir.display(), n.pid.unwrap_or(0));
                // The live worker may create files while the tree is removed: try again.
                let removed = remove_tree(&dir);
                signal(n.pid.unwrap_or(0), libc::SIGKILL);
                r.killed = n.pid.into_iter().collect();
                removed?;
            }
            FaultKind::DeleteDirStopped => {
                let n = self.target(p.pick).ok_or(NoTarget)?;
                r.node = Some(n.id);
                self.cluster.kill9();
                let dir = self.cluster.node_dir(n.id);
                r.detail = dir.display().to_string();
                let removed = std::fs::remove_dir_all(&dir);
                self.restart_chd()?;
                removed?;
            }
            FaultKind::Corrupt => {
                let n = self.target(p.pick).ok_or(NoTarget)?;
                r.node = Some(n.id);
                let db = database_file(&self.cluster.node_dir(n.id), p.pick)?;
                let mut garbage = [0u8; 4096];
                Rng::new(p.pick).fill(&mut garbage);
                if p.pick & 1 == 0 {
                    // chd stopped so that it cannot respawn the worker while its file changes.
                    let chd = self.cluster.pid().unwrap_or(0);
                    signal(chd, libc::SIGSTOP);
                    signal(n.pid.unwrap_or(0), libc::SIGKILL);
                    r.killed = n.pid.into_iter().collect();
                    wait_gone(n.pid.unwrap_or(0));
                    let res = overwrite_middle(&db, &garbage);
                    signal(chd, libc::SIGCONT);
                    r.detail = format!("worker killed (chd held stopped): {}", res?);
                } else {
                    self.cluster.kill9();
                    let res = overwrite_middle(&db, &garbage);
                    self.restart_chd()?;
                    r.detail = format!("chd killed: {}", res?);
                }
            }
            FaultKind::DiskFull => {
                let root = self.cluster.tmpfs.clone().ok_or_else(|| anyhow::anyhow!("no tmpfs mounted"))?;
                let filler = root.join("filler");
                let written = fill(&filler);
                std::thread::sleep(p.hold);
                let _ = std::fs::remove_file(&filler);
                r.detail = format!("{} MiB filler held {:.1} s", written >> 20, p.hold.as_secs_f64());
            }
            FaultKind::NodeAdd | FaultKind::NodeRemove | FaultKind::NodeReplace => {
                let mut args = vec!["node".to_string()];
                match kind {
                    FaultKind::NodeAdd => args.push("add".into()),
                    _ => {
                        let n = self.target(p.pick).ok_or(NoTarget)?;
                        r.node = Some(n.id);
                        args.push(if kind == FaultKind::NodeRemove { "remove" } else { "replace" }.into());
                        args.push(n.id.to_string());
                    }
                }
                // The change runs in the background while other (non-destructive) faults go
                // on: kills and stops during a migration are what it must survive.
                let what = args.join(" ");
                let cmd = self.cluster.chctl_runner();
                let handle = std::thread::spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    cmd.run(&args, Duration::from_secs(120))
                });
                r.detail = format!("{what}: started");
                self.change = Some((handle, what));
            }
        }
        Ok(())
    }
}

/// No node has a worker to aim the fault at (all down or chd not answering).
#[derive(Debug, thiserror::Error)]
#[error("no worker running to aim at")]
struct NoTarget;

/// rm -rf, retried while a live process adds files to the tree.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let mut result = Ok(());
    for _ in 0..20 {
        result = std::fs::remove_dir_all(dir);
        match &result {
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => continue,
            _ => break,
        }
    }
    result
}

/// A process that ended but was not reaped yet.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// Waits (briefly) until a killed process is gone or a zombie, so its files are closed.
fn wait_gone(pid: u32) {
    for _ in 0..200 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) if !s.contains(") Z ") => std::thread::sleep(Duration::from_millis(5)),
            _ => return,
        }
    }
}

/// Overwrites `garbage.len()` bytes in the middle of `path`.
/// A file of a node's database to corrupt: one of the append log's segments (`log/<n>`,
/// chosen by `pick`), or sled's log `db` for a database sled created.
fn database_file(node_dir: &Path, pick: u64) -> anyhow::Result<std::path::PathBuf> {
    let mut segments: Vec<std::path::PathBuf> = match std::fs::read_dir(node_dir.join("log")) {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok()))
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    };
    segments.sort();
    if segments.is_empty() {
        return Ok(node_dir.join("db"));
    }
    Ok(segments.swap_remove((pick % segments.len() as u64) as usize))
}

fn overwrite_middle(path: &Path, garbage: &[u8]) -> anyhow::Result<String> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    let len = f.metadata()?.len();
    let at = (len / 2).saturating_sub(garbage.len() as u64 / 2);
    f.seek(SeekFrom::Start(at))?;
    f.write_all(&garbage[..garbage.len().min(len as usize)])?;
    f.sync_all()?;
    Ok(format!("{} bytes at {at} of {len} in {}", garbage.len().min(len as usize), path.display()))
}

/// Writes `path` until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let Ok(mut f) = File::create(path) else { return 0 };
    let chunk = vec![0x5Au8; 1 << 20];
    let mut written = 0u64;
    // Bounded in case the filesystem is not the small one we think it is.
    while written < 64 << 30 {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = f.sync_all();
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let kinds = FaultKind::ALL;
        let a: Vec<Planned> = Schedule::new(42, &kinds).take(200).collect();
        let b: Vec<Planned> = Schedule::new(42, &kinds).take(200).collect();
        assert_eq!(a, b);
        let c: Vec<Planned> = Schedule::new(43, &kinds).take(200).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn the_schedule_uses_only_enabled_kinds_with_their_timings() {
        let enabled = [FaultKind::KillOne, FaultKind::StopOne, FaultKind::DiskFull];
        let plan: Vec<Planned> = Schedule::new(7, &enabled).take(1000).collect();
        // Dealt from a deck: each kind exactly once in every round of three.
        for round in plan.chunks(3).take(333) {
            let mut kinds: Vec<&str> = round.iter().map(|p| p.kind.name()).collect();
            kinds.sort_unstable();
            assert_eq!(kinds, vec!["disk-full", "kill-one", "stop-one"]);
        }
        for p in &plan {
            assert!(enabled.contains(&p.kind));
            assert!((1000..=3000).contains(&(p.gap.as_millis() as u64)), "{p:?}");
            let hold = p.hold.as_millis() as u64;
            match p.kind {
                FaultKind::StopOne => assert!((1000..=6000).contains(&hold)),
                FaultKind::DiskFull => assert!((1000..=3000).contains(&hold)),
                _ => assert_eq!(hold, 0),
            }
        }
        assert_eq!(Schedule::new(7, &[]).next(), None);
    }

    #[test]
    fn membership_changes_keep_the_node_count_in_bounds() {
        assert_eq!(bounded_change(FaultKind::NodeAdd, 6, 3, 6), FaultKind::NodeRemove);
        assert_eq!(bounded_change(FaultKind::NodeAdd, 5, 3, 6), FaultKind::NodeAdd);
        assert_eq!(bounded_change(FaultKind::NodeRemove, 3, 3, 6), FaultKind::NodeAdd);
        assert_eq!(bounded_change(FaultKind::NodeRemove, 4, 3, 6), FaultKind::NodeRemove);
        assert_eq!(bounded_change(FaultKind::NodeReplace, 3, 3, 6), FaultKind::NodeReplace);
    }

    #[test]
    fn kinds_have_unique_names_that_parse_back() {
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::parse(k.name()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
    }
}
