//! A minimal external front-end (GloVE's Supervisor) over the SMART message API.
//!
//! ```text
//! SMART_TOKEN=<admin token> cargo run -p smart-api --example supervisor -- NODE_ADDR[,NODE_ADDR...] NODES_PUB VIDEO ORIGIN_URL
//! ```
//!
//! It connects to any of the nodes given (requests reach the Control through it, and the
//! client moves to the next node when its node goes away), subscribes to events,
//! admits the video's distributor (`AdmitService`, the command is `smart distributor`),
//! admits one client (`AdmitClient`, the Smart-GloVE rule), prints where the viewer must go,
//! then prints the cluster's events (admissions, migrations, failures, Control changes) for
//! ten seconds and releases the client. Errors are typed: `Rejected` says which admission
//! test failed; `NoControl`/`Rebuilding` are worth a retry (`ApiError::is_retryable`).

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::time::Duration;

use smart_api::client::{ApiClient, ClientError, Credentials};
use smart_api::{ApiError, Request, Response, ServiceSpec};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, nodes_pub, video, origin] = args.as_slice() else {
        eprintln!(
            "usage: SMART_TOKEN=<admin token> supervisor NODE_ADDR NODES_PUB VIDEO ORIGIN_URL"
        );
        std::process::exit(2);
    };
    let token = std::env::var("SMART_TOKEN")
        .map_err(|_| ClientError::Key("SMART_TOKEN is not set".into()))?;
    let creds = Credentials::load(token, nodes_pub.as_ref())?;
    let addrs: Vec<&str> = addr.split(',').collect();
    let client = ApiClient::connect_any(&addrs, creds)
        .await?
        .with_timeout(Duration::from_secs(15));
    client.subscribe().await?;

    let service = format!("video-{video}");
    let spec = ServiceSpec {
        name: service.clone(),
        class: "distributor".into(),
        command: [
            "smart",
            "distributor",
            "--listen",
            "{listen}",
            "--origin",
            origin,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        env: Vec::new(),
        per_client_bps: Some(400_000),
        duration_ms: None,
    };
    // Retry the transient errors (an election in progress), give up on the others.
    let mut placed = None;
    for _ in 0..20 {
        match client.request(Request::AdmitService(spec.clone())).await? {
            Response::Placed(p) => {
                placed = Some(p);
                break;
            }
            Response::Error(e) if e.is_retryable() => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Response::Error(e) => return Err(e.into()),
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
    let p = placed.ok_or(ClientError::Api(ApiError::NoControl))?;
    println!(
        "distributor of {video} runs on {} at {}",
        p.node, p.endpoint
    );
    let viewer = match client
        .request(Request::AdmitClient {
            service: service.clone(),
            spec: None,
            key: None,
        })
        .await?
    {
        Response::Placed(p) => {
            println!("viewer {:?} admitted: play {}{video}", p.client, p.endpoint);
            p.client
        }
        Response::Error(ApiError::Rejected { reason }) => {
            println!("viewer rejected: {reason}");
            None
        }
        other => {
            println!("unexpected: {other:?}");
            None
        }
    };
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(ev)) = tokio::time::timeout_at(until, client.next_event()).await {
        println!("event: {ev:?}");
    }
    client
        .request(Request::ReleaseClient {
            service,
            client: viewer,
        })
        .await
        .map(|r| println!("release: {r:?}"))
}
