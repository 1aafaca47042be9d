//! TLS for the HTTP API (rustls with the *ring* provider), and the certificates `smart tls`
//! makes for a cluster that has none of its own.
//!
//! - [`acceptor`]: the server side, from a node's `[http_tls]` PEM files (the key must be
//!   readable by its owner only, as for node keys);
//! - [`make_ca`], [`issue`]: a cluster CA and per-node certificates signed by it (rcgen),
//!   written as PEM files; `smart` commands then trust the CA (`ca_file`, `--ca-file`);
//! - [`install_provider`]: the process-wide crypto provider, which HTTPS clients (reqwest)
//!   need before they are built.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The private key file is readable by others.
    #[error(transparent)]
    TooOpen(#[from] smart_proto::key::TooOpen),
    /// rustls refused the certificate and key.
    #[error("certificate {cert} with key {key}: {source}")]
    Config {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// The cause.
        source: rustls::Error,
    },
    /// A certificate could not be made.
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The crypto provider: *ring*. rustls marks it deprecated because it has no
/// post-quantum key exchange (X25519MLKEM768); the alternative, aws-lc-rs, needs a C
/// build of AWS-LC on every machine that builds SMART. For an operator's API inside the
/// cluster, classical X25519 is what is offered; changing providers is this function.
#[allow(deprecated)]
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Makes [`provider`] the process's crypto provider, once (later calls do nothing).
pub fn install_provider() {
    let _ = provider().install_default();
}

/// The certificates of a PEM file, in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(io_err(path))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// The server side of the HTTP API's TLS: `cert` (a PEM chain) and `key` (a PEM private
/// key, owner-only). HTTP/2 and HTTP/1.1 are offered by ALPN.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs = load_certs(cert)?;
    smart_proto::key::require_private(key)?;
    let pem = std::fs::read(key).map_err(io_err(key))?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let config_err = |source| TlsError::Config {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        source,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(config_err)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// File names of a cluster CA in a directory.
const CA_CERT: &str = "api-ca.crt";
const CA_KEY: &str = "api-ca.key";

/// Writes `contents` to `path`, readable by its owner only when `private`.
fn write(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))
}

/// Makes a cluster CA in `dir` (`api-ca.crt`, `api-ca.key`), valid ten years; returns the
/// certificate's path. An existing CA is kept (its certificates stay valid).
pub fn make_ca(dir: &Path) -> Result<PathBuf, TlsError> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if cert_path.exists() && key_path.exists() {
        return Ok(cert_path);
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = ca_params();
    set_validity(&mut params);
    let cert = params.self_signed(&key)?;
    write(&key_path, &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    Ok(cert_path)
}

/// The CA's name and constraints: what its certificate says, and what a node
/// certificate's issuer must say (the same every time, so that [`issue`] needs only the
/// CA's key).
fn ca_params() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "SMART cluster API CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params
}

/// Valid from the first of January of last year (a clock behind still accepts it) to ten
/// years after this one.
fn set_validity(params: &mut rcgen::CertificateParams) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Average Gregorian year: off by a day at most, which the margins cover.
    let year = 1970 + (secs / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
}

/// Issues `<name>-api.crt` and `<name>-api.key` in `dir`, signed by the CA there (see
/// [`make_ca`]), for the host names and IP addresses in `hosts`; returns both paths.
pub fn issue(dir: &Path, name: &str, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    smart_proto::key::require_private(&ca_key)?;
    let ca_key_pem = std::fs::read_to_string(&ca_key).map_err(io_err(&ca_key))?;
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem)?;
    // The CA certificate must be there (it is what clients trust).
    load_certs(&ca_cert)?;
    let issuer = rcgen::Issuer::new(ca_params(), ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("SMART node {name}"));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut params);
    let cert = params.signed_by(&key, &issuer)?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}-api.crt")),
        dir.join(format!("{name}-api.key")),
    );
    write(&key_path, &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_from_the_cluster_ca_makes_an_acceptor() {
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca(dir.path()).unwrap();
        // A second call keeps the CA.
        let before = std::fs::read(&ca).unwrap();
        assert_eq!(make_ca(dir.path()).unwrap(), ca);
        assert_eq!(std::fs::read(&ca).unwrap(), before);
        let (cert, key) =
            issue(dir.path(), "n1", &["127.0.0.1".into(), "localhost".into()]).unwrap();
        assert!(acceptor(&cert, &key).is_ok());
        assert_eq!(load_certs(&ca).unwrap().len(), 1);
        // A key others may read is refused, as ssh refuses one.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = acceptor(&cert, &key).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("too open"), "{err}");
        // A file with no certificate says so.
        std::fs::write(dir.path().join("empty.crt"), "nothing\n").unwrap();
        let err = load_certs(&dir.path().join("empty.crt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no CERTIFICATE"), "{err}");
    }
}
