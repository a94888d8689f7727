//! Helpers shared by the fuzz targets: cutting an input into read-sized chunks, and a strict
//! reader of RESP replies that checks what chd writes is well framed.

/// Chunk lengths derived from `seed`: a deterministic sequence of lengths from 1 to 64 (and an
/// occasional long one), so that libFuzzer controls where the reads are cut.
pub struct Cuts {
    state: u64,
}

impl Cuts {
    pub fn new(seed: u8) -> Cuts {
        Cuts { state: u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 }
    }

    pub fn next_len(&mut self) -> usize {
        // xorshift64
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        match self.state % 8 {
            0 => 1,
            1 => 2,
            7 => 1 + (self.state >> 8) as usize % 4096,
            _ => 1 + (self.state >> 8) as usize % 64,
        }
    }

    /// `data` in consecutive chunks.
    pub fn split<'a>(&mut self, mut data: &'a [u8]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let (a, b) = data.split_at(self.next_len().min(data.len()));
            out.push(a);
            data = b;
        }
        out
    }
}

/// A RESP2/RESP3 value as a strict reader sees it on the wire.
#[derive(Clone, Debug, PartialEq)]
pub enum Wire {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Int(i64),
    Bulk(Vec<u8>),
    /// `$-1`
    NullBulk,
    /// `*-1`
    NullArray,
    /// `_`
    Null,
    Array(Vec<Wire>),
    Set(Vec<Wire>),
    Map(Vec<(Wire, Wire)>),
    Verbatim(Vec<u8>, Vec<u8>),
}

/// Reads exactly one value from the front of `buf`; `Err` names the framing fault.
pub fn read_wire(buf: &[u8]) -> Result<(Wire, &[u8]), String> {
    let (&tag, rest) = buf.split_first().ok_or("empty")?;
    let (line, rest) = read_line(rest)?;
    let int = |l: &[u8]| -> Result<i64, String> {
        std::str::from_utf8(l).ok().and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad integer {l:?}"))
    };
    let count = |l: &[u8]| -> Result<usize, String> {
        let n = int(l)?;
        usize::try_from(n).map_err(|_| format!("bad count {n}"))
    };
    match tag {
        b'+' => Ok((Wire::Simple(line.to_vec()), rest)),
        b'-' => Ok((Wire::Error(line.to_vec()), rest)),
        b':' => Ok((Wire::Int(int(line)?), rest)),
        b'_' if line.is_empty() => Ok((Wire::Null, rest)),
        b'$' if line == b"-1" => Ok((Wire::NullBulk, rest)),
        b'*' if line == b"-1" => Ok((Wire::NullArray, rest)),
        b'$' | b'=' => {
            let n = count(line)?;
            if rest.len() < n + 2 || &rest[n..n + 2] != b"\r\n" {
                return Err(format!("bulk of {n} not followed by CRLF"));
            }
            let body = rest[..n].to_vec();
            let rest = &rest[n + 2..];
            if tag == b'$' {
                return Ok((Wire::Bulk(body), rest));
            }
            if body.len() < 4 || body[3] != b':' {
                return Err("verbatim without a format".into());
            }
            Ok((Wire::Verbatim(body[..3].to_vec(), body[4..].to_vec()), rest))
        }
        b'*' | b'~' => {
            let n = count(line)?;
            let mut items = Vec::new();
            let mut rest = rest;
            for _ in 0..n {
                let (w, r) = read_wire(rest)?;
                items.push(w);
                rest = r;
            }
            Ok((if tag == b'*' { Wire::Array(items) } else { Wire::Set(items) }, rest))
        }
        b'%' => {
            let n = count(line)?;
            let mut pairs = Vec::new();
            let mut rest = rest;
            for _ in 0..n {
                let (k, r) = read_wire(rest)?;
                let (v, r) = read_wire(r)?;
                pairs.push((k, v));
                rest = r;
            }
            Ok((Wire::Map(pairs), rest))
        }
        t => Err(format!("unknown type byte {t:#x}")),
    }
}

/// A line ending in CRLF, with no CR or LF inside it.
fn read_line(buf: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let end = buf.iter().position(|&b| b == b'\r' || b == b'\n').ok_or("unterminated line")?;
    if buf.get(end..end + 2) != Some(b"\r\n") {
        return Err("bare CR or LF in a line".into());
    }
    Ok((&buf[..end], &buf[end + 2..]))
}
