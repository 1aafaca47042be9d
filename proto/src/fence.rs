//! Epoch fencing, in one place: every executor of Control commands (Agent86's engine, and
//! the simulations that model it) refuses a command whose epoch is below the highest it has
//! seen, checked when the command *executes*, not only when it arrives.

use crate::ids::Epoch;

/// A command's epoch is below the highest one seen: refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("stale epoch {epoch}: highest seen is {highest}")]
pub struct Stale {
    /// The command's epoch.
    pub epoch: Epoch,
    /// The highest epoch seen.
    pub highest: Epoch,
}

/// Epoch fencing for Agent86 (docs/DESIGN.md §2.4): remember the highest Control epoch seen and
/// refuse anything below it, *when executing*, not only when receiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fence {
    /// Highest epoch seen.
    pub highest: Epoch,
}

impl Fence {
    /// A fence at `highest` (the persisted value).
    pub fn new(highest: Epoch) -> Self {
        Self { highest }
    }

    /// `Ok` if a command of `epoch` may run now.
    pub fn check(&self, epoch: Epoch) -> Result<(), Stale> {
        if epoch < self.highest {
            Err(Stale {
                epoch,
                highest: self.highest,
            })
        } else {
            Ok(())
        }
    }

    /// Raises the fence; returns `true` if it moved (the caller persists it).
    pub fn observe(&mut self, epoch: Epoch) -> bool {
        if epoch > self.highest {
            self.highest = epoch;
            true
        } else {
            false
        }
    }

    /// Checks `epoch`, then raises the fence to it: the usual path of an incoming command.
    pub fn admit(&mut self, epoch: Epoch) -> Result<bool, Stale> {
        self.check(epoch)?;
        Ok(self.observe(epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_refuses_stale_epochs() {
        let mut f = Fence::new(4);
        assert_eq!(f.check(4), Ok(()));
        assert_eq!(
            f.check(3),
            Err(Stale {
                epoch: 3,
                highest: 4
            })
        );
        assert_eq!(f.admit(6), Ok(true));
        assert_eq!(f.admit(6), Ok(false));
        assert_eq!(
            f.admit(5),
            Err(Stale {
                epoch: 5,
                highest: 6
            })
        );
    }
}
