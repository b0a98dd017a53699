//! Frames decoded per second by `FrameDecoder`, fed in 64 KiB reads.

mod common;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use nym_mixnode::framing::{FrameDecoder, FrameHeader, KeyRotation, PacketType, SizeTag, Version};

const FRAMES: usize = 1000;
const READ_LEN: usize = 64 * 1024;

fn stream(size_tag: SizeTag) -> Vec<u8> {
    let header = FrameHeader {
        version: Version::V8,
        size_tag,
        packet_type: PacketType::Sphinx,
        key_rotation: KeyRotation::Unknown,
    };
    let mut rng = common::SplitMix64(1);
    let mut out = vec![0u8; FRAMES * header.frame_len()];
    for frame in out.chunks_mut(header.frame_len()) {
        let n = header.encode(frame);
        rng.fill(&mut frame[n..]);
    }
    out
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Elements(FRAMES as u64));
    for (name, size_tag) in [("regular", SizeTag::Regular), ("ack", SizeTag::Ack)] {
        let bytes = stream(size_tag);
        let mut decoder = FrameDecoder::new();
        group.bench_function(format!("decode_{name}_x{FRAMES}"), |b| {
            b.iter(|| {
                let mut frames = 0;
                let mut packet_bytes = 0;
                for read in bytes.chunks(READ_LEN) {
                    let mut fed = 0;
                    while fed < read.len() {
                        fed += decoder.push(&read[fed..]);
                        while let Ok(Some(frame)) = decoder.next_frame() {
                            frames += 1;
                            packet_bytes += frame.packet.len();
                        }
                    }
                }
                assert_eq!(frames, FRAMES);
                black_box(packet_bytes)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::quick_criterion();
    targets = decode
}
criterion_main!(benches);
