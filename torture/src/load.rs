//! The load: client threads over a small shared key space, each operation recorded in the
//! history ([`crate::history`]) with its start and end on the run's monotonic clock.
//!
//! Recording rules (the checker relies on them): a write's value is unique in the run; any
//! error, missed deadline or lost connection is `ok: false` (outcome unknown) and the client
//! reconnects; a read of a missing key is `ok: true, value: null`; a value of
//! [`LARGE_MIN`] bytes or more is recorded, written or read, as the blake3 hex of its bytes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chd_client::{CallError, Client};
use chd_data::proto::{Request, Response};

use crate::history::{self, Kind, Op};
use crate::rng::Rng;

/// Values from this size on are "large" (sled stores them as separate blob files).
pub const LARGE_MIN: usize = 128 * 1024;
pub const LARGE_MAX: usize = 2 * 1024 * 1024;

/// Monotonic seconds since the run started.
#[derive(Clone, Copy, Debug)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    pub fn now(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// How a value is written into the history.
pub fn record_value(bytes: &[u8]) -> String {
    if bytes.len() >= LARGE_MIN {
        blake3::hash(bytes).to_hex().to_string()
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Appends operations to `history.jsonl` and the reasons of failed ones to `errors.jsonl`,
/// from any thread.
pub struct Recorder {
    history: Mutex<BufWriter<File>>,
    errors: Mutex<BufWriter<File>>,
    pub clock: Clock,
}

impl Recorder {
    pub fn create(out: &Path, clock: Clock) -> anyhow::Result<Recorder> {
        Ok(Recorder {
            history: Mutex::new(BufWriter::new(File::create(out.join("history.jsonl"))?)),
            errors: Mutex::new(BufWriter::new(File::create(out.join("errors.jsonl"))?)),
            clock,
        })
    }

    pub fn op(&self, op: &Op, error: Option<&str>) {
        let mut h = self.history.lock().unwrap();
        history::write(&mut *h, op).expect("cannot write the history");
        drop(h);
        if let Some(e) = error {
            let line = serde_json::json!({"key": op.key, "op": op.op, "start": op.start, "end": op.end, "error": e});
            let mut w = self.errors.lock().unwrap();
            let _ = writeln!(w, "{line}");
        }
    }

    pub fn flush(&self) {
        let _ = self.history.lock().unwrap().flush();
        let _ = self.errors.lock().unwrap().flush();
    }
}

/// Settings of the load.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub clients: usize,
    pub keys: usize,
    /// Keys written once before the faults and only read afterwards: they show data lost in
    /// a rebuild or a migration, which overwrites of the hot keys would hide.
    pub cold_keys: usize,
    pub seed: u64,
    /// Share of writes whose value is large.
    pub large_share: f64,
    pub op_timeout: Duration,
}

pub fn key_name(i: usize) -> String {
    format!("k{i}")
}

pub fn cold_key_name(i: usize) -> String {
    format!("cold{i}")
}

/// Writes every cold key once (retrying a few times); returns how many were acknowledged.
pub fn write_cold_keys(cfg: &LoadConfig, socket: &Path, rec: &Recorder) -> usize {
    let mut session = Session::new(socket, "chd-torture setup", cfg.op_timeout);
    (0..cfg.cold_keys)
        .filter(|&i| {
            let key = cold_key_name(i);
            (0..3).any(|_| {
                let value = format!("{key}-v");
                let request = Request::Set { key: key.clone().into_bytes(), value: value.clone().into_bytes() };
                session.run(rec, &key, request, Some(value))
            })
        })
        .count()
}

/// One client's connection, reopened after any failure.
pub struct Session {
    socket: PathBuf,
    name: String,
    timeout: Duration,
    client: Option<Client>,
}

impl Session {
    pub fn new(socket: &Path, name: &str, timeout: Duration) -> Session {
        Session { socket: socket.to_path_buf(), name: name.to_string(), timeout, client: None }
    }

    /// Runs one request and records it; returns whether it succeeded.
    pub fn run(&mut self, rec: &Recorder, key: &str, request: Request, written: Option<String>) -> bool {
        let kind = match &request {
            Request::Set { .. } => Kind::Write,
            Request::Del { .. } => Kind::Delete,
            _ => Kind::Read,
        };
        let start = rec.clock.now();
        let result = match self.connected() {
            Ok(c) => c.call(request).map_err(|e| {
                let text = format!("{e:#}");
                if matches!(e, CallError::Io(_)) {
                    self.client = None;
                }
                text
            }),
            Err(e) => Err(format!("{e:#}")),
        };
        let end = rec.clock.now();
        let mut op = Op { key: key.to_string(), op: kind, value: written, start, end: Some(end), ok: false };
        let error = match (kind, result) {
            (Kind::Read, Ok(Response::Value(v))) => {
                op.value = v.as_deref().map(record_value);
                op.ok = true;
                None
            }
            (Kind::Write | Kind::Delete, Ok(Response::Done)) => {
                op.ok = true;
                None
            }
            (_, Ok(other)) => {
                self.client = None;
                Some(format!("unexpected answer {other:?}"))
            }
            (_, Err(e)) => Some(e),
        };
        rec.op(&op, error.as_deref());
        op.ok
    }

    fn connected(&mut self) -> anyhow::Result<&mut Client> {
        if self.client.is_none() {
            self.client = Some(Client::connect_with(&self.socket, &self.name, Some(self.timeout))?);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }
}

/// Runs one client until `stop`: a seeded mix of about 45% set, 35% get, 15% del of the hot
/// keys and 5% get of the cold keys.
pub fn client_loop(n: usize, cfg: &LoadConfig, socket: &Path, rec: &Recorder, stop: &AtomicBool) {
    let mut rng = Rng::derive(cfg.seed, 1000 + n as u64);
    let mut session = Session::new(socket, &format!("chd-torture c{n}"), cfg.op_timeout);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = key_name(rng.below(cfg.keys as u64) as usize);
        let roll = rng.unit();
        let ok = if cfg.cold_keys > 0 && roll < 0.05 {
            let key = cold_key_name(rng.below(cfg.cold_keys as u64) as usize);
            session.run(rec, &key, Request::Get { key: key.clone().into_bytes() }, None)
        } else if roll < 0.5 {
            i += 1;
            let tag = format!("c{n}-i{i}");
            let (value, recorded) = if rng.unit() < cfg.large_share {
                let len = rng.range(LARGE_MIN as u64, LARGE_MAX as u64) as usize;
                let mut v = vec![0u8; len];
                rng.fill(&mut v);
                // The tag in front keeps the value unique even if the generator repeats.
                v[..tag.len()].copy_from_slice(tag.as_bytes());
                let r = record_value(&v);
                (v, r)
            } else {
                (tag.clone().into_bytes(), tag)
            };
            session.run(rec, &key, Request::Set { key: key.clone().into_bytes(), value }, Some(recorded))
        } else if roll < 0.85 {
            session.run(rec, &key, Request::Get { key: key.clone().into_bytes() }, None)
        } else {
            session.run(rec, &key, Request::Del { key: key.clone().into_bytes() }, None)
        };
        if !ok {
            // Do not spin against a chd that is down.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The running load; [`Load::finish`] stops and joins it.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(cfg: &LoadConfig, socket: &Path, rec: &Arc<Recorder>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..cfg.clients)
            .map(|n| {
                let (cfg, socket, rec, stop) = (cfg.clone(), socket.to_path_buf(), rec.clone(), stop.clone());
                std::thread::spawn(move || client_loop(n, &cfg, &socket, &rec, &stop))
            })
            .collect();
        Load { stop, threads }
    }

    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
