//! The file operations the storage stack makes durable state with: writes at an offset, length
//! changes, syncs of files and directories, creates, renames and unlinks. Everything the
//! worker's storage writes goes through here (reads do not), for two reasons:
//!
//! - One policy for a failed sync ([`sync_failed`]).
//! - Test builds can watch every such operation, in order (`tap`), and so rebuild any state a
//!   power cut could leave the files in, or make a sync fail. Outside tests each function is
//!   the plain system call.
//!
//! A failed `fsync`/`fdatasync` ("fsyncgate"): the kernel reports a writeback error once and
//! may then mark the pages it could not write clean, so a later sync succeeds and a later read,
//! by this process or the next worker, returns data that never reached the disk. A sync error
//! therefore becomes `InvalidData`, "the database cannot be trusted": the worker stops with the
//! damaged-database status, chd sets the node's database aside and rebuilds it from its peers.
//! Nothing written since the last successful sync was acknowledged, so the peers hold all of it
//! that counts.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What a failed sync becomes (see the module doc).
pub fn sync_failed(e: io::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a sync failed ({e}): data written since the last sync may be lost while reads still show it"),
    )
}

pub fn write_at(f: &File, buf: &[u8], at: u64) -> io::Result<()> {
    f.write_all_at(buf, at)?;
    #[cfg(test)]
    tap::note(|| Ok(tap::Event::Write { ino: tap::ino(f)?, at, data: buf.to_vec() }));
    Ok(())
}

pub fn set_len(f: &File, len: u64) -> io::Result<()> {
    f.set_len(len)?;
    #[cfg(test)]
    tap::note(|| Ok(tap::Event::SetLen { ino: tap::ino(f)?, len }));
    Ok(())
}

/// `fdatasync`.
pub fn sync_data(f: &File) -> io::Result<()> {
    #[cfg(test)]
    tap::before_sync()?;
    f.sync_data().map_err(sync_failed)?;
    #[cfg(test)]
    tap::note(|| Ok(tap::Event::Sync { ino: tap::ino(f)? }));
    Ok(())
}

/// `fsync`.
pub fn sync_all(f: &File) -> io::Result<()> {
    #[cfg(test)]
    tap::before_sync()?;
    f.sync_all().map_err(sync_failed)?;
    #[cfg(test)]
    tap::note(|| Ok(tap::Event::Sync { ino: tap::ino(f)? }));
    Ok(())
}

/// `fsync` of a directory: the names created, renamed or removed in it become durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = File::open(dir)?;
    #[cfg(test)]
    tap::before_sync()?;
    d.sync_all().map_err(sync_failed)?;
    #[cfg(test)]
    tap::note(|| Ok(tap::Event::SyncDir { path: dir.to_path_buf() }));
    Ok(())
}

/// Opens `path` with `opts`, which create it (its content, if it existed, is the caller's
/// to know: every caller creates a new file or truncates one).
pub fn create(opts: &OpenOptions, path: &Path) -> io::Result<File> {
    let f = opts.open(path)?;
    #[cfg(test)]
    tap::note(|| Ok(tap::Event::Create { path: path.to_path_buf(), ino: tap::ino(&f)? }));
    Ok(f)
}

pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    #[cfg(test)]
    tap::note(|| Ok(tap::Event::Rename { from: from.to_path_buf(), to: to.to_path_buf() }));
    Ok(())
}

pub fn remove_file(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)?;
    #[cfg(test)]
    tap::note(|| Ok(tap::Event::Remove { path: path.to_path_buf() }));
    Ok(())
}

/// Test builds: a record of every operation above made on this thread while a tap is set,
/// and syncs that fail on demand.
#[cfg(test)]
pub mod tap {
    use std::cell::RefCell;
    use std::io;
    use std::path::PathBuf;

    /// Files are named by inode: writes and syncs go through descriptors, not names.
    #[derive(Clone, Debug)]
    pub enum Event {
        Create { path: PathBuf, ino: u64 },
        Write { ino: u64, at: u64, data: Vec<u8> },
        SetLen { ino: u64, len: u64 },
        Sync { ino: u64 },
        SyncDir { path: PathBuf },
        Rename { from: PathBuf, to: PathBuf },
        Remove { path: PathBuf },
    }

    #[derive(Default)]
    pub struct Tap {
        pub events: Vec<Event>,
        /// Every sync fails with EIO while this is set.
        pub fail_syncs: bool,
    }

    thread_local! {
        static TAP: RefCell<Option<Tap>> = const { RefCell::new(None) };
    }

    /// Starts recording on this thread (and failing syncs if `tap` says so).
    pub fn start(tap: Tap) {
        TAP.with(|t| *t.borrow_mut() = Some(tap));
    }

    /// Stops recording; what was recorded.
    pub fn stop() -> Option<Tap> {
        TAP.with(|t| t.borrow_mut().take())
    }

    /// Events recorded so far.
    pub fn len() -> usize {
        TAP.with(|t| t.borrow().as_ref().map_or(0, |t| t.events.len()))
    }

    pub fn ino(f: &std::fs::File) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(f.metadata()?.ino())
    }

    pub(super) fn note(event: impl FnOnce() -> io::Result<Event>) {
        TAP.with(|t| {
            if let Some(t) = t.borrow_mut().as_mut() {
                t.events.push(event().expect("fstat of a file just written"));
            }
        })
    }

    pub(super) fn before_sync() -> io::Result<()> {
        match TAP.with(|t| t.borrow().as_ref().is_some_and(|t| t.fail_syncs)) {
            true => Err(super::sync_failed(io::Error::from_raw_os_error(libc::EIO))),
            false => Ok(()),
        }
    }
}
