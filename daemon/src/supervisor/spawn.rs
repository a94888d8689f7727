//! Starting worker processes.
//!
//! A worker is chd's own executable run as `chd worker`, never a bare `fork()` of the
//! multi-threaded daemon. All spawns happen on one dedicated thread that lives as long as chd:
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, so a spawn from a
//! short-lived thread would kill the worker with that thread.
//!
//! Before each spawn the node's directory is created if missing and fsynced into `nodes/`
//! (see [`crate::datadir`]), so no worker ever writes into a directory a power cut could undo.
//!
//! A worker is signalled only through its [`Process`]: a pidfd opened before anyone could reap
//! the child, so a signal can never reach another process that got the pid after the worker
//! was reaped (pids wrap: `pid_max` is 32768 on many hosts). Where pidfds are missing (Linux
//! before 5.3), the reaper holds a lock from the moment the child exits until it is reaped,
//! and a signal is sent under that lock only to a child not reaped yet.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};

use chd_data::proto::EngineKind;
use chd_data::NodeId;
use tokio::sync::oneshot;

use crate::storage::append::Shape;
use crate::worker::{HEALTH_FD, WORKER_FD};

pub struct Spawned {
    pub pid: u32,
    /// The only way to signal the worker.
    pub process: Process,
    /// chd's end of the socketpair for requests.
    pub stream: UnixStream,
    /// chd's end of the socketpair for health pings (answered even while a batch syncs).
    pub health: UnixStream,
    /// Fires with the exit status once the process is gone (and reaped).
    pub exited: oneshot::Receiver<ExitStatus>,
}

struct Job {
    id: NodeId,
    dir: PathBuf,
    partitions: u32,
    engine: EngineKind,
    reply: oneshot::Sender<io::Result<Spawned>>,
}

#[derive(Clone)]
pub struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    /// Starts the spawner thread. Every worker gets `cache_mib` MiB of database cache, and
    /// its log the sizes `shape`.
    pub fn start(cache_mib: u64, shape: Shape) -> io::Result<Spawner> {
        let exe = std::env::current_exe()?;
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("spawner".into()).spawn(move || {
            for job in rx {
                let spawned = spawn(&exe, &job, cache_mib, shape);
                let _ = job.reply.send(spawned);
            }
        })?;
        Ok(Spawner { jobs })
    }

    /// Starts node `id`'s worker on `dir`; a database created there gets `engine`.
    pub async fn spawn(&self, id: NodeId, dir: PathBuf, partitions: u32, engine: EngineKind) -> io::Result<Spawned> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { id, dir, partitions, engine, reply })
            .map_err(|_| io::Error::other("spawner thread is gone"))?;
        rx.await.map_err(|_| io::Error::other("spawner thread is gone"))?
    }
}

fn spawn(exe: &std::path::Path, job: &Job, cache_mib: u64, shape: Shape) -> io::Result<Spawned> {
    let (id, dir, partitions) = (job.id, job.dir.as_path(), job.partitions);
    // The worker's database lives in `dir`; its name must be durable before the worker
    // acknowledges anything written there, or a power cut takes the whole node.
    crate::datadir::create_dir_durable(dir)?;
    let (ours, theirs) = UnixStream::pair()?;
    let (health_ours, health_theirs) = UnixStream::pair()?;
    let (theirs_fd, health_fd) = (theirs.as_raw_fd(), health_theirs.as_raw_fd());
    let parent = std::process::id() as libc::pid_t;
    let mut cmd = Command::new(exe);
    cmd.arg("worker")
        .arg("--id")
        .arg(id.to_string())
        .arg("--dir")
        .arg(dir)
        .arg("--partitions")
        .arg(partitions.to_string())
        .arg("--engine")
        .arg(job.engine.as_str())
        .arg("--cache-mib")
        .arg(cache_mib.to_string())
        .arg("--log-segment-bytes")
        .arg(shape.segment_bytes.to_string())
        .arg("--index-rebuild-min")
        .arg(shape.rebuild_min.to_string())
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
            // Each end goes to its fixed fd. Copied above both fds first, so that placing one
            // never overwrites the other (either may already sit on 3 or 4); dup2 clears
            // close-on-exec on the copy it makes.
            let high =
                [libc::fcntl(theirs_fd, libc::F_DUPFD_CLOEXEC, 10), libc::fcntl(health_fd, libc::F_DUPFD_CLOEXEC, 10)];
            if high.iter().any(|&fd| fd < 0) || libc::dup2(high[0], WORKER_FD) < 0 || libc::dup2(high[1], HEALTH_FD) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop((theirs, health_theirs));
    let pid = child.id();
    let (process, exited) = track(child, &format!("reap-{id}"))?;
    Ok(Spawned { pid, process, stream: ours, health: health_ours, exited })
}

/// A child process that chd may signal for as long as it holds this, and never after it was
/// reaped.
#[derive(Clone)]
pub struct Process {
    pid: u32,
    pidfd: Option<Arc<OwnedFd>>,
    /// True once the child is reaped; held by the reaper from the child's exit to its reaping.
    reaped: Arc<Mutex<bool>>,
}

impl Process {
    /// Sends SIGKILL to this very process. Once it is gone, nothing is signalled.
    pub fn kill(&self) -> io::Result<()> {
        if let Some(fd) = &self.pidfd {
            // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo.
            let r = unsafe {
                libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0)
            };
            return if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
        }
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        if *reaped {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // SAFETY: kill(2) on our own unreaped child: the pid cannot have been reused.
        if unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Takes charge of `child`: opens its pidfd while it cannot have been reaped yet (nobody waits
/// for it before this returns), and starts the thread that reaps it and reports its status.
fn track(mut child: Child, thread: &str) -> io::Result<(Process, oneshot::Receiver<ExitStatus>)> {
    let pid = child.id();
    // SAFETY: pidfd_open with no flags; the fd returned is ours alone.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a new fd from the kernel, owned by nothing else.
    let pidfd = (fd >= 0).then(|| Arc::new(unsafe { OwnedFd::from_raw_fd(fd as i32) }));
    let reaped = Arc::new(Mutex::new(false));
    let process = Process { pid, pidfd, reaped: reaped.clone() };
    let (tx, exited) = oneshot::channel();
    std::thread::Builder::new().name(thread.into()).spawn(move || {
        // Wait for the exit without reaping, then reap under the lock, so a signal sent
        // without a pidfd always finds the child itself (alive or a zombie).
        loop {
            // SAFETY: waitid on our own child with a zeroed siginfo to fill.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        let mut reaped = reaped.lock().unwrap_or_else(|e| e.into_inner());
        let status = child.wait();
        *reaped = true;
        drop(reaped);
        if let Ok(status) = status {
            let _ = tx.send(status);
        }
    })?;
    Ok((process, exited))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// Issue 11 item 9: chd used to `kill(pid)` a worker that its reaper may already have
    /// reaped; here the pid is handed to another process on purpose (`ns_last_pid`), and the
    /// stale handle must not touch it.
    #[test]
    fn a_reaped_worker_s_handle_never_signals_the_process_that_reuses_its_pid() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: forcing a pid to be reused (ns_last_pid) needs root");
            return;
        }
        let sleeper = || Command::new("sleep").arg("1000").stdin(Stdio::null()).spawn().unwrap();
        let (worker, exited) = track(sleeper(), "reap-test").unwrap();
        worker.kill().unwrap();
        let status = exited.blocking_recv().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));

        // The next process gets the old pid. Other processes on the machine fork too, so try
        // a few times.
        let mut stranger = None;
        for _ in 0..50 {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (worker.pid - 1).to_string()).unwrap();
            let mut c = sleeper();
            if c.id() == worker.pid {
                stranger = Some(c);
                break;
            }
            c.kill().unwrap();
            c.wait().unwrap();
        }
        let Some(mut stranger) = stranger else {
            eprintln!("skipped: could not get pid {} handed out again", worker.pid);
            return;
        };
        // With a plain kill(pid) this SIGKILL would hit the stranger.
        let err = worker.kill().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "{err}");
        // SIGKILL takes effect when sent: had it been sent, the stranger would end by SIGKILL
        // whatever follows. It ends by the SIGTERM sent now.
        // SAFETY: kill(2) on our own unreaped child.
        assert_eq!(unsafe { libc::kill(stranger.id() as libc::pid_t, libc::SIGTERM) }, 0);
        assert_eq!(stranger.wait().unwrap().signal(), Some(libc::SIGTERM));
    }
}
