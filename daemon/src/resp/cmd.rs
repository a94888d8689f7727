//! The command table and every command's behaviour, with Redis's reply types and error texts.
//!
//! [`COMMANDS`] is the one source of each command's arity, flags and key positions (as in
//! Redis's `server.c`): arity and unknown-command errors, `COMMAND INFO/DOCS` and which keys a
//! command locks all come from it. A command that touches keys runs with every one of its
//! keys' locks held (taken by the connection before the command starts, in arrival order), so a
//! read-modify-write such as INCR or SET NX is atomic per key, MSETNX across its keys, and
//! pipelined commands of one connection apply in the order they were sent.

use std::sync::Arc;

use chd_data::proto::{NodeState, MAX_KEY, MAX_VALUE};
use chd_data::Error;
use tokio::task::JoinSet;

use super::parse::parse_int;
use super::reply::{format_double, Reply};
use super::{glob, stats};
use crate::scan;
use crate::service::Server;

/// The Redis version whose behaviour chd follows, reported where clients look for one.
pub const REDIS_VERSION: &str = "7.0.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Changes or reads the connection's own state; run in order by the connection.
    Conn,
    /// Reads or writes the keys at its key positions.
    Key,
    /// Lists keys: runs after every earlier command of the connection completed.
    Keyspace,
    /// Answers about the server; no key.
    Server,
}

pub struct Spec {
    pub name: &'static str,
    /// Redis's convention: N exactly N arguments (with the name), -N at least N.
    pub arity: i32,
    pub flags: &'static [&'static str],
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
    pub group: &'static str,
    pub summary: &'static str,
    pub kind: Kind,
}

const fn spec(
    name: &'static str,
    arity: i32,
    flags: &'static [&'static str],
    keys: (i32, i32, i32),
    group: &'static str,
    summary: &'static str,
    kind: Kind,
) -> Spec {
    Spec { name, arity, flags, first_key: keys.0, last_key: keys.1, step: keys.2, group, summary, kind }
}

const W: &[&str] = &["write", "denyoom"];
const R: &[&str] = &["readonly", "fast"];
const F: &[&str] = &["fast"];
const NO: (i32, i32, i32) = (0, 0, 0);
const ONE: (i32, i32, i32) = (1, 1, 1);
const ALL: (i32, i32, i32) = (1, -1, 1);

pub static COMMANDS: &[Spec] = &[
    spec("get", 2, R, ONE, "string", "Returns the string value of a key.", Kind::Key),
    spec("set", -3, W, ONE, "string", "Sets the string value of a key (NX, XX, GET; no expiry).", Kind::Key),
    spec("setnx", 3, W, ONE, "string", "Set the string value of a key only when the key doesn't exist.", Kind::Key),
    spec(
        "getset",
        3,
        W,
        ONE,
        "string",
        "Returns the previous string value of a key after setting it to a new value.",
        Kind::Key,
    ),
    spec(
        "getdel",
        2,
        &["write", "fast"],
        ONE,
        "string",
        "Returns the string value of a key after deleting the key.",
        Kind::Key,
    ),
    spec("mget", -2, R, ALL, "string", "Atomically returns the string values of one or more keys.", Kind::Key),
    spec(
        "mset",
        -3,
        W,
        (1, -1, 2),
        "string",
        "Sets the string values of multiple keys (not atomic across keys in chd).",
        Kind::Key,
    ),
    spec("msetnx", -3, W, (1, -1, 2), "string", "Sets multiple keys only when none of them exist; atomic.", Kind::Key),
    spec("del", -2, &["write"], ALL, "generic", "Deletes one or more keys.", Kind::Key),
    spec("unlink", -2, &["write", "fast"], ALL, "generic", "Deletes one or more keys.", Kind::Key),
    spec("exists", -2, R, ALL, "generic", "Determines whether one or more keys exist.", Kind::Key),
    spec("strlen", 2, R, ONE, "string", "Returns the length of a string value.", Kind::Key),
    spec(
        "append",
        3,
        W,
        ONE,
        "string",
        "Appends a string to the value of a key. Creates the key if it doesn't exist.",
        Kind::Key,
    ),
    spec("incr", 2, W, ONE, "string", "Increments the integer value of a key by one.", Kind::Key),
    spec("incrby", 3, W, ONE, "string", "Increments the integer value of a key by a number.", Kind::Key),
    spec("decr", 2, W, ONE, "string", "Decrements the integer value of a key by one.", Kind::Key),
    spec("decrby", 3, W, ONE, "string", "Decrements a number from the integer value of a key.", Kind::Key),
    spec("incrbyfloat", 3, W, ONE, "string", "Increment the floating point value of a key by a number.", Kind::Key),
    spec("getrange", 4, &["readonly"], ONE, "string", "Returns a substring of the string stored at a key.", Kind::Key),
    spec("setrange", 4, W, ONE, "string", "Overwrites a part of a string value with another by an offset.", Kind::Key),
    spec("type", 2, R, ONE, "generic", "Determines the type of value stored at a key.", Kind::Key),
    spec("ttl", 2, R, ONE, "generic", "Returns the expiration time in seconds of a key (always -1 or -2).", Kind::Key),
    spec(
        "pttl",
        2,
        R,
        ONE,
        "generic",
        "Returns the expiration time in milliseconds of a key (always -1 or -2).",
        Kind::Key,
    ),
    spec("scan", -2, &["readonly"], NO, "generic", "Iterates over the key names in the database.", Kind::Keyspace),
    spec("keys", 2, &["readonly"], NO, "generic", "Returns all key names that match a pattern.", Kind::Keyspace),
    spec(
        "dbsize",
        1,
        &["readonly", "fast"],
        NO,
        "server",
        "Returns the number of keys in the database.",
        Kind::Keyspace,
    ),
    spec("randomkey", 1, &["readonly"], NO, "generic", "Returns a random key name from the database.", Kind::Keyspace),
    spec("ping", -1, F, NO, "connection", "Returns the server's liveliness response.", Kind::Server),
    spec("echo", 2, F, NO, "connection", "Returns the given string.", Kind::Server),
    spec("quit", -1, &["fast", "no-auth"], NO, "connection", "Closes the connection.", Kind::Conn),
    spec(
        "hello",
        -1,
        &["fast", "no-auth"],
        NO,
        "connection",
        "Handshakes with the server (RESP2 or RESP3).",
        Kind::Conn,
    ),
    spec("auth", -2, &["fast", "no-auth"], NO, "connection", "Authenticates the connection.", Kind::Conn),
    spec("select", 2, F, NO, "connection", "Changes the selected database (only 0 exists).", Kind::Conn),
    spec("client", -2, &[], NO, "connection", "CLIENT SETNAME, GETNAME, ID, SETINFO, LIST, INFO.", Kind::Conn),
    spec("command", -1, &[], NO, "server", "Returns detailed information about all commands.", Kind::Server),
    spec("config", -2, &[], NO, "server", "CONFIG GET: chd's settings (read-only).", Kind::Server),
    spec("info", -1, &[], NO, "server", "Returns information and statistics about the server.", Kind::Keyspace),
    spec("time", 1, F, NO, "server", "Returns the server time.", Kind::Server),
    spec(
        "lastsave",
        1,
        F,
        NO,
        "server",
        "Returns the time of the last save: every write is saved before its reply.",
        Kind::Server,
    ),
    spec(
        "shutdown",
        -1,
        &["admin"],
        NO,
        "server",
        "Stops chd gracefully (same permission as its main socket).",
        Kind::Keyspace,
    ),
];

/// Commands of Redis that chd refuses with one message saying what it supports.
const REFUSED: &[&str] = &[
    "rename",
    "renamenx",
    "copy",
    "move",
    "multi",
    "exec",
    "discard",
    "watch",
    "unwatch",
    "subscribe",
    "psubscribe",
    "ssubscribe",
    "unsubscribe",
    "punsubscribe",
    "sunsubscribe",
    "publish",
    "spublish",
    "pubsub",
    "lpush",
    "rpush",
    "lpop",
    "rpop",
    "lrange",
    "llen",
    "lindex",
    "lset",
    "lrem",
    "ltrim",
    "linsert",
    "lpos",
    "blpop",
    "brpop",
    "lmove",
    "blmove",
    "rpoplpush",
    "lpushx",
    "rpushx",
    "hset",
    "hget",
    "hmset",
    "hmget",
    "hgetall",
    "hdel",
    "hlen",
    "hexists",
    "hincrby",
    "hincrbyfloat",
    "hkeys",
    "hvals",
    "hsetnx",
    "hscan",
    "hstrlen",
    "hrandfield",
    "sadd",
    "srem",
    "smembers",
    "sismember",
    "smismember",
    "scard",
    "spop",
    "srandmember",
    "sinter",
    "sunion",
    "sdiff",
    "sinterstore",
    "sunionstore",
    "sdiffstore",
    "smove",
    "sscan",
    "zadd",
    "zrem",
    "zrange",
    "zscore",
    "zcard",
    "zincrby",
    "zrank",
    "zrevrange",
    "zrangebyscore",
    "zscan",
    "xadd",
    "xread",
    "xrange",
    "xlen",
    "eval",
    "evalsha",
    "eval_ro",
    "evalsha_ro",
    "script",
    "function",
    "fcall",
    "fcall_ro",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "persist",
    "expiretime",
    "pexpiretime",
    "setex",
    "psetex",
    "getex",
    "flushdb",
    "flushall",
    "swapdb",
    "save",
    "bgsave",
    "bgrewriteaof",
    "object",
    "dump",
    "restore",
    "migrate",
    "sort",
    "sort_ro",
    "touch",
    "wait",
    "lcs",
    "setbit",
    "getbit",
    "bitcount",
    "bitop",
    "bitpos",
    "bitfield",
    "pfadd",
    "pfcount",
    "pfmerge",
    "geoadd",
    "georadius",
    "geosearch",
    "substr",
];

pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    index_of(name).map(|i| &COMMANDS[i])
}

/// The position of a command in [`COMMANDS`] (its metrics slot).
pub fn index_of(name: &[u8]) -> Option<usize> {
    COMMANDS.iter().position(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

pub fn refused(name: &[u8]) -> Option<Reply> {
    let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
    REFUSED.contains(&lower.as_str()).then(|| {
        Reply::err(format!(
            "'{lower}' is not supported by chd: it stores strings only, durably, with GET SET SETNX GETSET GETDEL \
             MGET MSET MSETNX DEL UNLINK EXISTS STRLEN APPEND INCR INCRBY DECR DECRBY INCRBYFLOAT GETRANGE \
             SETRANGE SCAN KEYS DBSIZE TYPE TTL PTTL RANDOMKEY; no expiry, transactions, pub/sub, lists, hashes, \
             sets, sorted sets, streams or scripting"
        ))
    })
}

/// An argument as Redis prints one into an error (C's `%.Ns`): up to its first NUL byte and
/// at most `max` bytes.
fn c_str(a: &[u8], max: usize) -> &[u8] {
    let end = a.iter().position(|&b| b == 0).unwrap_or(a.len()).min(max);
    &a[..end]
}

/// Redis's error for a name that is no command: up to 128 bytes of arguments, quoted.
pub fn unknown(args: &[Vec<u8>]) -> Reply {
    let mut rest = Vec::new();
    for a in &args[1..] {
        if rest.len() >= 128 {
            break;
        }
        let room = 128 - rest.len();
        rest.push(b'\'');
        rest.extend_from_slice(c_str(a, room));
        rest.extend_from_slice(b"' ");
    }
    let name = String::from_utf8_lossy(c_str(&args[0], 128));
    Reply::err(format!("unknown command '{name}', with args beginning with: {}", String::from_utf8_lossy(&rest)))
}

/// Redis's error for a subcommand a container command (CLIENT, COMMAND, CONFIG) does not have:
/// the subcommand as the client wrote it.
pub fn unknown_subcommand(sub: &[u8], command: &str) -> Reply {
    let sub = String::from_utf8_lossy(c_str(sub, 128));
    Reply::err(format!("unknown subcommand '{sub}'. Try {command} HELP."))
}

pub fn arity_ok(spec: &Spec, argc: usize) -> bool {
    let argc = argc as i32;
    if spec.arity > 0 {
        argc == spec.arity
    } else {
        argc >= -spec.arity
    }
}

pub fn arity_error(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

/// The keys a command touches, from its key positions.
pub fn keys_of<'a>(spec: &Spec, args: &'a [Vec<u8>]) -> Vec<&'a [u8]> {
    if spec.first_key == 0 {
        return Vec::new();
    }
    let last = if spec.last_key < 0 { args.len() as i32 + spec.last_key } else { spec.last_key };
    (spec.first_key..=last)
        .step_by(spec.step as usize)
        .filter_map(|i| args.get(i as usize))
        .map(Vec::as_slice)
        .collect()
}

/// Refuses keys chd cannot store, before any lock is taken.
pub fn check_keys(keys: &[&[u8]]) -> Result<(), Reply> {
    for k in keys {
        if k.is_empty() {
            return Err(Reply::err(Error::EmptyKey));
        }
        if k.len() > MAX_KEY {
            return Err(Reply::err(Error::KeyTooLarge { len: k.len() as u64, max: MAX_KEY as u64 }));
        }
    }
    Ok(())
}

const NOT_INT: &str = "value is not an integer or out of range";
const TOO_BIG: &str = "string exceeds maximum allowed size (proto-max-bulk-len)";

fn syntax() -> Reply {
    Reply::err("syntax error")
}

fn lower(a: &[u8]) -> String {
    String::from_utf8_lossy(a).to_ascii_lowercase()
}

fn int_arg(a: &[u8]) -> Result<i64, Reply> {
    parse_int(a).ok_or_else(|| Reply::err(NOT_INT))
}

type Out = Result<Reply, Reply>;

async fn read(server: &Server, key: &[u8]) -> Result<Option<Vec<u8>>, Reply> {
    server.coordinator.read(key).await.map_err(Reply::err)
}

async fn write(server: &Server, key: &[u8], value: Option<Vec<u8>>) -> Result<(), Reply> {
    if let Some(v) = &value {
        if v.len() > MAX_VALUE {
            return Err(Reply::err(TOO_BIG));
        }
    }
    server.coordinator.write(key, value).await.map_err(|e| match e {
        // Redis's text past `maxmemory`, which clients recognise.
        Error::OutOfMemory { .. } => Reply::Error("OOM command not allowed when used memory > 'maxmemory'.".into()),
        e => Reply::err(e),
    })
}

/// Reads keys concurrently; answers in the order given.
async fn read_all(server: &Arc<Server>, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, Reply> {
    let mut set = JoinSet::new();
    for (i, k) in keys.iter().enumerate() {
        let (s, k) = (server.clone(), k.to_vec());
        set.spawn(async move { (i, read(&s, &k).await) });
    }
    let mut out = vec![None; keys.len()];
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.map_err(|e| Reply::err(format!("internal error: {e}")))?;
        out[i] = r?;
    }
    Ok(out)
}

/// Writes keys concurrently; the first error wins (writes already made stay made).
async fn write_all(server: &Arc<Server>, entries: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), Reply> {
    let mut set = JoinSet::new();
    for (k, v) in entries {
        let s = server.clone();
        set.spawn(async move { write(&s, &k, v).await });
    }
    let mut result = Ok(());
    while let Some(joined) = set.join_next().await {
        let r = joined.map_err(|e| Reply::err(format!("internal error: {e}"))).and_then(|r| r);
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// Runs a key command; the caller holds the locks of all its keys.
pub async fn key_command(server: &Arc<Server>, spec: &Spec, args: Vec<Vec<u8>>) -> Reply {
    match key_command_inner(server, spec, args).await {
        Ok(r) | Err(r) => r,
    }
}

async fn key_command_inner(server: &Arc<Server>, spec: &Spec, mut args: Vec<Vec<u8>>) -> Out {
    let s = &**server;
    let key = args[1].clone();
    match spec.name {
        "get" => Ok(Reply::opt(read(s, &key).await?)),
        "set" => set(s, &mut args).await,
        "setnx" => {
            if read(s, &key).await?.is_some() {
                return Ok(Reply::Int(0));
            }
            write(s, &key, Some(std::mem::take(&mut args[2]))).await?;
            Ok(Reply::Int(1))
        }
        "getset" => {
            let old = read(s, &key).await?;
            write(s, &key, Some(std::mem::take(&mut args[2]))).await?;
            Ok(Reply::opt(old))
        }
        "getdel" => {
            let old = read(s, &key).await?;
            if old.is_some() {
                write(s, &key, None).await?;
            }
            Ok(Reply::opt(old))
        }
        "mget" => {
            let keys: Vec<&[u8]> = args[1..].iter().map(Vec::as_slice).collect();
            Ok(Reply::Array(read_all(server, &keys).await?.into_iter().map(Reply::opt).collect()))
        }
        "mset" | "msetnx" => {
            if args.len() % 2 == 0 {
                return Err(arity_error(spec.name));
            }
            let mut entries: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
            let mut it = args.drain(1..);
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                // A key given twice: the last value wins, as in Redis.
                entries.retain(|(e, _)| *e != k);
                entries.push((k, Some(v)));
            }
            if spec.name == "msetnx" {
                let keys: Vec<&[u8]> = entries.iter().map(|(k, _)| k.as_slice()).collect();
                if read_all(server, &keys).await?.iter().any(Option::is_some) {
                    return Ok(Reply::Int(0));
                }
                write_all(server, entries).await?;
                return Ok(Reply::Int(1));
            }
            write_all(server, entries).await?;
            Ok(Reply::ok())
        }
        "del" | "unlink" => {
            let mut keys: Vec<&[u8]> = args[1..].iter().map(Vec::as_slice).collect();
            keys.sort_unstable();
            keys.dedup();
            let existing: Vec<Vec<u8>> = read_all(server, &keys)
                .await?
                .into_iter()
                .zip(&keys)
                .filter(|(v, _)| v.is_some())
                .map(|(_, k)| k.to_vec())
                .collect();
            let n = existing.len() as i64;
            write_all(server, existing.into_iter().map(|k| (k, None)).collect()).await?;
            Ok(Reply::Int(n))
        }
        "exists" => {
            let keys: Vec<&[u8]> = args[1..].iter().map(Vec::as_slice).collect();
            Ok(Reply::Int(read_all(server, &keys).await?.iter().filter(|v| v.is_some()).count() as i64))
        }
        "strlen" => Ok(Reply::Int(read(s, &key).await?.map_or(0, |v| v.len() as i64))),
        "append" => {
            let mut v = read(s, &key).await?.unwrap_or_default();
            if v.len() + args[2].len() > MAX_VALUE {
                return Err(Reply::err(TOO_BIG));
            }
            v.extend_from_slice(&args[2]);
            let n = v.len() as i64;
            write(s, &key, Some(v)).await?;
            Ok(Reply::Int(n))
        }
        "incr" | "decr" | "incrby" | "decrby" => {
            let by = match spec.name {
                "incr" => 1,
                "decr" => -1,
                "incrby" => int_arg(&args[2])?,
                _ => {
                    let d = int_arg(&args[2])?;
                    d.checked_neg().ok_or_else(|| Reply::err("decrement would overflow"))?
                }
            };
            let old = match read(s, &key).await? {
                None => 0,
                Some(v) => int_arg(&v)?,
            };
            let new = old.checked_add(by).ok_or_else(|| Reply::err("increment or decrement would overflow"))?;
            write(s, &key, Some(new.to_string().into_bytes())).await?;
            Ok(Reply::Int(new))
        }
        "incrbyfloat" => {
            let by = parse_float(&args[2]).ok_or_else(|| Reply::err("value is not a valid float"))?;
            let old = match read(s, &key).await? {
                None => 0.0,
                Some(v) => parse_float(&v).ok_or_else(|| Reply::err("value is not a valid float"))?,
            };
            let new = old + by;
            if !new.is_finite() {
                return Err(Reply::err("increment would produce NaN or Infinity"));
            }
            let text = format_double(new);
            write(s, &key, Some(text.clone().into_bytes())).await?;
            Ok(Reply::bulk(text))
        }
        "getrange" => {
            let (start, end) = (int_arg(&args[2])?, int_arg(&args[3])?);
            let v = read(s, &key).await?.unwrap_or_default();
            Ok(Reply::Bulk(range(&v, start, end).to_vec()))
        }
        "setrange" => {
            let offset = int_arg(&args[2])?;
            if offset < 0 {
                return Err(Reply::err("offset is out of range"));
            }
            let patch = std::mem::take(&mut args[3]);
            let old = read(s, &key).await?;
            if patch.is_empty() {
                return Ok(Reply::Int(old.map_or(0, |v| v.len() as i64)));
            }
            let offset = offset as usize;
            if offset.saturating_add(patch.len()) > MAX_VALUE {
                return Err(Reply::err(TOO_BIG));
            }
            let mut v = old.unwrap_or_default();
            if v.len() < offset + patch.len() {
                v.resize(offset + patch.len(), 0);
            }
            v[offset..offset + patch.len()].copy_from_slice(&patch);
            let n = v.len() as i64;
            write(s, &key, Some(v)).await?;
            Ok(Reply::Int(n))
        }
        "type" => Ok(Reply::Status(if read(s, &key).await?.is_some() { "string" } else { "none" }.into())),
        "ttl" | "pttl" => Ok(Reply::Int(if read(s, &key).await?.is_some() { -1 } else { -2 })),
        other => Err(Reply::err(format!("internal error: {other} is not a key command"))),
    }
}

/// SET key value [NX|XX] [GET]; expiry options are refused.
async fn set(s: &Server, args: &mut [Vec<u8>]) -> Out {
    let (mut nx, mut xx, mut get) = (false, false, false);
    for a in &args[3..] {
        match lower(a).as_str() {
            "nx" if !xx => nx = true,
            "xx" if !nx => xx = true,
            "get" => get = true,
            "ex" | "px" | "exat" | "pxat" | "keepttl" => {
                return Err(Reply::err(format!(
                    "chd does not support key expiry: SET with {} is refused (no EX, PX, EXAT, PXAT or KEEPTTL)",
                    lower(a).to_uppercase()
                )))
            }
            _ => return Err(syntax()),
        }
    }
    let key = args[1].clone();
    let old = if nx || xx || get { read(s, &key).await? } else { None };
    let exists = old.is_some();
    if (nx && exists) || (xx && !exists) {
        return Ok(if get { Reply::opt(old) } else { Reply::Nil });
    }
    write(s, &key, Some(std::mem::take(&mut args[2]))).await?;
    Ok(if get { Reply::opt(old) } else { Reply::ok() })
}

/// Redis's `string2ld` (C's `strtold`, which must read the whole argument): no surrounding
/// spaces, no NaN, hexadecimal floats accepted, shorter than 5 KiB.
fn parse_float(a: &[u8]) -> Option<f64> {
    if a.len() >= 5 * 1024 {
        return None;
    }
    let s = std::str::from_utf8(a).ok()?;
    if s.is_empty() || s.trim() != s {
        return None;
    }
    let lower = s.to_ascii_lowercase();
    let v: f64 = match lower.as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ if lower.contains("inf") || lower.contains("nan") => return None,
        _ if lower.trim_start_matches(['+', '-']).starts_with("0x") => parse_hex_float(&lower)?,
        _ => s.parse().ok()?,
    };
    (!v.is_nan()).then_some(v)
}

/// A C99 hexadecimal float, lower case: `[+-]0x<hex>[.<hex>][p[+-]<decimal>]`.
fn parse_hex_float(s: &str) -> Option<f64> {
    let (neg, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let rest = rest.strip_prefix("0x")?;
    let (mantissa, exp) = match rest.split_once('p') {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut v = 0f64;
    for c in int.chars() {
        v = v * 16.0 + f64::from(c.to_digit(16)?);
    }
    let mut scale = 1.0 / 16.0;
    for c in frac.chars() {
        v += f64::from(c.to_digit(16)?) * scale;
        scale /= 16.0;
    }
    let v = v * 2f64.powi(exp);
    Some(if neg { -v } else { v })
}

/// A SCAN cursor as Redis reads one (C's `strtoul` on the argument as a C string): no leading
/// space, an optional sign (a negative cursor wraps around), digits up to u64's range; an empty
/// argument is cursor 0.
fn parse_cursor(a: &[u8]) -> Option<u64> {
    let a = c_str(a, a.len());
    let (neg, digits) = match a.first() {
        None => return Some(0),
        Some(b' ' | b'\t'..=b'\r') => return None,
        Some(b'-') => (true, &a[1..]),
        Some(b'+') => (false, &a[1..]),
        Some(_) => (false, a),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(if neg { v.wrapping_neg() } else { v })
}

/// GETRANGE's bounds, as Redis computes them.
pub fn range(v: &[u8], mut start: i64, mut end: i64) -> &[u8] {
    let len = v.len() as i64;
    if start < 0 && end < 0 && start > end {
        return &[];
    }
    if start < 0 {
        start += len;
    }
    if end < 0 {
        end += len;
    }
    start = start.max(0);
    end = end.max(0);
    if end >= len {
        end = len - 1;
    }
    if len == 0 || start > end {
        return &[];
    }
    &v[start as usize..=end as usize]
}

/// Commands that list keys; run once every earlier command of the connection is done.
pub async fn keyspace_command(server: &Arc<Server>, spec: &Spec, args: Vec<Vec<u8>>, ctx: &super::ConnInfo) -> Reply {
    match keyspace_inner(server, spec, args, ctx).await {
        Ok(r) | Err(r) => r,
    }
}

async fn keyspace_inner(server: &Arc<Server>, spec: &Spec, args: Vec<Vec<u8>>, ctx: &super::ConnInfo) -> Out {
    let cluster = &server.cluster;
    let partitions = cluster.ring().partitions();
    match spec.name {
        "scan" => {
            let cursor = parse_cursor(&args[1]).ok_or_else(|| Reply::err("invalid cursor"))?;
            let (mut pattern, mut count, mut type_ok) = (None, 10i64, true);
            let mut i = 2;
            while i < args.len() {
                let opt = lower(&args[i]);
                let val = args.get(i + 1).ok_or_else(syntax)?;
                match opt.as_str() {
                    "match" => pattern = Some(val.clone()),
                    "count" => {
                        count = int_arg(val)?;
                        if count < 1 {
                            return Err(syntax());
                        }
                    }
                    "type" => type_ok = lower(val) == "string",
                    _ => return Err(syntax()),
                }
                i += 2;
            }
            let prefix = pattern.as_deref().map_or(&b""[..], glob::literal_prefix).to_vec();
            let mut p = cursor.min(u64::from(partitions)) as u32;
            let mut found = Vec::new();
            while p < partitions && (found.len() as i64) < count {
                for k in scan::partition_keys(cluster, p, &prefix).await.map_err(Reply::err)? {
                    if type_ok && pattern.as_ref().is_none_or(|pat| glob::matches(pat, &k)) {
                        found.push(Reply::Bulk(k));
                    }
                }
                p += 1;
            }
            let next = if p >= partitions { 0 } else { p };
            Ok(Reply::Array(vec![Reply::bulk(next.to_string()), Reply::Array(found)]))
        }
        "keys" => {
            let pattern = &args[1];
            let prefix = glob::literal_prefix(pattern);
            let mut found = Vec::new();
            for p in 0..partitions {
                for k in scan::partition_keys(cluster, p, prefix).await.map_err(Reply::err)? {
                    if glob::matches(pattern, &k) {
                        found.push(Reply::Bulk(k));
                    }
                }
            }
            Ok(Reply::Array(found))
        }
        "dbsize" => Ok(Reply::Int(dbsize(server).await? as i64)),
        "randomkey" => {
            let start = stats::random() as u32 % partitions;
            for i in 0..partitions {
                let keys = scan::partition_keys(cluster, (start + i) % partitions, b"").await.map_err(Reply::err)?;
                if !keys.is_empty() {
                    let pick = stats::random() as usize % keys.len();
                    return Ok(Reply::Bulk(keys[pick].clone()));
                }
            }
            Ok(Reply::Nil)
        }
        "info" => super::info::info(server, &args[1..], ctx).await,
        "shutdown" => {
            if !ctx.may_stop {
                return Err(Reply::err(
                    "SHUTDOWN is only accepted on chd's Unix socket from a user allowed to stop chd \
                     (root, chd's user or the allowed group)",
                ));
            }
            tracing::info!(client = ctx.id, "SHUTDOWN over RESP: stopping");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGTERM);
            Ok(Reply::ok())
        }
        other => Err(Reply::err(format!("internal error: {other} is not a keyspace command"))),
    }
}

pub async fn dbsize(server: &Arc<Server>) -> Result<u64, Reply> {
    let mut n = 0;
    for p in 0..server.cluster.ring().partitions() {
        n += scan::partition_keys(&server.cluster, p, b"").await.map_err(Reply::err)?.len() as u64;
    }
    Ok(n)
}

/// Commands that need neither keys nor the connection's state.
pub fn server_command(server: &Server, spec: &Spec, args: &[Vec<u8>]) -> Reply {
    match server_inner(server, spec, args) {
        Ok(r) | Err(r) => r,
    }
}

fn server_inner(server: &Server, spec: &Spec, args: &[Vec<u8>]) -> Out {
    match spec.name {
        "ping" => Ok(match args.get(1) {
            None => Reply::Status("PONG".into()),
            Some(m) if args.len() == 2 => Reply::Bulk(m.clone()),
            Some(_) => return Err(arity_error("ping")),
        }),
        "echo" => Ok(Reply::Bulk(args[1].clone())),
        "time" => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            Ok(Reply::Array(vec![Reply::bulk(now.as_secs().to_string()), Reply::bulk(now.subsec_micros().to_string())]))
        }
        // Every acknowledged write is on disk: the last save is now.
        "lastsave" => Ok(Reply::Int(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64,
        )),
        "command" => command(args),
        "config" => config(server, args),
        other => Err(Reply::err(format!("internal error: {other} is not a server command"))),
    }
}

fn command(args: &[Vec<u8>]) -> Out {
    let sub = args.get(1).map(|a| lower(a));
    let selected = |names: &[Vec<u8>]| -> Vec<Option<&'static Spec>> {
        if names.is_empty() {
            COMMANDS.iter().map(Some).collect()
        } else {
            names.iter().map(|n| lookup(n)).collect()
        }
    };
    match sub.as_deref() {
        None => Ok(Reply::Array(COMMANDS.iter().map(command_info).collect())),
        Some("count") => Ok(Reply::Int(COMMANDS.len() as i64)),
        Some("list") => Ok(Reply::Array(COMMANDS.iter().map(|s| Reply::bulk(s.name)).collect())),
        Some("info") => {
            Ok(Reply::Array(selected(&args[2..]).into_iter().map(|s| s.map_or(Reply::Nil, command_info)).collect()))
        }
        Some("docs") => Ok(Reply::Map(
            selected(&args[2..])
                .into_iter()
                .flatten()
                .map(|s| {
                    let doc = Reply::Map(vec![
                        (Reply::bulk("summary"), Reply::bulk(s.summary)),
                        (Reply::bulk("since"), Reply::bulk("1.0.0")),
                        (Reply::bulk("group"), Reply::bulk(s.group)),
                    ]);
                    (Reply::bulk(s.name), doc)
                })
                .collect(),
        )),
        Some(_) => Err(unknown_subcommand(&args[1], "COMMAND")),
    }
}

fn command_info(s: &Spec) -> Reply {
    Reply::Array(vec![
        Reply::bulk(s.name),
        Reply::Int(i64::from(s.arity)),
        Reply::Set(s.flags.iter().map(|f| Reply::Status((*f).into())).collect()),
        Reply::Int(i64::from(s.first_key)),
        Reply::Int(i64::from(s.last_key)),
        Reply::Int(i64::from(s.step)),
        Reply::Set(Vec::new()),
        Reply::Set(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

/// chd's settings as CONFIG GET answers them, with the Redis parameters clients ask about.
pub fn config_params(server: &Server) -> Vec<(String, String)> {
    let st = &server.cluster.settings;
    let port = st.resp_listen.map_or(0, |a| a.port());
    vec![
        ("appendonly".into(), "yes".into()),
        ("appendfsync".into(), "always".into()),
        ("save".into(), String::new()),
        ("databases".into(), "1".into()),
        ("maxmemory".into(), "0".into()),
        ("port".into(), port.to_string()),
        ("bind".into(), st.resp_listen.map_or(String::new(), |a| a.ip().to_string())),
        ("unixsocket".into(), st.resp_socket.as_ref().map_or(String::new(), |p| p.display().to_string())),
        ("proto-max-bulk-len".into(), MAX_VALUE.to_string()),
        ("dir".into(), st.data_dir.display().to_string()),
        ("data_dir".into(), st.data_dir.display().to_string()),
        ("socket".into(), st.socket.display().to_string()),
        ("nodes".into(), server.cluster.layout().members().len().to_string()),
        ("replicas".into(), server.cluster.ring().replicas().to_string()),
        ("write_quorum".into(), st.write_quorum.to_string()),
        ("socket_mode".into(), format!("{:04o}", st.socket_mode)),
        ("allowed_group".into(), st.allowed_group.as_ref().map_or(String::new(), |g| g.0.clone())),
        ("startup_repair".into(), st.startup_repair.to_string()),
        ("resp_socket".into(), st.resp_socket.as_ref().map_or("none".into(), |p| p.display().to_string())),
        ("resp_listen".into(), st.resp_listen.map_or(String::new(), |a| a.to_string())),
        ("resp_listen_any".into(), st.resp_listen_any.to_string()),
    ]
}

fn config(server: &Server, args: &[Vec<u8>]) -> Out {
    match lower(&args[1]).as_str() {
        "get" if args.len() >= 3 => {
            let params = config_params(server);
            let mut out = Vec::new();
            for (k, v) in &params {
                if args[2..].iter().any(|p| glob::matches(p.to_ascii_lowercase().as_slice(), k.as_bytes())) {
                    out.push((Reply::bulk(k), Reply::bulk(v)));
                }
            }
            Ok(Reply::Map(out))
        }
        "get" => Err(Reply::err("wrong number of arguments for 'config|get' command")),
        "set" | "rewrite" | "resetstat" => {
            Err(Reply::err("chd's settings are read-only over RESP; change chd's config file or flags and restart it"))
        }
        _ => Err(unknown_subcommand(&args[1], "CONFIG")),
    }
}

/// One line per node for INFO's chd section.
pub fn node_lines(server: &Server) -> Vec<String> {
    let nodes = server.cluster.nodes.read().expect("nodes lock");
    nodes
        .iter()
        .map(|(id, s)| {
            format!(
                "node{id}:state={},pid={},restarts={}{}",
                s.state.as_str(),
                s.pid.map_or("-".into(), |p| p.to_string()),
                s.restarts,
                if s.state == NodeState::Up { "" } else { ",serving=no" }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arity_and_key_positions_come_from_the_table() {
        let get = lookup(b"GeT").unwrap();
        assert!(arity_ok(get, 2) && !arity_ok(get, 3));
        let mset = lookup(b"mset").unwrap();
        assert!(arity_ok(mset, 5) && !arity_ok(mset, 2));
        let args: Vec<Vec<u8>> = ["mset", "a", "1", "b", "2"].iter().map(|s| s.as_bytes().to_vec()).collect();
        assert_eq!(keys_of(mset, &args), vec![&b"a"[..], b"b"]);
        let del: Vec<Vec<u8>> = ["del", "a", "b", "c"].iter().map(|s| s.as_bytes().to_vec()).collect();
        assert_eq!(keys_of(lookup(b"del").unwrap(), &del).len(), 3);
        assert_eq!(arity_error("get"), Reply::Error("ERR wrong number of arguments for 'get' command".into()));
    }

    #[test]
    fn arguments_in_errors_are_cut_like_c_strings() {
        // Found by chd-difftest: Redis prints arguments with `%.*s`, in bytes, up to a NUL.
        let args: Vec<Vec<u8>> = vec![b"g\0et".to_vec(), b"a\0b".to_vec(), "\u{e9}".repeat(70).into_bytes()];
        let Reply::Error(e) = unknown(&args) else { panic!() };
        assert_eq!(e, format!("ERR unknown command 'g', with args beginning with: 'a' '{}' ", "\u{e9}".repeat(62)));
        assert_eq!(
            unknown_subcommand(b"FoO", "CLIENT"),
            Reply::Error("ERR unknown subcommand 'FoO'. Try CLIENT HELP.".into())
        );
    }

    #[test]
    fn unknown_and_refused_commands_use_redis_texts() {
        let args: Vec<Vec<u8>> = ["foo", "a", "b"].iter().map(|s| s.as_bytes().to_vec()).collect();
        assert_eq!(
            unknown(&args),
            Reply::Error("ERR unknown command 'foo', with args beginning with: 'a' 'b' ".into())
        );
        let Some(Reply::Error(e)) = refused(b"MULTI") else { panic!() };
        assert!(e.starts_with("ERR 'multi' is not supported by chd"), "{e}");
        assert!(refused(b"get").is_none());
        // Every refused name is really not in the table.
        assert!(REFUSED.iter().all(|n| lookup(n.as_bytes()).is_none()));
    }

    #[test]
    fn scan_cursors_parse_like_strtoul() {
        // Found by chd-difftest: Redis reads SCAN's cursor with strtoul.
        assert_eq!(parse_cursor(b"0"), Some(0));
        assert_eq!(parse_cursor(b"1023"), Some(1023));
        assert_eq!(parse_cursor(b"+5"), Some(5));
        assert_eq!(parse_cursor(b"-1"), Some(u64::MAX));
        assert_eq!(parse_cursor(b""), Some(0));
        assert_eq!(parse_cursor(b"7\0x"), Some(7));
        assert_eq!(parse_cursor(b"18446744073709551615"), Some(u64::MAX));
        for bad in [&b" 0"[..], b"\t1", b"abc", b"-", b"1 ", b"0x0", b"18446744073709551616", b"--1"] {
            assert_eq!(parse_cursor(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn getrange_bounds_match_redis() {
        let v = b"This is a string";
        assert_eq!(range(v, 0, 3), b"This");
        assert_eq!(range(v, -3, -1), b"ing");
        assert_eq!(range(v, 0, -1), v);
        assert_eq!(range(v, 10, 100), b"string");
        assert_eq!(range(v, 5, 3), b"");
        assert_eq!(range(v, -1, -5), b"");
        assert_eq!(range(b"", 0, -1), b"");
    }

    #[test]
    fn floats_parse_like_string2ld() {
        assert_eq!(parse_float(b"10.5"), Some(10.5));
        assert_eq!(parse_float(b"5.0e3"), Some(5000.0));
        assert_eq!(parse_float(b"-inf"), Some(f64::NEG_INFINITY));
        for bad in [&b""[..], b" 1", b"1 ", b"nan", b"abc", b"1.2.3", b"0x", b"0x1p", b"0xg", b"1\0"] {
            assert_eq!(parse_float(bad), None);
        }
        // Found by chd-difftest: strtold reads hexadecimal floats; Redis reads at most 5119 bytes.
        assert_eq!(parse_float(b"0x10"), Some(16.0));
        assert_eq!(parse_float(b"-0x1.8p1"), Some(-3.0));
        assert_eq!(parse_float(b"0X1P-2"), Some(0.25));
        let long = |n: usize| [vec![b'0'; n - 1], vec![b'1']].concat();
        assert_eq!(parse_float(&long(5119)), Some(1.0));
        assert_eq!(parse_float(&long(5120)), None);
    }
}
