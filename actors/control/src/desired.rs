//! The Control's side of the desired-state log (docs/DESIGN.md, "Desired state in a Raft
//! log"), as pure functions the actor (and the cluster simulator's model of it) call: which
//! operator requests change the desired state, when writing one is worth it, what a new
//! Control restores from the log, and the writes that record the engine's health drains.

use std::collections::BTreeSet;

use smart_proto::NodeId;
use smart_proto::api::Request;
use smart_proto::desired::{DesiredCmd, DesiredState};
use smart_proto::node::{Replica, ReplicaEntry};

use crate::ControlStatus;

/// The desired-state change an operator's request makes, if any (docs/DESIGN.md, "Desired
/// state in a Raft log"). Viewers (clients) are observed state: never written.
pub fn desired_change(req: &Request) -> Option<DesiredCmd> {
    match req {
        Request::AdmitService(spec) => Some(DesiredCmd::PutService(spec.clone())),
        Request::StopService { service } => Some(DesiredCmd::RemoveService {
            name: service.clone(),
        }),
        Request::Drain { node } => Some(DesiredCmd::Drain {
            node: *node,
            by_health: false,
        }),
        Request::Undrain { node } => Some(DesiredCmd::Undrain {
            node: *node,
            by_health: false,
        }),
        _ => None,
    }
}

/// Whether an operator's change is worth writing before the engine decides: not while the
/// engine would refuse anyway (`may_act` false, or still rebuilding), nor for a service it
/// already has (an admission of a known name is the engine's to answer).
pub fn worth_writing(status: &ControlStatus, may_act: bool, req: &Request) -> bool {
    status.rebuilt
        && may_act
        && match req {
            Request::AdmitService(spec) => !status.services.contains_key(&spec.name),
            _ => true,
        }
}

/// What a new Control starts from: the registry copy (where services ran, their viewers)
/// and the desired-state log (what must run, drains, profiles), so that a service the log
/// holds is restored even when no registry copy survived (a whole-cluster restart). A
/// service only in the log has no node: the rebuild restarts it where admission says.
pub fn restore_from(mut replica: Replica, desired: &DesiredState) -> Replica {
    for spec in desired.services.values() {
        if !replica.services.iter().any(|e| e.spec.name == spec.name) {
            replica.services.push(ReplicaEntry {
                spec: spec.clone(),
                node: NodeId(0),
                clients: 0,
            });
        }
    }
    for n in &desired.drained {
        if !replica.drained.contains(n) {
            replica.drained.push(*n);
        }
    }
    for n in &desired.health_drained {
        if !replica.health_drained.contains(n) {
            replica.health_drained.push(*n);
        }
    }
    for p in desired.profiles.values() {
        match replica.profiles.iter_mut().find(|q| q.class == p.class) {
            Some(q) if q.version >= p.version => {}
            Some(q) => *q = p.clone(),
            None => replica.profiles.push(p.clone()),
        }
    }
    replica
}

/// The log writes that take the health drains from `before` to `now`.
pub fn health_drain_changes(before: &BTreeSet<NodeId>, now: &BTreeSet<NodeId>) -> Vec<DesiredCmd> {
    let drains = now.difference(before).map(|&node| DesiredCmd::Drain {
        node,
        by_health: true,
    });
    let undrains = before.difference(now).map(|&node| DesiredCmd::Undrain {
        node,
        by_health: true,
    });
    drains.chain(undrains).collect()
}
