//! The invariants of a settled cluster, checked at the end of `Op::Settle`: the network
//! healed and loss-free, every pause over, then a quiet period of [`QUIET`] with no fault.
//! That period is the bound within which a Control must act and every service must run.
//!
//! - [`control_acts`]: **no wedged Control**. With enough nodes running to elect one (any
//!   in available mode, a majority in majority mode): exactly one running node is Control
//!   in its membership engine, every running node sees that Control, and its Control
//!   actor exists, is rebuilt and acts.
//! - [`one_instance_per_service`]: **exactly one running instance per admitted service**:
//!   every service the acting Control keeps runs exactly once on the running nodes, and no
//!   service (kept or not) runs twice.
//! - [`requests_answered`]: **every API request answered**: each operator request sent
//!   more than the request budget (plus a margin) ago has an answer.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::world::{Mode, Sim};

/// The quiet period of a settle.
pub const QUIET: Duration = Duration::from_secs(20);

/// The running node whose Control acts, if the cluster has exactly one and everyone
/// agrees; otherwise why not.
pub(crate) fn acting_control(sim: &Sim) -> Result<usize, String> {
    let running: Vec<usize> = (0..sim.nodes.len()).filter(|i| sim.running(*i)).collect();
    let controls: Vec<usize> = running
        .iter()
        .copied()
        .filter(|i| sim.proc(*i).is_some_and(|p| p.membership.is_control()))
        .collect();
    let [c] = controls[..] else {
        return Err(format!(
            "{} running nodes are Control in membership ({controls:?})",
            controls.len()
        ));
    };
    let p = sim.proc(c).ok_or("gone")?;
    let view = p.membership.control();
    for i in &running {
        let seen = sim.proc(*i).and_then(|q| q.membership.control());
        if seen != view {
            return Err(format!(
                "n{i} sees Control {seen:?}, n{c} is Control at {view:?}"
            ));
        }
    }
    let Some(actor) = &p.control else {
        return Err(format!(
            "n{c} is Control in membership (slot {:?}) but has no Control actor",
            p.slot
        ));
    };
    let s = actor.engine.status();
    if !(s.rebuilt && s.acting) {
        return Err(format!(
            "n{c}'s Control at epoch {} is not acting (rebuilt {}, acting {}, slot {:?})",
            s.epoch, s.rebuilt, s.acting, p.slot
        ));
    }
    Ok(c)
}

/// Whether enough nodes run for the cluster to have a Control.
pub(crate) fn can_elect(sim: &Sim) -> bool {
    let running = (0..sim.nodes.len()).filter(|i| sim.running(*i)).count();
    match sim.setup.mode {
        Mode::Available => running > 0,
        Mode::Majority => running > sim.nodes.len() / 2,
    }
}

/// No wedged Control (see the module).
pub fn control_acts(sim: &mut Sim) {
    if !can_elect(sim) {
        return;
    }
    sim.history.checked("no wedged control");
    if let Err(e) = acting_control(sim) {
        sim.fail(format!("wedged: {QUIET:?} after settling, {e}"));
    }
}

/// Exactly one running instance per service (see the module).
pub fn one_instance_per_service(sim: &mut Sim) {
    let mut running: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
    for i in 0..sim.nodes.len() {
        if let Some(p) = sim.proc(i) {
            for (name, r) in &p.runtime {
                if !r.stopping {
                    running
                        .entry(r.service.clone())
                        .or_default()
                        .push((i, name.clone()));
                }
            }
        }
    }
    sim.history.checked("at most one instance per service");
    if let Some((s, copies)) = running.iter().find(|(_, c)| c.len() > 1) {
        let msg = format!("{s} runs {} times after settling: {copies:?}", copies.len());
        sim.fail(msg);
        return;
    }
    let Ok(c) = acting_control(sim) else { return };
    let kept: Vec<String> = sim
        .proc(c)
        .and_then(|p| p.control.as_ref())
        .map(|a| a.engine.status().services.into_keys().collect())
        .unwrap_or_default();
    sim.history.checked("every kept service runs");
    for s in kept {
        if !running.contains_key(&s) {
            sim.fail(format!(
                "{s} is kept by the Control on n{c} but no instance runs after settling"
            ));
            return;
        }
    }
}

/// Every operator request answered (see the module).
pub fn requests_answered(sim: &mut Sim) {
    let due = crate::shell::BUDGET + Duration::from_secs(2);
    sim.history.checked("every api request answered");
    let now = sim.now;
    let late = sim
        .history
        .requests
        .iter()
        .find(|r| r.answer.is_none() && r.issued + due <= now)
        .cloned();
    if let Some(r) = late {
        sim.fail(format!(
            "the request {:?} sent to n{} at {:?} is unanswered at {:?}",
            r.req, r.entry, r.issued, now
        ));
    }
}
