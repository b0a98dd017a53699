//! Allocations per packet on the hot path, counted with a wrapping global allocator.
//!
//! Framing, the replay filter, the delay wheel and peer queues must not allocate per packet
//! once warm. The fast Sphinx step (the default) allocates nothing in `process_into` and only
//! the next hop's packet buffer in `expand`/`finish`; the crate's step allocates inside
//! `sphinx-packet` (it copies the packet into owned parts and builds the next header as a
//! `Vec`). Both figures are pinned here so that a change shows up.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nym_mixnode::delay::{DelayWheel, WheelConfig};
use nym_mixnode::forward::{Backoff, LinkStep, NextHopTable, TableLimits};
use nym_mixnode::framing::{FrameDecoder, FrameHeader, KeyRotation, PacketType, SizeTag, Version};
use nym_mixnode::replay::ReplayFilter;
use nym_mixnode::sphinx::{
    build_packet, HopProcessor, HopProcessorKind, KeyUpdate, LiveKey, RouteHop, DELAY_MAX_DEFAULT,
};
use x25519_dalek::{PublicKey, StaticSecret};

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations made on this thread while `f` runs (test threads run one test each).
fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn framing_replay_wheel_and_queues_do_not_allocate_per_packet() {
    let header = FrameHeader {
        version: Version::V8,
        size_tag: SizeTag::Regular,
        packet_type: PacketType::Sphinx,
        key_rotation: KeyRotation::Unknown,
    };
    let mut stream = vec![0u8; 100 * header.frame_len()];
    for frame in stream.chunks_mut(header.frame_len()) {
        header.encode(frame);
    }
    let mut decoder = FrameDecoder::new();
    let mut filter = ReplayFilter::with_default_rate(10_000).expect("valid size");
    let origin = Instant::now();
    let mut wheel: DelayWheel<usize> =
        DelayWheel::new(WheelConfig::default(), origin).expect("valid config");
    let mut table: NextHopTable<usize> = NextHopTable::new(TableLimits {
        next_hops_max: 4,
        queue_packets_max: 200,
        queue_bytes_max: 1 << 20,
        idle_timeout: Duration::from_secs(30),
        failures_max: 3,
        backoff: Backoff::default(),
    });
    let next_hop: SocketAddr = "10.0.0.1:1789".parse().expect("valid literal");
    // Warm: the entry exists, is connected, and its queue has grown to a burst of 100 once.
    for id in 0..100 {
        table.push(next_hop, id, 1, origin).expect("room");
    }
    let link = table.link_of(&next_hop).expect("entry");
    assert_eq!(
        table.next_step(next_hop, link, origin, 200, &mut |_| {}),
        LinkStep::Connect(next_hop)
    );
    table.on_connected(next_hop, link);
    let mut taken = 0usize;
    assert_eq!(
        table.next_step(next_hop, link, origin, 200, &mut |_| taken += 1),
        LinkStep::Write { packets: 100 }
    );
    table.on_written(next_hop, link, origin);

    let count = allocations_during(|| {
        let mut frames = 0usize;
        for read in stream.chunks(1000) {
            let mut fed = 0;
            while fed < read.len() {
                fed += decoder.push(&read[fed..]);
                while let Ok(Some(frame)) = decoder.next_frame() {
                    let mut tag = [0u8; 32];
                    tag[..8].copy_from_slice(&(frames as u64 + 1).to_le_bytes());
                    tag[8..16].copy_from_slice(&(frames as u64 * 7919).to_le_bytes());
                    assert!(!filter.contains(&tag));
                    filter.insert(&tag);
                    let due = origin + Duration::from_millis(frame.packet.len() as u64 % 7);
                    wheel.insert(due, frames).expect("room");
                    frames += 1;
                }
            }
        }
        wheel.pop_due(origin + Duration::from_secs(1), &mut |id| {
            table.push(next_hop, id, 1, origin).expect("room");
        });
        assert_eq!(frames, 100);
        assert_eq!(table.queued(), 100);
        assert_eq!(
            table.next_step(next_hop, link, origin, 200, &mut |_| taken += 1),
            LinkStep::Write { packets: 100 }
        );
        table.on_written(next_hop, link, origin);
    });
    assert_eq!(
        count, 0,
        "allocations on the framing/replay/wheel/queue path"
    );
    assert_eq!(taken, 200);
}

#[test]
fn sphinx_step_allocations_per_packet_are_pinned() {
    let secrets: Vec<StaticSecret> = (1..=3u8).map(|i| StaticSecret::from([i; 32])).collect();
    let route: Vec<RouteHop> = secrets
        .iter()
        .enumerate()
        .map(|(i, secret)| RouteHop {
            address: SocketAddr::from(([10, 0, 0, i as u8 + 1], 1789)),
            public_key: PublicKey::from(secret),
            delay: Duration::from_millis(10),
        })
        .collect();
    let packets: Vec<Vec<u8>> = (0..4u8)
        .map(|i| {
            let initial = StaticSecret::from([100 + i; 32]);
            build_packet(&route, [0u8; 32], SizeTag::Regular, b"x", &initial).expect("valid")
        })
        .collect();
    let filter = ReplayFilter::with_default_rate(100).expect("valid size");
    let mut processor =
        HopProcessor::with_kind(secrets[0].clone(), filter, HopProcessorKind::Crate);
    let mut out = vec![0u8; packets[0].len()];
    // Warm up once, then count.
    processor
        .process_into(&packets[0], DELAY_MAX_DEFAULT, &mut out)
        .expect("forwards");
    let count = allocations_during(|| {
        for packet in &packets[1..] {
            processor
                .process_into(packet, DELAY_MAX_DEFAULT, &mut out)
                .expect("forwards");
        }
    });
    let per_packet = count / 3;
    eprintln!("sphinx step: {per_packet} allocations per packet (inside sphinx-packet)");
    assert!(per_packet <= 16, "{per_packet} allocations per packet");
    let replays = allocations_during(|| {
        assert!(processor
            .process_into(&packets[1], DELAY_MAX_DEFAULT, &mut out)
            .is_err());
    });
    eprintln!("sphinx replay: {replays} allocations");
}

#[test]
fn fast_sphinx_step_does_not_allocate_per_packet() {
    let secrets: Vec<StaticSecret> = (1..=3u8).map(|i| StaticSecret::from([i; 32])).collect();
    let route: Vec<RouteHop> = secrets
        .iter()
        .enumerate()
        .map(|(i, secret)| RouteHop {
            address: SocketAddr::from(([10, 0, 0, i as u8 + 1], 1789)),
            public_key: PublicKey::from(secret),
            delay: Duration::from_millis(10),
        })
        .collect();
    for size_tag in [SizeTag::Ack, SizeTag::Regular, SizeTag::Extended32] {
        let packets: Vec<Vec<u8>> = (0..5u8)
            .map(|i| {
                let initial = StaticSecret::from([100 + i; 32]);
                build_packet(&route, [0u8; 32], size_tag, b"x", &initial).expect("valid")
            })
            .collect();
        let filter = ReplayFilter::with_default_rate(100).expect("valid size");
        let mut processor =
            HopProcessor::with_kind(secrets[0].clone(), filter, HopProcessorKind::Fast);
        let mut out = vec![0u8; packets[0].len()];
        processor
            .process_into(&packets[0], DELAY_MAX_DEFAULT, &mut out)
            .expect("forwards");
        let count = allocations_during(|| {
            for packet in &packets[1..3] {
                processor
                    .process_into(packet, DELAY_MAX_DEFAULT, &mut out)
                    .expect("forwards");
            }
            // Replays and forgeries are refused without allocating too.
            assert!(processor
                .process_into(&packets[1], DELAY_MAX_DEFAULT, &mut out)
                .is_err());
            let mut forged = packets[3].clone();
            forged[40] ^= 1;
            let forged_count = allocations_during(|| {
                assert!(processor
                    .process_into(&forged, DELAY_MAX_DEFAULT, &mut out)
                    .is_err());
            });
            assert_eq!(forged_count, 0);
        });
        // The forged copy above is made inside the counted closure: one allocation.
        assert_eq!(count, 1, "{size_tag:?}: allocations in process_into");

        // expand + finish: the one buffer that becomes the next hop's packet.
        let split = allocations_during(|| {
            let expanded = processor.expand(&packets[4]).expect("parses");
            let forward = processor
                .finish(expanded, DELAY_MAX_DEFAULT)
                .expect("forwards");
            assert_eq!(forward.packet.len(), packets[4].len());
        });
        eprintln!("fast sphinx step, {size_tag:?}: 0 allocations in process_into, {split} in expand+finish");
        assert_eq!(split, 1, "{size_tag:?}: allocations in expand+finish");

        // Two live keys: a packet for the secondary without a rotation byte is tried with the
        // primary first, and still allocates nothing; so does one naming a purged key.
        let primary = StaticSecret::from([77u8; 32]);
        let mut two = HopProcessor::rotating(
            LiveKey::new(
                9,
                primary,
                ReplayFilter::with_default_rate(100).expect("valid size"),
            ),
            Some(LiveKey::new(
                8,
                secrets[0].clone(),
                ReplayFilter::with_default_rate(100).expect("valid size"),
            )),
            HopProcessorKind::Fast,
        );
        two.process_into_for(&packets[0], KeyRotation::Even, DELAY_MAX_DEFAULT, &mut out)
            .expect("forwards");
        let two_keys = allocations_during(|| {
            for packet in &packets[1..4] {
                two.process_into_for(packet, KeyRotation::Unknown, DELAY_MAX_DEFAULT, &mut out)
                    .expect("forwards under the secondary");
            }
        });
        assert_eq!(two_keys, 0, "{size_tag:?}: allocations with two keys");
        two.apply(KeyUpdate {
            purge: vec![8],
            install: vec![],
            primary: 9,
        })
        .expect("purges");
        let expired = allocations_during(|| {
            assert!(two
                .process_into_for(&packets[4], KeyRotation::Even, DELAY_MAX_DEFAULT, &mut out)
                .is_err());
        });
        assert_eq!(expired, 0, "{size_tag:?}: an expired key's packet");
    }
}
