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

use std::fs::File;
use std::io;
use std::path::Path;

use super::{Engine, Entry};

pub struct SledEngine {
    db: sled::Db,
    log: File,
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
    pub fn open(dir: &Path) -> io::Result<SledEngine> {
        let db = sled::Config::new()
            .path(dir)
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
        // Make the directory entries of files sled just created durable too.
        File::open(dir)?.sync_all()?;
        Ok(SledEngine { db, log })
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
        self.db.flush().map_err(io_err)?;
        self.log.sync_data()
    }
    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
