//! The storage bake-off: every engine behind the `Engine` trait, measured in one run, bare and
//! behind the write-ahead log as the worker opens it (`Wal<Box<dyn Engine>>`).
//!
//! `cargo bench -p chd --features fjall,redb --bench engines [-- --records N --seconds S
//! --engines append,sled,fjall,redb --modes bare,wal --dir DIR]`
//!
//! Not Criterion: most of what is measured (resident memory, disk, open after `kill -9`, CPU
//! per put including background threads) is a property of a whole process, not of a closure
//! run many times. Each engine and mode runs in a child process of its own (this executable,
//! re-run with `child`), so memory figures do not mix. The child:
//! 1. opens a new database and loads `records` records (16-byte keys spread over the key
//!    space, 100-byte values) in synced batches of 1000: rate and CPU per put (user + system
//!    of every thread, from `getrusage`);
//! 2. overwrites random loaded keys in synced batches of 1, 16 and 256 for `seconds` each:
//!    puts per second and CPU per put;
//! 3. reads random loaded keys (after a warm-up pass over other random keys): gets per second;
//! 4. scans 1000 entries from random keys: scans per second;
//! 5. reports its resident memory (now and peak) and the engine's `size_on_disk`, then puts
//!    a few records without syncing and kills itself with SIGKILL.
//!
//! A second child reopens the database (the open a worker does after `kill -9`), checks that
//! the last synced write is there, and reports how long the open took and its resident memory.
//! The parent measures the blocks the directory occupies, removes it, and prints one table.
//! Figures are never asserted: they drift with the machine and the minute.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chd_daemon::storage::append::{AppendLog, Shape};
use chd_daemon::storage::sled::SledEngine;
use chd_daemon::storage::wal::Wal;
use chd_daemon::storage::Engine;

const VALUE: usize = 100;
const LOAD_BATCH: usize = 1000;
const SCAN: usize = 1000;

fn engines() -> Vec<&'static str> {
    let mut all = vec!["append", "sled"];
    if cfg!(feature = "fjall") {
        all.push("fjall");
    }
    if cfg!(feature = "redb") {
        all.push("redb");
    }
    all
}

/// The worker's page cache size for sled (`cache_mib`), given to every engine with a cache.
fn cache_bytes() -> u64 {
    chd_daemon::config::DEFAULT_CACHE_MIB << 20
}

fn open_bare(engine: &str, dir: &Path) -> io::Result<Box<dyn Engine>> {
    std::fs::create_dir_all(dir)?;
    Ok(match engine {
        "append" => Box::new(AppendLog::open_shaped(dir, Shape::default())?),
        "sled" => Box::new(SledEngine::open_with_cache(dir, cache_bytes())?),
        #[cfg(feature = "fjall")]
        "fjall" => Box::new(chd_daemon::storage::fjall::FjallEngine::open(&dir.join("fjall"), cache_bytes())?),
        #[cfg(feature = "redb")]
        "redb" => Box::new(chd_daemon::storage::redb::RedbEngine::open(dir, cache_bytes())?),
        other => panic!("unknown engine {other} (features fjall, redb add those two)"),
    })
}

fn open(engine: &str, mode: &str, dir: &Path) -> io::Result<Box<dyn Engine>> {
    let bare = open_bare(engine, dir)?;
    Ok(match mode {
        "bare" => bare,
        "wal" => Box::new(Wal::open(bare, dir)?),
        other => panic!("unknown mode {other}"),
    })
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The key of record `i`: 16 bytes spread evenly over the key space.
fn key(i: u64) -> [u8; 16] {
    let mut k = [0; 16];
    k[..8].copy_from_slice(&mix(i).to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

/// A 100-byte value that does not compress (as user data in general does not).
fn value(i: u64, round: u64, out: &mut [u8; VALUE]) {
    for (n, chunk) in out.chunks_mut(8).enumerate() {
        let x = mix(i ^ (round << 40) ^ ((n as u64) << 56)).to_le_bytes();
        chunk.copy_from_slice(&x[..chunk.len()]);
    }
}

/// Microseconds of CPU (user + system, all threads) this process has used.
fn cpu_us() -> u64 {
    // SAFETY: getrusage writes into the struct it is given and nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// (resident now, peak resident) in MiB, from /proc/self/status.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Bytes allocated to the files under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        total += if meta.is_dir() { disk_bytes(&entry.path()) } else { meta.blocks() * 512 };
    }
    total
}

/// A small deterministic generator for the random picks.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0) % n
    }
}

fn report(out: &mut BTreeMap<&'static str, String>) {
    let line: Vec<String> = out.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RESULT {}", line.join(" "));
    io::stdout().flush().unwrap();
}

fn child_load(engine: &str, mode: &str, dir: &Path, records: u64, seconds: f64) {
    let mut out = BTreeMap::new();
    let mut e = open(engine, mode, dir).expect("open a new database");
    let mut v = [0u8; VALUE];

    let (t, c) = (Instant::now(), cpu_us());
    let mut i = 0;
    while i < records {
        let end = (i + LOAD_BATCH as u64).min(records);
        for n in i..end {
            value(n, 0, &mut v);
            e.put(&key(n), &v).unwrap();
        }
        e.sync().unwrap();
        i = end;
    }
    let wall = t.elapsed().as_secs_f64();
    out.insert("load_per_s", format!("{:.0}", records as f64 / wall));
    out.insert("load_cpu_us", format!("{:.2}", (cpu_us() - c) as f64 / records as f64));
    let (rss, _) = rss_mib();
    out.insert("rss_loaded", format!("{rss:.0}"));

    let mut rng = Rng(7);
    for (round, batch) in [1usize, 16, 256].into_iter().enumerate() {
        let (t, c) = (Instant::now(), cpu_us());
        let mut puts = 0u64;
        while t.elapsed().as_secs_f64() < seconds {
            for _ in 0..batch {
                let n = rng.below(records);
                value(n, round as u64 + 1, &mut v);
                e.put(&key(n), &v).unwrap();
            }
            e.sync().unwrap();
            puts += batch as u64;
        }
        let wall = t.elapsed().as_secs_f64();
        let name: (&'static str, &'static str) = match batch {
            1 => ("put1_per_s", "put1_cpu_us"),
            16 => ("put16_per_s", "put16_cpu_us"),
            _ => ("put256_per_s", "put256_cpu_us"),
        };
        out.insert(name.0, format!("{:.0}", puts as f64 / wall));
        out.insert(name.1, format!("{:.2}", (cpu_us() - c) as f64 / puts as f64));
    }

    let gets = 200_000.min(records * 2);
    for _ in 0..gets / 4 {
        e.get(&key(rng.below(records))).unwrap();
    }
    let t = Instant::now();
    for _ in 0..gets {
        assert!(e.get(&key(rng.below(records))).unwrap().is_some(), "a loaded key is missing");
    }
    out.insert("get_per_s", format!("{:.0}", gets as f64 / t.elapsed().as_secs_f64()));

    let t = Instant::now();
    let mut scans = 0u64;
    while t.elapsed() < Duration::from_secs_f64(seconds.min(2.0)) || scans < 10 {
        let from = key(rng.below(records));
        let got = e.scan(&from, &[0xff; 17], SCAN).unwrap();
        assert!(!got.is_empty());
        scans += 1;
    }
    out.insert("scan_per_s", format!("{:.0}", scans as f64 / t.elapsed().as_secs_f64()));

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    out.insert("loadavg", load.split_whitespace().next().unwrap_or("-").to_string());
    let (rss, peak) = rss_mib();
    out.insert("rss_end", format!("{rss:.0}"));
    out.insert("rss_peak", format!("{peak:.0}"));
    out.insert("size_on_disk", format!("{:.0}", e.size_on_disk() as f64 / 1048576.0));

    // The last synced write, which the reopen checks; then writes no sync covers.
    e.put(b"last-synced", b"yes").unwrap();
    e.sync().unwrap();
    for n in 0..1000 {
        value(n, 99, &mut v);
        e.put(&key(n), &v).unwrap();
    }
    report(&mut out);
    // SAFETY: kill with our own pid; nothing runs after it.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL");
}

fn child_reopen(engine: &str, mode: &str, dir: &Path) {
    let mut out = BTreeMap::new();
    let t = Instant::now();
    let e = open(engine, mode, dir).expect("reopen after kill -9");
    let opened = t.elapsed();
    assert_eq!(e.get(b"last-synced").unwrap().as_deref(), Some(&b"yes"[..]), "the last synced write is lost");
    out.insert("reopen_ms", format!("{:.0}", opened.as_secs_f64() * 1000.0));
    out.insert("rss_reopen", format!("{:.0}", rss_mib().0));
    report(&mut out);
    // Not closed: a clean close may save what makes the next open faster, and that is not
    // the case measured.
    std::process::exit(0);
}

fn run_child(args: &[String]) -> BTreeMap<String, String> {
    let exe = std::env::current_exe().unwrap();
    let output = Command::new(exe).arg("child").args(args).output().expect("spawn child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().find(|l| l.starts_with("RESULT ")) else {
        panic!("child {args:?} reported nothing: {}", String::from_utf8_lossy(&output.stderr));
    };
    line["RESULT ".len()..]
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        let dir = PathBuf::from(&args[3]);
        match args[1].as_str() {
            "load" => child_load(&args[2], &args[4], &dir, args[5].parse().unwrap(), args[6].parse().unwrap()),
            "reopen" => child_reopen(&args[2], &args[4], &dir),
            other => panic!("unknown child {other}"),
        }
        return;
    }
    let mut records: u64 = 1_000_000;
    let mut seconds: f64 = 3.0;
    let mut only: Vec<String> = engines().iter().map(|s| s.to_string()).collect();
    let mut modes: Vec<String> = vec!["bare".into(), "wal".into()];
    let mut base = std::env::temp_dir();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--records" => records = it.next().expect("--records N").parse().expect("a number"),
            "--seconds" => seconds = it.next().expect("--seconds S").parse().expect("a number"),
            "--engines" => only = it.next().expect("--engines LIST").split(',').map(String::from).collect(),
            "--modes" => modes = it.next().expect("--modes LIST").split(',').map(String::from).collect(),
            "--dir" => base = PathBuf::from(it.next().expect("--dir DIR")),
            // cargo bench passes --bench; a filter word means nothing here.
            _ => {}
        }
    }
    let rows = [
        ("load_per_s", "load /s (batches of 1000)"),
        ("load_cpu_us", "load CPU us/put"),
        ("put1_per_s", "durable puts/s, batch 1"),
        ("put16_per_s", "durable puts/s, batch 16"),
        ("put256_per_s", "durable puts/s, batch 256"),
        ("put1_cpu_us", "CPU us/put, batch 1"),
        ("put16_cpu_us", "CPU us/put, batch 16"),
        ("put256_cpu_us", "CPU us/put, batch 256"),
        ("get_per_s", "gets/s (warm, random)"),
        ("scan_per_s", "scans/s (1000 entries)"),
        ("rss_loaded", "RSS MiB after load"),
        ("rss_peak", "peak RSS MiB"),
        ("size_on_disk", "size_on_disk MiB"),
        ("disk", "disk MiB (blocks, after kill -9)"),
        ("reopen_ms", "open after kill -9, ms"),
        ("rss_reopen", "RSS MiB after that open"),
        ("loadavg", "machine load (1 min) at the end"),
    ];
    let mut columns: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for engine in &only {
        for mode in &modes {
            let dir = base.join(format!("chd-engines-{}-{engine}-{mode}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let d = dir.display().to_string();
            eprintln!("engines: {engine} {mode}: {records} records in {d}");
            let mut got = run_child(&[
                "load".into(),
                engine.clone(),
                d.clone(),
                mode.clone(),
                records.to_string(),
                seconds.to_string(),
            ]);
            got.insert("disk".into(), format!("{:.0}", disk_bytes(&dir) as f64 / 1048576.0));
            got.extend(run_child(&["reopen".into(), engine.clone(), d, mode.clone()]));
            std::fs::remove_dir_all(&dir).unwrap();
            eprintln!("engines: {engine} {mode}: {got:?}");
            columns.push((format!("{engine} {mode}"), got));
        }
    }
    println!("\n{records} records of 16-byte keys and {VALUE}-byte values; {seconds} s per durable-batch test\n");
    let mut header = format!("| {:<34} |", "");
    let mut rule = format!("|{}|", "-".repeat(36));
    for (name, _) in &columns {
        header += &format!(" {name:>11} |");
        rule += &format!("{}:|", "-".repeat(12));
    }
    println!("{header}\n{rule}");
    for (k, label) in rows {
        let mut line = format!("| {label:<34} |");
        for (_, got) in &columns {
            line += &format!(" {:>11} |", got.get(k).map_or("-", String::as_str));
        }
        println!("{line}");
    }
}
