//! Membership changes: adding, removing and replacing nodes while clients keep going.
//!
//! A change is planned as a target ring ([`chd_data::Ring`] keeps movement minimal), persisted as
//! a transition ([`crate::layout`]), and carried out partition by partition by [`migrate`]: copy
//! the partition's records from its current owners to the nodes that gain it, then switch it.
//! Every step is written to `cluster.json` before it takes effect, so a chd killed mid-change
//! resumes it at start. A node that leaves has its database deleted only once every record it
//! held is confirmed on the new owners; if that cannot be confirmed, it goes to `quarantine/`.

pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use chd_data::proto::{Change, NodeProgress, NodeState, PlanReport, RepairReport};
use chd_data::{Error, NodeId, Ring};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::cluster::Cluster;
use crate::cluster::Event;
use crate::repair;
use crate::supervisor::{self, spawn::Spawner};
use crate::worker::proto::{WorkerRequest, WorkerResponse};

/// Partitions switched per persisted step.
const CHUNK: usize = 64;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Partition drops in flight on one node at once.
const DROP_WINDOW: usize = 4;
/// Groups of partitions (same sources and receivers) copied at once during a change.
const COPIES_AT_ONCE: usize = 4;
/// How long confirming the records of a node that left is retried before its database is
/// quarantined, and how often.
const CONFIRM_PATIENCE: Duration = Duration::from_secs(30);
const CONFIRM_RETRY: Duration = Duration::from_millis(250);

/// Starts a change; the migration runs in the background. Returns what it is and the new ids.
pub async fn start(cluster: &Arc<Cluster>, spawner: &Spawner, change: Change) -> Result<(String, Vec<NodeId>), Error> {
    let mut reg = match cluster.membership.try_lock() {
        Ok(reg) => reg,
        Err(_) => {
            info!("membership change waits for the membership lock (a drop of moved partitions or another step runs)");
            cluster.membership.lock().await
        }
    };
    let layout = cluster.layout();
    if let Some(t) = &layout.transition {
        return Err(Error::Refused(format!("another change is in progress ({}); wait for it to finish", t.what)));
    }
    let (what, target, added, leaving) = plan_change(&layout.ring, &change, reg.next_node_id)?;
    if !added.is_empty() {
        // Reserve the ids on disk first: an id is never used twice, even after a crash here.
        // The new nodes are unborn until they have their identity.
        reg.next_node_id += added.len() as NodeId;
        reg.unborn.extend(added.iter().copied());
        cluster.save(&layout, &reg).map_err(internal)?;
        // Their supervisors record each identity in cluster.json, which needs the lock.
        drop(reg);
        for &id in &added {
            supervisor::start_node(cluster, spawner, id);
        }
        let joined =
            wait_until(JOIN_TIMEOUT, || added.iter().all(|&id| cluster.state_of(id) == Some(NodeState::Up))).await;
        if !joined {
            return Err(Error::Refused(format!("new nodes {added:?} did not come up; see chd's log")));
        }
        reg = cluster.membership.lock().await;
    }
    let mut next = cluster.layout();
    if let Some(t) = &next.transition {
        return Err(Error::Refused(format!("another change is in progress ({}); wait for it to finish", t.what)));
    }
    next.begin(what.clone(), target, leaving).map_err(Error::Refused)?;
    cluster.save(&next, &reg).map_err(internal)?;
    *cluster.layout.write().expect("layout lock") = next;
    info!(change = %what, "membership change started");
    spawn_migration(cluster.clone());
    Ok((what, added))
}

/// The dry run: what `change` would move, node by node.
pub async fn dry_run(cluster: &Arc<Cluster>, change: Change) -> Result<PlanReport, Error> {
    let next_id = cluster.membership.lock().await.next_node_id;
    let ring = cluster.ring();
    let (what, target, _, _) = plan_change(&ring, &change, next_id)?;
    let moves = ring.moves_to(&target);
    // Sizes of the moving partitions, asked of one readable owner of each.
    let mut by_node: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
    for mv in &moves {
        if let Some(src) = sender(cluster, &mv.old) {
            by_node.entry(src).or_default().push(mv.partition);
        }
    }
    let mut sizes = BTreeMap::new();
    for (id, parts) in by_node {
        let Some(link) = cluster.replica(id).link else { continue };
        match link.call(WorkerRequest::PartitionStats { partitions: parts.clone() }, CALL_TIMEOUT).await {
            Ok(WorkerResponse::PartitionStats(stats)) => sizes.extend(parts.into_iter().zip(stats)),
            other => return Err(Error::Internal(format!("node {id} did not report partition sizes: {other:?}"))),
        }
    }
    let nodes = plan::traffic(&ring, &target, &sizes, |mv| sender(cluster, &mv.old).unwrap_or(mv.old[0]));
    Ok(PlanReport { what, partitions_moving: moves.len() as u32, partitions: ring.partitions(), nodes })
}

/// The target ring of a change, the nodes it adds and the nodes that leave.
fn plan_change(
    ring: &Ring,
    change: &Change,
    next_id: NodeId,
) -> Result<(String, Ring, Vec<NodeId>, Vec<NodeId>), Error> {
    let refuse = |e: chd_data::ring::RingError| Error::Refused(e.to_string());
    match *change {
        Change::Add { count } => {
            if count == 0 || count > 64 {
                return Err(Error::Refused("add 1 to 64 nodes at a time".into()));
            }
            let ids: Vec<NodeId> = (next_id..next_id + count).collect();
            let mut target = ring.clone();
            for &id in &ids {
                target = target.with_node_added(id).map_err(refuse)?;
            }
            let what = match ids.as_slice() {
                [one] => format!("add node {one}"),
                many => format!("add nodes {many:?}"),
            };
            Ok((what, target, ids, vec![]))
        }
        Change::Remove { id } => {
            let target = ring.with_node_removed(id).map_err(|e| match e {
                chd_data::ring::RingError::NotMember(_) => Error::NoSuchNode(id),
                other => refuse(other),
            })?;
            Ok((format!("remove node {id}"), target, vec![], vec![id]))
        }
        Change::Replace { id } => {
            if !ring.contains(id) {
                return Err(Error::NoSuchNode(id));
            }
            let target = ring.with_node_replaced(id, next_id).map_err(refuse)?;
            Ok((format!("replace node {id} with node {next_id}"), target, vec![next_id], vec![id]))
        }
    }
}

/// Resumes a change found in `cluster.json` at start.
pub fn resume(cluster: &Arc<Cluster>) {
    if cluster.layout().transition.is_some() {
        spawn_migration(cluster.clone());
    }
}

fn spawn_migration(cluster: Arc<Cluster>) {
    tokio::spawn(async move {
        loop {
            match migrate(&cluster).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "migration paused; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// Moves every pending partition, then completes the change.
async fn migrate(cluster: &Arc<Cluster>) -> anyhow::Result<()> {
    let layout = cluster.layout();
    let Some(t) = &layout.transition else { return Ok(()) };
    let what = t.what.clone();
    let total = layout.moving_count() as u32;
    let started = Instant::now();
    let mut progress = NodeProgress {
        what: what.clone(),
        partitions_done: total - layout.pending().len() as u32,
        partitions_total: total,
        keys: 0,
        bytes: 0,
        elapsed_ms: 0,
        finished: false,
    };
    *cluster.migration.write().expect("migration lock") = Some(progress.clone());
    let w = cluster.write_quorum();
    let mut report = RepairReport::default();
    for chunk in layout.pending().chunks(CHUNK) {
        // Group the chunk by who copies to whom, and copy each group in one pass.
        let mut groups: BTreeMap<Vec<NodeId>, Vec<u32>> = BTreeMap::new();
        for &p in chunk {
            let placement = layout.placement(p);
            let (old, new) = (&placement.write_sets[0], &placement.write_sets[1]);
            let mut sources: Vec<NodeId> =
                cluster.replicas(old).into_iter().filter(|x| x.is_source()).map(|x| x.id).collect();
            // Every acknowledged write is on W old owners: reading old.len()-W+1 of them sees it.
            let need = old.len() + 1 - w;
            if sources.len() < need {
                bail!("partition {p}: only {} of the {need} owners needed to copy it are up", sources.len());
            }
            for x in cluster.replicas(new) {
                if old.contains(&x.id) {
                    continue;
                }
                if !x.takes_writes() {
                    bail!("partition {p}: receiving node {} is not running", x.id);
                }
                sources.push(x.id);
            }
            groups.entry(sources).or_default().push(p);
        }
        // Up to COPIES_AT_ONCE groups copy side by side: each alternates between reading its
        // sources and waiting for its receiver's sync, so one at a time left the machine idle
        // a fifth of the time. Each holds at most two batches of a few MiB, so memory stays
        // bounded whatever the values' sizes.
        let mut copies = tokio::task::JoinSet::new();
        for (ids, parts) in groups {
            if copies.len() == COPIES_AT_ONCE {
                add_counts(&mut report, copies.join_next().await.expect("copies running")??);
            }
            let mut members = Vec::with_capacity(ids.len());
            for x in cluster.replicas(&ids) {
                members.push((x.id, x.link.ok_or_else(|| anyhow::anyhow!("node {} went away", x.id))?));
            }
            copies.spawn(async move {
                let mut report = RepairReport::default();
                repair::sync_partitions(&members, &parts, repair::Compare::AllKeys, &mut report).await.map(|()| report)
            });
        }
        while let Some(joined) = copies.join_next().await {
            add_counts(&mut report, joined??);
        }
        // Switch the chunk: on disk first, then in memory, so a crash never switches back.
        let reg = cluster.membership.lock().await;
        let mut next = cluster.layout();
        for &p in chunk {
            next.mark_done(p);
        }
        cluster.save(&next, &reg)?;
        *cluster.layout.write().expect("layout lock") = next;
        drop(reg);
        progress.partitions_done += chunk.len() as u32;
        progress.keys = report.keys_repaired;
        progress.bytes = report.bytes_repaired;
        progress.elapsed_ms = started.elapsed().as_millis() as u64;
        *cluster.migration.write().expect("migration lock") = Some(progress.clone());
    }

    let reg = cluster.membership.lock().await;
    let mut next = cluster.layout();
    let before = next.ring.clone();
    let Some(done) = next.finish() else { bail!("partitions still pending") };
    cluster.save(&next, &reg)?;
    *cluster.layout.write().expect("layout lock") = next.clone();
    drop(reg);
    for id in &done.leaving {
        retire(cluster, *id, &before, &next.ring).await;
    }
    drop_unowned(cluster).await;
    progress.finished = true;
    progress.elapsed_ms = started.elapsed().as_millis() as u64;
    *cluster.migration.write().expect("migration lock") = Some(progress);
    info!(change = %what, records = report.keys_repaired, bytes = report.bytes_repaired, "membership change done");
    Ok(())
}

/// A node that left: confirm its records are on the new owners, then stop it and delete its
/// database; if it cannot be confirmed, stop it and quarantine the database instead.
///
/// Confirmed means: every partition it held has at least W new owners other than itself
/// running, and copying to them whatever the leaving node has that they lack succeeded, so
/// each of its records is now on W of its new owners. With fewer (new owners down), the
/// leaving node would be the only "confirmed" holder; its database is kept.
///
/// A worker restarting at that moment (crashed, killed, found hung) only delays the
/// confirmation: it is tried again for up to [`CONFIRM_PATIENCE`] before the database is
/// quarantined, so a node that left cleanly does not end up in quarantine for a hiccup.
async fn retire(cluster: &Arc<Cluster>, id: NodeId, before: &Ring, after: &Ring) {
    let deadline = Instant::now() + CONFIRM_PATIENCE;
    let mut attempt = 0;
    let confirmed = loop {
        match confirm(cluster, id, before, after, attempt).await {
            Err(why) if Instant::now() < deadline => {
                info!(node = id, reason = %why, "cannot confirm yet the records of a node that left; trying again");
                tokio::time::sleep(CONFIRM_RETRY).await;
                attempt += 1;
            }
            outcome => break outcome,
        }
    };
    let (done, wait) = oneshot::channel();
    if cluster.send(id, Event::Shutdown(done)) {
        let _ = tokio::time::timeout(Duration::from_secs(15), wait).await;
    }
    cluster.nodes.write().expect("nodes lock").remove(&id);
    match confirmed {
        Ok(()) => match cluster.data.remove_node_dir(id) {
            Ok(()) => info!(node = id, "node left; its records are confirmed on the new owners; database deleted"),
            Err(e) => error!(node = id, error = %e, "cannot delete the database of a node that left"),
        },
        Err(why) => match cluster.data.quarantine(id) {
            Ok(to) => {
                warn!(node = id, to = %to.as_ref().map_or("nowhere (no database)".into(), |p| p.display().to_string()), reason = %why, "node left unconfirmed; database kept in quarantine")
            }
            Err(e) => error!(node = id, error = %e, "cannot move aside the database of a node that left"),
        },
    }
}

/// Copies to the new owners of node `id`'s partitions whatever it has that they lack; `Ok`
/// once each of its records is on W of them (see [`retire`]).
async fn confirm(cluster: &Arc<Cluster>, id: NodeId, before: &Ring, after: &Ring, attempt: u32) -> Result<(), String> {
    let leaving = cluster.replica(id);
    let running = leaving.takes_writes();
    let Some(link) = leaving.link.filter(|_| running) else { return Err(format!("node {id} is not running")) };
    let running = |n: NodeId| cluster.replica(n).takes_writes();
    let groups = confirmation_groups(id, before, after, cluster.write_quorum(), running)?;
    let mut copies = Vec::with_capacity(groups.len());
    for (ids, parts) in groups {
        let mut members = vec![(id, link.clone())];
        for x in cluster.replicas(&ids) {
            members.push((x.id, x.link.ok_or_else(|| format!("node {} went away", x.id))?));
        }
        copies.push((members, parts));
    }
    if attempt == 0 {
        crate::hooks::pause_point("retire-confirm").await;
    }
    // Copying whatever the leaving node has that the new owners lack is the confirmation:
    // afterwards they hold every record it held.
    let mut report = RepairReport::default();
    for (members, parts) in copies {
        for chunk in parts.chunks(CHUNK) {
            repair::sync_partitions(&members, chunk, repair::Compare::Digests, &mut report)
                .await
                .map_err(|e| format!("{e:#}"))?;
        }
    }
    Ok(())
}

/// The partitions node `id` held in `before`, grouped by the new owners (other than `id`) that
/// must confirm them; refused, saying why, if a partition has fewer than `w` of them running.
fn confirmation_groups(
    id: NodeId,
    before: &Ring,
    after: &Ring,
    w: usize,
    running: impl Fn(NodeId) -> bool,
) -> Result<BTreeMap<Vec<NodeId>, Vec<u32>>, String> {
    let mut groups: BTreeMap<Vec<NodeId>, Vec<u32>> = BTreeMap::new();
    for p in before.partitions_of(id) {
        let owners: Vec<NodeId> = after.owners(p).iter().copied().filter(|&n| n != id && running(n)).collect();
        if owners.len() < w {
            return Err(format!(
                "partition {p}: only {} of its new owners {:?} are running, {w} must confirm its records",
                owners.len(),
                after.owners(p)
            ));
        }
        groups.entry(owners).or_default().push(p);
    }
    Ok(groups)
}

/// Drops, on every node, partitions it holds but no longer owns (after a change completed, or
/// a crash between completing one and dropping).
///
/// Runs under the membership lock, from the decision to the last drop: a change that gives a
/// partition back to a node (and starts copying to it, and counting its writes toward W) can
/// only begin once the drop is over, so a drop never wipes what the node holds again.
pub async fn drop_unowned(cluster: &Arc<Cluster>) {
    let _reg = cluster.membership.lock().await;
    let layout = cluster.layout();
    if layout.transition.is_some() {
        return;
    }
    let mut drops = Vec::new();
    for id in layout.members() {
        let Some(link) = cluster.replica(id).link else { continue };
        let owned = layout.partitions_of(id);
        let Ok(WorkerResponse::Partitions(held)) = link.call(WorkerRequest::NonEmptyPartitions, CALL_TIMEOUT).await
        else {
            continue;
        };
        let unowned: Vec<u32> = held.into_iter().filter(|p| !owned.contains(p)).collect();
        if !unowned.is_empty() {
            drops.push((id, link, unowned));
        }
    }
    if !drops.is_empty() {
        crate::hooks::pause_point("drop-decided").await;
    }
    // Every node drops at once, each with a few partitions in flight: the worker applies those
    // in one batch under one sync instead of one sync per partition (one at a time, node after
    // node, this was a third of a `node add`). The window stays small because a batch holds up
    // the node's client requests until its sync: a few partitions of deletes, tens of ms.
    let mut nodes = tokio::task::JoinSet::new();
    for (id, link, partitions) in drops {
        nodes.spawn(async move {
            for window in partitions.chunks(DROP_WINDOW) {
                let mut calls = tokio::task::JoinSet::new();
                for &p in window {
                    let link = link.clone();
                    calls.spawn(async move { (p, link.call(WorkerRequest::DropPartition { partition: p }, CALL_TIMEOUT).await) });
                }
                while let Some(joined) = calls.join_next().await {
                    match joined {
                        Ok((_, Ok(_))) => {}
                        Ok((p, Err(e))) => {
                            warn!(node = id, partition = p, error = %e, "cannot drop a partition the node no longer owns")
                        }
                        Err(e) => warn!(node = id, error = %e, "a partition drop task failed"),
                    }
                }
            }
        });
    }
    while nodes.join_next().await.is_some() {}
}

/// Adds the counts of one group's copy to the change's report.
fn add_counts(report: &mut RepairReport, part: RepairReport) {
    report.partitions_checked += part.partitions_checked;
    report.partitions_differing += part.partitions_differing;
    report.keys_repaired += part.keys_repaired;
    report.bytes_repaired += part.bytes_repaired;
}

/// A readable owner to read a partition from.
fn sender(cluster: &Cluster, owners: &[NodeId]) -> Option<NodeId> {
    cluster.replicas(owners).into_iter().find(|x| x.serves_reads()).map(|x| x.id)
}

fn internal(e: anyhow::Error) -> Error {
    Error::Internal(format!("{e:#}"))
}

async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11 item 3: with every new owner of a partition down, the leaving node alone was
    /// the group of "confirmed" holders, and its database was deleted.
    #[test]
    fn a_leaving_node_is_confirmed_only_by_w_running_new_owners_other_than_itself() {
        let before = Ring::new(&[0, 1, 2, 3], 3, 64).unwrap();
        let after = before.with_node_removed(3).unwrap();
        let all = confirmation_groups(3, &before, &after, 2, |_| true).unwrap();
        assert_eq!(all.values().map(Vec::len).sum::<usize>(), before.partitions_of(3).len());
        assert!(all.keys().all(|owners| owners.len() >= 2 && !owners.contains(&3)));

        let none = confirmation_groups(3, &before, &after, 2, |n| n == 3).unwrap_err();
        assert!(none.contains("only 0 of its new owners"), "{none}");
        // One new owner running is not W=2.
        let one = confirmation_groups(3, &before, &after, 2, |n| n == 0 || n == 3).unwrap_err();
        assert!(one.contains("only 1 of its new owners"), "{one}");
        // W=1: one running new owner confirms.
        assert!(confirmation_groups(3, &before, &after, 1, |n| n == 0).is_ok());
    }
}
