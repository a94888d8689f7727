//! A private redis-server and a private chd, each in a temporary directory, stopped on drop.

use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chd_data::proto::MAX_VALUE;

use crate::resp::{encode_request, read_reply, Reply};

/// One client connection; replies are read while the requests are written, so a large batch
/// cannot deadlock against a server that stops reading until its replies are read.
pub struct Conn {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Conn {
    pub fn connect(path: &Path) -> io::Result<Conn> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        s.set_write_timeout(Some(Duration::from_secs(120)))?;
        Ok(Conn { w: s.try_clone()?, r: BufReader::with_capacity(1 << 16, s) })
    }

    /// Sends the encoded requests and reads `n` replies; stops at the first I/O error, returning
    /// the replies read until then.
    pub fn exchange(&mut self, bytes: &[u8], n: usize) -> (Vec<Reply>, Option<io::Error>) {
        let Conn { w, r } = self;
        let mut out = Vec::with_capacity(n);
        let mut read = |out: &mut Vec<Reply>| -> Option<io::Error> {
            for _ in 0..n {
                match read_reply(r) {
                    Ok(reply) => out.push(reply),
                    Err(e) => return Some(e),
                }
            }
            None
        };
        // Small batches fit in the socket's buffer: written at once, no thread needed.
        if bytes.len() <= 64 << 10 {
            if let Err(e) = (&*w).write_all(bytes) {
                return (out, Some(e));
            }
            let err = read(&mut out);
            return (out, err);
        }
        let w: &UnixStream = w;
        let (werr, rerr) = std::thread::scope(|s| {
            let writer = s.spawn(move || {
                let mut w = w;
                w.write_all(bytes)
            });
            let rerr = read(&mut out);
            if rerr.is_some() {
                let _ = w.shutdown(std::net::Shutdown::Both);
            }
            (writer.join().expect("writer thread"), rerr)
        });
        let err = rerr.or(werr.err());
        (out, err)
    }

    /// One request, one reply.
    pub fn call(&mut self, args: &[Vec<u8>]) -> io::Result<Reply> {
        let mut bytes = Vec::new();
        encode_request(args, &mut bytes);
        let (mut replies, err) = self.exchange(&bytes, 1);
        match err {
            Some(e) => Err(e),
            None => Ok(replies.remove(0)),
        }
    }
}

pub fn args(words: &[&str]) -> Vec<Vec<u8>> {
    words.iter().map(|w| w.as_bytes().to_vec()).collect()
}

pub struct Servers {
    pub dir: tempfile::TempDir,
    pub redis_socket: PathBuf,
    pub chd_socket: PathBuf,
    redis: Child,
    chd: Child,
}

/// tmpfs when there is one: chd's fsyncs cost nothing there, and what is compared is replies.
pub fn temp_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

impl Servers {
    /// Starts redis-server (`redis_server`, found in PATH by name) and chd (`chd_bin`).
    ///
    /// Redis is told what chd's README promises about itself, so that the replies compare:
    /// one database, and chd's value limit as its largest string (`proto-max-bulk-len`).
    pub fn start(redis_server: &Path, chd_bin: &Path) -> anyhow::Result<Servers> {
        let dir = tempfile::Builder::new().prefix("chd-difftest.").tempdir_in(temp_base())?;
        let redis_socket = dir.path().join("redis.sock");
        let redis = Command::new(redis_server)
            .args(["--port", "0", "--unixsocket"])
            .arg(&redis_socket)
            .args(["--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--databases", "1"])
            .args(["--proto-max-bulk-len", &MAX_VALUE.to_string(), "--dir"])
            .arg(dir.path())
            .args(["--logfile"])
            .arg(dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", redis_server.display()))?;
        let log = std::fs::File::create(dir.path().join("chd.log"))?;
        let chd = Command::new(chd_bin)
            .args(["--config", "/dev/null", "--log-level", "warn", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--socket")
            .arg(dir.path().join("chd.sock"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", chd_bin.display()))?;
        let mut s = Servers { redis_socket, chd_socket: dir.path().join("chd-resp.sock"), dir, redis, chd };
        wait_ready(&s.redis_socket, &mut s.redis, "redis-server")?;
        wait_ready(&s.chd_socket, &mut s.chd, "chd")?;
        Ok(s)
    }

    pub fn chd_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chd.log")).unwrap_or_default()
    }

    /// Stops both; fails if either died before.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let mut dead = Vec::new();
        for (name, child) in [("redis-server", &mut self.redis), ("chd", &mut self.chd)] {
            if let Some(status) = child.try_wait()? {
                dead.push(format!("{name} exited early ({status})"));
            }
        }
        // SAFETY: kill(2) of children this value owns.
        unsafe {
            libc::kill(self.chd.id() as i32, libc::SIGTERM);
            libc::kill(self.redis.id() as i32, libc::SIGTERM);
        }
        self.chd.wait()?;
        self.redis.wait()?;
        if !dead.is_empty() {
            bail!("{}; chd's log:\n{}", dead.join(", "), self.chd_log());
        }
        Ok(())
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in [&mut self.chd, &mut self.redis] {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Waits until the server answers PING and stores a key (chd: once its workers are up).
fn wait_ready(socket: &Path, child: &mut Child, name: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    let probe = args(&["set", "chd-difftest:probe", "1"]);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited at start ({status})");
        }
        if let Ok(mut c) = Conn::connect(socket) {
            if c.call(&probe).is_ok_and(|r| r.raw == b"+OK\r\n") {
                c.call(&args(&["del", "chd-difftest:probe"]))?;
                return Ok(());
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{name} not ready on {} after 60 s", socket.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
