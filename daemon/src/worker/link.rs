//! chd's end of a worker's socketpair: send a request, await its reply, with a deadline.
//!
//! Requests from many tasks are queued to one writer task, which coalesces whatever is queued
//! into one write (a batch that the worker will apply under one sync). A reader task routes
//! replies by id. When the worker dies its socket closes and every pending call fails at once.
//!
//! Deadlines: a call is entered in the table of pending calls, with its deadline, when it is
//! queued; a sweeper task per link fails the calls past their deadline every [`SWEEP`]. Why not
//! a timer per call: registering and clearing a tokio timer, with its clock reads, was 6% of
//! chd's CPU under pipelined writes (three calls per SET). A call may so run up to [`SWEEP`]
//! past its deadline, against timeouts of seconds.
//!
//! Memory is bounded: a request holds a share of [`MAX_QUEUED_BYTES`] from the moment it is
//! queued until the writer has handed it to the socket, so a worker that stops reading (hung,
//! stopped) makes callers wait and time out instead of piling up values in chd. A write to R
//! replicas is encoded once and shared ([`WorkerLink::call_encoded`]): a 32 MiB value costs
//! chd one copy, not one per replica.
//!
//! A `Ping` goes over a second socketpair of its own (the health link), which the worker
//! answers from a thread that never waits for the database: a health check waits neither for
//! the large writes queued before it nor for a batch's fsync. Ids come from one counter for
//! both sockets, so replies from either are routed by the same table.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chd_data::proto::encode_frame;
use chd_data::Record;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;

use super::proto::{Frame, WorkerHello, WorkerRequest, WorkerResponse, MAX_WORKER_FRAME};
use crate::frame::read_frame;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("worker is gone")]
    Closed,
    #[error("worker did not answer in {0:?}")]
    Timeout(Duration),
    #[error("worker failed: {0}")]
    Failed(String),
    /// The worker refused a write for lack of disk space; nothing was written.
    #[error("disk full: {free} bytes free, {needed} needed")]
    DiskFull { free: u64, needed: u64 },
}

/// Bytes of requests queued on one link and not yet written to its socket.
pub const MAX_QUEUED_BYTES: usize = 128 << 20;
/// Frames larger than this are written from their own buffer instead of being copied into the
/// writer's batch.
const COPY_LIMIT: usize = 256 << 10;
/// How often a link fails the calls past their deadline.
const SWEEP: Duration = Duration::from_millis(50);

/// A request's message, as is or already encoded (postcard of a [`WorkerRequest`]).
enum Msg {
    Plain(WorkerRequest),
    Encoded(Arc<[u8]>),
}

struct Queued {
    id: u64,
    msg: Msg,
    /// Its share of [`MAX_QUEUED_BYTES`], given back once written (none for a ping: a health
    /// check never waits for room behind queued writes).
    _bytes: Option<OwnedSemaphorePermit>,
}

/// A call waiting for its reply.
struct Waiting {
    reply: oneshot::Sender<Result<WorkerResponse, LinkError>>,
    deadline: Instant,
    timeout: Duration,
}

/// The calls waiting for a reply, shared by the callers, the reader and the sweeper (not by
/// the writer's queue: the writer must end once every [`WorkerLink`] is dropped, which closes
/// the socket and ends the worker).
#[derive(Default)]
struct Table {
    pending: Mutex<HashMap<u64, Waiting>>,
    /// Set, under the `pending` lock, once the worker's socket closed: no call enters after.
    closed: AtomicBool,
    next_id: AtomicU64,
}

impl Table {
    /// Enters a call; `None` once the link is closed.
    fn enter(
        &self,
        deadline: Instant,
        timeout: Duration,
    ) -> Option<(u64, oneshot::Receiver<Result<WorkerResponse, LinkError>>)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let waiting = Waiting { reply, deadline, timeout };
        let mut pending = self.pending.lock().expect("pending lock");
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        pending.insert(id, waiting);
        Some((id, rx))
    }

    fn answer(&self, id: u64, msg: WorkerResponse) {
        if let Some(w) = self.pending.lock().expect("pending lock").remove(&id) {
            let _ = w.reply.send(Ok(msg));
        }
    }

    fn forget(&self, id: u64) {
        self.pending.lock().expect("pending lock").remove(&id);
    }

    /// Fails every call past its deadline.
    fn sweep(&self, now: Instant) {
        let mut pending = self.pending.lock().expect("pending lock");
        let late: Vec<u64> = pending.iter().filter(|(_, w)| w.deadline <= now).map(|(&id, _)| id).collect();
        for w in late.iter().filter_map(|id| pending.remove(id)) {
            let _ = w.reply.send(Err(LinkError::Timeout(w.timeout)));
        }
    }

    /// The worker's socket closed: every call waiting fails, and no new one enters.
    fn close(&self) {
        let mut pending = self.pending.lock().expect("pending lock");
        self.closed.store(true, Ordering::SeqCst);
        // Dropping the senders fails every call still waiting.
        pending.clear();
    }
}

/// The reply to a call that the link has queued. Dropping it does not take the request back:
/// it is written to the worker all the same, and its reply is thrown away.
pub struct Reply(oneshot::Receiver<Result<WorkerResponse, LinkError>>);

impl Future for Reply {
    type Output = Result<WorkerResponse, LinkError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Err(_) => Err(LinkError::Closed),
            Ok(Ok(WorkerResponse::Failed(e))) => Err(LinkError::Failed(e)),
            Ok(Ok(WorkerResponse::DiskFull { free, needed })) => Err(LinkError::DiskFull { free, needed }),
            Ok(r) => r,
        })
    }
}

/// A link, cheap to clone (one reference count: chd clones a replica's link for every call).
#[derive(Clone)]
pub struct WorkerLink(Arc<Shared>);

struct Shared {
    tx: mpsc::UnboundedSender<Queued>,
    /// Pings, sent over the health link.
    ping_tx: mpsc::UnboundedSender<Queued>,
    table: Arc<Table>,
    /// In KiB: a semaphore takes at most u32::MAX permits at once.
    queued_kib: Arc<Semaphore>,
}

/// Encodes `WorkerRequest::Put { key, record, spare }` once, to send it to several workers
/// with [`WorkerLink::call_encoded`], without first copying the key and value into a request.
pub fn encode_put(key: &[u8], record: &Record, spare: bool) -> Arc<[u8]> {
    /// Borrows what `WorkerRequest::Put` owns; encodes the same bytes (Put is variant 0).
    #[derive(serde::Serialize)]
    enum PutRef<'a> {
        Put {
            #[serde(with = "serde_bytes")]
            key: &'a [u8],
            record: &'a Record,
            spare: bool,
        },
    }
    postcard::to_allocvec(&PutRef::Put { key, record, spare }).expect("postcard to Vec").into()
}

impl WorkerLink {
    /// Starts the link's tasks. The first message of a worker is its hello, delivered on the
    /// returned receiver; `closed` fires when the worker's end of the socket closes.
    pub fn start(
        stream: UnixStream,
        health: UnixStream,
    ) -> (WorkerLink, oneshot::Receiver<WorkerHello>, oneshot::Receiver<()>) {
        let (rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
        let (ping_tx, mut ping_rx) = mpsc::unbounded_channel::<Queued>();
        let table = Arc::new(Table { next_id: AtomicU64::new(1), ..Table::default() });
        let (hello_tx, hello_rx) = oneshot::channel();
        let (closed_tx, closed_rx) = oneshot::channel();

        // The health link: pings out, pongs back, one at a time as they come.
        let (health_rd, mut health_wr) = health.into_split();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(Queued { id, msg, .. }) = ping_rx.recv().await {
                let Msg::Plain(msg) = msg else { continue };
                buf.clear();
                encode_frame(&Frame { id, msg }, &mut buf);
                if health_wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        let pongs = table.clone();
        tokio::spawn(async move {
            let mut rd = tokio::io::BufReader::with_capacity(4 << 10, health_rd);
            while let Ok(Some(body)) = read_frame(&mut rd, MAX_WORKER_FRAME).await {
                let Ok(frame) = chd_data::proto::decode_body::<Frame<WorkerResponse>>(&body) else { break };
                pongs.answer(frame.id, frame.msg);
            }
        });

        tokio::spawn(async move {
            let mut buf = Vec::new();
            // Written after `buf`: large pre-encoded messages, each with its frame header.
            let mut large: Vec<(Vec<u8>, Arc<[u8]>)> = Vec::new();
            let mut permits = Vec::new();
            loop {
                let Some(first) = rx.recv().await else { break };
                let mut item = Some(first);
                while let Some(Queued { id, msg, _bytes }) = item.take() {
                    match msg {
                        Msg::Plain(req) => encode_frame(&Frame { id, msg: req }, &mut buf),
                        // A frame body is the id (postcard varint) then the message.
                        Msg::Encoded(body) => {
                            let mut varint = [0u8; 10];
                            let id = postcard::to_slice(&id, &mut varint).expect("a u64 varint fits 10 bytes");
                            let mut header = ((id.len() + body.len()) as u32).to_be_bytes().to_vec();
                            header.extend_from_slice(id);
                            if body.len() <= COPY_LIMIT && large.is_empty() {
                                buf.extend_from_slice(&header);
                                buf.extend_from_slice(&body);
                            } else {
                                large.push((header, body));
                            }
                        }
                    }
                    permits.push(_bytes);
                    if buf.len() < (1 << 20) && large.is_empty() {
                        item = rx.try_recv().ok();
                    }
                }
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
                buf.clear();
                for (header, body) in large.drain(..) {
                    if wr.write_all(&header).await.is_err() || wr.write_all(&body).await.is_err() {
                        return;
                    }
                }
                permits.clear();
            }
        });

        let sweeper = table.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !sweeper.closed.load(Ordering::SeqCst) {
                sweeper.sweep(tick.tick().await);
            }
        });

        let replies = table.clone();
        tokio::spawn(async move {
            // Buffered: the worker writes a batch's replies at once, and reading each frame's
            // length and body with a syscall apiece cost chd two `recvfrom`s per reply.
            let mut rd = tokio::io::BufReader::with_capacity(64 << 10, rd);
            let mut hello_tx = Some(hello_tx);
            while let Ok(Some(body)) = read_frame(&mut rd, MAX_WORKER_FRAME).await {
                let Ok(frame) = chd_data::proto::decode_body::<Frame<WorkerResponse>>(&body) else { break };
                match (frame.id, frame.msg) {
                    (0, WorkerResponse::Hello(h)) => {
                        if let Some(tx) = hello_tx.take() {
                            let _ = tx.send(h);
                        }
                    }
                    (id, msg) => replies.answer(id, msg),
                }
            }
            replies.close();
            let _ = closed_tx.send(());
        });

        let queued_kib = Arc::new(Semaphore::new(MAX_QUEUED_BYTES >> 10));
        (WorkerLink(Arc::new(Shared { tx, ping_tx, table, queued_kib })), hello_rx, closed_rx)
    }

    pub fn is_closed(&self) -> bool {
        self.0.table.closed.load(Ordering::SeqCst)
    }

    pub async fn call(&self, req: WorkerRequest, timeout: Duration) -> Result<WorkerResponse, LinkError> {
        let size = req.approx_bytes();
        self.send(Msg::Plain(req), size, timeout).await
    }

    /// Like [`WorkerLink::call`] for a request already encoded with [`encode_put`], shared
    /// with the other replicas it goes to.
    pub async fn call_encoded(&self, req: Arc<[u8]>, timeout: Duration) -> Result<WorkerResponse, LinkError> {
        let size = req.len();
        self.send(Msg::Encoded(req), size, timeout).await
    }

    /// [`WorkerLink::call_encoded`] when the link has room for the request now: queues it and
    /// returns its reply at once. `None` when the link's queue is full (then use
    /// `call_encoded`, which waits for room). What the caller gains: a queued request needs
    /// nothing more from it, so a write that has enough answers drops the other replicas'
    /// replies instead of waiting for them in a task of its own (a task spawned per SET was
    /// 3% of chd's CPU under pipelined writes).
    pub fn try_call_encoded(&self, req: &Arc<[u8]>, timeout: Duration) -> Option<Result<Reply, LinkError>> {
        let permit = match self.0.queued_kib.clone().try_acquire_many_owned(kib(req.len())) {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => return None,
            Err(TryAcquireError::Closed) => return Some(Err(LinkError::Closed)),
        };
        Some(self.queue(Msg::Encoded(req.clone()), Some(permit), Instant::now() + timeout, timeout))
    }

    async fn send(&self, msg: Msg, size: usize, timeout: Duration) -> Result<WorkerResponse, LinkError> {
        if self.is_closed() {
            return Err(LinkError::Closed);
        }
        let deadline = Instant::now() + timeout;
        let bytes = match msg {
            Msg::Plain(WorkerRequest::Ping) => None,
            _ => match self.0.queued_kib.clone().try_acquire_many_owned(kib(size)) {
                Ok(p) => Some(p),
                Err(TryAcquireError::Closed) => return Err(LinkError::Closed),
                // The queue is full: wait for room, within the call's deadline.
                Err(TryAcquireError::NoPermits) => {
                    let room = self.0.queued_kib.clone().acquire_many_owned(kib(size));
                    match tokio::time::timeout_at(deadline, room).await {
                        Err(_) => return Err(LinkError::Timeout(timeout)),
                        Ok(Err(_)) => return Err(LinkError::Closed),
                        Ok(Ok(p)) => Some(p),
                    }
                }
            },
        };
        self.queue(msg, bytes, deadline, timeout)?.await
    }

    /// Enters the call in the table (which fails it at `deadline`) and queues its message.
    fn queue(
        &self,
        msg: Msg,
        bytes: Option<OwnedSemaphorePermit>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Reply, LinkError> {
        let table = &self.0.table;
        let (id, rx) = table.enter(deadline, timeout).ok_or(LinkError::Closed)?;
        let queue = match msg {
            Msg::Plain(WorkerRequest::Ping) => &self.0.ping_tx,
            _ => &self.0.tx,
        };
        if queue.send(Queued { id, msg, _bytes: bytes }).is_err() {
            table.forget(id);
            return Err(LinkError::Closed);
        }
        Ok(Reply(rx))
    }
}

/// A request's share of [`MAX_QUEUED_BYTES`], in the semaphore's KiB.
fn kib(bytes: usize) -> u32 {
    (bytes >> 10).clamp(1, MAX_QUEUED_BYTES >> 10) as u32
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_put_encodes_like_the_request() {
        for value in [Some(vec![1, 2, 3]), None, Some(vec![7; 100_000])] {
            for spare in [false, true] {
                let record = Record { version: 42, value: value.clone() };
                let owned = WorkerRequest::Put { key: b"key".to_vec(), record: record.clone(), spare };
                assert_eq!(&*encode_put(b"key", &record, spare), &postcard::to_allocvec(&owned).unwrap()[..]);
            }
        }
    }

    /// A link to a fake worker: its ends of the request and health sockets.
    fn link() -> (WorkerLink, UnixStream, UnixStream, oneshot::Receiver<()>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (health, their_health) = UnixStream::pair().unwrap();
        let (link, _hello, closed) = WorkerLink::start(ours, health);
        (link, theirs, their_health, closed)
    }

    /// The next request the fake worker finds on its socket.
    async fn next_request(worker: &mut UnixStream) -> Frame<WorkerRequest> {
        let body = read_frame(worker, MAX_WORKER_FRAME).await.unwrap().expect("a frame");
        chd_data::proto::decode_body(&body).unwrap()
    }

    #[tokio::test]
    async fn a_call_the_worker_never_answers_fails_at_its_deadline_and_one_it_answers_succeeds() {
        let (link, mut worker, _health, _) = link();
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let late = link.call(WorkerRequest::Get { key: b"late".to_vec() }, timeout).await;
        assert_eq!(late, Err(LinkError::Timeout(timeout)));
        assert!(started.elapsed() >= timeout, "failed before its deadline");
        assert!(link.0.table.pending.lock().unwrap().is_empty(), "a failed call stays in the table");

        let answered = {
            let link = link.clone();
            tokio::spawn(async move { link.call(WorkerRequest::Get { key: b"k".to_vec() }, timeout).await })
        };
        assert!(matches!(next_request(&mut worker).await.msg, WorkerRequest::Get { .. }), "the late call first");
        let req = next_request(&mut worker).await;
        let mut reply = Vec::new();
        encode_frame(&Frame { id: req.id, msg: WorkerResponse::Record(None) }, &mut reply);
        worker.write_all(&reply).await.unwrap();
        assert_eq!(answered.await.unwrap(), Ok(WorkerResponse::Record(None)));
    }

    #[tokio::test]
    async fn every_call_fails_once_the_worker_is_gone() {
        let (link, worker, health, closed) = link();
        let waiting = {
            let link = link.clone();
            tokio::spawn(
                async move { link.call(WorkerRequest::Get { key: b"k".to_vec() }, Duration::from_secs(60)).await },
            )
        };
        drop((worker, health));
        closed.await.unwrap();
        assert_eq!(waiting.await.unwrap(), Err(LinkError::Closed));
        assert!(link.is_closed());
        assert_eq!(link.call(WorkerRequest::Ping, Duration::from_secs(60)).await, Err(LinkError::Closed));
        let put = encode_put(b"k", &Record { version: 1, value: None }, false);
        assert!(matches!(link.try_call_encoded(&put, Duration::from_secs(60)), Some(Err(LinkError::Closed))));
    }

    #[tokio::test]
    async fn a_queued_write_reaches_the_worker_after_its_reply_is_dropped_and_a_full_queue_is_waited_for() {
        let (link, mut worker, _health, _) = link();
        let put = encode_put(b"k", &Record { version: 7, value: Some(b"v".to_vec()) }, false);
        drop(link.try_call_encoded(&put, Duration::from_secs(60)).expect("room").expect("open"));
        let req = next_request(&mut worker).await;
        assert!(matches!(req.msg, WorkerRequest::Put { ref key, .. } if key == b"k"));
        // Its reply finds no one waiting, and clears its entry.
        let mut reply = Vec::new();
        encode_frame(&Frame { id: req.id, msg: WorkerResponse::Stored(true) }, &mut reply);
        worker.write_all(&reply).await.unwrap();
        while !link.0.table.pending.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }

        // A request as large as the whole queue takes all its room until written; the worker
        // reads nothing, so the room stays taken.
        let huge: Arc<[u8]> = vec![0u8; MAX_QUEUED_BYTES].into();
        let _queued = link.try_call_encoded(&huge, Duration::from_secs(60)).expect("room").expect("open");
        assert!(link.try_call_encoded(&put, Duration::from_secs(60)).is_none(), "queued past the bound");
        let timeout = Duration::from_millis(100);
        assert_eq!(link.call_encoded(put, timeout).await, Err(LinkError::Timeout(timeout)));
    }
}
