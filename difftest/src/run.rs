//! Runs sequences on both servers, compares every reply, and shrinks a divergent sequence.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chd_daemon::resp::cmd;
use chd_data::proto::MAX_KEY;

use crate::compare::{compare, Ctx, Verdict, DOCUMENTED};
use crate::gen::{render, Cmd, Gen};
use crate::resp::{cli_line, encode_request, show, Reply, Value};
use crate::rng::Rng;
use crate::servers::Conn;

#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    /// Stop once this many commands were compared.
    pub commands: u64,
    pub first_sequence: u64,
    /// Stop after this many sequences (if sooner).
    pub sequences: Option<u64>,
    pub sequence_len: usize,
    /// Requests pipelined at once (chd reads at most 128 ahead of its replies).
    pub batch: usize,
    pub huge: bool,
    pub shrink: bool,
    /// Stop after this many divergences.
    pub max_divergences: usize,
    /// Where a minimal sequence with large arguments is written as raw RESP.
    pub out_dir: PathBuf,
    /// Print progress this often.
    pub progress: Option<Duration>,
}

impl Config {
    pub fn new(seed: u64, commands: u64) -> Config {
        Config {
            seed,
            commands,
            first_sequence: 0,
            sequences: None,
            sequence_len: 300,
            batch: 64,
            huge: true,
            shrink: true,
            max_divergences: 1,
            out_dir: std::env::temp_dir(),
            progress: None,
        }
    }
}

/// One request and both replies.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub request: Vec<Vec<u8>>,
    pub redis: Vec<u8>,
    pub chd: Vec<u8>,
    pub verdict: String,
}

#[derive(Clone, Debug)]
pub struct Divergence {
    pub sequence: u64,
    /// Index of the divergent command in the generated sequence.
    pub index: usize,
    pub first: Exchange,
    /// The shrunk sequence's exchanges, the divergent one last.
    pub minimal: Vec<Exchange>,
    pub text: String,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub seed: u64,
    pub commands: u64,
    pub sequences: u64,
    pub elapsed: Duration,
    pub normalised: u64,
    pub documented: BTreeMap<&'static str, u64>,
    pub divergences: Vec<Divergence>,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn line(&self) -> String {
        let docs: Vec<String> = self.documented.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "seed {}: {} commands in {} sequences, {:.1} s, {:.0} commands/s; {} normalised; documented differences: \
             {}; {} unexplained divergence(s)",
            self.seed,
            self.commands,
            self.sequences,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.normalised,
            if docs.is_empty() { "none".into() } else { docs.join(" ") },
            self.divergences.len()
        )
    }
}

struct SeqResult {
    divergence: Option<(usize, Exchange)>,
    transcript: Vec<Exchange>,
}

pub struct Runner<'a> {
    redis: &'a Path,
    chd: &'a Path,
    tag: String,
    next_prefix: u64,
    counting: bool,
    summary: Summary,
}

fn is_full_scan(req: &[Vec<u8>]) -> bool {
    req.len() >= 2 && req[0].eq_ignore_ascii_case(b"scan") && req[1] == b"0"
}

fn is_quit(req: &[Vec<u8>]) -> bool {
    req[0].eq_ignore_ascii_case(b"quit")
}

fn needs_resync(req: &[Vec<u8>]) -> bool {
    DOCUMENTED.iter().any(|d| d.resync && (d.request)(req))
}

fn keys_of(req: &[Vec<u8>]) -> Vec<Vec<u8>> {
    match cmd::lookup(&req[0]) {
        Some(spec) => cmd::keys_of(spec, req).into_iter().map(<[u8]>::to_vec).collect(),
        None => Vec::new(),
    }
}

fn chd_can_store(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY
}

impl<'a> Runner<'a> {
    pub fn new(redis: &'a Path, chd: &'a Path, seed: u64) -> Runner<'a> {
        Runner {
            redis,
            chd,
            tag: format!("{:x}.", seed & 0xffff_ffff),
            next_prefix: 0,
            counting: true,
            summary: Summary { seed, ..Summary::default() },
        }
    }

    fn fresh_prefix(&mut self) -> Vec<u8> {
        self.next_prefix += 1;
        format!("{}{}:", self.tag, self.next_prefix).into_bytes()
    }

    fn connect(&self) -> anyhow::Result<(Conn, Conn)> {
        Ok((
            Conn::connect(self.redis).context("connecting to redis-server")?,
            Conn::connect(self.chd).context("connecting to chd")?,
        ))
    }

    fn run_sequence(&mut self, seq: &[Cmd], batch: usize, record: bool) -> anyhow::Result<SeqResult> {
        let prefix = self.fresh_prefix();
        let reqs: Vec<Vec<Vec<u8>>> = seq.iter().map(|c| render(c, &prefix)).collect();
        let keys: HashSet<Vec<u8>> = reqs.iter().flat_map(|r| keys_of(r)).collect();
        let ctx = Ctx { keys: &keys };
        let (mut redis, mut chd) = self.connect()?;
        let mut out = SeqResult { divergence: None, transcript: Vec::new() };
        let mut i = 0;
        'batches: while i < reqs.len() {
            if is_full_scan(&reqs[i]) {
                let (r, c) = (full_scan(&mut redis, &reqs[i]), full_scan(&mut chd, &reqs[i]));
                let verdict = if r.raw == c.raw { Verdict::Normalised } else { Verdict::Diverged };
                if self.record(&mut out, i, &reqs[i], &r, &c, verdict, record) {
                    break;
                }
                i += 1;
                continue;
            }
            let (mut end, mut bytes) = (i, Vec::new());
            while end < reqs.len() && end - i < batch && !is_full_scan(&reqs[end]) && bytes.len() < (8 << 20) {
                encode_request(&reqs[end], &mut bytes);
                end += 1;
                if is_quit(&reqs[end - 1]) || needs_resync(&reqs[end - 1]) {
                    break;
                }
            }
            let n = end - i;
            let ((rr, rerr), (cr, cerr)) = std::thread::scope(|s| {
                let r = s.spawn(|| redis.exchange(&bytes, n));
                let c = chd.exchange(&bytes, n);
                (r.join().expect("redis thread"), c)
            });
            if let Some(e) = rerr {
                bail!("redis-server: {e} (at command {} of the sequence)", i + rr.len());
            }
            for (j, r) in rr.iter().enumerate() {
                let c = match cr.get(j) {
                    Some(c) => c.clone(),
                    None => {
                        let e = cerr.as_ref().map_or("no reply".into(), ToString::to_string);
                        Reply { raw: format!("<chd: {e}>").into_bytes(), value: Value::Null(b'!') }
                    }
                };
                let verdict = if cr.get(j).is_some() { compare(&reqs[i + j], r, &c, &ctx) } else { Verdict::Diverged };
                if self.record(&mut out, i + j, &reqs[i + j], r, &c, verdict, record) {
                    break 'batches;
                }
            }
            if is_quit(&reqs[end - 1]) {
                (redis, chd) = self.connect()?;
            }
            if needs_resync(&reqs[end - 1]) {
                resync(&mut redis, &mut chd, &reqs[end - 1])?;
            }
            i = end;
        }
        cleanup(self.redis, self.chd, &keys)?;
        Ok(out)
    }

    /// Notes one comparison; true when it diverged.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        out: &mut SeqResult,
        index: usize,
        req: &[Vec<u8>],
        redis: &Reply,
        chd: &Reply,
        verdict: Verdict,
        record: bool,
    ) -> bool {
        if self.counting {
            self.summary.commands += 1;
            match verdict {
                Verdict::Normalised => self.summary.normalised += 1,
                Verdict::Documented(name) => *self.summary.documented.entry(name).or_default() += 1,
                _ => {}
            }
        }
        let diverged = verdict == Verdict::Diverged;
        if record || diverged {
            let ex = Exchange {
                request: req.to_vec(),
                redis: redis.raw.clone(),
                chd: chd.raw.clone(),
                verdict: format!("{verdict:?}"),
            };
            if diverged {
                out.divergence = Some((index, ex.clone()));
            }
            if record {
                out.transcript.push(ex);
            }
        }
        diverged
    }

    /// Delta debugging: the smallest subsequence (1-minimal, within a budget of replays) that
    /// still diverges, each replay under a fresh key prefix.
    fn shrink(&mut self, seq: &[Cmd], index: usize, batch: usize) -> anyhow::Result<Vec<Cmd>> {
        let mut cur: Vec<Cmd> = seq[..=index].to_vec();
        let budget = std::cell::Cell::new(400u32);
        let fails = |me: &mut Self, cand: &[Cmd]| -> anyhow::Result<Option<usize>> {
            budget.set(budget.get().saturating_sub(1));
            Ok(me.run_sequence(cand, batch, false)?.divergence.map(|(i, _)| i))
        };
        // The divergent command alone, then ddmin over the rest.
        if let Some(i) = fails(self, &cur[index..])? {
            cur = cur[index..=index + i].to_vec();
        }
        let mut n = 2usize;
        while cur.len() >= 2 && budget.get() > 0 {
            let chunk = cur.len().div_ceil(n);
            let mut reduced = false;
            for start in (0..cur.len()).step_by(chunk) {
                let complement: Vec<Cmd> =
                    cur[..start].iter().chain(&cur[(start + chunk).min(cur.len())..]).cloned().collect();
                if complement.is_empty() || budget.get() == 0 {
                    continue;
                }
                if let Some(i) = fails(self, &complement)? {
                    cur = complement[..=i].to_vec();
                    n = (n - 1).max(2);
                    reduced = true;
                    break;
                }
            }
            if !reduced {
                if n >= cur.len() {
                    break;
                }
                n = (2 * n).min(cur.len());
            }
        }
        Ok(cur)
    }
}

/// SCAN from cursor 0 to the end: the sorted keys found, as an array reply, or the first error.
fn full_scan(conn: &mut Conn, req: &[Vec<u8>]) -> Reply {
    let mut req = req.to_vec();
    let mut keys = BTreeSet::new();
    for _ in 0..20_000 {
        let r = match conn.call(&req) {
            Ok(r) => r,
            Err(e) => return Reply { raw: format!("<{e}>").into_bytes(), value: Value::Null(b'!') },
        };
        let Value::Agg(b'*', items) = &r.value else { return r };
        let [Value::Blob(b'$', cursor), Value::Agg(_, found)] = items.as_slice() else { return r };
        for k in found {
            match k {
                Value::Blob(b'$', k) => keys.insert(k.clone()),
                _ => return r,
            };
        }
        if cursor == b"0" {
            let v = Value::Agg(b'*', keys.into_iter().map(|k| Value::Blob(b'$', k)).collect());
            return Reply { raw: v.to_bytes(), value: v };
        }
        req[1] = cursor.clone();
    }
    Reply { raw: b"<SCAN did not end>".to_vec(), value: Value::Null(b'!') }
}

/// Makes Redis hold what chd holds for the request's keys.
fn resync(redis: &mut Conn, chd: &mut Conn, req: &[Vec<u8>]) -> anyhow::Result<()> {
    for key in keys_of(req) {
        let value = if chd_can_store(&key) {
            match chd.call(&[b"get".to_vec(), key.clone()])?.value {
                Value::Blob(b'$', v) => Some(v),
                _ => None,
            }
        } else {
            None
        };
        let r = match value {
            Some(v) => redis.call(&[b"set".to_vec(), key, v])?,
            None => redis.call(&[b"del".to_vec(), key])?,
        };
        if r.value.is_error() {
            bail!("resync of Redis failed: {}", show(&r.raw, 200));
        }
    }
    Ok(())
}

/// Deletes the sequence's keys on both servers, through fresh connections.
fn cleanup(redis: &Path, chd: &Path, keys: &HashSet<Vec<u8>>) -> anyhow::Result<()> {
    let mut all: Vec<Vec<u8>> = keys.iter().cloned().collect();
    all.sort();
    for (path, name, keep) in
        [(redis, "redis-server", (|_: &[u8]| true) as fn(&[u8]) -> bool), (chd, "chd", chd_can_store)]
    {
        let mut c = Conn::connect(path).with_context(|| format!("connecting to {name} for cleanup"))?;
        let mine: Vec<Vec<u8>> = all.iter().filter(|k| keep(k)).cloned().collect();
        for chunk in mine.chunks(64) {
            let mut req = vec![b"del".to_vec()];
            req.extend(chunk.iter().cloned());
            let r = c.call(&req)?;
            if !matches!(r.value, Value::Line(b':', _)) {
                bail!("cleanup on {name}: {}", show(&r.raw, 200));
            }
        }
    }
    Ok(())
}

/// The report of a divergence: the seed, the minimal sequence as redis-cli input, both replies.
fn describe(cfg: &Config, seq_no: u64, index: usize, first: &Exchange, minimal: &[Exchange]) -> String {
    let mut s = String::new();
    s += &format!(
        "DIVERGENCE: seed {} sequence {} command {}: {}\n  redis: {}\n  chd:   {}\n",
        cfg.seed,
        seq_no,
        index,
        cli_line(&first.request).chars().take(300).collect::<String>(),
        show(&first.redis, 300),
        show(&first.chd, 300)
    );
    s += &format!(
        "reproduce: chd-difftest --seed {} --first-sequence {} --sequences 1{}\n",
        cfg.seed,
        seq_no,
        if cfg.huge { "" } else { " --no-huge" }
    );
    let large = minimal.iter().any(|e| e.request.iter().any(|a| a.len() > 4096));
    s += &format!("minimal sequence ({} commands), for redis-cli:\n", minimal.len());
    for e in minimal {
        s += &format!("  {}\n", cut(&cli_line(&e.request), large));
    }
    if large {
        let path = cfg.out_dir.join(format!("chd-difftest-{}-{}.resp", cfg.seed, seq_no));
        let mut bytes = Vec::new();
        minimal.iter().for_each(|e| encode_request(&e.request, &mut bytes));
        match std::fs::write(&path, bytes) {
            Ok(()) => {
                s += &format!("  (arguments over 4 KiB are cut above; the exact requests are in {})\n", path.display())
            }
            Err(e) => s += &format!("  (could not write the requests to {}: {e})\n", path.display()),
        }
    }
    if !minimal.iter().any(|e| e.verdict == "Diverged") {
        s += "  NOTE: this sequence did not diverge when replayed once more: the divergence depends on timing or \
              load, and the sequence above may not be minimal\n";
    }
    s += "replies (redis | chd):\n";
    for (i, e) in minimal.iter().enumerate() {
        s += &format!(
            "  [{i}] {}\n      redis: {}\n      chd:   {}{}\n",
            cut(&cli_line(&e.request), true),
            show(&e.redis, 300),
            show(&e.chd, 300),
            if e.verdict == "Same" { String::new() } else { format!("\n      ({})", e.verdict) }
        );
    }
    s
}

fn cut(line: &str, large: bool) -> String {
    if large && line.len() > 400 {
        format!("{}... ({} chars)", line.chars().take(400).collect::<String>(), line.len())
    } else {
        line.to_string()
    }
}

/// Runs sequences until `cfg.commands` were compared (or the sequences or divergences are
/// exhausted), printing the seed first and each divergence as it is found.
pub fn run(cfg: &Config, redis: &Path, chd: &Path) -> anyhow::Result<Summary> {
    println!("chd-difftest: seed {} ({} commands, sequences of {})", cfg.seed, cfg.commands, cfg.sequence_len);
    let missing = crate::gen::check_table();
    if !missing.is_empty() {
        bail!("chd's command table has entries the tester cannot generate: {missing:?} (add a generator in difftest/src/gen.rs, or an exclusion with its reason)");
    }
    let mut runner = Runner::new(redis, chd, cfg.seed);
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let mut seq_no = cfg.first_sequence;
    while runner.summary.commands < cfg.commands
        && cfg.sequences.is_none_or(|n| seq_no < cfg.first_sequence + n)
        && runner.summary.divergences.len() < cfg.max_divergences
    {
        let mut gen = Gen { rng: Rng::for_sequence(cfg.seed, seq_no), huge: cfg.huge };
        let seq = gen.sequence(cfg.sequence_len);
        let res = runner.run_sequence(&seq, cfg.batch, false)?;
        runner.summary.sequences += 1;
        if let Some((index, first)) = res.divergence {
            runner.counting = false;
            let minimal = if cfg.shrink { runner.shrink(&seq, index, cfg.batch)? } else { seq[..=index].to_vec() };
            let transcript = runner.run_sequence(&minimal, 1, true)?.transcript;
            runner.counting = true;
            let text = describe(cfg, seq_no, index, &first, &transcript);
            println!("{text}");
            runner.summary.divergences.push(Divergence { sequence: seq_no, index, first, minimal: transcript, text });
        }
        seq_no += 1;
        if cfg.progress.is_some_and(|p| last_progress.elapsed() >= p) {
            last_progress = Instant::now();
            runner.summary.elapsed = start.elapsed();
            println!("  {}", runner.summary.line());
        }
    }
    runner.summary.elapsed = start.elapsed();
    let summary = std::mem::take(&mut runner.summary);
    println!("{}", summary.line());
    Ok(summary)
}

/// A seed from the clock and the process id.
pub fn random_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Rng::new(t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32)).next_u64()
}
