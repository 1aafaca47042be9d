//! Agent86: the node agent (thesis §4, DESIGN §1).
//!
//! Here it carries the fencing rule of DESIGN §2.4: a command is checked against the node's
//! highest epoch **when it executes**, not only when it is received, because commands queue
//! in the mailbox and a newer Control may become known in between. A command at a new,
//! higher epoch first raises (and so persists) the node's highest epoch, then runs.
//!
//! Commands are handled one at a time by the actor, so the check and the execution are atomic
//! with respect to other commands.

use std::collections::VecDeque;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use smart_supervision::{Epoch, NodeId};
use tracing::{info, warn};

use crate::epoch::EpochStore;
use crate::proto::{AgentCommand, AgentReport, PeerResponse};

/// How many executed commands a report lists.
const RECENT: usize = 32;

/// Agent86's messages.
#[derive(Debug)]
pub enum Agent86Msg {
    /// A command from a Control, with the Control's epoch.
    Command {
        /// The Control.
        from: NodeId,
        /// Its epoch.
        epoch: Epoch,
        /// What to do.
        cmd: AgentCommand,
        /// The answer.
        reply: RpcReplyPort<PeerResponse>,
    },
    /// The agent's state, without fencing (local status).
    Report(RpcReplyPort<AgentReport>),
}

/// Agent86's fixed configuration.
pub struct Agent86 {
    /// This node.
    pub node: NodeId,
    /// The node's persisted highest epoch.
    pub epochs: Arc<dyn EpochStore>,
    /// Fault injection for the supervision tests: panic while handling the first `n`
    /// messages of each incarnation of the actor (`None` in production).
    pub panic_on_message: Option<Arc<std::sync::atomic::AtomicU32>>,
}

/// Agent86's mutable state.
#[derive(Debug, Default)]
pub struct Agent86State {
    recent: VecDeque<(Epoch, u64)>,
    refused_stale: u64,
}

impl Agent86 {
    fn report(&self, st: &Agent86State) -> AgentReport {
        AgentReport {
            node: self.node.0,
            instances: Vec::new(),
            recent_commands: st.recent.iter().copied().collect(),
            refused_stale: st.refused_stale,
        }
    }

    /// The fencing rule, at execution time.
    fn execute(
        &self,
        st: &mut Agent86State,
        from: NodeId,
        epoch: Epoch,
        cmd: AgentCommand,
    ) -> Result<PeerResponse, ActorProcessingErr> {
        let highest = self.epochs.highest();
        if epoch < highest {
            st.refused_stale += 1;
            warn!(node = %self.node, %from, epoch, highest, "refused command from a stale control");
            return Ok(PeerResponse::Refused { epoch, highest });
        }
        if epoch > highest {
            // Durable before acting: a node that cannot persist must stop (escalates).
            self.epochs.raise(epoch)?;
            info!(node = %self.node, %from, epoch, "agent raised its epoch");
        }
        if st.recent.len() == RECENT {
            st.recent.pop_front();
        }
        st.recent.push_back((epoch, from.0));
        Ok(match cmd {
            AgentCommand::Report => PeerResponse::Report(self.report(st)),
        })
    }
}

impl Actor for Agent86 {
    type Msg = Agent86Msg;
    type State = Agent86State;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(Agent86State::default())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(left) = &self.panic_on_message {
            let before = left
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .unwrap_or(0);
            if before > 0 {
                panic!("agent86: injected fault (SMART_FAULT)");
            }
        }
        match msg {
            Agent86Msg::Command {
                from,
                epoch,
                cmd,
                reply,
            } => {
                let resp = self.execute(st, from, epoch, cmd)?;
                // The requester may have given up (timeout): not an error for the agent.
                let _ = reply.send(resp);
            }
            Agent86Msg::Report(reply) => {
                let _ = reply.send(self.report(st));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::epoch::MemoryEpochStore;
    use ractor::call_t;

    async fn spawn(store: MemoryEpochStore) -> ActorRef<Agent86Msg> {
        let (a, _) = Actor::spawn(
            None,
            Agent86 {
                node: NodeId(9),
                epochs: Arc::new(store),
                panic_on_message: None,
            },
            (),
        )
        .await
        .unwrap();
        a
    }

    async fn cmd(a: &ActorRef<Agent86Msg>, from: u64, epoch: Epoch) -> PeerResponse {
        call_t!(
            a,
            |reply| Agent86Msg::Command {
                from: NodeId(from),
                epoch,
                cmd: AgentCommand::Report,
                reply
            },
            1000
        )
        .unwrap()
    }

    #[tokio::test]
    async fn stale_epochs_are_refused_and_new_ones_persisted_first() {
        let store = MemoryEpochStore::new(3);
        let a = spawn(store.clone()).await;
        assert!(matches!(cmd(&a, 1, 3).await, PeerResponse::Report(_)));
        assert_eq!(
            cmd(&a, 1, 2).await,
            PeerResponse::Refused {
                epoch: 2,
                highest: 3
            }
        );
        // A newer Control appears: the agent raises its epoch ...
        assert!(matches!(cmd(&a, 2, 5).await, PeerResponse::Report(_)));
        assert_eq!(store.highest(), 5);
        // ... and the old one is now fenced off.
        assert!(matches!(
            cmd(&a, 1, 3).await,
            PeerResponse::Refused { highest: 5, .. }
        ));
        let r = call_t!(a, Agent86Msg::Report, 1000).unwrap();
        assert_eq!(r.refused_stale, 2);
        assert_eq!(r.recent_commands, vec![(3, 1), (5, 2)]);
    }

    #[tokio::test]
    async fn epoch_raised_elsewhere_fences_the_agent() {
        // The node's membership saw a newer Control's heartbeat and raised the shared store:
        // the agent consults it when it executes, so an older Control is refused even though
        // the agent itself never received a command at the newer epoch.
        let store = MemoryEpochStore::new(1);
        let a = spawn(store.clone()).await;
        let (tx, rx) = ractor::concurrency::oneshot();
        store.raise(4).unwrap();
        a.send_message(Agent86Msg::Command {
            from: NodeId(1),
            epoch: 1,
            cmd: AgentCommand::Report,
            reply: tx.into(),
        })
        .unwrap();
        assert_eq!(
            rx.await.unwrap(),
            PeerResponse::Refused {
                epoch: 1,
                highest: 4
            }
        );
    }
}
