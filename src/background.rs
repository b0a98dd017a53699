//! Background threads that talk to the network (the rotation controller, the topology
//! refresher): stopping one never waits for a slow server.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a stop waits for a background thread that was told to end.
pub const STOP_WAIT: Duration = Duration::from_millis(300);

/// Wait up to `wait` for `thread` to end, and join it if it did. A thread still in a network
/// read is left to end on its own (it checks its stop flag before acting on what it read).
/// Whether it ended.
pub fn join_within(thread: JoinHandle<()>, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while !thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if thread.is_finished() {
        let _ = thread.join();
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_thread_is_left_and_a_quick_one_joined() {
        let quick = std::thread::spawn(|| {});
        assert!(join_within(quick, Duration::from_secs(5)));
        let started = Instant::now();
        let stuck = std::thread::spawn(|| std::thread::sleep(Duration::from_secs(2)));
        assert!(!join_within(stuck, Duration::from_millis(50)));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
