//! Placement lookup cost: the work chd does per request to find a key's owners.
use chd_data::ring::{Ring, DEFAULT_PARTITIONS};
use criterion::{criterion_group, criterion_main, Criterion};

fn locate(c: &mut Criterion) {
    for n in [4u32, 32] {
        let nodes: Vec<u32> = (0..n).collect();
        let ring = Ring::new(&nodes, 3, DEFAULT_PARTITIONS).unwrap();
        let keys: Vec<Vec<u8>> = (0..1024).map(|i| format!("user:{i:08}").into_bytes()).collect();
        let mut i = 0;
        c.bench_function(&format!("locate 16-byte key, {n} nodes"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                std::hint::black_box(ring.locate(&keys[i]));
            })
        });
    }
}

criterion_group!(benches, locate);
criterion_main!(benches);
