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

    /// A copy of all counters.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
