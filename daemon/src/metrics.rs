//! Counters and histograms behind `chctl stats` and the Prometheus endpoint.
//!
//! Recording must cost next to nothing on the request path: every counter is a relaxed atomic
//! in memory allocated once, and a histogram is a fixed array of log2 buckets (bucket `i`
//! counts values in `(2^(i-1), 2^i]`, bucket 0 counts 0 and 1, the last bucket everything
//! above). No lock, no allocation, no syscall beyond reading the clock.
//!
//! Reading is rare (a `chctl stats` or a scrape) and may allocate: [`Histogram::snapshot`]
//! copies the buckets, and the pure functions here turn snapshots into percentiles and into
//! Prometheus text. A percentile is reported as the upper bound of the bucket it falls in, so
//! it overstates by less than 2x and never understates.
//!
//! Requests are counted per front end ([`Api`]): chd's own socket by request type, and RESP by
//! command name from the fixed command table plus `other` (unknown and refused commands), so
//! the label sets stay bounded whatever clients send.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use chd_data::proto::{ApiStats, CommandStats, HistogramReport, Request, StatsReport};
use chd_data::Error;
use serde::{Deserialize, Serialize};

/// Buckets per histogram: up to 2^26 (about 67 s in microseconds) and one for the rest.
pub const BUCKETS: usize = 28;

/// The bucket a value falls in.
pub fn bucket_of(v: u64) -> usize {
    if v <= 1 {
        0
    } else {
        ((64 - (v - 1).leading_zeros()) as usize).min(BUCKETS - 1)
    }
}

/// The largest value bucket `i` holds; `None` for the last (unbounded) bucket.
pub fn upper_bound(i: usize) -> Option<u64> {
    (i < BUCKETS - 1).then(|| 1u64 << i)
}

/// A histogram recorded with relaxed atomics: concurrent `record`s never wait on each other.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    pub const fn new() -> Histogram {
        Histogram { buckets: [const { AtomicU64::new(0) }; BUCKETS], sum: AtomicU64::new(0), count: AtomicU64::new(0) }
    }

    pub fn record(&self, v: u64) {
        self.buckets[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_micros(&self, d: Duration) {
        self.record(d.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    /// A copy of the counts. Taken while others record, it may be off by the records in flight
    /// (count and buckets are read one by one), never by more.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            sum: self.sum.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's counts at one moment: what workers send chd, and what chd adds up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Per bucket, not cumulative; [`BUCKETS`] long, or empty for an empty histogram.
    pub buckets: Vec<u64>,
    pub sum: u64,
    pub count: u64,
}

impl Snapshot {
    /// The upper bound of the bucket holding the `q` quantile (0 < q <= 1); 0 when empty. For
    /// the unbounded last bucket, the bound below it.
    pub fn quantile(&self, q: f64) -> u64 {
        // Counts arrive from workers over their link: sums saturate rather than overflow.
        let total = self.buckets.iter().fold(0u64, |a, &n| a.saturating_add(n));
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen = n.saturating_add(seen);
            if seen >= rank {
                return upper_bound(i).unwrap_or(1 << (BUCKETS - 2));
            }
        }
        1 << (BUCKETS - 2)
    }

    pub fn report(&self) -> HistogramReport {
        HistogramReport {
            count: self.count,
            sum: self.sum,
            p50: self.quantile(0.5),
            p99: self.quantile(0.99),
            p999: self.quantile(0.999),
            buckets: self.buckets.clone(),
        }
    }
}

/// How a request ended. `ok` and `error` serve both front ends; the others name the kind of a
/// chd error, so that "quorum not reachable" is told from "refused".
pub const OUTCOMES: [&str; 8] = ["ok", "error", "unavailable", "disk_full", "refused", "invalid", "denied", "internal"];
pub const OK: usize = 0;
pub const ERROR: usize = 1;

/// The outcome index of a chd error.
pub fn outcome_of(e: &Error) -> usize {
    match e {
        Error::Unavailable { .. } => 2,
        Error::DiskFull(_) => 3,
        Error::Refused(_) | Error::NoSuchNode(_) | Error::OutOfMemory { .. } => 4,
        Error::KeyTooLarge { .. }
        | Error::ValueTooLarge { .. }
        | Error::EmptyKey
        | Error::FrameTooLarge { .. }
        | Error::Malformed(_)
        | Error::VersionMismatch { .. }
        | Error::HelloRequired => 5,
        Error::PermissionDenied { .. } => 6,
        Error::Internal(_) => 7,
        _ => ERROR,
    }
}

/// chd's own requests, in the order [`chd_index`] numbers them.
pub const CHD_COMMANDS: [&str; 19] = [
    "hello",
    "get",
    "set",
    "del",
    "status",
    "ring",
    "node restart",
    "node rebuild",
    "repair",
    "progress",
    "node add",
    "node remove",
    "node replace",
    "plan",
    "scan",
    "exists",
    "restore",
    "quarantine",
    "stats",
];

/// The index of a request in [`CHD_COMMANDS`] (exhaustive: a new request must be named here).
pub fn chd_index(r: &Request) -> usize {
    match r {
        Request::Hello { .. } => 0,
        Request::Get { .. } => 1,
        Request::Set { .. } => 2,
        Request::Del { .. } => 3,
        Request::Status => 4,
        Request::Ring => 5,
        Request::NodeRestart { .. } => 6,
        Request::NodeRebuild { .. } => 7,
        Request::Repair => 8,
        Request::Progress { .. } => 9,
        Request::NodeAdd { .. } => 10,
        Request::NodeRemove { .. } => 11,
        Request::NodeReplace { .. } => 12,
        Request::Plan { .. } => 13,
        Request::Scan { .. } => 14,
        Request::Exists { .. } => 15,
        Request::SetIfAbsent { .. } => 16,
        Request::QuarantineList | Request::QuarantinePurge { .. } => 17,
        Request::Stats => 18,
    }
}

struct Command {
    outcomes: [AtomicU64; OUTCOMES.len()],
    latency: Histogram,
}

/// The counters of one front end: per command, outcomes and latency; bytes read and written.
pub struct Api {
    name: &'static str,
    commands: Box<[(&'static str, Command)]>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Api {
    pub fn new(name: &'static str, commands: impl Iterator<Item = &'static str>) -> Api {
        let commands = commands
            .map(|c| {
                (c, Command { outcomes: [const { AtomicU64::new(0) }; OUTCOMES.len()], latency: Histogram::new() })
            })
            .collect();
        Api { name, commands, bytes_in: AtomicU64::new(0), bytes_out: AtomicU64::new(0) }
    }

    /// Counts one request of command `index` (the last command for an index out of range).
    pub fn record(&self, index: usize, outcome: usize, took: Duration) {
        let c = &self.commands[index.min(self.commands.len() - 1)].1;
        c.outcomes[outcome.min(OUTCOMES.len() - 1)].fetch_add(1, Ordering::Relaxed);
        c.latency.record_micros(took);
    }

    pub fn bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The commands seen so far, with their counts and latency.
    pub fn report(&self) -> (ApiStats, Vec<CommandStats>) {
        let api = ApiStats {
            api: self.name.into(),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        };
        let commands = self
            .commands
            .iter()
            .filter_map(|(name, c)| {
                let latency = c.latency.snapshot();
                (latency.count > 0).then(|| CommandStats {
                    api: self.name.into(),
                    command: (*name).into(),
                    outcomes: OUTCOMES
                        .iter()
                        .zip(&c.outcomes)
                        .map(|(o, n)| (o.to_string(), n.load(Ordering::Relaxed)))
                        .filter(|(_, n)| *n > 0)
                        .collect(),
                    latency_us: latency.report(),
                })
            })
            .collect();
        (api, commands)
    }
}

/// Requests on chd's own socket, by [`chd_index`].
pub static CHD: LazyLock<Api> = LazyLock::new(|| Api::new("chd", CHD_COMMANDS.into_iter()));
/// The APIs whose requests `chctl stats` and `/metrics` show, in order. Each front end
/// registers its own at start: it owns its command names, and this module imports none.
static APIS: std::sync::RwLock<Vec<&'static Api>> = std::sync::RwLock::new(Vec::new());

/// Adds `api` to those reported (once, however often it is registered).
pub fn register(api: &'static Api) {
    let mut apis = APIS.write().expect("apis lock");
    if !apis.iter().any(|a| std::ptr::eq(*a, api)) {
        apis.push(api);
    }
}

/// The registered APIs, in the order they were registered.
pub fn apis() -> Vec<&'static Api> {
    APIS.read().expect("apis lock").clone()
}
/// Repairs of every partition finished (`chctl repair` and the one after each start).
pub static REPAIRS: AtomicU64 = AtomicU64::new(0);
/// Keys those repairs copied.
pub static REPAIRED_KEYS: AtomicU64 = AtomicU64::new(0);
/// Nodes rebuilt from their replicas (finished).
pub static REBUILDS: AtomicU64 = AtomicU64::new(0);

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes one histogram's `_bucket` (cumulative), `_sum` and `_count` lines. Recorded values
/// are divided by `per_unit` (1e6 for microseconds to seconds; a division, unlike a product
/// with 1e-6, prints 48944 us as 0.048944 and not 0.048943999999999994).
fn histogram(out: &mut String, name: &str, labels: &str, h: &HistogramReport, per_unit: f64) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (i, n) in h.buckets.iter().enumerate() {
        cumulative += n;
        if let Some(b) = upper_bound(i) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}", b as f64 / per_unit);
        }
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum as f64 / per_unit);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

/// The report in the Prometheus text exposition format (version 0.0.4).
pub fn prometheus(r: &StatsReport) -> String {
    let mut out = String::new();
    let o = &mut out;
    let _ = writeln!(o, "# HELP chd_requests_total Requests answered, by front end, command and outcome.");
    let _ = writeln!(o, "# TYPE chd_requests_total counter");
    for c in &r.requests {
        for (outcome, n) in &c.outcomes {
            let _ = writeln!(
                o,
                "chd_requests_total{{api=\"{}\",command=\"{}\",outcome=\"{}\"}} {n}",
                label(&c.api),
                label(&c.command),
                label(outcome)
            );
        }
    }
    let _ = writeln!(o, "# HELP chd_request_duration_seconds Time from a request's arrival to its answer.");
    let _ = writeln!(o, "# TYPE chd_request_duration_seconds histogram");
    for c in &r.requests {
        let labels = format!("api=\"{}\",command=\"{}\"", label(&c.api), label(&c.command));
        histogram(o, "chd_request_duration_seconds", &labels, &c.latency_us, 1e6);
    }
    for (name, help, get) in [
        ("chd_received_bytes_total", "Bytes read from clients.", (|a: &ApiStats| a.bytes_in) as fn(&ApiStats) -> u64),
        ("chd_sent_bytes_total", "Bytes written to clients.", |a: &ApiStats| a.bytes_out),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} counter");
        for a in &r.apis {
            let _ = writeln!(o, "{name}{{api=\"{}\"}} {}", label(&a.api), get(a));
        }
    }
    for (name, help, get) in [
        ("chd_node_keys", "Live keys a node holds.", (|n: &chd_data::proto::NodeMetrics| n.keys) as fn(_) -> _),
        ("chd_node_bytes", "Bytes a node's database takes on disk.", |n: &chd_data::proto::NodeMetrics| n.bytes),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} gauge");
        for n in &r.nodes {
            if let Some(v) = get(n) {
                let _ = writeln!(o, "{name}{{node=\"{}\"}} {v}", n.id);
            }
        }
    }
    let _ = writeln!(
        o,
        "# HELP chd_node_fsync_seconds Time a node takes to make one group-commit batch durable (since its worker started)."
    );
    let _ = writeln!(o, "# TYPE chd_node_fsync_seconds histogram");
    for n in r.nodes.iter().filter(|n| n.reachable) {
        histogram(o, "chd_node_fsync_seconds", &format!("node=\"{}\"", n.id), &n.sync_us, 1e6);
    }
    let _ = writeln!(o, "# HELP chd_node_batch_size Writes per group-commit batch (since the node's worker started).");
    let _ = writeln!(o, "# TYPE chd_node_batch_size histogram");
    for n in r.nodes.iter().filter(|n| n.reachable) {
        histogram(o, "chd_node_batch_size", &format!("node=\"{}\"", n.id), &n.batch_size, 1.0);
    }
    for (name, help, v) in [
        ("chd_cache_hits_total", "Reads answered from chd's value cache.", r.cache_hits),
        ("chd_cache_misses_total", "Reads the value cache could not answer.", r.cache_misses),
        ("chd_repairs_total", "Repairs of every partition finished.", r.repairs),
        ("chd_repaired_keys_total", "Keys copied by those repairs.", r.repaired_keys),
        ("chd_rebuilds_total", "Nodes rebuilt from their replicas.", r.rebuilds),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} counter");
        let _ = writeln!(o, "{name} {v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: counts whose sum passes u64::MAX (what a broken worker could send) made
    /// the percentiles overflow, a panic in a debug build.
    #[test]
    fn percentiles_of_counts_too_large_to_add_do_not_overflow() {
        let s = Snapshot { buckets: vec![1, u64::MAX, u64::MAX], sum: u64::MAX, count: 1 };
        let r = s.report();
        assert_eq!((r.p50, r.p999), (2, 2));
    }

    #[test]
    fn values_fall_in_the_bucket_whose_bound_is_the_next_power_of_two() {
        for (v, b) in [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (1024, 10), (1025, 11)] {
            assert_eq!(bucket_of(v), b, "value {v}");
            assert!(upper_bound(b).unwrap() >= v);
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(upper_bound(BUCKETS - 1), None);
    }

    #[test]
    fn quantiles_are_the_upper_bound_of_their_bucket_and_never_understate() {
        let h = Histogram::new();
        assert_eq!(h.snapshot().quantile(0.5), 0, "an empty histogram");
        for v in 1..=1000u64 {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!((s.count, s.sum), (1000, 500_500));
        // The true p50 is 500, in bucket (256, 512]; p99 is 990 and p999 is 999, in (512, 1024].
        assert_eq!(s.quantile(0.5), 512);
        assert_eq!(s.quantile(0.99), 1024);
        assert_eq!(s.quantile(0.999), 1024);
        assert_eq!(s.quantile(1.0), 1024);
        // One slow outlier among fast requests shows at p999 only.
        let h = Histogram::new();
        for _ in 0..999 {
            h.record(10);
        }
        h.record(1_000_000);
        let r = h.snapshot().report();
        assert_eq!((r.p50, r.p99, r.p999), (16, 16, 16));
        h.record(1_000_000);
        assert_eq!(h.snapshot().quantile(0.999), 1 << 20);
    }

    #[test]
    fn outcomes_name_the_error_kind() {
        assert_eq!(OUTCOMES[outcome_of(&Error::Unavailable { needed: 2, got: 1 })], "unavailable");
        assert_eq!(OUTCOMES[outcome_of(&Error::DiskFull("x".into()))], "disk_full");
        assert_eq!(OUTCOMES[outcome_of(&Error::EmptyKey)], "invalid");
        assert_eq!(OUTCOMES[outcome_of(&Error::PermissionDenied { uid: 1 })], "denied");
    }

    #[test]
    fn chd_commands_are_named_as_requests_name_themselves() {
        for r in [
            Request::Get { key: vec![1] },
            Request::Set { key: vec![1], value: vec![] },
            Request::Del { key: vec![1] },
            Request::Status,
            Request::Repair,
            Request::Exists { key: vec![1] },
            Request::Stats,
        ] {
            assert_eq!(CHD_COMMANDS[chd_index(&r)], r.name());
        }
    }

    #[test]
    fn prometheus_text_has_cumulative_buckets_and_one_sample_per_line() {
        let api = Api::new("chd", ["get", "set"].into_iter());
        api.record(0, OK, Duration::from_micros(3));
        api.record(0, OK, Duration::from_micros(100));
        api.record(0, outcome_of(&Error::Unavailable { needed: 2, got: 0 }), Duration::from_micros(5));
        let (a, requests) = api.report();
        assert_eq!(requests.len(), 1, "a command never used is left out");
        let r = StatsReport { requests, apis: vec![a], cache_hits: 7, ..Default::default() };
        let text = prometheus(&r);
        assert!(text.contains("chd_requests_total{api=\"chd\",command=\"get\",outcome=\"ok\"} 2\n"), "{text}");
        assert!(text.contains("chd_requests_total{api=\"chd\",command=\"get\",outcome=\"unavailable\"} 1\n"));
        assert!(text.contains("chd_request_duration_seconds_bucket{api=\"chd\",command=\"get\",le=\"0.000004\"} 1\n"));
        assert!(text.contains("chd_request_duration_seconds_bucket{api=\"chd\",command=\"get\",le=\"0.000008\"} 2\n"));
        assert!(text.contains("chd_request_duration_seconds_bucket{api=\"chd\",command=\"get\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("chd_request_duration_seconds_count{api=\"chd\",command=\"get\"} 3\n"));
        assert!(text.contains("chd_request_duration_seconds_sum{api=\"chd\",command=\"get\"} 0.000108\n"), "{text}");
        assert!(text.contains("chd_cache_hits_total 7\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name and value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
