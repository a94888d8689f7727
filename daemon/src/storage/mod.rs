//! The storage seam: a worker keeps its records in an [`Engine`], an ordered byte map that can
//! be made durable on demand.
//!
//! The trait is deliberately narrow (get, put, delete, ordered scan, sync) so that the engine
//! can be replaced (sled is unmaintained; see NOTES) without touching anything above it: new
//! databases use [`append::AppendLog`], databases sled created keep [`sled::SledEngine`]. The
//! record logic (versions, tombstones, counters) lives in [`crate::worker::node`] and is shared
//! by every engine. One conformance suite ([`tests`]) runs against each engine.

pub mod append;
#[cfg(test)]
pub mod memory;
pub mod sled;
pub mod wal;

use std::io;

pub type Entry = (Vec<u8>, Vec<u8>);

pub trait Engine: Send {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>>;
    /// Inserts or overwrites. Not durable until [`Engine::sync`] returns.
    fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()>;
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
}

impl Engine for Box<dyn Engine> {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        (**self).get(key)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        (**self).put(key, value)
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
