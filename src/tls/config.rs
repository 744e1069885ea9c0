//! The server's TLS configuration, built once at start-up from nbdkit's
//! certificate directory: `ca-cert.pem`, `server-cert.pem`, `server-key.pem`
//! and, optionally, `ca-crl.pem`.
//!
//! Everything that can be wrong with these files is found here, before the
//! first client, and reported as one line naming the file.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::compress::CompressionCache;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CipherSuite, RootCertStore, ServerConfig, SupportedCipherSuite};

use super::options::{TlsMode, TlsOptions};
use crate::error::Error;
use crate::sys;

pub const CA_CERT: &str = "ca-cert.pem";
pub const SERVER_CERT: &str = "server-cert.pem";
pub const SERVER_KEY: &str = "server-key.pem";
pub const CA_CRL: &str = "ca-crl.pem";

/// Where nbdkit looks for certificates without `--tls-certificates`: root
/// uses the system directory, anyone else two places under `$HOME`.
pub fn default_dirs(root: bool, home: Option<&Path>) -> Vec<PathBuf> {
    match (root, home) {
        (true, _) => vec![PathBuf::from("/etc/pki/nbdkit")],
        (false, Some(h)) => vec![h.join(".pki/nbdkit"), h.join(".config/pki/nbdkit")],
        (false, None) => Vec::new(),
    }
}

/// The certificate directory: the one named, else the first default one that
/// holds the three files nbdkit requires (its own test for "a certificate
/// directory").
pub fn cert_dir(opts: &TlsOptions) -> Result<PathBuf, Error> {
    if let Some(d) = &opts.certificates {
        return Ok(d.clone());
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let dirs = default_dirs(sys::geteuid() == 0, home.as_deref());
    let complete = |d: &&PathBuf| {
        [CA_CERT, SERVER_CERT, SERVER_KEY]
            .iter()
            .all(|f| d.join(f).is_file())
    };
    if let Some(d) = dirs.iter().find(complete) {
        return Ok(d.clone());
    }
    let looked = match dirs.as_slice() {
        [] => "nowhere ($HOME is not set)".to_string(),
        ds => ds
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(" or "),
    };
    Err(Error::usage(format!(
        "{}: no TLS certificates found in {looked}: give --tls-certificates=DIR (see nbdlite(1))",
        match opts.mode() {
            TlsMode::Require => "--tls=require",
            _ => "--tls=on",
        }
    )))
}

/// The rustls configuration for `opts` (TLS is on or required).
///
/// TLS 1.3 and 1.2; no session tickets, no session cache and no ALPN, so that
/// the server keeps no state between connections; client certificates checked
/// against the CA (and the CRL, if present) only with `--tls-verify-peer`; the
/// cipher suite the server's CPU encrypts fastest (`fastest_first`).
/// Load it before dropping privileges: keys are usually readable by root only.
pub fn server_config(opts: &TlsOptions) -> Result<Arc<ServerConfig>, Error> {
    let dir = cert_dir(opts)?;
    let mut provider = provider();
    provider.cipher_suites = fastest_first(provider.cipher_suites, aes_in_hardware());
    let provider = Arc::new(provider);
    let roots = roots(&dir.join(CA_CERT))?;
    let crls = crls(&dir.join(CA_CRL))?;
    let key = certified_key(&dir, &provider)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::usage(format!("TLS: {e}")))?;
    let builder = if opts.verify_peer {
        let crl_file = dir.join(CA_CRL);
        // A CRL revokes what it lists; a certificate whose issuer published no
        // CRL is not refused for that (GnuTLS, hence nbdkit, behaves so).
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls(crls)
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| Error::BadFile(crl_file, e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(key)));
    cfg.ignore_client_order = true;
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    cfg.cert_compression_cache = Arc::new(CompressionCache::Disabled);
    Ok(Arc::new(cfg))
}

/// rustls's *ring* provider, the one the crate features build in: rustls
/// installs it as the process default on first use, and the builder hands it
/// back. (rustls 0.23.48 deprecated `crypto::ring::default_provider()`, for
/// want of post-quantum key exchange, which *ring* does not have; this is the
/// same provider through the API that stays, so that a `cargo install`
/// resolving a newer rustls builds without a warning.) The bench uses it too.
pub fn provider() -> CryptoProvider {
    CryptoProvider::clone(ServerConfig::builder().crypto_provider())
}

/// The suites in the order the server chooses from (it ignores the client's
/// order): one thread encrypts every reply, so the bulk cipher is most of a
/// TLS reply's cost. With AES instructions, AES-128-GCM first: 10 rounds
/// against AES-256's 14, and as safe for data in transit (the first choice
/// of Mozilla's server recommendations); without them, ChaCha20-Poly1305,
/// several times faster than AES in constant-time software.
pub fn fastest_first(
    mut suites: Vec<SupportedCipherSuite>,
    aes: bool,
) -> Vec<SupportedCipherSuite> {
    let rank = |s: &SupportedCipherSuite| match (bulk_cipher(s.suite()), aes) {
        (Bulk::Aes128, true) | (Bulk::ChaCha20, false) => 0,
        (Bulk::Aes256, true) | (Bulk::Aes128, false) => 1,
        (Bulk::ChaCha20, true) | (Bulk::Aes256, false) => 2,
        (Bulk::Other, _) => 3,
    };
    suites.sort_by_key(rank); // stable: the provider's order within a rank
    suites
}

enum Bulk {
    Aes128,
    Aes256,
    ChaCha20,
    Other,
}

fn bulk_cipher(s: CipherSuite) -> Bulk {
    match s {
        CipherSuite::TLS13_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Bulk::Aes128,
        CipherSuite::TLS13_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Bulk::Aes256,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Bulk::ChaCha20,
        _ => Bulk::Other,
    }
}

/// Whether this CPU has the instructions ring's fast AES-GCM uses.
fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// A PEM parsing failure as a one-line error naming `path`.
fn pem_error(path: &Path, e: pem::Error) -> Error {
    match e {
        pem::Error::Io(e) => Error::Setup(path.display().to_string(), e),
        pem::Error::NoItemsFound => {
            Error::BadFile(path.into(), "no PEM data of the expected kind".into())
        }
        e => Error::BadFile(path.into(), format!("not valid PEM ({e})")),
    }
}

/// Every certificate in a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(Error::BadFile(
            path.into(),
            "no certificate in it (expecting PEM \"BEGIN CERTIFICATE\")".into(),
        ));
    }
    Ok(certs)
}

/// The trust anchors: every certificate in `ca-cert.pem`, each one parsed.
fn roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for c in certificates(path)? {
        roots.add(c).map_err(|e| {
            Error::BadFile(path.into(), format!("not a usable CA certificate ({e})"))
        })?;
    }
    Ok(roots)
}

/// The revocation lists in `ca-crl.pem`, none when the file does not exist.
fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    let iter = match CertificateRevocationListDer::pem_file_iter(path) {
        Err(pem::Error::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r.map_err(|e| pem_error(path, e))?,
    };
    let crls = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if crls.is_empty() {
        return Err(Error::BadFile(
            path.into(),
            "no CRL in it (expecting PEM \"BEGIN X509 CRL\")".into(),
        ));
    }
    Ok(crls)
}

/// The server's chain and key, checked to belong together: a mismatch would
/// otherwise only show as every client's handshake failing.
fn certified_key(dir: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, Error> {
    let (cert_file, key_file) = (dir.join(SERVER_CERT), dir.join(SERVER_KEY));
    let chain = certificates(&cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&key_file).map_err(|e| match e {
        pem::Error::NoItemsFound => Error::BadFile(
            key_file.clone(),
            "no private key in it (expecting PEM \"BEGIN PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")".into(),
        ),
        e => pem_error(&key_file, e),
    })?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::BadFile(key_file.clone(), format!("unusable private key ({e})")))?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(Error::BadFile(
                key_file,
                format!("does not match the certificate in {}", cert_file.display()),
            ))
        }
        Err(e) => Err(Error::BadFile(
            cert_file,
            format!("unusable certificate ({e})"),
        )),
    }
}
