//! One function per chctl command.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use chd_data::proto::{Change, NodeState, PlanReport, Request, Response, StatusReport, MAX_KEY, MAX_VALUE};

use crate::exit;
use crate::{Command, NodeCommand};
use chd_client::{CallError, Client};

pub fn run(socket: &Path, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Bench(args) => return crate::bench::run(socket, args).map(|()| ExitCode::SUCCESS),
        // Generated from the clap definition; no chd needed.
        Command::Completions { shell } => return crate::gen::completions(shell).map(|()| ExitCode::SUCCESS),
        Command::Man { out } => return crate::gen::man_pages(&out).map(|()| ExitCode::SUCCESS),
        _ => {}
    }
    let mut client = connect(socket)?;
    match command {
        Command::Set { key, value } => {
            let key = checked_key(key)?;
            let value =
                if value == "-" { read_value(std::io::stdin().lock())? } else { checked_value(value.into_bytes())? };
            expect_done(client.call(Request::Set { key, value })?)?;
        }
        Command::Get { key } => match client.call(Request::Get { key: checked_key(key.clone())? })? {
            Response::Value(Some(v)) => {
                crate::out::write_all(&v)?;
                // On a terminal, end the line so the prompt does not stick to the value; a pipe
                // or a file gets the bytes exactly.
                if std::io::stdout().is_terminal() && !v.ends_with(b"\n") {
                    crate::out::write_all(b"\n")?;
                }
            }
            Response::Value(None) => {
                eprintln!("chctl: no such key: {key}");
                return Ok(ExitCode::from(exit::NOT_FOUND));
            }
            other => bail!("unexpected answer: {other:?}"),
        },
        Command::Del { key } => expect_done(client.call(Request::Del { key: checked_key(key)? })?)?,
        Command::Keys { prefix, limit } => {
            let (mut cursor, mut shown) = (0, 0u64);
            loop {
                let request = Request::Scan { cursor, prefix: prefix.clone().into_bytes(), count: 1000 };
                let Response::Keys { keys, cursor: next } = client.call(request)? else { bail!("unexpected answer") };
                for k in keys {
                    if limit.is_some_and(|l| shown >= l) {
                        return Ok(ExitCode::SUCCESS);
                    }
                    crate::out::write_all(&k)?;
                    crate::out::write_all(b"\n")?;
                    shown += 1;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Command::Exists { key } => match client.call(Request::Exists { key: checked_key(key.clone())? })? {
            Response::Exists(true) => outln!("{key} exists")?,
            Response::Exists(false) => {
                eprintln!("chctl: no such key: {key}");
                return Ok(ExitCode::from(exit::NOT_FOUND));
            }
            other => bail!("unexpected answer: {other:?}"),
        },
        Command::Status { json, check } => {
            let Response::Status(s) = client.call(Request::Status)? else { bail!("unexpected answer") };
            if check {
                let states: Vec<(u32, NodeState)> = s.nodes.iter().map(|n| (n.id, n.state)).collect();
                outln!("{}", health(&states).map_err(|why| exit::fail(exit::UNAVAILABLE, why))?)?;
            } else if json {
                outln!("{}", serde_json::to_string_pretty(&status_json(&s))?)?;
            } else {
                print_status(&s)?;
            }
        }
        Command::Ring { json, plan: Some(plan) } => {
            let change = parse_change(&plan)?;
            let Response::Plan(p) = client.call(Request::Plan { change })? else { bail!("unexpected answer") };
            if json {
                outln!("{}", serde_json::to_string_pretty(&p)?)?;
            } else {
                print_plan(&p)?;
            }
        }
        Command::Ring { json, plan: None } => {
            let Response::Ring(r) = client.call(Request::Ring)? else { bail!("unexpected answer") };
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                outln!("{} partitions, {} replicas of each key", r.partitions, r.replicas)?;
                outln!("{:>6} {:>11} {:>10}", "NODE", "PARTITIONS", "KEYSPACE")?;
                for n in &r.nodes {
                    outln!("{:>6} {:>11} {:>9.2}%", n.id, n.partitions, n.share * 100.0)?;
                }
            }
        }
        Command::Node(NodeCommand::Restart { id }) => {
            expect_done(client.call(Request::NodeRestart { id })?)?;
            outln!("node {id}: restart requested")?;
        }
        Command::Node(NodeCommand::Rebuild { id }) => {
            expect_done(client.call(Request::NodeRebuild { id })?)?;
            crate::progress::follow(&mut client, id)?;
        }
        Command::Node(NodeCommand::Add { count }) => change(&mut client, Request::NodeAdd { count })?,
        Command::Node(NodeCommand::Remove { id }) => change(&mut client, Request::NodeRemove { id })?,
        Command::Node(NodeCommand::Replace { id }) => change(&mut client, Request::NodeReplace { id })?,
        Command::Repair { json } => {
            let Response::Repair(r) = client.call(Request::Repair)? else { bail!("unexpected answer") };
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                outln!(
                    "checked {} partitions: {} differed; copied {} records ({} bytes)",
                    r.partitions_checked,
                    r.partitions_differing,
                    r.keys_repaired,
                    r.bytes_repaired
                )?;
                if !r.unreachable_nodes.is_empty() {
                    outln!("not checked (nodes not up): {:?}", r.unreachable_nodes)?;
                }
            }
        }
        Command::Bench(_) | Command::Completions { .. } | Command::Man { .. } => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A key chd would refuse for its size is refused here, before anything is sent.
fn checked_key(key: String) -> anyhow::Result<Vec<u8>> {
    if key.len() > MAX_KEY {
        return Err(exit::fail(exit::REFUSED, format!("key is {} bytes; the limit is {MAX_KEY}", key.len())));
    }
    Ok(key.into_bytes())
}

fn checked_value(value: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    if value.len() > MAX_VALUE {
        return Err(exit::fail(exit::REFUSED, format!("value is {} bytes; the limit is {MAX_VALUE}", value.len())));
    }
    Ok(value)
}

/// The value from `input` (stdin for "-"): reads at most one byte past the limit, so a huge
/// input is refused without being buffered.
fn read_value(input: impl Read) -> anyhow::Result<Vec<u8>> {
    let mut v = Vec::new();
    input.take(MAX_VALUE as u64 + 1).read_to_end(&mut v).context("cannot read the value from stdin")?;
    if v.len() > MAX_VALUE {
        return Err(exit::fail(
            exit::REFUSED,
            format!("value is more than {MAX_VALUE} bytes; the limit is {MAX_VALUE}"),
        ));
    }
    Ok(v)
}

/// `status --check`: one line, and whether every node is up.
fn health(nodes: &[(u32, NodeState)]) -> Result<String, String> {
    let not_up: Vec<String> = nodes
        .iter()
        .filter(|(_, s)| *s != NodeState::Up)
        .map(|(id, s)| format!("node {id} is {}", s.as_str()))
        .collect();
    if not_up.is_empty() {
        Ok(format!("chd: all {} nodes up", nodes.len()))
    } else {
        Err(format!("{} of {} nodes not up: {}", not_up.len(), nodes.len(), not_up.join(", ")))
    }
}

/// Connects; any failure short of chd's own answer means chd cannot be reached.
pub fn connect(socket: &Path) -> anyhow::Result<Client> {
    Client::connect(socket).map_err(|e| {
        if e.chain().any(|c| c.is::<CallError>()) {
            e
        } else {
            exit::fail(exit::UNREACHABLE, format!("{e:#}"))
        }
    })
}

fn change(client: &mut Client, request: Request) -> anyhow::Result<()> {
    let Response::Changing { what, added } = client.call(request)? else { bail!("unexpected answer") };
    if !added.is_empty() {
        outln!("new nodes: {added:?}")?;
    }
    crate::progress::follow_migration(client, &what)
}

fn parse_change(words: &[String]) -> anyhow::Result<Change> {
    let arg = |what: &str| -> anyhow::Result<u32> {
        let w = words.get(1).ok_or_else(|| exit::fail(exit::USAGE, format!("--plan {what} needs a node id")))?;
        w.parse().map_err(|_| exit::fail(exit::USAGE, format!("{w:?} is not a node id")))
    };
    match words[0].as_str() {
        "add" => Ok(Change::Add {
            count: words
                .get(1)
                .map_or(Ok(1), |c| c.parse())
                .map_err(|_| exit::fail(exit::USAGE, "--plan add takes a count of nodes"))?,
        }),
        "remove" => Ok(Change::Remove { id: arg("remove")? }),
        "replace" => Ok(Change::Replace { id: arg("replace")? }),
        other => Err(exit::fail(exit::USAGE, format!("--plan takes add, remove or replace, not {other:?}"))),
    }
}

fn print_plan(p: &PlanReport) -> anyhow::Result<()> {
    outln!("{}: {} of {} partitions move", p.what, p.partitions_moving, p.partitions)?;
    outln!(
        "{:>5} {:>9} {:>9} {:>12} {:>10} {:>12} {:>10}",
        "NODE",
        "SHARE",
        "AFTER",
        "SEND",
        "SEND",
        "RECEIVE",
        "RECEIVE"
    )?;
    for n in &p.nodes {
        outln!(
            "{:>5} {:>8.2}% {:>8.2}% {:>8} rec {:>10} {:>8} rec {:>10}",
            n.id,
            n.share_before * 100.0,
            n.share_after * 100.0,
            n.send_records,
            human_bytes(n.send_bytes),
            n.receive_records,
            human_bytes(n.receive_bytes)
        )?;
    }
    Ok(())
}

fn expect_done(r: Response) -> anyhow::Result<()> {
    match r {
        Response::Done => Ok(()),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// `status --json`: the report as is, with each node's state as a plain string.
fn status_json(s: &StatusReport) -> serde_json::Value {
    serde_json::to_value(s).expect("status serializes")
}

fn print_status(s: &StatusReport) -> anyhow::Result<()> {
    outln!("chd {} (pid {}), up {}s", s.version, s.pid, s.uptime_ms / 1000)?;
    outln!("data dir {}  socket {}", s.data_dir, s.socket)?;
    outln!("{} partitions, {} replicas, writes acknowledged by {}", s.partitions, s.replicas, s.write_quorum)?;
    if let Some(m) = s.migration.as_ref().filter(|m| !m.finished) {
        outln!("{}: {}/{} partitions moved, {} records", m.what, m.partitions_done, m.partitions_total, m.keys)?;
    }
    outln!()?;
    outln!("{:>5} {:>12} {:>8} {:>9} {:>10} {:>10}  PROGRESS", "NODE", "STATE", "PID", "RESTARTS", "KEYS", "DISK")?;
    for n in &s.nodes {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let progress = n.progress.as_ref().map_or(String::new(), |p| {
            format!("{} {}/{} partitions, {} keys", p.what, p.partitions_done, p.partitions_total, p.keys)
        });
        outln!(
            "{:>5} {:>12} {:>8} {:>9} {:>10} {:>10}  {}",
            n.id,
            n.state.as_str(),
            n.pid.map_or("-".into(), |p| p.to_string()),
            n.restarts,
            opt(n.keys),
            n.bytes.map_or("-".into(), human_bytes),
            progress
        )?;
    }
    Ok(())
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_over_the_limits_are_refused_before_sending() {
        assert!(checked_key("k".repeat(MAX_KEY)).is_ok());
        let e = checked_key("k".repeat(MAX_KEY + 1)).unwrap_err();
        assert_eq!(e.to_string(), format!("key is {} bytes; the limit is {MAX_KEY}", MAX_KEY + 1));
        assert_eq!(exit::code_of(&e), Some(exit::REFUSED));
        assert_eq!(read_value(&vec![7u8; MAX_VALUE][..]).unwrap().len(), MAX_VALUE);
        let e = read_value(std::io::repeat(7)).unwrap_err();
        assert_eq!(e.to_string(), "value is more than 33554432 bytes; the limit is 33554432");
        let e = checked_value(vec![0; MAX_VALUE + 1]).unwrap_err();
        assert_eq!(e.to_string(), "value is 33554433 bytes; the limit is 33554432");
    }

    #[test]
    fn health_is_ok_only_when_every_node_is_up() {
        assert_eq!(health(&[(1, NodeState::Up), (2, NodeState::Up)]), Ok("chd: all 2 nodes up".into()));
        assert_eq!(
            health(&[(1, NodeState::Up), (2, NodeState::Failed), (3, NodeState::Starting)]),
            Err("2 of 3 nodes not up: node 2 is failed, node 3 is starting".into())
        );
    }
}
