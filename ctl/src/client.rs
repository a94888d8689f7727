//! A blocking client of chd's socket: connect, say hello, then request and await replies.

use std::io::{BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use chd_data::proto::{
    decode_body, encode_frame, read_frame, ClientFrame, Request, Response, ServerFrame, MAX_FRAME, PROTOCOL_VERSION,
};
use chd_data::Error;

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: BufWriter<UnixStream>,
    next_id: u64,
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
    pub fn connect(socket: &Path) -> anyhow::Result<Client> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => "is chd running?",
                std::io::ErrorKind::PermissionDenied => "is your user allowed to use it?",
                _ => "",
            };
            anyhow!("cannot connect to chd at {}: {e}; {hint}", socket.display())
        })?;
        let mut client = Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: BufWriter::new(stream),
            next_id: 1,
            socket: socket.to_path_buf(),
        };
        let hello =
            Request::Hello { protocol: PROTOCOL_VERSION, client: format!("chctl {}", env!("CARGO_PKG_VERSION")) };
        match client.call(hello) {
            Ok(Response::Hello { .. }) => Ok(client),
            Ok(other) => bail!("chd answered hello with {other:?}"),
            Err(e) => Err(anyhow!("{e}")),
        }
    }

    /// Sends one request and waits for its reply.
    pub fn call(&mut self, request: Request) -> Result<Response, CallError> {
        let sent = self.send(request).and_then(|id| self.flush().map(|()| id));
        let id = match sent {
            Ok(id) => id,
            // chd may have closed after saying why (permission denied, say): read that.
            Err(e) => match self.receive() {
                Ok(ServerFrame { response: Err(chd), .. }) => return Err(chd.into()),
                _ => return Err(e.into()),
            },
        };
        let frame = self.receive()?;
        if frame.id != id && frame.id != 0 {
            return Err(CallError::Io(anyhow!("chd answered request {} instead of {id}", frame.id)));
        }
        Ok(frame.response?)
    }

    /// Queues a request without waiting (pipelining); returns its id.
    pub fn send(&mut self, request: Request) -> anyhow::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let mut buf = Vec::new();
        encode_frame(&ClientFrame { id, request }, &mut buf);
        self.writer.write_all(&buf).context("cannot send to chd")?;
        Ok(id)
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.writer.flush().context("cannot send to chd")
    }

    pub fn receive(&mut self) -> anyhow::Result<ServerFrame> {
        let body = read_frame(&mut self.reader, MAX_FRAME + 1024)
            .map_err(|e| anyhow!("lost the connection to chd at {}: {e}", self.socket.display()))?
            .ok_or_else(|| anyhow!("chd at {} closed the connection", self.socket.display()))?;
        Ok(decode_body(&body)?)
    }
}
