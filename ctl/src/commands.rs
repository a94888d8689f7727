//! One function per chctl command.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use chd_data::proto::{
    Change, NodeState, PlanReport, QuarantineEntry, QuarantineReport, Request, Response, RingReport, StatsReport,
    StatusReport, MAX_KEY, MAX_VALUE,
};

use crate::connect::connect;
use crate::exit;
use crate::human::{count, human_age, human_bytes, key_text};
use crate::{Command, NodeCommand, PlanKind, QuarantineCommand};
use chd_client::Client;

pub fn run(socket: &Path, command: Command, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        Command::Bench(args) => return crate::bench::run(socket, args, json).map(|()| ExitCode::SUCCESS),
        // Generated from the clap definition; no chd needed.
        Command::Completions { shell } => return crate::gen::completions(shell).map(|()| ExitCode::SUCCESS),
        Command::Man { out } => return crate::gen::man_pages(&out).map(|()| ExitCode::SUCCESS),
        _ => {}
    }
    // Arguments are checked before connecting: a usage error is one whether or not chd runs.
    let plan = match &command {
        Command::Ring { plan: Some(kind), id, count } => Some(plan_change(*kind, *id, *count)?),
        Command::Ring { plan: None, id, count } if id.is_some() || count.is_some() => {
            return Err(exit::fail(exit::USAGE, "a node id or --count goes with --plan add|remove|replace"));
        }
        _ => None,
    };
    let mut client = connect(socket)?;
    match command {
        Command::Set { key, value, value_file } => {
            let hex = key.hex;
            let key = key_bytes(&key)?;
            let value = match (value_file, value) {
                (Some(path), _) if path.as_os_str() == "-" => read_value(std::io::stdin().lock(), "stdin")?,
                (Some(path), _) => {
                    let f = std::fs::File::open(&path).map_err(|e| {
                        exit::fail(exit::OTHER, format!("cannot open {}: {}", path.display(), io_text(&e)))
                    })?;
                    read_value(f, &path.display().to_string())?
                }
                (None, Some(v)) if v == "-" => read_value(std::io::stdin().lock(), "stdin")?,
                (None, Some(v)) if hex => checked_value(parse_hex(&v, "VALUE")?)?,
                (None, Some(v)) => checked_value(v.into_bytes())?,
                (None, None) => return Err(exit::fail(exit::USAGE, "set needs VALUE or --value-file PATH")),
            };
            let len = value.len();
            expect_done(client.call(Request::Set { key: key.clone(), value })?)?;
            if json {
                let mut o = bytes_field("key", &key, hex);
                o.insert("bytes".into(), len.into());
                outln!("{}", serde_json::Value::Object(o))?;
            }
        }
        Command::Get { key } => {
            let hex = key.hex;
            let key = key_bytes(&key)?;
            match client.call(Request::Get { key: key.clone() })? {
                Response::Value(Some(v)) if json => {
                    let mut o = bytes_field("key", &key, hex);
                    o.extend(bytes_field("value", &v, hex));
                    outln!("{}", serde_json::Value::Object(o))?;
                }
                Response::Value(Some(v)) if hex => outln!("{}", to_hex(&v))?,
                Response::Value(Some(v)) => {
                    crate::out::write_all(&v)?;
                    // On a terminal, end the line so the prompt does not stick to the value; a
                    // pipe or a file gets the bytes exactly.
                    if std::io::stdout().is_terminal() && !v.ends_with(b"\n") {
                        crate::out::write_all(b"\n")?;
                    }
                }
                Response::Value(None) => return not_found(&key, hex, json),
                other => bail!("unexpected answer: {other:?}"),
            }
        }
        Command::Del { key } => {
            let hex = key.hex;
            let key = key_bytes(&key)?;
            expect_done(client.call(Request::Del { key: key.clone() })?)?;
            if json {
                let mut o = bytes_field("key", &key, hex);
                o.insert("deleted".into(), true.into());
                outln!("{}", serde_json::Value::Object(o))?;
            }
        }
        Command::Keys { prefix, limit, hex } => {
            let prefix = if hex { parse_hex(&prefix, "--prefix")? } else { prefix.into_bytes() };
            let (mut cursor, mut shown) = (0, 0u64);
            loop {
                let request = Request::Scan { cursor, prefix: prefix.clone(), count: 1000 };
                let Response::Keys { keys, cursor: next } = client.call(request)? else { bail!("unexpected answer") };
                for k in keys {
                    if limit.is_some_and(|l| shown >= l) {
                        return Ok(ExitCode::SUCCESS);
                    }
                    if json {
                        outln!("{}", serde_json::Value::Object(bytes_field("key", &k, hex)))?;
                    } else if hex {
                        outln!("{}", to_hex(&k))?;
                    } else if std::io::stdout().is_terminal() {
                        outln!("{}", key_text(&k))?;
                    } else {
                        crate::out::write_all(&k)?;
                        crate::out::write_all(b"\n")?;
                    }
                    shown += 1;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Command::Exists { key } => {
            let hex = key.hex;
            let key = key_bytes(&key)?;
            match client.call(Request::Exists { key: key.clone() })? {
                Response::Exists(true) if json => {
                    let mut o = bytes_field("key", &key, hex);
                    o.insert("exists".into(), true.into());
                    outln!("{}", serde_json::Value::Object(o))?;
                }
                Response::Exists(true) => outln!("{} exists", shown_key(&key, hex))?,
                Response::Exists(false) => return not_found(&key, hex, json),
                other => bail!("unexpected answer: {other:?}"),
            }
        }
        Command::Status { check } => {
            let Response::Status(s) = client.call(Request::Status)? else { bail!("unexpected answer") };
            let states: Vec<(u32, NodeState)> = s.nodes.iter().map(|n| (n.id, n.state)).collect();
            if check {
                let verdict = health(&states);
                if json {
                    let (healthy, message) = match &verdict {
                        Ok(m) => (true, m),
                        Err(m) => (false, m),
                    };
                    outln!("{}", serde_json::json!({ "healthy": healthy, "message": message }))?;
                }
                let line = verdict.map_err(|why| exit::fail(exit::UNAVAILABLE, why))?;
                if !json {
                    outln!("{line}")?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            if json {
                outln!("{}", serde_json::to_string_pretty(&status_json(&s))?)?;
            } else {
                print_status(&s)?;
            }
            failed_nodes(&states)?;
        }
        Command::Ring { .. } if plan.is_some() => {
            let change = plan.expect("checked");
            let Response::Plan(p) = client.call(Request::Plan { change })? else { bail!("unexpected answer") };
            if json {
                outln!("{}", serde_json::to_string_pretty(&p)?)?;
            } else {
                print_plan(&p)?;
            }
        }
        Command::Ring { .. } => {
            let Response::Ring(r) = client.call(Request::Ring)? else { bail!("unexpected answer") };
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                print_ring(&r)?;
            }
        }
        Command::Node(NodeCommand::Restart { id }) => {
            expect_done(client.call(Request::NodeRestart { id })?)?;
            if json {
                outln!("{}", serde_json::json!({ "node": id, "restart": "requested" }))?;
            } else {
                outln!("node {id}: restart requested")?;
            }
        }
        Command::Node(NodeCommand::Rebuild { id, engine }) => {
            expect_done(client.call(Request::NodeRebuild { id, engine })?)?;
            let p = crate::progress::follow(&mut client, id)?;
            if json {
                let mut o = crate::progress::summary_json(&p);
                o["node"] = id.into();
                o["rebuilt"] = true.into();
                outln!("{o}")?;
            } else {
                crate::progress::summary(&format!("node {id} rebuilt"), &p)?;
            }
        }
        Command::Node(NodeCommand::Add { count }) => change(&mut client, Request::NodeAdd { count }, json)?,
        Command::Node(NodeCommand::Remove { id }) => change(&mut client, Request::NodeRemove { id }, json)?,
        Command::Node(NodeCommand::Replace { id }) => change(&mut client, Request::NodeReplace { id }, json)?,
        Command::Stats => {
            let Response::Stats(r) = client.call(Request::Stats)? else { bail!("unexpected answer") };
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                print_stats(&r)?;
            }
        }
        Command::Repair => {
            let Response::Repair(r) = client.call(Request::Repair)? else { bail!("unexpected answer") };
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                outln!(
                    "checked {}: {} differed; copied {} ({} bytes)",
                    count(r.partitions_checked, "partition"),
                    r.partitions_differing,
                    count(r.keys_repaired, "record"),
                    r.bytes_repaired
                )?;
                if !r.unreachable_nodes.is_empty() {
                    outln!("not checked (nodes not up): {}", id_list(&r.unreachable_nodes))?;
                }
            }
            // A repair that could not reach every replica is incomplete: a script must know.
            let Response::Status(s) = client.call(Request::Status)? else { bail!("unexpected answer") };
            failed_nodes(&s.nodes.iter().map(|n| (n.id, n.state)).collect::<Vec<_>>())?;
            if !r.unreachable_nodes.is_empty() {
                return Err(exit::fail(
                    exit::UNAVAILABLE,
                    format!(
                        "repair incomplete: nodes {} were not up; run it again once they are",
                        id_list(&r.unreachable_nodes)
                    ),
                ));
            }
        }
        Command::Dump { prefix, format } => crate::dump::dump(&mut client, prefix.as_bytes(), format)?,
        Command::Restore { file, force } => {
            let done = match file.filter(|f| f.as_os_str() != "-") {
                Some(f) => {
                    let input = std::fs::File::open(&f)
                        .map_err(|e| exit::fail(exit::OTHER, format!("cannot open {}: {e}", f.display())))?;
                    crate::dump::restore(&mut client, std::io::BufReader::with_capacity(1 << 20, input), force)?
                }
                None => crate::dump::restore(&mut client, std::io::stdin().lock(), force)?,
            };
            outln!("restored {}", count(done.written, "key"))?;
            if done.kept > 0 {
                let names: Vec<String> = done.kept_examples.iter().map(|k| key_text(k)).collect();
                outln!(
                    "kept {} that {} a value in chd now (newer than the dump), such as {}; --force overwrites them",
                    count(done.kept, "key"),
                    if done.kept == 1 { "has" } else { "have" },
                    names.join(", ")
                )?;
            }
        }
        Command::Quarantine(q) => {
            let (request, json) = match q {
                QuarantineCommand::List => (Request::QuarantineList, json),
                QuarantineCommand::Purge { older_than } => {
                    (Request::QuarantinePurge { older_than_secs: older_than.as_secs() }, json)
                }
            };
            let purge = matches!(request, Request::QuarantinePurge { .. });
            let Response::Quarantine(r) = client.call(request)? else { bail!("unexpected answer") };
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                print_quarantine(&r, purge)?;
            }
        }
        Command::Bench(_) | Command::Completions { .. } | Command::Man { .. } => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit 5 with what to do when a node is failed: it stays so until an operator acts.
fn failed_nodes(nodes: &[(u32, NodeState)]) -> anyhow::Result<()> {
    let failed: Vec<u32> = nodes.iter().filter(|(_, s)| *s == NodeState::Failed).map(|(id, _)| *id).collect();
    match failed.first() {
        None => Ok(()),
        Some(&f) => {
            let is = if failed.len() == 1 { "is" } else { "are" };
            Err(exit::fail(
                exit::UNAVAILABLE,
                format!(
                    "node {} {is} failed and will not come back by itself: `chctl node restart {f}`, or `chctl node rebuild {f}` if its data is lost, or `chctl node replace {f}`",
                    id_list(&failed)
                ),
            ))
        }
    }
}

fn id_list(ids: &[u32]) -> String {
    ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

fn not_found(key: &[u8], hex: bool, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let mut o = bytes_field("key", key, hex);
        o.insert("found".into(), false.into());
        outln!("{}", serde_json::Value::Object(o))?;
    }
    eprintln!("chctl: no such key: {}", shown_key(key, hex));
    Ok(ExitCode::from(exit::NOT_FOUND))
}

/// KEY from the command line: hex digits with --hex, else its UTF-8 bytes.
fn key_bytes(k: &crate::KeyArgs) -> anyhow::Result<Vec<u8>> {
    let bytes = if k.hex { parse_hex(&k.key, "KEY")? } else { k.key.clone().into_bytes() };
    checked_key(bytes)
}

/// A key for a message: as given (hex with --hex), lossy UTF-8 otherwise.
fn shown_key(key: &[u8], hex: bool) -> String {
    if hex {
        to_hex(key)
    } else {
        String::from_utf8_lossy(key).into_owned()
    }
}

/// `{name: text}` for UTF-8 bytes, `{name_hex: digits}` otherwise (always with --hex): JSON
/// strings cannot hold arbitrary bytes, and a script must not have to guess the encoding.
fn bytes_field(name: &str, bytes: &[u8], hex: bool) -> serde_json::Map<String, serde_json::Value> {
    let mut o = serde_json::Map::new();
    match std::str::from_utf8(bytes) {
        Ok(s) if !hex => o.insert(name.into(), s.into()),
        _ => o.insert(format!("{name}_hex"), to_hex(bytes).into()),
    };
    o
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex digits (either case, an even number of them) as bytes; `what` names the argument.
pub fn parse_hex(text: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    let digits = text.as_bytes();
    if digits.len() % 2 != 0 {
        return Err(exit::fail(exit::USAGE, format!("{what}: {} hex digits; hex needs two per byte", digits.len())));
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok();
            s.and_then(|s| u8::from_str_radix(s, 16).ok())
                .ok_or_else(|| exit::fail(exit::USAGE, format!("{what}: {text:?} is not hex digits")))
        })
        .collect()
}

fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}

/// The change `ring --plan` shows. `--plan add N` (the old form) still means `--count N`.
fn plan_change(kind: PlanKind, id: Option<u32>, count: Option<u32>) -> anyhow::Result<Change> {
    let usage = |m: &str| exit::fail(exit::USAGE, m.to_string());
    match kind {
        PlanKind::Add => match (id, count) {
            (Some(_), Some(_)) => Err(usage("--plan add takes --count N, not a node id")),
            (_, Some(0)) | (Some(0), _) => Err(usage("--count must be at least 1")),
            (n, c) => Ok(Change::Add { count: c.or(n).unwrap_or(1) }),
        },
        PlanKind::Remove | PlanKind::Replace if count.is_some() => Err(usage("--count goes with --plan add")),
        PlanKind::Remove => {
            Ok(Change::Remove { id: id.ok_or_else(|| usage("--plan remove needs a node id: --plan remove ID"))? })
        }
        PlanKind::Replace => {
            Ok(Change::Replace { id: id.ok_or_else(|| usage("--plan replace needs a node id: --plan replace ID"))? })
        }
    }
}

/// A key chd would refuse for its size is refused here, before anything is sent.
fn checked_key(key: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    if key.len() > MAX_KEY {
        return Err(exit::fail(exit::REFUSED, format!("key is {} bytes; the limit is {MAX_KEY}", key.len())));
    }
    Ok(key)
}

fn checked_value(value: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    if value.len() > MAX_VALUE {
        return Err(exit::fail(exit::REFUSED, format!("value is {} bytes; the limit is {MAX_VALUE}", value.len())));
    }
    Ok(value)
}

/// The value from `input` (stdin or a file, named by `from`): reads at most one byte past the
/// limit, so a huge input is refused without being buffered.
fn read_value(input: impl Read, from: &str) -> anyhow::Result<Vec<u8>> {
    let mut v = Vec::new();
    input
        .take(MAX_VALUE as u64 + 1)
        .read_to_end(&mut v)
        .map_err(|e| exit::fail(exit::OTHER, format!("cannot read the value from {from}: {}", io_text(&e))))?;
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

fn change(client: &mut Client, request: Request, json: bool) -> anyhow::Result<()> {
    let Response::Changing { what, added } = client.call(request)? else { bail!("unexpected answer") };
    if !added.is_empty() && !json {
        outln!("new nodes: {}", id_list(&added))?;
    }
    let finished = crate::progress::follow_migration(client, &what)?;
    match (finished, json) {
        (crate::progress::Finished::Done(p), false) => crate::progress::summary(&format!("{what}: done"), &p)?,
        (crate::progress::Finished::ThenStarted(next), false) => outln!("{what}: done; then {next} started")?,
        (finished, true) => {
            let mut o = match finished {
                crate::progress::Finished::Done(p) => crate::progress::summary_json(&p),
                crate::progress::Finished::ThenStarted(next) => serde_json::json!({ "then_started": next }),
            };
            o["change"] = what.into();
            o["done"] = true.into();
            o["added"] = added.into();
            outln!("{o}")?;
        }
    }
    Ok(())
}

fn print_plan(p: &PlanReport) -> anyhow::Result<()> {
    // SHARE is of the keys a node holds a copy of, as in `chctl ring`; KEYS are records
    // (tombstones included), BYTES keys plus values.
    outln!("{}: {} of {} partitions move", p.what, p.partitions_moving, p.partitions)?;
    outln!(
        "{:>5} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "NODE",
        "SHARE_NOW",
        "SHARE_AFTER",
        "SEND_KEYS",
        "SEND_BYTES",
        "RECV_KEYS",
        "RECV_BYTES"
    )?;
    for n in &p.nodes {
        outln!(
            "{:>5} {:>11.2}% {:>11.2}% {:>10} {:>10} {:>10} {:>10}",
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

/// `chctl ring`: each node's share of the keys it holds a copy of. Every key is on R nodes, so
/// the shares add up to R x 100%; the footnote says so, rather than dividing by R, because
/// "this node holds 75% of the keys" is what an operator sizing a disk needs.
fn print_ring(r: &RingReport) -> anyhow::Result<()> {
    outln!("{} partitions, {} replicas of each key", r.partitions, r.replicas)?;
    outln!("{:>6} {:>11} {:>12}", "NODE", "PARTITIONS", "KEYS_HELD")?;
    for n in &r.nodes {
        outln!("{:>6} {:>11} {:>11.2}%", n.id, n.partitions, n.share * 100.0)?;
    }
    outln!(
        "KEYS_HELD: share of all keys that the node holds a copy of; each key is on {} nodes, so they add up to {}%.",
        r.replicas,
        u64::from(r.replicas) * 100
    )?;
    Ok(())
}

/// A latency percentile, which is the upper bound of a log2 bucket: "<=" says so.
fn micros_text(us: u64) -> String {
    match us {
        0 => "-".into(),
        1..1000 => format!("<={us}us"),
        1000..1_000_000 => format!("<={:.1}ms", us as f64 / 1e3),
        _ => format!("<={:.1}s", us as f64 / 1e6),
    }
}

fn print_stats(r: &StatsReport) -> anyhow::Result<()> {
    outln!("chd up {}; counted since it started", human_age(r.uptime_ms / 1000))?;
    outln!(
        "{:<5} {:<16} {:>10} {:>8}  {:<14} {:>10} {:>10} {:>10}",
        "API",
        "COMMAND",
        "REQUESTS",
        "ERRORS",
        "ERROR_KINDS",
        "P50",
        "P99",
        "P999"
    )?;
    for c in &r.requests {
        let errors: u64 = c.outcomes.iter().filter(|(o, _)| *o != "ok").map(|(_, n)| n).sum();
        let kinds: Vec<&str> = c.outcomes.keys().filter(|o| *o != "ok").map(String::as_str).collect();
        outln!(
            "{:<5} {:<16} {:>10} {:>8}  {:<14} {:>10} {:>10} {:>10}",
            c.api,
            c.command,
            c.latency_us.count,
            errors,
            kinds.join(","),
            micros_text(c.latency_us.p50),
            micros_text(c.latency_us.p99),
            micros_text(c.latency_us.p999)
        )?;
    }
    for a in &r.apis {
        outln!("{}: {} in, {} out", a.api, human_bytes(a.bytes_in), human_bytes(a.bytes_out))?;
    }
    let lookups = r.cache_hits + r.cache_misses;
    let rate = if lookups == 0 { 0.0 } else { 100.0 * r.cache_hits as f64 / lookups as f64 };
    outln!("value cache: {} hits, {} misses ({rate:.1}% hits)", r.cache_hits, r.cache_misses)?;
    outln!("repairs: {} ({} keys copied); rebuilds: {}", r.repairs, r.repaired_keys, r.rebuilds)?;
    outln!(
        "{:>4} {:>10} {:>10} {:>9} {:>12} {:>10} {:>10} {:>10}",
        "NODE",
        "KEYS",
        "BYTES",
        "BATCHES",
        "WRITES/BATCH",
        "SYNC_P50",
        "SYNC_P99",
        "SYNC_P999"
    )?;
    for n in &r.nodes {
        if !n.reachable {
            outln!("{:>4} {:>10}", n.id, "(no answer)")?;
            continue;
        }
        let b = &n.batch_size;
        let mean = if b.count == 0 { 0.0 } else { b.sum as f64 / b.count as f64 };
        outln!(
            "{:>4} {:>10} {:>10} {:>9} {:>12.1} {:>10} {:>10} {:>10}",
            n.id,
            n.keys.unwrap_or(0),
            human_bytes(n.bytes.unwrap_or(0)),
            b.count,
            mean,
            micros_text(n.sync_us.p50),
            micros_text(n.sync_us.p99),
            micros_text(n.sync_us.p999)
        )?;
    }
    outln!("BATCHES and SYNC_*: group commits since the node's worker last started.")?;
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
    if let Some(resp) = &s.resp_socket {
        outln!("RESP socket {resp}")?;
    }
    match s.memory_budget {
        0 => outln!("memory {} resident (no max_memory)", human_bytes(s.memory_used))?,
        budget => outln!(
            "memory {} of max_memory {} ({}%){}",
            human_bytes(s.memory_used),
            human_bytes(budget),
            s.memory_used.saturating_mul(100) / budget,
            if s.memory_used >= budget { ": new keys are refused" } else { "" }
        )?,
    }
    outln!("{} partitions, {} replicas, writes acknowledged by {}", s.partitions, s.replicas, s.write_quorum)?;
    if let Some(m) = s.migration.as_ref().filter(|m| !m.finished) {
        outln!("{}: {}/{} partitions moved, {} records", m.what, m.partitions_done, m.partitions_total, m.keys)?;
    }
    outln!()?;
    outln!(
        "{:>5} {:>12} {:>8} {:>9} {:>10} {:>10} {:>10} {:>7}  PROGRESS",
        "NODE",
        "STATE",
        "PID",
        "RESTARTS",
        "KEYS",
        "DISK",
        "MEMORY",
        "ENGINE"
    )?;
    for n in &s.nodes {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let progress = n.progress.as_ref().map_or(String::new(), |p| {
            format!("{} {}/{} partitions, {} keys", p.what, p.partitions_done, p.partitions_total, p.keys)
        });
        outln!(
            "{:>5} {:>12} {:>8} {:>9} {:>10} {:>10} {:>10} {:>7}  {}",
            n.id,
            n.state.as_str(),
            n.pid.map_or("-".into(), |p| p.to_string()),
            n.restarts,
            opt(n.keys),
            n.bytes.map_or("-".into(), human_bytes),
            n.memory.map_or("-".into(), human_bytes),
            n.engine.map_or("-", |e| e.as_str()),
            progress
        )?;
    }
    Ok(())
}

fn print_quarantine(r: &QuarantineReport, purge: bool) -> anyhow::Result<()> {
    let line = |e: &QuarantineEntry, verdict: &str| {
        outln!("{:<28} {:>10} {:>8}  {verdict}", e.name, human_bytes(e.bytes), human_age(e.age_secs))
    };
    if purge {
        let freed: u64 = r.purged.iter().map(|e| e.bytes).sum();
        outln!("deleted {} from {} ({} freed)", r.purged.len(), r.dir, human_bytes(freed))?;
        for e in &r.purged {
            line(e, "deleted")?;
        }
        for e in &r.entries {
            line(e, &format!("kept: {}", e.unsafe_because.as_deref().unwrap_or("younger than --older-than")))?;
        }
        return Ok(());
    }
    if r.entries.is_empty() {
        return Ok(outln!("{} is empty", r.dir)?);
    }
    outln!("{:<28} {:>10} {:>8}  SAFE TO DELETE", "NAME", "SIZE", "AGE")?;
    for e in &r.entries {
        line(
            e,
            &e.unsafe_because.as_ref().map_or("yes (its node is rebuilt and up)".into(), |why| format!("no: {why}")),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_over_the_limits_are_refused_before_sending() {
        assert!(checked_key(vec![b'k'; MAX_KEY]).is_ok());
        let e = checked_key(vec![b'k'; MAX_KEY + 1]).unwrap_err();
        assert_eq!(e.to_string(), format!("key is {} bytes; the limit is {MAX_KEY}", MAX_KEY + 1));
        assert_eq!(exit::code_of(&e), Some(exit::REFUSED));
        assert_eq!(read_value(&vec![7u8; MAX_VALUE][..], "stdin").unwrap().len(), MAX_VALUE);
        let e = read_value(std::io::repeat(7), "stdin").unwrap_err();
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

    #[test]
    fn hex_round_trips_and_bad_digits_are_usage_errors() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(parse_hex(&to_hex(&all), "KEY").unwrap(), all);
        assert_eq!(parse_hex("00FFa0", "KEY").unwrap(), [0, 255, 160]);
        for bad in ["0", "zz", "0g", "é1"] {
            let e = parse_hex(bad, "KEY").unwrap_err();
            assert_eq!(exit::code_of(&e), Some(exit::USAGE), "{bad}: {e}");
            assert!(e.to_string().starts_with("KEY: "), "{e}");
        }
    }

    #[test]
    fn json_fields_carry_any_bytes() {
        assert_eq!(serde_json::Value::Object(bytes_field("key", b"a b", false)), serde_json::json!({"key": "a b"}));
        assert_eq!(
            serde_json::Value::Object(bytes_field("key", b"a b", true)),
            serde_json::json!({"key_hex": "612062"})
        );
        assert_eq!(
            serde_json::Value::Object(bytes_field("value", &[0xff, 0], false)),
            serde_json::json!({"value_hex": "ff00"})
        );
    }

    #[test]
    fn ring_plan_has_one_grammar_with_node_add() {
        assert_eq!(plan_change(PlanKind::Add, None, None).unwrap(), Change::Add { count: 1 });
        assert_eq!(plan_change(PlanKind::Add, None, Some(3)).unwrap(), Change::Add { count: 3 });
        // The old `--plan add 3` still works.
        assert_eq!(plan_change(PlanKind::Add, Some(3), None).unwrap(), Change::Add { count: 3 });
        assert_eq!(plan_change(PlanKind::Remove, Some(2), None).unwrap(), Change::Remove { id: 2 });
        assert_eq!(plan_change(PlanKind::Replace, Some(2), None).unwrap(), Change::Replace { id: 2 });
        for (kind, id, count) in [
            (PlanKind::Remove, None, None),
            (PlanKind::Remove, Some(1), Some(1)),
            (PlanKind::Add, Some(1), Some(1)),
            (PlanKind::Add, None, Some(0)),
        ] {
            let e = plan_change(kind, id, count).unwrap_err();
            assert_eq!(exit::code_of(&e), Some(exit::USAGE), "{e}");
        }
    }

    #[test]
    fn a_failed_node_fails_status_with_what_to_do() {
        assert!(failed_nodes(&[(0, NodeState::Up), (1, NodeState::CatchingUp)]).is_ok());
        let e = failed_nodes(&[(0, NodeState::Up), (2, NodeState::Failed)]).unwrap_err();
        assert_eq!(exit::code_of(&e), Some(exit::UNAVAILABLE));
        assert!(e.to_string().contains("chctl node restart 2"), "{e}");
    }
}
