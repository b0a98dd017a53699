//! Replay-filter checks per second: `contains` then `insert` for fresh tags, as the hop step
//! does, in a filter sized like a node's (two generations of 10^6 tags at 1e-5, about 6 MB); the
//! generations turn over as it fills.

mod common;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use nym_mixnode::replay::ReplayFilter;

const BATCH: usize = 1000;

fn contains_insert(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut filter = ReplayFilter::with_default_rate(1_000_000).expect("valid size");
    let mut rng = common::SplitMix64(3);
    let tags: Vec<[u8; 32]> = (0..BATCH * 64).map(|_| rng.tag()).collect();
    let mut offset = 0;
    group.bench_function(format!("contains_insert_x{BATCH}"), |b| {
        b.iter(|| {
            let mut seen = 0;
            for tag in &tags[offset..offset + BATCH] {
                if filter.contains(tag) {
                    seen += 1;
                } else {
                    filter.insert(tag);
                }
            }
            offset = (offset + BATCH) % tags.len();
            black_box(seen)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::quick_criterion();
    targets = contains_insert
}
criterion_main!(benches);
