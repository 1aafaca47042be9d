//! Typed handles to a node's actors. The supervisor owns the senders and publishes a new
//! handle every time it (re)spawns a child; whoever needs to reach an actor holds a
//! receiver and reads the current handle, `None` while that actor is restarting. No actor
//! is looked up by name.

use ractor::ActorRef;
use smart_actors::agent86::Agent86Msg;
use smart_actors::control::ControlMsg;
use tokio::sync::watch;

use super::messages::MembershipMsg;

/// The senders, owned by the supervisor.
pub struct Routes {
    /// Agent86.
    pub agent86: watch::Sender<Option<ActorRef<Agent86Msg>>>,
    /// Membership.
    pub membership: watch::Sender<Option<ActorRef<MembershipMsg>>>,
    /// The Control, while this node is Control.
    pub control: watch::Sender<Option<ActorRef<ControlMsg>>>,
}

/// The receivers, cloned into whoever needs to reach an actor.
#[derive(Clone)]
pub struct RouteReaders {
    /// Agent86.
    pub agent86: watch::Receiver<Option<ActorRef<Agent86Msg>>>,
    /// Membership.
    pub membership: watch::Receiver<Option<ActorRef<MembershipMsg>>>,
    /// The Control, while this node is Control.
    pub control: watch::Receiver<Option<ActorRef<ControlMsg>>>,
}

impl Routes {
    /// No actor yet.
    pub fn new() -> Self {
        Self {
            agent86: watch::channel(None).0,
            membership: watch::channel(None).0,
            control: watch::channel(None).0,
        }
    }

    /// Receivers for a child.
    pub fn readers(&self) -> RouteReaders {
        RouteReaders {
            agent86: self.agent86.subscribe(),
            membership: self.membership.subscribe(),
            control: self.control.subscribe(),
        }
    }
}

impl Default for Routes {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteReaders {
    /// Agent86 now.
    pub fn agent86(&self) -> Option<ActorRef<Agent86Msg>> {
        self.agent86.borrow().clone()
    }

    /// Membership now.
    pub fn membership(&self) -> Option<ActorRef<MembershipMsg>> {
        self.membership.borrow().clone()
    }

    /// The Control now.
    pub fn control(&self) -> Option<ActorRef<ControlMsg>> {
        self.control.borrow().clone()
    }
}
