//! Issue 9, defect 3: a full disk is a read-only condition, not a crash. While the data dir's
//! filesystem is full, `set` fails fast with "disk full", `get` keeps working, no worker
//! restarts and no database is moved to `quarantine/`; once space is freed, writes resume by
//! themselves.
//!
//! A small filesystem to fill is a tmpfs, and mounting one needs root: without root the test
//! prints why and passes without checking anything.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A tmpfs mounted for the test, unmounted (lazily: workers may still be exiting) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root, cannot mount a tmpfs".into());
        }
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the filesystem has no byte left.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [1 << 20, 4096, 1] {
        let buf = vec![0x5a; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
}

fn quarantined(chd: &Chd) -> usize {
    std::fs::read_dir(chd.data.join("quarantine")).map_or(0, |d| d.count())
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers_once_space_is_freed() {
    let outer = tempfile::tempdir().unwrap();
    let mnt = outer.path().join("mnt");
    let _tmpfs = match Tmpfs::mount(&mnt, "64m") {
        Ok(t) => t,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    // Declared after the mount, so chd is stopped before the unmount.
    let mut chd = Chd {
        dir: tempfile::tempdir().unwrap(),
        data: mnt.join("data"),
        socket: outer.path().join("chd.sock"),
        child: None,
        args: Vec::new(),
    };
    chd.restart();
    for i in 0..20 {
        chd.set(&format!("before-{i}"), &format!("v{i}"));
    }

    let filler = mnt.join("filler");
    fill(&filler);
    let out = chd.ctl(&["set", "during", "x"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "a set on a full disk must fail");
    for i in 0..20 {
        assert_eq!(chd.get(&format!("before-{i}")), Some(format!("v{i}").into_bytes()), "reads go on");
    }
    let nodes = chd.status()["nodes"].as_array().unwrap().clone();
    assert!(nodes.iter().all(|n| n["restarts"] == 0 && n["state"] == "up"), "no worker restarts: {nodes:?}");
    assert_eq!(quarantined(&chd), 0, "a full disk is no reason to set a database aside");

    std::fs::remove_file(&filler).unwrap();
    wait_for("writes to resume", Duration::from_secs(5), || chd.ctl(&["set", "after", "y"]).status.success());
    assert_eq!(chd.get("after").as_deref(), Some(&b"y"[..]));
    assert_eq!(quarantined(&chd), 0);
    assert!(stderr.contains("disk full"), "chctl must say why the set failed: {stderr}");
}
