//! Following a rebuild: a progress bar in a terminal, a one-line summary otherwise.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::bail;
use chd_data::proto::{NodeProgress, NodeState, Request, Response};

use chd_client::Client;

/// Follows the rebuild of node `id` until it is up again; returns its final progress.
pub fn follow(client: &mut Client, id: u32) -> anyhow::Result<NodeProgress> {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut seen_start = false;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let Response::Status(s) = client.call(Request::Status)? else { bail!("unexpected answer") };
        let Some(node) = s.nodes.iter().find(|n| n.id == id) else { bail!("node {id} is gone") };
        let Response::Progress(p) = client.call(Request::Progress { id })? else { bail!("unexpected answer") };
        match node.state {
            NodeState::Rebuilding | NodeState::CatchingUp => seen_start = true,
            NodeState::Failed => bail!("node {id} failed during the rebuild; see chd's log"),
            NodeState::Up if seen_start || p.as_ref().is_some_and(|p| p.finished) => {
                if tty {
                    eprint!("\r\x1b[K");
                }
                return Ok(p.unwrap_or(NodeProgress {
                    what: "rebuilding".into(),
                    partitions_done: 0,
                    partitions_total: 0,
                    keys: 0,
                    bytes: 0,
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    finished: true,
                }));
            }
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(30) && !seen_start && p.is_none() {
            bail!("node {id} did not start rebuilding; see `chctl status`");
        }
        if tty {
            if let Some(p) = p.filter(|p| !p.finished) {
                draw(&p);
            }
        }
    }
}

fn draw(p: &NodeProgress) {
    let frac = if p.partitions_total == 0 { 0.0 } else { f64::from(p.partitions_done) / f64::from(p.partitions_total) };
    let width = 30;
    let filled = (frac * width as f64) as usize;
    let secs = (p.elapsed_ms as f64 / 1000.0).max(0.001);
    let eta = if frac > 0.0 { secs / frac - secs } else { f64::NAN };
    eprint!(
        "\r\x1b[K{} [{}{}] {:>3.0}%  {} keys  {:.1} MB/s  ETA {}",
        p.what,
        "#".repeat(filled),
        " ".repeat(width - filled),
        frac * 100.0,
        p.keys,
        p.bytes as f64 / secs / 1e6,
        if eta.is_finite() { format!("{eta:.0}s") } else { "?".into() }
    );
    let _ = std::io::stderr().flush();
}

/// How a membership change ended, as [`follow_migration`] saw it.
pub enum Finished {
    /// Its final progress.
    Done(NodeProgress),
    /// It finished, and the named change started before its final progress could be read.
    ThenStarted(String),
}

/// Follows a membership change until it completes.
pub fn follow_migration(client: &mut Client, what: &str) -> anyhow::Result<Finished> {
    let tty = std::io::stderr().is_terminal();
    let mut seen = false;
    loop {
        let Response::Status(s) = client.call(Request::Status)? else { bail!("unexpected answer") };
        // Changes run one at a time: another one in progress, or one seen after ours, means
        // ours completed (its own progress was replaced before this look).
        if let Some(other) = s.migration.as_ref().filter(|m| m.what != what && (seen || !m.finished)) {
            if tty {
                eprint!("\r\x1b[K");
            }
            return Ok(Finished::ThenStarted(other.what.clone()));
        }
        seen |= s.migration.as_ref().is_some_and(|m| m.what == what);
        match s.migration.filter(|m| m.what == what) {
            Some(p) if p.finished => {
                if tty {
                    eprint!("\r\x1b[K");
                }
                return Ok(Finished::Done(p));
            }
            Some(p) if tty => draw(&p),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The closing line of a rebuild or a migration.
pub fn summary(label: &str, p: &NodeProgress) -> anyhow::Result<()> {
    let secs = (p.elapsed_ms as f64 / 1000.0).max(0.001);
    outln!(
        "{label}: {}, {}, {} in {secs:.1}s ({:.0} records/s, {:.1} MB/s)",
        crate::human::count(u64::from(p.partitions_total), "partition"),
        crate::human::count(p.keys, "record"),
        crate::human::human_bytes(p.bytes),
        p.keys as f64 / secs,
        p.bytes as f64 / secs / 1e6
    )?;
    Ok(())
}

/// The same as one JSON object.
pub fn summary_json(p: &NodeProgress) -> serde_json::Value {
    serde_json::json!({
        "partitions": p.partitions_total,
        "records": p.keys,
        "bytes": p.bytes,
        "seconds": p.elapsed_ms as f64 / 1000.0,
    })
}
