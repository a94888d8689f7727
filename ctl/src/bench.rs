//! `chctl bench`: durable writes (and reads) per second through chd, next to the raw
//! fdatasync rate of the disk under chd's data dir, measured in the same run so that the ratio
//! means something on a noisy machine.
//!
//! Bench writes only keys under its own prefix, `chctl-bench:<pid>:`, and deletes every key it
//! wrote before it ends, also when interrupted with Ctrl-C (SIGINT stops the phases early, then
//! the clean-up runs, then chctl exits 130). Arguments that cannot make a measurement (no time,
//! no clients, more clients than chd accepts connections) are refused before connecting.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::bail;
use chd_data::proto::{Request, Response};

use crate::exit;
use chd_client::Client;

/// chd's limit of connections on its socket (daemon/src/server/mod.rs `MAX_CONNECTIONS`).
const MAX_CLIENTS: usize = 1024;

/// Set by SIGINT: the phases stop early so that the clean-up still runs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Why these arguments cannot make a measurement, if they cannot.
fn check(args: &BenchArgs) -> Result<(), String> {
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        return Err(format!("--seconds must be more than 0, not {}", args.seconds));
    }
    if args.clients == 0 || args.clients > MAX_CLIENTS {
        return Err(format!(
            "--clients must be 1 to {MAX_CLIENTS} (chd accepts at most {MAX_CLIENTS} connections), not {}",
            args.clients
        ));
    }
    if args.keys == 0 {
        return Err("--keys must be at least 1".into());
    }
    Ok(())
}

/// The key a bench client writes: under this process's own prefix, never a user's key.
fn key(prefix: &str, client: usize, i: u64) -> Vec<u8> {
    format!("{prefix}{client}:{i}").into_bytes()
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Concurrent clients, each on its own connection (1 to 1024, chd's connection limit).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Seconds per phase (more than 0).
    #[arg(long, default_value_t = 5.0, allow_negative_numbers = true)]
    seconds: f64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Distinct keys each client cycles through (at least 1).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Skip the read phase.
    #[arg(long)]
    writes_only: bool,
}

struct Phase {
    ops: u64,
    secs: f64,
    lat: Vec<Duration>,
}

impl Phase {
    fn report(&mut self, name: &str, json: &mut Option<serde_json::Value>) -> anyhow::Result<f64> {
        self.lat.sort_unstable();
        let pct = |q: f64| self.lat.get(((self.lat.len() as f64 * q) as usize).min(self.lat.len().saturating_sub(1)));
        let us = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e6);
        let rate = self.ops as f64 / self.secs;
        if let Some(j) = json {
            j[name] = serde_json::json!({
                "ops_per_s": rate, "p50_us": us(pct(0.5)), "p99_us": us(pct(0.99)), "ops": self.ops,
            });
            return Ok(rate);
        }
        outln!(
            "{name:<18} {rate:>10.0} ops/s   p50 {:>7.0} us   p99 {:>7.0} us   ({} ops)",
            us(pct(0.5)),
            us(pct(0.99)),
            self.ops
        )?;
        Ok(rate)
    }
}

/// Runs the benchmark; with `json`, prints one object at the end instead of lines as it goes.
pub fn run(socket: &Path, args: BenchArgs, json: bool) -> anyhow::Result<()> {
    check(&args).map_err(|why| exit::fail(exit::USAGE, why))?;
    let mut c = crate::connect::connect(socket)?;
    let Response::Status(status) = c.call(Request::Status)? else { bail!("unexpected answer") };
    // Every connection for the clients: chd counts this one too.
    drop(c);
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let prefix = format!("chctl-bench:{}:", std::process::id());
    let dur = Duration::from_secs_f64(args.seconds);
    let mut report = json.then(|| {
        serde_json::json!({
            "version": status.version, "nodes": status.nodes.len(), "replicas": status.replicas,
            "write_quorum": status.write_quorum, "clients": args.clients, "value_size": args.value_size,
            "seconds": args.seconds,
        })
    });
    if !json {
        outln!(
            "chd {} with {} nodes, R={} W={}; {} client(s), {}-byte values, {:.1}s per phase",
            status.version,
            status.nodes.len(),
            status.replicas,
            status.write_quorum,
            args.clients,
            args.value_size,
            args.seconds
        )?;
    }
    let fsync = fdatasync_rate(Path::new(&status.data_dir), dur.min(Duration::from_secs(3)))?;
    let (r, w) = (status.replicas as usize, status.write_quorum as usize);
    let floor = quorum_fdatasync_rate(Path::new(&status.data_dir), r, w, dur.min(Duration::from_secs(3)))?;
    match &mut report {
        Some(j) => {
            j["fdatasync_per_s"] = fsync.into();
            j["quorum_fdatasync_per_s"] = floor.into();
        }
        None => {
            outln!("{:<18} {fsync:>10.0} ops/s   (4 KiB overwrite + fdatasync, same disk)", "raw fdatasync")?;
            outln!(
                "{:<18} {floor:>10.0} ops/s   ({r} files fdatasynced at once, until {w} are done: one client's floor)",
                format!("{w} of {r} fdatasync")
            )?;
        }
    }
    // How many distinct keys each client wrote: what the clean-up deletes, whatever happens.
    let mut written = vec![0u64; args.clients];
    let measured = measure(socket, &args, &prefix, dur, (fsync, floor), &mut written, &mut report);
    let cleaned = clean_up(socket, &prefix, &written);
    measured?;
    let deleted = cleaned?;
    if interrupted() {
        return Err(exit::fail(130, format!("interrupted; deleted the {deleted} keys bench wrote")));
    }
    if let Some(r) = report {
        outln!("{r}")?;
    }
    Ok(())
}

fn measure(
    socket: &Path,
    args: &BenchArgs,
    prefix: &str,
    dur: Duration,
    (fsync, floor): (f64, f64),
    written: &mut [u64],
    json: &mut Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let mut writes = phase(socket, args, prefix, dur, true, written)?;
    let wrate = writes.report("durable set", json)?;
    match json {
        Some(j) => {
            j["set_per_fdatasync"] = (wrate / fsync).into();
            j["set_per_quorum_fdatasync"] = (wrate / floor).into();
        }
        None => {
            outln!("{:<18} {:>10.2}x raw fdatasync", "set / fdatasync", wrate / fsync)?;
            outln!("{:<18} {:>10.2}x the floor above", "set / floor", wrate / floor)?;
        }
    }
    if !args.writes_only && !interrupted() {
        phase(socket, args, prefix, dur, false, written)?.report("get", json)?;
    }
    Ok(())
}

/// Deletes every key bench wrote, pipelined; returns how many.
fn clean_up(socket: &Path, prefix: &str, written: &[u64]) -> anyhow::Result<u64> {
    if written.iter().all(|&n| n == 0) {
        return Ok(0);
    }
    let mut c = crate::connect::connect(socket)?;
    let keys = written.iter().enumerate().flat_map(|(t, &n)| (0..n).map(move |i| key(prefix, t, i)));
    let mut deleted = 0u64;
    let mut in_flight = 0;
    for k in keys {
        c.send(Request::Del { key: k })?;
        in_flight += 1;
        if in_flight == 128 {
            deleted += drain(&mut c, in_flight)?;
            in_flight = 0;
        }
    }
    deleted += drain(&mut c, in_flight)?;
    Ok(deleted)
}

fn drain(c: &mut Client, n: u64) -> anyhow::Result<u64> {
    c.flush()?;
    for _ in 0..n {
        if let Err(e) = c.receive()?.response {
            bail!("cannot delete bench's keys: {e}");
        }
    }
    Ok(n)
}

fn phase(
    socket: &Path,
    args: &BenchArgs,
    prefix: &str,
    dur: Duration,
    write: bool,
    written: &mut [u64],
) -> anyhow::Result<Phase> {
    let value = vec![b'v'; args.value_size];
    let start = Instant::now();
    let handles: Vec<_> = (0..args.clients)
        .map(|t| {
            let (socket, value, keys, prefix) = (socket.to_path_buf(), value.clone(), args.keys, prefix.to_string());
            let reads = written[t];
            std::thread::spawn(move || -> (Vec<Duration>, u64, Option<anyhow::Error>) {
                let mut lat = Vec::new();
                let mut max = 0;
                let mut c = match crate::connect::connect(&socket) {
                    Ok(c) => c,
                    Err(e) => return (lat, max, Some(e)),
                };
                let mut i = 0u64;
                while start.elapsed() < dur && !interrupted() {
                    // Reads cycle through the keys this client wrote, if it wrote fewer.
                    let n = if write { i % keys } else { i % reads.clamp(1, keys) };
                    let key = key(&prefix, t, n);
                    let req = if write { Request::Set { key, value: value.clone() } } else { Request::Get { key } };
                    let t0 = Instant::now();
                    // Counted before the call: a set that fails may still have been stored.
                    if write {
                        max = max.max(n + 1);
                    }
                    if let Err(e) = c.call(req) {
                        return (lat, max, Some(e.into()));
                    }
                    lat.push(t0.elapsed());
                    i += 1;
                }
                (lat, max, None)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut failed = None;
    for (t, h) in handles.into_iter().enumerate() {
        let (l, max, err) = h.join().map_err(|_| anyhow::anyhow!("bench thread panicked"))?;
        lat.extend(l);
        written[t] = written[t].max(max);
        failed = failed.or(err);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(Phase { ops: lat.len() as u64, secs: start.elapsed().as_secs_f64(), lat })
}

/// What the fdatasync baselines write: one 4 KiB block, over and over.
const BLOCK: [u8; 4096] = [7; 4096];

/// Scratch files of the baselines, removed when dropped (also on an error or Ctrl-C).
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `n` scratch files, each holding one synced block, next to chd's data (or in /var/tmp or
/// the temp dir if that is not writable by us): the baselines measure the disk chd uses.
fn scratch_files(data_dir: &Path, n: usize) -> anyhow::Result<(Scratch, Vec<std::fs::File>)> {
    for dir in [data_dir.to_path_buf(), PathBuf::from("/var/tmp"), std::env::temp_dir()] {
        let mut scratch = Scratch(Vec::new());
        let files: std::io::Result<Vec<_>> = (0..n)
            .map(|i| {
                let path = dir.join(format!(".chctl-bench-{}-{i}", std::process::id()));
                let f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
                scratch.0.push(path);
                (&f).write_all(&BLOCK)?;
                f.sync_all()?;
                Ok(f)
            })
            .collect();
        if let Ok(files) = files {
            return Ok((scratch, files));
        }
    }
    bail!("no writable directory for the fdatasync baselines")
}

/// Overwrites one preallocated 4 KiB block and fdatasyncs it, as fast as it can.
fn fdatasync_rate(data_dir: &Path, dur: Duration) -> anyhow::Result<f64> {
    let (_scratch, files) = scratch_files(data_dir, 1)?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur && !interrupted() {
        files[0].write_all_at(&BLOCK, 0)?;
        files[0].sync_data()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The rounds of [`quorum_fdatasync_rate`], shared by its threads.
struct Rounds {
    started: u64,
    /// The last round each thread finished.
    done: Vec<u64>,
    stop: bool,
    failed: Option<std::io::Error>,
}

/// The floor of one client's durable write on this disk: `replicas` threads, each with its own
/// preallocated file, each writing a 4 KiB block and fdatasyncing it when a round starts, and a
/// round ends once `quorum` of them are done (a thread still busy with an earlier round takes
/// the next one late, as a worker with a backlog would). Returns rounds per second. chd's
/// workers issue their fdatasyncs at once like this, and a disk that serves concurrent flushes
/// one after another makes W of R of them slower than one. A failed write or fdatasync ends
/// the measurement with its error.
fn quorum_fdatasync_rate(data_dir: &Path, replicas: usize, quorum: usize, dur: Duration) -> anyhow::Result<f64> {
    use std::sync::{Condvar, Mutex};
    let (_scratch, files) = scratch_files(data_dir, replicas)?;
    let state = Mutex::new(Rounds { started: 0, done: vec![0; replicas], stop: false, failed: None });
    let cv = Condvar::new();
    let rate = std::thread::scope(|scope| {
        for (i, f) in files.iter().enumerate() {
            let (state, cv) = (&state, &cv);
            scope.spawn(move || {
                let mut done = 0;
                loop {
                    let round = {
                        let s = cv.wait_while(state.lock().expect("no panics"), |s| s.started == done && !s.stop);
                        let s = s.expect("no panics");
                        if s.stop {
                            return;
                        }
                        s.started
                    };
                    let wrote = f.write_all_at(&BLOCK, 0).and_then(|()| f.sync_data());
                    let mut s = state.lock().expect("no panics");
                    match wrote {
                        Ok(()) => s.done[i] = round,
                        Err(e) => {
                            s.failed.get_or_insert(e);
                            s.stop = true;
                        }
                    }
                    done = round;
                    cv.notify_all();
                }
            });
        }
        let start = Instant::now();
        let mut rounds = 0u64;
        while start.elapsed() < dur && !interrupted() {
            let mut s = state.lock().expect("no panics");
            s.started += 1;
            let round = s.started;
            cv.notify_all();
            let finished = |s: &mut Rounds| s.stop || s.done.iter().filter(|&&d| d >= round).count() >= quorum;
            let s = cv.wait_while(s, |s| !finished(s)).expect("no panics");
            if s.stop {
                break;
            }
            rounds += 1;
        }
        let rate = rounds as f64 / start.elapsed().as_secs_f64();
        state.lock().expect("no panics").stop = true;
        cv.notify_all();
        rate
    });
    match state.into_inner().expect("no panics").failed {
        Some(e) => Err(anyhow::Error::new(e).context("the W-of-R fdatasync baseline")),
        None => Ok(rate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(clients: usize, seconds: f64, keys: u64) -> BenchArgs {
        BenchArgs { clients, seconds, value_size: 100, keys, writes_only: false }
    }

    /// The floor's threads all stop when it returns, its files are gone, and it counted
    /// rounds: it cannot hang a bench, nor leave files in chd's data dir.
    #[test]
    fn the_quorum_floor_stops_its_threads_and_removes_its_files() {
        let dir = tempfile::tempdir().unwrap();
        for (r, w) in [(3, 2), (1, 1), (3, 3)] {
            let rate = quorum_fdatasync_rate(dir.path(), r, w, Duration::from_millis(200)).unwrap();
            assert!(rate > 0.0, "R={r} W={w}: no round completed");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "R={r} W={w}: files left behind");
        }
        assert!(fdatasync_rate(dir.path(), Duration::from_millis(100)).unwrap() > 0.0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the raw baseline left its file behind");
    }

    #[test]
    fn impossible_arguments_are_refused() {
        assert!(check(&args(1, 5.0, 10)).is_ok());
        assert!(check(&args(MAX_CLIENTS, 0.1, 1)).is_ok());
        assert!(check(&args(1, 0.0, 10)).unwrap_err().contains("--seconds"));
        assert!(check(&args(1, -1.0, 10)).unwrap_err().contains("--seconds"));
        assert!(check(&args(1, f64::NAN, 10)).unwrap_err().contains("--seconds"));
        assert!(check(&args(0, 1.0, 10)).unwrap_err().contains("--clients"));
        assert!(check(&args(2000, 1.0, 10)).unwrap_err().contains("at most 1024 connections"));
        assert!(check(&args(1, 1.0, 0)).unwrap_err().contains("--keys"));
    }

    #[test]
    fn bench_keys_are_under_a_prefix_of_their_own() {
        assert_eq!(key("chctl-bench:7:", 2, 3), b"chctl-bench:7:2:3");
    }
}
