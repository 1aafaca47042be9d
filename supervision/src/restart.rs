//! Restart intensity policy for the node supervision tree: one-for-one (only the failed
//! child is restarted), at most `max_restarts` restarts within `within`, then escalate (the
//! node exits non-zero so that its service manager restarts the whole process).
//!
//! This is Erlang/OTP's intensity rule: the count is over *all* children of one supervisor,
//! so a child that keeps crashing and several children crashing together both escalate. It
//! is pure (time is passed in) so the ractor supervisor only asks it what to do.
//!
//! ## Layout
//! - [`RestartPolicy`] — the limits (default 3 restarts in 5 s).
//! - [`RestartTracker`] — the sliding window; [`RestartTracker::on_failure`] → [`Decision`].

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// At most `max_restarts` restarts within `within`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed in the window.
    pub max_restarts: u32,
    /// The window.
    pub within: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            within: Duration::from_secs(5),
        }
    }
}

/// What the supervisor must do about a failed child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Restart the failed child only; this is the `restarts_in_window`-th restart in the
    /// current window.
    Restart {
        /// Restarts in the window, this one included.
        restarts_in_window: u32,
    },
    /// Too many restarts: give up and escalate (exit the node non-zero).
    Escalate {
        /// Restarts already done in the window.
        restarts_in_window: u32,
        /// The window.
        within: Duration,
    },
}

/// Sliding window of recent restarts of one supervisor.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    restarts: VecDeque<Instant>,
}

impl RestartTracker {
    /// A tracker with no restarts yet.
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            restarts: VecDeque::new(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> RestartPolicy {
        self.policy
    }

    /// A child failed at `now`: restart it, or escalate if the window is full. Restarts
    /// older than `within` no longer count.
    pub fn on_failure(&mut self, now: Instant) -> Decision {
        while let Some(&t) = self.restarts.front() {
            if now.saturating_duration_since(t) >= self.policy.within {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        let n = self.restarts.len() as u32;
        if n >= self.policy.max_restarts {
            return Decision::Escalate {
                restarts_in_window: n,
                within: self.policy.within,
            };
        }
        self.restarts.push_back(now);
        Decision::Restart {
            restarts_in_window: n + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    #[test]
    fn escalates_on_the_fourth_failure_within_the_window() {
        let t0 = Instant::now();
        let mut r = RestartTracker::new(RestartPolicy::default());
        assert_eq!(
            r.on_failure(t0),
            Decision::Restart {
                restarts_in_window: 1
            }
        );
        assert_eq!(
            r.on_failure(t0 + s(1)),
            Decision::Restart {
                restarts_in_window: 2
            }
        );
        assert_eq!(
            r.on_failure(t0 + s(2)),
            Decision::Restart {
                restarts_in_window: 3
            }
        );
        assert_eq!(
            r.on_failure(t0 + s(3)),
            Decision::Escalate {
                restarts_in_window: 3,
                within: s(5)
            }
        );
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let t0 = Instant::now();
        let mut r = RestartTracker::new(RestartPolicy {
            max_restarts: 2,
            within: s(10),
        });
        r.on_failure(t0);
        r.on_failure(t0 + s(4));
        // The first restart is exactly 10 s old: out of the window.
        assert_eq!(
            r.on_failure(t0 + s(10)),
            Decision::Restart {
                restarts_in_window: 2
            }
        );
        assert!(matches!(
            r.on_failure(t0 + s(11)),
            Decision::Escalate { .. }
        ));
        // A slowly failing child is restarted forever.
        let mut slow = RestartTracker::new(RestartPolicy::default());
        for i in 0..100 {
            assert!(matches!(
                slow.on_failure(t0 + s(3 * i)),
                Decision::Restart { .. }
            ));
        }
    }

    #[test]
    fn zero_restarts_allowed_escalates_at_once() {
        let mut r = RestartTracker::new(RestartPolicy {
            max_restarts: 0,
            within: s(1),
        });
        assert_eq!(
            r.on_failure(Instant::now()),
            Decision::Escalate {
                restarts_in_window: 0,
                within: s(1)
            }
        );
    }
}
