//! The mutual HMAC challenge run on every new connection before any data frame.
//!
//! Both sides prove that they hold the cluster key without sending it, over fresh random
//! nonces from both sides (so a recorded handshake cannot be replayed) and over both
//! identities (so a proof cannot be moved to another connection), with a role byte (so the
//! acceptor's proof cannot be reflected back as the initiator's). Both then derive a
//! per-connection session key that tags every data frame ([`crate::frame`]).
//!
//! # Wire format
//!
//! Each message is one frame whose payload is the postcard encoding of [`HandshakeMsg`]
//! (no tag), at most [`HANDSHAKE_MAX_FRAME`] bytes; anything larger, malformed, or
//! unexpected ends the handshake. The initiator is the side that opened the connection.
//!
//! ```text
//! initiator -> acceptor   0 Hello    { magic: "SMRT" (4 raw bytes), version: u8 = 1,
//!                                      identity: Identity, nonce: [u8; 32] }
//! acceptor  -> initiator  1 HelloAck { identity: Identity, nonce: [u8; 32], proof: [u8; 32] }
//!                   or    4 Refused  { reason: Refusal }   (bad version, not allowed)
//! initiator -> acceptor   2 Proof    { proof: [u8; 32] }   (or it closes: acceptor's proof bad)
//! acceptor  -> initiator  3 Welcome
//!                   or    4 Refused  { reason: Refusal }   (bad proof), then close
//!
//! Identity = 0 Node { id: u64 varint, incarnation: u64 varint } | 1 Client { id: u64 varint }
//! Refusal  = 0 BadVersion | 1 BadProof | 2 NotAllowed
//! ```
//!
//! The first bytes of `Hello` (`00 'S' 'M' 'R' 'T' version`) are frozen across versions so
//! that a peer of another version is told `BadVersion` rather than failing to decode.
//!
//! Proofs and the session key are HMAC-SHA256 under the cluster key over fixed-length fields
//! (so the concatenation is unambiguous); `id(x)` is 17 bytes: a kind byte (0 node, 1
//! client), then the node id (or client id) and the incarnation (0 for clients) as u64
//! big-endian:
//!
//! ```text
//! proof(role) = HMAC(cluster_key, "smart/tcp-handshake/v1" || role
//!                    || nonce_initiator || nonce_acceptor || id(initiator) || id(acceptor))
//!               role = 'A' (0x41) for the acceptor's proof, 'I' (0x49) for the initiator's
//! session_key = HMAC(cluster_key, "smart/tcp-session/v1"
//!                    || nonce_initiator || nonce_acceptor || id(initiator) || id(acceptor))
//! ```
//!
//! ## Test vector
//!
//! (Computed independently with Python's `hmac` from this text, and checked by a unit test.)
//! Cluster key `"test-vector-cluster-key!"` (24 ASCII bytes), `nonce_initiator` = bytes
//! 0x00..=0x1f, `nonce_acceptor` = bytes 0x20..=0x3f, initiator `Node { id: 2, incarnation: 5 }`,
//! acceptor `Node { id: 1, incarnation: 7 }`:
//!
//! ```text
//! proof('A')  = 6ec08a59fe83f15fd2ff91d8975c8b95534ea68cbcd947c3cc217add80583893
//! proof('I')  = 9a77da489b8c31e53ec96745ec6d79dfa3fceb18015ce2b6b67ef73c858415f4
//! session_key = 1cc070578991b24e3c6c54bdf26886a62cbb3563aaa4c6d3c16d6625131ae0ee
//! ```
//!
//! The initiator's first data frame, envelope `{version 1, from 2, incarnation 5, epoch 9,
//! seq 1}` around `Message::Request { id: 1, body: "hi" }` (a `String` body):
//!
//! ```text
//! 0000002a 0102050901 000102 6869
//!          b5c3e8bc13b84ef91478826bcce9b62c9d841ab9ebaebf7511aa0dd9c36b4f36   (tag)
//! ```
//!
//! The acceptor proves first; the initiator checks that proof before revealing its own, so
//! a fake server learns nothing from a client. A wrong key is reported on both sides as
//! [`HandshakeError::BadKey`] and counted in `handshakes_bad_key`.
//!
//! What this does not give: confidentiality (frames are readable on the wire; run over a
//! trusted LAN or a VPN/TLS tunnel if that matters) and protection against an attacker who
//! simply resets connections.
//!
//! ## Layout
//! - [`Identity`], [`HandshakeMsg`], [`Refusal`]: what is exchanged.
//! - [`proof`]: the proof computation (pure).
//! - [`initiate`] / [`accept`]: the two sides, with the timeout and counters.
//! - [`Session`], [`HandshakeError`]: the outcome.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Counters, Endpoint, RawConn};
use crate::frame::{
    Direction, FrameError, HANDSHAKE_MAX_FRAME, PROTOCOL_VERSION, decode_value, encode_value,
};
use crate::types::{ClusterKey, Incarnation, NodeId, TAG_LEN};

/// The first bytes of every SMART connection after the length prefix and variant byte.
pub const MAGIC: [u8; 4] = *b"SMRT";

/// Length of a handshake nonce.
pub const NONCE_LEN: usize = 32;

const PROOF_LABEL: &[u8] = b"smart/tcp-handshake/v1";
const SESSION_LABEL: &[u8] = b"smart/tcp-session/v1";
const ROLE_ACCEPTOR: u8 = b'A';
const ROLE_INITIATOR: u8 = b'I';

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
    },
}

impl Identity {
    /// The fixed-length encoding hashed into proofs (see the module docs).
    pub fn proof_bytes(&self) -> [u8; 17] {
        let (kind, a, b) = match *self {
            Identity::Node { id, incarnation } => (0u8, id.0, incarnation),
            Identity::Client { id } => (1u8, id, 0),
        };
        let mut out = [0u8; 17];
        out[0] = kind;
        out[1..9].copy_from_slice(&a.to_be_bytes());
        out[9..].copy_from_slice(&b.to_be_bytes());
        out
    }

    /// What this identity puts in an envelope's `from` and `incarnation`.
    pub fn envelope_sender(&self) -> (NodeId, Incarnation) {
        match *self {
            Identity::Node { id, incarnation } => (id, incarnation),
            Identity::Client { id } => (NodeId(id), 0),
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
            Identity::Client { id } => write!(f, "client-{id:016x}"),
        }
    }
}

/// Why an acceptor refused a handshake (sent to the initiator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The initiator's protocol version is not spoken here.
    #[error("unsupported protocol version")]
    BadVersion,
    /// The initiator's proof was wrong (different cluster key).
    #[error("bad proof (wrong cluster key?)")]
    BadProof,
    /// The acceptor does not take connections from this identity.
    #[error("identity not allowed here")]
    NotAllowed,
}

/// A handshake message (see the module docs for the encoding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeMsg {
    /// Initiator's opening.
    Hello {
        /// [`MAGIC`].
        magic: [u8; 4],
        /// [`PROTOCOL_VERSION`].
        version: u8,
        /// The initiator.
        identity: Identity,
        /// Fresh random nonce.
        nonce: [u8; NONCE_LEN],
    },
    /// Acceptor's answer with its proof.
    HelloAck {
        /// The acceptor.
        identity: Identity,
        /// Fresh random nonce.
        nonce: [u8; NONCE_LEN],
        /// `proof('A')`.
        proof: [u8; TAG_LEN],
    },
    /// Initiator's proof.
    Proof {
        /// `proof('I')`.
        proof: [u8; TAG_LEN],
    },
    /// Acceptor accepted the initiator's proof; data frames follow.
    Welcome,
    /// Acceptor refused; it closes the connection next.
    Refused {
        /// Why.
        reason: Refusal,
    },
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
    /// The peer could not prove that it holds our cluster key.
    #[error("peer failed to prove the cluster key: wrong cluster key on one side")]
    BadKey,
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
    /// A message arrived out of order.
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
    /// Per-connection key tagging data frames.
    pub key: ClusterKey,
    /// The direction of the frames we send.
    pub send_dir: Direction,
}

/// `proof(role)` as in the module docs.
pub fn proof(
    key: &ClusterKey,
    role: u8,
    nonce_i: &[u8; NONCE_LEN],
    nonce_a: &[u8; NONCE_LEN],
    id_i: &Identity,
    id_a: &Identity,
) -> [u8; TAG_LEN] {
    key.sign(&[
        PROOF_LABEL,
        &[role],
        nonce_i,
        nonce_a,
        &id_i.proof_bytes(),
        &id_a.proof_bytes(),
    ])
}

fn session_key(
    key: &ClusterKey,
    nonce_i: &[u8; NONCE_LEN],
    nonce_a: &[u8; NONCE_LEN],
    id_i: &Identity,
    id_a: &Identity,
) -> ClusterKey {
    let k = key.sign(&[
        SESSION_LABEL,
        nonce_i,
        nonce_a,
        &id_i.proof_bytes(),
        &id_a.proof_bytes(),
    ]);
    ClusterKey::from_bytes(&k).expect("a 32-byte HMAC output is a valid key")
}

async fn send(conn: &mut RawConn, msg: &HandshakeMsg) -> Result<(), HandshakeError> {
    let frame = encode_value(msg, HANDSHAKE_MAX_FRAME)?;
    conn.sink.send(frame).await.map_err(FrameError::Io)?;
    Ok(())
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
            if matches!(e, HandshakeError::BadKey) {
                Counters::inc(&counters.handshakes_bad_key);
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

/// Runs the initiator's side on a fresh connection. With `expect`, the peer must be that
/// node. Counts the outcome in `ep.counters`.
pub async fn initiate(
    conn: &mut RawConn,
    ep: &Endpoint,
    expect: Option<NodeId>,
) -> Result<Session, HandshakeError> {
    with_timeout(ep, async {
        let me = ep.identity;
        let nonce_i: [u8; NONCE_LEN] = rand::random();
        send(
            conn,
            &HandshakeMsg::Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                identity: me,
                nonce: nonce_i,
            },
        )
        .await?;
        let (peer, nonce_a) = match recv(conn).await? {
            HandshakeMsg::HelloAck {
                identity,
                nonce,
                proof: p,
            } => {
                // Constant-time comparison through the key's verify.
                let ok = ep.key.verify(
                    &[
                        PROOF_LABEL,
                        &[ROLE_ACCEPTOR],
                        &nonce_i,
                        &nonce,
                        &me.proof_bytes(),
                        &identity.proof_bytes(),
                    ],
                    &p,
                );
                if !ok {
                    return Err(HandshakeError::BadKey);
                }
                (identity, nonce)
            }
            HandshakeMsg::Refused {
                reason: Refusal::BadVersion,
            } => return Err(HandshakeError::BadVersion { got: 0 }),
            HandshakeMsg::Refused { reason } => return Err(HandshakeError::Refused(reason)),
            _ => return Err(HandshakeError::Unexpected("HelloAck")),
        };
        if let Some(expected) = expect
            && peer.node_id() != Some(expected)
        {
            return Err(HandshakeError::WrongPeer {
                expected,
                got: peer,
            });
        }
        let p = proof(&ep.key, ROLE_INITIATOR, &nonce_i, &nonce_a, &me, &peer);
        send(conn, &HandshakeMsg::Proof { proof: p }).await?;
        match recv(conn).await? {
            HandshakeMsg::Welcome => Ok(Session {
                peer,
                key: session_key(&ep.key, &nonce_i, &nonce_a, &me, &peer),
                send_dir: Direction::ToAcceptor,
            }),
            HandshakeMsg::Refused {
                reason: Refusal::BadProof,
            } => Err(HandshakeError::BadKey),
            HandshakeMsg::Refused { reason } => Err(HandshakeError::Refused(reason)),
            _ => Err(HandshakeError::Unexpected("Welcome")),
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
        let (peer, nonce_i) = match recv(conn).await? {
            HandshakeMsg::Hello {
                magic,
                version,
                identity,
                nonce,
            } => {
                if magic != MAGIC {
                    return Err(HandshakeError::BadMagic);
                }
                if version != PROTOCOL_VERSION {
                    let _ = send(
                        conn,
                        &HandshakeMsg::Refused {
                            reason: Refusal::BadVersion,
                        },
                    )
                    .await;
                    return Err(HandshakeError::BadVersion { got: version });
                }
                if !allow(&identity) {
                    let _ = send(
                        conn,
                        &HandshakeMsg::Refused {
                            reason: Refusal::NotAllowed,
                        },
                    )
                    .await;
                    return Err(HandshakeError::NotAllowed(identity));
                }
                (identity, nonce)
            }
            _ => return Err(HandshakeError::Unexpected("Hello")),
        };
        let nonce_a: [u8; NONCE_LEN] = rand::random();
        let p = proof(&ep.key, ROLE_ACCEPTOR, &nonce_i, &nonce_a, &peer, &me);
        send(
            conn,
            &HandshakeMsg::HelloAck {
                identity: me,
                nonce: nonce_a,
                proof: p,
            },
        )
        .await?;
        match recv(conn).await? {
            HandshakeMsg::Proof { proof: p } => {
                let ok = ep.key.verify(
                    &[
                        PROOF_LABEL,
                        &[ROLE_INITIATOR],
                        &nonce_i,
                        &nonce_a,
                        &peer.proof_bytes(),
                        &me.proof_bytes(),
                    ],
                    &p,
                );
                if !ok {
                    let _ = send(
                        conn,
                        &HandshakeMsg::Refused {
                            reason: Refusal::BadProof,
                        },
                    )
                    .await;
                    return Err(HandshakeError::BadKey);
                }
            }
            _ => return Err(HandshakeError::Unexpected("Proof")),
        }
        send(conn, &HandshakeMsg::Welcome).await?;
        Ok(Session {
            peer,
            key: session_key(&ep.key, &nonce_i, &nonce_a, &peer, &me),
            send_dir: Direction::ToInitiator,
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
            identity: Identity::Node {
                id: NodeId(2),
                incarnation: 5,
            },
            nonce: [7; NONCE_LEN],
        };
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(&bytes[..6], &[0, b'S', b'M', b'R', b'T', PROTOCOL_VERSION]);
        // identity: variant 0, id 2, incarnation 5; then 32 raw nonce bytes.
        assert_eq!(&bytes[6..9], &[0, 2, 5]);
        assert_eq!(bytes.len(), 9 + NONCE_LEN);
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The test vector of the module docs.
    #[test]
    fn documented_test_vector() {
        use crate::frame::{Envelope, seal_frame};
        use crate::transport::Message;
        let key = ClusterKey::from_bytes(b"test-vector-cluster-key!").unwrap();
        let ni: [u8; 32] = std::array::from_fn(|i| i as u8);
        let na: [u8; 32] = std::array::from_fn(|i| 32 + i as u8);
        let init = Identity::Node {
            id: NodeId(2),
            incarnation: 5,
        };
        let acc = Identity::Node {
            id: NodeId(1),
            incarnation: 7,
        };
        assert_eq!(
            hex(&proof(&key, ROLE_ACCEPTOR, &ni, &na, &init, &acc)),
            "6ec08a59fe83f15fd2ff91d8975c8b95534ea68cbcd947c3cc217add80583893"
        );
        assert_eq!(
            hex(&proof(&key, ROLE_INITIATOR, &ni, &na, &init, &acc)),
            "9a77da489b8c31e53ec96745ec6d79dfa3fceb18015ce2b6b67ef73c858415f4"
        );
        let sk = session_key(&key, &ni, &na, &init, &acc);
        // The key itself is not exposed; equal keys give equal tags.
        let unhex = |h: &str| -> Vec<u8> {
            (0..h.len() / 2)
                .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
                .collect()
        };
        let documented = ClusterKey::from_bytes(&unhex(
            "1cc070578991b24e3c6c54bdf26886a62cbb3563aaa4c6d3c16d6625131ae0ee",
        ))
        .unwrap();
        assert_eq!(sk.sign(&[b"probe"]), documented.sign(&[b"probe"]));
        let env = Envelope {
            version: PROTOCOL_VERSION,
            from: NodeId(2),
            incarnation: 5,
            epoch: 9,
            seq: 1,
            body: Message::<String, (), ()>::Request {
                id: 1,
                body: "hi".into(),
            },
        };
        let frame = seal_frame(&env, &sk, Direction::ToAcceptor, 1024).unwrap();
        assert_eq!(
            hex(&frame),
            "0000002a0102050901000102686\
             9b5c3e8bc13b84ef91478826bcce9b62c9d841ab9ebaebf7511aa0dd9c36b4f36"
        );
    }

    #[test]
    fn proofs_are_bound_to_role_nonces_and_identities() {
        let key = ClusterKey::from_bytes(b"0123456789abcdef0123").unwrap();
        let a = Identity::Node {
            id: NodeId(1),
            incarnation: 1,
        };
        let b = Identity::Client { id: 9 };
        let base = proof(&key, ROLE_ACCEPTOR, &[1; 32], &[2; 32], &a, &b);
        assert_ne!(
            base,
            proof(&key, ROLE_INITIATOR, &[1; 32], &[2; 32], &a, &b)
        );
        assert_ne!(base, proof(&key, ROLE_ACCEPTOR, &[2; 32], &[1; 32], &a, &b));
        assert_ne!(base, proof(&key, ROLE_ACCEPTOR, &[1; 32], &[2; 32], &b, &a));
        assert_eq!(base, proof(&key, ROLE_ACCEPTOR, &[1; 32], &[2; 32], &a, &b));
    }
}
