//! [`DesiredStore`]: one control node's member of the Raft group, and its settings and
//! errors.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::raft::VoteResponse;
use openraft::{Config, EmptyNode, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use serde::Serialize;
use smart_proto::NodeId;
use smart_proto::desired::{
    DesiredCmd, DesiredState, Leadership, RAFT_PAYLOAD_MAX, RaftRpc, RaftRpcAnswer, WriteRefusal,
    Written,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::log_store::{LogStore, open_db};
use crate::network::{NetworkFactory, RaftTransport, Reach};
use crate::state_machine::StateMachine;
use crate::types::{Incoming, TypeConfig, decode_rpc, encode};

/// The store's file in its directory.
pub const STORE_FILE: &str = "desired.redb";

/// Room an entry needs besides its command (log id, enum tags, the append message's
/// fields): a command is refused when it would not fit one Raft payload with it.
const ENTRY_OVERHEAD: usize = 4 * 1024;

/// The largest command [`DesiredStore::write`] accepts, encoded.
pub const CMD_MAX: usize = RAFT_PAYLOAD_MAX - ENTRY_OVERHEAD;

/// The longest a forwarded write is worked on, whatever its sender asks.
const MAX_FORWARDED_WAIT_MS: u64 = 60_000;

/// Timing and compaction settings. The defaults suit a LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredConfig {
    /// How often the leader sends heartbeats.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time in
    /// `election_timeout_min..election_timeout_max` starts an election.
    pub election_timeout_min: Duration,
    /// See `election_timeout_min`.
    pub election_timeout_max: Duration,
    /// A snapshot is built every this many log entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot (the rest is purged), so that a follower a
    /// little behind catches up from the log rather than from a whole snapshot.
    pub logs_kept_after_snapshot: u64,
    /// Bytes of snapshot per InstallSnapshot message; at most [`RAFT_PAYLOAD_MAX`] less
    /// room for the message's other fields.
    pub snapshot_chunk_bytes: u64,
    /// Entries per AppendEntries message at most (fewer when they would exceed one
    /// payload).
    pub max_entries_per_append: u64,
    /// How long a follower waits for one snapshot chunk to be stored.
    pub install_snapshot_timeout: Duration,
    /// The leader counts as acting ([`DesiredStore::leads_with_quorum`]) while a quorum
    /// acknowledged it at most this long ago. Shorter than `election_timeout_min`: a leader
    /// cut off stops acting before the others can elect another.
    pub quorum_lease: Duration,
    /// Pause before retrying a peer that did not answer.
    pub unreachable_backoff: Duration,
    /// Whether this member may lead. False on a voter without the Control role (majority
    /// mode's Control is the leader): it votes, stores and applies the log, but never
    /// stands for election nor initialises the group.
    pub may_lead: bool,
}

impl Default for DesiredConfig {
    fn default() -> Self {
        DesiredConfig {
            heartbeat: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            snapshot_every: 1000,
            logs_kept_after_snapshot: 100,
            snapshot_chunk_bytes: 256 * 1024,
            max_entries_per_append: 64,
            install_snapshot_timeout: Duration::from_secs(2),
            quorum_lease: Duration::from_millis(100),
            unreachable_backoff: Duration::from_millis(100),
            may_lead: true,
        }
    }
}

impl DesiredConfig {
    fn raft_config(&self) -> Result<Config, OpenError> {
        if self.quorum_lease >= self.election_timeout_min {
            return Err(OpenError::Config(format!(
                "quorum_lease {:?} must be shorter than election_timeout_min {:?}",
                self.quorum_lease, self.election_timeout_min
            )));
        }
        let max_chunk = (RAFT_PAYLOAD_MAX - ENTRY_OVERHEAD) as u64;
        if self.snapshot_chunk_bytes == 0 || self.snapshot_chunk_bytes > max_chunk {
            return Err(OpenError::Config(format!(
                "snapshot_chunk_bytes {} is not in 1..={max_chunk}",
                self.snapshot_chunk_bytes
            )));
        }
        let ms = |d: Duration| d.as_millis() as u64;
        let config = Config {
            cluster_name: "smart-desired".into(),
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            install_snapshot_timeout: ms(self.install_snapshot_timeout),
            max_payload_entries: self.max_entries_per_append,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| OpenError::Config(e.to_string()))
    }
}

/// Why the store did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory could not be created.
    #[error("cannot create {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store file could not be opened (held by another process, corrupt, unreadable).
    #[error("cannot open the desired-state store {path}: {source}")]
    Store {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<redb::Error>,
    },
    /// This node is not one of the voters.
    #[error("{me} is not one of the control nodes {voters:?}")]
    NotAVoter {
        /// This node.
        me: NodeId,
        /// The voters.
        voters: BTreeSet<NodeId>,
    },
    /// The settings are inconsistent.
    #[error("invalid desired-state settings: {0}")]
    Config(String),
    /// Raft did not start (its storage failed while it loaded).
    #[error("raft did not start: {0}")]
    Raft(String),
}

/// Why a write was not done. `NoMajority` and `TimedOut` leave its outcome open: the entry
/// may still commit later (if the partition heals before another leader replaces it), so
/// the caller treats the write as not done and may retry it (commands are idempotent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// No majority of the control nodes reachable: this side of a partition cannot change
    /// the desired state.
    #[error(
        "no majority of control nodes reachable ({reachable} reachable, {needed} needed): \
         the desired state cannot change on this side"
    )]
    NoMajority {
        /// Control nodes reachable, this one included.
        reachable: usize,
        /// A majority of the voters.
        needed: usize,
    },
    /// A majority is reachable but the write was not committed within the deadline.
    #[error("not committed within {0:?}")]
    TimedOut(Duration),
    /// The command is over [`CMD_MAX`] encoded.
    #[error("command of {bytes} bytes is over the {max} byte limit")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Raft stopped on this node or on the leader (shut down, or storage failed).
    #[error("raft stopped: {0}")]
    Fatal(String),
}

impl WriteError {
    /// A leader's refusal, as the writer reports it (`NotLeader` and `TimedOut` never get
    /// here: the writer retries the first and classifies the second itself).
    fn from_refusal(r: WriteRefusal, timeout: Duration) -> Self {
        match r {
            WriteRefusal::NoMajority { reachable, needed } => WriteError::NoMajority {
                reachable: reachable as usize,
                needed: needed as usize,
            },
            WriteRefusal::TooLarge { bytes, max } => WriteError::TooLarge {
                bytes: bytes as usize,
                max: max as usize,
            },
            WriteRefusal::Stopped(why) => WriteError::Fatal(why),
            WriteRefusal::TimedOut | WriteRefusal::NotLeader { .. } => {
                WriteError::TimedOut(timeout)
            }
        }
    }
}

/// This node's role in the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftRole {
    /// Leads: the only node that appends to the log.
    Leader,
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks for votes.
    Candidate,
    /// Not a voter.
    Learner,
    /// Stopped.
    Shutdown,
}

/// A snapshot of this node's Raft status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredStatus {
    /// This node.
    pub me: NodeId,
    /// Its role.
    pub role: RaftRole,
    /// The current term.
    pub term: u64,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// Index of the last entry in its log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to its state.
    pub last_applied: Option<u64>,
    /// Index its current snapshot covers up to.
    pub snapshot: Option<u64>,
    /// Index up to which its log is purged.
    pub purged: Option<u64>,
    /// When leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// Raft messages refused because they spoke for another member than their sender.
    pub impostor_rpcs: u64,
}

impl DesiredStatus {
    fn from_metrics(m: &RaftMetrics<u64, EmptyNode>, impostor_rpcs: u64) -> Self {
        DesiredStatus {
            me: NodeId(m.id),
            role: match m.state {
                ServerState::Leader => RaftRole::Leader,
                ServerState::Follower => RaftRole::Follower,
                ServerState::Candidate => RaftRole::Candidate,
                ServerState::Learner => RaftRole::Learner,
                ServerState::Shutdown => RaftRole::Shutdown,
            },
            term: m.current_term,
            leader: m.current_leader.map(NodeId),
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot: m.snapshot.map(|l| l.index),
            purged: m.purged.map(|l| l.index),
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            impostor_rpcs,
        }
    }
}

struct Inner {
    me: NodeId,
    /// When this member started: it grants no vote for a leader lease after (see
    /// [`DesiredStore::handle_rpc`]).
    opened_at: Instant,
    /// Raft messages refused for speaking in another member's name.
    impostor_rpcs: AtomicU64,
    voters: BTreeSet<NodeId>,
    config: DesiredConfig,
    raft: Raft<TypeConfig>,
    transport: Arc<dyn RaftTransport>,
    reach: Arc<Reach>,
    state: watch::Receiver<Arc<DesiredState>>,
    /// Raft's word on this node: leader, and until when its quorum lease runs (see
    /// `watch_leadership`).
    leadership: watch::Receiver<Leadership>,
    /// Hears its sender drop when the store file is closed (Raft's tasks have all let it
    /// go).
    closed: watch::Receiver<()>,
}

/// One control node's member of the Raft group that keeps the desired state. Cheap to
/// clone: clones share the node.
#[derive(Clone)]
pub struct DesiredStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DesiredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredStore")
            .field("me", &self.inner.me)
            .field("voters", &self.inner.voters)
            .finish_non_exhaustive()
    }
}

impl DesiredStore {
    /// Opens this node's store in `dir` (creating `dir/desired.redb`) and starts its Raft
    /// member. When the log is pristine, the group is initialised with `voters` (every
    /// voter may do so with the same set; a group already initialised is left as it is).
    /// The state is restored from the last snapshot and the committed log before this
    /// returns.
    pub async fn open(
        dir: &Path,
        me: NodeId,
        voters: BTreeSet<NodeId>,
        transport: Arc<dyn RaftTransport>,
        config: DesiredConfig,
    ) -> Result<Self, OpenError> {
        if !voters.contains(&me) {
            return Err(OpenError::NotAVoter { me, voters });
        }
        let raft_config = Arc::new(config.raft_config()?);
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(STORE_FILE);
        let (tx, state) = watch::channel(Arc::new(DesiredState::default()));
        // Opening the file and loading the snapshot block on the disk.
        let opened = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let (db, closed) = open_db(&path).map_err(|source| OpenError::Store {
                    path: path.clone(),
                    source: Box::new(source),
                })?;
                let db = Arc::new(db);
                let sm = StateMachine::open(db.clone(), tx)
                    .map_err(|e| OpenError::Raft(e.to_string()))?;
                Ok::<_, OpenError>((db, closed, sm))
            })
            .await
            .map_err(|e| OpenError::Raft(e.to_string()))?
        };
        let (db, closed, sm) = opened?;
        let log = LogStore::new(db);
        let reach = Arc::new(Reach::default());
        let network = NetworkFactory {
            transport: transport.clone(),
            reach: reach.clone(),
            backoff: config.unreachable_backoff,
        };
        let raft = Raft::new(me.0, raft_config, network, log, sm)
            .await
            .map_err(|e| OpenError::Raft(e.to_string()))?;
        raft.runtime_config().elect(config.may_lead);
        let voters = match join_group(&raft, me, voters, config.may_lead).await {
            Ok(voters) => voters,
            Err(e) => {
                // Stop the member, so that its tasks let the file go.
                let _ = raft.shutdown().await;
                return Err(e);
            }
        };
        let leadership = watch_leadership(&raft, me, config.quorum_lease);
        Ok(DesiredStore {
            inner: Arc::new(Inner {
                opened_at: Instant::now(),
                impostor_rpcs: AtomicU64::new(0),
                me,
                voters,
                config,
                raft,
                transport,
                reach,
                state,
                leadership,
                closed,
            }),
        })
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.inner.me
    }

    /// The desired state as this node has applied it (committed entries only; on a
    /// follower possibly a little behind the leader).
    pub fn state(&self) -> Arc<DesiredState> {
        self.inner.state.borrow().clone()
    }

    /// Every state this node applies, as it applies it.
    pub fn subscribe(&self) -> watch::Receiver<Arc<DesiredState>> {
        self.inner.state.clone()
    }

    /// The leader this node knows.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner
            .raft
            .metrics()
            .borrow()
            .current_leader
            .map(NodeId)
    }

    /// This node's Raft status.
    pub fn status(&self) -> DesiredStatus {
        DesiredStatus::from_metrics(
            &self.inner.raft.metrics().borrow(),
            self.inner.impostor_rpcs.load(Ordering::Relaxed),
        )
    }

    /// True when this node leads and a quorum acknowledged it within the quorum lease: the
    /// condition for acting as the Control in majority mode (a leader cut off from the
    /// majority stops satisfying it within the lease, before another can be elected).
    pub fn leads_with_quorum(&self) -> bool {
        self.inner.leadership.borrow().valid(Instant::now())
    }

    /// Raft's word on this node as it changes: whether it leads, and until when the latest
    /// acknowledgement by a quorum lets it act (renewed with every heartbeat round a quorum
    /// answers). Majority mode's election follows it.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.inner.leadership.clone()
    }

    /// Asks Raft for an election now (the Control handed over to this node). A follower
    /// whose log is current wins it at once when the leaving leader still answers, without
    /// waiting for its election timeout. Returns at once.
    pub async fn elect_now(&self) {
        if let Err(e) = self.inner.raft.trigger().elect().await {
            tracing::warn!(node = %self.inner.me, error = %e, "could not start an election");
        }
    }

    /// Waits until another node leads (or this one no longer does), at most `timeout`: a
    /// leaving leader keeps its member running meanwhile, so that the successor it named
    /// gets its vote. Returns whether leadership moved.
    pub async fn wait_leadership_moved(&self, timeout: Duration) -> bool {
        let me = self.inner.me.0;
        let moved = |m: &RaftMetrics<u64, EmptyNode>| {
            m.current_leader.is_some_and(|l| l != me) || m.state != ServerState::Leader
        };
        let mut rx = self.inner.raft.metrics();
        let deadline = Instant::now() + timeout;
        loop {
            if moved(&rx.borrow_and_update()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }

    /// Waits until `pred` holds for this node's status, at most `timeout`; the last status
    /// seen either way.
    pub async fn wait_status(
        &self,
        timeout: Duration,
        pred: impl Fn(&DesiredStatus) -> bool,
    ) -> Result<DesiredStatus, DesiredStatus> {
        let mut rx = self.inner.raft.metrics();
        let deadline = Instant::now() + timeout;
        loop {
            let status = DesiredStatus::from_metrics(
                &rx.borrow_and_update(),
                self.inner.impostor_rpcs.load(Ordering::Relaxed),
            );
            if pred(&status) {
                return Ok(status);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(self.status()),
            }
        }
    }

    /// Appends `cmd` to the log and waits until it is committed and applied here, at most
    /// `timeout`. On a follower the write goes to the leader ([`RaftRpc::ClientWrite`]);
    /// while no leader is known, or the one known does not answer, it waits for one.
    pub async fn write(&self, cmd: DesiredCmd, timeout: Duration) -> Result<Written, WriteError> {
        let deadline = Instant::now() + timeout;
        let bytes = encoded_len(&cmd);
        if bytes > CMD_MAX {
            return Err(WriteError::TooLarge {
                bytes,
                max: CMD_MAX,
            });
        }
        let me = self.inner.me;
        let mut metrics = self.inner.raft.metrics();
        // A leader named by a node that refused the write, tried before the local view.
        let mut hint: Option<NodeId> = None;
        loop {
            let leader = hint
                .take()
                .or_else(|| metrics.borrow_and_update().current_leader.map(NodeId));
            let outcome = match leader {
                Some(l) if l == me => self.propose(cmd.clone(), deadline).await,
                Some(l) => match self.forward(l, cmd.clone(), deadline).await {
                    // Committed on the leader: applied here once this node learns the commit
                    // (the leader's next heartbeat). Waited for, within the deadline, so
                    // that a reader of this node's state after the write sees it.
                    Ok(written) => {
                        self.wait_applied(written.index, deadline).await;
                        Ok(written)
                    }
                    other => other,
                },
                None => Err(WriteRefusal::NotLeader { leader: None }),
            };
            match outcome {
                Ok(written) => return Ok(written),
                Err(WriteRefusal::NotLeader { leader: next }) => {
                    if next.is_some() && next != leader {
                        hint = next;
                    }
                }
                Err(WriteRefusal::TimedOut) => return Err(self.classify(timeout)),
                Err(refusal) => return Err(WriteError::from_refusal(refusal, timeout)),
            }
            if Instant::now() >= deadline {
                return Err(self.classify(timeout));
            }
            if hint.is_none() {
                // Wait for news of a leader, for at most an election timeout.
                let pause = Instant::now() + self.inner.config.election_timeout_min;
                let _ = tokio::time::timeout_at(pause.min(deadline), metrics.changed()).await;
            }
        }
    }

    /// Waits until this node has applied the entry at `index`, at most until `deadline`.
    async fn wait_applied(&self, index: u64, deadline: Instant) {
        let mut rx = self.inner.raft.metrics();
        loop {
            if rx
                .borrow_and_update()
                .last_applied
                .is_some_and(|l| l.index >= index)
            {
                return;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }

    /// Proposes `cmd` on this node, which believes it leads.
    async fn propose(&self, cmd: DesiredCmd, deadline: Instant) -> Result<Written, WriteRefusal> {
        match tokio::time::timeout_at(deadline, self.inner.raft.client_write(cmd)).await {
            Err(_) => Err(WriteRefusal::TimedOut),
            Ok(Ok(resp)) => Ok(Written {
                index: resp.log_id.index,
                result: resp.data,
            }),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(WriteRefusal::NotLeader {
                    leader: f.leader_id.map(NodeId),
                })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(WriteRefusal::Stopped(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(WriteRefusal::Stopped(f.to_string())),
        }
    }

    /// Sends `cmd` to `leader`, asking it to answer before our deadline.
    async fn forward(
        &self,
        leader: NodeId,
        cmd: DesiredCmd,
        deadline: Instant,
    ) -> Result<Written, WriteRefusal> {
        let left = deadline.saturating_duration_since(Instant::now());
        // The leader answers a little before our deadline, so that its reason (no
        // majority) reaches us instead of our own time-out.
        let within = left.mul_f64(0.9);
        let rpc = RaftRpc::ClientWrite {
            cmd,
            within_ms: within.as_millis() as u64,
        };
        match tokio::time::timeout_at(deadline, self.inner.transport.call(leader, rpc, left)).await
        {
            Err(_) => Err(WriteRefusal::TimedOut),
            Ok(Err(e)) => {
                tracing::debug!(node = %self.inner.me, %leader, error = %e, "forwarding a desired-state write failed");
                Err(WriteRefusal::NotLeader { leader: None })
            }
            Ok(Ok(RaftRpcAnswer::Write(result))) => {
                self.inner.reach.answered(leader.0);
                result
            }
            Ok(Ok(other)) => {
                tracing::warn!(node = %self.inner.me, %leader, answer = ?other, "unexpected answer to a forwarded write");
                Err(WriteRefusal::NotLeader { leader: None })
            }
        }
    }

    /// Why a write did not commit in time: no majority reachable, or just slow.
    fn classify(&self, timeout: Duration) -> WriteError {
        let (reachable, needed) = self.majority();
        if reachable < needed {
            WriteError::NoMajority { reachable, needed }
        } else {
            WriteError::TimedOut(timeout)
        }
    }

    /// Voters heard from recently (this one included), and a majority of the voters.
    fn majority(&self) -> (usize, usize) {
        let inner = &self.inner;
        let window = inner.config.election_timeout_max * 2;
        let peers = inner.voters.iter().filter(|n| **n != inner.me).map(|n| n.0);
        let reachable = 1 + inner.reach.answered_within(peers, window);
        (reachable, inner.voters.len() / 2 + 1)
    }

    /// Answers a Raft message from member `from` (the sender the transport authenticated).
    /// A payload that does not decode is answered [`RaftRpcAnswer::Malformed`] and changes
    /// nothing; so is a vote request, entries or a snapshot in the name of another member
    /// than `from` (a member cannot stand, nor lead, for someone else).
    pub async fn handle_rpc(&self, from: NodeId, rpc: RaftRpc) -> RaftRpcAnswer {
        let raft = &self.inner.raft;
        let incoming = match decode_rpc(rpc) {
            Ok(incoming) => incoming,
            Err(e) => return malformed(e),
        };
        if let Some(named) = incoming.speaks_for()
            && named != Some(from.0)
        {
            self.inner.impostor_rpcs.fetch_add(1, Ordering::Relaxed);
            return malformed(format!(
                "{}: in the name of node {}, sent by {from}",
                incoming.kind(),
                named.map_or("(none)".to_string(), |n| n.to_string()),
            ));
        }
        match incoming {
            Incoming::AppendEntries(req) => {
                self.heard_from(req.vote.leader_id().voted_for());
                reply(&raft.append_entries(req).await)
            }
            Incoming::Vote(req) => {
                self.heard_from(req.vote.leader_id().voted_for());
                // A member that just started may have acknowledged a leader in its previous
                // life, within that leader's quorum lease: Raft forgets it (the lease is not
                // persisted), so voting at once could elect a second leader while the first
                // still acts. Refuse votes for one leader lease (the longest election
                // timeout) after the start.
                if self.inner.opened_at.elapsed() < self.inner.config.election_timeout_max {
                    let refused: Result<VoteResponse<u64>, RaftError<u64>> =
                        Ok(VoteResponse::new(req.vote, None, false));
                    return reply(&refused);
                }
                reply(&raft.vote(req).await)
            }
            Incoming::InstallSnapshot(req) => {
                self.heard_from(req.vote.leader_id().voted_for());
                reply(&raft.install_snapshot(req).await)
            }
            Incoming::ClientWrite { cmd, within_ms } => {
                let bytes = encoded_len(&cmd);
                if bytes > CMD_MAX {
                    return RaftRpcAnswer::Write(Err(WriteRefusal::TooLarge {
                        bytes: bytes as u64,
                        max: CMD_MAX as u64,
                    }));
                }
                let leader = raft.metrics().borrow().current_leader.map(NodeId);
                if leader != Some(self.inner.me) {
                    return RaftRpcAnswer::Write(Err(WriteRefusal::NotLeader { leader }));
                }
                // Bounded: a sender's number never overflows the clock.
                let within = Duration::from_millis(within_ms.min(MAX_FORWARDED_WAIT_MS));
                let deadline = Instant::now() + within;
                let result = match self.propose(cmd, deadline).await {
                    Err(WriteRefusal::TimedOut) => {
                        let (reachable, needed) = self.majority();
                        Err(if reachable < needed {
                            WriteRefusal::NoMajority {
                                reachable: reachable as u32,
                                needed: needed as u32,
                            }
                        } else {
                            WriteRefusal::TimedOut
                        })
                    }
                    other => other,
                };
                RaftRpcAnswer::Write(result)
            }
        }
    }

    /// A message from `peer` arrived: it reaches us.
    fn heard_from(&self, peer: Option<u64>) {
        if let Some(p) = peer
            && p != self.inner.me.0
        {
            self.inner.reach.answered(p);
        }
    }

    /// Stops this node's Raft member and closes its store file (it may be opened again
    /// once this returns).
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(node = %self.inner.me, error = %e, "desired-state raft did not stop cleanly");
        }
        // Raft's storage and state-machine tasks end shortly after its core: wait (bounded)
        // until the last of them has closed the file.
        let mut closed = self.inner.closed.clone();
        let all_closed = async move { while closed.changed().await.is_ok() {} };
        if tokio::time::timeout(Duration::from_secs(5), all_closed)
            .await
            .is_err()
        {
            tracing::warn!(node = %self.inner.me, "desired-state store still open after shutdown");
        }
    }
}

/// Initialises the group with `voters` when this node's log is pristine and it may lead (the
/// initialising member stands for election at once); the voters of the
/// group as it is.
async fn join_group(
    raft: &Raft<TypeConfig>,
    me: NodeId,
    voters: BTreeSet<NodeId>,
    may_lead: bool,
) -> Result<BTreeSet<NodeId>, OpenError> {
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| OpenError::Raft(e.to_string()))?;
    // Initialising starts an election at once: left to the members that may lead.
    if !initialized && !may_lead {
        return Ok(voters);
    }
    if !initialized {
        let ids: BTreeSet<u64> = voters.iter().map(|n| n.0).collect();
        match raft.initialize(ids).await {
            Ok(()) => tracing::info!(node = %me, ?voters, "desired-state group initialised"),
            // Another voter's leader reached this node first: already initialised.
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => return Err(OpenError::Raft(e.to_string())),
        }
        return Ok(voters);
    }
    let stored: BTreeSet<NodeId> = raft
        .metrics()
        .borrow()
        .membership_config
        .voter_ids()
        .map(NodeId)
        .collect();
    if stored != voters {
        // Changing the set of control nodes is not supported yet: the group's own wins, and
        // majorities are counted in it.
        tracing::warn!(node = %me, ?stored, configured = ?voters,
            "configured control nodes differ from the desired-state group's; keeping the group's");
        return Ok(stored);
    }
    Ok(voters)
}

/// Publishes Raft's word on this node, from its metrics (refreshed as Raft works, with
/// every heartbeat round at least): leader, and the quorum lease, dated from when the
/// acknowledged heartbeat round was sent (openraft measures `millis_since_quorum_ack` so),
/// hence ending before any voter that acknowledged it can elect another.
fn watch_leadership(
    raft: &Raft<TypeConfig>,
    me: NodeId,
    quorum_lease: Duration,
) -> watch::Receiver<Leadership> {
    let mut rx = raft.metrics();
    let (tx, out) = watch::channel(Leadership::default());
    tokio::spawn(async move {
        loop {
            let lead = {
                let m = rx.borrow_and_update();
                let leader = m.state == ServerState::Leader && m.current_leader == Some(me.0);
                let lease_until = match (leader, m.millis_since_quorum_ack) {
                    (true, Some(ms)) => Instant::now()
                        .checked_sub(Duration::from_millis(ms))
                        .map(|acked| acked + quorum_lease),
                    _ => None,
                };
                Leadership {
                    leader,
                    lease_until,
                }
            };
            tx.send_if_modified(|cur| {
                let changed = *cur != lead;
                *cur = lead;
                changed
            });
            // Ends when Raft stops.
            if rx.changed().await.is_err() {
                break;
            }
        }
    });
    out
}

fn encoded_len<T: Serialize>(v: &T) -> usize {
    postcard::to_allocvec(v).map_or(usize::MAX, |b| b.len())
}

fn malformed(why: String) -> RaftRpcAnswer {
    tracing::warn!(error = %why, "malformed raft message");
    RaftRpcAnswer::Malformed(why)
}

fn reply<T: Serialize>(result: &T) -> RaftRpcAnswer {
    match encode(result) {
        Ok(bytes) => RaftRpcAnswer::Reply(bytes),
        Err(e) => RaftRpcAnswer::Malformed(format!("answer not encodable: {e}")),
    }
}
