//! Helpers for the suites that run real `smart node` processes ([`LocalCluster`]): the
//! cluster spec they start from, status counters and bounded polling, the HTTP API with a
//! bearer token, and the CLI. Every wait here is bounded and waits for a positive signal.

use std::future::Future;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use smart_api::ClusterStatus;
use smart_bench::cluster::{ClusterSpec, LocalCluster};
use tokio::time::Instant;

/// The node log filter of suites that do not read the supervisor's info lines.
pub const QUIET_LOG: &str = "info,smart_supervision=warn";

/// Timing for tests about something other than failover (refusals, counts): a member is
/// declared dead, and a node considers itself paused, after 3 s instead of the default. A
/// loaded machine that starves a node for a second then does not depose the Control in the
/// middle of the test, which would change what the test counts.
pub const STEADY_TIMING: &str = "[timing]\ndead_after = \"3s\"\n";

/// `[agent]` of a test that runs shell workloads as services: `sh -c` allowed besides the
/// default `smart distributor` (as an operator would allow a workload's program).
pub const ALLOW_SHELL: &str =
    "[agent]\nallowed_commands = [[\"smart\", \"distributor\"], [\"sh\", \"-c\"]]\n";

/// A cluster of `nodes` nodes of the `smart` binary `bin` (a suite passes
/// `env!("CARGO_BIN_EXE_smart")`), logging at `log`.
pub fn spec(bin: &str, nodes: usize, log: &str) -> ClusterSpec {
    let mut s = ClusterSpec::new(bin, nodes);
    s.log = log.into();
    s
}

/// [`spec`] for the video case: the last node is the front-end (no agent), videos come
/// from `origin` at `bitrate_bps`.
pub fn frontend_spec(bin: &str, nodes: usize, origin: &str, bitrate_bps: u64) -> ClusterSpec {
    let mut s = spec(bin, nodes, QUIET_LOG);
    s.frontends = vec![nodes as u64];
    s.no_agent = vec![nodes as u64];
    s.origin = origin.to_string();
    s.bitrate_bps = bitrate_bps;
    s
}

/// Starts `s` and waits (15 s at most) until every node agrees on a Control: the cluster,
/// the Control and its epoch.
pub async fn start(s: ClusterSpec) -> (LocalCluster, u64, u64) {
    let c = LocalCluster::start(s).unwrap();
    let all = c.running();
    let (control, epoch) = c
        .wait_agreed_control(&all, Duration::from_secs(15), |_, _| true)
        .await
        .unwrap();
    (c, control, epoch)
}

/// Counter `name` of a status answer (0 when the node has never counted it).
pub fn counter(s: &ClusterStatus, name: &str) -> u64 {
    s.counters
        .iter()
        .find(|(k, _)| k == name)
        .map_or(0, |(_, v)| *v)
}

/// Counter `name` of node `node`, asked now.
pub async fn node_counter(c: &LocalCluster, node: u64, name: &str) -> u64 {
    counter(&c.status(node).await.unwrap(), name)
}

/// Polls node `id`'s status until `pred` holds (bounded); panics with its log otherwise.
pub async fn wait_status(
    c: &LocalCluster,
    id: u64,
    timeout: Duration,
    pred: impl Fn(&ClusterStatus) -> bool,
) -> ClusterStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = c.status(id).await
            && pred(&s)
        {
            return s;
        }
        if Instant::now() >= deadline {
            panic!(
                "node n{id}: condition not reached in {timeout:?}; last status {:?}\nlog:\n{}",
                c.status(id).await,
                c.log_tail(id, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `f` every 100 ms until it returns `Some`, at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the `smart` binary `bin` with `args` against the HTTP API at `addr` with `token`.
pub fn smart_cli(bin: &str, args: &[&str], addr: &str, token: &str) -> std::process::Output {
    std::process::Command::new(bin)
        .args(args)
        .env("SMART_ADDR", addr)
        .env("SMART_TOKEN", token)
        .output()
        .unwrap()
}

/// `out` of a command that must have succeeded; panics with `what` and its stderr
/// otherwise.
#[track_caller]
pub fn succeeded(what: &str, out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `error.code` of an HTTP API error answer ("" when there is none).
pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// A client of the nodes' HTTP API: JSON in and out, with a bearer token.
pub struct Http {
    c: reqwest::Client,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    /// A client whose requests time out after 30 s.
    pub fn new() -> Self {
        smart_node::tls::install_provider();
        Self {
            c: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// The underlying client, for what the helpers here do not cover (streams).
    pub fn client(&self) -> &reqwest::Client {
        &self.c
    }

    /// `method url` with `token` and a JSON body; the status and the JSON answer (a string
    /// when the body is not JSON).
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.c.request(method, url);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// `GET url` with `token`: the status and the JSON answer.
    pub async fn get(&self, url: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, url, Some(token), None).await
    }

    /// `GET url` with `token`, which must answer 200: its JSON.
    pub async fn get_ok(&self, url: &str, token: &str) -> Value {
        let (s, v) = self.get(url, token).await;
        assert_eq!(s, 200, "GET {url}: {v}");
        v
    }

    /// `POST url` with `token` and a JSON body: the status and the JSON answer.
    pub async fn post(&self, url: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, url, Some(token), Some(body)).await
    }
}

/// Waits (10 s at most) until each of `nodes` has accepted `n` more registry copies from
/// the Control than when called. The Control sends one copy per report round (1 s), to
/// every live agent node, its own included; so this is also "the Control has completed
/// `n` rounds": what it had started by now is in its agents' reports. A copy made before
/// the call may still be in flight (accepted later, or refused as older if a newer one got
/// there first): with `n >= 2`, at least one accepted copy was made after the call.
///
/// Nodes without the agent role (a front-end only node) get no copies and are left out.
pub async fn wait_registry_copies(c: &LocalCluster, nodes: &[u64], n: u64) {
    let mut agents = Vec::with_capacity(nodes.len());
    for &node in nodes {
        let s = wait_status(c, node, Duration::from_secs(10), |_| true).await;
        let is_agent = s
            .members
            .iter()
            .any(|m| m.node_id == s.node_id && m.roles.iter().any(|r| r == "agent"));
        if is_agent {
            agents.push((node, counter(&s, "replica_accepted")));
        }
    }
    assert!(!agents.is_empty(), "no agent among nodes {nodes:?}");
    for (node, before) in agents {
        wait_status(c, node, Duration::from_secs(10), |s| {
            counter(s, "replica_accepted") >= before + n
        })
        .await;
    }
}
