//! chctl's exit statuses: what a script can tell apart, decided in one place ([`code_of`]).
//!
//! 0 success; 1 no such key (`get`, `exists`); 2 usage (clap's own code, and chctl's argument
//! checks); 3 cannot reach chd (no socket, connection refused or lost, chd closed it, the socket
//! is served by a user chctl does not trust, a protocol version mismatch: retrying against the
//! same chd may work once chd is (re)started, nothing was done); 4 refused by the rules (not
//! allowed, key or value too large, empty key, no such node, an impossible change: retrying the
//! same request will not help); 5 chd cannot serve it now (too few replicas answered, disk full,
//! another change in progress, nodes not up: retry later); 6 anything else (chctl cannot read its
//! input or write its output, chd's answer made no sense, a rebuild failed).

use std::fmt;

use chd_client::CallError;
use chd_data::Error;

pub const NOT_FOUND: u8 = 1;
pub const USAGE: u8 = 2;
pub const UNREACHABLE: u8 = 3;
pub const REFUSED: u8 = 4;
pub const UNAVAILABLE: u8 = 5;
pub const OTHER: u8 = 6;

/// The exit statuses as `chctl --help` shows them.
pub const HELP: &str = "\
Exit status:
  0  success
  1  no such key (get, exists)
  2  usage: bad arguments
  3  cannot reach chd: not running, connection lost, or a socket served by an untrusted user
  4  refused: permission denied, key or value too large, empty key, no such node
  5  chd cannot serve it now: too few replicas, disk full, another change in progress,
     nodes not up (status --check); retry later
  6  anything else: chctl cannot read its input or write its output
  130  bench interrupted by Ctrl-C, after deleting the keys it wrote";

/// A failure chctl itself classified, with the line to show.
#[derive(Debug)]
pub struct Coded {
    pub code: u8,
    pub message: String,
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

/// An error that exits with `code`.
pub fn fail(code: u8, message: impl Into<String>) -> anyhow::Error {
    Coded { code, message: message.into() }.into()
}

/// chd's answer, by whether retrying could help.
pub fn code_of_chd(e: &Error) -> u8 {
    match e {
        Error::KeyTooLarge { .. }
        | Error::ValueTooLarge { .. }
        | Error::EmptyKey
        | Error::FrameTooLarge { .. }
        | Error::PermissionDenied { .. }
        | Error::NoSuchNode(_) => REFUSED,
        Error::Unavailable { .. } | Error::DiskFull(_) | Error::Internal(_) => UNAVAILABLE,
        // Past max_memory: retrying will not create the key until keys are deleted or the
        // budget is raised.
        Error::OutOfMemory { .. } => REFUSED,
        // chd's Refused carries only text; the refusals that pass with time say so ("wait",
        // "in progress", "shutting down", nodes that "did not come up").
        Error::Refused(why) => {
            let later = ["in progress", "wait", "shutting down", "did not come up"];
            if later.iter().any(|w| why.contains(w)) {
                UNAVAILABLE
            } else {
                REFUSED
            }
        }
        Error::VersionMismatch { .. } | Error::HelloRequired | Error::Malformed(_) => UNREACHABLE,
        // A newer chd's kind of error this chctl does not know.
        _ => OTHER,
    }
}

/// The exit status of a failed command; `None` when the failure is a normal end (stdout's
/// reader went away, see [`crate::out`]).
pub fn code_of(e: &anyhow::Error) -> Option<u8> {
    for cause in e.chain() {
        if let Some(o) = cause.downcast_ref::<crate::out::OutputError>() {
            return if o.is_broken_pipe() { None } else { Some(OTHER) };
        }
        if let Some(c) = cause.downcast_ref::<Coded>() {
            return Some(c.code);
        }
        match cause.downcast_ref::<CallError>() {
            Some(CallError::Chd(e)) => return Some(code_of_chd(e)),
            Some(CallError::Io(_)) => return Some(UNREACHABLE),
            None => {}
        }
        if let Some(e) = cause.downcast_ref::<Error>() {
            return Some(code_of_chd(e));
        }
    }
    Some(OTHER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chd_errors_map_to_what_a_script_can_act_on() {
        let cases = [
            (Error::KeyTooLarge { len: 70_000, max: 65_536 }, REFUSED),
            (Error::ValueTooLarge { len: 1, max: 0 }, REFUSED),
            (Error::EmptyKey, REFUSED),
            (Error::PermissionDenied { uid: 1000 }, REFUSED),
            (Error::NoSuchNode(9), REFUSED),
            (Error::Refused("a ring needs at least R nodes".into()), REFUSED),
            (Error::Unavailable { needed: 2, got: 1 }, UNAVAILABLE),
            (Error::DiskFull("node 1".into()), UNAVAILABLE),
            (Error::OutOfMemory { used: 2 << 30, budget: 1 << 30 }, REFUSED),
            (Error::Refused("another change is in progress (add); wait for it to finish".into()), UNAVAILABLE),
            (
                Error::Refused(
                    "cannot rebuild node 1 while other nodes are not up (2 is failed); wait for them".into(),
                ),
                UNAVAILABLE,
            ),
            (Error::VersionMismatch { client: 1, server: 2 }, UNREACHABLE),
        ];
        for (e, code) in cases {
            assert_eq!(code_of_chd(&e), code, "{e}");
            // Also when it comes back from a call, wrapped in context.
            let wrapped = anyhow::Error::from(CallError::Chd(e)).context("while doing it");
            assert_eq!(code_of(&wrapped), Some(code));
        }
    }

    #[test]
    fn local_failures_and_lost_connections_have_their_own_codes() {
        let lost = anyhow::Error::from(CallError::Io(anyhow::anyhow!("chd closed the connection")));
        assert_eq!(code_of(&lost), Some(UNREACHABLE));
        assert_eq!(code_of(&fail(USAGE, "--clients must be at least 1")), Some(USAGE));
        let pipe = crate::out::OutputError(std::io::ErrorKind::BrokenPipe.into());
        assert_eq!(code_of(&pipe.into()), None);
        let full = crate::out::OutputError(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(code_of(&full.into()), Some(OTHER));
        assert_eq!(code_of(&anyhow::anyhow!("unexpected answer")), Some(OTHER));
    }
}
