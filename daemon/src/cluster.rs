//! chd's live view of its nodes: the ring, and each node's state and link to its worker.
//!
//! The supervisor writes a node's slot; the request path only reads it to pick the replicas to
//! talk to. Locks here are held for a few field copies, never across an await.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use chd_data::proto::{NodeProgress, NodeState};
use chd_data::{NodeId, Ring};
use tokio::sync::mpsc;

use crate::config::Settings;
use crate::datadir::DataDir;
use crate::layout::{Layout, Placement};
use crate::supervisor::Event;
use crate::worker::link::WorkerLink;

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
}

/// One replica of a key, as the request path sees it.
#[derive(Clone)]
pub struct Replica {
    pub id: NodeId,
    pub state: NodeState,
    pub link: Option<WorkerLink>,
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
}

pub struct Cluster {
    pub settings: Settings,
    pub data: DataDir,
    pub layout: RwLock<Layout>,
    /// Serializes membership changes and writes of `cluster.json`.
    pub membership: tokio::sync::Mutex<NodeId>,
    pub nodes: RwLock<BTreeMap<NodeId, NodeSlot>>,
    pub started: Instant,
    /// Progress of the current (or last) membership change.
    pub migration: RwLock<Option<NodeProgress>>,
}

impl Cluster {
    pub fn new(settings: Settings, data: DataDir, layout: Layout, next_node_id: NodeId) -> Arc<Cluster> {
        Arc::new(Cluster {
            settings,
            data,
            layout: RwLock::new(layout),
            membership: tokio::sync::Mutex::new(next_node_id),
            nodes: RwLock::default(),
            started: Instant::now(),
            migration: RwLock::default(),
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
                Some(s) => Replica { id, state: s.state, link: s.link.clone() },
                None => Replica { id, state: NodeState::Down, link: None },
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

    pub fn send(&self, id: NodeId, event: Event) -> bool {
        let nodes = self.nodes.read().expect("nodes lock");
        nodes.get(&id).is_some_and(|s| s.events.send(event).is_ok())
    }
}
