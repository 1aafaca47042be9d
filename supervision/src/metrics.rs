//! Prometheus metrics of a node (`GET /metrics` on `http_listen`), through the `metrics`
//! facade's Prometheus recorder, held per node (never installed globally, so several nodes
//! in one process keep apart).
//!
//! Two parts make one exposition (classic text format 0.0.4, which `promtool check metrics`
//! reads):
//! - **live** ([`NodeMetrics`]): what happens between scrapes is recorded as it happens:
//!   admission decisions (counted by outcome and timed: the Control's engine step),
//!   Control changes and failover time, migrations by reason, services lost, HTTP requests;
//! - **sampled** ([`Sample`]): what a node already keeps is read at each scrape and written
//!   into a fresh recorder, so nothing goes stale: members, the Control and its epoch, the
//!   node counters (the same ones `smart status` shows), the transport's counters, and, on
//!   the Control's node, each node's and service's reservation against its usage.
//!
//! Every node hears the same events, so cluster-wide counters derived from events
//! (`smart_migrations_total`, ...) agree across nodes: aggregate them with `max`, not `sum`.
//!
//! ## Layout
//! - [`NodeMetrics`]: the live part and [`NodeMetrics::render`];
//! - [`Sample`]: what a scrape reads; [`Decision`]: one admission decision.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics::{Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use smart_api::{ClusterStatus, Event, NodeReport};
use smart_proto::NodeId;

/// Decision-time buckets, seconds: the engine decides in microseconds (MS in milliseconds).
const DECISION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1,
];
/// Failover buckets, seconds.
const FAILOVER_BUCKETS: &[f64] = &[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0];

fn meta() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

fn key(name: impl Into<KeyName>, labels: &[(&'static str, String)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.clone()))
            .collect::<Vec<_>>(),
    )
}

/// One admission decision, as the Control's shell saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// `service` or `client`.
    pub request: &'static str,
    /// The rejection's reason, when admission said no.
    pub rejected: Option<String>,
    /// Time the engine's step took.
    pub took: Duration,
}

/// A low-cardinality label for an admission rejection.
pub fn reject_reason(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("no live node") {
        "no_nodes"
    } else if r.contains("cluster") && r.contains("cpu") {
        "cluster_cpu"
    } else if r.contains("cluster") && r.contains("net") {
        "cluster_net"
    } else if r.contains("no node fits") {
        "no_fit"
    } else {
        "other"
    }
}

struct Watch {
    control: Option<NodeId>,
    control_down_at: Option<Instant>,
}

/// The node's live metrics.
pub struct NodeMetrics {
    node: NodeId,
    live: PrometheusRecorder,
    watch: Mutex<Watch>,
}

impl NodeMetrics {
    /// The metrics of `node`.
    pub fn new(node: NodeId) -> Self {
        let live = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("smart_admission_decision_seconds".into()),
                DECISION_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("smart_control_failover_seconds".into()),
                    FAILOVER_BUCKETS,
                )
            })
            .expect("fixed, non-empty bucket lists")
            .build_recorder();
        let describe = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            (
                KeyName::from_const_str(name),
                unit,
                SharedString::const_str(help),
            )
        };
        for (n, u, h) in [
            describe(
                "smart_admission_decisions_total",
                None,
                "Admission decisions by the Control on this node, by request (service, client) and outcome (admitted, rejected).",
            ),
            describe(
                "smart_admission_rejections_total",
                None,
                "Admission rejections by the Control on this node, by request and reason (cluster_cpu, cluster_net, no_fit, no_nodes, other).",
            ),
            describe(
                "smart_control_changes_total",
                None,
                "Control changes this node heard (elections, re-assertions at a higher epoch).",
            ),
            describe(
                "smart_member_changes_total",
                None,
                "Members this node saw go dead (alive=false) or come back (alive=true).",
            ),
            describe(
                "smart_migrations_total",
                None,
                "Service migrations this node heard of, by reason (ms, drain, anomaly, node-failure, ...).",
            ),
            describe(
                "smart_services_lost_total",
                None,
                "Services the Control could not keep (should stay 0).",
            ),
            describe(
                "smart_services_stopped_total",
                None,
                "Services the Control stopped (idle, over their memory, or asked to).",
            ),
            describe(
                "smart_node_health_changes_total",
                None,
                "Nodes that failed their health checks (healthy=false, drained) or recovered (healthy=true).",
            ),
            describe(
                "smart_profiles_stored_total",
                None,
                "Class profiles stored, by source (measured, refined, default).",
            ),
            describe(
                "smart_http_requests_total",
                None,
                "HTTP API requests served by this node, by status code class.",
            ),
        ] {
            live.describe_counter(n, u, h);
        }
        live.describe_histogram(
            KeyName::from_const_str("smart_admission_decision_seconds"),
            Some(Unit::Seconds),
            SharedString::const_str(
                "Time of the Control engine's step for an admission request (not the wait for an instance to start).",
            ),
        );
        live.describe_histogram(
            KeyName::from_const_str("smart_control_failover_seconds"),
            Some(Unit::Seconds),
            SharedString::const_str(
                "From the failure detector declaring the Control dead to this node hearing of a new Control (add timing.dead_after for the time from the crash).",
            ),
        );
        Self {
            node,
            live,
            watch: Mutex::new(Watch {
                control: None,
                control_down_at: None,
            }),
        }
    }

    /// The node these metrics are of.
    pub fn node(&self) -> NodeId {
        self.node
    }

    fn count(&self, name: &'static str, labels: &[(&'static str, String)]) {
        self.live
            .register_counter(&key(name, labels), &meta())
            .increment(1);
    }

    /// An admission decision of the Control on this node.
    pub fn decision(&self, d: &Decision) {
        let outcome = if d.rejected.is_some() {
            "rejected"
        } else {
            "admitted"
        };
        self.count(
            "smart_admission_decisions_total",
            &[("request", d.request.into()), ("outcome", outcome.into())],
        );
        if let Some(r) = &d.rejected {
            self.count(
                "smart_admission_rejections_total",
                &[
                    ("request", d.request.into()),
                    ("reason", reject_reason(r).into()),
                ],
            );
        }
        self.live
            .register_histogram(
                &key(
                    "smart_admission_decision_seconds",
                    &[("request", d.request.into())],
                ),
                &meta(),
            )
            .record(d.took.as_secs_f64());
    }

    /// An HTTP answer with `status`.
    pub fn http(&self, status: u16) {
        self.count(
            "smart_http_requests_total",
            &[("code", format!("{}xx", status / 100))],
        );
    }

    /// An event this node heard.
    pub fn event(&self, ev: &Event) {
        let now = Instant::now();
        match ev {
            Event::ControlChanged { node, .. } => {
                self.count("smart_control_changes_total", &[]);
                let mut w = self.watch.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(t) = w.control_down_at.take() {
                    self.live
                        .register_histogram(&key("smart_control_failover_seconds", &[]), &meta())
                        .record(now.saturating_duration_since(t).as_secs_f64());
                }
                w.control = Some(*node);
            }
            Event::MemberChanged { node, alive } => {
                self.count(
                    "smart_member_changes_total",
                    &[("alive", alive.to_string())],
                );
                let mut w = self.watch.lock().unwrap_or_else(|p| p.into_inner());
                if !alive && w.control == Some(*node) && w.control_down_at.is_none() {
                    w.control_down_at = Some(now);
                }
            }
            Event::Migrated { reason, .. } => {
                // The reason's first word (`anomaly: ...` carries details).
                let r: String = reason
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .next()
                    .unwrap_or("other")
                    .chars()
                    .take(32)
                    .collect();
                self.count("smart_migrations_total", &[("reason", r)]);
            }
            Event::Lost { .. } => self.count("smart_services_lost_total", &[]),
            Event::Stopped { .. } => self.count("smart_services_stopped_total", &[]),
            Event::NodeHealth { healthy, .. } => self.count(
                "smart_node_health_changes_total",
                &[("healthy", healthy.to_string())],
            ),
            Event::ProfileStored { source, .. } => self.count(
                "smart_profiles_stored_total",
                &[("source", format!("{source:?}").to_lowercase())],
            ),
            Event::Admitted(_) | Event::Notice { .. } => {}
        }
    }

    /// The whole exposition: the live part, then `sample` written into a fresh recorder.
    pub fn render(&self, sample: &Sample) -> String {
        let mut out = self.live.handle().render();
        out.push_str(&sample.render(self.node));
        out
    }
}

/// What a scrape reads from the node (and, on the Control's node, from the Control).
#[derive(Debug, Default)]
pub struct Sample {
    /// This node's status (members, Control, counters).
    pub status: Option<ClusterStatus>,
    /// The Control's view of the nodes, when this node is Control.
    pub nodes: Option<Vec<NodeReport>>,
    /// The Control's services and their admitted clients, when this node is Control.
    pub services: Option<Vec<(String, u64)>>,
    /// Events heard and the newest index of the ring.
    pub events_heard: u64,
    /// Event streams open on the HTTP API.
    pub event_streams: u64,
}

/// Writes one scrape's values.
struct Snap {
    rec: PrometheusRecorder,
    described: std::collections::HashSet<String>,
}

impl Snap {
    fn new() -> Self {
        Self {
            rec: PrometheusBuilder::new().build_recorder(),
            described: Default::default(),
        }
    }

    fn describe(&mut self, name: &str, help: &str, counter: bool) {
        if self.described.insert(name.to_string()) {
            let (n, h) = (
                KeyName::from(name.to_string()),
                SharedString::from(help.to_string()),
            );
            if counter {
                self.rec.describe_counter(n, None, h);
            } else {
                self.rec.describe_gauge(n, None, h);
            }
        }
    }

    fn gauge(&mut self, name: &'static str, help: &str, labels: &[(&'static str, String)], v: f64) {
        self.describe(name, help, false);
        self.rec.register_gauge(&key(name, labels), &meta()).set(v);
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[(&'static str, String)], v: u64) {
        self.describe(name, help, true);
        self.rec
            .register_counter(&key(name.to_string(), labels), &meta())
            .absolute(v);
    }
}

/// A label and its value.
type LabelPair = (&'static str, String);
/// A Prometheus counter for a node counter: metric name, help, label.
type CounterName = (String, String, Option<LabelPair>);

/// What the transport's counters count (`smart_transport::Counters`); a field
/// not listed here (added to the transport later) is still exported, with a generic help.
fn transport_help(field: &str) -> String {
    match field {
        "frames_sent" => "Data frames sent on the TCP transport.".into(),
        "frames_received" => "Data frames received and accepted on the TCP transport.".into(),
        "frames_rejected" => "Frames refused after the handshake (oversized, truncated, forged, replayed, malformed, wrong sender); each closes its connection.".into(),
        "handshakes_ok" => "Transport handshakes completed.".into(),
        "handshakes_failed" => "Transport handshakes refused or failed, for any reason (bad key included).".into(),
        "handshakes_bad_key" => "Transport handshakes refused because the peer could not prove the cluster key.".into(),
        "connections_accepted" => "Inbound transport connections accepted (before the handshake).".into(),
        "connections_refused" => "Inbound transport connections closed at once: the node held its maximum.".into(),
        "connects_failed" => "Outbound transport connections that failed (connect or handshake).".into(),
        "reconnects" => "Reconnection attempts by peers.".into(),
        "requests_timed_out" => "Transport requests that got no answer in time.".into(),
        "requests_failed" => "Transport requests failed because their connection was lost.".into(),
        "notifications_dropped" => "Notifications (events to subscribers) dropped because a queue was full.".into(),
        other => format!("Transport counter `{other}` (smart_transport::Counters)."),
    }
}

/// Node counters (`smart status`) as Prometheus metrics: name, help, label (if the counter
/// name carries one after a prefix).
fn node_counter(name: &str) -> Option<CounterName> {
    if let Some(field) = name.strip_prefix("transport_") {
        let clean: String = field
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        return Some((
            format!("smart_transport_{clean}_total"),
            transport_help(field),
            None,
        ));
    }
    let (n, h, l) = static_counter(name)?;
    Some((n.to_string(), h.to_string(), l))
}

fn static_counter(name: &str) -> Option<(&'static str, &'static str, Option<LabelPair>)> {
    let with = |prefix: &str, label: &'static str| {
        name.strip_prefix(prefix)
            .map(|rest| Some((label, rest.to_string())))
    };
    let pick = if let Some(l) = with("dropped_", "reason") {
        (
            "smart_heartbeats_dropped_total",
            "Heartbeat datagrams dropped, by reason (bad_tag, bad_magic, too_large, truncated, replayed, stale_incarnation, ...).",
            l,
        )
    } else {
        match name {
            "restarts" => (
                "smart_child_restarts_total",
                "Supervised children restarted.",
                None,
            ),
            "became_control" => (
                "smart_elections_won_total",
                "Elections this node won (it became Control).",
                None,
            ),
            "stepped_down" => (
                "smart_control_step_downs_total",
                "Times this node stepped down as Control.",
                None,
            ),
            "accepted" => (
                "smart_heartbeats_accepted_total",
                "Heartbeat datagrams accepted.",
                None,
            ),
            "heartbeats_sent" => ("smart_heartbeats_sent_total", "Heartbeats sent.", None),
            "claims_sent" => (
                "smart_election_claims_sent_total",
                "Control claims sent.",
                None,
            ),
            "stale_epoch_asserts" => (
                "smart_stale_epoch_asserts_total",
                "Control assertions heard at an epoch below the highest seen.",
                None,
            ),
            "pauses" => (
                "smart_pauses_total",
                "Times this node noticed it had been paused (a long gap between ticks).",
                None,
            ),
            "agent_refused_stale" => (
                "smart_agent_commands_refused_stale_total",
                "Agent86 commands refused for a stale epoch (fencing).",
                None,
            ),
            "agent_epoch_regressions" => (
                "smart_agent_epoch_regressions_total",
                "Executed Agent86 commands whose epoch went down (must stay 0).",
                None,
            ),
            "agent_command_not_from_control" => (
                "smart_agent_commands_not_from_control_total",
                "Agent86 commands refused because their authenticated sender is not the Control.",
                None,
            ),
            "replica_not_from_control" => (
                "smart_replica_not_from_control_total",
                "Registry copies refused because their authenticated sender is not the Control.",
                None,
            ),
            "replica_refused_older" => (
                "smart_replica_refused_older_total",
                "Registry copies refused as older than the kept one.",
                None,
            ),
            // Levels, not counts: exported as gauges below.
            "control_acting" | "uptime_ms" | "agent_recent_commands" => return None,
            _ => (
                "smart_node_events_total",
                "Other node counters, by name (as in `smart status`).",
                Some(("name", name.to_string())),
            ),
        }
    };
    Some(pick)
}

impl Sample {
    fn render(&self, node: NodeId) -> String {
        let mut s = Snap::new();
        let me = [("node", node.0.to_string())];
        if let Some(st) = &self.status {
            let alive = st.members.iter().filter(|m| m.alive).count();
            s.gauge(
                "smart_members",
                "Members this node knows, by state (alive, dead), itself included.",
                &[("state", "alive".into())],
                alive as f64,
            );
            s.gauge(
                "smart_members",
                "",
                &[("state", "dead".into())],
                (st.members.len() - alive) as f64,
            );
            s.gauge(
                "smart_control_epoch",
                "Epoch of the Control this node follows (0 while there is none).",
                &[],
                st.control.as_ref().map(|c| c.epoch).unwrap_or(0) as f64,
            );
            s.gauge(
                "smart_control_node",
                "Node id of the Control this node follows (0 while there is none).",
                &[],
                st.control.as_ref().map(|c| c.node_id.0).unwrap_or(0) as f64,
            );
            s.gauge(
                "smart_is_control",
                "1 when this node is the Control.",
                &me,
                f64::from(st.control.as_ref().is_some_and(|c| c.node_id == node)),
            );
            s.gauge(
                "smart_highest_epoch",
                "Highest Control epoch this node has seen (persisted).",
                &[],
                st.highest_epoch as f64,
            );
            for m in &st.members {
                let l = [("member", m.node_id.0.to_string())];
                s.gauge(
                    "smart_member_up",
                    "1 while the failure detector considers the member alive.",
                    &l,
                    f64::from(m.alive),
                );
                s.gauge(
                    "smart_member_last_heard_seconds",
                    "Time since the member was last heard.",
                    &l,
                    m.last_heard_ms as f64 / 1000.0,
                );
                s.gauge(
                    "smart_member_cpu_cores",
                    "CPU in use on the member, from its heartbeats.",
                    &l,
                    f64::from(m.load.cpu_milli) / 1000.0,
                );
                s.gauge(
                    "smart_member_memory_used_bytes",
                    "Memory in use on the member, from its heartbeats.",
                    &l,
                    f64::from(m.load.mem_used_mib) * 1048576.0,
                );
                s.gauge(
                    "smart_member_network_bytes_per_second",
                    "Network traffic of the member, from its heartbeats.",
                    &l,
                    (f64::from(m.load.net_kbps) * 1000.0) / 8.0,
                );
                s.gauge(
                    "smart_member_instances",
                    "Service instances running on the member, from its heartbeats.",
                    &l,
                    f64::from(m.load.instances),
                );
            }
            let mut grouped: BTreeMap<(String, Option<LabelPair>), (u64, String)> = BTreeMap::new();
            for (name, v) in &st.counters {
                match name.as_str() {
                    "control_acting" => s.gauge("smart_control_acting", "1 while this node is a Control allowed to act (rebuilt; in majority mode, leading the desired-state log with a quorum).", &[], *v as f64),
                    "uptime_ms" => s.gauge("smart_membership_uptime_seconds", "Time since membership (re)started on this node.", &[], *v as f64 / 1000.0),
                    _ => {}
                }
                if let Some((metric, help, label)) = node_counter(name) {
                    grouped.entry((metric, label)).or_insert((0, help)).0 += v;
                }
            }
            for ((metric, label), (v, help)) in grouped {
                let labels: Vec<(&'static str, String)> = label.into_iter().collect();
                s.counter(&metric, &help, &labels, v);
            }
        }
        s.counter(
            "smart_events_heard_total",
            "Events this node heard (numbered into its /v1/events ring).",
            &[],
            self.events_heard,
        );
        s.gauge(
            "smart_http_event_streams",
            "Open /v1/events streams on this node.",
            &[],
            self.event_streams as f64,
        );
        if let Some(nodes) = &self.nodes {
            for n in nodes {
                let l = [("member", n.node_id.0.to_string())];
                s.gauge(
                    "smart_node_drained",
                    "1 while the node is drained (Control's view).",
                    &l,
                    f64::from(n.drained),
                );
                s.gauge(
                    "smart_node_vr_ratio",
                    "VR: the share of capacity admission may fill (Control's view).",
                    &l,
                    n.vr,
                );
                s.gauge(
                    "smart_node_reserved_cpu_cores",
                    "CPU reserved on the node by admission.",
                    &l,
                    n.reserved.cpu_cores,
                );
                s.gauge(
                    "smart_node_reserved_network_bytes_per_second",
                    "Network reserved on the node by admission.",
                    &l,
                    (n.reserved.net_bps) / 8.0,
                );
                s.gauge(
                    "smart_node_reserved_memory_bytes",
                    "Memory reserved on the node by admission.",
                    &l,
                    n.reserved.mem_bytes as f64,
                );
                if let Some(u) = &n.usage {
                    s.gauge(
                        "smart_node_capacity_cpu_cores",
                        "CPUs of the node.",
                        &l,
                        f64::from(u.cpus),
                    );
                    s.gauge(
                        "smart_node_capacity_network_bytes_per_second",
                        "NIC capacity the node offers.",
                        &l,
                        (u.nic_capacity_bps as f64) / 8.0,
                    );
                    s.gauge(
                        "smart_node_capacity_memory_bytes",
                        "Memory of the node.",
                        &l,
                        u.mem_total_bytes as f64,
                    );
                    s.gauge(
                        "smart_node_used_cpu_cores",
                        "CPU busy on the node (last sample).",
                        &l,
                        u.cpu_busy_cores,
                    );
                    s.gauge(
                        "smart_node_used_network_bytes_per_second",
                        "Network traffic of the node (last sample).",
                        &l,
                        (u.net_bps) / 8.0,
                    );
                    s.gauge(
                        "smart_node_used_memory_bytes",
                        "Memory in use on the node (last sample).",
                        &l,
                        u.mem_total_bytes.saturating_sub(u.mem_available_bytes) as f64,
                    );
                }
                for i in &n.instances {
                    let Some(svc) = &i.service else { continue };
                    let l = [
                        ("service", svc.clone()),
                        ("member", n.node_id.0.to_string()),
                    ];
                    s.gauge(
                        "smart_service_reserved_cpu_cores",
                        "CPU admission reserved for the service's instance.",
                        &l,
                        i.reserved.cpu_cores,
                    );
                    s.gauge(
                        "smart_service_reserved_network_bytes_per_second",
                        "Network admission reserved for the service's instance.",
                        &l,
                        (i.reserved.net_bps) / 8.0,
                    );
                    s.gauge(
                        "smart_service_reserved_memory_bytes",
                        "Memory admission reserved for the service's instance.",
                        &l,
                        i.reserved.mem_bytes as f64,
                    );
                    if let Some(c) = i.cpu_cores {
                        s.gauge(
                            "smart_service_used_cpu_cores",
                            "CPU the service's instance used (last sample).",
                            &l,
                            c,
                        );
                    }
                    if let Some(b) = i.net_bps {
                        s.gauge(
                            "smart_service_used_network_bytes_per_second",
                            "Network the service's instance used (last sample).",
                            &l,
                            (b) / 8.0,
                        );
                    }
                    if let Some(m) = i.mem_bytes {
                        s.gauge(
                            "smart_service_used_memory_bytes",
                            "Working set of the service's instance (last sample).",
                            &l,
                            m as f64,
                        );
                    }
                    if let Some(c) = i.clients {
                        s.gauge("smart_service_clients_connected", "Viewers the service's instance reports connected (its distributor's own count).", &l, f64::from(c));
                    }
                }
            }
        }
        if let Some(services) = &self.services {
            s.gauge(
                "smart_services",
                "Services admitted and running (Control's view).",
                &[],
                services.len() as f64,
            );
            for (name, clients) in services {
                let l = [("service", name.clone())];
                s.gauge(
                    "smart_service_clients_admitted",
                    "Clients admission holds for the service.",
                    &l,
                    *clients as f64,
                );
            }
        }
        s.rec.handle().render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_get_a_small_set_of_reasons() {
        assert_eq!(
            reject_reason("cluster Cpu capacity exceeded at ..."),
            "cluster_cpu"
        );
        assert_eq!(
            reject_reason("cluster Net capacity exceeded"),
            "cluster_net"
        );
        assert_eq!(reject_reason("no node fits the load, even ..."), "no_fit");
        assert_eq!(reject_reason("no live node"), "no_nodes");
        assert_eq!(reject_reason("n3 runs x, which cannot move"), "other");
    }

    #[test]
    fn failover_is_timed_from_the_controls_death_to_the_next_control() {
        let m = NodeMetrics::new(NodeId(2));
        m.event(&Event::ControlChanged {
            node: NodeId(1),
            epoch: 1,
        });
        m.event(&Event::MemberChanged {
            node: NodeId(3),
            alive: false,
        });
        m.event(&Event::MemberChanged {
            node: NodeId(1),
            alive: false,
        });
        m.event(&Event::ControlChanged {
            node: NodeId(2),
            epoch: 2,
        });
        m.decision(&Decision {
            request: "client",
            rejected: Some("no node fits".into()),
            took: Duration::from_micros(7),
        });
        m.decision(&Decision {
            request: "service",
            rejected: None,
            took: Duration::from_micros(30),
        });
        let text = m.render(&Sample::default());
        assert!(
            text.contains("smart_control_failover_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("smart_control_changes_total 2"), "{text}");
        assert!(
            text.contains(
                r#"smart_admission_rejections_total{request="client",reason="no_fit"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"smart_admission_decision_seconds_bucket{request="service",le="0.00005"} 1"#
            ),
            "{text}"
        );
    }
}
