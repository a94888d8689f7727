//! One handler per request. Key requests arrive with their key's lock already held
//! ([`super::conn`]).

use std::time::Duration;

use chd_data::proto::{
    Change, EngineKind, NodeMetrics, NodeState, NodeStatus, Request, Response, RingReport, RingShare, StatsReport,
    StatusReport,
};
use chd_data::{Error, NodeId};
use tokio::task::JoinSet;

use crate::cluster::Event;
use crate::membership;
use crate::metrics;
use crate::repair;
use crate::service::Server;
use crate::worker::proto::{WorkerRequest, WorkerResponse};

pub async fn handle(server: &Server, request: Request) -> Result<Response, Error> {
    match request {
        Request::Hello { .. } => Err(Error::Refused("hello was already exchanged on this connection".into())),
        Request::Get { key } => server.coordinator.read(&key).await.map(Response::Value),
        Request::Set { key, value } => server.coordinator.write(&key, Some(value)).await.map(|()| Response::Done),
        Request::Del { key } => server.coordinator.write(&key, None).await.map(|()| Response::Done),
        Request::Status => Ok(Response::Status(status(server).await)),
        Request::Ring => Ok(Response::Ring(ring(server))),
        Request::NodeRestart { id } => node_restart(server, id),
        Request::NodeRebuild { id, engine } => node_rebuild(server, id, engine).await,
        Request::Repair => repair::repair_all(&server.cluster)
            .await
            .map(Response::Repair)
            .map_err(|e| Error::Internal(format!("repair stopped: {e:#}; run it again"))),
        Request::NodeAdd { count } => change(server, Change::Add { count }).await,
        Request::NodeRemove { id } => change(server, Change::Remove { id }).await,
        Request::NodeReplace { id } => change(server, Change::Replace { id }).await,
        Request::Plan { change } => membership::dry_run(&server.cluster, change).await.map(Response::Plan),
        Request::Exists { key } => server.coordinator.read(&key).await.map(|v| Response::Exists(v.is_some())),
        // Read and write under the key's lock (taken in `conn`): no write slips in between.
        Request::SetIfAbsent { key, value } => match server.coordinator.read(&key).await? {
            Some(_) => Ok(Response::Written(false)),
            None => server.coordinator.write(&key, Some(value)).await.map(|()| Response::Written(true)),
        },
        Request::QuarantineList => {
            let cluster = server.cluster.clone();
            quarantine_call(move || crate::quarantine::list(&cluster)).await
        }
        Request::QuarantinePurge { older_than_secs } => {
            let cluster = server.cluster.clone();
            let older_than = Duration::from_secs(older_than_secs);
            quarantine_call(move || crate::quarantine::purge(&cluster, older_than)).await
        }
        Request::Scan { cursor, prefix, count } => {
            let partitions = server.cluster.ring().partitions();
            let mut p = cursor.min(partitions);
            let (mut keys, mut bytes) = (Vec::new(), 0);
            // Whole partitions, until `count` keys or a few MiB (well under the frame limit).
            while p < partitions && keys.len() < count.max(1) as usize && bytes < (4 << 20) {
                let page = crate::scan::partition_keys(&server.cluster, p, &prefix).await?;
                bytes += page.iter().map(|k| k.len() + 8).sum::<usize>();
                keys.extend(page.into_iter().map(serde_bytes::ByteBuf::from));
                p += 1;
            }
            Ok(Response::Keys { keys, cursor: if p >= partitions { 0 } else { p } })
        }
        Request::Stats => Ok(Response::Stats(stats(server).await)),
        Request::Progress { id } => {
            let nodes = server.cluster.nodes.read().expect("nodes lock");
            let slot = nodes.get(&id).ok_or(Error::NoSuchNode(id))?;
            Ok(Response::Progress(slot.progress.clone()))
        }
    }
}

/// Runs a quarantine operation (directory walks, deletions) off the async threads.
async fn quarantine_call(
    op: impl FnOnce() -> std::io::Result<chd_data::proto::QuarantineReport> + Send + 'static,
) -> Result<Response, Error> {
    match tokio::task::spawn_blocking(op).await {
        Ok(Ok(report)) => Ok(Response::Quarantine(report)),
        Ok(Err(e)) => Err(Error::Internal(format!("quarantine: {e}"))),
        Err(e) => Err(Error::Internal(format!("quarantine: {e}"))),
    }
}

async fn status(server: &Server) -> StatusReport {
    let cluster = &server.cluster;
    let ring = cluster.ring();
    let mut nodes: Vec<NodeStatus> = {
        let slots = cluster.nodes.read().expect("nodes lock");
        slots
            .iter()
            .map(|(&id, s)| NodeStatus {
                id,
                pid: s.pid,
                state: s.state,
                restarts: s.restarts,
                keys: None,
                bytes: None,
                progress: s.progress.clone().filter(|p| !p.finished),
                note: s.note.clone(),
                engine: s.engine,
                memory: cluster.memory.of_node(id),
            })
            .collect()
    };
    // Ask every running worker for its counts at once; a hung one just reports none.
    let mut calls = JoinSet::new();
    for n in &nodes {
        let x = cluster.replica(n.id);
        if let (Some(link), true) = (x.link, x.state != NodeState::Hung) {
            let id = n.id;
            calls.spawn(async move { (id, link.call(WorkerRequest::Stats, Duration::from_secs(1)).await) });
        }
    }
    while let Some(Ok((id, r))) = calls.join_next().await {
        if let Ok(WorkerResponse::Stats { live_keys, bytes, .. }) = r {
            if let Some(n) = nodes.iter_mut().find(|n| n.id == id) {
                n.keys = Some(live_keys);
                n.bytes = Some(bytes);
            }
        }
    }
    StatusReport {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        uptime_ms: cluster.started.elapsed().as_millis() as u64,
        data_dir: cluster.data.root().display().to_string(),
        socket: cluster.settings.socket.display().to_string(),
        replicas: ring.replicas(),
        write_quorum: cluster.settings.write_quorum,
        partitions: ring.partitions(),
        nodes,
        migration: cluster.migration.read().expect("migration lock").clone(),
        resp_socket: cluster.settings.resp_socket.as_ref().map(|p| p.display().to_string()),
        memory_used: cluster.memory.used(),
        memory_budget: cluster.memory.budget(),
    }
}

/// Everything `chctl stats` and the Prometheus endpoint show: chd's own counters, and each
/// reachable worker's counts and group-commit histograms (asked at once, 1 s at most).
pub async fn stats(server: &Server) -> StatsReport {
    let cluster = &server.cluster;
    let ids: Vec<NodeId> = cluster.nodes.read().expect("nodes lock").keys().copied().collect();
    let mut calls = JoinSet::new();
    for &id in &ids {
        let x = cluster.replica(id);
        if let (Some(link), true) = (x.link, x.state != NodeState::Hung) {
            calls.spawn(async move { (id, link.call(WorkerRequest::Stats, Duration::from_secs(1)).await) });
        }
    }
    let mut nodes: Vec<NodeMetrics> = ids.iter().map(|&id| NodeMetrics { id, ..Default::default() }).collect();
    while let Some(Ok((id, r))) = calls.join_next().await {
        if let (Ok(WorkerResponse::Stats { live_keys, bytes, batch_size, sync_us }), Some(n)) =
            (r, nodes.iter_mut().find(|n| n.id == id))
        {
            n.reachable = true;
            n.keys = Some(live_keys);
            n.bytes = Some(bytes);
            n.batch_size = batch_size.report();
            n.sync_us = sync_us.report();
        }
    }
    let (mut requests, mut apis) = (Vec::new(), Vec::new());
    for api in metrics::apis() {
        let (a, r) = api.report();
        apis.push(a);
        requests.extend(r);
    }
    let (cache_hits, cache_misses) = server.coordinator.cache.hits_and_misses();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    StatsReport {
        uptime_ms: cluster.started.elapsed().as_millis() as u64,
        requests,
        apis,
        nodes,
        cache_hits,
        cache_misses,
        repairs: load(&metrics::REPAIRS),
        repaired_keys: load(&metrics::REPAIRED_KEYS),
        rebuilds: load(&metrics::REBUILDS),
    }
}

async fn change(server: &Server, change: Change) -> Result<Response, Error> {
    let (what, added) = membership::start(&server.cluster, &server.spawner, change).await?;
    Ok(Response::Changing { what, added })
}

fn ring(server: &Server) -> RingReport {
    let ring = server.cluster.ring();
    RingReport {
        partitions: ring.partitions(),
        replicas: ring.replicas(),
        nodes: ring
            .nodes()
            .iter()
            .map(|&id| RingShare { id, partitions: ring.partitions_of(id).len() as u32, share: ring.share(id) })
            .collect(),
    }
}

fn node_restart(server: &Server, id: NodeId) -> Result<Response, Error> {
    if !server.cluster.send(id, Event::Restart) {
        return Err(Error::NoSuchNode(id));
    }
    Ok(Response::Done)
}

/// Whether node `id` may be rebuilt while the nodes are in `states`: only if every other node
/// is up. The refusal says what to do: a node on its way up is waited for, but a failed node
/// stays failed until an operator acts, so waiting would be the wrong advice.
fn rebuild_allowed(id: NodeId, states: &[(NodeId, NodeState)]) -> Result<(), String> {
    let others: Vec<&(NodeId, NodeState)> = states.iter().filter(|(n, s)| *n != id && *s != NodeState::Up).collect();
    let failed: Vec<NodeId> = others.iter().filter(|(_, s)| *s == NodeState::Failed).map(|(n, _)| *n).collect();
    if let Some(&f) = failed.first() {
        let which = failed.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
        let is =
            if failed.len() == 1 { format!("node {which} is failed") } else { format!("nodes {which} are failed") };
        return Err(format!(
            "cannot rebuild node {id}: {is}, and a failed node stays so until told: bring it back with `chctl node restart {f}` (or `chctl node rebuild {f}` if its data is lost), or take it out with `chctl node replace {f}` or `chctl node remove {f}`; then rebuild node {id}"
        ));
    }
    if !others.is_empty() {
        let list = others.iter().map(|(n, s)| format!("{n} is {}", s.as_str())).collect::<Vec<_>>().join(", ");
        return Err(format!(
            "cannot rebuild node {id} while other nodes are not up ({list}); wait for them to come up (`chctl status`)"
        ));
    }
    Ok(())
}

async fn node_rebuild(server: &Server, id: NodeId, engine: Option<EngineKind>) -> Result<Response, Error> {
    let cluster = &server.cluster;
    if cluster.state_of(id).is_none() {
        return Err(Error::NoSuchNode(id));
    }
    // Setting a node's data aside is only safe while every other replica is there to rebuild
    // it from; otherwise some keys would be left on fewer than W nodes.
    let states: Vec<(NodeId, NodeState)> =
        cluster.nodes.read().expect("nodes lock").iter().map(|(&n, s)| (n, s.state)).collect();
    rebuild_allowed(id, &states).map_err(Error::Refused)?;
    // Answered once the node's data is set aside and its rebuild begins, or with the reason it
    // cannot be: a request chd accepts is carried out.
    let (reply, started) = tokio::sync::oneshot::channel();
    if !cluster.send(id, Event::Rebuild(reply, engine)) {
        return Err(Error::NoSuchNode(id));
    }
    match started.await {
        Ok(Ok(())) => Ok(Response::Done),
        Ok(Err(why)) => Err(Error::Refused(format!("cannot rebuild node {id}: {why}"))),
        Err(_) => Err(Error::Refused(format!("node {id} is shutting down"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_beside_a_failed_node_says_what_to_do_not_to_wait() {
        use NodeState::*;
        assert_eq!(rebuild_allowed(1, &[(0, Up), (1, Failed), (2, Up)]), Ok(()));
        let e = rebuild_allowed(1, &[(0, Up), (1, Up), (2, Failed), (3, Starting)]).unwrap_err();
        assert!(!e.contains("wait"), "{e}");
        for hint in ["node 2 is failed", "chctl node restart 2", "chctl node rebuild 2", "chctl node replace 2"] {
            assert!(e.contains(hint), "{hint:?} missing from {e}");
        }
        let e = rebuild_allowed(1, &[(0, Up), (1, Up), (3, Starting)]).unwrap_err();
        assert!(e.contains("3 is starting") && e.contains("wait"), "{e}");
    }
}
