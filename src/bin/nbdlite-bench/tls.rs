//! TLS for `nbds://` and `nbds+unix://` URIs, with rustls (ring): the client's
//! credentials, read once per run from a certificate directory laid out as
//! libnbd reads `tls-certificates=` (`ca-cert.pem`; `client-cert.pem` and
//! `client-key.pem` if there; `ca-crl.pem` if there); the blocking handshake
//! after STARTTLS; and the session the event loop then drives, in small
//! non-blocking steps, over the socket it polls.
//!
//! Built with the `tls` feature only; `notls.rs` stands in for it otherwise.

use std::io::{self, BufRead, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nbdlite::error::plain;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore};

use crate::stream::HANDSHAKE_TIMEOUT;
use crate::stream::Stream;
use crate::uri::TlsTarget;

const CA_CERT: &str = "ca-cert.pem";
const CA_CRL: &str = "ca-crl.pem";
const CLIENT_CERT: &str = "client-cert.pem";
const CLIENT_KEY: &str = "client-key.pem";

/// What every connection of a run starts TLS with.
pub struct Client {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    /// For messages: the CA file, the certificate directory, and the client
    /// certificate if we show one.
    ca: PathBuf,
    dir: PathBuf,
    cert: Option<PathBuf>,
}

impl Client {
    /// Reads the certificate directory. TLS 1.3 and 1.2; no session
    /// resumption, so that every connection makes the full handshake a
    /// fresh client (libnbd, qemu) makes.
    pub fn new(t: &TlsTarget) -> Result<Client, String> {
        let dir = match &t.certificates {
            Some(d) => d.clone(),
            None => default_dir()?,
        };
        let name = ServerName::try_from(t.hostname.clone()).map_err(|_| {
            format!(
                "'{}' is not a name a certificate can carry (tls-hostname= in the URI sets it)",
                t.hostname
            )
        })?;
        let provider = Arc::new(nbdlite::tls::provider());
        let ca = dir.join(CA_CERT);
        let crl_file = dir.join(CA_CRL);
        let roots = Arc::new(roots(&ca)?);
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .with_crls(crls(&crl_file)?)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| format!("{}: {e}", crl_file.display()))?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS: {e}"))?
            .with_webpki_verifier(verifier);
        let auth = client_auth(&dir)?;
        let cert = auth.is_some().then(|| dir.join(CLIENT_CERT));
        let mut config = match auth {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "{}: unusable client key ({e})",
                    dir.join(CLIENT_KEY).display()
                )
            })?,
        };
        config.resumption = Resumption::disabled();
        Ok(Client {
            config: Arc::new(config),
            name,
            ca,
            dir,
            cert,
        })
    }

    /// Why a server may hang up just after a handshake that went well on our
    /// side: it did not like our certificate, or wanted one.
    pub fn hung_up(&self) -> String {
        match &self.cert {
            Some(c) => format!(
                "the server hung up after the TLS handshake: did it refuse the client certificate {}?",
                c.display()
            ),
            None => format!(
                "the server hung up after the TLS handshake: does it want a client certificate \
                 ({CLIENT_CERT} and {CLIENT_KEY} in {})?",
                self.dir.display()
            ),
        }
    }

    /// The TLS handshake over `sock`, blocking (each read and write bounded by
    /// the socket's timeout), once the server has acknowledged STARTTLS.
    pub fn handshake(&self, sock: &mut Stream) -> Result<Session, String> {
        let mut tls = ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(|e| format!("TLS: {e}"))?;
        while tls.is_handshaking() {
            tls.complete_io(sock).map_err(|e| self.why(&e))?;
        }
        Ok(Session { tls })
    }

    /// A failed handshake in one line, with a hint for the usual mistakes.
    fn why(&self, e: &io::Error) -> String {
        let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        let hint = match tls {
            Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
                format!(" (is it signed by the CA in {}?)", self.ca.display())
            }
            Some(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => " (tls-hostname= in the URI sets the name to check)".into(),
            _ => String::new(),
        };
        match (tls, e.kind()) {
            (Some(t), _) => format!("TLS handshake failed: {t}{hint}"),
            (None, io::ErrorKind::UnexpectedEof) => {
                "the server closed the connection during the TLS handshake".into()
            }
            (None, io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => format!(
                "no TLS handshake reply from the server within {}s",
                HANDSHAKE_TIMEOUT.as_secs()
            ),
            (None, _) => format!("TLS handshake failed: {}", plain(e)),
        }
    }
}

/// libnbd's default certificate directory, when none is given: the first of
/// its places that holds a CA certificate.
fn default_dir() -> Result<PathBuf, String> {
    let dirs: Vec<PathBuf> = if nbdlite::os::geteuid() == 0 {
        vec!["/etc/pki/libnbd".into()]
    } else {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        home.iter()
            .flat_map(|h| [h.join(".pki/libnbd"), h.join(".config/pki/libnbd")])
            .collect()
    };
    if let Some(d) = dirs.iter().find(|d| d.join(CA_CERT).is_file()) {
        return Ok(d.clone());
    }
    let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "nbds: no {CA_CERT} in {}: give --tls-certificates DIR",
        match looked.as_slice() {
            [] => "any default place ($HOME is not set)".to_string(),
            l => l.join(" or "),
        }
    ))
}

/// A PEM file's failure in one line naming it.
fn pem_error(path: &Path, what: &str, e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => format!("{}: {}", path.display(), plain(&e)),
        pem::Error::NoItemsFound => format!("{}: no {what} in it", path.display()),
        e => format!("{}: not valid PEM ({e})", path.display()),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let what = "certificate (PEM \"BEGIN CERTIFICATE\")";
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(path, what, e))?;
    if certs.is_empty() {
        return Err(format!("{}: no {what} in it", path.display()));
    }
    Ok(certs)
}

/// The CAs to trust: every certificate in `ca-cert.pem`.
fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in certificates(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate ({e})", path.display()))?;
    }
    Ok(roots)
}

/// Revocation lists for the server's certificate; none without `ca-crl.pem`.
fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(path, "CRL", e))
}

type Auth = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The client's certificate and key, if the directory holds them (both, or
/// neither: one without the other is a mistake worth a message).
fn client_auth(dir: &Path) -> Result<Option<Auth>, String> {
    let (cert, key) = (dir.join(CLIENT_CERT), dir.join(CLIENT_KEY));
    match (cert.exists(), key.exists()) {
        (false, false) => return Ok(None),
        (true, false) => return Err(format!("{}: missing (beside {CLIENT_CERT})", key.display())),
        (false, true) => return Err(format!("{}: missing (beside {CLIENT_KEY})", cert.display())),
        (true, true) => {}
    }
    let chain = certificates(&cert)?;
    let key = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| pem_error(&key, "private key (PEM \"BEGIN PRIVATE KEY\")", e))?;
    Ok(Some((chain, key)))
}

/// One connection's TLS session. After the handshake the option haggling runs
/// over `blocking`; then the event loop drives it in non-blocking steps:
/// ciphertext the loop read from the socket goes in with `feed`, plaintext
/// is read in place with `plaintext` and `consume`; requests go in with
/// `seal` and out with `send`.
pub struct Session {
    tls: ClientConnection,
}

impl Session {
    /// The session as a blocking stream over `sock`, for the options after
    /// STARTTLS.
    pub fn blocking<'a>(&'a mut self, sock: &'a mut Stream) -> impl Read + Write + 'a {
        rustls::Stream::new(&mut self.tls, sock)
    }

    /// Takes ciphertext from the front of `wire` (at most a few KiB at once:
    /// call again while it is not empty) and decrypts every record that is
    /// now complete. An empty `wire` means the server closed the socket.
    /// Read `plaintext` until it says `None` before feeding more: rustls
    /// refuses more ciphertext while 16 KiB of plaintext wait.
    pub fn feed(&mut self, wire: &mut &[u8]) -> io::Result<()> {
        self.tls.read_tls(wire)?;
        match self.tls.process_new_packets() {
            Ok(_) => Ok(()),
            Err(e) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("TLS: {e}"),
            )),
        }
    }

    /// The decrypted bytes waiting, a record's worth at most, to be read in
    /// place and then `consume`d: `None` if there are none yet, an empty
    /// slice once the server has closed, with a close_notify or without one
    /// (NBD's framing shows a truncated reply).
    pub fn plaintext(&mut self) -> io::Result<Option<&[u8]>> {
        match self.tls.reader().into_first_chunk() {
            Ok(piece) => Ok(Some(piece)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(&[])),
            Err(e) => Err(e),
        }
    }

    /// Drops the first `n` bytes of what `plaintext` returned (rustls
    /// asserts that there are that many: `n` is at most that slice's length).
    pub fn consume(&mut self, n: usize) {
        self.tls.reader().consume(n);
    }

    /// Encrypts from the front of `bufs` into records (the one copy of the
    /// payload: rustls seals each record in place) and returns how many
    /// plaintext bytes it took: fewer than offered once 64 KiB of records
    /// wait for the socket.
    pub fn seal(&mut self, bufs: &[IoSlice]) -> io::Result<usize> {
        self.tls.writer().write_vectored(bufs)
    }

    /// Sends the sealed records, by writev(2); `WouldBlock` if the socket
    /// fills first.
    pub fn send(&mut self, sock: &mut Stream) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Queues a close_notify, for `send`.
    pub fn close(&mut self) {
        self.tls.send_close_notify();
    }

    /// What was negotiated, as "TLSv1_3 TLS13_AES_256_GCM_SHA384".
    pub fn describe(&self) -> String {
        match (
            self.tls.protocol_version(),
            self.tls.negotiated_cipher_suite(),
        ) {
            (Some(v), Some(s)) => format!("{v:?} {:?}", s.suite()),
            _ => "TLS".into(),
        }
    }
}
