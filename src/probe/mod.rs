//! `probe`: is this node mixing? Sends test packets through a node to a receiver started here,
//! and compares what comes back, and when, with what was asked.
//!
//! The receiver plays the final hop: it unwraps each packet with its own key and checks the
//! message, so a packet that comes back proves the node decrypted, delayed and forwarded it.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sphinx_packet::{ProcessedPacketData, SphinxPacket};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::framing::{FrameDecoder, FrameHeader, KeyRotation, PacketType, SizeTag, Version};
use crate::sphinx::{build_packet, RouteHop};

/// What to probe.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// The node's mix port.
    pub target: SocketAddr,
    /// The node's Sphinx public key.
    pub sphinx_key: PublicKey,
    /// The rotation byte to send with: the parity of the key's rotation id, or
    /// [`KeyRotation::Unknown`] (the node tries its primary, then its other key).
    pub key_rotation: KeyRotation,
    /// Packets to send.
    pub count: usize,
    /// Address the node should send the packets back to; default: this machine's address on
    /// the route to the target.
    pub reply_host: Option<IpAddr>,
    /// Wait this long past the longest requested delay for stragglers.
    pub grace: Duration,
    /// Further mixnodes after the target, in order (each with no delay of its own): the
    /// packets cross all of them before they come back. At most [`THEN_HOPS_MAX`].
    pub then: Vec<(SocketAddr, PublicKey)>,
    /// Speak Noise to the target: the target's Noise public key (as its topology lists it)
    /// and the key pair to speak it with. None: plain TCP.
    pub noise: Option<(crate::noise::NoiseIdentity, [u8; 32])>,
}

/// Mixnodes a probe route may cross after the target: Sphinx routes have at most five hops,
/// and the last is the probe's own receiver.
pub const THEN_HOPS_MAX: usize = 3;

/// One packet's fate.
#[derive(Clone, Debug, Serialize)]
pub struct ProbePacket {
    /// Requested delay, ms.
    pub requested_ms: f64,
    /// Time from sending to arrival, ms; None if it never came back.
    pub measured_ms: Option<f64>,
}

/// The probe's findings.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    /// The node probed, and the nodes after it: `A -> B -> C`.
    pub target: String,
    /// Where replies were received.
    pub reply_address: String,
    /// Packets sent.
    pub sent: usize,
    /// Packets that came back intact.
    pub returned: usize,
    /// Packets that came back sooner than their requested delay (should be 0).
    pub early: usize,
    /// Median of (measured - requested), ms, over returned packets.
    pub median_extra_ms: Option<f64>,
    /// Each packet.
    pub packets: Vec<ProbePacket>,
    /// True when every packet came back intact and none early.
    pub mixing: bool,
    /// One line for a person.
    pub verdict: String,
}

/// Why the probe could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The node could not be reached.
    #[error("cannot connect to the node at {target}: {source}. Is it running, and is the port open in the firewall (e.g. `sudo ufw allow 1789/tcp`)?")]
    Connect {
        /// The node.
        target: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The local receiver could not start.
    #[error("cannot start the local receiver on {addr}: {source}. Pass --reply-host with an address of this machine the node can reach")]
    Listen {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Writing the packets failed.
    #[error("sending to the node at {target} failed: {source}")]
    Send {
        /// The node.
        target: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The Noise handshake with the node failed.
    #[error("the Noise handshake with the node at {target} failed: {source}. Does the topology list the node's current Noise key (`nym-mixnode node-details --id ID` shows it)?")]
    Noise {
        /// The node.
        target: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The packets could not be built.
    #[error("building test packets failed: {0}")]
    Build(#[from] crate::sphinx::BuildError),
}

/// Run the probe.
pub fn probe(options: &ProbeOptions) -> Result<ProbeReport, ProbeError> {
    let mut stream =
        TcpStream::connect_timeout(&options.target, Duration::from_secs(5)).map_err(|source| {
            ProbeError::Connect {
                target: options.target,
                source,
            }
        })?;
    let reply_ip = match options.reply_host {
        Some(ip) => ip,
        None => stream
            .local_addr()
            .map(|a| a.ip())
            .map_err(|source| ProbeError::Connect {
                target: options.target,
                source,
            })?,
    };
    let listen_addr = SocketAddr::new(reply_ip, 0);
    let listener = TcpListener::bind(listen_addr).map_err(|source| ProbeError::Listen {
        addr: listen_addr,
        source,
    })?;
    let reply_addr = listener.local_addr().map_err(|source| ProbeError::Listen {
        addr: listen_addr,
        source,
    })?;
    let secret = StaticSecret::random();
    let receiver_key = PublicKey::from(&secret);

    // Delays from 0 to 90 ms, so that the report shows the node honours each.
    let requested: Vec<Duration> = (0..options.count)
        .map(|i| Duration::from_millis((i as u64 * 10) % 100))
        .collect();
    let header = FrameHeader {
        version: Version::V8,
        size_tag: SizeTag::Regular,
        packet_type: PacketType::Sphinx,
        key_rotation: options.key_rotation,
    };
    let mut wire = Vec::new();
    let then = &options.then[..options.then.len().min(THEN_HOPS_MAX)];
    for (i, delay) in requested.iter().enumerate() {
        let mut route = vec![RouteHop {
            address: options.target,
            public_key: options.sphinx_key,
            delay: *delay,
        }];
        route.extend(then.iter().map(|(address, public_key)| RouteHop {
            address: *address,
            public_key: *public_key,
            delay: Duration::ZERO,
        }));
        route.push(RouteHop {
            address: reply_addr,
            public_key: receiver_key,
            delay: Duration::ZERO,
        });
        let message = probe_message(i);
        let packet = build_packet(
            &route,
            [0u8; 32],
            SizeTag::Regular,
            &message,
            &StaticSecret::random(),
        )?;
        let start = wire.len();
        wire.resize(start + header.encoded_len(), 0);
        header.encode(&mut wire[start..]);
        wire.extend_from_slice(&packet);
    }

    let arrivals: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (arrivals, stop) = (Arc::clone(&arrivals), Arc::clone(&stop));
        std::thread::spawn(move || receive(listener, &secret, &arrivals, &stop))
    };
    // Over Noise when the target's topology says it speaks it (its peers must).
    if let Some((me, target_key)) = &options.noise {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let initiator = crate::noise::link::Handshake::initiator(&me.private, target_key);
        let sealed = crate::noise::blocking::handshake(&mut stream, initiator).and_then(
            |(mut transport, _)| {
                let mut sealed = Vec::with_capacity(wire.len() + 64);
                transport
                    .seal(&wire, &mut sealed)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                Ok(sealed)
            },
        );
        match sealed {
            Ok(sealed) => wire = sealed,
            Err(source) => {
                stop.store(true, Ordering::Relaxed);
                let _ = receiver.join();
                return Err(ProbeError::Noise {
                    target: options.target,
                    source,
                });
            }
        }
    }
    let sent_at = Instant::now();
    let sent = stream.write_all(&wire).and_then(|_| stream.flush());
    if let Err(source) = sent {
        stop.store(true, Ordering::Relaxed);
        let _ = receiver.join();
        return Err(ProbeError::Send {
            target: options.target,
            source,
        });
    }
    let longest = requested.iter().max().copied().unwrap_or_default();
    let deadline = sent_at + longest + options.grace;
    while Instant::now() < deadline {
        if arrivals.lock().map(|a| a.len()).unwrap_or(0) >= options.count {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    drop(stream);

    let mut measured: Vec<Option<Duration>> = vec![None; options.count];
    if let Ok(arrivals) = arrivals.lock() {
        for (index, at) in arrivals.iter() {
            if let Some(slot) = measured.get_mut(*index) {
                slot.get_or_insert(at.duration_since(sent_at));
            }
        }
    }
    Ok(summarise(options, reply_addr, &requested, &measured))
}

fn probe_message(index: usize) -> Vec<u8> {
    format!("nym-mixnode probe {index}").into_bytes()
}

fn parse_message(message: &[u8]) -> Option<usize> {
    std::str::from_utf8(message)
        .ok()?
        .strip_prefix("nym-mixnode probe ")?
        .parse()
        .ok()
}

fn receive(
    listener: TcpListener,
    secret: &StaticSecret,
    arrivals: &Mutex<Vec<(usize, Instant)>>,
    stop: &AtomicBool,
) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let mut connections: Vec<(TcpStream, FrameDecoder)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Ok((s, _)) = listener.accept() {
            if s.set_nonblocking(true).is_ok() && connections.len() < 16 {
                connections.push((s, FrameDecoder::new()));
            }
        }
        let mut idle = true;
        connections.retain_mut(|(s, decoder)| match s.read(decoder.spare_mut()) {
            Ok(0) => false,
            Ok(n) => {
                idle = false;
                decoder.advance(n);
                let at = Instant::now();
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) => {
                            let index = SphinxPacket::from_bytes(frame.packet)
                                .ok()
                                .and_then(|p| p.process(secret).ok())
                                .and_then(|p| match p.data {
                                    ProcessedPacketData::FinalHop { payload, .. } => {
                                        payload.recover_plaintext().ok()
                                    }
                                    ProcessedPacketData::ForwardHop { .. } => None,
                                })
                                .and_then(|m| parse_message(&m));
                            if let (Some(index), Ok(mut a)) = (index, arrivals.lock()) {
                                a.push((index, at));
                            }
                        }
                        Ok(None) => return true,
                        Err(_) => return false,
                    }
                }
            }
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        });
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn summarise(
    options: &ProbeOptions,
    reply: SocketAddr,
    requested: &[Duration],
    measured: &[Option<Duration>],
) -> ProbeReport {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let packets: Vec<ProbePacket> = requested
        .iter()
        .zip(measured)
        .map(|(r, m)| ProbePacket {
            requested_ms: ms(*r),
            measured_ms: m.map(ms),
        })
        .collect();
    let returned = measured.iter().filter(|m| m.is_some()).count();
    let early = requested
        .iter()
        .zip(measured)
        .filter(|(r, m)| m.is_some_and(|m| m < **r))
        .count();
    let mut extra: Vec<f64> = requested
        .iter()
        .zip(measured)
        .filter_map(|(r, m)| m.map(|m| ms(m) - ms(*r)))
        .collect();
    extra.sort_by(|a, b| a.total_cmp(b));
    let median_extra_ms = extra.get(extra.len() / 2).copied();
    let mixing = returned == requested.len() && early == 0 && returned > 0;
    let verdict = if mixing {
        format!(
            "MIXING: all {returned} test packets came back intact, each after at least the delay it asked for (median {:.1} ms beyond it).",
            median_extra_ms.unwrap_or(0.0)
        )
    } else if returned == 0 {
        format!(
            "NOT MIXING: none of {} test packets came back. The node accepted the connection but did not forward to {reply}: check the Sphinx key (node-details), that the node can connect back to this machine, and its logs.",
            requested.len()
        )
    } else if early > 0 {
        format!("NOT MIXING CORRECTLY: {early} packets came back before their requested delay.")
    } else {
        format!(
            "PARTLY MIXING: {returned} of {} test packets came back; the rest were lost or late. Check the node's drop counters.",
            requested.len()
        )
    };
    let route: Vec<String> = std::iter::once(options.target)
        .chain(options.then.iter().take(THEN_HOPS_MAX).map(|(a, _)| *a))
        .map(|a| a.to_string())
        .collect();
    ProbeReport {
        target: route.join(" -> "),
        reply_address: reply.to_string(),
        sent: requested.len(),
        returned,
        early,
        median_extra_ms,
        packets,
        mixing,
        verdict,
    }
}
