//! Replies, built as values and encoded for the connection's protocol: RESP2, or RESP3 once the
//! client said `HELLO 3`. The RESP3-only types degrade as Redis degrades them for RESP2: a map
//! is a flat array, a set an array, a null `$-1` (or `*-1` for a null
//! array), a verbatim string a bulk string.

#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+OK`-style status.
    Status(String),
    /// The whole error line without its `-`, e.g. `ERR syntax error`.
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    NilArray,
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
    Set(Vec<Reply>),
    /// Text shown as is by RESP3 clients (`=` with format `txt`), e.g. INFO.
    Verbatim(String),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Status("OK".into())
    }

    /// An `ERR`-class error.
    pub fn err(msg: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {msg}"))
    }

    pub fn bulk(s: impl AsRef<[u8]>) -> Reply {
        Reply::Bulk(s.as_ref().to_vec())
    }

    pub fn opt(v: Option<Vec<u8>>) -> Reply {
        v.map_or(Reply::Nil, Reply::Bulk)
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the encoding of `self` for protocol 2 or 3.
    pub fn encode(&self, proto: u8, out: &mut Vec<u8>) {
        let resp3 = proto >= 3;
        match self {
            Reply::Status(s) => simple(out, b'+', s.as_bytes()),
            Reply::Error(s) => simple(out, b'-', s.as_bytes()),
            Reply::Int(i) => line(out, b':', i.to_string().as_bytes()),
            Reply::Bulk(b) => bulk(out, b),
            Reply::Nil if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::NilArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                items.iter().for_each(|r| r.encode(proto, out));
            }
            Reply::Set(items) => {
                line(out, if resp3 { b'~' } else { b'*' }, items.len().to_string().as_bytes());
                items.iter().for_each(|r| r.encode(proto, out));
            }
            Reply::Map(pairs) if resp3 => {
                line(out, b'%', pairs.len().to_string().as_bytes());
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::Map(pairs) => {
                line(out, b'*', (2 * pairs.len()).to_string().as_bytes());
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::Verbatim(s) if resp3 => {
                line(out, b'=', (s.len() + 4).to_string().as_bytes());
                out.extend_from_slice(b"txt:");
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Verbatim(s) => bulk(out, s.as_bytes()),
        }
    }
}

/// A float as Redis prints one: the shortest text that reads back as the same number, no
/// exponent, `inf`/`-inf`.
pub fn format_double(d: f64) -> String {
    if d.is_infinite() {
        return if d > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if d == 0.0 {
        return "0".into();
    }
    format!("{d}")
}

fn line(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// A status or error line. A CR or LF inside it would end the line early and the rest would
/// read as another reply; Redis maps them to spaces, and so does chd, whatever built the text.
fn simple(out: &mut Vec<u8>, tag: u8, text: &[u8]) {
    out.push(tag);
    out.extend(text.iter().map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    line(out, b'$', b.len().to_string().as_bytes());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: Reply, proto: u8) -> String {
        let mut out = Vec::new();
        r.encode(proto, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn resp2_and_resp3_encodings() {
        assert_eq!(enc(Reply::ok(), 2), "+OK\r\n");
        assert_eq!(enc(Reply::err("syntax error"), 2), "-ERR syntax error\r\n");
        assert_eq!(enc(Reply::Error("ERR a\r\nb".into()), 2), "-ERR a  b\r\n");
        assert_eq!(enc(Reply::Int(-3), 2), ":-3\r\n");
        assert_eq!(enc(Reply::bulk("a\r\n"), 2), "$3\r\na\r\n\r\n");
        assert_eq!(enc(Reply::Nil, 2), "$-1\r\n");
        assert_eq!(enc(Reply::Nil, 3), "_\r\n");
        assert_eq!(enc(Reply::NilArray, 2), "*-1\r\n");
        let map = Reply::Map(vec![(Reply::bulk("proto"), Reply::Int(3))]);
        assert_eq!(enc(map.clone(), 2), "*2\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(enc(map, 3), "%1\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(enc(Reply::Set(vec![Reply::Int(1)]), 3), "~1\r\n:1\r\n");
        assert_eq!(enc(Reply::Verbatim("a".into()), 3), "=5\r\ntxt:a\r\n");
        assert_eq!(enc(Reply::Array(vec![Reply::Nil, Reply::Int(1)]), 2), "*2\r\n$-1\r\n:1\r\n");
    }

    /// Regression (fuzz target `resp_reply`): a status holding a newline was written as is,
    /// so a client read the rest of the line as a second reply.
    #[test]
    fn a_status_with_a_newline_stays_one_line() {
        assert_eq!(enc(Reply::Status("\n\0".into()), 2), "+ \0\r\n");
        assert_eq!(enc(Reply::Status("a\r\nb".into()), 3), "+a  b\r\n");
    }

    #[test]
    fn doubles_print_like_redis() {
        assert_eq!(format_double(10.5 + 0.1), "10.6");
        assert_eq!(format_double(5.0), "5");
        assert_eq!(format_double(-0.0), "0");
        assert_eq!(format_double(1e21), "1000000000000000000000");
        assert_eq!(format_double(f64::INFINITY), "inf");
    }
}
