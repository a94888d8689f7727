//! Messages between chd and one worker over their socketpair: the same framing as the client
//! protocol ([`chd_data::proto`]), with chd's internal requests.

use chd_data::proto::EngineKind;
use chd_data::{NodeId, Record};
use serde::{Deserialize, Serialize};

/// Frames on the worker link may carry a batch of records, so they get more room than a
/// client frame; every batch is cut well below this.
pub const MAX_WORKER_FRAME: usize = 2 * chd_data::proto::MAX_FRAME;

/// The worker's first message (id 0), sent once its database is open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerHello {
    pub pid: u32,
    /// The node id stored in the database, `None` if the database is new or was lost.
    pub identity: Option<NodeId>,
    /// A rebuild of this node was started and has not finished.
    pub rebuild_pending: bool,
    pub max_version: u64,
    pub live_keys: u64,
    /// The engine of the database it opened.
    pub engine: EngineKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame<T> {
    pub id: u64,
    pub msg: T,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerRequest {
    /// Store unless a record with an equal or higher version is there. Answered once durable.
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        record: Record,
        /// chd is not waiting for this copy: the key's other replicas are up and get the write
        /// too. The worker may then hold the sync up to [`super::SPARE_WAIT`] for other
        /// requests to share it; the answer still comes only once the write is durable.
        spare: bool,
    },
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    Ping,
    Stats,
    /// One digest of the (key, version) pairs of each named partition.
    Digests {
        partitions: Vec<u32>,
    },
    /// (key, version) pairs of a partition, ascending, after `after`.
    Versions {
        partition: u32,
        after: Option<Vec<u8>>,
        limit: u32,
    },
    GetMany {
        keys: Vec<Vec<u8>>,
    },
    /// Newest-wins store of many records; answered once durable with how many were newer.
    PutMany {
        entries: Vec<(Vec<u8>, Record)>,
    },
    DropPartition {
        partition: u32,
    },
    /// Writes this node's identity and whether a rebuild is pending, durably.
    SetIdentity {
        node: NodeId,
        rebuild_pending: bool,
    },
    Shutdown,
    /// Records and bytes (keys plus values) stored in each named partition.
    PartitionStats {
        partitions: Vec<u32>,
    },
    /// The partitions that hold at least one record.
    NonEmptyPartitions,
    /// (key, version, is a tombstone) of a partition, ascending, after `after`: the key
    /// listing (SCAN, `chctl keys`) merges these across replicas.
    Keys {
        partition: u32,
        after: Option<Vec<u8>>,
        limit: u32,
    },
    /// Removes the tombstones of each named partition whose version is below `below`; answered
    /// with [`WorkerResponse::Count`] once durable. chd sends it only for partitions where every
    /// replica holds the same records ([`crate::tombstones`]).
    PurgeTombstones {
        partitions: Vec<u32>,
        below: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerResponse {
    Hello(WorkerHello),
    Stored(bool),
    Record(Option<Record>),
    /// Answered by the worker's health thread even while a batch is being applied, so a slow
    /// batch is not mistaken for a dead worker. `batches`: batches completed so far; `busy_ms`:
    /// how long the current batch has been running (0 when idle). A hung worker shows a growing
    /// `busy_ms` with `batches` unchanged.
    Pong {
        batches: u64,
        busy_ms: u64,
    },
    /// Counts of the node's data, and (added last, so older fields keep their place) its
    /// group-commit figures since the worker started: writes per synced batch and each sync's
    /// duration in microseconds.
    Stats {
        live_keys: u64,
        bytes: u64,
        batch_size: crate::metrics::Snapshot,
        sync_us: crate::metrics::Snapshot,
    },
    Digests(Vec<[u8; 32]>),
    Versions(Vec<(Vec<u8>, u64)>),
    Records(Vec<(Vec<u8>, Option<Record>)>),
    Count(u64),
    PartitionStats(Vec<(u64, u64)>),
    Partitions(Vec<u32>),
    Done,
    Failed(String),
    /// A write refused because the database's filesystem has less than `needed` bytes free
    /// (`free` were); nothing of it was written. Reads keep working.
    DiskFull {
        free: u64,
        needed: u64,
    },
    /// Answer to [`WorkerRequest::Keys`].
    Keys(Vec<(Vec<u8>, u64, bool)>),
}

impl WorkerRequest {
    /// A write chd does not wait for (see [`WorkerRequest::Put`]).
    pub fn is_spare(&self) -> bool {
        matches!(self, WorkerRequest::Put { spare: true, .. })
    }

    /// Roughly the bytes this request occupies encoded: its keys and values.
    pub fn approx_bytes(&self) -> usize {
        match self {
            WorkerRequest::Put { key, record, .. } => key.len() + record.value.as_ref().map_or(0, Vec::len) + 16,
            WorkerRequest::PutMany { entries } => {
                entries.iter().map(|(k, r)| k.len() + r.value.as_ref().map_or(0, Vec::len) + 16).sum()
            }
            WorkerRequest::GetMany { keys } => keys.iter().map(|k| k.len() + 4).sum(),
            _ => 64,
        }
    }
}
