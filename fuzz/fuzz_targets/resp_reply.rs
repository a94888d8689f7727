//! What chd writes on its RESP endpoint, and the pure helpers that turn a client's bytes into
//! it. An arbitrary reply tree, encoded for RESP2 and RESP3, must read back as exactly one
//! well-framed value of the same shape (RESP3 types degraded as documented for RESP2). The glob
//! matcher, the command table look-ups, GETRANGE's bounds and the integer parser are run on
//! the same input, each against a property it must keep.
#![no_main]

use arbitrary::Unstructured;
use chd_daemon::resp::reply::Reply;
use chd_daemon::resp::{cmd, glob, parse::parse_int};
use chd_fuzz::{read_wire, Wire};
use libfuzzer_sys::fuzz_target;

fn text(u: &mut Unstructured) -> arbitrary::Result<String> {
    // Any bytes, made text the way chd makes client bytes text.
    let b: &[u8] = u.arbitrary()?;
    Ok(String::from_utf8_lossy(b).into_owned())
}

fn reply(u: &mut Unstructured, depth: u32) -> arbitrary::Result<Reply> {
    let kinds = if depth == 0 { 7 } else { 10 };
    Ok(match u.int_in_range(0..=kinds - 1)? {
        0 => Reply::Status(text(u)?),
        1 => Reply::Error(text(u)?),
        2 => Reply::Int(u.arbitrary()?),
        3 => Reply::Bulk(u.arbitrary()?),
        4 => Reply::Nil,
        5 => Reply::NilArray,
        6 => Reply::Verbatim(text(u)?),
        7 => Reply::Array(items(u, depth)?),
        8 => Reply::Set(items(u, depth)?),
        _ => {
            let n = u.int_in_range(0..=8)?;
            let mut pairs = Vec::new();
            for _ in 0..n {
                pairs.push((reply(u, depth - 1)?, reply(u, depth - 1)?));
            }
            Reply::Map(pairs)
        }
    })
}

fn items(u: &mut Unstructured, depth: u32) -> arbitrary::Result<Vec<Reply>> {
    let n = u.int_in_range(0..=8)?;
    (0..n).map(|_| reply(u, depth - 1)).collect()
}

/// What a strict reader must see for `r` on protocol `proto`.
fn expected(r: &Reply, proto: u8) -> Wire {
    let resp3 = proto >= 3;
    let line = |s: &str| s.replace(['\r', '\n'], " ").into_bytes();
    match r {
        Reply::Status(s) => Wire::Simple(line(s)),
        Reply::Error(s) => Wire::Error(line(s)),
        Reply::Int(i) => Wire::Int(*i),
        Reply::Bulk(b) => Wire::Bulk(b.clone()),
        Reply::Nil | Reply::NilArray if resp3 => Wire::Null,
        Reply::Nil => Wire::NullBulk,
        Reply::NilArray => Wire::NullArray,
        Reply::Array(items) => Wire::Array(items.iter().map(|i| expected(i, proto)).collect()),
        Reply::Set(items) if resp3 => Wire::Set(items.iter().map(|i| expected(i, proto)).collect()),
        Reply::Set(items) => Wire::Array(items.iter().map(|i| expected(i, proto)).collect()),
        Reply::Map(pairs) if resp3 => {
            Wire::Map(pairs.iter().map(|(k, v)| (expected(k, proto), expected(v, proto))).collect())
        }
        Reply::Map(pairs) => {
            Wire::Array(pairs.iter().flat_map(|(k, v)| [expected(k, proto), expected(v, proto)]).collect())
        }
        Reply::Verbatim(s) if resp3 => Wire::Verbatim(b"txt".to_vec(), s.clone().into_bytes()),
        Reply::Verbatim(s) => Wire::Bulk(s.clone().into_bytes()),
    }
}

fn helpers(u: &mut Unstructured) -> arbitrary::Result<()> {
    let pattern: &[u8] = u.arbitrary()?;
    let subject: &[u8] = u.arbitrary()?;
    if glob::matches(pattern, subject) {
        let prefix = glob::literal_prefix(pattern);
        assert!(subject.starts_with(prefix), "a match does not start with the pattern's literal prefix");
    }
    assert!(glob::matches(glob::literal_prefix(pattern), glob::literal_prefix(pattern)));

    let args: Vec<Vec<u8>> = u.arbitrary()?;
    if let Some(name) = args.first() {
        if let Some(spec) = cmd::lookup(name) {
            if cmd::arity_ok(spec, args.len()) {
                let keys = cmd::keys_of(spec, &args);
                let _ = cmd::check_keys(&keys);
            }
        }
        let _ = cmd::refused(name);
        let _ = cmd::unknown(&args);
    }

    let value: &[u8] = u.arbitrary()?;
    let (start, end): (i64, i64) = u.arbitrary()?;
    let got = cmd::range(value, start, end);
    assert!(got.len() <= value.len());

    let digits: &[u8] = u.arbitrary()?;
    match parse_int(digits) {
        // string2ll takes only the canonical form of a number.
        Some(n) => assert_eq!(n.to_string().as_bytes(), digits),
        None => assert!(std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .is_none_or(|n| n.to_string().as_bytes() != digits)),
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(r) = reply(&mut u, 4) else { return };
    for proto in [2, 3] {
        let mut out = Vec::new();
        r.encode(proto, &mut out);
        let (wire, rest) =
            read_wire(&out).unwrap_or_else(|e| panic!("RESP{proto} framing: {e}: {:?}", String::from_utf8_lossy(&out)));
        assert!(rest.is_empty(), "RESP{proto}: bytes after the reply");
        assert_eq!(wire, expected(&r, proto), "RESP{proto}");
    }
    let _ = helpers(&mut u);
});
