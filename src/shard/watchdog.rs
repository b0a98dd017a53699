//! The watchdog: a plain thread that keeps every shard awake and notices one that stops.
//!
//! glommio 0.9.0 can park an executor that still has runnable tasks (when it was preempted
//! before running any); nothing then wakes it until some I/O completes. So every
//! [`RING_INTERVAL`] the watchdog writes one byte to each shard's end of a Unix socket pair,
//! which the shard reads in a task of its own: the read completing wakes a parked executor,
//! and the task wakes the pump. That bounds any such stall to about the ring interval.
//!
//! It also watches each shard's heartbeat (one count per pump round; an idle pump still
//! runs every 20 ms): a shard whose heartbeat has not moved for [`STALL_AFTER`] is stalled.
//! The stall is counted, logged (and its end), and shown on `/health` and /metrics. A shard
//! whose pump has ended (shutdown) is not watched.
//!
//! Cost: one 1-byte write per shard per ring interval here, and one read and pump wake-up per
//! shard there.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::stats::ShardStats;

/// How often each shard is rung.
pub const RING_INTERVAL: Duration = Duration::from_millis(50);
/// A shard whose heartbeat has not moved for this long is stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(2);

/// The running watchdog.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Ring each of `bells` (one per shard, in shard order) and watch `stats`.
    pub fn start(bells: Vec<UnixStream>, stats: Arc<Vec<ShardStats>>) -> std::io::Result<Watchdog> {
        for bell in &bells {
            bell.set_nonblocking(true)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let halt = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("shard-watchdog".into())
            .spawn(move || watch(bells, &stats, &halt))?;
        Ok(Watchdog {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop the thread; the shards' ends see the sockets close.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}

fn watch(mut bells: Vec<UnixStream>, stats: &[ShardStats], stop: &AtomicBool) {
    let now = Instant::now();
    let mut seen: Vec<(u64, Instant)> = stats.iter().map(|s| (s.heartbeat(), now)).collect();
    while !stop.load(Ordering::Acquire) {
        for bell in &mut bells {
            // Full means a ring is already waiting to be read.
            let _ = bell.write(&[1]);
        }
        let now = Instant::now();
        for (index, (shard, (beat, since))) in stats.iter().zip(seen.iter_mut()).enumerate() {
            let current = shard.heartbeat();
            if current != *beat || shard.has_ended() {
                if shard.is_stalled() {
                    shard.set_stalled(false);
                    tracing::warn!(
                        shard = index,
                        stalled_for_ms = now.duration_since(*since).as_millis() as u64,
                        "shard made progress again"
                    );
                }
                *beat = current;
                *since = now;
            } else if now.duration_since(*since) >= STALL_AFTER && !shard.is_stalled() {
                shard.set_stalled(true);
                tracing::error!(
                    shard = index,
                    stalls = shard.stalls(),
                    "shard has made no progress for {} s although it is rung every {} ms: it is stuck",
                    STALL_AFTER.as_secs(),
                    RING_INTERVAL.as_millis()
                );
            }
        }
        std::thread::sleep(RING_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_shard_without_heartbeats_is_reported_stalled_and_recovers_and_every_shard_is_rung() {
        let stats: Arc<Vec<ShardStats>> = Arc::new((0..2).map(|_| ShardStats::default()).collect());
        let (watch_a, mut shard_a) = UnixStream::pair().unwrap();
        let (watch_b, mut shard_b) = UnixStream::pair().unwrap();
        let mut watchdog = Watchdog::start(vec![watch_a, watch_b], Arc::clone(&stats)).unwrap();
        // Shard 0 beats; shard 1 does not.
        let start = Instant::now();
        while start.elapsed() < STALL_AFTER + Duration::from_millis(600) {
            stats[0].beat();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!stats[0].is_stalled());
        assert!(stats[1].is_stalled());
        assert_eq!(stats[1].stalls(), 1);
        assert!(stats[1].snapshot().stalled, "snapshots carry it");
        // Shard 1 comes back.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(400) {
            stats[1].beat();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!stats[1].is_stalled());
        assert_eq!(stats[1].stalls(), 1, "one stall counted once");
        // An ended shard is not watched.
        stats[1].mark_ended();
        std::thread::sleep(STALL_AFTER + Duration::from_millis(300));
        assert!(!stats[1].is_stalled());
        // Both were rung all along.
        for end in [&mut shard_a, &mut shard_b] {
            end.set_nonblocking(true).unwrap();
            let mut rings = [0u8; 4096];
            let n = end.read(&mut rings).unwrap();
            assert!(n >= 20, "rung {n} times");
        }
        watchdog.stop();
    }
}
