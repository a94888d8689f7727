//! The history format: one JSON object per operation, one per line.
//!
//! ```json
//! {"key": "k", "op": "write", "value": "v", "start": 1.25, "end": 1.31, "ok": true}
//! ```
//!
//! - `op` is `write`, `read` or `delete`; `value` is the written or read value, `null` for a
//!   delete and for a read of a missing key. Large values are recorded by their blake3 hex.
//! - `start` and `end` are monotonic seconds. `ok: false` or `end: null` means the outcome is
//!   unknown: the operation may or may not have taken effect, at any time after `start`.
//!
//! Keep exactly this format: other tools read these histories, and the checker reads theirs.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Write,
    Read,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub key: String,
    pub op: Kind,
    pub value: Option<String>,
    pub start: f64,
    pub end: Option<f64>,
    pub ok: bool,
}

impl Op {
    /// Whether the operation's outcome is known (it completed and chd answered).
    pub fn known(&self) -> bool {
        self.ok && self.end.is_some()
    }
}

/// Reads a history, one operation per line; blank lines are skipped.
pub fn read(r: impl BufRead) -> anyhow::Result<Vec<Op>> {
    let mut ops = Vec::new();
    for (i, line) in r.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op: Op = serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("line {}: {e}", i + 1))?;
        ops.push(op);
    }
    Ok(ops)
}

/// Appends one operation as a line.
pub fn write(w: &mut impl Write, op: &Op) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, op)?;
    w.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_format_round_trips() {
        let text = r#"{"key": "k", "op": "write", "value": "v", "start": 1.25, "end": 1.5, "ok": true}
{"key": "k", "op": "read", "value": null, "start": 2.0, "end": null, "ok": false}
{"key": "k", "op": "delete", "value": null, "start": 3.0, "end": 3.5, "ok": true}
"#;
        let ops = read(text.as_bytes()).unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].op, Kind::Write);
        assert_eq!(ops[1].end, None);
        assert!(!ops[1].known());
        let mut out = Vec::new();
        for op in &ops {
            write(&mut out, op).unwrap();
        }
        assert_eq!(read(&out[..]).unwrap(), ops);
    }
}
