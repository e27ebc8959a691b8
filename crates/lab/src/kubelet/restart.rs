//! When an ended container starts again: the pod's restartPolicy decides
//! whether, kubelet's crash-loop back-off decides when. The first restart
//! is immediate; each further one waits 10 s, doubling up to 5 min after
//! the previous exit; a container that ran for 10 min starts over at
//! 10 s. Pure, so the schedule is unit-tested without waiting.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The first back-off delay.
pub const INITIAL: Duration = Duration::from_secs(10);
/// The longest back-off delay.
pub const MAX: Duration = Duration::from_secs(300);
/// A container that ran this long is considered stable: its next crash
/// starts the back-off over.
pub const STABLE: Duration = Duration::from_secs(600);

/// Whether a container that ended with `exit_code` is started again under
/// the pod's restartPolicy (Always when unset, as the API defaults it).
pub fn wants_restart(policy: Option<&str>, exit_code: i32) -> bool {
    match policy.unwrap_or("Always") {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// The back-off of one container, kept across kubelet restarts (seconds
/// since the Unix epoch, so it serializes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// The delay before the next restart; zero before the first restart.
    pub delay_secs: u64,
}

/// What to do with an ended container that wants a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Start it now.
    Now,
    /// Wait this long (CrashLoopBackOff).
    Wait(Duration),
}

impl Backoff {
    /// The decision for a container that ran `ran` and ended `since_exit`
    /// ago; call [`Backoff::restarted`] when it is started again.
    pub fn next(&self, ran: Duration, since_exit: Duration) -> Next {
        if self.delay_secs == 0 || ran >= STABLE {
            return Next::Now;
        }
        let delay = Duration::from_secs(self.delay_secs);
        if since_exit >= delay {
            Next::Now
        } else {
            Next::Wait(delay - since_exit)
        }
    }

    /// The current delay (what kubelet prints in "back-off 20s restarting").
    pub fn delay(&self) -> Duration {
        Duration::from_secs(self.delay_secs)
    }

    /// Records a restart of a container that had run `ran`: the next
    /// crash waits twice as long (10 s after the first, or after a stable
    /// run).
    pub fn restarted(&mut self, ran: Duration) {
        self.delay_secs = if self.delay_secs == 0 || ran >= STABLE {
            INITIAL.as_secs()
        } else {
            (self.delay_secs * 2).min(MAX.as_secs())
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn policies() {
        assert!(wants_restart(None, 0));
        assert!(wants_restart(Some("Always"), 0));
        assert!(wants_restart(Some("OnFailure"), 2));
        assert!(!wants_restart(Some("OnFailure"), 0));
        assert!(!wants_restart(Some("Never"), 1));
    }

    #[test]
    fn first_restart_is_immediate_then_doubles_to_five_minutes() {
        let mut b = Backoff::default();
        assert_eq!(b.next(S(1), S(0)), Next::Now);
        b.restarted(S(1));
        assert_eq!(b.delay(), S(10));
        assert_eq!(b.next(S(1), S(3)), Next::Wait(S(7)));
        assert_eq!(b.next(S(1), S(10)), Next::Now);
        let mut delays = Vec::new();
        for _ in 0..8 {
            b.restarted(S(1));
            delays.push(b.delay_secs);
        }
        assert_eq!(delays, [20, 40, 80, 160, 300, 300, 300, 300]);
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let mut b = Backoff { delay_secs: 160 };
        assert_eq!(b.next(S(700), S(0)), Next::Now);
        b.restarted(S(700));
        assert_eq!(b.delay(), S(10));
    }
}
