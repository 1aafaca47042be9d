//! The authenticated, versioned UDP datagram format of the cluster protocol (heartbeats and
//! Control claims), and the replay guard that rejects replayed or stale datagrams.
//!
//! Every datagram is
//!
//! ```text
//! +-------+---------+------+------------------+------------------------+-----------------+
//! | magic | version | kind | postcard payload | pair tags (postcard:   | HMAC-SHA256 tag |
//! | 4 B   | 1 B     | 1 B  | (kinds below)    | [(receiver, 8 B tag)]) | 32 B            |
//! +-------+---------+------+------------------+------------------------+-----------------+
//! ```
//!
//! The pair tags say that the member named in the payload's `from` sent it: one per member
//! the datagram is for, made over the header and the payload with the key that sender and
//! receiver alone share ([`crate::pair`]). The last tag covers everything before it, keyed
//! with the [`ClusterKey`]. Decoding checks, in order: the size (never more than
//! [`MAX_DATAGRAM`], checked before anything else), the minimum length, the magic, the
//! version, the cluster tag (constant time), then decodes the payload and the pair tags with
//! `postcard::take_from_bytes` (rejecting trailing bytes), and last checks the receiver's own
//! pair tag under its key with the sender. Nothing is parsed before the cluster tag has been
//! verified, so a sender without the cluster key can only make us compute one HMAC; a key
//! holder who is not the member it names fails the pair tag. No absolute timestamps cross
//! the wire, so wall-clock differences between nodes never matter.
//!
//! A heartbeat carries a pair tag for every other member, so one datagram holds about a
//! hundred; [`encode`] splits a larger cluster's message into several datagrams, each for
//! some of the members (every receiver finds its tag in one of them).
//!
//! ## Why claims are a message of their own
//! A claim could be folded into heartbeats (a Control's heartbeat asserts its epoch anyway).
//! We keep a distinct [`Claim`] because it is an *event*: it is sent at once when the backoff
//! ends (multicast and seeds), is counted and logged separately, and tests can assert on it.
//! It is not load-bearing for correctness: a lost claim is repaired by the next heartbeat,
//! which carries the same assertion ([`Heartbeat::as_control`]). Both kinds share the sender's
//! sequence space, so one [`ReplayGuard`] covers both.
//!
//! Kinds: 1 [`Heartbeat`], 2 [`Claim`], 3 [`Challenge`], 4 [`Proof`].
//!
//! ## Why challenges and proofs
//! A datagram authenticated with the cluster key says nothing about *when* it was sent: a
//! recorded one replayed to a node that just restarted (and so has no replay window for the
//! sender) would be believed, and one forged with a huge incarnation would make a live
//! member look restarted. So a node believes a member's incarnation only after the member
//! answered a fresh random nonce ([`Challenge`] → [`Proof`]): at first contact and whenever
//! a datagram announces a newer incarnation. The replay window then starts at the proof's
//! sequence number, everything before it counted as seen.
//!
//! ## Layout
//! - [`Message`], [`Heartbeat`], [`Claim`], [`Challenge`], [`Proof`], [`Handover`] and their
//!   small parts:
//!   the payloads.
//! - [`encode`] / [`decode`] and [`WireError`]: the datagram codec.
//! - [`ReplayGuard`] — per (node, incarnation) sliding-window sequence check.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, Incarnation, NodeId, Role};
use crate::key::{ClusterKey, TAG_LEN};
use crate::pair::{MemberKeys, PAIR_TAG_LEN, PairTag};

/// First bytes of every datagram: lets us drop foreign traffic on the port cheaply.
pub const MAGIC: [u8; 4] = *b"SMRT";
/// Version of this format. A node refuses other versions (rolling upgrades bump it with care).
/// 3: heartbeats no longer carry lease grants (majority mode follows the desired-state
/// log's Raft leader). 5: every datagram carries its sender's pair tags.
pub const VERSION: u8 = 5;
/// Header length: magic, version, kind.
pub const HEADER_LEN: usize = MAGIC.len() + 2;
/// How far above the highest epoch it has seen a node accepts a claim or heartbeat by
/// default: bounded, so one forged datagram cannot push the cluster's epochs to the ceiling.
pub const DEFAULT_MAX_EPOCH_STEP: u64 = 1000;
/// Largest datagram we send or accept. Below the IPv6 minimum MTU (1280) minus headers, so a
/// datagram is never fragmented; heartbeats are ~100 bytes.
pub const MAX_DATAGRAM: usize = 1200;

const KIND_HEARTBEAT: u8 = 1;
const KIND_CLAIM: u8 = 2;
const KIND_CHALLENGE: u8 = 3;
const KIND_PROOF: u8 = 4;
const KIND_HANDOVER: u8 = 5;

/// Length of a [`Challenge`] nonce.
pub const CHALLENGE_NONCE_LEN: usize = 16;

/// The Control a node hears *directly* (or itself, when it is the Control).
///
/// Never second-hand: a node does not repeat what others told it, so that nodes quoting each
/// other can never keep a dead Control alive. Receivers use it to learn of a Control they
/// cannot hear themselves (an asymmetric cut) instead of electing a rival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ControlView {
    /// The Control's node id.
    pub node_id: NodeId,
    /// The epoch at which it became Control (its age).
    pub established_epoch: Epoch,
    /// Its current epoch.
    pub epoch: Epoch,
}

/// Sent by a node that *is* the Control: its age and current epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ControlAssert {
    /// The epoch at which it became Control; orders two Controls (lower = older = survives).
    pub established_epoch: Epoch,
    /// Its current epoch (grows when it re-asserts); every command it sends carries it.
    pub epoch: Epoch,
}

/// A small load summary, enough for a status view and a rough placement hint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LoadSummary {
    /// CPU in use, millicores.
    pub cpu_milli: u32,
    /// Memory in use, MiB.
    pub mem_used_mib: u32,
    /// Network out, kbit/s.
    pub net_kbps: u32,
    /// Service instances running.
    pub instances: u16,
}

/// The periodic heartbeat every node multicasts (and sends to seeds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sender.
    pub from: NodeId,
    /// Sender's boot counter.
    pub incarnation: Incarnation,
    /// Sender's sequence number (shared with its claims), strictly increasing per incarnation.
    pub seq: u64,
    /// Where the sender's TCP transport listens.
    pub tcp_addr: SocketAddr,
    /// The sender's roles.
    pub roles: Vec<Role>,
    /// The highest epoch the sender has seen (and persisted).
    pub highest_epoch: Epoch,
    /// The Control the sender hears directly (itself if it is the Control).
    pub control: Option<ControlView>,
    /// Set when the sender is itself the Control.
    pub as_control: Option<ControlAssert>,
    /// Sender's load.
    pub load: LoadSummary,
}

/// "I am the Control at `epoch`": sent once when a node's election backoff ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Claimant.
    pub from: NodeId,
    /// Its boot counter.
    pub incarnation: Incarnation,
    /// Its sequence number (same space as its heartbeats).
    pub seq: u64,
    /// The claimed epoch (its `highest_epoch_seen + 1`), also its established epoch.
    pub epoch: Epoch,
}

/// "I stop being the Control at `epoch`; `successor` takes over": sent once by a Control
/// that is stopped or drained on purpose, right before its last heartbeat. The successor
/// claims at once instead of after a failure detection and a random backoff; the other
/// nodes hold their own claims for a failure detection time so that it wins. Believed only from
/// the node that asserts Control (a follower cannot hand over what it does not hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The leaving Control.
    pub from: NodeId,
    /// Its boot counter.
    pub incarnation: Incarnation,
    /// Its sequence number (same space as its heartbeats).
    pub seq: u64,
    /// The epoch it held.
    pub epoch: Epoch,
    /// The member it names, or `None` when no live member can be Control.
    pub successor: Option<NodeId>,
}

/// "Prove that you are alive now": sent by a node that heard a member it has not verified
/// yet (first contact, e.g. after its own restart) or a member announcing a new incarnation.
/// Every member answers with a [`Proof`] echoing the nonce, so a recorded datagram replayed
/// later can never stand in for a live node, and a forged incarnation is never adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The challenger.
    pub from: NodeId,
    /// Its boot counter.
    pub incarnation: Incarnation,
    /// Its sequence number (same space as its heartbeats).
    pub seq: u64,
    /// Fresh random nonce; a proof must echo it.
    pub nonce: [u8; CHALLENGE_NONCE_LEN],
}

/// The answer to a [`Challenge`]: the sender's current incarnation and sequence number,
/// bound to the challenger's fresh nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The prover.
    pub from: NodeId,
    /// Its current boot counter: what the challenger adopts.
    pub incarnation: Incarnation,
    /// Its sequence number (same space as its heartbeats).
    pub seq: u64,
    /// The challenger this answers.
    pub to: NodeId,
    /// The challenge's nonce.
    pub nonce: [u8; CHALLENGE_NONCE_LEN],
}

/// One datagram's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Periodic heartbeat.
    Heartbeat(Heartbeat),
    /// Control claim.
    Claim(Claim),
    /// Liveness challenge (incarnation verification).
    Challenge(Challenge),
    /// Answer to a challenge.
    Proof(Proof),
    /// A Control stepping down on purpose (a stop, a drain): names its successor.
    Handover(Handover),
}

impl Message {
    /// The sender.
    pub fn from(&self) -> NodeId {
        match self {
            Message::Heartbeat(h) => h.from,
            Message::Claim(c) => c.from,
            Message::Challenge(c) => c.from,
            Message::Proof(p) => p.from,
            Message::Handover(h) => h.from,
        }
    }

    /// The sender's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        match self {
            Message::Heartbeat(h) => h.incarnation,
            Message::Claim(c) => c.incarnation,
            Message::Challenge(c) => c.incarnation,
            Message::Proof(p) => p.incarnation,
            Message::Handover(h) => h.incarnation,
        }
    }

    /// The sender's sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            Message::Heartbeat(h) => h.seq,
            Message::Claim(c) => c.seq,
            Message::Challenge(c) => c.seq,
            Message::Proof(p) => p.seq,
            Message::Handover(h) => h.seq,
        }
    }
}

/// Why a datagram was refused. Each variant is counted by the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// Longer than [`MAX_DATAGRAM`].
    #[error("datagram of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Shorter than a header plus a tag.
    #[error("datagram of {len} bytes is truncated")]
    Truncated {
        /// Its length.
        len: usize,
    },
    /// Not our magic: foreign traffic on the port.
    #[error("bad magic")]
    BadMagic,
    /// A format version we do not speak.
    #[error("unsupported version {0}")]
    BadVersion(u8),
    /// The HMAC tag does not match: forged, corrupted, or another cluster's key.
    #[error("authentication tag mismatch (forged, corrupted, or wrong cluster key)")]
    BadTag,
    /// Authenticated but undecodable (unknown kind or bad payload): a bug or a newer peer.
    #[error("malformed payload")]
    Malformed,
    /// The payload decoded but bytes were left over.
    #[error("{0} trailing bytes after payload")]
    TrailingBytes(usize),
    /// The payload names this node as its sender: our own multicast looped back (not an
    /// error; the shell ignores it), or a key holder speaking in our name.
    #[error("a datagram in this node's own name")]
    FromSelf,
    /// The payload names a sender this node shares no key with (not in the key book).
    #[error("no pair key with node {0} (not in the key book)")]
    UnknownSender(u64),
    /// The datagram carries no pair tag for this node (a datagram of a large cluster meant
    /// for other members, or one that was not meant for us).
    #[error("no pair tag for this node")]
    NotForUs,
    /// The pair tag is not the named sender's: a cluster-key holder speaking in a member's
    /// name.
    #[error("pair tag of node {0} does not verify")]
    BadPairTag(u64),
}

/// Room a datagram's envelope takes besides the payload and the pair tags: the header, the
/// larger of the two trailers (the plain format's HMAC, or the encrypted one's nonce and
/// AEAD tag), and the pair tags' length prefix.
const ENVELOPE: usize = HEADER_LEN + AEAD_NONCE_LEN + AEAD_TAG_LEN + 2;

/// Encodes a message from this node (`keys.me()`, which must be its `from`): the payload,
/// the pair tags of every member `keys` knows, then the cluster key's HMAC. One datagram
/// unless the pair tags do not fit in [`MAX_DATAGRAM`]; then as many as needed, each with
/// the tags of some of the members.
///
/// Messages are bounded (roles are at most the four [`Role`]s, everything else is fixed
/// size), so a datagram of a small cluster is far below [`MAX_DATAGRAM`]; a test pins the
/// largest one.
pub fn encode(msg: &Message, key: &ClusterKey, keys: &MemberKeys) -> Vec<Vec<u8>> {
    encode_as(msg, keys, VERSION, |signed, tags| {
        let mut out = signed.to_vec();
        out.extend_from_slice(tags);
        let tag = key.sign(&[&out]);
        out.extend_from_slice(&tag);
        out
    })
}

/// The datagrams of `msg` in format `version`: `seal` makes one datagram from the signed
/// part (header and payload) and the encoded pair tags of some members.
fn encode_as(
    msg: &Message,
    keys: &MemberKeys,
    version: u8,
    seal: impl Fn(&[u8], &[u8]) -> Vec<u8>,
) -> Vec<Vec<u8>> {
    debug_assert_eq!(msg.from(), keys.me(), "a node speaks only for itself");
    let (kind, payload) = payload_of(msg);
    let mut signed = Vec::with_capacity(HEADER_LEN + payload.len());
    signed.extend_from_slice(&MAGIC);
    signed.push(version);
    signed.push(kind);
    signed.extend_from_slice(&payload);
    let room = MAX_DATAGRAM.saturating_sub(ENVELOPE + payload.len());
    let mut chunks: Vec<Vec<PairTag>> = vec![Vec::new()];
    let mut used = 0;
    for peer in keys.peers() {
        let Some(tag) = keys.tag(peer, &signed) else {
            continue;
        };
        let size = varint_len(peer.0) + PAIR_TAG_LEN;
        if used + size > room && !chunks.last().is_some_and(Vec::is_empty) {
            chunks.push(Vec::new());
            used = 0;
        }
        used += size;
        chunks.last_mut().expect("one chunk at least").push(tag);
    }
    chunks
        .iter()
        .map(|tags| {
            let tags = postcard::to_allocvec(tags).expect("postcard serialises a Vec of tags");
            seal(&signed, &tags)
        })
        .collect()
}

/// Checks and decodes a datagram for this node (`keys.me()`): the cluster key's tag, then
/// the payload and the pair tags, then the pair tag for this node under its key with the
/// sender the payload names. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8], key: &ClusterKey, keys: &MemberKeys) -> Result<Message, WireError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max: MAX_DATAGRAM,
        });
    }
    if bytes.len() < HEADER_LEN + 1 + TAG_LEN {
        return Err(WireError::Truncated { len: bytes.len() });
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = bytes[MAGIC.len()];
    if version != VERSION {
        return Err(WireError::BadVersion(version));
    }
    let (authenticated, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    if !key.verify(&[authenticated], tag) {
        return Err(WireError::BadTag);
    }
    open(
        &authenticated[..HEADER_LEN],
        &authenticated[HEADER_LEN..],
        keys,
    )
}

/// The message of a datagram whose envelope has been checked: `header` (magic, version,
/// kind) and `body` (payload and pair tags), if its pair tag for this node is the sender's.
fn open(header: &[u8], body: &[u8], keys: &MemberKeys) -> Result<Message, WireError> {
    let kind = header[MAGIC.len() + 1];
    let (msg, rest) = match kind {
        KIND_HEARTBEAT => take(body).map(|(m, r)| (Message::Heartbeat(m), r)),
        KIND_CLAIM => take(body).map(|(m, r)| (Message::Claim(m), r)),
        KIND_CHALLENGE => take(body).map(|(m, r)| (Message::Challenge(m), r)),
        KIND_PROOF => take(body).map(|(m, r)| (Message::Proof(m), r)),
        KIND_HANDOVER => take(body).map(|(m, r)| (Message::Handover(m), r)),
        _ => Err(WireError::Malformed),
    }?;
    let (tags, trailing): (Vec<PairTag>, _) = take(rest)?;
    if !trailing.is_empty() {
        return Err(WireError::TrailingBytes(trailing.len()));
    }
    let from = msg.from();
    if from == keys.me() {
        return Err(WireError::FromSelf);
    }
    if !keys.knows(from) {
        return Err(WireError::UnknownSender(from.0));
    }
    let Some(mine) = tags.iter().find(|t| t.to == keys.me()) else {
        return Err(WireError::NotForUs);
    };
    let payload_len = body.len() - rest.len();
    let mut signed = Vec::with_capacity(HEADER_LEN + payload_len);
    signed.extend_from_slice(header);
    signed.extend_from_slice(&body[..payload_len]);
    if !keys.check(from, &signed, &mine.tag) {
        return Err(WireError::BadPairTag(from.0));
    }
    Ok(msg)
}

/// Bytes of `v` as a postcard varint.
fn varint_len(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).max(1).div_ceil(7)
}

fn take<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<(T, &'a [u8]), WireError> {
    postcard::take_from_bytes(bytes).map_err(|_| WireError::Malformed)
}

/// Version of the encrypted datagram format ([`Keyring::encrypted`]).
/// 4: as [`VERSION`] 3. 6: as [`VERSION`] 5 (the pair tags are sealed with the payload).
pub const VERSION_ENCRYPTED: u8 = 6;

/// Length of the XChaCha20 nonce of an encrypted datagram (random per datagram: 192 bits
/// make collisions negligible without any state).
pub const AEAD_NONCE_LEN: usize = 24;

/// Length of the Poly1305 tag of an encrypted datagram.
pub const AEAD_TAG_LEN: usize = 16;

/// The heartbeat keys (memberlist-style): the primary key signs or encrypts what this node
/// sends; a datagram under any key of the ring is accepted, so keys rotate without a flag
/// day (add the new key as a secondary everywhere, make it primary everywhere, then remove
/// the old one).
///
/// Two formats, told apart by the version byte:
///
/// ```text
/// plain (5):     magic | 5 | kind | payload | tags | HMAC-SHA256(key, header || payload || tags)
/// encrypted (6): magic | 6 | kind | nonce (24) | XChaCha20-Poly1305(aead_key, payload || tags, aad = header || nonce)
///                aead_key = HMAC-SHA256(key, "smart/heartbeat-aead/v1")
///                tags = the sender's pair tags of header || payload (crate::pair)
/// ```
///
/// Both are always accepted (under a ring key); [`Keyring::encrypted`] decides what this node
/// sends. Either way only a ring key holder can produce a datagram that is even parsed, and
/// only the member it names can make its pair tags.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<ClusterKey>,
    aead: Vec<chacha20poly1305::XChaCha20Poly1305>,
    encrypt: bool,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keyring({} keys, encrypt: {})",
            self.keys.len(),
            self.encrypt
        )
    }
}

impl Keyring {
    /// A ring of one key, sending plain datagrams: the format of [`encode`].
    pub fn new(primary: ClusterKey) -> Self {
        Self::with_keys(primary, Vec::new())
    }

    /// A ring with a primary key and secondaries (accepted, never used to send).
    pub fn with_keys(primary: ClusterKey, secondaries: Vec<ClusterKey>) -> Self {
        let mut keys = vec![primary];
        keys.extend(secondaries);
        use chacha20poly1305::KeyInit;
        let aead = keys
            .iter()
            .map(|k| {
                let derived = k.sign(&[b"smart/heartbeat-aead/v1"]);
                chacha20poly1305::XChaCha20Poly1305::new((&derived).into())
            })
            .collect();
        Self {
            keys,
            aead,
            encrypt: false,
        }
    }

    /// The same ring, sending encrypted datagrams when `on`.
    pub fn encrypted(mut self, on: bool) -> Self {
        self.encrypt = on;
        self
    }

    /// Whether this ring sends encrypted datagrams.
    pub fn encrypts(&self) -> bool {
        self.encrypt
    }

    /// Loads a ring file: one key per line (at least 16 bytes of text, e.g. 64 hex digits),
    /// the first one primary; blank lines and `#` comments ignored.
    pub fn load(path: &std::path::Path) -> Result<Self, crate::key::KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| crate::key::KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut keys = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.push(ClusterKey::from_bytes(line.as_bytes()).map_err(|_| {
                crate::key::KeyError::TooShort {
                    path: path.display().to_string(),
                    len: line.len(),
                    min: crate::key::MIN_KEY_LEN,
                }
            })?);
        }
        if keys.is_empty() {
            return Err(crate::key::KeyError::TooShort {
                path: path.display().to_string(),
                len: 0,
                min: crate::key::MIN_KEY_LEN,
            });
        }
        let primary = keys.remove(0);
        Ok(Self::with_keys(primary, keys))
    }
}

fn payload_of(msg: &Message) -> (u8, Vec<u8>) {
    let (kind, payload) = match msg {
        Message::Heartbeat(h) => (KIND_HEARTBEAT, postcard::to_allocvec(h)),
        Message::Claim(c) => (KIND_CLAIM, postcard::to_allocvec(c)),
        Message::Challenge(c) => (KIND_CHALLENGE, postcard::to_allocvec(c)),
        Message::Proof(p) => (KIND_PROOF, postcard::to_allocvec(p)),
        Message::Handover(h) => (KIND_HANDOVER, postcard::to_allocvec(h)),
    };
    // Serialising plain structs into a Vec cannot fail (no maps with non-string keys, no
    // sequences of unknown length).
    (
        kind,
        payload.expect("postcard serialisation of a plain struct into a Vec"),
    )
}

/// Encodes `msg` from this node under the ring's primary key, plain or encrypted as the
/// ring says (see [`encode`]: one datagram unless the pair tags need more).
pub fn encode_with(msg: &Message, ring: &Keyring, keys: &MemberKeys) -> Vec<Vec<u8>> {
    if !ring.encrypt {
        return encode(msg, &ring.keys[0], keys);
    }
    use chacha20poly1305::AeadInPlace;
    encode_as(msg, keys, VERSION_ENCRYPTED, |signed, tags| {
        let nonce: [u8; AEAD_NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(
            HEADER_LEN + AEAD_NONCE_LEN + signed.len() + tags.len() + AEAD_TAG_LEN,
        );
        out.extend_from_slice(&signed[..HEADER_LEN]);
        out.extend_from_slice(&nonce);
        let mut body = signed[HEADER_LEN..].to_vec();
        body.extend_from_slice(tags);
        ring.aead[0]
            .encrypt_in_place((&nonce).into(), &out, &mut body)
            .expect("XChaCha20-Poly1305 encrypts any datagram-sized buffer");
        out.extend_from_slice(&body);
        out
    })
}

/// Checks and decodes a datagram for this node under any key of the ring (plain or
/// encrypted), and its sender's pair tag. Never panics, whatever the bytes.
pub fn decode_with(bytes: &[u8], ring: &Keyring, keys: &MemberKeys) -> Result<Message, WireError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max: MAX_DATAGRAM,
        });
    }
    if bytes.len() >= HEADER_LEN
        && bytes[..MAGIC.len()] == MAGIC
        && bytes[MAGIC.len()] == VERSION_ENCRYPTED
    {
        use chacha20poly1305::AeadInPlace;
        if bytes.len() < HEADER_LEN + AEAD_NONCE_LEN + AEAD_TAG_LEN {
            return Err(WireError::Truncated { len: bytes.len() });
        }
        let (aad, sealed) = bytes.split_at(HEADER_LEN + AEAD_NONCE_LEN);
        let nonce = &aad[HEADER_LEN..];
        for aead in &ring.aead {
            let mut buf = sealed.to_vec();
            if aead.decrypt_in_place(nonce.into(), aad, &mut buf).is_ok() {
                return open(&aad[..HEADER_LEN], &buf, keys);
            }
        }
        return Err(WireError::BadTag);
    }
    for k in &ring.keys {
        match decode(bytes, k, keys) {
            Err(WireError::BadTag) => {}
            other => return other,
        }
    }
    Err(WireError::BadTag)
}

/// Width of the replay window: a datagram up to this many sequence numbers behind the
/// highest one seen is still accepted once (UDP may reorder), older ones are refused.
pub const REPLAY_WINDOW: u64 = 64;

/// Why the replay guard refused a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ReplayError {
    /// This sequence number was accepted moments ago: the second copy of a datagram that
    /// reached us twice (multicast and a unicast seed), or a replay of a recent one.
    #[error("duplicate sequence number {seq} (highest {highest})")]
    Duplicate {
        /// The refused sequence number.
        seq: u64,
        /// The highest accepted one.
        highest: u64,
    },
    /// This sequence number is older than the window (or below a verified starting point).
    #[error("replayed or too old sequence number {seq} (highest {highest})")]
    Replayed {
        /// The refused sequence number.
        seq: u64,
        /// The highest accepted one.
        highest: u64,
    },
    /// From an older incarnation of the sender than one already seen (a pre-reboot datagram).
    #[error("stale incarnation {got} (current {current})")]
    StaleIncarnation {
        /// The datagram's incarnation.
        got: Incarnation,
        /// The newest seen.
        current: Incarnation,
    },
}

#[derive(Debug, Clone, Copy)]
struct Window {
    incarnation: Incarnation,
    highest: u64,
    /// Bit i set: `highest - i` was accepted.
    seen: u64,
}

/// Rejects replayed datagrams: per sender, keyed by (node, incarnation), only sequence
/// numbers not yet seen and within [`REPLAY_WINDOW`] of the highest are accepted. A higher
/// incarnation (the sender rebooted) resets the window; a lower one is refused.
#[derive(Debug, Default, Clone)]
pub struct ReplayGuard {
    windows: HashMap<NodeId, Window>,
}

impl ReplayGuard {
    /// An empty guard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks and records `(node, incarnation, seq)`.
    pub fn check(
        &mut self,
        node: NodeId,
        incarnation: Incarnation,
        seq: u64,
    ) -> Result<(), ReplayError> {
        let fresh = Window {
            incarnation,
            highest: seq,
            seen: 1,
        };
        let w = match self.windows.get_mut(&node) {
            None => {
                self.windows.insert(node, fresh);
                return Ok(());
            }
            Some(w) => w,
        };
        if incarnation < w.incarnation {
            return Err(ReplayError::StaleIncarnation {
                got: incarnation,
                current: w.incarnation,
            });
        }
        if incarnation > w.incarnation {
            *w = fresh;
            return Ok(());
        }
        if seq > w.highest {
            let shift = seq - w.highest;
            w.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                w.seen << shift
            } | 1;
            w.highest = seq;
            return Ok(());
        }
        let back = w.highest - seq;
        if back >= REPLAY_WINDOW {
            return Err(ReplayError::Replayed {
                seq,
                highest: w.highest,
            });
        }
        if w.seen & (1 << back) != 0 {
            return Err(ReplayError::Duplicate {
                seq,
                highest: w.highest,
            });
        }
        w.seen |= 1 << back;
        Ok(())
    }

    /// Starts `node`'s window at `(incarnation, seq)` with everything up to `seq` counted as
    /// seen: after a fresh [`Proof`], only datagrams sent after it are accepted, so recorded
    /// ones replayed to a restarted node are refused.
    pub fn verified(&mut self, node: NodeId, incarnation: Incarnation, seq: u64) {
        self.windows.insert(
            node,
            Window {
                incarnation,
                highest: seq,
                seen: u64::MAX,
            },
        );
    }

    /// The incarnation the guard currently follows for `node`.
    pub fn incarnation(&self, node: NodeId) -> Option<Incarnation> {
        self.windows.get(&node).map(|w| w.incarnation)
    }

    /// Forgets a node (e.g. removed from the member table).
    pub fn forget(&mut self, node: NodeId) {
        self.windows.remove(&node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ClusterKey {
        ClusterKey::from_bytes(b"test-cluster-key-0123456789").unwrap()
    }

    /// Member `id`'s node key (a secret per id).
    fn secret(id: NodeId) -> [u8; 32] {
        [id.0 as u8; 32]
    }

    /// Member `id`'s pair keys with members 1 to 4.
    fn keys_of(id: NodeId) -> MemberKeys {
        let publics = (1..=4).map(|i| (NodeId(i), crate::pair::public_key(&secret(NodeId(i)))));
        MemberKeys::derive(id, &secret(id), publics)
    }

    /// The receiver of every datagram in these tests: member 4 (no test message is from 4).
    fn book() -> MemberKeys {
        keys_of(NodeId(4))
    }

    /// The one datagram of `m` from its sender.
    fn only(mut datagrams: Vec<Vec<u8>>) -> Vec<u8> {
        assert_eq!(datagrams.len(), 1);
        datagrams.remove(0)
    }

    /// `encode`, by the message's sender.
    fn enc(m: &Message, k: &ClusterKey) -> Vec<u8> {
        only(encode(m, k, &keys_of(m.from())))
    }

    /// `encode_with`, by the message's sender.
    fn enc_with(m: &Message, ring: &Keyring) -> Vec<u8> {
        only(encode_with(m, ring, &keys_of(m.from())))
    }

    fn hb() -> Heartbeat {
        Heartbeat {
            from: NodeId(3),
            incarnation: 7,
            seq: 42,
            tcp_addr: "127.0.0.3:7000".parse().unwrap(),
            roles: vec![Role::Agent, Role::Control],
            highest_epoch: 9,
            control: Some(ControlView {
                node_id: NodeId(1),
                established_epoch: 8,
                epoch: 9,
            }),
            as_control: None,
            load: LoadSummary {
                cpu_milli: 1500,
                mem_used_mib: 2048,
                net_kbps: 40_000,
                instances: 3,
            },
        }
    }

    #[test]
    fn round_trip_both_kinds() {
        let k = key();
        let m = Message::Heartbeat(hb());
        assert_eq!(decode(&enc(&m, &k), &k, &book()), Ok(m));
        let c = Message::Claim(Claim {
            from: NodeId(2),
            incarnation: 1,
            seq: 5,
            epoch: 10,
        });
        assert_eq!(decode(&enc(&c, &k), &k, &book()), Ok(c));
    }

    #[test]
    fn largest_heartbeat_fits() {
        let mut h = hb();
        h.roles = vec![Role::Agent, Role::Profiler, Role::FrontEnd, Role::Control];
        h.tcp_addr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
            .parse()
            .unwrap();
        h.incarnation = u64::MAX;
        h.seq = u64::MAX;
        h.highest_epoch = u64::MAX;
        h.from = NodeId(u64::MAX);
        h.as_control = Some(ControlAssert {
            established_epoch: u64::MAX,
            epoch: u64::MAX,
        });
        let m = Message::Heartbeat(h);
        let bytes = only(encode(&m, &key(), &keys_of(m.from())));
        assert!(
            bytes.len() < 256,
            "largest heartbeat is {} bytes",
            bytes.len()
        );
    }

    #[test]
    fn typed_errors() {
        let k = key();
        let good = enc(&Message::Heartbeat(hb()), &k);
        assert_eq!(
            decode(&vec![0u8; MAX_DATAGRAM + 1], &k, &book()),
            Err(WireError::TooLarge {
                len: MAX_DATAGRAM + 1,
                max: MAX_DATAGRAM
            })
        );
        assert_eq!(
            decode(&good[..10], &k, &book()),
            Err(WireError::Truncated { len: 10 })
        );
        let mut m = good.clone();
        m[0] = b'X';
        assert_eq!(decode(&m, &k, &book()), Err(WireError::BadMagic));
        let mut v = good.clone();
        v[4] = 2;
        assert_eq!(decode(&v, &k, &book()), Err(WireError::BadVersion(2)));
        let other = ClusterKey::from_bytes(b"another-cluster-key-xxxxxx").unwrap();
        assert_eq!(decode(&good, &other, &book()), Err(WireError::BadTag));
        // Cutting the datagram short moves the tag: still refused as unauthenticated.
        assert_eq!(
            decode(&good[..good.len() - 1], &k, &book()),
            Err(WireError::BadTag)
        );
    }

    /// Builds a datagram with a valid cluster tag around an arbitrary body (payload and
    /// pair tags).
    fn signed(kind: u8, payload: &[u8], k: &ClusterKey) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(VERSION);
        out.push(kind);
        out.extend_from_slice(payload);
        let tag = k.sign(&[&out]);
        out.extend_from_slice(&tag);
        out
    }

    #[test]
    fn authenticated_garbage_is_malformed_or_trailing() {
        let k = key();
        assert_eq!(
            decode(&signed(99, &[0], &k), &k, &book()),
            Err(WireError::Malformed)
        );
        assert_eq!(
            decode(&signed(KIND_CLAIM, &[1, 2], &k), &k, &book()),
            Err(WireError::Malformed)
        );
        let mut payload = postcard::to_allocvec(&Claim {
            from: NodeId(1),
            incarnation: 1,
            seq: 1,
            epoch: 1,
        })
        .unwrap();
        // No pair tags (an empty list), then three bytes too many.
        payload.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            decode(&signed(KIND_CLAIM, &payload, &k), &k, &book()),
            Err(WireError::TrailingBytes(3))
        );
    }

    #[test]
    fn a_cluster_key_holder_cannot_speak_in_a_members_name() {
        let k = key();
        let ring = Keyring::new(k.clone());
        let sealed = Keyring::new(k.clone()).encrypted(true);
        // Someone with a node key of its own (not member 3's) speaks in 3's name.
        let m = Message::Heartbeat(hb());
        let publics = (1..=4).map(|i| (NodeId(i), crate::pair::public_key(&secret(NodeId(i)))));
        let impostor = MemberKeys::derive(NodeId(3), &[0x55; 32], publics);
        for bytes in [
            only(encode(&m, &k, &impostor)),
            only(encode_with(&m, &sealed, &impostor)),
        ] {
            assert_eq!(
                decode_with(&bytes, &ring, &book()),
                Err(WireError::BadPairTag(3))
            );
        }
        // A member the key book does not list.
        let mut stranger = hb();
        stranger.from = NodeId(9);
        let m = Message::Heartbeat(stranger);
        assert_eq!(
            decode(&enc(&m, &k), &k, &book()),
            Err(WireError::UnknownSender(9))
        );
        // The tags cover the header: a datagram re-tagged with another kind byte by a key
        // holder fails even where the payload still decodes.
        let claim = Message::Claim(Claim {
            from: NodeId(1),
            incarnation: 1,
            seq: 1,
            epoch: 1,
        });
        let mut bytes = enc(&claim, &k);
        bytes[5] = KIND_HANDOVER;
        let body = bytes.len() - TAG_LEN;
        let tag = k.sign(&[&bytes[..body]]);
        bytes[body..].copy_from_slice(&tag);
        assert!(decode(&bytes, &k, &book()).is_err());
        // A datagram whose sender shares no key with us carries no tag for us.
        let publics = (1..=2).map(|i| (NodeId(i), crate::pair::public_key(&secret(NodeId(i)))));
        let partial = MemberKeys::derive(NodeId(3), &secret(NodeId(3)), publics);
        let m = Message::Heartbeat(hb());
        assert_eq!(
            decode(&only(encode(&m, &k, &partial)), &k, &book()),
            Err(WireError::NotForUs)
        );
    }

    #[test]
    fn a_large_clusters_message_is_split_and_every_member_finds_its_tag_once() {
        let k = key();
        let sender = NodeId(1);
        let members: Vec<NodeId> = (1..=300).map(NodeId).chain([NodeId(u64::MAX)]).collect();
        let secret_of = |n: NodeId| {
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&n.0.to_le_bytes());
            s[8] = 1;
            s
        };
        let publics: Vec<(NodeId, [u8; 32])> = members
            .iter()
            .map(|&n| (n, crate::pair::public_key(&secret_of(n))))
            .collect();
        let keys = MemberKeys::derive(sender, &secret_of(sender), publics.clone());
        let mut h = hb();
        h.from = sender;
        let m = Message::Heartbeat(h);
        for ring in [
            Keyring::new(k.clone()),
            Keyring::new(k.clone()).encrypted(true),
        ] {
            let datagrams = encode_with(&m, &ring, &keys);
            assert!(datagrams.len() > 1, "300 tags do not fit one datagram");
            assert!(datagrams.iter().all(|d| d.len() <= MAX_DATAGRAM));
            for &n in members.iter().filter(|&&n| n != sender) {
                // The receiver's keys with the sender alone (one Diffie-Hellman).
                let rx = MemberKeys::derive(n, &secret_of(n), [publics[0]]);
                let found: Vec<_> = datagrams
                    .iter()
                    .map(|d| decode_with(d, &ring, &rx))
                    .collect();
                assert_eq!(found.iter().filter(|r| r.is_ok()).count(), 1, "{n}");
                assert!(
                    found
                        .iter()
                        .all(|r| matches!(r, Ok(_) | Err(WireError::NotForUs)))
                );
            }
        }
    }

    #[test]
    fn replay_guard_window_and_incarnations() {
        let mut g = ReplayGuard::new();
        let n = NodeId(1);
        assert_eq!(g.check(n, 5, 10), Ok(()));
        assert_eq!(
            g.check(n, 5, 10),
            Err(ReplayError::Duplicate {
                seq: 10,
                highest: 10
            })
        );
        assert_eq!(g.check(n, 5, 12), Ok(()));
        // Reordered but unseen: accepted once.
        assert_eq!(g.check(n, 5, 11), Ok(()));
        assert!(matches!(
            g.check(n, 5, 11),
            Err(ReplayError::Duplicate { .. })
        ));
        // Far ahead, then the old ones are out of the window.
        assert_eq!(g.check(n, 5, 12 + REPLAY_WINDOW), Ok(()));
        assert!(matches!(
            g.check(n, 5, 12),
            Err(ReplayError::Replayed { .. })
        ));
        assert_eq!(g.check(n, 5, 13 + 1), Ok(()));
        // Older incarnation refused, newer resets.
        assert_eq!(
            g.check(n, 4, 1000),
            Err(ReplayError::StaleIncarnation { got: 4, current: 5 })
        );
        assert_eq!(g.check(n, 6, 0), Ok(()));
        assert!(g.check(n, 5, 10_000).is_err());
        assert_eq!(g.check(n, 6, 1), Ok(()));
        // Other nodes are independent.
        assert_eq!(g.check(NodeId(2), 1, 0), Ok(()));
    }

    #[test]
    fn a_verified_window_refuses_everything_sent_before_the_proof() {
        let mut g = ReplayGuard::new();
        let n = NodeId(4);
        g.verified(n, 9, 100);
        assert!(matches!(
            g.check(n, 9, 100),
            Err(ReplayError::Duplicate { .. })
        ));
        assert!(matches!(
            g.check(n, 9, 99),
            Err(ReplayError::Duplicate { .. })
        ));
        assert!(matches!(
            g.check(n, 9, 10),
            Err(ReplayError::Replayed { .. })
        ));
        assert!(matches!(
            g.check(n, 8, 1000),
            Err(ReplayError::StaleIncarnation { .. })
        ));
        assert_eq!(g.check(n, 9, 101), Ok(()));
        assert_eq!(g.incarnation(n), Some(9));
    }

    #[test]
    fn keyring_rotation_and_encryption() {
        let old = key();
        let new = ClusterKey::from_bytes(b"the-next-heartbeat-key-0123").unwrap();
        let m = Message::Heartbeat(hb());
        // A node still on the old key, one rotating (new primary, old secondary), one done.
        let a = Keyring::new(old.clone());
        let b = Keyring::with_keys(new.clone(), vec![old.clone()]);
        let c = Keyring::new(new.clone());
        assert_eq!(decode_with(&enc_with(&m, &a), &b, &book()), Ok(m.clone()));
        assert_eq!(decode_with(&enc_with(&m, &b), &c, &book()), Ok(m.clone()));
        assert_eq!(
            decode_with(&enc_with(&m, &a), &c, &book()),
            Err(WireError::BadTag)
        );
        // Plain v1 under the ring's primary is exactly `encode`.
        assert_eq!(decode(&enc_with(&m, &a), &old, &book()), Ok(m.clone()));
        // Encrypted: the payload is not readable, any bit flip is refused.
        let e = b.clone().encrypted(true);
        let bytes = enc_with(&m, &e);
        assert_eq!(bytes[4], VERSION_ENCRYPTED);
        assert!(
            !bytes.windows(4).any(|w| w == [127, 0, 0, 3]),
            "address in clear"
        );
        assert_eq!(decode_with(&bytes, &c, &book()), Ok(m.clone()));
        assert_eq!(decode_with(&bytes, &a, &book()), Err(WireError::BadTag));
        for i in 0..bytes.len() {
            let mut f = bytes.clone();
            f[i] ^= 0x10;
            assert!(
                decode_with(&f, &c, &book()).is_err(),
                "flip at {i} accepted"
            );
        }
        assert!(bytes.len() <= MAX_DATAGRAM);
        assert!(matches!(
            decode_with(&bytes[..20], &c, &book()),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn challenge_and_proof_round_trip() {
        let k = key();
        for m in [
            Message::Challenge(Challenge {
                from: NodeId(1),
                incarnation: 3,
                seq: 9,
                nonce: [7; CHALLENGE_NONCE_LEN],
            }),
            Message::Proof(Proof {
                from: NodeId(2),
                incarnation: u64::MAX,
                seq: 1,
                to: NodeId(1),
                nonce: [9; CHALLENGE_NONCE_LEN],
            }),
        ] {
            assert_eq!(decode(&enc(&m, &k), &k, &book()), Ok(m));
        }
    }
}
