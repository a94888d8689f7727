//! Who can reach chd's data, and whom chctl talks to (issue 11, items 4-8, 10, 11).
//!
//! Checked as root and as an ordinary user (CI runs this binary both ways); the checks that
//! need a second identity (a stranger) run as root only, and say so when skipped.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{chctl_path, wait_for, Chd};

/// The uid and gid of the stranger: `nobody`, which exists on every Linux system.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Starts `chd` with umask 000 (the worst a caller can give it), stopped at the debug pause
/// `point` if one is given; returns the pause file to remove to let it go on.
fn spawn(chd: &mut Chd, point: Option<&str>) -> PathBuf {
    let pause = chd.dir.path().join("pause");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(chd.dir.path().join("chd.log")).unwrap();
    let mut cmd = chd.command();
    if let Some(point) = point {
        cmd.env("CHD_TEST_PAUSE_AT", point).env("CHD_TEST_PAUSE_FILE", &pause);
    }
    // SAFETY: umask is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    chd.child = Some(cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap());
    if point.is_some() {
        wait_for("chd to pause", Duration::from_secs(30), || pause.exists());
    }
    pause
}

/// Runs chd to its end (it is expected to refuse to start); returns its log.
fn refused(chd: &mut Chd) -> String {
    let mut status = None;
    let child = chd.child.as_mut().unwrap();
    wait_for("chd to refuse to start", Duration::from_secs(60), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    chd.child = None;
    assert!(!status.unwrap().success(), "chd stopped cleanly: {}", chd.log());
    chd.log()
}

/// Item 4: the socket used to be created with the umask's mode and chmod-ed afterwards.
#[test]
fn the_socket_never_exists_with_a_wider_mode_than_configured() {
    let mut chd = Chd::unstarted(&[]);
    let pause = spawn(&mut chd, Some("socket-bound:chd.sock"));
    // The moment between bind and the old chmod: the socket exists, chd does not serve yet.
    assert_eq!(mode(&chd.socket), 0o600, "socket mode right after bind, umask 000");
    std::fs::remove_file(pause).unwrap();
    chd.wait_all_up(Duration::from_secs(60));
    assert_eq!(mode(&chd.socket), 0o600);
}

/// Item 5: stale-socket removal unlinked whatever was at the path.
#[test]
fn only_a_dead_socket_is_removed_never_a_file_or_a_symlink() {
    let mut chd = Chd::unstarted(&[]);
    std::fs::write(&chd.socket, "someone's file").unwrap();
    spawn(&mut chd, None);
    let log = refused(&mut chd);
    assert!(log.contains("not a socket"), "{log}");
    assert_eq!(std::fs::read_to_string(&chd.socket).unwrap(), "someone's file");

    std::fs::remove_file(&chd.socket).unwrap();
    let victim = chd.dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, &chd.socket).unwrap();
    spawn(&mut chd, None);
    let log = refused(&mut chd);
    assert!(log.contains("is a symlink"), "{log}");
    assert!(std::fs::symlink_metadata(&chd.socket).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

    // A socket nobody answers on (a killed chd's) is replaced.
    std::fs::remove_file(&chd.socket).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&chd.socket).unwrap());
    spawn(&mut chd, None);
    chd.wait_all_up(Duration::from_secs(60));
    assert!(chd.log().contains("removing stale socket"), "{}", chd.log());
}

/// Item 6: the socket's directory, when it did not exist, was created without checking who
/// else may have made it in the meantime; and one that others can write was accepted.
#[test]
fn the_socket_directory_is_private_even_when_someone_makes_it_first() {
    // Someone else makes the directory between chd's look and its mkdir, open to all.
    let mut chd = Chd::unstarted(&[]);
    chd.socket = chd.dir.path().join("run").join("chd.sock");
    let pause = spawn(&mut chd, Some("socket-dir:chd.sock"));
    let dir = chd.dir.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::remove_file(pause).unwrap();
    let log = refused(&mut chd);
    assert!(log.contains("lets every user replace the socket"), "{log}");
    assert!(!chd.socket.exists());

    // Made by chd itself: 0700 whatever the umask.
    std::fs::remove_dir(&dir).unwrap();
    spawn(&mut chd, None);
    chd.wait_all_up(Duration::from_secs(60));
    assert_eq!(mode(&dir), 0o700);
    chd.term();

    if !is_root() {
        eprintln!("skipped the stranger's directory: only root can give a directory to another user");
        return;
    }
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    spawn(&mut chd, None);
    let log = refused(&mut chd);
    assert!(log.contains("owned by uid 65534"), "{log}");
}

/// Item 7: chctl sent a user's keys to whoever had created the socket path.
#[test]
fn chctl_refuses_a_socket_served_by_a_stranger_before_sending_anything() {
    if !is_root() {
        eprintln!("skipped: playing a stranger's server needs root (as an ordinary user, every other test talks to the user's own chd)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = dir.path().join("chd.sock");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let path = socket.clone();
    // The stranger's server: a thread whose own effective uid is nobody's (a raw setresuid
    // changes only the calling thread), so the kernel records nobody as the listener.
    let server = std::thread::spawn(move || {
        // SAFETY: raw setresuid on this thread only; its saved uid stays root.
        assert_eq!(unsafe { libc::syscall(libc::SYS_setresuid, -1i32, NOBODY as i32, -1i32) }, 0);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // Open to all, as a trap would be.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        ready_tx.send(()).unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = std::io::Read::read_to_end(&mut s, &mut buf);
            got.push(buf);
        }
        got
    });
    ready_rx.recv().unwrap();
    // chctl as root, and as an ordinary user (uid 65533), neither of whom runs that server.
    for uid in [0, NOBODY - 1] {
        let out = ctl_as(uid, &socket, &["set", "secret-key", "secret-value"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("refusing to talk to") && err.contains("served by uid 65534"), "as uid {uid}: {err}");
    }
    // Named as chd's user, the same server is talked to (and then fails to answer); and its
    // own user trusts it.
    let out = ctl_as(0, &socket, &["--server-user", &NOBODY.to_string(), "get", "other-key"]);
    assert!(!out.status.success());
    let out = ctl_as(NOBODY, &socket, &["get", "other-key"]);
    assert!(!out.status.success());
    let got = server.join().unwrap();
    assert!(got[0].is_empty() && got[1].is_empty(), "a refused connection carried bytes: {got:?}");
    assert!(!got[2].is_empty() && !got[3].is_empty(), "the trusted connections sent no hello");
    assert!(!got.concat().windows(6).any(|w| w == b"secret"));
}

/// chctl with `args` as user `uid` (its group the same number).
fn ctl_as(uid: u32, socket: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(chctl_path());
    cmd.arg("--socket").arg(socket).args(args).env_remove("CHD_SERVER_USER");
    if uid != 0 {
        cmd.uid(uid).gid(uid);
    }
    cmd.output().unwrap()
}

/// Item 8: group membership was read from `/proc/<pid>` of whatever process holds the peer's
/// pid when chd looks. Only the uid and gid of `SO_PEERCRED` count, with the groups of that
/// uid in the group database; a group the process holds but its user is not a member of (as
/// a process now holding a reused pid might) does not.
#[test]
fn the_allowed_group_counts_by_the_peer_s_uid_not_by_its_pid() {
    if !is_root() {
        eprintln!("skipped: a client with a different identity needs root");
        return;
    }
    // A group nobody is not a member of in the group database.
    let group = "daemon";
    let gid = 1;
    let chd = Chd::start(&["--socket-mode", "0666", "--allowed-group", group]);
    chd.set("k", "v");
    std::fs::set_permissions(chd.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let get_as = |groups: &'static [libc::gid_t]| {
        let mut cmd = Command::new(chctl_path());
        cmd.arg("--socket").arg(&chd.socket).args(["get", "k"]);
        // SAFETY: setgroups/setgid/setuid are async-signal-safe raw syscalls.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(NOBODY) != 0
                    || libc::setuid(NOBODY) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    static WITH_GROUP: [libc::gid_t; 1] = [1];
    assert_eq!(WITH_GROUP[0], gid);
    let out = get_as(&WITH_GROUP);
    assert!(!out.status.success(), "a supplementary group the user is not a member of let it in");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("permission denied"), "{err}");
}

/// Item 10: the data dir followed the caller's umask.
#[test]
fn the_data_dir_is_private_whatever_the_umask() {
    let mut chd = Chd::unstarted(&[]);
    spawn(&mut chd, None);
    chd.wait_all_up(Duration::from_secs(60));
    assert_eq!(mode(&chd.data), 0o700);
    chd.term();

    // An existing one opened up by hand is narrowed again.
    std::fs::set_permissions(&chd.data, std::fs::Permissions::from_mode(0o777)).unwrap();
    spawn(&mut chd, None);
    chd.wait_all_up(Duration::from_secs(60));
    assert_eq!(mode(&chd.data), 0o700);
    chd.term();

    // With an allowed group: group members may read it (backups), nobody else.
    let own_group = nix_group_name();
    let mut chd = Chd::unstarted(&["--allowed-group", &own_group]);
    spawn(&mut chd, None);
    chd.wait_all_up(Duration::from_secs(60));
    assert_eq!(mode(&chd.data), 0o750);
}

fn nix_group_name() -> String {
    // SAFETY: getegid has no preconditions.
    let gid = unsafe { libc::getegid() };
    let out = Command::new("getent").args(["group", &gid.to_string()]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split(':').next().unwrap().to_string()
}

/// Item 11: SIGHUP killed chd at once (status 129), workers and all.
#[test]
fn sighup_reloads_the_log_level_and_never_stops_chd() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chd.toml");
    std::fs::write(&config, "log_level = \"info\"\n").unwrap();
    let log_path = dir.path().join("chd.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let socket = dir.path().join("chd.sock");
    let child = Command::new(common::CHD)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(&socket)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut chd = Chd { data: dir.path().join("data"), socket, dir, child: Some(child), args: vec![] };
    chd.wait_all_up(Duration::from_secs(60));
    let workers = chd.worker_pids();
    let read_log = || std::fs::read_to_string(&log_path).unwrap();
    // A terminal's hangup goes to the whole process group: chd catches it, its workers ignore it.
    assert!(signal_mask(chd.pid(), "SigCgt") & 1 != 0, "chd does not catch SIGHUP");
    for &w in &workers {
        assert!(signal_mask(w, "SigIgn") & 1 != 0, "worker {w} does not ignore SIGHUP");
    }

    std::fs::write(&config, "log_level = \"debug\"\nnodes = 5\n").unwrap();
    common::signal(chd.pid(), libc::SIGHUP);
    wait_for("the reload", Duration::from_secs(10), || read_log().contains("SIGHUP: configuration reloaded"));
    let log = read_log();
    assert!(log.contains("SIGHUP: log level changed") && log.contains("to=debug"), "{log}");
    assert!(log.contains("setting=\"nodes\"") && log.contains("takes effect at the next start"), "{log}");
    chd.set("k", "v");
    assert_eq!(chd.get("k").as_deref(), Some(&b"v"[..]));
    assert_eq!(chd.worker_pids(), workers, "workers were not restarted");

    // A broken file keeps the running settings.
    std::fs::write(&config, "log_level = \n").unwrap();
    common::signal(chd.pid(), libc::SIGHUP);
    wait_for("the refusal", Duration::from_secs(10), || read_log().contains("configuration not reloaded"));
    chd.set("k", "w");
    assert!(chd.term().success());
}

/// A signal mask line of `/proc/<pid>/status` (bit n-1 for signal n).
fn signal_mask(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
    u64::from_str_radix(line[field.len() + 1..].trim(), 16).unwrap()
}
