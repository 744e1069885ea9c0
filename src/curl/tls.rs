//! The TLS client configuration for `https` URLs, built once at start-up:
//! certificates verified against `cainfo=` (a PEM bundle), `capath=` (a
//! directory of PEM files), or else the system's bundle, as libcurl does;
//! `sslverify=false` accepts any certificate (the handshake's signatures are
//! still checked, so the session is at least with the holder of the key).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Debian's (and most distributions') bundle of trusted CAs.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Where trusted certificates come from.
pub struct Trust<'a> {
    pub cainfo: Option<&'a Path>,
    pub capath: Option<&'a Path>,
    pub verify: bool,
}

pub fn client_config(trust: &Trust<'_>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(crate::tls::provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if trust.verify {
        builder
            .with_root_certificates(roots(trust)?)
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth()
    };
    // HTTP/1.1 is all this client speaks: say so, lest a server pick h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates to trust.
fn roots(trust: &Trust<'_>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let mut add = |file: &Path, required: bool| -> Result<(), String> {
        let certs = match CertificateDer::pem_file_iter(file) {
            Ok(it) => it.filter_map(Result::ok).collect::<Vec<_>>(),
            Err(e) if required => return Err(format!("{}: {e}", file.display())),
            Err(_) => return Ok(()),
        };
        let (_added, _ignored) = roots.add_parsable_certificates(certs);
        Ok(())
    };
    match trust.cainfo {
        Some(f) if f.as_os_str().is_empty() => {} // no default store
        Some(f) => add(f, true)?,
        None if trust.capath.is_none() => add(Path::new(SYSTEM_BUNDLE), true)?,
        None => {}
    }
    if let Some(dir) = trust.capath {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            add(&entry.path(), false)?;
        }
    }
    if roots.is_empty() {
        return Err("no CA certificates to verify the server with: give cainfo= or capath=, or sslverify=false".into());
    }
    Ok(roots)
}

/// `sslverify=false`: any certificate for any name; signatures checked.
#[derive(Debug)]
struct AcceptAny(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
