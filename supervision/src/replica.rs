//! The newest registry copy a Control sent this node (docs/DESIGN.md §1: a new Control
//! restores what only the copy knows). A copy older than the one kept, by (epoch,
//! version), is refused: a deposed Control or a reordered message cannot resurrect stopped
//! services.

use std::sync::Mutex;

use smart_proto::node::Replica;

/// The kept copy.
#[derive(Default)]
pub struct ReplicaStore(Mutex<Replica>);

impl ReplicaStore {
    /// Keeps `r` if it is newer than the kept copy; says whether it did.
    pub fn offer(&self, r: Replica) -> bool {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if r.newer_than(&kept) {
            *kept = r;
            true
        } else {
            false
        }
    }

    /// The kept copy.
    pub fn get(&self) -> Replica {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_newer_copies_replace_the_kept_one() {
        let s = ReplicaStore::default();
        let r = |epoch, version| Replica {
            epoch,
            version,
            ..Replica::default()
        };
        assert!(s.offer(r(3, 1)));
        assert!(s.offer(r(3, 2)));
        assert!(!s.offer(r(3, 2)), "a replay");
        assert!(!s.offer(r(3, 1)), "reordered");
        assert!(!s.offer(r(2, 9)), "a deposed Control's");
        assert!(s.offer(r(4, 1)), "the next Control's first copy");
        assert_eq!((s.get().epoch, s.get().version), (4, 1));
    }
}
