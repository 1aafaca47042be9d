//! **At most one acting Control per epoch** (both modes), and **at most one acting Control
//! at any instant** in majority mode.
//!
//! Per epoch, "acting" is the Control engine's own state: rebuilt and told by its election
//! engine that it may act (`ControlStatus::{rebuilt, acting}`). Two nodes acting at one
//! epoch means two Controls whose commands agents cannot tell apart by fencing.
//!
//! At an instant (majority mode), a Control acts when its engine believes it may and its
//! node runs and its Raft quorum lease holds (`NodeEngine::may_act`): the engine's belief
//! lags membership by a message (a resumed node's Control learns it stepped down after its
//! membership does), so the belief alone is not the lease. What the lag must never allow
//! is checked at every decision instead ([`decision`]): a Control that sends an agent
//! command or a registry copy, or places a request, while another Control acts.

use crate::world::{Mode, Sim};

/// After every step of node `n`'s Control engine: keeps its acting epoch and checks that no
/// other node acted at that epoch.
pub(crate) fn record(sim: &mut Sim, n: usize) {
    let id = n;
    let Some(c) = sim.proc_mut(n).and_then(|p| p.control.as_mut()) else {
        return;
    };
    let s = c.engine.status();
    c.acting = (s.rebuilt && s.acting).then_some(s.epoch);
    let Some(epoch) = c.acting else { return };
    sim.history.checked("one acting control per epoch");
    let first = *sim.history.acting.entry(epoch).or_insert(id);
    if first != id {
        sim.fail(format!(
            "two Controls acted at epoch {epoch}: n{first}'s and n{id}'s"
        ));
    }
}

/// The running nodes whose Control acts now, with its epoch (majority mode's definition).
fn acting_now(sim: &Sim) -> Vec<(usize, u64)> {
    (0..sim.nodes.len())
        .filter(|i| sim.running(*i))
        .filter_map(|i| {
            let p = sim.proc(i)?;
            let epoch = p.control.as_ref()?.acting?;
            p.membership.may_act(sim.tclock(i)).then_some((i, epoch))
        })
        .collect()
}

/// Majority mode: a decision of node `n`'s Control (`what`) while another node's Control
/// acts.
pub(crate) fn decision(sim: &mut Sim, n: usize, what: &str) {
    if sim.setup.mode != Mode::Majority {
        return;
    }
    sim.history
        .checked("no decision while another control acts");
    let others: Vec<(usize, u64)> = acting_now(sim)
        .into_iter()
        .filter(|(i, _)| *i != n)
        .collect();
    if !others.is_empty() {
        sim.fail(format!(
            "majority mode: n{n}'s Control decided ({what}) while another acts (node index, \
             epoch): {others:?}"
        ));
    }
}

/// Majority mode: at most one running node whose Control acts, now.
pub(crate) fn one_at_a_time(sim: &mut Sim) {
    if sim.setup.mode != Mode::Majority {
        return;
    }
    let acting = acting_now(sim);
    sim.stats.checks += 1;
    // The model's own promise, which the above rests on: one leader with a quorum lease.
    let leaders = sim
        .raft
        .as_ref()
        .map(|r| r.leading(sim.now))
        .unwrap_or_default();
    if leaders.len() > 1 {
        sim.fail(format!(
            "majority mode: two raft leaders hold a quorum lease: {leaders:?}"
        ));
        return;
    }
    if acting.len() > 1 {
        sim.fail(format!(
            "majority mode: {} Controls acting at once (node index, epoch): {acting:?}",
            acting.len()
        ));
    }
}
