//! Named counters (dropped datagrams by reason, restarts, refusals), shown by
//! `smart status`.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The node's counters.
#[derive(Default)]
pub struct Counters(Mutex<BTreeMap<String, u64>>);

impl Counters {
    /// Adds one to `name`.
    pub fn incr(&self, name: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(name.to_string()).or_default() += 1;
    }

    /// Adds `n` to `name`.
    pub fn add(&self, name: &str, n: u64) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let c = m.entry(name.to_string()).or_default();
        *c = c.saturating_add(n);
    }

    /// Raises `name` to `v` if it is lower (a high-water mark).
    pub fn raise(&self, name: &str, v: u64) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let c = m.entry(name.to_string()).or_default();
        *c = (*c).max(v);
    }

    /// A copy of all counters.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
