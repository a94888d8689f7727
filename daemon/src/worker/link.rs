//! chd's end of a worker's socketpair: send a request, await its reply, with a deadline.
//!
//! Requests from many tasks are queued to one writer task, which coalesces whatever is queued
//! into one write (a batch that the worker will apply under one sync). A reader task routes
//! replies by id. When the worker dies its socket closes and every pending call fails at once.
//!
//! Each caller encodes its own request, so the writer does nothing but write, and a `Ping`
//! goes on a queue of its own that the writer empties first: a health check waits for at most
//! the one frame being written, never for the large writes queued before it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chd_data::proto::encode_frame;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

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

#[derive(Clone)]
pub struct WorkerLink {
    /// Encoded request frames.
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Encoded pings, written before anything waiting in `tx`.
    ping_tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
}

impl WorkerLink {
    /// Starts the link's tasks. The first message of a worker is its hello, delivered on the
    /// returned receiver; `closed` fires when the worker's end of the socket closes.
    pub fn start(stream: UnixStream) -> (WorkerLink, oneshot::Receiver<WorkerHello>, oneshot::Receiver<()>) {
        let (rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (ping_tx, mut ping_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (hello_tx, hello_rx) = oneshot::channel();
        let (closed_tx, closed_rx) = oneshot::channel();

        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                let first = tokio::select! {
                    biased;
                    Some(ping) = ping_rx.recv() => ping,
                    Some(frame) = rx.recv() => frame,
                    else => break,
                };
                buf.extend_from_slice(&first);
                while let Ok(ping) = ping_rx.try_recv() {
                    buf.extend_from_slice(&ping);
                }
                while buf.len() < (1 << 20) {
                    match rx.try_recv() {
                        Ok(frame) => buf.extend_from_slice(&frame),
                        Err(_) => break,
                    }
                }
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
                buf.clear();
            }
        });

        let (reader_closed, reader_pending) = (closed.clone(), pending.clone());
        tokio::spawn(async move {
            let pending = reader_pending;
            let mut rd = rd;
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

        let link = WorkerLink { tx, ping_tx, pending, next_id: Arc::new(AtomicU64::new(1)), closed };
        (link, hello_rx, closed_rx)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub async fn call(&self, req: WorkerRequest, timeout: Duration) -> Result<WorkerResponse, LinkError> {
        if self.is_closed() {
            return Err(LinkError::Closed);
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ping = req == WorkerRequest::Ping;
        let mut frame = Vec::new();
        encode_frame(&Frame { id, msg: req }, &mut frame);
        self.pending.lock().expect("pending lock").insert(id, reply_tx);
        // The reader sets `closed` before it fails what is pending: a call registered after that
        // must fail here rather than wait for its timeout.
        if self.is_closed() {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(LinkError::Closed);
        }
        let queue = if ping { &self.ping_tx } else { &self.tx };
        if queue.send(frame).is_err() {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(LinkError::Closed);
        }
        match tokio::time::timeout(timeout, reply_rx).await {
            Err(_) => Err(LinkError::Timeout(timeout)),
            Ok(Err(_)) => Err(LinkError::Closed),
            Ok(Ok(WorkerResponse::Failed(e))) => Err(LinkError::Failed(e)),
            Ok(Ok(WorkerResponse::DiskFull { free, needed })) => Err(LinkError::DiskFull { free, needed }),
            Ok(Ok(r)) => Ok(r),
        }
    }
}
