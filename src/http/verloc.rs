//! `/verloc`: the latest VerLoc run, in the Nym mixnode's shape. The measuring side (not in
//! this module) publishes a [`VerlocReport`]; until it does, the report is empty.

use std::time::SystemTime;

use serde::Serialize;

use super::collect::rfc3339;

/// Round-trip figures of one node, in milliseconds as the Nym mixnode reports them.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Measurement {
    /// Fastest round trip.
    pub minimum: f64,
    /// Mean round trip.
    pub mean: f64,
    /// Slowest round trip.
    pub maximum: f64,
    /// Population standard deviation.
    pub standard_deviation: f64,
}

/// One measured node.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeResult {
    /// The node's identity key, base58.
    pub identity: String,
    /// Its figures, `null` when no reply could be measured.
    pub latest_measurement: Option<Measurement>,
}

/// The latest run.
#[derive(Clone, Debug, PartialEq)]
pub struct VerlocReport {
    /// Nodes tested in the run.
    pub total_tested: usize,
    /// When the run started.
    pub run_started: SystemTime,
    /// When it finished; `None` while it runs.
    pub run_finished: Option<SystemTime>,
    /// Per-node results.
    pub results: Vec<NodeResult>,
}

impl VerlocReport {
    /// No run yet: started at `now`, nothing tested.
    pub fn empty(now: SystemTime) -> VerlocReport {
        VerlocReport {
            total_tested: 0,
            run_started: now,
            run_finished: None,
            results: Vec::new(),
        }
    }

    /// The `/verloc` body: results sorted by minimum, then standard deviation, mean and
    /// maximum; nodes without a measurement last.
    pub fn render(&self) -> serde_json::Value {
        let mut results = self.results.clone();
        results.sort_by(
            |a, b| match (&a.latest_measurement, &b.latest_measurement) {
                (Some(x), Some(y)) => x
                    .minimum
                    .total_cmp(&y.minimum)
                    .then(x.standard_deviation.total_cmp(&y.standard_deviation))
                    .then(x.mean.total_cmp(&y.mean))
                    .then(x.maximum.total_cmp(&y.maximum)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            },
        );
        serde_json::json!({
            "total_tested": self.total_tested,
            "run_started": rfc3339(self.run_started),
            "run_finished": self.run_finished.map(rfc3339),
            "results": results,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, m: Option<(f64, f64, f64, f64)>) -> NodeResult {
        NodeResult {
            identity: id.into(),
            latest_measurement: m.map(|(minimum, mean, maximum, standard_deviation)| Measurement {
                minimum,
                mean,
                maximum,
                standard_deviation,
            }),
        }
    }

    #[test]
    fn sorted_by_minimum_then_deviation_mean_maximum() {
        let mut r = VerlocReport::empty(SystemTime::UNIX_EPOCH);
        assert_eq!(r.render()["run_finished"], serde_json::Value::Null);
        r.results = vec![
            node("none", None),
            node("slow", Some((9.0, 10.0, 11.0, 1.0))),
            node("wide", Some((1.0, 5.0, 9.0, 3.0))),
            node("tight", Some((1.0, 5.0, 9.0, 2.0))),
        ];
        r.total_tested = 4;
        let body = r.render();
        let ids: Vec<_> = body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["identity"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["tight", "wide", "slow", "none"]);
        assert_eq!(
            body["results"][3]["latest_measurement"],
            serde_json::Value::Null
        );
        assert_eq!(body["run_started"], "1970-01-01T00:00:00Z");
    }
}
