//! The HTTP API on the configured port (default 8000), served off the data plane.
//!
//! Routes (shapes in the operator guide, README.md):
//! `/description`, `/stats` (`?debug=true`), `/verloc`, `/hardware` as the Nym mixnode
//! served them; `/health`; `/metrics` (Prometheus text); `/` (a page for a person) and
//! `/live` (the JSON it polls). Anything else is a 404 with a short text body.
//!
//! Shape: [`route`] is a pure function from a request target and a [`RouteContext`] (the
//! shards' snapshots, the [`collect::Collector`]'s state, `now`) to a [`server::Response`].
//! The driver is [`ApiServer`]: a control thread that accepts connections, drains the shards'
//! telemetry reports and ticks the collector, plus a fixed pool of worker threads that read
//! one bounded request each ([`server`] says why this is not tiny_http, and lists the limits).
//!
//! The data plane is never blocked: shards publish relaxed atomics ([`ShardStats`]) and send
//! telemetry with `try_send`; this module only reads. Nor is it starved: the API's threads
//! run at the lowest scheduling priority ([`API_THREAD_NICE`]).

pub mod collect;
pub mod hardware;
pub mod metrics;
pub mod nym_node;
pub mod page;
pub mod server;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::config::description::{Description, LiveDescription};
use crate::config::HttpSection;
use crate::shard::stats::{ShardSnapshot, ShardStats};
use crate::shard::telemetry::TelemetryReport;
use crate::verloc::VerlocResults;
use collect::Collector;
use server::{Response, ServerCounters, ServerCounts};

/// How long the control thread waits for a connection before it ticks the collector.
pub const CONTROL_POLL: Duration = Duration::from_millis(100);
/// The control round's wait while it holds connections for which no worker was free.
pub const BUSY_POLL: Duration = Duration::from_millis(5);
/// Connections accepted per control round before the collector gets a turn.
pub const ACCEPTS_PER_ROUND_MAX: usize = 256;
/// Stack of each worker thread (a request head buffer lives on it).
pub const WORKER_STACK_BYTES: usize = 256 << 10;
/// Scheduling niceness of the API's threads (Linux: per thread). At 19 the kernel gives them
/// about 1.5% of a core the shards also want, so API load cannot take CPU from the data plane,
/// while a request (well under a millisecond of work) is still answered promptly.
pub const API_THREAD_NICE: i32 = 19;

/// Lower the calling thread's priority to [`API_THREAD_NICE`]; a failure only costs priority.
pub fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on our own thread id; no memory is passed.
    unsafe {
        let tid = libc::gettid();
        let _ = libc::setpriority(libc::PRIO_PROCESS as _, tid as libc::id_t, API_THREAD_NICE);
    }
}

/// What the API serves, fixed at start or shared read-only with other parts of the node.
pub struct ApiState {
    /// When the node started.
    pub started: Instant,
    /// The same moment in calendar time.
    pub started_wall: SystemTime,
    /// The identity public key, base58.
    pub identity: String,
    /// The node's description, followed in its file.
    pub description: LiveDescription,
    /// The packet engine's per-shard figures (published by the shards, read here).
    pub shards: Arc<Vec<ShardStats>>,
    /// `[http]` from the config.
    pub http: HttpSection,
    /// The latest VerLoc run; the VerLoc measurer writes it.
    pub verloc: Arc<VerlocResults>,
    /// VerLoc's counters, for /metrics (None until given, see [`ApiState::with_verloc_stats`]).
    pub verloc_stats: Option<crate::verloc::VerlocStatsReader>,
    /// This machine's hardware, read once.
    pub hardware: hardware::Hardware,
    /// What `/api/v1/` says of the node.
    pub me: nym_node::SelfDescription,
    /// The monitor's record (None: off).
    pub monitor: Option<Arc<Mutex<crate::monitor::Monitor>>>,
}

impl ApiState {
    /// State for a node that started at `started`.
    pub fn new(
        started: Instant,
        identity: String,
        description: Description,
        shards: Arc<Vec<ShardStats>>,
        http: HttpSection,
        verloc: Arc<VerlocResults>,
        me: nym_node::SelfDescription,
    ) -> ApiState {
        let started_wall = SystemTime::now() - started.elapsed();
        ApiState {
            started,
            started_wall,
            identity,
            description: LiveDescription::new(description),
            shards,
            http,
            verloc,
            verloc_stats: None,
            hardware: hardware::read(),
            me,
            monitor: None,
        }
    }

    /// Serve `/report` and `/history` from `record` (None: the monitor is off).
    pub fn with_monitor(mut self, record: Option<Arc<Mutex<crate::monitor::Monitor>>>) -> ApiState {
        self.monitor = record;
        self
    }

    /// Export VerLoc's counters on /metrics, read through `reader`.
    pub fn with_verloc_stats(mut self, reader: crate::verloc::VerlocStatsReader) -> ApiState {
        self.verloc_stats = Some(reader);
        self
    }
}

/// Everything one request may look at.
pub struct RouteContext<'a> {
    /// Now.
    pub now: Instant,
    /// Fixed state.
    pub state: &'a ApiState,
    /// Each shard's figures, read for this request.
    pub shards: &'a [ShardSnapshot],
    /// The control thread's latest published state.
    pub collector: &'a Collector,
    /// The API server's own counters.
    pub server: &'a ServerCounts,
    /// The latest VerLoc run, as `/verloc` shows it.
    pub verloc: &'a serde_json::Value,
    /// The description now.
    pub description: &'a Description,
    /// This process's figures for /metrics (read by the driver, not by `route`).
    pub process: Option<metrics::ProcessFigures>,
    /// VerLoc's counters for /metrics (read by the driver).
    pub verloc_stats: Option<crate::verloc::VerlocStats>,
    /// What an `/api/v1/` route needs read (by the driver).
    pub v1: &'a nym_node::V1Figures,
    /// Outbound HTTP(S) calls for /metrics (read by the driver): (purpose, outcome, count).
    pub outbound: Vec<(&'static str, &'static str, u64)>,
    /// The monitor's document for `/report` or `/history`, or its totals for /metrics (read
    /// by the driver); None when the monitor is off.
    pub monitor: Option<MonitorFigures>,
}

/// What the monitor's record gave for one request.
#[derive(Clone, Debug, Default)]
pub struct MonitorFigures {
    /// `/report` or `/history`, when asked.
    pub document: Option<serde_json::Value>,
    /// Loops by family (IPv4, IPv6), for /metrics.
    pub totals: [crate::monitor::Tally; 2],
    /// Loops per path (from, to), for /metrics.
    pub paths: Vec<(String, String, crate::monitor::Tally)>,
}

/// `/health`: 200 and `"status": "up"`, or 503 and `"status": "stalled"` with the shards the
/// watchdog sees stalled. `/api/v1/health` (`v1`) names the uptime `uptime`, as nym-node does.
pub fn health(shards: &[ShardSnapshot], uptime: Duration, v1: bool) -> Response {
    let stalled: Vec<usize> = shards
        .iter()
        .enumerate()
        .filter(|(_, s)| s.stalled)
        .map(|(i, _)| i)
        .collect();
    let uptime_field = if v1 { "uptime" } else { "uptime_s" };
    let (status, word) = if stalled.is_empty() {
        (200, "up")
    } else {
        (503, "stalled")
    };
    let mut body = serde_json::json!({"status": word, "shards_stalled": stalled});
    body[uptime_field] = uptime.as_secs().into();
    json(status, &body)
}

/// Connections that found every worker busy, held by the control thread for a moment: a
/// health check among them is answered here, anything else gets 503.
struct BusyConnections {
    held: std::collections::VecDeque<(std::net::TcpStream, Instant)>,
}

/// Connections held while every worker is busy.
pub const BUSY_HELD_MAX: usize = 256;
/// How long a held connection may take to send its request head.
pub const BUSY_HOLD: Duration = Duration::from_millis(300);

impl BusyConnections {
    fn new() -> BusyConnections {
        BusyConnections {
            held: std::collections::VecDeque::new(),
        }
    }

    /// Hold `stream` (the oldest held one is refused if there is no room).
    fn hold(
        &mut self,
        stream: std::net::TcpStream,
        now: Instant,
        counters: &server::ServerCounters,
    ) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        if self.held.len() >= BUSY_HELD_MAX {
            if let Some((oldest, _)) = self.held.pop_front() {
                server::refuse_busy(oldest, counters);
            }
        }
        self.held.push_back((stream, now));
    }

    /// Look at what each held connection sent: answer health checks, pass other whole
    /// requests to a worker if one has room (else 503), and refuse the rest when their time
    /// is up.
    fn serve(&mut self, now: Instant, shared: &Shared, queue: &Sender<Dispatched>) {
        let mut keep = std::collections::VecDeque::with_capacity(self.held.len());
        while let Some((stream, since)) = self.held.pop_front() {
            let mut head = [0u8; server::REQUEST_HEAD_BYTES_MAX];
            let peeked = match stream.peek(&mut head) {
                Ok(0) => continue, // Closed by the client.
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(_) => continue,
            };
            match server::parse_head(&head[..peeked]) {
                Ok(Some(request)) => {
                    let path = request.target.split('?').next().unwrap_or("");
                    if matches!(path, "/health" | "/api/v1/health") {
                        let shards: Vec<ShardSnapshot> = shared
                            .state
                            .shards
                            .iter()
                            .map(ShardStats::snapshot)
                            .collect();
                        let response = health(
                            &shards,
                            now.saturating_duration_since(shared.state.started),
                            path == "/api/v1/health",
                        );
                        server::answer(stream, &response, request.head_only, &shared.counters);
                    } else if let Err((stream, _)) = dispatch(stream, shared, queue) {
                        // Make room: a worker still reading a slow head after a second is
                        // freed, and this request tries again next round while it may.
                        if shared.serving.evict_slowest(now).is_some() {
                            shared.counters.count_evicted();
                        }
                        if now.saturating_duration_since(since) < BUSY_HOLD {
                            keep.push_back((stream, since));
                        } else {
                            server::refuse_busy(stream, &shared.counters);
                        }
                    }
                }
                Ok(None)
                    if now.saturating_duration_since(since) < BUSY_HOLD && peeked < head.len() =>
                {
                    keep.push_back((stream, since));
                }
                Ok(None) | Err(_) => server::refuse_busy(stream, &shared.counters),
            }
        }
        self.held = keep;
    }
}

fn json(status: u16, value: &serde_json::Value) -> Response {
    Response {
        status,
        content_type: "application/json",
        body: value.to_string(),
    }
}

/// Answer one request target (path and query): pure.
pub fn route(target: &str, cx: &RouteContext) -> Response {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let state = cx.state;
    let uptime = cx.now.saturating_duration_since(state.started);
    let live = || {
        page::live(&page::LiveInput {
            identity: &state.identity,
            name: &cx.description.name,
            version: crate::config::VERSION,
            uptime,
            shards: cx.shards,
            collector: cx.collector,
        })
    };
    match path {
        "/" => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: page::page(&live()),
        },
        "/live" => json(200, &live()),
        "/health" => health(cx.shards, uptime, false),
        "/api/v1/health" => health(cx.shards, uptime, true),
        "/description" => json(
            200,
            &serde_json::to_value(cx.description).unwrap_or_default(),
        ),
        "/stats" => {
            let debug = query.split('&').any(|kv| kv == "debug=true");
            json(200, &cx.collector.stats.render(debug))
        }
        "/verloc" => json(200, cx.verloc),
        "/report" | "/history" => match cx.monitor.as_ref().and_then(|m| m.document.as_ref()) {
            Some(document) => json(200, document),
            None => json(
                503,
                &serde_json::json!({"message": "the monitor is off (monitor.enabled = false in config.toml)"}),
            ),
        },
        "/hardware" => json(
            200,
            &serde_json::to_value(&state.hardware).unwrap_or_default(),
        ),
        "/metrics" | "/api/v1/metrics/prometheus" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics::render(&metrics::MetricsInput {
                version: crate::config::VERSION,
                uptime_seconds: uptime.as_secs_f64(),
                shards: cx.shards,
                telemetry: &cx.collector.telemetry,
                server: cx.server,
                process: cx.process,
                verloc: cx.verloc_stats.as_ref(),
                outbound: &cx.outbound,
                monitor: cx.monitor.as_ref().map(|m| (m.totals, m.paths.as_slice())),
            }),
        },
        _ if path.starts_with("/api/v1/") || path == "/api/v1" => {
            let stats = &cx.collector.stats;
            nym_node::route(
                path,
                &nym_node::V1Input {
                    me: &state.me,
                    uptime,
                    shards: cx.shards,
                    stats: (&stats.previous, &stats.current),
                    description: cx.description,
                    hardware: &state.hardware,
                    figures: cx.v1,
                },
            )
            .unwrap_or_else(|| nym_node::not_found(path))
        }
        _ => Response::text(
            404,
            "not found; try /, /health, /description, /stats, /verloc, /hardware or /metrics\n",
        ),
    }
}

/// A running API server; stop it with [`ApiServer::stop`].
pub struct ApiServer {
    shared: Arc<Shared>,
    control: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
}

struct Shared {
    state: ApiState,
    serving: Serving,
    counters: ServerCounters,
    collector: Mutex<Arc<Collector>>,
    stop: AtomicBool,
}

/// A connection for a worker, with its source address.
type Dispatched = (std::net::TcpStream, IpAddr);

/// A worker's connection, seen from the control thread.
struct Slot {
    ip: IpAddr,
    since: Instant,
    /// Still reading the request head (a slow client is evicted only then).
    reading: bool,
    /// A handle on the same socket, to shut it down on eviction.
    stream: std::net::TcpStream,
}

/// What the workers serve: each worker's connection, and the connections given to workers
/// (queued or served) per source address. Locked by the control thread and the workers a few
/// times per request; never by the packet path.
struct Serving {
    slots: Vec<Mutex<Option<Slot>>>,
    per_ip: Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// A worker still reading a request head this long may be evicted for a new connection.
pub const EVICT_READING_AFTER: Duration = Duration::from_secs(1);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Serving {
    fn new(workers: usize) -> Serving {
        Serving {
            slots: (0..workers).map(|_| Mutex::new(None)).collect(),
            per_ip: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Reserve a place for a connection from `ip` if it has fewer than `max`.
    fn try_take(&self, ip: IpAddr, max: usize) -> bool {
        let mut per_ip = lock(&self.per_ip);
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= max.max(1) {
            return false;
        }
        *count += 1;
        true
    }

    /// The connection from `ip` is done (or was not queued after all).
    fn give_back(&self, ip: IpAddr) {
        let mut per_ip = lock(&self.per_ip);
        if let Some(count) = per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    fn start(&self, worker: usize, ip: IpAddr, stream: &std::net::TcpStream) {
        if let Ok(stream) = stream.try_clone() {
            *lock(&self.slots[worker]) = Some(Slot {
                ip,
                since: Instant::now(),
                reading: true,
                stream,
            });
        }
    }

    fn head_read(&self, worker: usize) {
        if let Some(slot) = lock(&self.slots[worker]).as_mut() {
            slot.reading = false;
        }
    }

    fn finish(&self, worker: usize) {
        *lock(&self.slots[worker]) = None;
    }

    /// Shut the connection of the worker longest reading a request head, if one has been
    /// for [`EVICT_READING_AFTER`]: that worker then takes the next connection. Whether one
    /// was.
    fn evict_slowest(&self, now: Instant) -> Option<IpAddr> {
        let mut oldest: Option<(usize, Instant)> = None;
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(slot) = lock(slot).as_ref() {
                let slow = slot.reading
                    && now.saturating_duration_since(slot.since) >= EVICT_READING_AFTER;
                if slow && oldest.is_none_or(|(_, since)| slot.since < since) {
                    oldest = Some((i, slot.since));
                }
            }
        }
        let (worker, _) = oldest?;
        let slot = lock(&self.slots[worker]);
        let slot = slot.as_ref()?;
        let _ = slot.stream.shutdown(std::net::Shutdown::Both);
        Some(slot.ip)
    }
}

/// Why [`dispatch`] gave a connection back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NotDispatched {
    /// Its address has `http.connections_per_ip_max` with the workers already.
    PerIp,
    /// Every worker and queue slot is taken.
    Busy,
}

/// Give `stream` to a worker if its address is under its cap and the queue has room; else
/// hand it back, saying why.
fn dispatch(
    stream: std::net::TcpStream,
    shared: &Shared,
    queue: &Sender<Dispatched>,
) -> Result<(), (std::net::TcpStream, NotDispatched)> {
    let Ok(ip) = stream.peer_addr().map(|a| a.ip()) else {
        return Err((stream, NotDispatched::Busy));
    };
    if !shared
        .serving
        .try_take(ip, shared.state.http.connections_per_ip_max)
    {
        return Err((stream, NotDispatched::PerIp));
    }
    if stream.set_nonblocking(false).is_err() {
        shared.serving.give_back(ip);
        return Err((stream, NotDispatched::Busy));
    }
    match queue.try_send((stream, ip)) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full((stream, ip)) | TrySendError::Disconnected((stream, ip))) => {
            shared.serving.give_back(ip);
            Err((stream, NotDispatched::Busy))
        }
    }
}

/// The API could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve the HTTP API on {addr}: {detail}")]
pub struct ApiError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    pub detail: String,
}

impl ApiServer {
    /// Bind `addr` and serve: one control thread and `concurrent_requests_max` workers. The
    /// control thread reads the shards' `telemetry` reports.
    pub fn start(
        addr: SocketAddr,
        state: ApiState,
        telemetry: Receiver<TelemetryReport>,
    ) -> Result<ApiServer, ApiError> {
        let fail = |detail: String| ApiError { addr, detail };
        let listener = TcpListener::bind(addr).map_err(|e| fail(e.to_string()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| fail(e.to_string()))?;
        let local_addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
        let workers_max = state.http.concurrent_requests_max.max(1);
        let now = Instant::now();
        let collector = Collector::new(state.http.stats_interval, now, SystemTime::now());
        let shared = Arc::new(Shared {
            collector: Mutex::new(Arc::new(collector.clone())),
            serving: Serving::new(workers_max),
            state,
            counters: ServerCounters::default(),
            stop: AtomicBool::new(false),
        });
        // Connections accepted but not yet taken by a worker: as many as there are workers.
        let (queue_tx, queue_rx) = crossbeam_channel::bounded::<Dispatched>(workers_max);
        let mut workers = Vec::with_capacity(workers_max);
        for i in 0..workers_max {
            let worker_shared = Arc::clone(&shared);
            let queue_rx = queue_rx.clone();
            let worker = std::thread::Builder::new()
                .name(format!("http-api-{i}"))
                .stack_size(WORKER_STACK_BYTES)
                .spawn(move || {
                    lower_thread_priority();
                    while let Ok((stream, ip)) = queue_rx.recv() {
                        worker_shared.serving.start(i, ip, &stream);
                        handle(&worker_shared, i, stream);
                        worker_shared.serving.finish(i);
                        worker_shared.serving.give_back(ip);
                    }
                });
            match worker {
                Ok(w) => workers.push(w),
                Err(e) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    drop(queue_tx);
                    for w in workers {
                        let _ = w.join();
                    }
                    return Err(fail(format!("cannot start worker thread: {e}")));
                }
            }
        }
        let control = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("http-api".to_string())
                .spawn(move || control_loop(&shared, listener, queue_tx, telemetry, collector))
        };
        let control = match control {
            Ok(c) => c,
            Err(e) => {
                shared.stop.store(true, Ordering::Relaxed);
                for w in workers {
                    let _ = w.join();
                }
                return Err(fail(format!("cannot start the control thread: {e}")));
            }
        };
        Ok(ApiServer {
            shared,
            control: Some(control),
            workers,
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shards' added-latency histogram (ns) as of their latest reports (about once a
    /// second), cumulative since start.
    pub fn added_latency(&self) -> hdrhistogram::Histogram<u64> {
        match self.shared.collector.lock() {
            Ok(c) => c.telemetry.added_latency_nanos.clone(),
            Err(poisoned) => poisoned.into_inner().telemetry.added_latency_nanos.clone(),
        }
    }

    /// Stop serving and join the threads (at most one read poll per worker).
    pub fn stop(mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(control) = self.control.take() {
            let _ = control.join();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn handle(shared: &Shared, worker: usize, stream: std::net::TcpStream) {
    let state = &shared.state;
    server::serve_connection(
        stream,
        state.http.request_timeout,
        &shared.stop,
        &shared.counters,
        |head| {
            shared.serving.head_read(worker);
            let collector = match shared.collector.lock() {
                Ok(c) => Arc::clone(&c),
                Err(poisoned) => Arc::clone(&poisoned.into_inner()),
            };
            let verloc = state.verloc.to_json();
            let shards: Vec<ShardSnapshot> =
                state.shards.iter().map(ShardStats::snapshot).collect();
            let path = head.target.split('?').next().unwrap_or("");
            let prometheus = matches!(path, "/metrics" | "/api/v1/metrics/prometheus");
            let v1 = nym_node::V1Figures {
                host_information: (path == "/api/v1/host-information")
                    .then(|| state.me.signed_host_information()),
                machine_load: (path == "/api/v1/load").then(machine_load).flatten(),
                verloc: (path == "/api/v1/metrics/verloc").then(|| state.verloc.runs()),
            };
            route(
                &head.target,
                &RouteContext {
                    now: Instant::now(),
                    state,
                    shards: &shards,
                    collector: &collector,
                    server: &shared.counters.snapshot(),
                    verloc: &verloc,
                    description: &state.description.current(),
                    process: prometheus
                        .then(|| metrics::ProcessFigures::read(state.started_wall))
                        .flatten(),
                    verloc_stats: state
                        .verloc_stats
                        .as_ref()
                        .filter(|_| prometheus)
                        .map(|r| r.read()),
                    v1: &v1,
                    monitor: state.monitor.as_ref().map(|record| {
                        let record = record.lock().unwrap_or_else(|e| e.into_inner());
                        let identity = &state.identity;
                        MonitorFigures {
                            document: match path {
                                "/report" => Some(record.report(identity, SystemTime::now())),
                                "/history" => Some(record.history(identity, SystemTime::now())),
                                _ => None,
                            },
                            totals: [
                                record.totals(crate::monitor::Family::V4),
                                record.totals(crate::monitor::Family::V6),
                            ],
                            paths: if prometheus {
                                record
                                    .paths()
                                    .map(|((from, to), tally)| {
                                        (from.to_string(), to.to_string(), *tally)
                                    })
                                    .collect()
                            } else {
                                Vec::new()
                            },
                        }
                    }),
                    outbound: if prometheus {
                        crate::topology::fetch::COUNTERS.snapshot()
                    } else {
                        Vec::new()
                    },
                },
            )
        },
    );
}

/// The one-minute load average over the CPUs this process may use (`/proc/loadavg`).
fn machine_load() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let one_minute: f64 = text.split_whitespace().next()?.parse().ok()?;
    let cores = std::thread::available_parallelism().ok()?.get() as f64;
    Some(one_minute / cores)
}

/// Wait up to `timeout` for `listener` to have a connection ready.
fn wait_readable(listener: &TcpListener, timeout: Duration) {
    let mut fds = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe {
        libc::poll(&mut fds, 1, timeout.as_millis() as libc::c_int);
    }
}

fn control_loop(
    shared: &Shared,
    listener: TcpListener,
    queue: Sender<Dispatched>,
    telemetry: Receiver<TelemetryReport>,
    mut collector: Collector,
) {
    lower_thread_priority();
    let mut last_error_log: Option<Instant> = None;
    let mut busy = BusyConnections::new();
    while !shared.stop.load(Ordering::Relaxed) {
        // Held connections are looked at every few milliseconds.
        let poll = if busy.held.is_empty() {
            CONTROL_POLL
        } else {
            BUSY_POLL
        };
        wait_readable(&listener, poll);
        busy.serve(Instant::now(), shared, &queue);
        // Connections wait for a worker: free one that is still reading a slow head.
        if !queue.is_empty() && shared.serving.evict_slowest(Instant::now()).is_some() {
            shared.counters.count_evicted();
        }
        for _ in 0..ACCEPTS_PER_ROUND_MAX {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err((stream, why)) = dispatch(stream, shared, &queue) {
                        // Every worker busy, or this address at its cap: the connection is
                        // held here, where a health check is still answered and another
                        // request waits a moment for a worker (made free by evicting the
                        // slowest reader if need be).
                        let now = Instant::now();
                        match why {
                            NotDispatched::PerIp => shared.counters.count_refused_per_ip(),
                            NotDispatched::Busy => {
                                if shared.serving.evict_slowest(now).is_some() {
                                    shared.counters.count_evicted();
                                }
                            }
                        }
                        busy.hold(stream, now, &shared.counters);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // Out of descriptors or a transient error: log once a minute, back off.
                    let now = Instant::now();
                    if last_error_log
                        .is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
                    {
                        tracing::warn!(error = %e, "http api: accept failed; backing off");
                        last_error_log = Some(now);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
            }
        }
        let mut changed = false;
        while let Ok(report) = telemetry.try_recv() {
            collector.on_report(report);
            changed = true;
        }
        let shards: Vec<ShardSnapshot> = shared
            .state
            .shards
            .iter()
            .map(ShardStats::snapshot)
            .collect();
        changed |= collector.tick(Instant::now(), SystemTime::now(), &shards);
        if changed {
            let published = Arc::new(collector.clone());
            match shared.collector.lock() {
                Ok(mut c) => *c = published,
                Err(poisoned) => *poisoned.into_inner() = published,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ApiState {
        ApiState::new(
            Instant::now(),
            "Ident".into(),
            Description {
                name: "n".into(),
                ..Default::default()
            },
            Arc::new(vec![ShardStats::default(), ShardStats::default()]),
            HttpSection::default(),
            Arc::new(VerlocResults::new()),
            nym_node::SelfDescription::new(
                ed25519_dalek::SigningKey::from_bytes(&[5; 32]),
                crate::rotation::AnnouncedKeys::new(crate::rotation::Announced {
                    primary: (crate::rotation::LEGACY_ROTATION_ID, [6; 32]),
                    pre_announced: None,
                }),
            ),
        )
    }

    fn get(target: &str, state: &ApiState) -> Response {
        let collector = Collector::new(Duration::from_secs(30), state.started, state.started_wall);
        let shards: Vec<_> = state.shards.iter().map(ShardStats::snapshot).collect();
        let verloc = state.verloc.to_json();
        route(
            target,
            &RouteContext {
                now: state.started + Duration::from_secs(42),
                state,
                shards: &shards,
                collector: &collector,
                server: &ServerCounts::default(),
                verloc: &verloc,
                description: &state.description.current(),
                process: Some(metrics::ProcessFigures {
                    cpu_seconds: 1.5,
                    resident_bytes: 4096,
                    ..Default::default()
                }),
                verloc_stats: None,
                v1: &nym_node::V1Figures::default(),
                outbound: vec![("topology", "tls", 2)],
                monitor: None,
            },
        )
    }

    #[test]
    fn api_v1_routes_answer_json_and_unknown_ones_a_json_404() {
        let state = state();
        for path in [
            "/api/v1/health",
            "/api/v1/host-information",
            "/api/v1/build-information",
            "/api/v1/roles",
            "/api/v1/auxiliary-details",
            "/api/v1/gateway/client-interfaces/mixnet-websockets",
            "/api/v1/description",
            "/api/v1/system-info",
            "/api/v1/load",
            "/api/v1/mixnode",
            "/api/v1/metrics/mixing",
            "/api/v1/metrics/packets-stats",
            "/api/v1/metrics/verloc",
        ] {
            let r = get(path, &state);
            assert_eq!(
                (r.status, r.content_type),
                (200, "application/json"),
                "{path}"
            );
            let _: serde_json::Value = serde_json::from_str(&r.body).expect(path);
        }
        let health: serde_json::Value =
            serde_json::from_str(&get("/api/v1/health", &state).body).unwrap();
        assert_eq!(
            (health["status"].as_str(), health["uptime"].as_u64()),
            (Some("up"), Some(42))
        );
        let build: serde_json::Value =
            serde_json::from_str(&get("/api/v1/build-information", &state).body).unwrap();
        assert_eq!(build["binary_name"], "nym-mixnode");
        assert_eq!(build["build_version"], crate::config::VERSION);
        let host: serde_json::Value =
            serde_json::from_str(&get("/api/v1/host-information", &state).body).unwrap();
        assert_eq!(
            host["data"]["keys"]["primary_x25519_sphinx_key"]["rotation_id"],
            u32::MAX
        );
        let prometheus = get("/api/v1/metrics/prometheus", &state);
        assert!(prometheus
            .body
            .contains("nym_mixnode_packets_received_total"));
        assert!(prometheus.body.contains(
            "nym_mixnode_outbound_requests_total{purpose=\"topology\",outcome=\"tls\"} 2\n"
        ));
        for unknown in ["/api/v1/nope", "/api/v1", "/api/v1/metrics/sessions"] {
            let r = get(unknown, &state);
            assert_eq!(
                (r.status, r.content_type),
                (404, "application/json"),
                "{unknown}"
            );
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert!(
                body["message"].as_str().unwrap().contains(unknown),
                "{}",
                r.body
            );
        }
        assert_eq!(
            get("/nope", &state).content_type,
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn metrics_carry_the_process_figures_and_accept_errors() {
        let state = state();
        let body = get("/metrics", &state).body;
        assert!(body.contains("process_cpu_seconds_total 1.5"), "{body}");
        assert!(
            body.contains("process_resident_memory_bytes 4096"),
            "{body}"
        );
        assert!(body.contains("# TYPE process_open_fds gauge"), "{body}");
        assert!(
            body.contains("nym_mixnode_accept_errors_total{shard=\"1\"} 0"),
            "{body}"
        );
    }

    #[test]
    fn routes() {
        let state = state();
        let r = get("/health", &state);
        assert_eq!((r.status, r.content_type), (200, "application/json"));
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status": "up", "uptime_s": 42, "shards_stalled": []})
        );
        // A stalled shard turns /health into a 503 that names it.
        let stalled = ShardSnapshot {
            stalled: true,
            ..ShardSnapshot::default()
        };
        let r = health(
            &[ShardSnapshot::default(), stalled],
            Duration::from_secs(5),
            false,
        );
        assert_eq!(r.status, 503);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status": "stalled", "uptime_s": 5, "shards_stalled": [1]})
        );
        let r = get("/description?x=1", &state);
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        for key in ["name", "description", "link", "location"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        let r = get("/stats", &state);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 8);
        assert!(v["packets_sent_since_startup"].is_u64());
        let v: serde_json::Value =
            serde_json::from_str(&get("/stats?debug=true", &state).body).unwrap();
        assert!(v["packets_sent_since_startup"].is_object());
        assert!(v["packets_explicitly_dropped_since_last_update"].is_object());
        let v: serde_json::Value = serde_json::from_str(&get("/verloc", &state).body).unwrap();
        assert_eq!(v["total_tested"], 0);
        assert!(v["results"].as_array().unwrap().is_empty());
        let v: serde_json::Value = serde_json::from_str(&get("/hardware", &state).body).unwrap();
        assert!(v["num_cores"].as_u64().unwrap() >= 1);
        let r = get("/metrics", &state);
        assert!(r.content_type.starts_with("text/plain; version=0.0.4"));
        assert!(r
            .body
            .contains("nym_mixnode_packets_received_total{shard=\"1\"} 0"));
        let r = get("/", &state);
        assert!(r.body.contains("<canvas") && r.body.contains("Ident"));
        let r = get("/live", &state);
        assert_eq!(r.status, 200);
        let r = get("/nope", &state);
        assert_eq!(
            (r.status, r.content_type),
            (404, "text/plain; charset=utf-8")
        );
        assert!(r.body.len() < 200);
    }
}
