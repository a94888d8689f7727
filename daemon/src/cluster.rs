//! chd's live view of its nodes: the ring, and each node's state and link to its worker.
//!
//! The supervisor writes a node's slot; the request path only reads it to pick the replicas to
//! talk to. Locks here are held for a few field copies, never across an await.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitStatus;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use chd_data::proto::{EngineKind, NodeProgress, NodeState};
use chd_data::{NodeId, Ring};
use tokio::sync::{mpsc, oneshot};

use crate::config::Settings;
use crate::datadir::{ClusterFile, DataDir};
use crate::layout::{Layout, Placement};
use crate::memory::Memory;
use crate::worker::link::WorkerLink;

/// What a node's supervisor task ([`crate::supervisor`]) is told: by the worker's watchers,
/// by operator requests, and at shutdown.
/// The answer to an operator's rebuild request: started, or refused with the reason.
pub type RebuildReply = oneshot::Sender<Result<(), String>>;

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
    /// `chctl node rebuild`: set the database aside and rebuild the node from its replicas,
    /// into a database of the engine given (`None`: the node's own).
    Rebuild(RebuildReply, Option<EngineKind>),
    /// A sync of this node finished (`ok`) for the worker of `generation`.
    Synced {
        generation: u64,
        ok: bool,
    },
    Shutdown(oneshot::Sender<()>),
}

impl Event {
    /// Operator requests and shutdown: kept when they arrive at a moment they cannot be carried
    /// out, never dropped.
    pub fn is_request(&self) -> bool {
        matches!(self, Event::Restart | Event::Rebuild(..) | Event::Shutdown(_))
    }
}

pub struct NodeSlot {
    pub state: NodeState,
    pub link: Option<WorkerLink>,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub progress: Option<NodeProgress>,
    /// The node's supervisor task.
    pub events: mpsc::UnboundedSender<Event>,
    /// Counts the worker processes of this node; events of older ones are ignored.
    pub generation: u64,
    /// Highest version the worker reported at start.
    pub max_version: u64,
    /// The node's database holds every write it ever acknowledged (its identity is present and
    /// no rebuild is pending), so it is a valid source of records for the partitions it owns,
    /// whatever its state. False while it is rebuilt after losing its data.
    pub intact: bool,
    /// Whether `intact` is known: the worker said hello since chd started, or failed its
    /// database's checks. Until then a node may be in the middle of a rebuild that only its
    /// database records.
    pub heard: bool,
    /// Why the node is in its state, when that is not obvious (failed, waiting for disk space).
    pub note: Option<String>,
    /// The engine of the node's database, as its last worker reported it.
    pub engine: Option<EngineKind>,
}

/// The rule of [`Cluster::claim_set_aside`], without the cluster: `intact(n)` says whether
/// node `n`'s database is intact, `None` while chd has not heard from it.
pub fn set_aside_rule(
    layout: &Layout,
    id: NodeId,
    w: usize,
    intact: impl Fn(NodeId) -> Option<bool>,
) -> Result<(), Refusal> {
    layout.may_set_aside(id, w, |n| intact(n) == Some(false)).map_err(Refusal::Lost)?;
    layout.may_set_aside(id, w, |n| intact(n).is_none()).map_err(|_| Refusal::NotYet)
}

/// Why chd does not set a node's database aside ([`Cluster::claim_set_aside`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Too many replicas of a partition are lost already: the operator's to resolve.
    Lost(String),
    /// A node sharing a partition has not reported yet since chd started: ask again soon.
    NotYet,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Lost(why) => f.write_str(why),
            Refusal::NotYet => {
                f.write_str("a node sharing its partitions has not reported since chd started; try again")
            }
        }
    }
}

/// One replica of a key, as the request path sees it.
#[derive(Clone)]
pub struct Replica {
    pub id: NodeId,
    pub state: NodeState,
    pub link: Option<WorkerLink>,
    pub intact: bool,
}

impl Replica {
    /// Holds every write it acknowledged, so its answer counts toward a read quorum.
    pub fn serves_reads(&self) -> bool {
        self.state == NodeState::Up && self.link.is_some()
    }
    /// Running: it can take writes (a node catching up or rebuilding takes them, so that it
    /// does not fall further behind while it syncs).
    pub fn takes_writes(&self) -> bool {
        matches!(self.state, NodeState::Up | NodeState::CatchingUp | NodeState::Rebuilding) && self.link.is_some()
    }
    /// Running with intact data: records may be copied from it, also while it catches up.
    /// Records carry versions and newest wins, so merging any R-W+1 intact owners of a
    /// partition yields every acknowledged write of it; a node catching up never has to wait
    /// for a peer that is `up` (after a correlated crash there may be none).
    pub fn is_source(&self) -> bool {
        self.intact && matches!(self.state, NodeState::Up | NodeState::CatchingUp) && self.link.is_some()
    }
}

/// What `cluster.json` holds besides the layout; guarded by [`Cluster::membership`], which
/// also serializes membership changes and every write of the file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Registry {
    pub next_node_id: NodeId,
    pub unborn: BTreeSet<NodeId>,
    pub write_quorum: u32,
}

pub struct Cluster {
    pub settings: Settings,
    pub data: DataDir,
    pub layout: RwLock<Layout>,
    /// Serializes membership changes and writes of `cluster.json`.
    pub membership: tokio::sync::Mutex<Registry>,
    pub nodes: RwLock<BTreeMap<NodeId, NodeSlot>>,
    pub started: Instant,
    /// Progress of the current (or last) membership change.
    pub migration: RwLock<Option<NodeProgress>>,
    /// What chd and its workers hold, against `max_memory`.
    pub memory: Memory,
}

impl Cluster {
    pub fn new(settings: Settings, data: DataDir, layout: Layout, registry: Registry) -> Arc<Cluster> {
        let budget = settings.max_memory;
        Arc::new(Cluster {
            settings,
            data,
            layout: RwLock::new(layout),
            membership: tokio::sync::Mutex::new(registry),
            nodes: RwLock::default(),
            started: Instant::now(),
            migration: RwLock::default(),
            memory: Memory::new(budget),
        })
    }

    /// The current ring (during a membership change, the one being left).
    pub fn ring(&self) -> Ring {
        self.layout().ring
    }

    pub fn layout(&self) -> Layout {
        self.layout.read().expect("layout lock").clone()
    }

    /// Where `key` is read and written right now.
    pub fn placement_of(&self, key: &[u8]) -> Placement {
        let layout = self.layout.read().expect("layout lock");
        layout.placement(chd_data::ring::partition_of(key, layout.partitions()))
    }

    pub fn write_quorum(&self) -> usize {
        self.settings.write_quorum as usize
    }

    pub fn replicas(&self, ids: &[NodeId]) -> Vec<Replica> {
        let nodes = self.nodes.read().expect("nodes lock");
        ids.iter()
            .map(|&id| match nodes.get(&id) {
                Some(s) => Replica { id, state: s.state, link: s.link.clone(), intact: s.intact },
                None => Replica { id, state: NodeState::Down, link: None, intact: false },
            })
            .collect()
    }

    pub fn replica(&self, id: NodeId) -> Replica {
        self.replicas(&[id]).remove(0)
    }

    /// Updates a node's slot, if the node exists.
    pub fn update(&self, id: NodeId, f: impl FnOnce(&mut NodeSlot)) {
        if let Some(slot) = self.nodes.write().expect("nodes lock").get_mut(&id) {
            f(slot);
        }
    }

    pub fn state_of(&self, id: NodeId) -> Option<NodeState> {
        self.nodes.read().expect("nodes lock").get(&id).map(|s| s.state)
    }

    /// Writes `cluster.json`: `layout` and `registry` as they are to be from now on. The caller
    /// holds [`Cluster::membership`] (it passes what it guards).
    pub fn save(&self, layout: &Layout, registry: &Registry) -> anyhow::Result<()> {
        self.data.save_cluster(&ClusterFile {
            format: 1,
            ring: layout.ring.clone(),
            transition: layout.transition.clone(),
            next_node_id: registry.next_node_id,
            unborn: registry.unborn.clone(),
            write_quorum: Some(registry.write_quorum),
        })
    }

    /// Records durably that node `id` has its identity: from now on an empty database of it
    /// means lost data.
    pub async fn mark_born(&self, id: NodeId) -> anyhow::Result<()> {
        let mut reg = self.membership.lock().await;
        if reg.unborn.remove(&id) {
            let layout = self.layout();
            if let Err(e) = self.save(&layout, &reg) {
                reg.unborn.insert(id);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Whether node `id` was created and never given its identity.
    pub async fn is_unborn(&self, id: NodeId) -> bool {
        self.membership.lock().await.unborn.contains(&id)
    }

    /// Claims the right to set node `id`'s database aside, and marks it as no longer intact.
    /// chd never sets aside more than R-W replicas of a partition, nor more than W-1 (so that
    /// an intact replica of every acknowledged write remains): with R=3, W=2, one at a time.
    /// Past that the data stays where it is for the operator ([`Refusal::Lost`]). Checked and
    /// marked under one lock, so two nodes found damaged at once cannot both pass.
    ///
    /// A node not heard from since chd started may be rebuilding (only its database says so):
    /// while one that shares a partition with `id` is, the answer is [`Refusal::NotYet`], to be
    /// asked again. Presuming it intact let a start set aside a second replica of a partition
    /// (torture: a node failed its checks 16 ms before a node still rebuilding said hello).
    pub fn claim_set_aside(&self, id: NodeId) -> Result<(), Refusal> {
        let layout = self.layout();
        let w = self.write_quorum();
        let mut nodes = self.nodes.write().expect("nodes lock");
        set_aside_rule(&layout, id, w, |n| match nodes.get(&n) {
            Some(s) if s.intact && !s.heard => None,
            Some(s) => Some(s.intact),
            None => Some(true),
        })?;
        if let Some(slot) = nodes.get_mut(&id) {
            slot.intact = false;
        }
        Ok(())
    }

    pub fn send(&self, id: NodeId, event: Event) -> bool {
        let nodes = self.nodes.read().expect("nodes lock");
        nodes.get(&id).is_some_and(|s| s.events.send(event).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chd_data::ring::Ring;

    #[test]
    fn a_node_not_heard_from_holds_back_a_set_aside_until_it_reports() {
        // R=3 on 4 nodes: every pair of nodes shares partitions.
        let l = Layout::stable(Ring::new(&[0, 1, 2, 3], 3, 64).unwrap());
        assert_eq!(set_aside_rule(&l, 0, 2, |_| Some(true)), Ok(()));
        // Node 2 not heard from yet: it may be rebuilding, so ask again later.
        assert_eq!(set_aside_rule(&l, 0, 2, |n| (n != 2).then_some(true)), Err(Refusal::NotYet));
        // Node 2 reported a rebuild: refused for good (the operator's to resolve).
        let lost = set_aside_rule(&l, 0, 2, |n| Some(n != 2));
        assert!(matches!(&lost, Err(Refusal::Lost(why)) if why.contains("node 2 being rebuilt")), "{lost:?}");
        // Lost wins over not yet: nothing to wait for.
        let both = set_aside_rule(&l, 0, 2, |n| match n {
            1 => None,
            2 => Some(false),
            _ => Some(true),
        });
        assert!(matches!(both, Err(Refusal::Lost(_))), "{both:?}");
        // The node's own state does not count against it.
        assert_eq!(set_aside_rule(&l, 0, 2, |n| (n != 0).then_some(true)), Ok(()));
    }
}
