//! The VerLoc listener (driver): accepts connections on the VerLoc port and answers each echo
//! with a signed reply, on plain threads.
//!
//! Like Nym's listener, one connection carries any number of echoes, one after another. Unlike
//! the old listener, every connection is bounded: at most `connections_max` are served at once
//! (more are closed at once and counted), each echo must arrive whole within `read_timeout`,
//! a connection lives at most `connection_lifetime_max` and answers at most
//! `echoes_per_connection_max` echoes, and an echo that does not check closes it. Every close
//! has a counted reason, and every socket is closed when its thread ends, so descriptors
//! cannot pile up.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;

use super::packet::{answer_echo, EchoBytes, ECHO_LENGTH};
use super::{Counter, StopSignal, VerlocCounters};

/// How often a blocked thread looks at the stop flag.
pub(crate) const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Stack of one connection thread: it verifies and signs, nothing deeper.
const CONNECTION_STACK_BYTES: usize = 256 * 1024;

/// The listener's limits.
#[derive(Clone, Copy, Debug)]
pub struct ListenerLimits {
    /// Connections served at once.
    pub connections_max: usize,
    /// Time allowed for each echo to arrive whole (and for each reply to be written).
    pub read_timeout: Duration,
    /// Longest life of one connection.
    pub connection_lifetime_max: Duration,
    /// Echoes answered on one connection before it is closed.
    pub echoes_per_connection_max: u64,
}

/// Why a served connection ended. Also the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed it between echoes.
    PeerClosed,
    /// The peer closed it in the middle of an echo.
    Truncated,
    /// No whole echo within the read timeout.
    Idle,
    /// It reached its lifetime or echo limit.
    Limit,
    /// An echo did not check (its reason is counted too).
    BadEcho,
    /// A read or write failed.
    IoError,
    /// The node is stopping.
    Stopped,
}

/// The accept loop and its connection threads.
pub(crate) struct Listener {
    thread: Option<JoinHandle<()>>,
    active: Arc<AtomicUsize>,
}

impl Listener {
    /// Serve `listener` until `stop` is raised.
    pub(crate) fn start(
        listener: TcpListener,
        identity: Arc<SigningKey>,
        limits: ListenerLimits,
        counters: Arc<VerlocCounters>,
        stop: Arc<StopSignal>,
    ) -> std::io::Result<Listener> {
        // Non-blocking so that a connection reset between poll and accept cannot block us.
        listener.set_nonblocking(true)?;
        let active = Arc::new(AtomicUsize::new(0));
        let thread = {
            let active = active.clone();
            std::thread::Builder::new()
                .name("verloc-listener".into())
                .spawn(move || accept_loop(listener, identity, limits, counters, stop, active))?
        };
        Ok(Listener {
            thread: Some(thread),
            active,
        })
    }

    /// Connections being served now.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// The shared count of connections being served.
    pub(crate) fn active_count(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.active)
    }

    /// Wait for the accept loop to end (the stop signal must be raised) and for connection
    /// threads to close their sockets, at most `grace`.
    pub(crate) fn join(mut self, grace: Duration) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let deadline = Instant::now() + grace;
        while self.active() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Decrements the active count when a connection thread ends, however it ends.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Wait until the listening socket is readable or `timeout` passes.
fn wait_readable(listener: &TcpListener, timeout: Duration) {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd, owned by this frame, for the duration of the call.
    unsafe {
        libc::poll(&mut fd, 1, timeout_ms);
    }
}

fn accept_loop(
    listener: TcpListener,
    identity: Arc<SigningKey>,
    limits: ListenerLimits,
    counters: Arc<VerlocCounters>,
    stop: Arc<StopSignal>,
    active: Arc<AtomicUsize>,
) {
    while !stop.is_raised() {
        wait_readable(&listener, STOP_CHECK_INTERVAL);
        // Drain every pending connection before polling again.
        loop {
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors or memory: count, back off, keep serving.
                    counters.add(Counter::AcceptErrors);
                    tracing::warn!(error = %e, "VerLoc accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                    break;
                }
            };
            counters.add(Counter::ConnectionsAccepted);
            if active.load(Ordering::Acquire) >= limits.connections_max {
                counters.add(Counter::ConnectionsRefusedLimit);
                tracing::debug!(%peer, limit = limits.connections_max, "VerLoc connection refused: limit reached");
                drop(stream);
                continue;
            }
            active.fetch_add(1, Ordering::AcqRel);
            let guard = ActiveGuard(active.clone());
            let (identity, conn_counters, stop) =
                (identity.clone(), counters.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name("verloc-conn".into())
                .stack_size(CONNECTION_STACK_BYTES)
                .spawn(move || {
                    let _guard = guard;
                    let reason = serve(stream, &identity, limits, &conn_counters, &stop);
                    conn_counters.add(close_counter(reason));
                    tracing::trace!(%peer, ?reason, "VerLoc connection closed");
                });
            if let Err(e) = spawned {
                // The closure (stream and guard) was dropped: the socket is closed.
                counters.add(Counter::ConnectionsRefusedThread);
                tracing::warn!(error = %e, "cannot start a VerLoc connection thread");
            }
        }
    }
}

fn close_counter(reason: CloseReason) -> Counter {
    match reason {
        CloseReason::PeerClosed => Counter::ClosedPeer,
        CloseReason::Truncated => Counter::ClosedTruncated,
        CloseReason::Idle => Counter::ClosedIdle,
        CloseReason::Limit => Counter::ClosedLimit,
        CloseReason::BadEcho => Counter::ClosedBadEcho,
        CloseReason::IoError => Counter::ClosedIoError,
        CloseReason::Stopped => Counter::ClosedStopped,
    }
}

/// Answer echoes on one connection until it ends; why it ended.
fn serve(
    mut stream: TcpStream,
    identity: &SigningKey,
    limits: ListenerLimits,
    counters: &VerlocCounters,
    stop: &StopSignal,
) -> CloseReason {
    let opened = Instant::now();
    if stream.set_nonblocking(false).is_err()
        || stream.set_nodelay(true).is_err()
        || stream.set_write_timeout(Some(limits.read_timeout)).is_err()
    {
        return CloseReason::IoError;
    }
    let mut echo: EchoBytes = [0u8; ECHO_LENGTH];
    let mut answered = 0u64;
    loop {
        if answered >= limits.echoes_per_connection_max {
            return CloseReason::Limit;
        }
        let now = Instant::now();
        let lifetime_end = opened + limits.connection_lifetime_max;
        let deadline = (now + limits.read_timeout).min(lifetime_end);
        if let Err(reason) = read_echo(&mut stream, &mut echo, deadline, lifetime_end, stop) {
            return reason;
        }
        let reply = match answer_echo(&echo, identity) {
            Ok(reply) => reply,
            Err(reject) => {
                counters.add_echo_reject(reject);
                return CloseReason::BadEcho;
            }
        };
        if stream.write_all(&reply).is_err() {
            return CloseReason::IoError;
        }
        counters.add(Counter::EchoesAnswered);
        answered += 1;
    }
}

/// Read one whole echo before `deadline`. A read that returns in pieces is fine; silence or a
/// trickle past the deadline is not.
fn read_echo(
    stream: &mut TcpStream,
    echo: &mut EchoBytes,
    deadline: Instant,
    lifetime_end: Instant,
    stop: &StopSignal,
) -> Result<(), CloseReason> {
    let mut filled = 0;
    while filled < ECHO_LENGTH {
        if stop.is_raised() {
            return Err(CloseReason::Stopped);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(if deadline >= lifetime_end {
                CloseReason::Limit
            } else {
                CloseReason::Idle
            });
        }
        let wait = (deadline - now).min(STOP_CHECK_INTERVAL);
        if stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .is_err()
        {
            return Err(CloseReason::IoError);
        }
        match stream.read(&mut echo[filled..]) {
            Ok(0) if filled == 0 => return Err(CloseReason::PeerClosed),
            Ok(0) => return Err(CloseReason::Truncated),
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset && filled == 0 => {
                return Err(CloseReason::PeerClosed)
            }
            Err(_) => return Err(CloseReason::IoError),
        }
    }
    Ok(())
}
