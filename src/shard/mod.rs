//! The packet engine's runtime: one glommio executor (a shard) per core.
//!
//! Each shard accepts its share of connections on the mix port (SO_REUSEPORT), reads frames,
//! and derives each packet's shared secret (one scalar multiplication). The replay tag then
//! picks the shard that owns the tag (a pure function), which checks the replay filter and the
//! MAC and unwraps the packet (the second multiplication): so every copy of a packet meets
//! the same filter whatever connection it came on, and no filter is shared between cores. The
//! next-hop address picks the shard that owns that next hop, which holds the packet in its
//! delay wheel and writes it to the next hop's connection when due. Packets cross cores only
//! through bounded crossbeam channels; a full channel is a counted drop. After a handoff the
//! sender rings the receiving shard's doorbell (a one-slot glommio shared channel, which wakes
//! a sleeping executor), so an idle shard sleeps instead of polling its inbox.
//!
//! The policy lives in [`core::ShardCore`], a state machine with no I/O; `worker.rs` is its
//! glommio driver.
//!
//! What it does not do: parse or process bytes itself (see [`crate::framing`],
//! [`crate::sphinx`]), or decide policy (limits come from [`crate::config::EngineSection`]).

pub mod core;
#[cfg(test)]
mod sim;
pub mod stats;
pub mod telemetry;
#[cfg(test)]
mod testkit;
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
    /// Saved replay filters to start from, one per shard (empty: start with empty filters).
    pub replay_images: Vec<FilterImage>,
}

/// A copy of one shard's replay filter, taken for saving.
pub struct ShardFilterImage {
    /// The shard.
    pub shard: usize,
    /// The save request it answers ([`FilterSaveRequester::request`]), or [`FINAL_IMAGE`].
    pub epoch: u64,
    /// The filter.
    pub image: FilterImage,
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
    control: Arc<Control>,
    stats: Arc<Vec<ShardStats>>,
    telemetry: crossbeam_channel::Receiver<TelemetryReport>,
    filter_images: crossbeam_channel::Receiver<ShardFilterImage>,
    local_addr: SocketAddr,
}

/// Shards to run for a configured `cores` (0: one per available core).
pub fn shard_count(cores: usize) -> usize {
    if cores > 0 {
        cores
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
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
    pub fn start(settings: EngineSettings, secret: &StaticSecret) -> Result<Engine, EngineError> {
        let e = &settings.engine;
        let shards = shard_count(e.cores);
        let first = listener(settings.listen).map_err(|cause| EngineError::Bind {
            addr: settings.listen,
            hint: crate::node::bind_hint(settings.listen, &cause),
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
        let per_shard_tags = e.replay_filter_packets_max.div_ceil(shards as u64).max(1);
        let control = Arc::new(Control {
            stop: AtomicBool::new(false),
            deadline: OnceLock::new(),
            stopped_sending: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            save_epoch: AtomicU64::new(0),
        });
        // Room for one answer to a request and the final image of every shard.
        let (images_tx, filter_images) = crossbeam_channel::bounded(2 * shards);
        let restoring = settings.replay_images.len() == shards;
        if !settings.replay_images.is_empty() && !restoring {
            tracing::warn!(
                saved = settings.replay_images.len(),
                shards,
                "the saved replay filters are for another shard count; starting with empty filters"
            );
        }
        let mut images = settings.replay_images.into_iter();
        let stats: Arc<Vec<ShardStats>> =
            Arc::new((0..shards).map(|_| ShardStats::default()).collect());
        let (telemetry_tx, telemetry) =
            crossbeam_channel::bounded(telemetry::REPORTS_QUEUED_PER_SHARD_MAX * shards);
        let cores = if settings.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };

        let mut handles = Vec::with_capacity(shards);
        for (index, (socket, inbox)) in sockets.into_iter().zip(inboxes).enumerate() {
            let saved = if restoring { images.next() } else { None };
            let restored = saved.and_then(|image| {
                let filter =
                    ReplayFilter::restore(per_shard_tags, e.replay_filter_false_positive_rate, image);
                if filter.is_none() {
                    tracing::warn!(
                        shard = index,
                        "the saved replay filter has other sizes than engine.replay_filter_packets_max gives; this shard starts empty"
                    );
                }
                filter
            });
            let filter = match restored {
                Some(filter) => filter,
                None => ReplayFilter::new(per_shard_tags, e.replay_filter_false_positive_rate)
                    .map_err(|err| EngineError::ReplayFilter(err.to_string()))?,
            };
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
                bells_out: bells_out.next().unwrap_or_default(),
                bells_in: bells_in.next().unwrap_or_default(),
                secret: secret.clone(),
                filter,
                engine: e.clone(),
                control: Arc::clone(&control),
                stats: Arc::clone(&stats),
                telemetry: telemetry_tx.clone(),
                filter_images: images_tx.clone(),
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
        Ok(Engine {
            handles,
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
    /// [`Self::request_filter_images`], and one [`FINAL_IMAGE`] from each shard as it stops.
    pub fn filter_images(&self) -> crossbeam_channel::Receiver<ShardFilterImage> {
        self.filter_images.clone()
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
        let total = finals.iter().fold(PacketCounts::default(), |mut t, c| {
            t.add(&c.packets);
            t
        });
        tracing::info!(
            received = total.received,
            forwarded = total.forwarded,
            dropped = total.dropped_total(),
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
