//! Starting and stopping the whole node: the packet engine, the VerLoc listener and the HTTP
//! API, in that order, and the reverse on shutdown.
//!
//! Everything that can fail at start (a port in use, an address this machine does not have)
//! fails here, before the node reports itself started, with a message that says what to do.

pub mod announce;
pub mod limits;
pub mod replay_store;
pub mod summary;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::description::Description;
use crate::config::Config;
use crate::http::{ApiServer, ApiState};
use crate::keys::NodeKeys;
use crate::noise::NoiseIdentity;
use crate::rotation::controller::{self, Controller};
use crate::rotation::store::KeyStore;
use crate::rotation::{Announced, AnnouncedKeys};
use crate::shard::stats::{ShardCounts, ShardSnapshot};
use crate::shard::{Engine, EngineKey, EngineKeys, EngineSettings};
use crate::topology::refresh::{KnownSource, Refresher};
use crate::topology::KnownNodes;
use crate::verloc::{Verloc, VerlocResults, VerlocStats};

/// Options that tests and the benchmark set; operators use the config.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Pin each shard to a core.
    pub pin_shards: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions { pin_shards: true }
    }
}

/// The node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A port could not be bound.
    #[error("cannot bind the {what} on {addr}: {cause}{hint}")]
    Bind {
        /// Which service.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        cause: std::io::Error,
        /// What to do.
        hint: String,
    },
    /// The packet engine could not start.
    #[error(transparent)]
    Engine(#[from] crate::shard::EngineError),
    /// The HTTP API could not start.
    #[error(transparent)]
    Api(#[from] crate::http::ApiError),
    /// VerLoc could not start.
    #[error(transparent)]
    Verloc(#[from] crate::verloc::VerlocError),
    /// The saved replay filter could not be used.
    #[error(transparent)]
    ReplayStore(#[from] replay_store::StoreError),
    /// The Sphinx keys could not be prepared.
    #[error(transparent)]
    Rotation(#[from] crate::rotation::controller::RotationError),
    /// The configured topology could not be read.
    #[error("cannot read the known nodes from {origin}: {detail}. Fix: check topology.source in config.toml (a file path, an http(s):// URL or \"nym-api\"), or clear it to forward anywhere")]
    Topology {
        /// The path or URL.
        origin: String,
        /// What went wrong.
        detail: String,
    },
    /// A bug: the keys prepared have no primary key.
    #[error("internal error: the sphinx keys prepared have no primary key")]
    NoPrimaryKey,
}

/// A started node.
pub struct RunningNode {
    engine: Engine,
    rotation: Controller,
    topology: Option<Refresher>,
    saver: replay_store::Saver,
    verloc: Verloc,
    monitor: Option<crate::monitor::driver::MonitorThread>,
    api: ApiServer,
    drain_timeout: Duration,
    /// Where each service actually listens.
    pub addresses: NodeAddresses,
}

/// Bound addresses (useful when a port of 0 asked the OS to choose).
#[derive(Clone, Copy, Debug)]
pub struct NodeAddresses {
    /// Mix port.
    pub mix: SocketAddr,
    /// VerLoc port.
    pub verloc: SocketAddr,
    /// HTTP API.
    pub http_api: SocketAddr,
}

/// What to tell an operator whose bind of `addr` (config field `field`, such as
/// `mixnode.http_api_port`) failed with `error`.
pub fn bind_hint(addr: SocketAddr, field: &str, error: &std::io::Error) -> String {
    match error.kind() {
            std::io::ErrorKind::AddrNotAvailable => format!(
                "\nThis machine has no interface with address {}. On cloud hosts (AWS, Google, ...) the public IP is not on any interface: bind --host to the local address that `ip addr` shows and pass the public IP as --announce-host, e.g. `nym-mixnode init --id <id> --host 10.126.5.7 --announce-host 36.68.243.18`.",
                addr.ip()
            ),
            std::io::ErrorKind::AddrInUse => format!(
                "\nPort {} is already in use (another node running?). Stop the other process, or set another port in {field} in config.toml.",
                addr.port()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "\nPort {} needs privileges; set a port above 1023 in {field} in config.toml.",
                addr.port()
            ),
            _ => String::new(),
    }
}

fn bind(
    what: &'static str,
    field: &'static str,
    addr: SocketAddr,
) -> Result<TcpListener, StartError> {
    // `cause` is printed in the message; it is not a `source`, so that the CLI's error chain
    // does not print it a second time.
    TcpListener::bind(addr).map_err(|cause| StartError::Bind {
        what,
        addr,
        hint: bind_hint(addr, field, &cause),
        cause,
    })
}

/// The known nodes' source and first set, read before anything starts.
fn load_known(
    config: &Config,
) -> Result<(Option<KnownSource>, Option<Arc<KnownNodes>>), StartError> {
    use crate::config::ForwardTo;
    let source = KnownSource::from_config(config).map_err(|detail| StartError::Topology {
        origin: config.topology.source.clone(),
        detail,
    })?;
    let Some(source) = source else {
        if config.engine.forward_to == ForwardTo::Known {
            tracing::warn!("no topology configured ([topology] source): packets are forwarded to any address. Set topology.source to forward only to known nodes");
        }
        return Ok((None, None));
    };
    let known = source
        .load(config.topology.read_timeout)
        .map_err(|detail| StartError::Topology {
            origin: source.origin(),
            detail,
        })?;
    let forwarding = match config.engine.forward_to {
        ForwardTo::Known => "only to these addresses",
        ForwardTo::Any => "to any address (engine.forward_to = \"any\")",
    };
    tracing::info!(
        origin = %source.origin(),
        nodes = known.nodes(),
        addresses = known.addresses(),
        "topology: known nodes read; forwarding {forwarding}"
    );
    Ok((Some(source), Some(Arc::new(known))))
}

/// The Noise key pair the node uses: none with `engine.noise = "off"`, and none (with a
/// warning naming the fix) for a node made before Noise.
fn noise_identity(config: &Config, keys: &NodeKeys) -> Option<NoiseIdentity> {
    if config.engine.noise == crate::config::NoiseMode::Off {
        tracing::info!(
            "noise: off (engine.noise = \"off\"): no Noise key announced, plain TCP on every link"
        );
        return None;
    }
    match &keys.noise {
        Some(key) => {
            tracing::info!(noise_key = %key.public_base58(), "noise: on with peers that announce a Noise key");
            Some(NoiseIdentity::from_private(key.private.to_bytes()))
        }
        None => {
            tracing::warn!(
                "noise: this node has no Noise key pair, so it announces none and speaks plain TCP only; today's nym-nodes will stop talking to it when plain TCP goes. Fix: stop the node, run `nym-mixnode upgrade --id {}`, start it again",
                config.mixnode.id
            );
            None
        }
    }
}

/// What `/api/v1/` says of the node, from `config`.
fn self_description(
    config: &Config,
    keys: &NodeKeys,
    announced: AnnouncedKeys,
    noise: Option<&NoiseIdentity>,
) -> crate::http::nym_node::SelfDescription {
    let mut me = crate::http::nym_node::SelfDescription::new(keys.identity.clone(), announced);
    me.noise_key = noise.map(|n| n.public);
    let m = &config.mixnode;
    me.ip_addresses = vec![m.announce_address];
    let text = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    me.hostname = text(&config.host.hostname);
    me.location = text(&config.host.location);
    me.accepted_terms = config.host.accepted_operator_terms_and_conditions;
    me.mix_port = m.mix_port;
    me.verloc_port = m.verloc_port;
    me.packet_memory_bytes_max = config.engine.packet_memory_bytes_max;
    me
}

/// Loop arrivals queued between the shards and the monitor thread.
const LOOP_ARRIVALS_QUEUED_MAX: usize = 4096;

/// Start the node's services. A port of 0 in the config lets the OS choose (tests).
pub fn start(
    config: &Config,
    keys: NodeKeys,
    description: Description,
    options: NodeOptions,
) -> Result<RunningNode, StartError> {
    let m = &config.mixnode;
    let started = Instant::now();
    let identity = keys.identity_base58();
    let verloc_socket = bind(
        "VerLoc port",
        "mixnode.verloc_port",
        SocketAddr::new(m.listening_address, m.verloc_port),
    )?;
    let api_addr = SocketAddr::new(m.listening_address, m.http_api_port);
    // Bind first so that an unavailable address gets the same explanation.
    drop(bind("HTTP API port", "mixnode.http_api_port", api_addr)?);
    let e = &config.engine;
    let store = KeyStore::new(replay_store::data_dir(config));
    let start_keys =
        controller::prepare(&config.rotation, &store, &keys.sphinx, SystemTime::now())?;
    let paths = replay_store::FilterPaths {
        fixed: (!start_keys.rotating).then(|| replay_store::path_for(config)),
        store: store.clone(),
    };
    let mut engine_keys = Vec::with_capacity(start_keys.secrets.len());
    for (rotation_id, secret) in &start_keys.secrets {
        let public = x25519_dalek::PublicKey::from(secret).to_bytes();
        let sized = controller::filter_packets(
            e.replay_filter_packets_max,
            start_keys.schedule.as_ref(),
            0.0,
        );
        let (filter_packets, saved) = match replay_store::load(&paths.path(*rotation_id), &public)?
        {
            // A rotating key's filter was sized from the rate when it was made: keep its size
            // unless the config names one.
            Some((header, images))
                if start_keys.rotating && e.replay_filter_packets_max.is_none() =>
            {
                (
                    header.capacity.saturating_mul(u64::from(header.shards)),
                    images,
                )
            }
            Some((_, images)) => (sized, images),
            None => (sized, Vec::new()),
        };
        engine_keys.push(EngineKey {
            rotation_id: *rotation_id,
            secret: secret.clone(),
            filter_packets,
            saved,
        });
    }
    let (known_source, known) = load_known(config)?;
    // The monitor's loops: their destination, and the channel their arrivals come back on.
    let loops = config.monitor.enabled.then(|| {
        let (arrivals, receiver) = crossbeam_channel::bounded(LOOP_ARRIVALS_QUEUED_MAX);
        (
            crate::shard::LoopSink {
                destination: crate::monitor::driver::random_destination(),
                arrivals,
            },
            receiver,
        )
    });
    let record = Arc::new(std::sync::Mutex::new(crate::monitor::Monitor::new(
        crate::monitor::MonitorLimits {
            late_after: config.monitor.late_after,
            lost_after: config.monitor.lost_after,
        },
    )));
    let noise = noise_identity(config, &keys);
    let engine = Engine::start(EngineSettings {
        listen: SocketAddr::new(m.listening_address, m.mix_port),
        engine: config.engine.clone(),
        pin: options.pin_shards,
        keys: EngineKeys {
            rotating: start_keys.rotating,
            primary: start_keys.plan.primary,
            keys: engine_keys,
        },
        known: known.clone(),
        loops: loops.as_ref().map(|(sink, _)| sink.clone()),
        noise: noise.clone(),
    })?;
    let topology = match (known_source, known) {
        (Some(source), Some(known)) => {
            let updater = engine.known_updater();
            Some(Refresher::start(
                source,
                config.topology.refresh_interval,
                config.topology.read_timeout,
                known,
                move |known| {
                    if !updater.update(Some(known)) {
                        tracing::warn!("topology: a shard did not take the new known nodes");
                    }
                },
            ))
        }
        _ => None,
    };
    let saver = replay_store::Saver::start(
        paths,
        engine.shard_count(),
        e.replay_filter_save_interval,
        engine.save_requester(),
        engine.filter_images(),
    );
    // With nym-api's schedule, tell nym-api when the node starts and when its keys change.
    let announcer = match (&config.rotation.mode, &config.rotation.nym_api) {
        (crate::rotation::RotationMode::Network, Some(base)) => Some(announce::Announcer::new(
            base.clone(),
            keys.identity.clone(),
        )),
        _ => None,
    };
    let announced = AnnouncedKeys::new(
        Announced::from_plan(&start_keys.plan, &start_keys.secrets, start_keys.rotating)
            .ok_or(StartError::NoPrimaryKey)?,
    );
    let rotation = Controller::start(
        config.rotation.clone(),
        e.replay_filter_packets_max,
        store,
        &start_keys,
        engine.key_updater(),
        engine.stats(),
        controller::Announcing {
            keys: announced.clone(),
            on_change: announcer
                .clone()
                .map(|a| Box::new(move || a.announce()) as Box<dyn FnMut() + Send>),
        },
    );
    // VerLoc measures `verloc.topology`, or else the node's topology (a file, a URL or
    // nym-api's node list).
    let mut verloc_settings = config.verloc.clone();
    if verloc_settings.topology.trim().is_empty() {
        verloc_settings.topology = config.topology.source.trim().to_string();
    }
    let verloc = Verloc::start(
        verloc_socket,
        keys.identity.clone(),
        &verloc_settings,
        config.rotation.nym_api.as_deref(),
    )?;
    let api = ApiServer::start(
        api_addr,
        ApiState::new(
            started,
            identity,
            description,
            engine.stats(),
            config.http.clone(),
            verloc.results(),
            self_description(config, &keys, announced.clone(), noise.as_ref()),
        )
        .with_verloc_stats(verloc.stats_reader())
        .with_monitor(loops.is_some().then(|| Arc::clone(&record))),
        engine.telemetry(),
    )?;
    let addresses = NodeAddresses {
        mix: engine.local_addr(),
        verloc: verloc.local_addr(),
        http_api: api.local_addr(),
    };
    tracing::info!(mix = %addresses.mix, verloc = %addresses.verloc, http_api = %addresses.http_api, shards = engine.shard_count(), "node started");
    if let Some(announcer) = &announcer {
        // Now that the API answers what nym-api will ask.
        announcer.announce();
    }
    let monitor = loops.map(|(sink, receiver)| {
        crate::monitor::driver::MonitorThread::start(crate::monitor::driver::MonitorContext {
            settings: config.monitor.clone(),
            own_address: SocketAddr::new(m.announce_address, addresses.mix.port()),
            own_identity: keys.identity_public().to_bytes(),
            keys: announced.clone(),
            destination: sink.destination,
            arrivals: receiver,
            topology: KnownSource::from_config(config).ok().flatten(),
            topology_interval: config.topology.refresh_interval,
            record,
            noise: noise.clone(),
        })
    });
    Ok(RunningNode {
        engine,
        rotation,
        topology,
        saver,
        verloc,
        monitor,
        api,
        drain_timeout: config.engine.drain_timeout,
        addresses,
    })
}

impl RunningNode {
    /// The per-shard figures of the packet engine.
    pub fn snapshots(&self) -> Vec<ShardSnapshot> {
        self.engine.snapshots()
    }

    /// Time in the node beyond each packet's requested delay (ns), from the shards' latest
    /// reports (about once a second), cumulative since start.
    pub fn added_latency(&self) -> hdrhistogram::Histogram<u64> {
        self.api.added_latency()
    }

    /// The latest VerLoc results. The HTTP API's `GET /verloc` answers
    /// `node.verloc().to_json().to_string()` as `application/json` (Nym's shape; see
    /// [`crate::verloc::results`]).
    pub fn verloc(&self) -> Arc<VerlocResults> {
        self.verloc.results()
    }

    /// The VerLoc listener's and measurer's counters.
    pub fn verloc_stats(&self) -> VerlocStats {
        self.verloc.stats()
    }

    /// Stop every service: stop VerLoc, stop accepting packets, drain for the configured time,
    /// and wait. The final counts of each shard.
    pub fn shutdown(mut self) -> Vec<ShardCounts> {
        if let Some(monitor) = self.monitor.as_mut() {
            monitor.stop();
        }
        self.verloc.stop();
        self.rotation.stop();
        if let Some(topology) = self.topology.as_mut() {
            topology.stop();
        }
        self.saver.stop();
        let finals = self.engine.shutdown(self.drain_timeout);
        self.saver.save_final();
        self.api.stop();
        tracing::info!("node stopped");
        finals
    }
}

/// SIGINT and SIGTERM, caught from the moment this is made: make it before the node starts,
/// so that a signal that comes while it starts stops it cleanly instead of killing it.
pub struct ShutdownSignals(signal_hook::iterator::Signals);

impl ShutdownSignals {
    /// Catch SIGINT and SIGTERM from now on.
    pub fn install() -> std::io::Result<ShutdownSignals> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        Ok(ShutdownSignals(signal_hook::iterator::Signals::new([
            SIGINT, SIGTERM,
        ])?))
    }

    /// Block until SIGINT or SIGTERM (or one caught already), calling `tick` every
    /// `interval` meanwhile (the summary line); the signal's name.
    pub fn wait_every(&mut self, interval: Duration, mut tick: impl FnMut()) -> &'static str {
        use signal_hook::consts::{SIGINT, SIGTERM};
        // A zero interval would spin; one second is the shortest that makes sense for a log
        // line.
        let interval = interval.max(Duration::from_secs(1));
        let mut next_tick = Instant::now() + interval;
        loop {
            if let Some(signal) = self.0.pending().next() {
                return match signal {
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    _ => "signal",
                };
            }
            let now = Instant::now();
            if now >= next_tick {
                tick();
                next_tick += interval;
                if next_tick <= now {
                    next_tick = now + interval;
                }
            }
            // Signals are checked this often; a stop request waits at most this long.
            std::thread::sleep(SIGNAL_POLL.min(next_tick.saturating_duration_since(now)));
        }
    }
}

/// How often [`ShutdownSignals::wait_every`] looks for a pending signal.
const SIGNAL_POLL: Duration = Duration::from_millis(100);
