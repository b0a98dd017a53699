//! The latest run's results and the `/verloc` document (the report is pure; [`VerlocResults`]
//! wraps it in a mutex so that the measurer writes and the HTTP API reads).
//!
//! The JSON has Nym's shape (v0.11.0, `common/mixnode-common/src/verloc/measurement.rs`):
//!
//! ```json
//! {
//!   "total_tested": 3,
//!   "run_started": "2021-06-01T12:00:00.123456789Z",
//!   "run_finished": null,
//!   "results": [
//!     { "identity": "<base58 Ed25519 key>",
//!       "latest_measurement": { "minimum": "1ms 234us", "mean": "2ms", "maximum": "3ms",
//!                               "standard_deviation": "400us 12ns" } },
//!     { "identity": "<base58>", "latest_measurement": null }
//!   ]
//! }
//! ```
//!
//! Times are RFC 3339 in UTC (`humantime::format_rfc3339`: whole seconds, or nanoseconds when
//! there are any); durations are `humantime::format_duration` strings; `run_finished` is null
//! while a run is under way and `run_started` is null before the first run. Results are sorted
//! by minimum, then standard deviation, mean and maximum; nodes that could not be measured come
//! last with a null measurement.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ed25519_dalek::VerifyingKey;
use serde_json::{json, Value};

use super::stats::{rank_optional, Measurement};

/// One measured node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeResult {
    /// The node's identity key.
    pub identity: VerifyingKey,
    /// Its figures; `None` when it could not be measured this run.
    pub latest_measurement: Option<Measurement>,
}

/// What `/verloc` reports: the current or last run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Nodes the run measures (the topology less this node and skipped entries).
    pub total_tested: usize,
    /// When the run started; `None` before the first run.
    pub run_started: Option<SystemTime>,
    /// When the run finished; `None` while it is under way.
    pub run_finished: Option<SystemTime>,
    /// Results so far, in `/verloc` order.
    pub results: Vec<NodeResult>,
}

impl RunReport {
    /// A run of `total_tested` nodes starts at `now`: earlier results are dropped.
    pub fn start_run(&mut self, total_tested: usize, now: SystemTime) {
        self.total_tested = total_tested;
        self.run_started = Some(now);
        self.run_finished = None;
        self.results.clear();
    }

    /// Add the results of one batch and keep the list in order. The list never holds more
    /// than `total_tested` entries.
    pub fn append(&mut self, batch: &[NodeResult]) {
        let room = self.total_tested.saturating_sub(self.results.len());
        debug_assert!(batch.len() <= room, "more results than nodes tested");
        self.results.extend(batch.iter().take(room).copied());
        self.results.sort_by(|a, b| {
            rank_optional(a.latest_measurement.as_ref(), b.latest_measurement.as_ref())
                .then_with(|| a.identity.as_bytes().cmp(b.identity.as_bytes()))
        });
    }

    /// The run finished at `now`.
    pub fn finish(&mut self, now: SystemTime) {
        self.run_finished = Some(now);
    }

    /// The `/verloc` document.
    pub fn to_json(&self) -> Value {
        let time = |t: Option<SystemTime>| match t {
            Some(t) => Value::String(humantime::format_rfc3339(t).to_string()),
            None => Value::Null,
        };
        let duration = |d: Duration| Value::String(humantime::format_duration(d).to_string());
        let results: Vec<Value> = self
            .results
            .iter()
            .map(|r| {
                let measurement = match &r.latest_measurement {
                    Some(m) => json!({
                        "minimum": duration(m.minimum),
                        "mean": duration(m.mean),
                        "maximum": duration(m.maximum),
                        "standard_deviation": duration(m.standard_deviation),
                    }),
                    None => Value::Null,
                };
                json!({
                    "identity": bs58::encode(r.identity.as_bytes()).into_string(),
                    "latest_measurement": measurement,
                })
            })
            .collect();
        json!({
            "total_tested": self.total_tested,
            "run_started": time(self.run_started),
            "run_finished": time(self.run_finished),
            "results": results,
        })
    }
}

/// The latest results, shared between the measurer (writer) and the HTTP API (reader).
///
/// The HTTP route for `GET /verloc` should hold an `Arc<VerlocResults>` (from
/// [`crate::node::RunningNode::verloc`]) and answer `200`, `application/json`, with
/// `results.to_json().to_string()`. Reads copy the report under a short lock; the measurer
/// takes the lock only at run start, once per batch and at run end.
#[derive(Debug, Default)]
pub struct VerlocResults {
    report: Mutex<RunReport>,
    /// The run before the current one, once one finished.
    previous: Mutex<Option<RunReport>>,
}

impl VerlocResults {
    /// No run yet.
    pub fn new() -> VerlocResults {
        VerlocResults::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut RunReport) -> T) -> T {
        // A panic elsewhere cannot leave the report half-written in a way that matters to a
        // reader: every update is a whole field assignment or a sorted extend.
        let mut report = self.report.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut report)
    }

    /// A copy of the current report.
    pub fn snapshot(&self) -> RunReport {
        self.with(|r| r.clone())
    }

    /// The `/verloc` JSON document (see the module docs for its shape).
    pub fn to_json(&self) -> Value {
        self.with(|r| r.to_json())
    }

    /// The current run and the one before it (`/api/v1/metrics/verloc`).
    pub fn runs(&self) -> (RunReport, Option<RunReport>) {
        let previous = self
            .previous
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (self.snapshot(), previous)
    }

    pub(crate) fn start_run(&self, total_tested: usize, now: SystemTime) {
        let finished = self.with(|r| {
            let finished = r.run_finished.is_some().then(|| r.clone());
            r.start_run(total_tested, now);
            finished
        });
        if let Some(finished) = finished {
            *self.previous.lock().unwrap_or_else(|e| e.into_inner()) = Some(finished);
        }
    }

    pub(crate) fn append(&self, batch: &[NodeResult]) {
        self.with(|r| r.append(batch));
    }

    pub(crate) fn finish(&self, now: SystemTime) {
        self.with(|r| r.finish(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn node(seed: u8, min_ms: Option<u64>) -> NodeResult {
        NodeResult {
            identity: SigningKey::from_bytes(&[seed; 32]).verifying_key(),
            latest_measurement: min_ms.map(|v| Measurement {
                minimum: Duration::from_millis(v),
                mean: Duration::from_micros(v * 1000 + 1500),
                maximum: Duration::from_millis(v + 3),
                standard_deviation: Duration::from_micros(250),
            }),
        }
    }

    #[test]
    fn a_finished_run_becomes_the_previous_one_when_the_next_starts() {
        let results = VerlocResults::new();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_622_548_800);
        results.start_run(1, start);
        assert_eq!(results.runs().1, None);
        results.append(&[node(1, Some(3))]);
        results.start_run(1, start + Duration::from_secs(60));
        assert_eq!(results.runs().1, None, "an unfinished run is not kept");
        results.append(&[node(2, Some(4))]);
        results.finish(start + Duration::from_secs(90));
        results.start_run(1, start + Duration::from_secs(120));
        let (current, previous) = results.runs();
        let previous = previous.expect("the finished run");
        assert_eq!(previous.results[0].identity, node(2, None).identity);
        assert!(current.results.is_empty());
        assert_eq!(current.run_started, Some(start + Duration::from_secs(120)));
    }

    #[test]
    fn nothing_before_the_first_run() {
        let json = VerlocResults::new().to_json();
        assert_eq!(
            json,
            json!({"total_tested": 0, "run_started": null, "run_finished": null, "results": []})
        );
    }

    #[test]
    fn shape_and_order() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_622_548_800);
        let mut report = RunReport::default();
        report.start_run(3, start);
        report.append(&[node(1, None), node(2, Some(7))]);
        let running = report.to_json();
        assert_eq!(running["run_started"], "2021-06-01T12:00:00Z");
        assert_eq!(running["run_finished"], Value::Null);
        report.append(&[node(3, Some(2))]);
        report.finish(start + Duration::from_millis(1500));
        let json = report.to_json();
        assert_eq!(json["total_tested"], 3);
        assert_eq!(json["run_finished"], "2021-06-01T12:00:01.500000000Z");
        let results = json["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(
            results[0]["identity"],
            bs58::encode(node(3, None).identity.as_bytes()).into_string()
        );
        assert_eq!(
            results[0]["latest_measurement"],
            json!({"minimum": "2ms", "mean": "3ms 500us", "maximum": "5ms", "standard_deviation": "250us"})
        );
        assert_eq!(results[1]["latest_measurement"]["minimum"], "7ms");
        assert_eq!(results[2]["latest_measurement"], Value::Null);
    }

    #[test]
    fn a_new_run_drops_old_results() {
        let mut report = RunReport::default();
        report.start_run(1, SystemTime::UNIX_EPOCH);
        report.append(&[node(1, Some(1))]);
        report.finish(SystemTime::UNIX_EPOCH);
        report.start_run(2, SystemTime::UNIX_EPOCH + Duration::from_secs(1));
        assert!(report.results.is_empty());
        assert_eq!(report.run_finished, None);
        assert_eq!(report.total_tested, 2);
    }
}
