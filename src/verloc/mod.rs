//! VerLoc: verifiable latency measurements between nodes, compatible with Nym's VerLoc.
//!
//! Two services share the node's identity key:
//! - the **listener** answers echo packets on the VerLoc port with a reply that carries our
//!   signature, so that the measuring node knows it timed us and not someone else;
//! - the **measurer** runs every `run_interval` (or `retry_interval` when the node list cannot
//!   be had): it reads the topology ([`crate::topology`]), and measures every other node with
//!   `packets_per_node` echoes, `packet_spacing` apart, in batches of `batch_size` nodes. A reply
//!   counts only if its echo is exactly ours and its signature verifies with the node's key.
//!
//! Pure parts: [`packet`] (wire format), [`stats`] (figures), [`measure`] (one target's state,
//! the schedule) and [`results`] (the `/verloc` document). Drivers: [`listener`] and
//! [`measurer`], on plain threads; they alone touch sockets and clocks.
//!
//! The latest results are read through [`VerlocResults`] (`to_json` gives `/verloc`); the
//! counters through [`Verloc::stats`]. This module does not serve HTTP.

pub mod listener;
pub mod measure;
pub mod measurer;
pub mod packet;
pub mod results;
pub mod stats;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use serde::Serialize;

use crate::config::VerlocSection;
use crate::topology::refresh::KnownSource;

pub use measure::TargetFailure;
pub use packet::EchoReject;
pub use results::{NodeResult, RunReport, VerlocResults};
pub use stats::Measurement;

/// How long stopping waits for connection and measuring threads to notice.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A stop flag that sleeping threads can wait on.
#[derive(Debug, Default)]
pub struct StopSignal {
    raised: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl StopSignal {
    /// Not raised.
    pub fn new() -> StopSignal {
        StopSignal::default()
    }

    /// Raise it and wake every waiter.
    pub fn raise(&self) {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.raised.store(true, Ordering::Release);
        self.wake.notify_all();
    }

    /// Raised?
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Sleep for `duration` or until raised; true when raised.
    pub fn wait(&self, duration: Duration) -> bool {
        let held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let (_held, _) = self
            .wake
            .wait_timeout_while(held, duration, |_| !self.is_raised())
            .unwrap_or_else(|e| e.into_inner());
        self.is_raised()
    }
}

/// The counted events of both services. Each limit that bites has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Counter {
    ConnectionsAccepted,
    ConnectionsRefusedLimit,
    ConnectionsRefusedThread,
    AcceptErrors,
    EchoesAnswered,
    ClosedPeer,
    ClosedTruncated,
    ClosedIdle,
    ClosedLimit,
    ClosedBadEcho,
    ClosedIoError,
    ClosedStopped,
    RunsStarted,
    RunsFinished,
    RunsNoNodeList,
    TopologyEntriesSkipped,
    TargetsMeasured,
}

const COUNTERS: usize = Counter::TargetsMeasured as usize + 1;

/// Atomic counters, written by the drivers.
#[derive(Debug, Default)]
pub(crate) struct VerlocCounters {
    counts: [AtomicU64; COUNTERS],
    echoes_rejected: [AtomicU64; EchoReject::ALL.len()],
    targets_failed: [AtomicU64; TargetFailure::ALL.len()],
}

impl VerlocCounters {
    pub(crate) fn add(&self, counter: Counter) {
        self.add_n(counter, 1);
    }

    pub(crate) fn add_n(&self, counter: Counter, n: u64) {
        self.counts[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_echo_reject(&self, reject: EchoReject) {
        self.echoes_rejected[reject as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_target_failure(&self, failure: TargetFailure) {
        self.targets_failed[failure.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, counter: Counter) -> u64 {
        self.counts[counter as usize].load(Ordering::Relaxed)
    }

    fn snapshot(&self, connections_active: usize) -> VerlocStats {
        VerlocStats {
            connections_active: connections_active as u64,
            connections_accepted: self.get(Counter::ConnectionsAccepted),
            connections_refused_limit: self.get(Counter::ConnectionsRefusedLimit),
            connections_refused_thread: self.get(Counter::ConnectionsRefusedThread),
            accept_errors: self.get(Counter::AcceptErrors),
            echoes_answered: self.get(Counter::EchoesAnswered),
            echoes_rejected: EchoReject::ALL
                .iter()
                .map(|r| {
                    (
                        r.label(),
                        self.echoes_rejected[*r as usize].load(Ordering::Relaxed),
                    )
                })
                .collect(),
            connections_closed_peer: self.get(Counter::ClosedPeer),
            connections_closed_truncated: self.get(Counter::ClosedTruncated),
            connections_closed_idle: self.get(Counter::ClosedIdle),
            connections_closed_limit: self.get(Counter::ClosedLimit),
            connections_closed_bad_echo: self.get(Counter::ClosedBadEcho),
            connections_closed_io_error: self.get(Counter::ClosedIoError),
            connections_closed_stopped: self.get(Counter::ClosedStopped),
            runs_started: self.get(Counter::RunsStarted),
            runs_finished: self.get(Counter::RunsFinished),
            runs_no_node_list: self.get(Counter::RunsNoNodeList),
            topology_entries_skipped: self.get(Counter::TopologyEntriesSkipped),
            targets_measured: self.get(Counter::TargetsMeasured),
            targets_failed: TargetFailure::ALL
                .iter()
                .map(|f| {
                    (
                        f.label(),
                        self.targets_failed[f.index()].load(Ordering::Relaxed),
                    )
                })
                .collect(),
        }
    }
}

/// The VerLoc counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerlocStats {
    /// Connections being served now.
    pub connections_active: u64,
    /// Connections accepted (including those then refused).
    pub connections_accepted: u64,
    /// Connections closed at once because `connections_max` were being served.
    pub connections_refused_limit: u64,
    /// Connections closed at once because no thread could be started.
    pub connections_refused_thread: u64,
    /// Failed accepts (e.g. out of descriptors).
    pub accept_errors: u64,
    /// Echoes answered with a signed reply.
    pub echoes_answered: u64,
    /// Echoes refused, by reason.
    pub echoes_rejected: Vec<(&'static str, u64)>,
    /// Connections the peer closed between echoes.
    pub connections_closed_peer: u64,
    /// Connections the peer closed in the middle of an echo.
    pub connections_closed_truncated: u64,
    /// Connections closed because no whole echo came within `read_timeout`.
    pub connections_closed_idle: u64,
    /// Connections closed at `connection_lifetime_max` or `echoes_per_connection_max`.
    pub connections_closed_limit: u64,
    /// Connections closed after an echo that did not check.
    pub connections_closed_bad_echo: u64,
    /// Connections closed after a failed read or write.
    pub connections_closed_io_error: u64,
    /// Connections closed because the node stopped.
    pub connections_closed_stopped: u64,
    /// Measurement runs started.
    pub runs_started: u64,
    /// Measurement runs finished.
    pub runs_finished: u64,
    /// Runs not started because the node list could not be had.
    pub runs_no_node_list: u64,
    /// Topology entries skipped (summed over runs).
    pub topology_entries_skipped: u64,
    /// Nodes measured (summed over runs).
    pub targets_measured: u64,
    /// Nodes not measured, by reason (summed over runs).
    pub targets_failed: Vec<(&'static str, u64)>,
}

impl VerlocStats {
    /// The count of `failure` in `targets_failed`.
    pub fn targets_failed(&self, failure: TargetFailure) -> u64 {
        lookup(&self.targets_failed, failure.label())
    }

    /// The count of `reject` in `echoes_rejected`.
    pub fn echoes_rejected(&self, reject: EchoReject) -> u64 {
        lookup(&self.echoes_rejected, reject.label())
    }
}

fn lookup(pairs: &[(&'static str, u64)], label: &str) -> u64 {
    pairs
        .iter()
        .find(|(l, _)| *l == label)
        .map_or(0, |(_, n)| *n)
}

/// VerLoc could not start.
#[derive(Debug, thiserror::Error)]
pub enum VerlocError {
    /// The topology source is not usable.
    #[error("verloc.topology: {0}")]
    Source(String),
    /// A thread or socket could not be set up.
    #[error("cannot start VerLoc on {addr}: {source}")]
    Io {
        /// The VerLoc address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Reads [`VerlocStats`] from any thread.
#[derive(Clone, Debug)]
pub struct VerlocStatsReader {
    counters: Arc<VerlocCounters>,
    active: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

impl VerlocStatsReader {
    /// The counters now.
    pub fn read(&self) -> VerlocStats {
        let active = self
            .active
            .as_ref()
            .map_or(0, |a| a.load(Ordering::Acquire));
        self.counters.snapshot(active)
    }
}

/// The running listener and measurer.
pub struct Verloc {
    listener: Option<listener::Listener>,
    measurer: Option<JoinHandle<()>>,
    stop: Arc<StopSignal>,
    results: Arc<VerlocResults>,
    counters: Arc<VerlocCounters>,
    local_addr: SocketAddr,
}

impl Verloc {
    /// Serve echoes on `socket` (already bound) and measure the topology of `settings`
    /// (`"nym-api"`: the nodes nym-api at `nym_api` lists).
    pub fn start(
        socket: TcpListener,
        identity: SigningKey,
        settings: &VerlocSection,
        nym_api: Option<&str>,
    ) -> Result<Verloc, VerlocError> {
        let source =
            KnownSource::parse(&settings.topology, nym_api).map_err(VerlocError::Source)?;
        let local_addr = socket.local_addr().map_err(|source| VerlocError::Io {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let io = |source| VerlocError::Io {
            addr: local_addr,
            source,
        };
        let identity = Arc::new(identity);
        let stop = Arc::new(StopSignal::new());
        let results = Arc::new(VerlocResults::new());
        let counters = Arc::new(VerlocCounters::default());
        let listener = listener::Listener::start(
            socket,
            identity.clone(),
            listener::ListenerLimits {
                connections_max: settings.connections_max,
                read_timeout: settings.read_timeout,
                connection_lifetime_max: settings.connection_lifetime_max,
                echoes_per_connection_max: settings.echoes_per_connection_max,
            },
            counters.clone(),
            stop.clone(),
        )
        .map_err(io)?;
        let measurer = measurer::start(measurer::MeasurerContext {
            settings: settings.clone(),
            source,
            identity,
            results: results.clone(),
            counters: counters.clone(),
            stop: stop.clone(),
        });
        let measurer = match measurer {
            Ok(m) => m,
            Err(e) => {
                stop.raise();
                listener.join(STOP_GRACE);
                return Err(io(e));
            }
        };
        Ok(Verloc {
            listener: Some(listener),
            measurer: Some(measurer),
            stop,
            results,
            counters,
            local_addr,
        })
    }

    /// The address the listener serves.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The latest results (shared; see [`VerlocResults`]).
    pub fn results(&self) -> Arc<VerlocResults> {
        self.results.clone()
    }

    /// The counters now.
    pub fn stats(&self) -> VerlocStats {
        let active = self.listener.as_ref().map_or(0, |l| l.active());
        self.counters.snapshot(active)
    }

    /// A handle that reads the counters from another thread (the HTTP API's /metrics).
    pub fn stats_reader(&self) -> VerlocStatsReader {
        VerlocStatsReader {
            counters: self.counters.clone(),
            active: self.listener.as_ref().map(|l| l.active_count()),
        }
    }

    /// Stop both services: the listening socket and every connection are closed, and a run
    /// in progress is abandoned.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.raise();
        if let Some(listener) = self.listener.take() {
            listener.join(STOP_GRACE);
        }
        if let Some(measurer) = self.measurer.take() {
            let _ = measurer.join();
        }
    }
}

impl Drop for Verloc {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn stop_signal_wakes_a_sleeper() {
        let stop = Arc::new(StopSignal::new());
        assert!(!stop.wait(Duration::from_millis(1)));
        let sleeper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let raised = stop.wait(Duration::from_secs(30));
                (raised, start.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        stop.raise();
        let (raised, waited) = sleeper.join().unwrap();
        assert!(raised);
        assert!(waited < Duration::from_secs(5));
    }

    #[test]
    fn counters_snapshot() {
        let counters = VerlocCounters::default();
        counters.add(Counter::EchoesAnswered);
        counters.add_echo_reject(EchoReject::BadSignature);
        counters.add_target_failure(TargetFailure::Timeout);
        counters.add_target_failure(TargetFailure::Timeout);
        let stats = counters.snapshot(3);
        assert_eq!(stats.connections_active, 3);
        assert_eq!(stats.echoes_answered, 1);
        assert_eq!(stats.echoes_rejected(EchoReject::BadSignature), 1);
        assert_eq!(stats.echoes_rejected(EchoReject::BadSenderKey), 0);
        assert_eq!(stats.targets_failed(TargetFailure::Timeout), 2);
    }
}
