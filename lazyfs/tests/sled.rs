//! sled 0.34 (chd's engine) runs on the lazy filesystem, and what it fdatasyncs survives a cut.
//!
//! The writer runs in a child process (this test binary run again), so the cut kills it like a
//! power loss kills a daemon, in the middle of its work.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{fsync_dir, Mount};

const DIR_VAR: &str = "LAZYFS_SLED_WRITER_DIR";
const SYNCED: u32 = 300;

fn key(i: u32) -> [u8; 4] {
    i.to_be_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value {i} ").repeat(1 + (i % 50) as usize).into_bytes()
}

/// The child: inserts keys, making each batch durable as chd does (flush, then fdatasync of
/// `db`), reports each durable key on stdout, then writes more without syncing and waits.
#[test]
fn sled_writer_child() {
    let Ok(dir) = std::env::var(DIR_VAR) else { return };
    let dir = Path::new(&dir);
    let db = sled::Config::new().path(dir).open().unwrap();
    // sled never fsyncs the directories it creates; a careful program does.
    fsync_dir(dir.parent().unwrap());
    fsync_dir(dir);
    let db_file = File::open(dir.join("db")).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0..SYNCED {
        db.insert(key(i), value(i)).unwrap();
        if i % 10 == 9 {
            db.flush().unwrap();
            db_file.sync_data().unwrap();
            writeln!(out, "acked {i}").unwrap();
            out.flush().unwrap();
        }
    }
    for i in SYNCED..SYNCED + 5000 {
        db.insert(key(i), value(i)).unwrap();
    }
    writeln!(out, "waiting").unwrap();
    out.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(600));
}

#[test]
fn what_sled_fdatasyncs_survives_a_cut() {
    let Some(m) = Mount::new() else { return };
    let dir = m.path("db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["sled_writer_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(DIR_VAR, &dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(i) = line.strip_prefix("acked ") {
            acked = Some(i.parse::<u32>().unwrap());
        }
        if line == "waiting" {
            break;
        }
    }
    let acked = acked.expect("the writer acknowledged nothing");
    assert_eq!(acked, SYNCED - 1);
    let report = m.fs.power_cut().unwrap();
    assert!(report.killed.contains(&(child.id() as i32)), "{report:?}");
    child.wait().unwrap();

    let db = sled::Config::new().path(&dir).open().unwrap();
    for i in 0..=acked {
        assert_eq!(db.get(key(i)).unwrap().as_deref(), Some(&value(i)[..]), "acknowledged key {i} lost");
    }
    // The filesystem keeps working for sled after the cut.
    db.insert(b"after", b"cut").unwrap();
    db.flush().unwrap();
    drop(db);
}
