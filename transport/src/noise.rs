//! Per-node identity and the Noise cipher of a connection.
//!
//! Every node has its own X25519 key pair (`smart keys` makes them); the public keys of all
//! members are listed in a [`KeyBook`] that every node reads from its configuration. The TCP
//! handshake ([`super::handshake`]) is `Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s` (the `snow`
//! crate): both sides prove their static key, the identity each claims is checked against
//! the key book (a node presenting another node's id is refused), and the pre-shared key,
//! derived from the cluster key, keeps anyone without the cluster key out, clients included.
//! After the handshake every frame is encrypted and authenticated with ChaCha20-Poly1305
//! ([`Cipher`]), with implicit, strictly increasing nonces per direction (a replayed,
//! reordered, reflected or forged frame fails to decrypt).
//!
//! Why Noise rather than rustls mTLS: no certificate authority, certificate files or expiry
//! to run on a cluster of small machines; one 32-byte key per node and one list of public
//! keys; a three-message handshake (one round trip and a half) whose transcript binds the
//! cluster key; and a small, audited pure-Rust dependency that shares its primitives
//! (ChaCha20-Poly1305, BLAKE2s, X25519 from RustCrypto and dalek) with the rest of the tree.
//!
//! ## Key files
//! - a node's private key file: the 32-byte private key in hex (64 characters), one line;
//! - the key book (`nodes.pub`): one line per member, `<node id> <public key in hex>`;
//!   blank lines and lines starting with `#` are ignored.
//!
//! ## Layout
//! - [`NodeKey`]: a node's key pair (generate, load, save).
//! - [`KeyBook`]: the members' public keys (parse, format, check).
//! - [`Cipher`]: one end of an established connection: seal and open frame payloads.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::FrameError;
use smart_proto::pair::MemberKeys;
use smart_proto::{ClusterKey, NodeId};

/// The Noise protocol name used on every connection.
pub const NOISE_PARAMS: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";

/// Length of X25519 keys.
pub const KEY_LEN: usize = 32;

/// Largest Noise message (the protocol's limit).
pub const NOISE_MAX_MSG: usize = 65535;

/// Length of the AEAD tag of every Noise transport message.
pub const NOISE_TAG_LEN: usize = 16;

/// Largest plaintext in one Noise transport message.
const CHUNK: usize = NOISE_MAX_MSG - NOISE_TAG_LEN;

fn params() -> snow::params::NoiseParams {
    NOISE_PARAMS
        .parse()
        .expect("the Noise protocol name is a constant")
}

/// The pre-shared key mixed into every handshake: derived from the cluster key, so only
/// holders of the cluster key (nodes and clients) can complete a handshake.
pub fn psk(cluster: &ClusterKey) -> [u8; 32] {
    cluster.sign(&[b"smart/noise-psk/v1"])
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NoiseKeyError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The content is not what was expected.
    #[error("key file {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong (line and content).
        reason: String,
    },
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; KEY_LEN]> {
    let s = s.trim();
    if s.len() != 2 * KEY_LEN || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A node's static X25519 key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeKey {
    private: [u8; KEY_LEN],
    public: [u8; KEY_LEN],
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        write!(f, "NodeKey(public {})", hex(&self.public))
    }
}

impl NodeKey {
    /// A fresh random key pair.
    pub fn generate() -> Self {
        let kp = snow::Builder::new(params())
            .generate_keypair()
            .expect("X25519 key generation with the OS random source");
        let mut private = [0u8; KEY_LEN];
        private.copy_from_slice(&kp.private);
        Self::from_private(private)
    }

    /// The key pair of a private key.
    pub fn from_private(private: [u8; KEY_LEN]) -> Self {
        let public = curve25519_dalek::MontgomeryPoint::mul_base_clamped(private).to_bytes();
        Self { private, public }
    }

    /// The public key.
    pub fn public(&self) -> [u8; KEY_LEN] {
        self.public
    }

    /// The public key in hex (as written in a key book).
    pub fn public_hex(&self) -> String {
        hex(&self.public)
    }

    pub(crate) fn private(&self) -> &[u8; KEY_LEN] {
        &self.private
    }

    /// The pair keys of node `me`, the owner of this key, with every other member of
    /// `book`: what proves its heartbeat datagrams are its own ([`smart_proto::pair`]).
    pub fn member_keys(&self, me: NodeId, book: &KeyBook) -> MemberKeys {
        MemberKeys::derive(me, &self.private, book.keys.iter().map(|(n, k)| (*n, *k)))
    }

    /// Loads a private key file (64 hex characters; surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<Self, NoiseKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| NoiseKeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let private = unhex32(&text).ok_or_else(|| NoiseKeyError::Invalid {
            path: path.display().to_string(),
            reason: "expected 64 hex characters (a 32-byte X25519 private key)".into(),
        })?;
        Ok(Self::from_private(private))
    }

    /// Writes the private key file, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), NoiseKeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| NoiseKeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        writeln!(f, "{}", hex(&self.private)).map_err(io)
    }
}

/// The members' public keys: who may present which node id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyBook {
    keys: BTreeMap<NodeId, [u8; KEY_LEN]>,
    /// No book configured: any static key may present any node id (tests and the
    /// in-process tools only; `smart node` always has a book).
    unchecked: bool,
}

impl KeyBook {
    /// A book that checks nothing: any key may present any node id. For unit tests and
    /// in-process tools where every endpoint is trusted; never what `smart node` uses.
    pub fn unchecked() -> Self {
        Self {
            keys: BTreeMap::new(),
            unchecked: true,
        }
    }

    /// An empty book (no node accepted until keys are added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a member's public key.
    pub fn insert(&mut self, node: NodeId, public: [u8; KEY_LEN]) {
        self.keys.insert(node, public);
    }

    /// The public key listed for `node`.
    pub fn get(&self, node: NodeId) -> Option<&[u8; KEY_LEN]> {
        self.keys.get(&node)
    }

    /// Whether `public` may present itself as `node`.
    pub fn admits(&self, node: NodeId, public: &[u8]) -> bool {
        self.unchecked || self.keys.get(&node).is_some_and(|k| k[..] == *public)
    }

    /// Whether this book checks identities.
    pub fn is_checked(&self) -> bool {
        !self.unchecked
    }

    /// The members listed.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.keys.keys().copied()
    }

    /// Parses key-book text (`<node id> <hex public key>` per line).
    pub fn parse(text: &str, path: &str) -> Result<Self, NoiseKeyError> {
        let mut book = Self::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| NoiseKeyError::Invalid {
                path: path.to_string(),
                reason: format!("line {}: {reason}: `{line}`", i + 1),
            };
            let mut parts = line.split_whitespace();
            let (Some(id), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("expected `<node id> <public key hex>`"));
            };
            let id: u64 = id.parse().map_err(|_| bad("node id is not a number"))?;
            let key = unhex32(key).ok_or_else(|| bad("public key is not 64 hex characters"))?;
            if book.keys.insert(NodeId(id), key).is_some() {
                return Err(bad("node id listed twice"));
            }
        }
        Ok(book)
    }

    /// Loads a key-book file.
    pub fn load(path: &Path) -> Result<Self, NoiseKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| NoiseKeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The book as text (what [`KeyBook::parse`] reads).
    pub fn format(&self) -> String {
        let mut out = String::from("# SMART node public keys: <node id> <X25519 public key>\n");
        for (id, k) in &self.keys {
            out.push_str(&format!("{} {}\n", id.0, hex(k)));
        }
        out
    }
}

/// One end of an established connection: seals outgoing frame payloads and opens incoming
/// ones, each direction with its own key and implicit nonce (the count of messages sent in
/// that direction). A payload is one or more Noise transport messages of at most 65,535
/// bytes; a receiver splits it at the same boundaries. Shared by the writer task (seal) and
/// the reader (open) of a connection.
pub struct Cipher {
    state: snow::StatelessTransportState,
    send: AtomicU64,
    recv: AtomicU64,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Cipher(sent {}, received {})",
            self.send.load(Ordering::Relaxed),
            self.recv.load(Ordering::Relaxed)
        )
    }
}

impl Cipher {
    pub(crate) fn new(state: snow::StatelessTransportState) -> Self {
        Self {
            state,
            send: AtomicU64::new(0),
            recv: AtomicU64::new(0),
        }
    }

    /// Two connected ends (initiator, acceptor) made by an in-memory handshake: for tests,
    /// benchmarks and fuzzing of the frame codec.
    pub fn pair() -> (Cipher, Cipher) {
        let psk = [7u8; 32];
        let ki = NodeKey::generate();
        let ka = NodeKey::generate();
        let mut i = snow::Builder::new(params())
            .local_private_key(ki.private())
            .and_then(|b| b.psk(3, &psk))
            .and_then(|b| b.build_initiator())
            .expect("initiator");
        let mut a = snow::Builder::new(params())
            .local_private_key(ka.private())
            .and_then(|b| b.psk(3, &psk))
            .and_then(|b| b.build_responder())
            .expect("responder");
        let mut buf = vec![0u8; 1024];
        let mut pl = vec![0u8; 1024];
        let n = i.write_message(&[], &mut buf).expect("msg1");
        a.read_message(&buf[..n], &mut pl).expect("msg1");
        let n = a.write_message(&[], &mut buf).expect("msg2");
        i.read_message(&buf[..n], &mut pl).expect("msg2");
        let n = i.write_message(&[], &mut buf).expect("msg3");
        a.read_message(&buf[..n], &mut pl).expect("msg3");
        (
            Cipher::new(i.into_stateless_transport_mode().expect("initiator done")),
            Cipher::new(a.into_stateless_transport_mode().expect("acceptor done")),
        )
    }

    /// The length of the sealed form of a `plain`-byte payload.
    pub fn sealed_len(plain: usize) -> usize {
        plain + plain.div_ceil(CHUNK).max(1) * NOISE_TAG_LEN
    }

    /// Encrypts `plain` as the next payload(s) in our sending direction, appending to `out`.
    pub fn seal_into(&self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        let mut chunks: Vec<&[u8]> = plain.chunks(CHUNK).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for c in chunks {
            let nonce = self.send.fetch_add(1, Ordering::Relaxed);
            let start = out.len();
            out.resize(start + c.len() + NOISE_TAG_LEN, 0);
            let n = self
                .state
                .write_message(nonce, c, &mut out[start..])
                .map_err(|_| FrameError::BadTag)?;
            out.truncate(start + n);
        }
        Ok(())
    }

    /// Decrypts and authenticates the next payload in the receiving direction. Any failure
    /// (forged, corrupted, replayed, reordered, reflected) is [`FrameError::BadTag`], and the
    /// connection must be closed (the nonce sequence is lost).
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(sealed.len());
        let mut rest = sealed;
        loop {
            let take = rest.len().min(NOISE_MAX_MSG);
            if take < NOISE_TAG_LEN {
                return Err(FrameError::Truncated("tag"));
            }
            let (c, tail) = rest.split_at(take);
            let nonce = self.recv.fetch_add(1, Ordering::Relaxed);
            let start = out.len();
            out.resize(start + c.len(), 0);
            let n = self
                .state
                .read_message(nonce, c, &mut out[start..])
                .map_err(|_| FrameError::BadTag)?;
            out.truncate(start + n);
            rest = tail;
            if rest.is_empty() {
                return Ok(out);
            }
        }
    }
}

/// The Noise protocol of a message-API client that presents a token instead of the
/// cluster key: the same handshake without a pre-shared key (the token, sent encrypted in
/// message 3, is what admits it).
pub const NOISE_PARAMS_CLIENT: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

/// A handshake builder for a token client's connection (either side).
pub(crate) fn client_builder<'a>(
    key: &'a NodeKey,
    prologue: &'a [u8],
) -> Result<snow::Builder<'a>, snow::Error> {
    let params: snow::params::NoiseParams = NOISE_PARAMS_CLIENT
        .parse()
        .expect("the Noise protocol name is a constant");
    snow::Builder::new(params)
        .local_private_key(key.private())?
        .prologue(prologue)
}

pub(crate) fn builder<'a>(
    key: &'a NodeKey,
    psk: &'a [u8; 32],
    prologue: &'a [u8],
) -> Result<snow::Builder<'a>, snow::Error> {
    snow::Builder::new(params())
        .local_private_key(key.private())?
        .psk(3, psk)?
        .prologue(prologue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_files_and_books() {
        let dir = tempfile_dir();
        let k = NodeKey::generate();
        let p = dir.join("n1.key");
        k.save(&p).unwrap();
        assert_eq!(NodeKey::load(&p).unwrap(), k);
        let mut book = KeyBook::new();
        book.insert(NodeId(1), k.public());
        book.insert(NodeId(2), NodeKey::generate().public());
        let back = KeyBook::parse(&book.format(), "nodes.pub").unwrap();
        assert_eq!(back, book);
        assert!(back.admits(NodeId(1), &k.public()));
        assert!(!back.admits(NodeId(2), &k.public()), "another node's key");
        assert!(!back.admits(NodeId(3), &k.public()), "not listed");
        assert!(KeyBook::parse("1 zz", "x").is_err());
        assert!(KeyBook::parse("1 00\n", "x").is_err());
        let dup = format!("1 {}\n1 {}\n", k.public_hex(), k.public_hex());
        assert!(KeyBook::parse(&dup, "x").is_err());
        // Two members of the book share a pair key; it is theirs alone.
        let k2 = NodeKey::generate();
        let mut book = KeyBook::new();
        book.insert(NodeId(1), k.public());
        book.insert(NodeId(2), k2.public());
        book.insert(NodeId(3), NodeKey::generate().public());
        let (a, b) = (
            k.member_keys(NodeId(1), &book),
            k2.member_keys(NodeId(2), &book),
        );
        let t = a.tag(NodeId(2), b"hb").unwrap();
        assert!(b.check(NodeId(1), b"hb", &t.tag));
        assert!(!b.check(NodeId(3), b"hb", &t.tag));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("smart-noise-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn cipher_round_trips_large_payloads_and_refuses_replays_and_reflection() {
        let (i, a) = Cipher::pair();
        for len in [0usize, 1, 1000, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let plain: Vec<u8> = (0..len).map(|x| x as u8).collect();
            let mut sealed = Vec::new();
            i.seal_into(&plain, &mut sealed).unwrap();
            assert_eq!(sealed.len(), Cipher::sealed_len(len));
            assert_eq!(a.open(&sealed).unwrap(), plain);
        }
        let mut one = Vec::new();
        i.seal_into(b"once", &mut one).unwrap();
        assert_eq!(a.open(&one).unwrap(), b"once");
        assert!(matches!(a.open(&one), Err(FrameError::BadTag)), "replay");
        let (i, a) = Cipher::pair();
        let mut m = Vec::new();
        i.seal_into(b"to the acceptor", &mut m).unwrap();
        assert!(i.open(&m).is_err(), "reflected back to its sender");
        let mut flipped = m.clone();
        flipped[3] ^= 1;
        assert!(a.open(&flipped).is_err());
    }
}
