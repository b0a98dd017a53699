//! Counting the system calls one shard's thread makes, for syscalls per forwarded packet.
//!
//! With io_uring, the I/O a shard asks for is not one system call per read or write: glommio
//! submits many operations per `io_uring_enter`, and some wake-ups (a doorbell to a sleeping
//! shard) are an `eventfd` write. The honest figure is the kernel's own count, so each shard
//! opens a perf counter on the `raw_syscalls:sys_enter` tracepoint for its own thread at start.
//! The kernel counts every system call the thread enters; reading the counter (from any
//! thread, by its descriptor) costs a `read` on the reader's thread, never the shard's.
//!
//! Opening needs the tracepoint's id from tracefs and permission to count a kernel
//! tracepoint (root, `CAP_PERFMON`, or `kernel.perf_event_paranoid` at -1); where either is
//! missing the figure is unavailable (None), and nothing else changes.
//!
//! `perf_event_attr` is declared here, in its first published layout (`PERF_ATTR_SIZE_VER0`,
//! 64 bytes, which every kernel accepts): the `libc` crate does not declare it, and one
//! counter does not justify another dependency.

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};

/// Where the tracepoint's id may be, depending on where tracefs is mounted.
const TRACEPOINT_ID_PATHS: [&str; 2] = [
    "/sys/kernel/tracing/events/raw_syscalls/sys_enter/id",
    "/sys/kernel/debug/tracing/events/raw_syscalls/sys_enter/id",
];

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_ATTR_SIZE_VER0: u32 = 64;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// The first 64 bytes of the kernel's `struct perf_event_attr`.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// Bit fields (`disabled`, `inherit`, ...): all clear, so the counter runs from the start
    /// and counts kernel entries.
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const _: () = assert!(std::mem::size_of::<PerfEventAttr>() == PERF_ATTR_SIZE_VER0 as usize);

/// The system calls one thread entered since the counter was opened.
#[derive(Debug)]
pub struct SyscallCounter {
    file: File,
}

impl SyscallCounter {
    /// A counter for the calling thread, or None where the kernel or the permissions do not
    /// allow one.
    pub fn for_this_thread() -> Option<SyscallCounter> {
        let id = TRACEPOINT_ID_PATHS
            .iter()
            .find_map(|path| std::fs::read_to_string(path).ok())?
            .trim()
            .parse::<u64>()
            .ok()?;
        let attr = PerfEventAttr {
            kind: PERF_TYPE_TRACEPOINT,
            size: PERF_ATTR_SIZE_VER0,
            config: id,
            ..PerfEventAttr::default()
        };
        // SAFETY: `attr` is a valid, initialised perf_event_attr of the size it declares, and
        // lives across the call; pid 0 and cpu -1 count the calling thread on any CPU, with no
        // group (-1).
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                0 as libc::pid_t,
                -1 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: the kernel just returned this descriptor, owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        Some(SyscallCounter {
            file: File::from(owned),
        })
    }

    /// System calls counted so far, or None if the counter cannot be read.
    pub fn read(&self) -> Option<u64> {
        let mut value = [0u8; 8];
        (&self.file).read_exact(&mut value).ok()?;
        Some(u64::from_ne_bytes(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where counting is allowed, the count grows by at least the calls made; elsewhere the
    /// counter is None and that is all.
    #[test]
    fn a_threads_counter_sees_its_own_system_calls() {
        let Some(counter) = SyscallCounter::for_this_thread() else {
            eprintln!("no syscall counter here (no tracefs or no permission)");
            return;
        };
        let before = counter.read().expect("readable");
        for _ in 0..100 {
            // SAFETY: getppid has no preconditions; it is a real system call each time.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        let after = counter.read().expect("readable");
        assert!(after - before >= 100, "{before} -> {after}");
        // Another thread's calls are not this thread's.
        let quiet = counter.read().expect("readable");
        std::thread::spawn(|| {
            for _ in 0..1000 {
                // SAFETY: as above.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
        })
        .join()
        .expect("thread");
        let later = counter.read().expect("readable");
        assert!(later - quiet < 100, "{quiet} -> {later}");
    }
}
