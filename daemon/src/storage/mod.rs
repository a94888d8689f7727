//! The storage seam: a worker keeps its records in an [`Engine`], an ordered byte map that can
//! be made durable on demand.
//!
//! The trait is deliberately narrow (get, put, delete, ordered scan, sync) so that the engine
//! can be replaced (sled is unmaintained; see NOTES) without touching anything above it: new
//! databases use [`append::AppendLog`], databases sled created keep [`sled::SledEngine`]. The
//! record logic (versions, tombstones, counters) lives in [`crate::worker::node`] and is shared
//! by every engine. One conformance suite ([`tests`]) runs against each engine.

pub mod append;
#[cfg(feature = "fjall")]
pub mod fjall;
pub mod fsio;
#[cfg(test)]
pub mod memory;
#[cfg(test)]
mod model;
#[cfg(feature = "redb")]
pub mod redb;
#[cfg(test)]
pub mod sim;
pub mod sled;
pub mod wal;

use std::io;

pub type Entry = (Vec<u8>, Vec<u8>);

/// Bytes of a value that [`Engine::get_head`] returns: the node layer's record header (a
/// version and a tag), which every write reads to keep the newest version.
pub const HEAD: usize = 9;

/// The first [`HEAD`] bytes of a value (all of it when shorter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    bytes: [u8; HEAD],
    len: u8,
}

impl Head {
    pub fn of(value: &[u8]) -> Head {
        let len = value.len().min(HEAD);
        let mut bytes = [0; HEAD];
        bytes[..len].copy_from_slice(&value[..len]);
        Head { bytes, len: len as u8 }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// What [`Engine::put_unless`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// The value was put. The head of the value it replaced, if the key had one.
    Replaced(Option<Head>),
    /// The stored value stays, as asked; this is its head. Nothing was written.
    Kept(Head),
}

pub trait Engine: Send {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>>;
    /// The [`Head`] of `key`'s value. An engine that keeps heads in memory answers without
    /// reading the value: every write of a worker asks for the record it replaces, and reading
    /// that record from the log was a third of a worker's CPU under pipelined writes.
    fn get_head(&self, key: &[u8]) -> io::Result<Option<Head>> {
        Ok(self.get(key)?.map(|v| Head::of(&v)))
    }
    /// Inserts or overwrites. Not durable until [`Engine::sync`] returns.
    fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()>;
    /// [`Engine::put`], unless `keep`, shown the [`Head`] of the stored value, says to keep
    /// that one. An engine that keeps heads in its index finds the key once: every write of a
    /// worker compares its version with the stored one, and `get_head` then `put` searched the
    /// append log's index twice (about 0.7 us each among 750k keys, mostly cache misses).
    fn put_unless(&mut self, key: &[u8], value: &[u8], keep: &mut dyn FnMut(&Head) -> bool) -> io::Result<Put> {
        let old = self.get_head(key)?;
        match old {
            Some(head) if keep(&head) => Ok(Put::Kept(head)),
            _ => self.put(key, value).map(|()| Put::Replaced(old)),
        }
    }
    fn delete(&mut self, key: &[u8]) -> io::Result<()>;
    /// Entries with `from <= key < to`, ascending; at most `limit` of them.
    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> io::Result<Vec<Entry>>;
    /// Makes every earlier put and delete survive a crash of the process and of the machine.
    fn sync(&mut self) -> io::Result<()>;
    /// A clean shutdown: makes everything durable, as [`Engine::sync`] does, and may save
    /// what makes the next open faster. Nothing is written to the engine afterwards.
    fn close(&mut self) -> io::Result<()> {
        self.sync()
    }
    /// Bytes the engine occupies on disk (an estimate is fine).
    fn size_on_disk(&self) -> u64;
    /// Whether the engine has disk space to give back that only its [`Engine::sync`] frees
    /// (compacted files): the write-ahead log in front then checkpoints at its next sync
    /// instead of waiting until its own file is full.
    fn wants_sync(&self) -> bool {
        false
    }
    /// Whether the engine may hold writes of a batch that never became durable mixed with
    /// older state, so that it is not a prefix of its writes (see [`wal`]): whatever the layer
    /// above derived from its records (counters) must then be counted again. Stays true, across
    /// crashes too, until [`Engine::forget_unlogged_writes`] and the next sync.
    fn holds_unlogged_writes(&self) -> bool {
        false
    }
    /// The layer above has counted again: clears [`Engine::holds_unlogged_writes`], durably
    /// at the next sync.
    fn forget_unlogged_writes(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Engine for Box<dyn Engine> {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        (**self).get(key)
    }
    fn get_head(&self, key: &[u8]) -> io::Result<Option<Head>> {
        (**self).get_head(key)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        (**self).put(key, value)
    }
    fn put_unless(&mut self, key: &[u8], value: &[u8], keep: &mut dyn FnMut(&Head) -> bool) -> io::Result<Put> {
        (**self).put_unless(key, value, keep)
    }
    fn delete(&mut self, key: &[u8]) -> io::Result<()> {
        (**self).delete(key)
    }
    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> io::Result<Vec<Entry>> {
        (**self).scan(from, to, limit)
    }
    fn sync(&mut self) -> io::Result<()> {
        (**self).sync()
    }
    fn close(&mut self) -> io::Result<()> {
        (**self).close()
    }
    fn size_on_disk(&self) -> u64 {
        (**self).size_on_disk()
    }
    fn wants_sync(&self) -> bool {
        (**self).wants_sync()
    }
    fn holds_unlogged_writes(&self) -> bool {
        (**self).holds_unlogged_writes()
    }
    fn forget_unlogged_writes(&mut self) -> io::Result<()> {
        (**self).forget_unlogged_writes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The conformance suite every engine passes.
    use super::*;

    pub fn conformance(e: &mut dyn Engine) {
        assert_eq!(e.get(b"a").unwrap(), None);
        e.put(b"b", b"2").unwrap();
        e.put(b"a", b"1").unwrap();
        e.put(b"c", b"3").unwrap();
        e.put(b"b", b"22").unwrap();
        assert_eq!(e.get(b"b").unwrap(), Some(b"22".to_vec()));
        e.put(b"long", b"0123456789ab").unwrap();
        assert_eq!(e.get_head(b"long").unwrap().unwrap().as_slice(), b"012345678");
        assert_eq!(e.get_head(b"b").unwrap().unwrap().as_slice(), b"22");
        assert_eq!(e.get_head(b"never").unwrap(), None);
        // put_unless: shown the stored head, if any; keeps or replaces as told.
        let mut shown = Vec::new();
        let mut keep = |h: &Head| {
            shown.push(h.as_slice().to_vec());
            h.as_slice() == b"22"
        };
        assert_eq!(e.put_unless(b"b", b"kept?", &mut keep).unwrap(), Put::Kept(Head::of(b"22")));
        assert_eq!(e.put_unless(b"a", b"11", &mut keep).unwrap(), Put::Replaced(Some(Head::of(b"1"))));
        assert_eq!(e.put_unless(b"new", b"n", &mut keep).unwrap(), Put::Replaced(None));
        assert_eq!(shown, vec![b"22".to_vec(), b"1".to_vec()], "an absent key is not shown");
        assert_eq!(e.get(b"b").unwrap(), Some(b"22".to_vec()));
        assert_eq!(e.get(b"a").unwrap(), Some(b"11".to_vec()));
        assert_eq!(e.get_head(b"new").unwrap(), Some(Head::of(b"n")));
        e.put(b"a", b"1").unwrap();
        e.delete(b"new").unwrap();
        e.delete(b"long").unwrap();
        e.delete(b"c").unwrap();
        e.delete(b"never").unwrap();
        assert_eq!(e.get(b"c").unwrap(), None);
        e.put(&[0xff, 0], b"high").unwrap();
        e.put(b"", b"empty key").unwrap();
        e.sync().unwrap();
        let all = e.scan(b"", &[0xff, 0xff], usize::MAX).unwrap();
        let keys: Vec<&[u8]> = all.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, vec![&b""[..], b"a", b"b", &[0xff, 0]]);
        assert_eq!(e.scan(b"a", b"b", 10).unwrap(), vec![(b"a".to_vec(), b"1".to_vec())]);
        assert_eq!(e.scan(b"", &[0xff, 0xff], 2).unwrap().len(), 2);
        assert!(e.scan(b"b", b"b", 10).unwrap().is_empty());
    }

    #[test]
    fn memory_engine_conforms() {
        conformance(&mut memory::MemoryEngine::default());
    }

    #[test]
    fn sled_engine_conforms_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut e = sled::SledEngine::open_waiting(dir.path());
            conformance(&mut e);
        }
        let e = sled::SledEngine::open_waiting(dir.path());
        assert_eq!(e.get(b"b").unwrap(), Some(b"22".to_vec()));
        assert!(e.size_on_disk() > 0);
        // A second open while the first holds the lock is "busy", not "damaged": the worker
        // waits for it instead of having the database moved aside.
        let busy = sled::SledEngine::open(dir.path()).err().expect("second open must fail");
        assert_eq!(busy.kind(), std::io::ErrorKind::WouldBlock, "{busy}");
    }

    #[test]
    fn sled_engine_keeps_values_large_enough_for_blob_files() {
        let dir = tempfile::tempdir().unwrap();
        let big = |i: u8| vec![i; (1 << 20) + usize::from(i)];
        {
            let mut e = sled::SledEngine::open(dir.path()).unwrap();
            e.put(b"one", &big(1)).unwrap();
            e.sync().unwrap();
            e.put(b"two", &big(2)).unwrap();
            e.put(b"one", &big(3)).unwrap();
            e.sync().unwrap();
        }
        assert!(std::fs::read_dir(dir.path().join("blobs")).unwrap().count() > 0, "sled changed its layout");
        let e = sled::SledEngine::open_waiting(dir.path());
        assert_eq!(e.get(b"one").unwrap(), Some(big(3)));
        assert_eq!(e.get(b"two").unwrap(), Some(big(2)));
    }
}
