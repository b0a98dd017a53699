//! The VerLoc measurer (driver): on a thread, read the topology, measure every other node in
//! batches (one thread per node of the batch), publish the results, sleep until the next run.
//!
//! The logic of one target lives in [`super::measure::TargetProbe`]; this file only connects,
//! writes, reads with deadlines and looks at the clock.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::listener::STOP_CHECK_INTERVAL;
use super::measure::{first_sequence, next_run_delay, RunOutcome, TargetFailure, TargetProbe};
use super::packet::{ReplyBytes, REPLY_LENGTH};
use super::results::{NodeResult, VerlocResults};
use super::stats::Measurement;
use super::{Counter, StopSignal, VerlocCounters};
use crate::config::VerlocSection;
use crate::topology::refresh::KnownSource;
use crate::topology::Topology;

/// Entries of a topology logged one by one when skipped; the rest are summed up.
const SKIPPED_LOGGED_MAX: usize = 20;
/// Stack of one measuring thread.
const TARGET_STACK_BYTES: usize = 256 * 1024;

/// A node to measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Its identity key: replies must be signed with it.
    pub identity: VerifyingKey,
    /// Its host (IP address or DNS name).
    pub host: String,
    /// Its VerLoc port.
    pub verloc_port: u16,
}

/// The nodes of `topology` to measure: every node but `own`, each identity once.
pub fn targets(topology: &Topology, own: &VerifyingKey) -> Vec<Target> {
    let mut seen = HashSet::new();
    topology
        .nodes
        .iter()
        .filter(|n| n.identity != *own && seen.insert(n.identity.to_bytes()))
        .map(|n| Target {
            identity: n.identity,
            host: n.host.clone(),
            verloc_port: n.verloc_port,
        })
        .collect()
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Sequence numbers need only differ between runs, not be secret.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        return nanos as u64;
    }
    u64::from_be_bytes(bytes)
}

fn connect(target: &Target, timeout: Duration) -> Result<TcpStream, TargetFailure> {
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.verloc_port)
        .to_socket_addrs()
        .map_err(|_| TargetFailure::Unresolved)?
        .collect();
    if addrs.is_empty() {
        return Err(TargetFailure::Unresolved);
    }
    for addr in addrs {
        if let Ok(stream) = TcpStream::connect_timeout(&addr, timeout) {
            return Ok(stream);
        }
    }
    Err(TargetFailure::Unreachable)
}

fn io_failure(e: &std::io::Error) -> TargetFailure {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => TargetFailure::Timeout,
        _ => TargetFailure::ConnectionLost,
    }
}

/// Read one whole reply before `deadline`, looking at `stop` while waiting.
fn read_reply(
    stream: &mut TcpStream,
    reply: &mut ReplyBytes,
    deadline: Instant,
    stop: &StopSignal,
) -> Result<(), TargetFailure> {
    let mut filled = 0;
    while filled < REPLY_LENGTH {
        if stop.is_raised() {
            return Err(TargetFailure::Stopped);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(TargetFailure::Timeout);
        }
        let wait = (deadline - now)
            .min(STOP_CHECK_INTERVAL)
            .max(Duration::from_millis(1));
        stream
            .set_read_timeout(Some(wait))
            .map_err(|e| io_failure(&e))?;
        match stream.read(&mut reply[filled..]) {
            Ok(0) => return Err(TargetFailure::ConnectionLost),
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(io_failure(&e)),
        }
    }
    Ok(())
}

/// Measure one node: connect, then `packets_per_node` echoes one at a time, `packet_spacing`
/// apart, each answered within `packet_timeout`. The first failure ends the measurement.
pub fn measure_node(
    settings: &VerlocSection,
    identity: &SigningKey,
    target: &Target,
    stop: &StopSignal,
) -> Result<Measurement, TargetFailure> {
    let mut stream = connect(target, settings.connect_timeout)?;
    stream
        .set_nodelay(true)
        .and_then(|()| stream.set_write_timeout(Some(settings.packet_timeout)))
        .map_err(|e| io_failure(&e))?;
    let packets = settings.packets_per_node;
    let mut probe = TargetProbe::new(
        target.identity,
        packets,
        first_sequence(random_u64(), packets),
    );
    let mut reply: ReplyBytes = [0u8; REPLY_LENGTH];
    while let Some(echo) = probe.next_echo(identity) {
        if stop.is_raised() {
            return Err(TargetFailure::Stopped);
        }
        let sent_at = Instant::now();
        probe.on_sent(sent_at);
        stream.write_all(&echo).map_err(|e| io_failure(&e))?;
        let deadline = sent_at + settings.packet_timeout;
        read_reply(&mut stream, &mut reply, deadline, stop)?;
        probe.on_reply(&reply, Instant::now())?;
        if !probe.is_done() && stop.wait(settings.packet_spacing) {
            return Err(TargetFailure::Stopped);
        }
    }
    // Every echo was answered, so there is a measurement.
    probe.measurement().ok_or(TargetFailure::ConnectionLost)
}

/// Everything the measuring thread needs.
pub(crate) struct MeasurerContext {
    pub(crate) settings: VerlocSection,
    pub(crate) source: Option<KnownSource>,
    pub(crate) identity: Arc<SigningKey>,
    pub(crate) results: Arc<VerlocResults>,
    pub(crate) counters: Arc<VerlocCounters>,
    pub(crate) stop: Arc<StopSignal>,
}

/// Start the measuring thread.
pub(crate) fn start(context: MeasurerContext) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("verloc-measurer".into())
        .spawn(move || run_forever(&context))
}

fn run_forever(context: &MeasurerContext) {
    if context.source.is_none() {
        tracing::info!("VerLoc: no topology configured (`topology` in [verloc] or --topology); measuring nothing");
    }
    while !context.stop.is_raised() {
        let outcome = run_once(context);
        let delay = next_run_delay(
            outcome,
            context.settings.run_interval,
            context.settings.retry_interval,
        );
        if outcome == RunOutcome::Finished && !context.stop.is_raised() {
            tracing::info!(next_in = %humantime::format_duration(delay), "VerLoc run finished");
        }
        if context.stop.wait(delay) {
            break;
        }
    }
}

fn load_topology(context: &MeasurerContext) -> Option<Topology> {
    let Some(source) = &context.source else {
        return Some(Topology::default());
    };
    match source.load_topology(crate::topology::refresh::READ_TIMEOUT) {
        Ok(topology) => {
            for skipped in topology.skipped.iter().take(SKIPPED_LOGGED_MAX) {
                tracing::warn!(origin = %source.origin(), "VerLoc: skipping topology entry {skipped}");
            }
            if topology.skipped.len() > SKIPPED_LOGGED_MAX {
                tracing::warn!(
                    origin = %source.origin(),
                    "VerLoc: skipping {} more topology entries",
                    topology.skipped.len() - SKIPPED_LOGGED_MAX
                );
            }
            context.counters.add_n(
                Counter::TopologyEntriesSkipped,
                topology.skipped.len() as u64,
            );
            Some(topology)
        }
        Err(e) => {
            context.counters.add(Counter::RunsNoNodeList);
            tracing::warn!(
                retry_in = %humantime::format_duration(context.settings.retry_interval),
                "VerLoc: {e}"
            );
            None
        }
    }
}

/// One run: read the node list, measure every other node, publish. How it ended.
fn run_once(context: &MeasurerContext) -> RunOutcome {
    let Some(topology) = load_topology(context) else {
        return RunOutcome::NoNodeList;
    };
    let targets = targets(&topology, &context.identity.verifying_key());
    context.counters.add(Counter::RunsStarted);
    context.results.start_run(targets.len(), SystemTime::now());
    tracing::info!(nodes = targets.len(), "VerLoc run started");
    for batch in targets.chunks(context.settings.batch_size.max(1)) {
        let results = measure_batch(context, batch);
        if context.stop.is_raised() {
            return RunOutcome::Finished;
        }
        context.results.append(&results);
    }
    context.results.finish(SystemTime::now());
    context.counters.add(Counter::RunsFinished);
    RunOutcome::Finished
}

fn measure_batch(context: &MeasurerContext, batch: &[Target]) -> Vec<NodeResult> {
    let outcome = |target: &Target, result: Result<Measurement, TargetFailure>| {
        match result {
            Ok(_) => context.counters.add(Counter::TargetsMeasured),
            Err(failure) => {
                context.counters.add_target_failure(failure);
                tracing::debug!(
                    node = %bs58::encode(target.identity.as_bytes()).into_string(),
                    host = %target.host,
                    reason = failure.label(),
                    "VerLoc: node not measured"
                );
            }
        }
        NodeResult {
            identity: target.identity,
            latest_measurement: result.ok(),
        }
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = batch
            .iter()
            .map(|target| {
                std::thread::Builder::new()
                    .name("verloc-measure".into())
                    .stack_size(TARGET_STACK_BYTES)
                    .spawn_scoped(scope, move || {
                        measure_node(&context.settings, &context.identity, target, &context.stop)
                    })
            })
            .collect();
        batch
            .iter()
            .zip(handles)
            .map(|(target, handle)| {
                let result = match handle {
                    Ok(h) => h.join().unwrap_or(Err(TargetFailure::ConnectionLost)),
                    // No thread for it: measure it here, in turn.
                    Err(_) => {
                        measure_node(&context.settings, &context.identity, target, &context.stop)
                    }
                };
                outcome(target, result)
            })
            .collect()
    })
}
