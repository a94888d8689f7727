//! The supervisor: one task per node keeps its worker process alive.
//!
//! A node's task spawns the worker, waits for its hello, decides whether the node's data can be
//! trusted, and then watches it: the worker's exit is noticed at once (its reaper thread
//! reports it), a worker that stops answering pings for [`HEALTH_TIMEOUT`] is declared hung and
//! killed with SIGKILL. After an exit the [`policy::RestartPolicy`] decides when to respawn, or
//! to give up and mark the node failed until `chctl node restart`.
//!
//! On hello:
//! - no identity in a database chd created before: the data is lost; the node is rebuilt from
//!   its replicas before it serves reads (`Rebuilding`);
//! - a rebuild was pending (interrupted by a crash): it is resumed;
//! - a respawn within this chd's life: the node may have missed writes while it was down, so it
//!   catches up (`CatchingUp`) before it serves reads;
//! - otherwise (chd's first start of an intact node) it is `Up` at once. A node that was behind
//!   when chd stopped is still safe to read from: every read asks a quorum and takes the newest
//!   version, and a quorum always includes a node that has every acknowledged write.
//!
//! A worker that exits with [`crate::worker::EXIT_BAD_DATABASE`] has its directory moved to
//! `quarantine/` (never deleted) and is respawned on a fresh database, which is then rebuilt.

pub mod policy;
pub mod spawn;

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chd_data::proto::NodeState;
use chd_data::NodeId;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::cluster::{Cluster, NodeSlot};
use crate::repair::{self, SyncMode};
use crate::worker::link::{LinkError, WorkerLink};
use crate::worker::proto::{WorkerHello, WorkerRequest, WorkerResponse};
use crate::worker::EXIT_BAD_DATABASE;
use policy::{Decision, RestartPolicy};
use spawn::{Spawned, Spawner};

/// How often chd pings each worker.
pub const PING_EVERY: Duration = Duration::from_millis(500);
/// A worker that has not answered a ping for this long is hung: killed and respawned.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a new worker may take to open its database.
const HELLO_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a worker may take to flush and exit on shutdown before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub enum Event {
    Exited {
        generation: u64,
        status: Option<ExitStatus>,
    },
    Hung {
        generation: u64,
    },
    /// The worker's socket closed (it exited, or its link broke).
    LinkLost {
        generation: u64,
    },
    /// `chctl node restart`: respawn now, forgetting earlier crashes.
    Restart,
    /// `chctl node rebuild`: set the database aside and rebuild the node from its replicas.
    Rebuild,
    /// A sync of this node finished (`ok`) for the worker of `generation`.
    Synced {
        generation: u64,
        ok: bool,
    },
    Shutdown(oneshot::Sender<()>),
}

enum Outcome {
    Exited(Option<ExitStatus>),
    RestartNow,
    RebuildNow,
    Shutdown(oneshot::Sender<()>),
}

/// Registers node `id` and starts its task. `fresh`: chd created this node just now, so an
/// empty database is expected rather than a sign of lost data.
pub fn start_node(cluster: &Arc<Cluster>, spawner: &Spawner, id: NodeId, fresh: bool) {
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
        },
    );
    let keeper = Keeper { cluster: cluster.clone(), spawner: spawner.clone(), id, fresh, events_tx: tx };
    tokio::spawn(keeper.run(rx));
}

struct Keeper {
    cluster: Arc<Cluster>,
    spawner: Spawner,
    id: NodeId,
    fresh: bool,
    events_tx: mpsc::UnboundedSender<Event>,
}

impl Keeper {
    async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>) {
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
            });
            let dir = self.cluster.data.node_dir(id);
            let partitions = self.cluster.ring().partitions();
            let outcome = match self.spawner.spawn(id, dir, partitions).await {
                Ok(spawned) => self.watch(generation, spawned, respawn, &mut events).await,
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
                Outcome::RestartNow => {
                    policy.reset();
                    continue;
                }
                Outcome::RebuildNow => {
                    self.quarantine("rebuild requested");
                    continue;
                }
                Outcome::Exited(status) => status,
            };
            self.cluster.update(id, |s| s.restarts += 1);
            if status.and_then(|s| s.code()) == Some(EXIT_BAD_DATABASE) {
                self.quarantine("the database could not be opened");
            }
            let decision = policy.on_exit(Instant::now());
            let wait = match decision {
                Decision::Restart { after } => {
                    warn!(node = id, ?status, backoff_ms = after.as_millis() as u64, "worker exited; respawning");
                    Some(after)
                }
                Decision::GiveUp => {
                    error!(node = id, "worker crashed too often; node failed; `chctl node restart {id}` retries");
                    self.cluster.update(id, |s| s.state = NodeState::Failed);
                    None
                }
            };
            // Wait out the backoff (or, once failed, for an operator), still answering events.
            let sleep = tokio::time::sleep(wait.unwrap_or(Duration::MAX / 4));
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    ev = events.recv() => match ev {
                        None => return,
                        Some(Event::Shutdown(done)) => {
                            let _ = done.send(());
                            return;
                        }
                        Some(Event::Restart) => {
                            policy.reset();
                            break;
                        }
                        Some(Event::Rebuild) => {
                            self.quarantine("rebuild requested");
                            policy.reset();
                            break;
                        }
                        Some(_) => {}
                    },
                }
            }
        }
    }

    fn quarantine(&mut self, why: &str) {
        match self.cluster.data.quarantine(self.id) {
            Ok(Some(to)) => {
                warn!(node = self.id, to = %to.display(), "{why}; database moved aside, the node will be rebuilt")
            }
            Ok(None) => {}
            Err(e) => error!(node = self.id, error = %e, "cannot move the database aside"),
        }
    }

    /// Runs one worker process until it exits or chd stops it.
    async fn watch(
        &mut self,
        generation: u64,
        spawned: Spawned,
        respawn: bool,
        events: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Outcome {
        let id = self.id;
        let Spawned { pid, stream, exited } = spawned;
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let status = exited.await.ok();
            let _ = tx.send(Event::Exited { generation, status });
        });
        self.cluster.update(id, |s| s.pid = Some(pid));
        let link = match stream.set_nonblocking(true).and_then(|()| tokio::net::UnixStream::from_std(stream)) {
            Ok(s) => WorkerLink::start(s),
            Err(e) => {
                error!(node = id, error = %e, "cannot use worker socket");
                kill(pid);
                return wait_exit(generation, events).await;
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
                _ => {
                    error!(node = id, "worker exited or did not start in time");
                    kill(pid);
                    return wait_exit(generation, events).await;
                }
            },
            ev = next_for(generation, events) => return ev,
        };
        let Some(mode) = self.admit(&hello, respawn, &link).await else {
            kill(pid);
            return wait_exit(generation, events).await;
        };
        let state = match mode {
            None => NodeState::Up,
            Some(SyncMode::CatchUp) => NodeState::CatchingUp,
            Some(SyncMode::Rebuild) => NodeState::Rebuilding,
        };
        info!(node = id, pid, state = state.as_str(), keys = hello.live_keys, "worker ready");
        self.cluster.update(id, |s| {
            s.state = state;
            s.link = Some(link.clone());
            s.progress = None;
            s.max_version = s.max_version.max(hello.max_version);
        });
        if let Some(mode) = mode {
            self.start_sync(generation, mode);
        }

        let pinger = {
            let (link, tx) = (link.clone(), self.events_tx.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(PING_EVERY).await;
                    match link.call(WorkerRequest::Ping, HEALTH_TIMEOUT).await {
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
            match events.recv().await {
                None => break Outcome::Exited(None),
                Some(Event::Exited { generation: g, status }) if g == generation => break Outcome::Exited(status),
                Some(Event::Hung { generation: g }) if g == generation => {
                    warn!(node = id, pid, timeout_ms = HEALTH_TIMEOUT.as_millis() as u64, "worker hung; killing it");
                    self.cluster.update(id, |s| s.state = NodeState::Hung);
                    kill(pid);
                }
                Some(Event::LinkLost { generation: g }) if g == generation => {
                    // Usually the process exited and its exit is about to be reported.
                    match tokio::time::timeout(Duration::from_secs(1), wait_exit(generation, events)).await {
                        Ok(outcome) => break outcome,
                        Err(_) => {
                            warn!(node = id, pid, "lost the link to a running worker; killing it");
                            kill(pid);
                            break wait_exit(generation, events).await;
                        }
                    }
                }
                Some(Event::Synced { generation: g, ok }) if g == generation => {
                    if ok {
                        let _ = link
                            .call(WorkerRequest::SetIdentity { node: id, rebuild_pending: false }, STOP_TIMEOUT)
                            .await;
                        info!(node = id, "node is in sync; serving reads");
                        self.cluster.update(id, |s| s.state = NodeState::Up);
                    } else {
                        // Peers were missing or the worker failed mid-sync: try again shortly.
                        let tx = self.events_tx.clone();
                        let cluster = self.cluster.clone();
                        let mode = if cluster.state_of(id) == Some(NodeState::Rebuilding) {
                            SyncMode::Rebuild
                        } else {
                            SyncMode::CatchUp
                        };
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            let ok = repair::sync_node(&cluster, id, mode).await.is_ok();
                            let _ = tx.send(Event::Synced { generation, ok });
                        });
                    }
                }
                Some(Event::Restart) => {
                    info!(node = id, "restart requested");
                    kill(pid);
                    wait_exit(generation, events).await;
                    break Outcome::RestartNow;
                }
                Some(Event::Rebuild) => {
                    info!(node = id, "rebuild requested");
                    let _ = link.call(WorkerRequest::Shutdown, STOP_TIMEOUT).await;
                    kill(pid);
                    wait_exit(generation, events).await;
                    break Outcome::RebuildNow;
                }
                Some(Event::Shutdown(done)) => {
                    let _ = link.call(WorkerRequest::Shutdown, STOP_TIMEOUT).await;
                    match tokio::time::timeout(STOP_TIMEOUT, wait_exit(generation, events)).await {
                        Ok(Outcome::Exited(Some(s))) if s.success() => info!(node = id, "worker stopped cleanly"),
                        Ok(Outcome::Exited(status)) => {
                            warn!(node = id, ?status, "worker ended uncleanly during shutdown")
                        }
                        Ok(_) => {}
                        Err(_) => {
                            warn!(node = id, "worker did not stop in time; killing it");
                            kill(pid);
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
        let mode = match hello.identity {
            Some(other) if other != id => {
                error!(node = id, found = other, "database belongs to another node; moving it aside");
                self.quarantine("the database belongs to another node");
                return None;
            }
            None if self.fresh => None,
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
                error!(node = id, ?r, "cannot write node identity");
                return None;
            }
        }
        self.fresh = false;
        Some(mode)
    }

    fn start_sync(&self, generation: u64, mode: SyncMode) {
        let (cluster, tx, id) = (self.cluster.clone(), self.events_tx.clone(), self.id);
        tokio::spawn(async move {
            let ok = match repair::sync_node(&cluster, id, mode).await {
                Ok(report) => {
                    info!(node = id, ?mode, keys = report.keys_repaired, bytes = report.bytes_repaired, "sync done");
                    true
                }
                Err(e) => {
                    warn!(node = id, ?mode, error = %e, "sync failed; will retry");
                    false
                }
            };
            let _ = tx.send(Event::Synced { generation, ok });
        });
    }
}

/// The next event that ends this worker's life, while it is still starting.
async fn next_for(generation: u64, events: &mut mpsc::UnboundedReceiver<Event>) -> Outcome {
    loop {
        match events.recv().await {
            None => return Outcome::Exited(None),
            Some(Event::Exited { generation: g, status }) if g == generation => return Outcome::Exited(status),
            Some(Event::Shutdown(done)) => return Outcome::Shutdown(done),
            Some(_) => {}
        }
    }
}

/// Waits for the exit of the worker of `generation` (after it was killed).
async fn wait_exit(generation: u64, events: &mut mpsc::UnboundedReceiver<Event>) -> Outcome {
    loop {
        match events.recv().await {
            None => return Outcome::Exited(None),
            Some(Event::Exited { generation: g, status }) if g == generation => return Outcome::Exited(status),
            Some(_) => {}
        }
    }
}

fn kill(pid: u32) {
    // The worker is reaped only by its reaper thread, after which the pid is never signalled
    // again (each generation kills its own pid before waiting for its exit).
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
}
