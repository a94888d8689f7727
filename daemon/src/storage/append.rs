//! An append-only log with an in-memory ordered index: the engine of every database created
//! since sled was replaced (databases sled created keep sled; see `worker::open_engine`).
//!
//! Why: sled 0.34 keeps a data dir about 5x the bytes stored (it reclaims a log segment only
//! once at most half of it is live, a constant, and rewrites whole leaves), and its in-memory
//! B-tree costs a quarter of a worker's CPU per write. Here a put appends one record and
//! updates one index entry; the disk holds the live records plus at most [`GARBAGE_RATIO`]
//! of garbage.
//!
//! Files: `<dir>/log/<n>`, segments numbered from 1, written in order, each at most about
//! [`SEGMENT_BYTES`]. Records are appended to a buffer, written to the newest segment when
//! the buffer fills or at [`Engine::sync`], which fdatasyncs every segment written since the
//! last sync (and the directory when files came or went). The write-ahead log in front
//! ([`super::wal`]) calls `sync` only at its checkpoints: a batch is durable through the
//! write-ahead log, and this log is its checkpointed state.
//!
//! Record: `len: u32 LE (whole record) | crc: u32 LE | tag: u8 | klen: u32 LE | key | value`.
//! `tag` is [`PUT`] or [`DELETE`] (a delete has no value). The crc32 covers the segment's
//! number and the rest of the record, so a record read from any other file (a block of a
//! deleted segment that a filesystem without data ordering shows after a crash) fails it.
//!
//! Index: every live key maps to where its value is (segment, offset, length). Reads are one
//! `pread` of the whole record (from the kernel's page cache when warm), or a copy from the
//! buffer, and check its crc and key: a damaged record is an error, never a value.
//!
//! Recovery ([`AppendLog::open_shaped`]) reads the segments in order and applies their
//! records; the first record that is torn (short, zero, or failing its crc) ends the log, and
//! nothing after it, in that segment or a later one, is applied. So the engine comes back holding a prefix
//! of its puts and deletes, in order, including everything before the last returned `sync`
//! (what the write-ahead log's replay and the node layer's counters rely on). A damaged byte
//! *before* the last sync also ends the log there, silently: the write-ahead log then finds
//! its checkpoint record missing and refuses the database as damaged. The cut is made
//! durable (that segment truncated, later ones removed) by the first `sync` after open, not
//! by `open`: a database refused as damaged is set aside exactly as it was found.
//! New records always go to a new segment, numbered above every file present. The later
//! segments are emptied (and that made durable) before the torn one is truncated: a crash in
//! between must leave the tear in place, or the later segments would be applied after it.
//! They stay as empty files, so that no segment number is ever used twice (a record of an
//! earlier segment of the same number would pass its crc) and the numbers on disk are
//! contiguous: open refuses a log with a segment missing between two others as damaged.
//!
//! Start: recovery collects the records, sorts them by key (then place in the log), keeps each
//! key's last one if it is a put, and builds the B-tree bottom-up from that, with full nodes.
//! A clean close ([`Engine::close`], when chd stops a worker) also saves the index to
//! `log/index`: the segments it describes (number, length), every entry in key order, and a
//! blake3 hash. The next open uses it instead of reading every record if it is whole and the
//! segments are exactly those, with those lengths; segments are only ever appended to,
//! removed or cut shorter, so that means the same records. The first sync removes the file
//! (it is stale once the log is written to). Records are checked on every read, so one that
//! rots after a start is caught either way. Why, measured with 1M keys on the 2-core test
//! machine (four workers of 750k records): serving again after `kill -9` took 0.7-1.4 s when
//! each record was inserted in the B-tree in turn, 0.58-0.67 s sorted; after a clean stop,
//! from saved indexes, 0.24-0.28 s.
//!
//! Order of durability: a new segment's file is created only after every segment written
//! before it (including those found at open, which a killed process may have left in the page
//! cache only) is synced with its directory entry. Recovery cannot tell a segment whose tail a
//! power cut lost at a record boundary from a whole one; this way only the newest segment can
//! have lost a tail, and a prefix is all that can come back.
//!
//! Compaction: when garbage (replaced or deleted records) exceeds [`GARBAGE_RATIO`] of the
//! live bytes, the oldest segment's live records are appended again: a walk of the index in
//! key order finds the entries that point into that segment, a slice of the walk per `put` or
//! `delete` (see [`AppendLog::maybe_compact`]), and the segment is unlinked after the next
//! `sync` once the walk has ended. A segment that comes back
//! after a crash (its unlink lost) is harmless: it is older than every copy, so the copies
//! win. Compaction runs inside `put`/`delete`, before the write-ahead log's checkpoint record,
//! so that record is always the last before a sync: a damaged copy cannot go unnoticed.
//! Delete records are never copied: the puts they hide are in the compacted segment itself or
//! in older compacted ones, and `sync` unlinks compacted segments oldest first, each unlink
//! durable before the next, so whenever a segment holding a delete is gone for good, so is
//! every older one. (Copying them, as before, made every put between two syncs compact and
//! copy the same delete records again once they were the garbage: the disk grew by a segment
//! per put until the next sync.)

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{fsio, Engine, Head, Put, HEAD};

/// A new segment is started once the current one holds this many bytes.
///
/// Why 16 MiB: each compaction walks the whole index to free one segment, so the walk's cost
/// per byte freed falls as segments grow. With 1M keys, 8 MiB segments put 25% of a worker's
/// CPU in the walk (its loads of index entries, cache misses); 16 MiB cut the workers' CPU per
/// SET from 10.6-11.1 to 8.9-9.4 µs at -c 50 -P 16 and from 23-23.5 to 17.4-18.4 µs at -c 50
/// (SET -c 50 +20%); 32 MiB gained little more (8.6-8.7 and 16.8-17 µs). The price: a
/// worker keeps one segment's buffer for compaction, and one compaction may copy up to a
/// segment of live records (the disk reserve, [`crate::worker::disk::DEFAULT_RESERVE`], is
/// that size; a compaction that still meets ENOSPC stops the worker as for a full disk).
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// The buffer is written to the segment (not synced) once it holds this many bytes.
const BUFFER_BYTES: usize = 1 << 20;
/// Compaction starts when the garbage exceeds this fraction of the live bytes. Why 0.3: a
/// record is about 1.2x its key and value (headers), and compacted segments wait for the next
/// checkpoint to be unlinked, so with 0.4 a data dir of 1M small keys measured 1.96x the
/// stored bytes after the benchmark, against a target of 2x. With 0.3 the bound is about
/// 1.6x plus the write-ahead logs; the price is more copying under random overwrites (the
/// oldest segment is then about 58% live instead of 50%).
pub const GARBAGE_RATIO: f64 = 0.3;
/// No compaction while the whole log is smaller than this many segments: not worth a rewrite.
const MIN_COMPACT_SEGMENTS: u64 = 4;
/// The index is built again with full nodes once keys added or removed since it was last built
/// pass a quarter to a half of its entries, and at least this many (see
/// [`AppendLog::maybe_rebuild_index`]).
pub const REBUILD_MIN: usize = if cfg!(test) { 16 } else { 4096 };

/// The log's sizes: [`SEGMENT_BYTES`] and [`REBUILD_MIN`] unless chd's hidden
/// `--log-segment-bytes` and `--index-rebuild-min` say otherwise. Why they can: the suites
/// that kill, cut the power under and fill the disk of whole processes (torture, power cuts)
/// keep a few hundred keys, which with the production sizes never compact a segment or
/// rebuild the index; they shrink both so that a short run does each many times, under faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub segment_bytes: u64,
    pub rebuild_min: usize,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape { segment_bytes: SEGMENT_BYTES, rebuild_min: REBUILD_MIN }
    }
}

/// Entries a compaction's walk visits at least per step. Why: each step finds its place in
/// the index again, a search from the root as costly as a lookup; one step per write was 5%
/// of a worker's CPU under pipelined writes. A step of 1024 entries takes about 50 µs.
const WALK_STEP: usize = if cfg!(test) { 8 } else { 1024 };
const HEADER: usize = 4 + 4 + 1 + 4;
/// The index [`AppendLog::close`] saves, in `log/`, and the name it is written under first.
const INDEX: &str = "index";
const INDEX_TMP: &str = "index.tmp";
/// Version 2 adds each value's head; an index of version 1 is not used (a start reads the log).
const INDEX_MAGIC: &[u8; 8] = b"chdidx\x00\x02";
/// Bytes of the blake3 hash that ends a saved index.
const INDEX_CHECK: usize = 16;
const PUT: u8 = 1;
const DELETE: u8 = 2;
/// The length of a delete record's [`Loc`] while `open` reads the log (a put's value is
/// shorter: a record's whole length fits in a u32).
const DELETED: u32 = u32::MAX;

/// Where a live key's value is, and its first bytes. 24 bytes: the index holds one per key,
/// all in memory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Loc {
    segment: u32,
    /// Offset of the value in the segment. A segment holds records up to its size limit,
    /// or one record (at most 4 GiB) that is larger, so this fits.
    at: u32,
    len: u32,
    /// For [`Engine::get_head`] without a read: 9 bytes (12 with the padding) per key, 9 MB
    /// for a worker's 750k keys, against a read of the log on every write.
    head: Head,
}

impl Loc {
    /// Length of the whole record (for the garbage accounting).
    fn record(&self, key: &[u8]) -> u64 {
        (HEADER + key.len()) as u64 + u64::from(self.len)
    }
}

/// An index key: up to [`INLINE`] bytes kept in the key itself, longer ones in an allocation
/// of their own whose first [`INLINE`] bytes are also kept inline.
///
/// Why: a worker's index holds every key it stores. With every key behind a pointer, each
/// comparison of a B-tree search was a cache miss and each key an allocation, and a worker
/// holding 750k keys took 0.5 s of CPU to start, most of it searching and touching fresh
/// memory. Keys of up to 24 bytes (20-byte user keys with the node layer's 4-byte partition)
/// need no allocation and compare without following a pointer; longer ones are compared
/// inline first, which decides almost every comparison.
///
/// Order is the keys' byte order: the inline parts (zero-padded) differ first at a byte where
/// the keys differ, or where the shorter key ends (padding 0) and the longer has a non-zero
/// byte; when they are equal the whole keys are compared.
#[derive(Clone, PartialEq, Eq)]
struct Key {
    /// The first [`INLINE`] bytes, zero-padded, as big-endian words: comparing the words
    /// compares the bytes, with no call to `memcmp`.
    head: [u64; INLINE / 8],
    len: u32,
    /// The whole key, when it is longer than [`INLINE`]. A `Box<Vec>` is one pointer wide
    /// (a `Box<[u8]>` or a `Vec` is two or three): every key in memory pays for this field.
    #[allow(clippy::box_collection)]
    long: Option<Box<Vec<u8>>>,
}

const INLINE: usize = 24;

impl Key {
    fn new(key: &[u8]) -> Key {
        let mut bytes = [0; INLINE];
        let n = key.len().min(INLINE);
        bytes[..n].copy_from_slice(&key[..n]);
        let word = |i: usize| u64::from_be_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let long = (key.len() > INLINE).then(|| Box::new(key.to_vec()));
        Key { head: [word(0), word(1), word(2)], len: key.len() as u32, long }
    }

    /// The key's bytes: borrowed when long, copied out of the words when short.
    fn bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.long {
            Some(k) => std::borrow::Cow::Borrowed(k),
            None => {
                let mut v: Vec<u8> = self.head.iter().flat_map(|w| w.to_be_bytes()).collect();
                v.truncate(self.len as usize);
                std::borrow::Cow::Owned(v)
            }
        }
    }
}

impl Ord for Key {
    /// Inlined, and the three words compared without branching on each: a B-tree search
    /// makes dozens of these per lookup, and every write of a worker looks its key up.
    #[inline]
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        let (a, b) = (&self.head, &other.head);
        match a[0].cmp(&b[0]).then(a[1].cmp(&b[1])).then(a[2].cmp(&b[2])) {
            std::cmp::Ordering::Equal => match (&self.long, &other.long) {
                // Equal words: two short keys differ only in length (a shorter one is a
                // prefix of the other, padded with zeros); a long key compares with all its
                // bytes.
                (None, None) => self.len.cmp(&other.len),
                _ => self.bytes().cmp(&other.bytes()),
            },
            unequal => unequal,
        }
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A compaction under way: segment `n`'s bytes, the last key its walk of the index visited
/// (`None` before the first), and how many entries the walk owes (see
/// [`AppendLog::compact_step`]).
struct Compaction {
    n: u32,
    data: Vec<u8>,
    after: Option<Key>,
    owed: usize,
}

struct Segment {
    file: File,
    /// Bytes written to the file.
    len: u64,
}

pub struct AppendLog {
    dir: PathBuf,
    /// [`SEGMENT_BYTES`], smaller in tests.
    segment_bytes: u64,
    index: BTreeMap<Key, Loc>,
    /// Every segment on disk that is read, including the newest (being written).
    segments: BTreeMap<u32, Segment>,
    /// The newest segment, where records go; its file is created on first write.
    active: u32,
    /// Records not yet written to `active` (they start at `segments[active].len`).
    buf: Vec<u8>,
    live_bytes: u64,
    total_bytes: u64,
    /// Segments written since the last sync.
    unsynced: Vec<u32>,
    dir_dirty: bool,
    /// Compacted segments, unlinked by the next sync.
    compacted: Vec<u32>,
    /// The compaction under way, if any (see [`AppendLog::maybe_compact`]).
    compaction: Option<Compaction>,
    /// The buffer of the last compaction, kept for the next: a fresh segment's worth each time
    /// has to be faulted in and zeroed anew, and fresh memory is slow on this kind of VM.
    spare: Vec<u8>,
    /// Left by `open` for the first sync: (segment, valid length) to truncate, and later
    /// segments to remove, all past the end of the log.
    cut: Option<(u32, u64, Vec<u32>)>,
    /// Whether `open` took the index from the file [`AppendLog::close`] saved, instead of
    /// reading every record.
    from_saved_index: bool,
    /// Whether a saved index (or the start of one) may still be in `log/`: the first sync
    /// removes it.
    index_file: bool,
    /// Keys added to or removed from the index since it was last built with full nodes, and
    /// how many of them make it build the index again.
    reshaped: usize,
    rebuild_at: usize,
    /// [`Shape::rebuild_min`].
    rebuild_min: usize,
    /// Holds the directory's lock (`flock`) for as long as the engine lives.
    _lock: File,
}

/// Test builds record the length each fsync of a segment made durable, for the power-cut tests.
#[cfg(test)]
fn note_durable(path: &Path, len: u64) {
    tests::DURABLE.with(|d| d.borrow_mut().insert(path.to_path_buf(), len));
}
#[cfg(not(test))]
fn note_durable(_: &Path, _: u64) {}

fn corrupt(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// One record parsed from a segment: tag, key, value, and where the value starts.
struct Parsed<'a> {
    tag: u8,
    key: &'a [u8],
    value: &'a [u8],
    value_at: usize,
    len: usize,
}

/// The record at the start of `b`, or `None` where the log ends (torn, zeroed or altered).
fn parse(segment: u32, b: &[u8]) -> Option<Parsed<'_>> {
    if b.len() < HEADER {
        return None;
    }
    let len = u32_at(b, 0) as usize;
    if len < HEADER || len > b.len() || crc(segment, &b[8..len]) != u32_at(b, 4) {
        return None;
    }
    let tag = b[8];
    let klen = u32_at(b, 9) as usize;
    if klen > len - HEADER || (tag != PUT && tag != DELETE) || (tag == DELETE && klen != len - HEADER) {
        return None;
    }
    let key = &b[HEADER..HEADER + klen];
    Some(Parsed { tag, key, value: &b[HEADER + klen..len], value_at: HEADER + klen, len })
}

fn crc(segment: u32, rest: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&segment.to_le_bytes());
    h.update(rest);
    h.finalize()
}

fn encode(buf: &mut Vec<u8>, segment: u32, tag: u8, key: &[u8], value: &[u8]) {
    let start = buf.len();
    let len = HEADER + key.len() + value.len();
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(tag);
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
    let crc = crc(segment, &buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn lock(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => {
                io::Error::new(io::ErrorKind::WouldBlock, format!("{} is held by another process", path.display()))
            }
            _ => e,
        });
    }
    Ok(f)
}

impl AppendLog {
    /// Opens (or creates) the log in `<dir>/log`, rebuilding the index from its records, with
    /// the sizes `shape` (the defaults but in tests). `WouldBlock` if another process holds it.
    pub fn open_shaped(dir: &Path, shape: Shape) -> io::Result<AppendLog> {
        let Shape { segment_bytes, rebuild_min } = shape;
        let dir = dir.join("log");
        // Also when `log/` exists: a worker killed between creating it and fsyncing its parent
        // left a name only the page cache holds, and every segment synced under it would go
        // with that name at a power cut.
        crate::datadir::create_dir_durable(&dir)?;
        let lock = lock(&dir.join("LOCK"))?;
        let mut numbers = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let name = entry?.file_name();
            if let Some(n) = name.to_str().and_then(|n| n.parse::<u32>().ok()) {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        // Segments go only from the oldest end (compaction) and are added at the newest: a
        // gap is a segment lost, whose deletes would let older puts come back.
        if let Some(w) = numbers.windows(2).find(|w| w[1] != w[0] + 1) {
            return Err(corrupt(format!(
                "{}: segment {} is missing (segments {} and {} are there)",
                dir.display(),
                w[0] + 1,
                w[0],
                w[1]
            )));
        }
        let mut log = AppendLog {
            dir,
            segment_bytes,
            index: BTreeMap::new(),
            reshaped: 0,
            rebuild_at: rebuild_min,
            rebuild_min,
            segments: BTreeMap::new(),
            active: numbers.last().copied().unwrap_or(0) + 1,
            buf: Vec::new(),
            live_bytes: 0,
            total_bytes: 0,
            unsynced: Vec::new(),
            dir_dirty: false,
            compacted: Vec::new(),
            compaction: None,
            spare: Vec::new(),
            cut: None,
            from_saved_index: false,
            index_file: true,
            _lock: lock,
        };
        let saved = log.load_index(&numbers);
        let scan = saved.is_none();
        if let Some((index, lens)) = saved {
            for (&n, len) in numbers.iter().zip(lens) {
                let file = OpenOptions::new().read(true).write(true).open(log.segment_path(n))?;
                log.segments.insert(n, Segment { file, len });
                log.total_bytes += len;
            }
            log.index = index;
            log.from_saved_index = true;
        }
        let mut data = Vec::new();
        let mut records: Vec<(Key, Loc)> = Vec::new();
        if scan {
            // Room for a record per 64 bytes of log, reserved up front: growing the vector by
            // doubling copied it and touched twice its memory, and fresh memory is most of a
            // start on this VM. Pages never written cost nothing; fewer, larger records only
            // leave room unused, and more, smaller ones make it grow as before.
            let mut log_bytes = 0;
            for &n in &numbers {
                log_bytes += fs::metadata(log.segment_path(n))?.len();
            }
            let _ = records.try_reserve(usize::try_from(log_bytes / 64).unwrap_or(usize::MAX));
        }
        for (i, &n) in numbers.iter().enumerate().filter(|_| scan) {
            let mut file = OpenOptions::new().read(true).write(true).open(log.segment_path(n))?;
            data.clear();
            io::Read::read_to_end(&mut file, &mut data)?;
            let valid = AppendLog::read_records(n, &data, &mut records);
            log.segments.insert(n, Segment { file, len: valid as u64 });
            log.total_bytes += valid as u64;
            if valid < data.len() {
                log.cut = Some((n, valid as u64, numbers[i + 1..].to_vec()));
                break;
            }
        }
        if scan {
            log.index = AppendLog::build_index(records);
        }
        for (k, loc) in &log.index {
            log.live_bytes += HEADER as u64 + u64::from(k.len) + u64::from(loc.len);
        }
        log.index_built();
        // A process killed before its sync left what it wrote in the page cache, where this
        // one reads it: it counts as written by this process, made durable by the next seal.
        log.unsynced = log.segments.keys().copied().collect();
        log.dir_dirty = !log.segments.is_empty();
        Ok(log)
    }

    fn segment_path(&self, n: u32) -> PathBuf {
        self.dir.join(n.to_string())
    }

    /// Appends the records at the start of segment `n`'s `data` to `records` (a delete with
    /// the length [`DELETED`]); returns how many bytes of `data` are whole records. A record's
    /// (segment, offset) is its place in the log: segments are numbered in the order they are
    /// written, and each is written front to back.
    fn read_records(n: u32, data: &[u8], records: &mut Vec<(Key, Loc)>) -> usize {
        let mut at = 0;
        while let Some(r) = parse(n, &data[at..]) {
            let (len, head) = match r.tag {
                PUT => (r.value.len() as u32, Head::of(r.value)),
                _ => (DELETED, Head::default()),
            };
            records.push((Key::new(r.key), Loc { segment: n, at: (at + r.value_at) as u32, len, head }));
            at += r.len;
        }
        at
    }

    /// The index of `records` (in log order): each key's last record, if it is a put. Sorted
    /// and built bottom-up rather than inserted one by one: a B-tree insert per record (a
    /// search and, on this VM, fresh memory for half-full nodes) was most of a start, 0.7-1.4 s
    /// with 1M keys.
    fn build_index(mut records: Vec<(Key, Loc)>) -> BTreeMap<Key, Loc> {
        // In place, and the place in the log orders the records of one key.
        records.sort_unstable_by(|a, b| a.0.cmp(&b.0).then((a.1.segment, a.1.at).cmp(&(b.1.segment, b.1.at))));
        // Kept: the last record of each key, if a put, moved to the front in order.
        let mut kept = 0;
        for i in 0..records.len() {
            let superseded = i + 1 < records.len() && records[i + 1].0 == records[i].0;
            if !superseded && records[i].1.len != DELETED {
                records.swap(kept, i);
                kept += 1;
            }
        }
        records.truncate(kept);
        // Sorted and unique: `collect` reuses the vector and builds the tree with full nodes.
        records.into_iter().collect()
    }

    /// [`Engine::put_unless`] with the index out of `self`.
    fn put_in(
        &mut self,
        index: &mut BTreeMap<Key, Loc>,
        key: &[u8],
        value: &[u8],
        keep: &mut dyn FnMut(&Head) -> bool,
    ) -> io::Result<Put> {
        use std::collections::btree_map::Entry as Slot;
        let slot = index.entry(Key::new(key));
        let old = match &slot {
            Slot::Occupied(e) => Some(*e.get()),
            Slot::Vacant(_) => None,
        };
        if let Some(old) = old.filter(|old| keep(&old.head)) {
            return Ok(Put::Kept(old.head));
        }
        let loc = self.append(PUT, key, value)?;
        self.live_bytes += loc.record(key);
        match slot {
            Slot::Occupied(mut e) => {
                let old = e.insert(loc);
                self.live_bytes -= old.record(key);
            }
            Slot::Vacant(e) => {
                e.insert(loc);
            }
        }
        if old.is_none() {
            self.reshaped += 1;
        }
        Ok(Put::Replaced(old.map(|old| old.head)))
    }

    fn index_delete(&mut self, key: &[u8]) {
        if let Some(old) = self.index.remove(&Key::new(key)) {
            self.live_bytes -= old.record(key);
            self.reshaped += 1;
            self.maybe_rebuild_index();
        }
    }

    /// Builds the index again with full nodes once the keys added to or removed from it since
    /// it was last built are a quarter to a half of it (drawn at random each time).
    ///
    /// Why: a B-tree filled by inserts keeps nodes about half full, and chd's keys arrive in
    /// order within each partition (the partition leads the key), which is the worst case:
    /// after loading 1M keys in order, the workers held 513 MiB, against 345 MiB once
    /// restarted with the same keys (an index built from sorted entries has full nodes), and
    /// every search crosses more nodes. The rebuild moves every entry once, about as much work
    /// again as the inserts it follows, in a pause of the worker's batch: 40-210 ms for 300k
    /// to 730k entries here, while loading 1M keys. A store whose key set does not change never pays
    /// it. The random share keeps a node's replicas, which see the same keys come, from
    /// pausing at once: one paused replica of three does not hold up a write (W=2).
    fn maybe_rebuild_index(&mut self) {
        if self.reshaped >= self.rebuild_at {
            // A map built from sorted, unique entries gets full nodes (as in `build_index`).
            self.index = std::mem::take(&mut self.index).into_iter().collect();
            self.index_built();
        }
    }

    /// Notes that the index was just built with full nodes, and when to build it again.
    fn index_built(&mut self) {
        use std::hash::BuildHasher;
        let quarter = self.index.len() / 4;
        let random = std::collections::hash_map::RandomState::new().hash_one(self.index.len()) as usize;
        self.reshaped = 0;
        self.rebuild_at = (quarter + random % (quarter + 1)).max(self.rebuild_min);
    }

    /// Appends a record to the buffer (starting a new segment first if the current one is
    /// full) and returns where its value is.
    fn append(&mut self, tag: u8, key: &[u8], value: &[u8]) -> io::Result<Loc> {
        let len = (HEADER + key.len() + value.len()) as u64;
        let written = self.segments.get(&self.active).map_or(0, |s| s.len);
        if written + self.buf.len() as u64 > 0 && written + self.buf.len() as u64 + len > self.segment_bytes {
            self.write_buffer()?;
            self.active += 1;
        }
        let start = self.segments.get(&self.active).map_or(0, |s| s.len) + self.buf.len() as u64;
        encode(&mut self.buf, self.active, tag, key, value);
        self.total_bytes += len;
        if self.buf.len() >= BUFFER_BYTES {
            self.write_buffer()?;
        }
        Ok(Loc {
            segment: self.active,
            at: (start + (HEADER + key.len()) as u64) as u32,
            len: value.len() as u32,
            head: Head::of(value),
        })
    }

    /// Writes the buffer to the active segment (creating its file), without syncing.
    fn write_buffer(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if !self.segments.contains_key(&self.active) {
            self.seal()?;
            let file = fsio::create(
                OpenOptions::new().read(true).write(true).create_new(true),
                &self.segment_path(self.active),
            )?;
            self.segments.insert(self.active, Segment { file, len: 0 });
            self.dir_dirty = true;
        }
        let seg = self.segments.get_mut(&self.active).expect("just inserted");
        fsio::write_at(&seg.file, &self.buf, seg.len)?;
        seg.len += self.buf.len() as u64;
        self.buf.clear();
        if self.unsynced.last() != Some(&self.active) {
            self.unsynced.push(self.active);
        }
        Ok(())
    }

    /// Makes every segment written so far durable (data, size and directory entry); done before
    /// a new segment's file is created. Why: recovery cannot tell a segment whose unsynced tail
    /// a power cut lost at a record boundary (or whose entry it lost) from a whole one, so no
    /// byte of a later segment may reach the disk before the earlier ones are whole.
    fn seal(&mut self) -> io::Result<()> {
        for &n in &self.unsynced {
            if let Some(seg) = self.segments.get(&n) {
                fsio::sync_data(&seg.file)?;
                note_durable(&self.segment_path(n), seg.len);
            }
        }
        self.unsynced.clear();
        if self.dir_dirty {
            fsio::sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// The value of `key`'s record at `loc`, read whole and checked: a record that fails its
    /// crc, or is not `key`'s, is `InvalidData` (the worker then stops and chd rebuilds the
    /// node). Why check every read: `open` checks every record, but a worker runs for months,
    /// and a block that rots or is overwritten in the meantime must never be served as a value.
    fn read(&self, key: &[u8], loc: Loc) -> io::Result<Vec<u8>> {
        let head = (HEADER + key.len()) as u64;
        let at = u64::from(loc.at);
        let start =
            at.checked_sub(head).ok_or_else(|| corrupt(format!("segment {}: no record at {at}", loc.segment)))?;
        let mut record = vec![0; head as usize + loc.len as usize];
        let written = self.segments.get(&loc.segment).map_or(0, |s| s.len);
        if loc.segment == self.active && start >= written {
            let from = (start - written) as usize;
            let n = record.len();
            record.copy_from_slice(&self.buf[from..from + n]);
        } else {
            let seg =
                self.segments.get(&loc.segment).ok_or_else(|| corrupt(format!("segment {} is gone", loc.segment)))?;
            seg.file.read_exact_at(&mut record, start)?;
        }
        match parse(loc.segment, &record) {
            Some(r) if r.tag == PUT && r.key == key && r.len == record.len() => {}
            _ => return Err(corrupt(format!("segment {}: the record at {start} is damaged", loc.segment))),
        }
        record.drain(..head as usize);
        Ok(record)
    }

    /// Compacts the oldest segment once the garbage is over its bound, a step per call (per
    /// write of `bytes`; see [`AppendLog::compact_step`]): a slice of the index is walked in
    /// key order, the live records of the segment among them are copied to the end of the log
    /// and their entries pointed at the copies, and the segment is dropped once the walk ends.
    ///
    /// Why a walk of the index rather than of the segment's records: each record copied that
    /// way had to be searched for in the index, and those searches (cache misses, about
    /// 0.7 us each among 750k keys, 1.4 copies per put at the garbage bound) were half of
    /// compaction's cost and a tenth of a worker's CPU. The walk reads the index in order and
    /// updates entries in place; the segment's records are read where the entries point.
    /// Replaced and deleted records are never looked at: delete records are dropped (see the
    /// module doc), and a live record is checked (crc, key, place) before it is copied, so
    /// damage is never copied into a record with a good crc.
    ///
    /// Why steps: a whole segment at once stalled the batch that made it; with W = R every
    /// such stall reaches the clients. One segment at a time needs at most one segment of
    /// free space (within the worker's disk reserve). A compaction part-way is harmless at
    /// any point: every copy is later in the log than its original, so the copy wins at a
    /// crash start, and the index points to one or the other. No entry can come to point into
    /// the segment behind the walk: new records go to the newest segment, never to it.
    fn maybe_compact(&mut self, bytes: usize) -> io::Result<()> {
        if self.compaction.is_none() {
            let garbage = self.total_bytes.saturating_sub(self.live_bytes);
            if self.total_bytes < MIN_COMPACT_SEGMENTS * self.segment_bytes
                || (garbage as f64) <= GARBAGE_RATIO * self.live_bytes as f64
                || self.cut.is_some()
            {
                return Ok(());
            }
            let Some((&n, seg)) = self.segments.iter().next().filter(|(&n, _)| n != self.active) else {
                return Ok(());
            };
            // Resized, not cleared: bytes already there are overwritten by the read.
            let mut data = std::mem::take(&mut self.spare);
            data.resize(seg.len as usize, 0);
            seg.file.read_exact_at(&mut data, 0)?;
            self.compaction = Some(Compaction { n, data, after: None, owed: 0 });
        }
        self.compact_step(bytes)
    }

    /// A step of the compaction under way for a write of `bytes`: the walk owes the share of
    /// the index that `bytes` is of an eighth of a segment, so that it ends before the log has
    /// grown by an eighth of the segment it frees, and walks what it owes once that is
    /// [`WALK_STEP`] entries. (With 1M keys of 100 bytes, a write adds about 50 of a worker's
    /// 750k entries, so a step comes every 20 writes or so.)
    fn compact_step(&mut self, bytes: usize) -> io::Result<()> {
        let Some(mut c) = self.compaction.take() else { return Ok(()) };
        let share = self.index.len() as u128 * bytes as u128 * 8 / u128::from(self.segment_bytes.max(1));
        c.owed = c.owed.saturating_add(usize::try_from(share).unwrap_or(usize::MAX).max(1));
        if c.owed < WALK_STEP.min(self.index.len()) {
            self.compaction = Some(c);
            return Ok(());
        }
        let step = std::mem::take(&mut c.owed);
        // Out of `self` while it is walked, so that `append` can run (as in `put_unless`).
        let mut index = std::mem::take(&mut self.index);
        let walked = self.walk(&mut index, &mut c, step);
        self.index = index;
        if !walked? {
            self.compaction = Some(c);
            return Ok(());
        }
        let n = c.n;
        self.spare = c.data;
        let seg = self.segments.remove(&n).expect("compacting a known segment");
        self.total_bytes -= seg.len;
        self.unsynced.retain(|&u| u != n);
        self.compacted.push(n);
        Ok(())
    }

    /// `step` entries of a compaction's walk of `index` (see [`AppendLog::maybe_compact`]).
    /// Returns whether the walk has reached the end of the index.
    fn walk(&mut self, index: &mut BTreeMap<Key, Loc>, c: &mut Compaction, step: usize) -> io::Result<bool> {
        use std::ops::Bound;
        let from = match c.after.take() {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut visited = 0;
        let mut last = None;
        for (k, loc) in index.range_mut((from, Bound::Unbounded)).take(step) {
            visited += 1;
            last = Some(k);
            if loc.segment != c.n {
                continue;
            }
            let bad = || corrupt(format!("segment {}: a bad record before offset {}", c.n, loc.at));
            let start = (loc.at as usize).checked_sub(HEADER + k.len as usize).ok_or_else(bad)?;
            let r = c.data.get(start..).and_then(|b| parse(c.n, b)).ok_or_else(bad)?;
            if r.tag != PUT || start + r.value_at != loc.at as usize || Key::new(r.key) != *k {
                return Err(bad());
            }
            // The same key and value: the live bytes do not change.
            *loc = self.append(PUT, r.key, r.value)?;
        }
        c.after = last.cloned();
        Ok(visited < step)
    }

    /// Writes the index to `log/index` at a clean close, for [`AppendLog::load_index`]: the
    /// segments (number, length) it describes, then every entry in key order (`klen u32 | key
    /// | segment u32 | at u32 | len u32 | head`, the head being the value's first
    /// `min(len, HEAD)` bytes), then a blake3 hash of all that. Not fsynced: it is
    /// a cache, checked whole before it is used, and every segment it describes is synced.
    fn save_index(&self) -> io::Result<()> {
        let tmp = self.dir.join(INDEX_TMP);
        let mut out = io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let mut hash = blake3::Hasher::new();
        let mut put = |b: &[u8]| -> io::Result<()> {
            hash.update(b);
            io::Write::write_all(&mut out, b)
        };
        put(INDEX_MAGIC)?;
        put(&(self.segments.len() as u32).to_le_bytes())?;
        for (&n, seg) in &self.segments {
            put(&n.to_le_bytes())?;
            put(&seg.len.to_le_bytes())?;
        }
        put(&(self.index.len() as u64).to_le_bytes())?;
        for (k, loc) in &self.index {
            put(&k.len.to_le_bytes())?;
            put(&k.bytes())?;
            put(&loc.segment.to_le_bytes())?;
            put(&loc.at.to_le_bytes())?;
            put(&loc.len.to_le_bytes())?;
            put(loc.head.as_slice())?;
        }
        io::Write::write_all(&mut out, &hash.finalize().as_bytes()[..INDEX_CHECK])?;
        io::Write::flush(&mut out)?;
        drop(out);
        fs::rename(&tmp, self.dir.join(INDEX))
    }

    /// The index saved by the last clean close, with each segment's length, if it is whole
    /// (its hash matches) and describes exactly the segments `numbers` with their current
    /// lengths. Segments are only ever appended to, removed, or cut shorter, so equal numbers
    /// and lengths mean the same records, and this index is what reading them would build.
    /// Anything else (no file, a torn or altered one, a log written since): `None`, and `open`
    /// reads every record as always.
    fn load_index(&self, numbers: &[u32]) -> Option<(BTreeMap<Key, Loc>, Vec<u64>)> {
        use io::Read;
        // Read twice from the page cache, hashed first in a small buffer, then parsed: reading
        // the whole file into memory first made a start slower (the kernel zeroing fresh
        // memory for it is most of a start).
        let mut file = File::open(self.dir.join(INDEX)).ok()?;
        let body = file.metadata().ok()?.len().checked_sub(INDEX_CHECK as u64)?;
        let mut hash = blake3::Hasher::new();
        let mut chunk = vec![0; 1 << 20];
        let mut left = body;
        while left > 0 {
            let n = chunk.len().min(usize::try_from(left).ok()?);
            file.read_exact(&mut chunk[..n]).ok()?;
            hash.update(&chunk[..n]);
            left -= n as u64;
        }
        let mut check = [0; INDEX_CHECK];
        file.read_exact(&mut check).ok()?;
        if hash.finalize().as_bytes()[..INDEX_CHECK] != check {
            return None;
        }
        drop(chunk);
        let mut input = io::BufReader::with_capacity(256 << 10, File::open(self.dir.join(INDEX)).ok()?).take(body);
        let u32_of = |input: &mut io::Take<io::BufReader<File>>| -> Option<u32> {
            let mut b = [0; 4];
            input.read_exact(&mut b).ok()?;
            Some(u32::from_le_bytes(b))
        };
        let u64_of = |input: &mut io::Take<io::BufReader<File>>| -> Option<u64> {
            let mut b = [0; 8];
            input.read_exact(&mut b).ok()?;
            Some(u64::from_le_bytes(b))
        };
        let mut magic = [0; 8];
        input.read_exact(&mut magic).ok()?;
        if &magic != INDEX_MAGIC || u32_of(&mut input)? as usize != numbers.len() {
            return None;
        }
        let mut lens = Vec::with_capacity(numbers.len());
        for &n in numbers {
            let (saved, len) = (u32_of(&mut input)?, u64_of(&mut input)?);
            let now = fs::metadata(self.segment_path(n)).ok()?.len();
            if saved != n || len != now {
                return None;
            }
            lens.push(len);
        }
        let count = u64_of(&mut input)?;
        let mut entries = Vec::with_capacity(usize::try_from(count).ok()?.min(body as usize / (4 + 12)));
        let mut key = Vec::new();
        for _ in 0..count {
            let klen = u32_of(&mut input)? as usize;
            if klen as u64 > input.limit() {
                return None;
            }
            key.resize(klen, 0);
            input.read_exact(&mut key).ok()?;
            let key = Key::new(&key);
            let (segment, at, len) = (u32_of(&mut input)?, u32_of(&mut input)?, u32_of(&mut input)?);
            let mut head = [0; HEAD];
            let head = &mut head[..(len as usize).min(HEAD)];
            input.read_exact(head).ok()?;
            let loc = Loc { segment, at, len, head: Head::of(head) };
            // Checked as `open` would find them: in key order, each inside its segment.
            let inside = numbers.binary_search(&loc.segment).ok().is_some_and(|i| {
                u64::from(loc.at) >= (HEADER + klen) as u64 && u64::from(loc.at) + u64::from(loc.len) <= lens[i]
            });
            if !inside || entries.last().is_some_and(|(last, _): &(Key, Loc)| *last >= key) {
                return None;
            }
            entries.push((key, loc));
        }
        if input.limit() != 0 {
            return None;
        }
        // From sorted entries: built bottom-up with full nodes, no search per key.
        Some((entries.into_iter().collect(), lens))
    }

    /// Makes the cut `open` found durable: the torn segment truncated, later ones emptied.
    /// The later ones stay as empty files (compaction removes them in turn, oldest first), so
    /// their numbers are never handed out again and the numbers on disk stay contiguous.
    fn apply_cut(&mut self) -> io::Result<()> {
        let Some((n, valid, later)) = self.cut.clone() else { return Ok(()) };
        // The later segments first: once `n` is truncated it no longer ends the log, and a later
        // segment still holding records would be applied after it, past the records the cut
        // dropped.
        for m in later {
            let file = OpenOptions::new().read(true).write(true).open(self.segment_path(m))?;
            fsio::set_len(&file, 0)?;
            fsio::sync_all(&file)?;
            note_durable(&self.segment_path(m), 0);
            self.segments.insert(m, Segment { file, len: 0 });
        }
        #[cfg(test)]
        if tests::CRASH_IN_CUT.with(std::cell::Cell::get) {
            return Err(io::Error::other("simulated crash between the steps of the cut"));
        }
        let seg = &self.segments[&n].file;
        fsio::set_len(seg, valid)?;
        fsio::sync_all(seg)?;
        note_durable(&self.segment_path(n), valid);
        self.cut = None;
        Ok(())
    }
}

impl Engine for AppendLog {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.index.get(&Key::new(key)).map(|&loc| self.read(key, loc)).transpose()
    }
    /// From the index: no read. The head was checked with its record when it was written or
    /// when `open` read the log (or the saved index, whose hash covers it).
    fn get_head(&self, key: &[u8]) -> io::Result<Option<Head>> {
        Ok(self.index.get(&Key::new(key)).map(|loc| loc.head))
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.put_unless(key, value, &mut |_| false).map(|_| ())
    }
    /// One search of the index: the key's entry is found, shown to `keep`, and then
    /// overwritten in place. The index is moved out of `self` meanwhile (a move of three
    /// words), so that `append`, which never touches it, can run while the entry is held.
    fn put_unless(&mut self, key: &[u8], value: &[u8], keep: &mut dyn FnMut(&Head) -> bool) -> io::Result<Put> {
        if u32::try_from(HEADER + key.len() + value.len()).is_err() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a record over 4 GiB"));
        }
        // Before the record, so that the last record before a sync is the caller's (the
        // write-ahead log's checkpoint record; see the module doc).
        self.maybe_compact(HEADER + key.len() + value.len())?;
        let mut index = std::mem::take(&mut self.index);
        let done = self.put_in(&mut index, key, value, keep);
        self.index = index;
        self.maybe_rebuild_index();
        done
    }
    fn delete(&mut self, key: &[u8]) -> io::Result<()> {
        if !self.index.contains_key(&Key::new(key)) {
            // Already absent at every point of the log that recovery could stop at since the
            // key was last deleted (or never put): no record needed.
            return Ok(());
        }
        self.maybe_compact(HEADER + key.len())?;
        self.append(DELETE, key, &[])?;
        self.index_delete(key);
        Ok(())
    }
    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> io::Result<Vec<super::Entry>> {
        if from >= to {
            return Ok(Vec::new());
        }
        self.index
            .range(Key::new(from)..Key::new(to))
            .take(limit)
            .map(|(k, &loc)| {
                let k = k.bytes().into_owned();
                let v = self.read(&k, loc)?;
                Ok((k, v))
            })
            .collect()
    }
    fn sync(&mut self) -> io::Result<()> {
        self.apply_cut()?;
        if self.index_file {
            // Stale once this log is written to, and as large as a tenth of it; removed here
            // rather than by `open`, so a database refused as damaged is set aside as it was.
            for name in [INDEX, INDEX_TMP] {
                match fsio::remove_file(&self.dir.join(name)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            self.index_file = false;
        }
        self.write_buffer()?;
        self.seal()?;
        // Oldest first, each unlink durable before the next: a segment that comes back after a
        // power cut is then never older than one that did not, which lets compaction drop
        // delete records (see the module doc).
        self.compacted.sort_unstable();
        while let Some(&n) = self.compacted.first() {
            match fsio::remove_file(&self.segment_path(n)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            fsio::sync_dir(&self.dir)?;
            self.compacted.remove(0);
        }
        Ok(())
    }
    /// Syncs, then saves the index (see [`AppendLog::save_index`]) so that the next open need
    /// not read every record. Failing to save it costs only that: the close still succeeds.
    fn close(&mut self) -> io::Result<()> {
        self.sync()?;
        if let Err(e) = self.save_index() {
            eprintln!("{}: the index was not saved ({e}); the next start reads every record", self.dir.display());
            let _ = fs::remove_file(self.dir.join(INDEX_TMP));
        }
        Ok(())
    }
    fn size_on_disk(&self) -> u64 {
        self.total_bytes
    }
    /// Compacted segments stay on disk until a sync: without an early checkpoint, the 8 MiB
    /// between two of the write-ahead log's made two or three of them wait (measured after
    /// the benchmark of 1M keys: 630-652 MiB, 1.9-1.96x the stored bytes; 556 MiB, 1.7x, with
    /// this and compaction at 30% garbage instead of 40%).
    fn wants_sync(&self) -> bool {
        !self.compacted.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::{BTreeMap, HashMap};

    thread_local! {
        /// The length of each segment (by path) that its last fsync made durable: a power cut
        /// keeps that much of the file, and perhaps nothing more.
        pub(super) static DURABLE: RefCell<HashMap<PathBuf, u64>> = RefCell::default();
        /// Makes `apply_cut` stop, as if killed, between its durable steps.
        pub(super) static CRASH_IN_CUT: Cell<bool> = const { Cell::new(false) };
    }

    /// Small segments, so that a test makes many of them.
    const SEG: u64 = 4096;

    /// Opens, waiting while the lock of the previous engine is still held: a process that
    /// another test forks inherits the lock's descriptor until it execs.
    fn open(dir: &Path) -> AppendLog {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match AppendLog::open_shaped(dir, Shape { segment_bytes: SEG, rebuild_min: REBUILD_MIN }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => return other.unwrap(),
            }
        }
    }

    /// Every key and value, after checking that each key's head (kept in the index, through
    /// writes, compaction, crashes and saved indexes) is its value's.
    fn state(e: &AppendLog) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let all: BTreeMap<Vec<u8>, Vec<u8>> = e.scan(b"", &[0xff; 8], usize::MAX).unwrap().into_iter().collect();
        for (k, v) in &all {
            assert_eq!(e.get_head(k).unwrap(), Some(Head::of(v)), "the head of {k:?}");
        }
        all
    }

    fn segment_files(dir: &Path) -> Vec<(u32, u64)> {
        let mut v: Vec<(u32, u64)> = fs::read_dir(dir.join("log"))
            .unwrap()
            .filter_map(|e| {
                let e = e.unwrap();
                let n = e.file_name().to_str()?.parse().ok()?;
                Some((n, e.metadata().unwrap().len()))
            })
            .collect();
        v.sort_unstable();
        v
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// The index's key order is the keys' byte order, whatever their lengths and bytes
    /// (zeros included: a short key's padding must not make it equal to a longer one).
    #[test]
    fn index_keys_order_like_their_bytes() {
        let mut rng = Rng(7);
        let mut keys: Vec<Vec<u8>> =
            vec![vec![], vec![0], vec![0, 0], vec![1], vec![0; 24], vec![0; 25], vec![0xff; 30]];
        for _ in 0..2000 {
            let len = [rng.below(8), 20 + rng.below(10), rng.below(60)][rng.below(3) as usize] as usize;
            // Few distinct bytes, so that long shared prefixes and zeros are common.
            keys.push((0..len).map(|_| [0u8, 1, 0xff][rng.below(3) as usize]).collect());
        }
        for a in &keys {
            let ka = Key::new(a);
            assert_eq!(&ka.bytes()[..], &a[..]);
            for b in keys.iter().take(300) {
                assert_eq!(ka.cmp(&Key::new(b)), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn conforms_persists_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut e = AppendLog::open_shaped(dir.path(), Shape::default()).unwrap();
            crate::storage::tests::conformance(&mut e);
            let busy = AppendLog::open_shaped(dir.path(), Shape::default()).err().expect("a second open must fail");
            assert_eq!(busy.kind(), io::ErrorKind::WouldBlock, "{busy}");
        }
        let e = open(dir.path());
        assert_eq!(e.get(b"b").unwrap(), Some(b"22".to_vec()));
        assert_eq!(e.get(b"c").unwrap(), None);
        assert!(e.size_on_disk() > 0);
    }

    /// Random puts, deletes, syncs and crashes of the process (the engine dropped without a
    /// sync: its buffer is lost, what it wrote stays): after each crash the engine holds the
    /// state after some operation at or after the last sync, and never anything else.
    #[test]
    fn after_a_crash_it_holds_a_prefix_of_its_writes_that_includes_every_sync() {
        for seed in 1..=4u64 {
            let dir = tempfile::tempdir().unwrap();
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut e = open(dir.path());
            let mut model = BTreeMap::new();
            // The model after each operation since the last sync (the first: at the sync).
            let mut since_sync = vec![model.clone()];
            for step in 0..6000 {
                match rng.below(100) {
                    0..=59 => {
                        let k = format!("k{}", rng.below(300)).into_bytes();
                        // Bytes that differ along the value, so that a head taken from the
                        // wrong place does not match.
                        let v: Vec<u8> = (0..rng.below(400) as usize).map(|i| (step + i) as u8).collect();
                        e.put(&k, &v).unwrap();
                        model.insert(k, v);
                    }
                    60..=84 => {
                        let k = format!("k{}", rng.below(300)).into_bytes();
                        e.delete(&k).unwrap();
                        model.remove(&k);
                    }
                    85..=95 => {
                        e.sync().unwrap();
                        since_sync.clear();
                    }
                    96 => {
                        // A clean close and open: the saved index, and exactly the model.
                        e.close().unwrap();
                        drop(e);
                        e = open(dir.path());
                        assert!(e.from_saved_index, "seed {seed} step {step}: the saved index was not used");
                        assert_eq!(state(&e), model, "seed {seed} step {step}: the saved index is not the log");
                        since_sync.clear();
                    }
                    _ => {
                        drop(e);
                        e = open(dir.path());
                        let got = state(&e);
                        let at = since_sync.iter().position(|m| *m == got);
                        assert!(at.is_some(), "seed {seed} step {step}: recovered a state that never was");
                        model = got;
                        since_sync.clear();
                    }
                }
                since_sync.push(model.clone());
                assert_eq!(e.get(b"k7").unwrap(), model.get(&b"k7"[..]).cloned());
            }
            e.sync().unwrap();
            assert_eq!(state(&e), model);
            drop(e);
            assert_eq!(state(&open(dir.path())), model, "seed {seed}: a synced state did not come back");
        }
    }

    /// Overwrites and deletes keep the files within the garbage bound, and compaction loses
    /// nothing: not a value, and not a delete (a dropped delete record must not let an older
    /// put come back).
    #[test]
    fn compaction_bounds_the_garbage_and_keeps_every_value_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = open(dir.path());
        let mut model = BTreeMap::new();
        let mut rng = Rng(42);
        let mut asked = false;
        for round in 0..40u32 {
            for i in 0..200u32 {
                let k = format!("key-{i:04}").into_bytes();
                if rng.below(4) == 0 {
                    e.delete(&k).unwrap();
                    model.remove(&k);
                } else {
                    let v = format!("{round}-{i}-{}", "x".repeat(rng.below(100) as usize)).into_bytes();
                    e.put(&k, &v).unwrap();
                    model.insert(k, v);
                }
            }
            asked |= e.wants_sync();
            e.sync().unwrap();
            assert!(!e.wants_sync(), "a sync unlinks every compacted segment");
            let on_disk: u64 = segment_files(dir.path()).iter().map(|s| s.1).sum();
            assert_eq!(on_disk, e.size_on_disk(), "round {round}");
            let bound = (e.live_bytes as f64 * (1.0 + GARBAGE_RATIO)) as u64 + 4 * SEG;
            assert!(on_disk <= bound.max(MIN_COMPACT_SEGMENTS * SEG + SEG), "round {round}: {on_disk} > {bound}");
        }
        assert!(segment_files(dir.path())[0].0 > 10, "no segment was ever compacted");
        assert!(asked, "compaction never asked for the sync that unlinks its segments");
        assert_eq!(state(&e), model);
        drop(e);
        assert_eq!(state(&open(dir.path())), model);
    }

    /// A filesystem without data ordering (ext4 `data=writeback`) may show, after a crash,
    /// blocks of a deleted file inside a newer one. Records of another segment must not pass
    /// for records of this one: an old value would be applied over a newer one.
    #[test]
    fn records_of_another_segment_do_not_pass_for_this_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = open(dir.path());
        e.put(b"k", &[1; 3000]).unwrap();
        e.sync().unwrap();
        e.put(b"k", &[2; 3000]).unwrap();
        e.sync().unwrap();
        drop(e);
        let files = segment_files(dir.path());
        assert_eq!(files.len(), 2, "{files:?}");
        let log = dir.path().join("log");
        // The next segment's file, holding the first segment's blocks.
        fs::copy(log.join(files[0].0.to_string()), log.join((files[1].0 + 1).to_string())).unwrap();
        let e = open(dir.path());
        assert_eq!(e.get(b"k").unwrap(), Some(vec![2; 3000]), "a stale record was applied");
    }

    #[test]
    fn a_torn_tail_ends_the_log_and_writes_after_it_survive_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = open(dir.path());
        for i in 0..50u32 {
            e.put(&i.to_be_bytes(), &[1; 300]).unwrap();
        }
        e.sync().unwrap();
        let synced = state(&e);
        e.put(b"late", b"not synced").unwrap();
        e.write_buffer().unwrap();
        drop(e);
        // A power cut: the last record is half there, and a later segment holds garbage.
        let files = segment_files(dir.path());
        let (last, len) = *files.last().unwrap();
        let path = dir.path().join("log").join(last.to_string());
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 3).unwrap();
        fs::write(dir.path().join("log").join((last + 1).to_string()), [0xa5; 100]).unwrap();

        let mut e = open(dir.path());
        assert_eq!(state(&e), synced);
        e.put(b"after", b"the cut").unwrap();
        e.sync().unwrap();
        drop(e);
        let e = open(dir.path());
        assert_eq!(e.get(b"after").unwrap(), Some(b"the cut".to_vec()), "a write after the cut was lost");
        assert_eq!(e.get(b"late").unwrap(), None);
        assert_eq!(state(&e).len(), synced.len() + 1);
    }

    /// A damaged byte before the last checkpoint ends the log early; the write-ahead log in
    /// front then refuses the database, and the refusal changes no file (it is set aside as
    /// it was found).
    #[test]
    fn damage_before_the_last_checkpoint_is_refused_and_left_as_it_was() {
        use crate::storage::wal::Wal;
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(open(dir.path()), dir.path()).unwrap();
            for i in 0..100u32 {
                wal.put(&i.to_be_bytes(), &[2; 200]).unwrap();
                wal.sync().unwrap();
            }
        }
        // Reopening checkpoints: everything above is now in the append log, synced.
        drop(Wal::open(open(dir.path()), dir.path()).unwrap());
        let files = segment_files(dir.path());
        assert!(files.len() > 3, "{files:?}");
        let path = dir.path().join("log").join(files[1].0.to_string());
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff], 100).unwrap();
        let before = segment_files(dir.path());
        let err = Wal::open(open(dir.path()), dir.path()).err().expect("a damaged database must be refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert_eq!(segment_files(dir.path()), before);
    }

    type State = BTreeMap<Vec<u8>, Vec<u8>>;

    /// A record damaged after `open` checked it (bit rot, a stray write) is an error on read,
    /// in the file and in the buffer alike, and never comes back as a value.
    #[test]
    fn a_record_damaged_while_the_log_is_open_is_an_error_not_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.put(b"on-disk", &[7; 300]).unwrap();
        log.put(b"neighbour", &[8; 300]).unwrap();
        log.sync().unwrap();
        log.put(b"buffered", &[9; 300]).unwrap();
        let files = segment_files(dir.path());
        let path = dir.path().join("log").join(files[0].0.to_string());
        // The value of the first record: one byte changed through another descriptor, as a
        // stray write or a rotten block would.
        OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&[0], 100).unwrap();
        let err = log.get(b"on-disk").expect_err("a damaged value must not be served");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert_eq!(log.get(b"neighbour").unwrap(), Some(vec![8; 300]));
        let err = log.scan(b"a", b"z", 10).expect_err("nor scanned");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let loc = log.index[&Key::new(b"buffered")];
        let from = loc.at as usize - log.segments[&loc.segment].len as usize;
        log.buf[from] ^= 1;
        let err = log.get(b"buffered").expect_err("a damaged buffered value must not be served");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    /// Compaction copies a live record only after checking it: a record damaged on disk
    /// while the log is open stops the compaction with an error, and is never copied into a
    /// new record whose crc would make the damage pass for a value.
    #[test]
    fn compaction_refuses_to_copy_a_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.put(b"victim", &[7; 300]).unwrap();
        log.sync().unwrap();
        let first = segment_files(dir.path())[0].0;
        let path = dir.path().join("log").join(first.to_string());
        OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&[0], 100).unwrap();
        // Overwrites of other keys, until compaction reaches the first segment.
        let mut failed = None;
        for i in 0..2000u32 {
            if let Err(e) = log.put(format!("k{}", i % 10).as_bytes(), &[1; 200]) {
                failed = Some(e);
                break;
            }
        }
        let err = failed.expect("compaction must meet the damaged record");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert_eq!(log.index[&Key::new(b"victim")].segment, first, "the damaged record was copied");
        let err = log.get(b"victim").expect_err("a damaged value must not be served");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    /// The index saved at a clean close is used only by the open right after it: a log
    /// written since (even one record), a torn or altered index, or the start of one left by
    /// a close that was cut short, are not used, and the records are read as always.
    #[test]
    fn a_saved_index_is_used_only_when_it_describes_the_log_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("log").join(INDEX);
        let mut e = open(dir.path());
        for i in 0..400u32 {
            e.put(&(i % 150).to_be_bytes(), &vec![i as u8; 50 + (i % 7) as usize * 30]).unwrap();
            if i % 3 == 0 {
                e.delete(&(i % 40).to_be_bytes()).unwrap();
            }
        }
        e.close().unwrap();
        let model = state(&e);
        drop(e);
        let saved = fs::read(&index).unwrap();

        // Unchanged: used, and removed by the first sync.
        let mut e = open(dir.path());
        assert!(e.from_saved_index);
        assert_eq!(state(&e), model);
        assert!(index.exists(), "a refused database must stay as it was found");
        e.sync().unwrap();
        assert!(!index.exists());
        // One more record, synced, then the old index put back: not used.
        e.put(b"later", b"v").unwrap();
        e.sync().unwrap();
        drop(e);
        fs::write(&index, &saved).unwrap();
        let e = open(dir.path());
        assert!(!e.from_saved_index, "an index older than the log was used");
        let mut expected = model.clone();
        expected.insert(b"later".to_vec(), b"v".to_vec());
        assert_eq!(state(&e), expected);

        // Damaged anywhere, or torn: not used.
        let mut e = e;
        e.close().unwrap();
        drop(e);
        let good = fs::read(&index).unwrap();
        for (what, bad) in [
            ("a byte changed", {
                let mut b = good.clone();
                b[good.len() / 2] ^= 1;
                b
            }),
            ("torn", good[..good.len() - 1].to_vec()),
            ("empty", Vec::new()),
        ] {
            fs::write(&index, &bad).unwrap();
            let e = open(dir.path());
            assert!(!e.from_saved_index, "{what}: used");
            assert_eq!(state(&e), expected, "{what}");
        }
        // The start of one, as a close cut short leaves it, is not read and goes.
        fs::write(dir.path().join("log").join(INDEX_TMP), &good[..100]).unwrap();
        let mut e = open(dir.path());
        assert!(!e.from_saved_index);
        e.sync().unwrap();
        assert!(!dir.path().join("log").join(INDEX_TMP).exists());
        assert_eq!(state(&e), expected);
    }

    fn disk_bytes(dir: &Path) -> u64 {
        segment_files(dir).iter().map(|s| s.1).sum()
    }

    /// The log of `dir` as a power cut could leave it, in a copy: `victim` lost every byte
    /// written since its last fsync (and its directory entry if it was never fsynced), while
    /// every other file kept all that was written to it (its blocks happened to reach the disk).
    fn power_cut(dir: &Path, victim: u32) -> tempfile::TempDir {
        let copy = tempfile::tempdir().unwrap();
        fs::create_dir(copy.path().join("log")).unwrap();
        for (n, _) in segment_files(dir) {
            let from = dir.join("log").join(n.to_string());
            let to = copy.path().join("log").join(n.to_string());
            if n != victim {
                fs::copy(&from, &to).unwrap();
            } else if let Some(len) = DURABLE.with(|d| d.borrow().get(&from).copied()) {
                fs::copy(&from, &to).unwrap();
                OpenOptions::new().write(true).open(&to).unwrap().set_len(len).unwrap();
            }
        }
        copy
    }

    /// Every state a power cut now could leave (one victim file at a time) is one of `allowed`.
    fn check_power_cuts(dir: &Path, allowed: &[State], what: &str) {
        for (n, _) in segment_files(dir) {
            let copy = power_cut(dir, n);
            let got = state(&open(copy.path()));
            assert!(
                allowed.contains(&got),
                "{what}: a power cut that lost segment {n}'s unsynced bytes left a state that never was \
                 or lost a sync ({} keys; allowed: {:?} keys)",
                got.len(),
                allowed.iter().map(BTreeMap::len).collect::<Vec<_>>()
            );
        }
    }

    /// A power cut loses unsynced data file by file: a segment written since the last sync can
    /// come back cut at a record boundary (its size update lost) or empty while a later
    /// segment's blocks reached the disk. The log must still end there, not apply the later
    /// segment past the hole.
    #[test]
    fn a_power_cut_that_keeps_a_later_segment_but_not_an_earlier_segment_s_tail_keeps_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = open(dir.path());
        for i in 0..20u32 {
            e.put(format!("old{i:02}").as_bytes(), &[1; 300]).unwrap();
        }
        e.sync().unwrap();
        let mut allowed = vec![state(&e)];
        for i in 0..40u32 {
            e.put(format!("new{i:02}").as_bytes(), &[2; 300]).unwrap();
            allowed.push(state(&e));
        }
        assert!(segment_files(dir.path()).len() > 3, "the test needs segments written after the sync");
        check_power_cuts(dir.path(), &allowed, "between two syncs");
        e.sync().unwrap();
        check_power_cuts(dir.path(), &[state(&e)], "after a sync");
    }

    /// A process killed (kill -9) after writing records without syncing leaves them in the page
    /// cache, and the next process reads them back: its `sync` must make them durable too, or a
    /// power cut after that sync returned loses them while keeping what came after.
    #[test]
    fn a_sync_makes_durable_what_a_killed_process_wrote_and_the_next_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = open(dir.path());
        for i in 0..8u32 {
            e.put(format!("old{i:02}").as_bytes(), &[1; 300]).unwrap();
        }
        e.sync().unwrap();
        e.put(b"tail", b"written, not synced").unwrap();
        e.write_buffer().unwrap();
        drop(e);
        let mut e = open(dir.path());
        assert_eq!(e.get(b"tail").unwrap(), Some(b"written, not synced".to_vec()));
        for i in 0..30u32 {
            e.put(format!("new{i:02}").as_bytes(), &[2; 300]).unwrap();
        }
        e.sync().unwrap();
        check_power_cuts(dir.path(), &[state(&e)], "after the second process's sync");
    }

    /// A crash (kill -9, or an error, then a restart) between the steps that make a cut durable
    /// must not let the records past the tear come back.
    #[test]
    fn a_crash_while_the_cut_is_made_durable_does_not_bring_back_records_past_the_tear() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = open(dir.path());
        for i in 0..8u32 {
            e.put(format!("old{i:02}").as_bytes(), &[1; 300]).unwrap();
        }
        e.sync().unwrap();
        for i in 0..30u32 {
            e.put(format!("new{i:02}").as_bytes(), &[2; 300]).unwrap();
        }
        e.write_buffer().unwrap();
        drop(e);
        // The last record of the second newest segment is torn; the newest one is whole.
        let files = segment_files(dir.path());
        let (torn, len) = files[files.len() - 2];
        let f = OpenOptions::new().write(true).open(dir.path().join("log").join(torn.to_string())).unwrap();
        f.write_all_at(&[0; 8], len - 8).unwrap();

        let mut e = open(dir.path());
        let cut = state(&e);
        assert!(e.cut.is_some());
        CRASH_IN_CUT.with(|c| c.set(true));
        let crashed = e.sync();
        CRASH_IN_CUT.with(|c| c.set(false));
        assert!(crashed.is_err());
        drop(e);
        let e = open(dir.path());
        let keys = |s: State| s.into_keys().map(|k| String::from_utf8_lossy(&k).into_owned()).collect::<Vec<_>>();
        assert_eq!(keys(state(&e)), keys(cut), "records past the tear came back after a crash during the cut");
    }

    /// Issue 27, defect 4: a segment missing between two others (lost by the filesystem, or
    /// removed by hand) used to be skipped, so an older put came back from behind a delete
    /// the missing segment held. It is damage: open refuses the log and says which is missing.
    #[test]
    fn a_missing_middle_segment_is_damage_not_a_shorter_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = open(dir.path());
        e.put(b"k", &[1; 300]).unwrap();
        for i in 0..12u32 {
            e.put(format!("filler{i:02}").as_bytes(), &[2; 300]).unwrap();
        }
        e.sync().unwrap();
        let before_delete = segment_files(dir.path()).last().unwrap().0;
        e.delete(b"k").unwrap();
        for i in 0..30u32 {
            e.put(format!("later{i:02}").as_bytes(), &[3; 300]).unwrap();
        }
        e.sync().unwrap();
        drop(e);
        let files = segment_files(dir.path());
        let holding_the_delete = files.iter().map(|f| f.0).find(|&n| n > before_delete).unwrap();
        assert!(files.last().unwrap().0 > holding_the_delete, "the test needs a segment after the delete's");
        fs::remove_file(dir.path().join("log").join(holding_the_delete.to_string())).unwrap();
        match AppendLog::open_shaped(dir.path(), Shape { segment_bytes: SEG, rebuild_min: REBUILD_MIN }) {
            Ok(e) => panic!("opened a log with segment {holding_the_delete} missing: k = {:?}", e.get(b"k").unwrap()),
            Err(err) => {
                assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
                assert!(err.to_string().contains(&format!("segment {holding_the_delete} is missing")), "{err}");
            }
        }
    }

    /// Issue 27, defect 5: the records of a segment number used before could pass for records
    /// of a new segment of that number (the crc covers the number, not the file). A cut cut
    /// short after removing the segments past the tear used to let the next open hand their
    /// numbers out again.
    #[test]
    fn segment_numbers_are_not_used_again_after_a_cut_that_was_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = open(dir.path());
        for i in 0..8u32 {
            e.put(format!("old{i:02}").as_bytes(), &[1; 300]).unwrap();
        }
        e.sync().unwrap();
        for i in 0..30u32 {
            e.put(format!("new{i:02}").as_bytes(), &[2; 300]).unwrap();
        }
        e.write_buffer().unwrap();
        drop(e);
        let files = segment_files(dir.path());
        let (torn, len) = files[files.len() - 3];
        let highest = files.last().unwrap().0;
        let f = OpenOptions::new().write(true).open(dir.path().join("log").join(torn.to_string())).unwrap();
        f.write_all_at(&[0; 8], len - 8).unwrap();
        let mut e = open(dir.path());
        CRASH_IN_CUT.with(|c| c.set(true));
        let crashed = e.sync();
        CRASH_IN_CUT.with(|c| c.set(false));
        assert!(crashed.is_err());
        drop(e);
        let mut e = open(dir.path());
        for i in 0..30u32 {
            e.put(format!("after{i:02}").as_bytes(), &[3; 300]).unwrap();
        }
        e.sync().unwrap();
        for (n, len) in segment_files(dir.path()) {
            assert!(n <= torn || n > highest || len == 0, "segment number {n} was used again ({len} bytes)");
        }
        drop(e);
        let e = open(dir.path());
        assert_eq!(e.get(b"after29").unwrap(), Some(vec![3; 300]));
    }

    /// Between two syncs (the write-ahead log's checkpoints: every 8 MiB of its log) compacted
    /// segments stay on disk. Delete records must not make every put compact, and copy, the
    /// same delete records again: the disk use between syncs stays within what was there, what
    /// was written since and the copies compaction made of live records (at most 1/0.3 bytes
    /// per byte of garbage it reclaims), plus a few segments. Before the fix: 8 MB for 72 kB.
    #[test]
    fn the_index_is_built_again_as_keys_come_and_go_and_keeps_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = open(dir.path());
        let mut model = BTreeMap::new();
        let (mut rebuilds, mut built_at) = (0, 0);
        // Rebuilt when due: no more than half of the index as it was last built may change
        // before the next rebuild. (A rebuild is seen as the count starting over.)
        let mut check = |e: &AppendLog, what: &str| {
            if e.reshaped == 0 {
                rebuilds += 1;
                built_at = e.index.len();
            }
            assert!(e.reshaped < e.rebuild_at, "not rebuilt after {what}");
            assert!(e.rebuild_at <= (built_at / 2).max(REBUILD_MIN), "{} for {built_at}", e.rebuild_at);
        };
        // In order, as chd's keys arrive within a partition: the worst case for inserts.
        for i in 0..1000u32 {
            let (k, v) = (format!("key-{i:04}").into_bytes(), i.to_be_bytes().to_vec());
            e.put(&k, &v).unwrap();
            model.insert(k, v);
            check(&e, &format!("{i} inserts"));
        }
        for i in (0..1000u32).step_by(3) {
            let k = format!("key-{i:04}").into_bytes();
            e.delete(&k).unwrap();
            model.remove(&k);
            check(&e, "deletes");
        }
        // From 16 keys to 1000 by steps of at most a half, and back down by a third.
        assert!(rebuilds >= 10, "{rebuilds} rebuilds");
        assert_eq!(state(&e), model);
        e.sync().unwrap();
        drop(e);
        assert_eq!(state(&open(dir.path())), model);
    }

    #[test]
    fn delete_records_do_not_make_every_put_rewrite_a_segment_between_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = open(dir.path());
        for i in 0..2000u32 {
            e.put(format!("key-{i:04}").as_bytes(), &[3; 100]).unwrap();
        }
        for i in (0..2000u32).filter(|i| i % 20 != 0) {
            e.delete(format!("key-{i:04}").as_bytes()).unwrap();
        }
        e.sync().unwrap();
        let synced = disk_bytes(dir.path());
        let mut written = 0;
        for i in 0..2000u32 {
            e.put(b"hot", &i.to_be_bytes().repeat(5)).unwrap();
            written += (HEADER + 3 + 20) as u64;
        }
        let on_disk = disk_bytes(dir.path());
        assert!(
            on_disk <= synced + 4 * written + 4 * SEG,
            "{on_disk} bytes on disk after {written} bytes of puts, {synced} at the last sync"
        );
    }
}
