//! Finding and killing the processes that use a mount, and tearing down a FUSE connection.
//!
//! A process uses the mount if its cwd, root, executable, an open descriptor or a mapped file
//! lies under the mountpoint, as `/proc/<pid>/{cwd,root,exe,fd/*,map_files/*}` show. Reading
//! those links asks the kernel's dentry cache, never the FUSE server, so a scan cannot hang on
//! the filesystem it is about to cut. The calling process is never a user (it would kill the
//! harness); its own descriptors into the mount simply go stale.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

fn under(link: &Path, mountpoint: &Path) -> bool {
    fs::read_link(link).is_ok_and(|p| p.starts_with(mountpoint))
}

fn uses(pid: i32, mountpoint: &Path) -> bool {
    let base = Path::new("/proc").join(pid.to_string());
    if ["cwd", "root", "exe"].iter().any(|l| under(&base.join(l), mountpoint)) {
        return true;
    }
    ["fd", "map_files"]
        .iter()
        .any(|d| fs::read_dir(base.join(d)).is_ok_and(|it| it.flatten().any(|e| under(&e.path(), mountpoint))))
}

/// Every process but this one that uses the mount at `mountpoint`.
pub fn users_of(mountpoint: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(procs) = fs::read_dir("/proc") else { return Vec::new() };
    let mut pids: Vec<i32> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && uses(pid, mountpoint))
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether `pid` has exited (gone, or a zombie whose descriptors are closed).
fn exited(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()) == Some('Z'),
        Err(_) => true,
    }
}

/// SIGKILLs every pid, then waits (up to `limit`) until all have exited. Returns those still
/// alive at the limit.
pub fn kill_and_wait(pids: &[i32], limit: Duration) -> Vec<i32> {
    for &pid in pids {
        // SAFETY: kill(2) with a plain pid; a pid that is already gone only yields ESRCH.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let start = Instant::now();
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|&p| !exited(p)).collect();
        if alive.is_empty() || start.elapsed() >= limit {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

const FUSECTL: &str = "/sys/fs/fuse/connections";

/// The FUSE connection id of the filesystem mounted at `mountpoint`: its device number as the
/// kernel writes it (`major << 20 | minor`), the name of its directory under fusectl.
pub fn connection_of(mountpoint: &Path) -> Option<u64> {
    let st = nix::sys::stat::stat(mountpoint).ok()?;
    let dev = st.st_dev;
    Some((libc::major(dev) as u64) << 20 | libc::minor(dev) as u64)
}

/// Aborts a FUSE connection, so every request still waiting fails and the server's session
/// ends even if some process still holds a file open. Mounts fusectl first if needed (root).
pub fn abort_connection(conn: u64) -> bool {
    let dir = Path::new(FUSECTL);
    if !dir.join(conn.to_string()).exists() {
        let _ = nix::mount::mount(Some("fusectl"), dir, Some("fusectl"), nix::mount::MsFlags::empty(), None::<&str>);
    }
    fs::write(dir.join(conn.to_string()).join("abort"), b"1").is_ok()
}
