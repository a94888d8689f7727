//! The data directory: what chd keeps besides the nodes' databases.
//!
//! ```text
//! <data-dir>/
//!   chd.lock        flock held by the running chd (holds its pid): one chd per data dir
//!   cluster.json    the ring (members, partition table) and the replica count
//!   versions        ceiling of the version counter (see crate::versions)
//!   version-clock   versions and when they were issued by (see crate::tombstones)
//!   nodes/<id>/     each node's sled database, owned by its worker process
//!   quarantine/     databases moved aside because they could not be opened; deleted only on
//!                   request (`chctl quarantine purge`, see crate::quarantine)
//! ```
//!
//! Every file is replaced atomically (write to a temporary, fsync, rename, fsync the directory),
//! so a crash leaves either the old or the new content.
//!
//! Every name chd makes is durable before anything depends on it, because a power cut keeps
//! only what was fsynced, directory entries included (a process crash keeps the page cache and
//! hides such holes): the data dir and `nodes/` are fsynced into their parents when opened,
//! `nodes/<id>` into `nodes/` before its worker is spawned ([`create_dir_durable`]), `quarantine/`
//! into the data dir before anything is moved there, and a deleted node directory's removal is
//! fsynced too. What a worker creates inside `nodes/<id>` is the worker's to make durable.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use chd_data::{NodeId, Ring};

use crate::layout::{Layout, Transition};
use serde::{Deserialize, Serialize};

pub struct DataDir {
    root: PathBuf,
    /// Held for chd's lifetime; the flock goes with it.
    _lock: File,
}

/// What `cluster.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterFile {
    pub format: u32,
    pub ring: Ring,
    /// A membership change in progress (see [`crate::layout`]).
    #[serde(default)]
    pub transition: Option<Transition>,
    /// Ids are never reused, so a node's folder never holds another node's data.
    pub next_node_id: NodeId,
    /// Nodes created whose identity is not written yet. Such a node never took a write, so an
    /// empty database is expected of it, not a sign of lost data (a chd killed during the first
    /// start of a data dir leaves every node here). Absent in older files: every node is born.
    #[serde(default)]
    pub unborn: BTreeSet<NodeId>,
    /// W, fixed with the data dir: reads ask R-W+1 replicas, which only sees every write
    /// acknowledged by W replicas if W never grows. Absent in older files: taken from the
    /// settings at the next start.
    #[serde(default)]
    pub write_quorum: Option<u32>,
}

impl ClusterFile {
    pub fn layout(&self) -> Layout {
        Layout { ring: self.ring.clone(), transition: self.transition.clone() }
    }
}

impl DataDir {
    /// Creates the directory if needed and takes its lock, refusing if another chd holds it.
    ///
    /// The directory gets `mode` (0700, or 0750 with an allowed group) whatever the umask, and
    /// an existing one wider than that is narrowed: the databases below it follow the umask.
    pub fn open(root: &Path, mode: u32) -> anyhow::Result<DataDir> {
        ensure_private_dir(root, mode).with_context(|| format!("cannot create data dir {}", root.display()))?;
        let path = root.join("chd.lock");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: flock on an fd we own. The lock belongs to the open file description, held
        // until chd exits; the fd is close-on-exec, so workers never inherit it.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = lock.read_to_string(&mut pid);
            bail!("another chd (pid {}) is using data dir {}; stop it first", pid.trim(), root.display());
        }
        lock.set_len(0)?;
        lock.rewind()?;
        write!(lock, "{}", std::process::id())?;
        create_dir_durable(&root.join("nodes")).with_context(|| format!("cannot create {}/nodes", root.display()))?;
        Ok(DataDir { root: fs::canonicalize(root)?, _lock: lock })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn node_dir(&self, id: NodeId) -> PathBuf {
        self.root.join("nodes").join(id.to_string())
    }

    /// Deletes the database of a node that left, durably: a power cut must not bring back a
    /// directory that chd believes gone.
    pub fn remove_node_dir(&self, id: NodeId) -> std::io::Result<()> {
        fs::remove_dir_all(self.node_dir(id))?;
        sync_dir_io(&self.root.join("nodes"))
    }

    pub fn load_cluster(&self) -> anyhow::Result<Option<ClusterFile>> {
        read_cluster_file(&self.root)
    }

    pub fn save_cluster(&self, cluster: &ClusterFile) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(cluster)?;
        write_atomic(&self.root.join("cluster.json"), text.as_bytes())
    }

    pub fn versions_path(&self) -> PathBuf {
        self.root.join("versions")
    }

    /// Moves a node's database aside into `quarantine/`. Returns where it went.
    pub fn quarantine(&self, id: NodeId) -> anyhow::Result<Option<PathBuf>> {
        let from = self.node_dir(id);
        if !from.exists() {
            return Ok(None);
        }
        let q = self.root.join("quarantine");
        // Durable in the data dir first: a rename into a directory a cut can undo would lose the
        // database with it.
        create_dir_durable(&q).with_context(|| format!("cannot create {}", q.display()))?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut to = q.join(format!("node-{id}-{stamp}"));
        let mut n = 1;
        while to.exists() {
            to = q.join(format!("node-{id}-{stamp}.{n}"));
            n += 1;
        }
        fs::rename(&from, &to).with_context(|| format!("cannot move {} to {}", from.display(), to.display()))?;
        // The new name first: a cut between the two leaves the database under both names, never
        // under neither.
        sync_dir(&q)?;
        sync_dir(&self.root.join("nodes"))?;
        Ok(Some(to))
    }
}

/// Creates `dir` with exactly `mode` (its parents as the umask says) and makes its name
/// durable, or narrows an existing one to within `mode`; never widens what the operator set.
fn ensure_private_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = parent_of(dir);
    if !parent.is_dir() {
        create_dir_durable(parent)?;
    }
    let created = match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(e),
    };
    if created {
        sync_dir_io(parent)?;
    } else {
        // Made by someone else (an installer, a chd killed before its fsync): make its name
        // durable if we may; a parent we cannot open is not ours to worry about.
        let _ = sync_dir_io(parent);
    }
    let now = fs::metadata(dir)?.permissions().mode() & 0o7777;
    let want = if created { mode } else { now & mode };
    if now != want {
        if !created {
            tracing::warn!(dir = %dir.display(), from = format!("{now:o}"), to = format!("{want:o}"), "data dir was open to others; narrowing its mode");
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(want))?;
    }
    Ok(())
}

/// The `cluster.json` of the data dir at `root`, or `None` if there is none (a new data dir).
/// Reads only: `chd check-config` uses it beside a running chd, without taking the lock.
pub fn read_cluster_file(root: &Path) -> anyhow::Result<Option<ClusterFile>> {
    let path = root.join("cluster.json");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let file: ClusterFile =
        serde_json::from_str(&text).with_context(|| format!("{} is not a valid cluster file", path.display()))?;
    file.ring.check().with_context(|| format!("{} holds an invalid ring", path.display()))?;
    if let Some(t) = &file.transition {
        t.target.check().with_context(|| format!("{} holds an invalid target ring", path.display()))?;
    }
    Ok(Some(file))
}

/// Replaces `path` with `data` so that a crash leaves either the old or the new file.
pub fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(())
}

pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    sync_dir_io(dir).with_context(|| format!("cannot fsync directory {}", dir.display()))
}

fn sync_dir_io(dir: &Path) -> std::io::Result<()> {
    let d = File::open(dir)?;
    nix::unistd::fsync(d.as_fd())?;
    Ok(())
}

/// The directory holding `path` (`.` for a bare relative name).
fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Creates `dir` (and missing ancestors) if needed, and makes its name durable: fsyncs its
/// parent, also when `dir` already existed, since an earlier process may have made it and died
/// (or been killed) before that fsync, leaving a name that only the page cache holds.
pub fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_dir_durable(parent_of(dir))?;
            match fs::create_dir(dir) {
                Err(e) if !(e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir()) => return Err(e),
                _ => {}
            }
        }
        Err(e) => return Err(e),
    }
    sync_dir_io(parent_of(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_chd_per_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path(), 0o700).unwrap();
        let err = DataDir::open(dir.path(), 0o700).err().unwrap().to_string();
        assert!(err.contains("another chd"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        DataDir::open(dir.path(), 0o700).unwrap();
    }

    #[test]
    fn cluster_file_round_trips_and_quarantine_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path(), 0o700).unwrap();
        assert_eq!(d.load_cluster().unwrap(), None);
        let c = ClusterFile {
            format: 1,
            ring: Ring::new(&[0, 1, 2], 3, 64).unwrap(),
            transition: None,
            next_node_id: 3,
            unborn: [1].into(),
            write_quorum: Some(2),
        };
        d.save_cluster(&c).unwrap();
        assert_eq!(d.load_cluster().unwrap(), Some(c));
        fs::create_dir_all(d.node_dir(1)).unwrap();
        fs::write(d.node_dir(1).join("db"), b"precious").unwrap();
        let to = d.quarantine(1).unwrap().unwrap();
        assert_eq!(fs::read(to.join("db")).unwrap(), b"precious");
        assert!(!d.node_dir(1).exists());
    }

    #[test]
    fn create_dir_durable_makes_missing_ancestors_and_accepts_existing() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_durable(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_durable(&deep).unwrap();
        fs::write(dir.path().join("file"), b"x").unwrap();
        assert!(create_dir_durable(&dir.path().join("file")).is_err(), "a file is not a directory");
    }

    #[test]
    fn a_removed_node_dir_stays_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(&dir.path().join("data"), 0o700).unwrap();
        create_dir_durable(&d.node_dir(4)).unwrap();
        fs::write(d.node_dir(4).join("db"), b"x").unwrap();
        d.remove_node_dir(4).unwrap();
        assert!(!d.node_dir(4).exists());
    }
}
