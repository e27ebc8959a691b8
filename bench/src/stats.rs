//! Summary statistics of a series of timings, in milliseconds, as printed in
//! the benchmark tables and written to `--json`.

use std::time::Duration;

use serde::Serialize;

/// runs, min, median and max of a series of plain numbers (rates,
/// percentages, megabytes).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub runs: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Summary {
    /// None for an empty series.
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            runs: n,
            min: v[0],
            median,
            max: v[n - 1],
        })
    }
}

/// runs, min, median and max of a series, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    pub runs: usize,
    pub min_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
}

impl Stats {
    /// None for an empty series.
    pub fn of(samples: &[Duration]) -> Option<Stats> {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Summary::of(&ms).map(|s| Stats {
            runs: s.runs,
            min_ms: s.min,
            median_ms: s.median,
            max_ms: s.max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Stats;
    use std::time::Duration;

    #[test]
    fn median_of_odd_and_even() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let s = Stats::of(&ms(&[5, 1, 3])).expect("non-empty");
        assert_eq!(
            (s.runs, s.min_ms, s.median_ms, s.max_ms),
            (3, 1.0, 3.0, 5.0)
        );
        let s = Stats::of(&ms(&[4, 1, 3, 2])).expect("non-empty");
        assert_eq!(s.median_ms, 2.5);
        assert!(Stats::of(&[]).is_none());
    }
}
