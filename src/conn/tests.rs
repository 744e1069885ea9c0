//! The connection's state machine, driven event by event over a socketpair:
//! what each event leads to (the `Step` the server gets back), and the bytes
//! the client sees.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use mio::Poll;

use super::event::Readiness;
use super::*;
use crate::backend::Memory;
use crate::client_proto::{client_flags, compact_request, info_data, option};
use crate::export::test_export;
use crate::lifecycle::Lifecycle;
use crate::notify::Notifier;
use crate::proto::*;
use crate::storage::Storage;

/// A connection on one end of a socketpair, the client on the other.
struct Rig {
    poll: Poll,
    sh: Shared,
    conn: Conn,
    client: UnixStream,
}

impl Rig {
    fn new(oldstyle: bool) -> Rig {
        let (ours, client) = UnixStream::pair().expect("socketpair");
        ours.set_nonblocking(true).expect("nonblocking");
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let ex = test_export(false, 1);
        let lifecycle = Lifecycle::new(None, false, Notifier::new(None));
        let backend = Box::new(Memory::new(ex.size));
        let storage = Storage::new(backend, ex, crate::filter::Stack::default());
        let mut sh = Shared::new(storage, lifecycle);
        let poll = Poll::new().expect("poll");
        let socket = Socket::new(OwnedFd::from(ours), None);
        let mut conn = Conn::new(3, 42, socket, oldstyle, &mut sh);
        let token = conn.origin().token();
        poll.registry()
            .register(&mut conn, token, mio::Interest::READABLE)
            .expect("register");
        Rig {
            poll,
            sh,
            conn,
            client,
        }
    }

    fn event(&mut self, ev: Event) -> Step {
        self.conn.handle(ev, &mut self.sh, self.poll.registry())
    }

    /// The client's bytes arrive, and the kernel says so.
    fn send(&mut self, bytes: &[u8]) -> Step {
        self.client.write_all(bytes).expect("client write");
        self.event(Event::Ready(Readiness {
            readable: true,
            writable: false,
            read_closed: false,
        }))
    }

    /// Exactly `n` bytes from the server.
    fn recv(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        self.client.read_exact(&mut b).expect("server bytes");
        b
    }

    /// Whatever the server sent that the client has not read (none: empty).
    fn pending(&mut self) -> Vec<u8> {
        self.client.set_nonblocking(true).expect("nonblocking");
        let mut b = vec![0; 1 << 16];
        let n = self.client.read(&mut b).unwrap_or(0);
        self.client.set_nonblocking(false).expect("blocking");
        b.truncate(n);
        b
    }

    /// Greeting, client flags and GO for the default export: in transmission.
    fn negotiate(&mut self) {
        assert_eq!(self.event(Event::Resume), Step::Wait);
        assert_eq!(&self.recv(8), b"NBDMAGIC");
        self.recv(10);
        let mut go = client_flags(CFLAG_FIXED_NEWSTYLE).to_vec();
        go.extend_from_slice(&option(OPT_GO, &info_data(b"", &[])));
        assert_eq!(self.send(&go), Step::Wait);
        assert!(!self.conn.negotiating());
        let replies = self.pending();
        assert!(!replies.is_empty(), "GO answered");
    }
}

/// A compact request without flags.
fn request(kind: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    compact_request(0, kind, cookie, offset, len)
}

#[test]
fn a_request_is_answered_in_the_turn_it_arrives() {
    let mut r = Rig::new(false);
    r.negotiate();
    assert_eq!(r.send(&request(CMD_READ, 9, 0, 512)), Step::Wait);
    let reply = r.recv(16 + 512);
    assert_eq!(be32(&reply), SIMPLE_REPLY_MAGIC);
    assert_eq!(be64(&reply[8..]), 9);
    assert_eq!(r.conn.half_sent_since(), None);
}

#[test]
fn oldstyle_serves_requests_at_once() {
    let mut r = Rig::new(true);
    assert_eq!(r.event(Event::Resume), Step::Wait);
    assert_eq!(r.recv(152).len(), 152);
    assert_eq!(r.send(&request(CMD_FLUSH, 1, 0, 0)), Step::Wait);
    assert_eq!(be32(&r.recv(16)[4..]), 0);
}

#[test]
fn a_half_sent_request_starts_the_clock_and_its_deadline_closes() {
    let mut r = Rig::new(false);
    r.negotiate();
    let req = request(CMD_READ, 1, 0, 1);
    assert_eq!(r.send(&req[..10]), Step::Wait);
    let since = r.conn.half_sent_since().expect("waiting for the rest");
    r.conn.set_stall_deadline(since + Duration::from_secs(30));
    assert!(r.conn.stalled(since + Duration::from_secs(30)));
    let after = Duration::from_secs(30);
    assert_eq!(r.event(Event::Stalled { after }), Step::Close);
}

#[test]
fn the_handshake_deadline_counts_only_while_negotiating() {
    let after = Duration::from_secs(10);
    let mut r = Rig::new(false);
    assert_eq!(r.event(Event::Resume), Step::Wait);
    assert_eq!(r.event(Event::Deadline { after }), Step::Close);
    let mut r = Rig::new(false);
    r.negotiate();
    assert_eq!(r.event(Event::Deadline { after }), Step::Wait);
    // and a stale half-sent deadline is ignored too
    assert_eq!(r.event(Event::Stalled { after }), Step::Wait);
}

#[test]
fn a_client_that_leaves_is_answered_first_then_closed() {
    let mut r = Rig::new(false);
    r.negotiate();
    r.client
        .write_all(&request(CMD_FLUSH, 5, 0, 0))
        .expect("write");
    r.client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let step = r.event(Event::Ready(Readiness {
        readable: true,
        writable: false,
        read_closed: true,
    }));
    assert_eq!(step, Step::Close);
    assert_eq!(be64(&r.recv(16)[8..]), 5, "the FLUSH was answered");
}

#[test]
fn disc_and_garbage_close() {
    let mut r = Rig::new(false);
    r.negotiate();
    assert_eq!(r.send(&request(CMD_DISC, 0, 0, 0)), Step::Close);
    let mut r = Rig::new(false);
    r.negotiate();
    assert_eq!(r.send(&[0xff; 28]), Step::Close);
}

#[test]
fn a_long_pipeline_yields_its_turn() {
    let mut r = Rig::new(false);
    r.negotiate();
    let burst: Vec<u8> = (0..TURN_REQUESTS as u64 + 10)
        .flat_map(|c| request(CMD_FLUSH, c, 0, 0))
        .collect();
    assert_eq!(r.send(&burst), Step::Yield);
    assert_eq!(r.event(Event::Resume), Step::Wait);
    assert_eq!(
        r.recv(16 * burst.len() / 28).len(),
        16 * (TURN_REQUESTS + 10)
    );
}

#[test]
fn the_server_closing_it_is_final() {
    let mut r = Rig::new(false);
    r.negotiate();
    assert_eq!(r.event(Event::Close), Step::Close);
}

#[test]
fn at_shutdown_an_idle_client_is_let_go() {
    let mut r = Rig::new(false);
    r.negotiate();
    r.sh.lifecycle.shut_down(0);
    r.sh.now += Duration::from_secs(1); // quiet for long enough
    assert_eq!(r.event(Event::Shutdown), Step::Close);
}

#[test]
fn at_shutdown_requests_already_sent_get_eshutdown() {
    let mut r = Rig::new(false);
    r.negotiate();
    r.client
        .write_all(&request(CMD_READ, 3, 0, 1))
        .expect("write");
    r.sh.lifecycle.shut_down(0);
    assert_eq!(r.event(Event::Shutdown), Step::Wait, "it owes us a DISC");
    assert_eq!(be32(&r.recv(16)[4..]), ESHUTDOWN);
}

#[test]
fn room_in_the_engine_is_asked_for_once() {
    let mut room = Room::Free;
    assert!(room.block(), "joins the queue");
    assert!(!room.block(), "already in it");
    room.share_back();
    assert_eq!(room, Room::Queued);
    assert!(!room.block(), "still in it");
    room = Room::Free; // the server's Room event
    room.share_back();
    assert_eq!(room, Room::Free);
}

#[test]
fn readiness_is_remembered_until_used_up() {
    use socket::ReadSide;
    let (a, _b) = UnixStream::pair().expect("socketpair");
    let mut s = Socket::new(OwnedFd::from(a), None);
    let seen = |readable, read_closed| Readiness {
        readable,
        writable: true,
        read_closed,
    };
    s.short_read(true);
    assert_eq!(s.read_side(), ReadSide::Drained);
    s.note(seen(true, false));
    assert_eq!(s.read_side(), ReadSide::Ready);
    s.note(seen(true, true));
    assert_eq!(s.read_side(), ReadSide::ToEnd);
    s.short_read(true);
    assert_eq!(s.read_side(), ReadSide::ToEnd, "a FIN was seen: read to 0");
    s.ended();
    s.note(seen(true, false));
    assert_eq!(s.read_side(), ReadSide::Ended);
    s.write_blocked();
    assert!(!s.writable());
    s.note(seen(false, false));
    assert!(s.writable());
}

#[test]
fn a_reply_the_socket_cannot_take_waits_for_writability() {
    let mut r = Rig::new(false);
    r.negotiate();
    let len = 1 << 20; // more than a socketpair's buffer
    assert_eq!(r.send(&request(CMD_READ, 8, 0, len)), Step::Wait);
    assert!(!r.conn.socket.writable(), "the socket filled up");
    // The client reads, the kernel reports writability, the rest goes out.
    let writable = Readiness {
        readable: false,
        writable: true,
        read_closed: false,
    };
    let mut got = 0;
    for _ in 0..10_000 {
        got += r.pending().len();
        if got == 16 + len as usize {
            break;
        }
        assert_eq!(r.event(Event::Ready(writable)), Step::Wait);
    }
    assert_eq!(got, 16 + len as usize);
    assert!(r.conn.socket.writable());
}
