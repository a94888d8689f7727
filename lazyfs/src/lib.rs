//! chd-lazyfs: a FUSE filesystem that forgets everything not fsynced when the power is cut.
//!
//! A test tool in the spirit of Jepsen's LazyFS. It keeps its own "page cache" in memory and a
//! simulated disk in a backing directory, and on [`LazyFs::power_cut`] kills every process
//! using the mount, throws the page cache away and mounts again, showing what the disk holds.
//!
//! # What is durable (the worst case a Linux filesystem allows)
//! - A file's bytes and size: after `fsync` or `fdatasync` of that file (or a write through a
//!   descriptor opened with `O_SYNC`/`O_DSYNC`). Writes, truncates and `fallocate` before that
//!   are lost at a cut. `sync_file_range`, `sync(2)` and `syncfs(2)` make nothing durable.
//! - A name (create, mkdir, symlink, link, unlink, rmdir, rename): after `fsync` of the
//!   directory that holds it. A file that was fsynced but whose directory was not is gone after
//!   a cut, its data with it; a rename whose directories were not fsynced is undone. A rename
//!   between two directories is durable on each side when that side is fsynced, so after a cut
//!   the file may show under both names or neither (strict POSIX; ext4 would journal the rename
//!   whole). Of a directory left under two names that way, only the first one found is kept.
//! - A newly named file or directory whose own contents were never synced comes back empty.
//!
//! Deliberate simplifications, none of which weakens the rules above:
//! - mode, owner and times are made durable with the name (at `fsync` of the parent), not by
//!   `fsync` of the inode itself; a `chmod` followed only by `fsync` of the file is lost;
//! - unmounting is a cut without the killing: what was not synced is not kept;
//! - no extended attributes, devices, fifos or sockets (chd keeps none in its data directory);
//!   `RENAME_EXCHANGE` is refused; locks (`flock`, `fcntl`) are kept by the kernel, per mount.
//!
//! # Design
//! The backing directory is the disk, in the format [`store`] describes (`data/<ino>` holds a
//! file's synced bytes, `dirs/<ino>` a directory's synced listing); it is not a copy of the
//! tree. The mount serves an in-memory namespace loaded from it, with a page overlay per file
//! ([`overlay`]). Only `fsync` and `fsyncdir` write the store, so after a cut (which first stops
//! all writers, then discards the memory) loading the store again gives exactly the durable
//! state. The store is itself kept durable on the real disk, so killing this process (even
//! with SIGKILL) is also a power cut, and the next mount shows what the disk has.
//!
//! # Use
//! ```no_run
//! let fs = chd_lazyfs::LazyFs::mount("/tmp/disk", "/tmp/mnt").unwrap();
//! // ... start processes that use /tmp/mnt ...
//! let report = fs.power_cut().unwrap(); // they are SIGKILLed, unsynced state is gone
//! println!("killed {:?}, lost {} bytes", report.killed, report.unsynced_bytes);
//! fs.unmount().unwrap();
//! ```
//! The `chd-lazyfs` binary does the same for a harness in another process: it cuts on
//! SIGUSR1, or on a `cut` line sent to its control socket ([`control`]).

pub mod control;
mod fs;
pub mod overlay;
pub mod procs;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use fs::{Fuse, Volatile};
pub use store::StoreError;

/// How long a cut waits for killed processes to exit, and for the old session to end.
const CUT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("backing store: {0}")]
    Store(#[from] StoreError),
    #[error("mounting on {path}: {source}")]
    Mount { path: PathBuf, source: std::io::Error },
    #[error("unmounting {path}: {source}")]
    Unmount { path: PathBuf, source: std::io::Error },
    #[error("not mounted (a previous remount failed)")]
    NotMounted,
}

/// What a cut did.
#[derive(Debug, Clone, Default)]
pub struct CutReport {
    /// Processes sent SIGKILL.
    pub killed: Vec<i32>,
    /// Of those, still alive after the wait (the cut went on regardless).
    pub survivors: Vec<i32>,
    /// Unsynced file bytes thrown away (in whole pages).
    pub unsynced_bytes: u64,
}

struct Mounted {
    volatile: Arc<Volatile>,
    session: fuser::BackgroundSession,
    /// The FUSE connection id, read at mount (stat of the mountpoint would hang or fail later).
    conn: Option<u64>,
}

/// A mounted lazy filesystem. Dropping it unmounts (discarding what was not synced).
pub struct LazyFs {
    backing: PathBuf,
    mountpoint: PathBuf,
    mounted: Mutex<Option<Mounted>>,
    cuts: Mutex<u64>,
}

/// Why this process cannot mount FUSE here, if it cannot (tests skip with this message).
pub fn cannot_mount() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("chd-lazyfs mounts with mount(2), which needs root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse does not exist".into());
    }
    None
}

fn raise_fd_limit() {
    // Every open file under the mount holds a descriptor on the backing store too.
    if let Ok((_, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn mount_fresh(backing: &Path, mountpoint: &Path) -> Result<Mounted, Error> {
    let store = Arc::new(store::Store::open(backing)?);
    let volatile = Arc::new(Volatile::load(store)?);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("chd-lazyfs".into()),
        fuser::MountOption::Subtype("chd-lazyfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(4);
    let session = fuser::spawn_mount(Fuse(volatile.clone()), mountpoint, &config)
        .map_err(|source| Error::Mount { path: mountpoint.to_owned(), source })?;
    let conn = procs::connection_of(mountpoint);
    Ok(Mounted { volatile, session, conn })
}

/// Stops the old session for good: no request reaches it after this returns (or times out).
fn teardown(m: Mounted, mountpoint: &Path) -> Result<(), Error> {
    m.volatile.freeze();
    if let Some(conn) = m.conn {
        procs::abort_connection(conn);
    }
    // Detach, so descriptors the caller (or a survivor) still holds do not make it EBUSY; fuser
    // would try a plain umount. Those descriptors now fail, as on a dead disk.
    nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| Error::Unmount { path: mountpoint.to_owned(), source: e.into() })?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Already unmounted above; fuser's own umount on drop then finds nothing there.
        let _ = tx.send(m.session.join());
    });
    match rx.recv_timeout(CUT_WAIT) {
        Ok(Ok(())) => Ok(()),
        // The abort above: a session thread blocked reading the connection sees it as
        // ECONNABORTED (seen once in CI, cut 5 of 54), instead of the ENODEV of an unmount.
        // Either way the session has ended, which is all this waits for.
        Ok(Err(source)) if source.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
        Ok(Err(source)) => Err(Error::Unmount { path: mountpoint.to_owned(), source }),
        Err(_) => Err(Error::Unmount {
            path: mountpoint.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "the FUSE session did not end"),
        }),
    }
}

impl LazyFs {
    /// Serves the store in `backing` (created if the directory is empty) at `mountpoint`.
    pub fn mount(backing: impl AsRef<Path>, mountpoint: impl AsRef<Path>) -> Result<LazyFs, Error> {
        raise_fd_limit();
        let backing = backing
            .as_ref()
            .canonicalize()
            .map_err(|e| StoreError::Io { path: backing.as_ref().to_owned(), source: e })?;
        let mountpoint = mountpoint
            .as_ref()
            .canonicalize()
            .map_err(|source| Error::Mount { path: mountpoint.as_ref().to_owned(), source })?;
        let m = mount_fresh(&backing, &mountpoint)?;
        Ok(LazyFs { backing, mountpoint, mounted: Mutex::new(Some(m)), cuts: Mutex::new(0) })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Power cuts so far.
    pub fn cuts(&self) -> u64 {
        *self.cuts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts the power: every process using the mount is SIGKILLed, everything not synced is
    /// lost, and the mount comes back with what the disk holds. When it returns, the new mount
    /// serves requests.
    pub fn power_cut(&self) -> Result<CutReport, Error> {
        self.power_cut_killing(&[])
    }

    /// [`LazyFs::power_cut`], also killing `pids` (for processes that use the mount in a way
    /// `/proc` does not show, e.g. through a descriptor passed over a socket after the scan).
    pub fn power_cut_killing(&self, pids: &[i32]) -> Result<CutReport, Error> {
        let mut mounted = self.mounted.lock().unwrap_or_else(|p| p.into_inner());
        let m = mounted.take().ok_or(Error::NotMounted)?;
        // The instant of the cut: from here on nothing reaches the disk.
        m.volatile.freeze();
        let unsynced_bytes = m.volatile.unsynced_bytes();
        let mut killed = procs::users_of(&self.mountpoint);
        killed.extend(pids.iter().copied().filter(|&p| p > 0 && p != std::process::id() as i32));
        killed.sort_unstable();
        killed.dedup();
        let survivors = procs::kill_and_wait(&killed, CUT_WAIT);
        teardown(m, &self.mountpoint)?;
        *mounted = Some(mount_fresh(&self.backing, &self.mountpoint)?);
        *self.cuts.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Ok(CutReport { killed, survivors, unsynced_bytes })
    }

    /// Unmounts. What was not synced is lost, as at a cut; processes are not killed.
    /// Later calls, and [`LazyFs::power_cut`], find nothing mounted.
    pub fn unmount(&self) -> Result<(), Error> {
        match self.mounted.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(m) => teardown(m, &self.mountpoint),
            None => Ok(()),
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}
