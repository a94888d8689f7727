//! The chd under test: one real chd process on its own data dir and socket, started, killed,
//! stopped and restarted by the nemesis, and asked for its status through the client library.
//!
//! chd's stderr goes to `<out>/chd.log` (appended across restarts). When running as root with
//! disk-full faults on, the data dir lives on a small tmpfs mounted for the run and unmounted
//! by [`Cluster::shutdown`].

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chd_client::Client;
use chd_data::proto::{NodeState, Request, Response, StatusReport};

pub struct Cluster {
    pub chd: PathBuf,
    pub chctl: PathBuf,
    /// chd's data dir.
    pub data: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// Where a tmpfs was mounted for this run (the data dir is inside it).
    pub tmpfs: Option<PathBuf>,
    pub nodes: u32,
    /// chd's `--engine`: the engine of databases it creates.
    pub engine: String,
    child: Option<Child>,
}

/// What the nemesis needs to know of one node.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub id: u32,
    pub pid: Option<u32>,
    pub state: NodeState,
}

impl Cluster {
    /// Prepares the directories (mounting a tmpfs of `tmpfs_mib` if asked) without starting chd.
    pub fn new(
        chd: PathBuf,
        chctl: PathBuf,
        out: &Path,
        nodes: u32,
        tmpfs_mib: Option<u64>,
    ) -> anyhow::Result<Cluster> {
        let mut tmpfs = None;
        let root = match tmpfs_mib {
            Some(mib) => {
                let mnt = out.join("fs");
                std::fs::create_dir_all(&mnt)?;
                let st = Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
                    .arg(&mnt)
                    .status()
                    .context("mount")?;
                if !st.success() {
                    bail!("cannot mount a tmpfs on {}", mnt.display());
                }
                tmpfs = Some(mnt.clone());
                mnt
            }
            None => out.to_path_buf(),
        };
        let data = root.join("data");
        if data.exists() {
            std::fs::remove_dir_all(&data).with_context(|| format!("cannot clear {}", data.display()))?;
        }
        // A Unix socket path must fit in 108 bytes.
        let mut socket = out.join("chd.sock");
        if socket.as_os_str().len() > 100 {
            socket = std::env::temp_dir().join(format!("chd-torture-{}.sock", std::process::id()));
        }
        let engine = "append".to_string();
        Ok(Cluster { chd, chctl, data, socket, log: out.join("chd.log"), tmpfs, nodes, engine, child: None })
    }

    /// Starts chd (again) and waits until its socket answers a status request.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.chd)
            .arg("--config")
            .arg("/dev/null")
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--nodes", &self.nodes.to_string(), "--replicas", "3", "--write-quorum", "2"])
            .args(["--engine", &self.engine])
            // Small log segments and index rebuilds at 32 keys added or removed: with the few
            // hundred keys of a run, the production sizes (16 MiB, 4096) never compact a
            // segment or rebuild an index, so those would go untested under faults.
            .args(["--log-segment-bytes", "65536", "--index-rebuild-min", "32"])
            // Plain text in chd.log, so that it can be searched.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.chd.display()))?;
        self.child = Some(child);
        let start = Instant::now();
        while self.status().is_none() {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("chd exited at start with {st}; see {}", self.log.display());
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("chd did not answer within 60 s of its start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// kill -9 of chd (its workers follow it by their parent-death signal).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL if chd has not stopped within 30 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), libc::SIGCONT);
            signal(c.id(), libc::SIGTERM);
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(30) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// chd's status, or `None` if it does not answer within 2 s.
    pub fn status(&self) -> Option<StatusReport> {
        let mut c = Client::connect_with(&self.socket, "chd-torture status", Some(Duration::from_secs(2))).ok()?;
        match c.call(Request::Status) {
            Ok(Response::Status(s)) => Some(s),
            _ => None,
        }
    }

    pub fn nodes(&self) -> Option<Vec<Node>> {
        Some(self.status()?.nodes.into_iter().map(|n| Node { id: n.id, pid: n.pid, state: n.state }).collect())
    }

    pub fn all_up(&self) -> bool {
        self.all_up_without(&[])
    }

    /// Every node up, none of them still served by one of `killed` (chd notices a killed
    /// worker a moment later; until then its status still says `up`).
    pub fn all_up_without(&self, killed: &[u32]) -> bool {
        self.status().is_some_and(|s| {
            s.nodes.iter().all(|n| n.state == NodeState::Up && n.pid.is_none_or(|p| !killed.contains(&p)))
                && s.migration.as_ref().is_none_or(|m| m.finished)
        })
    }

    /// Waits until every node is up; false if that does not happen within `limit`.
    pub fn wait_all_up(&self, limit: Duration) -> bool {
        self.wait_all_up_without(&[], limit)
    }

    /// Waits until every node is up and none is one of the `killed` worker processes (chd may
    /// not have noticed a kill yet and still report the dead worker as up).
    pub fn wait_all_up_without(&self, killed: &[u32], limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.all_up_without(killed) {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs chctl against this chd; kills it after `limit`.
    pub fn chctl(&self, args: &[&str], limit: Duration) -> anyhow::Result<Output> {
        self.chctl_runner().run(args, limit)
    }

    /// What it takes to run chctl against this chd from another thread.
    pub fn chctl_runner(&self) -> Chctl {
        Chctl { exe: self.chctl.clone(), socket: self.socket.clone() }
    }

    pub fn node_dir(&self, id: u32) -> PathBuf {
        self.data.join("nodes").join(id.to_string())
    }
}

impl Cluster {
    /// Stops chd and unmounts the tmpfs, if any.
    pub fn shutdown(&mut self) {
        self.stop();
        if let Some(mnt) = self.tmpfs.take() {
            let _ = Command::new("umount").arg(&mnt).status();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// kill(2); false if the process is gone.
pub fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: plain kill(2) on a pid we read from chd's status or started ourselves.
    unsafe { libc::kill(pid as i32, sig) == 0 }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// chctl, pointed at one chd.
pub struct Chctl {
    exe: PathBuf,
    socket: PathBuf,
}

impl Chctl {
    /// Runs chctl with `args`, killing it after `limit`.
    pub fn run(&self, args: &[&str], limit: Duration) -> anyhow::Result<Output> {
        let mut child = Command::new(&self.exe)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", self.exe.display()))?;
        let start = Instant::now();
        while child.try_wait()?.is_none() {
            if start.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output()?;
                bail!("chctl {} took longer than {limit:?}; stderr: {}", args.join(" "), lossy(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(child.wait_with_output()?)
    }
}
