//! How a reply of chd is compared with Redis's: byte for byte, except
//! - replies that are legitimately server-specific or nondeterministic, normalised first
//!   ([`NORMALISED`] says which and why), and
//! - the differences chd's README documents ([`DOCUMENTED`]), each a precise predicate on the
//!   request and the replies, never a blanket ignore.

use chd_daemon::resp::cmd;
use chd_daemon::resp::reply::Reply as ChdReply;

use crate::resp::{Reply, Value};

/// Commands whose replies are compared after normalising, and why.
pub const NORMALISED: &[(&str, &str)] = &[
    ("info", "server-specific text: only its type is compared"),
    ("time", "the clock: compared as an array of two integers"),
    ("lastsave", "a timestamp: compared as an integer"),
    ("client id/list/info", "connection ids and addresses: compared by type"),
    ("hello", "server name, version and connection id masked; the rest compared"),
    ("command", "Redis has many more commands: COUNT, LIST, DOCS and the whole table by type; INFO by name, arity and key positions"),
    ("config get", "each server's own settings: compared by type"),
    ("randomkey", "random: nil on both, or on both a key the sequence uses"),
    ("keys", "order is server-specific: elements sorted"),
    ("scan", "cursors are server-specific: SCAN 0 is iterated to the end on each and the key sets compared; a single SCAN from another valid cursor by type"),
];

/// A difference chd's README documents.
pub struct Difference {
    pub name: &'static str,
    /// The README section (and row) it refers to.
    pub readme: &'static str,
    /// Whether this request may be one the difference applies to (decided before sending).
    pub request: fn(&[Vec<u8>]) -> bool,
    /// Whether the replies are the documented ones for this request.
    pub replies: fn(&[Vec<u8>], &Reply, &Reply) -> bool,
    /// Redis may have applied what chd refused: the request's keys are copied from chd to Redis
    /// afterwards, so later commands start from the same data.
    pub resync: bool,
}

fn lower(a: &[u8]) -> Vec<u8> {
    a.to_ascii_lowercase()
}

fn is(req: &[Vec<u8>], i: usize, word: &str) -> bool {
    req.get(i).is_some_and(|a| lower(a) == word.as_bytes())
}

fn chd_error(reply: &ChdReply) -> Vec<u8> {
    let mut out = Vec::new();
    reply.encode(2, &mut out);
    out
}

/// chd's refusal of the request's keys, if chd refuses them: the request passes the arity
/// check of chd's table and a key is empty or longer than chd's limit.
fn key_refusal(req: &[Vec<u8>]) -> Option<Vec<u8>> {
    let spec = cmd::lookup(req.first()?)?;
    if !cmd::arity_ok(spec, req.len()) {
        return None;
    }
    cmd::check_keys(&cmd::keys_of(spec, req)).err().map(|r| chd_error(&r))
}

fn key_refused_with(req: &[Vec<u8>], chd: &Reply, prefix: &[u8]) -> bool {
    key_refusal(req).is_some_and(|e| e == chd.raw && chd.raw.starts_with(prefix))
}

const EXPIRY: &[&str] = &["ex", "px", "exat", "pxat", "keepttl"];

pub static DOCUMENTED: &[Difference] = &[
    Difference {
        name: "empty-key",
        readme: "Redis clients (RESP), \"Other differences: an empty key is refused\"",
        request: |req| key_refusal(req).is_some(),
        replies: |req, _redis, chd| key_refused_with(req, chd, b"-ERR key must not be empty"),
        resync: true,
    },
    Difference {
        name: "key-too-long",
        readme: "Redis clients (RESP), \"Other differences: ... keys are at most 64 KiB\"",
        request: |req| key_refusal(req).is_some(),
        replies: |req, _redis, chd| key_refused_with(req, chd, b"-ERR key is "),
        resync: true,
    },
    Difference {
        name: "set-expiry-refused",
        readme: "Redis clients (RESP), table row \"SET ... EX/PX/EXAT/PXAT/KEEPTTL: refused: chd has no expiry\"",
        request: |req| is(req, 0, "set") && req.iter().skip(3).any(|a| EXPIRY.iter().any(|e| lower(a) == e.as_bytes())),
        replies: |req, _redis, chd| {
            req.iter().skip(3).filter(|a| EXPIRY.iter().any(|e| lower(a) == e.as_bytes())).any(|a| {
                let opt = String::from_utf8_lossy(a).to_uppercase();
                chd.raw
                    == format!(
                        "-ERR chd does not support key expiry: SET with {opt} is refused (no EX, PX, EXAT, PXAT or \
                         KEEPTTL)\r\n"
                    )
                    .as_bytes()
            })
        },
        resync: true,
    },
    Difference {
        name: "refused-command",
        readme: "Redis clients (RESP), table row \"RENAME, MULTI/EXEC/WATCH, pub/sub, lists, hashes, ...: refused with one error naming what chd supports\"",
        request: |req| req.first().is_some_and(|n| cmd::refused(n).is_some()),
        replies: |req, _redis, chd| cmd::refused(&req[0]).is_some_and(|r| chd_error(&r) == chd.raw),
        resync: false,
    },
    Difference {
        name: "config-read-only",
        readme: "Redis clients (RESP), table row \"CONFIG GET answers chd's settings ..., read-only\"",
        request: |req| is(req, 0, "config") && (is(req, 1, "set") || is(req, 1, "rewrite") || is(req, 1, "resetstat")),
        replies: |_req, _redis, chd| {
            chd.raw
                == b"-ERR chd's settings are read-only over RESP; change chd's config file or flags and restart it\r\n"
        },
        resync: false,
    },
    Difference {
        name: "client-setinfo",
        readme: "Redis clients (RESP), table row \"CLIENT (SETNAME GETNAME ID SETINFO LIST INFO) ... as in Redis\": \
                 SETINFO is Redis 7.2's, unknown to Debian's Redis 7.0",
        request: |req| is(req, 0, "client") && is(req, 1, "setinfo"),
        replies: |_req, redis, _chd| redis.raw.starts_with(b"-ERR unknown subcommand '") && redis.raw.ends_with(b"'. Try CLIENT HELP.\r\n"),
        resync: false,
    },
    Difference {
        name: "missing-subcommand",
        readme: "not yet in the README (proposed for Redis clients (RESP), the table row of CLIENT, COMMAND and \
                 CONFIG): HELP and COMMAND GETKEYS are not implemented",
        request: |req| {
            (is(req, 0, "client") || is(req, 0, "command") || is(req, 0, "config")) && is(req, 1, "help")
                || is(req, 0, "command") && is(req, 1, "getkeys")
        },
        replies: |req, _redis, chd| {
            let name = String::from_utf8_lossy(&req[0]).to_uppercase();
            chd.raw == chd_error(&cmd::unknown_subcommand(&req[1], &name))
        },
        resync: false,
    },
    Difference {
        name: "incrbyfloat-binary64",
        readme: "not yet in the README (proposed for Redis clients (RESP), \"Other differences\"): INCRBYFLOAT \
                 computes in binary64, Redis in the C long double",
        request: |req| is(req, 0, "incrbyfloat") && req.len() == 3 && key_refusal(req).is_none(),
        replies: |req, redis, chd| same_float(req, redis, chd),
        resync: true,
    },
    Difference {
        name: "error-text-utf8",
        readme: "not yet in the README (proposed for Redis clients (RESP), \"Other differences\"): an argument \
                 quoted in an error is shown as UTF-8 text",
        request: |_req| true,
        replies: |_req, redis, chd| lossy_error(redis, chd),
        resync: false,
    },
];

/// INCRBYFLOAT's replies when chd's binary64 result and Redis's long double one agree to within
/// the rounding error of a binary64 addition (operands rounded to binary64 first, so a sum that
/// cancels may lose every digit), or Redis's result is beyond binary64's range. Redis prints 17
/// decimals: below 1e-17 it answers 0.
fn same_float(req: &[Vec<u8>], redis: &Reply, chd: &Reply) -> bool {
    let num = |t: &[u8]| std::str::from_utf8(t).ok().and_then(|s| s.parse::<f64>().ok());
    match (&redis.value, &chd.value) {
        (Value::Blob(b'$', r), Value::Blob(b'$', c)) => match (num(r), num(c)) {
            (Some(a), Some(b)) => {
                let x = num(&req[2]).filter(|x| x.is_finite()).unwrap_or(0.0);
                let scale = a.abs().max(x.abs()).max((a - x).abs());
                (a - b).abs() <= 1e-17_f64.max(4.0 * f64::EPSILON * scale)
            }
            _ => false,
        },
        (Value::Blob(b'$', r), Value::Line(b'-', c)) => {
            let increment_overflows =
                num(&req[2]).is_some_and(f64::is_infinite) && !lower(&req[2]).windows(3).any(|w| w == b"inf");
            c == b"ERR increment would produce NaN or Infinity"
                && (num(r).is_some_and(f64::is_infinite) || increment_overflows)
        }
        // An operand past even the long double's range: Redis's strtold fails, chd reads infinity.
        (Value::Line(b'-', r), Value::Line(b'-', c)) => {
            r == b"ERR value is not a valid float" && c == b"ERR increment would produce NaN or Infinity"
        }
        _ => false,
    }
}

/// An error text with bytes that are not UTF-8: chd's errors are UTF-8 text, each invalid
/// sequence replaced by U+FFFD.
fn lossy_error(redis: &Reply, chd: &Reply) -> bool {
    redis.raw.starts_with(b"-")
        && std::str::from_utf8(&redis.raw).is_err()
        && String::from_utf8_lossy(&redis.raw).as_bytes() == chd.raw
}

/// How one pair of replies compared.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Same,
    Normalised,
    Documented(&'static str),
    Diverged,
}

/// Context a comparison needs beyond the request.
pub struct Ctx<'a> {
    /// Keys the sequence uses (rendered): RANDOMKEY must answer one of them.
    pub keys: &'a std::collections::HashSet<Vec<u8>>,
}

pub fn compare(req: &[Vec<u8>], redis: &Reply, chd: &Reply, ctx: &Ctx) -> Verdict {
    if redis.raw == chd.raw {
        return Verdict::Same;
    }
    if let (Some(r), Some(c)) = (normalise(req, &redis.value, ctx), normalise(req, &chd.value, ctx)) {
        if r == c {
            return Verdict::Normalised;
        }
    }
    for d in DOCUMENTED {
        if (d.request)(req) && (d.replies)(req, redis, chd) {
            return Verdict::Documented(d.name);
        }
    }
    Verdict::Diverged
}

fn marker(s: &str) -> Value {
    Value::Line(b'?', s.as_bytes().to_vec())
}

fn is_int_text(v: &Value) -> bool {
    v.text().is_some_and(|t| !t.is_empty() && t.iter().all(u8::is_ascii_digit))
}

/// The reply with its server-specific parts replaced; `None` when the command is compared raw.
/// Errors stay as they are.
pub fn normalise(req: &[Vec<u8>], v: &Value, ctx: &Ctx) -> Option<Value> {
    let name = lower(req.first()?);
    if v.is_error() {
        return Some(v.clone());
    }
    let text_like = matches!(v, Value::Blob(b'$' | b'=', _));
    let sub = req.get(1).map(|s| lower(s));
    Some(match (name.as_slice(), sub.as_deref()) {
        (b"info", _) if text_like => marker("text"),
        (b"time", _) => match v {
            Value::Agg(b'*', items) if items.len() == 2 && items.iter().all(is_int_text) => marker("time"),
            _ => v.clone(),
        },
        (b"lastsave", _) if matches!(v, Value::Line(b':', _)) => marker("int"),
        (b"client", Some(b"id")) if matches!(v, Value::Line(b':', _)) => marker("int"),
        (b"client", Some(b"list" | b"info")) if text_like => marker("text"),
        (b"hello", _) => match v {
            Value::Agg(t @ (b'*' | b'%'), items) => {
                let mut items = items.clone();
                for i in (0..items.len().saturating_sub(1)).step_by(2) {
                    if matches!(items[i].text(), Some(b"server" | b"version" | b"id")) {
                        items[i + 1] = marker("masked");
                    }
                }
                Value::Agg(*t, items)
            }
            _ => v.clone(),
        },
        (b"command", None | Some(b"count" | b"list" | b"docs")) => marker("command table"),
        (b"command", Some(b"info")) if req.len() == 2 => marker("command table"),
        (b"command", Some(b"info")) => match v {
            Value::Agg(t, entries) => Value::Agg(
                *t,
                entries
                    .iter()
                    .map(|e| match e {
                        Value::Agg(t, f) if f.len() >= 6 => {
                            Value::Agg(*t, vec![f[0].clone(), f[1].clone(), f[3].clone(), f[4].clone(), f[5].clone()])
                        }
                        other => other.clone(),
                    })
                    .collect(),
            ),
            _ => v.clone(),
        },
        (b"config", Some(b"get")) => match v {
            Value::Agg(b'*' | b'%', _) => marker("settings"),
            _ => v.clone(),
        },
        (b"randomkey", _) => match v {
            Value::Blob(b'$', k) if ctx.keys.contains(k) => marker("a key of the sequence"),
            _ => v.clone(),
        },
        (b"keys", _) => match v {
            Value::Agg(t, items) => {
                let mut items = items.clone();
                items.sort();
                Value::Agg(*t, items)
            }
            _ => v.clone(),
        },
        (b"scan", _) => match v {
            Value::Agg(b'*', items) if items.len() == 2 => marker("scan page"),
            _ => v.clone(),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(raw: &[u8]) -> Reply {
        crate::resp::read_reply(&mut std::io::BufReader::new(raw)).unwrap()
    }

    fn req(args: &[&[u8]]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.to_vec()).collect()
    }

    #[test]
    fn documented_differences_are_precise() {
        let keys = Default::default();
        let ctx = Ctx { keys: &keys };
        let ok = reply(b"+OK\r\n");
        let empty = reply(b"-ERR key must not be empty\r\n");
        assert_eq!(compare(&req(&[b"set", b"", b"v"]), &ok, &empty, &ctx), Verdict::Documented("empty-key"));
        // The same refusal for a request with a non-empty key is a divergence.
        assert_eq!(compare(&req(&[b"set", b"k", b"v"]), &ok, &empty, &ctx), Verdict::Diverged);
        // So is any other reply to an empty key.
        assert_eq!(compare(&req(&[b"set", b"", b"v"]), &ok, &reply(b"-ERR x\r\n"), &ctx), Verdict::Diverged);
        let r = cmd::refused(b"llen").unwrap();
        let refused = reply(&chd_error(&r));
        assert_eq!(
            compare(&req(&[b"LLEN", b"k"]), &reply(b":0\r\n"), &refused, &ctx),
            Verdict::Documented("refused-command")
        );
        assert_eq!(compare(&req(&[b"get", b"k"]), &reply(b"$-1\r\n"), &refused, &ctx), Verdict::Diverged);
    }

    #[test]
    fn normalised_comparisons() {
        let keys: std::collections::HashSet<Vec<u8>> = [b"p:a".to_vec()].into();
        let ctx = Ctx { keys: &keys };
        let k = req(&[b"keys", b"*"]);
        assert_eq!(
            compare(&k, &reply(b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"), &reply(b"*2\r\n$1\r\nb\r\n$1\r\na\r\n"), &ctx),
            Verdict::Normalised
        );
        assert_eq!(
            compare(&k, &reply(b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"), &reply(b"*2\r\n$1\r\nb\r\n$1\r\nc\r\n"), &ctx),
            Verdict::Diverged
        );
        let rk = req(&[b"randomkey"]);
        assert_eq!(compare(&rk, &reply(b"$3\r\np:a\r\n"), &reply(b"$3\r\np:a\r\n"), &ctx), Verdict::Same);
        assert_eq!(compare(&rk, &reply(b"$3\r\np:a\r\n"), &reply(b"$3\r\np:z\r\n"), &ctx), Verdict::Diverged);
        let h = req(&[b"hello", b"3"]);
        let redis = reply(b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n");
        let chd = reply(b"%2\r\n$6\r\nserver\r\n$3\r\nchd\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(compare(&h, &redis, &chd, &ctx), Verdict::Normalised);
        let chd2 = reply(b"%2\r\n$6\r\nserver\r\n$3\r\nchd\r\n$5\r\nproto\r\n:2\r\n");
        assert_eq!(compare(&h, &redis, &chd2, &ctx), Verdict::Diverged);
    }
}
