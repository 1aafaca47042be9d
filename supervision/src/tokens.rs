//! API tokens for the HTTP API (`tokens_file` in the node config): credentials apart from the
//! cluster key, which stays for nodes. A token has a name and a scope: `read` may use every
//! `GET` route, `admin` every route.
//!
//! ## The file
//! TOML, one `[[token]]` table per token; only the SHA-256 of each token is kept, so the file
//! grants nothing if it leaks:
//!
//! ```toml
//! [[token]]
//! name = "ops"           # who, for logs
//! scope = "admin"        # "read" or "admin"
//! sha256 = "4f1c…"       # hex SHA-256 of the token
//! ```
//!
//! `smart tokens new --scope admin --name ops --file tokens.toml` makes a random token
//! (`smart_` and 64 hex digits), appends its entry and prints the token once. A node re-reads
//! the file when it changes (checked at most once a second), so new and removed tokens take
//! effect without a restart; a file that no longer parses is reported and the previous
//! tokens stay in force.
//!
//! ## Layout
//! - [`Scope`], [`Grant`], [`AuthError`]; [`TokenStore`]: checking presented tokens;
//! - [`TokenFile`]: parsing and writing the file; [`new_token`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do: the transport's client scope, one type for both APIs.
pub use smart_transport::handshake::ClientScope as Scope;

/// One `[[token]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds it (for logs).
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// Hex SHA-256 of the token.
    pub sha256: String,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// The tokens.
    #[serde(default)]
    pub token: Vec<TokenEntry>,
}

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// It could not be read or written.
    #[error("tokens file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It does not parse, or an entry is wrong.
    #[error("tokens file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The hex SHA-256 of a token.
pub fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random token: `smart_` and 64 hex digits (256 bits).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("smart_{hex}")
}

impl TokenFile {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks file text (`path` for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, TokenFileError> {
        let invalid = |reason: String| TokenFileError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let f: TokenFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for (i, t) in f.token.iter().enumerate() {
            let ok = t.sha256.len() == 64 && t.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(invalid(format!(
                    "token {} (`{}`): sha256 must be 64 hex digits",
                    i + 1,
                    t.name
                )));
            }
        }
        Ok(f)
    }

    /// Appends a new token of `scope` named `name` to the file at `path` (created with
    /// owner-only permissions if missing); returns the token.
    pub fn append_new(path: &Path, name: &str, scope: Scope) -> Result<String, TokenFileError> {
        use std::io::Write;
        let io = |source| TokenFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        if path.exists() {
            Self::load(path)?; // never append to a file the node would refuse
        }
        let token = new_token();
        let entry = TokenFile {
            token: vec![TokenEntry {
                name: name.to_string(),
                scope,
                sha256: digest(&token),
            }],
        };
        let text = toml::to_string(&entry).map_err(|e| TokenFileError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(io)?;
        f.write_all(format!("\n{text}").as_bytes()).map_err(io)?;
        Ok(token)
    }
}

/// What a presented token was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's name.
    pub name: String,
    /// Its scope.
    pub scope: Scope,
}

/// Why a request is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, or one that is not in the file (401).
    #[error("a valid API token is required (Authorization: Bearer <token>)")]
    Unauthorized,
    /// A valid token whose scope does not allow the route (403).
    #[error("this token's scope does not allow this request (admin needed)")]
    Forbidden,
}

struct Loaded {
    by_digest: HashMap<String, Grant>,
    mtime: Option<SystemTime>,
    checked: Instant,
}

/// The tokens a node accepts, re-read when the file changes.
pub struct TokenStore {
    path: Option<PathBuf>,
    loaded: Mutex<Loaded>,
}

/// How often the file's modification time is looked at, at most.
const RECHECK: Duration = Duration::from_secs(1);

fn index(f: &TokenFile) -> HashMap<String, Grant> {
    f.token
        .iter()
        .map(|t| {
            (
                t.sha256.to_ascii_lowercase(),
                Grant {
                    name: t.name.clone(),
                    scope: t.scope,
                },
            )
        })
        .collect()
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl TokenStore {
    /// Loads `path` (none: no token is accepted). A file that cannot be used is an error:
    /// a node must not start with credentials it cannot read.
    pub fn open(path: Option<&Path>) -> Result<Self, TokenFileError> {
        let by_digest = match path {
            Some(p) => index(&TokenFile::load(p)?),
            None => HashMap::new(),
        };
        Ok(Self {
            path: path.map(Path::to_path_buf),
            loaded: Mutex::new(Loaded {
                by_digest,
                mtime: path.and_then(mtime),
                checked: Instant::now(),
            }),
        })
    }

    /// A store with these tokens and no file (tests).
    pub fn from_tokens(tokens: &[(&str, Scope)]) -> Self {
        let by_digest = tokens
            .iter()
            .map(|(t, s)| {
                (
                    digest(t),
                    Grant {
                        name: format!("{s}-token"),
                        scope: *s,
                    },
                )
            })
            .collect();
        Self {
            path: None,
            loaded: Mutex::new(Loaded {
                by_digest,
                mtime: None,
                checked: Instant::now(),
            }),
        }
    }

    /// Checks a presented token (`None`: none was presented) against the scope a request
    /// needs.
    pub fn check(&self, token: Option<&str>, needs: Scope) -> Result<Grant, AuthError> {
        let token = token.ok_or(AuthError::Unauthorized)?;
        let mut l = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        self.reload_if_changed(&mut l);
        let grant = l
            .by_digest
            .get(&digest(token))
            .cloned()
            .ok_or(AuthError::Unauthorized)?;
        if grant.scope < needs {
            return Err(AuthError::Forbidden);
        }
        Ok(grant)
    }

    fn reload_if_changed(&self, l: &mut Loaded) {
        let Some(path) = &self.path else { return };
        if l.checked.elapsed() < RECHECK {
            return;
        }
        l.checked = Instant::now();
        let now = mtime(path);
        if now == l.mtime {
            return;
        }
        match TokenFile::load(path) {
            Ok(f) => {
                l.by_digest = index(&f);
                l.mtime = now;
                tracing::info!(path = %path.display(), tokens = l.by_digest.len(), "tokens file reloaded");
            }
            Err(e) => {
                // Keep the tokens in force: a half-written or broken file must not lock
                // every operator out (nor let anyone in).
                l.mtime = now;
                tracing::warn!(error = %e, "tokens file not reloaded; previous tokens stay in force");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_ordered_and_checked() {
        let s = TokenStore::from_tokens(&[("r", Scope::Read), ("a", Scope::Admin)]);
        assert_eq!(s.check(Some("r"), Scope::Read).unwrap().scope, Scope::Read);
        assert_eq!(s.check(Some("r"), Scope::Admin), Err(AuthError::Forbidden));
        assert!(s.check(Some("a"), Scope::Admin).is_ok());
        assert_eq!(
            s.check(Some("x"), Scope::Read),
            Err(AuthError::Unauthorized)
        );
        assert_eq!(s.check(None, Scope::Read), Err(AuthError::Unauthorized));
    }

    #[test]
    fn new_tokens_are_appended_hashed_and_picked_up_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.toml");
        let first = TokenFile::append_new(&p, "ops", Scope::Admin).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains(&first), "only the digest is written");
        assert!(text.contains(&digest(&first)));
        let store = TokenStore::open(Some(&p)).unwrap();
        assert!(store.check(Some(&first), Scope::Admin).is_ok());
        std::thread::sleep(Duration::from_millis(20));
        let second = TokenFile::append_new(&p, "dash", Scope::Read).unwrap();
        // Make the change visible to the next check.
        store.loaded.lock().unwrap().checked -= RECHECK;
        store.loaded.lock().unwrap().mtime = None;
        assert_eq!(
            store.check(Some(&second), Scope::Read).unwrap().name,
            "dash"
        );
        assert_eq!(TokenFile::load(&p).unwrap().token.len(), 2);
    }

    #[test]
    fn a_bad_file_names_the_entry() {
        let err = TokenFile::parse(
            "[[token]]\nname = \"x\"\nscope = \"admin\"\nsha256 = \"abc\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("t.toml") && err.contains("sha256"), "{err}");
        let err = TokenFile::parse(
            "[[token]]\nname = \"x\"\nscope = \"root\"\nsha256 = \"\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("root") || err.contains("scope"), "{err}");
    }
}
