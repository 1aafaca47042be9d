//! `ApiClient` against stand-in nodes on loopback (real TCP transport, real handshake): the
//! version on connect, typed error answers, unknown event variants skipped and counted, and
//! fail-over to the next address when the connected node goes away, with the subscription
//! renewed there; a token the node does not accept, and a node whose key is not the one the
//! client's key book lists, end the connection.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::sync::Arc;
use std::time::Duration;

use smart_api::client::{ApiClient, Credentials};
use smart_api::{
    API_VERSION, ApiError, ClusterStatus, Event, EventNote, NodeId, NodeProtocol, NodeRequest,
    NodeResponse, Request, Response, VersionInfo,
};
use smart_proto::ClusterKey;
use smart_transport::handshake::{ClientAuth, ClientScope};
use smart_transport::noise::{KeyBook, NodeKey};
use smart_transport::tcp::TcpTransport;
use smart_transport::{Endpoint, Handler, RequestContext, Server, ServerHandle};

/// A node that answers `Version`, `Status` (with its id) and `Subscribe` (then pushes an
/// event of a variant no build knows, then a known one), and refuses the rest as not found.
struct FakeNode(u64);

impl Handler<NodeProtocol> for FakeNode {
    async fn handle(
        &self,
        ctx: RequestContext<NodeProtocol>,
        req: NodeRequest,
    ) -> Result<NodeResponse, smart_proto::error::RemoteError> {
        let NodeRequest::Api(req) = req else {
            return Err(smart_proto::error::RemoteError::Refused {
                reason: "clients only".into(),
            });
        };
        Ok(NodeResponse::Api(match req {
            Request::Version => Response::Version(VersionInfo {
                node_id: NodeId(self.0),
                version: "test".into(),
                api_version: API_VERSION,
                wire_version: 1,
                heartbeat_version: 1,
                http: None,
            }),
            Request::Status => Response::Status(ClusterStatus {
                node_id: NodeId(self.0),
                highest_epoch: 1,
                control: None,
                members: Vec::new(),
                counters: Vec::new(),
            }),
            Request::Subscribe => {
                let conn = ctx.conn.clone();
                let me = self.0;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    // A newer node's event: variant 200, fields unknown here.
                    let _ = conn.notify(EventNote::Unknown(vec![200, 3, 1, 2, 3]));
                    let _ = conn.notify(EventNote::Known(Event::MemberChanged {
                        node: NodeId(me),
                        alive: true,
                    }));
                });
                Response::Ok
            }
            _ => Response::Error(ApiError::NotFound {
                what: "anything".into(),
            }),
        }))
    }
}

fn key() -> ClusterKey {
    ClusterKey::from_bytes(b"a test cluster key, long enough").unwrap()
}

/// Node `id`'s key.
fn node_key(id: u64) -> NodeKey {
    NodeKey::from_private([id as u8; 32])
}

/// The key book of nodes 1 to 3.
fn book() -> KeyBook {
    let mut b = KeyBook::new();
    for id in 1..=3 {
        b.insert(smart_proto::NodeId(id), node_key(id).public());
    }
    b
}

/// The stand-in nodes' one token.
const TOKEN: &str = "the-admin-token";

fn creds() -> Credentials {
    Credentials::new(TOKEN, book())
}

async fn node(id: u64) -> ServerHandle {
    let ep = Endpoint::node(smart_proto::NodeId(id), 1, key())
        .with_keys(node_key(id), book())
        .with_client_auth(ClientAuth::new(|t| {
            (t == TOKEN).then_some(ClientScope::Admin)
        }));
    Server::bind(&TcpTransport, "127.0.0.1:0", ep, Arc::new(FakeNode(id)))
        .await
        .unwrap()
}

#[tokio::test]
async fn typed_errors_reach_the_caller_and_unknown_events_are_skipped() {
    let a = node(1).await;
    let c = ApiClient::connect(a.local_addr(), creds()).await.unwrap();
    assert_eq!(c.server_version().unwrap().api_version, API_VERSION);
    // The error is an answer, not a failure.
    match c.request(Request::Services).await.unwrap() {
        Response::Error(ApiError::NotFound { .. }) => {}
        other => panic!("{other:?}"),
    }
    c.subscribe().await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), c.next_event())
        .await
        .unwrap();
    assert_eq!(
        ev,
        Some(Event::MemberChanged {
            node: NodeId(1),
            alive: true
        })
    );
    assert_eq!(
        c.skipped_events(),
        1,
        "the unknown event was skipped and counted"
    );
    // The connection survived the unknown event.
    assert!(matches!(
        c.request(Request::Status).await.unwrap(),
        Response::Status(_)
    ));
}

#[tokio::test]
async fn the_client_fails_over_to_the_next_node_and_renews_its_subscription() {
    let (a, b) = (node(1).await, node(2).await);
    let addrs = [a.local_addr().to_string(), b.local_addr().to_string()];
    let c = ApiClient::connect_any(&[&addrs[0], &addrs[1]], creds())
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(2));
    c.subscribe().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), c.next_event()).await;
    assert!(matches!(
        first,
        Ok(Some(Event::MemberChanged {
            node: NodeId(1),
            ..
        }))
    ));
    a.shutdown().await;
    // A read-only request is sent again to the next node.
    let st = c.status().await.unwrap();
    assert_eq!(st.node_id, NodeId(2));
    assert_eq!(c.connected_to(), addrs[1]);
    // The subscription followed: node 2's event arrives.
    let next = tokio::time::timeout(Duration::from_secs(5), c.next_event()).await;
    assert!(
        matches!(
            next,
            Ok(Some(Event::MemberChanged {
                node: NodeId(2),
                ..
            }))
        ),
        "{next:?}"
    );
}

#[tokio::test]
async fn a_wrong_token_or_a_node_with_another_key_ends_the_connection() {
    let a = node(1).await;
    let wrong_token = ApiClient::connect(a.local_addr(), Credentials::new("guess", book())).await;
    assert!(
        wrong_token
            .expect_err("a wrong token connected")
            .to_string()
            .contains("token"),
        "a wrong token is named as the cause"
    );
    // A client whose key book lists another key for node 1 does not believe it.
    let mut other = KeyBook::new();
    other.insert(smart_proto::NodeId(1), node_key(9).public());
    let impostor = ApiClient::connect(a.local_addr(), Credentials::new(TOKEN, other)).await;
    assert!(
        impostor.is_err(),
        "a node not in the client's key book was believed"
    );
    assert!(ApiClient::connect(a.local_addr(), creds()).await.is_ok());
}
