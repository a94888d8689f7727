//! Values too large for the engine live in their own files, `<node dir>/values/<seq>`; the
//! engine then holds a small pointer record instead of the value.
//!
//! Why: sled 0.34 writes any *page* (a whole leaf of up to ~17 records when it consolidates,
//! not just one value) serialized over `segment_size / 4 - 52` bytes (131,020 with the default
//! 512 KiB segments) to a file `blobs/<lsn>`, never deletes blobs of replaced pages (the data
//! dir grew to 3.6 GB in 60 s of torture), and may unlink a replaced page's blob before the
//! replacing log entry is fdatasynced (a power cut can lose an acknowledged value). Measured:
//! 400 keys overwritten with 8 KiB values already made blob files; 7,000-byte values did not.
//! So a record stays inline only when key + value is at most [`INLINE_MAX`] (4 KiB: a full
//! leaf of such records is about half the limit). Only leaves of many keys over ~7 KiB each
//! can still reach sled's blob path; `SledEngine::sync` keeps syncing blobs for that case.
//!
//! Invariants:
//! - A value file is written and fdatasynced, and the `values/` directory fsynced, before its
//!   record is put ([`ValueFiles::write`]): an engine may write its buffers to disk whenever it
//!   likes (the append log does so in the middle of a batch), and any byte written may reach
//!   the disk before a power cut. So a pointer that reaches the disk never names a missing or
//!   partly written file.
//! - A file a record stops pointing to (overwrite, delete, dropped partition) is unlinked only
//!   after the engine's sync has returned ([`ValueFiles::remove_replaced`]): until then the
//!   durable state may still point to it.
//! - Names are a per-node sequence number, never reused while a file of that name exists:
//!   each open starts above every file present (referenced or not). Names are not derived from
//!   the record's version: a partition dropped and migrated back in one batch stores the same
//!   (key, version) again while the old file still waits for its unlink.
//! - A crash leaves orphans (written files no durable record points to); [`Node::open`]
//!   removes them, since it reads every record anyway.
//! - A pointer carries the value's length and blake3 hash: a missing, short, long or altered
//!   file reads as `InvalidData` (a damaged database), never as a wrong value.
//!
//! [`Node::open`]: super::node::Node::open

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use chd_data::Record;

use crate::storage::fsio;

/// A record is stored inline (in the engine) when its key plus value is at most this long.
pub const INLINE_MAX: usize = 4096;

/// The stored form's tag for a value kept in a file (0 and 1 are [`Record::encode`]'s
/// tombstone and inline value).
const TAG_FILE: u8 = 2;
/// version (8), tag (1), seq (8), length (8), blake3 (32).
const POINTER_LEN: usize = 57;

pub fn is_inline(key: &[u8], record: &Record) -> bool {
    record.value.as_ref().is_none_or(|v| key.len() + v.len() <= INLINE_MAX)
}

/// Where a value lives and what it must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueRef {
    pub seq: u64,
    pub len: u64,
    pub hash: [u8; 32],
}

/// A record as the engine holds it.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// [`Record::encode`]'s form: a tombstone or an inline value (also every record written
    /// before value files existed).
    Inline(Record),
    File {
        version: u64,
        value: ValueRef,
    },
}

impl Stored {
    pub fn decode(bytes: &[u8]) -> Option<Stored> {
        if bytes.get(8) != Some(&TAG_FILE) {
            return Record::decode(bytes).map(Stored::Inline);
        }
        if bytes.len() != POINTER_LEN {
            return None;
        }
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let hash = bytes[25..57].try_into().expect("32 bytes");
        Some(Stored::File { version: u64_at(0), value: ValueRef { seq: u64_at(9), len: u64_at(17), hash } })
    }

    pub fn encode_pointer(version: u64, value: &ValueRef) -> Vec<u8> {
        let mut out = Vec::with_capacity(POINTER_LEN);
        out.extend_from_slice(&version.to_be_bytes());
        out.push(TAG_FILE);
        out.extend_from_slice(&value.seq.to_be_bytes());
        out.extend_from_slice(&value.len.to_be_bytes());
        out.extend_from_slice(&value.hash);
        out
    }

    pub fn version(&self) -> u64 {
        match self {
            Stored::Inline(r) => r.version,
            Stored::File { version, .. } => *version,
        }
    }

    pub fn is_tombstone(&self) -> bool {
        matches!(self, Stored::Inline(r) if r.is_tombstone())
    }

    pub fn value_len(&self) -> u64 {
        match self {
            Stored::Inline(r) => r.value.as_ref().map_or(0, |v| v.len() as u64),
            Stored::File { value, .. } => value.len,
        }
    }

    pub fn file(&self) -> Option<ValueRef> {
        match self {
            Stored::Inline(_) => None,
            Stored::File { value, .. } => Some(*value),
        }
    }
}

/// What a write needs to know of the record it replaces, from the first
/// [`crate::storage::HEAD`] bytes of its stored form (which the engine may keep in memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u64,
    tag: u8,
}

impl Header {
    pub fn parse(head: &[u8]) -> Option<Header> {
        let version = u64::from_be_bytes(head.get(..8)?.try_into().ok()?);
        let tag = *head.get(8)?;
        (tag <= TAG_FILE).then_some(Header { version, tag })
    }

    pub fn is_tombstone(&self) -> bool {
        self.tag == 0
    }

    /// Whether the value is in a file of its own (the record is then a [`Stored::File`]).
    pub fn in_file(&self) -> bool {
        self.tag == TAG_FILE
    }
}

fn damaged(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn name(seq: u64) -> String {
    format!("{seq:016x}")
}

fn parse_name(name: &str) -> Option<u64> {
    (name.len() == 16).then(|| u64::from_str_radix(name, 16).ok()).flatten()
}

/// The `values/` directory of one node.
pub struct ValueFiles {
    dir: PathBuf,
    next_seq: u64,
    /// Bytes of value files on disk, including those waiting to be unlinked.
    bytes: u64,
    /// Files to unlink once the engine's next sync has returned: (seq, length).
    replaced: Vec<(u64, u64)>,
    /// The files found at open, until [`ValueFiles::remove_orphans`] settles them.
    found: Vec<(u64, u64)>,
}

impl ValueFiles {
    /// Opens (creating it durably if need be) `<node_dir>/values`.
    pub fn open(node_dir: &Path) -> io::Result<ValueFiles> {
        let dir = node_dir.join("values");
        if let Err(e) = fs::create_dir(&dir) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e);
            }
        } else {
            File::open(node_dir)?.sync_all()?;
        }
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            // Anything not named by us is not ours to judge or remove.
            let Some(seq) = entry.file_name().to_str().and_then(parse_name) else { continue };
            found.push((seq, entry.metadata()?.len()));
        }
        let next_seq = found.iter().map(|&(s, _)| s + 1).max().unwrap_or(0);
        Ok(ValueFiles { dir, next_seq, bytes: 0, replaced: Vec::new(), found })
    }

    /// Removes the files found at open that no record points to (a crash's leftovers), and
    /// checks that every file a record points to is there with its length.
    pub fn remove_orphans(&mut self, referenced: &HashSet<u64>, lengths: impl Fn(u64) -> u64) -> io::Result<()> {
        let mut removed = false;
        let mut present = HashSet::with_capacity(referenced.len());
        for (seq, len) in std::mem::take(&mut self.found) {
            if referenced.contains(&seq) {
                if len != lengths(seq) {
                    return Err(damaged(format!("value file {} has {len} bytes, not {}", name(seq), lengths(seq))));
                }
                self.bytes += len;
                present.insert(seq);
            } else {
                fsio::remove_file(&self.dir.join(name(seq)))?;
                removed = true;
            }
        }
        if let Some(missing) = referenced.iter().find(|s| !present.contains(s)) {
            return Err(damaged(format!("value file {} is missing", name(*missing))));
        }
        if removed {
            fsio::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Writes `value` to a new file and makes it durable, name included: a pointer to it may
    /// reach the disk with any later write of the engine.
    pub fn write(&mut self, value: &[u8]) -> io::Result<ValueRef> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let f = fsio::create(OpenOptions::new().write(true).create_new(true), &self.dir.join(name(seq)))?;
        self.bytes += value.len() as u64;
        fsio::write_at(&f, value, 0)?;
        fsio::sync_data(&f)?;
        fsio::sync_dir(&self.dir)?;
        Ok(ValueRef { seq, len: value.len() as u64, hash: *blake3::hash(value).as_bytes() })
    }

    /// The value `r` points to, checked against its length and hash.
    pub fn read(&self, r: &ValueRef) -> io::Result<Vec<u8>> {
        let what = |e: &dyn std::fmt::Display| damaged(format!("value file {}: {e}", name(r.seq)));
        let f = File::open(self.dir.join(name(r.seq))).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => what(&e),
            _ => e,
        })?;
        let mut value = Vec::with_capacity(r.len as usize);
        // One byte more than expected tells a long file from a right one.
        f.take(r.len + 1).read_to_end(&mut value)?;
        if value.len() as u64 != r.len {
            return Err(what(&format!("{} bytes, not {}", value.len(), r.len)));
        }
        if blake3::hash(&value).as_bytes() != &r.hash {
            return Err(what(&"content does not match its hash"));
        }
        Ok(value)
    }

    /// Unlinks `r` after the engine's next sync.
    pub fn replace_later(&mut self, r: &ValueRef) {
        self.replaced.push((r.seq, r.len));
    }

    /// After the engine's sync: unlinks the files no durable record points to any more. (The
    /// unlinks need no fsync: a file that comes back after a crash is an orphan.)
    pub fn remove_replaced(&mut self) -> io::Result<()> {
        for (seq, len) in std::mem::take(&mut self.replaced) {
            match fsio::remove_file(&self.dir.join(name(seq))) {
                Ok(()) => self.bytes -= len,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_forms_round_trip_and_old_records_still_decode() {
        let r = ValueRef { seq: 0x0102, len: 1 << 20, hash: [7; 32] };
        let p = Stored::encode_pointer(42, &r);
        assert_eq!(p.len(), POINTER_LEN);
        assert_eq!(Stored::decode(&p), Some(Stored::File { version: 42, value: r }));
        assert_eq!(Record::decode_version(&p), Some(42), "versions and digests read the version alone");
        for old in [Record { version: 9, value: Some(b"v".to_vec()) }, Record { version: 3, value: None }] {
            assert_eq!(Stored::decode(&old.encode()), Some(Stored::Inline(old)));
        }
        assert_eq!(Stored::decode(&p[..POINTER_LEN - 1]), None);
        assert_eq!(Stored::decode(&[p.as_slice(), &[0]].concat()), None);
    }

    #[test]
    fn inline_limit_counts_the_key() {
        let rec = |n: usize| Record { version: 1, value: Some(vec![0; n]) };
        assert!(is_inline(b"k", &rec(INLINE_MAX - 1)));
        assert!(!is_inline(b"k", &rec(INLINE_MAX)));
        assert!(is_inline(&[0; 60_000], &Record { version: 1, value: None }));
        assert!(!is_inline(&[0; INLINE_MAX], &rec(1)));
    }
}
