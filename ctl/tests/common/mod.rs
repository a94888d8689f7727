//! A real chd in a temporary directory for chctl's tests, started as daemon/tests/common does.
//! chd must be built first (`cargo build -p chd`): it lives next to chctl in the target dir.
#![allow(dead_code)]

use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const CHCTL: &str = env!("CARGO_BIN_EXE_chctl");

pub fn chd_path() -> PathBuf {
    let p = Path::new(CHCTL).with_file_name("chd");
    assert!(p.exists(), "{} is missing: run `cargo build -p chd` first", p.display());
    p
}

pub struct Chd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Child,
}

impl Chd {
    /// Starts chd and waits until `chctl status` answers.
    pub fn start(args: &[&str]) -> Chd {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("chd.sock");
        let log = std::fs::File::create(dir.path().join("chd.log")).unwrap();
        let child = Command::new(chd_path())
            .arg("--config")
            .arg("/dev/null")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let chd = Chd { dir, socket, child };
        let start = Instant::now();
        while !chd.ctl(&["status"]).status.success() {
            assert!(start.elapsed() < Duration::from_secs(60), "chd did not start: {}", chd.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        chd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chd.log")).unwrap_or_default()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(CHCTL);
        c.arg("--socket").arg(&self.socket).args(args);
        c
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// chctl with `stdout` as its standard output (stderr captured).
    pub fn ctl_to(&self, args: &[&str], stdout: Stdio) -> Output {
        self.command(args).stdout(stdout).stderr(Stdio::piped()).output().unwrap()
    }

    pub fn ctl_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child =
            self.command(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // chctl may stop reading early (a value over the limit): a broken pipe here is expected.
        let _ = stdin.write_all(input);
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    pub fn set(&self, key: &str, value: &str) {
        let out = self.ctl(&["set", key, value]);
        assert!(out.status.success(), "set {key}: {}", stderr(&out));
    }
}

impl Drop for Chd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The write end of a pipe whose read end is already closed: every write fails with EPIPE,
/// as `| true` or `| head` after it has read enough, without a race.
pub fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    unsafe {
        libc::close(fds[0]);
        Stdio::from(std::fs::File::from_raw_fd(fds[1]))
    }
}
