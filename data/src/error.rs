//! The one error type that crosses the socket.
//!
//! Every variant says what went wrong in terms a user can act on; `Display` is the one-line
//! message chctl prints. It is `Clone + Serialize` because chd sends it to clients as is.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("key is {len} bytes, the limit is {max}")]
    KeyTooLarge { len: u64, max: u64 },
    #[error("value is {len} bytes, the limit is {max}")]
    ValueTooLarge { len: u64, max: u64 },
    #[error("key must not be empty")]
    EmptyKey,
    #[error("frame of {len} bytes exceeds the limit of {max}; the connection is closed")]
    FrameTooLarge { len: u64, max: u64 },
    #[error("malformed request ({0}); the connection is closed")]
    Malformed(String),
    #[error("protocol version mismatch: chctl speaks {client}, chd speaks {server}; use a chctl built with this chd")]
    VersionMismatch { client: u32, server: u32 },
    #[error("the first request on a connection must be Hello")]
    HelloRequired,
    #[error("permission denied: uid {uid} is not root, chd's user, or a member of the allowed group")]
    PermissionDenied { uid: u32 },
    #[error("not enough replicas answered ({got} of {needed} needed); retry, and check `chctl status`")]
    Unavailable { needed: u32, got: u32 },
    #[error("no node with id {0}; see `chctl status`")]
    NoSuchNode(u32),
    #[error("{0}")]
    Refused(String),
    #[error("internal error in chd: {0}")]
    Internal(String),
    /// A node's disk has too little free space for the write; nothing was written there.
    #[error("disk full: {0}; writes are refused until space is freed, reads still work")]
    DiskFull(String),
    /// chd and its workers hold more memory than `max_memory`: a write that would create a
    /// key is refused; overwrites, deletes and reads go on.
    #[error(
        "out of memory: chd and its workers hold {used} bytes, over max_memory ({budget} bytes); new keys are refused, overwrites and deletes still work"
    )]
    OutOfMemory { used: u64, budget: u64 },
}
