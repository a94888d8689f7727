//! Anti-entropy: bringing the replicas of a partition into agreement.
//!
//! Differences are found cheaply: each replica digests the (key, version) pairs of a partition
//! and only partitions whose digests differ are compared key by key ([`plan`]), and only the
//! records that differ are copied, newest version winning. The same machinery serves three
//! callers: a node catching up after being down, a node rebuilt after losing its data, and
//! `chctl repair`.
//!
//! Memory stays bounded: partitions are handled a chunk at a time, records are copied in
//! batches of [`BATCH`], and each batch is one durable `PutMany` on the receiver. Copies never
//! block client traffic (they are ordinary requests on the worker links, and newest-wins means
//! a concurrent client write is never overwritten by an older copied record). An interrupted
//! sync is simply run again: partitions already in agreement have equal digests and are
//! skipped, so a restart resumes where the last one stopped.
//!
//! How many sources a sync needs: an acknowledged write is on W of the R owners, so any R-W+1
//! owners that kept their data (intact, whatever their state) include one that has it. A node
//! that kept its data but missed writes is one of them itself and asks R-W peers; a node that
//! lost its data asks R-W+1. Sources may themselves be catching up: newest version wins.

pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use chd_data::proto::{NodeProgress, RepairReport};
use chd_data::{NodeId, Record};

use crate::cluster::Cluster;
use crate::layout::Layout;
use crate::worker::link::WorkerLink;
use crate::worker::proto::{WorkerRequest, WorkerResponse};

/// A replica's (key, version) pairs of one partition, ascending by key.
type VersionList = Vec<(Vec<u8>, u64)>;

/// Records copied per request, at most.
const BATCH: usize = 1024;
/// Bytes of keys asked for in one `GetMany`, about (keys may be 64 KiB each).
const BATCH_KEY_BYTES: usize = 1 << 20;
/// Partitions digested per request.
const DIGEST_CHUNK: usize = 64;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    CatchUp,
    Rebuild,
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncMode::CatchUp => "catch-up",
            SyncMode::Rebuild => "rebuild",
        })
    }
}

/// Brings node `id` up to date on every partition it owns.
///
/// The sources of a partition are the intact nodes that hold it now ([`crate::cluster::Replica::is_source`]
/// among its read owners; a node gaining a partition that has not received it yet is not one).
/// Merging R-W+1 intact holders yields every acknowledged write: a node catching up counts as
/// one of them itself, a node being rebuilt does not.
pub async fn sync_node(cluster: &Arc<Cluster>, id: NodeId, mode: SyncMode) -> anyhow::Result<RepairReport> {
    let layout = cluster.layout();
    let w = cluster.write_quorum();
    let parts = layout.partitions_of(id);
    let what = match mode {
        SyncMode::CatchUp => "catching up",
        SyncMode::Rebuild => "rebuilding",
    };
    let started = Instant::now();
    let mut progress = NodeProgress {
        what: what.into(),
        partitions_done: 0,
        partitions_total: parts.len() as u32,
        keys: 0,
        bytes: 0,
        elapsed_ms: 0,
        finished: false,
    };
    let mut report = RepairReport::default();
    for chunk in parts.chunks(DIGEST_CHUNK) {
        let me = cluster.replica(id);
        let Some(my_link) = me.link.clone().filter(|_| me.takes_writes()) else {
            bail!("node {id} went away during the sync");
        };
        // Group the chunk's partitions by their set of sources.
        let mut groups: BTreeMap<Vec<NodeId>, Vec<u32>> = BTreeMap::new();
        for &p in chunk {
            let is_source = |n: NodeId| cluster.replica(n).is_source();
            let peers = sync_peers(&layout, p, id, mode, w, is_source).map_err(|e| anyhow!(e))?;
            groups.entry(peers).or_default().push(p);
        }
        for (peers, partitions) in groups {
            let mut members = vec![(id, my_link.clone())];
            for x in cluster.replicas(&peers) {
                members.push((x.id, x.link.ok_or_else(|| anyhow!("node {} went away", x.id))?));
            }
            let compare = match mode {
                SyncMode::CatchUp => Compare::Digests,
                SyncMode::Rebuild => Compare::AllKeys,
            };
            sync_partitions(&members, &partitions, compare, &mut report).await?;
        }
        progress.partitions_done += chunk.len() as u32;
        progress.keys = report.keys_repaired;
        progress.bytes = report.bytes_repaired;
        progress.elapsed_ms = started.elapsed().as_millis() as u64;
        let p = progress.clone();
        cluster.update(id, |s| s.progress = Some(p));
    }
    progress.finished = true;
    progress.elapsed_ms = started.elapsed().as_millis() as u64;
    cluster.update(id, |s| s.progress = Some(progress));
    Ok(report)
}

/// The peers node `id` syncs partition `p` from: the intact running nodes that hold `p` now,
/// its read owners (while `p` moves, the old owners: a node gaining it holds only what was
/// copied so far, so it never counts). Merging R-W+1 holders yields every acknowledged write;
/// a node catching up is one of them itself, a node being rebuilt is not.
fn sync_peers(
    layout: &Layout,
    p: u32,
    id: NodeId,
    mode: SyncMode,
    w: usize,
    is_source: impl Fn(NodeId) -> bool,
) -> Result<Vec<NodeId>, String> {
    let holders = layout.placement(p).read;
    let counts_itself = mode == SyncMode::CatchUp && holders.contains(&id);
    let needed = (layout.ring.replicas() as usize + 1 - w).saturating_sub(usize::from(counts_itself));
    let peers: Vec<NodeId> = holders.into_iter().filter(|&x| x != id && is_source(x)).collect();
    if peers.len() < needed {
        return Err(format!("partition {p}: {} of the {needed} intact peers needed are running", peers.len()));
    }
    Ok(peers)
}

/// `chctl repair`: every partition, across the owners that are up.
pub async fn repair_all(cluster: &Arc<Cluster>) -> anyhow::Result<RepairReport> {
    let layout = cluster.layout();
    let mut report = RepairReport::default();
    let mut unreachable: Vec<NodeId> = Vec::new();
    let mut groups: BTreeMap<Vec<NodeId>, Vec<u32>> = BTreeMap::new();
    for p in 0..layout.partitions() {
        let mut up = Vec::new();
        for x in cluster.replicas(&layout.placement(p).write_targets()) {
            if x.serves_reads() {
                up.push(x.id);
            } else if !unreachable.contains(&x.id) {
                unreachable.push(x.id);
            }
        }
        if up.len() >= 2 {
            groups.entry(up).or_default().push(p);
        }
    }
    for (ids, partitions) in groups {
        let members: Vec<(NodeId, WorkerLink)> =
            cluster.replicas(&ids).into_iter().filter_map(|x| Some((x.id, x.link?))).collect();
        if members.len() < 2 {
            continue;
        }
        for chunk in partitions.chunks(DIGEST_CHUNK) {
            sync_partitions(&members, chunk, Compare::Digests, &mut report).await?;
        }
    }
    unreachable.sort_unstable();
    report.unreachable_nodes = unreachable;
    crate::metrics::REPAIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    crate::metrics::REPAIRED_KEYS.fetch_add(report.keys_repaired, std::sync::atomic::Ordering::Relaxed);
    Ok(report)
}

/// How [`sync_partitions`] finds the partitions to compare key by key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Digest every partition on every member first; compare only those whose digests differ.
    /// For replicas that mostly agree (repair, catching up, confirming a leaving node).
    Digests,
    /// Compare every partition key by key. For a receiver known to lack most of them (a node
    /// being rebuilt, or gaining the partitions in a membership change): a digest round would
    /// be one more full scan of every source and find them all differing anyway.
    AllKeys,
}

/// Syncs `partitions` across `members`: finds the ones that differ (see [`Compare`]), then
/// copies each record a member lacks from one that has its newest version.
pub async fn sync_partitions(
    members: &[(NodeId, WorkerLink)],
    partitions: &[u32],
    compare: Compare,
    report: &mut RepairReport,
) -> anyhow::Result<()> {
    report.partitions_checked += partitions.len() as u64;
    let differing = match compare {
        Compare::Digests => differing(members, partitions).await?,
        Compare::AllKeys => partitions.to_vec(),
    };
    report.partitions_differing += differing.len() as u64;
    // Ask for every (member, partition) version list at once: the workers answer a pipeline of
    // reads in one pass of their loop.
    let mut calls = tokio::task::JoinSet::new();
    for (pi, &p) in differing.iter().enumerate() {
        for (mi, (id, link)) in members.iter().enumerate() {
            let (id, link) = (*id, link.clone());
            calls.spawn(async move { (pi, mi, versions(&link, id, p).await) });
        }
    }
    let mut lists: Vec<Vec<VersionList>> = vec![vec![Vec::new(); members.len()]; differing.len()];
    while let Some(joined) = calls.join_next().await {
        let (pi, mi, list) = joined?;
        lists[pi][mi] = list?;
    }
    let transfers = lists.iter().flat_map(|l| plan::plan(l)).collect();
    copy(members, transfers, report).await
}

/// Those of `partitions` whose digests are not the same on every member.
async fn differing(members: &[(NodeId, WorkerLink)], partitions: &[u32]) -> anyhow::Result<Vec<u32>> {
    let mut calls = tokio::task::JoinSet::new();
    for (mi, (id, link)) in members.iter().enumerate() {
        let (id, link, partitions) = (*id, link.clone(), partitions.to_vec());
        calls.spawn(async move { (mi, id, call(&link, id, WorkerRequest::Digests { partitions }).await) });
    }
    let mut digests = vec![Vec::new(); members.len()];
    while let Some(joined) = calls.join_next().await {
        match joined? {
            (mi, _, Ok(WorkerResponse::Digests(d))) if d.len() == partitions.len() => digests[mi] = d,
            (_, id, other) => bail!("node {id}: unexpected answer to Digests: {}", brief(&other)),
        }
    }
    Ok(partitions
        .iter()
        .enumerate()
        .filter(|&(i, _)| digests.iter().any(|d| d[i] != digests[0][i]))
        .map(|(_, &p)| p)
        .collect())
}

/// One member's (key, version) list of partition `p`.
async fn versions(link: &WorkerLink, id: NodeId, p: u32) -> anyhow::Result<VersionList> {
    let mut list = VersionList::new();
    loop {
        let after = list.last().map(|(k, _)| k.clone());
        match call(link, id, WorkerRequest::Versions { partition: p, after, limit: 1024 }).await? {
            WorkerResponse::Versions(page) if page.is_empty() => return Ok(list),
            WorkerResponse::Versions(page) => list.extend(page),
            other => bail!("node {id}: unexpected answer to Versions: {}", brief(&other)),
        }
    }
}

/// Carries out `transfers`, a bounded batch at a time per source replica: each `GetMany`
/// answer (cut by the worker at a few MiB, at least one record) is stored on its receivers
/// while the next batch is read from the source, so memory holds two batches (each at most one
/// maximal value beyond the cut) whatever the values' sizes, and every `PutMany` frame stays
/// far below the limit. Overlapping the read of one batch with the durable store of the one
/// before roughly halves a rebuild's time, since each store waits for the receiver's fsync.
async fn copy(
    members: &[(NodeId, WorkerLink)],
    transfers: Vec<plan::Transfer>,
    report: &mut RepairReport,
) -> anyhow::Result<()> {
    let mut by_source: BTreeMap<usize, Vec<plan::Transfer>> = BTreeMap::new();
    for t in transfers {
        by_source.entry(t.from).or_default().push(t);
    }
    for (from, ts) in by_source {
        let (src_id, src) = &members[from];
        let mut fetched = Some(fetch(src, *src_id, &ts, 0).await?);
        while let Some((start, records)) = fetched.take() {
            let end = start + records.len();
            let next = async {
                match end < ts.len() {
                    true => fetch(src, *src_id, &ts, end).await.map(Some),
                    false => Ok(None),
                }
            };
            let (stored, next) = tokio::join!(store(members, &ts[start..end], records), next);
            let (keys, bytes) = stored?;
            report.keys_repaired += keys;
            report.bytes_repaired += bytes;
            fetched = next?;
        }
    }
    Ok(())
}

/// Records of the next batch of `ts` from `start`: at most [`BATCH`] keys and about
/// [`BATCH_KEY_BYTES`] of them asked for (at least one); the source may answer fewer.
async fn fetch(
    src: &WorkerLink,
    src_id: NodeId,
    ts: &[plan::Transfer],
    start: usize,
) -> anyhow::Result<(usize, Vec<(Vec<u8>, Option<Record>)>)> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut key_bytes = 0;
    for t in ts[start..].iter().take(BATCH) {
        if !keys.is_empty() && key_bytes + t.key.len() > BATCH_KEY_BYTES {
            break;
        }
        key_bytes += t.key.len();
        keys.push(t.key.clone());
    }
    let asked = keys.len();
    match call(src, src_id, WorkerRequest::GetMany { keys }).await? {
        WorkerResponse::Records(rs) if !rs.is_empty() && rs.len() <= asked => Ok((start, rs)),
        other => bail!("node {src_id}: unexpected answer to GetMany: {}", brief(&other)),
    }
}

/// Stores one fetched batch on each of its receivers, durably. Returns (records, bytes) stored.
async fn store(
    members: &[(NodeId, WorkerLink)],
    got: &[plan::Transfer],
    records: Vec<(Vec<u8>, Option<Record>)>,
) -> anyhow::Result<(u64, u64)> {
    let (mut keys, mut total) = (0, 0);
    for (to, (to_id, link)) in members.iter().enumerate() {
        let entries: Vec<(Vec<u8>, Record)> = got
            .iter()
            .zip(&records)
            .filter(|(t, _)| t.to.contains(&to))
            .filter_map(|(_, (k, r))| Some((k.clone(), r.clone()?)))
            .collect();
        if entries.is_empty() {
            continue;
        }
        let bytes: u64 = entries.iter().map(|(k, r)| (k.len() + r.value.as_ref().map_or(0, Vec::len)) as u64).sum();
        let n = entries.len() as u64;
        match call(link, *to_id, WorkerRequest::PutMany { entries }).await? {
            WorkerResponse::Count(_) => {
                keys += n;
                total += bytes;
            }
            other => bail!("node {to_id}: unexpected answer to PutMany: {}", brief(&other)),
        }
    }
    Ok((keys, total))
}

/// A worker's answer for an error message, without dumping the records it may carry.
fn brief(r: &impl std::fmt::Debug) -> String {
    let s = format!("{r:?}");
    if s.len() > 200 {
        format!("{}...", &s[..s.char_indices().nth(200).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}

async fn call(link: &WorkerLink, id: NodeId, req: WorkerRequest) -> anyhow::Result<WorkerResponse> {
    link.call(req, CALL_TIMEOUT).await.map_err(|e| anyhow!("node {id}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chd_data::Ring;

    /// Issue 11 item 1: old owners {X,Y,Z} of a moving partition, D gaining it and not holding
    /// it yet; a write acknowledged by {X,Y}; Y down and X's data lost. X's rebuild took its
    /// peers from the write targets, {Z,D}, and came up without the write. D is no source
    /// until the partition has switched to it.
    #[test]
    fn a_node_gaining_a_partition_is_no_source_until_it_has_switched() {
        let ring = Ring::new(&[0, 1, 2], 3, 64).unwrap();
        let target = ring.with_node_added(3).unwrap();
        let mut layout = Layout { ring: ring.clone(), transition: None };
        layout.begin("add node 3".into(), target.clone(), vec![]).unwrap();
        let p = layout.pending()[0];
        let new = target.owners(p);
        let z = *ring.owners(p).iter().find(|n| !new.contains(n)).unwrap();
        let (x, y) = {
            let kept: Vec<NodeId> = ring.owners(p).iter().copied().filter(|&n| n != z).collect();
            (kept[0], kept[1])
        };
        let running_intact = |n: NodeId| n != y && n != x;
        let err = sync_peers(&layout, p, x, SyncMode::Rebuild, 2, running_intact).unwrap_err();
        assert!(err.contains("1 of the 2 intact peers"), "{err}");
        // Catching up, X counts itself: Z alone is enough, and D is not among the peers.
        assert_eq!(sync_peers(&layout, p, x, SyncMode::CatchUp, 2, |n| n != y).unwrap(), vec![z]);
        // Once switched, D holds the partition and is a source; Z no longer is.
        layout.mark_done(p);
        let mut peers = sync_peers(&layout, p, x, SyncMode::Rebuild, 2, |n| n != x).unwrap();
        peers.sort_unstable();
        let mut expect = vec![y, 3];
        expect.sort_unstable();
        assert_eq!(peers, expect);
    }
}
