//! RESP requests as chd's RESP endpoint reads them: the input (after two control bytes) is the
//! byte stream of one connection, fed to the parser in chunks whose sizes come from the first
//! control byte, with the connection unauthenticated for some requests per the second. The
//! requests (and the error that ends the stream, if any) must be exactly those the parser gives
//! for the whole stream at once; each must read back the same when sent again as a multibulk.
//! `split_args` (inline quoting) is checked directly: whatever it accepts, quoted back, splits
//! the same.
#![no_main]

use chd_daemon::resp::parse::{split_args, Parser, ProtocolError};
use chd_fuzz::Cuts;
use libfuzzer_sys::fuzz_target;

type Outcome = (Vec<Vec<Vec<u8>>>, Option<ProtocolError>);

/// Whether request number `n` is parsed before AUTH.
fn unauthenticated(auth: u8, n: usize) -> bool {
    auth & 0x80 != 0 || n < usize::from(auth & 3)
}

/// Parses the stream as chd's connection does: stops at the first error (the connection is
/// closed then, nothing more is asked of the parser).
fn parse(chunks: &[&[u8]], auth: u8) -> Outcome {
    let mut p = Parser::default();
    let mut requests = Vec::new();
    for chunk in chunks {
        p.buffer().extend_from_slice(chunk);
        loop {
            p.unauthenticated = unauthenticated(auth, requests.len());
            match p.next_request() {
                Ok(Some(r)) => {
                    assert!(!r.is_empty(), "an empty request is skipped, never returned");
                    requests.push(r);
                }
                Ok(None) => break,
                Err(e) => return (requests, Some(e)),
            }
        }
    }
    (requests, None)
}

fn multibulk(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `args` as one inline line that `split_args` reads back: every argument double-quoted, every
/// byte as `\xHH`.
fn quoted(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in args {
        out.push(b'"');
        for b in a {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        }
        out.extend_from_slice(b"\" ");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [seed, auth, stream @ ..] = data else { return };
    let whole = parse(&[stream], *auth);
    let chunks = Cuts::new(*seed).split(stream);
    let cut = parse(&chunks, *auth);
    assert_eq!(whole, cut, "the same stream cut into {} reads parsed differently", chunks.len());

    for r in &whole.0 {
        let again = parse(&[&multibulk(r)], 0);
        assert_eq!(again, (vec![r.clone()], None), "a request re-sent as a multibulk reads differently");
    }

    if let Some(args) = split_args(stream) {
        assert_eq!(split_args(&quoted(&args)), Some(args), "quoted arguments split differently");
    }
});
