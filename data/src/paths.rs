//! Where chd and chctl look for the socket when none is given: the same order in both, so a
//! chctl run by the same user in the same environment finds the chd it started.

use std::env;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// The socket chd listens on in the packaged systemd service.
pub const SYSTEM_SOCKET: &str = "/run/chd/chd.sock";

/// `$CHD_SOCKET`, else `$RUNTIME_DIRECTORY/chd.sock` (set by systemd), else
/// `$XDG_RUNTIME_DIR/chd.sock`, else `/tmp/chd-$UID/chd.sock`.
pub fn default_socket() -> PathBuf {
    if let Some(p) = non_empty("CHD_SOCKET") {
        return PathBuf::from(p);
    }
    if let Some(dirs) = non_empty("RUNTIME_DIRECTORY") {
        // systemd separates several directories with ':'; ours is the first.
        let first = dirs.split(':').next().unwrap_or(&dirs);
        return PathBuf::from(first).join("chd.sock");
    }
    if let Some(d) = non_empty("XDG_RUNTIME_DIR") {
        return PathBuf::from(d).join("chd.sock");
    }
    PathBuf::from(format!("/tmp/chd-{}/chd.sock", current_uid()))
}

/// The effective uid, read without libc (the owner of `/proc/self`).
pub fn current_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

fn non_empty(var: &str) -> Option<String> {
    env::var(var).ok().filter(|v| !v.is_empty())
}
