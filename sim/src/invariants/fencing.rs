//! **Agents never execute a command with an epoch below one they already executed**
//! (per node, across restarts of the node).
//!
//! The shell keeps a mirror of the engine's queue of commands waiting for their epoch to be
//! durable (`Proc::queued`): a command leaves it refused (a `StaleEpoch` answer in the same
//! step) or executed (its epoch durable, in arrival order, as `drain_queue` does). Every
//! executed command's epoch must be at least the highest this node's agent executed before.

use smart_agent86::engine::{Command, Refusal};

use crate::world::Sim;

/// After every step of node `n`'s agent engine that produced `cmds`.
pub(crate) fn after_agent_step(sim: &mut Sim, n: usize, cmds: &[Command]) {
    let Some(p) = sim.proc_mut(n) else { return };
    for c in cmds {
        if let Command::Reply {
            req,
            result: Err(Refusal::StaleEpoch { .. }),
            ..
        } = c
        {
            p.queued.retain(|(r, _)| r != req);
        }
    }
    let mut executed = Vec::new();
    while let Some(&(_, epoch)) = p.queued.front() {
        if epoch > p.persisted {
            break;
        }
        p.queued.pop_front();
        executed.push(epoch);
    }
    for epoch in executed {
        sim.stats.executed += 1;
        sim.history.checked("agent epochs never go down");
        let before = sim.history.executed.get(&n).copied().unwrap_or(0);
        if epoch < before {
            sim.fail(format!(
                "n{n}'s agent executed a command at epoch {epoch} after one at epoch {before}"
            ));
        }
        sim.history.executed.insert(n, before.max(epoch));
    }
}
