//! The simulated disk: what survives a power cut, kept in the backing directory.
//!
//! Layout (inode numbers in decimal):
//! - `LAZYFS`: marker and format version; a backing directory without it must be empty;
//! - `data/<ino>`: the durable bytes of regular file `<ino>`, written only by an fsync of it;
//! - `dirs/<ino>`: the durable listing of directory `<ino>` (names, child inodes, kinds, and
//!   each child's mode, owner, times and symlink target), replaced atomically by an fsyncdir.
//!
//! The durable tree is what is reachable from `dirs/1` (the root). A regular file named in a
//! listing but without `data/<ino>` is empty; a directory named but without `dirs/<ino>` is
//! empty. [`load`] removes files of inodes no listing reaches (unlinked files, data of files
//! whose name was never made durable) and returns the next free inode number, above every
//! number any file in the store uses, so a stale file is never taken for a new inode.
//!
//! Every change to the store is itself made durable on the real disk (fsync of the file and,
//! for a new name, of its directory), so the store stays right across a real crash too.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const ROOT: u64 = 1;
const MARKER: &str = "LAZYFS";
const MARKER_TEXT: &[u8] = b"chd-lazyfs store, format 1\n";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}: not empty and not a chd-lazyfs store (no LAZYFS marker); refusing to use it")]
    Foreign(PathBuf),
    #[error("{path}: damaged listing: {what}")]
    Damaged { path: PathBuf, what: &'static str },
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
        }
    }
    fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            _ => return None,
        })
    }
}

/// Attributes of an inode other than its size and link count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Permission bits only (`0o7777`).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

impl Attr {
    pub fn new(perm: u16, uid: u32, gid: u32) -> Attr {
        let now = SystemTime::now();
        Attr { perm, uid, gid, atime: now, mtime: now, ctime: now }
    }
}

/// One name in a durable listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: OsString,
    pub ino: u64,
    pub kind: Kind,
    pub attr: Attr,
    /// The target, for a symlink.
    pub target: Option<OsString>,
}

/// The durable state as loaded after a cut.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every reachable directory: its parent and its entries. The root is its own parent.
    pub dirs: HashMap<u64, (u64, Vec<Entry>)>,
    /// Durable length of every reachable regular file.
    pub file_len: HashMap<u64, u64>,
    pub next_ino: u64,
}

pub struct Store {
    root: PathBuf,
}

fn put_time(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    out.extend_from_slice(&d.as_secs().to_le_bytes());
    out.extend_from_slice(&d.subsec_nanos().to_le_bytes());
}

/// Encodes a listing: per entry `kind u8, ino u64, perm u16, uid u32, gid u32, 3 times
/// (secs u64, nanos u32), name (u32 len + bytes), target (u32 len + bytes, len u32::MAX = none)`.
pub fn encode_listing(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.push(e.kind.code());
        out.extend_from_slice(&e.ino.to_le_bytes());
        out.extend_from_slice(&e.attr.perm.to_le_bytes());
        out.extend_from_slice(&e.attr.uid.to_le_bytes());
        out.extend_from_slice(&e.attr.gid.to_le_bytes());
        put_time(&mut out, e.attr.atime);
        put_time(&mut out, e.attr.mtime);
        put_time(&mut out, e.attr.ctime);
        let name = e.name.as_bytes();
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name);
        match &e.target {
            Some(t) => {
                out.extend_from_slice(&(t.as_bytes().len() as u32).to_le_bytes());
                out.extend_from_slice(t.as_bytes());
            }
            None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes(b.try_into().unwrap()))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
    fn time(&mut self) -> Option<SystemTime> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        Some(UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999)))
    }
    fn bytes(&mut self) -> Option<Option<OsString>> {
        let n = self.u32()?;
        if n == u32::MAX {
            return Some(None);
        }
        Some(Some(OsString::from_vec(self.take(n as usize)?.to_vec())))
    }
}

pub fn decode_listing(mut buf: &[u8]) -> Option<Vec<Entry>> {
    let mut entries = Vec::new();
    while !buf.is_empty() {
        let mut r = Reader(buf);
        let kind = Kind::from_code(r.u8()?)?;
        let ino = r.u64()?;
        let perm = r.u16()?;
        let uid = r.u32()?;
        let gid = r.u32()?;
        let atime = r.time()?;
        let mtime = r.time()?;
        let ctime = r.time()?;
        let name = r.bytes()??;
        let target = r.bytes()?;
        entries.push(Entry { name, ino, kind, attr: Attr { perm, uid, gid, atime, mtime, ctime }, target });
        buf = r.0;
    }
    Some(entries)
}

fn fsync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path).and_then(|d| d.sync_all()).map_err(at(path))
}

impl Store {
    /// Opens the store in `root`, creating it if `root` is empty.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store { root: root.to_owned() };
        let marker = root.join(MARKER);
        if !marker.exists() {
            let mut it = fs::read_dir(root).map_err(at(root))?;
            if it.next().is_some() {
                return Err(StoreError::Foreign(root.to_owned()));
            }
            for sub in ["data", "dirs"] {
                fs::create_dir(root.join(sub)).map_err(at(root))?;
            }
            let mut f = File::create(&marker).map_err(at(&marker))?;
            f.write_all(MARKER_TEXT).and_then(|_| f.sync_all()).map_err(at(&marker))?;
            fsync_dir(root)?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn data_path(&self, ino: u64) -> PathBuf {
        self.root.join("data").join(ino.to_string())
    }

    fn dir_path(&self, ino: u64) -> PathBuf {
        self.root.join("dirs").join(ino.to_string())
    }

    /// Opens the durable file of `ino` for reading and writing, creating it if missing. `fresh`:
    /// the inode is new in this mount, so whatever a stale file holds is dropped.
    pub fn open_data(&self, ino: u64, fresh: bool) -> Result<File, StoreError> {
        let path = self.data_path(ino);
        let existed = path.exists();
        let f =
            OpenOptions::new().read(true).write(true).create(true).truncate(fresh).open(&path).map_err(at(&path))?;
        if !existed {
            fsync_dir(&self.root.join("data"))?;
        }
        Ok(f)
    }

    /// Replaces the durable listing of directory `ino`, atomically.
    pub fn write_dir(&self, ino: u64, entries: &[Entry]) -> Result<(), StoreError> {
        let path = self.dir_path(ino);
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(at(&tmp))?;
        f.write_all(&encode_listing(entries)).and_then(|_| f.sync_all()).map_err(at(&tmp))?;
        fs::rename(&tmp, &path).map_err(at(&path))?;
        fsync_dir(&self.root.join("dirs"))
    }

    fn read_dir_listing(&self, ino: u64) -> Result<Vec<Entry>, StoreError> {
        let path = self.dir_path(ino);
        match fs::read(&path) {
            Ok(buf) => decode_listing(&buf).ok_or(StoreError::Damaged { path, what: "truncated or unknown kind" }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// Reads the durable tree and removes what it does not reach.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        let mut queue = VecDeque::from([(ROOT, ROOT)]);
        let mut seen_dirs = HashSet::from([ROOT]);
        let mut max_ino = ROOT;
        while let Some((dir, parent)) = queue.pop_front() {
            let mut kept = Vec::new();
            for e in self.read_dir_listing(dir)? {
                max_ino = max_ino.max(e.ino);
                match e.kind {
                    // A directory reachable twice (a cross-directory rename made durable on
                    // both sides' old and new listings only in part) keeps its first name.
                    Kind::Dir if !seen_dirs.insert(e.ino) => continue,
                    Kind::Dir => queue.push_back((e.ino, dir)),
                    Kind::File => {
                        if let MapEntry::Vacant(slot) = loaded.file_len.entry(e.ino) {
                            let len = match fs::metadata(self.data_path(e.ino)) {
                                Ok(m) => m.len(),
                                Err(err) if err.kind() == io::ErrorKind::NotFound => 0,
                                Err(err) => return Err(StoreError::Io { path: self.data_path(e.ino), source: err }),
                            };
                            slot.insert(len);
                        }
                    }
                    Kind::Symlink => {}
                }
                kept.push(e);
            }
            loaded.dirs.insert(dir, (parent, kept));
        }
        // Garbage: files of inodes nothing durable names, and half-written listings.
        let reachable_file = |ino: u64| loaded.file_len.contains_key(&ino);
        let reachable_dir = |ino: u64| loaded.dirs.contains_key(&ino);
        for (sub, reachable) in [("data", &reachable_file as &dyn Fn(u64) -> bool), ("dirs", &reachable_dir)] {
            let dir = self.root.join(sub);
            for ent in fs::read_dir(&dir).map_err(at(&dir))? {
                let ent = ent.map_err(at(&dir))?;
                let name = ent.file_name();
                let ino = parse_ino(&name);
                if let Some(ino) = ino {
                    max_ino = max_ino.max(ino);
                }
                if ino.is_none_or(|ino| !reachable(ino)) {
                    fs::remove_file(ent.path()).map_err(at(&ent.path()))?;
                }
            }
        }
        loaded.next_ino = max_ino + 1;
        Ok(loaded)
    }
}

fn parse_ino(name: &OsStr) -> Option<u64> {
    name.to_str()?.parse().ok()
}

/// The durable directories, as a map from path to sorted names, for tests and debugging.
pub fn tree(loaded: &Loaded) -> BTreeMap<PathBuf, Vec<OsString>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(ROOT, PathBuf::from("/"))];
    while let Some((ino, path)) = stack.pop() {
        let Some((_, entries)) = loaded.dirs.get(&ino) else { continue };
        let mut names: Vec<OsString> = entries.iter().map(|e| e.name.clone()).collect();
        names.sort();
        for e in entries.iter().filter(|e| e.kind == Kind::Dir && loaded.dirs.contains_key(&e.ino)) {
            stack.push((e.ino, path.join(&e.name)));
        }
        out.insert(path, names);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, ino: u64, kind: Kind) -> Entry {
        Entry { name: name.into(), ino, kind, attr: Attr::new(0o644, 1, 2), target: None }
    }

    #[test]
    fn listings_round_trip() {
        let mut link = entry("l", 9, Kind::Symlink);
        link.target = Some("../x".into());
        let entries = vec![entry("a", 2, Kind::File), entry("sub", 3, Kind::Dir), link];
        assert_eq!(decode_listing(&encode_listing(&entries)).unwrap(), entries);
        let enc = encode_listing(&entries);
        assert!(decode_listing(&enc[..enc.len() - 1]).is_none());
    }

    #[test]
    fn load_keeps_what_the_root_reaches_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.write_dir(ROOT, &[entry("f", 5, Kind::File), entry("d", 6, Kind::Dir)]).unwrap();
        store.write_dir(6, &[entry("g", 7, Kind::File)]).unwrap();
        store.write_dir(40, &[entry("orphan", 41, Kind::File)]).unwrap();
        fs::write(store.data_path(5), b"five").unwrap();
        fs::write(store.data_path(99), b"unnamed").unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.file_len.get(&5), Some(&4));
        assert_eq!(loaded.file_len.get(&7), Some(&0));
        assert_eq!(loaded.dirs[&6].0, ROOT);
        assert!(!store.data_path(99).exists());
        assert!(!dir.path().join("dirs/40").exists());
        assert_eq!(loaded.next_ino, 100);
        let t = tree(&loaded);
        assert_eq!(t[Path::new("/")], vec![OsString::from("d"), "f".into()]);
        assert_eq!(t[Path::new("/d")], vec![OsString::from("g")]);
    }

    #[test]
    fn refuses_a_directory_that_is_not_a_store() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("precious"), b"x").unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StoreError::Foreign(_))));
    }
}
