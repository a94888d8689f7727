//! The wire protocol between chctl (or any client) and chd.
//!
//! A frame is a 4-byte big-endian body length followed by a postcard body. A client sends
//! [`ClientFrame`]s (a request id and a [`Request`]); chd answers each with a [`ServerFrame`]
//! carrying the same id, so a client may pipeline many requests on one connection. The first
//! request must be [`Request::Hello`], which checks that both sides speak the same protocol.
//!
//! Limits: the length prefix is checked against [`MAX_FRAME`] before any body byte is read, so
//! an oversized frame costs chd four bytes of buffer, not 4 GiB. Keys and values are checked
//! against [`MAX_KEY`] and [`MAX_VALUE`] after decoding.
//!
//! Keys and values are serialized as byte strings (`serde_bytes`): one length and one copy,
//! not one serializer call per byte, which matters for 32 MiB values.
//!
//! postcard encodes enum variants by position: new requests are only ever appended, and
//! [`PROTOCOL_VERSION`] is raised whenever an existing message changes shape.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::ring::NodeId;

pub const PROTOCOL_VERSION: u32 = 2;

/// Largest key accepted.
pub const MAX_KEY: usize = 64 * 1024;
/// Largest value accepted.
pub const MAX_VALUE: usize = 32 * 1024 * 1024;
/// Largest frame body: a maximal key and value plus room for the envelope.
pub const MAX_FRAME: usize = MAX_KEY + MAX_VALUE + 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFrame {
    pub id: u64,
    pub request: Request,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerFrame {
    pub id: u64,
    pub response: Result<Response, Error>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Hello {
        protocol: u32,
        client: String,
    },
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    Set {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Del {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    Status,
    Ring,
    NodeRestart {
        id: NodeId,
    },
    NodeRebuild {
        id: NodeId,
        /// The engine of the rebuilt database; `None` keeps the node's.
        engine: Option<EngineKind>,
    },
    Repair,
    /// Progress of a rebuild or migration, polled by chctl to draw its progress bar.
    Progress {
        id: NodeId,
    },
    NodeAdd {
        count: u32,
    },
    NodeRemove {
        id: NodeId,
    },
    NodeReplace {
        id: NodeId,
    },
    /// What a change would move, without moving anything.
    Plan {
        change: Change,
    },
    /// Live keys starting with `prefix`, from partition `cursor` on, at least `count` of them
    /// unless the end is reached (whole partitions are returned). Answered with
    /// [`Response::Keys`]; its cursor 0 means done.
    Scan {
        cursor: u32,
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
        count: u32,
    },
    /// Whether a key exists, without sending its value back. Answered with [`Response::Exists`].
    Exists {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Stores `value` only if `key` holds no live value now (never written, or deleted), checked
    /// and written under the key's lock: `chctl restore` without `--force`, which must not
    /// overwrite data newer than its dump. Answered with [`Response::Written`].
    SetIfAbsent {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// What `<data-dir>/quarantine/` holds. Answered with [`Response::Quarantine`].
    QuarantineList,
    /// Deletes the quarantined databases older than `older_than_secs` that are safe to delete
    /// (see [`QuarantineEntry::unsafe_because`]); the others are kept and say why. Answered with
    /// [`Response::Quarantine`], listing what was deleted and what was kept.
    QuarantinePurge {
        older_than_secs: u64,
    },
    /// Counters and latency histograms since chd started. Answered with [`Response::Stats`].
    Stats,
}

/// A membership change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Add { count: u32 },
    Remove { id: NodeId },
    Replace { id: NodeId },
}

impl Request {
    /// The request's name, as chctl's command would say it (for logs).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Get { .. } => "get",
            Request::Set { .. } => "set",
            Request::Del { .. } => "del",
            Request::Status => "status",
            Request::Ring => "ring",
            Request::NodeRestart { .. } => "node restart",
            Request::NodeRebuild { .. } => "node rebuild",
            Request::Repair => "repair",
            Request::Progress { .. } => "progress",
            Request::NodeAdd { .. } => "node add",
            Request::NodeRemove { .. } => "node remove",
            Request::NodeReplace { .. } => "node replace",
            Request::Plan { .. } => "plan",
            Request::Scan { .. } => "scan",
            Request::Exists { .. } => "exists",
            Request::SetIfAbsent { .. } => "restore",
            Request::QuarantineList => "quarantine list",
            Request::QuarantinePurge { .. } => "quarantine purge",
            Request::Stats => "stats",
        }
    }

    /// Checks the sizes a request carries, before chd acts on it.
    pub fn validate(&self) -> Result<(), Error> {
        let check_key = |key: &[u8]| {
            if key.is_empty() {
                Err(Error::EmptyKey)
            } else if key.len() > MAX_KEY {
                Err(Error::KeyTooLarge { len: key.len() as u64, max: MAX_KEY as u64 })
            } else {
                Ok(())
            }
        };
        match self {
            Request::Get { key } | Request::Del { key } | Request::Exists { key } => check_key(key),
            Request::Set { key, value } | Request::SetIfAbsent { key, value } => {
                check_key(key)?;
                if value.len() > MAX_VALUE {
                    return Err(Error::ValueTooLarge { len: value.len() as u64, max: MAX_VALUE as u64 });
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Hello {
        protocol: u32,
        server: String,
    },
    /// The value of a key, or `None` when it does not exist (never written, or deleted).
    Value(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// A write is durable on at least W replicas.
    Done,
    Status(StatusReport),
    Ring(RingReport),
    Repair(RepairReport),
    Progress(Option<NodeProgress>),
    /// A membership change started; these nodes joined.
    Changing {
        what: String,
        added: Vec<NodeId>,
    },
    Plan(PlanReport),
    /// Keys of a scan, ascending within each partition, and the cursor to continue from (0:
    /// the scan is complete).
    Keys {
        keys: Vec<serde_bytes::ByteBuf>,
        cursor: u32,
    },
    Exists(bool),
    /// Answer to [`Request::SetIfAbsent`]: whether the value was written (durable on W
    /// replicas); `false` means the key had a live value, which was left as it was.
    Written(bool),
    /// Answer to [`Request::QuarantineList`] and [`Request::QuarantinePurge`].
    Quarantine(QuarantineReport),
    /// Answer to [`Request::Stats`].
    Stats(StatsReport),
}

/// What chd has counted since it started (`chctl stats`; the same numbers as the Prometheus
/// endpoint).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    pub uptime_ms: u64,
    /// Commands used at least once, per front end (`chd`: chd's socket; `resp`).
    pub requests: Vec<CommandStats>,
    /// Bytes read from and written to clients, per front end.
    pub apis: Vec<ApiStats>,
    pub nodes: Vec<NodeMetrics>,
    /// Reads answered from chd's value cache, and those that were not.
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Repairs of every partition finished, and keys they copied.
    pub repairs: u64,
    pub repaired_keys: u64,
    /// Node rebuilds finished.
    pub rebuilds: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandStats {
    pub api: String,
    pub command: String,
    /// Requests per outcome (`ok`, `error`, or a chd error kind such as `unavailable`); only
    /// outcomes that happened.
    pub outcomes: std::collections::BTreeMap<String, u64>,
    /// Time from arrival to answer, in microseconds.
    pub latency_us: HistogramReport,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiStats {
    pub api: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// One node's figures. Batch and sync histograms count since the node's worker last started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeMetrics {
    pub id: NodeId,
    /// Whether the worker answered; if not, the rest is empty.
    pub reachable: bool,
    pub keys: Option<u64>,
    pub bytes: Option<u64>,
    /// Writes per group-commit batch.
    pub batch_size: HistogramReport,
    /// Time to make one batch durable (value files, engine flush, fdatasync), in microseconds.
    pub sync_us: HistogramReport,
}

/// A log2 histogram: `buckets[i]` counts values in (2^(i-1), 2^i], bucket 0 counts 0 and 1,
/// the last one everything larger. Percentiles are the upper bound of their bucket.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramReport {
    pub count: u64,
    pub sum: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub buckets: Vec<u64>,
}

/// What `quarantine/` holds, or what a purge did with it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuarantineReport {
    pub dir: String,
    /// Every entry (list), or the entries kept (purge).
    pub entries: Vec<QuarantineEntry>,
    /// Entries deleted (purge only).
    pub purged: Vec<QuarantineEntry>,
}

/// One database set aside in `quarantine/`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// Its name in `quarantine/`, `node-<id>-<unix seconds>[.<n>]`.
    pub name: String,
    /// The node whose database it was, when the name says.
    pub node: Option<NodeId>,
    /// Bytes allocated on disk for its files.
    pub bytes: u64,
    /// Seconds since it was set aside.
    pub age_secs: u64,
    /// `None` when deleting it loses nothing (the node it came from has been rebuilt and is
    /// up); otherwise why it may hold the only copy of some records, or is not chd's to delete.
    pub unsafe_because: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanReport {
    pub what: String,
    pub partitions_moving: u32,
    pub partitions: u32,
    pub nodes: Vec<NodeTraffic>,
}

/// What one node sends and receives in a planned change. Records include tombstones; bytes
/// are keys plus values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeTraffic {
    pub id: NodeId,
    pub share_before: f64,
    pub share_after: f64,
    pub send_records: u64,
    pub send_bytes: u64,
    pub receive_records: u64,
    pub receive_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Serving reads and writes.
    Up,
    /// Spawned, opening its database.
    Starting,
    /// Not running; waiting to be respawned.
    Down,
    /// Running but not answering; about to be killed and respawned.
    Hung,
    /// Has its data but may have missed writes; takes writes, not reads, until synced.
    CatchingUp,
    /// Lost its data; takes writes, not reads, while every range is copied back.
    Rebuilding,
    /// Crashed too often; not respawned until `chctl node restart`.
    Failed,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Starting => "starting",
            NodeState::Down => "down",
            NodeState::Hung => "hung",
            NodeState::CatchingUp => "catching_up",
            NodeState::Rebuilding => "rebuilding",
            NodeState::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub pid: u32,
    pub uptime_ms: u64,
    pub data_dir: String,
    pub socket: String,
    pub replicas: u32,
    pub write_quorum: u32,
    pub partitions: u32,
    pub nodes: Vec<NodeStatus>,
    /// A membership change in progress.
    pub migration: Option<NodeProgress>,
    /// The Redis-protocol socket, if chd serves one.
    pub resp_socket: Option<String>,
    /// Bytes chd and its workers hold resident, and the budget (`max_memory`; 0: none).
    pub memory_used: u64,
    pub memory_budget: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub pid: Option<u32>,
    pub state: NodeState,
    pub restarts: u32,
    /// Live keys (tombstones excluded); `None` while the node cannot be asked.
    pub keys: Option<u64>,
    pub bytes: Option<u64>,
    pub progress: Option<NodeProgress>,
    /// Why the node is in its state, when that needs saying (failed, waiting for disk space).
    pub note: Option<String>,
    /// The engine of the node's database, once its worker has opened it.
    pub engine: Option<EngineKind>,
    /// Bytes its worker holds resident.
    pub memory: Option<u64>,
}

/// The storage engine of a node's database. A database keeps the engine it was created
/// with; the setting `engine` picks the engine of new ones, and a rebuild may change it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// chd's append-only log with an in-memory index.
    #[default]
    Append,
    /// sled 0.34, behind a write-ahead log.
    Sled,
}

impl EngineKind {
    pub const ALL: [EngineKind; 2] = [EngineKind::Append, EngineKind::Sled];

    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Append => "append",
            EngineKind::Sled => "sled",
        }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<EngineKind, String> {
        EngineKind::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown engine {s:?}: one of append, sled"))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeProgress {
    pub what: String,
    pub partitions_done: u32,
    pub partitions_total: u32,
    pub keys: u64,
    pub bytes: u64,
    pub elapsed_ms: u64,
    pub finished: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RingReport {
    pub partitions: u32,
    pub replicas: u32,
    pub nodes: Vec<RingShare>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RingShare {
    pub id: NodeId,
    pub partitions: u32,
    /// Fraction of the key space this node stores a replica of.
    pub share: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RepairReport {
    pub partitions_checked: u64,
    pub partitions_differing: u64,
    pub keys_repaired: u64,
    pub bytes_repaired: u64,
    pub unreachable_nodes: Vec<NodeId>,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Protocol(#[from] Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Appends one frame holding `msg` to `out`.
pub fn encode_frame<T: Serialize>(msg: &T, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    // Serializing our own types to a Vec cannot fail.
    let out_vec = std::mem::take(out);
    let mut out_vec = postcard::to_extend(msg, out_vec).expect("postcard to Vec");
    let len = (out_vec.len() - start - 4) as u32;
    out_vec[start..start + 4].copy_from_slice(&len.to_be_bytes());
    *out = out_vec;
}

/// Writes one frame to a blocking writer.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let mut buf = Vec::new();
    encode_frame(msg, &mut buf);
    w.write_all(&buf)
}

pub use decode::{decode_body, frame_len, peek_id, read_frame};

/// Everything that takes bytes from the other side. No input, however broken or hostile, gets
/// more than an error out of it: the lints keep indexing, `unwrap` and unchecked arithmetic out
/// of this module (the fuzz targets `chd_frame`, `worker_frame` and `client_reply` drive it).
mod decode {
    #![deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects
    )]

    use std::io::{self, Read};

    use serde::de::DeserializeOwned;

    use super::FrameError;
    use crate::error::Error;

    /// If `buf` starts with a whole frame, the length of its body. Checks the length prefix against
    /// `max` first, so a hostile prefix is refused before anything is buffered for it.
    pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, Error> {
        let Some(&[a, b, c, d]) = buf.get(..4) else { return Ok(None) };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if len > max {
            return Err(Error::FrameTooLarge { len: len as u64, max: max as u64 });
        }
        Ok((buf.len().saturating_sub(4) >= len).then_some(len))
    }

    /// Decodes a frame body. On failure, the error names what was wrong.
    pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
        match postcard::from_bytes(body) {
            Ok(msg) => Ok(msg),
            Err(postcard::Error::DeserializeBadEnum) => {
                Err(Error::Malformed("unknown request type; is chctl newer than chd?".into()))
            }
            Err(e) => Err(Error::Malformed(e.to_string())),
        }
    }

    /// The request id at the start of a client frame body, so that even a request that cannot be
    /// decoded is answered under its own id.
    pub fn peek_id(body: &[u8]) -> u64 {
        postcard::take_from_bytes::<u64>(body).map_or(0, |(id, _)| id)
    }

    /// Reads one frame body from a blocking reader. `Ok(None)` on a clean end of stream.
    pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
        let mut prefix = [0u8; 4];
        match read_full(r, &mut prefix)? {
            0 => return Ok(None),
            4 => {}
            _ => return Err(FrameError::Truncated),
        }
        let len = frame_len(&prefix, max)?.unwrap_or_else(|| u32::from_be_bytes(prefix) as usize);
        let mut body = vec![0; len];
        if read_full(r, &mut body)? != len {
            return Err(FrameError::Truncated);
        }
        Ok(Some(body))
    }

    fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0usize;
        while let Some(rest) = buf.get_mut(n..).filter(|rest| !rest.is_empty()) {
            match r.read(rest) {
                Ok(0) => break,
                Ok(k) => n = n.saturating_add(k),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(req: Request) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_frame(&ClientFrame { id: 42, request: req }, &mut buf);
        buf
    }

    #[test]
    fn round_trip_through_a_stream() {
        let reqs = [
            Request::Hello { protocol: PROTOCOL_VERSION, client: "t".into() },
            Request::Set { key: b"k".to_vec(), value: vec![0, 255, 10, 13] },
            Request::Get { key: b"k".to_vec() },
            Request::Del { key: b"k".to_vec() },
            Request::Status,
        ];
        let mut stream = Vec::new();
        for r in &reqs {
            stream.extend(frame(r.clone()));
        }
        let mut reader = &stream[..];
        for r in &reqs {
            let body = read_frame(&mut reader, MAX_FRAME).unwrap().unwrap();
            assert_eq!(peek_id(&body), 42);
            let f: ClientFrame = decode_body(&body).unwrap();
            assert_eq!(&f.request, r);
        }
        assert!(read_frame(&mut reader, MAX_FRAME).unwrap().is_none());
    }

    #[test]
    fn truncated_frames_are_reported() {
        let whole = frame(Request::Get { key: b"key".to_vec() });
        for cut in 1..whole.len() {
            let mut r = &whole[..cut];
            assert!(matches!(read_frame(&mut r, MAX_FRAME), Err(FrameError::Truncated)), "cut at {cut}");
            assert_eq!(frame_len(&whole[..cut], MAX_FRAME).unwrap(), None);
        }
        assert_eq!(frame_len(&whole, MAX_FRAME).unwrap(), Some(whole.len() - 4));
    }

    #[test]
    fn oversized_prefix_is_refused_before_reading_the_body() {
        let prefix = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(matches!(frame_len(&prefix, MAX_FRAME), Err(Error::FrameTooLarge { .. })));
        let mut r = &prefix[..];
        assert!(matches!(read_frame(&mut r, MAX_FRAME), Err(FrameError::Protocol(Error::FrameTooLarge { .. }))));
    }

    #[test]
    fn garbage_bodies_are_errors_not_panics() {
        let mut seed = 1u64;
        for len in 0..300 {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 56) as u8
                })
                .collect();
            let _ = decode_body::<ClientFrame>(&body);
            let _ = peek_id(&body);
        }
        let unknown_variant = [1u8, 200];
        assert!(matches!(decode_body::<ClientFrame>(&unknown_variant), Err(Error::Malformed(_))));
    }

    #[test]
    fn sizes_are_validated() {
        let big_key = Request::Get { key: vec![b'k'; MAX_KEY + 1] };
        assert!(matches!(big_key.validate(), Err(Error::KeyTooLarge { .. })));
        let big_value = Request::Set { key: b"k".to_vec(), value: vec![0; MAX_VALUE + 1] };
        assert!(matches!(big_value.validate(), Err(Error::ValueTooLarge { .. })));
        assert_eq!(Request::Del { key: vec![] }.validate(), Err(Error::EmptyKey));
        assert!(Request::Set { key: vec![1; MAX_KEY], value: vec![0; 10] }.validate().is_ok());
    }
}
