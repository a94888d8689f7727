//! Purging tombstones after a grace period (`tombstone_grace`, default 10 days; Cassandra's
//! `gc_grace_seconds`).
//!
//! A delete writes a tombstone with a fresh version, so that an older value arriving late (a
//! replica that missed the delete, copied by repair or read repair) loses to it. Dropping a
//! tombstone is safe only when no replica still holds an older value of that key: then nothing
//! is left that could come back. So a partition's tombstones are purged only when (pure rule,
//! [`may_purge`]):
//! - every node is `up` with intact data and no membership change is running (a node that is
//!   down, catching up or rebuilding may hold or miss anything);
//! - every one of the partition's R owners answered with the same digest of its (key, version)
//!   pairs: they hold exactly the same records, so each holds the tombstone, and none holds an
//!   older value of that key;
//! - no other node holds records of the partition (a left-over copy from an earlier owner could
//!   otherwise be copied back one day).
//!
//! The grace period adds a margin in time on top: only tombstones whose version was issued at
//! least `tombstone_grace` ago are dropped. Versions are a counter, not a clock
//! ([`crate::versions`]), so chd keeps a small version clock, `<data-dir>/version-clock`: lines
//! `version unix-seconds`, each meaning "every version below `version` was issued by then",
//! recorded as chd runs. The watermark ([`watermark`]) is the highest such version old enough;
//! tombstones below it are purged. A wall clock set back only delays purging (its lines look
//! younger); set forward it can shorten the margin, never the replica rule above.
//!
//! After a purge the replicas of a partition may briefly differ (one has dropped a tombstone,
//! another not yet); repair or read repair may then copy the tombstone back, which is
//! harmless: it is purged again on the next pass. A purge never touches a live value.
//!
//! What this does not cover: a database in `quarantine/` that an operator copies back by hand
//! may hold values deleted since; such a copy must go through a rebuild, not be put back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail};
use chd_data::proto::NodeState;
use chd_data::NodeId;
use tracing::{debug, info, warn};

use crate::cluster::Cluster;
use crate::datadir::write_atomic;
use crate::worker::proto::{WorkerRequest, WorkerResponse};

const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const CHUNK: usize = 64;

/// Every version below `version` had been issued by `secs` (unix time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub version: u64,
    pub secs: u64,
}

/// Versions below the result were all issued at least `grace` before `now`: their tombstones
/// are old enough to purge. 0 when none is known to be.
pub fn watermark(clock: &[Checkpoint], now: u64, grace: u64) -> u64 {
    clock.iter().filter(|c| c.secs.saturating_add(grace) <= now).map(|c| c.version).max().unwrap_or(0)
}

/// The clock after recording `c`: checkpoints older than needed dropped (only the newest one
/// already past the grace matters), and at most one checkpoint per `every` seconds kept.
pub fn record(clock: &[Checkpoint], c: Checkpoint, now: u64, grace: u64, every: u64) -> Vec<Checkpoint> {
    let mut out: Vec<Checkpoint> = clock.to_vec();
    match out.last() {
        Some(last) if last.version >= c.version => {}
        Some(last) if c.secs < last.secs.saturating_add(every) => {}
        _ => out.push(c),
    }
    let ripe = out.iter().rposition(|x| x.secs.saturating_add(grace) <= now);
    if let Some(i) = ripe {
        out.drain(..i);
    }
    out
}

fn parse_clock(text: &str) -> Vec<Checkpoint> {
    text.lines()
        .filter_map(|l| {
            let (v, s) = l.split_once(' ')?;
            Some(Checkpoint { version: v.trim().parse().ok()?, secs: s.trim().parse().ok()? })
        })
        .collect()
}

fn render_clock(clock: &[Checkpoint]) -> String {
    clock.iter().map(|c| format!("{} {}\n", c.version, c.secs)).collect()
}

/// Whether a pass may purge anything at all now; `Err` says why not.
pub fn pass_allowed(migrating: bool, nodes: &[(NodeId, NodeState, bool)]) -> Result<(), String> {
    if migrating {
        return Err("a membership change is running".into());
    }
    match nodes.iter().find(|(_, state, intact)| *state != NodeState::Up || !intact) {
        Some((id, state, _)) => Err(format!("node {id} is {}", state.as_str())),
        None => Ok(()),
    }
}

/// Whether one partition's tombstones may be purged: every owner answered with the same
/// digest, and no node other than its owners holds records of it.
pub fn may_purge(owners: &[NodeId], holders: &BTreeSet<NodeId>, digests: &[Option<[u8; 32]>]) -> bool {
    !owners.is_empty()
        && digests.len() == owners.len()
        && digests.iter().all(|d| d.is_some() && *d == digests[0])
        && holders.iter().all(|h| owners.contains(h))
}

/// The version clock file and its contents.
pub struct Clock {
    path: PathBuf,
    points: Vec<Checkpoint>,
}

impl Clock {
    pub fn open(data_dir: &Path) -> Clock {
        let path = data_dir.join("version-clock");
        let points = std::fs::read_to_string(&path).map(|t| parse_clock(&t)).unwrap_or_default();
        Clock { path, points }
    }

    /// Records that every version below `issued_below` has been issued by now; returns the
    /// watermark for `grace`.
    pub fn tick(&mut self, issued_below: u64, grace: Duration, every: Duration) -> u64 {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let grace = grace.as_secs();
        let next = record(&self.points, Checkpoint { version: issued_below, secs: now }, now, grace, every.as_secs());
        if next != self.points {
            // Losing this file only delays purging: a fresh clock starts empty.
            if let Err(e) = write_atomic(&self.path, render_clock(&next).as_bytes()) {
                warn!(error = %format!("{e:#}"), "cannot write the version clock; tombstones are purged later");
            }
            self.points = next;
        }
        watermark(&self.points, now, grace)
    }
}

/// What a pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub partitions: u64,
    pub tombstones: u64,
}

/// One pass over every partition: purges tombstones below `below` where [`may_purge`] holds.
pub async fn purge_pass(cluster: &Arc<Cluster>, below: u64) -> anyhow::Result<Purged> {
    let layout = cluster.layout();
    let mut done = Purged::default();
    let nodes: Vec<(NodeId, NodeState, bool)> = {
        let slots = cluster.nodes.read().expect("nodes lock");
        slots.iter().map(|(&id, s)| (id, s.state, s.intact && s.link.is_some())).collect()
    };
    if let Err(why) = pass_allowed(layout.transition.is_some(), &nodes) {
        debug!(reason = %why, "tombstone purge skipped");
        return Ok(done);
    }
    let mut holders: BTreeMap<u32, BTreeSet<NodeId>> = BTreeMap::new();
    for (id, _, _) in &nodes {
        let link = cluster.replica(*id).link.ok_or_else(|| anyhow!("node {id} went away"))?;
        match link.call(WorkerRequest::NonEmptyPartitions, CALL_TIMEOUT).await {
            Ok(WorkerResponse::Partitions(ps)) => ps.into_iter().for_each(|p| {
                holders.entry(p).or_default().insert(*id);
            }),
            other => bail!("node {id}: no partition list: {other:?}"),
        }
    }
    let mut groups: BTreeMap<Vec<NodeId>, Vec<u32>> = BTreeMap::new();
    for (&p, _) in holders.iter() {
        groups.entry(layout.ring.owners(p).to_vec()).or_default().push(p);
    }
    for (owners, parts) in groups {
        let links: Vec<_> = owners
            .iter()
            .map(|&id| cluster.replica(id).link.ok_or_else(|| anyhow!("node {id} went away")))
            .collect::<anyhow::Result<_>>()?;
        for chunk in parts.chunks(CHUNK) {
            let mut digests: Vec<Vec<[u8; 32]>> = Vec::new();
            for (link, id) in links.iter().zip(&owners) {
                match link.call(WorkerRequest::Digests { partitions: chunk.to_vec() }, CALL_TIMEOUT).await {
                    Ok(WorkerResponse::Digests(d)) if d.len() == chunk.len() => digests.push(d),
                    other => bail!("node {id}: no digests: {other:?}"),
                }
            }
            let ripe: Vec<u32> = chunk
                .iter()
                .enumerate()
                .filter(|(i, p)| {
                    let d: Vec<Option<[u8; 32]>> = digests.iter().map(|d| Some(d[*i])).collect();
                    may_purge(&owners, &holders[p], &d)
                })
                .map(|(_, &p)| p)
                .collect();
            if ripe.is_empty() {
                continue;
            }
            for (link, id) in links.iter().zip(&owners) {
                match link.call(WorkerRequest::PurgeTombstones { partitions: ripe.clone(), below }, CALL_TIMEOUT).await
                {
                    Ok(WorkerResponse::Count(n)) => done.tombstones += n,
                    other => bail!("node {id}: purge failed: {other:?}"),
                }
            }
            done.partitions += ripe.len() as u64;
        }
    }
    Ok(done)
}

/// chd's background housekeeping: ticks the version clock and, whenever the watermark has
/// moved, runs a purge pass. Runs until chd exits.
pub async fn run(cluster: Arc<Cluster>, issued_below: impl Fn() -> u64, grace: Duration) {
    let every = (grace / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let mut clock = Clock::open(cluster.data.root());
    let mut purged_below = 0;
    loop {
        let below = clock.tick(issued_below(), grace, every);
        if below > purged_below {
            match purge_pass(&cluster, below).await {
                Ok(p) if p.partitions > 0 => {
                    info!(
                        tombstones = p.tombstones,
                        partitions = p.partitions,
                        "purged tombstones older than the grace period"
                    );
                    purged_below = below;
                }
                // Nothing was in agreement yet (or a node is not up): try again next tick.
                Ok(_) => {}
                Err(e) => warn!(error = %format!("{e:#}"), "tombstone purge stopped; it runs again later"),
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86400;

    #[test]
    fn only_versions_issued_a_grace_period_ago_are_ripe() {
        let clock = [Checkpoint { version: 100, secs: 0 }, Checkpoint { version: 500, secs: 5 * DAY }];
        assert_eq!(watermark(&clock, 9 * DAY, 10 * DAY), 0, "nothing is ten days old yet");
        assert_eq!(watermark(&clock, 10 * DAY, 10 * DAY), 100);
        assert_eq!(watermark(&clock, 16 * DAY, 10 * DAY), 500);
        assert_eq!(watermark(&[], 100 * DAY, 10 * DAY), 0, "a lost clock purges nothing");
        assert_eq!(watermark(&clock, 5 * DAY, 0), 500, "grace 0: whatever was issued");
    }

    #[test]
    fn the_clock_keeps_one_ripe_checkpoint_and_spaced_young_ones() {
        let g = 10 * DAY;
        let mut clock = Vec::new();
        for h in 0..(30 * 24) {
            let now = h * 3600;
            clock = record(&clock, Checkpoint { version: 1000 * h + 1, secs: now }, now, g, 3600);
            assert!(clock.len() <= 10 * 24 + 2, "{} checkpoints", clock.len());
            // The watermark never runs ahead of what is truly a grace period old.
            let w = watermark(&clock, now, g);
            assert!(w <= 1000 * (now.saturating_sub(g) / 3600) + 1, "hour {h}: {w}");
        }
        // No new checkpoint for a version that did not grow, or sooner than `every`.
        let last = *clock.last().unwrap();
        let same = record(&clock, Checkpoint { version: last.version, secs: last.secs + 7200 }, last.secs, g, 3600);
        assert_eq!(same.last(), Some(&last));
        let spaced =
            record(&[Checkpoint { version: 5, secs: 100 }], Checkpoint { version: 9, secs: 200 }, 200, g, 3600);
        assert_eq!(spaced, [Checkpoint { version: 5, secs: 100 }]);
        assert_eq!(parse_clock(&render_clock(&clock)), clock);
    }

    #[test]
    fn a_pass_needs_every_node_up_intact_and_no_change_running() {
        let up = (1, NodeState::Up, true);
        assert_eq!(pass_allowed(false, &[up, (2, NodeState::Up, true)]), Ok(()));
        assert!(pass_allowed(true, &[up]).is_err());
        assert_eq!(pass_allowed(false, &[up, (2, NodeState::Down, true)]), Err("node 2 is down".into()));
        assert!(pass_allowed(false, &[up, (2, NodeState::CatchingUp, true)]).is_err());
        assert!(pass_allowed(false, &[up, (2, NodeState::Up, false)]).is_err(), "up but not intact");
    }

    #[test]
    fn a_partition_is_purged_only_when_all_owners_agree_and_no_one_else_holds_it() {
        let owners = [1, 2, 3];
        let (a, b) = (Some([1u8; 32]), Some([2u8; 32]));
        let held: BTreeSet<NodeId> = [1, 2, 3].into();
        assert!(may_purge(&owners, &held, &[a, a, a]));
        // One owner missed the delete (it still has the old value): its digest differs.
        assert!(!may_purge(&owners, &held, &[a, a, b]));
        // One owner did not answer.
        assert!(!may_purge(&owners, &held, &[a, a, None]));
        assert!(!may_purge(&owners, &held, &[a, a]));
        // A former owner still holds records of it.
        assert!(!may_purge(&owners, &[1, 2, 3, 4].into(), &[a, a, a]));
        // An owner holding nothing at all while others agree still digests equal only if all
        // are empty; fewer holders than owners is fine.
        assert!(may_purge(&owners, &[1].into(), &[a, a, a]));
    }
}
