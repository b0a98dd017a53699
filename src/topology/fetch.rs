//! The node's outbound HTTP(S) calls (topology, nym-api's key schedule and node list, the
//! announcement to nym-api): ureq over rustls with the webpki roots, one deadline per call, a
//! cap on every body, and each outcome counted by purpose for /metrics. A failure is an
//! error value the caller logs and retries later; nothing here panics or blocks a shard.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Why an HTTP(S) request failed, in the classes counted on /metrics.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not answered in time.
    #[error("no complete answer in time: {0}")]
    Timeout(String),
    /// TLS failed: a bad certificate, most often.
    #[error("TLS failed (bad certificate?): {0}")]
    Tls(String),
    /// The server answered with a status other than 2xx.
    #[error("the server answered status {0}")]
    Status(u16),
    /// The body was larger than allowed.
    #[error("the answer is larger than allowed")]
    TooLarge,
    /// Anything else: no connection, a broken answer.
    #[error("{0}")]
    Other(String),
}

impl FetchError {
    /// The counter label.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Timeout(_) => "timeout",
            FetchError::Tls(_) => "tls",
            FetchError::Status(_) => "status",
            FetchError::TooLarge => "too_large",
            FetchError::Other(_) => "other",
        }
    }
}

fn classify(error: ureq::Error) -> FetchError {
    match error {
        ureq::Error::StatusCode(code) => FetchError::Status(code),
        ureq::Error::Timeout(_) => FetchError::Timeout(error.to_string()),
        ureq::Error::BodyExceedsLimit(_) => FetchError::TooLarge,
        ureq::Error::Rustls(_) => FetchError::Tls(error.to_string()),
        ureq::Error::Io(ref io) if io.kind() == std::io::ErrorKind::TimedOut => {
            FetchError::Timeout(error.to_string())
        }
        other => {
            let text = other.to_string();
            if text.to_ascii_lowercase().contains("certificate") {
                FetchError::Tls(text)
            } else {
                FetchError::Other(text)
            }
        }
    }
}

/// An agent for the node's outbound HTTP(S) calls: rustls with the webpki roots, one overall
/// deadline per call.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .user_agent(concat!("nym-mixnode/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// GET `url`: the body, at most `limit` bytes, within `timeout`.
pub fn http_get(url: &str, timeout: Duration, limit: usize) -> Result<Vec<u8>, FetchError> {
    let mut response = agent(timeout).get(url).call().map_err(classify)?;
    response
        .body_mut()
        .with_config()
        .limit(limit as u64)
        .read_to_vec()
        .map_err(classify)
}

/// POST `body` (JSON) to `url` within `timeout`; the answer's status.
pub fn http_post_json(url: &str, body: &str, timeout: Duration) -> Result<u16, FetchError> {
    let response = agent(timeout)
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .map_err(classify)?;
    Ok(response.status().as_u16())
}

/// What an outbound call was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Reading the topology (a URL or nym-api's node list).
    Topology = 0,
    /// nym-api's key rotation schedule.
    KeyRotation = 1,
    /// Announcing the node to nym-api (`refresh-described`).
    Announce = 2,
}

/// Purposes, by index, as /metrics labels them.
pub const PURPOSES: [&str; 3] = ["topology", "key_rotation", "announce"];
/// Outcomes, by index, as /metrics labels them: `ok`, the [`FetchError::kind`]s, and
/// `bad_body` (an answer that came whole but did not parse).
pub const OUTCOMES: [&str; 7] = [
    "ok",
    "timeout",
    "tls",
    "status",
    "too_large",
    "other",
    "bad_body",
];

/// This process's outbound calls, by purpose and outcome (the background threads that make
/// them count here; /metrics reads it).
pub static COUNTERS: FetchCounters = FetchCounters {
    counts: [const { [const { AtomicU64::new(0) }; OUTCOMES.len()] }; PURPOSES.len()],
};

/// Outbound calls by purpose and outcome.
#[derive(Debug)]
pub struct FetchCounters {
    counts: [[AtomicU64; OUTCOMES.len()]; PURPOSES.len()],
}

impl FetchCounters {
    fn add(&self, purpose: Purpose, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.counts[purpose as usize][i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Count a call that succeeded.
    pub fn ok(&self, purpose: Purpose) {
        self.add(purpose, "ok");
    }

    /// Count a call that failed with `error`.
    pub fn failed(&self, purpose: Purpose, error: &FetchError) {
        self.add(purpose, error.kind());
    }

    /// Count a call that failed as `kind` (a [`FetchError::kind`]).
    pub fn failed_as(&self, purpose: Purpose, kind: &str) {
        self.add(purpose, kind);
    }

    /// Count an answer that did not parse.
    pub fn bad_body(&self, purpose: Purpose) {
        self.add(purpose, "bad_body");
    }

    /// (purpose, outcome, count) for every pair.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::with_capacity(PURPOSES.len() * OUTCOMES.len());
        for (p, purpose) in PURPOSES.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                out.push((
                    *purpose,
                    *outcome,
                    self.counts[p][o].load(Ordering::Relaxed),
                ));
            }
        }
        out
    }
}
