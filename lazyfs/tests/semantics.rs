//! What survives a power cut on the lazy filesystem: only what was fsynced, names only after
//! their directory was fsynced.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use common::{fsync_dir, write_synced, Mount};

#[test]
fn a_synced_write_survives_a_cut() {
    let Some(m) = Mount::new() else { return };
    write_synced(&m.path("f"), b"durable");
    fsync_dir(&m.path(""));
    m.cut();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"durable");
}

#[test]
fn an_unsynced_write_is_lost_and_the_old_content_and_size_come_back() {
    let Some(m) = Mount::new() else { return };
    write_synced(&m.path("f"), b"old contents");
    fsync_dir(&m.path(""));
    let f = OpenOptions::new().write(true).open(m.path("f")).unwrap();
    f.write_all_at(b"NEW", 0).unwrap();
    f.write_all_at(b" and a longer tail", 12).unwrap();
    drop(f);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"NEW contents and a longer tail");
    m.cut();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"old contents");
}

#[test]
fn an_unsynced_truncate_is_undone() {
    let Some(m) = Mount::new() else { return };
    write_synced(&m.path("f"), &[7u8; 10_000]);
    fsync_dir(&m.path(""));
    OpenOptions::new().write(true).open(m.path("f")).unwrap().set_len(3).unwrap();
    assert_eq!(fs::metadata(m.path("f")).unwrap().len(), 3);
    m.cut();
    assert_eq!(fs::read(m.path("f")).unwrap(), vec![7u8; 10_000]);
}

#[test]
fn a_synced_truncate_and_regrow_reads_zeros() {
    let Some(m) = Mount::new() else { return };
    write_synced(&m.path("f"), &[7u8; 10_000]);
    fsync_dir(&m.path(""));
    let f = OpenOptions::new().write(true).open(m.path("f")).unwrap();
    f.set_len(100).unwrap();
    f.set_len(5000).unwrap();
    f.sync_data().unwrap();
    m.cut();
    let mut want = vec![7u8; 100];
    want.resize(5000, 0);
    assert_eq!(fs::read(m.path("f")).unwrap(), want);
}

#[test]
fn a_file_fsynced_in_a_directory_never_fsynced_is_gone() {
    let Some(m) = Mount::new() else { return };
    write_synced(&m.path("f"), b"data synced, name not");
    assert!(m.path("f").exists());
    m.cut();
    assert!(!m.path("f").exists());
    assert_eq!(fs::read_dir(m.path("")).unwrap().count(), 0);
}

#[test]
fn a_name_made_durable_before_its_data_shows_an_empty_file() {
    let Some(m) = Mount::new() else { return };
    File::create(m.path("f")).unwrap().write_all(b"never synced").unwrap();
    fsync_dir(&m.path(""));
    m.cut();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"");
}

#[test]
fn a_rename_without_a_directory_fsync_is_undone() {
    let Some(m) = Mount::new() else { return };
    write_synced(&m.path("old"), b"v1");
    fsync_dir(&m.path(""));
    fs::rename(m.path("old"), m.path("new")).unwrap();
    m.cut();
    assert_eq!(fs::read(m.path("old")).unwrap(), b"v1");
    assert!(!m.path("new").exists());
}

#[test]
fn a_rename_with_a_directory_fsync_stays() {
    let Some(m) = Mount::new() else { return };
    // chd's way to replace a file: write a temporary, fsync it, rename over, fsync the dir.
    write_synced(&m.path("cluster.json"), b"old");
    fsync_dir(&m.path(""));
    write_synced(&m.path("cluster.json.tmp"), b"new");
    fs::rename(m.path("cluster.json.tmp"), m.path("cluster.json")).unwrap();
    fsync_dir(&m.path(""));
    m.cut();
    assert_eq!(fs::read(m.path("cluster.json")).unwrap(), b"new");
    assert!(!m.path("cluster.json.tmp").exists());
}

#[test]
fn a_mkdir_without_a_parent_fsync_is_undone_and_with_one_stays_empty() {
    let Some(m) = Mount::new() else { return };
    fs::create_dir(m.path("kept")).unwrap();
    fs::create_dir(m.path("kept/lost")).unwrap();
    write_synced(&m.path("kept/lost/f"), b"x");
    fsync_dir(&m.path("kept/lost"));
    fsync_dir(&m.path(""));
    m.cut();
    assert!(m.path("kept").is_dir());
    assert!(!m.path("kept/lost").exists());
}

#[test]
fn unlink_and_rmdir_are_undone_without_a_directory_fsync() {
    let Some(m) = Mount::new() else { return };
    fs::create_dir(m.path("d")).unwrap();
    write_synced(&m.path("f"), b"f");
    fsync_dir(&m.path(""));
    fs::remove_file(m.path("f")).unwrap();
    fs::remove_dir(m.path("d")).unwrap();
    m.cut();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"f");
    assert!(m.path("d").is_dir());
    fs::remove_file(m.path("f")).unwrap();
    fsync_dir(&m.path(""));
    m.cut();
    assert!(!m.path("f").exists());
}

#[test]
fn hard_links_and_symlinks_follow_their_directory() {
    let Some(m) = Mount::new() else { return };
    write_synced(&m.path("f"), b"shared");
    fs::hard_link(m.path("f"), m.path("g")).unwrap();
    std::os::unix::fs::symlink("f", m.path("s")).unwrap();
    fsync_dir(&m.path(""));
    m.cut();
    assert_eq!(fs::read(m.path("g")).unwrap(), b"shared");
    assert_eq!(fs::read_link(m.path("s")).unwrap(), std::path::Path::new("f"));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(m.path("f")).unwrap().nlink(), 2);
}

#[test]
fn large_writes_and_reads_round_trip_and_sync() {
    let Some(m) = Mount::new() else { return };
    let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i * 7 + i / 4096) as u8).collect();
    write_synced(&m.path("big"), &data);
    fsync_dir(&m.path(""));
    assert_eq!(fs::read(m.path("big")).unwrap(), data);
    m.cut();
    assert_eq!(fs::read(m.path("big")).unwrap(), data);
}

#[test]
fn a_cut_kills_every_process_using_the_mount() {
    let Some(m) = Mount::new() else { return };
    fs::create_dir(m.path("work")).unwrap();
    // One process only has its cwd there, one holds a file open.
    let mut by_cwd = Command::new("sleep").arg("600").current_dir(m.path("work")).spawn().unwrap();
    let mut by_fd = Command::new("sh")
        .arg("-c")
        .arg(format!("exec 3>{}; exec sleep 600", m.path("held").display()))
        .spawn()
        .unwrap();
    let mut outside = Command::new("sleep").arg("600").spawn().unwrap();
    wait_for(|| m.path("held").exists());
    let report = m.fs.power_cut().unwrap();
    assert_eq!(by_cwd.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert_eq!(by_fd.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert!(report.killed.contains(&(by_cwd.id() as i32)));
    assert!(report.survivors.is_empty());
    assert!(outside.try_wait().unwrap().is_none(), "a process not using the mount was killed");
    outside.kill().unwrap();
    outside.wait().unwrap();
    // The mount is back and usable.
    write_synced(&m.path("after"), b"ok");
    assert_eq!(fs::read(m.path("after")).unwrap(), b"ok");
}

fn wait_for(mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "timed out");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn the_binary_cuts_on_a_control_request() {
    if let Some(why) = chd_lazyfs::cannot_mount() {
        eprintln!("skipping: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (disk, mnt, sock) = (dir.path().join("disk"), dir.path().join("mnt"), dir.path().join("ctl.sock"));
    fs::create_dir(&disk).unwrap();
    fs::create_dir(&mnt).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chd-lazyfs"))
        .arg(&disk)
        .arg(&mnt)
        .arg("--control")
        .arg(&sock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Killed if an assertion fails, so no orphan keeps the mount (and this test's pipes).
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: kill(2) on our own child's pid; ESRCH once it has been reaped is harmless.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let _guard = KillOnDrop(child.id());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line, "ready\n");
    assert_eq!(chd_lazyfs::control::request(&sock, "ping").unwrap(), "ok");
    write_synced(&mnt.join("kept"), b"k");
    fsync_dir(&mnt);
    write_synced(&mnt.join("lost"), b"l");
    let reply = chd_lazyfs::control::request(&sock, "cut").unwrap();
    assert!(reply.starts_with("ok killed="), "{reply}");
    assert!(mnt.join("kept").exists());
    assert!(!mnt.join("lost").exists());
    // SIGTERM unmounts and exits.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!mnt.join("kept").exists(), "still mounted after exit");
}
