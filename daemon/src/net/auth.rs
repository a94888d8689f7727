//! Who may talk to chd: root, chd's own user, and members of the allowed group.
//!
//! Checked on every connection with the peer's credentials from the kernel (`SO_PEERCRED`), on
//! top of the socket file's permissions, so a too-open socket mode alone does not let anyone in.
//!
//! Only what `SO_PEERCRED` captured at connect time counts: the uid and gid, plus the
//! supplementary groups the group database gives that uid. The peer's pid is never used: by
//! the time chd looks, that process may have exited and its pid may belong to another one
//! (pids wrap), whose `/proc/<pid>/status` would speak for a stranger.

use nix::unistd::{Gid, Uid, User};

pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// Only to name the client (logs, RESP `CLIENT LIST`); never to decide anything.
    pub pid: Option<i32>,
}

pub fn allowed(peer: &Peer, allowed_gid: Option<u32>) -> bool {
    allowed_with(peer, Uid::effective().as_raw(), allowed_gid, groups_of_uid)
}

/// The decision, with chd's uid and the group lookup passed in so tests need no second user.
fn allowed_with(peer: &Peer, own_uid: u32, allowed_gid: Option<u32>, groups: impl Fn(u32, u32) -> Vec<u32>) -> bool {
    if peer.uid == 0 || peer.uid == own_uid {
        return true;
    }
    let Some(gid) = allowed_gid else { return false };
    peer.gid == gid || groups(peer.uid, peer.gid).contains(&gid)
}

/// The supplementary groups of user `uid` in the group database (a uid with no name has none).
fn groups_of_uid(uid: u32, gid: u32) -> Vec<u32> {
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else { return Vec::new() };
    let Ok(name) = std::ffi::CString::new(user.name) else { return Vec::new() };
    nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
        .map(|gs| gs.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_self_and_the_allowed_group_by_uid_pass_and_nobody_else() {
        let db = |uid: u32, _gid: u32| if uid == 1001 { vec![1001, 50] } else { vec![uid] };
        let peer = |uid, gid| Peer { uid, gid, pid: Some(1) };
        assert!(allowed_with(&peer(0, 0), 999, None, db));
        assert!(allowed_with(&peer(999, 999), 999, None, db));
        assert!(!allowed_with(&peer(1001, 1001), 999, None, db));
        assert!(allowed_with(&peer(1001, 1001), 999, Some(50), db), "member by the group database");
        assert!(allowed_with(&peer(1002, 50), 999, Some(50), db), "primary group from SO_PEERCRED");
        assert!(!allowed_with(&peer(1002, 1002), 999, Some(50), db));
    }
}
