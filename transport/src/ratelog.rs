//! Rate-limited warnings: at most one WARN line per kind and interval, carrying how many
//! events of that kind happened since the last line.
//!
//! A hostile client can make a node refuse thousands of connections or datagrams a second;
//! one WARN per refusal would fill the disk and bury everything else. Each kind (a static
//! name such as `"connection_refused"`) is logged the first time, then at most once per
//! interval with `suppressed = N`; the counters shown by `smart status` stay exact.
//!
//! ## Layout
//! - [`WarnLimiter`]: the limiter, shared behind `&self` (a mutex over a small map).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Default interval between two lines of one kind.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Slot {
    last: Instant,
    suppressed: u64,
}

/// Rate-limits WARN lines per kind. Cheap when suppressing: one lock, one map lookup.
#[derive(Debug)]
pub struct WarnLimiter {
    interval: Duration,
    slots: Mutex<HashMap<&'static str, Slot>>,
}

impl Default for WarnLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_INTERVAL)
    }
}

impl WarnLimiter {
    /// A limiter allowing one line per kind every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a line of `kind` may be written now; if so, returns how many events of that
    /// kind were suppressed since the previous line.
    pub fn allow(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.get_mut(kind) {
            Some(s) if now.saturating_duration_since(s.last) < self.interval => {
                s.suppressed += 1;
                None
            }
            Some(s) => {
                let n = s.suppressed;
                s.last = now;
                s.suppressed = 0;
                Some(n)
            }
            None => {
                slots.insert(
                    kind,
                    Slot {
                        last: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }

    /// Writes `message` at WARN if `kind` is due, with the suppressed count.
    pub fn warn(&self, kind: &'static str, message: fmt::Arguments<'_>) {
        if let Some(suppressed) = self.allow(kind, Instant::now()) {
            tracing::warn!(kind, suppressed, "{message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_suppressed_count() {
        let l = WarnLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.allow("a", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(l.allow("a", t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(l.allow("b", t0), Some(0), "kinds are independent");
        assert_eq!(l.allow("a", t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(l.allow("a", t0 + Duration::from_secs(11)), None);
    }
}
