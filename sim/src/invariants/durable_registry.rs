//! **No acknowledged desired-state write lost.**
//!
//! Every service the operator was told is admitted (`Placed`), in any era (an era ends
//! when no node runs: a whole-cluster outage), must be kept by the acting Control after a
//! settle, and therefore run (see `settled::one_instance_per_service`). The admission was
//! written to the desired-state log (modelled: committed when the writer reaches a
//! majority) before the engine decided, and a new Control restores from the log what no
//! registry copy lists. Checked at every settle when `Options::durable_registry` is set (the
//! fuzz loop and the whole-cluster restart scenario set it).

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
