//! `chctl bench`: durable writes (and reads) per second through chd, next to the raw
//! fdatasync rate of the disk under chd's data dir, measured in the same run so that the ratio
//! means something on a noisy machine.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use chd_data::proto::{Request, Response};

use chd_client::Client;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Concurrent clients, each on its own connection.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Distinct keys each client cycles through.
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
    fn report(&mut self, name: &str) -> anyhow::Result<f64> {
        self.lat.sort_unstable();
        let pct = |q: f64| self.lat.get(((self.lat.len() as f64 * q) as usize).min(self.lat.len().saturating_sub(1)));
        let us = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e6);
        let rate = self.ops as f64 / self.secs;
        outln!(
            "{name:<18} {rate:>10.0} ops/s   p50 {:>7.0} us   p99 {:>7.0} us   ({} ops)",
            us(pct(0.5)),
            us(pct(0.99)),
            self.ops
        )?;
        Ok(rate)
    }
}

pub fn run(socket: &Path, args: BenchArgs) -> anyhow::Result<()> {
    let mut c = crate::commands::connect(socket)?;
    let Response::Status(status) = c.call(Request::Status)? else { bail!("unexpected answer") };
    let dur = Duration::from_secs_f64(args.seconds);
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
    let fsync = fdatasync_rate(Path::new(&status.data_dir), dur.min(Duration::from_secs(3)))?;
    outln!("{:<18} {fsync:>10.0} ops/s   (4 KiB overwrite + fdatasync, same disk)", "raw fdatasync")?;
    let mut writes = phase(socket, &args, dur, true)?;
    let wrate = writes.report("durable set")?;
    outln!("{:<18} {:>10.2}x raw fdatasync", "set / fdatasync", wrate / fsync)?;
    if !args.writes_only {
        phase(socket, &args, dur, false)?.report("get")?;
    }
    Ok(())
}

fn phase(socket: &Path, args: &BenchArgs, dur: Duration, write: bool) -> anyhow::Result<Phase> {
    let value = vec![b'v'; args.value_size];
    let start = Instant::now();
    let handles: Vec<_> = (0..args.clients)
        .map(|t| {
            let (socket, value, keys) = (socket.to_path_buf(), value.clone(), args.keys);
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let mut c = Client::connect(&socket)?;
                let mut lat = Vec::new();
                let mut i = 0u64;
                while start.elapsed() < dur {
                    let key = format!("bench:{t}:{}", i % keys).into_bytes();
                    let req = if write { Request::Set { key, value: value.clone() } } else { Request::Get { key } };
                    let t0 = Instant::now();
                    c.call(req)?;
                    lat.push(t0.elapsed());
                    i += 1;
                }
                Ok(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.join().map_err(|_| anyhow::anyhow!("bench thread panicked"))??);
    }
    Ok(Phase { ops: lat.len() as u64, secs: start.elapsed().as_secs_f64(), lat })
}

/// Overwrites one preallocated 4 KiB block and fdatasyncs it, as fast as it can, in a scratch
/// file next to chd's data (or in /var/tmp if that is not writable by us).
fn fdatasync_rate(data_dir: &Path, dur: Duration) -> anyhow::Result<f64> {
    let candidates = [data_dir.to_path_buf(), PathBuf::from("/var/tmp"), std::env::temp_dir()];
    let (path, f) = candidates
        .iter()
        .find_map(|d| {
            let p = d.join(format!(".chctl-bench-{}", std::process::id()));
            OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&p).ok().map(|f| (p, f))
        })
        .ok_or_else(|| anyhow::anyhow!("no writable directory for the fdatasync baseline"))?;
    let block = [7u8; 4096];
    (&f).write_all(&block)?;
    f.sync_all()?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        f.write_all_at(&block, 0)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    Ok(rate)
}
