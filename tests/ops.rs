//! The operator's surface against real `smart node` processes on loopback (docs/operations.md):
//! the
//! HTTP/JSON API route by route (through a follower, with bad and read-only tokens and
//! malformed bodies), the CLI over it, the message-API client's fail-over and typed errors,
//! the event stream resuming from its index across a Control failover, `/metrics` checked by
//! `promtool`, a drain that survives a failover, and the dashboard in headless Chromium.
//!
//! Each test starts its own cluster; every wait is bounded. The nextest config runs this
//! binary serially (group `cluster-processes`).

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use smart_api::client::ApiClient;
use smart_api::{ApiError, Request, Response};
use smart_bench::cluster::LocalCluster;
use smart_testkit::cluster::{self, Http, code};

const SMART: &str = env!("CARGO_BIN_EXE_smart");

async fn start(nodes: usize) -> (LocalCluster, u64, u64) {
    cluster::start(cluster::spec(SMART, nodes, cluster::QUIET_LOG)).await
}

/// A service whose instance listens (a distributor with an origin nobody asks).
fn service_spec(name: &str) -> Value {
    json!({
        "name": name,
        "class": "distributor",
        "command": [SMART, "distributor", "--listen", "{listen}", "--origin", "http://127.0.0.1:9"],
        "per_client_bps": 400000,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_works_through_a_follower_with_tokens_and_clear_errors() {
    let (c, control, _) = start(3).await;
    let f = (1..=3).find(|&n| n != control).unwrap();
    let base = c.http_url(f);
    let (admin, read) = (c.admin_token(), c.read_token());
    let h = Http::new();

    // Credentials: none or unknown is 401 (with a challenge), read-only on a write is 403.
    let r = h
        .client()
        .get(format!("{base}/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let (s, v) = h
        .get(&format!("{base}/v1/status"), "smart_not_a_token")
        .await;
    assert_eq!((s.as_u16(), code(&v)), (401, "unauthorized"), "{v}");
    let (s, v) = h
        .call(
            Method::POST,
            &format!("{base}/v1/services"),
            Some(read),
            Some(service_spec("x")),
        )
        .await;
    assert_eq!((s.as_u16(), code(&v)), (403, "forbidden"), "{v}");
    assert_eq!(v["error"]["retryable"], false);

    // Malformed bodies: 400 with the reason, 415 without JSON, 413 when too large.
    let r = h
        .client()
        .post(format!("{base}/v1/services"))
        .bearer_auth(admin)
        .header("content-type", "application/json")
        .body(r#"{"name": "v", "class": 7"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert_eq!(code(&v), "bad_request");
    assert!(
        msg.contains("malformed JSON") && msg.contains("column"),
        "{msg}"
    );
    let r = h
        .client()
        .post(format!("{base}/v1/services"))
        .bearer_auth(admin)
        .body("name=v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = h
        .client()
        .post(format!("{base}/v1/services"))
        .bearer_auth(admin)
        .header("content-type", "application/json")
        .body(vec![b' '; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let (s, v) = h
        .call(
            Method::POST,
            &format!("{base}/v1/services"),
            Some(admin),
            Some(json!({"name": "v", "class": "d", "command": ["x"], "colour": "red"})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("colour"),
        "{v}"
    );
    let (s, v) = h.get(&format!("{base}/v1/nodes/x9/drain"), admin).await;
    assert_eq!((s.as_u16(), code(&v)), (405, "method_not_allowed"), "{v}");
    let (s, v) = h.get(&format!("{base}/v1/nope"), admin).await;
    assert_eq!((s.as_u16(), code(&v)), (404, "not_found"), "{v}");
    let (s, v) = h
        .call(
            Method::POST,
            &format!("{base}/v1/nodes/x9/drain"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!((s.as_u16(), code(&v)), (400, "bad_request"), "{v}");

    // Status and version, from the follower; every member's API URL.
    let st = cluster::eventually(Duration::from_secs(10), "every member's http", || async {
        let (s, v) = h.get(&format!("{base}/v1/status"), read).await;
        (s == 200
            && v["members"].as_array()?.len() == 3
            && v["members"]
                .as_array()?
                .iter()
                .all(|m| m["http"].is_string()))
        .then_some(v)
    })
    .await;
    assert_eq!(st["node_id"], f);
    assert_eq!(st["control"]["node_id"], control);
    for m in st["members"].as_array().unwrap() {
        let id = m["node_id"].as_u64().unwrap();
        assert_eq!(m["http"], c.http_url(id));
    }
    let (s, v) = h.get(&format!("{base}/v1/version"), read).await;
    assert_eq!(s, 200);
    assert_eq!(v["api_version"], smart_api::API_VERSION);
    assert_eq!(v["node_id"], f);

    // Admit a service and two clients through the follower.
    let (s, p) = h
        .call(
            Method::POST,
            &format!("{base}/v1/services"),
            Some(admin),
            Some(service_spec("video-a")),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let node = p["node"].as_u64().unwrap();
    assert!(
        p["endpoint"].as_str().unwrap().starts_with("http://"),
        "{p}"
    );
    let (s, c1) = h
        .call(
            Method::POST,
            &format!("{base}/v1/services/video-a/clients"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!(s, 201, "{c1}");
    let (s, c2) = h
        .call(
            Method::POST,
            &format!("{base}/v1/services/video-a/clients"),
            Some(admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 201, "{c2}");
    assert_ne!(c1["client"], c2["client"]);
    assert!(c1["client"].is_u64());
    let (s, v) = h
        .call(
            Method::POST,
            &format!("{base}/v1/services/video-z/clients"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!((s.as_u16(), code(&v)), (404, "not_found"), "{v}");

    let (s, v) = h.get(&format!("{base}/v1/services"), read).await;
    assert_eq!(s, 200);
    let svc = &v["services"][0];
    assert_eq!(
        (svc["name"].as_str(), svc["clients"].as_u64()),
        (Some("video-a"), Some(2))
    );
    // Its reservation shows once the Control has its node's next report (1 s refresh).
    let v = cluster::eventually(
        Duration::from_secs(5),
        "the service's reservation",
        || async {
            let (s, v) = h.get(&format!("{base}/v1/services/video-a"), read).await;
            (s == 200 && v["reserved"]["network_bps"].as_f64() > Some(0.0)).then_some(v)
        },
    )
    .await;
    assert_eq!(v["node"], node);
    let (s, v) = h.get(&format!("{base}/v1/services/video-z"), read).await;
    assert_eq!((s.as_u16(), code(&v)), (404, "not_found"));
    let (s, v) = h
        .get(&format!("{base}/v1/services/video-a/location"), read)
        .await;
    assert_eq!((s.as_u16(), v["node"].as_u64()), (200, Some(node)), "{v}");

    let id = c1["client"].as_u64().unwrap();
    let url = format!("{base}/v1/services/video-a/clients/{id}");
    let (s, v) = h.call(Method::DELETE, &url, Some(admin), None).await;
    assert_eq!((s.as_u16(), &v), (200, &json!({"ok": true})));
    let (s, v) = h.call(Method::DELETE, &url, Some(admin), None).await;
    assert_eq!((s.as_u16(), code(&v)), (404, "not_found"), "{v}");

    // Nodes: the Control's view (reservation on the service's node, once the Control has
    // its node's next report: 1 s refresh), and usage history.
    let n = cluster::eventually(Duration::from_secs(5), "the node's reservation", || async {
        let (s, v) = h.get(&format!("{base}/v1/nodes"), read).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
        let n = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == node)
            .cloned()
            .unwrap();
        (n["placement"]["reserved"]["memory_bytes"].as_u64() > Some(0)).then_some(n)
    })
    .await;
    assert!(n["placement"]["instances"].as_array().is_some(), "{n}");
    assert!(n["placement"]["vr"].as_f64().unwrap() > 0.0);
    cluster::eventually(Duration::from_secs(6), "usage samples", || async {
        let (_, v) = h.get(&format!("{base}/v1/usage"), read).await;
        (v["nodes"].as_array()?.len() == 3 && !v["nodes"][0]["points"].as_array()?.is_empty())
            .then_some(())
    })
    .await;

    // Drain its node with the CLI, waiting until it runs nothing: the service has moved
    // when it returns; undrain; undrain again is a 400.
    let out = {
        let (bin, base, admin, node) = (SMART.to_string(), base.clone(), admin.to_string(), node);
        tokio::task::spawn_blocking(move || {
            cluster::smart_cli(
                &bin,
                &["drain", &format!("n{node}"), "--wait", "20s"],
                &base,
                &admin,
            )
        })
        .await
        .unwrap()
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("runs no service any more"));
    let (_, v) = h.get(&format!("{base}/v1/services/video-a"), read).await;
    assert!(v["node"].as_u64().is_some_and(|x| x != node), "{v}");
    let (s, _) = h
        .call(
            Method::POST,
            &format!("{base}/v1/nodes/{node}/undrain"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = h
        .call(
            Method::POST,
            &format!("{base}/v1/nodes/{node}/undrain"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!((s.as_u16(), code(&v)), (400, "bad_request"), "{v}");

    // The CLI over the same API: JSON, exit codes.
    let out = cluster::smart_cli(SMART, &["services", "--json"], &base, read);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["services"][0]["name"], "video-a");
    let out = cluster::smart_cli(SMART, &["locate", "video-z"], &base, read);
    assert_eq!(out.status.code(), Some(1), "not found");
    let out = cluster::smart_cli(SMART, &["status"], &base, "smart_bad");
    assert_eq!(out.status.code(), Some(4), "bad token");
    let out = cluster::smart_cli(SMART, &["stop", "video-a"], &base, read);
    assert_eq!(out.status.code(), Some(4), "read token on a write");
    let out = cluster::smart_cli(SMART, &["nodes"], "http://127.0.0.1:1", read);
    assert_eq!(out.status.code(), Some(3), "unreachable");
    // Several addresses, the first dead: the next answers.
    let out = cluster::smart_cli(
        SMART,
        &["nodes", "--json"],
        &format!("http://127.0.0.1:1,{base}"),
        read,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cluster::smart_cli(SMART, &["stop", "video-a"], &base, admin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (s, _) = h.get(&format!("{base}/v1/services/video-a"), read).await;
    assert_eq!(s, 404);

    // Every route of the OpenAPI document the node serves is routed (no "no such route", no
    // 405), with its path parameters filled in.
    let (s, doc) = h.get(&format!("{base}/openapi.json"), "").await;
    assert_eq!(s, 200);
    assert_eq!(
        doc,
        serde_json::from_str::<Value>(&smart_api::openapi::json()).unwrap()
    );
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let url = format!(
                "{base}{}?follow=false",
                path.replace("{name}", "nope").replace("{id}", "99")
            );
            let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let (s, v) = h.call(m, &url, Some(admin), None).await;
            assert!(
                s != 405 && !(s == 404 && v["error"]["message"] == "no such route"),
                "{method} {path}: {s} {v}"
            );
        }
    }

    // The message-API client: fail-over at connect, the version, typed errors returned.
    let dead = "127.0.0.1:1".to_string();
    let live = c.nodes[(f - 1) as usize].addr.to_string();
    let api = ApiClient::connect_any(&[&dead, &live], c.credentials(true))
        .await
        .unwrap();
    assert_eq!(api.connected_to(), live);
    let v = api.server_version().expect("version on connect");
    assert_eq!((v.node_id.0, v.api_version), (f, smart_api::API_VERSION));
    assert_eq!(v.http.as_deref(), Some(base.as_str()));
    match api
        .request(Request::ReleaseClient {
            service: "video-z".into(),
            client: Some(1),
        })
        .await
        .unwrap()
    {
        Response::Error(ApiError::NotFound { .. }) => {}
        other => panic!("typed error expected, got {other:?}"),
    }
}

/// Reads NDJSON records from `GET url` until `done` says so (bounded).
async fn read_events(
    h: &Http,
    url: &str,
    token: &str,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    use futures::StreamExt;
    let r = h.client().get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let mut body = r.bytes_stream();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let until = tokio::time::Instant::now() + within;
    while !done(&out) {
        let chunk = tokio::time::timeout_at(until, body.next())
            .await
            .unwrap_or_else(|_| panic!("events not seen in {within:?}: {out:?}"))
            .expect("stream ended")
            .unwrap();
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            if line.len() > 1 {
                out.push(serde_json::from_slice(&line).unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_resumes_from_its_index_across_a_control_failover() {
    let (mut c, control, epoch) = start(3).await;
    let f = (1..=3).find(|&n| n != control).unwrap();
    let url = format!("{}/v1/events", c.http_url(f));
    let h = Http::new();
    let token = c.read_token().to_string();
    // What the follower heard so far (members coming up, the election), then its last index.
    let (s, v) = h.get(&format!("{url}?follow=false"), &token).await;
    assert_eq!(s, 200);
    let Value::String(text) = v else {
        panic!("NDJSON expected")
    };
    let before: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        before.iter().any(|e| e["type"] == "control_changed"),
        "{before:?}"
    );
    let last = before.last().unwrap()["index"].as_u64().unwrap();

    // Follow from that index, kill the Control, read until the new Control is announced.
    let reader = {
        let (h, url, token) = (Http::new(), format!("{url}?from={last}"), token.clone());
        tokio::spawn(async move {
            read_events(&h, &url, &token, Duration::from_secs(15), |evs| {
                evs.iter()
                    .any(|e| e["type"] == "control_changed" && e["epoch"].as_u64() > Some(epoch))
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.kill(control).unwrap();
    let during = reader.await.unwrap();
    let idx: Vec<u64> = during
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert!(
        idx.windows(2).all(|w| w[1] > w[0]) && idx[0] > last,
        "{idx:?}"
    );
    assert!(during.iter().all(|e| e["type"] != "gap"), "{during:?}");
    assert!(
        during
            .iter()
            .any(|e| e["type"] == "member_changed" && e["node"] == control && e["alive"] == false),
        "{during:?}"
    );
    // Resuming from the middle gives exactly the rest: same indices, same events.
    let mid = idx[0];
    let (_, v) = h
        .get(&format!("{url}?from={mid}&follow=false"), &token)
        .await;
    let again: Vec<Value> = match v {
        Value::String(t) => t
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        other => vec![other],
    };
    assert_eq!(
        again[..during.len() - 1],
        during[1..],
        "resumed stream differs"
    );
    // SSE framing with Last-Event-ID.
    let r = h
        .client()
        .get(format!("{url}?follow=false"))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .header("last-event-id", mid.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    assert!(
        text.starts_with(&format!("id: {}\ndata: {{", idx[1])),
        "{text}"
    );
    // An index from before the ring (or another incarnation) is told the gap.
    let (_, v) = h.get(&format!("{url}?from=5&follow=false"), &token).await;
    let first: Value = match v {
        Value::String(t) => serde_json::from_str(t.lines().next().unwrap()).unwrap(),
        other => other,
    };
    assert_eq!(first["type"], "gap", "{first}");
}

fn promtool_check(text: &str) {
    let Some(promtool) = smart_testkit::require::require(
        "promtool",
        smart_vod::tools::which("promtool"),
        "apt-get install prometheus (scripts/setup.sh)",
    ) else {
        return;
    };
    use std::io::Write;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_move_when_a_node_dies() {
    let (mut c, control, _) = start(3).await;
    let f = (1..=3).find(|&n| n != control).unwrap();
    let h = Http::new();
    // An admission, so that the Control has decisions and a service to report.
    let (s, p) = h
        .call(
            Method::POST,
            &format!("{}/v1/services", c.http_url(f)),
            Some(c.admin_token()),
            Some(service_spec("video-m")),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let urls: Vec<String> = (1..=3)
        .map(|n| format!("{}/metrics", c.http_url(n)))
        .collect();
    // Without a token: 401 (the figures name every service and node).
    let anonymous = h.client().get(&urls[0]).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let read = c.read_token().to_string();
    let scrape = |id: u64| {
        let (h, url, read) = (
            h.client().clone(),
            urls[(id - 1) as usize].clone(),
            read.clone(),
        );
        async move {
            h.get(url)
                .bearer_auth(read)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    // Per-service figures come with the Control's next report of the node (1 s refresh).
    let on_control =
        cluster::eventually(Duration::from_secs(5), "the service's metrics", || async {
            let t = scrape(control).await;
            t.contains("smart_service_reserved_network_bytes_per_second{service=\"video-m\"")
                .then_some(t)
        })
        .await;
    promtool_check(&on_control);
    assert_eq!(
        value_of(&on_control, r#"smart_members{state="alive"}"#),
        Some(3.0),
        "{on_control}"
    );
    assert_eq!(
        value_of(
            &on_control,
            r#"smart_admission_decisions_total{request="service",outcome="admitted"}"#
        ),
        Some(1.0),
        "{on_control}"
    );
    assert!(on_control.contains("smart_transport_handshakes_ok_total"));
    let on_follower = scrape(f).await;
    promtool_check(&on_follower);
    assert_eq!(
        value_of(&on_follower, "smart_control_node"),
        Some(control as f64)
    );
    // The Control dies: the follower sees two members alive, the member down, a failover.
    c.kill(control).unwrap();
    let after = cluster::eventually(Duration::from_secs(10), "metrics to move", || async {
        let t = scrape(f).await;
        (value_of(&t, r#"smart_members{state="alive"}"#) == Some(2.0)
            && value_of(&t, "smart_control_failover_seconds_count") == Some(1.0))
        .then_some(t)
    })
    .await;
    promtool_check(&after);
    assert_eq!(
        value_of(&after, &format!(r#"smart_member_up{{member="{control}"}}"#)),
        Some(0.0)
    );
    let failover = value_of(&after, "smart_control_failover_seconds_sum").unwrap();
    assert!(failover > 0.0 && failover < 2.0, "failover {failover} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_survives_a_control_failover_and_undrain_brings_placements_back() {
    let (mut c, control, epoch) = start(3).await;
    let drained = (1..=3).find(|&n| n != control).unwrap();
    let other = (1..=3).find(|&n| n != control && n != drained).unwrap();
    let base = c.http_url(other);
    let (admin, read) = (c.admin_token().to_string(), c.read_token().to_string());
    let h = Http::new();
    let (s, v) = h
        .call(
            Method::POST,
            &format!("{base}/v1/nodes/{drained}/drain"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // The drain rides in the registry copy, which must reach the other nodes first: two
    // copies accepted from here on include one made after the drain.
    cluster::wait_registry_copies(&c, &[1, 2, 3], 2).await;
    c.kill(control).unwrap();
    c.wait_agreed_control(&[drained, other], Duration::from_secs(10), |n, e| {
        n != control && e > epoch
    })
    .await
    .unwrap();
    let placement_of = |n: u64| {
        let (h, url, read) = (&h, format!("{base}/v1/nodes"), read.clone());
        async move {
            let (_, v) = h.get(&url, &read).await;
            v["nodes"]
                .as_array()?
                .iter()
                .find(|x| x["node_id"] == n)?
                .get("placement")
                .cloned()
                .filter(|p| !p.is_null())
        }
    };
    let p = cluster::eventually(Duration::from_secs(10), "the new Control's view", || {
        placement_of(drained)
    })
    .await;
    assert_eq!(p["drained"], true, "the new Control forgot the drain: {p}");
    // Nothing lands on the drained node.
    let admit = |name: String| {
        let (h, url, admin) = (&h, format!("{base}/v1/services"), admin.clone());
        async move {
            let body = service_spec(&name);
            let (s, p) = h.call(Method::POST, &url, Some(&admin), Some(body)).await;
            assert_eq!(s, 201, "{p}");
            p["node"].as_u64().unwrap()
        }
    };
    for i in 0..3 {
        assert_ne!(
            admit(format!("before-{i}")).await,
            drained,
            "placed on a drained node"
        );
    }
    let (s, v) = h
        .call(
            Method::POST,
            &format!("{base}/v1/nodes/{drained}/undrain"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut back = false;
    for i in 0..3 {
        back |= admit(format!("after-{i}")).await == drained;
    }
    assert!(back, "no placement returned to n{drained} after undrain");
    let p = placement_of(drained).await.unwrap();
    assert_eq!(p["drained"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_and_a_dead_node_within_two_seconds() {
    use smart_vod::browser::Browser;
    let Some(tools) = smart_testkit::require::require_ok("a browser", Browser::find()) else {
        return;
    };
    let (mut c, control, _) = start(3).await;
    let f = (1..=3).find(|&n| n != control).unwrap();
    let victim = (1..=3).find(|&n| n != control && n != f).unwrap();
    let h = Http::new();
    let (s, _) = h
        .call(
            Method::POST,
            &format!("{}/v1/services", c.http_url(f)),
            Some(c.admin_token()),
            Some(service_spec("video-ui")),
        )
        .await;
    assert_eq!(s, 201);
    let mut b = Browser::launch(&tools).await.unwrap();
    b.goto(&format!("{}/ui#token={}", c.http_url(f), c.read_token()))
        .await
        .unwrap();
    let shown = r#"(() => {
        const rows = [...document.querySelectorAll('#nodes tr')].map(r => [r.dataset.node, r.dataset.alive]);
        const el = document.getElementById('control');
        const svcs = [...document.querySelectorAll('#services tr')].map(r => r.dataset.service);
        return { rows, control: el.dataset.node, services: svcs, chart: !!document.querySelector('#chart .uplot') };
    })()"#;
    let until = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let v = b.eval(shown).await.unwrap();
        if v["rows"].as_array().is_some_and(|r| r.len() == 3)
            && v["services"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "video-ui"))
            && v["chart"] == true
        {
            break v;
        }
        assert!(
            Instant::now() < until,
            "dashboard never showed the cluster: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(page["control"], control.to_string());
    assert!(
        page["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r[1] == "true"),
        "{page}"
    );
    // Kill a node: its row turns dead within 2 s.
    let killed = Instant::now();
    c.kill(victim).unwrap();
    let dead = format!(
        "document.querySelector('#nodes tr[data-node=\"{victim}\"]').dataset.alive === 'false'"
    );
    loop {
        if b.eval(&dead).await.unwrap() == true {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "n{victim} still alive on the page after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delay = killed.elapsed();
    println!(
        "dashboard: n{victim} dead on the page {} ms after kill -9",
        delay.as_millis()
    );
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("dashboard.png");
    b.screenshot(&shot).await.unwrap();
    println!("screenshot: {}", shot.display());
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_node_id() {
    let mut s = cluster::spec(SMART, 1, cluster::QUIET_LOG);
    s.env = vec![("SMART_LOG_FORMAT".into(), "json".into())];
    let c = LocalCluster::start(s).unwrap();
    c.wait_agreed_control(&[1], Duration::from_secs(10), |_, _| true)
        .await
        .unwrap();
    let log = c.log_tail(1, 200);
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "membership started" && l["fields"]["node"] == "n1"),
        "{log}"
    );
    // Spans carry the node too (e.g. the Control's, or membership's).
    assert!(
        lines.iter().any(|l| l["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["node"] == "n1"))),
        "{log}"
    );
}

/// With `[http_tls]` the API answers only over HTTPS, to a client that checks the node's
/// certificate against the cluster CA: `smart status` with `--ca-file` (or a node config
/// naming `ca_file`) works, without it the certificate is refused (exit 3), and plain HTTP
/// gets nothing; the failed handshakes are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_over_tls_answers_smart_only_with_the_cluster_ca() {
    let mut s = cluster::spec(SMART, 2, cluster::QUIET_LOG);
    s.http_tls = true;
    let (c, _, _) = cluster::start(s).await;
    let base = c.http_url(1);
    assert!(base.starts_with("https://"), "{base}");
    let ca = c.api_ca_file();
    let status = |extra: &[&str], addr: &str| {
        let mut args = vec!["status", "--json"];
        args.extend_from_slice(extra);
        cluster::smart_cli(SMART, &args, addr, c.read_token())
    };
    let out = status(&["--ca-file", ca.to_str().unwrap()], &base);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["members"].as_array().unwrap().len(), 2, "{v}");
    // The node's own config names the CA: `--config` is enough.
    cluster::succeeded(
        "smart status --config",
        std::process::Command::new(SMART)
            .args(["status", "--config"])
            .arg(c.config_path(2))
            .env("SMART_TOKEN", c.read_token())
            .output()
            .unwrap(),
    );
    // Without the CA, the node's certificate is not trusted.
    let out = status(&[], &base);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // Plain HTTP to the TLS port: no answer.
    let out = status(&[], &base.replacen("https://", "http://", 1));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = status(&["--ca-file", ca.to_str().unwrap()], &base);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let failed = v["counters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p[0] == "api_http_tls_failed")
            .and_then(|p| p[1].as_u64())
            .unwrap_or(0);
        if failed >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not counted: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
