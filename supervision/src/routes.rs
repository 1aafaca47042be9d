//! Typed handles to a node's actors. The supervisor owns the senders and publishes a new
//! handle every time it (re)spawns a child; whoever needs to reach an actor holds a
//! receiver and reads the current handle, `None` while that actor is restarting. No actor
//! is looked up by name.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use smart_agent86::Agent86Msg;
use smart_control::ControlMsg;
use smart_membership::actor::LoadSource;
use smart_proto::heartbeat::LoadSummary;
use tokio::sync::watch;

use smart_membership::messages::MembershipMsg;

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

impl RouteReaders {
    /// Membership's [`LoadSource`]: Agent86's last sample, summarised for heartbeats
    /// (`None` while Agent86 restarts or does not answer within half a second).
    pub fn load_source(&self) -> LoadSource {
        let agent86 = self.agent86.clone();
        Arc::new(move || {
            let agent = agent86.borrow().clone();
            Box::pin(async move {
                let agent = agent?;
                let Ok(ractor::rpc::CallResult::Success(r)) = agent
                    .call(Agent86Msg::Report, Some(Duration::from_millis(500)))
                    .await
                else {
                    return None;
                };
                let mut load = LoadSummary {
                    instances: u16::try_from(r.instances.len()).unwrap_or(u16::MAX),
                    ..LoadSummary::default()
                };
                if let Some(u) = r.usage {
                    load.cpu_milli = (u.cpu_busy_cores * 1000.0).clamp(0.0, u32::MAX as f64) as u32;
                    load.mem_used_mib = (u.mem_total_bytes.saturating_sub(u.mem_available_bytes)
                        >> 20)
                        .min(u32::MAX as u64) as u32;
                    load.net_kbps = (u.net_bps / 1000.0).clamp(0.0, u32::MAX as f64) as u32;
                }
                Some(load)
            })
        })
    }
}
