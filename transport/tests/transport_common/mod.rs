//! Shared fixtures of the transport tests: a small test protocol, its handler, and the two
//! transports (TCP on 127.0.0.1 port 0, in-memory) behind one `Fixture` trait.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use smart_proto::error::RemoteError;
use smart_proto::{ClusterKey, NodeId};
use smart_transport::mem::MemNetwork;
use smart_transport::tcp::TcpTransport;
use smart_transport::{
    Connection, Endpoint, Handler, Identity, Protocol, RequestContext, Transport,
};

/// The test protocol.
pub(crate) struct Test;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Req {
    Echo(String),
    /// Answers after this many milliseconds (`u64::MAX`: never).
    Sleep(u64),
    /// Answers with the caller's identity and the epoch on its envelope.
    WhoAmI,
    /// Registers the connection for pushes.
    Subscribe,
    /// Pushes this text to every subscriber.
    Push(String),
    /// Answers with this many bytes.
    Big(usize),
    /// Carries a blob (for oversized requests).
    Blob(Vec<u8>),
    Fail,
    /// The handler panics.
    Panic,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Resp {
    Text(String),
    Bytes(Vec<u8>),
}

impl Protocol for Test {
    type Request = Req;
    type Response = Resp;
    type Notify = String;
}

#[derive(Default)]
pub(crate) struct TestHandler {
    pub subscribers: Mutex<Vec<Connection<Test>>>,
    pub notes: Mutex<Vec<(Identity, String)>>,
}

impl Handler<Test> for TestHandler {
    async fn handle(&self, ctx: RequestContext<Test>, req: Req) -> Result<Resp, RemoteError> {
        match req {
            Req::Echo(s) => Ok(Resp::Text(s)),
            Req::Sleep(ms) => {
                if ms == u64::MAX {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Resp::Text("slept".into()))
            }
            Req::WhoAmI => Ok(Resp::Text(format!(
                "{} epoch {}",
                ctx.conn.peer(),
                ctx.epoch
            ))),
            Req::Subscribe => {
                self.subscribers.lock().unwrap().push(ctx.conn.clone());
                Ok(Resp::Text("subscribed".into()))
            }
            Req::Push(s) => {
                let subs = self.subscribers.lock().unwrap().clone();
                let mut n = 0;
                for c in subs {
                    if c.notify(s.clone()).is_ok() {
                        n += 1;
                    }
                }
                Ok(Resp::Text(format!("pushed to {n}")))
            }
            Req::Big(n) => Ok(Resp::Bytes(vec![7; n])),
            Req::Blob(b) => Ok(Resp::Text(format!("{} bytes", b.len()))),
            Req::Fail => Err(RemoteError::Refused {
                reason: "boom".into(),
            }),
            Req::Panic => panic!("handler panic requested by the test"),
        }
    }

    async fn notified(&self, ctx: RequestContext<Test>, note: String) {
        self.notes.lock().unwrap().push((ctx.conn.peer(), note));
    }
}

pub(crate) fn key() -> ClusterKey {
    ClusterKey::from_bytes(b"test-cluster-key-0123456789").unwrap()
}

pub(crate) fn other_key() -> ClusterKey {
    ClusterKey::from_bytes(b"some-other-cluster-key-9876").unwrap()
}

pub(crate) fn server_endpoint() -> Endpoint {
    Endpoint::node(NodeId(1), 7, key())
}

pub(crate) fn node_endpoint(id: u64) -> Endpoint {
    Endpoint::node(NodeId(id), 1, key())
}

/// One transport implementation under test.
pub(crate) trait Fixture: Send + Sync {
    /// The transport used by the node called `who`.
    fn transport(&self, who: &str) -> Arc<dyn Transport>;
    /// The address the server binds first.
    fn listen_addr(&self) -> String;
    /// An address where nobody listens.
    fn dead_addr(&self) -> String;
    /// The in-memory network, if this is the in-memory fixture.
    fn mem(&self) -> Option<&Arc<MemNetwork>> {
        None
    }
}

pub(crate) struct TcpFix;

impl Fixture for TcpFix {
    fn transport(&self, _who: &str) -> Arc<dyn Transport> {
        Arc::new(TcpTransport)
    }
    fn listen_addr(&self) -> String {
        "127.0.0.1:0".into()
    }
    fn dead_addr(&self) -> String {
        // Bound then closed: nothing listens there right after.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }
}

pub(crate) struct MemFix(pub Arc<MemNetwork>);

impl MemFix {
    pub(crate) fn new() -> Self {
        Self(MemNetwork::new(42))
    }
}

impl Fixture for MemFix {
    fn transport(&self, who: &str) -> Arc<dyn Transport> {
        Arc::new(self.0.transport(who))
    }
    fn listen_addr(&self) -> String {
        "srv".into()
    }
    fn dead_addr(&self) -> String {
        "nobody-here".into()
    }
    fn mem(&self) -> Option<&Arc<MemNetwork>> {
        Some(&self.0)
    }
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub(crate) async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) const T: Duration = Duration::from_secs(2);
