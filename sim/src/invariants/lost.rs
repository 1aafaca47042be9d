//! **No service declared lost while a live node can run it.**
//!
//! Every simulated node has room for every service the scenarios admit (8 cores, 16 GiB,
//! a 10 Gbit/s NIC; services of a 400 kbit/s video with a handful of viewers; the
//! `single_node_takes_every_service` test shows one node admitting all of them), so a live
//! node the declaring Control can reach both ways (its own node at least) could always
//! run it: a `Lost` event from a running Control is a violation.

use crate::world::Sim;

/// A Control on node `n` published `Lost` for `service`.
pub(crate) fn on_lost(sim: &mut Sim, n: usize, service: &str, reason: &str) {
    sim.history
        .checked("no service lost while a node can run it");
    let now = sim.now;
    sim.history
        .lost
        .push((now, n, service.to_string(), reason.to_string()));
    let able: Vec<usize> = (0..sim.nodes.len())
        .filter(|j| sim.running(*j) && sim.net.reachable(n, *j) && sim.net.reachable(*j, n))
        .collect();
    if !able.is_empty() {
        sim.fail(format!(
            "n{n}'s Control declared {service} lost ({reason}) while nodes {able:?} run and \
             are reachable"
        ));
    }
}
