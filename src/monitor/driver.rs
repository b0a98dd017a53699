//! The monitor's thread: every `monitor.interval`, build `loops_per_interval` loop packets and
//! send them to the node's own mix port; take the shards' reports of loops come back; tick
//! the record. Routes: the first loop of each round goes through the node alone
//! (node -> node); the others through one or two other nodes of the topology, picked at
//! random (node -> X [-> Y] -> node), so that loss on a path shows in the per-path tallies.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Receiver;
use x25519_dalek::{PublicKey, StaticSecret};

use super::{Family, LoopPlan, Monitor};
use crate::config::MonitorSection;
use crate::framing::{FrameHeader, KeyRotation, PacketType, SizeTag, Version};
use crate::rotation::AnnouncedKeys;
use crate::shard::core::LoopArrival;
use crate::sphinx::{build_packet_for, FinalHopInfo, RouteHop};
use crate::topology::refresh::{KnownSource, READ_TIMEOUT};

/// Other nodes a loop crosses at most.
pub const OTHERS_MAX: usize = 2;
/// How often the thread looks at arrivals, its stop flag and the clock.
const POLL: Duration = Duration::from_millis(50);
/// The longest delay a loop asks of one hop.
const HOP_DELAY_MAX: Duration = Duration::from_secs(5);

/// What the thread needs.
pub struct MonitorContext {
    /// `[monitor]`.
    pub settings: MonitorSection,
    /// The node's mix address as other nodes reach it.
    pub own_address: SocketAddr,
    /// Its identity, to leave itself out of the topology.
    pub own_identity: [u8; 32],
    /// Its announced Sphinx keys (the primary is the loop's key at this node).
    pub keys: AnnouncedKeys,
    /// The loops' destination (what the shards recognise).
    pub destination: [u8; 32],
    /// Where the shards report arrivals.
    pub arrivals: Receiver<LoopArrival>,
    /// The topology for routes through other nodes.
    pub topology: Option<KnownSource>,
    /// How often to read it again.
    pub topology_interval: Duration,
    /// The record, shared with the HTTP API.
    pub record: Arc<Mutex<Monitor>>,
    /// The node's Noise key pair (None: it speaks no Noise): loops go in over Noise when the
    /// topology lists the node's own address with a Noise key, as the node then expects.
    pub noise: Option<crate::noise::NoiseIdentity>,
}

/// The running monitor thread.
pub struct MonitorThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MonitorThread {
    /// Start it.
    pub fn start(context: MonitorContext) -> MonitorThread {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || run(context, &flag))
            .ok();
        if thread.is_none() {
            tracing::warn!("cannot start the monitor thread: no loops will be sent");
        }
        MonitorThread { stop, thread }
    }

    /// Stop it (a read of the topology under way is not waited for).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            crate::background::join_within(thread, crate::background::STOP_WAIT);
        }
    }
}

impl Drop for MonitorThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness a loop's delay and route are still valid, only predictable.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// Random bytes for the loops' destination (drawn once at start).
pub fn random_destination() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: fall back to the clock; only this node compares against it.
        let nanos = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes[..16].copy_from_slice(&nanos.to_le_bytes());
    }
    bytes
}

/// A delay drawn as a client draws one: exponential with `mean`, capped.
fn client_delay(mean: Duration) -> Duration {
    let unit = ((random_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let delay = mean.as_secs_f64() * -unit.ln();
    Duration::from_secs_f64(delay.min(HOP_DELAY_MAX.as_secs_f64()))
}

/// A node of the topology to route through.
#[derive(Clone, Copy, Debug)]
struct Other {
    address: SocketAddr,
    key: PublicKey,
}

/// The other nodes of the topology, and whether it lists the node's own IP address with a
/// Noise key (the node then expects Noise from that address, its loops included).
fn load_others(context: &MonitorContext) -> Option<(Vec<Other>, bool)> {
    let source = context.topology.as_ref()?;
    match source.load_topology(READ_TIMEOUT) {
        Ok(topology) => Some((
            topology
                .nodes
                .iter()
                .filter(|n| n.identity.as_bytes() != &context.own_identity)
                .filter_map(|n| {
                    let address = match n.host.parse() {
                        Ok(ip) => SocketAddr::new(ip, n.mix_port),
                        Err(_) => (n.host.as_str(), n.mix_port)
                            .to_socket_addrs()
                            .ok()?
                            .next()?,
                    };
                    (address != context.own_address).then_some(Other {
                        address,
                        key: n.sphinx_key,
                    })
                })
                .collect(),
            own_ip_speaks_noise(&topology, context.own_address.ip()),
        )),
        Err(error) => {
            tracing::warn!(%error, "monitor: cannot read the topology; routing loops as before");
            None
        }
    }
}

/// Whether `topology` lists `ip` (as a host or one of the addresses) with a Noise key.
fn own_ip_speaks_noise(topology: &crate::topology::Topology, ip: std::net::IpAddr) -> bool {
    let canonical = |ip: std::net::IpAddr| ip.to_canonical();
    topology.nodes.iter().any(|n| {
        n.noise_key.is_some()
            && (n
                .host
                .parse()
                .is_ok_and(|h: std::net::IpAddr| canonical(h) == canonical(ip))
                || n.addresses.iter().any(|a| canonical(*a) == canonical(ip)))
    })
}

/// The loops' connection to the node's own mix port, over Noise when `noise` is set.
struct Sender {
    to: SocketAddr,
    stream: Option<TcpStream>,
    /// The node's own key pair when the node expects Noise from this address.
    noise: Option<crate::noise::NoiseIdentity>,
    transport: Option<crate::noise::link::Transport>,
    sealed: Vec<u8>,
}

impl Sender {
    /// Speak Noise (`Some`) or plain TCP from the next connection on.
    fn set_noise(&mut self, noise: Option<crate::noise::NoiseIdentity>) {
        if noise.as_ref().map(|n| n.public) != self.noise.as_ref().map(|n| n.public) {
            self.stream = None;
            self.transport = None;
            self.noise = noise;
        }
    }

    fn connect(&mut self) -> Option<TcpStream> {
        let mut stream = TcpStream::connect_timeout(&self.to, Duration::from_secs(2)).ok()?;
        self.transport = None;
        if let Some(me) = &self.noise {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            // To itself: its own key is the responder's.
            let initiator = crate::noise::link::Handshake::initiator(&me.private, &me.public);
            match crate::noise::blocking::handshake(&mut stream, initiator) {
                Ok((transport, _)) => self.transport = Some(transport),
                Err(error) => {
                    tracing::debug!(%error, "monitor: the Noise handshake with the node's own mix port failed");
                    return None;
                }
            }
        }
        Some(stream)
    }

    fn send(&mut self, bytes: &[u8]) -> bool {
        for _ in 0..2 {
            if self.stream.is_none() {
                self.stream = self.connect();
            }
            let Some(stream) = self.stream.as_mut() else {
                return false;
            };
            let out = match self.transport.as_mut() {
                Some(transport) => {
                    self.sealed.clear();
                    if transport.seal(bytes, &mut self.sealed).is_err() {
                        self.stream = None;
                        continue;
                    }
                    &self.sealed[..]
                }
                None => bytes,
            };
            if stream.write_all(out).and_then(|_| stream.flush()).is_ok() {
                return true;
            }
            self.stream = None;
        }
        false
    }
}

fn run(context: MonitorContext, stop: &AtomicBool) {
    let settings = &context.settings;
    let family = Family::of(&context.own_address);
    let mut others: Vec<Other> = Vec::new();
    let mut next_topology = Instant::now();
    let mut next_round = Instant::now() + settings.interval.min(Duration::from_secs(1));
    let mut sender = Sender {
        to: context.own_address,
        stream: None,
        noise: None,
        transport: None,
        sealed: Vec::new(),
    };
    let mut sequence = 0u64;
    let mut send_failures = 0u64;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if context.topology.is_some() && now >= next_topology {
            if let Some((loaded, own_noise)) = load_others(&context) {
                others = loaded;
                sender.set_noise(context.noise.clone().filter(|_| own_noise));
            }
            next_topology = Instant::now() + context.topology_interval;
        }
        if now >= next_round {
            next_round = now + settings.interval;
            let (announced, _) = context.keys.get();
            let own_key = PublicKey::from(announced.primary.1);
            for i in 0..settings.loops_per_interval {
                let crossing = if i == 0 || others.is_empty() {
                    0
                } else {
                    1 + (random_u64() % OTHERS_MAX.min(others.len()) as u64) as usize
                };
                let mut route = vec![RouteHop {
                    address: context.own_address,
                    public_key: own_key,
                    delay: client_delay(settings.mean_delay),
                }];
                let mut picked: Vec<usize> = Vec::with_capacity(crossing);
                while picked.len() < crossing {
                    let j = (random_u64() % others.len() as u64) as usize;
                    if !picked.contains(&j) {
                        picked.push(j);
                    }
                }
                for j in picked {
                    route.push(RouteHop {
                        address: others[j].address,
                        public_key: others[j].key,
                        delay: client_delay(settings.mean_delay),
                    });
                }
                let expected = route.iter().map(|h| h.delay).sum();
                route.push(RouteHop {
                    address: context.own_address,
                    public_key: own_key,
                    delay: Duration::ZERO,
                });
                sequence += 1;
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&sequence.to_be_bytes());
                id[8..].copy_from_slice(&random_u64().to_le_bytes());
                let packet = build_packet_for(
                    &route,
                    FinalHopInfo {
                        destination: context.destination,
                        identifier: id,
                    },
                    SizeTag::Regular,
                    b"loop",
                    &StaticSecret::random(),
                );
                let packet = match packet {
                    Ok(packet) => packet,
                    Err(error) => {
                        tracing::warn!(%error, "monitor: cannot build a loop packet");
                        continue;
                    }
                };
                let header = FrameHeader {
                    version: Version::V8,
                    size_tag: SizeTag::Regular,
                    packet_type: PacketType::Sphinx,
                    key_rotation: KeyRotation::Unknown,
                };
                let mut frame = vec![0u8; header.encoded_len()];
                header.encode(&mut frame);
                frame.extend_from_slice(&packet);
                let plan = LoopPlan {
                    id,
                    family,
                    path: route.iter().map(|h| h.address).collect(),
                    expected,
                };
                if !lock(&context.record).has_room() {
                    break;
                }
                if sender.send(&frame) {
                    lock(&context.record).sent(plan, Instant::now(), SystemTime::now());
                } else {
                    send_failures += 1;
                    if send_failures.is_power_of_two() {
                        tracing::warn!(to = %context.own_address, failures = send_failures, "monitor: cannot send a loop to the node's own mix port");
                    }
                }
            }
        }
        while let Ok(arrival) = context.arrivals.try_recv() {
            lock(&context.record).arrived(&arrival.identifier, arrival.at, SystemTime::now());
        }
        lock(&context.record).tick(Instant::now(), SystemTime::now());
        std::thread::sleep(POLL);
    }
}

fn lock(record: &Mutex<Monitor>) -> std::sync::MutexGuard<'_, Monitor> {
    record.lock().unwrap_or_else(|e| e.into_inner())
}
