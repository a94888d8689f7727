//! One accept loop for every listener chd serves besides its main socket (RESP on a Unix
//! socket and on TCP, the metrics endpoint): accept until told to stop, bound the connections
//! served at once, refuse the rest with a rate-limited warning, and never let a failing
//! `accept` (EMFILE, say) spin.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tracing::warn;

use crate::logging::{suppressed, RateLimit};

/// A listener whose connections [`spawn`] serves: a Unix or a TCP one.
pub trait Listener: Send + 'static {
    type Stream: Send + 'static;
    /// The next connection, with the peer's address for logs (empty for a Unix socket).
    fn next(&self) -> impl Future<Output = std::io::Result<(Self::Stream, String)>> + Send + '_;
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    async fn next(&self) -> std::io::Result<(UnixStream, String)> {
        self.accept().await.map(|(s, _)| (s, String::new()))
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    async fn next(&self) -> std::io::Result<(TcpStream, String)> {
        let (s, addr) = self.accept().await?;
        // Replies are written whole; Nagle would only delay them.
        let _ = s.set_nodelay(true);
        Ok((s, addr.to_string()))
    }
}

/// Accepts on `listener` until `stop`, serving each connection with `serve` in its own task,
/// at most `max` at once. `what` names the endpoint in log lines.
pub fn spawn<L, F, Fut>(what: &'static str, listener: L, max: usize, mut stop: watch::Receiver<bool>, serve: F)
where
    L: Listener,
    F: Fn(L::Stream, String) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max));
    let mut too_many = RateLimit::new(Duration::from_secs(1), 1);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.next() => a,
                _ = stop.wait_for(|s| *s) => break,
            };
            match accepted {
                Ok((stream, addr)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        if let Some(n) = too_many.check(Instant::now()) {
                            warn!(limit = max, "too many {what} connections; refusing one{}", suppressed(n));
                        }
                        continue;
                    };
                    let served = serve(stream, addr);
                    tokio::spawn(async move {
                        served.await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
}
