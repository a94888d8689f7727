//! One RESP connection: parse requests, run them concurrently, write replies in order.
//!
//! The reader takes a request only once it holds an in-flight slot and enough byte credit;
//! both are given back by the writer after the reply is written, so replies a slow client does
//! not read also count against its budget. Replies travel to the writer in request order
//! (ready ones as bytes, running ones as a oneshot), and the writer coalesces those that are
//! ready into one write.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use super::cmd::{self, Kind};
use super::parse::{parse_int, Parser};
use super::reply::Reply;
use super::{stats, ConnInfo};
use crate::metrics;
use crate::net::auth::{self, Peer};
use crate::service::Server;

/// Requests of one connection read but not yet answered (run or waiting to be written).
pub const MAX_IN_FLIGHT: usize = 128;
/// Bytes of arguments of those requests.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// How long a connection that must authenticate (TCP) may go without a successful AUTH.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

enum Slot {
    Ready(Vec<u8>),
    Running(oneshot::Receiver<Vec<u8>>),
}

struct Item {
    slot: Slot,
    /// Close the connection once this reply is written.
    close: bool,
    _permits: Vec<OwnedSemaphorePermit>,
}

struct Session {
    id: u64,
    proto: u8,
    needs_auth: bool,
    authed: bool,
    may_stop: bool,
}

pub async fn serve_unix(server: Arc<Server>, stream: UnixStream, stop: watch::Receiver<bool>) {
    let peer = match stream.peer_cred() {
        Ok(c) => Peer { uid: c.uid(), gid: c.gid(), pid: c.pid() },
        Err(_) => return,
    };
    let addr = format!("unix:uid={},pid={}", peer.uid, peer.pid.unwrap_or(0));
    let (mut rd, mut wr) = stream.into_split();
    if !auth::allowed(&peer, server.cluster.settings.allowed_group.as_ref().map(|g| g.1)) {
        if let Some(n) = crate::logging::allow(&crate::logging::REFUSED_CLIENTS) {
            warn!(
                uid = peer.uid,
                pid = %peer.pid.map_or("?".into(), |p| p.to_string()),
                "RESP client refused: its user is not root, chd's user or in allowed_group{}",
                crate::logging::suppressed(n)
            );
        }
        stats::REJECTED.fetch_add(1, Ordering::Relaxed);
        // Let the client's first request arrive, so it reads why rather than failing to write.
        let mut first = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(1), rd.read(&mut first)).await;
        let mut out = Vec::new();
        Reply::err(chd_data::Error::PermissionDenied { uid: peer.uid }).encode(2, &mut out);
        let _ = wr.write_all(&out).await;
        let _ = wr.shutdown().await;
        return;
    }
    serve(server, rd, wr, addr, false, true, stop).await;
}

pub async fn serve_tcp(server: Arc<Server>, stream: TcpStream, addr: String, stop: watch::Receiver<bool>) {
    let (rd, wr) = stream.into_split();
    // A TCP peer has no credentials to check: it must AUTH, and may not stop chd.
    serve(server, rd, wr, addr, true, false, stop).await;
}

async fn serve<R, W>(
    server: Arc<Server>,
    mut rd: R,
    wr: W,
    addr: String,
    needs_auth: bool,
    may_stop: bool,
    mut stop: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let id = stats::next_id();
    stats::CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    stats::CLIENTS.lock().expect("clients lock").insert(
        id,
        stats::Client {
            addr,
            name: String::new(),
            since: now,
            last: now,
            resp: 2,
            lib_name: String::new(),
            lib_ver: String::new(),
            last_cmd: "NULL".into(),
        },
    );
    let mut session = Session { id, proto: 2, needs_auth, authed: false, may_stop };
    let (tx, rx) = mpsc::channel::<Item>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_loop(wr, rx));
    let count = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let kib = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES >> 10));
    let mut parser = Parser::default();
    // A client that must authenticate has AUTH_TIMEOUT to do it: idle strangers would
    // otherwise hold the endpoint's connection slots and lock out its real clients.
    let auth_deadline = tokio::time::Instant::now() + AUTH_TIMEOUT;
    loop {
        parser.unauthenticated = session.needs_auth && !session.authed;
        let args = match parser.next_request() {
            Ok(Some(args)) => args,
            Ok(None) => {
                let n = tokio::select! {
                    n = rd.read_buf(parser.buffer()) => n,
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep_until(auth_deadline), if parser.unauthenticated => {
                        debug!(client = id, "no AUTH within {}s; closing", AUTH_TIMEOUT.as_secs());
                        break;
                    }
                };
                match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        super::METRICS.bytes_in(n);
                        continue;
                    }
                }
            }
            Err(e) => {
                debug!(client = id, error = %e, "RESP protocol error; closing");
                let _ =
                    tx.send(Item { slot: Slot::Ready(encode(&Reply::err(e), 2)), close: true, _permits: vec![] }).await;
                break;
            }
        };
        stats::COMMANDS.fetch_add(1, Ordering::Relaxed);
        let arrived = Instant::now();
        // Unknown and refused commands count as `other`: the label set stays bounded.
        let index = cmd::index_of(&args[0]).unwrap_or(cmd::COMMANDS.len());
        let bytes: usize = args.iter().map(Vec::len).sum();
        let kibs = (bytes >> 10).clamp(1, MAX_IN_FLIGHT_BYTES >> 10) as u32;
        let Ok(byte_permit) = kib.clone().acquire_many_owned(kibs).await else { break };
        let Ok(slot_permit) = count.clone().acquire_owned().await else { break };
        let permits = vec![byte_permit, slot_permit];
        let proto = session.proto;
        let ready = |reply: Reply, close: bool, permits| {
            super::METRICS.record(index, outcome(&reply), arrived.elapsed());
            Item { slot: Slot::Ready(encode(&reply, proto)), close, _permits: permits }
        };
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        if let Some(c) = stats::CLIENTS.lock().expect("clients lock").get_mut(&id) {
            c.last = Instant::now();
            c.last_cmd.clone_from(&name);
        }
        if session.needs_auth && !session.authed && !matches!(name.as_str(), "auth" | "hello" | "quit") {
            if tx.send(ready(Reply::Error("NOAUTH Authentication required.".into()), false, permits)).await.is_err() {
                break;
            }
            continue;
        }
        let Some(spec) = cmd::lookup(&args[0]) else {
            let reply = cmd::refused(&args[0]).unwrap_or_else(|| cmd::unknown(&args));
            if tx.send(ready(reply, false, permits)).await.is_err() {
                break;
            }
            continue;
        };
        if !cmd::arity_ok(spec, args.len()) {
            if tx.send(ready(cmd::arity_error(spec.name), false, permits)).await.is_err() {
                break;
            }
            continue;
        }
        let item = match spec.kind {
            Kind::Conn => {
                let (reply, close) = session_command(&server, &mut session, spec.name, &args);
                super::METRICS.record(index, outcome(&reply), arrived.elapsed());
                // HELLO answers in the protocol it switches to.
                Item { slot: Slot::Ready(encode(&reply, session.proto)), close, _permits: permits }
            }
            Kind::Server => ready(cmd::server_command(&server, spec, &args), false, permits),
            Kind::Key => {
                let keys = cmd::keys_of(spec, &args);
                if let Err(reply) = cmd::check_keys(&keys) {
                    if tx.send(ready(reply, false, permits)).await.is_err() {
                        break;
                    }
                    continue;
                }
                // A GET of a key whose value chd holds in memory is answered here, without a
                // task: the key's lock must be free (no earlier request of any connection is
                // still changing it), and is held while the cache is read.
                if spec.name == "get" {
                    if let Some(value) = server
                        .coordinator
                        .locks
                        .try_lock(&args[1])
                        .and_then(|_guard| server.coordinator.cached(&args[1]))
                    {
                        if tx.send(ready(Reply::opt(value.map(|v| v.to_vec())), false, permits)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                }
                let guards = server.coordinator.locks.lock_many(&keys).await;
                let (done, running) = oneshot::channel();
                let server = server.clone();
                tokio::spawn(async move {
                    let reply = cmd::key_command(&server, spec, args).await;
                    drop(guards);
                    super::METRICS.record(index, outcome(&reply), arrived.elapsed());
                    let _ = done.send(encode(&reply, proto));
                });
                Item { slot: Slot::Running(running), close: false, _permits: permits }
            }
            Kind::Keyspace => {
                // Every earlier request of this connection has given back its slot.
                let Ok(barrier) = count.clone().acquire_many_owned((MAX_IN_FLIGHT - 1) as u32).await else { break };
                drop(barrier);
                // Run here, before the next request is read: a later write of the same pipeline
                // must not change the keys this one lists.
                let ctx = ConnInfo { id, may_stop: session.may_stop };
                ready(cmd::keyspace_command(&server, spec, args, &ctx).await, false, permits)
            }
        };
        let close = item.close;
        if tx.send(item).await.is_err() || close {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
    stats::CLIENTS.lock().expect("clients lock").remove(&id);
}

fn outcome(reply: &Reply) -> usize {
    if reply.is_error() {
        metrics::ERROR
    } else {
        metrics::OK
    }
}

fn encode(reply: &Reply, proto: u8) -> Vec<u8> {
    let mut out = Vec::new();
    reply.encode(proto, &mut out);
    out
}

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Item>) {
    let mut buf = Vec::new();
    let mut written = Vec::new();
    let mut carry: Option<Item> = None;
    loop {
        let item = match carry.take() {
            Some(i) => i,
            None => match rx.recv().await {
                Some(i) => i,
                None => break,
            },
        };
        let close = item.close;
        match item.slot {
            Slot::Ready(b) => buf.extend_from_slice(&b),
            Slot::Running(r) => buf.extend(r.await.unwrap_or_else(|_| b"-ERR internal error in chd\r\n".to_vec())),
        }
        written.push(item._permits);
        // Add the replies that are already done, up to about 1 MiB, to the same write.
        while !close && buf.len() < (1 << 20) {
            let Ok(mut next) = rx.try_recv() else { break };
            let ready = match &mut next.slot {
                Slot::Ready(b) => Some(std::mem::take(b)),
                Slot::Running(r) => r.try_recv().ok(),
            };
            match ready {
                Some(b) if !next.close => {
                    buf.extend(b);
                    written.push(next._permits);
                }
                Some(b) => {
                    next.slot = Slot::Ready(b);
                    carry = Some(next);
                    break;
                }
                None => {
                    carry = Some(next);
                    break;
                }
            }
        }
        if wr.write_all(&buf).await.is_err() {
            return;
        }
        super::METRICS.bytes_out(buf.len());
        buf.clear();
        written.clear();
        if close {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// Commands that read or change the connection's own state. Returns the reply and whether to
/// close the connection after it.
fn session_command(server: &Server, s: &mut Session, name: &str, args: &[Vec<u8>]) -> (Reply, bool) {
    let lower = |a: &[u8]| String::from_utf8_lossy(a).to_ascii_lowercase();
    let set_client = |id: u64, f: &dyn Fn(&mut stats::Client)| {
        if let Some(c) = stats::CLIENTS.lock().expect("clients lock").get_mut(&id) {
            f(c);
        }
    };
    match name {
        "quit" => (Reply::ok(), true),
        "auth" => {
            let (user, pass) = if args.len() == 2 { (&b"default"[..], &args[1]) } else { (&args[1][..], &args[2]) };
            if args.len() > 3 {
                return (Reply::err("syntax error"), false);
            }
            (check_auth(server, s, user, pass, args.len() == 2), false)
        }
        "select" => match parse_int(&args[1]) {
            Some(0) => (Reply::ok(), false),
            Some(_) => (Reply::err("DB index is out of range"), false),
            None => (Reply::err("value is not an integer or out of range"), false),
        },
        "hello" => {
            let mut ver = None;
            let mut i = 1;
            if let Some(v) = args.get(1) {
                match parse_int(v) {
                    Some(v @ 2..=3) => ver = Some(v as u8),
                    Some(_) => return (Reply::Error("NOPROTO unsupported protocol version".into()), false),
                    None => return (Reply::err("Protocol version is not an integer or out of range"), false),
                }
                i = 2;
            }
            let mut name = None;
            while i < args.len() {
                let more = args.len() - 1 - i;
                match lower(&args[i]).as_str() {
                    "auth" if more >= 2 => {
                        let r = check_auth(server, s, &args[i + 1], &args[i + 2], false);
                        if r.is_error() {
                            return (r, false);
                        }
                        i += 3;
                    }
                    "setname" if more >= 1 => {
                        if let Err(e) = valid_name(&args[i + 1]) {
                            return (e, false);
                        }
                        name = Some(String::from_utf8_lossy(&args[i + 1]).into_owned());
                        i += 2;
                    }
                    _ => {
                        let opt = String::from_utf8_lossy(&args[i]);
                        return (Reply::err(format!("Syntax error in HELLO option '{opt}'")), false);
                    }
                }
            }
            if s.needs_auth && !s.authed {
                return (
                    Reply::Error(
                        "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO \
                         <proto> AUTH <user> <pass> option can be used to authenticate the client and select the \
                         RESP protocol version at the same time"
                            .into(),
                    ),
                    false,
                );
            }
            if let Some(v) = ver {
                s.proto = v;
            }
            let proto = s.proto;
            set_client(s.id, &|c| {
                c.resp = proto;
                if let Some(n) = &name {
                    c.name.clone_from(n);
                }
            });
            let reply = Reply::Map(vec![
                (Reply::bulk("server"), Reply::bulk("chd")),
                (Reply::bulk("version"), Reply::bulk(cmd::REDIS_VERSION)),
                (Reply::bulk("proto"), Reply::Int(i64::from(s.proto))),
                (Reply::bulk("id"), Reply::Int(s.id as i64)),
                (Reply::bulk("mode"), Reply::bulk("standalone")),
                (Reply::bulk("role"), Reply::bulk("master")),
                (Reply::bulk("modules"), Reply::Array(Vec::new())),
            ]);
            (reply, false)
        }
        "client" => {
            let sub = lower(&args[1]);
            let argc = args.len();
            let arity = |ok: bool| {
                if ok {
                    None
                } else {
                    Some(Reply::err(format!("wrong number of arguments for 'client|{sub}' command")))
                }
            };
            let reply = match sub.as_str() {
                "setname" => arity(argc == 3).unwrap_or_else(|| match valid_name(&args[2]) {
                    Err(e) => e,
                    Ok(()) => {
                        let n = String::from_utf8_lossy(&args[2]).into_owned();
                        set_client(s.id, &|c| c.name.clone_from(&n));
                        Reply::ok()
                    }
                }),
                "getname" => arity(argc == 2).unwrap_or_else(|| {
                    let n = stats::CLIENTS.lock().expect("clients lock").get(&s.id).map(|c| c.name.clone());
                    match n {
                        Some(n) if !n.is_empty() => Reply::bulk(n),
                        _ => Reply::Nil,
                    }
                }),
                "id" => arity(argc == 2).unwrap_or(Reply::Int(s.id as i64)),
                "setinfo" => arity(argc == 4).unwrap_or_else(|| {
                    let v = String::from_utf8_lossy(&args[3]).into_owned();
                    if v.contains([' ', '\n', '\r']) {
                        return Reply::err(format!(
                            "{} cannot contain spaces, newlines or special characters.",
                            lower(&args[2])
                        ));
                    }
                    match lower(&args[2]).as_str() {
                        "lib-name" => set_client(s.id, &|c| c.lib_name.clone_from(&v)),
                        "lib-ver" => set_client(s.id, &|c| c.lib_ver.clone_from(&v)),
                        other => return Reply::err(format!("Unrecognized option '{other}'")),
                    }
                    Reply::ok()
                }),
                "list" => {
                    let clients = stats::CLIENTS.lock().expect("clients lock");
                    let mut text = String::new();
                    for (id, c) in clients.iter() {
                        text += &stats::client_line(*id, c);
                        text += "\n";
                    }
                    Reply::Verbatim(text)
                }
                "info" => {
                    let clients = stats::CLIENTS.lock().expect("clients lock");
                    let line = clients.get(&s.id).map(|c| stats::client_line(s.id, c)).unwrap_or_default();
                    Reply::Verbatim(line + "\n")
                }
                _ => cmd::unknown_subcommand(&args[1], "CLIENT"),
            };
            (reply, false)
        }
        other => (Reply::err(format!("internal error: {other} is not a connection command")), false),
    }
}

fn check_auth(server: &Server, s: &mut Session, user: &[u8], pass: &[u8], short_form: bool) -> Reply {
    match &server.cluster.settings.requirepass {
        None if short_form => Reply::err(
            "AUTH <password> called without any password configured for the default user. Are you sure your \
             configuration is correct?",
        ),
        // No password set: the default user has none, and any password is accepted, as in Redis.
        None if user == b"default" => {
            s.authed = true;
            Reply::ok()
        }
        Some(p) if user == b"default" && constant_time_eq(p.0.as_bytes(), pass) => {
            s.authed = true;
            Reply::ok()
        }
        _ => Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn valid_name(name: &[u8]) -> Result<(), Reply> {
    if name.iter().all(|&b| (b'!'..=b'~').contains(&b)) {
        Ok(())
    } else {
        Err(Reply::err("Client names cannot contain spaces, newlines or special characters."))
    }
}
