//! The in-memory implementation of the [`Transport`] seam, for in-process cluster tests.
//!
//! A [`MemNetwork`] is a switchboard: each node gets a [`MemTransport`] with its name, binds
//! listeners on string addresses, and connects to them. Every frame still goes through the
//! real codec (the sender builds the same bytes as for TCP, the receiver checks the length
//! prefix against its limit before copying, exactly as over a socket), so size limits,
//! handshakes and tags behave as in production. On top, the network can:
//!
//! - **cut** the link between two nodes: live connections between them fail at once (reads
//!   return a reset error, writes a broken pipe) and new connections are refused until
//!   **heal**; healing does not revive old connections, peers reconnect as over TCP;
//! - **drop** frames on a directed link with a probability, from a seeded generator (a
//!   dropped frame is lost silently, so the request it carried times out).
//!
//! Senders wait when the receiver's queue is full (backpressure, like a TCP window).
//!
//! ## Layout
//! - [`MemNetwork`]: the switchboard and its fault controls (`cut`, `heal`, `isolate`,
//!   `partition`, `heal_all`, `set_drop_rate`).
//! - [`MemTransport`]: one node's [`Transport`] on it; private sink/source/listener types.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, watch};

use super::{BoxFuture, FrameSink, FrameSource, Listener, RawConn, Transport};
use crate::frame::{FrameError, LEN_PREFIX, check_len};

/// Frames queued per direction of an in-memory connection before the sender waits.
const CONN_QUEUE: usize = 64;

#[derive(Debug, Default, Clone, Copy)]
struct Link {
    cut: bool,
    drop_rate: f64,
}

struct ListenerEntry {
    owner: String,
    token: u64,
    accept: mpsc::Sender<RawConn>,
}

struct ConnEntry {
    a: String,
    b: String,
    broken: Weak<AtomicBool>,
}

struct NetState {
    listeners: HashMap<String, ListenerEntry>,
    /// Directed links `(from, to)`; absent means healthy.
    links: HashMap<(String, String), Link>,
    conns: Vec<ConnEntry>,
    rng: ChaCha8Rng,
    next_token: u64,
}

/// An in-memory network of named nodes. Create one per test with [`MemNetwork::new`].
pub struct MemNetwork {
    state: Mutex<NetState>,
    /// Bumped on every cut so that blocked readers notice at once.
    changes: watch::Sender<u64>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemNetwork")
    }
}

impl MemNetwork {
    /// A network whose frame drops are drawn from a generator seeded with `seed`.
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(NetState {
                listeners: HashMap::new(),
                links: HashMap::new(),
                conns: Vec::new(),
                rng: ChaCha8Rng::seed_from_u64(seed),
                next_token: 0,
            }),
            changes: watch::channel(0).0,
            dropped: AtomicU64::new(0),
        })
    }

    /// The transport of node `name` on this network.
    pub fn transport(self: &Arc<Self>, name: &str) -> MemTransport {
        MemTransport {
            net: self.clone(),
            name: name.to_owned(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        // A panic while holding this lock can only come from a bug in this file; the state
        // stays consistent (every update is a single assignment), so keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts the link between `a` and `b` in both directions and breaks their connections.
    pub fn cut(&self, a: &str, b: &str) {
        let mut st = self.lock();
        for (x, y) in [(a, b), (b, a)] {
            st.links.entry((x.into(), y.into())).or_default().cut = true;
        }
        st.conns.retain(|c| {
            let Some(flag) = c.broken.upgrade() else {
                return false;
            };
            if (c.a == a && c.b == b) || (c.a == b && c.b == a) {
                flag.store(true, Ordering::SeqCst);
                return false;
            }
            true
        });
        drop(st);
        self.changes.send_modify(|g| *g += 1);
    }

    /// Restores the link between `a` and `b` (drop rates are kept).
    pub fn heal(&self, a: &str, b: &str) {
        let mut st = self.lock();
        for (x, y) in [(a, b), (b, a)] {
            st.links.entry((x.into(), y.into())).or_default().cut = false;
        }
    }

    /// Cuts `node` from every other node that has a transport name in `others`.
    pub fn isolate(&self, node: &str, others: &[&str]) {
        for o in others {
            if *o != node {
                self.cut(node, o);
            }
        }
    }

    /// Splits the network: every node of a group is cut from every node of the other
    /// groups (links inside a group are left as they are).
    pub fn partition(&self, groups: &[&[&str]]) {
        for (i, g) in groups.iter().enumerate() {
            for h in &groups[i + 1..] {
                for a in g.iter() {
                    for b in h.iter() {
                        self.cut(a, b);
                    }
                }
            }
        }
    }

    /// Heals every link and clears every drop rate.
    pub fn heal_all(&self) {
        self.lock().links.clear();
    }

    /// Drops each frame sent from `from` to `to` with probability `rate` (0 to 1).
    pub fn set_drop_rate(&self, from: &str, to: &str, rate: f64) {
        self.lock()
            .links
            .entry((from.into(), to.into()))
            .or_default()
            .drop_rate = rate.clamp(0.0, 1.0);
    }

    /// Frames dropped by [`MemNetwork::set_drop_rate`] so far.
    pub fn frames_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn link(st: &NetState, from: &str, to: &str) -> Link {
        st.links
            .get(&(from.to_owned(), to.to_owned()))
            .copied()
            .unwrap_or_default()
    }
}

/// One node's view of a [`MemNetwork`].
#[derive(Debug, Clone)]
pub struct MemTransport {
    net: Arc<MemNetwork>,
    name: String,
}

impl MemTransport {
    /// This node's name on the network.
    pub fn name(&self) -> &str {
        &self.name
    }
}

struct MemSink {
    net: Arc<MemNetwork>,
    from: String,
    to: String,
    tx: mpsc::Sender<Vec<u8>>,
    broken: Arc<AtomicBool>,
}

impl FrameSink for MemSink {
    fn send(&mut self, frame: Vec<u8>) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            if self.broken.load(Ordering::SeqCst) {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let drop_it = {
                let mut st = self.net.lock();
                let link = MemNetwork::link(&st, &self.from, &self.to);
                link.drop_rate > 0.0 && st.rng.random::<f64>() < link.drop_rate
            };
            if drop_it {
                self.net.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            self.tx
                .send(frame)
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
        })
    }
}

struct MemSource {
    // Keeps the network (and its change channel) alive while the connection is.
    net: Arc<MemNetwork>,
    rx: mpsc::Receiver<Vec<u8>>,
    changes: watch::Receiver<u64>,
    broken: Arc<AtomicBool>,
}

impl FrameSource for MemSource {
    fn recv(&mut self, max: u32) -> BoxFuture<'_, Result<Vec<u8>, FrameError>> {
        Box::pin(async move {
            let _ = &self.net;
            loop {
                if self.broken.load(Ordering::SeqCst) {
                    return Err(FrameError::Io(io::ErrorKind::ConnectionReset.into()));
                }
                tokio::select! {
                    biased;
                    changed = self.changes.changed() => {
                        if changed.is_err() {
                            return Err(FrameError::Io(io::ErrorKind::ConnectionReset.into()));
                        }
                    }
                    frame = self.rx.recv() => {
                        let Some(mut frame) = frame else {
                            return Err(FrameError::Closed);
                        };
                        let Some(prefix) = frame.first_chunk::<LEN_PREFIX>() else {
                            return Err(FrameError::Truncated("length prefix"));
                        };
                        let len = check_len(*prefix, max)?;
                        let have = frame.len() - LEN_PREFIX;
                        if have < len {
                            return Err(FrameError::Truncated("payload"));
                        }
                        if have > len {
                            return Err(FrameError::TrailingBytes(have - len));
                        }
                        frame.drain(..LEN_PREFIX);
                        return Ok(frame);
                    }
                }
            }
        })
    }
}

struct MemListener {
    net: Arc<MemNetwork>,
    addr: String,
    token: u64,
    rx: mpsc::Receiver<RawConn>,
}

impl Listener for MemListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<RawConn>> {
        Box::pin(async move {
            self.rx
                .recv()
                .await
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
        })
    }

    fn local_addr(&self) -> String {
        self.addr.clone()
    }
}

impl Drop for MemListener {
    fn drop(&mut self) {
        let mut st = self.net.lock();
        if st.listeners.get(&self.addr).map(|l| l.token) == Some(self.token) {
            st.listeners.remove(&self.addr);
        }
    }
}

fn refused(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, why.to_owned())
}

impl Transport for MemTransport {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<RawConn>> {
        Box::pin(async move {
            let broken = Arc::new(AtomicBool::new(false));
            let (owner, accept) = {
                let mut st = self.net.lock();
                let Some(l) = st.listeners.get(addr) else {
                    return Err(refused("no listener at this address"));
                };
                let (owner, accept) = (l.owner.clone(), l.accept.clone());
                if MemNetwork::link(&st, &self.name, &owner).cut {
                    return Err(refused("link cut"));
                }
                st.conns.retain(|c| c.broken.strong_count() > 0);
                st.conns.push(ConnEntry {
                    a: self.name.clone(),
                    b: owner.clone(),
                    broken: Arc::downgrade(&broken),
                });
                (owner, accept)
            };
            let (to_server, server_rx) = mpsc::channel(CONN_QUEUE);
            let (to_client, client_rx) = mpsc::channel(CONN_QUEUE);
            let server_side = RawConn {
                sink: Box::new(MemSink {
                    net: self.net.clone(),
                    from: owner.clone(),
                    to: self.name.clone(),
                    tx: to_client,
                    broken: broken.clone(),
                }),
                source: Box::new(MemSource {
                    net: self.net.clone(),
                    rx: server_rx,
                    changes: self.net.changes.subscribe(),
                    broken: broken.clone(),
                }),
                peer_addr: self.name.clone(),
                spoke: false,
            };
            accept
                .send(server_side)
                .await
                .map_err(|_| refused("listener closed"))?;
            Ok(RawConn {
                sink: Box::new(MemSink {
                    net: self.net.clone(),
                    from: self.name.clone(),
                    to: owner.clone(),
                    tx: to_server,
                    broken: broken.clone(),
                }),
                source: Box::new(MemSource {
                    net: self.net.clone(),
                    rx: client_rx,
                    changes: self.net.changes.subscribe(),
                    broken,
                }),
                peer_addr: addr.to_owned(),
                spoke: false,
            })
        })
    }

    fn bind<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let mut st = self.net.lock();
            if st
                .listeners
                .get(addr)
                .is_some_and(|l| !l.accept.is_closed())
            {
                return Err(io::ErrorKind::AddrInUse.into());
            }
            let (accept, rx) = mpsc::channel(CONN_QUEUE);
            st.next_token += 1;
            let token = st.next_token;
            st.listeners.insert(
                addr.to_owned(),
                ListenerEntry {
                    owner: self.name.clone(),
                    token,
                    accept,
                },
            );
            Ok(Box::new(MemListener {
                net: self.net.clone(),
                addr: addr.to_owned(),
                token,
                rx,
            }) as Box<dyn Listener>)
        })
    }
}
