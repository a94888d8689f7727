//! The fjall engine (cargo feature `fjall`): an LSM tree with its own journal, measured beside
//! the append log in docs/storage.md.
//!
//! Writes: every `put` and `delete` is a direct insert or remove in one keyspace. The
//! database is opened with `manual_journal_persist`, so an insert only appends to the
//! journal's in-process buffer and the memtable, with no system call. [`Engine::sync`] is
//! `Database::persist(PersistMode::SyncData)`: the buffer is written to the journal file and
//! the file fdatasynced, so everything put before it survives a power cut (fjall replays the
//! journal on open). A batch is not atomic on its own: a crash before its `sync` may keep a
//! prefix of it, as with every other engine here.
//!
//! fjall refuses an empty key, which the trait allows: every key is stored behind one byte
//! [`TAG`] (the order is the same), and scans strip it.
//!
//! fjall creates journal files as it rotates them and fsyncs their directory then; flushed
//! memtables and compactions run on its own background threads.

use std::io;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{Engine, Entry};

/// The byte in front of every key as stored.
const TAG: u8 = b'k';

fn stored(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(TAG);
    k.extend_from_slice(key);
    k
}

pub struct FjallEngine {
    db: Database,
    tree: Keyspace,
}

/// fjall's errors as `io::Error`s whose kind keeps what the worker tells apart (see
/// [`crate::worker::classify`]): I/O errors as they are, a held lock as `WouldBlock` ("busy"),
/// everything fjall reports about its own files as `InvalidData` ("damaged").
fn io_err(e: fjall::Error) -> io::Error {
    match e {
        fjall::Error::Io(e) => e,
        fjall::Error::Storage(fjall::LsmError::Io(e)) => e,
        fjall::Error::Locked => io::Error::new(io::ErrorKind::WouldBlock, "fjall: the database is locked"),
        other => io::Error::new(io::ErrorKind::InvalidData, format!("fjall: {other}")),
    }
}

impl FjallEngine {
    /// Opens (or creates) the database in `dir` with a block cache of about `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> io::Result<FjallEngine> {
        let db = Database::builder(dir)
            .cache_size(cache_bytes)
            // `sync` decides when the journal reaches the file.
            .manual_journal_persist(true)
            .open()
            .map_err(io_err)?;
        let tree = db.keyspace("chd", KeyspaceCreateOptions::default).map_err(io_err)?;
        Ok(FjallEngine { db, tree })
    }
}

impl Engine for FjallEngine {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.tree.get(stored(key)).map_err(io_err)?.map(|v| v.to_vec()))
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.tree.insert(stored(key), value).map_err(io_err)
    }
    fn delete(&mut self, key: &[u8]) -> io::Result<()> {
        self.tree.remove(stored(key)).map_err(io_err)
    }
    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> io::Result<Vec<Entry>> {
        if from >= to {
            return Ok(Vec::new());
        }
        self.tree
            .range(stored(from)..stored(to))
            .take(limit)
            .map(|g| g.into_inner().map(|(k, v)| (k[1..].to_vec(), v.to_vec())).map_err(io_err))
            .collect()
    }
    fn sync(&mut self) -> io::Result<()> {
        self.db.persist(PersistMode::SyncData).map_err(io_err)
    }
    fn size_on_disk(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fjall_engine_conforms_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut e = FjallEngine::open(dir.path(), 8 << 20).unwrap();
            super::super::tests::conformance(&mut e);
            // Dropped without close: what `sync` made durable is what the next open finds.
            e.put(b"after", b"unsynced").unwrap();
        }
        let e = FjallEngine::open(dir.path(), 8 << 20).unwrap();
        assert_eq!(e.get(b"b").unwrap(), Some(b"22".to_vec()));
        assert_eq!(e.get(b"c").unwrap(), None);
        assert!(e.size_on_disk() > 0);
        let busy = FjallEngine::open(dir.path(), 8 << 20).err().expect("a second open must fail");
        assert_eq!(busy.kind(), io::ErrorKind::WouldBlock, "{busy}");
    }
}
