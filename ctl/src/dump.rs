//! `chctl dump` and `chctl restore`: every live key out of chd as a stream, and back in.
//!
//! How a dump reads: it lists keys the way `chctl keys` does (`Scan`: one partition at a time,
//! merged from R-W+1 replicas, newest version winning, deleted keys left out), then reads each
//! key's value with an ordinary `Get`, through chd's coordinator. So every value written is the
//! key's latest acknowledged value at the moment it was read (linearizable, with read repair),
//! not a value of some replica that may be behind; a key deleted between listing and reading
//! is skipped. A dump is not one snapshot across keys: keys written while it runs may or may
//! not be in it, each with a value that was current at some point during the dump.
//!
//! Memory stays bounded while chd serves: chctl holds one scan page (at most a few MiB of
//! keys, whole partitions) and the values of the reads in flight. Sizes are not known before a
//! value arrives, so the window is sized by the largest value seen so far: one read until the
//! first value is in, then [`WINDOW_BYTES`] / largest, between 1 and [`WINDOW`]. A dump of
//! large values thus keeps about [`WINDOW_BYTES`] in flight; only a key space of small values
//! followed by large ones can briefly have [`WINDOW`] large values in flight.
//!
//! The chd format (`--format chd`, the default), all integers big-endian:
//!
//! ```text
//! header   "CHD-DUMP" (8 bytes), format version u32 = 1
//! record   0x01, key length u32, key, value length u32, value     (one per key)
//! end      0x00, record count u64
//! ```
//!
//! The end marker tells a complete dump from a cut one (chctl killed, disk full): restore
//! reports a dump without it as truncated. `--format resp` writes `SET key value` commands as
//! RESP arrays of bulk strings (binary-safe), which `redis-cli --pipe` sends to Redis or
//! Valkey; it has no header.

use std::collections::VecDeque;
use std::io::{BufWriter, IsTerminal, Read, Write};

use anyhow::{bail, Context};
use chd_client::Client;
use chd_data::proto::{Request, Response, MAX_KEY, MAX_VALUE};

use crate::exit;
use crate::out::OutputError;

pub const MAGIC: &[u8; 8] = b"CHD-DUMP";
pub const FORMAT_VERSION: u32 = 1;
/// Reads or writes in flight at once. At most 64 keeps every reply of a window inside chd's
/// per-connection reply queue (128), so chd never stops reading requests chctl is writing.
const WINDOW: usize = 32;
/// About how many value bytes a dump lets chd hold for it at once.
const WINDOW_BYTES: usize = 32 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// chd's own binary format (header, length-prefixed records, end marker); `chctl restore`
    /// reads it.
    Chd,
    /// A Redis command stream (RESP arrays `SET key value`), for `redis-cli --pipe`.
    Resp,
}

/// Encodes dump records.
pub struct Writer<W: Write> {
    out: W,
    format: Format,
    records: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, format: Format) -> std::io::Result<Writer<W>> {
        if format == Format::Chd {
            out.write_all(MAGIC)?;
            out.write_all(&FORMAT_VERSION.to_be_bytes())?;
        }
        Ok(Writer { out, format, records: 0 })
    }

    pub fn record(&mut self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        match self.format {
            Format::Chd => {
                self.out.write_all(&[1])?;
                self.out.write_all(&(key.len() as u32).to_be_bytes())?;
                self.out.write_all(key)?;
                self.out.write_all(&(value.len() as u32).to_be_bytes())?;
                self.out.write_all(value)?;
            }
            Format::Resp => {
                self.out.write_all(b"*3\r\n$3\r\nSET\r\n")?;
                for bulk in [key, value] {
                    write!(self.out, "${}\r\n", bulk.len())?;
                    self.out.write_all(bulk)?;
                    self.out.write_all(b"\r\n")?;
                }
            }
        }
        self.records += 1;
        Ok(())
    }

    /// Writes the end marker and flushes; returns how many records were written.
    pub fn finish(&mut self) -> std::io::Result<u64> {
        if self.format == Format::Chd {
            self.out.write_all(&[0])?;
            self.out.write_all(&self.records.to_be_bytes())?;
        }
        self.out.flush()?;
        Ok(self.records)
    }
}

/// Why a dump cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a chd dump (it does not start with CHD-DUMP); `--format resp` dumps are for redis-cli --pipe")]
    NotADump,
    #[error("dump format version {0} is newer than this chctl understands ({FORMAT_VERSION})")]
    Version(u32),
    #[error("the dump is truncated after {0} records (no end marker): the dump that wrote it did not finish")]
    Truncated(u64),
    #[error("the dump is corrupt after {records} records: {why}")]
    Corrupt { records: u64, why: String },
}

/// Decodes a chd-format dump, one record at a time (never more than one value in memory).
pub struct Reader<R: Read> {
    input: R,
    records: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    pub fn new(mut input: R) -> anyhow::Result<Reader<R>> {
        let mut head = [0u8; 12];
        match read_exact_or_eof(&mut input, &mut head)? {
            12 if &head[..8] == MAGIC => {}
            _ => return Err(FormatError::NotADump.into()),
        }
        let version = u32::from_be_bytes(head[8..].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(FormatError::Version(version).into());
        }
        Ok(Reader { input, records: 0, done: false })
    }

    fn corrupt(&self, why: impl Into<String>) -> anyhow::Error {
        FormatError::Corrupt { records: self.records, why: why.into() }.into()
    }

    fn read_len(&mut self, max: usize, what: &str) -> anyhow::Result<usize> {
        let mut b = [0u8; 4];
        if read_exact_or_eof(&mut self.input, &mut b)? != 4 {
            return Err(FormatError::Truncated(self.records).into());
        }
        let len = u32::from_be_bytes(b) as usize;
        if len > max {
            return Err(self.corrupt(format!("a {what} of {len} bytes (the limit is {max})")));
        }
        Ok(len)
    }

    fn read_bytes(&mut self, len: usize) -> anyhow::Result<Vec<u8>> {
        let mut v = vec![0; len];
        if read_exact_or_eof(&mut self.input, &mut v)? != len {
            return Err(FormatError::Truncated(self.records).into());
        }
        Ok(v)
    }

    /// The next (key, value), `None` at the end marker (checked against the records read).
    pub fn next_record(&mut self) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        if read_exact_or_eof(&mut self.input, &mut tag)? == 0 {
            return Err(FormatError::Truncated(self.records).into());
        }
        match tag[0] {
            1 => {
                let klen = self.read_len(MAX_KEY, "key")?;
                if klen == 0 {
                    return Err(self.corrupt("an empty key"));
                }
                let key = self.read_bytes(klen)?;
                let vlen = self.read_len(MAX_VALUE, "value")?;
                let value = self.read_bytes(vlen)?;
                self.records += 1;
                Ok(Some((key, value)))
            }
            0 => {
                let count = u64::from_be_bytes(self.read_bytes(8)?.try_into().expect("8 bytes"));
                if count != self.records {
                    return Err(self.corrupt(format!("the end marker counts {count} records")));
                }
                let mut extra = [0u8; 1];
                if read_exact_or_eof(&mut self.input, &mut extra)? != 0 {
                    return Err(self.corrupt("data after the end marker"));
                }
                self.done = true;
                Ok(None)
            }
            t => Err(self.corrupt(format!("unknown record tag {t}"))),
        }
    }
}

fn read_exact_or_eof(r: &mut impl Read, buf: &mut [u8]) -> anyhow::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("cannot read the dump"),
        }
    }
    Ok(n)
}

/// How many reads to keep in flight once the largest value seen is `largest` bytes.
fn window_after(largest: usize) -> usize {
    (WINDOW_BYTES / largest.max(1)).clamp(1, WINDOW)
}

/// `chctl dump`: writes every live key starting with `prefix` to stdout.
pub fn dump(client: &mut Client, prefix: &[u8], format: Format) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    if format == Format::Chd && stdout.is_terminal() {
        return Err(exit::fail(exit::USAGE, "a dump is binary; redirect it to a file: chctl dump > FILE"));
    }
    let mut w = Writer::new(BufWriter::with_capacity(1 << 20, stdout.lock()), format).map_err(OutputError)?;
    let mut cursor = 0;
    let (mut window, mut largest) = (1, 0);
    loop {
        let request = Request::Scan { cursor, prefix: prefix.to_vec(), count: 1000 };
        let Response::Keys { keys, cursor: next } = client.call(request)? else { bail!("unexpected answer") };
        let mut keys = keys.into_iter().map(|k| k.into_vec());
        // chd answers pipelined requests as they finish, not in order; replies wait in their
        // slot so that the dump keeps the listing's order (and equal data dumps equal bytes).
        let mut in_flight: VecDeque<(u64, Vec<u8>, Option<Response>)> = VecDeque::new();
        loop {
            while in_flight.len() < window {
                let Some(key) = keys.next() else { break };
                let id = client.send(Request::Get { key: key.clone() })?;
                in_flight.push_back((id, key, None));
            }
            if in_flight.is_empty() {
                break;
            }
            client.flush()?;
            let frame = client.receive()?;
            let response = frame.response.map_err(chd_client::CallError::Chd)?;
            let slot = in_flight.iter_mut().find(|s| s.0 == frame.id).context("chd answered a request never sent")?;
            slot.2 = Some(response);
            while in_flight.front().is_some_and(|s| s.2.is_some()) {
                let (_, key, response) = in_flight.pop_front().expect("front exists");
                match response.expect("answered") {
                    Response::Value(Some(v)) => {
                        w.record(&key, &v).map_err(OutputError)?;
                        largest = largest.max(v.len());
                        window = window_after(largest);
                    }
                    // Deleted since it was listed.
                    Response::Value(None) => {}
                    other => bail!("unexpected answer: {other:?}"),
                }
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let n = w.finish().map_err(OutputError)?;
    eprintln!("chctl: dumped {}", crate::human::count(n, "key"));
    Ok(())
}

/// What a restore did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub written: u64,
    /// Keys left as they were because they had a live value (without `--force`).
    pub kept: u64,
    /// The first few kept keys, to show.
    pub kept_examples: Vec<Vec<u8>>,
}

/// `chctl restore`: loads a chd-format dump from `input`.
pub fn restore(client: &mut Client, input: impl Read, force: bool) -> anyhow::Result<Restored> {
    let mut reader = Reader::new(input).map_err(|e| exit::fail(exit::OTHER, format!("{e:#}")))?;
    let mut done = Restored::default();
    // Replies come as requests finish, not in order: each is matched to its key by id.
    let mut in_flight: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut input_done = false;
    // A damaged input stops the reading; what was sent before it is still waited for, so that
    // the count in the message is what chd holds.
    let mut damaged = None;
    loop {
        while !input_done && in_flight.len() < WINDOW {
            match reader.next_record() {
                Err(e) => {
                    damaged = Some(e);
                    input_done = true;
                }
                Ok(Some((key, value))) => {
                    let request = if force {
                        Request::Set { key: key.clone(), value }
                    } else {
                        Request::SetIfAbsent { key: key.clone(), value }
                    };
                    let id = client.send(request)?;
                    in_flight.push((id, key));
                }
                Ok(None) => input_done = true,
            }
        }
        if in_flight.is_empty() {
            break;
        }
        client.flush()?;
        let frame = client.receive()?;
        let at = in_flight.iter().position(|s| s.0 == frame.id).context("chd answered a request never sent")?;
        let (_, key) = in_flight.swap_remove(at);
        match frame.response.map_err(chd_client::CallError::Chd)? {
            Response::Done | Response::Written(true) => done.written += 1,
            Response::Written(false) => {
                done.kept += 1;
                if done.kept_examples.len() < 5 {
                    done.kept_examples.push(key);
                }
            }
            other => bail!("unexpected answer: {other:?}"),
        }
    }
    if let Some(e) = damaged {
        let kept = if done.kept > 0 { format!(" ({} kept as they were)", done.kept) } else { String::new() };
        return Err(exit::fail(exit::OTHER, format!("{e:#}; the {} keys before it were restored{kept}", done.written)));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(format: Format, records: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), format).unwrap();
        for (k, v) in records {
            w.record(k, v).unwrap();
        }
        assert_eq!(w.finish().unwrap(), records.len() as u64);
        w.out
    }

    fn decode(bytes: &[u8]) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut r = Reader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }

    #[test]
    fn records_round_trip_binary_safe() {
        let big = vec![0xA5u8; 3 << 20];
        let recs: Vec<(&[u8], &[u8])> = vec![(b"a", b""), (b"\0\xff\r\n", b"\r\n$3\r\n"), (b"big", &big)];
        let bytes = encode(Format::Chd, &recs);
        assert_eq!(&bytes[..12], b"CHD-DUMP\0\0\0\x01");
        let back = decode(&bytes).unwrap();
        assert_eq!(back.len(), 3);
        for ((k, v), (k2, v2)) in recs.iter().zip(&back) {
            assert_eq!((*k, *v), (k2.as_slice(), v2.as_slice()));
        }
        assert!(decode(&encode(Format::Chd, &[])).unwrap().is_empty());
    }

    #[test]
    fn damaged_dumps_are_reported_not_half_trusted() {
        let bytes = encode(Format::Chd, &[(b"k1", b"v1"), (b"k2", b"v2")]);
        let err = |b: &[u8]| decode(b).unwrap_err().downcast::<FormatError>().unwrap();
        // Cut anywhere before the end marker is whole: truncated, never a silent success.
        for cut in 12..bytes.len() {
            match err(&bytes[..cut]) {
                FormatError::Truncated(n) => assert!(n <= 2),
                other => panic!("cut at {cut}: {other}"),
            }
        }
        assert_eq!(err(b"REDIS0011"), FormatError::NotADump);
        let mut newer = bytes.clone();
        newer[11] = 2;
        assert_eq!(err(&newer), FormatError::Version(2));
        let mut extra = bytes.clone();
        extra.push(1);
        assert!(matches!(err(&extra), FormatError::Corrupt { .. }));
        let mut miscounted = bytes.clone();
        let n = miscounted.len();
        miscounted[n - 1] = 3;
        assert!(matches!(err(&miscounted), FormatError::Corrupt { .. }));
        let mut huge_key = bytes[..12].to_vec();
        huge_key.push(1);
        huge_key.extend_from_slice(&(MAX_KEY as u32 + 1).to_be_bytes());
        assert!(matches!(err(&huge_key), FormatError::Corrupt { .. }));
    }

    #[test]
    fn resp_format_is_set_commands_with_bulk_strings() {
        let bytes = encode(Format::Resp, &[(b"k\r\n", b"v\0")]);
        assert_eq!(bytes, b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\nv\0\r\n");
    }

    #[test]
    fn the_window_shrinks_for_large_values() {
        assert_eq!(window_after(100), WINDOW);
        assert_eq!(window_after(4 << 20), 8);
        assert_eq!(window_after(MAX_VALUE), 1);
    }
}
