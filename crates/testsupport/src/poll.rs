//! Bounded waiting and unique names: every wait in a test has a limit, so a
//! broken component fails the test instead of hanging the run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often [`poll`] and [`eventually`] check.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Calls `check` every [`POLL_INTERVAL`] until it returns `Some` or `limit`
/// has passed (it is always called at least once, and once more at the
/// limit); `None` when it never did.
pub fn poll<T>(limit: Duration, check: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(limit, POLL_INTERVAL, check)
}

/// [`poll`] with its own interval between checks.
pub fn poll_every<T>(
    limit: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        let elapsed = started.elapsed();
        if elapsed >= limit {
            return None;
        }
        std::thread::sleep(interval.min(limit - elapsed));
    }
}

/// Whether `condition` became true within `limit` (checked every
/// [`POLL_INTERVAL`]).
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    poll(limit, || condition().then_some(())).is_some()
}

/// How long `condition` took to become true, or `None` if it did not
/// within `limit`.
pub fn time_until(limit: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    poll(limit, || condition().then(|| started.elapsed()))
}

static NAMES: AtomicUsize = AtomicUsize::new(0);

/// `<tag>-<pid>-<counter>`: unique on this machine while the test process
/// lives (lowercase tags keep it a valid Kubernetes object name).
pub fn unique_name(tag: &str) -> String {
    let n = NAMES.fetch_add(1, Ordering::SeqCst);
    format!("{tag}-{}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_returns_the_first_value_and_gives_up_at_the_limit() {
        let mut n = 0;
        assert_eq!(
            poll(Duration::from_secs(5), || {
                n += 1;
                (n == 3).then_some(n)
            }),
            Some(3)
        );
        let started = Instant::now();
        let mut calls = 0;
        assert_eq!(
            poll(Duration::from_millis(100), || {
                calls += 1;
                None::<()>
            }),
            None
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(calls >= 2, "checked at least at the start and at the limit");
        assert!(!eventually(Duration::ZERO, || false));
        assert!(time_until(Duration::from_secs(1), || true).is_some());
    }

    #[test]
    fn unique_names_differ() {
        let a = unique_name("node");
        let b = unique_name("node");
        assert_ne!(a, b);
        assert!(a.starts_with("node-"));
    }
}
