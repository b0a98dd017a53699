//! Delay-wheel operations per second in steady state: each batch inserts 1000 items with
//! delays spread over 0-100 ms, advances the virtual clock 1 ms and pops what is due (about
//! 1000 items once warm, with about 50,000 held).

mod common;

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use nym_mixnode::delay::{DelayWheel, WheelConfig};

const BATCH: usize = 1000;

fn insert_pop(c: &mut Criterion) {
    let mut group = c.benchmark_group("wheel");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut now = Instant::now();
    let config = WheelConfig {
        capacity: 1 << 17,
        ..WheelConfig::default()
    };
    let mut wheel: DelayWheel<u64> = DelayWheel::new(config, now).expect("valid config");
    let mut rng = common::SplitMix64(5);
    let mut id = 0u64;
    group.bench_function(format!("insert_pop_x{BATCH}"), |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let delay = Duration::from_micros(rng.next_u64() % 100_000);
                if wheel.insert(now + delay, id).is_err() {
                    panic!("wheel full: the steady state is sized below capacity");
                }
                id += 1;
            }
            now += Duration::from_millis(1);
            let mut popped = 0u64;
            wheel.pop_due(now, &mut |item| popped = popped.wrapping_add(item));
            black_box(popped)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::quick_criterion();
    targets = insert_pop
}
criterion_main!(benches);
