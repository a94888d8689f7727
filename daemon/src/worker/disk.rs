//! A full disk is a read-only condition, not a crash.
//!
//! Before a batch that writes, the worker asks how much space its database's filesystem has
//! left and refuses every write of the batch unless `free >= reserve + 2 * bytes written`
//! (sled's log and its blob files take more than the payload, and the reserve leaves room for
//! sled's own housekeeping and for a reopen). A refused write is answered with
//! [`WorkerResponse::DiskFull`](super::proto::WorkerResponse::DiskFull) and nothing of it
//! reaches sled, so sled does not meet ENOSPC in the common case: it handles ENOSPC badly
//! (see [`crate::storage::sled`]). Reads in the same batch are answered as usual. Deleting a
//! partition frees space and is always allowed.
//!
//! The probe is a trait so that tests can simulate a full disk without filling one.

use std::io;
use std::path::PathBuf;

use super::proto::WorkerRequest;

/// Default of `chd worker --disk-reserve`: free space a worker never writes into.
pub const DEFAULT_RESERVE: u64 = 16 << 20;

/// How much space is left for the database.
pub trait FreeSpace: Send {
    /// Bytes an unprivileged writer may still use on the database's filesystem.
    fn free_bytes(&self) -> io::Result<u64>;
}

/// The real probe: `statvfs` of the database directory, `f_bavail * f_frsize` (blocks left to
/// unprivileged users, so the root-reserved blocks do not count).
pub struct Statvfs(pub PathBuf);

impl FreeSpace for Statvfs {
    fn free_bytes(&self) -> io::Result<u64> {
        let s = nix::sys::statvfs::statvfs(&self.0).map_err(io::Error::from)?;
        #[allow(clippy::useless_conversion)] // the field types differ between targets
        Ok(u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())))
    }
}

/// Why a batch's writes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub free: u64,
    pub needed: u64,
}

/// Whether a batch writing `writes` bytes may go ahead with `free` bytes left.
pub fn check(free: u64, reserve: u64, writes: u64) -> Result<(), Refusal> {
    let needed = reserve.saturating_add(writes.saturating_mul(2));
    if free < needed {
        Err(Refusal { free, needed })
    } else {
        Ok(())
    }
}

/// Bytes a request adds to the database, or `None` if it is not subject to the space check
/// (reads, and `DropPartition` and `PurgeTombstones`, which free space).
pub fn write_bytes(req: &WorkerRequest) -> Option<u64> {
    // Per record: the 4-byte partition prefix, the record header (version, tag) and some of
    // sled's own framing.
    const OVERHEAD: u64 = 64;
    let record =
        |key: &[u8], r: &chd_data::Record| OVERHEAD + key.len() as u64 + r.value.as_ref().map_or(0, |v| v.len() as u64);
    match req {
        WorkerRequest::Put { key, record: r, .. } => Some(record(key, r)),
        WorkerRequest::PutMany { entries } => Some(entries.iter().map(|(k, r)| record(k, r)).sum()),
        WorkerRequest::SetIdentity { .. } => Some(2 * OVERHEAD),
        WorkerRequest::Get { .. }
        | WorkerRequest::Ping
        | WorkerRequest::Stats
        | WorkerRequest::Digests { .. }
        | WorkerRequest::Versions { .. }
        | WorkerRequest::GetMany { .. }
        | WorkerRequest::DropPartition { .. }
        | WorkerRequest::PurgeTombstones { .. }
        | WorkerRequest::Shutdown
        | WorkerRequest::PartitionStats { .. }
        | WorkerRequest::NonEmptyPartitions
        | WorkerRequest::Keys { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chd_data::Record;

    #[test]
    fn writes_need_the_reserve_plus_twice_their_size() {
        assert_eq!(check(100, 10, 45), Ok(()));
        assert_eq!(check(99, 10, 45), Err(Refusal { free: 99, needed: 100 }));
        // Even an empty write keeps out of the reserve.
        assert_eq!(check(9, 10, 0), Err(Refusal { free: 9, needed: 10 }));
        assert_eq!(check(0, u64::MAX, u64::MAX), Err(Refusal { free: 0, needed: u64::MAX }));
    }

    #[test]
    fn only_requests_that_add_data_are_checked() {
        let rec = Record { version: 1, value: Some(vec![0; 1000]) };
        let put = WorkerRequest::Put { key: b"k".to_vec(), record: rec.clone(), spare: false };
        let one = write_bytes(&put).unwrap();
        assert!(one > 1001);
        let many = WorkerRequest::PutMany { entries: vec![(b"k".to_vec(), rec.clone()); 3] };
        assert_eq!(write_bytes(&many), Some(3 * one));
        assert!(write_bytes(&WorkerRequest::SetIdentity { node: 1, rebuild_pending: false }).is_some());
        assert_eq!(write_bytes(&WorkerRequest::DropPartition { partition: 0 }), None);
        assert_eq!(write_bytes(&WorkerRequest::Get { key: b"k".to_vec() }), None);
    }

    #[test]
    fn statvfs_reports_some_space_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Statvfs(dir.path().to_path_buf()).free_bytes().unwrap() > 0);
        assert!(Statvfs(dir.path().join("missing")).free_bytes().is_err());
    }
}
