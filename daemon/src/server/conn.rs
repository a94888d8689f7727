//! One client connection: read frames, run requests, write replies.
//!
//! Requests are handled concurrently (up to [`MAX_IN_FLIGHT`] requests and
//! [`MAX_IN_FLIGHT_BYTES`] of request bodies per connection) and replies carry
//! the request id, so a client can pipeline. A request on a key first takes the key's lock, in
//! the order the requests arrived, before it is spawned: requests of one connection on one key
//! apply in the order they were sent.
//!
//! Any malformed input (bad frame, bad body, oversized key or value, no hello) is answered with
//! an error and the connection is closed; nothing of it reaches the data.

use std::sync::Arc;

use chd_data::proto::{
    decode_body, encode_frame, peek_id, ClientFrame, FrameError, Request, Response, ServerFrame, MAX_FRAME,
    PROTOCOL_VERSION,
};
use chd_data::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, warn};

use super::handlers;
use crate::frame::{read_body, read_frame, read_len};
use crate::metrics;
use crate::net::auth::{self, Peer};
use crate::service::Server;

const MAX_IN_FLIGHT: usize = 128;
/// Bounds the memory one client can pin by pipelining large values.
const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

pub async fn serve(server: Arc<Server>, stream: UnixStream, mut stopping: watch::Receiver<bool>) {
    let peer = match stream.peer_cred() {
        Ok(c) => Peer { uid: c.uid(), gid: c.gid(), pid: c.pid() },
        Err(_) => return,
    };
    let (mut rd, mut wr) = stream.into_split();
    let (replies, mut outbox) = mpsc::channel::<ServerFrame>(MAX_IN_FLIGHT);

    // The writer drains replies, coalescing those that are ready into one write. It ends once
    // every sender is gone: the reader loop and all requests still running.
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(first) = outbox.recv().await {
            encode_frame(&first, &mut buf);
            while buf.len() < (1 << 20) {
                match outbox.try_recv() {
                    Ok(f) => encode_frame(&f, &mut buf),
                    Err(_) => break,
                }
            }
            if wr.write_all(&buf).await.is_err() {
                return;
            }
            metrics::CHD.bytes_out(buf.len());
            buf.clear();
        }
        let _ = wr.shutdown().await;
    });

    let reply_and_close = |id: u64, e: Error| {
        let replies = replies.clone();
        async move {
            let _ = replies.send(ServerFrame { id, response: Err(e) }).await;
        }
    };

    if !auth::allowed(&peer, server.cluster.settings.allowed_group.as_ref().map(|g| g.1)) {
        if let Some(n) = crate::logging::allow(&crate::logging::REFUSED_CLIENTS) {
            warn!(
                uid = peer.uid,
                pid = %pid_text(&peer),
                "client refused: its user is not root, chd's user or in allowed_group{}",
                crate::logging::suppressed(n)
            );
        }
        // Answer the client's first request (its hello) rather than closing under it, so that
        // it reads why instead of failing to write. Only a small frame is read, briefly.
        let first = tokio::time::timeout(std::time::Duration::from_secs(1), read_frame(&mut rd, 1024)).await;
        let id = match first {
            Ok(Ok(Some(body))) => peek_id(&body),
            _ => 0,
        };
        reply_and_close(id, Error::PermissionDenied { uid: peer.uid }).await;
        drop(replies);
        let _ = writer.await;
        return;
    }

    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // Counted in KiB: a semaphore holds at most u32::MAX permits per acquire.
    let in_flight_kib = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES >> 10));
    let mut greeted = false;
    let mut requests = 0u64;
    loop {
        let len = tokio::select! {
            l = read_len(&mut rd, MAX_FRAME) => l,
            _ = stopping.wait_for(|s| *s) => break,
        };
        // The body is read only once its bytes are granted: a client that pipelines large
        // values waits here instead of making chd buffer them.
        let len = match len {
            Ok(Some(len)) => len,
            Ok(None) | Err(FrameError::Io(_)) | Err(FrameError::Truncated) => break,
            Err(FrameError::Protocol(e)) => {
                reply_and_close(0, e).await;
                break;
            }
        };
        let kib = (len >> 10).clamp(1, MAX_IN_FLIGHT_BYTES >> 10) as u32;
        let Ok(bytes_permit) = in_flight_kib.clone().acquire_many_owned(kib).await else { break };
        let Ok(body) = read_body(&mut rd, len).await else { break };
        let arrived = std::time::Instant::now();
        metrics::CHD.bytes_in(4 + len);
        let ClientFrame { id, request } = match decode_body::<ClientFrame>(&body) {
            Ok(f) => f,
            Err(e) => {
                reply_and_close(peek_id(&body), e).await;
                break;
            }
        };
        if !greeted {
            match request {
                Request::Hello { protocol, ref client } if protocol == PROTOCOL_VERSION => {
                    greeted = true;
                    metrics::CHD.record(metrics::chd_index(&request), metrics::OK, arrived.elapsed());
                    debug!(uid = peer.uid, pid = %pid_text(&peer), client = %client, "client connected");
                    let hello = Response::Hello { protocol, server: format!("chd {}", env!("CARGO_PKG_VERSION")) };
                    let _ = replies.send(ServerFrame { id, response: Ok(hello) }).await;
                    continue;
                }
                Request::Hello { protocol, .. } => {
                    reply_and_close(id, Error::VersionMismatch { client: protocol, server: PROTOCOL_VERSION }).await;
                }
                _ => reply_and_close(id, Error::HelloRequired).await,
            }
            break;
        }
        if let Err(e) = request.validate() {
            debug!(uid = peer.uid, pid = %pid_text(&peer), request = %request.name(), error = %e, "request refused; closing the connection");
            metrics::CHD.record(metrics::chd_index(&request), metrics::outcome_of(&e), arrived.elapsed());
            reply_and_close(id, e).await;
            break;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        let guard = match &request {
            Request::Get { key }
            | Request::Set { key, .. }
            | Request::Del { key }
            | Request::Exists { key }
            | Request::SetIfAbsent { key, .. } => Some(server.coordinator.locks.lock(key).await),
            _ => None,
        };
        let (server, replies) = (server.clone(), replies.clone());
        requests += 1;
        tokio::spawn(async move {
            let (name, index, started) = (request.name(), metrics::chd_index(&request), std::time::Instant::now());
            let response = handlers::handle(&server, request).await;
            drop(guard);
            let outcome = response.as_ref().map_or_else(metrics::outcome_of, |_| metrics::OK);
            metrics::CHD.record(index, outcome, arrived.elapsed());
            match &response {
                Ok(_) => debug!(request = %name, micros = started.elapsed().as_micros() as u64, "request done"),
                Err(e) => {
                    debug!(request = %name, micros = started.elapsed().as_micros() as u64, error = %e, "request failed")
                }
            }
            let _ = replies.send(ServerFrame { id, response }).await;
            drop((permit, bytes_permit));
        });
    }
    if greeted {
        debug!(uid = peer.uid, pid = %pid_text(&peer), requests, "client disconnected");
    }
    drop(replies);
    let _ = writer.await;
}

fn pid_text(peer: &Peer) -> String {
    peer.pid.map_or("?".into(), |p| p.to_string())
}
