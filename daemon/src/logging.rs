//! chd's log: set up once at start, readable by a person and by journald alike.
//!
//! - Text lines use `Display` values (an exit as "killed by signal 9", a path as itself), never
//!   Rust's `Debug` output; `--log-format json` writes one JSON object per line instead.
//! - Colour only when stderr is a terminal and `NO_COLOR` is unset or empty (no-color.org), so a
//!   file or the journal never gets escape codes; under systemd (`JOURNAL_STREAM`) lines carry
//!   no timestamp of their own, the journal adds one.
//! - A warning that can repeat at the rate of an attacker or a runaway client (too many
//!   connections, refused clients) goes through a [`RateLimit`]: a few lines a second, and the
//!   next line says how many were suppressed, so the log stays readable and nothing is hidden.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::LogFormat;

/// Changes the log level (filter) of the running chd.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Whether log lines may carry ANSI colour.
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Starts logging; returns how to change the level later (SIGHUP), or `None` when `RUST_LOG`
/// rules it.
pub fn init(level: &str, format: LogFormat) -> Option<SetLogLevel> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let from_env = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| tracing_subscriber::EnvFilter::new(level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let colour =
        use_colour(std::io::IsTerminal::is_terminal(&std::io::stderr()), std::env::var_os("NO_COLOR").as_deref());
    // Under systemd the journal adds its own timestamps.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let base = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false);
    let fmt = match (format, journal) {
        (LogFormat::Json, false) => base.json().boxed(),
        (LogFormat::Json, true) => base.json().without_time().boxed(),
        (LogFormat::Text, false) => base.with_ansi(colour).boxed(),
        (LogFormat::Text, true) => base.with_ansi(false).without_time().boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    if pinned {
        return None;
    }
    Some(Box::new(move |level: &str| {
        let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}

/// At most `burst` lines per `window`; the occurrences beyond are counted and reported with the
/// next line that is let through.
#[derive(Debug)]
pub struct RateLimit {
    window: Duration,
    burst: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(window: Duration, burst: u32) -> RateLimit {
        RateLimit { window, burst, window_start: None, in_window: 0, suppressed: 0 }
    }

    /// One occurrence at `now`: `Some(n)` if it is to be logged, `n` being how many were
    /// suppressed since the last logged one; `None` if it is suppressed.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        if self.window_start.is_none_or(|s| now.duration_since(s) >= self.window) {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// " (N more suppressed)" for a line let through by a [`RateLimit`], or nothing.
pub fn suppressed(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more suppressed)")
    }
}

/// Items for a log line: "1, 2, 3", or "none".
pub fn list<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// Lines about clients refused for their credentials, shared by chd's socket and RESP's.
pub static REFUSED_CLIENTS: Mutex<RateLimit> = Mutex::new(RateLimit::new(Duration::from_secs(1), 10));

/// [`RateLimit::check`] on a shared limiter.
pub fn allow(limit: &Mutex<RateLimit>) -> Option<u64> {
    limit.lock().unwrap_or_else(|e| e.into_inner()).check(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_becomes_one_line_a_window_with_a_count() {
        let mut r = RateLimit::new(Duration::from_secs(1), 1);
        let t0 = Instant::now();
        assert_eq!(r.check(t0), Some(0));
        // 976 more within the same millisecond: all suppressed.
        for i in 0..976 {
            assert_eq!(r.check(t0 + Duration::from_micros(i)), None);
        }
        // The next window's first line carries the count, once.
        assert_eq!(r.check(t0 + Duration::from_secs(1)), Some(976));
        assert_eq!(r.check(t0 + Duration::from_millis(1500)), None);
        assert_eq!(r.check(t0 + Duration::from_secs(3)), Some(1));
        assert_eq!(suppressed(0), "");
        assert_eq!(suppressed(976), " (976 more suppressed)");
    }

    #[test]
    fn a_burst_lets_the_first_few_through() {
        let mut r = RateLimit::new(Duration::from_secs(1), 3);
        let t0 = Instant::now();
        let allowed: Vec<_> = (0..5).map(|_| r.check(t0)).collect();
        assert_eq!(allowed, [Some(0), Some(0), Some(0), None, None]);
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
    }
}
