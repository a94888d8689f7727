//! A worker process: owns one node's database and answers chd over a socketpair.
//!
//! chd starts a worker by running its own executable as `chd worker ...` with the socketpair
//! end on fd 3. The worker is single-threaded where it matters: one loop takes every request
//! that has arrived, applies them in order, makes the batch durable with one `sync` (group
//! commit: concurrent writes share one fdatasync), and only then sends the replies. A reply to
//! a write therefore always means "on disk". Pings are answered by the same loop, so a loop
//! stuck on a hung disk stops answering them and chd's health check notices.
//!
//! The worker exits when chd closes the socket (and is killed by the kernel if chd dies, via
//! `PR_SET_PDEATHSIG`). A panic aborts the process; chd respawns it.

pub mod link;
pub mod node;
pub mod proto;

use std::io::{self, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chd_data::proto::{decode_body, encode_frame, read_frame};
use chd_data::NodeId;

use crate::storage::sled::SledEngine;
use node::Node;
use proto::{Frame, WorkerHello, WorkerRequest, WorkerResponse, MAX_WORKER_FRAME};

/// The fd on which a worker finds its end of the socketpair.
pub const WORKER_FD: i32 = 3;
/// Exit status of a worker whose database cannot be opened: chd moves it aside and rebuilds.
pub const EXIT_BAD_DATABASE: i32 = 3;
/// Exit status of a worker whose database another process still holds locked.
pub const EXIT_DATABASE_BUSY: i32 = 4;
/// Exit status of a worker that ran out of disk space: chd waits for space, never quarantines.
pub const EXIT_DISK_FULL: i32 = 5;
/// Exit status of a worker that hit an I/O error other than a full disk.
pub const EXIT_IO: i32 = 6;

/// Most requests applied in one batch (one sync).
const MAX_BATCH: usize = 512;
/// Most bytes of records returned by one `Versions`/`GetMany` answer.
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
    let engine = match open_engine(&args.dir) {
        Ok(e) => e,
        // Another process still holds the database: not a sign of damage, so not a reason to
        // move it aside. Exit and let chd try again later.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            eprintln!("chd worker {}: database {} is locked by another process: {e}", args.id, args.dir.display());
            std::process::exit(EXIT_DATABASE_BUSY);
        }
        Err(e) => {
            eprintln!("chd worker {}: cannot open database {}: {e}", args.id, args.dir.display());
            std::process::exit(EXIT_BAD_DATABASE);
        }
    };
    let node = match Node::open(engine, args.partitions) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("chd worker {}: database {} is unreadable: {e}", args.id, args.dir.display());
            std::process::exit(EXIT_BAD_DATABASE);
        }
    };
    serve(node, stream)
}

/// Opens sled, waiting a little if the previous worker of this node is still releasing its
/// directory lock.
fn open_engine(dir: &std::path::Path) -> io::Result<SledEngine> {
    std::fs::create_dir_all(dir)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match SledEngine::open(dir) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn serve<E: crate::storage::Engine>(mut node: Node<E>, stream: UnixStream) -> anyhow::Result<()> {
    let mut out = stream.try_clone()?;
    let hello = WorkerHello {
        pid: std::process::id(),
        identity: node.identity()?,
        rebuild_pending: node.rebuild_pending()?,
        max_version: node.max_version(),
        live_keys: node.live_keys(),
    };
    proto_write(&mut out, &[Frame { id: 0, msg: WorkerResponse::Hello(hello) }])?;

    let (tx, rx) = mpsc::sync_channel::<Frame<WorkerRequest>>(4 * MAX_BATCH);
    std::thread::Builder::new().name("reader".into()).spawn(move || {
        let mut input = stream;
        // Ends (dropping `tx`) on EOF or on any bad frame: chd is gone or broken, either way
        // the worker should stop.
        while let Ok(Some(body)) = read_frame(&mut input, MAX_WORKER_FRAME) {
            let Ok(frame) = decode_body::<Frame<WorkerRequest>>(&body) else { break };
            if tx.send(frame).is_err() {
                break;
            }
        }
    })?;

    let mut replies = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let mut dirty = false;
        let mut shutdown = false;
        for Frame { id, msg } in batch {
            let (reply, wrote) = match apply(&mut node, msg) {
                Ok(Applied::Reply(r, wrote)) => (r, wrote),
                Ok(Applied::Shutdown) => {
                    shutdown = true;
                    (WorkerResponse::Done, false)
                }
                // A storage error leaves the database in an unknown state: stop, and let chd
                // respawn us and repair this node from its replicas.
                Err(e) => {
                    eprintln!("chd worker: storage error: {e}");
                    std::process::exit(1);
                }
            };
            dirty |= wrote;
            replies.push(Frame { id, msg: reply });
        }
        if dirty {
            if let Err(e) = node.sync() {
                eprintln!("chd worker: sync failed, exiting: {e}");
                std::process::exit(1);
            }
        }
        proto_write(&mut out, &replies)?;
        replies.clear();
        if shutdown {
            break;
        }
    }
    node.sync()?;
    Ok(())
}

enum Applied {
    /// The reply, and whether the request wrote (so the batch needs a sync before replying).
    Reply(WorkerResponse, bool),
    Shutdown,
}

fn apply<E: crate::storage::Engine>(node: &mut Node<E>, req: WorkerRequest) -> io::Result<Applied> {
    use WorkerResponse as R;
    let reply = match req {
        WorkerRequest::Put { key, record } => (R::Stored(node.put(&key, &record)?), true),
        WorkerRequest::Get { key } => (R::Record(node.get(&key)?), false),
        WorkerRequest::Ping => (R::Pong, false),
        WorkerRequest::Stats => (R::Stats { live_keys: node.live_keys(), bytes: node.size_on_disk() }, false),
        WorkerRequest::Digests { partitions } => {
            let d = partitions.iter().map(|&p| node.digest(p)).collect::<io::Result<_>>()?;
            (R::Digests(d), false)
        }
        WorkerRequest::Versions { partition, after, limit } => {
            let mut page = node.versions(partition, after.as_deref(), limit as usize)?;
            // Long keys: cut the page short to stay under the frame limit; the caller pages on.
            let mut bytes = 0;
            if let Some(cut) = page.iter().position(|(k, _)| {
                bytes += k.len() + 8;
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
                // Keep the answer under the frame limit; the caller asks again for the rest.
                if bytes > MAX_REPLY_BYTES {
                    break;
                }
                let r = node.get(&k)?;
                bytes += k.len() + r.as_ref().and_then(|r| r.value.as_ref()).map_or(0, Vec::len);
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
