//! Checkpoint pull over TCP: how a migration target on another host reads the source
//! instance's checkpoint (docs/DESIGN.md §5). The workload control API
//! ([`crate::workload`]) is a Unix socket, so it only reaches instances on the same host;
//! for a cross-host move the **source Agent86** exports its instances' checkpoints on its
//! node's data-plane address and the **target Agent86** pulls one and hands it to its new
//! instance through a local relay socket (the instance cannot tell the two apart).
//!
//! ## Authentication
//! Only holders of the cluster key may pull a cache. The key never crosses the wire: the
//! source sends a fresh random nonce, the puller answers with
//! `HMAC-SHA256(key, "smart/pull/v1/proof" ‖ nonce ‖ instance)` ([`proof`]), which the
//! source checks in constant time before it sends a byte of the cache. A recorded proof is
//! worth nothing on the next connection (new nonce). The data is not encrypted (video blocks
//! are not secret) but it is authenticated: the source ends the stream with
//! `HMAC-SHA256(key, "smart/pull/v1/data" ‖ nonce ‖ header line ‖ data)` ([`DataMac`]);
//! the relay holds back the last chunk until the tag checks, so a tampered copy never
//! completes a restore.
//!
//! ## Wire format (version [`PULL_VERSION`])
//! ```text
//! source → puller   {"v":1,"nonce":"<64 hex>"}\n                         (Challenge)
//! puller → source   {"v":1,"instance":"<name>","proof":"<64 hex>","rate_bps":N}\n  (Pull)
//! source → puller   {"ok":false,"error":"..."}\n                          refused, or
//!                   <checkpoint header line>  <data_len bytes>  <32-byte tag>
//! ```
//! Lines are at most [`crate::workload::MAX_LINE`] bytes; the header is checked with
//! [`crate::workload::CheckpointHeader::check`] on both sides before anything is allocated
//! for its data. `rate_bps` (optional) asks the source to pace its send (the copy shares the
//! network with the viewers).

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Version of the pull protocol.
pub const PULL_VERSION: u32 = 1;
/// Length of nonces, proofs and tags.
pub const TAG_LEN: usize = 32;

const PROOF_LABEL: &[u8] = b"smart/pull/v1/proof";
const DATA_LABEL: &[u8] = b"smart/pull/v1/data";

type HmacSha256 = Hmac<Sha256>;

/// The key pulls are authenticated with (the cluster key's bytes). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PullKey(Vec<u8>);

impl PullKey {
    /// A key from raw bytes.
    pub fn new(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    fn mac(&self, label: &[u8]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(label);
        m
    }
}

impl fmt::Debug for PullKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PullKey({} bytes)", self.0.len())
    }
}

/// The source's first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// [`PULL_VERSION`].
    pub v: u32,
    /// Fresh random nonce, hex.
    pub nonce: String,
}

/// The puller's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pull {
    /// [`PULL_VERSION`].
    pub v: u32,
    /// The source instance whose checkpoint is wanted.
    pub instance: String,
    /// [`proof`] over the challenge's nonce and `instance`, hex.
    pub proof: String,
    /// Cap on the source's send rate, bits/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bps: Option<u64>,
}

/// Why a pull failed. Retryable failures may succeed on another attempt (the source is
/// unreachable or slow); fatal ones will not (wrong key, unknown instance, corrupt data).
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Could not reach or lost the source; retrying may work.
    #[error("checkpoint source unreachable: {0}")]
    Unreachable(#[source] std::io::Error),
    /// No answer in time; retrying may work.
    #[error("checkpoint pull timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The source refused the pull (bad proof, unknown instance, instance failed).
    #[error("checkpoint source refused: {0}")]
    Refused(String),
    /// A message that is not what the protocol says, or sizes over the limits.
    #[error("checkpoint pull protocol: {0}")]
    Protocol(String),
    /// The data's tag did not check: the copy was altered in transit.
    #[error("checkpoint data failed authentication")]
    Corrupt,
}

impl PullError {
    /// Whether another attempt may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, PullError::Unreachable(_) | PullError::Timeout(_))
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lower- or upper-case hex of exactly [`TAG_LEN`] bytes.
pub fn unhex(s: &str) -> Option<[u8; TAG_LEN]> {
    let b = s.as_bytes();
    if b.len() != TAG_LEN * 2 {
        return None;
    }
    let mut out = [0u8; TAG_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        *o = (d(b[2 * i])? * 16 + d(b[2 * i + 1])?) as u8;
    }
    Some(out)
}

/// The puller's proof of the key for `nonce` and `instance`. The instance's length goes in
/// first so that no two (nonce, instance) pairs share an input.
pub fn proof(key: &PullKey, nonce: &[u8; TAG_LEN], instance: &str) -> [u8; TAG_LEN] {
    let mut m = key.mac(PROOF_LABEL);
    m.update(nonce);
    m.update(&(instance.len() as u64).to_be_bytes());
    m.update(instance.as_bytes());
    m.finalize().into_bytes().into()
}

/// Checks a [`Pull`] against the nonce the source sent, in constant time.
pub fn verify_pull(key: &PullKey, nonce: &[u8; TAG_LEN], pull: &Pull) -> Result<(), PullError> {
    if pull.v != PULL_VERSION {
        return Err(PullError::Protocol(format!(
            "pull version {} (this node speaks {PULL_VERSION})",
            pull.v
        )));
    }
    let Some(given) = unhex(&pull.proof) else {
        return Err(PullError::Refused("malformed proof".into()));
    };
    let mut m = key.mac(PROOF_LABEL);
    m.update(nonce);
    m.update(&(pull.instance.len() as u64).to_be_bytes());
    m.update(pull.instance.as_bytes());
    m.verify_slice(&given)
        .map_err(|_| PullError::Refused("bad proof: not a member of this cluster".into()))
}

/// The running tag over a pull's header line and data.
pub struct DataMac(HmacSha256);

impl DataMac {
    /// Starts the tag for the connection whose challenge carried `nonce`.
    pub fn new(key: &PullKey, nonce: &[u8; TAG_LEN]) -> Self {
        let mut m = key.mac(DATA_LABEL);
        m.update(nonce);
        Self(m)
    }

    /// Adds bytes, in stream order.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The tag the source sends.
    pub fn tag(self) -> [u8; TAG_LEN] {
        self.0.finalize().into_bytes().into()
    }

    /// Checks the tag the puller received, in constant time.
    pub fn verify(self, tag: &[u8]) -> Result<(), PullError> {
        self.0.verify_slice(tag).map_err(|_| PullError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; TAG_LEN] = [7; TAG_LEN];

    fn pull(key: &PullKey, nonce: &[u8; TAG_LEN], instance: &str) -> Pull {
        Pull {
            v: PULL_VERSION,
            instance: instance.into(),
            proof: hex(&proof(key, nonce, instance)),
            rate_bps: None,
        }
    }

    #[test]
    fn a_proof_holds_only_for_its_key_nonce_and_instance() {
        let key = PullKey::new(b"the cluster key, 32 bytes long!!");
        assert!(verify_pull(&key, &NONCE, &pull(&key, &NONCE, "vod-1.3")).is_ok());
        let other = PullKey::new(b"another cluster's key, as long..");
        assert!(matches!(
            verify_pull(&key, &NONCE, &pull(&other, &NONCE, "vod-1.3")),
            Err(PullError::Refused(_))
        ));
        // Replayed on a connection with another nonce.
        assert!(verify_pull(&key, &[8; TAG_LEN], &pull(&key, &NONCE, "vod-1.3")).is_err());
        // Proof for one instance used for another.
        let mut p = pull(&key, &NONCE, "vod-1.3");
        p.instance = "vod-1.4".into();
        assert!(verify_pull(&key, &NONCE, &p).is_err());
        let mut p = pull(&key, &NONCE, "vod-1.3");
        p.proof = "zz".into();
        assert!(matches!(
            verify_pull(&key, &NONCE, &p),
            Err(PullError::Refused(_))
        ));
        let mut p = pull(&key, &NONCE, "vod-1.3");
        p.v = 2;
        assert!(matches!(
            verify_pull(&key, &NONCE, &p),
            Err(PullError::Protocol(_))
        ));
    }

    #[test]
    fn the_data_tag_detects_any_change() {
        let key = PullKey::new(b"the cluster key, 32 bytes long!!");
        let tag = {
            let mut m = DataMac::new(&key, &NONCE);
            m.update(b"header\n");
            m.update(b"data");
            m.tag()
        };
        // Chunking does not matter, content does.
        let mut m = DataMac::new(&key, &NONCE);
        m.update(b"head");
        m.update(b"er\ndata");
        assert!(m.verify(&tag).is_ok());
        let mut m = DataMac::new(&key, &NONCE);
        m.update(b"header\ndatb");
        assert!(matches!(m.verify(&tag), Err(PullError::Corrupt)));
        let mut m = DataMac::new(&key, &[0; TAG_LEN]);
        m.update(b"header\ndata");
        assert!(m.verify(&tag).is_err());
    }

    #[test]
    fn hex_round_trips_and_refuses_bad_input() {
        let b: [u8; TAG_LEN] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(unhex(&hex(&b)), Some(b));
        assert_eq!(hex(&[0x0f, 0xa0]), "0fa0");
        assert_eq!(unhex("00"), None);
        assert_eq!(unhex(&"g".repeat(64)), None);
    }

    #[test]
    fn messages_have_the_documented_json() {
        let c = Challenge {
            v: 1,
            nonce: "ab".into(),
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"v":1,"nonce":"ab"}"#
        );
        let p = Pull {
            v: 1,
            instance: "i".into(),
            proof: "p".into(),
            rate_bps: Some(8),
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"v":1,"instance":"i","proof":"p","rate_bps":8}"#
        );
        assert!(PullError::Timeout(std::time::Duration::from_secs(1)).retryable());
        assert!(!PullError::Corrupt.retryable());
        assert_eq!(format!("{:?}", PullKey::new(b"secret")), "PullKey(6 bytes)");
    }
}
