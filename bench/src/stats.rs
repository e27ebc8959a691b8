//! Summary statistics of a series of timings, in milliseconds, as printed in
//! the benchmark tables and written to `--json`.

use std::time::Duration;

use serde::Serialize;

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
        if samples.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let median = if n % 2 == 1 {
            ms[n / 2]
        } else {
            (ms[n / 2 - 1] + ms[n / 2]) / 2.0
        };
        Some(Stats {
            runs: n,
            min_ms: ms[0],
            median_ms: median,
            max_ms: ms[n - 1],
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
