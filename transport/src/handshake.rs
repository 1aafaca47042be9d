//! The Noise handshake run on every new connection before any data frame.
//!
//! `Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s` (see [`super::noise`] for the keys and why Noise):
//! both sides send and prove their static X25519 key; the pre-shared key, derived from the
//! cluster key, is mixed in at the third message, so nobody without the cluster key
//! completes a handshake; the prologue binds the protocol name and version. Each side sends
//! the [`Identity`] it claims inside its (encrypted) handshake payload, and the other side
//! checks it against its [`KeyBook`](super::noise::KeyBook): a node id is accepted only with the static key listed
//! for it (a node presenting another node's id is refused with [`Refusal::WrongKey`] and
//! counted in `handshakes_wrong_identity`).
//!
//! Message-API clients do not hold the cluster key: they open with `ClientHello` and run
//! `Noise_XX_25519_ChaChaPoly_BLAKE2s` (no pre-shared key, its own prologue label), with a
//! throw-away static key; message 3 carries their [`ClientCredential`] (an API token, at
//! most [`MAX_TOKEN_LEN`] bytes), and the acceptor admits them as [`Identity::Client`] with
//! the scope its [`ClientAuth`] gives the token, or refuses with `BadToken`. The client
//! believes only an acceptor that proves the key its key book lists for the node id it
//! claims. A client that comes by `Hello` with the cluster key is [`Identity::Client`]
//! without a scope: it can never claim one, and a SMART node refuses it.
//!
//! # Wire format
//!
//! Each message is one frame whose payload is the postcard encoding of [`HandshakeMsg`],
//! at most [`HANDSHAKE_MAX_FRAME`] bytes; anything larger, malformed, or unexpected ends the
//! handshake. The initiator is the side that opened the connection.
//!
//! ```text
//! initiator -> acceptor   0 Hello   { magic: "SMRT" (4 raw bytes), version: u8 = 5,
//!                                     noise: bytes }    Noise message 1: e
//!                   or    3 ClientHello { magic, version, noise }  (a token client)
//! acceptor  -> initiator  1 Noise   { noise: bytes }    Noise message 2: e, ee, s, es;
//!                                                       payload = postcard(Identity)
//!                   or    2 Refused { reason }          (bad version), then close
//! initiator -> acceptor   1 Noise   { noise: bytes }    Noise message 3: s, se, psk;
//!                                                       payload = postcard(Identity)
//!                                                       (a token client: s, se;
//!                                                       payload = postcard(ClientCredential))
//! acceptor  -> initiator  1 Noise   { noise: bytes }    first transport message (sealed):
//!                                                       postcard(Verdict)
//!                   or    2 Refused { reason: BadProof } (message 3 did not decrypt: a
//!                                                       wrong cluster key), then close
//!
//! Identity = 0 Node { id: u64 varint, incarnation: u64 varint }
//!          | 1 Client { id: u64 varint, scope: Option<0 Read | 1 Admin> }
//! ClientCredential = { id: u64 varint, token: string }
//! Verdict  = 0 Welcome | 1 Refused(Refusal)
//! Refusal  = 0 BadVersion | 1 BadProof | 2 NotAllowed | 3 WrongKey | 4 BadToken
//! prologue = "smart/noise/v2" || "SMRT" || version  (a token client: "smart/noise-client/v1" || ...)
//! ```
//!
//! The first bytes of `Hello` (`00 'S' 'M' 'R' 'T' version`) are frozen across versions so
//! that a peer of another version is told `BadVersion` rather than failing to decode.
//!
//! The acceptor's static key is proven to the initiator by message 2 (before the initiator
//! reveals its own identity); the acceptor's knowledge of the cluster key is proven by the
//! sealed verdict. A wrong cluster key is reported on both sides as
//! [`HandshakeError::BadKey`] and counted in `handshakes_bad_key`.
//!
//! What this does not give: protection against an attacker who simply resets connections,
//! nor against a member whose private key and the cluster key were both stolen.
//!
//! ## Layout
//! - [`Identity`], [`HandshakeMsg`], [`Verdict`], [`Refusal`]: what is exchanged.
//! - [`initiate`] / [`accept`]: the two sides, with the timeout and counters.
//! - [`Session`], [`HandshakeError`]: the outcome.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::noise::{self, Cipher, KEY_LEN};
use super::{Counters, Endpoint, RawConn};
use crate::frame::{FrameError, HANDSHAKE_MAX_FRAME, PROTOCOL_VERSION, decode_value, encode_value};
use smart_proto::{Incarnation, NodeId};

/// The first bytes of every SMART connection after the length prefix and variant byte.
pub const MAGIC: [u8; 4] = *b"SMRT";

const PROLOGUE_LABEL: &[u8] = b"smart/noise/v2";
const CLIENT_PROLOGUE_LABEL: &[u8] = b"smart/noise-client/v1";

/// Who is at the other end of a connection, proven by the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Identity {
    /// A cluster node.
    Node {
        /// Its node id.
        id: NodeId,
        /// Its boot counter.
        incarnation: Incarnation,
    },
    /// A message-API client (front-end, `smart status`): not a node.
    Client {
        /// A random id chosen by the client, for logs and for the envelope's `from`.
        id: u64,
        /// What its token allows, when it presented one (set by the acceptor, never taken
        /// from the client's word); `None` for a client admitted by the cluster key.
        scope: Option<ClientScope>,
    },
}

/// What a client's token allows, on the message API and on the HTTP API alike (the scope
/// of a token in a node's tokens file, written `read` or `admin`). Ordered: `Admin` allows
/// what `Read` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientScope {
    /// Requests that only read (every `GET` route).
    Read,
    /// Every request.
    Admin,
}

impl std::fmt::Display for ClientScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientScope::Read => "read",
            ClientScope::Admin => "admin",
        })
    }
}

/// Decides whether a client's token admits it, and with what scope (the node's tokens
/// file).
#[derive(Clone)]
pub struct ClientAuth(Arc<TokenCheck>);

/// The function behind a [`ClientAuth`].
type TokenCheck = dyn Fn(&str) -> Option<ClientScope> + Send + Sync;

impl ClientAuth {
    /// Judges tokens with `check`.
    pub fn new(check: impl Fn(&str) -> Option<ClientScope> + Send + Sync + 'static) -> Self {
        Self(Arc::new(check))
    }

    /// The scope `token` grants, if any.
    pub fn scope(&self, token: &str) -> Option<ClientScope> {
        (self.0)(token)
    }
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientAuth")
    }
}

/// Longest token a client may present.
pub const MAX_TOKEN_LEN: usize = 256;

/// A token client's message 3 payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCredential {
    /// Its random id (for logs and the envelope's `from`).
    pub id: u64,
    /// Its API token.
    pub token: String,
}

impl Identity {
    /// What this identity puts in an envelope's `from` and `incarnation`.
    pub fn envelope_sender(&self) -> (NodeId, Incarnation) {
        match *self {
            Identity::Node { id, incarnation } => (id, incarnation),
            Identity::Client { id, .. } => (NodeId(id), 0),
        }
    }

    /// The node id, if this is a node.
    pub fn node_id(&self) -> Option<NodeId> {
        match *self {
            Identity::Node { id, .. } => Some(id),
            Identity::Client { .. } => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node { id, incarnation } => write!(f, "{id}/{incarnation}"),
            Identity::Client { id, .. } => write!(f, "client-{id:016x}"),
        }
    }
}

/// Why an acceptor refused a handshake (sent to the initiator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The initiator's protocol version is not spoken here.
    #[error("unsupported protocol version")]
    BadVersion,
    /// The initiator's handshake did not authenticate (different cluster key).
    #[error("bad proof (wrong cluster key?)")]
    BadProof,
    /// The acceptor does not take connections from this identity.
    #[error("identity not allowed here")]
    NotAllowed,
    /// The static key presented is not the one listed for the node id claimed.
    #[error("the key presented is not this node id's key")]
    WrongKey,
    /// The client's token is not one this node accepts.
    #[error("unknown or revoked API token")]
    BadToken,
}

/// A handshake message (see the module docs for the encoding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeMsg {
    /// Initiator's opening: magic, version and Noise message 1.
    Hello {
        /// [`MAGIC`].
        magic: [u8; 4],
        /// [`PROTOCOL_VERSION`].
        version: u8,
        /// Noise message 1.
        noise: Vec<u8>,
    },
    /// Noise messages 2 and 3, and the sealed verdict.
    Noise {
        /// The Noise message.
        noise: Vec<u8>,
    },
    /// A refusal sent before (or instead of) the sealed verdict; the sender closes next.
    Refused {
        /// Why.
        reason: Refusal,
    },
    /// A token client's opening: as [`HandshakeMsg::Hello`], for the handshake without the
    /// cluster key ([`noise::NOISE_PARAMS_CLIENT`]).
    ClientHello {
        /// [`MAGIC`].
        magic: [u8; 4],
        /// [`PROTOCOL_VERSION`].
        version: u8,
        /// Noise message 1.
        noise: Vec<u8>,
    },
}

/// The acceptor's decision, sealed as the first transport message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Data frames follow.
    Welcome,
    /// Refused; the acceptor closes next.
    Refused(Refusal),
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer did not complete the handshake in time.
    #[error("handshake timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The peer is not speaking the SMART protocol.
    #[error("peer is not a SMART endpoint (bad magic)")]
    BadMagic,
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {got}, this node speaks {PROTOCOL_VERSION}")]
    BadVersion {
        /// The peer's version (0 when only a refusal told us).
        got: u8,
    },
    /// The handshake did not authenticate: the two sides hold different cluster keys.
    #[error("peer failed to prove the cluster key: wrong cluster key on one side")]
    BadKey,
    /// The peer claims a node id whose listed key is not the one it proved.
    #[error("peer claims to be {claimed} but does not hold that node's key")]
    WrongKey {
        /// The identity claimed.
        claimed: Identity,
    },
    /// The acceptor refused us.
    #[error("peer refused the handshake: {0}")]
    Refused(Refusal),
    /// We do not take connections from this identity.
    #[error("identity {0} not allowed")]
    NotAllowed(Identity),
    /// The peer is not the node we meant to reach.
    #[error("connected to {got} but expected node {expected}")]
    WrongPeer {
        /// The node we dialled.
        expected: NodeId,
        /// Who answered.
        got: Identity,
    },
    /// A message arrived out of order or did not decrypt.
    #[error("unexpected handshake message, expected {0}")]
    Unexpected(&'static str),
    /// The frame itself was refused (oversized, malformed, closed, I/O).
    #[error("handshake frame: {0}")]
    Frame(#[from] FrameError),
}

/// The result of a successful handshake.
#[derive(Debug, Clone)]
pub struct Session {
    /// The authenticated peer.
    pub peer: Identity,
    /// The static key it proved.
    pub peer_key: [u8; KEY_LEN],
    /// This end's cipher (shared by the connection's writer and reader).
    pub cipher: Arc<Cipher>,
}

fn prologue() -> Vec<u8> {
    let mut p = PROLOGUE_LABEL.to_vec();
    p.extend_from_slice(&MAGIC);
    p.push(PROTOCOL_VERSION);
    p
}

/// The prologue of a token client's handshake (another label: a transcript of one kind
/// never passes for the other).
fn client_prologue() -> Vec<u8> {
    let mut p = CLIENT_PROLOGUE_LABEL.to_vec();
    p.extend_from_slice(&MAGIC);
    p.push(PROTOCOL_VERSION);
    p
}

async fn send(conn: &mut RawConn, msg: &HandshakeMsg) -> Result<(), HandshakeError> {
    let frame = encode_value(msg, HANDSHAKE_MAX_FRAME)?;
    conn.sink.send(frame).await.map_err(FrameError::Io)?;
    Ok(())
}

/// Tells the initiator why it is refused (best effort: it may be gone already).
async fn tell_refused(conn: &mut RawConn, reason: Refusal) {
    let _ = send(conn, &HandshakeMsg::Refused { reason }).await;
}

async fn recv(conn: &mut RawConn) -> Result<HandshakeMsg, HandshakeError> {
    let payload = conn.source.recv(HANDSHAKE_MAX_FRAME).await?;
    Ok(decode_value(&payload)?)
}

fn count(counters: &Counters, r: &Result<Session, HandshakeError>) {
    match r {
        Ok(_) => Counters::inc(&counters.handshakes_ok),
        Err(e) => {
            Counters::inc(&counters.handshakes_failed);
            match e {
                HandshakeError::BadKey => Counters::inc(&counters.handshakes_bad_key),
                HandshakeError::WrongKey { .. } | HandshakeError::Refused(Refusal::WrongKey) => {
                    Counters::inc(&counters.handshakes_wrong_identity)
                }
                _ => {}
            }
        }
    }
}

async fn with_timeout(
    ep: &Endpoint,
    fut: impl Future<Output = Result<Session, HandshakeError>>,
) -> Result<Session, HandshakeError> {
    let t = ep.limits.handshake_timeout;
    let r = match tokio::time::timeout(t, fut).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeError::Timeout(t)),
    };
    count(&ep.counters, &r);
    r
}

fn remote_key(hs: &snow::HandshakeState) -> Result<[u8; KEY_LEN], HandshakeError> {
    hs.get_remote_static()
        .and_then(|k| <[u8; KEY_LEN]>::try_from(k).ok())
        .ok_or(HandshakeError::Unexpected("a static key"))
}

/// Whether `peer`, proven with `key`, is who it says according to `ep`'s key book.
fn genuine(ep: &Endpoint, peer: &Identity, key: &[u8; KEY_LEN]) -> bool {
    match peer {
        Identity::Node { id, .. } => ep.book.admits(*id, key),
        Identity::Client { .. } => true,
    }
}

/// Whether an acceptor that claims `peer` (a token client's view) is genuine: a node of
/// the client's key book when it has one.
fn genuine_node(ep: &Endpoint, peer: &Identity, key: &[u8; KEY_LEN]) -> bool {
    match peer {
        Identity::Node { .. } => genuine(ep, peer, key),
        Identity::Client { .. } => false,
    }
}

/// Runs the initiator's side on a fresh connection. With `expect`, the peer must be that
/// node. Counts the outcome in `ep.counters`.
pub async fn initiate(
    conn: &mut RawConn,
    ep: &Endpoint,
    expect: Option<NodeId>,
) -> Result<Session, HandshakeError> {
    with_timeout(ep, async {
        let me = ep.identity;
        let psk = noise::psk(&ep.key);
        let token_client = ep.client_token.as_ref().filter(|_| me.node_id().is_none());
        let prologue = if token_client.is_some() {
            client_prologue()
        } else {
            prologue()
        };
        let mut hs = match token_client {
            Some(_) => noise::client_builder(&ep.node_key, &prologue),
            None => noise::builder(&ep.node_key, &psk, &prologue),
        }
        .and_then(|b| b.build_initiator())
        .map_err(|_| HandshakeError::Unexpected("a usable local key"))?;
        let mut buf = vec![0u8; HANDSHAKE_MAX_FRAME as usize];
        let mut pl = vec![0u8; HANDSHAKE_MAX_FRAME as usize];
        let n = hs
            .write_message(&[], &mut buf)
            .map_err(|_| HandshakeError::Unexpected("Noise message 1"))?;
        let noise1 = buf[..n].to_vec();
        let hello = match token_client {
            Some(_) => HandshakeMsg::ClientHello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                noise: noise1,
            },
            None => HandshakeMsg::Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                noise: noise1,
            },
        };
        send(conn, &hello).await?;
        let peer: Identity = match recv(conn).await? {
            HandshakeMsg::Noise { noise } => {
                let n = hs
                    .read_message(&noise, &mut pl)
                    .map_err(|_| HandshakeError::Unexpected("Noise message 2"))?;
                decode_value(&pl[..n])?
            }
            HandshakeMsg::Refused {
                reason: Refusal::BadVersion,
            } => return Err(HandshakeError::BadVersion { got: 0 }),
            HandshakeMsg::Refused { reason } => return Err(HandshakeError::Refused(reason)),
            HandshakeMsg::Hello { .. } | HandshakeMsg::ClientHello { .. } => {
                return Err(HandshakeError::Unexpected("Noise message 2"));
            }
        };
        let peer_key = remote_key(&hs)?;
        // A token client knows the nodes by their keys, not by a shared secret: the node
        // that answers must be one its key book lists, with that node's key.
        let checked = if token_client.is_some() {
            genuine_node(ep, &peer, &peer_key)
        } else {
            genuine(ep, &peer, &peer_key)
        };
        if !checked {
            return Err(HandshakeError::WrongKey { claimed: peer });
        }
        if let Some(expected) = expect
            && peer.node_id() != Some(expected)
        {
            return Err(HandshakeError::WrongPeer {
                expected,
                got: peer,
            });
        }
        let me_bytes = match (token_client, me) {
            (Some(token), Identity::Client { id, .. }) => {
                postcard::to_allocvec(&ClientCredential {
                    id,
                    token: token.clone(),
                })
            }
            _ => postcard::to_allocvec(&me),
        }
        .expect("an identity serialises");
        let n = hs
            .write_message(&me_bytes, &mut buf)
            .map_err(|_| HandshakeError::Unexpected("Noise message 3"))?;
        send(
            conn,
            &HandshakeMsg::Noise {
                noise: buf[..n].to_vec(),
            },
        )
        .await?;
        let cipher = Cipher::new(
            hs.into_stateless_transport_mode()
                .map_err(|_| HandshakeError::Unexpected("a finished handshake"))?,
        );
        match recv(conn).await? {
            HandshakeMsg::Noise { noise } => {
                let plain = cipher.open(&noise).map_err(|_| HandshakeError::BadKey)?;
                match decode_value::<Verdict>(&plain)? {
                    Verdict::Welcome => Ok(Session {
                        peer,
                        peer_key,
                        cipher: Arc::new(cipher),
                    }),
                    Verdict::Refused(Refusal::BadProof) => Err(HandshakeError::BadKey),
                    Verdict::Refused(r) => Err(HandshakeError::Refused(r)),
                }
            }
            HandshakeMsg::Refused {
                reason: Refusal::BadProof,
            } => Err(HandshakeError::BadKey),
            HandshakeMsg::Refused { reason } => Err(HandshakeError::Refused(reason)),
            HandshakeMsg::Hello { .. } | HandshakeMsg::ClientHello { .. } => {
                Err(HandshakeError::Unexpected("the verdict"))
            }
        }
    })
    .await
}

/// Runs the acceptor's side on a fresh inbound connection. `allow` decides which
/// identities may connect (e.g. refuse clients on a node-only port). Counts the outcome.
pub async fn accept(
    conn: &mut RawConn,
    ep: &Endpoint,
    allow: impl Fn(&Identity) -> bool,
) -> Result<Session, HandshakeError> {
    with_timeout(ep, async {
        let me = ep.identity;
        let psk = noise::psk(&ep.key);
        let prologue = prologue();
        let mut buf = vec![0u8; HANDSHAKE_MAX_FRAME as usize];
        let mut pl = vec![0u8; HANDSHAKE_MAX_FRAME as usize];
        let (magic, version, noise, token_client) = match recv(conn).await? {
            HandshakeMsg::Hello {
                magic,
                version,
                noise,
            } => (magic, version, noise, false),
            HandshakeMsg::ClientHello {
                magic,
                version,
                noise,
            } => (magic, version, noise, true),
            _ => return Err(HandshakeError::Unexpected("Hello")),
        };
        if magic != MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        if version != PROTOCOL_VERSION {
            tell_refused(conn, Refusal::BadVersion).await;
            return Err(HandshakeError::BadVersion { got: version });
        }
        let auth = match (token_client, &ep.client_auth) {
            (false, _) => None,
            (true, Some(auth)) => Some(auth.clone()),
            // No token is accepted here: tell the client so, rather than failing later.
            (true, None) => {
                tell_refused(conn, Refusal::NotAllowed).await;
                return Err(HandshakeError::Refused(Refusal::NotAllowed));
            }
        };
        let client_prologue = client_prologue();
        let mut hs = match auth {
            Some(_) => noise::client_builder(&ep.node_key, &client_prologue),
            None => noise::builder(&ep.node_key, &psk, &prologue),
        }
        .and_then(|b| b.build_responder())
        .map_err(|_| HandshakeError::Unexpected("a usable local key"))?;
        hs.read_message(&noise, &mut pl)
            .map_err(|_| HandshakeError::Unexpected("Noise message 1"))?;
        let me_bytes = postcard::to_allocvec(&me).expect("an identity serialises");
        let n = hs
            .write_message(&me_bytes, &mut buf)
            .map_err(|_| HandshakeError::Unexpected("Noise message 2"))?;
        send(
            conn,
            &HandshakeMsg::Noise {
                noise: buf[..n].to_vec(),
            },
        )
        .await?;
        let peer: Identity = match recv(conn).await? {
            HandshakeMsg::Noise { noise } => match hs.read_message(&noise, &mut pl) {
                Ok(n) => match &auth {
                    // A token client: its scope is what its token says, or it is refused.
                    Some(auth) => {
                        let cred: ClientCredential = decode_value(&pl[..n])?;
                        let scope = (cred.token.len() <= MAX_TOKEN_LEN)
                            .then(|| auth.scope(&cred.token))
                            .flatten();
                        match scope {
                            Some(scope) => Identity::Client {
                                id: cred.id,
                                scope: Some(scope),
                            },
                            None => {
                                Counters::inc(&ep.counters.handshakes_bad_token);
                                tell_refused(conn, Refusal::BadToken).await;
                                return Err(HandshakeError::Refused(Refusal::BadToken));
                            }
                        }
                    }
                    // A client admitted by the cluster key: whatever scope it claims, it
                    // has none.
                    None => match decode_value(&pl[..n])? {
                        Identity::Client { id, .. } => Identity::Client { id, scope: None },
                        node => node,
                    },
                },
                Err(_) => {
                    // The PSK is mixed in here: a wrong cluster key fails this message.
                    tell_refused(conn, Refusal::BadProof).await;
                    return Err(HandshakeError::BadKey);
                }
            },
            _ => return Err(HandshakeError::Unexpected("Noise message 3")),
        };
        let peer_key = remote_key(&hs)?;
        let cipher = Cipher::new(
            hs.into_stateless_transport_mode()
                .map_err(|_| HandshakeError::Unexpected("a finished handshake"))?,
        );
        let (verdict, outcome) = if !genuine(ep, &peer, &peer_key) {
            (
                Verdict::Refused(Refusal::WrongKey),
                Err(HandshakeError::WrongKey { claimed: peer }),
            )
        } else if !allow(&peer) {
            (
                Verdict::Refused(Refusal::NotAllowed),
                Err(HandshakeError::NotAllowed(peer)),
            )
        } else {
            (Verdict::Welcome, Ok(()))
        };
        let mut sealed = Vec::new();
        cipher.seal_into(
            &postcard::to_allocvec(&verdict).expect("a verdict serialises"),
            &mut sealed,
        )?;
        send(conn, &HandshakeMsg::Noise { noise: sealed }).await?;
        outcome?;
        Ok(Session {
            peer,
            peer_key,
            cipher: Arc::new(cipher),
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_prefix_is_frozen() {
        let m = HandshakeMsg::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            noise: vec![7; 32],
        };
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(&bytes[..6], &[0, b'S', b'M', b'R', b'T', PROTOCOL_VERSION]);
        assert_eq!(bytes[6], 32);
        assert_eq!(bytes.len(), 7 + 32);
    }

    #[test]
    fn identities_and_verdicts_encode_as_documented() {
        let id = Identity::Node {
            id: NodeId(2),
            incarnation: 5,
        };
        assert_eq!(postcard::to_allocvec(&id).unwrap(), [0, 2, 5]);
        assert_eq!(
            postcard::to_allocvec(&Identity::Client {
                id: 300,
                scope: None
            })
            .unwrap(),
            [1, 0xac, 0x02, 0]
        );
        assert_eq!(
            postcard::to_allocvec(&Identity::Client {
                id: 300,
                scope: Some(ClientScope::Admin)
            })
            .unwrap(),
            [1, 0xac, 0x02, 1, 1]
        );
        assert_eq!(postcard::to_allocvec(&Verdict::Welcome).unwrap(), [0]);
        assert_eq!(
            postcard::to_allocvec(&Verdict::Refused(Refusal::WrongKey)).unwrap(),
            [1, 3]
        );
    }
}
