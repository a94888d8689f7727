//! A simulated disk for crash tests: rebuilt from the operations [`super::fsio`]'s tap
//! records, it writes out any state a power cut (or a killed process) could leave the files
//! in. Per file it knows the bytes last synced and the pages written since; per directory the
//! names last synced and the creates, renames and unlinks since. A power cut keeps a random
//! subset of each file's unsynced pages (one of them torn at a 512-byte sector), a size between
//! the synced and the written one, and a random prefix of each directory's unsynced changes.
//! Directories themselves must exist when the snapshot is taken.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::fsio::tap::Event;

pub fn shm() -> tempfile::TempDir {
    // tmpfs when there is one: crash tests write and sync thousands of small files.
    tempfile::Builder::new().tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap()
}

const PAGE: usize = 4096;
const SECTOR: usize = 512;

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    /// splitmix64.
    pub fn word(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.word() % n.max(1)
    }
    pub fn coin(&mut self) -> bool {
        self.word() & 1 == 1
    }
}

#[derive(Clone, Default)]
struct Inode {
    /// Every byte written.
    now: Vec<u8>,
    /// What the last sync made durable.
    synced: Vec<u8>,
    /// Pages written (or cut) since the last sync.
    dirty: BTreeSet<usize>,
}

impl Inode {
    /// The file as a power cut may leave it.
    fn after_cut(&self, rng: &mut Rng) -> Vec<u8> {
        if self.dirty.is_empty() && self.now.len() == self.synced.len() {
            return self.synced.clone();
        }
        let len = if rng.coin() { self.now.len() } else { self.synced.len() };
        let mut out = self.synced.clone();
        out.resize(len, 0);
        let pages: Vec<usize> = self.dirty.iter().copied().collect();
        let torn = pages.get(rng.below(pages.len() as u64) as usize).copied();
        for p in pages {
            if !rng.coin() {
                continue;
            }
            let from = p * PAGE;
            let mut to = ((p + 1) * PAGE).min(len).min(self.now.len());
            if Some(p) == torn && to > from {
                to = (from + SECTOR * rng.below(((to - from) / SECTOR + 1) as u64) as usize).min(to);
            }
            if from < to {
                out[from..to].copy_from_slice(&self.now[from..to]);
            }
        }
        out
    }
}

#[derive(Clone)]
enum DirOp {
    Link(String, usize),
    Unlink(String),
    Rename(String, String),
}

#[derive(Clone, Default)]
struct Dir {
    synced: BTreeMap<String, usize>,
    since: Vec<DirOp>,
}

impl Dir {
    fn entries(&self, keep: usize) -> BTreeMap<String, usize> {
        let mut names = self.synced.clone();
        for op in &self.since[..keep] {
            match op {
                DirOp::Link(name, ino) => {
                    names.insert(name.clone(), *ino);
                }
                DirOp::Unlink(name) => {
                    names.remove(name);
                }
                DirOp::Rename(from, to) => {
                    if let Some(ino) = names.remove(from) {
                        names.insert(to.clone(), ino);
                    }
                }
            }
        }
        names
    }
}

/// The simulated disk under one directory tree.
#[derive(Clone)]
pub struct Disk {
    root: PathBuf,
    inodes: Vec<Inode>,
    dirs: BTreeMap<PathBuf, Dir>,
    /// Real inode number -> simulated inode, for the files written through descriptors.
    real: HashMap<u64, usize>,
}

impl Disk {
    /// Everything under `root` as it is now, all of it durable.
    pub fn snapshot(root: &Path) -> Disk {
        use std::os::unix::fs::MetadataExt;
        let mut disk =
            Disk { root: root.to_path_buf(), inodes: Vec::new(), dirs: BTreeMap::new(), real: HashMap::new() };
        let mut todo = vec![PathBuf::new()];
        while let Some(rel) = todo.pop() {
            let mut dir = Dir::default();
            for e in std::fs::read_dir(root.join(&rel)).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().into_string().unwrap();
                if e.file_type().unwrap().is_dir() {
                    todo.push(rel.join(&name));
                    continue;
                }
                let content = std::fs::read(e.path()).unwrap();
                disk.inodes.push(Inode { now: content.clone(), synced: content, dirty: BTreeSet::new() });
                disk.real.insert(e.metadata().unwrap().ino(), disk.inodes.len() - 1);
                dir.synced.insert(name, disk.inodes.len() - 1);
            }
            disk.dirs.insert(rel, dir);
        }
        disk
    }

    fn split(&self, path: &Path) -> (PathBuf, String) {
        let rel = path.strip_prefix(&self.root).expect("a path under the root");
        (rel.parent().unwrap().to_path_buf(), rel.file_name().unwrap().to_str().unwrap().to_string())
    }

    pub fn apply(&mut self, e: &Event) {
        match e {
            Event::Create { path, ino } => {
                self.inodes.push(Inode::default());
                let id = self.inodes.len() - 1;
                self.real.insert(*ino, id);
                let (dir, name) = self.split(path);
                self.dirs.get_mut(&dir).expect("a known directory").since.push(DirOp::Link(name, id));
            }
            Event::Write { ino, at, data } => {
                let Some(&id) = self.real.get(ino) else { return };
                let f = &mut self.inodes[id];
                let (at, end) = (*at as usize, *at as usize + data.len());
                if f.now.len() < end {
                    f.now.resize(end, 0);
                }
                f.now[at..end].copy_from_slice(data);
                f.dirty.extend(at / PAGE..end.div_ceil(PAGE));
            }
            Event::SetLen { ino, len } => {
                let Some(&id) = self.real.get(ino) else { return };
                let f = &mut self.inodes[id];
                let (a, b) = (f.now.len().min(*len as usize), f.now.len().max(*len as usize));
                f.now.resize(*len as usize, 0);
                f.dirty.extend(a / PAGE..b.div_ceil(PAGE).max(a / PAGE + 1));
            }
            Event::Sync { ino } => {
                let Some(&id) = self.real.get(ino) else { return };
                let f = &mut self.inodes[id];
                f.synced = f.now.clone();
                f.dirty.clear();
            }
            Event::SyncDir { path } => {
                let rel = path.strip_prefix(&self.root).unwrap().to_path_buf();
                let dir = self.dirs.get_mut(&rel).expect("a known directory");
                dir.synced = dir.entries(dir.since.len());
                dir.since.clear();
            }
            Event::Rename { from, to } => {
                let ((dir, a), (_, b)) = (self.split(from), self.split(to));
                self.dirs.get_mut(&dir).expect("a known directory").since.push(DirOp::Rename(a, b));
            }
            Event::Remove { path } => {
                let (dir, name) = self.split(path);
                self.dirs.get_mut(&dir).expect("a known directory").since.push(DirOp::Unlink(name));
            }
        }
    }

    /// Writes to `to` the files as a crash now may leave them: a power cut, or (`killed`) a
    /// killed process, whose writes all stay in the page cache.
    pub fn crash_into(&self, to: &Path, killed: bool, rng: &mut Rng) {
        for (rel, dir) in &self.dirs {
            let keep = if killed { dir.since.len() } else { rng.below(dir.since.len() as u64 + 1) as usize };
            std::fs::create_dir_all(to.join(rel)).unwrap();
            for (name, &ino) in &dir.entries(keep) {
                let f = &self.inodes[ino];
                let bytes = if killed { f.now.clone() } else { f.after_cut(rng) };
                std::fs::write(to.join(rel).join(name), bytes).unwrap();
            }
        }
    }
}
