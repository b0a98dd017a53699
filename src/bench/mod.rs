//! `bench-mix`: the whole-node benchmark. Starts a node with N shards (the same engine as
//! `nym-mixnode run`), a load generator and a sink on loopback, and measures forwarded
//! packets/s against the Sphinx crate's own single-thread `process()` rate measured in the
//! same run, added latency, drops and memory.
//!
//! The generator and sink are cheap by construction: packets are built (and their forwarded
//! fingerprints learnt) before the timed part, the generator only writes bytes, and the sink
//! only looks fingerprints up. Each packet is sent once: the node drops replays.

pub mod cpu;
pub mod held;
pub mod prepare;
pub mod report;
pub mod sink;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::accounting::DropReason;
use crate::config::description::Description;
use crate::config::{Config, InitSettings, NodePaths};
use crate::framing::SizeTag;
use crate::keys::NodeKeys;
use crate::node::{self, NodeOptions};
use crate::sphinx::HopProcessorKind;
use prepare::Prepared;
use sink::SinkShared;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Shard counts to run, one run each, in order.
    pub cores: Vec<usize>,
    /// Length of each run.
    pub duration: Duration,
    /// Open-loop rate (packets/s); None saturates.
    pub rate: Option<f64>,
    /// Delay each packet asks of the node.
    pub delay: Duration,
    /// Packet size.
    pub size: SizeTag,
    /// Hop processors to run each shard count with, in order (`engine.hop_processor`).
    pub hop_processors: Vec<HopProcessorKind>,
    /// Live Sphinx keys to run each shard count with, in order: 1 (one static key) or 2 (two
    /// rotating keys, the packets for the one that is not primary).
    pub keys: Vec<u8>,
    /// With two keys, send frames without a rotation byte (byte 0), so the node tries its
    /// primary key first: the worst case. Otherwise the byte names the key.
    pub unnamed_key: bool,
    /// Links to run each shard count with, in order: false (plain TCP) and/or true (Noise
    /// XKpsk3 from the generator to the node and from the node to the sink).
    pub noise: Vec<bool>,
    /// Show progress on the terminal.
    pub progress: bool,
}

/// Percentiles of added latency, µs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Packets measured.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
    /// (percentile, µs) points for plotting.
    pub curve: Vec<(f64, u64)>,
}

/// CPU use during the measured window, in cores (1.0 = one core busy).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuUse {
    /// The node's shards.
    pub node: f64,
    /// The load generator.
    pub generator: f64,
    /// The sink.
    pub receiver: f64,
}

/// The figures of one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// Shards.
    pub cores: usize,
    /// The node's `engine.hop_processor` in this run.
    pub hop_processor: HopProcessorKind,
    /// Live Sphinx keys in this run (2: packets for the one that is not primary).
    pub keys: u8,
    /// The rotation byte the frames carried (0 unknown, 1 odd, 2 even).
    pub rotation_byte: u8,
    /// Whether the links were Noise (generator to node, node to sink).
    pub noise: bool,
    /// Noise handshakes the node finished in this run, as responder and as initiator.
    pub noise_handshakes: [u64; 2],
    /// Noise links that failed in this run: at the node (both roles) and at the sink.
    pub noise_failures: u64,
    /// Cross-shard handoffs per forwarded packet in the window, from the node's counters.
    pub handoffs_per_packet: f64,
    /// Doorbells rung per forwarded packet in the window, from the node's counters.
    pub doorbells_per_packet: f64,
    /// Handoff batches (channel messages) per forwarded packet in the window.
    pub batches_per_packet: f64,
    /// System calls the shards' threads entered per forwarded packet in the window, from
    /// the kernel's per-thread counts (None where the node may not count them).
    pub syscalls_per_packet: Option<f64>,
    /// Measured window, s.
    pub window_s: f64,
    /// Open-loop rate asked for, if any.
    pub rate_asked: Option<f64>,
    /// Packets forwarded per second (arrivals at the sink in the window).
    pub forwarded_per_s: f64,
    /// Per shard, from the node's own counters in the window.
    pub forwarded_per_s_by_shard: Vec<f64>,
    /// Single-thread `process()` rate of the Sphinx crate in this process: the mean of the
    /// rates measured right before and right after the run.
    pub ceiling_per_s: f64,
    /// The two measurements behind `ceiling_per_s`.
    pub ceiling_before_after_per_s: (f64, f64),
    /// forwarded/s / (ceiling x cores).
    pub efficiency: f64,
    /// The node's own hop step on one thread (no I/O) with this run's hop processor.
    pub hop_step_per_s: f64,
    /// CPU use in the window.
    pub cpu: CpuUse,
    /// Added latency (time in node beyond the requested delay), measured end to end: from the
    /// generator's write to the sink's read, so it includes both loopback hops.
    pub latency: Latency,
    /// The same, as the node measures it itself: from reading the frame to writing it to the
    /// next hop (packets written in about the measured window).
    pub latency_in_node: Latency,
    /// Drops by reason over the whole run (shutdown included).
    pub drops: BTreeMap<String, u64>,
    /// Packets sent / recognised at the sink / unrecognised or duplicated.
    pub sent: u64,
    /// Packets recognised at the sink.
    pub arrived: u64,
    /// Frames the sink did not recognise, or saw twice (should be 0).
    pub unknown: u64,
    /// Most packets held (wheel + queues) at once.
    pub held_peak: u64,
    /// Resident memory of the idle node process before load, bytes.
    pub rss_idle_bytes: u64,
    /// Peak resident memory during the run, bytes.
    pub rss_peak_bytes: u64,
    /// (peak - idle) / held_peak, bytes; when packets were held.
    pub bytes_per_held_packet: Option<f64>,
}

/// Everything one invocation measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// Packet size.
    pub size: String,
    /// Requested delay, ms.
    pub delay_ms: u64,
    /// Runs, one per core count.
    pub runs: Vec<RunResult>,
    /// forwarded/s of the largest core count over the smallest, when more than one ran
    /// (with the first hop processor listed).
    pub scaling: Option<f64>,
    /// Fast over crate hop processor, per shard count, when both ran.
    pub hop_processor_ratios: Vec<HopProcessorRatio>,
    /// Two live keys over one, per shard count and hop processor, when both ran.
    pub key_ratios: Vec<KeyRatio>,
    /// Noise over plain TCP, per shard count, hop processor and key count, when both ran.
    pub noise_ratios: Vec<NoiseRatio>,
    /// Bytes per held packet for every Sphinx packet size ([`held::measure`]); empty when
    /// not measured.
    pub held_bytes: Vec<held::HeldBytes>,
}

/// Two live keys' figures over one key's, for one shard count and hop processor.
#[derive(Clone, Debug, Serialize)]
pub struct KeyRatio {
    /// Shards.
    pub cores: usize,
    /// The hop processor.
    pub hop_processor: HopProcessorKind,
    /// The rotation byte of the two-key run's frames.
    pub rotation_byte: u8,
    /// forwarded/s with two keys over forwarded/s with one.
    pub forwarded: f64,
    /// forwarded/s per core busy in the node (CPU time), two keys over one.
    pub forwarded_per_node_core: f64,
}

/// Noise links' figures over plain TCP's, for one shard count and hop processor.
#[derive(Clone, Debug, Serialize)]
pub struct NoiseRatio {
    /// Shards.
    pub cores: usize,
    /// The hop processor.
    pub hop_processor: HopProcessorKind,
    /// Live keys.
    pub keys: u8,
    /// forwarded/s over Noise over forwarded/s over plain TCP.
    pub forwarded: f64,
    /// forwarded/s per core busy in the node (CPU time), Noise over plain.
    pub forwarded_per_node_core: f64,
}

/// The fast hop processor's figures over the crate's, for one shard count, from one
/// invocation.
#[derive(Clone, Debug, Serialize)]
pub struct HopProcessorRatio {
    /// Shards.
    pub cores: usize,
    /// forwarded/s with "fast" over forwarded/s with "crate".
    pub forwarded: f64,
    /// forwarded/s per core busy in the node (CPU time), fast over crate.
    pub forwarded_per_node_core: f64,
    /// The one-thread hop step, fast over crate.
    pub hop_step: f64,
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Setup failed.
    #[error("{0}")]
    Setup(String),
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> BenchError + '_ {
    move |e| BenchError::Setup(format!("{what}: {e}"))
}

/// Run the benchmark.
pub fn run(options: &BenchOptions) -> Result<BenchResult, BenchError> {
    let keys = NodeKeys::generate().map_err(setup("key generation"))?;
    let node_secret = keys.sphinx.clone();
    let max_cores = options.cores.iter().copied().max().unwrap_or(1);
    let (listeners, hops) =
        sink::Sink::bind(8 * max_cores.max(1)).map_err(setup("binding the sink"))?;

    // Packets for the node's key; the node's own address is not inside any packet.
    let placeholder: SocketAddr = "127.0.0.1:1".parse().map_err(setup("address"))?;
    let probe = prepare::prepare(
        256,
        placeholder,
        &node_secret,
        &hops,
        options.size,
        options.delay,
        false,
    )
    .map_err(setup("building packets"))?;
    let header_len = prepare::bench_header(options.size).encoded_len();
    let ceiling = prepare::ceiling(
        &probe.frames,
        header_len,
        &node_secret,
        Duration::from_secs(1),
    );
    // The fast hop processor can outrun the crate's ceiling; give the generator enough.
    let headroom = if options.hop_processors.contains(&HopProcessorKind::Fast) {
        3.0
    } else {
        1.6
    };
    let count = match options.rate {
        Some(rate) => (rate * options.duration.as_secs_f64() * 1.05) as usize + 64,
        None => {
            (ceiling * max_cores as f64 * headroom * (options.duration.as_secs_f64() + 1.0))
                as usize
        }
    }
    .max(1000);
    if options.progress {
        eprintln!(
            "Sphinx process() ceiling: {ceiling:.0} packets/s on one thread; building {count} packets..."
        );
    }
    let prepared = prepare::prepare(
        count,
        placeholder,
        &node_secret,
        &hops,
        options.size,
        options.delay,
        options.progress,
    )
    .map_err(setup("building packets"))?;
    let Prepared {
        mut frames,
        fingerprints,
        delay,
    } = prepared;
    // The two-key runs: the primary is a fresh key of rotation `primary`, the frames' key is
    // the pre-announced one of rotation `primary + 1` (a local schedule of one-epoch
    // rotations always has both live).
    let two_keys = TwoKeys::new(options.unnamed_key);
    let sink = sink::Sink::start(listeners, hops, fingerprints, frames.len(), delay)
        .map_err(setup("starting the sink"))?;
    // The generator's Noise key pair (the sink has its own).
    let generator_noise = crate::noise::NoiseIdentity::from_private(
        crate::keys::NoiseKey::generate()
            .map_err(setup("key generation"))?
            .private
            .to_bytes(),
    );

    let mut runs = Vec::new();
    for &cores in &options.cores {
        for &hop_processor in &options.hop_processors {
            for (&key_count, &noise) in options
                .keys
                .iter()
                .flat_map(|k| options.noise.iter().map(move |n| (k, n)))
            {
                let rotation_byte = if key_count == 2 {
                    two_keys.rotation_byte
                } else {
                    0
                };
                for frame in frames.iter_mut() {
                    frame[crate::framing::HEADER_LEN_V8 - 1] = rotation_byte;
                }
                if options.progress {
                    eprintln!(
                    "running {cores} shard(s), hop processor {hop_processor}, {key_count} key(s), rotation byte {rotation_byte}, {} links, for {:?}...",
                    if noise { "Noise" } else { "plain TCP" },
                    options.duration
                );
                }
                // The ceiling right before and right after this run; the machine's speed drifts,
                // so the run is compared with the mean of both.
                let burst = Duration::from_millis(700);
                let before = prepare::ceiling(&frames, header_len, &node_secret, burst);
                let hop_step =
                    prepare::hop_step_rate(&frames, header_len, &node_secret, hop_processor, burst);
                let spec = RunSpec {
                    cores,
                    hop_processor,
                    two_keys: (key_count == 2).then_some(&two_keys),
                    noise: noise.then_some(&generator_noise),
                };
                let mut run = run_once(options, spec, &keys, &frames, &sink, before)?;
                run.rotation_byte = rotation_byte;
                let after = prepare::ceiling(&frames, header_len, &node_secret, burst);
                run.ceiling_per_s = (before + after) / 2.0;
                run.ceiling_before_after_per_s = (before, after);
                run.efficiency = run.forwarded_per_s / (run.ceiling_per_s * cores as f64);
                run.hop_step_per_s = hop_step;
                runs.push(run);
            }
        }
    }
    let first_kind = options.hop_processors.first().copied();
    let first_keys = options.keys.first().copied().unwrap_or(1);
    let first_kind_runs: Vec<&RunResult> = runs
        .iter()
        .filter(|run| Some(run.hop_processor) == first_kind && run.keys == first_keys)
        .collect();
    let scaling = match (first_kind_runs.first(), first_kind_runs.last()) {
        (Some(a), Some(b)) if first_kind_runs.len() > 1 && a.forwarded_per_s > 0.0 => {
            Some(b.forwarded_per_s / a.forwarded_per_s)
        }
        _ => None,
    };
    let hop_processor_ratios = hop_processor_ratios(&runs);
    let key_ratios = key_ratios(&runs);
    let noise_ratios = noise_ratios(&runs);
    Ok(BenchResult {
        key_ratios,
        noise_ratios,
        size: format!("{:?}", options.size),
        delay_ms: options.delay.as_millis() as u64,
        runs,
        scaling,
        hop_processor_ratios,
        held_bytes: Vec::new(),
    })
}

/// The keys of the two-key runs.
struct TwoKeys {
    primary: u32,
    rotation_byte: u8,
    epoch: Duration,
}

impl TwoKeys {
    fn new(unnamed: bool) -> TwoKeys {
        let epoch = Duration::from_secs(30 * 86_400);
        let schedule = crate::rotation::Schedule::local(epoch, 1, std::time::SystemTime::now());
        let primary = schedule.plan(schedule.current_epoch).primary;
        let named = if (primary + 1) % 2 == 1 {
            crate::framing::KeyRotation::Odd
        } else {
            crate::framing::KeyRotation::Even
        };
        TwoKeys {
            primary,
            rotation_byte: if unnamed { 0 } else { named as u8 },
            epoch,
        }
    }

    /// Set `config` to the one-epoch local schedule and write the two keys where the node
    /// will load them: a fresh primary, and `frames_key` as the pre-announced one.
    fn install(
        &self,
        config: &mut Config,
        frames_key: &x25519_dalek::StaticSecret,
    ) -> Result<(), BenchError> {
        config.rotation.mode = crate::rotation::RotationMode::Local;
        config.rotation.epoch = self.epoch;
        config.rotation.validity_epochs = 1;
        let store =
            crate::rotation::store::KeyStore::new(crate::node::replay_store::data_dir(config));
        store
            .load_or_generate(self.primary)
            .map_err(setup("writing the primary key"))?;
        store
            .store(self.primary + 1, frames_key)
            .map_err(setup("writing the second key"))?;
        Ok(())
    }
}

/// Two keys over one for every shard count and hop processor that ran with both.
fn noise_ratios(runs: &[RunResult]) -> Vec<NoiseRatio> {
    let mut ratios = Vec::new();
    for noise in runs.iter().filter(|run| run.noise) {
        let Some(plain) = runs.iter().find(|run| {
            !run.noise
                && run.cores == noise.cores
                && run.hop_processor == noise.hop_processor
                && run.keys == noise.keys
        }) else {
            continue;
        };
        let per_core = |run: &RunResult| run.forwarded_per_s / run.cpu.node.max(1e-9);
        ratios.push(NoiseRatio {
            cores: noise.cores,
            hop_processor: noise.hop_processor,
            keys: noise.keys,
            forwarded: noise.forwarded_per_s / plain.forwarded_per_s.max(1e-9),
            forwarded_per_node_core: per_core(noise) / per_core(plain).max(1e-9),
        });
    }
    ratios
}

fn key_ratios(runs: &[RunResult]) -> Vec<KeyRatio> {
    let mut ratios = Vec::new();
    for two in runs.iter().filter(|run| run.keys == 2) {
        let Some(one) = runs.iter().find(|run| {
            run.keys == 1 && run.cores == two.cores && run.hop_processor == two.hop_processor
        }) else {
            continue;
        };
        let per_core = |run: &RunResult| run.forwarded_per_s / run.cpu.node.max(1e-9);
        ratios.push(KeyRatio {
            cores: two.cores,
            hop_processor: two.hop_processor,
            rotation_byte: two.rotation_byte,
            forwarded: two.forwarded_per_s / one.forwarded_per_s.max(1e-9),
            forwarded_per_node_core: per_core(two) / per_core(one).max(1e-9),
        });
    }
    ratios
}

/// Fast over crate for every shard count that ran with both (the first run of each kind).
fn hop_processor_ratios(runs: &[RunResult]) -> Vec<HopProcessorRatio> {
    let mut ratios = Vec::new();
    let mut shard_counts: Vec<usize> = runs.iter().map(|run| run.cores).collect();
    shard_counts.dedup();
    for cores in shard_counts {
        let find = |kind| {
            runs.iter()
                .find(|run| run.cores == cores && run.hop_processor == kind && run.keys == 1)
        };
        let (Some(fast), Some(reference)) =
            (find(HopProcessorKind::Fast), find(HopProcessorKind::Crate))
        else {
            continue;
        };
        let per_core = |run: &RunResult| run.forwarded_per_s / run.cpu.node.max(1e-9);
        ratios.push(HopProcessorRatio {
            cores,
            forwarded: fast.forwarded_per_s / reference.forwarded_per_s.max(1e-9),
            forwarded_per_node_core: per_core(fast) / per_core(reference).max(1e-9),
            hop_step: fast.hop_step_per_s / reference.hop_step_per_s.max(1e-9),
        });
    }
    ratios
}

fn node_config(
    cores: usize,
    held_max: usize,
    packets: usize,
    delay: Duration,
    home: &std::path::Path,
) -> Config {
    let settings = InitSettings {
        id: "bench".into(),
        host: "127.0.0.1"
            .parse()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        announce_host: None,
        mix_port: 0,
        verloc_port: 0,
        http_api_port: 0,
    };
    let mut config = Config::new(&settings, &NodePaths::new(home, "bench"));
    config.engine.cores = cores;
    config.engine.held_packets_max = held_max.max(config.engine.held_packets_max);
    config.engine.replay_filter_packets_max = Some((packets as u64).max(100_000));
    config.engine.drain_timeout = Duration::from_millis(200);
    config.engine.next_hop_queue_packets_max = 20_000;
    config.engine.delay_max = config.engine.delay_max.max(delay + Duration::from_secs(1));
    // The node's own loops would be packets the generator did not send.
    config.monitor.enabled = false;
    config
}

/// What one run varies: shards, hop processor, the two-key setup if any, and the
/// generator's Noise key pair when the links are Noise.
struct RunSpec<'a> {
    cores: usize,
    hop_processor: HopProcessorKind,
    two_keys: Option<&'a TwoKeys>,
    noise: Option<&'a crate::noise::NoiseIdentity>,
}

/// The run's topology: the generator (127.0.0.1) and every sink address, with their Noise
/// keys when the links are Noise, without in a plain run (the same known-node checks either
/// way, so that the runs differ only in Noise).
fn write_bench_topology(
    path: &std::path::Path,
    sink: &sink::Sink,
    generator_noise: Option<&crate::noise::NoiseIdentity>,
) -> Result<(), BenchError> {
    use crate::topology::{TopologyEntry, TopologyFile};
    let entry = |i: usize, port: u16, noise: Option<[u8; 32]>| {
        let identity =
            ed25519_dalek::SigningKey::from_bytes(&[(i % 250) as u8 + 1; 32]).verifying_key();
        TopologyEntry {
            identity_key: bs58::encode(identity.as_bytes()).into_string(),
            sphinx_key: bs58::encode([7u8; 32]).into_string(),
            host: "127.0.0.1".to_string(),
            mix_port: port,
            verloc_port: 1790,
            noise_key: noise.map(|k| bs58::encode(k).into_string()),
            ..Default::default()
        }
    };
    let sink_noise = generator_noise.map(|_| sink.shared.noise.public);
    let mut nodes = vec![entry(0, 1, generator_noise.map(|n| n.public))];
    for (i, (address, _)) in sink.hops.iter().enumerate() {
        nodes.push(entry(i + 1, address.port(), sink_noise));
    }
    std::fs::write(path, TopologyFile { nodes }.to_json_pretty())
        .map_err(setup("writing the topology"))
}

fn run_once(
    options: &BenchOptions,
    spec: RunSpec<'_>,
    keys: &NodeKeys,
    frames: &[Vec<u8>],
    sink: &sink::Sink,
    ceiling: f64,
) -> Result<RunResult, BenchError> {
    let RunSpec {
        cores,
        hop_processor,
        two_keys,
        noise,
    } = spec;
    let shared = &sink.shared;
    shared.reset();
    shared.noise_on.store(noise.is_some(), Ordering::Relaxed);
    let home = tempfile_dir()?;
    let expected_held =
        options.rate.unwrap_or(ceiling * cores as f64) * options.delay.as_secs_f64();
    let mut config = node_config(
        cores,
        (expected_held * 1.5) as usize + 10_000,
        frames.len(),
        options.delay,
        &home.0,
    );
    config.engine.hop_processor = hop_processor;
    let topology = home.0.join("topology.json");
    write_bench_topology(&topology, sink, noise)?;
    config.topology.source = topology.display().to_string();
    // The sink's addresses stay the same all run long: one read.
    config.topology.refresh_interval = Duration::from_secs(3600);
    if let Some(two) = two_keys {
        two.install(&mut config, &keys.sphinx)?;
    }
    let node_keys = NodeKeys {
        identity: keys.identity.clone(),
        sphinx: keys.sphinx.clone(),
        noise: keys.noise.clone(),
    };
    let running = node::start(
        &config,
        node_keys,
        Description::default(),
        NodeOptions { pin_shards: true },
    )
    .map_err(setup("starting the node"))?;
    let mix = running.addresses.mix;
    std::thread::sleep(Duration::from_millis(200));
    let rss_idle = cpu::rss_bytes();

    // Generator threads: pinned to the cores the shards leave free (or the last core).
    let connections = 8 * cores;
    let generators = 2usize;
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let sent_total = Arc::new(AtomicUsize::new(0));
    let t0 = shared.now_ns();
    let warmup = Duration::from_secs_f64((options.duration.as_secs_f64() / 5.0).min(1.0));
    shared
        .record_from_ns
        .store(t0 + warmup.as_nanos() as u64, Ordering::Relaxed);
    // The shards take the first `cores` of this order; the generator and sink the next.
    let core_ids = crate::shard::placement::cpus_in_order();
    let free_core = core_ids
        .get(cores.min(core_ids.len().saturating_sub(1)))
        .copied();
    // The sink keeps off the shards' cores when one is left free; otherwise it runs anywhere
    // rather than all on one shard's core.
    shared.pin_to(free_core.filter(|_| cores < core_ids.len()).map(|c| c.id));
    let node_noise = keys.noise.as_ref().map(|k| k.public());
    let mut streams: Vec<Vec<Link>> = Vec::new();
    for _ in 0..generators {
        let mut group = Vec::new();
        for _ in 0..connections / generators {
            let mut s = TcpStream::connect(mix).map_err(setup("connecting to the node"))?;
            let _ = s.set_nodelay(true);
            let transport = match (noise, node_noise) {
                (Some(me), Some(node)) => {
                    let initiator = crate::noise::link::Handshake::initiator(&me.private, &node);
                    Some(
                        crate::noise::blocking::handshake(&mut s, initiator)
                            .map_err(setup("the Noise handshake with the node"))?
                            .0,
                    )
                }
                _ => None,
            };
            group.push(Link {
                stream: s,
                noise: transport,
            });
        }
        streams.push(group);
    }
    let measured = std::thread::scope(|scope| {
        for (g, group) in streams.into_iter().enumerate() {
            let (stop, next, sent_total, shared) = (&stop, &next, &sent_total, &**shared);
            let (rate, duration) = (options.rate, options.duration);
            let spawned = std::thread::Builder::new()
                .name(format!("gen-{g}"))
                .spawn_scoped(scope, move || {
                    if let Some(core) = free_core {
                        core_affinity::set_for_current(core);
                    }
                    generate(
                        frames, group, rate, duration, t0, stop, next, sent_total, shared,
                    )
                });
            if spawned.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
        }
        measure(options, &running, shared, warmup, rss_idle, &stop)
    });
    let Measured {
        window_start: (w_time, w_arrived, w_forwarded, w_cpu, w_in_node),
        end_time,
        end_arrived,
        end_snaps,
        end_cpu,
        mut rss_peak,
        mut held_peak,
        window_snaps: w_snaps,
    } = measured?;
    rss_peak = rss_peak.max(cpu::rss_bytes());
    let window_s = end_time.duration_since(w_time).as_secs_f64();

    // Let what is in flight arrive, then stop the node.
    let settle = Instant::now();
    while settle.elapsed() < options.delay + Duration::from_secs(3) {
        let snaps = running.snapshots();
        let total = crate::shard::stats::total(&snaps);
        if total.in_flight() <= 0 {
            break;
        }
        held_peak = held_peak.max(snaps.iter().map(|s| s.held + s.queued).sum());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The shards report their histograms about once a second: wait for a report that covers
    // the end of the run.
    std::thread::sleep(Duration::from_millis(1250));
    let latency_in_node = {
        let mut h = running.added_latency();
        // Both come from the same histogram configuration: subtracting an earlier state of a
        // cumulative histogram cannot fail.
        let _ = h.subtract(&w_in_node);
        latency_of(&h, 1000)
    };
    let (noise_handshakes, noise_failures) = {
        let counts = running
            .snapshots()
            .iter()
            .fold(crate::noise::NoiseCounts::default(), |sum, s| {
                sum.plus(&s.noise)
            });
        (
            counts.handshakes,
            counts.failures.iter().flatten().sum::<u64>()
                + shared.noise_failures.load(Ordering::Relaxed),
        )
    };
    let finals = running.shutdown();
    let mut drops = BTreeMap::new();
    for reason in DropReason::ALL {
        let n: u64 = finals
            .iter()
            .map(|f| f.packets.dropped[reason as usize])
            .sum();
        if n > 0 {
            drops.insert(reason.label().to_string(), n);
        }
    }

    let forwarded_per_s = (end_arrived - w_arrived) as f64 / window_s;
    let in_window = |f: fn(&crate::shard::stats::ShardSnapshot) -> u64| {
        let end: u64 = end_snaps.iter().map(f).sum();
        let start: u64 = w_snaps.iter().map(f).sum();
        end.saturating_sub(start)
    };
    let forwarded_in_window = in_window(|s| s.counts.packets.forwarded).max(1) as f64;
    let handoffs_per_packet = in_window(|s| s.counts.handed_off) as f64 / forwarded_in_window;
    let doorbells_per_packet = in_window(|s| s.doorbells_rung) as f64 / forwarded_in_window;
    let batches_per_packet = in_window(|s| s.handoff_batches) as f64 / forwarded_in_window;
    let counted = |snaps: &[crate::shard::stats::ShardSnapshot]| {
        snaps.iter().map(|s| s.syscalls).sum::<Option<u64>>()
    };
    let syscalls_per_packet = match (counted(&w_snaps), counted(&end_snaps)) {
        (Some(start), Some(end)) => Some(end.saturating_sub(start) as f64 / forwarded_in_window),
        _ => None,
    };
    let forwarded_per_s_by_shard = end_snaps
        .iter()
        .zip(w_forwarded)
        .map(|(s, f)| (s.counts.packets.forwarded - f) as f64 / window_s)
        .collect();
    let used = |p: &str| {
        (end_cpu.get(p).copied().unwrap_or(0.0) - w_cpu.get(p).copied().unwrap_or(0.0)) / window_s
    };
    let latency = {
        let h = shared
            .latency_us
            .lock()
            .map_err(|_| BenchError::Setup("latency histogram".into()))?;
        latency_of(&h, 1)
    };
    let held = held_peak.max(1);
    Ok(RunResult {
        cores,
        hop_processor,
        keys: if two_keys.is_some() { 2 } else { 1 },
        rotation_byte: 0,
        noise: noise.is_some(),
        noise_handshakes,
        noise_failures,
        handoffs_per_packet,
        doorbells_per_packet,
        batches_per_packet,
        syscalls_per_packet,
        window_s,
        rate_asked: options.rate,
        forwarded_per_s,
        forwarded_per_s_by_shard,
        ceiling_per_s: ceiling,
        ceiling_before_after_per_s: (ceiling, ceiling),
        efficiency: forwarded_per_s / (ceiling * cores as f64),
        hop_step_per_s: 0.0,
        cpu: CpuUse {
            node: used("shard-"),
            generator: used("gen-"),
            receiver: used("sink-"),
        },
        latency,
        latency_in_node,
        drops,
        sent: sent_total.load(Ordering::Relaxed) as u64,
        arrived: shared.arrived.load(Ordering::Relaxed),
        unknown: shared.unknown.load(Ordering::Relaxed),
        held_peak,
        rss_idle_bytes: rss_idle,
        rss_peak_bytes: rss_peak,
        bytes_per_held_packet: (held_peak >= 10_000)
            .then(|| rss_peak.saturating_sub(rss_idle) as f64 / held as f64),
    })
}

type CpuByThread = std::collections::HashMap<String, f64>;

/// Percentiles of a histogram whose unit is `per_us` of a microsecond.
fn latency_of(h: &Histogram<u64>, per_us: u64) -> Latency {
    let us = |v: u64| v / per_us.max(1);
    let curve = [
        0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0,
    ]
    .iter()
    .map(|&q| (q, us(h.value_at_quantile(q / 100.0))))
    .collect();
    Latency {
        count: h.len(),
        p50_us: us(h.value_at_quantile(0.5)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
        curve,
    }
}

struct Measured {
    window_start: (Instant, u64, Vec<u64>, CpuByThread, Histogram<u64>),
    /// Every shard's figures when the window opened.
    window_snaps: Vec<crate::shard::stats::ShardSnapshot>,
    end_time: Instant,
    end_arrived: u64,
    end_snaps: Vec<crate::shard::stats::ShardSnapshot>,
    end_cpu: CpuByThread,
    rss_peak: u64,
    held_peak: u64,
}

const THREAD_PREFIXES: [&str; 3] = ["shard-", "gen-", "sink-"];

/// Sample until the run's end, then stop the generators.
fn measure(
    options: &BenchOptions,
    running: &node::RunningNode,
    shared: &SinkShared,
    warmup: Duration,
    rss_idle: u64,
    stop: &AtomicBool,
) -> Result<Measured, BenchError> {
    let start = Instant::now();
    let mut rss_peak = rss_idle;
    let mut held_peak = 0u64;
    let mut window_start = None;
    let mut window_snaps = Vec::new();
    while start.elapsed() < options.duration {
        std::thread::sleep(Duration::from_millis(50));
        rss_peak = rss_peak.max(cpu::rss_bytes());
        let snaps = running.snapshots();
        held_peak = held_peak.max(snaps.iter().map(|s| s.held + s.queued).sum());
        if window_start.is_none() && start.elapsed() >= warmup {
            window_snaps = snaps.clone();
            window_start = Some((
                Instant::now(),
                shared.arrived.load(Ordering::Relaxed),
                snaps.iter().map(|s| s.counts.packets.forwarded).collect(),
                cpu::cpu_seconds_by_prefix(&THREAD_PREFIXES),
                running.added_latency(),
            ));
        }
    }
    let measured = Measured {
        end_snaps: running.snapshots(),
        end_arrived: shared.arrived.load(Ordering::Relaxed),
        end_cpu: cpu::cpu_seconds_by_prefix(&THREAD_PREFIXES),
        end_time: Instant::now(),
        window_start: window_start
            .ok_or_else(|| BenchError::Setup("run too short to measure".into()))?,
        rss_peak,
        held_peak,
        window_snaps,
    };
    stop.store(true, Ordering::Relaxed);
    Ok(measured)
}

struct TempHome(std::path::PathBuf);

impl Drop for TempHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> Result<TempHome, BenchError> {
    let dir = std::env::temp_dir().join(format!(
        "bench-mix-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::create_dir_all(&dir).map_err(setup("temporary folder"))?;
    Ok(TempHome(dir))
}

/// How close to a packet's send time the open-loop generator stops sleeping and spins.
const GENERATOR_SPIN_NS: u64 = 20_000;

/// One generator connection, and its Noise transport when the run's links are Noise.
struct Link {
    stream: TcpStream,
    noise: Option<crate::noise::link::Transport>,
}

/// One generator thread: open-loop at `rate`, or saturating; then idle until the run ends.
#[allow(clippy::too_many_arguments)]
fn generate(
    frames: &[Vec<u8>],
    streams: Vec<Link>,
    rate: Option<f64>,
    duration: Duration,
    t0: u64,
    stop: &AtomicBool,
    next: &AtomicUsize,
    sent_total: &AtomicUsize,
    shared: &SinkShared,
) {
    match rate {
        Some(rate) => open_loop(
            frames, streams, rate, duration, t0, stop, next, sent_total, shared,
        ),
        None => saturate(
            frames, streams, duration, t0, stop, next, sent_total, shared,
        ),
    }
    // Stay alive until the window closes, so that this thread's CPU time is still counted.
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Put frames `first..last` into `out`, stamping each as sent at `now`.
fn stamp_frames(
    shared: &SinkShared,
    frames: &[Vec<u8>],
    (first, last): (usize, usize),
    now: u64,
    out: &mut Vec<u8>,
) {
    out.clear();
    for (sent, frame) in shared.send_ns[first..last].iter().zip(&frames[first..last]) {
        sent.store(now, Ordering::Relaxed);
        out.extend_from_slice(frame);
    }
}

/// Open-loop load at `rate` packets/s: one packet per write, so that each send time is its own.
#[allow(clippy::too_many_arguments)]
fn open_loop(
    frames: &[Vec<u8>],
    mut streams: Vec<Link>,
    rate: f64,
    duration: Duration,
    t0: u64,
    stop: &AtomicBool,
    next: &AtomicUsize,
    sent_total: &AtomicUsize,
    shared: &SinkShared,
) {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1u64);
    }
    let batch = 1;
    let mut buffer = Vec::with_capacity(batch * frames.first().map_or(0, Vec::len));
    let mut sealed = Vec::with_capacity(buffer.capacity() + 64);
    let mut turn = 0usize;
    let end_ns = t0 + duration.as_nanos() as u64;
    while !stop.load(Ordering::Relaxed) {
        let first = next.fetch_add(batch, Ordering::Relaxed);
        if first >= frames.len() {
            break;
        }
        let last = (first + batch).min(frames.len());
        let due_ns = t0 + (first as f64 / rate * 1e9) as u64;
        loop {
            let now = shared.now_ns();
            if now >= due_ns {
                break;
            }
            // Sleep (with 1 µs timer slack, set above) to near the due time, then spin: a
            // long spin would take the core from the sink sharing it.
            let wait = due_ns - now;
            if wait > GENERATOR_SPIN_NS {
                std::thread::sleep(Duration::from_nanos(wait - GENERATOR_SPIN_NS));
            } else {
                std::hint::spin_loop();
            }
        }
        let now = shared.now_ns();
        if now >= end_ns {
            break;
        }
        stamp_frames(shared, frames, (first, last), now, &mut buffer);
        let index = turn % streams.len();
        let link = &mut streams[index];
        turn += 1;
        let bytes = match link.noise.as_mut() {
            Some(transport) => {
                sealed.clear();
                if transport.seal(&buffer, &mut sealed).is_err() {
                    break;
                }
                &sealed
            }
            None => &buffer,
        };
        if link.stream.write_all(bytes).is_err() {
            break;
        }
        sent_total.fetch_add(last - first, Ordering::Relaxed);
    }
}

/// Frames a saturating generator writes to one connection at a time.
const SATURATE_BATCH: usize = 16;

/// One connection of a saturating generator, with the bytes of its current batch (sealed,
/// on a Noise link).
struct Outgoing {
    stream: TcpStream,
    noise: Option<crate::noise::link::Transport>,
    /// The batch's frames before sealing (Noise links).
    plain: Vec<u8>,
    pending: Vec<u8>,
    written: usize,
    frames: usize,
}

/// Saturating load: keeps every connection's socket full, writing to whichever has room, so
/// that a shard with more connections or less CPU does not hold back the others (blocking
/// writes in turn would let the slowest connection set everyone's pace).
#[allow(clippy::too_many_arguments)]
fn saturate(
    frames: &[Vec<u8>],
    streams: Vec<Link>,
    duration: Duration,
    t0: u64,
    stop: &AtomicBool,
    next: &AtomicUsize,
    sent_total: &AtomicUsize,
    shared: &SinkShared,
) {
    let frame_len = frames.first().map_or(0, Vec::len);
    let mut conns: Vec<Outgoing> = streams
        .into_iter()
        .filter(|link| link.stream.set_nonblocking(true).is_ok())
        .map(|link| Outgoing {
            stream: link.stream,
            noise: link.noise,
            plain: Vec::with_capacity(SATURATE_BATCH * frame_len),
            pending: Vec::with_capacity(SATURATE_BATCH * frame_len + 64),
            written: 0,
            frames: 0,
        })
        .collect();
    let end_ns = t0 + duration.as_nanos() as u64;
    'run: while !stop.load(Ordering::Relaxed) && shared.now_ns() < end_ns {
        let mut progressed = false;
        for c in conns.iter_mut() {
            if c.written == c.pending.len() {
                let first = next.fetch_add(SATURATE_BATCH, Ordering::Relaxed);
                if first >= frames.len() {
                    break 'run;
                }
                let last = (first + SATURATE_BATCH).min(frames.len());
                let now = shared.now_ns();
                match c.noise.as_mut() {
                    Some(transport) => {
                        stamp_frames(shared, frames, (first, last), now, &mut c.plain);
                        c.pending.clear();
                        if transport.seal(&c.plain, &mut c.pending).is_err() {
                            break 'run;
                        }
                    }
                    None => stamp_frames(shared, frames, (first, last), now, &mut c.pending),
                }
                c.written = 0;
                c.frames = last - first;
            }
            match c.stream.write(&c.pending[c.written..]) {
                Ok(n) => {
                    progressed |= n > 0;
                    c.written += n;
                    if c.written == c.pending.len() {
                        sent_total.fetch_add(c.frames, Ordering::Relaxed);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break 'run,
            }
        }
        if !progressed {
            wait_writable(&conns, Duration::from_millis(5));
        }
    }
    // Finish the batches begun, so that every packet stamped as sent is whole on the wire.
    for c in conns.iter_mut() {
        if c.written < c.pending.len()
            && c.stream.set_nonblocking(false).is_ok()
            && c.stream.write_all(&c.pending[c.written..]).is_ok()
        {
            sent_total.fetch_add(c.frames, Ordering::Relaxed);
        }
    }
}

/// Block until one of `conns` with bytes to write can take more, or `timeout` passes.
fn wait_writable(conns: &[Outgoing], timeout: Duration) {
    use std::os::unix::io::AsRawFd;
    let mut fds: Vec<libc::pollfd> = conns
        .iter()
        .filter(|c| c.written < c.pending.len())
        .map(|c| libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        })
        .collect();
    if fds.is_empty() {
        return;
    }
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures for the call's duration.
    unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis() as libc::c_int,
        );
    }
}
