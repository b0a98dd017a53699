//! The packet engine's runtime: one glommio executor (a shard) per core.
//!
//! Each shard accepts its share of connections on the mix port (SO_REUSEPORT), reads frames,
//! and derives each packet's shared secret (one scalar multiplication). The replay tag then
//! picks the shard that owns the tag (a pure function), which checks the replay filter and the
//! MAC and unwraps the packet (the second multiplication): so every copy of a packet meets
//! the same filter whatever connection it came on, and no filter is shared between cores. The
//! tag's owner then holds the packet in its delay wheel and writes it on its own connection to
//! the next hop when due (every shard keeps its own next-hop table), so a packet crosses cores
//! at most once. Packets cross only through bounded crossbeam channels, in batches: what one
//! read produced for another shard goes as one message; when the receiving shard's budget
//! (packets and bytes in flight to it) has room for only part of a batch, that part goes and
//! each packet of the rest is a counted drop. After a batch the sender rings the receiving
//! shard's doorbell (a one-slot glommio shared channel, which wakes a sleeping executor), so an
//! idle shard sleeps instead of polling its inbox.
//!
//! Why no replay passes when copies race on several shards: the replay tag is a function of
//! the packet's group element and the node's key (the shared secret, hashed), so every copy of
//! a packet, on whatever connection and shard it arrives, has the same tag and is routed by
//! [`tag_owner`] to the same shard. That shard runs one task at a time: it tests and records
//! the tag in its own filter between two awaits, with no other thread touching that filter,
//! so the copies are judged one after another in the order its inbox and readers hand them
//! over, and only the first whose MAC verifies is recorded and mixed. A copy that no shard owns
//! or two shards own cannot exist, since [`tag_owner`] is a pure function of the tag and the
//! shard count, fixed for the engine's life. The engine test
//! `copies_racing_on_connections_of_different_shards_pass_exactly_once` sends each packet on
//! six connections held by different shards at once, 150 times, and checks that exactly one
//! copy of each is forwarded.
//!
//! Why the tag's owner keeps the packet rather than handing it to a shard that owns the next
//! hop: that second crossing cost a boxed handoff and a channel slot for (N-1)/N of packets,
//! and the one connection per next hop it saved is cheap to multiply (a busy next hop gets one
//! per shard; `engine.next_hops_max` is per shard). The other way to one crossing, a replay
//! filter shared by all shards (an atomic Bloom filter), would keep one connection per next
//! hop but needs every shard to write into one bit array on other cores' cache lines.
//!
//! The policy lives in [`core::ShardCore`], a state machine with no I/O; `worker.rs` is its
//! glommio driver.
//!
//! What it does not do: parse or process bytes itself (see [`crate::framing`],
//! [`crate::sphinx`]), or decide policy (limits come from [`crate::config::EngineSection`]).

pub mod core;
pub mod inbound;
mod noise_io;
pub mod placement;
#[cfg(test)]
mod sim;
pub mod stats;
pub mod syscalls;
pub mod telemetry;
#[cfg(test)]
mod testkit;
pub mod watchdog;
mod worker;

use std::net::SocketAddr;
use std::os::unix::io::IntoRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use x25519_dalek::StaticSecret;

use crate::accounting::PacketCounts;
use crate::config::EngineSection;
use crate::replay::snapshot::FilterImage;
use crate::replay::ReplayFilter;
use crate::sphinx::{HopProcessor, KeyUpdate, LiveKey};
use stats::{ShardCounts, ShardSnapshot, ShardStats};
use telemetry::TelemetryReport;

/// Locked memory each executor registers for io_uring buffers. Network I/O does not use
/// them, so this stays small: the node must start under an 8 MiB memlock limit.
pub const IO_MEMORY_BYTES: usize = 128 << 10;

/// Rings a shard after a handoff was put in its inbox (a glommio shared channel of one slot:
/// a full slot means a ring is already pending).
pub(crate) type Doorbell = glommio::channels::shared_channel::SharedSender<()>;
/// Where a shard hears its doorbell.
pub(crate) type DoorbellReceiver = glommio::channels::shared_channel::SharedReceiver<()>;

/// Accept backlog of each shard's listening socket.
pub const LISTEN_BACKLOG: i32 = 1024;

/// Which shard owns replay tag `tag`: a pure function of the tag.
pub fn tag_owner(tag: &[u8; 32], shard_count: usize) -> usize {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&tag[..8]);
    (u64::from_le_bytes(prefix) % shard_count.max(1) as u64) as usize
}

/// The engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The mix port could not be bound.
    #[error("cannot bind the mix port on {addr}: {cause}{hint}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        cause: std::io::Error,
        /// What to do.
        hint: String,
    },
    /// The replay filter could not be sized.
    #[error("cannot size the replay filter: {0}. Fix: check engine.replay_filter_packets_max and engine.replay_filter_false_positive_rate")]
    ReplayFilter(String),
    /// The delay wheel could not be sized.
    #[error("cannot size the delay wheel: {0}. Fix: check engine.held_packets_max")]
    Wheel(String),
    /// A shard did not take a key change in time (it has stopped, or is stuck).
    #[error("a shard did not take a sphinx key change within 5 s")]
    KeyUpdate,
    /// An executor could not start.
    #[error("cannot start shard {shard}: {detail}. If this mentions memory or io_uring, raise the locked-memory limit (ulimit -l, or LimitMEMLOCK= in the systemd unit)")]
    Executor {
        /// The shard.
        shard: usize,
        /// Why.
        detail: String,
    },
}

/// How to run the engine.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Where to listen for mix traffic (port 0: the OS picks one).
    pub listen: SocketAddr,
    /// Limits and timings.
    pub engine: EngineSection,
    /// Pin each shard to a core.
    pub pin: bool,
    /// The Sphinx keys to start with.
    pub keys: EngineKeys,
    /// The known nodes to start with (None: no topology). Later sets go through
    /// [`Engine::known_updater`].
    pub known: Option<Arc<crate::topology::KnownNodes>>,
    /// Where the node's own loops go when they come back (None: no monitor).
    pub loops: Option<LoopSink>,
    /// The node's Noise key pair (None: plain TCP only).
    pub noise: Option<crate::noise::NoiseIdentity>,
}

/// The monitor's end of the engine: its loops' destination, and the channel the shards put
/// each one that comes back on (with `try_send`: a full channel loses the report, never
/// blocks a shard).
#[derive(Clone, Debug)]
pub struct LoopSink {
    /// The 32 destination bytes of the node's loop packets.
    pub destination: [u8; 32],
    /// Where arrivals go.
    pub arrivals: crossbeam_channel::Sender<core::LoopArrival>,
}

/// One Sphinx key to start the engine with.
pub struct EngineKey {
    /// Its rotation id (0 for a static key).
    pub rotation_id: u32,
    /// The secret.
    pub secret: StaticSecret,
    /// Packets the whole node's filter for this key is sized for (split between the shards).
    pub filter_packets: u64,
    /// Saved filter images for it, one per shard (empty: start empty).
    pub saved: Vec<FilterImage>,
}

impl std::fmt::Debug for EngineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineKey")
            .field("rotation_id", &self.rotation_id)
            .field("filter_packets", &self.filter_packets)
            .field("saved", &self.saved.len())
            .finish_non_exhaustive()
    }
}

impl Clone for EngineKey {
    fn clone(&self) -> Self {
        EngineKey {
            rotation_id: self.rotation_id,
            secret: self.secret.clone(),
            filter_packets: self.filter_packets,
            saved: self.saved.clone(),
        }
    }
}

/// The Sphinx keys the engine starts with.
#[derive(Clone, Debug)]
pub struct EngineKeys {
    /// False: one static key (the first), which answers every rotation byte.
    pub rotating: bool,
    /// The primary's rotation id.
    pub primary: u32,
    /// The live keys (at most two; rotating keys of adjacent rotations).
    pub keys: Vec<EngineKey>,
}

impl EngineKeys {
    /// One static key, its filter sized for `filter_packets`, starting from `saved`.
    pub fn fixed(secret: StaticSecret, filter_packets: u64, saved: Vec<FilterImage>) -> EngineKeys {
        EngineKeys {
            rotating: false,
            primary: 0,
            keys: vec![EngineKey {
                rotation_id: 0,
                secret,
                filter_packets,
                saved,
            }],
        }
    }
}

/// What shards send the saver: copies of their replay filters, one per live key, then a
/// mark that the answer to a request is complete.
pub enum FilterMessage {
    /// A copy of one key's filter on one shard.
    Image {
        /// The shard.
        shard: usize,
        /// The save request it answers ([`FilterSaveRequester::request`]), or [`FINAL_IMAGE`].
        epoch: u64,
        /// The key's rotation id.
        rotation_id: u32,
        /// The key's public key.
        public_key: [u8; 32],
        /// Tags per generation, on this shard.
        capacity: u64,
        /// Bits per generation.
        bit_count: u64,
        /// Probes per tag.
        hash_count: u32,
        /// The filter.
        image: FilterImage,
    },
    /// Every image of `epoch` from `shard` was sent.
    Done {
        /// The shard.
        shard: usize,
        /// The request.
        epoch: u64,
    },
}

impl FilterMessage {
    pub(crate) fn image(shard: usize, epoch: u64, key: &LiveKey, image: FilterImage) -> Self {
        let filter = key.replay_filter();
        let (bit_count, hash_count) = filter.sizes();
        FilterMessage::Image {
            shard,
            epoch,
            rotation_id: key.rotation_id(),
            public_key: key.public_key().to_bytes(),
            capacity: filter.capacity(),
            bit_count,
            hash_count,
            image,
        }
    }
}

/// A shard's share of a whole-node filter size.
pub fn per_shard_packets(filter_packets: u64, shards: usize) -> u64 {
    filter_packets.div_ceil(shards.max(1) as u64).max(1)
}

/// Hands key changes to every shard, with the filters for new keys allocated here (on the
/// caller's thread, off the packet path). See [`Engine::key_updater`].
#[derive(Clone)]
pub struct KeyUpdater {
    senders: Vec<crossbeam_channel::Sender<KeyUpdate>>,
    purged: crossbeam_channel::Receiver<LiveKey>,
    false_positive_rate: f64,
}

/// A key to install with [`KeyUpdater::update`].
pub struct NewKey {
    /// Its rotation id.
    pub rotation_id: u32,
    /// The secret.
    pub secret: StaticSecret,
    /// Packets the whole node's filter for it is sized for.
    pub filter_packets: u64,
}

/// How long [`KeyUpdater::update`] waits for a shard's channel to take a change.
const KEY_UPDATE_WAIT: Duration = Duration::from_secs(5);

impl KeyUpdater {
    /// Purge the keys `purge`, install `install` and make `primary` the primary, on every
    /// shard. Each shard applies the change between two packets; a shard's refusal (a bug)
    /// is logged there.
    pub fn update(
        &self,
        purge: &[u32],
        install: &[NewKey],
        primary: u32,
    ) -> Result<(), EngineError> {
        let shards = self.senders.len();
        for sender in &self.senders {
            let mut keys = Vec::with_capacity(install.len());
            for key in install {
                let filter = ReplayFilter::new(
                    per_shard_packets(key.filter_packets, shards),
                    self.false_positive_rate,
                )
                .map_err(|err| EngineError::ReplayFilter(err.to_string()))?;
                keys.push(LiveKey::new(key.rotation_id, key.secret.clone(), filter));
            }
            let update = KeyUpdate {
                purge: purge.to_vec(),
                install: keys,
                primary,
            };
            if sender.send_timeout(update, KEY_UPDATE_WAIT).is_err() {
                return Err(EngineError::KeyUpdate);
            }
        }
        Ok(())
    }

    /// Free the keys (and their filters) the shards purged.
    pub fn free_purged(&self) -> usize {
        self.purged.try_iter().count()
    }
}

/// Hands every shard a new set of known nodes (see [`Engine::known_updater`]).
#[derive(Clone)]
pub struct KnownUpdater {
    senders: Vec<crossbeam_channel::Sender<Option<Arc<crate::topology::KnownNodes>>>>,
}

impl KnownUpdater {
    /// Give every shard `known`; each takes it between two packets. A shard whose channel is
    /// full has not taken the previous set yet: it is given this one after at most
    /// [`KEY_UPDATE_WAIT`]. Whether every shard was given it.
    pub fn update(&self, known: Option<Arc<crate::topology::KnownNodes>>) -> bool {
        self.senders
            .iter()
            .all(|sender| sender.send_timeout(known.clone(), KEY_UPDATE_WAIT).is_ok())
    }
}

/// Asks the shards for copies of their replay filters (see [`Engine::save_requester`]).
#[derive(Clone)]
pub struct FilterSaveRequester {
    control: Arc<Control>,
}

impl FilterSaveRequester {
    /// Ask every shard for a copy; each answers once, between packets, with the returned
    /// epoch.
    pub fn request(&self) -> u64 {
        self.control.save_epoch.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// The epoch of the image each shard sends as it stops.
pub const FINAL_IMAGE: u64 = u64::MAX;

pub(crate) struct Control {
    stop: AtomicBool,
    deadline: OnceLock<Instant>,
    /// Shards that stopped sending to others (past the drain deadline).
    stopped_sending: AtomicUsize,
    /// Shards running, set before `stop`: the count `stopped_sending` must reach.
    running: AtomicUsize,
    /// Shards that stopped accepting (began draining): once all have and none holds a
    /// packet, they close without waiting for the drain deadline.
    draining: AtomicUsize,
    /// The latest request for replay filter images; each shard answers each once.
    save_epoch: AtomicU64,
}

impl Control {
    fn stop_requested(&self) -> Option<Instant> {
        if self.stop.load(Ordering::Acquire) {
            self.deadline.get().copied()
        } else {
            None
        }
    }
}

/// A running engine.
pub struct Engine {
    handles: Vec<glommio::ExecutorJoinHandle<ShardCounts>>,
    key_updater: KeyUpdater,
    known_updater: KnownUpdater,
    control: Arc<Control>,
    stats: Arc<Vec<ShardStats>>,
    telemetry: crossbeam_channel::Receiver<TelemetryReport>,
    filter_images: crossbeam_channel::Receiver<FilterMessage>,
    local_addr: SocketAddr,
    watchdog: Option<watchdog::Watchdog>,
}

/// Key changes queued per shard (the controller sends a few a day).
const KEY_UPDATES_QUEUED_MAX: usize = 4;

/// Each shard's hop processor for `keys`: filters sized to its share, restored from the saved
/// images where they fit.
fn shard_processors(
    keys: &EngineKeys,
    shards: usize,
    e: &EngineSection,
) -> Result<Vec<HopProcessor>, EngineError> {
    let rate = e.replay_filter_false_positive_rate;
    let mut per_key: Vec<Vec<LiveKey>> = Vec::with_capacity(keys.keys.len());
    for key in &keys.keys {
        let per_shard = per_shard_packets(key.filter_packets, shards);
        let restoring = key.saved.len() == shards;
        if !key.saved.is_empty() && !restoring {
            tracing::warn!(
                rotation_id = key.rotation_id,
                saved = key.saved.len(),
                shards,
                "the saved replay filter is for another shard count; starting with an empty one"
            );
        }
        let mut images = key.saved.iter().cloned();
        let mut live = Vec::with_capacity(shards);
        for index in 0..shards {
            let saved = if restoring { images.next() } else { None };
            let restored = saved.and_then(|image| {
                let filter = ReplayFilter::restore(per_shard, rate, image);
                if filter.is_none() {
                    tracing::warn!(
                        shard = index,
                        rotation_id = key.rotation_id,
                        "the saved replay filter has other sizes than the configuration gives; this shard starts empty"
                    );
                }
                filter
            });
            let filter = match restored {
                Some(filter) => filter,
                None => ReplayFilter::new(per_shard, rate)
                    .map_err(|err| EngineError::ReplayFilter(err.to_string()))?,
            };
            live.push(LiveKey::new(key.rotation_id, key.secret.clone(), filter));
        }
        per_key.push(live);
    }
    let mut processors = Vec::with_capacity(shards);
    for _ in 0..shards {
        let mut mine: Vec<LiveKey> = per_key.iter_mut().map(|live| live.remove(0)).collect();
        let processor = if keys.rotating {
            let at = mine
                .iter()
                .position(|k| k.rotation_id() == keys.primary)
                .ok_or_else(|| EngineError::ReplayFilter("the primary key is missing".into()))?;
            let primary = mine.remove(at);
            let other = mine.pop();
            if other
                .as_ref()
                .is_some_and(|o| (o.rotation_id() ^ primary.rotation_id()) & 1 == 0)
            {
                return Err(EngineError::ReplayFilter(
                    "two live keys of the same rotation parity".into(),
                ));
            }
            HopProcessor::rotating(primary, other, e.hop_processor)
        } else {
            let key = mine
                .pop()
                .ok_or_else(|| EngineError::ReplayFilter("no sphinx key".into()))?;
            HopProcessor::from_key(key, e.hop_processor)
        };
        processors.push(processor);
    }
    Ok(processors)
}

/// Shards to run for a configured `cores` (0: one per available core). More shards than the
/// CPUs this process may use (its affinity and cgroup quota) would only share CPUs and starve
/// one another, so a larger number is capped to that, with a warning.
pub fn shard_count(cores: usize) -> usize {
    let available = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    match cores {
        0 => available,
        n if n > available => {
            tracing::warn!(
                configured = n,
                available,
                "engine.cores (or --cores) asks for more shards than the CPUs this node may use; running {available}"
            );
            available
        }
        n => n,
    }
}

/// Bind `addr` without SO_REUSEPORT, and let go: fails if any socket listens there.
fn exclusive_probe(addr: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    // Connections of an earlier run in TIME_WAIT must not count as a listener.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())
}

fn listener(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

impl Engine {
    /// Bind the mix port once per shard and start the shards.
    pub fn start(settings: EngineSettings) -> Result<Engine, EngineError> {
        let e = &settings.engine;
        let shards = shard_count(e.cores);
        // SO_REUSEPORT would let this node share the port with another listener (another
        // node, or any process of this user) and split the traffic with it: check first with
        // a plain bind, which fails if anything listens there.
        if settings.listen.port() != 0 {
            exclusive_probe(settings.listen).map_err(|cause| EngineError::Bind {
                addr: settings.listen,
                hint: if cause.kind() == std::io::ErrorKind::AddrInUse {
                    format!(
                        "\nAnother process already listens on port {} (another node?). Stop it, or set another port in mixnode.mix_port in config.toml; two listeners on one mix port would split its packets.",
                        settings.listen.port()
                    )
                } else {
                    crate::node::bind_hint(settings.listen, "mixnode.mix_port", &cause)
                },
                cause,
            })?;
        }
        let first = listener(settings.listen).map_err(|cause| EngineError::Bind {
            addr: settings.listen,
            hint: crate::node::bind_hint(settings.listen, "mixnode.mix_port", &cause),
            cause,
        })?;
        let local_addr = first
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(settings.listen);
        let mut sockets = vec![first];
        for _ in 1..shards {
            sockets.push(listener(local_addr).map_err(|cause| EngineError::Bind {
                addr: local_addr,
                hint: String::new(),
                cause,
            })?);
        }

        let inbox_budgets: Vec<Arc<core::InboxBudget>> =
            (0..shards).map(|_| Arc::default()).collect();
        let mut known_senders = Vec::with_capacity(shards);
        let mut known_receivers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = crossbeam_channel::bounded(2);
            known_senders.push(tx);
            known_receivers.push(rx);
        }
        let known_updater = KnownUpdater {
            senders: known_senders,
        };
        let mut known_receivers = known_receivers.into_iter();
        let mut senders = Vec::with_capacity(shards);
        let mut inboxes = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = crossbeam_channel::bounded(e.cross_shard_packets_max);
            senders.push(tx);
            inboxes.push(rx);
        }
        // Doorbells: `bells_out[from][to]` rings shard `to` after `from` put a handoff in its
        // inbox, so that an idle shard does not have to poll its inbox.
        let mut bells_out: Vec<Vec<Option<Doorbell>>> = (0..shards)
            .map(|_| (0..shards).map(|_| None).collect())
            .collect();
        let mut bells_in: Vec<Vec<DoorbellReceiver>> = (0..shards).map(|_| Vec::new()).collect();
        for (from, row) in bells_out.iter_mut().enumerate() {
            for (to, bell) in row.iter_mut().enumerate() {
                if from != to {
                    let (tx, rx) = glommio::channels::shared_channel::new_bounded(1);
                    *bell = Some(tx);
                    bells_in[to].push(rx);
                }
            }
        }
        let mut bells_out = bells_out.into_iter();
        let mut bells_in = bells_in.into_iter();
        let control = Arc::new(Control {
            stop: AtomicBool::new(false),
            deadline: OnceLock::new(),
            stopped_sending: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            draining: AtomicUsize::new(0),
            save_epoch: AtomicU64::new(0),
        });
        // Room for the answers to one request and the final images of every shard: two keys
        // and a completion mark each.
        let (images_tx, filter_images) = crossbeam_channel::bounded(6 * shards);
        let mut processors = shard_processors(&settings.keys, shards, e)?;
        let mut key_senders = Vec::with_capacity(shards);
        let mut key_receivers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = crossbeam_channel::bounded(KEY_UPDATES_QUEUED_MAX);
            key_senders.push(tx);
            key_receivers.push(rx);
        }
        let (purged_tx, purged_rx) = crossbeam_channel::bounded(4 * shards);
        let key_updater = KeyUpdater {
            senders: key_senders,
            purged: purged_rx,
            false_positive_rate: e.replay_filter_false_positive_rate,
        };
        let mut key_receivers = key_receivers.into_iter();
        let stats: Arc<Vec<ShardStats>> =
            Arc::new((0..shards).map(|_| ShardStats::default()).collect());
        let (telemetry_tx, telemetry) =
            crossbeam_channel::bounded(telemetry::REPORTS_QUEUED_PER_SHARD_MAX * shards);
        let cores = if settings.pin {
            placement::cpus_in_order()
        } else {
            Vec::new()
        };

        // Each shard's end of a socket pair the watchdog rings.
        let mut watch_ends = Vec::with_capacity(shards);
        let mut shard_ends = Vec::with_capacity(shards);
        for index in 0..shards {
            let (watch_end, shard_end) =
                std::os::unix::net::UnixStream::pair().map_err(|e| EngineError::Executor {
                    shard: index,
                    detail: format!("cannot make its watchdog socket: {e}"),
                })?;
            watch_ends.push(watch_end);
            shard_ends.push(shard_end);
        }
        let mut shard_ends = shard_ends.into_iter();
        let mut handles = Vec::with_capacity(shards);
        for (index, (socket, inbox)) in sockets.into_iter().zip(inboxes).enumerate() {
            let placement = match cores.get(index) {
                Some(core) if shards <= cores.len() => glommio::Placement::Fixed(core.id),
                _ => glommio::Placement::Unbound,
            };
            let shard = worker::ShardInit {
                index,
                shards,
                listener_fd: socket.into_raw_fd(),
                inbox,
                senders: senders.clone(),
                inbox_budgets: inbox_budgets.clone(),
                known: settings.known.clone(),
                loops: settings.loops.clone(),
                known_updates: known_receivers.next().expect("one per shard"),
                bells_out: bells_out.next().unwrap_or_default(),
                bells_in: bells_in.next().unwrap_or_default(),
                watchdog_fd: shard_ends.next().expect("one per shard").into_raw_fd(),
                processor: processors.remove(0),
                key_updates: key_receivers.next().expect("one per shard"),
                purged_keys: purged_tx.clone(),
                engine: e.clone(),
                control: Arc::clone(&control),
                stats: Arc::clone(&stats),
                telemetry: telemetry_tx.clone(),
                filter_images: images_tx.clone(),
                noise: settings.noise.clone(),
            };
            let spawned = glommio::LocalExecutorBuilder::new(placement)
                .name(&format!("shard-{index}"))
                .io_memory(IO_MEMORY_BYTES)
                .spawn(move || worker::run(shard));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(err) => {
                    // Stop the shards already running before reporting.
                    let started = Engine {
                        handles,
                        watchdog: None,
                        key_updater,
                        known_updater,
                        control,
                        stats,
                        local_addr,
                        telemetry,
                        filter_images,
                    };
                    started.shutdown(Duration::ZERO);
                    return Err(EngineError::Executor {
                        shard: index,
                        detail: err.to_string(),
                    });
                }
            }
        }
        tracing::info!(shards, listen = %local_addr, "packet engine started");
        let watchdog = match watchdog::Watchdog::start(watch_ends, Arc::clone(&stats)) {
            Ok(watchdog) => Some(watchdog),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the shard watchdog: a stalled shard will not be woken or reported");
                None
            }
        };
        Ok(Engine {
            handles,
            watchdog,
            key_updater,
            known_updater,
            control,
            stats,
            telemetry,
            filter_images,
            local_addr,
        })
    }

    /// The address the mix port listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Shards running.
    pub fn shard_count(&self) -> usize {
        self.stats.len()
    }

    /// The published figures of every shard.
    pub fn snapshots(&self) -> Vec<ShardSnapshot> {
        self.stats.iter().map(ShardStats::snapshot).collect()
    }

    /// The shards' statistics, shared with the control thread.
    pub fn stats(&self) -> Arc<Vec<ShardStats>> {
        Arc::clone(&self.stats)
    }

    /// The shards' telemetry reports (histograms, per-next-hop counts), for the one reader
    /// that aggregates them (the control thread).
    pub fn telemetry(&self) -> crossbeam_channel::Receiver<TelemetryReport> {
        self.telemetry.clone()
    }

    /// A handle that asks every shard for a copy of its replay filter; the answers come on
    /// [`Self::filter_images`].
    pub fn save_requester(&self) -> FilterSaveRequester {
        FilterSaveRequester {
            control: Arc::clone(&self.control),
        }
    }

    /// Where shards send the copies of their replay filters: answers to
    /// [`FilterSaveRequester::request`], and the [`FINAL_IMAGE`]s of each shard as it stops.
    pub fn filter_images(&self) -> crossbeam_channel::Receiver<FilterMessage> {
        self.filter_images.clone()
    }

    /// A handle that changes the live Sphinx keys of every shard (the rotation controller's).
    pub fn key_updater(&self) -> KeyUpdater {
        self.key_updater.clone()
    }

    /// A handle that gives the shards new known nodes, from any thread.
    pub fn known_updater(&self) -> KnownUpdater {
        self.known_updater.clone()
    }

    /// Stop accepting, forward what falls due within `drain`, drop the rest as shutdown, and
    /// wait for every shard. The final counts of each shard.
    pub fn shutdown(self, drain: Duration) -> Vec<ShardCounts> {
        let _ = self.control.deadline.set(Instant::now() + drain);
        self.control
            .running
            .store(self.handles.len(), Ordering::Release);
        self.control.stop.store(true, Ordering::Release);
        let mut finals = Vec::with_capacity(self.handles.len());
        for (index, handle) in self.handles.into_iter().enumerate() {
            match handle.join() {
                Ok(counts) => finals.push(counts),
                Err(e) => {
                    tracing::error!(shard = index, error = %e, "shard ended abnormally");
                    finals.push(self.stats[index].snapshot().counts);
                }
            }
        }
        if let Some(mut watchdog) = self.watchdog {
            watchdog.stop();
        }
        let total = finals.iter().fold(PacketCounts::default(), |mut t, c| {
            t.add(&c.packets);
            t
        });
        tracing::info!(
            received = total.received,
            forwarded = total.forwarded,
            dropped = total.dropped_total(),
            looped = total.looped,
            in_flight = total.in_flight(),
            "packet engine stopped"
        );
        finals
    }
}

#[cfg(test)]
mod tests {
    use super::tag_owner;

    #[test]
    fn tag_owner_is_the_tags_first_eight_bytes_little_endian_modulo_the_shards() {
        // Pinned values, computed apart from this code: the bytes 0, 1, ..., 7 read as a
        // little-endian u64 are 0x0706050403020100, which is 1 modulo 3 and 3 modulo 5.
        let tag: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(tag_owner(&tag, 3), 1);
        assert_eq!(tag_owner(&tag, 5), 3);
        assert_eq!(tag_owner(&tag, 1), 0);
        assert_eq!(tag_owner(&[0xff; 32], 2), 1);
    }
}
