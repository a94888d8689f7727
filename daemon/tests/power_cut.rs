//! Power cuts (issue 10): every acknowledged write survives losing everything not fsynced.
//!
//! chd runs with its data dir on chd-lazyfs, a FUSE filesystem that on a cut kills every
//! process using it and forgets every write and directory change not yet fsynced, as a machine
//! losing power would. Each round loads chd from several clients with values from 10 B up to
//! [`max_value`] and cuts the power at a random moment of one part of the write path:
//!
//! - `commit`: plain concurrent writes, cut inside group commit;
//! - `catch-up`: a worker is SIGKILLed, cut while it restarts and catches up;
//! - `rebuild`: a node's directory is deleted (chd stopped), chd restarts and rebuilds the
//!   node from its replicas, cut during the rebuild;
//! - `migration`: `node add` (or `node remove` once the cluster has grown), cut while
//!   partitions are copied;
//! - `cluster.json`: the same request, cut within milliseconds, while `cluster.json` changes
//!   (ids reserved, node born, transition begun);
//! - `first start`: chd creates a new data dir itself, cut while it starts its nodes.
//!
//! After each cut chd starts again on the same mount, and the round checks that every node comes
//! up, that every key reads back its last acknowledged write or a later one, and that
//! `quarantine/` is empty. Writes whose outcome is unknown (in flight at the cut) may or may
//! not survive. Each key has one writer, so "later" is the writer's order.
//!
//! Every operation is recorded in the torture history format (`chd_torture::history`) in
//! `$CARGO_TARGET_TMPDIR/power_cut_history.jsonl`, and the whole history must pass the torture
//! suite's linearizability checker. Failures print the seed and chd's log.
//! Needs root (FUSE); skips with a message otherwise. `CHD_POWER_CUTS`, `CHD_POWER_CUT_SEED`
//! and `CHD_POWER_CUT_MAX_VALUE` override the number of cuts, the seed and the largest value;
//! `CHD_POWER_CUT_ENGINE` the storage engine of the nodes (`append`, the default, or `sled`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chd_client::{CallError, Client};
use chd_data::proto::{NodeState, Request, Response, StatusReport};
use chd_lazyfs::LazyFs;
use chd_torture::history::{Kind, Op};

const CHD: &str = env!("CARGO_BIN_EXE_chd");
/// No single request should take this long; a hung chd fails the test instead of hanging it.
const OP_DEADLINE: Duration = Duration::from_secs(60);

fn connect(socket: &Path) -> anyhow::Result<Client> {
    Client::connect_with(socket, "power_cut test", Some(OP_DEADLINE))
}

/// Cuts per run: enough to land in every part of the write path several times, few enough for
/// about three minutes on two cores.
const CUTS: usize = 54;
const WRITERS: usize = 3;
const KEYS_PER_WRITER: usize = 6;
const UP_LIMIT: Duration = Duration::from_secs(90);

/// The largest value written: far above sled's 128 KiB blob threshold, so a few percent of the
/// writes go to sled's blob files. (Workers answer pings from their reader thread, so even a
/// debug build is not killed as hung while it writes 4 MiB values.)
fn max_value() -> usize {
    env_usize("CHD_POWER_CUT_MAX_VALUE").unwrap_or(4 << 20)
}

/// What a writer thread saw.
#[derive(Default, Clone, Copy)]
struct Counts {
    acked: usize,
    unknown: usize,
    /// Acknowledged values over 1 MiB, and the largest acknowledged value.
    acked_over_1m: usize,
    largest_acked: usize,
}

impl Counts {
    fn add(self, o: Counts) -> Counts {
        Counts {
            acked: self.acked + o.acked,
            unknown: self.unknown + o.unknown,
            acked_over_1m: self.acked_over_1m + o.acked_over_1m,
            largest_acked: self.largest_acked.max(o.largest_acked),
        }
    }
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The nodes' storage engine, as chd's `--engine` takes it.
fn engine() -> String {
    std::env::var("CHD_POWER_CUT_ENGINE").unwrap_or_else(|_| "append".into())
}

/// xorshift64*: the test needs reproducible choices, not good randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.between(lo, hi))
    }
    /// Mostly small values, some just above sled's blob threshold, a few of the largest size.
    fn value_size(&mut self, max: usize) -> usize {
        let size = match self.below(100) {
            0..50 => self.between(10, 1000),
            50..80 => self.between(1000, 100_000),
            80..95 => self.between(100_000, 300_000),
            _ => self.between(300_000, max as u64),
        };
        (size as usize).min(max)
    }
}

fn value(key: &str, seq: usize, size: usize) -> Vec<u8> {
    let head = format!("{key}#{seq}#");
    let mut v: Vec<u8> = head.bytes().cycle().take(size.min(head.len())).collect();
    v.extend((v.len()..size).map(|i| (i as u64).wrapping_mul(2_654_435_761).wrapping_add(seq as u64) as u8));
    v
}

fn hash(v: &[u8]) -> String {
    blake3::hash(v).to_hex().to_string()
}

/// One write of a key, in its writer's order.
struct Write {
    hash: String,
    size: usize,
}

/// What a key may read back: any write at or after `floor`, its last acknowledged (or last
/// seen) write; anything, including nothing, while it has none.
#[derive(Default)]
struct KeyModel {
    writes: Vec<Write>,
    floor: Option<usize>,
}

/// The history of the whole run, shared by every thread.
struct History {
    t0: Instant,
    ops: Mutex<Vec<Op>>,
}

impl History {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
    fn push(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }
}

/// One chd data dir on the mount, and what was acknowledged in it.
struct Cluster {
    name: String,
    data: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    keys: Arc<Vec<Mutex<KeyModel>>>,
}

impl Cluster {
    fn new(name: &str, mount: &Path, outside: &Path) -> Cluster {
        Cluster {
            name: name.into(),
            data: mount.join(name),
            socket: outside.join(format!("{name}.sock")),
            log: outside.join(format!("{name}.log")),
            child: None,
            keys: Arc::new((0..WRITERS * KEYS_PER_WRITER).map(|_| Mutex::default()).collect()),
        }
    }

    fn key(&self, i: usize) -> String {
        format!("{}-{i}", self.name)
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(CHD)
            .args(["--config", "/dev/null", "--data-dir"])
            .arg(&self.data)
            .arg("--socket")
            .arg(&self.socket)
            // Small log segments and frequent index rebuilds, so that cuts also land in
            // compaction (copies, unlinks) and after rebuilds: with 18 keys the production
            // sizes would never compact.
            .args(["--log-segment-bytes", "65536", "--index-rebuild-min", "8"])
            .args(["--engine", &engine()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Reaps chd after a cut killed it.
    fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn status(&self) -> Option<StatusReport> {
        match connect(&self.socket).ok()?.call(Request::Status) {
            Ok(Response::Status(s)) => Some(s),
            _ => None,
        }
    }

    fn wait_all_up(&self) -> Result<StatusReport, String> {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < UP_LIMIT {
            if let Some(s) = self.status() {
                if s.nodes.iter().all(|n| n.state == NodeState::Up) {
                    return Ok(s);
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let nodes =
            last.map(|s| s.nodes.iter().map(|n| format!("{}: {:?} {:?}", n.id, n.state, n.note)).collect::<Vec<_>>());
        Err(format!("{}: not every node up after {UP_LIMIT:?}: {:?}", self.name, nodes.unwrap_or_default()))
    }

    /// The checks after a cut: every node up, every acknowledged write readable, nothing set
    /// aside. Returns the findings.
    fn check(&self, history: &History, when: &str) -> Vec<String> {
        let mut findings = Vec::new();
        if let Err(e) = self.wait_all_up() {
            findings.push(format!("{when}: {e}"));
        }
        let quarantine = self.data.join("quarantine");
        if let Ok(dir) = std::fs::read_dir(&quarantine) {
            let names: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
            if !names.is_empty() {
                findings.push(format!("{when}: {} quarantined: {names:?}", self.name));
            }
        }
        let mut client = match connect(&self.socket) {
            Ok(c) => c,
            Err(e) => {
                findings.push(format!("{when}: cannot connect to {}: {e}", self.name));
                return findings;
            }
        };
        for (i, model) in self.keys.iter().enumerate() {
            let key = self.key(i);
            let mut model = model.lock().unwrap();
            let start = history.now();
            let got = match client.call(Request::Get { key: key.clone().into_bytes() }) {
                Ok(Response::Value(v)) => v.map(|v| hash(&v)),
                other => {
                    findings.push(format!("{when}: get {key} failed: {other:?}"));
                    continue;
                }
            };
            history.push(Op {
                key: key.clone(),
                op: Kind::Read,
                value: got.clone(),
                start,
                end: Some(history.now()),
                ok: true,
            });
            let floor = model.floor.unwrap_or(0);
            let found = got.as_ref().and_then(|h| (floor..model.writes.len()).find(|&j| &model.writes[j].hash == h));
            match (found, model.floor) {
                (Some(j), _) => model.floor = Some(j),
                (None, None) if got.is_none() => {}
                (None, Some(f)) => findings.push(format!(
                    "{when}: {key}: acknowledged write #{f} ({} B) lost: reads {}",
                    model.writes[f].size,
                    match &got {
                        None => "nothing".to_string(),
                        Some(h) => match model.writes.iter().position(|w| &w.hash == h) {
                            Some(old) => format!("older write #{old}"),
                            None => "a value never written".into(),
                        },
                    }
                )),
                (None, None) => findings.push(format!("{when}: {key}: reads a value never written")),
            }
        }
        findings
    }
}

/// Writers, one per slice of the keys, each writing its keys in turn until stopped or until
/// chd goes away.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Counts>>,
}

impl Load {
    fn start(cluster: &Cluster, history: &Arc<History>, seed: u64, retry_connect: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let max = max_value();
        let threads = (0..WRITERS)
            .map(|t| {
                let (stop, history, keys, socket) =
                    (stop.clone(), history.clone(), cluster.keys.clone(), cluster.socket.clone());
                let names: Vec<String> = (0..KEYS_PER_WRITER).map(|i| cluster.key(t * KEYS_PER_WRITER + i)).collect();
                let mut rng = Rng(seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
                std::thread::spawn(move || {
                    let mut n = Counts::default();
                    let mut client = None;
                    while !stop.load(Ordering::SeqCst) {
                        let Some(c) = client.as_mut() else {
                            client = connect(&socket).ok();
                            if client.is_none() {
                                if !retry_connect {
                                    break;
                                }
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            continue;
                        };
                        let i = rng.below(KEYS_PER_WRITER as u64) as usize;
                        let (key, size) = (&names[i], rng.value_size(max));
                        let model = &keys[t * KEYS_PER_WRITER + i];
                        let seq = model.lock().unwrap().writes.len();
                        let v = value(key, seq, size);
                        let h = hash(&v);
                        model.lock().unwrap().writes.push(Write { hash: h.clone(), size });
                        let start = history.now();
                        let r = c.call(Request::Set { key: key.clone().into_bytes(), value: v });
                        let ok = matches!(r, Ok(Response::Done));
                        history.push(Op {
                            key: key.clone(),
                            op: Kind::Write,
                            value: Some(h),
                            start,
                            end: ok.then(|| history.now()),
                            ok,
                        });
                        if ok {
                            model.lock().unwrap().floor = Some(seq);
                            n.acked += 1;
                            n.acked_over_1m += usize::from(size > 1 << 20);
                            n.largest_acked = n.largest_acked.max(size);
                        } else {
                            n.unknown += 1;
                        }
                        if matches!(r, Err(CallError::Io(_))) {
                            // The connection is gone (the cut); the outcome stays unknown.
                            client = None;
                            if !retry_connect {
                                break;
                            }
                        }
                    }
                    n
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn finish(self) -> Counts {
        self.stop.store(true, Ordering::SeqCst);
        self.threads.into_iter().map(|t| t.join().unwrap()).fold(Counts::default(), Counts::add)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    Commit,
    CatchUp,
    Rebuild,
    Migration,
    ClusterJson,
    FirstStart,
}

const SCENARIOS: [Scenario; 6] = [
    Scenario::Commit,
    Scenario::CatchUp,
    Scenario::FirstStart,
    Scenario::Migration,
    Scenario::Rebuild,
    Scenario::ClusterJson,
];

/// Sends a membership change from its own thread (the request lasts until new nodes are up):
/// adds a node, or removes the newest once the cluster has five.
fn change_membership(cluster: &Cluster, status: &StatusReport) -> std::thread::JoinHandle<()> {
    let request = match status.nodes.iter().map(|n| n.id).max() {
        Some(id) if status.nodes.len() >= 5 => Request::NodeRemove { id },
        _ => Request::NodeAdd { count: 1 },
    };
    let socket = cluster.socket.clone();
    std::thread::spawn(move || {
        // No deadline: the request lasts until the new node is up, or the cut.
        if let Ok(mut c) = Client::connect(&socket) {
            let _ = c.call(request);
        }
    })
}

fn describe(s: &StatusReport) -> String {
    let nodes: Vec<String> = s.nodes.iter().map(|n| format!("{}:{}", n.id, n.state.as_str())).collect();
    match &s.migration {
        Some(m) => format!("[{}], {} at {}/{}", nodes.join(" "), m.what, m.partitions_done, m.partitions_total),
        None => format!("[{}]", nodes.join(" ")),
    }
}

fn cut(fs: &LazyFs, cluster: &mut Cluster) {
    // chd's pid too: one cut before it opened anything on the mount would not find it.
    fs.power_cut_killing(&[cluster.pid()]).unwrap();
    cluster.reap();
}

#[test]
fn acknowledged_writes_survive_power_cuts() {
    if let Some(why) = chd_lazyfs::cannot_mount() {
        eprintln!("skipping the power-cut test: {why}");
        return;
    }
    let cuts = env_usize("CHD_POWER_CUTS").unwrap_or(CUTS);
    let seed = env_usize("CHD_POWER_CUT_SEED").map(|s| s as u64).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    }) | 1;
    eprintln!("power-cut test: {cuts} cuts, seed {seed} (CHD_POWER_CUT_SEED), values up to {} B", max_value());
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("disk")).unwrap();
    std::fs::create_dir(tmp.path().join("mnt")).unwrap();
    let fs = LazyFs::mount(tmp.path().join("disk"), tmp.path().join("mnt")).unwrap();
    let mnt = fs.mountpoint().to_owned();
    let history = Arc::new(History { t0: Instant::now(), ops: Mutex::default() });

    let mut main = Cluster::new("main", &mnt, tmp.path());
    let mut fresh: Vec<Cluster> = Vec::new();
    let mut findings: Vec<String> = Vec::new();
    let (mut done, mut total) = (0, Counts::default());
    let started = Instant::now();
    let mut last_main_cut = None;
    for round in 0..cuts {
        let scenario = SCENARIOS[round % SCENARIOS.len()];
        let when = format!("after cut {round} ({scenario:?})");
        let load_seed = rng.next();
        let counts = if scenario == Scenario::FirstStart {
            // A new data dir that chd creates itself, cut while it starts its nodes; writes go
            // in as soon as it listens.
            let mut c = Cluster::new(&format!("fresh{round}"), &mnt, tmp.path());
            let _ = std::fs::remove_file(&c.socket);
            c.start();
            let load = Load::start(&c, &history, load_seed, true);
            std::thread::sleep(rng.millis(0, 2500));
            cut(&fs, &mut c);
            let counts = load.finish();
            c.start();
            findings.extend(c.check(&history, &when));
            c.reap();
            fresh.push(c);
            counts
        } else {
            main.start();
            if let Some((last, s)) = last_main_cut {
                findings.extend(main.check(&history, &format!("after cut {last} ({s:?})")));
            }
            last_main_cut = Some((round, scenario));
            let status = match main.wait_all_up() {
                Ok(s) => s,
                Err(e) => {
                    findings.push(e);
                    break;
                }
            };
            if scenario == Scenario::Rebuild {
                // A node's directory is lost while chd is down; chd rebuilds it at start. First
                // every write goes to all R replicas (a cut may have left some on W only, and
                // may have interrupted the startup repair that heals that), so that losing one
                // directory is one fault, which R=3, W=2 must survive.
                let repaired = connect(&main.socket).map_err(CallError::Io).and_then(|mut c| c.call(Request::Repair));
                if !matches!(repaired, Ok(Response::Repair(_))) {
                    findings.push(format!("before cut {round}: repair failed: {repaired:?}"));
                    break;
                }
                main.reap();
                let victim = status.nodes[rng.below(status.nodes.len() as u64) as usize].id;
                let dir = main.data.join("nodes").join(victim.to_string());
                std::fs::remove_dir_all(&dir).unwrap();
                std::fs::File::open(main.data.join("nodes")).unwrap().sync_all().unwrap();
                main.start();
            }
            let load = Load::start(&main, &history, load_seed, scenario == Scenario::Rebuild);
            let mut change = None;
            match scenario {
                Scenario::Commit => std::thread::sleep(rng.millis(50, 800)),
                Scenario::CatchUp => {
                    std::thread::sleep(rng.millis(50, 300));
                    let pids: Vec<u32> = status.nodes.iter().filter_map(|n| n.pid).collect();
                    let victim = pids[rng.below(pids.len() as u64) as usize];
                    // SAFETY: plain kill(2); the worker may already be gone, which is fine.
                    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
                    std::thread::sleep(rng.millis(0, 1200));
                }
                Scenario::Rebuild => std::thread::sleep(rng.millis(0, 2500)),
                Scenario::Migration | Scenario::ClusterJson => {
                    std::thread::sleep(rng.millis(0, 200));
                    change = Some(change_membership(&main, &status));
                    let after = if scenario == Scenario::Migration { rng.millis(100, 3000) } else { rng.millis(0, 60) };
                    std::thread::sleep(after);
                }
                Scenario::FirstStart => unreachable!(),
            }
            // What the cut interrupts, for the log: each node's state and a migration's progress.
            let at_cut = main.status().map_or("no answer".into(), |s| describe(&s));
            cut(&fs, &mut main);
            eprintln!("  cut {round} hit main with {at_cut}");
            if let Some(change) = change {
                let _ = change.join();
            }
            load.finish()
        };
        done += 1;
        total = total.add(counts);
        eprintln!(
            "cut {round:2} {scenario:?}: {} acknowledged, {} unknown; {:.0} s so far",
            counts.acked,
            counts.unknown,
            started.elapsed().as_secs_f64()
        );
        if !findings.is_empty() {
            break;
        }
    }
    if findings.is_empty() {
        main.start();
        findings.extend(main.check(&history, "after the last cut"));
        main.reap();
    }
    let elapsed = started.elapsed();

    let ops = std::mem::take(&mut *history.ops.lock().unwrap());
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("power_cut_history.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for op in &ops {
        chd_torture::history::write(&mut out, op).unwrap();
    }
    drop(out);
    // The torture suite's linearizability checker on the whole history: stricter than the
    // per-key floor above (it also orders reads against writes in flight).
    let report = chd_torture::check::check(&ops);
    eprint!("checker: {report}");
    if !report.ok() {
        findings.push(format!("the history is not linearizable:\n{report}"));
    }
    eprintln!(
        "{done} cuts in {:.0} s: {} writes acknowledged ({} over 1 MiB, largest {} B), {} unknown, {} operations in {}",
        elapsed.as_secs_f64(),
        total.acked,
        total.acked_over_1m,
        total.largest_acked,
        total.unknown,
        ops.len(),
        path.display()
    );
    if !findings.is_empty() {
        for c in std::iter::once(&main).chain(&fresh) {
            eprintln!("--- {} log:\n{}", c.name, std::fs::read_to_string(&c.log).unwrap_or_default());
        }
    }
    drop(fs);
    assert!(findings.is_empty(), "seed {seed}: findings:\n{}", findings.join("\n"));
}
