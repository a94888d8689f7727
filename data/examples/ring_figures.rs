//! Prints the ring's movement and balance figures: `cargo run --release -p chd-data --example ring_figures`.
use chd_data::ring::{Ring, DEFAULT_PARTITIONS};

fn main() {
    let keys: Vec<Vec<u8>> = (0..200_000).map(|i| format!("user:{i:08}").into_bytes()).collect();
    println!("movement when one node joins n (fraction of stored copies that change owner):");
    for n in [3u32, 8, 32] {
        let before = Ring::new(&(0..n).collect::<Vec<_>>(), 3, DEFAULT_PARTITIONS).unwrap();
        let after = before.with_node_added(n).unwrap();
        let moved: usize =
            keys.iter().map(|k| after.locate(k).1.iter().filter(|m| !before.locate(k).1.contains(m)).count()).sum();
        let frac = moved as f64 / (keys.len() * 3) as f64;
        let opt = 1.0 / f64::from(n + 1);
        println!("  n={n:>2}: moved {frac:.4}, optimum 1/(n+1) = {opt:.4}, ratio {:.3}", frac / opt);
    }
    println!("balance (most loaded node's share of the key space / mean share):");
    let mut grown = Ring::new(&[0, 1, 2], 3, DEFAULT_PARTITIONS).unwrap();
    for n in 3u32..=32 {
        if n > 3 {
            grown = grown.with_node_added(n - 1).unwrap();
        }
        let fresh = Ring::new(&(0..n).collect::<Vec<_>>(), 3, DEFAULT_PARTITIONS).unwrap();
        let ratio = |r: &Ring| {
            let mean = 3.0 / f64::from(n);
            r.nodes().iter().map(|&m| r.share(m)).fold(0.0, f64::max) / mean
        };
        println!("  n={n:>2}: created {:.3}x, grown one by one {:.3}x", ratio(&fresh), ratio(&grown));
    }
}
