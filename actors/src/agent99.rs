//! Agent99: the profiler role (thesis §4.1.1, DESIGN §1).
//!
//! Profiling runs a service alone under real load and turns its samples into a profile; the
//! engine that does it is `smart-instance`'s profiler (`smart profile`). This actor is the
//! node-side handle of the role: it records which profiles this node produced so the Control
//! can fetch them.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use smart_supervision::NodeId;

/// Agent99's messages.
#[derive(Debug)]
pub enum Agent99Msg {
    /// A profile for `service` was written to `path`.
    Profiled {
        /// Service class.
        service: String,
        /// Profile file.
        path: String,
    },
    /// The profiles this node holds.
    List(RpcReplyPort<Vec<(String, String)>>),
}

/// Agent99's configuration.
pub struct Agent99 {
    /// This node.
    pub node: NodeId,
}

impl Actor for Agent99 {
    type Msg = Agent99Msg;
    type State = Vec<(String, String)>;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(Vec::new())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Agent99Msg::Profiled { service, path } => {
                tracing::info!(node = %self.node, %service, %path, "profile recorded");
                st.retain(|(s, _)| s != &service);
                st.push((service, path));
            }
            Agent99Msg::List(reply) => {
                let _ = reply.send(st.clone());
            }
        }
        Ok(())
    }
}
