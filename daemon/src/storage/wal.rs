//! A write-ahead log in front of any [`Engine`]: one write and one `fdatasync` make a batch
//! durable, and the engine underneath is made durable only now and then (a checkpoint).
//!
//! Why: sled's own durable path (`flush()`, which waits on `sync_file_range`, then an
//! `fdatasync` of its log) costs about twice a plain synced write, and it is paid once per
//! batch. Here a batch's puts and deletes go to the engine in memory and, encoded, to the log;
//! [`Engine::sync`] writes them to the log in one frame and fdatasyncs it.
//!
//! The log is one file, `wal`, preallocated and filled with zeros when created, so a frame
//! write changes no file size and no block allocation: the fdatasync flushes data only. When
//! the file is full, a checkpoint makes the engine durable (its own sync), and the file is
//! reused from the start under the next *segment number*. Every frame carries its segment
//! number and a checksum, so the frames of an earlier use of the file, and a frame torn by a
//! crash, end the log. The current segment number lives in `wal-seq`, replaced atomically
//! (write, fsync, rename, fsync of the directory) after each checkpoint and before the first
//! frame of the new segment.
//!
//! Recovery ([`Wal::open`]) replays the current segment's frames into the engine, in order,
//! then checkpoints. The log holds blind puts and deletes in the order they were made,
//! starting at a point the engine had already made durable (the last checkpoint), so after
//! replay every key the segment touched holds the value of its last logged operation. The
//! engine may also hold writes of a batch whose frame never became durable (an engine writes
//! its buffers when it likes: the append log does so in the middle of a batch); replay leaves
//! those where the framed batches did not touch the same keys. None of them was acknowledged
//! (a worker replies only after `sync`), but the state is then not a prefix of the writes, and
//! anything the layer above derived from its records (the node's counters) may be wrong. So
//! the first write of each batch to the engine is a marker, [`BATCH_KEY`], naming where that
//! batch's frame goes (segment, offset); the engine keeps a prefix of its own writes, so it
//! holds part of an unframed batch exactly when its marker names the place where replay found
//! no frame. Open then records [`UNLOGGED_KEY`] in the engine, durable with its checkpoint,
//! and [`Engine::holds_unlogged_writes`] says so until the layer above has counted its
//! records again and called [`Engine::forget_unlogged_writes`].
//!
//! Each checkpoint also stores its new segment number in the engine itself (key
//! [`CHECKPOINT_KEY`]) before the engine's sync. On open, an engine holding a smaller number
//! than `wal-seq` lost writes a checkpoint had made durable (sled 0.34 opens a log with a
//! corrupt block in it without an error, cutting it there): replaying the log would hide that,
//! so the database is refused as damaged (`InvalidData`) and chd rebuilds the node. An engine
//! holding exactly one more than `wal-seq` finished a checkpoint that a crash stopped before
//! `wal-seq` was replaced: the log's frames are all older than the engine's state, so none is
//! replayed (replaying them would undo part of the batch that checkpoint made durable), and
//! open's own checkpoint finishes the step. Any larger number is refused as damaged.
//!
//! Frame: `len: u32 LE | seq: u64 LE | check: first 8 bytes of blake3(seq | len | payload) |
//! payload`; `len == 0` marks the end. Payload: operations, each `1 | klen u32 | vlen u32 |
//! key | value` (put) or `2 | klen u32 | key` (delete).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::{fsio, Engine, Entry, Head, Put};

/// Size of the log file. A checkpoint comes every this many bytes of log.
pub const SEGMENT_BYTES: u64 = 8 << 20;
const HEADER: usize = 4 + 8 + 8;
/// Where a checkpoint records its segment number in the engine: above every key the node
/// layer uses (its metadata lives under `ff ff ff ff` followed by ASCII names).
pub const CHECKPOINT_KEY: &[u8] = b"\xff\xff\xff\xff\xffwal-checkpoint";
/// The first write of each batch: `seq u64 LE | offset u64 LE` of the frame that will log it.
pub const BATCH_KEY: &[u8] = b"\xff\xff\xff\xff\xffwal-batch";
/// Present while the engine may hold writes that no durable frame covers (see the module doc).
pub const UNLOGGED_KEY: &[u8] = b"\xff\xff\xff\xff\xffwal-unlogged";
const PUT: u8 = 1;
const DELETE: u8 = 2;

pub struct Wal<E> {
    inner: E,
    file: File,
    dir: PathBuf,
    /// Current segment number: only frames carrying it are replayed.
    seq: u64,
    /// Where the next frame goes.
    offset: u64,
    /// Size of the log file (at least [`SEGMENT_BYTES`]; more if one frame needed more).
    size: u64,
    /// The next frame: [`HEADER`] bytes, filled in at sync, then the operations since the
    /// last sync, encoded (so a sync writes it as it is, without copying it into a frame).
    pending: Vec<u8>,
    /// [`BATCH_KEY`] names the place of the next frame: put since the last frame or checkpoint.
    batch_marked: bool,
    /// [`UNLOGGED_KEY`] is in the engine.
    unlogged: bool,
}

fn corrupt(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

fn check(seq: u64, payload: &[u8]) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(payload);
    h.finalize().as_bytes()[..8].try_into().expect("8 bytes")
}

/// Replaces `path`'s content durably: write a temporary file, fsync, rename, fsync the dir.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let f = fsio::create(OpenOptions::new().write(true).create(true).truncate(true), &tmp)?;
    fsio::write_at(&f, data, 0)?;
    fsio::sync_all(&f)?;
    fsio::rename(&tmp, &dir.join(name))?;
    fsio::sync_dir(dir)
}

/// Grows `file` to `size` with zeros written for real (not a hole, not an unwritten extent),
/// and makes that durable, so later frame writes need no metadata update.
fn zero_fill(file: &File, from: u64, size: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < size {
        let n = (size - at).min(zeros.len() as u64) as usize;
        fsio::write_at(file, &zeros[..n], at)?;
        at += n as u64;
    }
    fsio::sync_all(file)
}

/// The operations of the frames of segment `seq` at the start of `log`, in order.
fn frames(log: &[u8], seq: u64) -> impl Iterator<Item = &[u8]> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = log.get(at..at + HEADER)?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4")) as usize;
        let frame_seq = u64::from_le_bytes(header[4..12].try_into().expect("8"));
        if len == 0 || frame_seq != seq {
            return None;
        }
        let payload = log.get(at + HEADER..at + HEADER + len)?;
        if header[12..20] != check(seq, payload) {
            return None;
        }
        at += HEADER + len;
        Some(payload)
    })
}

fn replay<E: Engine>(inner: &mut E, payload: &[u8]) -> io::Result<()> {
    let bad = || corrupt("write-ahead log: a frame with a valid checksum does not decode".into());
    let mut p = payload;
    let take = |n: usize, p: &mut &[u8]| -> io::Result<Vec<u8>> {
        if p.len() < n {
            return Err(bad());
        }
        let (a, b) = p.split_at(n);
        *p = b;
        Ok(a.to_vec())
    };
    let len = |b: Vec<u8>| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
    while !p.is_empty() {
        let tag = take(1, &mut p)?[0];
        match tag {
            PUT => {
                let klen = len(take(4, &mut p)?);
                let vlen = len(take(4, &mut p)?);
                let key = take(klen, &mut p)?;
                let value = take(vlen, &mut p)?;
                inner.put(&key, &value)?;
            }
            DELETE => {
                let klen = len(take(4, &mut p)?);
                inner.delete(&take(klen, &mut p)?)?;
            }
            _ => return Err(bad()),
        }
    }
    Ok(())
}

impl<E: Engine> Wal<E> {
    /// Opens the log in `dir` over `inner` (which holds what the last checkpoint made durable,
    /// and perhaps more), replays it, and checkpoints.
    pub fn open(inner: E, dir: &Path) -> io::Result<Wal<E>> {
        Wal::open_sized(inner, dir, SEGMENT_BYTES)
    }

    /// [`Wal::open`] with a log file of `bytes` instead of [`SEGMENT_BYTES`] (tests that
    /// checkpoint often, or rebuild the files as a crash leaves them, use a small one).
    pub fn open_sized(mut inner: E, dir: &Path, bytes: u64) -> io::Result<Wal<E>> {
        let seq_file = dir.join("wal-seq");
        let seq = match std::fs::read_to_string(&seq_file) {
            Ok(s) => Some(s.trim().parse::<u64>().map_err(|_| corrupt(format!("{} is corrupt", seq_file.display())))?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let path = dir.join("wal");
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Created whole before its name appears, so a `wal` is always fully allocated.
                let tmp = dir.join("wal.tmp");
                let f = fsio::create(OpenOptions::new().read(true).write(true).create(true).truncate(true), &tmp)?;
                zero_fill(&f, 0, bytes)?;
                fsio::rename(&tmp, &path)?;
                fsio::sync_dir(dir)?;
                f
            }
            Err(e) => return Err(e),
        };
        let size = file.metadata()?.len();
        let stored = match inner.get(CHECKPOINT_KEY)? {
            Some(v) => u64::from_le_bytes(v.try_into().map_err(|_| corrupt("wal checkpoint record".into()))?),
            None => 0,
        };
        let logged = seq.unwrap_or(0);
        if stored < logged {
            return Err(corrupt(format!(
                "the database lost writes made durable at checkpoint {logged} (it holds checkpoint {stored})"
            )));
        }
        if stored > logged + 1 {
            return Err(corrupt(format!(
                "the database holds checkpoint {stored}, beyond the write-ahead log's segment {logged}"
            )));
        }
        let marker = match inner.get(BATCH_KEY)? {
            Some(v) if v.len() == 16 => Some((
                u64::from_le_bytes(v[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(v[8..].try_into().expect("8 bytes")),
            )),
            Some(_) => return Err(corrupt("wal batch record".into())),
            None => None,
        };
        let mut unlogged = false;
        // `stored == logged + 1`: the engine finished a checkpoint whose replacement of
        // `wal-seq` was cut short. Every frame in the file is older than the engine's state,
        // so none is replayed; the checkpoint below finishes the rename.
        let seq = seq.filter(|_| stored == logged);
        if let Some(seq) = seq {
            let mut log = Vec::new();
            io::Read::read_to_end(&mut &file, &mut log)?;
            let mut end = 0;
            for payload in frames(&log, seq) {
                replay(&mut inner, payload)?;
                end += (HEADER + payload.len()) as u64;
            }
            // The last batch begun in the engine has no frame where its marker says it goes.
            if marker.is_some_and(|(s, at)| s == seq && at >= end) {
                unlogged = true;
            }
        }
        // After replay, which may have logged its removal.
        unlogged |= inner.get(UNLOGGED_KEY)?.is_some();
        if unlogged {
            // Durable with the checkpoint below, so a crash before the layer above has
            // counted again does not lose the knowledge.
            inner.put(UNLOGGED_KEY, b"1")?;
        }
        let mut wal = Wal {
            inner,
            file,
            dir: dir.to_path_buf(),
            seq: stored,
            offset: 0,
            size: size.max(bytes),
            pending: vec![0; HEADER],
            batch_marked: false,
            unlogged,
        };
        if size < bytes {
            zero_fill(&wal.file, size, bytes)?;
        }
        wal.checkpoint()?;
        Ok(wal)
    }

    /// Makes the engine durable, then starts a new segment at the start of the file.
    fn checkpoint(&mut self) -> io::Result<()> {
        self.checkpoint_or_close(false)
    }

    /// [`Wal::checkpoint`], with the engine's close instead of its sync when `close`.
    fn checkpoint_or_close(&mut self, close: bool) -> io::Result<()> {
        self.inner.put(CHECKPOINT_KEY, &(self.seq + 1).to_le_bytes())?;
        if close {
            self.inner.close()?;
        } else {
            self.inner.sync()?;
        }
        write_atomic(&self.dir, "wal-seq", (self.seq + 1).to_string().as_bytes())?;
        self.seq += 1;
        self.offset = 0;
        self.batch_marked = false;
        Ok(())
    }

    /// Puts [`BATCH_KEY`] before the first write of a batch to the engine.
    fn mark_batch(&mut self) -> io::Result<()> {
        if !self.batch_marked {
            let mut at = [0; 16];
            at[..8].copy_from_slice(&self.seq.to_le_bytes());
            at[8..].copy_from_slice(&self.offset.to_le_bytes());
            self.inner.put(BATCH_KEY, &at)?;
            self.batch_marked = true;
        }
        Ok(())
    }

    /// Adds a put to the pending frame.
    fn log_put(&mut self, key: &[u8], value: &[u8]) {
        self.pending.push(PUT);
        self.pending.extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.pending.extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.pending.extend_from_slice(key);
        self.pending.extend_from_slice(value);
    }
}

impl<E: Engine> Engine for Wal<E> {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn get_head(&self, key: &[u8]) -> io::Result<Option<super::Head>> {
        self.inner.get_head(key)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.mark_batch()?;
        self.inner.put(key, value)?;
        self.log_put(key, value);
        Ok(())
    }
    fn put_unless(&mut self, key: &[u8], value: &[u8], keep: &mut dyn FnMut(&Head) -> bool) -> io::Result<Put> {
        self.mark_batch()?;
        let done = self.inner.put_unless(key, value, keep)?;
        if let Put::Replaced(_) = done {
            self.log_put(key, value);
        }
        Ok(done)
    }
    fn delete(&mut self, key: &[u8]) -> io::Result<()> {
        self.mark_batch()?;
        self.inner.delete(key)?;
        self.pending.push(DELETE);
        self.pending.extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.pending.extend_from_slice(key);
        Ok(())
    }
    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> io::Result<Vec<Entry>> {
        self.inner.scan(from, to, limit)
    }
    fn sync(&mut self) -> io::Result<()> {
        let len = self.pending.len() - HEADER;
        if len == 0 {
            return Ok(());
        }
        let need = self.pending.len() as u64;
        if self.offset + need > self.size || self.inner.wants_sync() {
            // The engine gets every operation so far, pending ones included: the new segment
            // starts from a durable engine. Early when the engine has space to give back.
            self.checkpoint()?;
            self.pending.truncate(HEADER);
            return Ok(());
        }
        let check = check(self.seq, &self.pending[HEADER..]);
        self.pending[..4].copy_from_slice(&(len as u32).to_le_bytes());
        self.pending[4..12].copy_from_slice(&self.seq.to_le_bytes());
        self.pending[12..HEADER].copy_from_slice(&check);
        fsio::write_at(&self.file, &self.pending, self.offset)?;
        fsio::sync_data(&self.file)?;
        self.offset += need;
        self.pending.truncate(HEADER);
        self.batch_marked = false;
        Ok(())
    }
    /// A checkpoint, so that the next open has nothing to replay, then the engine's close.
    fn close(&mut self) -> io::Result<()> {
        self.checkpoint_or_close(true)?;
        self.pending.truncate(HEADER);
        Ok(())
    }
    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk() + self.size
    }
    fn wants_sync(&self) -> bool {
        self.inner.wants_sync()
    }
    fn holds_unlogged_writes(&self) -> bool {
        self.unlogged
    }
    fn forget_unlogged_writes(&mut self) -> io::Result<()> {
        if self.unlogged {
            self.delete(UNLOGGED_KEY)?;
            self.unlogged = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::FileExt;
    use std::sync::{Arc, Mutex};

    /// An engine that keeps only what its last `sync` covered when it "crashes", plus a
    /// chosen part of what came after (a real engine may have written some of it).
    #[derive(Clone, Default)]
    struct Lossy {
        durable: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
        live: BTreeMap<Vec<u8>, Vec<u8>>,
        syncs: Arc<Mutex<u32>>,
        /// What `wants_sync` answers.
        wants: bool,
    }

    impl Lossy {
        fn crash(&self) -> Lossy {
            Lossy {
                durable: self.durable.clone(),
                live: self.durable.lock().unwrap().clone(),
                syncs: self.syncs.clone(),
                wants: self.wants,
            }
        }
    }

    impl Engine for Lossy {
        fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
            Ok(self.live.get(key).cloned())
        }
        fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
            self.live.insert(key.to_vec(), value.to_vec());
            Ok(())
        }
        fn delete(&mut self, key: &[u8]) -> io::Result<()> {
            self.live.remove(key);
            Ok(())
        }
        fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> io::Result<Vec<Entry>> {
            Ok(self.live.range(from.to_vec()..to.to_vec()).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
        }
        fn sync(&mut self) -> io::Result<()> {
            *self.durable.lock().unwrap() = self.live.clone();
            *self.syncs.lock().unwrap() += 1;
            Ok(())
        }
        fn size_on_disk(&self) -> u64 {
            0
        }
        fn wants_sync(&self) -> bool {
            self.wants
        }
    }

    #[test]
    fn conforms() {
        let dir = tempfile::tempdir().unwrap();
        crate::storage::tests::conformance(&mut Wal::open(Lossy::default(), dir.path()).unwrap());
    }

    #[test]
    fn a_synced_batch_survives_a_crash_of_the_engine_and_unsynced_ones_do_not_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Lossy::default();
        let mut wal = Wal::open(engine.clone(), dir.path()).unwrap();
        let syncs = *engine.syncs.lock().unwrap();
        wal.put(b"a", b"1").unwrap();
        wal.put(b"b", b"1").unwrap();
        wal.sync().unwrap();
        wal.put(b"a", b"2").unwrap();
        wal.delete(b"b").unwrap();
        wal.put(b"c", b"3").unwrap();
        wal.sync().unwrap();
        assert_eq!(*engine.syncs.lock().unwrap(), syncs, "a batch sync must not sync the engine");
        wal.put(b"a", b"unsynced").unwrap();
        let crashed = wal.inner.crash();
        drop(wal);

        let wal = Wal::open(crashed, dir.path()).unwrap();
        assert_eq!(wal.get(b"a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(wal.get(b"b").unwrap(), None, "a logged delete was lost");
        assert_eq!(wal.get(b"c").unwrap(), Some(b"3".to_vec()));
    }

    /// A put that `keep` refused is not logged: replayed after a crash, it would replace the
    /// value that was kept (for a worker, an older version over a newer one).
    #[test]
    fn only_the_puts_put_unless_made_are_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Lossy::default();
        let mut wal = Wal::open(engine.clone(), dir.path()).unwrap();
        wal.put(b"a", b"new").unwrap();
        wal.sync().unwrap();
        let kept = wal.put_unless(b"a", b"old", &mut |h| h.as_slice() == b"new").unwrap();
        assert_eq!(kept, Put::Kept(Head::of(b"new")));
        wal.put_unless(b"b", b"made", &mut |_| true).unwrap();
        wal.sync().unwrap();
        let crashed = wal.inner.crash();
        drop(wal);
        let wal = Wal::open(crashed, dir.path()).unwrap();
        assert_eq!(wal.get(b"a").unwrap(), Some(b"new".to_vec()));
        assert_eq!(wal.get(b"b").unwrap(), Some(b"made".to_vec()));
    }

    /// An engine with space to give back (compacted files) gets its sync at the next batch,
    /// not only once the log is full; what it synced survives like any checkpoint.
    #[test]
    fn an_engine_that_wants_a_sync_gets_a_checkpoint_at_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Lossy::default();
        let mut wal = Wal::open(engine.clone(), dir.path()).unwrap();
        let syncs = *engine.syncs.lock().unwrap();
        wal.put(b"a", b"1").unwrap();
        wal.sync().unwrap();
        assert_eq!(*engine.syncs.lock().unwrap(), syncs, "no checkpoint while the engine does not ask");
        wal.inner.wants = true;
        let seq = wal.seq;
        wal.put(b"b", b"2").unwrap();
        wal.sync().unwrap();
        assert_eq!(*engine.syncs.lock().unwrap(), syncs + 1, "the engine asked for a sync");
        assert_eq!(wal.seq, seq + 1);
        let crashed = wal.inner.crash();
        drop(wal);
        let wal = Wal::open(crashed, dir.path()).unwrap();
        assert_eq!(wal.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(wal.get(b"b").unwrap(), Some(b"2".to_vec()));
    }

    #[test]
    fn checkpoints_reuse_the_file_and_old_frames_are_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(Lossy::default(), dir.path()).unwrap();
        let value = vec![7u8; 1 << 20];
        // Several times the file: each wrap checkpoints; the last value of each key wins.
        for i in 0..100u32 {
            wal.put(&(i % 5).to_be_bytes(), &[&value[..], &i.to_be_bytes()].concat()).unwrap();
            wal.sync().unwrap();
        }
        wal.delete(&0u32.to_be_bytes()).unwrap();
        wal.sync().unwrap();
        let seq = wal.seq;
        assert!(seq > 2, "no checkpoint happened");
        assert_eq!(std::fs::metadata(dir.path().join("wal")).unwrap().len(), SEGMENT_BYTES);
        let crashed = wal.inner.crash();
        drop(wal);
        let wal = Wal::open(crashed, dir.path()).unwrap();
        assert_eq!(wal.get(&0u32.to_be_bytes()).unwrap(), None, "an older frame undid a delete");
        for k in 1..5u32 {
            let got = wal.get(&k.to_be_bytes()).unwrap().unwrap();
            assert_eq!(&got[value.len()..], &(95 + k).to_be_bytes(), "key {k}");
        }
    }

    #[test]
    fn a_torn_or_altered_frame_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(Lossy::default(), dir.path()).unwrap();
        wal.put(b"a", b"1").unwrap();
        wal.sync().unwrap();
        let second = wal.offset;
        wal.put(b"b", b"2").unwrap();
        wal.sync().unwrap();
        wal.put(b"c", b"3").unwrap();
        wal.sync().unwrap();
        let crashed = wal.inner.crash();
        // Flip one byte of the second frame's payload.
        wal.file.write_all_at(&[0xaa], second + HEADER as u64 + 2).unwrap();
        drop(wal);
        let wal = Wal::open(crashed, dir.path()).unwrap();
        assert_eq!(wal.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(wal.get(b"b").unwrap(), None);
        assert_eq!(wal.get(b"c").unwrap(), None, "a frame after a bad one was replayed");
    }

    #[test]
    fn an_engine_that_lost_a_checkpoint_is_refused_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Lossy::default();
        let before = engine.durable.lock().unwrap().clone();
        let mut wal = Wal::open(engine.clone(), dir.path()).unwrap();
        wal.put(b"a", b"1").unwrap();
        wal.sync().unwrap();
        drop(wal);
        // The engine comes back as it was before the checkpoint that `open` made.
        *engine.durable.lock().unwrap() = before;
        let err = Wal::open(engine.crash(), dir.path()).err().expect("must be refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // Reopening an intact one works, again and again.
        let dir = tempfile::tempdir().unwrap();
        let engine = Lossy::default();
        for _ in 0..3 {
            let wal = Wal::open(engine.crash(), dir.path()).unwrap();
            drop(wal);
        }
    }

    /// Issue 27, defect 2: a crash after a checkpoint's engine sync and before `wal-seq` is
    /// replaced leaves the engine at the new segment and `wal-seq` at the old one. The old
    /// segment's frames are older than what the engine holds: replaying them would undo part
    /// of the batch the checkpoint made durable, leaving a state that never was.
    #[test]
    fn a_crash_between_the_checkpoint_s_engine_sync_and_wal_seq_keeps_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Lossy::default();
        let mut wal = Wal::open(engine.clone(), dir.path()).unwrap();
        wal.put(b"a", b"1").unwrap();
        wal.sync().unwrap();
        // The next batch, made durable by a checkpoint that stops after the engine's sync.
        wal.put(b"a", b"2").unwrap();
        wal.put(b"b", b"2").unwrap();
        wal.inner.put(CHECKPOINT_KEY, &(wal.seq + 1).to_le_bytes()).unwrap();
        wal.inner.sync().unwrap();
        let crashed = wal.inner.crash();
        drop(wal);

        let wal = Wal::open(crashed, dir.path()).unwrap();
        let got = (wal.get(b"a").unwrap(), wal.get(b"b").unwrap());
        let first = (Some(b"1".to_vec()), None);
        let both = (Some(b"2".to_vec()), Some(b"2".to_vec()));
        assert!(got == first || got == both, "not a prefix of the writes: {got:?}");
        drop(wal);
        // Open leaves the log and the engine agreeing: a second crash and open changes nothing.
        let wal = Wal::open(engine.crash(), dir.path()).unwrap();
        assert_eq!((wal.get(b"a").unwrap(), wal.get(b"b").unwrap()), got);
    }

    /// The engine says it may hold writes no frame covers exactly when it kept part of a batch
    /// whose frame never became durable, and keeps saying so across crashes until told to
    /// forget it.
    #[test]
    fn writes_of_an_unframed_batch_in_the_engine_are_reported_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Lossy::default();
        let mut wal = Wal::open(engine.clone(), dir.path()).unwrap();
        wal.put(b"a", b"1").unwrap();
        wal.sync().unwrap();
        wal.put(b"b", b"unframed").unwrap();
        // Killed: the engine lost what it had not written (nothing of the batch).
        let crashed = wal.inner.crash();
        drop(wal);
        assert!(!Wal::open(crashed, dir.path()).unwrap().holds_unlogged_writes(), "nothing of the batch was kept");
        let mut wal = Wal::open(engine.crash(), dir.path()).unwrap();
        wal.put(b"a", b"2").unwrap();
        wal.sync().unwrap();
        wal.put(b"c", b"unframed").unwrap();
        // Killed after the engine wrote everything it was given.
        *engine.durable.lock().unwrap() = wal.inner.live.clone();
        drop(wal);
        let wal = Wal::open(engine.crash(), dir.path()).unwrap();
        assert!(wal.holds_unlogged_writes());
        assert_eq!(wal.get(b"c").unwrap(), Some(b"unframed".to_vec()));
        drop(wal);
        let mut wal = Wal::open(engine.crash(), dir.path()).unwrap();
        assert!(wal.holds_unlogged_writes(), "forgotten by a crash");
        wal.forget_unlogged_writes().unwrap();
        wal.sync().unwrap();
        drop(wal);
        assert!(!Wal::open(engine.crash(), dir.path()).unwrap().holds_unlogged_writes());
    }

    /// An engine two checkpoints ahead of `wal-seq` does not come from any crash: refused.
    #[test]
    fn an_engine_ahead_of_the_log_by_more_than_one_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Lossy::default();
        let mut wal = Wal::open(engine.clone(), dir.path()).unwrap();
        wal.inner.put(CHECKPOINT_KEY, &(wal.seq + 2).to_le_bytes()).unwrap();
        wal.inner.sync().unwrap();
        drop(wal);
        let err = Wal::open(engine.crash(), dir.path()).err().expect("must be refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn a_frame_larger_than_the_file_is_made_durable_by_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Lossy::default();
        let mut wal = Wal::open(engine.clone(), dir.path()).unwrap();
        let big = vec![1u8; SEGMENT_BYTES as usize];
        wal.put(b"big", &big).unwrap();
        wal.sync().unwrap();
        let crashed = wal.inner.crash();
        drop(wal);
        let wal = Wal::open(crashed, dir.path()).unwrap();
        assert_eq!(wal.get(b"big").unwrap(), Some(big));
    }
}
