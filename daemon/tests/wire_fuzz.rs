//! Issue 26, item 5: one running chd takes tens of thousands of hostile inputs on every socket
//! it reads, and keeps serving with its data, its processes and its memory intact.
//!
//! The inputs come from a seeded generator (the seed is printed; `CHD_WIRE_SEED` repeats it):
//! valid requests as real clients send them (RESP commands of chd's table, multibulk and
//! inline; chctl's `ClientFrame`s behind a hello), mutated by bit flips, truncations,
//! insertions of `\r` `\n` `\0` `*` `$` and of huge or negative lengths, splices of two
//! requests and random bytes, plus wholly random inputs. They go to the RESP socket, to the
//! chctl socket and, before any AUTH, to the TCP RESP listener: most on a fresh connection
//! that is then half-closed and read to its end, some cut off mid-request, some several to a
//! connection, some dripped a few bytes at a time, while a few connections hold a request
//! half-sent all along and finish it at the end of the round.
//!
//! The generator never produces what an allowed client may legitimately do to the data the
//! test watches: requests on keys under `keep/`, membership changes, restarts, repair,
//! quarantine purges or SHUTDOWN. Everything else goes.
//!
//! `CHD_WIRE_INPUTS` (default 33000) and `CHD_WIRE_SECONDS` (default 60) bound a run.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chd_data::proto::{
    decode_body, encode_frame, Change, ClientFrame, Request, Response, ServerFrame, MAX_FRAME, PROTOCOL_VERSION,
};
use common::*;

const PASSWORD: &str = "wire-fuzz-password-5d1c";
/// Keys the fuzzed traffic never names: the data that must survive it.
const KEEP: &[u8] = b"keep/";
/// How long chd may take to answer and close a connection whose client has sent everything.
const REPLY_LIMIT: Duration = Duration::from_secs(30);
const ROUNDS: usize = 3;
/// chd's peak resident memory over the whole run, workers not included (they are processes of
/// their own). chd starts at some tens of MiB; what one connection can pin is bounded by
/// its in-flight limits (64 MiB of arguments), and the read cache holds at most 256 MiB,
/// far more than the few small values this test writes.
const PEAK_RSS_LIMIT: u64 = 384 << 20;

/// The regression input of issue 26 and Redis's answer to it.
const EMPTY_BULK_HEADER: &[u8] = b"*1\r\n\r\n";
const EMPTY_BULK_HEADER_REPLY: &[u8] = b"-ERR Protocol error: expected '$', got ' '\r\n";

#[test]
fn hostile_inputs_on_every_socket_leave_chd_serving_with_its_data_intact() {
    let seed = std::env::var("CHD_WIRE_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("CHD_WIRE_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
    let total: usize = std::env::var("CHD_WIRE_INPUTS").ok().and_then(|s| s.parse().ok()).unwrap_or(33_000);
    let secs: u64 = std::env::var("CHD_WIRE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    eprintln!("wire fuzz seed {seed} (repeat with CHD_WIRE_SEED={seed})");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let chd = Chd::start_with_config(&format!("requirepass = \"{PASSWORD}\"\n"), &["--resp-listen", &addr.to_string()]);
    let resp = Endpoint::Unix(chd.socket.with_file_name("chd-resp.sock"));
    let ctl = Endpoint::Unix(chd.socket.clone());
    let tcp = Endpoint::Tcp(addr);
    wait_for("the TCP endpoint", Duration::from_secs(60), || TcpStream::connect(addr).is_ok());

    let kept = write_kept_keys(&chd, &resp, seed);
    let workers = workers(&chd);
    let pid = chd.pid();
    let start_rss = rss(pid, "VmRSS:");
    let started = Instant::now();
    let run = Run { pid, log: chd.dir.path().join("chd.log"), seed, sent: Sent::default(), recent: Default::default() };
    let mut rss_after_rounds = Vec::new();

    // 60% of the inputs go to the RESP socket, 20% to the chctl socket, 20% to TCP, spread over
    // ROUNDS rounds on the Unix sockets and as many on TCP.
    let per_round = total / ROUNDS;
    let phase_time = Duration::from_secs(secs) / ROUNDS as u32;
    // The Unix sockets first, then TCP before AUTH alone, so that any change it made to the data
    // shows. Each round also holds a few half-sent requests open, and ends with the checks.
    let mut before_tcp = None;
    for round in 0..2 * ROUNDS {
        let round_seed = mix(seed, round as u64);
        let held = Held::open(&resp, &ctl, &tcp, &kept, round);
        check_regression_input(&resp);
        check_regression_input(&tcp);
        if round < ROUNDS {
            // Two RESP clients and one chctl client at once: 60% and 20% of the inputs.
            let deadline = Instant::now() + phase_time * 7 / 10;
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (resp, run) = (&resp, &run);
                    s.spawn(move || {
                        let mut rng = Rng(mix(round_seed, t));
                        fuzz_resp(resp, &mut rng, per_round * 3 / 10, deadline, Target::Unix, run, &run.sent.resp)
                    });
                }
                let (ctl, run) = (&ctl, &run);
                s.spawn(move || fuzz_ctl(ctl, &mut Rng(mix(round_seed, 2)), per_round / 5, deadline, run));
            });
        } else {
            // Two TCP clients that never authenticate: 20% of the inputs.
            before_tcp.get_or_insert_with(|| settled_snapshot(&resp));
            let deadline = Instant::now() + phase_time * 3 / 10;
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (tcp, run) = (&tcp, &run);
                    s.spawn(move || {
                        let mut rng = Rng(mix(round_seed, t));
                        fuzz_resp(tcp, &mut rng, per_round / 10, deadline, Target::Tcp, run, &run.sent.tcp)
                    });
                }
            });
        }
        held.finish(&kept);
        rss_after_rounds.push(check_serving(&chd, &resp, &kept, &workers, pid) >> 20);
    }
    let after = snapshot(&resp);
    assert!(before_tcp == Some(after.clone()), "unauthenticated TCP clients changed the data (seed {seed})");
    for k in TCP_KEYS {
        assert!(!after.contains_key(*k), "unauthenticated TCP client created {} (seed {seed})", k.escape_ascii());
    }
    let elapsed = started.elapsed();
    // Every RESP connection chd served has ended, dropped ones included: none is left stuck.
    wait_for("chd to end every fuzzed RESP connection", REPLY_LIMIT, || connected_clients(&resp) == 1);

    // Every kept key, through both protocols.
    let mut c = chd.client();
    for (k, v) in &kept {
        match c.call(Request::Get { key: k.clone() }) {
            Ok(Ok(Response::Value(Some(got)))) => assert!(got == *v, "{} changed (seed {seed})", k.escape_ascii()),
            other => panic!("{} lost: {other:?} (seed {seed})", k.escape_ascii()),
        }
    }
    let keys: Vec<&[u8]> = kept.keys().map(Vec::as_slice).collect();
    let got = resp_call(&resp, &multibulk(&[&[b"MGET".as_slice()], keys.as_slice()].concat()));
    let Some(V::Array(Some(values))) = got.into_iter().next() else { panic!("MGET of the kept keys failed") };
    for ((k, v), got) in kept.iter().zip(values) {
        assert!(matches!(&got, V::Bulk(Some(g)) if g == v), "{} reads back differently over RESP", k.escape_ascii());
    }

    let peak = rss(pid, "VmHWM:");
    let log = chd.log();
    let sent = &run.sent;
    let inputs = sent.resp.load(Ordering::SeqCst) + sent.ctl.load(Ordering::SeqCst) + sent.tcp.load(Ordering::SeqCst);
    eprintln!(
        "{inputs} inputs ({} RESP socket, {} chctl socket, {} TCP before AUTH) in {:.1} s; {} replies read, \
         {} of them errors, {} RESP protocol errors; chd RSS {} MiB at the start, {rss_after_rounds:?} MiB after each round, peak {} MiB (limit {} MiB)",
        sent.resp.load(Ordering::SeqCst),
        sent.ctl.load(Ordering::SeqCst),
        sent.tcp.load(Ordering::SeqCst),
        elapsed.as_secs_f64(),
        sent.replies.load(Ordering::SeqCst),
        sent.errors.load(Ordering::SeqCst),
        sent.protocol_errors.load(Ordering::SeqCst),
        start_rss >> 20,
        peak >> 20,
        PEAK_RSS_LIMIT >> 20
    );
    assert!(!log.contains("panicked"), "chd's log holds a panic (seed {seed}):\n{log}");
    assert!(!log.to_lowercase().contains("abort"), "chd's log holds an abort (seed {seed}):\n{log}");
    assert!(peak < PEAK_RSS_LIMIT, "chd's peak RSS {} MiB is over the limit (seed {seed})", peak >> 20);
    // A run cut short by its time bound still has to have tried something substantial.
    assert!(inputs >= total.min(5000), "only {inputs} inputs sent in {elapsed:?}");
}

// ---------------------------------------------------------------------------------------------
// What the fuzzing must leave alone, and the checks between rounds.

type Kept = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

/// Writes the kept keys: text and binary keys and values, empty and 1 MiB values, through the
/// chctl protocol and through RESP.
fn write_kept_keys(chd: &Chd, resp: &Endpoint, seed: u64) -> Kept {
    let mut rng = Rng(mix(seed, 99));
    let mut kept = Kept::new();
    let mut c = chd.client();
    for i in 0..150u32 {
        kept.insert(format!("keep/ctl/{i}").into_bytes(), format!("ctl value {i}").into_bytes());
    }
    for i in 0..50u32 {
        let mut key = b"keep/bin/".to_vec();
        key.extend(i.to_le_bytes());
        key.extend(b"\0\xff\r\n*$");
        let len = rng.below(2000);
        kept.insert(key, rng.bytes(len));
    }
    kept.insert(b"keep/empty".to_vec(), Vec::new());
    kept.insert(b"keep/large".to_vec(), rng.bytes(1 << 20));
    for (k, v) in &kept {
        let done = c.call(Request::Set { key: k.clone(), value: v.clone() });
        assert!(matches!(done, Ok(Ok(Response::Done))), "set {}: {done:?}", k.escape_ascii());
    }
    let mut over_resp = Kept::new();
    for i in 0..50u32 {
        over_resp.insert(format!("keep/resp/{i}").into_bytes(), format!("resp value {i}").into_bytes());
        let mut key = b"keep/rbin/\r\n\0".to_vec();
        key.extend(i.to_be_bytes());
        let len = rng.below(300);
        over_resp.insert(key, rng.bytes(len));
    }
    let mut pipeline = Vec::new();
    for (k, v) in &over_resp {
        pipeline.extend(multibulk(&[b"SET", k, v]));
    }
    let replies = resp_call(resp, &pipeline);
    assert_eq!(replies.len(), over_resp.len());
    assert!(replies.iter().all(|r| matches!(r, V::Simple(s) if s == b"OK")), "{replies:?}");
    kept.extend(over_resp);
    kept
}

/// Each node's id, pid and restart count.
fn workers(chd: &Chd) -> Vec<(u64, u64, u64)> {
    let status = chd.status();
    let nodes = status["nodes"].as_array().unwrap();
    nodes
        .iter()
        .map(|n| (n["id"].as_u64().unwrap(), n["pid"].as_u64().unwrap(), n["restarts"].as_u64().unwrap()))
        .collect()
}

fn rss(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("chd is running");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// chd answers on both Unix sockets, is the same process with the same workers, within its
/// memory bound, and a sample of the kept keys reads back. Returns chd's resident memory now.
fn check_serving(chd: &Chd, resp: &Endpoint, kept: &Kept, workers_then: &[(u64, u64, u64)], pid: u32) -> u64 {
    assert!(alive(pid), "chd is gone:\n{}", chd.log());
    assert_eq!(resp_call(resp, b"PING\r\n"), [V::Simple(b"PONG".to_vec())]);
    let mut c = Client::connect(&chd.socket).expect("chd's socket answers");
    let (k, v) = kept.iter().nth(kept.len() / 2).unwrap();
    assert!(matches!(c.call(Request::Get { key: k.clone() }), Ok(Ok(Response::Value(Some(got)))) if got == *v));
    assert_eq!(chd.pid(), pid);
    assert_eq!(workers(chd), workers_then, "the workers changed (restarted, added or removed):\n{}", chd.log());
    let peak = rss(pid, "VmHWM:");
    assert!(peak < PEAK_RSS_LIMIT, "chd's peak RSS {} MiB is over the limit", peak >> 20);
    assert!(!chd.log().contains("panicked"), "{}", chd.log());
    rss(pid, "VmRSS:")
}

/// The RESP connections chd serves, the one asking included.
fn connected_clients(resp: &Endpoint) -> u64 {
    let Some(V::Bulk(Some(info))) = resp_call(resp, b"INFO clients\r\n").into_iter().next() else {
        panic!("INFO clients failed")
    };
    let info = String::from_utf8(info).unwrap();
    let line = info.lines().find_map(|l| l.strip_prefix("connected_clients:")).expect("connected_clients in INFO");
    line.parse().unwrap()
}

/// A snapshot once the data stopped changing: a request of a connection dropped in the Unix
/// rounds may still be running when they end.
fn settled_snapshot(resp: &Endpoint) -> Kept {
    let mut last = snapshot(resp);
    for _ in 0..10 {
        let now = snapshot(resp);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the data still changes after the Unix rounds ended")
}

/// Every key and value, read through RESP.
fn snapshot(resp: &Endpoint) -> Kept {
    let keys = match resp_call(resp, &multibulk(&[b"KEYS", b"*"])).into_iter().next() {
        Some(V::Array(Some(keys))) => keys,
        other => panic!("KEYS *: {other:?}"),
    };
    let keys: Vec<Vec<u8>> = keys
        .into_iter()
        .map(|k| match k {
            V::Bulk(Some(k)) => k,
            other => panic!("KEYS *: {other:?}"),
        })
        .collect();
    let mut all = Kept::new();
    for chunk in keys.chunks(500) {
        let args: Vec<&[u8]> = std::iter::once(&b"MGET"[..]).chain(chunk.iter().map(Vec::as_slice)).collect();
        let Some(V::Array(Some(values))) = resp_call(resp, &multibulk(&args)).into_iter().next() else {
            panic!("MGET failed")
        };
        for (k, v) in chunk.iter().zip(values) {
            // A key deleted between KEYS and MGET reads as nil; nothing else writes meanwhile.
            if let V::Bulk(Some(v)) = v {
                all.insert(k.clone(), v);
            }
        }
    }
    all
}

/// `*1\r\n\r\n` once stopped chd (issue 26): it gets Redis's error and the connection closes.
fn check_regression_input(ep: &Endpoint) {
    let mut c = ep.open();
    c.write_all(EMPTY_BULK_HEADER).unwrap();
    // The write side stays open: chd itself must close the connection.
    let (reply, clean) = read_reply(&mut c, EMPTY_BULK_HEADER);
    assert!(clean, "the connection was reset");
    assert_eq!(shown(&reply), shown(EMPTY_BULK_HEADER_REPLY));
}

/// Connections that hold a half-sent request through a round and finish it at its end: a
/// RESP GET, a chctl GET after its hello, and a TCP AUTH with the right password. Each is the
/// connection, the bytes still to send and the kept key it reads.
struct Held {
    resp: Vec<(Conn, Vec<u8>, Vec<u8>)>,
    ctl: Vec<(Conn, Vec<u8>, Vec<u8>)>,
    tcp: Vec<(Conn, Vec<u8>, Vec<u8>)>,
}

impl Held {
    fn open(resp: &Endpoint, ctl: &Endpoint, tcp: &Endpoint, kept: &Kept, round: usize) -> Held {
        let key = |i: usize| kept.keys().nth((round * 7 + i * 13) % kept.len()).unwrap().clone();
        let half = |ep: &Endpoint, bytes: Vec<u8>, cut: usize| {
            let mut c = ep.open();
            let cut = cut.min(bytes.len() - 1);
            c.write_all(&bytes[..cut]).unwrap();
            (c, bytes[cut..].to_vec(), Vec::new())
        };
        let resp = (0..6)
            .map(|i| {
                let k = key(i);
                let mut req = multibulk(&[b"GET", &k]);
                let cut = req.len() - 1 - i;
                req.extend(multibulk(&[b"QUIT"]));
                let mut h = half(resp, req, cut);
                h.2 = k;
                h
            })
            .collect();
        let ctl = (0..4)
            .map(|i| {
                let k = key(10 + i);
                let mut req = Vec::new();
                encode_frame(&ClientFrame { id: 1, request: hello() }, &mut req);
                let hello_len = req.len();
                encode_frame(&ClientFrame { id: 2, request: Request::Get { key: k.clone() } }, &mut req);
                let mut h = half(ctl, req, hello_len + 2 + i);
                h.2 = k;
                h
            })
            .collect();
        let tcp = (0..4)
            .map(|i| {
                let k = key(20 + i);
                let mut req = multibulk(&[b"AUTH", PASSWORD.as_bytes()]);
                let cut = req.len() - 3 - i;
                req.extend(multibulk(&[b"GET", &k]));
                req.extend(multibulk(&[b"QUIT"]));
                let mut h = half(tcp, req, cut);
                h.2 = k;
                h
            })
            .collect();
        Held { resp, ctl, tcp }
    }

    fn finish(self, kept: &Kept) {
        let bulk = |v: &[u8]| [format!("${}\r\n", v.len()).as_bytes(), v, b"\r\n"].concat();
        for (mut c, rest, k) in self.resp {
            c.write_all(&rest).unwrap();
            let (reply, _) = read_reply(&mut c, &rest);
            assert!(
                reply == [bulk(&kept[&k]), b"+OK\r\n".to_vec()].concat(),
                "held RESP GET: {}",
                reply.escape_ascii()
            );
        }
        for (mut c, rest, k) in self.tcp {
            c.write_all(&rest).unwrap();
            let (reply, _) = read_reply(&mut c, &rest);
            let want = [b"+OK\r\n".to_vec(), bulk(&kept[&k]), b"+OK\r\n".to_vec()].concat();
            assert!(reply == want, "held TCP AUTH and GET: {}", reply.escape_ascii());
        }
        for (mut c, rest, k) in self.ctl {
            c.write_all(&rest).unwrap();
            c.half_close();
            let (reply, clean) = read_reply(&mut c, &rest);
            assert!(clean);
            let frames = server_frames(&reply, true).unwrap();
            assert_eq!(frames.len(), 2, "held chctl GET: {frames:?}");
            assert!(matches!(&frames[0].response, Ok(Response::Hello { .. })), "{frames:?}");
            assert!(matches!(&frames[1].response, Ok(Response::Value(Some(v))) if *v == kept[&k]), "{frames:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sending.

#[derive(Default)]
struct Sent {
    resp: AtomicUsize,
    ctl: AtomicUsize,
    tcp: AtomicUsize,
    /// Replies read, errors among them, and protocol errors (which close the connection).
    replies: AtomicUsize,
    errors: AtomicUsize,
    protocol_errors: AtomicUsize,
}

/// What every fuzzing client shares: the chd it watches, the counts of inputs sent and the
/// last inputs of all clients (the one that stops chd may be another client's).
struct Run {
    pid: u32,
    log: PathBuf,
    seed: u64,
    sent: Sent,
    recent: std::sync::Mutex<std::collections::VecDeque<String>>,
}

impl Run {
    fn sending(&self, ep: &Endpoint, input: &[u8]) {
        let mut recent = self.recent.lock().unwrap();
        if recent.len() == 8 {
            recent.pop_front();
        }
        let to = match ep {
            Endpoint::Unix(p) => p.file_name().unwrap().to_string_lossy().into_owned(),
            Endpoint::Tcp(a) => a.to_string(),
        };
        recent.push_back(format!("{to}: {}", shown(input)));
    }

    /// Fails the test, naming the last inputs and quoting chd's panic, once chd is gone.
    fn check_alive(&self, input: &[u8], when: &str) {
        if alive(self.pid) {
            return;
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let why = match lines.iter().position(|l| l.contains("panicked")) {
            Some(i) => lines[i..(i + 3).min(lines.len())].join("\n"),
            None => lines[lines.len().saturating_sub(10)..].join("\n"),
        };
        let recent = self.recent.lock().unwrap().iter().cloned().collect::<Vec<_>>().join("\n");
        panic!(
            "chd is gone (seed {}), noticed {when} the input {}.\nThe last inputs sent:\n{recent}\nchd's log:\n{why}",
            self.seed,
            shown(input),
        );
    }
}

enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Endpoint {
    fn open(&self) -> Conn {
        self.try_open().unwrap_or_else(|e| panic!("connect to chd: {e}"))
    }

    fn try_open(&self) -> std::io::Result<Conn> {
        let c = match self {
            Endpoint::Unix(p) => Conn::Unix(UnixStream::connect(p)?),
            Endpoint::Tcp(a) => Conn::Tcp(TcpStream::connect(a)?),
        };
        match &c {
            Conn::Unix(s) => {
                s.set_read_timeout(Some(REPLY_LIMIT)).unwrap();
                s.set_write_timeout(Some(REPLY_LIMIT)).unwrap();
            }
            Conn::Tcp(s) => {
                s.set_read_timeout(Some(REPLY_LIMIT)).unwrap();
                s.set_write_timeout(Some(REPLY_LIMIT)).unwrap();
                s.set_nodelay(true).unwrap();
            }
        }
        Ok(c)
    }
}

impl Conn {
    fn half_close(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
        };
    }

    /// Closes a TCP connection with a reset instead of a FIN.
    fn reset(self) {
        if let Conn::Tcp(s) = &self {
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: setsockopt on an open socket with a valid option value and length.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads until chd closes the connection; fails the test if it does neither within
/// [`REPLY_LIMIT`]. Returns what was read and whether the end was a clean close (a reset can
/// lose the last bytes chd wrote, when it closed on input it had not read).
fn read_reply(c: &mut Conn, input: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!(
                    "chd neither answered nor closed the connection within {REPLY_LIMIT:?} of the input {} \
                     (got {})",
                    shown(input),
                    shown(&out)
                )
            }
            Err(_) => return (out, false),
        }
    }
}

/// How an input reaches chd.
#[derive(Clone, Copy)]
enum Delivery {
    /// Sent whole, then the write side is shut and every reply read.
    Whole,
    /// Part or all of it sent, then the connection dropped without reading (reset on TCP).
    Abrupt,
    /// A few bytes at a time, then as `Whole`.
    Drip,
}

/// Sends `input` as `how` says; the replies and whether they ended cleanly, unless abrupt.
fn deliver(ep: &Endpoint, input: &[u8], how: Delivery, rng: &mut Rng, run: &Run) -> Option<(Vec<u8>, bool)> {
    run.sending(ep, input);
    let mut c = match ep.try_open() {
        Ok(c) => c,
        Err(e) => {
            run.check_alive(input, "before sending");
            panic!("connect to chd: {e}")
        }
    };
    match how {
        Delivery::Whole => {
            // chd may close early on an error, before all was sent.
            let _ = c.write_all(input);
        }
        Delivery::Abrupt => {
            let cut = rng.below(input.len() + 1);
            let _ = c.write_all(&input[..cut]);
            if rng.percent(50) {
                c.reset();
            }
            return None;
        }
        Delivery::Drip => {
            let mut rest = input;
            while !rest.is_empty() {
                let n = (1 + rng.below(3)).min(rest.len());
                if c.write_all(&rest[..n]).is_err() {
                    break;
                }
                rest = &rest[n..];
                // Pacing, so that chd reads the request in pieces.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    c.half_close();
    let reply = read_reply(&mut c, input);
    run.check_alive(input, "after sending");
    Some(reply)
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Unix,
    /// TCP without AUTH: every reply is an error, or the +OK of QUIT.
    Tcp,
}

fn fuzz_resp(
    ep: &Endpoint,
    rng: &mut Rng,
    quota: usize,
    deadline: Instant,
    target: Target,
    run: &Run,
    sent: &AtomicUsize,
) {
    let keys: &[&[u8]] = if target == Target::Tcp { TCP_KEYS } else { FUZZ_KEYS };
    let mut n = 0;
    while n < quota && Instant::now() < deadline {
        let r = rng.below(100);
        let (input, count, how) = if r < 12 {
            let count = 2 + rng.below(7);
            // Checked whole too: the end of one input and the start of the next can make what
            // neither is alone.
            // A third of the streams speak RESP3 from the start.
            let resp3 = rng.percent(33);
            let input = loop {
                let mut input = if resp3 { multibulk(&[b"HELLO", b"3"]) } else { Vec::new() };
                input.extend((0..count).flat_map(|_| resp_input(rng, keys)));
                if resp_allowed(&input) {
                    break input;
                }
            };
            (input, count + usize::from(resp3), Delivery::Whole)
        } else {
            let input = resp_input(rng, keys);
            let how = match r {
                12..=15 if input.len() <= 512 => Delivery::Drip,
                12..=29 => Delivery::Abrupt,
                _ => Delivery::Whole,
            };
            (input, 1, how)
        };
        n += count;
        sent.fetch_add(count, Ordering::Relaxed);
        if let Some((reply, clean)) = deliver(ep, &input, how, rng, run) {
            match check_resp_replies(&reply, clean, target) {
                Ok((replies, errors, protocol)) => {
                    run.sent.replies.fetch_add(replies, Ordering::Relaxed);
                    run.sent.errors.fetch_add(errors, Ordering::Relaxed);
                    run.sent.protocol_errors.fetch_add(protocol, Ordering::Relaxed);
                }
                Err(e) => panic!("bad replies to {}: {e}\nreplies: {}", shown(&input), shown(&reply)),
            }
        }
    }
}

fn fuzz_ctl(ep: &Endpoint, rng: &mut Rng, quota: usize, deadline: Instant, run: &Run) {
    let mut n = 0;
    while n < quota && Instant::now() < deadline {
        let r = rng.below(100);
        let (input, count, how) = if r < 10 {
            let count = 2 + rng.below(4);
            // Checked whole too: a frame cut short in one input can take in the next input's
            // bytes, and the frames after it fall differently.
            let input = loop {
                let input: Vec<u8> = (0..count).flat_map(|_| ctl_input(rng)).collect();
                if !ctl_forbidden(&input) {
                    break input;
                }
            };
            (input, count, Delivery::Whole)
        } else {
            let input = ctl_input(rng);
            let how = match r {
                10..=12 if input.len() <= 512 => Delivery::Drip,
                10..=27 => Delivery::Abrupt,
                _ => Delivery::Whole,
            };
            (input, 1, how)
        };
        n += count;
        run.sent.ctl.fetch_add(count, Ordering::Relaxed);
        if let Some((reply, clean)) = deliver(ep, &input, how, rng, run) {
            match server_frames(&reply, clean) {
                Ok(frames) => {
                    run.sent.replies.fetch_add(frames.len(), Ordering::Relaxed);
                    let errors = frames.iter().filter(|f| f.response.is_err()).count();
                    run.sent.errors.fetch_add(errors, Ordering::Relaxed);
                }
                Err(e) => panic!("bad replies to {}: {e}\nreplies: {}", shown(&input), shown(&reply)),
            }
        }
    }
}

/// The replies of chd's socket: whole frames, each a `ServerFrame`.
fn server_frames(mut buf: &[u8], clean: bool) -> Result<Vec<ServerFrame>, String> {
    let mut frames = Vec::new();
    while !buf.is_empty() {
        let Some(prefix) = buf.get(..4) else { return if clean { Err("a cut frame".into()) } else { Ok(frames) } };
        let len = u32::from_be_bytes(prefix.try_into().unwrap()) as usize;
        let Some(body) = buf.get(4..4 + len) else {
            return if clean { Err("a cut frame".into()) } else { Ok(frames) };
        };
        frames.push(decode_body::<ServerFrame>(body).map_err(|e| e.to_string())?);
        buf = &buf[4 + len..];
    }
    Ok(frames)
}

// ---------------------------------------------------------------------------------------------
// Generating.

/// SplitMix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn mix(seed: u64, n: u64) -> u64 {
    Rng(seed ^ n.wrapping_mul(0x2545_f491_4f6c_dd1d)).next()
}

const FUZZ_KEYS: &[&[u8]] = &[b"fz:0", b"fz:1", b"fz:2", b"fz:3", b"fz:num", b"fz:\0\xff\r\n*$", b"fz: spaced", b""];
const TCP_KEYS: &[&[u8]] = &[b"tcp:0", b"tcp:1", b"tcp:2", b"tcp:\0\r\n"];
const VALUES: &[&[u8]] = &[
    b"",
    b"v",
    b"hello world",
    b"0",
    b"-1",
    b"12",
    b"3.5",
    b"nan",
    b"inf",
    b"-inf",
    b"1e308",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"\0\r\n\xff",
    b"*1\r\n$",
];
const NUMBERS: &[&[u8]] = &[
    b"0",
    b"1",
    b"-1",
    b"7",
    b"100",
    b"-100",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"18446744073709551616",
    b"1.5",
    b"abc",
    b"",
];
/// Replacements for a length after `*` or `$`.
const LENGTHS: &[&[u8]] = &[
    b"-1",
    b"-2",
    b"0",
    b"1",
    b"1073741824",
    b"2147483648",
    b"4294967296",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"18446744073709551616",
    b"99999999999999999999999",
    b"+1",
    b" 1",
    b"01",
    b"",
];
const INSERTS: &[&[u8]] = &[
    b"\r",
    b"\n",
    b"\0",
    b"*",
    b"$",
    b"\r\n",
    b"*-1\r\n",
    b"$-1\r\n",
    b"*0\r\n",
    b"$0\r\n",
    b"*1073741824\r\n",
    b"$2147483648\r\n",
    b"$-9223372036854775808\r\n",
    b"*18446744073709551616\r\n",
    b"*1\r\n\r\n",
    b"\"",
    b"'",
    b"\\x",
    b" ",
    b"\r\r\n",
];

fn value(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0 => {
            let n = rng.below(64);
            rng.bytes(n)
        }
        1 => vec![b'x'; 300],
        _ => rng.pick(VALUES).to_vec(),
    }
}

/// A valid request of chd's RESP command table (never SHUTDOWN).
fn resp_request(rng: &mut Rng, keys: &[&[u8]]) -> Vec<Vec<u8>> {
    let k = |rng: &mut Rng| rng.pick(keys).to_vec();
    let n = |rng: &mut Rng| rng.pick(NUMBERS).to_vec();
    let w = |s: &str| s.as_bytes().to_vec();
    let p = |rng: &mut Rng, words: &[&str]| rng.pick(words).as_bytes().to_vec();
    match rng.below(48) {
        0..=3 => vec![w("GET"), k(rng)],
        4..=6 => vec![w("SET"), k(rng), value(rng)],
        7 => vec![w("SET"), k(rng), value(rng), p(rng, &["NX", "XX", "GET", "EX", "KEEPTTL"]), w("GET")],
        8 => vec![w("SETNX"), k(rng), value(rng)],
        9 => vec![w("GETSET"), k(rng), value(rng)],
        10 => vec![w("GETDEL"), k(rng)],
        11 => vec![w("MGET"), k(rng), k(rng), k(rng)],
        12 => vec![w("MSET"), k(rng), value(rng), k(rng), value(rng)],
        13 => vec![w("MSETNX"), k(rng), value(rng), k(rng), value(rng)],
        14 => vec![w("DEL"), k(rng), k(rng)],
        15 => vec![w("UNLINK"), k(rng)],
        16 => vec![w("EXISTS"), k(rng), k(rng)],
        17 => vec![w("STRLEN"), k(rng)],
        18 => vec![w("APPEND"), k(rng), value(rng)],
        19 => vec![w("INCR"), k(rng)],
        20 => vec![w("INCRBY"), k(rng), n(rng)],
        21 => vec![w("DECR"), k(rng)],
        22 => vec![w("DECRBY"), k(rng), n(rng)],
        23 => vec![w("INCRBYFLOAT"), k(rng), value(rng)],
        24 => vec![w("GETRANGE"), k(rng), n(rng), n(rng)],
        25 => vec![w("SETRANGE"), k(rng), p(rng, &["0", "1", "5", "-1", "100"]), value(rng)],
        26 => vec![w("TYPE"), k(rng)],
        27 => vec![p(rng, &["TTL", "PTTL"]), k(rng)],
        28 | 29 => vec![w("PING")],
        30 => vec![w("PING"), value(rng)],
        31 => vec![w("ECHO"), value(rng)],
        32 => vec![w("HELLO"), p(rng, &["2", "3", "4", "x"])],
        33 => vec![w("AUTH"), p(rng, &["wrong", "", "default"])],
        34 => vec![w("AUTH"), w("default"), w("not-the-password")],
        35 => vec![w("HELLO"), w("3"), w("AUTH"), w("default"), w("nope")],
        36 => vec![w("SELECT"), n(rng)],
        37 => vec![w("CLIENT"), p(rng, &["SETNAME", "GETNAME", "ID", "SETINFO"]), value(rng)],
        38 => vec![w("COMMAND"), p(rng, &["COUNT", "DOCS", "LIST"]), w("get")],
        39 => vec![w("CONFIG"), w("GET"), p(rng, &["replicas", "*", "maxmemory"])],
        40 => vec![p(rng, &["TIME", "LASTSAVE", "QUIT"])],
        41 => vec![p(rng, &["MULTI", "LPUSH", "FLUSHALL", "EVAL", "NOSUCH"]), k(rng), value(rng)],
        // INFO and whole-keyspace commands take a second or more in a debug build: rare (and no
        // other template has an argument `INFO` that a mutation could turn into an inline INFO).
        42 if rng.percent(3) => vec![w("SCAN"), n(rng), w("MATCH"), w("fz:*"), w("COUNT"), w("5")],
        43 if rng.percent(3) => vec![w("KEYS"), p(rng, &["fz:[0-2]", "fz:\\*", "nomatch*"])],
        44 if rng.percent(3) => vec![p(rng, &["DBSIZE", "RANDOMKEY", "INFO", "COMMAND"])],
        45 => vec![w("CLIENT"), w("LIST")],
        46 if rng.percent(3) => vec![w("INFO"), p(rng, &["server", "clients", "stats"])],
        _ => vec![w("GET"), k(rng)],
    }
}

fn multibulk(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// An inline command, quoting (with `\xHH` escapes) the arguments that need it.
fn inline(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        if !a.is_empty() && a.iter().all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\'') {
            out.extend_from_slice(a);
        } else {
            out.push(b'"');
            for &b in a {
                if b.is_ascii_graphic() && b != b'"' && b != b'\\' {
                    out.push(b);
                } else {
                    out.extend(format!("\\x{b:02x}").bytes());
                }
            }
            out.push(b'"');
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn encoded(rng: &mut Rng, keys: &[&[u8]]) -> Vec<u8> {
    let args = resp_request(rng, keys);
    if rng.percent(85) {
        multibulk(&args.iter().map(Vec::as_slice).collect::<Vec<_>>())
    } else {
        inline(&args)
    }
}

/// One RESP input: a valid request (about one in ten), a mutated one, or random bytes.
fn resp_input(rng: &mut Rng, keys: &[&[u8]]) -> Vec<u8> {
    loop {
        let input = match rng.below(100) {
            0..=3 => {
                let n = 1 + rng.below(200);
                let mut b = rng.bytes(n);
                if rng.percent(50) {
                    b[0] = b'*';
                }
                b
            }
            4 => {
                // Longer than chd's limit for a line.
                let mut b = if rng.percent(50) { b"*1\r\n$".to_vec() } else { Vec::new() };
                b.extend(std::iter::repeat_n(b'9', (64 << 10) + 1 + rng.below(4096)));
                b
            }
            5..=14 => encoded(rng, keys),
            _ => {
                let mut b = encoded(rng, keys);
                for _ in 0..1 + rng.below(3) {
                    let other = encoded(rng, keys);
                    mutate(rng, &mut b, &other, &[]);
                }
                b
            }
        };
        if resp_allowed(&input) {
            return input;
        }
    }
}

/// What the fuzzing never sends over RESP: anything naming a kept key, and SHUTDOWN.
fn resp_allowed(input: &[u8]) -> bool {
    let lower = input.to_ascii_lowercase();
    !contains(&lower, KEEP) && !contains(&lower, b"shutdown") && !contains(input, PASSWORD.as_bytes())
}

/// Bytes as a quoted string with escapes, for failure messages.
fn shown(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn hello() -> Request {
    Request::Hello { protocol: PROTOCOL_VERSION, client: "wire-fuzz".into() }
}

/// A valid request of chd's protocol that leaves the cluster and the kept keys alone.
fn ctl_request(rng: &mut Rng) -> Request {
    let k = |rng: &mut Rng| rng.pick(FUZZ_KEYS).to_vec();
    match rng.below(16) {
        0..=3 => Request::Get { key: k(rng) },
        4..=5 => Request::Set { key: k(rng), value: value(rng) },
        6 => Request::Del { key: k(rng) },
        7 => Request::Exists { key: k(rng) },
        8 => Request::SetIfAbsent { key: k(rng), value: value(rng) },
        // A scan reads partitions until it has `count` keys: rare, and from near the end.
        9 if rng.percent(5) => Request::Scan {
            cursor: 1000 + rng.below(30) as u32,
            prefix: b"fz:".to_vec(),
            count: 1 + rng.below(3) as u32,
        },
        10 => Request::Ring,
        11 => Request::Progress { id: rng.below(8) as u32 },
        12 => Request::QuarantineList,
        13 => Request::Stats,
        14 if rng.percent(20) => Request::Status,
        // A dry run only; it asks the workers for partition sizes.
        15 if rng.percent(10) => Request::Plan {
            change: match rng.below(3) {
                0 => Change::Add { count: 1 + rng.below(2) as u32 },
                1 => Change::Remove { id: rng.below(6) as u32 },
                _ => Change::Replace { id: rng.below(6) as u32 },
            },
        },
        _ => hello(),
    }
}

/// One input for chd's socket: a hello and a few requests, valid or mutated, or random bytes.
fn ctl_input(rng: &mut Rng) -> Vec<u8> {
    let frames = |rng: &mut Rng| {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        let n = 1 + rng.below(4);
        for i in 0..n {
            let request = if i == 0 && rng.percent(92) { hello() } else { ctl_request(rng) };
            let id = if rng.percent(10) { rng.next() } else { i as u64 + 1 };
            starts.push(out.len());
            encode_frame(&ClientFrame { id, request }, &mut out);
        }
        (out, starts)
    };
    loop {
        let input = match rng.below(100) {
            0..=3 => {
                let n = 1 + rng.below(200);
                rng.bytes(n)
            }
            4..=13 => frames(rng).0,
            _ => {
                let (mut b, starts) = frames(rng);
                for _ in 0..1 + rng.below(3) {
                    let other = frames(rng).0;
                    mutate(rng, &mut b, &other, &starts);
                }
                b
            }
        };
        if !ctl_forbidden(&input) {
            return input;
        }
    }
}

/// Whether chd would run, on a connection fed `input`, a request the fuzzing must not send.
/// Follows chd's reading: frames in order, a hello first, and nothing after the first frame
/// it refuses.
fn ctl_forbidden(input: &[u8]) -> bool {
    let mut rest = input;
    let mut greeted = false;
    while let Some(prefix) = rest.get(..4) {
        let len = u32::from_be_bytes(prefix.try_into().unwrap()) as usize;
        let Some(body) = rest.get(4..4 + len).filter(|_| len <= MAX_FRAME) else { return false };
        rest = &rest[4 + len..];
        let Ok(ClientFrame { request, .. }) = decode_body::<ClientFrame>(body) else { return false };
        if !greeted {
            if !matches!(request, Request::Hello { protocol: PROTOCOL_VERSION, .. }) {
                return false;
            }
            greeted = true;
            continue;
        }
        if request.validate().is_err() {
            return false;
        }
        let forbidden = match &request {
            Request::Get { .. }
            | Request::Exists { .. }
            | Request::Hello { .. }
            | Request::Status
            | Request::Ring
            | Request::Progress { .. }
            | Request::Plan { .. }
            | Request::Scan { .. }
            | Request::QuarantineList
            | Request::Stats => false,
            Request::Set { key, .. } | Request::Del { key } | Request::SetIfAbsent { key, .. } => key.starts_with(KEEP),
            _ => true,
        };
        if forbidden {
            return true;
        }
    }
    false
}

/// Applies one mutation to `b`; `other` is a second request to splice with, `frames` where
/// chctl frames start (their length prefixes).
fn mutate(rng: &mut Rng, b: &mut Vec<u8>, other: &[u8], frames: &[usize]) {
    let at = |rng: &mut Rng, b: &Vec<u8>| rng.below(b.len() + 1);
    match rng.below(11) {
        0 | 1 if !b.is_empty() => {
            let i = rng.below(b.len());
            b[i] ^= 1 << rng.below(8);
        }
        2 => {
            let i = at(rng, b);
            b.truncate(i);
        }
        3 | 4 => {
            let i = at(rng, b);
            let ins = rng.pick(INSERTS);
            b.splice(i..i, ins.iter().copied());
        }
        5 => {
            // A length after `*` or `$` replaced by a huge, negative or malformed one.
            let marks: Vec<usize> = (0..b.len()).filter(|&i| b[i] == b'*' || b[i] == b'$').collect();
            if marks.is_empty() {
                return;
            }
            let i = *rng.pick(&marks) + 1;
            let end = (i..b.len()).find(|&j| !b[j].is_ascii_digit() && b[j] != b'-').unwrap_or(b.len());
            let with = rng.pick(LENGTHS);
            b.splice(i..end, with.iter().copied());
        }
        6 => {
            // The head of this request and the tail of another.
            let cut = at(rng, b);
            let from = rng.below(other.len() + 1);
            b.truncate(cut);
            b.extend_from_slice(&other[from..]);
        }
        7 => {
            let i = at(rng, b);
            let n = 1 + rng.below(16);
            let r = rng.bytes(n);
            b.splice(i..i, r);
        }
        8 if !b.is_empty() => {
            let i = rng.below(b.len());
            let n = rng.below(b.len() - i + 1);
            if rng.percent(50) {
                b.drain(i..i + n);
            } else {
                let chunk = b[i..i + n].to_vec();
                b.splice(i..i, chunk);
            }
        }
        9 if !frames.is_empty() => {
            // A frame's length prefix replaced.
            let s = *rng.pick(frames);
            if s + 4 <= b.len() {
                let len: u32 = match rng.below(6) {
                    0 => 0,
                    1 => u32::MAX,
                    2 => MAX_FRAME as u32,
                    3 => MAX_FRAME as u32 + 1,
                    4 => rng.below(64) as u32,
                    _ => rng.next() as u32,
                };
                b[s..s + 4].copy_from_slice(&len.to_be_bytes());
            }
        }
        _ if !b.is_empty() => {
            let i = rng.below(b.len());
            b[i] = if rng.percent(50) { *rng.pick(b"\r\n\0*$:+-") } else { rng.next() as u8 };
        }
        _ => b.extend_from_slice(other),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading RESP replies.

/// A RESP2 or RESP3 reply, with the detail the checks need.
#[derive(Debug, PartialEq)]
enum V {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<V>>),
    /// Integers, doubles, booleans, nulls, maps, sets and the like.
    Other,
}

/// Sends `input` on a fresh connection, shuts the write side and parses every reply.
fn resp_call(ep: &Endpoint, input: &[u8]) -> Vec<V> {
    let mut c = ep.open();
    c.write_all(input).unwrap();
    c.half_close();
    let (reply, clean) = read_reply(&mut c, input);
    assert!(clean, "connection reset");
    let mut rest = reply.as_slice();
    let mut values = Vec::new();
    while !rest.is_empty() {
        let (v, n) = value_at(rest, 0).unwrap_or_else(|e| panic!("{e}: {}", shown(&reply)));
        values.push(v);
        rest = &rest[n..];
    }
    values
}

/// chd's replies to one connection are whole RESP values; a protocol error is the last reply;
/// before AUTH on TCP, every reply is an error or the +OK of QUIT. Returns how many replies,
/// errors and protocol errors there were.
fn check_resp_replies(mut buf: &[u8], clean: bool, target: Target) -> Result<(usize, usize, usize), String> {
    let mut closed_by: Option<Vec<u8>> = None;
    let (mut replies, mut errors, mut protocol) = (0, 0, 0);
    while !buf.is_empty() {
        let (v, n) = match value_at(buf, 0) {
            Ok(x) => x,
            // A reset can cut the last reply short.
            Err(e) if e == INCOMPLETE && !clean => break,
            Err(e) => return Err(e),
        };
        replies += 1;
        errors += usize::from(matches!(v, V::Error(_)));
        if let Some(e) = &closed_by {
            return Err(format!("a reply after {}", shown(e)));
        }
        match &v {
            V::Error(e) if e.starts_with(b"ERR Protocol error") => {
                protocol += 1;
                closed_by = Some(e.clone());
            }
            V::Error(_) => {}
            V::Simple(s) if target == Target::Tcp && s == b"OK" => closed_by = Some(b"+OK of QUIT".to_vec()),
            other if target == Target::Tcp => return Err(format!("{other:?} before AUTH")),
            _ => {}
        }
        buf = &buf[n..];
    }
    Ok((replies, errors, protocol))
}

const INCOMPLETE: &str = "incomplete reply";

/// The value starting at `buf[0]` and its length in bytes.
fn value_at(buf: &[u8], depth: usize) -> Result<(V, usize), String> {
    if depth > 16 {
        return Err("replies nested too deep".into());
    }
    let end = buf.windows(2).position(|w| w == b"\r\n").ok_or(INCOMPLETE)?;
    let (&kind, line) = buf[..end].split_first().ok_or("an empty reply line")?;
    let mut pos = end + 2;
    let int = || -> Result<i64, String> {
        std::str::from_utf8(line).ok().and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad number in {kind}"))
    };
    let v = match kind {
        b'+' => V::Simple(line.to_vec()),
        b'-' => V::Error(line.to_vec()),
        b':' | b'(' => {
            int()?;
            V::Other
        }
        b'_' | b',' | b'#' => V::Other,
        b'$' | b'!' | b'=' => {
            let len = int()?;
            if len == -1 && kind == b'$' {
                V::Bulk(None)
            } else {
                let len = usize::try_from(len).map_err(|_| format!("bad length {len}"))?;
                let data = buf.get(pos..pos + len).ok_or(INCOMPLETE)?;
                match buf.get(pos + len..pos + len + 2) {
                    None => return Err(INCOMPLETE.into()),
                    Some(b"\r\n") => {}
                    Some(_) => return Err("a bulk string without its \\r\\n".into()),
                }
                pos += len + 2;
                V::Bulk(Some(data.to_vec()))
            }
        }
        b'*' | b'~' | b'>' | b'%' => {
            let n = int()?;
            if n == -1 && kind == b'*' {
                V::Array(None)
            } else {
                let n = usize::try_from(n).map_err(|_| format!("bad count {n}"))?;
                let n = if kind == b'%' { 2 * n } else { n };
                let mut items = Vec::new();
                for _ in 0..n {
                    let (v, len) = value_at(&buf[pos..], depth + 1)?;
                    items.push(v);
                    pos += len;
                }
                V::Array(Some(items))
            }
        }
        other => return Err(format!("unknown reply type {:?}", char::from(other))),
    };
    Ok((v, pos))
}
