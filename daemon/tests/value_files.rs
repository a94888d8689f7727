//! Large values live in value files that are freed when overwritten or deleted. Before them,
//! sled kept every replaced large value's blob file forever: overwriting one key with 1 MiB
//! values grew the data dir by about 3 MiB (three replicas) per write.

mod common;

use std::path::Path;
use std::time::Duration;

use chd_data::proto::{Request, Response};
use common::*;

/// Bytes the files under `dir` occupy on disk (as `du` counts them).
fn disk_use(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        total += if meta.is_dir() { disk_use(&entry.path()) } else { meta.blocks() * 512 };
    }
    total
}

/// Files in `nodes/*/<sub>` of the data dir.
fn files_in(chd: &Chd, sub: &str) -> usize {
    let nodes = std::fs::read_dir(chd.data.join("nodes")).unwrap().flatten();
    nodes.filter_map(|n| std::fs::read_dir(n.path().join(sub)).ok()).map(|d| d.count()).sum()
}

#[test]
fn overwriting_and_deleting_large_values_gives_the_space_back() {
    let chd = Chd::start(&[]);
    let mut c = chd.client();
    let value = |i: u32| -> Vec<u8> { (0..1u32 << 20).map(|j| (i.wrapping_mul(31) ^ j) as u8).collect() };
    let mut peak = 0;
    for i in 0..200 {
        let r = c.call(Request::Set { key: b"big".to_vec(), value: value(i) });
        assert!(matches!(r, Ok(Ok(Response::Done))), "set {i}: {r:?}");
        if i % 20 == 19 {
            peak = peak.max(disk_use(&chd.data));
        }
    }
    println!("data dir after 200 overwrites of one key with 1 MiB: at most {} MiB", peak >> 20);
    assert!(peak < 50 << 20, "the data dir grew to {} MiB", peak >> 20);
    assert_eq!(c.get("big"), Some(value(199)));
    assert_eq!(files_in(&chd, "blobs"), 0, "sled wrote blob files");

    let r = c.call(Request::Del { key: b"big".to_vec() });
    assert!(matches!(r, Ok(Ok(_))), "del: {r:?}");
    wait_for("every replica to free its value file", Duration::from_secs(10), || files_in(&chd, "values") == 0);
    assert_eq!(c.get("big"), None);
}
