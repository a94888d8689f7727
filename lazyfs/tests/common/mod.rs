//! A lazy filesystem mounted in a temporary directory.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};

use chd_lazyfs::LazyFs;

pub struct Mount {
    pub fs: LazyFs,
    pub dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts a fresh lazy filesystem, or returns None (after saying why) where FUSE cannot be
    /// mounted: these tests need root and /dev/fuse, which CI has.
    pub fn new() -> Option<Mount> {
        if let Some(why) = chd_lazyfs::cannot_mount() {
            eprintln!("skipping: {why}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("disk")).unwrap();
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        let fs = LazyFs::mount(dir.path().join("disk"), dir.path().join("mnt")).unwrap();
        Some(Mount { fs, dir })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.fs.mountpoint().join(rel)
    }

    pub fn cut(&self) {
        self.fs.power_cut().unwrap();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Unmount before the temporary directory is removed under it.
        self.fs.unmount().unwrap();
    }
}

pub fn fsync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

pub fn write_synced(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    std::io::Write::write_all(&mut f, data).unwrap();
    f.sync_all().unwrap();
}
