//! Pairwise member keys: what proves that a heartbeat, claim, challenge, proof or hand-over
//! datagram comes from the member it names.
//!
//! The cluster key authenticates a datagram as coming from *someone who holds the cluster
//! key*: every node, which says nothing about which one. So every datagram also carries,
//! for each member it is meant for, a tag made with the key that member shares with the
//! sender alone: the X25519 Diffie-Hellman of the sender's node key and the receiver's
//! public key (both in the key book `nodes.pub`, the keys of the TCP handshake), put through
//! HMAC-SHA256 with a label and the two ids. Only the two members of a pair can make or
//! check its tag, so holding the cluster key, or another member's key, never lets anyone
//! speak for a member.
//!
//! Why pairwise MACs rather than signatures: a tag costs a fraction of a microsecond (an
//! Ed25519 verification costs ~60 µs here, per datagram and receiver), needs no key beyond
//! the node key every member already has, and heartbeats are never relayed, so nobody
//! needs to convince a third party. The price is one short tag per receiver in every
//! multicast datagram ([`PAIR_TAG_LEN`] bytes and the receiver's id), so a large cluster's
//! heartbeat is split into several datagrams (see `heartbeat::encode`).
//!
//! ## Layout
//! - [`MemberKeys`]: this node's pair keys with every other member (tag, check).
//! - [`PairTag`]: one receiver's tag, as it crosses the wire.
//! - [`public_key`]: the public half of a node key (tests and the simulator).

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::ids::NodeId;

type HmacSha256 = Hmac<Sha256>;

/// Length of a pair tag: 64 bits, so a forger must send ~2^63 datagrams (each one counted)
/// for one to pass, while a datagram still has room for a hundred receivers.
pub const PAIR_TAG_LEN: usize = 8;

/// Label of the pair-key derivation: a pair key is never valid for anything else the node
/// key is used for.
const PAIR_LABEL: &[u8] = b"smart/heartbeat-pair/v1";

/// One receiver's tag on a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairTag {
    /// The receiver.
    pub to: NodeId,
    /// HMAC-SHA256 of the datagram's header and payload under the pair key, truncated.
    pub tag: [u8; PAIR_TAG_LEN],
}

/// This node's pair keys: one per other member of the key book.
#[derive(Clone)]
pub struct MemberKeys {
    me: NodeId,
    pairs: BTreeMap<NodeId, HmacSha256>,
}

impl fmt::Debug for MemberKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        write!(f, "MemberKeys({}, {} peers)", self.me.0, self.pairs.len())
    }
}

/// The public half of an X25519 private key.
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    curve25519_dalek::MontgomeryPoint::mul_base_clamped(*secret).to_bytes()
}

impl MemberKeys {
    /// The pair keys of node `me`, whose X25519 private key is `secret`, with every member
    /// in `publics` (its own entry is skipped). A public key that gives an all-zero shared
    /// secret (a low-order point: anyone could compute that "secret") gives no pair key, so
    /// that member's datagrams are refused.
    pub fn derive(
        me: NodeId,
        secret: &[u8; 32],
        publics: impl IntoIterator<Item = (NodeId, [u8; 32])>,
    ) -> Self {
        let mut pairs = BTreeMap::new();
        for (peer, public) in publics {
            if peer == me {
                continue;
            }
            let shared = curve25519_dalek::MontgomeryPoint(public)
                .mul_clamped(*secret)
                .to_bytes();
            if shared == [0; 32] {
                continue;
            }
            let (lo, hi) = (me.0.min(peer.0), me.0.max(peer.0));
            let mut kdf = HmacSha256::new_from_slice(&shared).expect("HMAC takes any key length");
            kdf.update(PAIR_LABEL);
            kdf.update(&lo.to_be_bytes());
            kdf.update(&hi.to_be_bytes());
            let key = kdf.finalize().into_bytes();
            let mac = HmacSha256::new_from_slice(&key).expect("HMAC takes any key length");
            pairs.insert(peer, mac);
        }
        Self { me, pairs }
    }

    /// The node these keys belong to.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The members this node shares a key with (every other member of the key book).
    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.pairs.keys().copied()
    }

    /// Whether this node shares a key with `peer`.
    pub fn knows(&self, peer: NodeId) -> bool {
        self.pairs.contains_key(&peer)
    }

    /// The tag of `message` for `peer`, or `None` when there is no key with it.
    pub fn tag(&self, peer: NodeId, message: &[u8]) -> Option<PairTag> {
        let mut mac = self.pairs.get(&peer)?.clone();
        mac.update(message);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; PAIR_TAG_LEN];
        tag.copy_from_slice(&full[..PAIR_TAG_LEN]);
        Some(PairTag { to: peer, tag })
    }

    /// Whether `tag` is `peer`'s tag of `message` for this node (constant time).
    pub fn check(&self, peer: NodeId, message: &[u8], tag: &[u8; PAIR_TAG_LEN]) -> bool {
        let Some(mac) = self.pairs.get(&peer) else {
            return false;
        };
        let mut mac = mac.clone();
        mac.update(message);
        mac.verify_truncated_left(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(me: u64, secrets: &[[u8; 32]]) -> MemberKeys {
        let publics = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| (NodeId(i as u64 + 1), public_key(s)));
        MemberKeys::derive(NodeId(me), &secrets[me as usize - 1], publics)
    }

    #[test]
    fn a_pair_shares_a_key_that_no_third_member_has() {
        let secrets = [[1u8; 32], [2u8; 32], [3u8; 32]];
        let (a, b, c) = (keys(1, &secrets), keys(2, &secrets), keys(3, &secrets));
        let t = a.tag(NodeId(2), b"hello").unwrap();
        assert_eq!(t.to, NodeId(2));
        assert!(b.check(NodeId(1), b"hello", &t.tag));
        assert!(!b.check(NodeId(1), b"hellp", &t.tag), "another message");
        assert!(!b.check(NodeId(3), b"hello", &t.tag), "another sender");
        // Member 3 cannot make 1's tag for 2: its own key with 2 is another key.
        let forged = c.tag(NodeId(2), b"hello").unwrap();
        assert!(!b.check(NodeId(1), b"hello", &forged.tag));
        assert_eq!(a.peers().collect::<Vec<_>>(), [NodeId(2), NodeId(3)]);
        assert!(!a.knows(NodeId(1)), "no key with itself");
    }

    #[test]
    fn a_low_order_public_key_gives_no_pair_key() {
        // The all-zero point: every secret multiplies it to zero.
        let publics = [(NodeId(1), public_key(&[1; 32])), (NodeId(2), [0u8; 32])];
        let a = MemberKeys::derive(NodeId(1), &[1; 32], publics);
        assert!(!a.knows(NodeId(2)));
        assert!(a.tag(NodeId(2), b"x").is_none());
    }
}
