//! An in-process rustls client facing a `tls::Stream` over a Unix socketpair,
//! both driven from one thread: for the library's TLS tests and the idle-memory
//! measurement (`tests/measure.rs`, `tls_idle_memory`), which include this file
//! with `#[path]`; and `Blocking`, the TLS step of the raw NBD client against a
//! running server. Every loop here is bounded (socket timeouts bound `Blocking`).
#![allow(dead_code)]

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use nbdlite::tls::Stream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion};

/// A client trusting `dir/ca-cert.pem`, offering `versions`, and showing
/// `auth/client-cert.pem` when `auth` is given.
pub fn client_config(
    dir: &Path,
    auth: Option<&Path>,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca-cert.pem")).expect("read CA") {
        roots.add(c.expect("parse CA")).expect("add CA");
    }
    // The provider the crate features name (ring), as a client built
    // without nbdlite would get it.
    let b = ClientConfig::builder_with_protocol_versions(versions).with_root_certificates(roots);
    let cfg = match auth {
        None => b.with_no_client_auth(),
        Some(a) => {
            let chain = CertificateDer::pem_file_iter(a.join("client-cert.pem"))
                .expect("read client cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("parse client cert");
            let key = PrivateKeyDer::from_pem_file(a.join("client-key.pem")).expect("client key");
            b.with_client_auth_cert(chain, key).expect("client auth")
        }
    };
    Arc::new(cfg)
}

/// Both ends of one connection.
pub struct Pair {
    pub client: ClientConnection,
    pub csock: UnixStream,
    pub server: Stream,
    pub ssock: UnixStream,
}

impl Pair {
    /// Starts a connection whose ClientHello reaches the server as `early`
    /// bytes, as when a client pipelines it behind STARTTLS.
    pub fn start(server: Arc<rustls::ServerConfig>, client: Arc<ClientConfig>) -> io::Result<Pair> {
        let (csock, ssock) = UnixStream::pair()?;
        csock.set_nonblocking(true)?;
        ssock.set_nonblocking(true)?;
        let name = ServerName::try_from("localhost").expect("a valid name");
        let mut client = ClientConnection::new(client, name).expect("client connection");
        client.set_buffer_limit(None);
        let mut hello = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut hello)?;
        }
        let server = Stream::new(server, &hello)?;
        Ok(Pair {
            client,
            csock,
            server,
            ssock,
        })
    }

    /// Moves bytes both ways until both sides are done with the handshake.
    /// The server's error, if it fails; else the client's.
    pub fn handshake(&mut self) -> io::Result<()> {
        for _ in 0..100 {
            if !self.client.is_handshaking()
                && !self.server.is_handshaking()
                && !self.server.wants_write()
            {
                return Ok(());
            }
            self.turn()?;
        }
        Err(io::Error::other("handshake did not finish in 100 turns"))
    }

    /// One turn: server sends, client reads and answers, server reads.
    pub fn turn(&mut self) -> io::Result<()> {
        would_block_ok(self.server.flush(self.ssock.as_fd()))?;
        let mut data = Vec::new();
        let client_result = self.client_io(&mut data);
        assert!(data.is_empty(), "application data during the handshake");
        let mut buf = [0u8; 1024];
        match self.server.read(self.ssock.as_fd(), &mut buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => panic!("{n} bytes of application data during the handshake"),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        client_result
    }

    /// The client reads what the server sent, keeps the plaintext in `sink`,
    /// and writes what it wants to.
    fn client_io(&mut self, sink: &mut Vec<u8>) -> io::Result<()> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.client.read_tls(&mut self.csock) {
                Ok(0) => break,
                Ok(_) => {
                    let r = self.client.process_new_packets();
                    self.client_flush()?;
                    r.map_err(io::Error::other)?;
                    loop {
                        match self.client.reader().read(&mut buf) {
                            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                            Ok(n) => sink.extend_from_slice(&buf[..n]),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        self.client_flush()
    }

    fn client_flush(&mut self) -> io::Result<()> {
        while self.client.wants_write() {
            match self.client.write_tls(&mut self.csock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The client sends `data`; the server reads it all back.
    pub fn client_to_server(&mut self, data: &[u8]) -> Vec<u8> {
        self.client.writer().write_all(data).expect("client write");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..100_000 {
            if got.len() == data.len() {
                break;
            }
            self.client_flush().expect("client flush");
            match self.server.read(self.ssock.as_fd(), &mut buf) {
                Ok(0) => panic!("EOF after {} bytes", got.len()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("server read: {e}"),
            }
        }
        got
    }

    /// The server sends `parts` with vectored writes; the client reads it all.
    pub fn server_to_client(&mut self, parts: &[&[u8]]) -> Vec<u8> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let (mut part, mut off, mut got) = (0, 0, Vec::new());
        for _ in 0..100_000 {
            if got.len() == total {
                break;
            }
            if part < parts.len() {
                let mut slices = vec![IoSlice::new(&parts[part][off..])];
                slices.extend(parts[part + 1..].iter().map(|p| IoSlice::new(p)));
                match self.server.write(self.ssock.as_fd(), &slices) {
                    Ok(mut n) => {
                        while part < parts.len() && n >= parts[part].len() - off {
                            n -= parts[part].len() - off;
                            (part, off) = (part + 1, 0);
                        }
                        off += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("server write: {e}"),
                }
            } else {
                would_block_ok(self.server.flush(self.ssock.as_fd())).expect("server flush");
            }
            self.client_io(&mut got).expect("client io");
        }
        got
    }
}

/// A client session over a blocking socket the caller owns and has given read
/// and write timeouts: what the raw NBD client (`common/wire.rs`) speaks after
/// STARTTLS.
pub struct Blocking {
    pub conn: ClientConnection,
}

impl Blocking {
    /// A session for "localhost" (the name in the test server certificate).
    pub fn new(cfg: Arc<ClientConfig>) -> Blocking {
        let name = ServerName::try_from("localhost").expect("a valid name");
        Blocking {
            conn: ClientConnection::new(cfg, name).expect("client connection"),
        }
    }

    /// The ClientHello, taken out for the caller to send itself (pipelined
    /// behind STARTTLS, in the same write).
    pub fn hello(&mut self) -> Vec<u8> {
        let mut hello = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut hello).expect("write to a Vec");
        }
        hello
    }

    /// Runs the handshake to its end over `s`; the error says why it failed
    /// (the server's alert, a timeout, EOF).
    pub fn handshake(&mut self, s: &mut UnixStream) -> io::Result<()> {
        for _ in 0..100 {
            if !self.conn.is_handshaking() {
                // Our Finished (TLS 1.3) may still be queued.
                while self.conn.wants_write() {
                    self.conn.write_tls(s)?;
                }
                return Ok(());
            }
            self.conn.complete_io(s)?;
        }
        Err(io::Error::other("handshake did not finish in 100 rounds"))
    }

    /// Sends all of `b`, encrypted.
    pub fn send(&mut self, s: &mut UnixStream, b: &[u8]) -> io::Result<()> {
        let mut stream = rustls::Stream::new(&mut self.conn, s);
        stream.write_all(b)?;
        stream.flush()
    }

    /// Decrypted bytes into `b`: `Ok(0)` after the server's close_notify, an
    /// `UnexpectedEof` error if the socket closed without one.
    pub fn recv(&mut self, s: &mut UnixStream, b: &mut [u8]) -> io::Result<usize> {
        rustls::Stream::new(&mut self.conn, s).read(b)
    }
}

/// A full socket is no error here: the data stays queued.
pub fn would_block_ok(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        r => r,
    }
}

/// Reads and drops what is waiting on `s`, so a test can watch for nothing more.
pub fn drain(s: &mut UnixStream) -> usize {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while let Ok(k) = s.read(&mut buf) {
        if k == 0 {
            break;
        }
        n += k;
    }
    n
}
