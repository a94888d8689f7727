//! RESP2 request parsing, incremental and bounded, after Redis's `networking.c`.
//!
//! A request is either a multibulk (`*<n>\r\n` then n bulk strings `$<len>\r\n<bytes>\r\n`) or
//! an inline command (one line of space-separated words, with Redis's quoting rules).
//!
//! Bounds, each checked before anything is allocated for it:
//! - a line (inline command, or a `*`/`$` header) holds at most [`MAX_INLINE`] bytes;
//! - a bulk string declares at most [`MAX_BULK`] bytes (chd's largest value plus a little, so
//!   that a value just over the limit gets a clear "too large" from the command, and a 1 GiB
//!   declaration is refused at once);
//! - a multibulk declares at most [`MAX_MULTIBULK`] arguments, and the argument vector grows
//!   as arguments arrive (never sized by the declared count);
//! - one request totals at most [`MAX_REQUEST`] bytes of arguments;
//! - before AUTH, where AUTH is required, at most 10 arguments of at most 16 KiB (as Redis).
//!
//! A request is never nested: an array inside a request is the same protocol error Redis gives
//! ("expected '$', got '*'"). After any [`ProtocolError`] the connection must be closed, since
//! the stream position is lost.
//!
//! Every byte here comes from a client, before AUTH too, and chd aborts on a panic: no input may
//! reach one. The lints keep indexing, `unwrap` and unchecked arithmetic out of this module; the
//! fuzz target `resp_request` checks the rest.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use chd_data::proto::{MAX_KEY, MAX_VALUE};

/// Longest inline command or header line (Redis's PROTO_INLINE_MAX_SIZE).
pub const MAX_INLINE: usize = 64 * 1024;
/// Largest declared bulk string.
pub const MAX_BULK: usize = MAX_VALUE + 4096;
/// Most arguments in one request (Redis refuses more than INT_MAX; chd far fewer).
pub const MAX_MULTIBULK: usize = 1024 * 1024;
/// Most bytes of arguments in one request: two maximal values and keys (an MSET of two).
pub const MAX_REQUEST: usize = 2 * (MAX_VALUE + MAX_KEY) + (1 << 20);

/// A request that cannot be parsed. `Display` is Redis's error text, without `-ERR `.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: too big inline request")]
    TooBigInline,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: too big mbulk count string")]
    TooBigMbulkCount,
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedDollar(u8),
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    #[error("Protocol error: request of more than {MAX_REQUEST} bytes")]
    RequestTooLarge,
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedMultibulk,
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulk,
}

/// Holds the bytes read from one connection and cuts them into requests.
#[derive(Default)]
pub struct Parser {
    buf: Vec<u8>,
    pos: usize,
    /// A multibulk in progress: arguments still expected, and those complete.
    remaining: usize,
    args: Vec<Vec<u8>>,
    /// The declared length of the bulk string being read, once its header is in.
    bulk: Option<usize>,
    request_bytes: usize,
    /// Before AUTH (where it is required), requests stay small, as in Redis: at most 10
    /// arguments of at most 16 KiB.
    pub unauthenticated: bool,
}

impl Parser {
    /// The buffer to append newly read bytes to (already parsed bytes are dropped first).
    /// Spare room is bounded, so a declared length never turns into an allocation by itself.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        if self.pos > 0 {
            self.buf.drain(..self.pos.min(self.buf.len()));
            self.pos = 0;
        }
        let want = match self.bulk {
            Some(len) => len.saturating_add(2).saturating_sub(self.buf.len()).clamp(16 << 10, 1 << 20),
            None => 16 << 10,
        };
        self.buf.reserve(want);
        &mut self.buf
    }

    /// Appends bytes (tests; the connection reads into [`Parser::buffer`]).
    #[cfg(test)]
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buffer().extend_from_slice(bytes);
    }

    /// The bytes not parsed yet.
    fn rest(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// The next complete request, `Ok(None)` if more bytes are needed. Empty requests (an empty
    /// line, `*0`, `*-1`) are skipped, as Redis does.
    pub fn next_request(&mut self) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        loop {
            if self.remaining == 0 {
                let Some(&first) = self.rest().first() else { return Ok(None) };
                if first != b'*' {
                    match self.inline()? {
                        None => return Ok(None),
                        Some(args) if args.is_empty() => continue,
                        Some(args) => return Ok(Some(args)),
                    }
                }
                let Some(line) = self.line(ProtocolError::TooBigMbulkCount)? else { return Ok(None) };
                let digits = line.strip_prefix(b"*").unwrap_or(line);
                let count = parse_int(digits).ok_or(ProtocolError::InvalidMultibulkLength)?;
                if count > MAX_MULTIBULK as i64 {
                    return Err(ProtocolError::InvalidMultibulkLength);
                }
                if count > 10 && self.unauthenticated {
                    return Err(ProtocolError::UnauthenticatedMultibulk);
                }
                if count <= 0 {
                    continue;
                }
                self.remaining = count as usize;
                self.args = Vec::with_capacity(self.remaining.min(1024));
                self.request_bytes = 0;
            }
            while self.remaining > 0 {
                let len = match self.bulk {
                    Some(len) => len,
                    None => {
                        let Some(line) = self.line(ProtocolError::TooBigBulkCount)? else { return Ok(None) };
                        // An empty line's first byte is its `\r`, as Redis reports it.
                        let Some(digits) = line.strip_prefix(b"$") else {
                            return Err(ProtocolError::ExpectedDollar(line.first().copied().unwrap_or(b'\r')));
                        };
                        let len = parse_int(digits).ok_or(ProtocolError::InvalidBulkLength)?;
                        if !(0..=MAX_BULK as i64).contains(&len) {
                            return Err(ProtocolError::InvalidBulkLength);
                        }
                        if len > 16384 && self.unauthenticated {
                            return Err(ProtocolError::UnauthenticatedBulk);
                        }
                        let len = len as usize;
                        self.request_bytes = self.request_bytes.saturating_add(len);
                        if self.request_bytes > MAX_REQUEST {
                            return Err(ProtocolError::RequestTooLarge);
                        }
                        self.bulk = Some(len);
                        len
                    }
                };
                // Like Redis, the two bytes after the data are skipped, not checked.
                let rest = self.rest();
                let (Some(data), Some(_)) = (rest.get(..len), rest.get(len.saturating_add(2)..)) else {
                    return Ok(None);
                };
                self.args.push(data.to_vec());
                self.pos = self.pos.saturating_add(len).saturating_add(2);
                self.bulk = None;
                self.remaining = self.remaining.saturating_sub(1);
            }
            self.request_bytes = 0;
            return Ok(Some(std::mem::take(&mut self.args)));
        }
    }

    /// A header line ending in `\r\n` (the `\r\n` consumed, not returned).
    fn line(&mut self, too_big: ProtocolError) -> Result<Option<&[u8]>, ProtocolError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some(cr) = rest.iter().position(|&b| b == b'\r') else {
            return if rest.len() > MAX_INLINE { Err(too_big) } else { Ok(None) };
        };
        if cr > MAX_INLINE {
            return Err(too_big);
        }
        let (Some(line), Some(_)) = (rest.get(..cr), rest.get(cr.saturating_add(2)..)) else { return Ok(None) };
        self.pos = self.pos.saturating_add(cr).saturating_add(2);
        Ok(Some(line))
    }

    fn inline(&mut self) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        let rest = self.rest();
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return if rest.len() > MAX_INLINE { Err(ProtocolError::TooBigInline) } else { Ok(None) };
        };
        if nl > MAX_INLINE {
            return Err(ProtocolError::TooBigInline);
        }
        let line = rest.get(..nl).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let args = split_args(line).ok_or(ProtocolError::UnbalancedQuotes)?;
        self.pos = self.pos.saturating_add(nl).saturating_add(1);
        Ok(Some(args))
    }
}

/// Redis's `string2ll`: an optional minus, then `0` or digits without a leading zero.
pub fn parse_int(s: &[u8]) -> Option<i64> {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits.first() == Some(&b'0') && (digits.len() > 1 || s.len() > 1) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Redis's `sdssplitargs`: words separated by spaces; `"..."` with `\n \r \t \b \a \\ \"` and
/// `\xHH` escapes; `'...'` with `\'`. A closing quote must be followed by a space or the end.
/// `None` for unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    // What is left of the line to split.
    let mut rest = line;
    loop {
        while let Some((c, after)) = rest.split_first() {
            if !c.is_ascii_whitespace() {
                break;
            }
            rest = after;
        }
        if rest.is_empty() {
            return Some(args);
        }
        let mut cur = Vec::new();
        let (mut in_dq, mut in_sq) = (false, false);
        loop {
            if in_dq {
                let (&c, after) = rest.split_first()?;
                if let [b'\\', b'x', h, l, tail @ ..] = rest {
                    if let (Some(h), Some(l)) = (hex(*h), hex(*l)) {
                        cur.push(h.wrapping_mul(16) | l);
                        rest = tail;
                        continue;
                    }
                }
                if let [b'\\', escaped, tail @ ..] = rest {
                    cur.push(match escaped {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => *other,
                    });
                    rest = tail;
                    continue;
                }
                if c == b'"' {
                    if after.first().is_some_and(|n| !n.is_ascii_whitespace()) {
                        return None;
                    }
                    rest = after;
                    break;
                }
                cur.push(c);
                rest = after;
            } else if in_sq {
                let (&c, after) = rest.split_first()?;
                if let [b'\\', b'\'', tail @ ..] = rest {
                    cur.push(b'\'');
                    rest = tail;
                    continue;
                }
                if c == b'\'' {
                    if after.first().is_some_and(|n| !n.is_ascii_whitespace()) {
                        return None;
                    }
                    rest = after;
                    break;
                }
                cur.push(c);
                rest = after;
            } else {
                match rest.split_first() {
                    None => break,
                    Some((c, _)) if c.is_ascii_whitespace() => break,
                    Some((b'"', after)) => {
                        in_dq = true;
                        rest = after;
                    }
                    Some((b'\'', after)) => {
                        in_sq = true;
                        rest = after;
                    }
                    Some((&c, after)) => {
                        cur.push(c);
                        rest = after;
                    }
                }
            }
        }
        args.push(cur);
    }
}

/// The value of a hex digit.
fn hex(c: u8) -> Option<u8> {
    char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut p = Parser::default();
        p.feed(bytes);
        let mut out = Vec::new();
        while let Some(r) = p.next_request()? {
            out.push(r);
        }
        Ok(out)
    }

    fn words(ws: &[&str]) -> Vec<Vec<u8>> {
        ws.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_and_inline_requests() {
        let stream =
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\nv\r\n\0\r\nPING\r\nget  k\n\r\n*0\r\n*-1\r\n*1\r\n$0\r\n\r\n";
        let got = parse_all(stream).unwrap();
        assert_eq!(got[0], vec![b"SET".to_vec(), b"k".to_vec(), b"v\r\n\0".to_vec()]);
        assert_eq!(got[1], words(&["PING"]));
        assert_eq!(got[2], words(&["get", "k"]));
        assert_eq!(got[3], vec![Vec::<u8>::new()]);
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn a_stream_split_at_every_byte_parses_the_same() {
        let stream: &[u8] =
            b"*2\r\n$4\r\nECHO\r\n$10\r\nab\r\ncd\0efg\r\nset \"a b\" 'c\\'d' \"\\x41\\n\"\r\n*1\r\n$4\r\nPING\r\n";
        let whole = parse_all(stream).unwrap();
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[1], vec![b"set".to_vec(), b"a b".to_vec(), b"c'd".to_vec(), b"A\n".to_vec()]);
        for cut in 0..=stream.len() {
            let mut p = Parser::default();
            let mut got = Vec::new();
            p.feed(&stream[..cut]);
            while let Some(r) = p.next_request().unwrap() {
                got.push(r);
            }
            p.feed(&stream[cut..]);
            while let Some(r) = p.next_request().unwrap() {
                got.push(r);
            }
            assert_eq!(got, whole, "cut at {cut}");
        }
        // One byte at a time.
        let mut p = Parser::default();
        let mut got = Vec::new();
        for b in stream {
            p.feed(&[*b]);
            while let Some(r) = p.next_request().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got, whole);
    }

    #[test]
    fn bad_lengths_get_redis_errors() {
        let e = |s: &[u8]| parse_all(s).unwrap_err().to_string();
        assert_eq!(e(b"*x\r\n"), "Protocol error: invalid multibulk length");
        assert_eq!(e(b"*01\r\n"), "Protocol error: invalid multibulk length");
        assert_eq!(e(b"*2000000\r\n"), "Protocol error: invalid multibulk length");
        assert_eq!(e(b"*99999999999999999999999\r\n"), "Protocol error: invalid multibulk length");
        assert_eq!(e(b"*1\r\n$-1\r\n"), "Protocol error: invalid bulk length");
        assert_eq!(e(b"*1\r\n$abc\r\n"), "Protocol error: invalid bulk length");
        assert_eq!(e(b"*1\r\n:1\r\n"), "Protocol error: expected '$', got ':'");
        // Regression: an empty line where `$<len>` belongs indexed an empty slice and aborted
        // chd (8 bytes on the RESP socket, before AUTH).
        assert_eq!(parse_all(b"*1\r\n\r\n"), Err(ProtocolError::ExpectedDollar(b'\r')));
        let mut reply = Vec::new();
        super::super::reply::Reply::Error(format!("ERR {}", ProtocolError::ExpectedDollar(b'\r')))
            .encode(2, &mut reply);
        assert_eq!(reply, b"-ERR Protocol error: expected '$', got ' '\r\n");
        // A nested array is not a request.
        assert_eq!(e(b"*1\r\n*1\r\n$1\r\na\r\n"), "Protocol error: expected '$', got '*'");
        assert_eq!(e(b"set \"a\n"), "Protocol error: unbalanced quotes in request");
        assert_eq!(e(b"set \"a\"b\n"), "Protocol error: unbalanced quotes in request");
        assert_eq!(e(b"set 'a\n"), "Protocol error: unbalanced quotes in request");
    }

    #[test]
    fn huge_declared_lengths_are_refused_without_allocating() {
        let gib = format!("*1\r\n${}\r\n", 1u64 << 30);
        let mut p = Parser::default();
        p.feed(gib.as_bytes());
        assert_eq!(p.next_request(), Err(ProtocolError::InvalidBulkLength));
        assert!(p.buf.capacity() < 1 << 20, "capacity {}", p.buf.capacity());
        // The largest allowed bulk is accepted as a header; the buffer grows only as bytes come.
        let mut p = Parser::default();
        p.feed(format!("*1\r\n${MAX_BULK}\r\n").as_bytes());
        assert_eq!(p.next_request(), Ok(None));
        assert!(p.buffer().capacity() <= 2 << 20, "capacity {}", p.buf.capacity());
        // A declared count does not size anything: 1M arguments declared, one sent.
        let mut p = Parser::default();
        p.feed(format!("*{MAX_MULTIBULK}\r\n$1\r\na\r\n").as_bytes());
        assert_eq!(p.next_request(), Ok(None));
        assert!(p.args.capacity() <= 1024);
        // Total request size is bounded too: arguments already held count against it.
        let mut p = Parser::default();
        p.feed(b"*3\r\n$1\r\na\r\n");
        assert_eq!(p.next_request(), Ok(None));
        p.request_bytes = MAX_REQUEST - 10;
        p.feed(b"$11\r\n");
        assert_eq!(p.next_request(), Err(ProtocolError::RequestTooLarge));
    }

    #[test]
    fn unauthenticated_requests_stay_small() {
        let mut p = Parser { unauthenticated: true, ..Parser::default() };
        p.feed(b"*11\r\n");
        assert_eq!(p.next_request(), Err(ProtocolError::UnauthenticatedMultibulk));
        let mut p = Parser { unauthenticated: true, ..Parser::default() };
        p.feed(b"*2\r\n$4\r\nAUTH\r\n$16385\r\n");
        assert_eq!(p.next_request().unwrap_err().to_string(), "Protocol error: unauthenticated bulk length");
        let mut p = Parser { unauthenticated: true, ..Parser::default() };
        p.feed(b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n");
        assert_eq!(p.next_request().unwrap().unwrap().len(), 2);
    }

    #[test]
    fn unterminated_lines_wait_then_fail_past_the_inline_limit() {
        let mut p = Parser::default();
        p.feed(b"*1\r\n$5\r\nab");
        assert_eq!(p.next_request(), Ok(None));
        let mut p = Parser::default();
        p.feed(&vec![b'a'; MAX_INLINE]);
        assert_eq!(p.next_request(), Ok(None));
        p.feed(b"aa");
        assert_eq!(p.next_request(), Err(ProtocolError::TooBigInline));
        let mut p = Parser::default();
        p.feed(b"*1");
        p.feed(&vec![b'1'; MAX_INLINE + 1]);
        assert_eq!(p.next_request(), Err(ProtocolError::TooBigMbulkCount));
        let mut p = Parser::default();
        p.feed(b"*1\r\n$");
        p.feed(&vec![b'1'; MAX_INLINE + 1]);
        assert_eq!(p.next_request(), Err(ProtocolError::TooBigBulkCount));
    }

    #[test]
    fn integers_follow_string2ll() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-12"), Some(-12));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        for bad in [&b""[..], b"-", b"+1", b"01", b"-0", b" 1", b"1 ", b"9223372036854775808", b"1.0"] {
            assert_eq!(parse_int(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
