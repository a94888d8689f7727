//! The supervisor: one task per node keeps its worker process alive.
//!
//! A node's task spawns the worker, waits for its hello, decides whether the node's data can be
//! trusted, and then watches it: the worker's exit is noticed at once (its reaper thread
//! reports it), a worker that stops answering pings for [`HEALTH_TIMEOUT`] is declared hung and
//! killed with SIGKILL. After an exit the [`policy::RestartPolicy`] decides when to respawn, or
//! to give up and mark the node failed until `chctl node restart`.
//!
//! On hello:
//! - no identity, and the node was created and never given one (`unborn` in `cluster.json`,
//!   also after a crash during the first start of a data dir): it never took a write; it is
//!   `Up` at once;
//! - no identity otherwise: the data is lost; the node is rebuilt from its replicas before it
//!   serves reads (`Rebuilding`);
//! - a rebuild was pending (interrupted by a crash): it is resumed;
//! - a respawn within this chd's life: the node may have missed writes while it was down, so it
//!   catches up (`CatchingUp`) before it serves reads;
//! - otherwise (chd's first start of an intact node) it is `Up` at once. A node that was behind
//!   when chd stopped is still safe to read from: every read asks a quorum and takes the newest
//!   version, and a quorum always includes a node that has every acknowledged write.
//!
//! Catching up and rebuilding copy from *intact* owners ([`crate::cluster::Replica::is_source`]),
//! not only from `up` ones, so that after every worker was killed at once the nodes catch up
//! from each other instead of each waiting for a peer that is up.
//!
//! A worker's exit status says why it ended, and each reason has its own answer:
//! - [`EXIT_BAD_DATABASE`] (the database fails its own checks): the directory is moved to
//!   `quarantine/` (never deleted) and the node rebuilt, but only if that leaves every
//!   partition enough intact replicas ([`Cluster::claim_set_aside`]); otherwise the node is
//!   marked failed with the reason and the data stays where it is;
//! - [`EXIT_DISK_FULL`]: nothing is wrong with the data; the node waits for free space and is
//!   respawned, without counting as a crash;
//! - killed (SIGKILL: by chd as hung, by the OOM killer, by a person): respawned with backoff,
//!   never marked failed for it ([`policy`] says why);
//! - anything else (a crash, [`crate::worker::EXIT_IO`], a held lock): respawned with backoff,
//!   marked failed after too many.
//!
//! Operator requests (`node restart`, `node rebuild`) are never dropped: one that arrives while
//! the worker is starting or exiting is kept and carried out next.

pub mod policy;
pub mod spawn;

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chd_data::proto::{EngineKind, NodeState};
use chd_data::NodeId;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::cluster::{Cluster, Event, NodeSlot, Refusal};
use crate::repair::{self, SyncMode};
use crate::worker::link::{LinkError, WorkerLink};
use crate::worker::proto::{WorkerHello, WorkerRequest, WorkerResponse};
use crate::worker::{EXIT_BAD_DATABASE, EXIT_DISK_FULL};
use policy::{Decision, RestartPolicy};
use spawn::{Spawned, Spawner};

/// How often chd pings each worker.
pub const PING_EVERY: Duration = Duration::from_millis(500);
/// A worker that has not answered a ping for this long is hung (stopped, or its process is
/// stuck): killed and respawned.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// A worker whose current batch has made no progress for this long is hung too. Generous: a
/// batch of large values on a slow disk is work, not a hang.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a new worker may take to open its database.
const HELLO_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a worker may take to flush and exit on shutdown before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Free space a node waits for after its worker stopped on a full disk.
const DISK_SPACE_TO_RESTART: u64 = 32 << 20;
/// How soon a worker whose database failed its checks is started again when chd could not
/// yet tell whether setting it aside is safe ([`Refusal::NotYet`]).
const NOT_YET_RETRY: Duration = Duration::from_millis(250);

enum Outcome {
    Exited(Option<ExitStatus>),
    RestartNow,
    RebuildNow,
    Shutdown(oneshot::Sender<()>),
}

/// Registers node `id` and starts its task.
pub fn start_node(cluster: &Arc<Cluster>, spawner: &Spawner, id: NodeId) {
    let (tx, rx) = mpsc::unbounded_channel();
    cluster.nodes.write().expect("nodes lock").insert(
        id,
        NodeSlot {
            state: NodeState::Starting,
            link: None,
            pid: None,
            restarts: 0,
            progress: None,
            events: tx.clone(),
            generation: 0,
            max_version: 0,
            // Presumed intact, but not `heard`: until its hello, no node sharing a partition
            // with it is set aside (`Cluster::claim_set_aside`).
            intact: true,
            heard: false,
            note: None,
            engine: None,
        },
    );
    let keeper = Keeper {
        cluster: cluster.clone(),
        spawner: spawner.clone(),
        id,
        events_tx: tx,
        events: rx,
        deferred: VecDeque::new(),
        engine: cluster.settings.engine,
    };
    tokio::spawn(keeper.run());
}

struct Keeper {
    cluster: Arc<Cluster>,
    spawner: Spawner,
    id: NodeId,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Requests that arrived while they could not be carried out, oldest first.
    deferred: VecDeque<Event>,
    /// The engine of a database the next worker creates: the node's own once a worker
    /// reported it, so that a rebuild keeps the node's engine unless asked otherwise.
    engine: EngineKind,
}

impl Keeper {
    /// The next event: a deferred request first, then whatever arrives.
    async fn next_event(&mut self) -> Option<Event> {
        match self.deferred.pop_front() {
            Some(e) => Some(e),
            None => self.events.recv().await,
        }
    }

    async fn run(mut self) {
        let id = self.id;
        let mut policy = RestartPolicy::default();
        let mut generation = 0u64;
        let mut respawn = false;
        loop {
            generation += 1;
            self.cluster.update(id, |s| {
                s.state = NodeState::Starting;
                s.link = None;
                s.pid = None;
                s.generation = generation;
                s.note = None;
            });
            let dir = self.cluster.data.node_dir(id);
            let partitions = self.cluster.ring().partitions();
            let outcome = match self.spawner.spawn(id, dir, partitions, self.engine).await {
                Ok(spawned) => self.watch(generation, spawned, respawn).await,
                Err(e) => {
                    error!(node = id, error = %e, "cannot spawn worker");
                    Outcome::Exited(None)
                }
            };
            respawn = true;
            self.cluster.update(id, |s| {
                s.state = NodeState::Down;
                s.link = None;
                s.pid = None;
            });
            let status = match outcome {
                Outcome::Shutdown(done) => {
                    let _ = done.send(());
                    return;
                }
                Outcome::RestartNow | Outcome::RebuildNow => {
                    policy.reset();
                    continue;
                }
                Outcome::Exited(status) => status,
            };
            let code = status.and_then(|s| s.code());
            let wait = if code == Some(EXIT_DISK_FULL) {
                warn!(node = id, "worker stopped on a full disk; waiting for free space");
                self.cluster.update(id, |s| s.note = Some("disk full; waiting for free space".into()));
                Wait::DiskSpace
            } else {
                let mut give_up = None;
                let mut not_yet = false;
                if code == Some(EXIT_BAD_DATABASE) {
                    // Its state is known now: damaged, though still intact until set aside.
                    self.cluster.update(id, |s| s.heard = true);
                    match self.set_aside("the database fails its own checks") {
                        Ok(()) => {}
                        Err(Refusal::NotYet) => not_yet = true,
                        Err(why) => give_up = Some(format!("database damaged and not set aside: {why}")),
                    }
                }
                if not_yet {
                    // Not a crash of its own: asked again once the other nodes have reported.
                    debug!(node = id, "database fails its checks; waiting for the nodes sharing its partitions");
                    self.cluster.update(id, |s| {
                        s.note = Some("database damaged; waiting for the nodes sharing its partitions to report".into())
                    });
                    Wait::Backoff(NOT_YET_RETRY)
                } else {
                    self.cluster.update(id, |s| s.restarts += 1);
                    let killed = status.and_then(|s| s.signal()) == Some(libc::SIGKILL);
                    match (give_up, policy.on_exit(Instant::now(), !killed)) {
                        (None, Decision::Restart { after }) => {
                            warn!(
                                node = id,
                                status = %describe_exit(status),
                                backoff_ms = after.as_millis() as u64,
                                "worker exited; respawning"
                            );
                            Wait::Backoff(after)
                        }
                        (why, _) => {
                            let why = why.unwrap_or_else(|| "crashed too often".into());
                            error!(node = id, "node failed: {why}; `chctl node restart {id}` retries");
                            self.cluster.update(id, |s| {
                                s.state = NodeState::Failed;
                                s.note = Some(why);
                                // Nothing more will be heard until an operator acts: no node
                                // sharing its partitions waits for it.
                                s.heard = true;
                            });
                            Wait::Operator
                        }
                    }
                }
            };
            // Wait (backoff, disk space, or an operator), still answering requests.
            let sleep = tokio::time::sleep(match wait {
                Wait::Backoff(d) => d,
                Wait::DiskSpace => Duration::from_millis(250),
                Wait::Operator => Duration::MAX / 4,
            });
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => {
                        if matches!(wait, Wait::DiskSpace) && !self.disk_has_room() {
                            sleep.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(250));
                            continue;
                        }
                        break;
                    }
                    ev = self.next_event() => match ev {
                        None => return,
                        Some(Event::Shutdown(done)) => {
                            let _ = done.send(());
                            return;
                        }
                        Some(Event::Restart) => {
                            policy.reset();
                            break;
                        }
                        Some(Event::Rebuild(reply, engine)) => {
                            let r = self.set_aside("rebuild requested").map_err(|e| e.to_string());
                            let ok = r.is_ok();
                            let _ = reply.send(r);
                            if ok {
                                self.engine = engine.unwrap_or(self.engine);
                                policy.reset();
                                break;
                            }
                        }
                        Some(_) => {}
                    },
                }
            }
        }
    }

    fn disk_has_room(&self) -> bool {
        free_bytes(&self.cluster.data.root().join("nodes")).is_none_or(|free| free >= DISK_SPACE_TO_RESTART)
    }

    /// Moves the node's database into `quarantine/`, if chd may ([`Cluster::claim_set_aside`]).
    fn set_aside(&mut self, why: &str) -> Result<(), Refusal> {
        let id = self.id;
        self.cluster.claim_set_aside(id)?;
        self.cluster.update(id, |s| s.progress = None);
        match self.cluster.data.quarantine(id) {
            Ok(Some(to)) => {
                warn!(node = id, to = %to.display(), "{why}; database moved aside, the node will be rebuilt");
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                error!(node = id, error = %format!("{e:#}"), "cannot move the database aside");
                Err(Refusal::Lost(format!("cannot move the database aside: {e:#}")))
            }
        }
    }

    /// Runs one worker process until it exits or chd stops it.
    async fn watch(&mut self, generation: u64, spawned: Spawned, respawn: bool) -> Outcome {
        let id = self.id;
        let Spawned { pid, process, stream, health, exited } = spawned;
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let status = exited.await.ok();
            let _ = tx.send(Event::Exited { generation, status });
        });
        self.cluster.update(id, |s| s.pid = Some(pid));
        let tokio_stream = |s: std::os::unix::net::UnixStream| {
            s.set_nonblocking(true).and_then(|()| tokio::net::UnixStream::from_std(s))
        };
        let link = match tokio_stream(stream).and_then(|s| Ok((s, tokio_stream(health)?))) {
            Ok((s, health)) => WorkerLink::start(s, health),
            Err(e) => {
                error!(node = id, error = %e, "cannot use worker socket");
                kill(&process);
                return self.wait_exit(generation).await;
            }
        };
        let (link, hello_rx, closed) = link;
        // A link that breaks while the process lives (a frame chd cannot read) leaves the
        // worker unreachable: it is killed and respawned.
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            if closed.await.is_ok() {
                let _ = tx.send(Event::LinkLost { generation });
            }
        });

        // Wait for the hello, still noticing an early exit.
        let hello = tokio::select! {
            h = tokio::time::timeout(HELLO_TIMEOUT, hello_rx) => match h {
                Ok(Ok(h)) => h,
                Ok(Err(_)) => {
                    // The worker ended before its hello; its exit status says why.
                    return self.wait_exit(generation).await;
                }
                Err(_) => {
                    error!(node = id, "worker did not open its database in time; killing it");
                    kill(&process);
                    return self.wait_exit(generation).await;
                }
            },
            ev = self.wait_exit(generation) => return ev,
        };
        let Some(mode) = self.admit(&hello, respawn, &link).await else {
            kill(&process);
            return self.wait_exit(generation).await;
        };
        let state = match mode {
            None => NodeState::Up,
            Some(SyncMode::CatchUp) => NodeState::CatchingUp,
            Some(SyncMode::Rebuild) => NodeState::Rebuilding,
        };
        info!(node = id, pid, state = state.as_str(), keys = hello.live_keys, engine = %hello.engine, "worker ready");
        self.engine = hello.engine;
        self.cluster.update(id, |s| {
            s.engine = Some(hello.engine);
            s.state = state;
            s.link = Some(link.clone());
            s.progress = None;
            s.intact = mode != Some(SyncMode::Rebuild);
            s.heard = true;
            s.max_version = s.max_version.max(hello.max_version);
        });
        if let Some(mode) = mode {
            self.start_sync(generation, mode, Duration::ZERO);
        }

        let pinger = {
            let (link, tx) = (link.clone(), self.events_tx.clone());
            tokio::spawn(async move {
                let mut last_batches = None;
                loop {
                    tokio::time::sleep(PING_EVERY).await;
                    match link.call(WorkerRequest::Ping, HEALTH_TIMEOUT).await {
                        // The worker's health thread answers pings even while a batch runs, so
                        // a large write is not mistaken for a hang; a batch that makes no
                        // progress for STALL_TIMEOUT is one.
                        Ok(WorkerResponse::Pong { batches, busy_ms }) => {
                            if busy_ms > STALL_TIMEOUT.as_millis() as u64 && last_batches == Some(batches) {
                                warn!(node = id, busy_ms, "worker made no progress on its batch");
                                let _ = tx.send(Event::Hung { generation });
                                return;
                            }
                            last_batches = Some(batches);
                        }
                        Ok(_) => {}
                        Err(LinkError::Timeout(_)) => {
                            let _ = tx.send(Event::Hung { generation });
                            return;
                        }
                        Err(_) => return,
                    }
                }
            })
        };
        let outcome = loop {
            match self.next_event().await {
                None => break Outcome::Exited(None),
                Some(Event::Exited { generation: g, status }) if g == generation => break Outcome::Exited(status),
                Some(Event::Hung { generation: g }) if g == generation => {
                    warn!(node = id, pid, timeout_ms = HEALTH_TIMEOUT.as_millis() as u64, "worker hung; killing it");
                    self.cluster.update(id, |s| s.state = NodeState::Hung);
                    kill(&process);
                }
                Some(Event::LinkLost { generation: g }) if g == generation => {
                    // Usually the process exited and its exit is about to be reported.
                    match tokio::time::timeout(Duration::from_secs(1), self.wait_exit(generation)).await {
                        Ok(outcome) => break outcome,
                        Err(_) => {
                            warn!(node = id, pid, "lost the link to a running worker; killing it");
                            kill(&process);
                            break self.wait_exit(generation).await;
                        }
                    }
                }
                Some(Event::Synced { generation: g, ok }) if g == generation => {
                    let mode = match self.cluster.state_of(id) {
                        Some(NodeState::Rebuilding) => SyncMode::Rebuild,
                        _ => SyncMode::CatchUp,
                    };
                    if !ok {
                        // Too few sources, or one went away mid-sync: try again shortly.
                        self.start_sync(generation, mode, Duration::from_secs(1));
                        continue;
                    }
                    if mode == SyncMode::Rebuild {
                        // Durably intact again before it counts as a source or serves reads.
                        let r =
                            link.call(WorkerRequest::SetIdentity { node: id, rebuild_pending: false }, STOP_TIMEOUT);
                        if !matches!(r.await, Ok(WorkerResponse::Done)) {
                            self.start_sync(generation, mode, Duration::from_secs(1));
                            continue;
                        }
                        crate::metrics::REBUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    info!(node = id, "node is in sync; serving reads");
                    self.cluster.update(id, |s| {
                        s.state = NodeState::Up;
                        s.intact = true;
                    });
                }
                Some(Event::Restart) => {
                    info!(node = id, "restart requested");
                    kill(&process);
                    self.wait_exit(generation).await;
                    break Outcome::RestartNow;
                }
                Some(Event::Rebuild(reply, engine)) => {
                    if let Err(why) = self.cluster.claim_set_aside(id) {
                        let _ = reply.send(Err(why.to_string()));
                        continue;
                    }
                    info!(node = id, "rebuild requested");
                    let _ = link.call(WorkerRequest::Shutdown, STOP_TIMEOUT).await;
                    kill(&process);
                    self.wait_exit(generation).await;
                    let set_aside = self.set_aside("rebuild requested").map_err(|e| e.to_string());
                    if set_aside.is_ok() {
                        self.engine = engine.unwrap_or(self.engine);
                    }
                    let _ = reply.send(set_aside);
                    break Outcome::RebuildNow;
                }
                Some(Event::Shutdown(done)) => {
                    let _ = link.call(WorkerRequest::Shutdown, STOP_TIMEOUT).await;
                    match tokio::time::timeout(STOP_TIMEOUT, self.wait_exit(generation)).await {
                        Ok(Outcome::Exited(Some(s))) if s.success() => info!(node = id, "worker stopped cleanly"),
                        Ok(Outcome::Exited(status)) => {
                            warn!(node = id, status = %describe_exit(status), "worker ended uncleanly during shutdown")
                        }
                        Ok(_) => {}
                        Err(_) => {
                            warn!(node = id, "worker did not stop in time; killing it");
                            kill(&process);
                        }
                    }
                    break Outcome::Shutdown(done);
                }
                Some(_) => {} // an event of an earlier worker of this node
            }
        };
        pinger.abort();
        outcome
    }

    /// Decides from the hello whether the node can serve, and how it must sync first.
    /// `None` refuses the worker (a database that belongs to another node).
    async fn admit(&mut self, hello: &WorkerHello, respawn: bool, link: &WorkerLink) -> Option<Option<SyncMode>> {
        let id = self.id;
        let unborn = self.cluster.is_unborn(id).await;
        let mode = match hello.identity {
            Some(other) if other != id => {
                error!(node = id, found = other, "database belongs to another node");
                if let Err(why) = self.set_aside("the database belongs to another node") {
                    error!(node = id, "not setting it aside: {why}");
                }
                return None;
            }
            None if unborn => None,
            None => {
                warn!(node = id, "database is missing or empty; rebuilding the node from its replicas");
                Some(SyncMode::Rebuild)
            }
            Some(_) if hello.rebuild_pending => Some(SyncMode::Rebuild),
            Some(_) if respawn => Some(SyncMode::CatchUp),
            Some(_) => None,
        };
        if hello.identity.is_none() {
            let pending = mode == Some(SyncMode::Rebuild);
            let r = link.call(WorkerRequest::SetIdentity { node: id, rebuild_pending: pending }, STOP_TIMEOUT).await;
            if !matches!(r, Ok(WorkerResponse::Done)) {
                let why = match &r {
                    Err(e) => e.to_string(),
                    Ok(_) => "the worker gave an unexpected answer".to_string(),
                };
                error!(node = id, error = %why, "cannot write node identity");
                return None;
            }
            if unborn {
                if let Err(e) = self.cluster.mark_born(id).await {
                    error!(node = id, error = %format!("{e:#}"), "cannot record the node's identity in cluster.json");
                    return None;
                }
            }
        }
        Some(mode)
    }

    fn start_sync(&self, generation: u64, mode: SyncMode, after: Duration) {
        let (cluster, tx, id) = (self.cluster.clone(), self.events_tx.clone(), self.id);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let ok = match repair::sync_node(&cluster, id, mode).await {
                Ok(report) => {
                    info!(node = id, %mode, keys = report.keys_repaired, bytes = report.bytes_repaired, "sync done");
                    true
                }
                Err(e) => {
                    warn!(node = id, %mode, error = %format!("{e:#}"), "sync incomplete; will retry");
                    false
                }
            };
            let _ = tx.send(Event::Synced { generation, ok });
        });
    }

    /// Waits for the exit of the worker of `generation` (after it was killed or while it
    /// starts), keeping operator requests for later.
    async fn wait_exit(&mut self, generation: u64) -> Outcome {
        loop {
            match self.events.recv().await {
                None => return Outcome::Exited(None),
                Some(Event::Exited { generation: g, status }) if g == generation => return Outcome::Exited(status),
                Some(e) if e.is_request() => self.deferred.push_back(e),
                Some(_) => {}
            }
        }
    }
}

enum Wait {
    Backoff(Duration),
    DiskSpace,
    Operator,
}

/// A worker's exit for a log line: "exit status 3", "killed by signal 9".
pub fn describe_exit(status: Option<ExitStatus>) -> String {
    match status {
        None => "unknown".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => s.to_string(),
        },
    }
}

/// Bytes available to unprivileged writers on the filesystem of `dir`.
pub fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

fn kill(process: &spawn::Process) {
    // Through the worker's pidfd: once it is reaped, its pid may be another process's.
    let _ = process.kill();
}
