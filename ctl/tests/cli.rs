//! chctl on its own: what a user sees when chd is not there.

use std::process::Command;

#[test]
fn every_command_names_the_socket_it_tried_when_chd_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    for args in [&["get", "k"][..], &["set", "k", "v"], &["del", "k"], &["status"], &["ring"], &["repair"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_chctl")).arg("--socket").arg(&socket).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(socket.to_str().unwrap()), "{args:?}: {err}");
    }
}

#[test]
fn the_socket_env_var_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("env.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_chctl")).arg("status").env("CHD_SOCKET", &socket).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains(socket.to_str().unwrap()));
}
