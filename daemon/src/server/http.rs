//! The Prometheus endpoint: a minimal HTTP/1.1 responder for `GET /metrics` on a loopback TCP
//! address (`metrics_listen`, off by default).
//!
//! It is deliberately small rather than a web server: it reads at most [`MAX_HEAD`] bytes of
//! request head within [`READ_TIMEOUT`], answers once and closes the connection (no
//! keep-alive, no body read). Scrapers (Prometheus, curl) need nothing more. What to answer is
//! decided by [`route`], a pure function of the head's bytes. At most [`MAX_CONNECTIONS`] are
//! served at once; more are closed unanswered, so a flood cannot pin chd's memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::debug;

use crate::service::Server;

/// Largest request head read; a longer one is answered 431 and closed.
const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 16;

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    BadRequest,
}

/// Decides from the request line alone: `GET /metrics` (a query string is ignored) is the
/// one resource; any other path or method is 404.
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else { return Route::BadRequest };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or_default();
    if method == "GET" && path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves the endpoint until `stop`.
pub fn serve(server: Arc<Server>, listener: TcpListener, stop: watch::Receiver<bool>) {
    crate::net::accept::spawn("metrics", listener, MAX_CONNECTIONS, stop, move |stream, _| {
        let server = server.clone();
        async move {
            if let Err(e) = answer(&server, stream).await {
                debug!(error = %e, "metrics request not answered");
            }
        }
    });
}

async fn answer(server: &Server, mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() >= MAX_HEAD {
                return Ok(false);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                // A client that half-closed after its request line is still answered.
                return Ok(!head.is_empty());
            }
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let reply = match complete {
        Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(false)) => response("431 Request Header Fields Too Large", "text/plain", "request head too large\n"),
        Ok(Ok(true)) => match route(&head) {
            Route::Metrics => {
                let text = crate::metrics::prometheus(&super::handlers::stats(server).await);
                response("200 OK", "text/plain; version=0.0.4; charset=utf-8", &text)
            }
            Route::NotFound => response("404 Not Found", "text/plain", "not found; metrics are at /metrics\n"),
            Route::BadRequest => response("400 Bad Request", "text/plain", "bad request\n"),
        },
    };
    stream.write_all(&reply).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_of_metrics_is_served() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metrics/x HTTP/1.1\r\n\r\n"), Route::NotFound);
        for bad in [&b"GET /metrics\r\n\r\n"[..], b"\xff\xfe\r\n\r\n", b"GET /metrics SPDY/3\r\n\r\n", b""] {
            assert_eq!(route(bad), Route::BadRequest, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_response_says_its_length_and_closes() {
        let r = String::from_utf8(response("200 OK", "text/plain; version=0.0.4", "a 1\n")).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Content-Length: 4\r\n") && r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\na 1\n"));
    }
}
