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

/// A secret file that others than its owner may read or write: a node refuses it, as ssh
/// refuses a private key with such permissions.
#[derive(Debug, thiserror::Error)]
#[error(
    "permissions {mode:04o} on {path} are too open: a secret key must be readable by its owner only (chmod 600 {path})"
)]
pub struct TooOpen {
    /// The file.
    pub path: String,
    /// Its permission bits.
    pub mode: u32,
}

/// Checks that the secret file at `path` grants nothing to its group or to others. A file
/// that cannot be inspected is left to the read that follows (which says why).
pub fn require_private(path: &std::path::Path) -> Result<(), TooOpen> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Err(TooOpen {
            path: path.display().to_string(),
            mode: m.permissions().mode() & 0o7777,
        }),
        _ => Ok(()),
    }
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

    /// A key readable by its group or by others is refused with the fix in the message; one
    /// its owner alone may read passes.
    #[test]
    fn a_secret_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("smart-key-mode-{}", std::process::id()));
        std::fs::write(&path, b"0123456789abcdef0123456789abcdef").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = require_private(&path);
            assert_eq!(r.is_ok(), ok, "mode {mode:o}");
            if let Err(e) = r {
                assert!(e.to_string().contains("chmod 600"), "{e}");
            }
        }
        std::fs::remove_file(&path).unwrap();
    }
}
