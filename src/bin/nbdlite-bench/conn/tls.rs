//! A connection's reads and writes through its TLS session.

use std::io::{self, IoSlice, Read};
use std::time::Instant;

use nbdlite::error::plain;

use super::{Conn, IOV, TURN, gather};
use crate::record::Recorder;
use crate::tls::Session;
use crate::workload::Plan;

impl Conn {
    /// `on_readable` with TLS. Each read(2) of records is handled whole
    /// before the next (rustls keeps only a partial record), so the scratch
    /// buffer holds nothing of this connection's afterwards and the same early
    /// stop after a short read holds: nothing decrypted is left waiting. Never
    /// inlined, so that the plaintext path stays as compact as it was.
    #[inline(never)]
    pub(super) fn on_readable_tls(
        &mut self,
        scratch: &mut [u8],
        rec: &mut Recorder,
        plan: &Plan,
    ) -> Result<bool, String> {
        for _ in 0..TURN {
            let n = match self.stream.read(scratch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.fail(format_args!("reading: {}", plain(&e)))),
            };
            rec.now = Instant::now();
            // The session is taken out while replies are parsed where it
            // decrypted them, and put back whatever happened.
            let Some(mut tls) = self.tls.take() else {
                return Ok(false);
            };
            let closed = self.decrypt(&mut tls, &scratch[..n], rec, plan.size);
            self.tls = Some(tls);
            if closed? {
                return self.closed(rec);
            }
            if rec.issuing {
                self.fill(plan.size, rec.now);
            }
            self.flush(plan.payload)?;
            if n < scratch.len() && !self.hup {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Feeds `wire` to the session (empty: the server closed the socket) and
    /// handles every reply it decrypts, in place. True once the server has
    /// closed, with a close_notify or without one.
    fn decrypt(
        &mut self,
        tls: &mut Session,
        mut wire: &[u8],
        rec: &mut Recorder,
        size: u64,
    ) -> Result<bool, String> {
        let mut eof = wire.is_empty();
        loop {
            let fed = match tls.plaintext() {
                Ok(Some([])) => return Ok(true),
                Ok(Some(piece)) => {
                    let len = piece.len();
                    self.replies(piece, rec, size)?;
                    tls.consume(len);
                    continue;
                }
                Ok(None) if !wire.is_empty() || eof => {
                    eof = false;
                    tls.feed(&mut wire)
                }
                Ok(None) => return Ok(false),
                Err(e) => Err(e),
            };
            if let Err(e) = fed {
                return Err(self.fail(format_args!("reading: {}", plain(&e))));
            }
        }
    }

    /// `flush` with TLS: sends the records already sealed, then seals more
    /// requests, until done or the socket is full.
    #[inline(never)]
    pub(super) fn flush_tls(&mut self, payload: &[u8]) -> Result<(), String> {
        loop {
            let Some(tls) = self.tls.as_deref_mut() else {
                return Ok(());
            };
            match tls.send(&mut self.stream) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(self.fail(format_args!("writing: {}", plain(&e)))),
            }
            if self.out.is_empty() {
                return Ok(());
            }
            let mut iov = [IoSlice::new(&[]); IOV];
            let n = gather(&self.out, self.out_done, payload, &mut iov);
            match tls.seal(&iov[..n]) {
                // Nothing taken with every record sent: never loop for nothing.
                Ok(0) => return Ok(()),
                Ok(taken) => self.advance(taken),
                Err(e) => return Err(self.fail(format_args!("writing: {}", plain(&e)))),
            }
        }
    }
}

#[cfg(all(test, feature = "tls"))]
#[path = "../../../../tests/common/certs.rs"]
mod certs;
#[cfg(all(test, feature = "tls"))]
#[path = "../../../../tests/common/skipped.rs"]
mod skipped;

/// The TLS paths against a rustls server over a socketpair, driven by hand
/// from the test thread after the handshake: records cut anywhere, writes
/// larger than rustls's buffer, and the ways a server can close.
#[cfg(all(test, feature = "tls"))]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use nbdlite::client_proto::{CMD_WRITE, COMPACT_REQUEST_LEN as REQUEST_LEN};
    use nbdlite::proto::SIMPLE_REPLY_MAGIC;
    use nbdlite::tls::{TlsMode, TlsOptions};
    use rustls::ServerConnection;

    use super::certs;
    use crate::client::Link;
    use crate::conn::Conn;
    use crate::record::Recorder;
    use crate::stream::Stream;
    use crate::uri::TlsTarget;
    use crate::workload::Plan;
    use crate::workload::{Pattern, Workload};

    /// A private directory with the test certificates, removed on drop.
    struct Pki(PathBuf, certs::Certs);

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn pki(name: &str) -> Option<Pki> {
        let root = PathBuf::from(format!("/tmp/nbdlite-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let c = certs::make_or_skip(&root)?;
        Some(Pki(root, c))
    }

    /// A connection after the TLS handshake, and the server's end of it.
    fn pair(
        pki: &Pki,
        pattern: Pattern,
        size: u64,
        qd: usize,
    ) -> (Conn, ServerConnection, UnixStream) {
        let opts = TlsOptions {
            asked: Some(TlsMode::Require),
            certificates: Some(pki.1.dir.clone()),
            ..TlsOptions::default()
        };
        let server_cfg = nbdlite::tls::server_config(&opts).unwrap();
        let client = crate::tls::Client::new(&TlsTarget {
            hostname: "localhost".into(),
            certificates: Some(pki.1.dir.clone()),
        })
        .unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let mut stream = Stream::Unix(a);
        let (session, (server, b)) = std::thread::scope(|s| {
            let srv = s.spawn(move || {
                let mut server = ServerConnection::new(server_cfg).unwrap();
                let mut b = b;
                while server.is_handshaking() {
                    server.complete_io(&mut b).unwrap();
                }
                (server, b)
            });
            let session = client.handshake(&mut stream).unwrap();
            (session, srv.join().unwrap())
        });
        b.set_nonblocking(true).unwrap();
        let work = Workload::new(pattern, size, 1 << 30, 50, 1, 0, 1).unwrap();
        let link = Link {
            stream,
            tls: Some(Box::new(session)),
        };
        (Conn::new(0, link, work, qd).unwrap(), server, b)
    }

    /// Every plaintext byte the client sent so far, read on the server side.
    fn received(server: &mut ServerConnection, b: &mut UnixStream, into: &mut Vec<u8>) {
        loop {
            match server.read_tls(b) {
                Ok(0) => return,
                Ok(_) => {
                    server.process_new_packets().unwrap();
                    let _ = server.reader().read_to_end(into);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn plan(size: u64, payload: &[u8]) -> Plan<'_> {
        Plan {
            size,
            warmup: Duration::ZERO,
            run: Duration::from_secs(1),
            payload,
        }
    }

    #[test]
    fn replies_in_records_cut_anywhere() {
        let Some(pki) = pki("cut") else { return };
        for cut in [1, 5, 100, 4113, 5000, 100_000] {
            let (mut c, mut server, mut b) = pair(&pki, Pattern::RandRead, 4096, 3);
            c.fill(4096, Instant::now());
            c.flush(&[]).unwrap();
            let mut reqs = Vec::new();
            received(&mut server, &mut b, &mut reqs);
            assert_eq!(reqs.len(), 3 * REQUEST_LEN);
            // One reply per request, each split over two records.
            for r in reqs.chunks(REQUEST_LEN) {
                let mut h = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
                h.extend([0; 4]);
                h.extend(&r[8..16]);
                server.writer().write_all(&h).unwrap();
                server.writer().write_all(&[0xaa; 4096]).unwrap();
            }
            server.send_close_notify();
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            let mut rec = Recorder::new(Instant::now(), true);
            rec.issuing = false;
            let mut scratch = vec![0u8; 256 * 1024];
            let p = plan(4096, &[]);
            for chunk in wire.chunks(cut) {
                b.write_all(chunk).unwrap();
                assert!(!c.on_readable(&mut scratch, &mut rec, &p).unwrap());
            }
            assert_eq!(c.in_flight(), 0, "cut {cut}");
            assert_eq!((rec.stats.reads, rec.stats.bytes), (3, 3 * 4096));
            // The close_notify came last: a clean end with nothing in flight.
            drop(b);
            assert!(!c.on_readable(&mut scratch, &mut rec, &p).unwrap());
        }
    }

    #[test]
    fn writes_larger_than_the_record_buffer() {
        let Some(pki) = pki("writes") else { return };
        let size = 100_000u64;
        let (mut c, mut server, mut b) = pair(&pki, Pattern::Write, size, 4);
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        c.fill(size, Instant::now());
        let mut got = Vec::new();
        let want = 4 * (REQUEST_LEN + size as usize);
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < want {
            assert!(
                Instant::now() < deadline,
                "stuck at {} of {want}",
                got.len()
            );
            c.flush(&payload).unwrap();
            received(&mut server, &mut b, &mut got);
        }
        assert_eq!(got.len(), want);
        for req in got.chunks(REQUEST_LEN + size as usize) {
            assert_eq!(&req[6..8], &CMD_WRITE.to_be_bytes());
            assert!(req[REQUEST_LEN..] == payload[..], "payload intact");
        }
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let Some(pki) = pki("bad") else { return };
        let mut scratch = vec![0u8; 256 * 1024];
        let p = plan(4096, &[]);
        // The socket closes with requests in flight, no close_notify.
        let (mut c, mut server, mut b) = pair(&pki, Pattern::RandRead, 4096, 2);
        c.fill(4096, Instant::now());
        c.flush(&[]).unwrap();
        received(&mut server, &mut b, &mut Vec::new());
        drop(b);
        let mut rec = Recorder::new(Instant::now(), true);
        let e = c.on_readable(&mut scratch, &mut rec, &p).unwrap_err();
        assert!(e.contains("closed the connection with 2 request(s)"), "{e}");
        // A record that does not decrypt.
        let (mut c, _server, mut b) = pair(&pki, Pattern::RandRead, 4096, 2);
        b.write_all(&[23, 3, 3, 0, 40]).unwrap();
        b.write_all(&[0x55; 40]).unwrap();
        let e = c.on_readable(&mut scratch, &mut rec, &p).unwrap_err();
        assert!(e.starts_with("connection 0: reading: TLS: "), "{e}");
    }
}
