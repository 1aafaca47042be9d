//! Membership: the thin actor shell around `smart_membership::engine::NodeEngine`.
//!
//! It owns the heartbeat sockets, feeds the engine every datagram that authenticates and a
//! tick every [`TICK`], and executes the engine's outputs in order: sends, durable epoch
//! raises (before anything that follows), Control start/stop (through the node supervisor),
//! and the views that other actors read (who is Control, which agents are alive).
//!
//! Datagrams that fail to decode (bad size, magic, version, tag, payload) are dropped and
//! counted by reason; the engine counts replays, duplicates, stale or unverified
//! incarnations, non-members and epoch jumps. An epoch write that fails for a transient
//! cause is fed back to the engine (`Input::PersistFailed`), which steps down and retries;
//! a fatal one stops this actor with `EpochWriteError::Fatal`, and the node escalates. Nothing a remote
//! sends can panic this actor: the codec returns typed errors for any byte string.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use crate::detector::DetectorConfig;
use crate::election::{Leadership, Mode};
use crate::engine::{Dest, EngineConfig, Input, NodeEngine, Output};
use crate::epoch::{EpochStore, Fatal, PersistError};
use crate::udp::{self, MulticastParams};
use crate::view::{ActingLease, ClusterView};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rand::SeedableRng;
use rand::rngs::StdRng;
use smart_proto::api::{ClusterStatus, ControlView, Event, MemberLoad, MemberStatus};
use smart_proto::heartbeat::Keyring;
use smart_proto::heartbeat::LoadSummary;
use smart_proto::pair::MemberKeys;
use smart_proto::{Role, heartbeat as wire};
use smart_transport::ratelog::WarnLimiter;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::durable::DurableState;
use crate::messages::{MembershipMsg, NodeMsg};
use smart_config::{ElectionMode, NodeConfig};
use smart_node::counters::Counters;
use smart_node::events::Subscribers;

/// How often the engine is ticked. Well below the heartbeat interval so that timers (backoff,
/// detector) fire within a few milliseconds of their deadline.
pub const TICK: Duration = Duration::from_millis(10);

/// How often (in ticks) the node's load is refreshed from Agent86: once a second.
const LOAD_EVERY_TICKS: u32 = 100;

fn member_load(l: LoadSummary) -> MemberLoad {
    MemberLoad {
        cpu_milli: l.cpu_milli,
        mem_used_mib: l.mem_used_mib,
        net_kbps: l.net_kbps,
        instances: l.instances,
    }
}

/// Where the node's load comes from: a future answering Agent86's last sample as a
/// [`LoadSummary`], or `None` when there is none (no agent, or it is restarting).
pub type LoadSource =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<LoadSummary>> + Send>> + Send + Sync>;

/// Majority mode: the desired-state log's Raft, as membership uses it.
#[derive(Clone)]
pub struct RaftLink {
    /// Raft's word on this node, as it changes (fed to the engine as
    /// [`Input::Leadership`]).
    pub leadership: watch::Receiver<Leadership>,
    /// Asks Raft for an election now: the Control handed over to this node.
    pub elect: Arc<dyn Fn() + Send + Sync>,
}

/// The actor.
pub struct Membership {
    /// The node's configuration.
    pub cfg: Arc<NodeConfig>,
    /// Authenticates (and may encrypt) heartbeats.
    pub ring: Keyring,
    /// This node's pair keys with every member: every datagram it sends carries a tag for
    /// each, and a datagram is believed only with the tag of the member it names (a
    /// cluster-key holder cannot speak in another member's name).
    pub member_keys: MemberKeys,
    /// Rate-limited WARN lines.
    pub warnings: Arc<WarnLimiter>,
    /// Durable epochs and incarnation.
    pub durable: Arc<DurableState>,
    /// Where the cluster view is published.
    pub view: Arc<watch::Sender<ClusterView>>,
    /// Where whether (and until when) the local Control may act is published, after every
    /// input: the Control reads it right before each decision.
    pub acting: Arc<watch::Sender<ActingLease>>,
    /// Counters.
    pub counters: Arc<Counters>,
    /// Event subscribers of this node.
    pub subscribers: Arc<Subscribers>,
    /// The node's load for the next heartbeats (Agent86's last sample), asked every few
    /// ticks.
    pub load: LoadSource,
    /// The node supervisor, which starts and stops the Control.
    pub supervisor: ActorRef<NodeMsg>,
    /// A restart of membership within the node's life: it takes a new incarnation.
    pub restart: bool,
    /// Majority mode: the Raft group whose leader is the Control.
    pub raft: Option<RaftLink>,
}

/// Its state.
pub struct MembershipState {
    engine: NodeEngine<StdRng>,
    socket: Arc<UdpSocket>,
    group: Option<SocketAddr>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    /// Our own load, as last set.
    load: LoadSummary,
    /// Ticks since the load was last asked for.
    ticks: u32,
}

/// Feeds Raft's word on this node to the actor as it changes (majority mode).
fn spawn_leadership(
    mut rx: watch::Receiver<Leadership>,
    me: ActorRef<MembershipMsg>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let lead = *rx.borrow_and_update();
            if me.send_message(MembershipMsg::Leadership(lead)).is_err() {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
}

fn engine_config(cfg: &NodeConfig, incarnation: u64) -> EngineConfig {
    let mut e = EngineConfig::new(
        cfg.id(),
        incarnation,
        cfg.advertise_addr(),
        cfg.roles.clone(),
    );
    e.heartbeat_interval = cfg.timing.heartbeat_interval;
    e.detector = DetectorConfig {
        interval: cfg.timing.heartbeat_interval,
        dead_after: cfg.timing.dead_after,
    };
    e.election.backoff = cfg.timing.election_backoff;
    e.election.profiler_backoff = cfg.timing.profiler_backoff;
    e.election.listen = cfg.timing.dead_after;
    e.election.mode = match cfg.election.mode {
        ElectionMode::Available => Mode::Available,
        ElectionMode::Majority => Mode::Majority {
            members: cfg
                .election
                .members
                .iter()
                .map(|&n| smart_proto::NodeId(n))
                .collect(),
        },
    };
    e.use_seeds = !cfg.seeds.is_empty();
    e.members = cfg
        .election
        .members
        .iter()
        .map(|&n| smart_proto::NodeId(n))
        .collect();
    e.max_epoch_step = cfg.election.max_epoch_step;
    e.forget_after = cfg.timing.forget_after;
    e
}

fn spawn_reader(
    sock: Arc<UdpSocket>,
    me: ActorRef<MembershipMsg>,
    counters: Arc<Counters>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // One byte more than the largest valid datagram, so that oversized ones are seen as
        // such (and counted) instead of silently truncated.
        let mut buf = vec![0u8; wire::MAX_DATAGRAM + 1];
        loop {
            match sock.recv_from(&mut buf).await {
                Ok((n, from)) => {
                    if me
                        .send_message(MembershipMsg::Datagram(buf[..n].to_vec(), from))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    // ICMP errors from unicast sends surface here on Linux: not fatal.
                    counters.incr("udp_recv_errors");
                    debug!(error = %e, "udp receive error");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

impl Membership {
    async fn execute(
        &self,
        st: &mut MembershipState,
        outputs: Vec<Output>,
    ) -> Result<(), ActorProcessingErr> {
        let id = self.cfg.id();
        for out in outputs {
            match out {
                Output::Send { dest, msg } => {
                    // One datagram unless the cluster is too large for one (pair tags).
                    let datagrams = wire::encode_with(&msg, &self.ring, &self.member_keys);
                    let targets: Vec<SocketAddr> = match dest {
                        Dest::Multicast => st.group.into_iter().collect(),
                        Dest::Seeds => self.cfg.seeds.clone(),
                        Dest::Addr(a) => vec![a],
                    };
                    for t in targets {
                        for bytes in &datagrams {
                            if let Err(e) = st.socket.send_to(bytes, t).await {
                                self.counters.incr("udp_send_errors");
                                debug!(node = %id, to = %t, error = %e, "heartbeat send failed");
                            }
                        }
                    }
                }
                Output::PersistEpoch(e) => match self.durable.raise(e) {
                    Ok(()) => {}
                    // Out of descriptors, disk full: refuse to act on the epoch (the rest
                    // of this batch relies on it), step down, and let the engine retry.
                    Err(err @ PersistError::Retryable { .. }) => {
                        self.counters.incr("epoch_write_retries");
                        self.warnings.warn(
                            "epoch_write",
                            format_args!("{err}; not acting on it until a retry succeeds"),
                        );
                        let more = st
                            .engine
                            .handle(Input::PersistFailed { epoch: e }, Instant::now());
                        return Box::pin(self.execute(st, more)).await;
                    }
                    // Fatal: acting on an epoch we could not persist could let a restarted
                    // node reuse it; the supervisor escalates on this type.
                    Err(err @ PersistError::Fatal { .. }) => {
                        error!(node = %id, epoch = e, error = %err, "cannot persist epoch");
                        return Err(Fatal::from(err).into());
                    }
                },
                Output::BecomeControl { epoch } => {
                    info!(node = %id, epoch, "became control; rebuilding state");
                    self.counters.incr("became_control");
                    let _ = self.supervisor.send_message(NodeMsg::StartControl {
                        epoch,
                        acting: false,
                    });
                }
                Output::RestartControl { epoch, acting } => {
                    info!(
                        node = %id,
                        epoch,
                        acting,
                        "control actor fenced by our own re-assertion; restarting it"
                    );
                    let _ = self
                        .supervisor
                        .send_message(NodeMsg::StartControl { epoch, acting });
                }
                Output::Reasserted { epoch } => {
                    info!(node = %id, epoch, "control re-asserted at a higher epoch");
                    let _ = self
                        .supervisor
                        .send_message(NodeMsg::ControlEpoch { epoch });
                }
                Output::ControlActing { epoch, acting } => {
                    info!(node = %id, epoch, acting, "control acting state");
                    let _ = self
                        .supervisor
                        .send_message(NodeMsg::ControlActing { epoch, acting });
                }
                Output::StepDown { epoch, reason } => {
                    warn!(node = %id, epoch, ?reason, "stepping down as control");
                    self.counters.incr("stepped_down");
                    let _ = self.supervisor.send_message(NodeMsg::StopControl);
                }
                Output::ControlChanged(view) => {
                    info!(node = %id, control = ?view.map(|v| (v.node_id.0, v.epoch)), "control changed");
                    self.publish(st);
                    if let Some(v) = view {
                        self.subscribers.publish(&Event::ControlChanged {
                            node: v.node_id,
                            epoch: v.epoch,
                        });
                    }
                }
                Output::MemberUp(n) => {
                    info!(node = %id, member = %n, "member up");
                    self.publish(st);
                    self.subscribers.publish(&Event::MemberChanged {
                        node: n,
                        alive: true,
                    });
                }
                Output::MemberDown(n) => {
                    warn!(node = %id, member = %n, "member down");
                    self.publish(st);
                    self.subscribers.publish(&Event::MemberChanged {
                        node: n,
                        alive: false,
                    });
                }
                Output::MemberRestarted { node, incarnation } => {
                    // What it ran is gone; the Control notices the missing instances in the
                    // agent's next report and re-admits them.
                    warn!(node = %id, member = %node, incarnation, "member restarted");
                    self.publish(st);
                    self.subscribers
                        .publish(&Event::MemberChanged { node, alive: true });
                }
                Output::ElectNow => {
                    info!(node = %id, "named successor: asking raft for an election");
                    self.counters.incr("handover_elections");
                    if let Some(raft) = &self.raft {
                        (raft.elect)();
                    }
                }
                Output::Dropped { from, reason } => {
                    debug!(node = %id, %from, ?reason, "datagram dropped");
                }
            }
        }
        Ok(())
    }

    /// Asks for the node's load off the mailbox (a slow agent must not delay heartbeats);
    /// the answer comes back as [`MembershipMsg::Load`].
    fn ask_load(&self, me: ActorRef<MembershipMsg>) {
        let ask = (self.load)();
        tokio::spawn(async move {
            if let Ok(Some(load)) = tokio::time::timeout(Duration::from_millis(500), ask).await {
                let _ = me.send_message(MembershipMsg::Load(load));
            }
        });
    }

    /// Publishes the view other actors read: the Control, the live agents, the others.
    fn publish(&self, st: &MembershipState) {
        let cfg = &self.cfg;
        let view = ClusterView::derive(
            (cfg.id(), cfg.advertise_addr(), cfg.has_role(Role::Agent)),
            st.engine.control(),
            &st.engine.members(),
        );
        self.view.send_if_modified(|cur| {
            let changed = *cur != view;
            *cur = view;
            changed
        });
    }

    fn status(&self, st: &MembershipState) -> ClusterStatus {
        let cfg = &self.cfg;
        let now = Instant::now();
        let role_names = |roles: &[Role]| -> Vec<String> {
            roles
                .iter()
                .map(|r| {
                    match r {
                        Role::Agent => "agent",
                        Role::Profiler => "profiler",
                        Role::FrontEnd => "front-end",
                        Role::Control => "control",
                    }
                    .to_string()
                })
                .collect()
        };
        let mut members: Vec<MemberStatus> = st
            .engine
            .members()
            .into_iter()
            .map(|m| MemberStatus {
                node_id: m.node_id,
                address: m.tcp_addr.to_string(),
                alive: m.alive,
                roles: role_names(&m.roles),
                last_heard_ms: now.saturating_duration_since(m.last_heard).as_millis() as u64,
                incarnation: m.incarnation,
                load: member_load(m.load),
                // Filled in by the node's dispatcher, which learns every member's.
                http: None,
            })
            .collect();
        members.push(MemberStatus {
            node_id: cfg.id(),
            address: cfg.advertise_addr().to_string(),
            alive: true,
            roles: role_names(&cfg.roles),
            last_heard_ms: 0,
            incarnation: self.durable.incarnation(),
            load: member_load(st.load),
            http: None,
        });
        members.sort_by_key(|m| m.node_id);
        let c = st.engine.counters();
        let mut counters: Vec<(String, u64)> = self.counters.snapshot().into_iter().collect();
        counters.extend([
            ("accepted".to_string(), c.accepted),
            ("dropped_replayed".to_string(), c.replayed),
            ("dropped_stale_incarnation".to_string(), c.stale_incarnation),
            ("stale_epoch_asserts".to_string(), c.stale_epoch),
            ("heartbeats_sent".to_string(), c.heartbeats_sent),
            ("claims_sent".to_string(), c.claims_sent),
            ("pauses".to_string(), c.pauses),
            ("dropped_duplicate".to_string(), c.duplicates),
            ("dropped_not_member".to_string(), c.not_member),
            ("dropped_epoch_jump".to_string(), c.epoch_jump),
            ("dropped_unverified".to_string(), c.unverified),
            ("challenges_sent".to_string(), c.challenges_sent),
            ("proofs_sent".to_string(), c.proofs_sent),
            ("proofs_accepted".to_string(), c.proofs_accepted),
            ("forged_incarnation".to_string(), c.forged_incarnation),
            ("members_forgotten".to_string(), c.forgotten),
            ("epoch_write_failures".to_string(), c.persist_failures),
            (
                "control_acting".to_string(),
                u64::from(st.engine.may_act(now)),
            ),
            (
                "uptime_ms".to_string(),
                now.saturating_duration_since(st.started).as_millis() as u64,
            ),
        ]);
        counters.sort();
        ClusterStatus {
            node_id: cfg.id(),
            highest_epoch: st.engine.highest_epoch(),
            control: st.engine.control().map(|c| ControlView {
                node_id: c.node_id,
                epoch: c.epoch,
            }),
            members,
            counters,
        }
    }
}

impl Actor for Membership {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let cfg = &self.cfg;
        // A restarted engine starts its sequence numbers again: a new incarnation keeps them
        // from being taken for replays. (The node's start already booted one.)
        if self.restart {
            self.durable.boot()?;
        }
        let incarnation = self.durable.incarnation();
        let mcast = if cfg.multicast.enabled {
            Some(MulticastParams {
                group: cfg.multicast.group,
                port: cfg.multicast.port,
                interface: udp::resolve_interface(&cfg.multicast.interface).map_err(|e| {
                    format!("multicast.interface `{}`: {e}", cfg.multicast.interface)
                })?,
                ttl: cfg.multicast.ttl,
                loopback: cfg.multicast.loopback,
            })
        } else {
            None
        };
        let socket = Arc::new(
            udp::unicast_socket(cfg.listen, mcast.as_ref())
                .map_err(|e| format!("cannot bind heartbeat socket {}: {e}", cfg.listen))?,
        );
        let mut readers = vec![spawn_reader(
            socket.clone(),
            myself.clone(),
            self.counters.clone(),
        )];
        let mut group = None;
        if let Some(m) = &mcast {
            let g = udp::group_socket(m).map_err(|e| {
                format!(
                    "cannot join multicast group {}:{} on {}: {e}",
                    m.group, m.port, m.interface
                )
            })?;
            readers.push(spawn_reader(
                Arc::new(g),
                myself.clone(),
                self.counters.clone(),
            ));
            group = Some(SocketAddr::from((m.group, m.port)));
        }
        if let Some(raft) = &self.raft {
            readers.push(spawn_leadership(raft.leadership.clone(), myself.clone()));
        }
        let engine = NodeEngine::new(
            engine_config(cfg, incarnation),
            self.durable.highest(),
            StdRng::from_os_rng(),
        );
        info!(node = %cfg.id(), incarnation, listen = %cfg.listen, "membership started");
        Ok(MembershipState {
            engine,
            socket,
            group,
            readers,
            started: Instant::now(),
            load: LoadSummary::default(),
            // The first load is asked for soon after start (Agent86 samples at once).
            ticks: LOAD_EVERY_TICKS - 10,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        myself.send_interval(TICK, || MembershipMsg::Tick);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for r in &st.readers {
            r.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = info_span!("membership", node = %self.cfg.id());
        self.step(myself, msg, st).instrument(span).await
    }
}

impl Membership {
    async fn step(
        &self,
        myself: ActorRef<MembershipMsg>,
        msg: MembershipMsg,
        st: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        // A member's address arrives with its first heartbeat, which changes no Control nor
        // liveness (a claim heard first made it Control without one): publish what a
        // datagram may have completed, not only on the engine's change outputs.
        let datagram = matches!(msg, MembershipMsg::Datagram(..));
        let outputs = match msg {
            MembershipMsg::Tick => {
                st.ticks += 1;
                if st.ticks >= LOAD_EVERY_TICKS {
                    st.ticks = 0;
                    self.ask_load(myself.clone());
                }
                st.engine.handle(Input::Tick, now)
            }
            MembershipMsg::Load(load) => {
                st.load = load;
                st.engine.handle(Input::SetLoad(load), now)
            }
            MembershipMsg::Datagram(bytes, from) => {
                match wire::decode_with(&bytes, &self.ring, &self.member_keys) {
                    Ok(m) => st.engine.handle(Input::Received(m), now),
                    // Our own multicast, looped back to us (nodes sharing a host hear the group
                    // on loopback).
                    Err(wire::WireError::FromSelf) => Vec::new(),
                    Err(e) => {
                        self.counters.incr(&format!("dropped_{}", drop_name(&e)));
                        debug!(%from, error = %e, "datagram dropped");
                        Vec::new()
                    }
                }
            }
            MembershipMsg::RebuildDone(epoch) => {
                st.engine.handle(Input::RebuildDone { epoch }, now)
            }
            MembershipMsg::Reassert => st.engine.handle(Input::Reassert, now),
            MembershipMsg::Leadership(lead) => st.engine.handle(Input::Leadership(lead), now),
            MembershipMsg::ControlStale(highest) => {
                st.engine.handle(Input::ControlFenced { highest }, now)
            }
            MembershipMsg::Status(reply) => {
                let _ = reply.send(self.status(st));
                Vec::new()
            }
            MembershipMsg::Leave(reply) => {
                info!(node = %self.cfg.id(), "leaving: handing over if control");
                let out = st.engine.handle(Input::Leave, now);
                self.execute(st, out).await?;
                let _ = reply.send(());
                Vec::new()
            }
        };
        self.execute(st, outputs).await?;
        if datagram {
            self.publish(st);
        }
        // After the outputs: a step-down is visible to the Control at once, before the
        // supervisor stops it.
        let lease = st.engine.acting_lease(now);
        self.acting.send_if_modified(|l| {
            let changed = *l != lease;
            *l = lease;
            changed
        });
        Ok(())
    }
}

/// A short, stable counter name for a decode error.
fn drop_name(e: &wire::WireError) -> String {
    let dbg = format!("{e:?}");
    let variant: String = dbg.chars().take_while(|c| c.is_alphanumeric()).collect();
    let mut out = String::new();
    for (i, ch) in variant.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}
