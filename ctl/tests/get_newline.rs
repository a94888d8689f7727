//! `chctl get` ends the line on a terminal only (issue 14, defect 5).

mod common;

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;

use common::{stderr, Chd};

/// A pseudo-terminal: (master to read from, slave as the child's stdout).
fn pty() -> (std::fs::File, Stdio) {
    let (mut master, mut slave) = (0, 0);
    let rc =
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(rc, 0, "openpty");
    // Raw output: no "\n" -> "\r\n" translation, so the bytes read are the bytes written.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(slave, &mut t);
        libc::cfmakeraw(&mut t);
        libc::tcsetattr(slave, libc::TCSANOW, &t);
        (std::fs::File::from_raw_fd(master), Stdio::from(OwnedFd::from_raw_fd(slave)))
    }
}

#[test]
fn get_ends_the_line_on_a_terminal_and_not_in_a_pipe() {
    let chd = Chd::start(&["--nodes", "3"]);
    chd.set("k", "hello");
    chd.set("nl", "line\n");

    let out = chd.ctl(&["get", "k"]);
    assert_eq!(out.stdout, b"hello", "a pipe gets the bytes exactly");

    for (key, shown) in [("k", &b"hello\n"[..]), ("nl", b"line\n")] {
        let (mut master, slave) = pty();
        let out = chd.ctl_to(&["get", key], slave);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        // The child has exited and closed the slave: what it wrote is all in the master.
        let mut buf = vec![0; 64];
        let n = master.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], shown, "get {key} on a terminal");
    }
}
