//! The benchmark's receiver: listens on several ports (several next hops, so that the node's
//! shards share the forwarding), recognises each forwarded packet by its fingerprint, and
//! records its added latency. No Sphinx work: one hash lookup per packet.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::framing::FrameDecoder;

/// One sink address and the key packets for it are built with.
pub type SinkHop = (SocketAddr, PublicKey);

/// Shared between the sink threads and the benchmark.
pub struct SinkShared {
    /// Fingerprint -> packet index.
    pub fingerprints: HashMap<u64, u32>,
    /// When each packet was sent, in ns since `base`; `u64::MAX` before.
    pub send_ns: Vec<AtomicU64>,
    /// The clock origin of `send_ns`.
    pub base: Instant,
    /// The delay every packet asked for, ns.
    pub delay_ns: u64,
    /// Packets recognised.
    pub arrived: AtomicU64,
    /// Packets not recognised, or seen twice.
    pub unknown: AtomicU64,
    /// Arrivals at or after this (ns since `base`) go into the histogram.
    pub record_from_ns: AtomicU64,
    /// Added latency, µs.
    pub latency_us: Mutex<Histogram<u64>>,
    seen: Vec<AtomicBool>,
    stop: AtomicBool,
    /// The core the sink's threads keep to during this run (`usize::MAX`: any).
    pin_core: AtomicUsize,
    /// The cores this process could use when the sink started.
    all_cores: Vec<usize>,
    /// The sink's Noise key pair.
    pub noise: crate::noise::NoiseIdentity,
    /// Whether connections accepted now speak Noise (the sink answers the handshake).
    pub noise_on: AtomicBool,
    /// Noise handshakes or messages that failed at the sink (should be 0).
    pub noise_failures: AtomicU64,
}

impl SinkShared {
    /// Keep the sink's threads on `core` (None: anywhere) from now on: a run with a core the
    /// shards leave free keeps the sink off the shards' cores. Threads started later pin
    /// themselves; the accept threads re-pin on their next turn.
    pub fn pin_to(&self, core: Option<usize>) {
        self.pin_core
            .store(core.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// Apply [`Self::pin_to`] to the calling thread if it changed since `current`.
    fn keep_pinned(&self, current: &mut usize) {
        let wanted = self.pin_core.load(Ordering::Relaxed);
        if wanted == *current {
            return;
        }
        *current = wanted;
        let core = if wanted == usize::MAX {
            None
        } else {
            Some(wanted)
        };
        pin_current_thread(core, &self.all_cores);
    }

    /// Forget the previous run.
    pub fn reset(&self) {
        for s in &self.send_ns {
            s.store(u64::MAX, Ordering::Relaxed);
        }
        for s in &self.seen {
            s.store(false, Ordering::Relaxed);
        }
        self.arrived.store(0, Ordering::Relaxed);
        self.unknown.store(0, Ordering::Relaxed);
        self.noise_failures.store(0, Ordering::Relaxed);
        self.record_from_ns.store(u64::MAX, Ordering::Relaxed);
        if let Ok(mut h) = self.latency_us.lock() {
            h.reset();
        }
    }

    /// ns since `base`.
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// A running sink.
pub struct Sink {
    /// Its addresses and the key packets are built for.
    pub hops: Vec<(SocketAddr, PublicKey)>,
    /// Shared state.
    pub shared: Arc<SinkShared>,
    listeners: Vec<JoinHandle<()>>,
}

impl Sink {
    /// Bind `ports` listeners on 127.0.0.1.
    pub fn bind(ports: usize) -> std::io::Result<(Vec<TcpListener>, Vec<SinkHop>)> {
        let key = PublicKey::from(&StaticSecret::random());
        let mut listeners = Vec::new();
        let mut hops = Vec::new();
        for _ in 0..ports {
            let l = TcpListener::bind("127.0.0.1:0")?;
            l.set_nonblocking(true)?;
            hops.push((l.local_addr()?, key));
            listeners.push(l);
        }
        Ok((listeners, hops))
    }

    /// Start serving `listeners` for `count` packets with these fingerprints.
    pub fn start(
        listeners: Vec<TcpListener>,
        hops: Vec<(SocketAddr, PublicKey)>,
        fingerprints: HashMap<u64, u32>,
        count: usize,
        delay: Duration,
    ) -> std::io::Result<Sink> {
        let shared = Arc::new(SinkShared {
            fingerprints,
            send_ns: (0..count).map(|_| AtomicU64::new(u64::MAX)).collect(),
            base: Instant::now(),
            delay_ns: delay.as_nanos() as u64,
            arrived: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            record_from_ns: AtomicU64::new(u64::MAX),
            latency_us: Mutex::new(latency_histogram()),
            seen: (0..count).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
            pin_core: AtomicUsize::new(usize::MAX),
            all_cores: core_affinity::get_core_ids()
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.id)
                .collect(),
            noise: crate::noise::NoiseIdentity::from_private(StaticSecret::random().to_bytes()),
            noise_on: AtomicBool::new(false),
            noise_failures: AtomicU64::new(0),
        });
        let mut sink = Sink {
            hops,
            shared,
            listeners: Vec::new(),
        };
        for (i, listener) in listeners.into_iter().enumerate() {
            let shared = Arc::clone(&sink.shared);
            let handle = std::thread::Builder::new()
                .name(format!("sink-accept-{i}"))
                .spawn(move || accept(listener, &shared))?;
            sink.listeners.push(handle);
        }
        Ok(sink)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for l in self.listeners.drain(..) {
            let _ = l.join();
        }
    }
}

/// Pin the calling thread to `core`, or (None) let it run on any of `all`.
fn pin_current_thread(core: Option<usize>, all: &[usize]) {
    let cores: &[usize] = match &core {
        Some(id) => std::slice::from_ref(id),
        None => all,
    };
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it for ids below
    // CPU_SETSIZE, which the filter keeps to.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &id in cores.iter().filter(|&&id| id < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(id, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn accept(listener: TcpListener, shared: &Arc<SinkShared>) {
    let mut readers = Vec::new();
    let mut pinned = usize::MAX;
    while !shared.stop.load(Ordering::Relaxed) {
        shared.keep_pinned(&mut pinned);
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = Arc::clone(shared);
                if let Ok(handle) = std::thread::Builder::new()
                    .name("sink-read".into())
                    .spawn(move || read(stream, &shared))
                {
                    readers.push(handle);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    for r in readers {
        let _ = r.join();
    }
}

fn read(mut stream: TcpStream, shared: &SinkShared) {
    let mut pinned = usize::MAX;
    shared.keep_pinned(&mut pinned);
    let mut noise = None;
    if shared.noise_on.load(Ordering::Relaxed) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let responder =
            crate::noise::link::Handshake::responder(&shared.noise.private, &shared.noise.public);
        match crate::noise::blocking::handshake(&mut stream, responder) {
            Ok((transport, deframer)) => {
                noise = Some(crate::noise::blocking::NoiseSource::new(
                    transport, deframer,
                ))
            }
            Err(_) => {
                shared.noise_failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut decoder = FrameDecoder::new();
    let mut local = Some(latency_histogram());
    let mut pending = 0u32;
    while !shared.stop.load(Ordering::Relaxed) {
        let read = match noise.as_mut() {
            Some(noise) => noise.read(&mut stream, decoder.spare_mut()),
            None => stream.read(decoder.spare_mut()),
        };
        match read {
            Ok(0) => break,
            Ok(n) => decoder.advance(n),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                flush(shared, &mut local, &mut pending);
                continue;
            }
            Err(_) => {
                if noise.is_some() {
                    shared.noise_failures.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        }
        let now_ns = shared.now_ns();
        let record_from = shared.record_from_ns.load(Ordering::Relaxed);
        while let Ok(Some(frame)) = decoder.next_frame() {
            if frame.packet.len() < 8 {
                shared.unknown.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let print = super::prepare::fingerprint(frame.packet);
            let Some(&index) = shared.fingerprints.get(&print) else {
                shared.unknown.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if shared.seen[index as usize].swap(true, Ordering::Relaxed) {
                shared.unknown.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            shared.arrived.fetch_add(1, Ordering::Relaxed);
            let sent = shared.send_ns[index as usize].load(Ordering::Relaxed);
            if now_ns >= record_from && sent != u64::MAX {
                let added_ns = now_ns.saturating_sub(sent).saturating_sub(shared.delay_ns);
                if let Some(h) = local.as_mut() {
                    let _ = h.record((added_ns / 1000).max(1));
                    pending += 1;
                }
            }
        }
        if pending >= 1024 {
            flush(shared, &mut local, &mut pending);
        }
    }
    flush(shared, &mut local, &mut pending);
}

fn flush(shared: &SinkShared, local: &mut Option<Histogram<u64>>, pending: &mut u32) {
    if *pending == 0 {
        return;
    }
    if let (Some(h), Ok(mut total)) = (local.as_mut(), shared.latency_us.lock()) {
        let _ = total.add(&*h);
        h.reset();
    }
    *pending = 0;
}

/// A histogram of µs from 1 µs to 10 minutes, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}
