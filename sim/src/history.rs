//! What happened so far, as the invariants need it: the operator's requests and their
//! answers, the services acknowledged, who acted at which epoch, what each agent executed,
//! the services declared lost.

use std::collections::BTreeMap;
use std::time::Duration;

use smart_proto::Epoch;
use smart_proto::api::{Request, Response};

/// An operator's message-API request.
#[derive(Debug, Clone)]
pub struct ClientReq {
    /// The node it was sent to.
    pub entry: usize,
    /// The request.
    pub req: Request,
    /// When.
    pub issued: Duration,
    /// When it was answered, and how (`None`: the entry node died and the connection broke).
    pub answer: Option<(Duration, Option<Response>)>,
    /// Viewers to admit once the service is placed.
    pub then_clients: u32,
}

/// A service the operator was told is admitted (answered `Placed`).
#[derive(Debug, Clone)]
pub struct Acked {
    /// When the first acknowledgement came.
    pub at: Duration,
    /// Viewers acknowledged.
    pub clients: u32,
    /// The cluster era it was acknowledged in (see [`History::era`]).
    pub era: u64,
}

/// The record the invariants read.
#[derive(Debug, Default)]
pub struct History {
    /// Every operator request, in issue order.
    pub requests: Vec<ClientReq>,
    /// Services acknowledged as admitted.
    pub acked: BTreeMap<String, Acked>,
    /// The node (index) seen acting at each epoch (the first one).
    pub acting: BTreeMap<Epoch, usize>,
    /// Per node, the highest epoch of a command its agent executed (across restarts).
    pub executed: BTreeMap<usize, Epoch>,
    /// Services declared lost: (when, by which node, service, reason).
    pub lost: Vec<(Duration, usize, String, String)>,
    /// Incremented whenever no node runs any more (a whole-cluster outage).
    pub era: u64,
    /// How many times each invariant was checked.
    pub checks: BTreeMap<&'static str, u64>,
}

impl History {
    /// Counts one check of `invariant`.
    pub fn checked(&mut self, invariant: &'static str) {
        *self.checks.entry(invariant).or_default() += 1;
    }
}
