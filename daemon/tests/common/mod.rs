//! A real chd in a temporary directory, driven by the real chctl and by a raw protocol client.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chd_data::proto::{
    decode_body, encode_frame, read_frame, ClientFrame, Request, Response, ServerFrame, MAX_FRAME, PROTOCOL_VERSION,
};
use serde_json::Value;

pub const CHD: &str = env!("CARGO_BIN_EXE_chd");

pub fn chctl_path() -> PathBuf {
    // cargo builds every binary of the workspace before it runs any test.
    Path::new(CHD).with_file_name("chctl")
}

/// Waits for `cond` to hold, checking often, failing the test after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Chd {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub socket: PathBuf,
    pub child: Option<Child>,
    pub args: Vec<String>,
}

impl Chd {
    pub fn start(args: &[&str]) -> Chd {
        let mut chd = Chd::unstarted(args);
        chd.restart();
        chd
    }

    /// A chd not started yet: its temp dir, data dir and socket, as [`Chd::start`] uses them.
    pub fn unstarted(args: &[&str]) -> Chd {
        let dir = tempfile::tempdir().unwrap();
        Chd {
            data: dir.path().join("data"),
            socket: dir.path().join("chd.sock"),
            dir,
            child: None,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(CHD);
        c.arg("--config").arg("/dev/null").arg("--data-dir").arg(&self.data).arg("--socket").arg(&self.socket);
        c.args(&self.args);
        c
    }

    /// Starts chd (again) on the same data dir and waits until every node is up.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("chd.log")).unwrap();
        let child = self.command().stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.child = Some(child);
        self.wait_all_up(Duration::from_secs(60));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(chctl_path()).arg("--socket").arg(&self.socket).args(args).output().unwrap()
    }

    pub fn ctl_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new(chctl_path())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn set(&self, key: &str, value: &str) {
        let out = self.ctl(&["set", key, value]);
        assert!(out.status.success(), "set {key}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let out = self.ctl(&["get", key]);
        match out.status.code() {
            Some(0) => Some(out.stdout),
            Some(1) if String::from_utf8_lossy(&out.stderr).contains("no such key") => None,
            _ => panic!("get {key}: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }

    pub fn try_status(&self) -> Option<Value> {
        let out = self.ctl(&["status", "--json"]);
        // 5: printed, but a node is failed.
        (out.status.success() || (out.status.code() == Some(5) && !out.stdout.is_empty()))
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    pub fn status(&self) -> Value {
        self.try_status().expect("chctl status --json")
    }

    pub fn node(&self, id: u64) -> Value {
        self.status()["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap().clone()
    }

    /// Makes node `id` crash each time it is up until chd marks it failed (within its crash
    /// limit). The crash is SIGUSR1, which a worker does not handle: it dies of it as of a
    /// fault of its own (and leaves no core file). A SIGKILL would not do: chd restarts killed
    /// workers without ever giving up on them.
    pub fn crash_loop_until_failed(&self, id: u64) {
        let mut last = 0;
        while self.node(id)["state"] != "failed" {
            let n = self.node(id);
            if let Some(pid) = n["pid"].as_u64().filter(|&p| p != last && n["state"] == "up") {
                signal(pid as u32, libc::SIGUSR1);
                last = pid;
            }
            assert!(n["restarts"].as_u64().unwrap() <= 6, "never marked failed: {n}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.status()["nodes"].as_array().unwrap().iter().filter_map(|n| n["pid"].as_u64()).map(|p| p as u32).collect()
    }

    pub fn wait_all_up(&self, limit: Duration) {
        wait_for("every node up", limit, || {
            self.try_status().is_some_and(|s| s["nodes"].as_array().unwrap().iter().all(|n| n["state"] == "up"))
        });
    }

    /// Sum over nodes of live keys.
    pub fn stored_copies(&self) -> u64 {
        self.status()["nodes"].as_array().unwrap().iter().map(|n| n["keys"].as_u64().unwrap_or(0)).sum()
    }

    pub fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM; returns chd's exit status.
    pub fn term(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        signal(c.id(), libc::SIGTERM);
        c.wait().unwrap()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket).unwrap()
    }
}

impl Drop for Chd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2).
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill({pid}, {sig})");
}

pub fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; it is not running.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// A raw protocol client, for load generation and for checking acknowledged writes.
pub struct Client {
    stream: UnixStream,
    next: u64,
}

impl Client {
    pub fn connect(socket: &Path) -> std::io::Result<Client> {
        let stream = UnixStream::connect(socket)?;
        let mut c = Client { stream, next: 1 };
        match c.call(Request::Hello { protocol: PROTOCOL_VERSION, client: "test".into() }) {
            Ok(Ok(_)) => Ok(c),
            _ => Err(std::io::Error::other("hello failed")),
        }
    }

    pub fn call(&mut self, request: Request) -> std::io::Result<Result<Response, chd_data::Error>> {
        let id = self.next;
        self.next += 1;
        let mut buf = Vec::new();
        encode_frame(&ClientFrame { id, request }, &mut buf);
        self.stream.write_all(&buf)?;
        let body = read_frame(&mut self.stream, MAX_FRAME + 1024)
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .ok_or_else(|| std::io::Error::other("closed"))?;
        let f: ServerFrame = decode_body(&body).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(f.response)
    }

    pub fn set(&mut self, key: &str, value: &str) -> bool {
        matches!(self.call(Request::Set { key: key.into(), value: value.into() }), Ok(Ok(Response::Done)))
    }

    /// Writes many keys, pipelined 64 at a time; panics unless every write is acknowledged.
    pub fn set_many(&mut self, pairs: impl IntoIterator<Item = (String, String)>) {
        let pairs: Vec<(String, String)> = pairs.into_iter().collect();
        for chunk in pairs.chunks(64) {
            let mut buf = Vec::new();
            for (k, v) in chunk {
                let id = self.next;
                self.next += 1;
                let request = Request::Set { key: k.clone().into(), value: v.clone().into() };
                encode_frame(&ClientFrame { id, request }, &mut buf);
            }
            self.stream.write_all(&buf).unwrap();
            for _ in chunk {
                let body = read_frame(&mut self.stream, MAX_FRAME + 1024).unwrap().unwrap();
                let f: ServerFrame = decode_body(&body).unwrap();
                assert_eq!(f.response, Ok(Response::Done));
            }
        }
    }

    pub fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        match self.call(Request::Get { key: key.into() }) {
            Ok(Ok(Response::Value(v))) => v,
            other => panic!("get {key}: {other:?}"),
        }
    }
}

/// Writes keys from a background thread until stopped, remembering what was acknowledged.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<BTreeMap<String, String>>>,
}

impl Load {
    /// `threads` writers, each reconnecting whenever chd goes away.
    pub fn start(socket: &Path, prefix: &str, threads: usize) -> Vec<Load> {
        (0..threads)
            .map(|t| {
                let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (socket, stop2, prefix) = (socket.to_path_buf(), stop.clone(), format!("{prefix}{t}-"));
                let handle = std::thread::spawn(move || {
                    let mut acked = BTreeMap::new();
                    let mut client = None;
                    let mut i = 0u64;
                    while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
                        if client.is_none() {
                            client = Client::connect(&socket).ok();
                            if client.is_none() {
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        }
                        // Overwrite a bounded set of keys so that newer versions replace older.
                        let key = format!("{prefix}{}", i % 300);
                        let value = format!("value-{i}");
                        match client
                            .as_mut()
                            .unwrap()
                            .call(Request::Set { key: key.clone().into(), value: value.clone().into() })
                        {
                            Ok(Ok(Response::Done)) => {
                                acked.insert(key, value);
                            }
                            // Not acknowledged: the key may hold the old or the new value.
                            Ok(Err(_)) => {
                                acked.remove(&key);
                            }
                            Err(_) => {
                                acked.remove(&key);
                                client = None;
                            }
                            Ok(Ok(other)) => panic!("unexpected {other:?}"),
                        }
                        i += 1;
                    }
                    acked
                });
                Load { stop, handle: Some(handle) }
            })
            .collect()
    }

    pub fn finish(loads: Vec<Load>) -> BTreeMap<String, String> {
        let mut all = BTreeMap::new();
        for mut l in loads {
            l.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            all.extend(l.handle.take().unwrap().join().unwrap());
        }
        all
    }
}

/// Every acknowledged write reads back (through a fresh client).
pub fn check_acked(chd: &Chd, acked: &BTreeMap<String, String>) {
    assert!(!acked.is_empty(), "the load acknowledged no write at all");
    let mut c = chd.client();
    for (k, v) in acked {
        assert_eq!(c.get(k).as_deref(), Some(v.as_bytes()), "acknowledged write of {k} lost");
    }
}

/// Live keys among those a [`Load`] of `threads` writers with `prefix` may have written.
pub fn live_keys(chd: &Chd, prefix: &str, threads: usize) -> u64 {
    let mut c = chd.client();
    let mut n = 0;
    for t in 0..threads {
        for i in 0..300 {
            n += u64::from(c.get(&format!("{prefix}{t}-{i}")).is_some());
        }
    }
    n
}

/// After things settle: every node up and every live key on exactly R (3) nodes.
pub fn settle(chd: &Chd, live_keys: u64) {
    chd.wait_all_up(Duration::from_secs(60));
    wait_for("R copies of every key", Duration::from_secs(30), || chd.stored_copies() == 3 * live_keys);
}

impl Chd {
    /// Starts chd with `config` as its config file (written into its temp dir; settings such as
    /// `requirepass` are read from the file only) and `args`, and waits until every node is up.
    /// [`Chd::restart`] starts it again with no config file.
    pub fn start_with_config(config: &str, args: &[&str]) -> Chd {
        let mut chd = Chd::unstarted(args);
        let path = chd.dir.path().join("chd.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(chd.dir.path().join("chd.log")).unwrap();
        let mut c = Command::new(CHD);
        c.arg("--config").arg(&path).arg("--data-dir").arg(&chd.data).arg("--socket").arg(&chd.socket);
        c.args(&chd.args);
        chd.child = Some(c.stdout(Stdio::null()).stderr(log).spawn().unwrap());
        chd.wait_all_up(Duration::from_secs(60));
        chd
    }
}
