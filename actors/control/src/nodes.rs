//! The `Nodes` answer: every agent node as the Control sees it, from its own state, with
//! the VR the Control admits with (`[admission] vr`), so that `smart nodes`, `/v1/nodes`
//! and the dashboard draw the line admission really uses.

use smart_proto::api::{InstanceUse, NodeReport};

use crate::{ControlStatus, spec_of};

/// A `Nodes` answer from a Control's view: every agent it has a report from, with `vr`
/// the fraction of capacity admission may fill.
pub fn node_reports(s: &ControlStatus, vr: f64) -> Vec<NodeReport> {
    s.agents
        .iter()
        .map(|(node, r)| NodeReport {
            node_id: *node,
            drained: s.drained.contains(node),
            usage: r.usage,
            reserved: r.reserved_total,
            vr,
            instances: r
                .instances
                .iter()
                .map(|i| InstanceUse {
                    instance: i.instance.clone(),
                    service: spec_of(&i.launch).map(|s| s.name),
                    reserved: i.reservation,
                    cpu_cores: i.usage.as_ref().map(|u| u.cpu_cores),
                    net_bps: i.usage.as_ref().and_then(|u| u.net_bps),
                    mem_bytes: i.usage.as_ref().map(|u| u.mem_bytes),
                    clients: i.usage.as_ref().and_then(|u| u.clients),
                })
                .collect(),
        })
        .collect()
}
