//! Who may talk to chd: root, chd's own user, and members of the allowed group.
//!
//! Checked on every connection with the peer's credentials from the kernel (`SO_PEERCRED`), on
//! top of the socket file's permissions, so a too-open socket mode alone does not let anyone in.

use nix::unistd::{Gid, Uid, User};

pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

pub fn allowed(peer: &Peer, allowed_gid: Option<u32>) -> bool {
    if peer.uid == 0 || peer.uid == Uid::effective().as_raw() {
        return true;
    }
    let Some(gid) = allowed_gid else { return false };
    peer.gid == gid || supplementary_groups(peer).contains(&gid)
}

/// The peer process's groups: from /proc when visible (exact, includes groups gained by newgrp
/// and the like), else from the group database for its user.
fn supplementary_groups(peer: &Peer) -> Vec<u32> {
    if let Some(pid) = peer.pid {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(line) = status.lines().find(|l| l.starts_with("Groups:")) {
                return line["Groups:".len()..].split_whitespace().filter_map(|g| g.parse().ok()).collect();
            }
        }
    }
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(peer.uid)) else { return Vec::new() };
    let Ok(name) = std::ffi::CString::new(user.name) else { return Vec::new() };
    nix::unistd::getgrouplist(&name, Gid::from_raw(peer.gid))
        .map(|gs| gs.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_default()
}
