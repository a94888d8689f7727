//! Whether the process behind a socket may be told a user's keys and values.
//!
//! Anyone can create a socket at a path a user's chctl will try (a stale `/tmp` path, a
//! `$CHD_SOCKET` left set); whoever does would receive every key and value sent to it. So a
//! client checks, before it sends a single byte, who serves the socket. The kernel says it
//! (`SO_PEERCRED`: the uid of the process that listens), and it is trusted only if it is:
//! - root (who can read everything anyway),
//! - the caller's own uid (a chd the user started), or
//! - chd's service user: the user named by `--server-user` / `$CHD_SERVER_USER` (a name or a
//!   uid), else the user `chd` of the packaged service if that user exists.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail};

/// The default service user: the packaged systemd unit runs chd as `chd`.
pub const SERVICE_USER: &str = "chd";

static SERVER_USER: OnceLock<String> = OnceLock::new();

/// Names chd's service user for this process (chctl's `--server-user`), overriding
/// `$CHD_SERVER_USER`. Only the first call counts.
pub fn set_server_user(user: &str) {
    let _ = SERVER_USER.set(user.to_string());
}

/// The uid of chd's service user, if there is one; an explicit name that does not exist is an
/// error (a typo must not silently trust nobody or everybody).
fn service_uid() -> anyhow::Result<Option<u32>> {
    let named = SERVER_USER.get().cloned().or_else(|| std::env::var("CHD_SERVER_USER").ok().filter(|v| !v.is_empty()));
    match named {
        None => Ok(uid_of(SERVICE_USER)),
        Some(n) => match n.parse::<u32>() {
            Ok(uid) => Ok(Some(uid)),
            Err(_) => uid_of(&n)
                .map(Some)
                .ok_or_else(|| anyhow!("server user {n:?} (--server-user, $CHD_SERVER_USER) does not exist")),
        },
    }
}

fn uid_of(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
}

fn name_of(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("uid {uid} ({})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// The rule: root, the caller, or the service user.
pub fn trusted(server_uid: u32, own_uid: u32, service_uid: Option<u32>) -> bool {
    server_uid == 0 || server_uid == own_uid || Some(server_uid) == service_uid
}

/// The uid of the process listening at the other end of `stream`, as the kernel recorded it.
pub fn server_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt fills at most `len` bytes of `cred`, a plain C struct we own.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Refuses, saying why, unless the server at the other end of `stream` is trusted.
pub fn check(stream: &UnixStream, socket: &Path) -> anyhow::Result<()> {
    let server = server_uid(stream).map_err(|e| anyhow!("cannot tell who serves {}: {e}", socket.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let service = service_uid()?;
    if trusted(server, me, service) {
        return Ok(());
    }
    let service = match service {
        Some(uid) => format!("chd's service user ({})", name_of(uid)),
        None => format!("chd's service user (no user {SERVICE_USER:?} here)"),
    };
    bail!(
        "refusing to talk to {}: it is served by {}, which is not root, you ({}) or {service}; anyone who creates that path first would get your keys and values. If it is really chd, name its user with --server-user or $CHD_SERVER_USER",
        socket.display(),
        name_of(server),
        name_of(me),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_the_caller_and_the_service_user_are_trusted_and_nobody_else() {
        assert!(trusted(0, 1000, None));
        assert!(trusted(1000, 1000, None));
        assert!(trusted(998, 1000, Some(998)));
        assert!(!trusted(1001, 1000, Some(998)));
        assert!(!trusted(1001, 1000, None));
    }

    #[test]
    fn a_server_run_by_the_caller_is_trusted() {
        let (a, _b) = UnixStream::pair().unwrap();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(server_uid(&a).unwrap(), unsafe { libc::geteuid() });
        check(&a, Path::new("pair")).unwrap();
    }
}
