//! A blocking client of chd's socket: connect, say hello, then request and await replies.
//!
//! Shared by chctl and chd-torture. A client may carry a per-operation deadline
//! ([`Client::connect_with`], [`Client::set_deadline`]): every [`Client::call`] (and every
//! separate [`Client::send`], [`Client::flush`] or [`Client::receive`]) must finish within it,
//! however many reads and writes it takes, so a stopped or hung chd cannot hold a caller.
//!
//! Invariant: after a [`CallError::Io`] (including a missed deadline) the connection is in an
//! unknown state, half a frame may have been sent or read; drop the client and connect again.
//! After a [`CallError::Chd`] the connection is intact.

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chd_data::proto::{encode_frame, ClientFrame, Request, Response, ServerFrame, PROTOCOL_VERSION};
use chd_data::Error;

pub mod trust;

pub struct Client {
    reader: BufReader<Timed>,
    writer: BufWriter<Timed>,
    next_id: u64,
    /// How long each operation may take; `None` waits forever.
    per_op: Option<Duration>,
    pub socket: PathBuf,
}

/// What went wrong talking to chd: chd's own typed error, or a failure to reach it at all.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Chd(#[from] Error),
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

impl Client {
    /// Connects as chctl, with no deadline.
    pub fn connect(socket: &Path) -> anyhow::Result<Client> {
        Client::connect_with(socket, &format!("chctl {}", env!("CARGO_PKG_VERSION")), None)
    }

    /// Connects, naming the client `name` in the hello; `per_op` bounds the hello and every
    /// later operation (see [`Client::set_deadline`]). Refuses a server that is not run by root,
    /// the caller or chd's service user ([`trust`]) before sending anything.
    pub fn connect_with(socket: &Path, name: &str, per_op: Option<Duration>) -> anyhow::Result<Client> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => "is chd running?",
                std::io::ErrorKind::PermissionDenied => "is your user allowed to use it?",
                _ => "",
            };
            anyhow!("cannot connect to chd at {}: {e}; {hint}", socket.display())
        })?;
        // Before the first byte: the hello already says who we are.
        trust::check(&stream, socket)?;
        let mut client = Client {
            reader: BufReader::new(Timed { stream: stream.try_clone()?, deadline: None }),
            writer: BufWriter::new(Timed { stream, deadline: None }),
            next_id: 1,
            per_op,
            socket: socket.to_path_buf(),
        };
        let hello = Request::Hello { protocol: PROTOCOL_VERSION, client: name.to_string() };
        match client.call(hello) {
            Ok(Response::Hello { .. }) => Ok(client),
            Ok(other) => bail!("chd answered hello with {other:?}"),
            // Kept typed, so that a caller can tell chd's refusal from a lost connection.
            Err(e) => Err(e.into()),
        }
    }

    /// Bounds each later operation to `per_op` from its start; `None` waits forever.
    pub fn set_deadline(&mut self, per_op: Option<Duration>) {
        self.per_op = per_op;
    }

    /// Starts the clock of one operation.
    fn arm(&mut self) {
        let deadline = self.per_op.map(|d| Instant::now() + d);
        self.reader.get_mut().deadline = deadline;
        self.writer.get_mut().deadline = deadline;
    }

    /// Sends one request and waits for its reply.
    pub fn call(&mut self, request: Request) -> Result<Response, CallError> {
        self.arm();
        let sent = self.send_armed(request).and_then(|id| self.flush_armed().map(|()| id));
        let id = match sent {
            Ok(id) => id,
            // chd may have closed after saying why (permission denied, say): read that.
            Err(e) => match self.receive_armed() {
                Ok(ServerFrame { response: Err(chd), .. }) => return Err(chd.into()),
                _ => return Err(e.into()),
            },
        };
        answer(self.receive_armed()?, id)
    }

    /// Queues a request without waiting (pipelining); returns its id.
    pub fn send(&mut self, request: Request) -> anyhow::Result<u64> {
        self.arm();
        self.send_armed(request)
    }

    fn send_armed(&mut self, request: Request) -> anyhow::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let mut buf = Vec::new();
        encode_frame(&ClientFrame { id, request }, &mut buf);
        self.writer.write_all(&buf).context("cannot send to chd")?;
        Ok(id)
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.arm();
        self.flush_armed()
    }

    fn flush_armed(&mut self) -> anyhow::Result<()> {
        self.writer.flush().context("cannot send to chd")
    }

    pub fn receive(&mut self) -> anyhow::Result<ServerFrame> {
        self.arm();
        self.receive_armed()
    }

    fn receive_armed(&mut self) -> anyhow::Result<ServerFrame> {
        read_server_frame(&mut self.reader, &self.socket)
    }
}

pub use decode::{answer, read_server_frame};

/// What the client takes from the server's bytes. A server, however broken or hostile, gets an
/// error out of it and never a panic: the lints below keep indexing, `unwrap` and unchecked
/// arithmetic out of this module (the fuzz target `client_reply` drives it).
mod decode {
    #![deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects
    )]

    use std::io::Read;
    use std::path::Path;

    use anyhow::anyhow;
    use chd_data::proto::{decode_body, read_frame, Response, ServerFrame, MAX_FRAME};

    use super::CallError;

    /// Reads and decodes the next frame from a server at `socket` (named in errors).
    pub fn read_server_frame(r: &mut impl Read, socket: &Path) -> anyhow::Result<ServerFrame> {
        let body = read_frame(r, MAX_FRAME.saturating_add(1024))
            .map_err(|e| anyhow!("lost the connection to chd at {}: {e}", socket.display()))?
            .ok_or_else(|| anyhow!("chd at {} closed the connection", socket.display()))?;
        Ok(decode_body(&body)?)
    }

    /// The answer to request `id` from the frame the server sent for it. Id 0 is chd's answer
    /// to a request it could not read far enough to know its id.
    pub fn answer(frame: ServerFrame, id: u64) -> Result<Response, CallError> {
        if frame.id != id && frame.id != 0 {
            return Err(CallError::Io(anyhow!("chd answered request {} instead of {id}", frame.id)));
        }
        Ok(frame.response?)
    }
}

/// One half of the connection, with the deadline of the operation in progress: each read or
/// write syscall may wait only for what is left of it.
struct Timed {
    stream: UnixStream,
    deadline: Option<Instant>,
}

impl Timed {
    /// Sets the socket timeout to what is left; fails once nothing is.
    fn prepare(&self, read: bool) -> std::io::Result<()> {
        let left = match self.deadline {
            None => None,
            Some(d) => match d.checked_duration_since(Instant::now()).filter(|l| !l.is_zero()) {
                Some(l) => Some(l),
                None => return Err(timed_out()),
            },
        };
        if read {
            self.stream.set_read_timeout(left)
        } else {
            self.stream.set_write_timeout(left)
        }
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline passed")
}

/// A socket timeout shows as `WouldBlock`; say what it means.
fn deadline_error(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::WouldBlock {
        timed_out()
    } else {
        e
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.prepare(true)?;
        self.stream.read(buf).map_err(deadline_error)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.prepare(false)?;
        self.stream.write(buf).map_err(deadline_error)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A chd that accepts and never answers (stopped, say) must not hold the caller past the
    /// deadline.
    #[test]
    fn a_silent_server_fails_the_hello_at_the_deadline() {
        let dir = std::env::temp_dir().join(format!("chd-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("silent.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let start = Instant::now();
        let err = Client::connect_with(&path, "test", Some(Duration::from_millis(200))).err().unwrap();
        let took = start.elapsed();
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(5), "{took:?}");
        assert!(err.to_string().contains("deadline"), "{err}");
    }
}
