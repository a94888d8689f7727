//! A worker process: owns one node's database and answers chd over a socketpair.
//!
//! chd starts a worker by running its own executable as `chd worker ...` with two socketpair
//! ends: requests on fd 3 ([`WORKER_FD`]) and health pings on fd 4 ([`HEALTH_FD`]). Two threads:
//! - the apply loop reads every request that has arrived on fd 3 (at most [`MAX_BATCH`] of
//!   them and about [`MAX_BATCH_BYTES`]), applies them in order, makes the batch durable with
//!   one `sync` (group commit: concurrent writes share one fdatasync), and only then sends the
//!   replies. A reply to a write therefore always means "on disk". A batch of spare writes
//!   only (copies chd is not waiting for) may first wait up to [`SPARE_WAIT`] for other
//!   requests to share its sync. Reading, applying and
//!   replying on one thread saves a hand-off between threads per batch: 11% of a worker's CPU
//!   per durable SET.
//! - the health thread answers pings on fd 4 and touches nothing else.
//!
//! Liveness is separate from work: a large write or a slow fsync does not delay a `Pong`. The
//! `Pong` says how many batches the loop has completed and how long it has been on the
//! current one, so chd can tell "busy" (progress) from "hung" (no progress on work it has).
//!
//! The worker holds at most one batch of requests: what chd sends beyond it waits in the
//! socket, and chd bounds what it queues per link.
//!
//! Failures are typed ([`classify`], [`Failure`]) and each has its own exit status: only a
//! database that fails its own checks makes chd set it aside; a held lock, a full disk or
//! another I/O error do not. Before writing, the loop checks free space ([`disk`]): on a full
//! disk writes are refused with `DiskFull` and reads go on. After a storage error the worker
//! exits at once, without replying to the batch (its writes were not acknowledged) and without
//! dropping the engine (sled can hang flushing on a failed disk).
//!
//! The worker exits when chd closes the socket (and is killed by the kernel if chd dies, via
//! `PR_SET_PDEATHSIG`). A frame it cannot read ends it with [`EXIT_IO`] and a line on stderr. A
//! panic aborts the process; chd respawns it.

pub mod disk;
pub mod link;
pub mod node;
pub mod proto;
pub mod values;

use std::collections::HashSet;
use std::io::{self, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chd_data::proto::{decode_body, encode_frame, frame_len, read_frame, EngineKind};
use chd_data::NodeId;

use crate::storage::append::{AppendLog, Shape};
use crate::storage::sled::SledEngine;
use crate::storage::wal::Wal;
use crate::storage::Engine;
use disk::FreeSpace;
use node::Node;
use proto::{Frame, WorkerHello, WorkerRequest, WorkerResponse, MAX_WORKER_FRAME};

/// The fd on which a worker finds its end of the request socketpair.
pub const WORKER_FD: i32 = 3;
/// The fd on which a worker finds its end of the health socketpair (pings only).
pub const HEALTH_FD: i32 = 4;
/// Exit status of a worker whose database fails its own checks (sled reports corruption or a
/// format it does not accept, a record or the node's metadata does not decode): chd may move
/// it aside and rebuild the node.
pub const EXIT_BAD_DATABASE: i32 = 3;
/// Exit status of a worker whose database another process still holds locked.
pub const EXIT_DATABASE_BUSY: i32 = 4;
/// Exit status of a worker that met ENOSPC or EDQUOT (opening, writing or syncing). The data
/// is intact; the node can serve again once space is freed.
pub const EXIT_DISK_FULL: i32 = 5;
/// Exit status of a worker that met any other I/O error (EIO, EACCES, ...), or an unreadable
/// frame from chd. Not a sign that the database is damaged.
pub const EXIT_IO: i32 = 6;

/// Most requests applied in one batch (one sync).
const MAX_BATCH: usize = 512;
/// How long a batch of spare writes only (see [`WorkerRequest::Put`]) may wait for other
/// requests to share its sync. Why: chd waits for W of a key's R copies, and when all R
/// replicas are up it marks the other R-W as spares. A spare's sync alone would be one more
/// flush for the disk to serialize with the flushes chd is waiting for (measured: two files
/// fdatasynced at once took 107-122 µs, one alone 55-65 µs); joined to the next batch it
/// costs nothing. A spare is only waited for when another replica fails to answer, and then
/// for this long at most.
pub const SPARE_WAIT: Duration = Duration::from_millis(2);
/// A batch stops taking requests once it holds this many bytes of requests (it always takes
/// at least one), so one sync never waits on gigabytes.
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// Most bytes of records returned by one `Versions`/`GetMany` answer (at least one record is
/// always returned, so a maximal value still fits: see [`proto::MAX_WORKER_FRAME`]).
const MAX_REPLY_BYTES: usize = 8 << 20;

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// Node id.
    #[arg(long)]
    pub id: NodeId,
    /// The node's database directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Partitions of the ring (a key's partition is part of its stored key).
    #[arg(long)]
    pub partitions: u32,
    /// Free bytes on the database's filesystem that writes never use: a write is refused
    /// ("disk full") unless the filesystem keeps this much free after it.
    #[arg(long, default_value_t = disk::DEFAULT_RESERVE)]
    pub disk_reserve: u64,
    /// The database's page cache, in MiB.
    #[arg(long, default_value_t = crate::config::DEFAULT_CACHE_MIB)]
    pub cache_mib: u64,
    /// The engine of the database if it is new; an existing one keeps its own.
    #[arg(long, default_value = "append")]
    pub engine: EngineKind,
    /// The append log's segment size (smaller only in tests: see [`Shape`]).
    #[arg(long, hide = true, default_value_t = crate::storage::append::SEGMENT_BYTES)]
    pub log_segment_bytes: u64,
    /// The fewest keys added or removed that rebuild the index (smaller only in tests).
    #[arg(long, hide = true, default_value_t = crate::storage::append::REBUILD_MIN)]
    pub index_rebuild_min: usize,
}

/// What went wrong, as far as chd's reaction is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database fails its own checks: set it aside and rebuild.
    BadDatabase,
    /// Another process holds the database's lock: wait and try again.
    Busy,
    /// ENOSPC or EDQUOT: the data is intact; writes must wait for free space.
    DiskFull,
    /// Any other I/O error.
    Io,
}

impl Failure {
    pub fn exit_code(self) -> i32 {
        match self {
            Failure::BadDatabase => EXIT_BAD_DATABASE,
            Failure::Busy => EXIT_DATABASE_BUSY,
            Failure::DiskFull => EXIT_DISK_FULL,
            Failure::Io => EXIT_IO,
        }
    }
}

/// Classifies a storage error. The storage layer keeps the distinction in the error's kind:
/// `InvalidData` for a database that fails its checks, `WouldBlock` for a held lock (see
/// [`crate::storage::sled`]); the OS error code or kind for the rest. An error wrapping another
/// (`io::Error::new(kind, inner)`) is classified by what it wraps when that is more specific.
pub fn classify(e: &io::Error) -> Failure {
    if let Some(code) = e.raw_os_error() {
        return if code == libc::ENOSPC || code == libc::EDQUOT { Failure::DiskFull } else { Failure::Io };
    }
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<io::Error>()) {
        match classify(inner) {
            Failure::Io => {}
            specific => return specific,
        }
    }
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Failure::DiskFull,
        io::ErrorKind::WouldBlock => Failure::Busy,
        // Short reads of a file sled wrote itself mean a truncated file.
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => Failure::BadDatabase,
        _ => Failure::Io,
    }
}

/// Why the worker must stop, and with which exit status.
#[derive(Debug)]
pub struct Fatal {
    pub failure: Failure,
    pub why: String,
}

impl Fatal {
    fn storage(what: &str, e: &io::Error) -> Fatal {
        Fatal { failure: classify(e), why: format!("{what}: {e}") }
    }

    /// The socket to chd failed: not the database's fault.
    fn link(e: io::Error) -> Fatal {
        Fatal { failure: Failure::Io, why: format!("socket to chd: {e}") }
    }
}

pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    // chd alone decides when a worker stops (it asks over the socket, after the last write is
    // answered). A SIGTERM from systemd to the whole cgroup, or a Ctrl-C to the terminal's
    // process group, must not cut a worker out from under a graceful shutdown. If chd itself
    // dies, PR_SET_PDEATHSIG still kills the worker.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    // SAFETY: chd placed our end of the socketpair on WORKER_FD before exec; nothing else in
    // this process owns that fd.
    let stream = unsafe { UnixStream::from_raw_fd(WORKER_FD) };
    // SAFETY: the same for the health socketpair's end on HEALTH_FD.
    let health = unsafe { UnixStream::from_raw_fd(HEALTH_FD) };
    let (id, dir) = (args.id, args.dir.display());
    let exit = |f: Failure, what: &str, e: &dyn std::fmt::Display| -> ! {
        let meaning = match f {
            Failure::BadDatabase => "the database is damaged",
            Failure::Busy => "the database is locked by another process",
            Failure::DiskFull => "the disk is full",
            Failure::Io => "I/O error",
        };
        eprintln!("chd worker {id}: {what} {dir}: {meaning}: {e}");
        std::process::exit(f.exit_code());
    };
    let shape = Shape { segment_bytes: args.log_segment_bytes, rebuild_min: args.index_rebuild_min };
    let (kind, engine) = match panic_is_damage(|| open_engine(&args.dir, args.cache_mib << 20, shape, args.engine)) {
        Ok(e) => e,
        Err(e) => exit(classify(&e), "cannot open database", &e),
    };
    let node = match panic_is_damage(|| Node::open(engine, &args.dir, args.partitions)) {
        Ok(n) => n,
        Err(e) => exit(classify(&e), "cannot read database", &e),
    };
    let disk = Box::new(disk::Statvfs(args.dir.clone()));
    if let Err(fatal) = serve(node, kind, stream, health, disk, args.disk_reserve) {
        exit(fatal.failure, "stopping; database", &fatal.why);
    }
    Ok(())
}

/// Runs `open`, turning a panic inside it into an `InvalidData` error: "the database is
/// damaged", so chd sets it aside and rebuilds the node. sled 0.34 panics on some corrupt logs
/// while recovering them (seen: `segment.rs:556` after 4 KiB of garbage in the middle of `db`);
/// without this the worker crash-looped and the node ended `failed`. The panic's message goes
/// into the error instead of the default hook's output.
fn panic_is_damage<T>(open: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let caught: Arc<Mutex<Option<String>>> = Arc::default();
    let previous = std::panic::take_hook();
    {
        let caught = caught.clone();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let at = info.location().map(|l| format!(" ({}:{})", l.file(), l.line())).unwrap_or_default();
            *caught.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{payload}{at}"));
        }));
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(open));
    std::panic::set_hook(previous);
    result.unwrap_or_else(|_| {
        let why = caught.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
        Err(io::Error::new(io::ErrorKind::InvalidData, format!("the storage engine failed reading its files: {why}")))
    })
}

/// Opens the node's engine, waiting a little if the previous worker of this node is still
/// releasing its lock, and the write-ahead log in front of it (which replays what the last
/// worker logged since its last checkpoint).
///
/// A database keeps the engine it was created with (sled's has its log file `db`, the append
/// log's its directory `log`); a new one, in an empty directory, gets `new`. A node changes
/// engine when it is rebuilt, which starts from an empty directory.
fn open_engine(
    dir: &std::path::Path,
    cache_bytes: u64,
    shape: Shape,
    new: EngineKind,
) -> io::Result<(EngineKind, Wal<Box<dyn Engine>>)> {
    std::fs::create_dir_all(dir)?;
    let kind = engine_of(dir).unwrap_or(new);
    let deadline = Instant::now() + Duration::from_secs(10);
    let engine: Box<dyn Engine> = loop {
        let opened = match kind {
            EngineKind::Sled => SledEngine::open_with_cache(dir, cache_bytes).map(|e| Box::new(e) as Box<dyn Engine>),
            EngineKind::Append => AppendLog::open_shaped(dir, shape).map(|e| Box::new(e) as Box<dyn Engine>),
        };
        match opened {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => break other?,
        }
    };
    Ok((kind, Wal::open(engine, dir)?))
}

/// The engine of the database in `dir`, `None` if there is none yet.
fn engine_of(dir: &std::path::Path) -> Option<EngineKind> {
    if dir.join("db").exists() {
        Some(EngineKind::Sled)
    } else if dir.join("log").exists() {
        Some(EngineKind::Append)
    } else {
        None
    }
}

/// The apply loop's progress, read by the health thread to answer pings.
struct Progress {
    epoch: Instant,
    batches: AtomicU64,
    /// Milliseconds since `epoch`, plus one, at which the current batch started; 0 when idle.
    busy_since: AtomicU64,
    /// Writes per synced batch, and how long each sync took (microseconds): reported with
    /// `Stats`, cumulative since this worker started.
    batch_size: crate::metrics::Histogram,
    sync_us: crate::metrics::Histogram,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            epoch: Instant::now(),
            batches: AtomicU64::new(0),
            busy_since: AtomicU64::new(0),
            batch_size: crate::metrics::Histogram::new(),
            sync_us: crate::metrics::Histogram::new(),
        }
    }
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }
    fn start(&self) {
        self.busy_since.store(self.now(), Ordering::SeqCst);
    }
    fn done(&self) {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.busy_since.store(0, Ordering::SeqCst);
    }
    fn pong(&self) -> WorkerResponse {
        let since = self.busy_since.load(Ordering::SeqCst);
        let busy_ms = if since == 0 { 0 } else { self.now().saturating_sub(since) };
        WorkerResponse::Pong { batches: self.batches.load(Ordering::SeqCst), busy_ms }
    }
}

/// Serves chd on `stream` (requests) and `health` (pings) until chd closes `stream` or asks
/// for a shutdown (`Ok`), or until a failure that must end the process (`Err`; the caller
/// exits with its status at once).
pub fn serve<E: Engine>(
    node: Node<E>,
    engine: EngineKind,
    stream: UnixStream,
    health: UnixStream,
    disk: Box<dyn FreeSpace>,
    reserve: u64,
) -> Result<(), Fatal> {
    let link = Fatal::link;
    let mut out = stream.try_clone().map_err(link)?;
    let mut worker = Worker { node, disk, reserve };
    let hello = WorkerHello {
        pid: std::process::id(),
        identity: worker.node.identity().map_err(|e| Fatal::storage("reading the node identity", &e))?,
        rebuild_pending: worker.node.rebuild_pending().map_err(|e| Fatal::storage("reading the node state", &e))?,
        max_version: worker.node.max_version(),
        live_keys: worker.node.live_keys(),
        engine,
    };
    proto_write(&mut out, &[Frame { id: 0, msg: WorkerResponse::Hello(hello) }]).map_err(link)?;

    let progress = Arc::new(Progress::new());
    {
        let progress = progress.clone();
        std::thread::Builder::new()
            .name("health".into())
            .spawn(move || answer_pings(health, &progress))
            .map_err(link)?;
    }

    // Buffered: chd writes many small frames at once, and reading each frame's length and
    // body with a syscall apiece was a sixth of a worker's time under load.
    let mut input = io::BufReader::with_capacity(256 << 10, stream);
    let (ended, asked) = loop {
        let bodies = match next_batch(&mut input, MAX_BATCH_BYTES) {
            Ok(Some(bodies)) => bodies,
            Ok(None) => break (Ok(()), false),
            Err(bad_frame) => break (Err(bad_frame), false),
        };
        let bytes = bodies.iter().map(Vec::len).sum();
        // Each body is dropped once decoded: a batch is not held twice.
        let batch = bodies.into_iter().map(|b| decode_request(&b)).collect::<Result<Vec<_>, Fatal>>();
        let batch = batch.and_then(|mut batch| {
            if batch.iter().all(|f| f.msg.is_spare()) {
                let deadline = Instant::now() + SPARE_WAIT;
                join_spares(&mut input, &mut batch, bytes, MAX_BATCH_BYTES, deadline)?;
            }
            Ok(batch)
        });
        // Busy from here: waiting for company above is not work chd is waiting for.
        progress.start();
        let early = |replies: &[Frame<WorkerResponse>]| proto_write(&mut out, replies).map_err(link);
        let done = match batch.and_then(|batch| worker.apply_batch(batch, &progress, early)) {
            Ok(done) => done,
            Err(fatal) => {
                // No reply: the batch's writes were not acknowledged. The engine is not dropped:
                // sled's drop flushes, and on a failed disk that can hang.
                std::mem::forget(worker);
                return Err(fatal);
            }
        };
        progress.done();
        proto_write(&mut out, &done.replies).map_err(link)?;
        if done.shutdown {
            break (Ok(()), true);
        }
    };
    // Only a shutdown chd asked for is a clean close that saves the index. When chd dies, its
    // workers see the socket close just before the death signal kills them; an index saved
    // then outlived the crash, and the next start trusted it without reading the log, so
    // damage done to a segment in between went unnoticed (torture: `corrupt` with chd killed).
    let closed = match asked {
        true => worker.node.close(),
        false => worker.node.sync(),
    };
    if let Err(e) = closed {
        let fatal = Fatal::storage("closing the database", &e);
        std::mem::forget(worker);
        return Err(fatal);
    }
    ended
}

/// The next batch: waits for one request, then takes the others already read or readable
/// without waiting, up to [`MAX_BATCH`] requests and `max_bytes` (a request that would pass
/// the byte limit stays for the next batch). `None` at a clean end of the stream. A frame
/// that cannot be read (too large, truncated) is an [`EXIT_IO`] failure, but only once the
/// requests before it have been served.
fn next_batch(input: &mut io::BufReader<UnixStream>, max_bytes: usize) -> Result<Option<Vec<Vec<u8>>>, Fatal> {
    let bad = |e: chd_data::proto::FrameError| Fatal {
        failure: Failure::Io,
        why: format!("cannot read a request frame from chd: {e}"),
    };
    let Some(first) = read_frame(input, MAX_WORKER_FRAME).map_err(bad)? else { return Ok(None) };
    let mut bytes = first.len();
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        // Only a frame already whole in the buffer: the batch never waits for more input. A
        // bad length is left for the next call to fail on, after this batch is answered.
        let Ok(Some(len)) = frame_len(input.buffer(), MAX_WORKER_FRAME) else { break };
        if bytes + len > max_bytes {
            break;
        }
        let body = read_frame(input, MAX_WORKER_FRAME).map_err(bad)?.expect("a whole frame is buffered");
        bytes += body.len();
        batch.push(body);
    }
    Ok(Some(batch))
}

/// Adds to a batch of spare writes only the requests that arrive before `deadline`, so that
/// one sync serves them all ([`SPARE_WAIT`] says why). Stops as soon as the batch holds a
/// request that is not a spare write (chd waits for that one), at [`MAX_BATCH`] requests or
/// `max_bytes`, and at a frame that is only partly there or cannot be read, or the end of the
/// stream: those are left for [`next_batch`], after this batch is answered.
fn join_spares(
    input: &mut io::BufReader<UnixStream>,
    batch: &mut Vec<Frame<WorkerRequest>>,
    mut bytes: usize,
    max_bytes: usize,
    deadline: Instant,
) -> Result<(), Fatal> {
    use std::io::BufRead;
    let link = Fatal::link;
    while batch.len() < MAX_BATCH && batch.last().is_some_and(|f| f.msg.is_spare()) {
        match frame_len(input.buffer(), MAX_WORKER_FRAME) {
            Ok(Some(len)) if bytes + len <= max_bytes => {
                let body = read_frame(input, MAX_WORKER_FRAME)
                    .map_err(|e| link(io::Error::other(e.to_string())))?
                    .expect("a whole frame is buffered");
                bytes += body.len();
                batch.push(decode_request(&body)?);
            }
            Ok(None) if input.buffer().is_empty() => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || !readable_within(input.get_ref(), left).map_err(link)? {
                    break;
                }
                match input.fill_buf() {
                    Ok([]) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(link(e)),
                }
            }
            _ => break,
        }
    }
    Ok(())
}

/// Whether `socket` has something to read (or has closed) within `timeout`.
fn readable_within(socket: &UnixStream, timeout: Duration) -> io::Result<bool> {
    use nix::poll::{ppoll, PollFd, PollFlags};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    match ppoll(&mut fds, Some(timeout.into()), None) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn decode_request(body: &[u8]) -> Result<Frame<WorkerRequest>, Fatal> {
    decode_body(body).map_err(|e| Fatal {
        failure: Failure::Io,
        why: format!("undecodable request frame of {} bytes from chd: {e}", body.len()),
    })
}

/// The health thread: answers each ping on `health` with the apply loop's progress, until
/// chd closes it or sends something it cannot read (the request link decides the worker's
/// fate; this thread just stops).
fn answer_pings(health: UnixStream, progress: &Progress) {
    let Ok(mut out) = health.try_clone() else { return };
    let mut input = io::BufReader::with_capacity(4 << 10, health);
    while let Ok(Some(body)) = read_frame(&mut input, MAX_WORKER_FRAME) {
        let Ok(Frame { id, msg: WorkerRequest::Ping }) = decode_body(&body) else { return };
        if proto_write(&mut out, &[Frame { id, msg: progress.pong() }]).is_err() {
            return;
        }
    }
}

/// A node's database plus what the apply loop needs to decide about writes.
struct Worker<E> {
    node: Node<E>,
    disk: Box<dyn FreeSpace>,
    reserve: u64,
}

struct BatchDone {
    /// The replies to send once the batch is durable (those not sent early).
    replies: Vec<Frame<WorkerResponse>>,
    shutdown: bool,
}

/// Which reads of a batch may be answered before the batch's sync.
///
/// A read answered before the sync must not show a write of the same batch: that write is
/// not on disk yet, and chd may not have it on W replicas either. Everything earlier batches
/// wrote is durable, so a `Get` is safe to answer early when no request before it in this
/// batch wrote its key. Writes of many keys at once (`PutMany`, a partition drop, a purge)
/// end early answers for the rest of the batch rather than being tracked key by key.
#[derive(Default)]
struct EarlyReads {
    written: HashSet<Vec<u8>>,
    closed: bool,
}

impl EarlyReads {
    /// Notes a request in batch order; returns whether it is a read that may be answered now.
    fn admit(&mut self, msg: &WorkerRequest) -> bool {
        match msg {
            WorkerRequest::Get { key } => !self.closed && !self.written.contains(key),
            WorkerRequest::Put { key, .. } => {
                self.written.insert(key.clone());
                false
            }
            WorkerRequest::Ping | WorkerRequest::Stats => false,
            WorkerRequest::Digests { .. }
            | WorkerRequest::Versions { .. }
            | WorkerRequest::GetMany { .. }
            | WorkerRequest::PartitionStats { .. }
            | WorkerRequest::NonEmptyPartitions
            | WorkerRequest::Keys { .. } => false,
            WorkerRequest::PutMany { .. }
            | WorkerRequest::DropPartition { .. }
            | WorkerRequest::PurgeTombstones { .. }
            | WorkerRequest::SetIdentity { .. }
            | WorkerRequest::Shutdown => {
                self.closed = true;
                false
            }
        }
    }
}

impl<E: Engine> Worker<E> {
    /// Applies a batch in order and syncs it if anything was written. The writes of a batch are
    /// all refused together when the disk lacks space for them.
    ///
    /// Reads that no earlier write of the batch touched ([`EarlyReads`]) are handed to `early`
    /// before the sync: a `GET` never waits for the fsync of other clients' writes.
    fn apply_batch(
        &mut self,
        batch: Vec<Frame<WorkerRequest>>,
        progress: &Progress,
        early: impl FnOnce(&[Frame<WorkerResponse>]) -> Result<(), Fatal>,
    ) -> Result<BatchDone, Fatal> {
        let writes: Option<u64> = batch.iter().filter_map(|f| disk::write_bytes(&f.msg)).reduce(|a, b| a + b);
        let refusal = match writes {
            None => None,
            Some(w) => match self.disk.free_bytes() {
                Ok(free) => disk::check(free, self.reserve, w).err(),
                // Cannot tell: let the write try; sled reports a real problem itself.
                Err(e) => {
                    eprintln!("chd worker: cannot check free disk space: {e}");
                    None
                }
            },
        };
        let mut replies = Vec::with_capacity(batch.len());
        let mut early_replies = Vec::new();
        // Tracking keys costs a copy per write: only done when the batch mixes in reads.
        let mixed = batch.len() > 1 && batch.iter().any(|f| matches!(f.msg, WorkerRequest::Get { .. }));
        let mut reads = EarlyReads::default();
        let mut dirty = false;
        let mut written = 0;
        let mut shutdown = false;
        for Frame { id, msg } in batch {
            let answer_early = mixed && reads.admit(&msg);
            let reply = match (refusal, disk::write_bytes(&msg)) {
                (Some(r), Some(_)) => WorkerResponse::DiskFull { free: r.free, needed: r.needed },
                _ => match apply(&mut self.node, msg, progress).map_err(|e| Fatal::storage("storage error", &e))? {
                    Applied::Reply(r, wrote) => {
                        dirty |= wrote;
                        written += u64::from(wrote);
                        r
                    }
                    Applied::Shutdown => {
                        shutdown = true;
                        WorkerResponse::Done
                    }
                },
            };
            match answer_early {
                true => early_replies.push(Frame { id, msg: reply }),
                false => replies.push(Frame { id, msg: reply }),
            }
        }
        if !early_replies.is_empty() {
            early(&early_replies)?;
        }
        if dirty {
            let started = Instant::now();
            self.node.sync().map_err(|e| Fatal::storage("sync failed", &e))?;
            progress.sync_us.record_micros(started.elapsed());
            progress.batch_size.record(written);
        }
        Ok(BatchDone { replies, shutdown })
    }
}

enum Applied {
    /// The reply, and whether the request wrote (so the batch needs a sync before replying).
    Reply(WorkerResponse, bool),
    Shutdown,
}

fn apply<E: Engine>(node: &mut Node<E>, req: WorkerRequest, progress: &Progress) -> io::Result<Applied> {
    use WorkerResponse as R;
    let reply = match req {
        WorkerRequest::Put { key, record, .. } => (R::Stored(node.put(&key, &record)?), true),
        WorkerRequest::Get { key } => (R::Record(node.get(&key)?), false),
        // The reader answers pings; one reaching the loop is answered the same way.
        WorkerRequest::Ping => (progress.pong(), false),
        WorkerRequest::Stats => (
            R::Stats {
                live_keys: node.live_keys(),
                bytes: node.size_on_disk(),
                batch_size: progress.batch_size.snapshot(),
                sync_us: progress.sync_us.snapshot(),
            },
            false,
        ),
        WorkerRequest::Digests { partitions } => {
            let d = partitions.iter().map(|&p| node.digest(p)).collect::<io::Result<_>>()?;
            (R::Digests(d), false)
        }
        WorkerRequest::Versions { partition, after, limit } => {
            let mut page = node.versions(partition, after.as_deref(), limit as usize)?;
            // Long keys: cut the page short to stay under the frame limit; the caller pages on.
            let mut bytes = 0;
            if let Some(cut) = page.iter().position(|(k, _)| {
                // The key, its length, the version: under 16 bytes of framing.
                bytes += k.len() + 16;
                bytes > MAX_REPLY_BYTES
            }) {
                page.truncate(cut.max(1));
            }
            (R::Versions(page), false)
        }
        WorkerRequest::GetMany { keys } => {
            let mut out = Vec::with_capacity(keys.len());
            let mut bytes = 0;
            for k in keys {
                let r = node.get(&k)?;
                // Postcard's framing of one entry (lengths, tags, version) is under 32 bytes.
                let size = 32 + k.len() + r.as_ref().and_then(|r| r.value.as_ref()).map_or(0, Vec::len);
                // Keep the answer under the frame limit; the caller asks again for the rest. The
                // first entry always goes, so a maximal record still flows.
                if !out.is_empty() && bytes + size > MAX_REPLY_BYTES {
                    break;
                }
                bytes += size;
                out.push((k, r));
            }
            (R::Records(out), false)
        }
        WorkerRequest::PutMany { entries } => {
            let mut stored = 0;
            for (k, r) in &entries {
                stored += u64::from(node.put(k, r)?);
            }
            (R::Count(stored), true)
        }
        WorkerRequest::DropPartition { partition } => (R::Count(node.drop_partition(partition)?), true),
        WorkerRequest::PurgeTombstones { partitions, below } => {
            let mut purged = 0;
            for p in partitions {
                purged += node.purge_tombstones(p, below)?;
            }
            (R::Count(purged), true)
        }
        WorkerRequest::SetIdentity { node: id, rebuild_pending } => {
            node.set_identity(id, rebuild_pending)?;
            (R::Done, true)
        }
        WorkerRequest::Shutdown => return Ok(Applied::Shutdown),
        WorkerRequest::PartitionStats { partitions } => {
            let stats = partitions.iter().map(|&p| node.partition_stats(p)).collect::<io::Result<_>>()?;
            (R::PartitionStats(stats), false)
        }
        WorkerRequest::NonEmptyPartitions => (R::Partitions(node.non_empty_partitions()?), false),
        WorkerRequest::Keys { partition, after, limit } => {
            let mut page = node.keys(partition, after.as_deref(), limit as usize)?;
            let mut bytes = 0;
            if let Some(cut) = page.iter().position(|(k, _, _)| {
                bytes += k.len() + 16;
                bytes > MAX_REPLY_BYTES
            }) {
                page.truncate(cut.max(1));
            }
            (R::Keys(page), false)
        }
    };
    Ok(Applied::Reply(reply.0, reply.1))
}

/// Writes all frames with one syscall where possible: replies of a batch leave together.
fn proto_write(out: &mut UnixStream, frames: &[Frame<WorkerResponse>]) -> io::Result<()> {
    let mut buf = Vec::new();
    for f in frames {
        encode_frame(f, &mut buf);
    }
    out.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryEngine;
    use chd_data::proto::MAX_VALUE;
    use chd_data::Record;
    use std::sync::{mpsc, Condvar};

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn a_panic_while_opening_is_a_damaged_database_and_is_not_printed_as_a_panic() {
        let e = panic_is_damage::<()>(|| panic!("tried to serialize Uninitialized")).unwrap_err();
        assert_eq!(classify(&e), Failure::BadDatabase);
        assert!(e.to_string().contains("tried to serialize Uninitialized") && e.to_string().contains("mod.rs"), "{e}");
        assert!(!e.to_string().contains("panicked"), "{e}");
        assert_eq!(panic_is_damage(|| Ok(7)).unwrap(), 7);
        let err = panic_is_damage::<()>(|| Err(os(libc::ENOSPC))).unwrap_err();
        assert_eq!(classify(&err), Failure::DiskFull, "an error passes through unchanged");
    }

    #[test]
    fn classify_tells_a_full_disk_from_a_failing_one_from_a_damaged_database() {
        assert_eq!(classify(&os(libc::ENOSPC)), Failure::DiskFull);
        assert_eq!(classify(&os(libc::EDQUOT)), Failure::DiskFull);
        assert_eq!(classify(&os(libc::EIO)), Failure::Io);
        assert_eq!(classify(&os(libc::EACCES)), Failure::Io);
        // sled hands out copies of a stored error that keep the kind but not the OS code.
        assert_eq!(classify(&io::Error::new(io::ErrorKind::StorageFull, "Os { code: 28 }")), Failure::DiskFull);
        assert_eq!(classify(&io::Error::new(io::ErrorKind::QuotaExceeded, "quota")), Failure::DiskFull);
        // What the storage layer makes of sled's corruption reports and of undecodable records.
        assert_eq!(classify(&io::Error::new(io::ErrorKind::InvalidData, "sled: corruption")), Failure::BadDatabase);
        assert_eq!(classify(&io::Error::new(io::ErrorKind::UnexpectedEof, "short read")), Failure::BadDatabase);
        // A held lock, and a wrapped OS error classified by what it wraps.
        assert_eq!(classify(&io::Error::new(io::ErrorKind::WouldBlock, io::Error::other("lock"))), Failure::Busy);
        assert_eq!(classify(&io::Error::other(os(libc::ENOSPC))), Failure::DiskFull);
        assert_eq!(classify(&io::Error::other("something else")), Failure::Io);
        let codes = [Failure::BadDatabase, Failure::Busy, Failure::DiskFull, Failure::Io].map(Failure::exit_code);
        assert_eq!(codes, [EXIT_BAD_DATABASE, EXIT_DATABASE_BUSY, EXIT_DISK_FULL, EXIT_IO]);
    }

    #[test]
    fn sled_reports_a_damaged_database_as_bad_and_a_held_lock_as_busy() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut e = SledEngine::open(dir.path()).unwrap();
            e.put(b"k", b"v").unwrap();
            e.sync().unwrap();
            assert_eq!(classify(&SledEngine::open(dir.path()).err().unwrap()), Failure::Busy);
        }
        // Every file overwritten with garbage: sled refuses the format.
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let f = f.unwrap().path();
            if f.is_file() {
                let len = std::fs::metadata(&f).unwrap().len().max(64) as usize;
                std::fs::write(&f, vec![0xa5; len]).unwrap();
            }
        }
        let e = SledEngine::open(dir.path()).err().expect("garbage must not open");
        assert_eq!(classify(&e), Failure::BadDatabase, "{e}");
    }

    /// A database keeps the engine it was created with, whatever the setting for new ones
    /// says; a new database gets the engine asked for. Each is recognized by its files.
    #[test]
    fn a_database_keeps_its_engine_and_a_new_one_gets_the_one_asked_for() {
        for (first, then) in [(EngineKind::Sled, EngineKind::Append), (EngineKind::Append, EngineKind::Sled)] {
            let dir = tempfile::tempdir().unwrap();
            {
                let (kind, mut e) = open_engine(dir.path(), 1 << 20, Shape::default(), first).unwrap();
                assert_eq!(kind, first);
                e.put(b"k", first.as_str().as_bytes()).unwrap();
                e.sync().unwrap();
            }
            let (kind, e) = open_engine(dir.path(), 1 << 20, Shape::default(), then).unwrap();
            assert_eq!(kind, first, "a {first} database was opened as {kind}");
            assert_eq!(e.get(b"k").unwrap(), Some(first.as_str().as_bytes().to_vec()));
            let (sled_files, append_files) = (dir.path().join("db").exists(), dir.path().join("log").exists());
            assert_eq!((sled_files, append_files), (first == EngineKind::Sled, first == EngineKind::Append));
        }
    }

    /// Free space as a test sets it.
    #[derive(Clone)]
    struct FakeDisk(Arc<AtomicU64>);
    impl FreeSpace for FakeDisk {
        fn free_bytes(&self) -> io::Result<u64> {
            Ok(self.0.load(Ordering::SeqCst))
        }
    }

    const RESERVE: u64 = 16 << 20;

    fn rec(version: u64, value: &[u8]) -> Record {
        Record { version, value: Some(value.to_vec()) }
    }

    fn frames(reqs: Vec<WorkerRequest>) -> Vec<Frame<WorkerRequest>> {
        reqs.into_iter().enumerate().map(|(i, msg)| Frame { id: i as u64 + 1, msg }).collect()
    }

    /// Applies a batch; every reply, whether sent early or after the sync, in request order.
    fn run<E: Engine>(
        w: &mut Worker<E>,
        batch: Vec<Frame<WorkerRequest>>,
        progress: &Progress,
    ) -> Result<Vec<WorkerResponse>, Fatal> {
        let mut all = Vec::new();
        let done = w.apply_batch(batch, progress, |early| {
            all.extend_from_slice(early);
            Ok(())
        })?;
        all.extend(done.replies);
        all.sort_by_key(|f| f.id);
        Ok(all.into_iter().map(|f| f.msg).collect())
    }

    #[test]
    fn a_full_disk_refuses_writes_and_still_answers_reads() {
        let free = Arc::new(AtomicU64::new(1 << 30));
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(MemoryEngine::default(), dir.path(), 4).unwrap();
        let mut w = Worker { node, disk: Box::new(FakeDisk(free.clone())), reserve: RESERVE };
        let progress = Progress::new();
        let put = |k: &str, v: u64| WorkerRequest::Put { key: k.into(), record: rec(v, b"value"), spare: false };
        let get = |k: &str| WorkerRequest::Get { key: k.into() };
        let r = run(&mut w, frames(vec![put("a", 1)]), &progress).unwrap();
        assert_eq!(r, vec![WorkerResponse::Stored(true)]);

        free.store(RESERVE + 100, Ordering::SeqCst);
        let batch = vec![
            put("b", 2),
            get("a"),
            WorkerRequest::PutMany { entries: vec![(b"c".to_vec(), rec(3, b"x"))] },
            WorkerRequest::SetIdentity { node: 1, rebuild_pending: false },
            WorkerRequest::DropPartition { partition: partition_of_key("zzz") },
            get("b"),
        ];
        let needed = RESERVE + 2 * batch.iter().filter_map(disk::write_bytes).sum::<u64>();
        let full = WorkerResponse::DiskFull { free: RESERVE + 100, needed };
        let r = run(&mut w, frames(batch), &progress).unwrap();
        assert_eq!(r[0], full);
        assert_eq!(r[1], WorkerResponse::Record(Some(rec(1, b"value"))));
        assert_eq!(r[2], full);
        assert_eq!(r[3], full);
        assert!(matches!(r[4], WorkerResponse::Count(_)), "dropping a partition frees space: allowed");
        assert_eq!(r[5], WorkerResponse::Record(None), "a refused write writes nothing");
        assert_eq!(w.node.identity().unwrap(), None);

        // Space freed: writes go through again, with nothing else to do.
        free.store(1 << 30, Ordering::SeqCst);
        let r = run(&mut w, frames(vec![put("b", 2), get("b")]), &progress).unwrap();
        assert_eq!(r, vec![WorkerResponse::Stored(true), WorkerResponse::Record(Some(rec(2, b"value")))]);
    }

    fn partition_of_key(k: &str) -> u32 {
        chd_data::ring::partition_of(k.as_bytes(), 4)
    }

    #[test]
    fn a_storage_error_is_fatal_with_its_class_and_no_reply() {
        struct FullOnPut(MemoryEngine);
        impl Engine for FullOnPut {
            fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
                self.0.get(key)
            }
            fn put(&mut self, _: &[u8], _: &[u8]) -> io::Result<()> {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
            fn delete(&mut self, key: &[u8]) -> io::Result<()> {
                self.0.delete(key)
            }
            fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> io::Result<Vec<crate::storage::Entry>> {
                self.0.scan(from, to, limit)
            }
            fn sync(&mut self) -> io::Result<()> {
                Ok(())
            }
            fn size_on_disk(&self) -> u64 {
                0
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(FullOnPut(MemoryEngine::default()), dir.path(), 4).unwrap();
        let disk = Box::new(FakeDisk(Arc::new(AtomicU64::new(1 << 30))));
        let mut w = Worker { node, disk, reserve: RESERVE };
        let batch = frames(vec![WorkerRequest::Put { key: b"k".to_vec(), record: rec(1, b"v"), spare: false }]);
        let fatal = run(&mut w, batch, &Progress::new()).expect_err("ENOSPC from the engine is fatal");
        assert_eq!(fatal.failure, Failure::DiskFull, "{}", fatal.why);
    }

    #[test]
    fn a_batch_is_bounded_in_bytes_but_always_takes_one_request() {
        let (mut chd, theirs) = UnixStream::pair().unwrap();
        const MAX: usize = 1000;
        let big = MAX / 2 + 1;
        // Each body is its id repeated: sizes stand for the requests.
        for (id, bytes) in [(1, big), (2, big), (3, 10), (4, 2 * MAX), (5, 10)] {
            chd.write_all(&(bytes as u32).to_be_bytes()).unwrap();
            chd.write_all(&vec![id; bytes]).unwrap();
        }
        drop(chd);
        let mut input = io::BufReader::with_capacity(256 << 10, theirs);
        let mut ids = Vec::new();
        while let Some(batch) = next_batch(&mut input, MAX).unwrap() {
            let bytes: usize = batch.iter().map(Vec::len).sum();
            assert!(bytes <= MAX || batch.len() == 1, "{bytes} bytes in {} requests", batch.len());
            ids.push(batch.iter().map(|b| b[0]).collect::<Vec<_>>());
        }
        assert_eq!(ids, vec![vec![1], vec![2, 3], vec![4], vec![5]]);
    }

    #[test]
    fn a_batch_takes_only_what_has_arrived_and_stops_before_a_bad_frame() {
        let (mut chd, theirs) = UnixStream::pair().unwrap();
        let mut input = io::BufReader::with_capacity(256 << 10, theirs);
        // One whole frame and the first half of the next: the batch does not wait for the rest.
        chd.write_all(&[0, 0, 0, 2, 1, 1, 0, 0, 0, 2, 2]).unwrap();
        assert_eq!(next_batch(&mut input, 1000).unwrap(), Some(vec![vec![1, 1]]));
        chd.write_all(&[2]).unwrap();
        // A frame over the limit after a good one: the good one is served first.
        chd.write_all(&[0, 0, 0, 1, 3]).unwrap();
        chd.write_all(&(MAX_WORKER_FRAME as u32 + 1).to_be_bytes()).unwrap();
        assert_eq!(next_batch(&mut input, 1000).unwrap(), Some(vec![vec![2, 2], vec![3]]));
        let fatal = next_batch(&mut input, 1000).expect_err("an oversized frame ends the worker");
        assert_eq!(fatal.failure, Failure::Io);
    }

    /// A batch of spare writes takes what arrives before its deadline, up to and including
    /// the first request that is not a spare write, and never more than its limits allow.
    #[test]
    fn spare_writes_wait_for_company_until_a_request_chd_waits_for() {
        let frame = |id: u64, spare: bool| {
            let msg = WorkerRequest::Put { key: format!("k{id}").into_bytes(), record: rec(id, b"v"), spare };
            let mut buf = Vec::new();
            encode_frame(&Frame { id, msg }, &mut buf);
            buf
        };
        let ids = |batch: &[Frame<WorkerRequest>]| batch.iter().map(|f| f.id).collect::<Vec<_>>();
        let far = || Instant::now() + Duration::from_secs(600);
        let (mut chd, theirs) = UnixStream::pair().unwrap();
        let mut input = io::BufReader::with_capacity(256 << 10, theirs);
        let first = |input: &mut io::BufReader<UnixStream>| {
            let bodies = next_batch(input, MAX_BATCH_BYTES).unwrap().unwrap();
            let bytes = bodies.iter().map(Vec::len).sum::<usize>();
            (bodies.iter().map(|b| decode_request(b).unwrap()).collect::<Vec<_>>(), bytes)
        };

        // Spares 1 and 2 arrive later, then 3 which chd waits for, then 4: the wait ends at 3.
        chd.write_all(&frame(1, true)).unwrap();
        let (mut batch, bytes) = first(&mut input);
        let mut sender = chd.try_clone().unwrap();
        let late = std::thread::spawn(move || {
            for (id, spare) in [(2, true), (3, false), (4, true)] {
                sender.write_all(&frame(id, spare)).unwrap();
            }
        });
        join_spares(&mut input, &mut batch, bytes, MAX_BATCH_BYTES, far()).unwrap();
        late.join().unwrap();
        assert_eq!(ids(&batch), [1, 2, 3]);
        assert_eq!(ids(&first(&mut input).0), [4], "what came after is the next batch");

        // Nothing comes: the batch goes at its deadline as it is.
        chd.write_all(&frame(5, true)).unwrap();
        let (mut batch, bytes) = first(&mut input);
        join_spares(&mut input, &mut batch, bytes, MAX_BATCH_BYTES, Instant::now() + Duration::from_millis(5)).unwrap();
        assert_eq!(ids(&batch), [5]);

        // A spare that would pass the byte limit waits for the next batch.
        chd.write_all(&frame(6, true)).unwrap();
        chd.write_all(&frame(7, true)).unwrap();
        let (mut batch, bytes) = first(&mut input);
        let ids_now = ids(&batch);
        assert_eq!(ids_now, [6, 7], "whole frames already there join the batch at once");
        chd.write_all(&frame(8, true)).unwrap();
        join_spares(&mut input, &mut batch, bytes, bytes, far()).unwrap();
        assert_eq!(ids(&batch), [6, 7]);
        assert_eq!(ids(&first(&mut input).0), [8]);

        // The end of the stream ends the wait; the next read sees the end.
        chd.write_all(&frame(9, true)).unwrap();
        let (mut batch, bytes) = first(&mut input);
        drop(chd);
        join_spares(&mut input, &mut batch, bytes, MAX_BATCH_BYTES, far()).unwrap();
        assert_eq!(ids(&batch), [9]);
        assert_eq!(next_batch(&mut input, MAX_BATCH_BYTES).unwrap(), None);
    }

    #[test]
    fn one_maximal_record_fits_a_worker_frame_both_ways() {
        let key = vec![7u8; chd_data::proto::MAX_KEY];
        let record = rec(u64::MAX, &vec![9u8; MAX_VALUE]);
        let mut buf = Vec::new();
        let req = WorkerRequest::PutMany { entries: vec![(key.clone(), record.clone())] };
        encode_frame(&Frame { id: u64::MAX, msg: req }, &mut buf);
        assert!(buf.len() - 4 <= MAX_WORKER_FRAME);

        // GetMany's answer: just under the reply limit of small records, then a maximal one,
        // which must still come back (alone if need be) and fit.
        let dir = tempfile::tempdir().unwrap();
        let mut node = Node::open(MemoryEngine::default(), dir.path(), 4).unwrap();
        let mut keys = Vec::new();
        for i in 0..7u32 {
            let k = format!("m-{i}").into_bytes();
            node.put(&k, &rec(1, &vec![1u8; 1 << 20])).unwrap();
            keys.push(k);
        }
        node.put(&key, &record).unwrap();
        keys.push(key.clone());
        let progress = Progress::new();
        let mut got = Vec::new();
        while !keys.is_empty() {
            let Applied::Reply(WorkerResponse::Records(rs), false) =
                apply(&mut node, WorkerRequest::GetMany { keys: keys.clone() }, &progress).unwrap()
            else {
                panic!("GetMany answers Records")
            };
            assert!(!rs.is_empty(), "GetMany must always make progress");
            let mut buf = Vec::new();
            encode_frame(&Frame { id: u64::MAX, msg: WorkerResponse::Records(rs.clone()) }, &mut buf);
            assert!(buf.len() - 4 <= MAX_WORKER_FRAME, "{} bytes", buf.len());
            keys.drain(..rs.len());
            got.extend(rs);
        }
        assert_eq!(got.len(), 8);
        assert_eq!(got[7].1.as_ref().unwrap().value.as_ref().unwrap().len(), MAX_VALUE);
    }

    /// A memory engine whose `sync` waits until the test lets one more sync through, to hold a
    /// batch open.
    struct Gated {
        inner: MemoryEngine,
        entered: mpsc::Sender<()>,
        /// Syncs the test has let through and that have not happened yet.
        gate: Arc<(Mutex<u32>, Condvar)>,
    }

    fn let_one_sync_through(gate: &(Mutex<u32>, Condvar)) {
        *gate.0.lock().unwrap() += 1;
        gate.1.notify_all();
    }
    impl Engine for Gated {
        fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
            self.inner.get(key)
        }
        fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
            self.inner.put(key, value)
        }
        fn delete(&mut self, key: &[u8]) -> io::Result<()> {
            self.inner.delete(key)
        }
        fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> io::Result<Vec<crate::storage::Entry>> {
            self.inner.scan(from, to, limit)
        }
        fn sync(&mut self) -> io::Result<()> {
            let _ = self.entered.send(());
            let (allowed, cv) = &*self.gate;
            let mut allowed = allowed.lock().unwrap();
            while *allowed == 0 {
                allowed = cv.wait(allowed).unwrap();
            }
            *allowed -= 1;
            Ok(())
        }
        fn size_on_disk(&self) -> u64 {
            0
        }
    }

    /// chd's side of a worker served on a thread of the test.
    struct Chd {
        stream: UnixStream,
        health: UnixStream,
        worker: std::thread::JoinHandle<Result<(), Fatal>>,
        _dir: tempfile::TempDir,
    }

    impl Chd {
        fn start<E: Engine + 'static>(engine: E) -> Chd {
            let (ours, theirs) = UnixStream::pair().unwrap();
            let (health, health_theirs) = UnixStream::pair().unwrap();
            for s in [&ours, &health] {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            }
            let dir = tempfile::tempdir().unwrap();
            let node = Node::open(engine, dir.path(), 4).unwrap();
            let disk = Box::new(FakeDisk(Arc::new(AtomicU64::new(1 << 30))));
            let worker =
                std::thread::spawn(move || serve(node, EngineKind::Append, theirs, health_theirs, disk, RESERVE));
            let mut chd = Chd { stream: ours, health, worker, _dir: dir };
            assert!(matches!(chd.recv(), Frame { id: 0, msg: WorkerResponse::Hello(_) }));
            chd
        }
        fn send(&mut self, id: u64, msg: WorkerRequest) {
            let mut buf = Vec::new();
            encode_frame(&Frame { id, msg }, &mut buf);
            self.stream.write_all(&buf).unwrap();
        }
        fn recv(&mut self) -> Frame<WorkerResponse> {
            let body = read_frame(&mut self.stream, MAX_WORKER_FRAME).unwrap().expect("worker closed the socket");
            decode_body(&body).unwrap()
        }
        /// A ping over the health link, and its answer.
        fn ping(&mut self, id: u64) -> Frame<WorkerResponse> {
            let mut buf = Vec::new();
            encode_frame(&Frame { id, msg: WorkerRequest::Ping }, &mut buf);
            self.health.write_all(&buf).unwrap();
            let body = read_frame(&mut self.health, MAX_WORKER_FRAME).unwrap().expect("health link closed");
            decode_body(&body).unwrap()
        }
    }

    #[test]
    fn pings_are_answered_while_a_batch_is_stuck_in_sync() {
        let (entered_tx, entered) = mpsc::channel();
        let gate = Arc::new((Mutex::new(0), Condvar::new()));
        let engine = Gated { inner: MemoryEngine::default(), entered: entered_tx, gate: gate.clone() };
        let mut chd = Chd::start(engine);
        let sent = Instant::now();
        chd.send(1, WorkerRequest::Put { key: b"k".to_vec(), record: rec(1, b"v"), spare: false });
        entered.recv_timeout(Duration::from_secs(10)).expect("the batch reaches sync");
        std::thread::sleep(Duration::from_millis(50));
        let Frame { id: 2, msg: WorkerResponse::Pong { batches: 0, busy_ms } } = chd.ping(2) else {
            panic!("a pong, with no batch completed, must come while the write waits for its sync")
        };
        assert!(busy_ms >= 50 && busy_ms <= sent.elapsed().as_millis() as u64 + 1, "busy_ms {busy_ms}");

        let_one_sync_through(&gate);
        assert_eq!(chd.recv(), Frame { id: 1, msg: WorkerResponse::Stored(true) });
        assert_eq!(chd.ping(3), Frame { id: 3, msg: WorkerResponse::Pong { batches: 1, busy_ms: 0 } });
        // Closing the socket ends the worker cleanly (after a final sync).
        let_one_sync_through(&gate);
        drop(chd.stream);
        assert!(chd.worker.join().unwrap().is_ok());
    }

    #[test]
    fn a_read_waits_for_the_sync_only_if_its_own_batch_wrote_its_key() {
        let (entered_tx, entered) = mpsc::channel();
        let gate = Arc::new((Mutex::new(0), Condvar::new()));
        let engine = Gated { inner: MemoryEngine::default(), entered: entered_tx, gate: gate.clone() };
        let mut chd = Chd::start(engine);
        let put = |k: &str, v: u64| WorkerRequest::Put { key: k.into(), record: rec(v, k.as_bytes()), spare: false };
        let get = |k: &str| WorkerRequest::Get { key: k.into() };
        // Batch 1 writes "a" and is held in its sync while the next requests wait in the
        // socket; once it is done they are all there to read, and make batch 2.
        chd.send(1, put("a", 1));
        entered.recv_timeout(Duration::from_secs(10)).expect("batch 1 reaches sync");
        for (id, msg) in [(2, put("b", 2)), (3, get("c")), (4, get("b")), (5, get("a"))] {
            chd.send(id, msg);
        }
        let_one_sync_through(&gate);
        assert_eq!(chd.recv(), Frame { id: 1, msg: WorkerResponse::Stored(true) });
        entered.recv_timeout(Duration::from_secs(10)).expect("batch 2 reaches sync");

        // Batch 2 is in its sync: the reads of keys it did not write are already answered, "a"
        // with batch 1's durable write. The read of "b" waits, since its value is not durable.
        assert_eq!(chd.recv(), Frame { id: 3, msg: WorkerResponse::Record(None) });
        assert_eq!(chd.recv(), Frame { id: 5, msg: WorkerResponse::Record(Some(rec(1, b"a"))) });
        // The loop is in batch 2's sync (the pong says so): 2 and 4 have not been answered.
        assert!(matches!(chd.ping(7).msg, WorkerResponse::Pong { batches: 1, busy_ms: _ }));
        let_one_sync_through(&gate);
        assert_eq!(chd.recv(), Frame { id: 2, msg: WorkerResponse::Stored(true) });
        assert_eq!(chd.recv(), Frame { id: 4, msg: WorkerResponse::Record(Some(rec(2, b"b"))) });
    }

    #[test]
    fn a_batch_write_of_many_keys_holds_back_every_read_after_it() {
        let mut reads = EarlyReads::default();
        let get = |k: &str| WorkerRequest::Get { key: k.into() };
        assert!(reads.admit(&get("x")));
        assert!(!reads.admit(&WorkerRequest::DropPartition { partition: 1 }));
        assert!(!reads.admit(&get("x")), "a drop may have removed any key");
    }

    #[test]
    fn an_oversized_or_undecodable_frame_ends_the_worker_with_an_io_failure() {
        let mut chd = Chd::start(MemoryEngine::default());
        // A valid request before the bad frame is still answered.
        chd.send(1, WorkerRequest::Put { key: b"k".to_vec(), record: rec(1, b"v"), spare: false });
        assert_eq!(chd.recv().msg, WorkerResponse::Stored(true));
        chd.stream.write_all(&((MAX_WORKER_FRAME + 1) as u32).to_be_bytes()).unwrap();
        let fatal = chd.worker.join().unwrap().expect_err("an oversized frame is not a clean exit");
        assert_eq!(fatal.failure, Failure::Io);
        assert!(fatal.why.contains("cannot read a request frame"), "{}", fatal.why);

        let mut chd = Chd::start(MemoryEngine::default());
        chd.stream.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
        let fatal = chd.worker.join().unwrap().expect_err("an undecodable frame is not a clean exit");
        assert_eq!(fatal.failure, Failure::Io);
        assert!(fatal.why.contains("undecodable"), "{}", fatal.why);
    }
}

/// The real engines on a real full filesystem (a tmpfs, so root only; skipped otherwise).
#[cfg(test)]
mod enospc_tests {
    use super::*;
    use chd_data::Record;
    use std::path::Path;
    use std::process::Command;

    struct Tmpfs(PathBuf);
    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }

    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: not root, cannot mount a tmpfs");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("skipped: cannot mount a tmpfs");
        }
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    struct Plenty;
    impl FreeSpace for Plenty {
        fn free_bytes(&self) -> io::Result<u64> {
            Ok(u64::MAX)
        }
    }

    fn sled(dir: &Path) -> Box<dyn Engine> {
        Box::new(SledEngine::open_waiting(dir))
    }

    /// A worker saves its index only when chd asks it to shut down, never when chd's end of
    /// the socket closes: that is how a killed chd looks to its workers, just before their
    /// death signal, and an index saved then let the next start skip reading a log that was
    /// damaged in between.
    #[test]
    fn only_a_shutdown_chd_asked_for_saves_the_index() {
        for ask in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let node = Node::open(append_log(dir.path()), dir.path(), 4).unwrap();
            let (mut ours, theirs) = UnixStream::pair().unwrap();
            let (_health, health_theirs) = UnixStream::pair().unwrap();
            let worker =
                std::thread::spawn(move || serve(node, EngineKind::Append, theirs, health_theirs, Box::new(Plenty), 0));
            read_frame(&mut ours, MAX_WORKER_FRAME).unwrap().expect("hello");
            let mut buf = Vec::new();
            let record = Record { version: 1, value: Some(b"v".to_vec()) };
            encode_frame(
                &Frame { id: 1, msg: WorkerRequest::Put { key: b"k".to_vec(), record, spare: false } },
                &mut buf,
            );
            if ask {
                encode_frame(&Frame { id: 2, msg: WorkerRequest::Shutdown }, &mut buf);
            }
            ours.write_all(&buf).unwrap();
            read_frame(&mut ours, MAX_WORKER_FRAME).unwrap().expect("the put's reply");
            drop(ours);
            worker.join().unwrap().unwrap();
            let saved = dir.path().join("log").join("index").exists();
            assert_eq!(saved, ask, "asked to shut down: {ask}; index saved: {saved}");
        }
    }

    /// What a worker opens for a new database: the append log behind the write-ahead log.
    fn append_log(dir: &Path) -> Box<dyn Engine> {
        Box::new(open_engine(dir, 32 << 20, Shape::default(), EngineKind::Append).unwrap().1)
    }

    /// What happens when the space check is passed and the disk fills anyway (another process
    /// took the space): the engine fails with ENOSPC, the worker stops with `DiskFull` (not
    /// `BadDatabase`, so chd does not set the database aside), does not hang, does not answer
    /// the failed batch, and every write it did answer is in the database.
    fn enospc_case(value_len: usize, fs_size: &str, open: fn(&Path) -> Box<dyn Engine>) {
        let outer = tempfile::tempdir().unwrap();
        let Some(fs) = mount(&outer.path().join("mnt"), fs_size) else { return };
        let dir = fs.0.join("db");
        std::fs::create_dir_all(&dir).unwrap();
        let node = Node::open(open(&dir), &dir, 4).unwrap();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let (_health, health_theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let (done_tx, done) = std::sync::mpsc::channel();
        let mut stopped = None;
        std::thread::spawn(move || {
            let _ = done_tx.send(serve(node, EngineKind::Append, theirs, health_theirs, Box::new(Plenty), 0));
        });
        read_frame(&mut ours, MAX_WORKER_FRAME).unwrap().expect("hello");
        let mut acked = Vec::new();
        for i in 0u32.. {
            let key = format!("k{i}").into_bytes();
            let record = Record { version: u64::from(i) + 1, value: Some(vec![i as u8; value_len]) };
            let mut buf = Vec::new();
            encode_frame(
                &Frame { id: u64::from(i) + 1, msg: WorkerRequest::Put { key: key.clone(), record, spare: false } },
                &mut buf,
            );
            if ours.write_all(&buf).is_err() {
                break;
            }
            // In this test the worker is a thread: wait for either its reply or its end.
            let waited = Instant::now();
            let reply = loop {
                match read_frame(&mut ours, MAX_WORKER_FRAME) {
                    Ok(Some(body)) => break Some(decode_body::<Frame<WorkerResponse>>(&body).unwrap()),
                    Ok(None) => break None,
                    Err(_) if stopped.is_none() => match done.try_recv() {
                        Ok(r) => stopped = Some(r),
                        Err(_) => assert!(
                            waited.elapsed() < Duration::from_secs(20),
                            "after {} acknowledged writes the worker neither answered nor stopped",
                            acked.len()
                        ),
                    },
                    Err(_) => break None,
                }
            };
            let Some(f) = reply else { break };
            assert_eq!(f.msg, WorkerResponse::Stored(true));
            acked.push((key, i));
            assert!(i < 10_000, "the disk never filled");
        }
        // The worker's end closes when it stops, which may be seen before its result.
        let stopped = stopped.or_else(|| done.recv_timeout(Duration::from_secs(20)).ok());
        let fatal = stopped.expect("the worker stopped").expect_err("not a clean stop");
        assert_eq!(fatal.failure, Failure::DiskFull, "{}", fatal.why);
        assert!(!acked.is_empty());
        // The database as a crash at this moment would leave it (the failed worker's engine
        // still holds the lock here, so a copy is opened).
        let copy = tempfile::tempdir().unwrap();
        assert!(Command::new("cp").arg("-a").arg(&dir).arg(copy.path()).status().unwrap().success());
        let copied = copy.path().join("db");
        let node = Node::open(open(&copied), &copied, 4).unwrap();
        for (key, i) in &acked {
            let r = node.get(key).unwrap().unwrap_or_else(|| panic!("acknowledged write {i} lost"));
            assert_eq!(r.version, u64::from(*i) + 1);
        }
    }

    #[test]
    fn sled_out_of_space_with_small_values_stops_the_worker_as_disk_full() {
        enospc_case(20_000, "4m", sled);
    }

    #[test]
    fn sled_out_of_space_with_blob_values_stops_the_worker_as_disk_full() {
        enospc_case(300_000, "4m", sled);
    }

    /// Values small enough to stay in the engine: the append log's segments fill the disk
    /// (the write-ahead log, 8 MiB, is preallocated when the database is created).
    #[test]
    fn append_log_out_of_space_stops_the_worker_as_disk_full() {
        enospc_case(1_000, "12m", append_log);
    }

    #[test]
    fn append_log_out_of_space_with_value_files_stops_the_worker_as_disk_full() {
        enospc_case(20_000, "12m", append_log);
    }
}
