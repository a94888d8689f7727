//! chd's end of a worker's socketpair: send a request, await its reply, with a deadline.
//!
//! Requests from many tasks are queued to one writer task, which coalesces whatever is queued
//! into one write (a batch that the worker will apply under one sync). A reader task routes
//! replies by id. When the worker dies its socket closes and every pending call fails at once.
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chd_data::proto::encode_frame;
use chd_data::Record;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

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

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<WorkerResponse>>>>;

/// Bytes of requests queued on one link and not yet written to its socket.
pub const MAX_QUEUED_BYTES: usize = 128 << 20;
/// Frames larger than this are written from their own buffer instead of being copied into the
/// writer's batch.
const COPY_LIMIT: usize = 256 << 10;

/// A request's message, as is or already encoded (postcard of a [`WorkerRequest`]).
enum Msg {
    Plain(WorkerRequest),
    Encoded(Arc<[u8]>),
}

struct Queued {
    msg: Msg,
    reply: oneshot::Sender<WorkerResponse>,
    /// Its share of [`MAX_QUEUED_BYTES`], given back once written (none for a ping: a health
    /// check never waits for room behind queued writes).
    _bytes: Option<OwnedSemaphorePermit>,
}

#[derive(Clone)]
pub struct WorkerLink {
    tx: mpsc::UnboundedSender<Queued>,
    /// Pings, sent over the health link.
    ping_tx: mpsc::UnboundedSender<Queued>,
    closed: Arc<AtomicBool>,
    /// In KiB: a semaphore takes at most u32::MAX permits at once.
    queued_kib: Arc<Semaphore>,
}

/// Encodes `WorkerRequest::Put { key, record }` once, to send it to several workers with
/// [`WorkerLink::call_encoded`], without first copying the key and value into a request.
pub fn encode_put(key: &[u8], record: &Record) -> Arc<[u8]> {
    /// Borrows what `WorkerRequest::Put` owns; encodes the same bytes (Put is variant 0).
    #[derive(serde::Serialize)]
    enum PutRef<'a> {
        Put {
            #[serde(with = "serde_bytes")]
            key: &'a [u8],
            record: &'a Record,
        },
    }
    postcard::to_allocvec(&PutRef::Put { key, record }).expect("postcard to Vec").into()
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
        let pending: Pending = Arc::default();
        let next_id = Arc::new(AtomicU64::new(1));
        let closed = Arc::new(AtomicBool::new(false));
        let (hello_tx, hello_rx) = oneshot::channel();
        let (closed_tx, closed_rx) = oneshot::channel();

        // The health link: pings out, pongs back, one at a time as they come.
        let (health_rd, mut health_wr) = health.into_split();
        let (ping_pending, ping_ids) = (pending.clone(), next_id.clone());
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(Queued { msg, reply, .. }) = ping_rx.recv().await {
                let Msg::Plain(msg) = msg else { continue };
                let id = ping_ids.fetch_add(1, Ordering::Relaxed);
                ping_pending.lock().expect("pending lock").insert(id, reply);
                buf.clear();
                encode_frame(&Frame { id, msg }, &mut buf);
                if health_wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        let pong_pending = pending.clone();
        tokio::spawn(async move {
            let mut rd = tokio::io::BufReader::with_capacity(4 << 10, health_rd);
            while let Ok(Some(body)) = read_frame(&mut rd, MAX_WORKER_FRAME).await {
                let Ok(frame) = chd_data::proto::decode_body::<Frame<WorkerResponse>>(&body) else { break };
                if let Some(reply) = pong_pending.lock().expect("pending lock").remove(&frame.id) {
                    let _ = reply.send(frame.msg);
                }
            }
        });

        let writer_pending = pending.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            // Written after `buf`: large pre-encoded messages, each with its frame header.
            let mut large: Vec<(Vec<u8>, Arc<[u8]>)> = Vec::new();
            let mut permits = Vec::new();
            loop {
                let Some(first) = rx.recv().await else { break };
                let mut item = Some(first);
                while let Some(Queued { msg, reply, _bytes }) = item.take() {
                    let next_id = next_id.fetch_add(1, Ordering::Relaxed);
                    writer_pending.lock().expect("pending lock").insert(next_id, reply);
                    match msg {
                        Msg::Plain(req) => encode_frame(&Frame { id: next_id, msg: req }, &mut buf),
                        // A frame body is the id (postcard varint) then the message.
                        Msg::Encoded(body) => {
                            let id = postcard::to_allocvec(&next_id).expect("postcard to Vec");
                            let mut header = ((id.len() + body.len()) as u32).to_be_bytes().to_vec();
                            header.extend_from_slice(&id);
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

        let reader_closed = closed.clone();
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
                    (id, msg) => {
                        if let Some(reply) = pending.lock().expect("pending lock").remove(&id) {
                            let _ = reply.send(msg);
                        }
                    }
                }
            }
            reader_closed.store(true, Ordering::SeqCst);
            // Dropping the senders fails every call still waiting.
            pending.lock().expect("pending lock").clear();
            let _ = closed_tx.send(());
        });

        let queued_kib = Arc::new(Semaphore::new(MAX_QUEUED_BYTES >> 10));
        (WorkerLink { tx, ping_tx, closed, queued_kib }, hello_rx, closed_rx)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub async fn call(&self, req: WorkerRequest, timeout: Duration) -> Result<WorkerResponse, LinkError> {
        let size = req.approx_bytes();
        self.send(Msg::Plain(req), size, timeout).await
    }

    /// Like [`WorkerLink::call`] for a request already encoded with [`encode`], shared with
    /// the other replicas it goes to.
    pub async fn call_encoded(&self, req: Arc<[u8]>, timeout: Duration) -> Result<WorkerResponse, LinkError> {
        let size = req.len();
        self.send(Msg::Encoded(req), size, timeout).await
    }

    async fn send(&self, msg: Msg, size: usize, timeout: Duration) -> Result<WorkerResponse, LinkError> {
        if self.is_closed() {
            return Err(LinkError::Closed);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let ping = matches!(msg, Msg::Plain(WorkerRequest::Ping));
        let kib = (size >> 10).clamp(1, MAX_QUEUED_BYTES >> 10) as u32;
        let bytes = if ping {
            None
        } else {
            match tokio::time::timeout_at(deadline, self.queued_kib.clone().acquire_many_owned(kib)).await {
                Err(_) => return Err(LinkError::Timeout(timeout)),
                Ok(Err(_)) => return Err(LinkError::Closed),
                Ok(Ok(p)) => Some(p),
            }
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        let queue = if ping { &self.ping_tx } else { &self.tx };
        queue.send(Queued { msg, reply: reply_tx, _bytes: bytes }).map_err(|_| LinkError::Closed)?;
        match tokio::time::timeout_at(deadline, reply_rx).await {
            Err(_) => Err(LinkError::Timeout(timeout)),
            Ok(Err(_)) => Err(LinkError::Closed),
            Ok(Ok(WorkerResponse::Failed(e))) => Err(LinkError::Failed(e)),
            Ok(Ok(WorkerResponse::DiskFull { free, needed })) => Err(LinkError::DiskFull { free, needed }),
            Ok(Ok(r)) => Ok(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_put_encodes_like_the_request() {
        for value in [Some(vec![1, 2, 3]), None, Some(vec![7; 100_000])] {
            let record = Record { version: 42, value };
            let owned = WorkerRequest::Put { key: b"key".to_vec(), record: record.clone() };
            assert_eq!(&*encode_put(b"key", &record), &postcard::to_allocvec(&owned).unwrap()[..]);
        }
    }
}
