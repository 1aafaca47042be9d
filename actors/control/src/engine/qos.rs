//! The QoS book: per service, the clocks and counters the QoS loop judges by (see
//! [`qos_round`](super::qos_round) for what the loop does with them).
//!
//! - when its instance was placed, which opens the grace period in which no viewer is
//!   released (viewers are still connecting or reconnecting), and when its last client was
//!   admitted, which with it keeps the idle clock from running out (a client's own arrival
//!   window is the table's: a new admission does not delay the release of others);
//! - how many consecutive refreshes its instance reported fewer clients than admitted and
//!   settled (one low report is not enough to release anyone);
//! - the resources it was already grown or moved for (never twice for the same cause, so
//!   no back and forth) and when it last moved for an anomaly;
//! - since when its instance has reported no clients (the idle stop).
//!
//! The decisions are the book's, from what the engine read in the reports; acting on them
//! (releasing admissions, stopping, moving) is the engine's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use smart_proto::ServiceName;
use smart_proto::agent::{Reservation, Resource};

/// A reservation is sent again when a resource differs by more than this fraction.
const RESERVATION_SLACK: f64 = 0.02;

/// Whether an agent's copy of a reservation is far enough from what it should be to send
/// it again.
pub(crate) fn differs(a: &Reservation, b: &Reservation) -> bool {
    let d = |x: f64, y: f64| {
        let m = x.abs().max(y.abs());
        m > 0.0 && (x - y).abs() / m > RESERVATION_SLACK
    };
    d(a.cpu_cores, b.cpu_cores)
        || d(a.net_bps, b.net_bps)
        || d(a.mem_bytes as f64, b.mem_bytes as f64)
}

/// One service's QoS clocks.
#[derive(Debug, Clone)]
struct Clocks {
    /// When its last client was admitted.
    admitted_at: Instant,
    /// Consecutive refreshes in which its instance reported fewer clients than admitted.
    fewer_seen: u32,
    /// When it was last moved because of an anomaly.
    anomaly_moved: Option<Instant>,
    /// Resources it was already grown or moved for.
    anomaly_causes: Vec<Resource>,
    /// Since when its instance has reported no clients (and none are admitted).
    idle_since: Option<Instant>,
}

/// The QoS clocks of every service, and the settings they are judged by.
#[derive(Debug)]
pub(crate) struct QosBook {
    services: BTreeMap<ServiceName, Clocks>,
    /// No client is released within this time after an admission, start or migration.
    release_grace: Duration,
    /// Consecutive low refreshes before the surplus is released.
    release_after: u32,
    /// A service with no clients for this long is stopped.
    idle_stop_after: Option<Duration>,
}

impl QosBook {
    pub(crate) fn new(
        release_grace: Duration,
        release_after: u32,
        idle_stop_after: Option<Duration>,
    ) -> Self {
        Self {
            services: BTreeMap::new(),
            release_grace,
            release_after,
            idle_stop_after,
        }
    }

    /// A new service, admitted at `now`.
    pub(crate) fn track(&mut self, name: &str, now: Instant) {
        self.services.insert(
            name.to_string(),
            Clocks {
                admitted_at: now,
                fewer_seen: 0,
                anomaly_moved: None,
                anomaly_causes: Vec::new(),
                idle_since: None,
            },
        );
    }

    /// `name` is gone.
    pub(crate) fn forget(&mut self, name: &str) {
        self.services.remove(name);
    }

    /// A client of `name` was admitted at `now`.
    pub(crate) fn admitted(&mut self, name: &str, now: Instant) {
        if let Some(c) = self.services.get_mut(name) {
            c.admitted_at = now;
        }
    }

    /// A refresh in which `name`'s instance (placed at `placed_at`) reports `reported`
    /// connected clients of the `settled` (admitted long enough ago to have arrived):
    /// whether the settled surplus is to be released now (reported low `release_after`
    /// times in a row, outside the grace period after the placement).
    pub(crate) fn fewer_clients(
        &mut self,
        name: &str,
        reported: usize,
        settled: usize,
        placed_at: Instant,
        now: Instant,
    ) -> bool {
        let (grace, after) = (self.release_grace, self.release_after);
        let Some(c) = self.services.get_mut(name) else {
            return false;
        };
        let recent = now.saturating_duration_since(placed_at) < grace;
        if recent || reported >= settled {
            c.fewer_seen = 0;
            return false;
        }
        c.fewer_seen += 1;
        if c.fewer_seen < after {
            return false;
        }
        c.fewer_seen = 0;
        true
    }

    /// Whether idle stops are on, and after how long.
    pub(crate) fn idle_stop_after(&self) -> Option<Duration> {
        self.idle_stop_after
    }

    /// A refresh in which `name`'s instance (placed at `placed_at`) reports `reported`
    /// connected clients; `unused`: none are admitted and no request waits for it. Whether
    /// it has been idle for `idle_stop_after` now (never when idle stops are off).
    pub(crate) fn idle(
        &mut self,
        name: &str,
        reported: u32,
        unused: bool,
        placed_at: Instant,
        now: Instant,
    ) -> bool {
        let Some(after) = self.idle_stop_after else {
            return false;
        };
        let Some(c) = self.services.get_mut(name) else {
            return false;
        };
        if reported != 0 || !unused {
            c.idle_since = None;
            return false;
        }
        let since = *c.idle_since.get_or_insert(now);
        let active = placed_at.max(c.admitted_at).max(since);
        now.saturating_duration_since(active) >= after
    }

    /// Whether `name` was already grown or moved for its `resource`.
    pub(crate) fn acted_on(&self, name: &str, resource: Resource) -> bool {
        self.services
            .get(name)
            .is_some_and(|c| c.anomaly_causes.contains(&resource))
    }

    /// Whether `name` was grown or moved for any anomaly (it keeps what it was measured to
    /// need).
    pub(crate) fn grown(&self, name: &str) -> bool {
        self.services
            .get(name)
            .is_some_and(|c| !c.anomaly_causes.is_empty())
    }

    /// `name` is grown (or moved) for its `resource`: never again for it.
    pub(crate) fn grow_for(&mut self, name: &str, resource: Resource) {
        if let Some(c) = self.services.get_mut(name) {
            c.anomaly_causes.push(resource);
        }
    }

    /// `name` moves at `now` because of an anomaly.
    pub(crate) fn moved_for_anomaly(&mut self, name: &str, now: Instant) {
        if let Some(c) = self.services.get_mut(name) {
            c.anomaly_moved = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn book(idle: Option<Duration>) -> (QosBook, Instant) {
        let mut b = QosBook::new(10 * S, 2, idle);
        let now = Instant::now();
        b.track("v", now);
        (b, now)
    }

    #[test]
    fn the_surplus_is_released_after_two_low_refreshes_outside_the_grace_period() {
        let (mut b, t0) = book(None);
        // Within the grace period of the placement: never.
        assert!(!b.fewer_clients("v", 1, 3, t0, t0 + 5 * S));
        assert!(!b.fewer_clients("v", 1, 3, t0, t0 + 9 * S));
        let t = t0 + 11 * S;
        // One low refresh is not enough; a full one resets the count.
        assert!(!b.fewer_clients("v", 1, 3, t0, t));
        assert!(!b.fewer_clients("v", 3, 3, t0, t));
        assert!(!b.fewer_clients("v", 1, 3, t0, t));
        assert!(b.fewer_clients("v", 1, 3, t0, t));
        // Counted from zero again after a release.
        assert!(!b.fewer_clients("v", 0, 1, t0, t));
        // A new client does not reopen it (its own arrival window is the caller's): a flood
        // of admissions cannot keep the others from being released.
        // (The low refresh above was the first in a row; this is the second.)
        b.admitted("v", t);
        assert!(b.fewer_clients("v", 0, 1, t0, t + S));
        // A new placement does.
        let t1 = t + 3 * S;
        assert!(!b.fewer_clients("v", 0, 1, t1, t1 + S));
        assert!(!b.fewer_clients("v", 0, 1, t1, t1 + 9 * S));
        // Unknown services are never released.
        assert!(!b.fewer_clients("w", 0, 5, t0, t + 60 * S));
    }

    #[test]
    fn an_idle_clock_runs_from_the_first_empty_report_and_a_viewer_resets_it() {
        let (mut b, t0) = book(Some(60 * S));
        assert!(!b.idle("v", 0, true, t0, t0));
        assert!(!b.idle("v", 0, true, t0, t0 + 59 * S));
        assert!(b.idle("v", 0, true, t0, t0 + 60 * S));
        let (mut b, t0) = book(Some(60 * S));
        assert!(!b.idle("v", 0, true, t0, t0));
        assert!(!b.idle("v", 1, true, t0, t0 + 50 * S));
        assert!(!b.idle("v", 0, true, t0, t0 + 70 * S));
        assert!(b.idle("v", 0, true, t0, t0 + 130 * S));
        // Admitted clients or waiting requests keep it running, and restart the clock.
        assert!(!b.idle("v", 0, false, t0, t0 + 200 * S));
        assert!(!b.idle("v", 0, true, t0, t0 + 201 * S));
        assert!(b.idle("v", 0, true, t0, t0 + 261 * S));
        // Off: never.
        let (mut b, t0) = book(None);
        assert!(!b.idle("v", 0, true, t0, t0 + 1000 * S));
    }

    #[test]
    fn a_cause_is_acted_on_once() {
        let (mut b, t0) = book(None);
        assert!(!b.grown("v") && !b.acted_on("v", Resource::Cpu));
        b.grow_for("v", Resource::Cpu);
        b.moved_for_anomaly("v", t0);
        assert!(b.grown("v") && b.acted_on("v", Resource::Cpu));
        assert!(!b.acted_on("v", Resource::Memory));
        b.forget("v");
        assert!(!b.grown("v"));
    }

    #[test]
    fn reservations_are_resent_only_past_the_slack() {
        let r = Reservation {
            cpu_cores: 1.0,
            net_bps: 1e6,
            mem_bytes: 1_000_000,
        };
        let close = Reservation {
            cpu_cores: 1.01,
            ..r
        };
        let far = Reservation {
            mem_bytes: 1_100_000,
            ..r
        };
        assert!(!differs(&r, &r));
        assert!(!differs(&r, &close));
        assert!(differs(&r, &far));
        assert!(!differs(&Reservation::default(), &Reservation::default()));
    }
}
