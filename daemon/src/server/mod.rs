//! chd's own API: the Unix socket that chctl and the `chd-client` crate talk to
//! (length-prefixed postcard frames, one handler per request: [`handlers`]), and the
//! Prometheus endpoint ([`http`]).

mod conn;
mod handlers;
pub mod http;

use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};

use crate::net::accept;
use crate::service::Server;

/// Clients served at once; more are refused (closed) rather than queued without bound.
const MAX_CONNECTIONS: usize = 1024;

/// Serves chd's socket until `stop`; `done` is dropped when every connection ended.
pub fn serve(server: Arc<Server>, listener: UnixListener, stop: watch::Receiver<bool>, done: mpsc::Sender<()>) {
    let serving = stop.clone();
    accept::spawn("chd", listener, MAX_CONNECTIONS, stop, move |stream, _| {
        let (server, stop, done) = (server.clone(), serving.clone(), done.clone());
        async move {
            conn::serve(server, stream, stop).await;
            drop(done);
        }
    });
}
