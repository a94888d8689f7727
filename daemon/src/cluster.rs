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
    pub ring: RwLock<Ring>,
    pub nodes: RwLock<BTreeMap<NodeId, NodeSlot>>,
    pub started: Instant,
}

impl Cluster {
    pub fn new(settings: Settings, data: DataDir, ring: Ring) -> Arc<Cluster> {
        Arc::new(Cluster { settings, data, ring: RwLock::new(ring), nodes: RwLock::default(), started: Instant::now() })
    }

    pub fn ring(&self) -> Ring {
        self.ring.read().expect("ring lock").clone()
    }

    pub fn write_quorum(&self) -> usize {
        self.settings.write_quorum as usize
    }

    /// The replicas of `key` in ring order, with their current state.
    pub fn replicas_of(&self, key: &[u8]) -> Vec<Replica> {
        let owners = {
            let ring = self.ring.read().expect("ring lock");
            ring.locate(key).1.to_vec()
        };
        self.replicas(&owners)
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
