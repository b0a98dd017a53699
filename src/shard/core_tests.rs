//! Unit tests of [`ShardCore`] alone, with a virtual clock: every event and every drop
//! reason, and conservation after each call.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::accounting::allocation_size;
use crate::framing::SizeTag;
use crate::shard::testkit::{
    self, header, mismatched_header, outfox_header, Packets, VirtualChannels,
};

const SEED: u64 = 0x636f_7265;

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], 1789))
}

struct One {
    packets: Packets,
    core: ShardCore,
    sink: VirtualChannels,
    t0: Instant,
}

impl One {
    fn new(tune: impl FnOnce(&mut CoreConfig)) -> One {
        let packets = Packets::new(SEED);
        let mut config = testkit::config(0, 1);
        tune(&mut config);
        let t0 = Instant::now();
        let core = testkit::core(config, &packets, t0);
        One {
            packets,
            core,
            sink: VirtualChannels::new(1, 16),
            t0,
        }
    }

    fn frame(&mut self, bytes: &[u8], now: Instant) -> Outcome {
        let outcome = self
            .core
            .on_frame(header(), bytes, now, &mut self.sink, &mut NoTimings);
        self.core.check_conservation();
        outcome
    }

    fn send(&mut self, next_hop: SocketAddr, delay: Duration, now: Instant) -> Outcome {
        let packet = self.packets.forward(next_hop, delay);
        self.frame(&packet, now)
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }

    fn step(&mut self, next_hop: SocketAddr, link: LinkId, now: Instant) -> (LinkStep, usize) {
        let mut buffer = Vec::new();
        let mut dues = Vec::new();
        let step = self
            .core
            .link_next(next_hop, link, now, &mut buffer, &mut dues);
        self.core.check_conservation();
        if let LinkStep::Write { packets } = step {
            assert_eq!(dues.len(), packets);
            let frame_len = header().encoded_len() + testkit::SIZE.packet_len();
            assert_eq!(buffer.len(), packets * frame_len, "whole frames");
            assert!(dues.iter().all(|due| *due <= now), "never written early");
        }
        (step, dues.len())
    }

    fn dropped(&self, reason: DropReason) -> u64 {
        self.core.counts().packets.dropped[reason as usize]
    }

    /// Open `next_hop`'s link as the driver would: take the Open action, connect.
    fn open(&mut self, next_hop: SocketAddr, now: Instant) -> LinkId {
        let link = match self.actions().as_slice() {
            [Action::Open { link, next_hop: to }] if *to == next_hop => *link,
            other => panic!("expected one Open for {next_hop}, got {other:?}"),
        };
        assert_eq!(
            self.step(next_hop, link, now).0,
            LinkStep::Connect(next_hop)
        );
        self.core.on_connected(next_hop, link);
        link
    }
}

#[test]
fn a_packet_is_held_for_its_delay_then_written_once_connected() {
    let mut one = One::new(|_| {});
    let t0 = one.t0;
    let hop = addr(1);
    let outcome = one.send(hop, Duration::from_millis(50), t0);
    assert_eq!(
        outcome,
        Outcome::Held {
            due: t0 + Duration::from_millis(50)
        }
    );
    assert_eq!(one.core.figures().held, 1);
    assert!(one.core.next_timeout() <= t0 + Duration::from_millis(51));
    one.core.handle_timeout(t0 + Duration::from_millis(49));
    assert!(one.actions().is_empty(), "not due yet");
    let due = t0 + Duration::from_millis(50);
    one.core.handle_timeout(due);
    one.core.check_conservation();
    assert_eq!(one.core.figures().queued, 1);
    let link = one.open(hop, due);
    let (step, taken) = one.step(hop, link, due);
    assert_eq!(step, LinkStep::Write { packets: 1 });
    assert_eq!(taken, 1);
    assert_eq!(one.core.figures().writing, 1);
    one.core.on_written(hop, link, due, &[due], &mut NoTimings);
    one.core.check_conservation();
    assert_eq!(one.core.counts().packets.forwarded, 1);
    assert_eq!(one.step(hop, link, due).0, LinkStep::Wait);
    // More work wakes the parked link.
    assert_eq!(one.send(hop, Duration::ZERO, due), Outcome::Queued);
    assert_eq!(one.actions(), vec![Action::Wake { link }]);
    assert_eq!(one.step(hop, link, due).0, LinkStep::Write { packets: 1 });
}

#[test]
fn writes_are_batched_up_to_the_batch_limit() {
    let mut one = One::new(|c| c.write_batch_packets_max = 3);
    let t0 = one.t0;
    let hop = addr(1);
    for _ in 0..5 {
        assert_eq!(one.send(hop, Duration::ZERO, t0), Outcome::Queued);
    }
    let link = one.open(hop, t0);
    assert_eq!(one.step(hop, link, t0).0, LinkStep::Write { packets: 3 });
    one.core.on_written(hop, link, t0, &[], &mut NoTimings);
    assert_eq!(one.step(hop, link, t0).0, LinkStep::Write { packets: 2 });
    one.core.on_written(hop, link, t0, &[], &mut NoTimings);
    assert_eq!(one.core.counts().packets.forwarded, 5);
}

#[test]
fn the_nodes_own_loops_end_here_counted_apart_and_other_final_hops_are_dropped() {
    let mut one = One::new(|c| c.loop_destination = Some([5; 32]));
    let t0 = one.t0;
    let mine = one.packets.final_hop_for([5; 32], [9; 16]);
    assert_eq!(one.frame(&mine, t0), Outcome::Looped);
    let theirs = one.packets.final_hop_for([6; 32], [9; 16]);
    assert_eq!(
        one.frame(&theirs, t0),
        Outcome::Dropped(DropReason::FinalHop)
    );
    // A copy of a loop is a replay like any packet.
    assert_eq!(one.frame(&mine, t0), Outcome::Dropped(DropReason::Replay));
    let counts = one.core.counts();
    assert_eq!(counts.packets.looped, 1);
    assert_eq!(counts.packets.dropped_total(), 2);
    assert_eq!(counts.in_flight(), 0);
    one.core.check_conservation();
    assert_eq!(
        one.core.take_loop(),
        Some(crate::shard::core::LoopArrival {
            identifier: [9; 16],
            at: t0
        })
    );
    assert_eq!(one.core.take_loop(), None);
    // Arrivals the driver has not taken are bounded; the rest are counted.
    for i in 0..(crate::shard::core::LOOP_ARRIVALS_MAX + 3) {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let packet = one.packets.final_hop_for([5; 32], id);
        assert_eq!(one.frame(&packet, t0), Outcome::Looped);
    }
    assert_eq!(one.core.loops_unreported(), 3);
    one.core.check_conservation();
}

#[test]
fn junk_bad_frames_replays_final_hops_and_bad_addresses_are_dropped_with_their_reason() {
    let mut one = One::new(|_| {});
    let t0 = one.t0;
    let junk = one.packets.junk();
    assert_eq!(
        one.frame(&junk, t0),
        Outcome::Dropped(DropReason::BadPacket)
    );
    let packet = one.packets.forward(addr(1), Duration::ZERO);
    assert_eq!(one.frame(&packet, t0), Outcome::Queued);
    assert_eq!(one.frame(&packet, t0), Outcome::Dropped(DropReason::Replay));
    let final_hop = one.packets.final_hop();
    assert_eq!(
        one.frame(&final_hop, t0),
        Outcome::Dropped(DropReason::FinalHop)
    );
    let bad = one.packets.bad_address();
    assert_eq!(
        one.frame(&bad, t0),
        Outcome::Dropped(DropReason::BadNextHopAddress)
    );
    let outfox = vec![0u8; SizeTag::OutfoxAck.packet_len()];
    let outcome = one
        .core
        .on_frame(outfox_header(), &outfox, t0, &mut one.sink, &mut NoTimings);
    assert_eq!(outcome, Outcome::Dropped(DropReason::UnsupportedPacketType));
    let outcome = one.core.on_frame(
        mismatched_header(),
        &outfox,
        t0,
        &mut one.sink,
        &mut NoTimings,
    );
    assert_eq!(outcome, Outcome::Dropped(DropReason::BadFrame));
    assert_eq!(
        one.core.on_bad_frame(),
        Outcome::Dropped(DropReason::BadFrame)
    );
    one.core.check_conservation();
    let c = one.core.counts().packets;
    assert_eq!(c.received, 8);
    assert_eq!(c.dropped_total(), 7);
}

#[test]
fn a_delay_over_the_cap_is_held_for_the_cap_and_counted() {
    let mut one = One::new(|c| c.delay_max = Duration::from_millis(300));
    let t0 = one.t0;
    let outcome = one.send(addr(1), Duration::from_secs(30), t0);
    assert_eq!(
        outcome,
        Outcome::Held {
            due: t0 + Duration::from_millis(300)
        }
    );
    assert_eq!(one.core.figures().delays_clamped, 1);
    let outcome = one.send(addr(1), Duration::from_millis(300), t0);
    assert!(matches!(outcome, Outcome::Held { .. }));
    assert_eq!(
        one.core.figures().delays_clamped,
        1,
        "at the cap: not clamped"
    );
}

#[test]
fn a_full_wheel_drops_as_wheel_full() {
    let mut one = One::new(|c| c.held_packets_max = 2);
    let t0 = one.t0;
    for _ in 0..2 {
        assert!(matches!(
            one.send(addr(1), Duration::from_millis(10), t0),
            Outcome::Held { .. }
        ));
    }
    assert_eq!(
        one.send(addr(1), Duration::from_millis(10), t0),
        Outcome::Dropped(DropReason::WheelFull)
    );
    // Due packets do not need the wheel.
    assert_eq!(one.send(addr(1), Duration::ZERO, t0), Outcome::Queued);
}

#[test]
fn a_full_queue_drops_as_next_hop_queue_full() {
    let mut one = One::new(|c| c.table.queue_packets_max = 2);
    let t0 = one.t0;
    assert_eq!(one.send(addr(1), Duration::ZERO, t0), Outcome::Queued);
    assert_eq!(one.send(addr(1), Duration::ZERO, t0), Outcome::Queued);
    assert_eq!(
        one.send(addr(1), Duration::ZERO, t0),
        Outcome::Dropped(DropReason::NextHopQueueFull)
    );
    assert_eq!(one.send(addr(2), Duration::ZERO, t0), Outcome::Queued);
}

#[test]
fn a_failed_connect_drops_the_queue_backs_off_and_is_forgotten_after_failures_max() {
    let mut one = One::new(|c| c.table.failures_max = 2);
    let t0 = one.t0;
    let hop = addr(1);
    one.send(hop, Duration::ZERO, t0);
    one.send(hop, Duration::ZERO, t0);
    let link = match one.actions()[..] {
        [Action::Open { link, .. }] => link,
        ref other => panic!("{other:?}"),
    };
    assert_eq!(one.step(hop, link, t0).0, LinkStep::Connect(hop));
    // A packet queued while connecting waits for the result.
    assert_eq!(one.send(hop, Duration::ZERO, t0), Outcome::Queued);
    one.core.on_connect_failed(hop, link, t0);
    one.core.check_conservation();
    assert_eq!(one.dropped(DropReason::NextHopUnreachable), 3);
    // Backing off (100 ms): refused at once, nothing queued for a dead next hop.
    let soon = t0 + Duration::from_millis(99);
    assert_eq!(
        one.send(hop, Duration::ZERO, soon),
        Outcome::Dropped(DropReason::NextHopUnreachable)
    );
    assert_eq!(one.core.figures().queued, 0);
    assert_eq!(one.step(hop, link, soon).0, LinkStep::Wait);
    // After the backoff: queued, the parked link is woken and connects again.
    let later = t0 + Duration::from_millis(100);
    assert_eq!(one.send(hop, Duration::ZERO, later), Outcome::Queued);
    assert_eq!(one.actions(), vec![Action::Wake { link }]);
    assert_eq!(one.step(hop, link, later).0, LinkStep::Connect(hop));
    one.core.on_connect_failed(hop, link, later);
    // Second failure in a row: forgotten, and its task is told to close.
    assert_eq!(one.core.figures().table.next_hops, 0);
    assert_eq!(one.core.figures().table.forgotten_failing, 1);
    assert_eq!(one.step(hop, link, later).0, LinkStep::Close);
    assert_eq!(one.dropped(DropReason::NextHopUnreachable), 5);
    // A later packet makes a new entry with a new link.
    assert_eq!(one.send(hop, Duration::ZERO, later), Outcome::Queued);
    match one.actions()[..] {
        [Action::Open { link: new, .. }] => assert_ne!(new, link),
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn a_failed_write_drops_the_write_and_the_queue_as_unreachable() {
    let mut one = One::new(|c| c.write_batch_packets_max = 2);
    let t0 = one.t0;
    let hop = addr(1);
    for _ in 0..3 {
        one.send(hop, Duration::ZERO, t0);
    }
    let link = one.open(hop, t0);
    assert_eq!(one.step(hop, link, t0).0, LinkStep::Write { packets: 2 });
    one.core.on_write_failed(hop, link, t0);
    one.core.check_conservation();
    assert_eq!(one.dropped(DropReason::NextHopUnreachable), 3);
    assert_eq!(one.core.in_flight(), 0);
    assert!(matches!(one.core.figures().table.next_hops, 1));
}

#[test]
fn a_full_table_evicts_the_least_useful_quiet_entry_and_refuses_only_when_all_are_busy() {
    let mut one = One::new(|c| c.table.next_hops_max = 2);
    let t0 = one.t0;
    let (a, b, c, d) = (addr(1), addr(2), addr(3), addr(4));
    // a: connected and written to (useful); b: its connect failed (failing).
    one.send(a, Duration::ZERO, t0);
    let link_a = one.open(a, t0);
    one.step(a, link_a, t0);
    one.core.on_written(a, link_a, t0, &[], &mut NoTimings);
    one.send(b, Duration::ZERO, t0);
    let link_b = match one.actions()[..] {
        [Action::Open { link, .. }] => link,
        ref other => panic!("{other:?}"),
    };
    one.step(b, link_b, t0);
    one.core.on_connect_failed(b, link_b, t0);
    // c takes b's place (failing goes first), and b's task is woken to close.
    let t1 = t0 + Duration::from_millis(10);
    assert_eq!(one.send(c, Duration::ZERO, t1), Outcome::Queued);
    let actions = one.actions();
    assert!(
        actions.contains(&Action::Wake { link: link_b }),
        "{actions:?}"
    );
    assert!(matches!(actions.last(), Some(Action::Open { next_hop, .. }) if *next_hop == c));
    assert_eq!(one.step(b, link_b, t1).0, LinkStep::Close);
    assert_eq!(one.core.figures().table.evicted, 1);
    // c holds a packet, a is quiet: d takes a's place.
    assert_eq!(one.send(d, Duration::ZERO, t1), Outcome::Queued);
    assert_eq!(one.step(a, link_a, t1).0, LinkStep::Close);
    // Now c and d both hold packets: a new next hop is refused, and counted.
    assert_eq!(
        one.send(addr(5), Duration::ZERO, t1),
        Outcome::Dropped(DropReason::NextHopTableFull)
    );
    assert_eq!(one.core.figures().table.refused, 1);
    assert_eq!(one.core.figures().table.next_hops, 2);
}

#[test]
fn an_idle_next_hop_is_closed_and_forgotten_after_the_idle_timeout() {
    let mut one = One::new(|c| c.table.idle_timeout = Duration::from_secs(3));
    let t0 = one.t0;
    let hop = addr(1);
    one.send(hop, Duration::ZERO, t0);
    let link = one.open(hop, t0);
    one.step(hop, link, t0);
    one.core.on_written(hop, link, t0, &[], &mut NoTimings);
    assert_eq!(one.step(hop, link, t0).0, LinkStep::Wait);
    one.core.handle_timeout(t0 + Duration::from_millis(2_900));
    assert!(one.actions().is_empty());
    assert_eq!(one.core.figures().table.next_hops, 1);
    one.core.handle_timeout(t0 + Duration::from_secs(4));
    assert_eq!(one.actions(), vec![Action::Wake { link }]);
    assert_eq!(
        one.step(hop, link, t0 + Duration::from_secs(4)).0,
        LinkStep::Close
    );
    let figures = one.core.figures().table;
    assert_eq!((figures.next_hops, figures.forgotten_idle), (0, 1));
}

#[test]
fn a_packet_crosses_once_to_its_tags_owner_which_holds_it_and_a_full_or_closed_channel_is_counted()
{
    let mut packets = Packets::new(SEED);
    let t0 = Instant::now();
    let hop = addr(1);
    let mut reader = testkit::core(testkit::config(0, 2), &packets, t0);
    let mut owner = testkit::core(testkit::config(1, 2), &packets, t0);
    let mut sink = VirtualChannels::new(2, 3);
    // A packet whose tag the reader owns never leaves it, whatever its next hop.
    let packet = packets.forward_owned_by(0, 2, hop, Duration::from_millis(5));
    let outcome = reader.on_frame(header(), &packet, t0, &mut sink, &mut NoTimings);
    assert_eq!(
        outcome,
        Outcome::Held {
            due: t0 + Duration::from_millis(5)
        }
    );
    // Two whose tag the other shard owns wait in one batch until the flush.
    for _ in 0..2 {
        let packet = packets.forward_owned_by(1, 2, hop, Duration::from_millis(5));
        let outcome = reader.on_frame(header(), &packet, t0, &mut sink, &mut NoTimings);
        assert_eq!(outcome, Outcome::HandedOff(1));
    }
    assert_eq!(sink.len(), 0);
    reader.check_conservation();
    assert_eq!(reader.in_flight(), 3);
    assert!(reader.flush_handoffs(&mut sink));
    assert!(!reader.flush_handoffs(&mut sink), "nothing left to flush");
    assert_eq!((sink.len(), sink.batches, reader.batches_sent()), (2, 1, 1));
    assert_eq!(reader.counts().handed_off, 2);
    reader.check_conservation();
    // The owner unwraps, holds and forwards them itself: no second crossing.
    for _ in 0..2 {
        let handoff = sink.queues[1].pop_front().expect("handed off");
        let outcome = owner.on_handoff(handoff, &mut NoTimings);
        assert_eq!(
            outcome,
            Outcome::Held {
                due: t0 + Duration::from_millis(5)
            }
        );
    }
    owner.check_conservation();
    assert_eq!(owner.counts().taken_over, 2);
    assert_eq!(owner.counts().handed_off, 0);
    // The channel holds 3 packets: a batch of 2 fits, then one of the next 2, and the other
    // is counted; then a batch finds no room at all and each of its packets is counted.
    let mut expected = [(0, 4), (1, 5), (3, 5)].into_iter();
    for round in 0..3 {
        for _ in 0..2 {
            let packet = packets.forward_owned_by(1, 2, hop, Duration::ZERO);
            reader.on_frame(header(), &packet, t0, &mut sink, &mut NoTimings);
        }
        reader.flush_handoffs(&mut sink);
        let full = reader.counts().packets.dropped[DropReason::HandoffFull as usize];
        let handed = reader.counts().handed_off;
        assert_eq!(Some((full, handed)), expected.next(), "round {round}");
        reader.check_conservation();
    }
    assert_eq!(sink.len(), 3);
    // A full batch goes at once, without waiting for the flush.
    sink.queues[1].clear();
    sink.capacity = HANDOFF_BATCH_MAX;
    let sent = reader.counts().handed_off;
    for _ in 0..HANDOFF_BATCH_MAX {
        let packet = packets.forward_owned_by(1, 2, hop, Duration::ZERO);
        reader.on_frame(header(), &packet, t0, &mut sink, &mut NoTimings);
    }
    assert_eq!(reader.counts().handed_off, sent + HANDOFF_BATCH_MAX as u64);
    assert!(!reader.flush_handoffs(&mut sink));
    // A stopped shard: counted as shutdown, at the flush.
    sink.queues[1].clear();
    sink.closed[1] = true;
    let packet = packets.forward_owned_by(1, 2, hop, Duration::ZERO);
    reader.on_frame(header(), &packet, t0, &mut sink, &mut NoTimings);
    reader.flush_handoffs(&mut sink);
    assert_eq!(
        reader.counts().packets.dropped[DropReason::Shutdown as usize],
        1
    );
    reader.check_conservation();
    owner.check_conservation();
}

#[test]
fn packets_waiting_for_a_batch_at_close_are_dropped_as_shutdown() {
    let mut packets = Packets::new(SEED);
    let t0 = Instant::now();
    let mut reader = testkit::core(testkit::config(0, 2), &packets, t0);
    let mut sink = VirtualChannels::new(2, 8);
    let packet = packets.forward_owned_by(1, 2, addr(1), Duration::ZERO);
    reader.on_frame(header(), &packet, t0, &mut sink, &mut NoTimings);
    reader.begin_drain(t0 + Duration::from_millis(1));
    reader.handle_timeout(t0 + Duration::from_millis(1));
    assert_eq!(reader.phase(), Phase::Closed);
    assert_eq!(reader.in_flight(), 0);
    assert_eq!(
        reader.counts().packets.dropped[DropReason::Shutdown as usize],
        1
    );
    assert!(!reader.flush_handoffs(&mut sink));
    assert_eq!(sink.len(), 0);
    reader.check_conservation();
}

#[test]
#[should_panic(expected = "does not own")]
fn a_handoff_to_the_wrong_shard_is_a_bug() {
    let mut packets = Packets::new(SEED);
    let t0 = Instant::now();
    let packet = packets.forward_owned_by(0, 2, addr(1), Duration::ZERO);
    let mut wrong = testkit::core(testkit::config(1, 2), &packets, t0);
    let expanded = packets.processor().expand(&packet).expect("expands");
    let handoff = Handoff {
        packet: Box::new(expanded),
        header: header(),
        received_at: t0,
    };
    wrong.on_handoff(handoff, &mut NoTimings);
}

#[test]
fn shutdown_forwards_what_falls_due_before_the_deadline_and_drops_the_rest() {
    let mut one = One::new(|_| {});
    let t0 = one.t0;
    let hop = addr(1);
    one.send(hop, Duration::from_millis(10), t0);
    one.send(hop, Duration::from_millis(900), t0);
    one.core.begin_drain(t0 + Duration::from_millis(500));
    assert_eq!(one.core.next_timeout(), t0 + Duration::from_millis(10));
    let t1 = t0 + Duration::from_millis(10);
    one.core.handle_timeout(t1);
    let link = one.open(hop, t1);
    assert_eq!(one.step(hop, link, t1).0, LinkStep::Write { packets: 1 });
    // A write under way at the deadline still reports.
    let deadline = t0 + Duration::from_millis(500);
    one.core.handle_timeout(deadline);
    assert_eq!(one.core.phase(), Phase::Closed);
    assert_eq!(one.dropped(DropReason::Shutdown), 1);
    assert_eq!(one.actions(), vec![Action::Wake { link }]);
    one.core
        .on_written(hop, link, deadline, &[], &mut NoTimings);
    assert_eq!(one.step(hop, link, deadline).0, LinkStep::Close);
    // Frames and handoffs after close are counted as shutdown.
    let late = one.packets.forward(hop, Duration::ZERO);
    assert_eq!(
        one.frame(&late, deadline),
        Outcome::Dropped(DropReason::Shutdown)
    );
    let c = one.core.counts();
    assert_eq!(c.packets.forwarded, 1);
    assert_eq!(one.core.in_flight(), 0);
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn stale_reports_of_a_forgotten_link_change_nothing() {
    let mut one = One::new(|c| c.table.idle_timeout = Duration::from_secs(1));
    let t0 = one.t0;
    let hop = addr(1);
    one.send(hop, Duration::ZERO, t0);
    let link = one.open(hop, t0);
    one.step(hop, link, t0);
    one.core.on_written(hop, link, t0, &[], &mut NoTimings);
    one.core.handle_timeout(t0 + Duration::from_secs(2));
    // A new entry for the same address; the old link's late reports must not touch it.
    one.send(hop, Duration::ZERO, t0 + Duration::from_secs(2));
    let before = one.core.counts();
    one.core.on_written(hop, link, t0, &[], &mut NoTimings);
    one.core.on_write_failed(hop, link, t0);
    one.core.on_connect_failed(hop, link, t0);
    assert_eq!(one.core.counts(), before);
    assert_eq!(one.core.figures().queued, 1);
    one.core.check_conservation();
}

#[test]
fn with_known_nodes_only_their_addresses_are_forwarded_to() {
    let known = std::sync::Arc::new(crate::topology::KnownNodes::from_addresses(
        vec![vec![addr(1).ip()]],
        "test",
    ));
    let mut one = One::new(|_| {});
    // No topology: any address.
    assert_eq!(one.send(addr(2), Duration::ZERO, one.t0), Outcome::Queued);
    assert!(one.core.set_known(Some(known.clone())).is_none());
    assert_eq!(one.send(addr(1), Duration::ZERO, one.t0), Outcome::Queued);
    assert_eq!(
        one.send(addr(2), Duration::ZERO, one.t0),
        Outcome::Dropped(DropReason::NextHopUnknown)
    );
    assert_eq!(one.dropped(DropReason::NextHopUnknown), 1);
    // Another port of a known address is the same node.
    let other_port = SocketAddr::new(addr(1).ip(), 9999);
    assert_eq!(
        one.send(other_port, Duration::ZERO, one.t0),
        Outcome::Queued
    );

    // forward_to = "any": the known nodes are not checked.
    let mut any = One::new(|c| c.forward_to = ForwardTo::Any);
    any.core.set_known(Some(known));
    assert!(any.core.known().is_none());
    assert_eq!(any.send(addr(2), Duration::ZERO, any.t0), Outcome::Queued);
}

#[test]
fn the_byte_budget_counts_writes_under_way_until_they_report() {
    let footprint = {
        let mut packets = Packets::new(SEED);
        let len = packets.forward(addr(1), Duration::ZERO).len();
        (std::mem::size_of::<Held>() + allocation_size(len)) as u64
    };
    let mut one = One::new(|c| c.memory_bytes_max = 3 * footprint);
    for _ in 0..3 {
        assert_eq!(one.send(addr(1), Duration::ZERO, one.t0), Outcome::Queued);
    }
    assert_eq!(
        one.send(addr(1), Duration::ZERO, one.t0),
        Outcome::Dropped(DropReason::MemoryFull)
    );
    let link = one.open(addr(1), one.t0);
    assert_eq!(
        one.step(addr(1), link, one.t0),
        (LinkStep::Write { packets: 3 }, 3)
    );
    // In the write buffer: still counted.
    assert_eq!(one.core.bytes_held(), 3 * footprint);
    assert_eq!(
        one.send(addr(1), Duration::ZERO, one.t0),
        Outcome::Dropped(DropReason::MemoryFull)
    );
    one.core
        .on_written(addr(1), link, one.t0, &[], &mut NoTimings);
    one.core.check_conservation();
    assert_eq!(one.core.bytes_held(), 0);
    assert_eq!(one.send(addr(1), Duration::ZERO, one.t0), Outcome::Queued);
}

#[test]
fn allocation_sizes_round_as_size_class_allocators_do() {
    assert_eq!(allocation_size(0), 0);
    assert_eq!(allocation_size(1), 8);
    assert_eq!(allocation_size(64), 64);
    assert_eq!(allocation_size(65), 80);
    assert_eq!(allocation_size(386), 448);
    assert_eq!(allocation_size(2413), 2560);
    assert_eq!(allocation_size(4096), 4096);
    assert_eq!(allocation_size(8557), 10240);
    assert_eq!(allocation_size(16749), 20480);
    assert_eq!(allocation_size(33133), 40960);
    for bytes in 1..100_000 {
        let rounded = allocation_size(bytes);
        assert!(
            rounded >= bytes && rounded <= bytes + bytes / 4 + 8,
            "{bytes} -> {rounded}"
        );
    }
}
