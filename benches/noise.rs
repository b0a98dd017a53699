//! What a Noise link costs: each side of a handshake, the responder's cost of a first message
//! made of junk (what a failed handshake costs the node) against the initiator's cost of a
//! real one, and sealing and opening a writer's batch of frames.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use nym_mixnode::noise::framing::{Deframer, Header, MessageKind, HEADER_LEN};
use nym_mixnode::noise::link::{public_key, Handshake, Transport};

const RESPONDER: [u8; 32] = [2; 32];
const INITIATOR: [u8; 32] = [1; 32];

/// Carry messages until both sides finish; the transports.
fn pair() -> (Transport, Transport) {
    let responder_public = public_key(&RESPONDER);
    let mut i = Handshake::initiator(&INITIATOR, &responder_public);
    let mut r = Handshake::responder(&RESPONDER, &responder_public);
    let mut wire = Vec::new();
    while !(i.is_finished() && r.is_finished()) {
        let (from, to) = if i.is_my_turn() {
            (&mut i, &mut r)
        } else {
            (&mut r, &mut i)
        };
        wire.clear();
        from.write_next(&mut wire).unwrap();
        let header = Header::decode(&wire).unwrap().unwrap();
        to.read(header, &wire[HEADER_LEN..]).unwrap();
    }
    (i.into_transport().unwrap(), r.into_transport().unwrap())
}

fn handshakes(c: &mut Criterion) {
    let responder_public = public_key(&RESPONDER);
    let mut group = c.benchmark_group("noise_handshake");
    group.bench_function("both_sides_whole", |b| b.iter(|| black_box(pair())));
    group.bench_function("initiator_first_message", |b| {
        b.iter(|| {
            let mut i = Handshake::initiator(&INITIATOR, &responder_public);
            let mut wire = Vec::with_capacity(64);
            i.write_next(&mut wire).unwrap();
            black_box(wire)
        })
    });
    let junk_header = Header {
        kind: MessageKind::Handshake,
        len: 48,
    };
    let junk = [0x5au8; 48];
    group.bench_function("responder_refuses_a_junk_first_message", |b| {
        b.iter(|| {
            let mut r = Handshake::responder(&RESPONDER, &responder_public);
            black_box(r.read(junk_header, &junk).is_err())
        })
    });
    group.bench_function("responder_builds_its_state", |b| {
        b.iter(|| black_box(Handshake::responder(&RESPONDER, &responder_public)))
    });
    group.finish();
}

fn transport(c: &mut Criterion) {
    // A writer's batch: 16 regular frames (2,413 bytes each with their header).
    const FRAMES: usize = 16;
    let batch = vec![7u8; FRAMES * 2413];
    let mut group = c.benchmark_group("noise_transport");
    group.throughput(Throughput::Elements(FRAMES as u64));
    let (mut tx, mut rx) = pair();
    let mut sealed = Vec::with_capacity(batch.len() + 64);
    let mut plain = vec![0u8; 65_536];
    group.bench_function("seal_then_open_16_frames", |b| {
        b.iter(|| {
            sealed.clear();
            tx.seal(&batch, &mut sealed).unwrap();
            let mut d = Deframer::new();
            let mut at = 0;
            let mut opened = 0;
            while at < sealed.len() {
                at += d.push(&sealed[at..]);
                while let Some((header, payload)) = d.next_message().unwrap() {
                    opened += rx.open(header, payload, &mut plain).unwrap();
                }
            }
            black_box(opened)
        })
    });
    group.finish();
}

criterion_group!(benches, handshakes, transport);
criterion_main!(benches);
