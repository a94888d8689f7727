//! The Redis-protocol (RESP2, and RESP3 after `HELLO 3`) endpoint, so that Redis clients, redis-cli
//! and redis-benchmark work against chd unchanged.
//!
//! Layers: bytes -> [`parse::Parser`] (bounded, pure) -> a request (argument vector) -> a
//! command of [`cmd::COMMANDS`] -> the coordinator -> a [`reply::Reply`] encoded for the
//! connection's protocol. [`conn`] owns one connection: it runs requests concurrently but
//! writes replies in request order, and reads the next request only while fewer than
//! [`conn::MAX_IN_FLIGHT`] requests and [`conn::MAX_IN_FLIGHT_BYTES`] of their arguments are
//! pending, so a client that pipelines faster than chd answers is slowed down, never buffered
//! without bound.
//!
//! Invariants:
//! - Every key a command touches is locked (the coordinator's key locks) from before the
//!   command starts until its writes are durable; locks are taken in request order, so
//!   pipelined commands of one connection apply in the order sent, and read-modify-write
//!   commands (INCR, APPEND, SET NX/XX/GET, MSETNX...) are atomic per key.
//! - Key-listing commands (SCAN, KEYS, DBSIZE, RANDOMKEY, INFO) wait until every earlier
//!   command of the connection has completed, so they see the connection's own writes, and
//!   run before the next request is read, so a later write of the pipeline does not change
//!   what they list.
//! - Access: the Unix socket checks peer credentials exactly as chd's main socket does; TCP is
//!   only served with `requirepass` set and answers nothing but AUTH/HELLO/QUIT before AUTH.
//! - A protocol error is answered with Redis's `-ERR Protocol error: ...` text, then the
//!   connection is closed.

pub mod cmd;
mod conn;
pub mod glob;
mod info;
pub mod parse;
pub mod reply;

use std::sync::{Arc, LazyLock};

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};

use crate::metrics::Api;
use crate::net::accept;
use crate::service::Server;

/// Clients served at once on the RESP endpoint (Redis's default maxclients is 10000; chd keeps
/// the same bound as its main socket).
const MAX_CONNECTIONS: usize = 1024;

/// Requests on the RESP endpoint, by index in [`cmd::COMMANDS`]; one past the end is `other`.
pub static METRICS: LazyLock<Api> =
    LazyLock::new(|| Api::new("resp", cmd::COMMANDS.iter().map(|s| s.name).chain(std::iter::once("other"))));

/// What a command may know about its connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub id: u64,
    /// The peer would be allowed to stop chd through its main socket.
    pub may_stop: bool,
}

/// Serves RESP on a Unix socket until `stop`; `done` is dropped when every connection ended.
pub fn serve_unix(server: Arc<Server>, listener: UnixListener, stop: watch::Receiver<bool>, done: mpsc::Sender<()>) {
    let serving = stop.clone();
    accept::spawn("RESP", listener, MAX_CONNECTIONS, stop, move |stream, _| {
        let (server, stop, done) = (server.clone(), serving.clone(), done.clone());
        async move {
            conn::serve_unix(server, stream, stop).await;
            drop(done);
        }
    });
}

/// Serves RESP on TCP until `stop` (only ever started with a password set).
pub fn serve_tcp(server: Arc<Server>, listener: TcpListener, stop: watch::Receiver<bool>, done: mpsc::Sender<()>) {
    let serving = stop.clone();
    accept::spawn("RESP", listener, MAX_CONNECTIONS, stop, move |stream, addr| {
        let (server, stop, done) = (server.clone(), serving.clone(), done.clone());
        async move {
            conn::serve_tcp(server, stream, addr, stop).await;
            drop(done);
        }
    });
}

/// Counters and the client list that INFO and CLIENT LIST report.
pub mod stats {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;

    pub static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
    pub static COMMANDS: AtomicU64 = AtomicU64::new(0);
    pub static REJECTED: AtomicU64 = AtomicU64::new(0);
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    pub static CLIENTS: Mutex<BTreeMap<u64, Client>> = Mutex::new(BTreeMap::new());

    #[derive(Clone, Debug)]
    pub struct Client {
        pub addr: String,
        pub name: String,
        pub since: Instant,
        pub last: Instant,
        pub resp: u8,
        pub lib_name: String,
        pub lib_ver: String,
        pub last_cmd: String,
    }

    pub fn next_id() -> u64 {
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    }

    /// Not for cryptography: picks RANDOMKEY's partition and key.
    pub fn random() -> u64 {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(Instant::now())
    }

    pub fn client_line(id: u64, c: &Client) -> String {
        format!(
            "id={id} addr={} laddr= fd=0 name={} age={} idle={} flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 \
             watch=0 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 \
             events=r cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}",
            c.addr,
            c.name,
            c.since.elapsed().as_secs(),
            c.last.elapsed().as_secs(),
            c.last_cmd,
            c.resp,
            c.lib_name,
            c.lib_ver
        )
    }
}
