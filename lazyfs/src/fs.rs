//! The mounted filesystem: the volatile state (what processes see) over the [`Store`] (what
//! the disk holds), and the FUSE operations on it.
//!
//! The whole namespace lives in memory, loaded from the store at mount. Every operation changes
//! only memory, except two, which are the only writers of the store:
//! - `fsync`/`fdatasync` of a file (or a write through an `O_SYNC`/`O_DSYNC` descriptor) writes
//!   that file's overlay to `data/<ino>` and fsyncs it: its bytes and size become durable, its
//!   names do not;
//! - `fsyncdir` of a directory writes that directory's current listing to `dirs/<ino>`: its
//!   names (and each child's mode, owner, times) become durable, not the children's contents.
//!
//! A power cut freezes the state ([`Volatile::freeze`]: from then on every operation fails with
//! EIO and nothing reaches the store), and the next mount loads a fresh state from the store.
//!
//! Locks: `cut` (read-held by every operation, write-held by the freeze) comes first, then
//! `dir_sync`, then `ns`, then one file's `data`; a thread holding a file's `data` never takes
//! `ns`, so a long fsync of one file does not stop the rest of the filesystem.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::overlay::Overlay;
use crate::store::{Attr, Entry, Kind, Store, StoreError, ROOT};

/// How long the kernel may cache names and attributes. Every change goes through this process,
/// and a cut remounts (which drops the kernel's caches), so caching is safe.
const TTL: Duration = Duration::from_secs(1);

struct FileNode {
    /// The volatile size, readable without waiting for a sync in progress.
    size: AtomicU64,
    data: Mutex<FileData>,
}

struct FileData {
    overlay: Overlay,
    /// `data/<ino>`, opened when first needed and closed when the last handle goes.
    disk: Option<File>,
    /// No durable bytes belong to this inode (created in this mount): a stale `data/<ino>` must
    /// not show through.
    fresh: bool,
}

enum Body {
    File(Arc<FileNode>),
    Dir { entries: BTreeMap<OsString, u64>, parent: u64 },
    Symlink(OsString),
}

struct Node {
    body: Body,
    attr: Attr,
    /// Names pointing here (0 or 1 for a directory).
    nlink: u32,
    /// The kernel's references (lookup count), dropped by `forget`.
    lookups: u64,
    opens: u32,
}

impl Node {
    fn kind(&self) -> Kind {
        match self.body {
            Body::File(_) => Kind::File,
            Body::Dir { .. } => Kind::Dir,
            Body::Symlink(_) => Kind::Symlink,
        }
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

struct DirSnapshot(Vec<(u64, FileType, OsString)>);

struct Namespace {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    dir_handles: HashMap<u64, DirSnapshot>,
}

pub(crate) struct Volatile {
    store: Arc<Store>,
    /// True once the power is cut.
    cut: RwLock<bool>,
    /// Serialises fsyncdir calls, so an older listing never overwrites a newer one.
    dir_sync: Mutex<()>,
    ns: Mutex<Namespace>,
    next_fh: AtomicU64,
}

type Res<T> = Result<T, Errno>;

/// The changes a `setattr` asks for.
struct SetAttr {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

fn eio(e: StoreError) -> Errno {
    eprintln!("chd-lazyfs: backing store: {e}");
    Errno::EIO
}

fn now() -> SystemTime {
    SystemTime::now()
}

impl Namespace {
    fn node(&self, ino: u64) -> Res<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Res<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn entries(&self, dir: u64) -> Res<&BTreeMap<OsString, u64>> {
        match &self.node(dir)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Res<&mut BTreeMap<OsString, u64>> {
        match &mut self.node_mut(dir)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn child(&self, dir: u64, name: &OsStr) -> Res<u64> {
        self.entries(dir)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn file(&self, ino: u64) -> Res<Arc<FileNode>> {
        match &self.node(ino)?.body {
            Body::File(f) => Ok(f.clone()),
            Body::Dir { .. } => Err(Errno::EISDIR),
            Body::Symlink(_) => Err(Errno::EINVAL),
        }
    }

    fn attr(&self, ino: u64) -> Res<FileAttr> {
        let node = self.node(ino)?;
        let (size, nlink) = match &node.body {
            Body::File(f) => (f.size.load(Ordering::Acquire), node.nlink),
            // 1 tells `find` and friends the subdirectory count is unknown.
            Body::Dir { .. } => (4096, 1),
            Body::Symlink(t) => (t.len() as u64, node.nlink),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.attr.atime,
            mtime: node.attr.mtime,
            ctime: node.attr.ctime,
            crtime: node.attr.ctime,
            kind: file_type(node.kind()),
            perm: node.attr.perm,
            nlink,
            uid: node.attr.uid,
            gid: node.attr.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// An entry reply: the kernel now holds one more reference.
    fn looked_up(&mut self, ino: u64) -> Res<FileAttr> {
        self.node_mut(ino)?.lookups += 1;
        self.attr(ino)
    }

    fn touch_dir(&mut self, dir: u64) {
        if let Ok(n) = self.node_mut(dir) {
            let t = now();
            n.attr.mtime = t;
            n.attr.ctime = t;
        }
    }

    /// Adds a new inode named `name` in `parent`, with one kernel reference.
    fn add(&mut self, parent: u64, name: &OsStr, body: Body, attr: Attr) -> Res<u64> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, Node { body, attr, nlink: 1, lookups: 1, opens: 0 });
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        self.touch_dir(parent);
        Ok(ino)
    }

    /// Forgets an inode nothing refers to any more.
    fn maybe_drop(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get(&ino) {
            if ino != ROOT && n.nlink == 0 && n.lookups == 0 && n.opens == 0 {
                self.nodes.remove(&ino);
            }
        }
    }

    fn unlink_name(&mut self, dir: u64, name: &OsStr) -> Res<u64> {
        let ino = self.entries_mut(dir)?.remove(name).ok_or(Errno::ENOENT)?;
        self.touch_dir(dir);
        let n = self.node_mut(ino)?;
        n.nlink = n.nlink.saturating_sub(1);
        n.attr.ctime = now();
        self.maybe_drop(ino);
        Ok(ino)
    }

    fn is_dir(&self, ino: u64) -> bool {
        matches!(self.nodes.get(&ino).map(|n| &n.body), Some(Body::Dir { .. }))
    }

    fn parent(&self, dir: u64) -> Res<u64> {
        match &self.node(dir)?.body {
            Body::Dir { parent, .. } => Ok(*parent),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn rename(&mut self, p: u64, name: &OsStr, np: u64, newname: &OsStr, flags: RenameFlags) -> Res<()> {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            // RENAME_EXCHANGE and RENAME_WHITEOUT: nothing chd or sled uses.
            return Err(Errno::EINVAL);
        }
        if newname.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let src = self.child(p, name)?;
        let src_dir = self.is_dir(src);
        if let Some(&dst) = self.entries(np)?.get(newname) {
            if dst == src {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            match (src_dir, self.is_dir(dst)) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.entries(dst)?.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        if src_dir {
            let mut cur = np;
            loop {
                if cur == src {
                    return Err(Errno::EINVAL);
                }
                if cur == ROOT {
                    break;
                }
                cur = self.parent(cur)?;
            }
        }
        self.entries_mut(p)?.remove(name);
        if let Some(dst) = self.entries_mut(np)?.insert(newname.to_owned(), src) {
            let n = self.node_mut(dst)?;
            n.nlink = n.nlink.saturating_sub(1);
            n.attr.ctime = now();
            self.maybe_drop(dst);
        }
        let n = self.node_mut(src)?;
        n.attr.ctime = now();
        if let Body::Dir { parent, .. } = &mut n.body {
            *parent = np;
        }
        self.touch_dir(p);
        self.touch_dir(np);
        Ok(())
    }

    /// The durable form of directory `dir`'s current listing.
    fn listing(&self, dir: u64) -> Res<Vec<Entry>> {
        let mut out = Vec::new();
        for (name, &ino) in self.entries(dir)? {
            let n = self.node(ino)?;
            let target = match &n.body {
                Body::Symlink(t) => Some(t.clone()),
                _ => None,
            };
            out.push(Entry { name: name.clone(), ino, kind: n.kind(), attr: n.attr.clone(), target });
        }
        Ok(out)
    }
}

impl FileData {
    fn open_disk(&mut self, store: &Store, ino: u64) -> Res<()> {
        if self.disk.is_none() {
            self.disk = Some(store.open_data(ino, self.fresh).map_err(eio)?);
            self.fresh = false;
        }
        Ok(())
    }

    /// Makes the file's bytes and size durable.
    fn sync(&mut self, store: &Store, ino: u64) -> Res<()> {
        if !self.overlay.is_dirty() {
            return Ok(());
        }
        self.open_disk(store, ino)?;
        let disk = self.disk.as_mut().expect("opened above");
        self.overlay.sync_to(disk).map_err(|e| eio(StoreError::Io { path: store.data_path(ino), source: e }))?;
        disk.sync_data().map_err(|e| eio(StoreError::Io { path: store.data_path(ino), source: e }))
    }
}

fn io_err(store: &Store, ino: u64) -> impl FnOnce(std::io::Error) -> Errno + '_ {
    move |e| eio(StoreError::Io { path: store.data_path(ino), source: e })
}

impl Volatile {
    /// The state a fresh mount shows: what the store holds.
    pub(crate) fn load(store: Arc<Store>) -> Result<Volatile, StoreError> {
        let loaded = store.load()?;
        let mut nodes = HashMap::new();
        let root_attr = Attr::new(0o755, nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        for (&dir, (_, entries)) in &loaded.dirs {
            for e in entries {
                let node = nodes.entry(e.ino).or_insert_with(|| {
                    let body = match e.kind {
                        Kind::File => {
                            let len = loaded.file_len.get(&e.ino).copied().unwrap_or(0);
                            Body::File(Arc::new(FileNode {
                                size: AtomicU64::new(len),
                                data: Mutex::new(FileData { overlay: Overlay::clean(len), disk: None, fresh: false }),
                            }))
                        }
                        Kind::Dir => Body::Dir { entries: BTreeMap::new(), parent: dir },
                        Kind::Symlink => Body::Symlink(e.target.clone().unwrap_or_default()),
                    };
                    Node { body, attr: e.attr.clone(), nlink: 0, lookups: 0, opens: 0 }
                });
                node.nlink += 1;
            }
        }
        nodes.insert(
            ROOT,
            Node {
                body: Body::Dir { entries: BTreeMap::new(), parent: ROOT },
                attr: root_attr,
                nlink: 1,
                lookups: 0,
                opens: 0,
            },
        );
        for (&dir, (_, entries)) in &loaded.dirs {
            if let Some(Node { body: Body::Dir { entries: map, .. }, .. }) = nodes.get_mut(&dir) {
                map.extend(entries.iter().map(|e| (e.name.clone(), e.ino)));
            }
        }
        Ok(Volatile {
            store,
            cut: RwLock::new(false),
            dir_sync: Mutex::new(()),
            ns: Mutex::new(Namespace { nodes, next_ino: loaded.next_ino, dir_handles: HashMap::new() }),
            next_fh: AtomicU64::new(1),
        })
    }

    /// Cuts the power: waits for operations in flight, then refuses all others, so nothing
    /// more reaches the store.
    pub(crate) fn freeze(&self) {
        *self.cut.write().unwrap_or_else(|p| p.into_inner()) = true;
    }

    fn live(&self) -> Res<RwLockReadGuard<'_, bool>> {
        let g = self.cut.read().unwrap_or_else(|p| p.into_inner());
        if *g {
            return Err(Errno::EIO);
        }
        Ok(g)
    }

    fn ns(&self) -> MutexGuard<'_, Namespace> {
        self.ns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Bytes held only in memory, for reports.
    pub(crate) fn unsynced_bytes(&self) -> u64 {
        let files: Vec<Arc<FileNode>> = self
            .ns()
            .nodes
            .values()
            .filter_map(|n| match &n.body {
                Body::File(f) => Some(f.clone()),
                _ => None,
            })
            .collect();
        files.iter().map(|f| f.data.lock().unwrap_or_else(|p| p.into_inner()).overlay.dirty_bytes()).sum()
    }

    fn set_size(&self, f: &FileNode, len: u64) {
        let mut data = f.data.lock().unwrap_or_else(|p| p.into_inner());
        data.overlay.set_size(len);
        f.size.store(len, Ordering::Release);
    }

    fn do_setattr(&self, ino: u64, change: SetAttr) -> Res<FileAttr> {
        let SetAttr { mode, uid, gid, size, atime, mtime } = change;
        let _g = self.live()?;
        if let Some(len) = size {
            let f = self.ns().file(ino)?;
            self.set_size(&f, len);
        }
        let mut ns = self.ns();
        let n = ns.node_mut(ino)?;
        let t = now();
        if let Some(m) = mode {
            n.attr.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            n.attr.uid = u;
        }
        if let Some(g) = gid {
            n.attr.gid = g;
        }
        let resolve = |x: TimeOrNow| match x {
            TimeOrNow::SpecificTime(s) => s,
            TimeOrNow::Now => t,
        };
        if let Some(a) = atime {
            n.attr.atime = resolve(a);
        }
        if let Some(m) = mtime {
            n.attr.mtime = resolve(m);
        } else if size.is_some() {
            n.attr.mtime = t;
        }
        n.attr.ctime = t;
        ns.attr(ino)
    }

    fn new_file(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        open: bool,
    ) -> Res<(u64, FileAttr)> {
        let _g = self.live()?;
        let mut ns = self.ns();
        let body = Body::File(Arc::new(FileNode {
            size: AtomicU64::new(0),
            data: Mutex::new(FileData { overlay: Overlay::clean(0), disk: None, fresh: true }),
        }));
        let attr = Attr::new((mode & !umask & 0o7777) as u16, req.uid(), req.gid());
        let ino = ns.add(parent, name, body, attr)?;
        if open {
            ns.node_mut(ino)?.opens += 1;
        }
        Ok((ino, ns.attr(ino)?))
    }

    fn do_read(&self, ino: u64, off: u64, size: u32) -> Res<Vec<u8>> {
        let _g = self.live()?;
        let f = self.ns().file(ino)?;
        let mut data = f.data.lock().unwrap_or_else(|p| p.into_inner());
        if data.overlay.needs_disk() {
            data.open_disk(&self.store, ino)?;
        }
        data.overlay.read(&data.disk, off, size as u64).map_err(io_err(&self.store, ino))
    }

    fn do_write(&self, ino: u64, off: u64, buf: &[u8], flags: OpenFlags) -> Res<u32> {
        let _g = self.live()?;
        let f = self.ns().file(ino)?;
        {
            let mut data = f.data.lock().unwrap_or_else(|p| p.into_inner());
            if data.overlay.needs_disk() {
                data.open_disk(&self.store, ino)?;
            }
            let FileData { overlay, disk, .. } = &mut *data;
            overlay.write(disk, off, buf).map_err(io_err(&self.store, ino))?;
            f.size.store(overlay.size(), Ordering::Release);
            if flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0 {
                data.sync(&self.store, ino)?;
            }
        }
        if let Ok(n) = self.ns().node_mut(ino) {
            let t = now();
            n.attr.mtime = t;
            n.attr.ctime = t;
        }
        Ok(buf.len() as u32)
    }

    fn do_fsync(&self, ino: u64) -> Res<()> {
        let _g = self.live()?;
        let f = match self.ns().file(ino) {
            Ok(f) => f,
            // fsync of a directory or symlink descriptor opened as a file: nothing to write.
            Err(Errno::EISDIR | Errno::EINVAL) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut data = f.data.lock().unwrap_or_else(|p| p.into_inner());
        data.sync(&self.store, ino)
    }

    fn do_fsyncdir(&self, ino: u64) -> Res<()> {
        let _g = self.live()?;
        let _s = self.dir_sync.lock().unwrap_or_else(|p| p.into_inner());
        let listing = self.ns().listing(ino)?;
        self.store.write_dir(ino, &listing).map_err(eio)
    }

    fn do_release(&self, ino: u64) {
        let file = {
            let mut ns = self.ns();
            let Ok(n) = ns.node_mut(ino) else { return };
            n.opens = n.opens.saturating_sub(1);
            let last = n.opens == 0;
            let file = match &n.body {
                Body::File(f) if last => Some(f.clone()),
                _ => None,
            };
            ns.maybe_drop(ino);
            file
        };
        // Close the backing descriptor so thousands of closed files do not hold thousands of
        // descriptors; the next open reopens it.
        if let Some(f) = file {
            f.data.lock().unwrap_or_else(|p| p.into_inner()).disk = None;
        }
    }

    fn do_fallocate(&self, ino: u64, off: u64, len: u64, mode: i32) -> Res<()> {
        let _g = self.live()?;
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Err(Errno::from_i32(libc::EOPNOTSUPP));
        }
        let f = self.ns().file(ino)?;
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && off + len > f.size.load(Ordering::Acquire) {
            let mut data = f.data.lock().unwrap_or_else(|p| p.into_inner());
            let end = (off + len).max(data.overlay.size());
            data.overlay.set_size(end);
            f.size.store(end, Ordering::Release);
        }
        Ok(())
    }

    fn do_statfs(&self) -> Res<nix::sys::statvfs::Statvfs> {
        nix::sys::statvfs::statvfs(self.store.root()).map_err(|e| Errno::from_i32(e as i32))
    }
}

/// The FUSE face of a [`Volatile`].
pub(crate) struct Fuse(pub(crate) Arc<Volatile>);

fn reply_entry(reply: ReplyEntry, r: Res<FileAttr>) {
    match r {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Res<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Fuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let v = &self.0;
        let r = v.live().and_then(|_g| {
            let mut ns = v.ns();
            let ino = ns.child(parent.0, name)?;
            ns.looked_up(ino)
        });
        reply_entry(reply, r);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut ns = self.0.ns();
        if let Ok(n) = ns.node_mut(ino.0) {
            n.lookups = n.lookups.saturating_sub(nlookup);
        }
        ns.maybe_drop(ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let v = &self.0;
        match v.live().and_then(|_g| v.ns().attr(ino.0)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.0.do_setattr(ino.0, SetAttr { mode, uid, gid, size, atime, mtime }) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let v = &self.0;
        let r = v.live().and_then(|_g| match &v.ns().node(ino.0)?.body {
            Body::Symlink(t) => Ok(t.as_bytes().to_vec()),
            _ => Err(Errno::EINVAL),
        });
        match r {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            // Devices, fifos and sockets: nothing chd keeps in its data directory.
            return reply.error(Errno::EPERM);
        }
        reply_entry(reply, self.0.new_file(req, parent.0, name, mode, umask, false).map(|(_, a)| a));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let v = &self.0;
        let r = v.live().and_then(|_g| {
            let mut ns = v.ns();
            let body = Body::Dir { entries: BTreeMap::new(), parent: parent.0 };
            let attr = Attr::new((mode & !umask & 0o7777) as u16, req.uid(), req.gid());
            let ino = ns.add(parent.0, name, body, attr)?;
            ns.attr(ino)
        });
        reply_entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let v = &self.0;
        let r = v.live().and_then(|_g| {
            let mut ns = v.ns();
            if ns.is_dir(ns.child(parent.0, name)?) {
                return Err(Errno::EISDIR);
            }
            ns.unlink_name(parent.0, name).map(drop)
        });
        reply_empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let v = &self.0;
        let r = v.live().and_then(|_g| {
            let mut ns = v.ns();
            let ino = ns.child(parent.0, name)?;
            if !ns.entries(ino)?.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            ns.unlink_name(parent.0, name).map(drop)
        });
        reply_empty(reply, r);
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let v = &self.0;
        let r = v.live().and_then(|_g| {
            let mut ns = v.ns();
            let body = Body::Symlink(target.as_os_str().to_owned());
            let ino = ns.add(parent.0, link_name, body, Attr::new(0o777, req.uid(), req.gid()))?;
            ns.attr(ino)
        });
        reply_entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let v = &self.0;
        let r = v.live().and_then(|_g| v.ns().rename(parent.0, name, newparent.0, newname, flags));
        reply_empty(reply, r);
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let v = &self.0;
        let r = v.live().and_then(|_g| {
            let mut ns = v.ns();
            if ns.is_dir(ino.0) {
                return Err(Errno::EPERM);
            }
            if newname.len() > 255 {
                return Err(Errno::ENAMETOOLONG);
            }
            if ns.entries(newparent.0)?.contains_key(newname) {
                return Err(Errno::EEXIST);
            }
            ns.node_mut(ino.0)?.nlink += 1;
            ns.node_mut(ino.0)?.attr.ctime = now();
            ns.entries_mut(newparent.0)?.insert(newname.to_owned(), ino.0);
            ns.touch_dir(newparent.0);
            ns.looked_up(ino.0)
        });
        reply_entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let v = &self.0;
        let r = v.live().and_then(|_g| {
            let f = {
                let mut ns = v.ns();
                let n = ns.node_mut(ino.0)?;
                n.opens += 1;
                match &n.body {
                    Body::File(f) => Some(f.clone()),
                    _ => None,
                }
            };
            if let (Some(f), true) = (f, flags.0 & libc::O_TRUNC != 0) {
                v.set_size(&f, 0);
            }
            Ok(v.fh())
        });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.0.do_read(ino.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.0.do_write(ino.0, offset, data, flags) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.0.do_release(ino.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_empty(reply, self.0.do_fsync(ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let v = &self.0;
        let r = v.live().and_then(|_g| {
            let mut ns = v.ns();
            let parent = ns.parent(ino.0)?;
            let mut snap = vec![(ino.0, FileType::Directory, ".".into()), (parent, FileType::Directory, "..".into())];
            for (name, &child) in ns.entries(ino.0)? {
                snap.push((child, file_type(ns.node(child)?.kind()), name.clone()));
            }
            let fh = v.fh();
            ns.dir_handles.insert(fh, DirSnapshot(snap));
            Ok(fh)
        });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let v = &self.0;
        if let Err(e) = v.live() {
            return reply.error(e);
        }
        let ns = v.ns();
        let Some(snap) = ns.dir_handles.get(&fh.0) else { return reply.error(Errno::EBADF) };
        for (i, (ino, kind, name)) in snap.0.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.0.ns().dir_handles.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_empty(reply, self.0.do_fsyncdir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.0.do_statfs() {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                255,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.0.new_file(req, parent.0, name, mode, umask, true) {
            Ok((_, attr)) => reply.created(&TTL, &attr, Generation(0), FileHandle(self.0.fh()), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.0.do_fallocate(ino.0, offset, length, mode));
    }
}
