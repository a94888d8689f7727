//! Binding the Unix sockets chd serves (its own and RESP's) so that nobody else can take,
//! replace or widen them, and the TCP listeners of the optional endpoints.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use anyhow::{bail, Context};
use tokio::net::UnixListener;
use tracing::{info, warn};

use crate::hooks::pause_point_blocking;

/// Binds the socket, refusing if a live chd answers on it and replacing a stale socket left by
/// one that was killed. The socket is born with its final mode (the umask is set around
/// `bind`), so it is never reachable with a wider one, not even for a moment.
pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> anyhow::Result<UnixListener> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Pause points are named after the socket: chd binds more than one (RESP).
    let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    pause_point_blocking(&format!("socket-dir:{name}"));
    prepare_socket_dir(dir, group)?;
    remove_stale_socket(path)?;
    // The umask is process-wide: this runs before the spawner thread and any task that creates
    // files, so nothing else is created under it.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(!mode & 0o777));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.with_context(|| format!("cannot listen on {}", path.display()))?;
    pause_point_blocking(&format!("socket-bound:{name}"));
    // The allowed group owns the socket, so that a mode like 0660 lets its members in. Until
    // then the group is chd's own, whose members the credential check still refuses.
    if let Some(gid) = group.filter(|&g| g != nix::unistd::Gid::effective().as_raw()) {
        if let Err(e) = nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))) {
            warn!(socket = %path.display(), gid, error = %e, "cannot give the socket to the allowed group; its members need a socket_mode that lets them in");
        }
    }
    Ok(listener)
}

/// Makes sure nobody but chd's user (and root) can replace or swap the socket: the directory is
/// created 0700 by chd itself (`mkdir`, which fails if someone made it first), and an existing
/// one must be owned by chd's user or root and not writable by others.
fn prepare_socket_dir(dir: &Path, group: Option<u32>) -> anyhow::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => info!(dir = %dir.display(), "created the socket directory"),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create socket directory {}", dir.display())),
    }
    // Followed if a symlink: what counts is who can change the directory the socket lands in.
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot inspect socket directory {}", dir.display()))?;
    let ours = SocketDirOwner {
        uid: nix::unistd::Uid::effective().as_raw(),
        gids: [Some(nix::unistd::Gid::effective().as_raw()), group].into_iter().flatten().collect(),
    };
    if let Some(why) = socket_dir_problem(meta.is_dir(), meta.uid(), meta.gid(), meta.mode(), &ours) {
        bail!("socket directory {}: {why}; fix it or pass --socket", dir.display());
    }
    Ok(())
}

struct SocketDirOwner {
    uid: u32,
    /// Groups whose write access to the directory is no stranger's.
    gids: Vec<u32>,
}

/// Why a directory is not safe to hold chd's socket, if it is not. A sticky world-writable
/// directory such as `/tmp` is safe: others cannot remove or rename what chd creates there.
fn socket_dir_problem(is_dir: bool, uid: u32, gid: u32, mode: u32, us: &SocketDirOwner) -> Option<String> {
    if !is_dir {
        return Some("not a directory".into());
    }
    if uid != us.uid && uid != 0 {
        return Some(format!("owned by uid {uid}, not by chd's user ({}) or root", us.uid));
    }
    let sticky = mode & 0o1000 != 0;
    if mode & 0o002 != 0 && !sticky {
        return Some(format!("mode {:o} lets every user replace the socket", mode & 0o7777));
    }
    if mode & 0o020 != 0 && !sticky && !us.gids.contains(&gid) {
        return Some(format!("mode {:o} lets group {gid} replace the socket", mode & 0o7777));
    }
    None
}

/// Removes what a killed chd left at `path`: only a socket, only when nobody answers on it, and
/// never by following a symlink. Anything else there is someone's file; chd refuses to start.
fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    };
    let kind = meta.file_type();
    if !kind.is_socket() {
        let what = if kind.is_symlink() {
            "a symlink"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "not a socket"
        };
        bail!("{} is {what}; chd removes only a stale socket of its own; remove it or pass --socket", path.display());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!("another chd is serving socket {}; stop it first", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            warn!(socket = %path.display(), "removing stale socket of a chd that is gone");
            std::fs::remove_file(path).with_context(|| format!("cannot remove stale socket {}", path.display()))
        }
        Err(e) => bail!("cannot tell whether socket {} is stale: {e}; remove it or pass --socket", path.display()),
    }
}

/// Fails if a live chd answers on `path`, before anything is created for a second one.
pub fn refuse_live_socket(path: &Path) -> anyhow::Result<()> {
    // Only connects (never removes): following a symlink here harms nobody.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another chd is serving socket {}; stop it first", path.display());
    }
    Ok(())
}

/// The identity (device, inode) of what is at `path` itself, not following a symlink.
pub fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A TCP listener on `addr` if the setting named `setting` gives one.
pub async fn listen_tcp(
    addr: Option<std::net::SocketAddr>,
    setting: &str,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => bail!(
            "{setting}: cannot listen on {addr}: {e}; chd may use only Unix sockets here (systemd's \
             RestrictAddressFamilies=): install the drop-in chd-tcp.conf (see the README)"
        ),
        Err(e) => return Err(e).with_context(|| format!("{setting}: cannot listen on {addr}")),
    };
    if only_loopback_interface(&std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default()) {
        warn!(
            setting,
            address = %addr,
            "listening in a network namespace with only a loopback interface of its own (systemd's \
             PrivateNetwork=?): clients outside it cannot connect; install the drop-in chd-tcp.conf (see the README)"
        );
    }
    Ok(Some(listener))
}

/// Whether `/proc/self/net/dev` lists the loopback interface and nothing else: a private
/// network namespace, which nothing outside reaches even on 127.0.0.1.
fn only_loopback_interface(dev: &str) -> bool {
    let mut names = dev.lines().skip(2).filter_map(|l| l.split(':').next()).map(str::trim);
    names.next() == Some("lo") && names.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_with_only_loopback_is_told_from_a_host() {
        let head = "Inter-|   Receive\n face |bytes    packets\n";
        assert!(only_loopback_interface(&format!("{head}    lo: 0 0 0\n")));
        assert!(!only_loopback_interface(&format!("{head}    lo: 0 0\n  eth0: 1 2\n")));
        assert!(!only_loopback_interface(""));
    }
}
