//! Round-trip statistics of one node (pure): minimum, mean, maximum and population standard
//! deviation, and the order in which `/verloc` lists nodes.

use std::cmp::Ordering;
use std::time::Duration;

/// The figures of one node's round trips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measurement {
    /// Shortest round trip.
    pub minimum: Duration,
    /// Mean round trip.
    pub mean: Duration,
    /// Longest round trip.
    pub maximum: Duration,
    /// Population standard deviation (divided by n, not n - 1).
    pub standard_deviation: Duration,
}

impl Measurement {
    /// The figures of `round_trips`; `None` when there are none.
    pub fn from_round_trips(round_trips: &[Duration]) -> Option<Measurement> {
        let minimum = *round_trips.iter().min()?;
        let maximum = *round_trips.iter().max()?;
        let count = round_trips.len() as f64;
        let nanos = |d: &Duration| d.as_nanos() as f64;
        let mean_ns = round_trips.iter().map(nanos).sum::<f64>() / count;
        let variance_ns2 = round_trips
            .iter()
            .map(|d| {
                let diff = nanos(d) - mean_ns;
                diff * diff
            })
            .sum::<f64>()
            / count;
        Some(Measurement {
            minimum,
            mean: Duration::from_nanos(mean_ns.round() as u64),
            maximum,
            standard_deviation: Duration::from_nanos(variance_ns2.sqrt().round() as u64),
        })
    }

    /// `/verloc` order: minimum first, then standard deviation, mean, maximum.
    pub fn rank(&self, other: &Measurement) -> Ordering {
        self.minimum
            .cmp(&other.minimum)
            .then(self.standard_deviation.cmp(&other.standard_deviation))
            .then(self.mean.cmp(&other.mean))
            .then(self.maximum.cmp(&other.maximum))
    }
}

/// `/verloc` order of optional measurements: measured nodes by [`Measurement::rank`], then the
/// nodes that could not be measured.
pub fn rank_optional(a: Option<&Measurement>, b: Option<&Measurement>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.rank(b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn figures() {
        let m = Measurement::from_round_trips(&[ms(1), ms(2), ms(3), ms(4)]).unwrap();
        assert_eq!(m.minimum, ms(1));
        assert_eq!(m.maximum, ms(4));
        assert_eq!(m.mean, Duration::from_micros(2500));
        // Population variance 1.25 ms^2; sqrt = 1.118034 ms.
        assert_eq!(m.standard_deviation, Duration::from_nanos(1_118_034));
    }

    #[test]
    fn one_sample_has_no_spread() {
        let m = Measurement::from_round_trips(&[ms(5)]).unwrap();
        assert_eq!((m.minimum, m.mean, m.maximum), (ms(5), ms(5), ms(5)));
        assert_eq!(m.standard_deviation, Duration::ZERO);
    }

    #[test]
    fn empty_is_none() {
        assert_eq!(Measurement::from_round_trips(&[]), None);
    }

    #[test]
    fn order() {
        let m = |min, sd, mean, max| Measurement {
            minimum: ms(min),
            standard_deviation: ms(sd),
            mean: ms(mean),
            maximum: ms(max),
        };
        let mut v = vec![
            None,
            Some(m(2, 0, 2, 2)),
            Some(m(1, 5, 3, 9)),
            Some(m(1, 4, 9, 9)),
            Some(m(1, 4, 8, 10)),
            Some(m(1, 4, 8, 9)),
        ];
        v.sort_by(|a, b| rank_optional(a.as_ref(), b.as_ref()));
        assert_eq!(
            v,
            vec![
                Some(m(1, 4, 8, 9)),
                Some(m(1, 4, 8, 10)),
                Some(m(1, 4, 9, 9)),
                Some(m(1, 5, 3, 9)),
                Some(m(2, 0, 2, 2)),
                None,
            ]
        );
    }
}
