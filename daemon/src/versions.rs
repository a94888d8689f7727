//! Write versions: one counter that only grows, also across restarts of chd.
//!
//! chd is the only writer, so a counter in memory orders all writes. To survive restarts
//! without an fsync per write, chd reserves versions in blocks: before handing out any version
//! at or above the persisted ceiling it durably raises the ceiling by [`BLOCK`]. A restarted chd
//! starts at the persisted ceiling (and above the highest version any node reports, in case the
//! file was lost), so it never reuses a version, even one a crash left half-written.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;

use crate::datadir::write_atomic;

pub const BLOCK: u64 = 1 << 20;

pub struct Versions {
    next: AtomicU64,
    ceiling: AtomicU64,
    raise: tokio::sync::Mutex<()>,
    path: PathBuf,
}

impl Versions {
    /// Opens the counter; every version it gives is above `floor` and above every version any
    /// earlier chd on this data dir gave.
    pub fn open(path: PathBuf, floor: u64) -> anyhow::Result<Versions> {
        let stored = match std::fs::read_to_string(&path) {
            Ok(t) => t.trim().parse::<u64>().with_context(|| format!("{} is corrupt", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let start = stored.max(floor) + 1;
        let ceiling = start + BLOCK;
        write_atomic(&path, ceiling.to_string().as_bytes())?;
        Ok(Versions { next: AtomicU64::new(start), ceiling: AtomicU64::new(ceiling), raise: Default::default(), path })
    }

    /// Every version below this has been handed out (or skipped): the version clock of
    /// [`crate::tombstones`] records it with the time.
    pub fn issued_below(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    pub async fn next(&self) -> anyhow::Result<u64> {
        let v = self.next.fetch_add(1, Ordering::SeqCst);
        if v < self.ceiling.load(Ordering::SeqCst) {
            return Ok(v);
        }
        let _raising = self.raise.lock().await;
        let ceiling = self.ceiling.load(Ordering::SeqCst);
        if v >= ceiling {
            let new = v + BLOCK;
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || write_atomic(&path, new.to_string().as_bytes())).await??;
            self.ceiling.store(new, Ordering::SeqCst);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn versions_grow_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("versions");
        let v = Versions::open(path.clone(), 0).unwrap();
        let mut last = 0;
        for _ in 0..(BLOCK + 10) {
            let n = v.next().await.unwrap();
            assert!(n > last);
            last = n;
        }
        drop(v);
        let v = Versions::open(path.clone(), 0).unwrap();
        assert!(v.next().await.unwrap() > last);
        // A node that saw a higher version than the file (file restored from a backup, say).
        let v = Versions::open(path, last + 5 * BLOCK).unwrap();
        assert!(v.next().await.unwrap() > last + 5 * BLOCK);
    }
}
