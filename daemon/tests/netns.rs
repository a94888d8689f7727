//! TCP endpoints inside a private network namespace (systemd's `PrivateNetwork=yes`, which the
//! packaged unit sets): chd still starts, and says plainly that no client outside can reach
//! them. Needs root (unshare, ip); skips with a message otherwise.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{wait_for, CHD};

#[test]
fn tcp_in_a_private_network_namespace_is_warned_about() {
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["unshare", "ip"].iter().all(|t| Command::new(t).arg("-V").output().is_ok());
    if !root || !tools {
        eprintln!("SKIPPED: needs root, unshare and ip");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chd.toml");
    std::fs::write(&config, "requirepass = \"s3cret\"\nresp_listen = \"127.0.0.1:6390\"\n").unwrap();
    let log = dir.path().join("chd.log");
    let script = format!(
        "ip link set lo up && exec {} --config {} --data-dir {} --socket {}",
        CHD,
        config.display(),
        dir.path().join("data").display(),
        dir.path().join("chd.sock").display()
    );
    let mut child = Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("chd ready", Duration::from_secs(60), || read().contains("chd is ready"));
    let text = read();
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("only a loopback interface"), "{text}");
    assert!(text.contains("chd-tcp.conf"), "{text}");
}
