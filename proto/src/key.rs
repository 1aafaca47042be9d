//! The cluster key: the shared secret that authenticates heartbeats and keys the
//! transport's Noise handshakes, and the errors of loading it.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};

use sha2::Sha256;

/// Length of an HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;

/// Minimum key length accepted: shorter keys are refused rather than silently weak.
pub const MIN_KEY_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// The shared cluster key. Every datagram and every TCP handshake is authenticated with it.
#[derive(Clone)]
pub struct ClusterKey(Vec<u8>);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        write!(f, "ClusterKey({} bytes)", self.0.len())
    }
}

/// Why a cluster key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read cluster key file {path}: {source}")]
    Io {
        /// Path of the key file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key is too short.
    #[error("cluster key {path} is too short: {len} bytes, at least {min} required")]
    TooShort {
        /// Path of the key file.
        path: String,
        /// Its length after trimming.
        len: usize,
        /// The minimum.
        min: usize,
    },
}

impl ClusterKey {
    /// A key from raw bytes (tests and the demo); refuses keys shorter than [`MIN_KEY_LEN`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort {
                path: "<memory>".into(),
                len: bytes.len(),
                min: MIN_KEY_LEN,
            });
        }
        Ok(Self(bytes.to_vec()))
    }

    /// Loads a key file. Surrounding whitespace is ignored so that `openssl rand -hex 32 > f`
    /// and an editor's trailing newline both work; the remaining bytes are the key.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let raw = std::fs::read(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let trimmed = raw.trim_ascii();
        if trimmed.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort {
                path: path.display().to_string(),
                len: trimmed.len(),
                min: MIN_KEY_LEN,
            });
        }
        Ok(Self(trimmed.to_vec()))
    }

    /// HMAC-SHA256 over the concatenation of `parts`.
    pub fn sign(&self, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    /// Constant-time check of a tag over the concatenation of `parts`.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        mac.verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_wrong_key() {
        let k1 = ClusterKey::from_bytes(b"0123456789abcdef0123").unwrap();
        let k2 = ClusterKey::from_bytes(b"fedcba9876543210fedc").unwrap();
        let tag = k1.sign(&[b"hello", b" world"]);
        assert!(k1.verify(&[b"hello world"], &tag));
        assert!(!k2.verify(&[b"hello world"], &tag));
        assert!(!k1.verify(&[b"hello worle"], &tag));
        assert!(!k1.verify(&[b"hello world"], &tag[..31]));
    }

    #[test]
    fn short_key_refused() {
        assert!(matches!(
            ClusterKey::from_bytes(b"short"),
            Err(KeyError::TooShort { len: 5, .. })
        ));
    }
}
