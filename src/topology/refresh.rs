//! Reading the known nodes (driver): from a topology file or URL, or from nym-api's node
//! list, at start and then every `topology.refresh_interval` on a thread of its own. A
//! refresh that fails keeps the set the shards have and is logged; the first read at start
//! must succeed, or the node does not start.

use std::net::{IpAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::fetch::{Purpose, COUNTERS};
use super::known::{parse_nym_api_page, KnownNodes, NYM_API_NODES_PATH, NYM_API_SOURCE};
use super::{
    http_get, FetchError, Topology, TopologyError, TopologySource, TOPOLOGY_BYTES_MAX,
    TOPOLOGY_NODES_MAX,
};
use crate::background::STOP_WAIT;
use crate::config::Config;

/// How long one read (a file, a URL, or each nym-api page) may take where the config does not
/// say (`topology.read_timeout` does for the known nodes).
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Nodes asked for per nym-api page.
const NYM_API_PAGE_SIZE: usize = 500;
/// Pages read at most: the node cap over the page size, and one more.
const NYM_API_PAGES_MAX: usize = TOPOLOGY_NODES_MAX / NYM_API_PAGE_SIZE + 1;

/// Where the known nodes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KnownSource {
    /// A topology file or URL.
    Topology(TopologySource),
    /// nym-api's node list, at this base URL.
    NymApi(String),
}

impl KnownSource {
    /// The source `config` names in `topology.source`; None when it is empty.
    pub fn from_config(config: &Config) -> Result<Option<KnownSource>, String> {
        KnownSource::parse(&config.topology.source, config.rotation.nym_api.as_deref())
    }

    /// `text` as a source: "nym-api" (nym-api at `nym_api`), a file path or a URL.
    pub fn parse(text: &str, nym_api: Option<&str>) -> Result<Option<KnownSource>, String> {
        let text = text.trim();
        if text == NYM_API_SOURCE {
            let base = nym_api
                .filter(|b| !b.trim().is_empty())
                .ok_or("the source is \"nym-api\" but rotation.nym_api is not set")?;
            match TopologySource::parse(base) {
                Ok(Some(TopologySource::Url(_))) => {}
                Ok(_) => {
                    return Err(format!(
                        "nym-api's base URL '{base}' is not an http:// or https:// URL"
                    ))
                }
                Err(e) => return Err(format!("nym-api's base URL: {e}")),
            }
            return Ok(Some(KnownSource::NymApi(base.trim().to_string())));
        }
        Ok(TopologySource::parse(text)
            .map_err(|e| e.to_string())?
            .map(KnownSource::Topology))
    }

    /// The path or URL, for messages.
    pub fn origin(&self) -> String {
        match self {
            KnownSource::Topology(source) => source.origin(),
            KnownSource::NymApi(base) => {
                format!("{}{NYM_API_NODES_PATH}", base.trim_end_matches('/'))
            }
        }
    }

    /// Read the nodes now, each call (each page) within `timeout` and counted in
    /// [`COUNTERS`].
    pub fn load_topology(&self, timeout: Duration) -> Result<Topology, String> {
        let counters = &COUNTERS;
        match self {
            KnownSource::Topology(source @ TopologySource::File(_)) => {
                source.load(timeout).map_err(|e| e.to_string())
            }
            KnownSource::Topology(source) => {
                let loaded = source.load(timeout);
                match &loaded {
                    Ok(_) => counters.ok(Purpose::Topology),
                    Err(TopologyError::Invalid { .. }) => counters.bad_body(Purpose::Topology),
                    Err(TopologyError::TooLarge { .. }) => {
                        counters.failed(Purpose::Topology, &FetchError::TooLarge)
                    }
                    Err(TopologyError::Http { kind, .. }) => {
                        counters.failed_as(Purpose::Topology, kind)
                    }
                    Err(e) => counters.failed(Purpose::Topology, &FetchError::Other(e.to_string())),
                }
                loaded.map_err(|e| e.to_string())
            }
            KnownSource::NymApi(_) => load_nym_api(&self.origin(), timeout),
        }
    }

    /// Read the known nodes now (see [`KnownSource::load_topology`]).
    pub fn load(&self, timeout: Duration) -> Result<KnownNodes, String> {
        let topology = self.load_topology(timeout)?;
        Ok(KnownNodes::from_topology(
            &topology,
            &self.origin(),
            &mut resolve,
        ))
    }
}

fn resolve(host: &str) -> Vec<IpAddr> {
    match (host, 0u16).to_socket_addrs() {
        Ok(addresses) => addresses.map(|a| a.ip()).collect(),
        Err(error) => {
            tracing::warn!(host, %error, "topology: cannot resolve a node's host name; it is not a known node until it resolves");
            Vec::new()
        }
    }
}

/// nym-api's node list, page by page, as a topology.
fn load_nym_api(origin: &str, timeout: Duration) -> Result<Topology, String> {
    let counters = &COUNTERS;
    let mut topology = Topology::default();
    // nym-api may answer fewer nodes per page than asked: count what came.
    let mut seen = 0usize;
    for page in 0..NYM_API_PAGES_MAX {
        let url = format!("{origin}?page={page}&per_page={NYM_API_PAGE_SIZE}");
        let body = http_get(&url, timeout, TOPOLOGY_BYTES_MAX).map_err(|e| {
            counters.failed(Purpose::Topology, &e);
            format!("cannot read {url}: {e}")
        })?;
        let read = parse_nym_api_page(&body).map_err(|e| {
            counters.bad_body(Purpose::Topology);
            format!("{url}: {e}")
        })?;
        counters.ok(Purpose::Topology);
        let entries = read.entries;
        let offset = seen;
        topology
            .skipped
            .extend(read.skipped.into_iter().map(|mut s| {
                s.index += offset;
                s
            }));
        topology.nodes.extend(read.nodes);
        seen += entries;
        let done = entries == 0
            || read.total.is_none_or(|total| seen >= total)
            || topology.nodes.len() >= TOPOLOGY_NODES_MAX;
        if done {
            break;
        }
    }
    topology.nodes.truncate(TOPOLOGY_NODES_MAX);
    Ok(topology)
}

/// Reads the known nodes again every interval and hands each new set to `apply`.
pub struct Refresher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The first wait before a failed read is tried again.
pub const RETRY_FIRST: Duration = Duration::from_secs(30);

/// How often the refresher looks at its stop flag while it waits.
const STOP_POLL: Duration = Duration::from_millis(100);

impl Refresher {
    /// Start the thread: every `interval`, read `source` and, when it changed, pass it to
    /// `apply`. A read that fails is tried again after [`RETRY_FIRST`], doubling up to
    /// `interval` while it keeps failing.
    pub fn start(
        source: KnownSource,
        interval: Duration,
        timeout: Duration,
        current: Arc<KnownNodes>,
        mut apply: impl FnMut(Arc<KnownNodes>) + Send + 'static,
    ) -> Refresher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("topology".into())
            .spawn(move || {
                let mut current = current;
                let mut next = Instant::now() + interval;
                let mut retry = RETRY_FIRST.min(interval);
                while !flag.load(Ordering::Acquire) {
                    if Instant::now() < next {
                        std::thread::sleep(STOP_POLL.min(next - Instant::now()));
                        continue;
                    }
                    next = Instant::now() + interval;
                    let loaded = source.load(timeout);
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    if loaded.is_ok() {
                        retry = RETRY_FIRST.min(interval);
                    }
                    match loaded {
                        Ok(known) if known == *current => {}
                        Ok(known) => {
                            tracing::info!(origin = known.origin(), nodes = known.nodes(), addresses = known.addresses(), "topology: known nodes changed");
                            current = Arc::new(known);
                            apply(Arc::clone(&current));
                        }
                        Err(error) => {
                            tracing::warn!(origin = %source.origin(), %error, retry_in = %humantime::format_duration(retry), "topology: cannot read the known nodes; keeping the last ones read");
                            next = Instant::now() + retry;
                            retry = (retry * 2).min(interval);
                        }
                    }
                }
            })
            .ok();
        if thread.is_none() {
            tracing::warn!(
                "cannot start the topology thread: the known nodes will not be refreshed"
            );
        }
        Refresher { stop, thread }
    }

    /// Stop the thread. A read under way (up to [`READ_TIMEOUT`]) is not waited for beyond
    /// [`STOP_WAIT`]: the thread then ends on its own after it, changing nothing, so that
    /// shutdown never waits on a slow nym-api.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            crate::background::join_within(thread, STOP_WAIT);
        }
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.stop();
    }
}
