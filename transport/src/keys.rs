//! `smart keys`: makes a cluster's key material in a directory.
//!
//! - `cluster.key`: the shared cluster key (32 random bytes, hex): authenticates heartbeats
//!   and is the pre-shared key of every TCP handshake (nodes and message-API clients);
//! - `n<ID>.key`: each node's own X25519 private key (hex), readable by its owner only;
//! - `nodes.pub`: every node's public key (`<id> <hex>` per line), the key book that every
//!   node's `node_public_keys_file` names.
//!
//! Existing files are kept (a key is never silently replaced), so running it again after
//! adding a node only makes that node's key and rewrites `nodes.pub`. Nothing here is ever
//! committed: `scripts/setup.sh` makes the loopback example's keys, tests and `smart demo`
//! make their own.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::NodeId;
use crate::noise::{KeyBook, NodeKey, NoiseKeyError};

/// Why key material could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An existing key file is unusable.
    #[error(transparent)]
    Key(#[from] NoiseKeyError),
}

/// What [`generate`] made or found.
#[derive(Debug, Clone)]
pub struct ClusterKeys {
    /// The directory.
    pub dir: PathBuf,
    /// The node keys, by node id.
    pub nodes: Vec<(u64, NodeKey)>,
    /// The key book written to `nodes.pub`.
    pub book: KeyBook,
}

impl ClusterKeys {
    /// Path of the cluster key.
    pub fn cluster_key_file(&self) -> PathBuf {
        self.dir.join("cluster.key")
    }

    /// Path of node `id`'s private key.
    pub fn node_key_file(&self, id: u64) -> PathBuf {
        node_key_file(&self.dir, id)
    }

    /// Path of the key book.
    pub fn book_file(&self) -> PathBuf {
        self.dir.join("nodes.pub")
    }

    /// Node `id`'s key pair.
    pub fn node_key(&self, id: u64) -> Option<&NodeKey> {
        self.nodes.iter().find(|(n, _)| *n == id).map(|(_, k)| k)
    }
}

/// Path of node `id`'s private key in `dir`.
pub fn node_key_file(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("n{id}.key"))
}

fn private_file(path: &Path, text: &str) -> Result<(), KeysError> {
    let io = |source| KeysError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

/// Makes (or keeps) the cluster key and the keys of `nodes` in `dir`, and writes the key
/// book of `nodes`.
pub fn generate(dir: &Path, nodes: &[u64]) -> Result<ClusterKeys, KeysError> {
    fs::create_dir_all(dir).map_err(|source| KeysError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let cluster = dir.join("cluster.key");
    if !cluster.exists() {
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        private_file(&cluster, &format!("{hex}\n"))?;
    }
    let mut book = KeyBook::new();
    let mut keys = Vec::new();
    for &id in nodes {
        let path = node_key_file(dir, id);
        let key = if path.exists() {
            NodeKey::load(&path)?
        } else {
            let k = NodeKey::generate();
            k.save(&path)?;
            k
        };
        book.insert(NodeId(id), key.public());
        keys.push((id, key));
    }
    let book_path = dir.join("nodes.pub");
    fs::write(&book_path, book.format()).map_err(|source| KeysError::Io {
        path: book_path,
        source,
    })?;
    Ok(ClusterKeys {
        dir: dir.to_path_buf(),
        nodes: keys,
        book,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_keeps_existing_keys_and_lists_every_node() {
        let dir = tempfile::tempdir().unwrap();
        let a = generate(dir.path(), &[1, 2]).unwrap();
        let cluster = fs::read(a.cluster_key_file()).unwrap();
        let b = generate(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(fs::read(b.cluster_key_file()).unwrap(), cluster);
        assert_eq!(a.node_key(1), b.node_key(1));
        let book = KeyBook::load(&b.book_file()).unwrap();
        assert_eq!(book.nodes().count(), 3);
        assert!(book.admits(NodeId(3), &b.node_key(3).unwrap().public()));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(b.node_key_file(3))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private key readable by others");
    }
}
