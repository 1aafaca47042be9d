//! The scenario language: [`Op`]s as data, printable as a log line each, and the random
//! scenario generator ([`generate`]).

use std::fmt;
use std::time::Duration;

use rand::Rng;

/// Selects a node when the op runs (the Control moves, so scenarios name it by role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Node by index (node id = index + 1).
    N(usize),
    /// The node whose Control is acting (highest epoch), if any.
    Control,
    /// A node running an instance of this service, other than the acting Control's node
    /// when there is a choice.
    Host(String),
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::N(i) => write!(f, "n{i}"),
            Who::Control => write!(f, "the control's node"),
            Who::Host(s) => write!(f, "the node of {s}"),
        }
    }
}

/// One step of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Start a node that is not running (a restart: new incarnation, its persisted epoch).
    Start(usize),
    /// Start every node that is not running.
    StartAll,
    /// Kill a node's process (SIGKILL, or the host dies): its instances die with it; its disk
    /// (highest epoch, incarnation) survives.
    Kill(Who),
    /// Kill a node and start it again at once.
    Restart(Who),
    /// A planned stop (SIGTERM): the node stops its Control actor, hands over (membership's
    /// `Leave`: a successor named, a last heartbeat), then exits; its instances stop.
    Term(Who),
    /// SIGSTOP a node for this long, then SIGCONT: it handles nothing meanwhile, what was
    /// sent to it waits, and its clock jumps.
    Pause(Who, Duration),
    /// Split the nodes into sides (nodes not listed form one more side).
    Partition(Vec<Vec<usize>>),
    /// Put one node alone on its side of a partition.
    Isolate(Who),
    /// Cut one direction of a link: nothing from the first node reaches the second.
    Cut(usize, usize),
    /// Remove every partition and cut.
    Heal,
    /// Datagram loss in percent (TCP requests see it as retransmission delay).
    Loss(u32),
    /// An operator admits a service, then `clients` viewers of it, through a random live
    /// node's message API.
    Admit {
        /// Service name.
        service: String,
        /// Viewers admitted after the service.
        clients: u32,
    },
    /// Let time pass.
    Wait(Duration),
    /// Heal, loss 0, wait for every pause to end, then a quiet period; then the settled
    /// invariants are checked.
    Settle,
    /// Stop every node (a whole-cluster outage); `StartAll` brings them back.
    StopAll,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Start(i) => write!(f, "start n{i}"),
            Op::StartAll => write!(f, "start all nodes"),
            Op::Kill(w) => write!(f, "kill {w}"),
            Op::Restart(w) => write!(f, "restart {w}"),
            Op::Term(w) => write!(f, "stop {w} (SIGTERM)"),
            Op::Pause(w, d) => write!(f, "pause {w} for {d:?}"),
            Op::Partition(sides) => write!(f, "partition {sides:?}"),
            Op::Isolate(w) => write!(f, "isolate {w}"),
            Op::Cut(a, b) => write!(f, "cut n{a} -> n{b}"),
            Op::Heal => write!(f, "heal the network"),
            Op::Loss(p) => write!(f, "loss {p}%"),
            Op::Admit { service, clients } => {
                write!(f, "admit service {service} with {clients} client(s)")
            }
            Op::Wait(d) => write!(f, "wait {d:?}"),
            Op::Settle => write!(f, "settle"),
            Op::StopAll => write!(f, "stop the whole cluster"),
        }
    }
}

/// A random scenario of `len` steps on `nodes` nodes (every node started first, services
/// admitted along the way, a `Settle` every few faults and at the end). The same seed gives
/// the same scenario.
pub fn generate<R: Rng>(rng: &mut R, nodes: usize, len: usize) -> Vec<Op> {
    let mut ops = vec![Op::StartAll, Op::Wait(Duration::from_secs(2))];
    let mut services = 0u32;
    let mut since_settle = 0;
    let who = |rng: &mut R, services: u32| -> Who {
        match rng.random_range(0..10) {
            0..=4 => Who::Control,
            5..=6 if services > 0 => Who::Host(format!("s{}", rng.random_range(1..=services))),
            _ => Who::N(rng.random_range(0..nodes)),
        }
    };
    for _ in 0..len {
        let op = match rng.random_range(0..100) {
            0..=19 => {
                services += 1;
                Op::Admit {
                    service: format!("s{services}"),
                    clients: rng.random_range(0..4),
                }
            }
            20..=29 => Op::Kill(who(rng, services)),
            30..=36 => Op::Restart(who(rng, services)),
            37..=44 => Op::Pause(
                who(rng, services),
                Duration::from_millis(rng.random_range(100..3000)),
            ),
            45..=51 => Op::Isolate(who(rng, services)),
            52..=56 => {
                let k = rng.random_range(1..nodes);
                let mut all: Vec<usize> = (0..nodes).collect();
                for i in (1..all.len()).rev() {
                    all.swap(i, rng.random_range(0..=i));
                }
                Op::Partition(vec![all[..k].to_vec()])
            }
            57..=61 => {
                let a = rng.random_range(0..nodes);
                let b = (a + rng.random_range(1..nodes)) % nodes;
                Op::Cut(a, b)
            }
            62..=67 => Op::Heal,
            68..=71 => Op::Loss(rng.random_range(0..30)),
            72..=75 => Op::Start(rng.random_range(0..nodes)),
            76..=77 => Op::StartAll,
            78 => Op::StopAll,
            79..=82 => Op::Term(who(rng, services)),
            _ => Op::Wait(Duration::from_millis(rng.random_range(100..4000))),
        };
        let fault = !matches!(op, Op::Admit { .. } | Op::Wait(_));
        ops.push(op);
        if fault {
            since_settle += 1;
        }
        if since_settle >= 4 && rng.random_bool(0.5) {
            // Settling needs the nodes back: restart the dead ones first, mostly.
            if rng.random_bool(0.8) {
                ops.push(Op::StartAll);
            }
            ops.push(Op::Settle);
            since_settle = 0;
        }
    }
    ops.push(Op::StartAll);
    ops.push(Op::Settle);
    ops
}
