//! Starting worker processes.
//!
//! A worker is chd's own executable run as `chd worker`, never a bare `fork()` of the
//! multi-threaded daemon. All spawns happen on one dedicated thread that lives as long as chd:
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, so a spawn from a
//! short-lived thread would kill the worker with that thread.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;

use chd_data::NodeId;
use tokio::sync::oneshot;

use crate::worker::WORKER_FD;

pub struct Spawned {
    pub pid: u32,
    /// chd's end of the socketpair.
    pub stream: UnixStream,
    /// Fires with the exit status once the process is gone (and reaped).
    pub exited: oneshot::Receiver<ExitStatus>,
}

struct Job {
    id: NodeId,
    dir: PathBuf,
    partitions: u32,
    reply: oneshot::Sender<io::Result<Spawned>>,
}

#[derive(Clone)]
pub struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    pub fn start() -> io::Result<Spawner> {
        let exe = std::env::current_exe()?;
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("spawner".into()).spawn(move || {
            for job in rx {
                let _ = job.reply.send(spawn(&exe, job.id, &job.dir, job.partitions));
            }
        })?;
        Ok(Spawner { jobs })
    }

    pub async fn spawn(&self, id: NodeId, dir: PathBuf, partitions: u32) -> io::Result<Spawned> {
        let (reply, rx) = oneshot::channel();
        self.jobs.send(Job { id, dir, partitions, reply }).map_err(|_| io::Error::other("spawner thread is gone"))?;
        rx.await.map_err(|_| io::Error::other("spawner thread is gone"))?
    }
}

fn spawn(exe: &std::path::Path, id: NodeId, dir: &std::path::Path, partitions: u32) -> io::Result<Spawned> {
    let (ours, theirs) = UnixStream::pair()?;
    let theirs_fd = theirs.as_raw_fd();
    let parent = std::process::id() as libc::pid_t;
    let mut cmd = Command::new(exe);
    cmd.arg("worker")
        .arg("--id")
        .arg(id.to_string())
        .arg("--dir")
        .arg(dir)
        .arg("--partitions")
        .arg(partitions.to_string())
        .stdin(Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe syscalls run here.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // chd died between fork and prctl: nobody would kill us later.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            // The terminal's hangup reaches chd's whole process group; chd handles it, and a
            // worker stops only when chd says so.
            if libc::signal(libc::SIGHUP, libc::SIG_IGN) == libc::SIG_ERR {
                return Err(io::Error::last_os_error());
            }
            if theirs_fd == WORKER_FD {
                // dup2 onto itself would keep close-on-exec set; clear it instead.
                if libc::fcntl(WORKER_FD, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_fd, WORKER_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(theirs);
    let pid = child.id();
    let (tx, exited) = oneshot::channel();
    std::thread::Builder::new().name(format!("reap-{id}")).spawn(move || {
        if let Ok(status) = child.wait() {
            let _ = tx.send(status);
        }
    })?;
    Ok(Spawned { pid, stream: ours, exited })
}
