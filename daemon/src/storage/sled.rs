//! The sled engine.
//!
//! sled 0.34's `flush()` writes its log with `sync_file_range`, which survives a crash of the
//! process but not of the machine. [`SledEngine::sync`] therefore follows it with an
//! `fdatasync` of sled's log file (`<dir>/db`). The worker calls `sync` once per batch of writes
//! (group commit), not once per write.
//!
//! Errors keep their kind (see `io_err`): the worker's exit status, and so whether chd sets a
//! database aside, depends on telling a full disk from a failing one from a damaged database.
//!
//! sled 0.34 on a full disk: an `insert` or `flush` fails with ENOSPC, and then every later
//! call fails the same way; dropping the `Db` afterwards can hang forever (seen with 1 MiB
//! values on a full tmpfs: the drop's flush waits on a write that never completes), and
//! opening a database on a full filesystem fails with ENOSPC. The worker therefore checks free
//! space before it writes and, after a storage error, exits without dropping the engine.
//!
//! sled writes any page serialized over about 128 KiB (`segment_size / 4`: one large value, or
//! a whole leaf of ~17 records when it consolidates) to a blob file `<dir>/blobs/<lsn>`, inside
//! `insert`, and never fsyncs it; it never deletes the blobs of replaced pages either, and it
//! may unlink one before our fdatasync of the log that replaces it (not reachable from
//! outside). The node layer therefore keeps values over 4 KiB out of the engine
//! ([`crate::worker::values`]), so that sled sees no such page in practice. Only leaves of
//! many keys over ~7 KiB each can still reach the blob path (measured: 400 keys of 8,000
//! bytes made 3 blobs); for them `sync` still fsyncs new blobs and `blobs/` before the log
//! (see `sync_blobs`; one read of an empty directory otherwise).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::{fsio, Engine, Entry};

pub struct SledEngine {
    db: sled::Db,
    log: File,
    /// `<dir>/blobs`, where sled keeps values too large for its log.
    blobs: PathBuf,
    /// Blob files are named by log sequence number, which only grows: every blob named at or
    /// below this has been fsynced. `None` until the first sync, which covers every blob
    /// already there (an earlier worker may have been killed before it synced them).
    blobs_synced: Option<i64>,
}

/// sled's errors as `io::Error`s whose kind keeps what the worker must tell apart (see
/// [`crate::worker::classify`]): an I/O error stays as it is (ENOSPC keeps its kind
/// `StorageFull` even when sled hands out a copy without the OS error code), and everything
/// sled reports about its own files (corruption, an unsupported or foreign format, a bug it
/// detected) becomes `InvalidData`, "this database fails its own checks".
fn io_err(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, format!("sled: {other}")),
    }
}

impl SledEngine {
    /// Opens, waiting up to 10 s while the lock is still held: dropping a sled database does
    /// not release its lock at once (seen: reopens in tests failing now and then with
    /// "could not acquire lock"), and a process another test forks holds it until it execs.
    #[cfg(test)]
    pub fn open_waiting(dir: &Path) -> SledEngine {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledEngine::open(dir) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => return other.expect("opening sled"),
            }
        }
    }

    /// Opens with sled's default cache (1 GiB): for tests.
    #[cfg(test)]
    pub fn open(dir: &Path) -> io::Result<SledEngine> {
        SledEngine::open_with_cache(dir, 1 << 30)
    }

    /// Opens the database in `dir` with a page cache of about `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> io::Result<SledEngine> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Our own group commit decides when data is durable; sled's timer would only add
            // background I/O.
            .flush_every_ms(None)
            .open()
            .map_err(|e| match io_err(e) {
                // sled reports a held lock as a generic error; callers need to tell "busy" from
                // "damaged", so it becomes WouldBlock.
                e if e.to_string().contains("could not acquire lock") => io::Error::new(io::ErrorKind::WouldBlock, e),
                e => e,
            })?;
        let log = File::open(dir.join("db"))?;
        // sled writes `conf` when it creates a database and never syncs it.
        File::open(dir.join("conf"))?.sync_all()?;
        // Make the directory entries of files sled just created durable too.
        File::open(dir)?.sync_all()?;
        Ok(SledEngine { db, log, blobs: dir.join("blobs"), blobs_synced: None })
    }

    /// fsyncs the blob files sled created since the last sync, then the `blobs/` directory.
    ///
    /// sled 0.34 writes a large value to its own file `blobs/<lsn>` synchronously inside
    /// `insert` (open O_EXCL, write, close, no fsync), and the log entry pointing at it later.
    /// A log entry made durable without its blob is lost on power loss (sled skips an entry
    /// whose blob is missing, and stops reading the log at one whose blob is short). So the
    /// blobs of a batch are made durable here, before `flush` and the fdatasync of the log.
    fn sync_blobs(&mut self) -> io::Result<()> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut newest = self.blobs_synced;
        for entry in entries {
            let entry = entry?;
            let Some(lsn) = entry.file_name().to_str().and_then(|n| n.parse::<i64>().ok()) else { continue };
            if self.blobs_synced.is_some_and(|synced| lsn <= synced) {
                continue;
            }
            match File::open(entry.path()) {
                Ok(f) => fsio::sync_data(&f)?,
                // sled removed a blob that a newer write replaced.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            newest = Some(newest.map_or(lsn, |n| n.max(lsn)));
        }
        if newest != self.blobs_synced {
            fsio::sync_dir(&self.blobs)?;
        }
        self.blobs_synced = newest.or(Some(i64::MIN));
        Ok(())
    }
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.db.get(key).map_err(io_err)?.map(|v| v.to_vec()))
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.db.insert(key, value).map_err(io_err)?;
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> io::Result<()> {
        self.db.remove(key).map_err(io_err)?;
        Ok(())
    }
    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> io::Result<Vec<Entry>> {
        if from >= to {
            return Ok(Vec::new());
        }
        self.db.range(from..to).take(limit).map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io_err)).collect()
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_blobs()?;
        // sled's flush ends in its own sync of the log: an I/O error there is a failed sync.
        self.db.flush().map_err(|e| match io_err(e) {
            e if e.raw_os_error().is_some_and(|c| c != libc::ENOSPC && c != libc::EDQUOT) => fsio::sync_failed(e),
            e => e,
        })?;
        fsio::sync_data(&self.log)
    }
    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
