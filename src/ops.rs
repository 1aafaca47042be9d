//! The `smart` admin commands: thin wrappers over a node's HTTP/JSON API (`/v1`, see
//! `smart_api::http`), each with `--json` for machines.
//!
//! | command | request |
//! |---|---|
//! | `smart status` | `GET /v1/status` |
//! | `smart nodes` | `GET /v1/nodes` |
//! | `smart services [NAME]` | `GET /v1/services[/NAME]` |
//! | `smart events [--from I] [--no-follow]` | `GET /v1/events` |
//! | `smart admit NAME --class C -- CMD...` | `POST /v1/services` |
//! | `smart admit NAME --client [--class C -- CMD...]` | `POST /v1/services/NAME/clients` |
//! | `smart stop NAME [--client ID]` | `DELETE /v1/services/NAME[/clients/ID]` |
//! | `smart locate NAME` | `GET /v1/services/NAME/location` |
//! | `smart drain NODE`, `smart undrain NODE` | `POST /v1/nodes/NODE/drain`, `/undrain` |
//! | `smart profiles list` | `GET /v1/profiles` |
//! | `smart profiles show CLASS` | `GET /v1/profiles/CLASS` |
//! | `smart profiles put CLASS FILE` | `PUT /v1/profiles/CLASS` (FILE as `smart profile` writes it) |
//!
//! Where: `--addr URL` (or `SMART_ADDR`; several, comma-separated, are tried in turn), or
//! `--config NODE.toml` (that node's `http_listen`). Who: `--token` (or `SMART_TOKEN`). Flags
//! win over the environment. Exit codes: [`client::exit`].
//!
//! ## Layout
//! - [`OpsCmd`] and [`run`]; [`Conn`]: where and who; [`client`]: the HTTP client.

pub(crate) mod client;

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;
use smart_api::http::{AdmitClient, Done, Nodes, Profiles, Service, ServiceSpec, Services};
use smart_api::{ClusterStatus, Placement, VersionInfo};
use smart_proto::NodeId;

use client::{HttpClient, OpsError};
use smart_config::NodeConfig;

/// Where the API is and who asks.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Conn {
    /// A node's HTTP API, e.g. `http://127.0.0.1:7180`; several, comma-separated, are tried
    /// in turn.
    #[arg(long, env = "SMART_ADDR", value_delimiter = ',')]
    pub addr: Vec<String>,
    /// An API token (see `smart tokens new`).
    #[arg(long, env = "SMART_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Take the address from a node's config (its `http_listen`) when `--addr` is not given.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The CA certificate (PEM) an `https://` API is checked against, e.g. the cluster's
    /// `api-ca.crt` from `smart tls ca`; default: the config's `[http_tls] ca_file`, else
    /// the system's roots.
    #[arg(long, env = "SMART_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Time to wait for an answer.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl Conn {
    /// The client these options describe.
    pub(crate) fn client(&self) -> Result<HttpClient, OpsError> {
        let mut bases = self.addr.clone();
        let mut ca = self.ca_file.clone();
        bases.retain(|a| !a.trim().is_empty());
        if bases.is_empty()
            && let Some(p) = &self.config
        {
            let cfg = NodeConfig::load(p).map_err(|e| OpsError::Usage(e.to_string()))?;
            if ca.is_none() {
                ca = cfg.http_tls.as_ref().and_then(|t| t.ca_file.clone());
            }
            let url = cfg.http_url().ok_or_else(|| {
                OpsError::Usage(format!(
                    "{} has no http_listen: give --addr URL",
                    p.display()
                ))
            })?;
            bases.push(url);
        }
        HttpClient::new(bases, self.token.clone(), self.timeout, ca.as_deref())
    }
}

/// The admin commands (flattened into `smart`'s subcommands).
#[derive(Debug, clap::Subcommand)]
pub(crate) enum OpsCmd {
    /// Members and the Control as a node sees them (`members[].http`: each one's API).
    Status(Conn),
    /// Every member with the Control's view: usage against reservation and VR, drains.
    Nodes(Conn),
    /// Admitted services (or one): node, clients, reservation and usage.
    Services {
        /// Only this service.
        name: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// The cluster's events as a node hears them, numbered; resumes after `--from`.
    Events {
        /// Start after this index (0: everything the node still keeps).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Print what is kept and exit instead of following.
        #[arg(long)]
        no_follow: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Admit a service (`-- COMMAND...`), or with `--client` one client of it (admitting
    /// the service first when a command is given and it is not running).
    Admit(AdmitArgs),
    /// Stop a service, or release one of its clients.
    Stop {
        /// The service.
        name: String,
        /// Release this client (its id from `smart admit --client`) instead.
        #[arg(long)]
        client: Option<u64>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Where a service's clients connect now.
    Locate {
        /// The service.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Move every service off a node (maintenance): live migration where the workload speaks
    /// the control API, restart elsewhere otherwise. The drain survives Control failovers.
    Drain {
        /// The node (`3` or `n3`).
        node: NodeId,
        /// Wait until no service runs on the node any more, at most this long (`60s`); exit
        /// non-zero if some still do. Before a planned stop: the SIGTERM that follows then
        /// has nothing to hand over but the Control, if the node holds it.
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<std::time::Duration>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Take a drained node back into placement.
    Undrain {
        /// The node (`3` or `n3`).
        node: NodeId,
        #[command(flatten)]
        conn: Conn,
    },
    /// The service classes' profiles admission uses (cluster state: replicated, kept
    /// across Control failovers).
    #[command(subcommand)]
    Profiles(ProfilesCmd),
}

/// `smart profiles`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ProfilesCmd {
    /// Every class's profile, summarised.
    List(Conn),
    /// One class's profile, whole (the JSON `smart profile` writes, with its source and
    /// version).
    Show {
        /// The service class, e.g. `distributor`.
        class: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Store FILE (written by `smart profile`) as CLASS's profile; admission uses it from
    /// the next request.
    Put {
        /// The service class.
        class: String,
        /// The profile file.
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `smart admit`.
#[derive(Debug, clap::Args)]
pub(crate) struct AdmitArgs {
    /// The service's name, e.g. `video-42`.
    pub name: String,
    /// Admit one client of the service instead (prints its client id).
    #[arg(long)]
    pub client: bool,
    /// The service's class (its profile), e.g. `distributor`.
    #[arg(long, default_value = "distributor")]
    pub class: String,
    /// Per-client network increment, bits/s.
    #[arg(long)]
    pub per_client_bps: Option<u64>,
    /// Length of what the service serves, milliseconds (a distributor's video).
    #[arg(long)]
    pub duration_ms: Option<u64>,
    /// Extra environment, `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    #[command(flatten)]
    pub conn: Conn,
    /// The command Agent86 runs (`{listen}` is replaced by an address it picks).
    #[arg(last = true)]
    pub command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}`: expected KEY=VALUE"))
}

fn print_json(v: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    );
}

fn enc(s: &str) -> String {
    // Path segments: services are `[A-Za-z0-9_.-]` in practice; anything else is escaped.
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn bps(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.2}G", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1}M", b / 1e6)
    } else {
        format!("{:.0}k", b / 1e3)
    }
}

/// Runs one admin command.
pub(crate) async fn run(cmd: OpsCmd) -> Result<(), OpsError> {
    match cmd {
        OpsCmd::Status(conn) => {
            let s: ClusterStatus = conn.client()?.get("/v1/status").await?;
            if conn.json {
                print_json(&s);
            } else {
                print_status(&s);
            }
        }
        OpsCmd::Nodes(conn) => {
            let n: Nodes = conn.client()?.get("/v1/nodes").await?;
            if conn.json {
                print_json(&n);
            } else {
                print_nodes(&n);
            }
        }
        OpsCmd::Services { name, conn } => {
            let c = conn.client()?;
            let list = match &name {
                Some(n) => vec![
                    c.get::<Service>(&format!("/v1/services/{}", enc(n)))
                        .await?,
                ],
                None => c.get::<Services>("/v1/services").await?.services,
            };
            if conn.json {
                match name {
                    Some(_) => print_json(&list[0]),
                    None => print_json(&Services { services: list }),
                }
            } else {
                print_services(&list);
            }
        }
        OpsCmd::Events {
            from,
            no_follow,
            conn,
        } => events(&conn, from, !no_follow).await?,
        OpsCmd::Admit(a) => admit(a).await?,
        OpsCmd::Stop { name, client, conn } => {
            let path = match client {
                Some(id) => format!("/v1/services/{}/clients/{id}", enc(&name)),
                None => format!("/v1/services/{}", enc(&name)),
            };
            let d: Done = conn
                .client()?
                .send::<(), _>(Method::DELETE, &path, None)
                .await?;
            if conn.json {
                print_json(&d);
            } else {
                match client {
                    Some(id) => println!("released client {id} of {name}"),
                    None => println!("stopped {name}"),
                }
            }
        }
        OpsCmd::Locate { name, conn } => {
            let p: Placement = conn
                .client()?
                .get(&format!("/v1/services/{}/location", enc(&name)))
                .await?;
            if conn.json {
                print_json(&p);
            } else {
                println!("{} runs on {} at {}", p.service, p.node, p.endpoint);
            }
        }
        OpsCmd::Drain { node, wait, conn } => {
            let d: Done = conn
                .client()?
                .send::<(), _>(Method::POST, &format!("/v1/nodes/{}/drain", node.0), None)
                .await
                .inspect_err(|e| {
                    if let OpsError::Api { status: 409, .. } = e {
                        eprintln!("drain of {node} refused: something on it cannot move");
                    }
                })?;
            if conn.json {
                print_json(&d);
            } else {
                println!("draining {node}: its services are moving to other nodes");
            }
            if let Some(within) = wait {
                drain_wait(&conn, node, within).await?;
            }
        }
        OpsCmd::Undrain { node, conn } => {
            let d: Done = conn
                .client()?
                .send::<(), _>(Method::POST, &format!("/v1/nodes/{}/undrain", node.0), None)
                .await?;
            if conn.json {
                print_json(&d);
            } else {
                println!("{node} is back in placement");
            }
        }
        OpsCmd::Profiles(p) => profiles(p).await?,
    }
    Ok(())
}

async fn profiles(cmd: ProfilesCmd) -> Result<(), OpsError> {
    match cmd {
        ProfilesCmd::List(conn) => {
            let p: Profiles = conn.client()?.get("/v1/profiles").await?;
            if conn.json {
                print_json(&p);
                return Ok(());
            }
            println!(
                "{:<16} {:<9} {:>7} {:>9} {:>10} {:>11} {:>12} {:>10} video",
                "class",
                "source",
                "version",
                "intervals",
                "cpu mean",
                "net mean",
                "per client",
                "ws"
            );
            for s in &p.profiles {
                println!(
                    "{:<16} {:<9} {:>7} {:>9} {:>10.4} {:>11} {:>12} {:>10} {}",
                    s.class,
                    format!("{:?}", s.source).to_lowercase(),
                    s.version,
                    s.intervals,
                    s.cpu_mean,
                    format!("{:.2} Mb/s", s.net_mean_bps / 1e6),
                    s.per_client_net_bps
                        .map(|b| format!("{:.0} kb/s", b / 1e3))
                        .unwrap_or_else(|| "-".into()),
                    format!("{:.1} MB", s.working_set_bytes as f64 / 1e6),
                    s.video
                        .map(|v| format!(
                            "{} kb/s, {} s, cache {:.0} %",
                            v.bitrate_bps / 1000,
                            v.duration_ms / 1000,
                            v.window_fraction * 100.0
                        ))
                        .unwrap_or_else(|| "-".into()),
                );
            }
        }
        ProfilesCmd::Show { class, conn } => {
            let p: Value = conn
                .client()?
                .get(&format!("/v1/profiles/{}", enc(&class)))
                .await?;
            print_json(&p);
        }
        ProfilesCmd::Put { class, file, conn } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| OpsError::Usage(format!("reading {}: {e}", file.display())))?;
            let profile: Value = serde_json::from_str(&text)
                .map_err(|e| OpsError::Usage(format!("{} is not JSON: {e}", file.display())))?;
            let d: Done = conn
                .client()?
                .send(
                    Method::PUT,
                    &format!("/v1/profiles/{}", enc(&class)),
                    Some(&profile),
                )
                .await?;
            if conn.json {
                print_json(&d);
            } else {
                println!("stored {} as the profile of {class}", file.display());
            }
        }
    }
    Ok(())
}

/// `smart drain N --wait D`: polls `/v1/services` until none runs on `node`, at most `within`.
async fn drain_wait(
    conn: &Conn,
    node: NodeId,
    within: std::time::Duration,
) -> Result<(), OpsError> {
    let c = conn.client()?;
    let deadline = std::time::Instant::now() + within;
    loop {
        let left: Vec<String> = c
            .get::<Services>("/v1/services")
            .await?
            .services
            .into_iter()
            .filter(|s| s.node == node)
            .map(|s| s.name.to_string())
            .collect();
        if left.is_empty() {
            if !conn.json {
                println!("{node} runs no service any more");
            }
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(OpsError::Usage(format!(
                "{} still on {node} after {}: {}",
                left.len(),
                humantime::format_duration(within),
                left.join(", ")
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn admit(a: AdmitArgs) -> Result<(), OpsError> {
    let c = a.conn.client()?;
    let spec = (!a.command.is_empty()).then(|| ServiceSpec {
        name: a.name.clone(),
        class: a.class.clone(),
        command: a.command.clone(),
        env: a.env.clone(),
        per_client_bps: a.per_client_bps,
        duration_ms: a.duration_ms,
    });
    let p: Placement = if a.client {
        c.send_once(
            Method::POST,
            &format!("/v1/services/{}/clients", enc(&a.name)),
            Some(&AdmitClient { spec }),
        )
        .await?
    } else {
        let spec = spec.ok_or_else(|| {
            OpsError::Usage("give the service's command after `--` (or --client)".into())
        })?;
        c.send(Method::POST, "/v1/services", Some(&spec)).await?
    };
    if a.conn.json {
        print_json(&p);
    } else {
        match p.client {
            Some(id) => println!(
                "client {id} of {} admitted: connect to {} ({})",
                p.service, p.endpoint, p.node
            ),
            None => println!("{} admitted on {} at {}", p.service, p.node, p.endpoint),
        }
    }
    Ok(())
}

async fn events(conn: &Conn, from: u64, follow: bool) -> Result<(), OpsError> {
    let c = conn.client()?;
    let path = format!("/v1/events?from={from}&follow={follow}");
    let r = c.send_raw::<()>(Method::GET, &path, None, true).await?;
    if !r.status().is_success() {
        let status = r.status();
        let bytes = r.bytes().await.unwrap_or_default();
        return client::decode::<Value>(status, &bytes).map(|_| ());
    }
    let mut body = r.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| OpsError::Unreachable {
            addrs: c.bases().join(", "),
            cause: format!("event stream: {e}"),
        })?;
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim();
            if line.is_empty() {
                continue; // keep-alive
            }
            if conn.json {
                println!("{line}");
                continue;
            }
            // Any `type`, known or newer than this build, prints alike.
            match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(mut m)) => {
                    let index = m.remove("index").unwrap_or(Value::Null);
                    m.remove("at_ms");
                    let kind = m.remove("type").unwrap_or(Value::Null);
                    let rest: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "#{index} {} {}",
                        kind.as_str().unwrap_or("?"),
                        rest.join(" ")
                    );
                }
                _ => println!("{line}"),
            }
        }
    }
    Ok(())
}

fn print_status(s: &ClusterStatus) {
    match &s.control {
        Some(c) => println!("control: n{} at epoch {}", c.node_id.0, c.epoch),
        None => println!("control: none (election in progress)"),
    }
    println!(
        "answered by n{} (highest epoch {})",
        s.node_id.0, s.highest_epoch
    );
    println!(
        "{:<6} {:<22} {:<6} {:<28} {:>10} {:>10} http",
        "node", "address", "alive", "roles", "heard(ms)", "incarn"
    );
    for m in &s.members {
        println!(
            "{:<6} {:<22} {:<6} {:<28} {:>10} {:>10} {}",
            format!("n{}", m.node_id.0),
            m.address,
            if m.alive { "yes" } else { "no" },
            m.roles.join(","),
            m.last_heard_ms,
            m.incarnation,
            m.http.as_deref().unwrap_or("-")
        );
    }
    let nonzero: Vec<String> = s
        .counters
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("counters: {}", nonzero.join(" "));
}

fn print_nodes(n: &Nodes) {
    match &n.control {
        Some(c) => println!("control: n{} at epoch {}", c.node_id.0, c.epoch),
        None => println!("control: none (election in progress)"),
    }
    println!(
        "{:<5} {:<5} {:<8} {:<22} {:<22} {:>9} http",
        "node", "alive", "drained", "cpu used/res/VR", "net used/res/VR", "instances"
    );
    for m in &n.nodes {
        let (drained, cpu, net, inst) = match &m.placement {
            Some(p) => {
                let cap = p.capacity.unwrap_or_default();
                let u = p.usage.unwrap_or_default();
                (
                    if p.drained { "yes" } else { "no" }.to_string(),
                    format!(
                        "{:.2}/{:.2}/{:.1}",
                        u.cpu_cores,
                        p.reserved.cpu_cores,
                        p.vr * cap.cpu_cores
                    ),
                    format!(
                        "{}/{}/{}",
                        bps(u.network_bps),
                        bps(p.reserved.network_bps),
                        bps(p.vr * cap.network_bps)
                    ),
                    p.instances.len().to_string(),
                )
            }
            None => (
                "-".into(),
                "-".into(),
                "-".into(),
                m.load.instances.to_string(),
            ),
        };
        println!(
            "{:<5} {:<5} {:<8} {:<22} {:<22} {:>9} {}",
            format!("n{}", m.node_id.0),
            if m.alive { "yes" } else { "no" },
            drained,
            cpu,
            net,
            inst,
            m.http.as_deref().unwrap_or("-")
        );
    }
}

fn print_services(list: &[Service]) {
    println!(
        "{:<20} {:<5} {:<22} {:>7} {:>9} {:>26} {:>26} {:<8} {:<6} endpoint",
        "service",
        "node",
        "instance",
        "clients",
        "connected",
        "reserved cpu/mem/net",
        "used cpu/mem/net",
        "profile",
        "limits"
    );
    let res = |r: &Option<smart_api::http::Resources>| match r {
        Some(r) => format!(
            "{:.3}/{:.0}M/{:.1}Mb",
            r.cpu_cores,
            r.memory_bytes as f64 / 1e6,
            r.network_bps / 1e6
        ),
        None => "-".into(),
    };
    for s in list {
        println!(
            "{:<20} {:<5} {:<22} {:>7} {:>9} {:>26} {:>26} {:<8} {:<6} {}",
            s.name,
            format!("n{}", s.node.0),
            s.instance,
            s.clients,
            s.clients_connected
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            res(&s.reserved),
            res(&s.usage),
            format!("{:?}", s.profile).to_lowercase(),
            if s.limits_enforced { "yes" } else { "no" },
            s.endpoint
        );
    }
}

/// `smart version`: this build's versions, and the node's when an address is given.
pub(crate) async fn version(conn: &Conn) -> Result<(), OpsError> {
    let local = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "api_version": smart_api::API_VERSION,
        "wire_version": smart_transport::frame::PROTOCOL_VERSION,
        "heartbeat_version": smart_proto::heartbeat::VERSION,
        "http_api": "v1",
    });
    let node: Option<VersionInfo> = if conn.addr.is_empty() && conn.config.is_none() {
        None
    } else {
        Some(conn.client()?.get("/v1/version").await?)
    };
    if conn.json {
        print_json(&serde_json::json!({"cli": local, "node": node}));
    } else {
        println!(
            "smart {} (message API v{}, transport frames v{}, heartbeats v{}, HTTP API v1)",
            local["version"].as_str().unwrap_or("?"),
            smart_api::API_VERSION,
            smart_transport::frame::PROTOCOL_VERSION,
            smart_proto::heartbeat::VERSION
        );
        if let Some(v) = node {
            println!(
                "node n{}: smart {} (message API v{}, transport frames v{}, heartbeats v{})",
                v.node_id.0, v.version, v.api_version, v.wire_version, v.heartbeat_version
            );
        }
    }
    Ok(())
}
