//! A long-running child the supervisor owns (a container, a node agent, the
//! external host's DNS server): the process, its restart policy and count.

use std::process::Child;
use std::time::Instant;

use crate::reconcile;

pub struct Proc {
    pub child: Child,
    pub restarts: i32,
    /// A pod's restartPolicy: Always, OnFailure or Never.
    pub policy: String,
    pub started: Instant,
}

impl Proc {
    pub fn new(child: Child, policy: &str) -> Proc {
        Proc {
            child,
            restarts: 0,
            policy: policy.to_string(),
            started: Instant::now(),
        }
    }

    /// Whether the process ended and its policy wants it started again.
    pub fn wants_restart(&mut self) -> bool {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                reconcile::restart_due(&self.policy, status.success(), self.started.elapsed())
            }
            _ => false,
        }
    }

    /// Puts a new process in place of the one that ended.
    pub fn restarted(&mut self, child: Child) {
        self.child = child;
        self.restarts += 1;
        self.started = Instant::now();
    }

    /// Kills and reaps the process (it may have ended already).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
