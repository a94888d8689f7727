//! Just enough RESP for a client: encoding requests, and reading one reply at a time as its raw
//! bytes (compared byte for byte) plus a parsed tree (for the few normalised comparisons).
//! RESP2 and RESP3 replies are read alike, since every reply starts with its type byte.

use std::io::{self, BufRead};

/// A parsed reply. Aggregates keep their elements flat (a map's keys and values alternate).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    /// A one-line reply (`+ - : _ # , (`): its type byte and its text.
    Line(u8, Vec<u8>),
    /// A length-prefixed string (`$ ! =`).
    Blob(u8, Vec<u8>),
    /// `$-1` or `*-1`.
    Null(u8),
    /// `* % ~ > |` and their elements.
    Agg(u8, Vec<Value>),
}

impl Value {
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Line(b'-', _) | Value::Blob(b'!', _))
    }

    /// The bytes of a string-like reply.
    pub fn text(&self) -> Option<&[u8]> {
        match self {
            Value::Line(_, t) | Value::Blob(_, t) => Some(t),
            _ => None,
        }
    }

    /// Encodes the value back (RESP2 for the types RESP2 has).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Line(t, s) => {
                out.push(*t);
                out.extend_from_slice(s);
                out.extend_from_slice(b"\r\n");
            }
            Value::Blob(t, s) => {
                out.push(*t);
                out.extend_from_slice(s.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(s);
                out.extend_from_slice(b"\r\n");
            }
            Value::Null(t) => {
                out.push(*t);
                out.extend_from_slice(b"-1\r\n");
            }
            Value::Agg(t, items) => {
                let n = if *t == b'%' || *t == b'|' { items.len() / 2 } else { items.len() };
                out.push(*t);
                out.extend_from_slice(n.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                items.iter().for_each(|i| i.encode(out));
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// One reply as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub raw: Vec<u8>,
    pub value: Value,
}

/// Appends a request as a RESP array of bulk strings.
pub fn encode_request(args: &[Vec<u8>], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed reply: {what}"))
}

/// Reads one complete reply.
pub fn read_reply<R: BufRead>(r: &mut R) -> io::Result<Reply> {
    let mut raw = Vec::new();
    let value = read_value(r, &mut raw, 0)?;
    Ok(Reply { raw, value })
}

fn read_line<R: BufRead>(r: &mut R, raw: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let start = raw.len();
    let n = r.read_until(b'\n', raw)?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by the server"));
    }
    let line = &raw[start..];
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err(bad("line without CRLF"));
    }
    Ok(line[..line.len() - 2].to_vec())
}

fn count(s: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(s).ok().and_then(|s| s.parse().ok()).ok_or_else(|| bad("length"))
}

fn read_value<R: BufRead>(r: &mut R, raw: &mut Vec<u8>, depth: usize) -> io::Result<Value> {
    if depth > 32 {
        return Err(bad("nesting too deep"));
    }
    let line = read_line(r, raw)?;
    let (tag, rest) = (line[0], line[1..].to_vec());
    match tag {
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Ok(Value::Line(tag, rest)),
        b'$' | b'!' | b'=' => {
            let n = count(&rest)?;
            if n < 0 {
                return Ok(Value::Null(tag));
            }
            let start = raw.len();
            raw.resize(start + n as usize + 2, 0);
            r.read_exact(&mut raw[start..])?;
            if !raw.ends_with(b"\r\n") {
                return Err(bad("bulk string without CRLF"));
            }
            Ok(Value::Blob(tag, raw[start..start + n as usize].to_vec()))
        }
        b'*' | b'%' | b'~' | b'>' | b'|' => {
            let n = count(&rest)?;
            if n < 0 {
                return Ok(Value::Null(tag));
            }
            let items = if tag == b'%' || tag == b'|' { 2 * n } else { n };
            let mut out = Vec::new();
            for _ in 0..items {
                out.push(read_value(r, raw, depth + 1)?);
            }
            if tag == b'|' {
                // An attribute precedes the reply it describes; the reply is what counts.
                return read_value(r, raw, depth + 1);
            }
            Ok(Value::Agg(tag, out))
        }
        _ => Err(bad("unknown type byte")),
    }
}

/// A request as redis-cli reads it: every argument double-quoted with escapes.
pub fn cli_line(args: &[Vec<u8>]) -> String {
    args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

pub fn quote(a: &[u8]) -> String {
    let mut s = String::from("\"");
    for &b in a {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('"');
    s
}

/// Raw reply bytes made readable: escapes, cut after `max` bytes.
pub fn show(raw: &[u8], max: usize) -> String {
    let cut = raw.len() > max;
    let mut s = quote(&raw[..raw.len().min(max)]);
    if cut {
        s.push_str(&format!("... ({} bytes)", raw.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_read_back_byte_for_byte() {
        let input: &[u8] =
            b"+OK\r\n$3\r\na\r\n\r\n*2\r\n$-1\r\n:5\r\n%1\r\n+k\r\n~1\r\n,1.5\r\n_\r\n=8\r\ntxt:abcd\r\n";
        let mut r = io::BufReader::new(input);
        let mut all = Vec::new();
        for _ in 0..6 {
            let reply = read_reply(&mut r).unwrap();
            assert_eq!(reply.value.to_bytes(), reply.raw, "re-encoding gives the bytes read");
            all.extend(reply.raw);
        }
        assert_eq!(all, input);
        let mut r = io::BufReader::new(&b"$5\r\nab\r\n"[..]);
        assert!(read_reply(&mut r).is_err());
    }

    #[test]
    fn cli_quoting() {
        assert_eq!(cli_line(&[b"SET".to_vec(), b"a \"b\"\0\r\n".to_vec()]), r#""SET" "a \"b\"\x00\r\n""#);
    }
}
