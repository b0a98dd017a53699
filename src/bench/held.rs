//! Bytes per held packet, measured: for every Sphinx packet size, a shard core (the one the
//! node runs) is given `packets` real packets with a long delay, and the process's resident
//! memory is read before and after. The figure includes everything a held packet touches:
//! the next hop's packet, its record, its wheel entry. It is set beside what the byte budget
//! (`engine.packet_memory_bytes_max`) counts for the same packets, so that an operator can see
//! how resident memory follows from the budget.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use x25519_dalek::{PublicKey, StaticSecret};

use super::prepare::{bench_header, prepare, PrepareError};
use crate::config::EngineSection;
use crate::framing::SizeTag;
use crate::replay::ReplayFilter;
use crate::shard::core::{
    CoreConfig, HandoffBatch, HandoffRefused, HandoffSink, NoTimings, Outcome, ShardCore,
};
use crate::sphinx::HopProcessor;

/// The delay the measured packets ask for: they stay in the wheel while memory is read.
const HELD_DELAY: Duration = Duration::from_secs(30);

/// One packet size's figures.
#[derive(Clone, Debug, Serialize)]
pub struct HeldBytes {
    /// The size's name.
    pub size: String,
    /// Bytes of one packet on the wire.
    pub packet_bytes: usize,
    /// Packets held for the measurement.
    pub packets: usize,
    /// What the byte budget counts per packet.
    pub budget_bytes_per_packet: f64,
    /// Resident memory grown per packet (None where /proc/self/statm cannot be read).
    pub resident_bytes_per_packet: Option<f64>,
}

/// One shard: nothing is handed anywhere.
struct NoOtherShards;

impl HandoffSink for NoOtherShards {
    fn hand_off(
        &mut self,
        _: usize,
        batch: HandoffBatch,
    ) -> Result<(), (HandoffRefused, HandoffBatch)> {
        Err((HandoffRefused::Closed, batch))
    }
}

/// Resident bytes of this process, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Measure every Sphinx packet size with `packets` held packets each. `release_free` is
/// called just before each first reading of resident memory: it should make the allocator
/// return the memory it holds free to the system (bench-mix calls mimalloc's `mi_collect`),
/// so that held packets do not land in memory freed earlier and look smaller than they are.
pub fn measure(packets: usize, release_free: fn()) -> Result<Vec<HeldBytes>, PrepareError> {
    let packets = packets.max(1);
    let node: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 1789));
    let sink: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 1790));
    let sink_key = PublicKey::from(&StaticSecret::random());
    let mut results = Vec::new();
    for size in SizeTag::ALL.into_iter().filter(|s| !s.is_outfox()) {
        let secret = StaticSecret::random();
        let prepared = prepare(
            packets,
            node,
            &secret,
            &[(sink, sink_key)],
            size,
            HELD_DELAY,
            false,
        )?;
        let filter =
            ReplayFilter::new(packets as u64 * 2, 1e-5).map_err(|_| PrepareError::NotForward)?;
        let mut engine = EngineSection {
            delay_max: HELD_DELAY * 2,
            held_packets_max: packets,
            ..EngineSection::default()
        };
        engine.packet_memory_bytes_max = u64::MAX / 4;
        let config = CoreConfig::new(&engine, 0, 1);
        let now = Instant::now();
        let Ok(mut core) =
            ShardCore::new(config, HopProcessor::new(secret, filter), now, Instant::now)
        else {
            return Err(PrepareError::NotForward);
        };
        let header = bench_header(size);
        let skip = header.encoded_len();
        release_free();
        let before = resident_bytes();
        let mut held = 0usize;
        for frame in &prepared.frames {
            let outcome = core.on_frame(
                header,
                &frame[skip..],
                now,
                &mut NoOtherShards,
                &mut NoTimings,
            );
            if matches!(outcome, Outcome::Held { .. }) {
                held += 1;
            }
        }
        let after = resident_bytes();
        let held_f = held.max(1) as f64;
        results.push(HeldBytes {
            size: format!("{size:?}").to_lowercase(),
            packet_bytes: size.packet_len(),
            packets: held,
            budget_bytes_per_packet: core.bytes_held() as f64 / held_f,
            resident_bytes_per_packet: match (before, after) {
                (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / held_f),
                _ => None,
            },
        });
        drop(core);
        drop(prepared);
    }
    Ok(results)
}
