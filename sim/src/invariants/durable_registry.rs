//! **No acknowledged desired-state write lost** — the hook for the replicated log.
//!
//! Every service the operator was told is admitted (`Placed`), in any era (an era ends
//! when no node runs: a whole-cluster outage), must be kept by the acting Control after a
//! settle, and therefore run (see `settled::one_instance_per_service`).
//!
//! Today the Control's registry copy (`Replica`) lives in each node's memory only and is
//! sent every refresh: a whole-cluster restart forgets every service, and a Control dying
//! with the node of a service admitted within the last refresh forgets that one. So this
//! is not among the invariants checked by default: a scenario turns it on with
//! `Options::durable_registry`, and the test that does is ignored until the registry is
//! replicated durably (see the report of that test).

use crate::invariants::settled::acting_control;
use crate::world::Sim;

/// Every acknowledged service is kept by the acting Control.
pub fn acknowledged_kept(sim: &mut Sim) {
    let Ok(c) = acting_control(sim) else { return };
    sim.history.checked("no acknowledged service forgotten");
    let kept = sim
        .proc(c)
        .and_then(|p| p.control.as_ref())
        .map(|a| a.engine.status().services)
        .unwrap_or_default();
    let missing: Vec<(String, u64)> = sim
        .history
        .acked
        .iter()
        .filter(|(s, _)| !kept.contains_key(*s))
        .map(|(s, a)| (s.clone(), a.era))
        .collect();
    if !missing.is_empty() {
        sim.fail(format!(
            "acknowledged services forgotten by the Control on n{c} (service, era): {missing:?} \
             (current era {})",
            sim.history.era
        ));
    }
}
