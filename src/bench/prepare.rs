//! Building the benchmark's packets ahead of time, and the Sphinx ceiling.
//!
//! Each packet goes `node -> sink`; building it and learning the bytes the node will forward
//! (to fingerprint them) costs a few scalar multiplications, so this runs before the timed
//! part, on every core, with a progress bar.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sphinx_packet::{ProcessedPacketData, SphinxPacket};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::framing::{FrameHeader, KeyRotation, PacketType, SizeTag, Version};
use crate::sphinx::{build_packet, RouteHop};

/// Packets ready to send, and how the sink recognises what the node forwards.
pub struct Prepared {
    /// Framed packets (header + packet), in sending order.
    pub frames: Vec<Vec<u8>>,
    /// Fingerprint of each forwarded packet -> its index in `frames`.
    pub fingerprints: HashMap<u64, u32>,
    /// The delay each packet asks of the node.
    pub delay: Duration,
}

/// The fingerprint of a forwarded packet: the first 8 bytes of its group element, which the
/// node re-blinds for every packet and so are unique.
pub fn fingerprint(packet: &[u8]) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&packet[..8]);
    u64::from_le_bytes(prefix)
}

/// The frame header the benchmark sends.
pub fn bench_header(size: SizeTag) -> FrameHeader {
    FrameHeader {
        version: Version::V8,
        size_tag: size,
        packet_type: PacketType::Sphinx,
        key_rotation: KeyRotation::Unknown,
    }
}

/// A framed packet and the fingerprint of what the node forwards for it.
type FramePrint = (Vec<u8>, u64);

/// Why preparation failed.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The builder refused.
    #[error("building a packet failed: {0}")]
    Build(#[from] crate::sphinx::BuildError),
    /// The node key did not process our own packet: a bug.
    #[error("a prepared packet did not process as a forward hop")]
    NotForward,
}

/// Build `count` packets for the node with `node_secret` listening at `node_addr`, each
/// forwarded to one of `sinks` (round robin) after `delay`.
pub fn prepare(
    count: usize,
    node_addr: SocketAddr,
    node_secret: &StaticSecret,
    sinks: &[(SocketAddr, PublicKey)],
    size: SizeTag,
    delay: Duration,
    show_progress: bool,
) -> Result<Prepared, PrepareError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let done = AtomicU64::new(0);
    let bar = if show_progress {
        indicatif::ProgressBar::new(count as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "building packets {bar:40} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let node_public = PublicKey::from(node_secret);
    let header = bench_header(size);
    let chunks: Vec<Result<Vec<FramePrint>, PrepareError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (done, bar) = (&done, &bar);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    let mut i = t;
                    while i < count {
                        let (sink_addr, sink_key) = sinks[i % sinks.len()];
                        let route = [
                            RouteHop {
                                address: node_addr,
                                public_key: node_public,
                                delay,
                            },
                            RouteHop {
                                address: sink_addr,
                                public_key: sink_key,
                                delay: Duration::ZERO,
                            },
                        ];
                        let message = (i as u64).to_le_bytes();
                        let packet = build_packet(
                            &route,
                            [0u8; 32],
                            size,
                            &message,
                            &StaticSecret::random(),
                        )?;
                        let forwarded = SphinxPacket::from_bytes(&packet)
                            .and_then(|p| p.process(node_secret))
                            .map_err(|_| PrepareError::NotForward)?;
                        let print = match forwarded.data {
                            ProcessedPacketData::ForwardHop {
                                next_hop_packet, ..
                            } => fingerprint(next_hop_packet.header.shared_secret.as_bytes()),
                            ProcessedPacketData::FinalHop { .. } => {
                                return Err(PrepareError::NotForward)
                            }
                        };
                        let mut frame = vec![0u8; header.encoded_len()];
                        header.encode(&mut frame);
                        frame.extend_from_slice(&packet);
                        out.push((frame, print));
                        if done.fetch_add(1, Ordering::Relaxed) % 64 == 0 {
                            bar.set_position(done.load(Ordering::Relaxed));
                        }
                        i += threads;
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(PrepareError::NotForward)))
            .collect()
    });
    bar.finish_and_clear();
    let mut per_thread = Vec::with_capacity(threads);
    for chunk in chunks {
        per_thread.push(chunk?.into_iter());
    }
    // Interleave back into index order.
    let mut frames = Vec::with_capacity(count);
    let mut fingerprints = HashMap::with_capacity(count);
    for i in 0..count {
        if let Some((frame, print)) = per_thread[i % threads].next() {
            fingerprints.insert(print, frames.len() as u32);
            frames.push(frame);
        }
    }
    Ok(Prepared {
        frames,
        fingerprints,
        delay,
    })
}

/// The Sphinx crate's own single-thread `process()` rate on `frames` (packets/s): parse and
/// process each once, for at least `min_time`.
pub fn ceiling(
    frames: &[Vec<u8>],
    header_len: usize,
    node_secret: &StaticSecret,
    min_time: Duration,
) -> f64 {
    let start = Instant::now();
    let mut processed = 0u64;
    while start.elapsed() < min_time || processed < 200 {
        let frame = &frames[processed as usize % frames.len()];
        let ok = SphinxPacket::from_bytes(&frame[header_len..])
            .and_then(|p| p.process(node_secret))
            .is_ok();
        std::hint::black_box(ok);
        processed += 1;
    }
    processed as f64 / start.elapsed().as_secs_f64()
}

/// The node's own hop step ([`crate::sphinx::HopProcessor`]: expand, replay check, finish) on
/// one thread over `frames`, for comparison with [`ceiling`] (packets/s).
pub fn hop_step_rate(
    frames: &[Vec<u8>],
    header_len: usize,
    node_secret: &StaticSecret,
    kind: crate::sphinx::HopProcessorKind,
    min_time: Duration,
) -> f64 {
    let filter = match crate::replay::ReplayFilter::new(frames.len() as u64 + 1, 1e-5) {
        Ok(f) => f,
        Err(_) => return 0.0,
    };
    let mut processor = crate::sphinx::HopProcessor::with_kind(node_secret.clone(), filter, kind);
    let start = Instant::now();
    let mut processed = 0usize;
    while (start.elapsed() < min_time || processed < 200) && processed < frames.len() {
        let ok = processor
            .expand(&frames[processed][header_len..])
            .and_then(|p| processor.finish(p, Duration::from_secs(3600)))
            .is_ok();
        std::hint::black_box(ok);
        processed += 1;
    }
    processed as f64 / start.elapsed().as_secs_f64()
}
