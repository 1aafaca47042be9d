//! The cluster as this node's membership sees it, published through a `watch` channel for
//! the other actors (the Control reads the live agents, the forwarder the Control's
//! address, event fan-out the other members).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use smart_proto::{Epoch, NodeId};

/// A live agent the Control can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentAddr {
    /// Its node id.
    pub node: NodeId,
    /// Its transport address.
    pub addr: SocketAddr,
}

/// The Control as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlAt {
    /// Its node.
    pub node: NodeId,
    /// Its epoch.
    pub epoch: Epoch,
    /// Its transport address.
    pub addr: SocketAddr,
}

/// Whether, and until when, this node's Control may act, as its election engine last
/// computed it ([`crate::engine::NodeEngine::acting_lease`]). Membership publishes it after
/// every input in a `watch` of its own; the Control's shell reads it right before every
/// decision, so a Control never acts on a lease that ran out while it was not looking (a
/// pause, a slow membership actor): `until` is an instant, not a flag that waits for the
/// next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ActingLease {
    /// The epoch the local Control may act at (`None`: it may not act).
    pub epoch: Option<Epoch>,
    /// The instant acting stops being valid (majority mode: when fewer than a majority of
    /// leases remain, each dated with the engine's margin); `None`: no limit (available
    /// mode).
    pub until: Option<std::time::Instant>,
}

impl ActingLease {
    /// Whether the Control may act at `epoch` at `now`.
    pub fn valid(&self, epoch: Epoch, now: std::time::Instant) -> bool {
        self.epoch == Some(epoch) && self.until.is_none_or(|u| now < u)
    }
}

/// What membership publishes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterView {
    /// The current Control (`None` during an election).
    pub control: Option<ControlAt>,
    /// Live members with the agent role, this node included, by node id.
    pub agents: Vec<AgentAddr>,
    /// Transport addresses of the other live members (any role), by node id.
    pub others: BTreeMap<NodeId, SocketAddr>,
}

/// Whether a request only the Control may send (an agent command, a registry copy) comes
/// from the Control this node knows ([`ClusterView::sender_is_control`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromControl {
    /// The sender is the Control of the view (at whatever epoch it stamps: the agent's own
    /// fencing and the copy's ordering judge that).
    Yes,
    /// Undecided: the view has no Control (an election), or the sender stamps an epoch
    /// above the view's Control, so it may be a new Control this node has not heard of
    /// yet. Ask again when the view changes, for a bounded time.
    NotYet,
    /// Another node is Control at an epoch at least the sender's.
    No {
        /// The view's Control.
        control: NodeId,
        /// Its epoch.
        epoch: Epoch,
    },
}

impl ClusterView {
    /// The view from what the engine knows: `me` (id, transport address, whether it runs
    /// an agent), the Control it sees, and its members. A Control whose address is not
    /// known yet (heard by its claim before its first heartbeat) is no Control here.
    pub fn derive(
        me: (NodeId, SocketAddr, bool),
        control: Option<crate::engine::ControlInfo>,
        members: &[crate::engine::MemberView],
    ) -> Self {
        let (id, addr, agent) = me;
        let control = control.and_then(|c| {
            let at = if c.node_id == id {
                addr
            } else {
                members.iter().find(|m| m.node_id == c.node_id)?.tcp_addr
            };
            Some(ControlAt {
                node: c.node_id,
                epoch: c.epoch,
                addr: at,
            })
        });
        let mut agents: Vec<AgentAddr> = members
            .iter()
            .filter(|m| m.alive && m.roles.contains(&smart_proto::Role::Agent))
            .map(|m| AgentAddr {
                node: m.node_id,
                addr: m.tcp_addr,
            })
            .collect();
        if agent {
            agents.push(AgentAddr { node: id, addr });
        }
        agents.sort_by_key(|a| a.node);
        let others = members
            .iter()
            .filter(|m| m.alive && m.node_id != id)
            .map(|m| (m.node_id, m.tcp_addr))
            .collect();
        ClusterView {
            control,
            agents,
            others,
        }
    }

    /// Judges a request from the authenticated node `from`, stamped with `epoch` (see
    /// [`FromControl`]).
    pub fn sender_is_control(&self, from: NodeId, epoch: Epoch) -> FromControl {
        match self.control {
            None => FromControl::NotYet,
            Some(c) if c.node == from => FromControl::Yes,
            Some(c) if epoch > c.epoch => FromControl::NotYet,
            Some(c) => FromControl::No {
                control: c.node,
                epoch: c.epoch,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(control: Option<(u64, Epoch)>) -> ClusterView {
        ClusterView {
            control: control.map(|(n, epoch)| ControlAt {
                node: NodeId(n),
                epoch,
                addr: "127.0.0.1:1".parse().unwrap(),
            }),
            ..ClusterView::default()
        }
    }

    #[test]
    fn only_the_views_control_is_the_control() {
        let v = view(Some((1, 7)));
        assert_eq!(v.sender_is_control(NodeId(1), 7), FromControl::Yes);
        // Its own epoch is for the agent's fencing to judge, not for the view.
        assert_eq!(v.sender_is_control(NodeId(1), 3), FromControl::Yes);
        assert_eq!(v.sender_is_control(NodeId(1), 9), FromControl::Yes);
        assert_eq!(
            v.sender_is_control(NodeId(2), 7),
            FromControl::No {
                control: NodeId(1),
                epoch: 7
            }
        );
        assert_eq!(
            v.sender_is_control(NodeId(2), 6),
            FromControl::No {
                control: NodeId(1),
                epoch: 7
            }
        );
        // A newer epoch than the view knows: perhaps a new Control; the view decides later.
        assert_eq!(v.sender_is_control(NodeId(2), 8), FromControl::NotYet);
        assert_eq!(
            view(None).sender_is_control(NodeId(2), 1),
            FromControl::NotYet
        );
    }
}
