//! The redb engine (cargo feature `redb`): a copy-on-write B-tree in one file, `<dir>/redb`,
//! measured beside the append log in docs/storage.md.
//!
//! Writes: the puts and deletes since the last [`Engine::sync`] wait in memory (`pending`,
//! the newest operation per key), and `sync` applies them in one write transaction committed
//! with `Durability::Immediate`: redb writes the changed pages and its header and fsyncs
//! before `commit` returns, so the whole batch survives a power cut, or none of it does. One
//! transaction per sync, not per put, because a commit costs the same for one key as for
//! hundreds.
//!
//! Reads see `pending` first, then a read transaction opened after the last commit (so the
//! committed state). The read transaction is dropped before each commit, so that redb can
//! reuse the pages the commit frees.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use redb::{Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Engine, Entry};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chd");

pub struct RedbEngine {
    db: Database,
    /// The committed state, as of the last commit. `None` only during a commit.
    read: Option<ReadOnlyTable<&'static [u8], &'static [u8]>>,
    /// Operations since the last commit: a value to put, or `None` to delete.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    file: std::path::PathBuf,
}

/// redb's errors as `io::Error`s whose kind keeps what the worker tells apart (see
/// [`crate::worker::classify`]): I/O errors as they are, a database another process holds as
/// `WouldBlock` ("busy"), everything else redb reports as `InvalidData` ("damaged").
fn io_err(e: impl Into<redb::Error>) -> io::Error {
    match e.into() {
        redb::Error::Io(e) => e,
        redb::Error::DatabaseAlreadyOpen => {
            io::Error::new(io::ErrorKind::WouldBlock, "redb: the database is open elsewhere")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, format!("redb: {other}")),
    }
}

impl RedbEngine {
    /// Opens (or creates) the database `<dir>/redb` with a page cache of about `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> io::Result<RedbEngine> {
        std::fs::create_dir_all(dir)?;
        let file = dir.join("redb");
        let db = Database::builder().set_cache_size(cache_bytes as usize).create(&file).map_err(io_err)?;
        // The table exists from the first open on, so a read transaction can always open it.
        let w = db.begin_write().map_err(io_err)?;
        w.open_table(TABLE).map_err(io_err)?;
        w.commit().map_err(io_err)?;
        std::fs::File::open(dir)?.sync_all()?;
        let mut e = RedbEngine { db, read: None, pending: BTreeMap::new(), file };
        e.reopen_read()?;
        Ok(e)
    }

    fn reopen_read(&mut self) -> io::Result<()> {
        self.read = Some(self.db.begin_read().map_err(io_err)?.open_table(TABLE).map_err(io_err)?);
        Ok(())
    }

    fn committed(&self) -> &ReadOnlyTable<&'static [u8], &'static [u8]> {
        self.read.as_ref().expect("a read transaction outside commits")
    }
}

impl Engine for RedbEngine {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if let Some(op) = self.pending.get(key) {
            return Ok(op.clone());
        }
        Ok(self.committed().get(key).map_err(io_err)?.map(|v| v.value().to_vec()))
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.pending.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> io::Result<()> {
        self.pending.insert(key.to_vec(), None);
        Ok(())
    }
    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> io::Result<Vec<Entry>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let mut stored = self.committed().range(from..to).map_err(io_err)?.peekable();
        let mut pending =
            self.pending.range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Excluded(to))).peekable();
        let mut out = Vec::new();
        while out.len() < limit {
            // The smaller key next; on a tie the pending operation wins and the stored one goes.
            let stored_key = match stored.peek() {
                Some(Ok((k, _))) => Some(k.value().to_vec()),
                Some(Err(_)) => return Err(io_err(stored.next().expect("peeked").err().expect("an error"))),
                None => None,
            };
            let take_pending = match (&stored_key, pending.peek()) {
                (None, None) => break,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some(s), Some((p, _))) => p.as_slice() <= s.as_slice(),
            };
            if take_pending {
                let (k, op) = pending.next().expect("peeked");
                if stored_key.as_deref() == Some(k.as_slice()) {
                    stored.next();
                }
                if let Some(v) = op {
                    out.push((k.clone(), v.clone()));
                }
            } else {
                let (k, v) = stored.next().expect("peeked").map_err(io_err)?;
                out.push((k.value().to_vec(), v.value().to_vec()));
            }
        }
        Ok(out)
    }
    fn sync(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.read = None;
        let mut w = self.db.begin_write().map_err(io_err)?;
        w.set_durability(Durability::Immediate).map_err(io_err)?;
        {
            let mut t = w.open_table(TABLE).map_err(io_err)?;
            for (k, op) in &self.pending {
                match op {
                    Some(v) => drop(t.insert(k.as_slice(), v.as_slice()).map_err(io_err)?),
                    None => drop(t.remove(k.as_slice()).map_err(io_err)?),
                }
            }
        }
        w.commit().map_err(io_err)?;
        self.pending.clear();
        self.reopen_read()
    }
    fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redb_engine_conforms_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut e = RedbEngine::open(dir.path(), 8 << 20).unwrap();
            super::super::tests::conformance(&mut e);
            e.put(b"after", b"unsynced").unwrap();
            // Scans merge what waits for the commit with what is committed.
            e.put(b"a", b"pending").unwrap();
            e.delete(b"b").unwrap();
            e.put(b"bb", b"new").unwrap();
            let keys: Vec<Vec<u8>> = e.scan(b"", &[0xff, 0xff], 10).unwrap().into_iter().map(|(k, _)| k).collect();
            assert_eq!(keys, vec![b"".to_vec(), b"a".to_vec(), b"after".to_vec(), b"bb".to_vec(), vec![0xff, 0]]);
            assert_eq!(e.scan(b"a", b"b", 1).unwrap(), vec![(b"a".to_vec(), b"pending".to_vec())]);
        }
        // Dropped without sync: the last commit is what the next open finds.
        let e = RedbEngine::open(dir.path(), 8 << 20).unwrap();
        assert_eq!(e.get(b"b").unwrap(), Some(b"22".to_vec()));
        assert_eq!(e.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(e.get(b"after").unwrap(), None);
        assert!(e.size_on_disk() > 0);
        let busy = RedbEngine::open(dir.path(), 8 << 20).err().expect("a second open must fail");
        assert_eq!(busy.kind(), io::ErrorKind::WouldBlock, "{busy}");
    }
}
