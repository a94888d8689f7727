//! The control socket of the `chd-lazyfs` binary: one text line per request, one line back.
//!
//! Requests:
//! - `ping` -> `ok`
//! - `cut` or `cut PID PID...` -> `ok killed=PID,PID survivors= unsynced_bytes=N` once the
//!   new mount serves requests (the listed pids are killed too, besides the mount's users);
//! - anything else -> `err ...`.
//!
//! A cut is synchronous: when the reply arrives, every killed process has exited and the
//! filesystem shows what the disk held. [`request`] is the client side.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use crate::LazyFs;

/// Answers one request line.
pub fn handle(fs: &LazyFs, line: &str) -> String {
    let mut words = line.split_whitespace();
    match words.next() {
        Some("ping") => "ok".into(),
        Some("cut") => {
            let pids: Result<Vec<i32>, _> = words.map(str::parse::<i32>).collect();
            let Ok(pids) = pids else { return "err cut takes process ids".into() };
            match fs.power_cut_killing(&pids) {
                Ok(r) => format!(
                    "ok killed={} survivors={} unsynced_bytes={}",
                    join(&r.killed),
                    join(&r.survivors),
                    r.unsynced_bytes
                ),
                Err(e) => format!("err {e}"),
            }
        }
        _ => "err unknown request (ping, cut [PID...])".into(),
    }
}

fn join(pids: &[i32]) -> String {
    pids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

/// Listens on `path` (replacing a stale socket file) in a background thread.
pub fn serve(fs: Arc<LazyFs>, path: &Path) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let fs = fs.clone();
            std::thread::spawn(move || {
                let Ok(mut out) = conn.try_clone() else { return };
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    if writeln!(out, "{}", handle(&fs, &line)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(())
}

/// Sends one request to the control socket at `path` and returns the reply line.
pub fn request(path: &Path, line: &str) -> io::Result<String> {
    let mut conn = UnixStream::connect(path)?;
    writeln!(conn, "{line}")?;
    let mut reply = String::new();
    BufReader::new(conn).read_line(&mut reply)?;
    Ok(reply.trim_end().to_owned())
}
