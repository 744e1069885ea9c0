//! The handshake byte by byte, with a raw client: what real clients send, and
//! what they never would. After each abuse a well-behaved client is still served.

mod common;
#[path = "common/wire.rs"]
mod wire;

use common::Server;
use wire::*;

/// A fresh client can still negotiate, write and read.
#[test]
fn greeting_and_export_name() {
    let srv = Server::start(&["memory", "1M"]);
    // NO_ZEROES agreed: 10 bytes.
    let mut c = Client::start(&srv.sock);
    c.send_opt(OPT_EXPORT_NAME, b"");
    let r = c.recv(10);
    assert_eq!(u64_at(&r, 0), 1 << 20);
    assert_eq!(u16_at(&r, 8) & 1, 1, "HAS_FLAGS");
    c.request(0, CMD_READ, 5, 0, 512, &[]);
    assert_eq!(c.reply(Some(512)).error, 0);
    // Without NO_ZEROES: 134 bytes, the last 124 zero.
    let mut c = Client::connect(&srv.sock);
    c.send(&client_flags(1));
    c.send_opt(OPT_EXPORT_NAME, b"");
    let r = c.recv(134);
    assert!(r[10..].iter().all(|&b| b == 0));
    c.request(0, CMD_FLUSH, 6, 0, 0, &[]);
    assert_eq!(c.reply(None).error, 0);
    // A client that never set FIXED_NEWSTYLE is still served.
    let mut c = Client::connect(&srv.sock);
    c.send(&client_flags(0));
    c.send_opt(OPT_EXPORT_NAME, b"");
    c.recv(134);
}

/// `--mask-handshake` (nbdkit's, for testing clients against older servers):
/// the greeting offers only the flags the mask keeps, a client may set no
/// other, and without FIXED_NEWSTYLE only EXPORT_NAME is served.
#[test]
fn mask_handshake_offers_fewer_flags() {
    let greeting = |srv: &Server| {
        let mut c = Client::connect_raw(&srv.sock);
        let g = c.recv(18);
        assert_eq!((u64_at(&g, 0), u64_at(&g, 8)), (NBDMAGIC, IHAVEOPT));
        (c, u16_at(&g, 16))
    };
    // Bit 1 kept, bit 0 cleared: an old (not fixed) newstyle server.
    let srv = Server::start(&["--mask-handshake=2", "memory", "1M"]);
    let (mut c, flags) = greeting(&srv);
    assert_eq!(flags, 2, "NO_ZEROES only");
    c.send(&1u32.to_be_bytes()); // FIXED_NEWSTYLE, which was not offered
    assert!(c.closed_by_peer(5));
    let (mut c, _) = greeting(&srv);
    c.send(&2u32.to_be_bytes());
    for opt in [OPT_LIST, OPT_GO, OPT_STARTTLS, OPT_SR] {
        assert_eq!(c.opt(opt, &[])[0].kind, ERR_INVALID, "{opt}");
    }
    c.send_opt(OPT_EXPORT_NAME, b"any");
    assert_eq!(u64_at(&c.recv(10), 0), 1 << 20);
    c.request(0, CMD_READ, 1, 0, 512, &[]);
    assert_eq!(c.reply(Some(512)).error, 0);
    // Nothing offered: the 124 zeroes follow EXPORT_NAME's reply.
    let srv = Server::start(&["--mask-handshake", "0", "memory", "1M"]);
    let (mut c, flags) = greeting(&srv);
    assert_eq!(flags, 0);
    c.send(&0u32.to_be_bytes());
    c.send_opt(OPT_EXPORT_NAME, b"");
    let r = c.recv(134);
    assert!(r[10..].iter().all(|&b| b == 0));
    c.request(0, CMD_FLUSH, 2, 0, 0, &[]);
    assert_eq!(c.reply(None).error, 0);
}

#[test]
fn bad_client_flags_and_magic_drop_only_that_client() {
    let srv = Server::start(&["memory", "1M"]);
    let mut c = Client::connect(&srv.sock);
    c.send(&client_flags(4));
    assert!(c.closed_by_peer(5));
    let mut c = Client::start(&srv.sock);
    c.send(b"NOTMAGIC\0\0\0\x07\0\0\0\0");
    assert!(c.closed_by_peer(5));
    still_serves(&srv.sock);
    assert!(
        srv.log_text().contains("disconnecting"),
        "a log line per dropped client"
    );
}

#[test]
fn unknown_options_and_tls() {
    let srv = Server::start(&["memory", "1M"]);
    let mut c = Client::start(&srv.sock);
    assert_eq!(c.opt(4, &[])[0].kind, ERR_UNSUP); // PEEK_EXPORT, withdrawn
    assert_eq!(c.opt(0xdead, b"some data")[0].kind, ERR_UNSUP);
    assert_eq!(c.opt(OPT_STARTTLS, &[])[0].kind, ERR_POLICY);
    assert_eq!(c.opt(OPT_STARTTLS, b"x")[0].kind, ERR_INVALID);
    // Oversized data for an unknown option: refused, skipped, and on we go.
    c.send_opt(0xbeef, &vec![0x55; 1 << 20]);
    assert_eq!(c.recv_opt_reply().kind, ERR_UNSUP);
    // Data for an option that takes none: refused, skipped.
    c.send_opt(OPT_LIST, &vec![0; 100_000]);
    assert_eq!(c.recv_opt_reply().kind, ERR_INVALID);
    // Oversized data for an option that takes some.
    c.send_opt(OPT_INFO, &vec![0; 100_000]);
    assert_eq!(c.recv_opt_reply().kind, ERR_TOO_BIG);
    let (size, _) = c.go(b"");
    assert_eq!(size, 1 << 20);
    assert_eq!(c.write(0, b"x"), 0);
}

#[test]
fn list_info_go_items() {
    let srv = Server::start(&["-e", "disk", "--description", "a test disk", "memory", "2M"]);
    let mut c = Client::start(&srv.sock);
    let r = c.opt(OPT_LIST, &[]);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].kind, REP_SERVER);
    let n = u32_at(&r[0].data, 0) as usize;
    assert_eq!(&r[0].data[4..4 + n], b"disk");
    assert_eq!(&r[0].data[4 + n..], b"a test disk");
    assert_eq!(c.opt(OPT_LIST, b"junk")[0].kind, ERR_INVALID);
    // INFO with every item, by the canonical name and by the default name.
    for name in [&b"disk"[..], b""] {
        let r = c.opt(OPT_INFO, &info_data(name, &[1, 2, 3]));
        assert_eq!(r.last().unwrap().kind, REP_ACK);
        let item = |t: u16| {
            r.iter()
                .find(|r| r.kind == REP_INFO && info_type(r) == t)
                .cloned()
        };
        let export = item(0).expect("NBD_INFO_EXPORT");
        assert_eq!(u64_at(&export.data, 2), 2 << 20);
        assert_eq!(&item(1).expect("NAME").data[2..], b"disk");
        assert_eq!(&item(2).expect("DESCRIPTION").data[2..], b"a test disk");
        let bs = item(3).expect("BLOCK_SIZE").data;
        assert_eq!(
            (u32_at(&bs, 2), u32_at(&bs, 6), u32_at(&bs, 10)),
            (1, 4096, 32 << 20)
        );
    }
    // Any name reaches the one export, as with nbdkit's plugins; a name
    // longer than the spec's 4096 bytes does not.
    let r = c.opt(OPT_INFO, &info_data(b"other", &[]));
    assert_eq!(r.last().unwrap().kind, REP_ACK);
    assert_eq!(u64_at(&r[0].data, 2), 2 << 20);
    assert_eq!(
        c.opt(OPT_INFO, &info_data(&[b'x'; 4097], &[]))[0].kind,
        ERR_INVALID
    );
    assert_eq!(c.opt(OPT_INFO, b"\0\0\0\x09ab")[0].kind, ERR_INVALID);
    assert_eq!(
        c.opt(OPT_GO, &info_data(b"disk", &[3]))
            .last()
            .unwrap()
            .kind,
        REP_ACK
    );
    // EXPORT_NAME with any name: the export. Over 4096 bytes: nothing to
    // reply with, so the server hangs up.
    let mut c = Client::start(&srv.sock);
    c.send_opt(OPT_EXPORT_NAME, b"nope");
    assert_eq!(u64_at(&c.recv(10), 0), 2 << 20);
    let mut c = Client::start(&srv.sock);
    c.send_opt(OPT_EXPORT_NAME, &[b'x'; 4097]);
    assert!(c.closed_by_peer(5));
}

#[test]
fn abort_and_vanishing_clients() {
    let srv = Server::start(&["memory", "1M"]);
    let mut c = Client::start(&srv.sock);
    let r = c.opt(wire::OPT_ABORT, &[]);
    assert_eq!(r[0].kind, REP_ACK);
    assert!(c.closed_by_peer(5));
    // Half an option header, then gone; half an option body, then gone.
    let mut c = Client::start(&srv.sock);
    c.send(&IHAVEOPT.to_be_bytes());
    drop(c);
    let mut c = Client::start(&srv.sock);
    let mut v = option_header(OPT_GO, 100).to_vec();
    v.extend_from_slice(&[0; 10]);
    c.send(&v);
    drop(c);
    // Connect and vanish before reading the greeting.
    drop(Client::connect_raw(&srv.sock));
    still_serves(&srv.sock);
}

#[test]
fn too_many_options() {
    let srv = Server::start(&["memory", "1M"]);
    let mut c = Client::start(&srv.sock);
    for _ in 0..32 {
        assert_eq!(c.opt(0x1234, &[])[0].kind, ERR_UNSUP);
    }
    c.send_opt(0x1234, &[]);
    assert!(c.closed_by_peer(5));
    still_serves(&srv.sock);
}

#[test]
fn structured_replies_and_meta_contexts() {
    let srv = Server::start(&["memory", "1M"]);
    let mut c = Client::start(&srv.sock);
    let set = meta_data(b"", &[b"base:allocation"]);
    assert_eq!(
        c.opt(OPT_SET_META, &set)[0].kind,
        ERR_INVALID,
        "SET before SR"
    );
    assert_eq!(c.opt(OPT_SR, b"x")[0].kind, ERR_INVALID);
    assert_eq!(c.opt(OPT_SR, &[])[0].kind, REP_ACK);
    assert_eq!(c.opt(OPT_SR, &[])[0].kind, ERR_INVALID, "repeated");
    // LIST: everything, the base: wildcard, unknown namespaces and leaves.
    let names = |r: &[OptReply]| -> Vec<Vec<u8>> {
        r.iter()
            .filter(|r| r.kind == REP_META)
            .map(|r| r.data[4..].to_vec())
            .collect()
    };
    let all = c.opt(OPT_LIST_META, &meta_data(b"", &[]));
    assert_eq!(names(&all), vec![b"base:allocation".to_vec()]);
    let wild = c.opt(OPT_LIST_META, &meta_data(b"", &[b"base:"]));
    assert_eq!(names(&wild), vec![b"base:allocation".to_vec()]);
    let none = c.opt(
        OPT_LIST_META,
        &meta_data(b"", &[b"base:nope", b"qemu:dirty-bitmap:x", b"x-y:z"]),
    );
    assert_eq!(none.len(), 1);
    assert_eq!(none[0].kind, REP_ACK);
    // Any export name is this export's (over 4096 bytes: malformed).
    assert_eq!(
        c.opt(OPT_LIST_META, &meta_data(b"nope", &[]))[0].kind,
        REP_META
    );
    assert_eq!(
        c.opt(OPT_LIST_META, &meta_data(&[b'x'; 4097], &[]))[0].kind,
        ERR_INVALID
    );
    let mut bad = meta_data(b"", &[b"base:allocation"]);
    bad[11] = 0xff; // query length runs past the option
    assert_eq!(c.opt(OPT_LIST_META, &bad)[0].kind, ERR_INVALID);
    assert_eq!(c.opt(OPT_SET_META, &bad)[0].kind, ERR_INVALID);
    // SET with the bare wildcard selects nothing.
    assert_eq!(c.opt(OPT_SET_META, &meta_data(b"", &[b"base:"])).len(), 1);
    let r = c.opt(OPT_SET_META, &set);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].kind, REP_META);
    assert_eq!(&r[0].data[4..], b"base:allocation");
    let (_, flags) = c.go(b"");
    assert_ne!(flags & 0x80, 0, "DF with structured replies");
    c.structured = true;
    c.request(0, CMD_BLOCK_STATUS, 3, 0, 4096, &[]);
    let r = c.replies(None);
    assert_eq!(r[0].kind, T_BS);
    assert_eq!(descriptors(&r[0])[0], (1 << 20, 3));
}

#[test]
fn contexts_belong_to_the_export_name() {
    let srv = Server::start(&["-e", "disk", "memory", "1M"]);
    let mut c = Client::start(&srv.sock);
    assert_eq!(c.opt(OPT_SR, &[])[0].kind, REP_ACK);
    c.structured = true;
    c.opt(OPT_SET_META, &meta_data(b"disk", &[b"base:allocation"]));
    c.go(b""); // another name for the same export: the selection does not carry over
    assert_eq!(c.cmd(0, CMD_BLOCK_STATUS, 0, 512), EINVAL);
}

#[test]
fn extended_headers_negotiation() {
    let srv = Server::start(&["memory", "1M"]);
    let mut c = Client::start(&srv.sock);
    assert_eq!(c.opt(OPT_EH, b"x")[0].kind, ERR_INVALID);
    assert_eq!(c.opt(OPT_EH, &[])[0].kind, REP_ACK);
    assert_eq!(c.opt(OPT_EH, &[])[0].kind, ERR_INVALID, "repeated");
    assert_eq!(c.opt(OPT_SR, &[])[0].kind, ERR_EXT_HEADER_REQD);
    c.send_opt(OPT_EXPORT_NAME, b"");
    assert!(
        c.closed_by_peer(5),
        "EXPORT_NAME is banned after extended headers"
    );
    // With --no-sr neither is offered.
    let srv = Server::start(&["--no-sr", "memory", "1M"]);
    let mut c = Client::start(&srv.sock);
    assert_eq!(c.opt(OPT_EH, &[])[0].kind, ERR_UNSUP);
    assert_eq!(c.opt(OPT_SR, &[])[0].kind, ERR_UNSUP);
    let (_, flags) = c.go(b"");
    assert_eq!(flags & 0x80, 0, "no DF without structured replies");
}

#[test]
fn oldstyle() {
    let srv = Server::start(&["-o", "memory", "1M"]);
    let mut c = Client::connect_raw(&srv.sock);
    let g = c.recv(152);
    assert_eq!(u64_at(&g, 0), NBDMAGIC);
    assert_eq!(u64_at(&g, 8), 0x0000_4202_8186_1253);
    assert_eq!(u64_at(&g, 16), 1 << 20);
    assert_eq!(u32_at(&g, 24) & 1, 1);
    assert!(g[28..].iter().all(|&b| b == 0));
    assert_eq!(c.write(4096, b"old"), 0);
    assert_eq!(c.read(0, 4096, 3).unwrap(), b"old");
}

#[test]
fn shutdown_answers_options_with_err_shutdown() {
    let srv = Server::start(&["-v", "memory", "1M"]);
    let mut hs = Client::start(&srv.sock);
    assert_eq!(hs.opt(OPT_LIST, &[]).last().unwrap().kind, REP_ACK);
    srv.signal("TERM");
    common::wait_until(10, "the server to take the signal", || {
        srv.log_text().contains("shutting down")
    });
    // The next option gets ERR_SHUTDOWN; ABORT is still acknowledged.
    let r = hs.opt(OPT_GO, &info_data(b"", &[]));
    assert_eq!(r.last().unwrap().kind, ERR_SHUTDOWN);
    assert_eq!(hs.opt(wire::OPT_ABORT, &[])[0].kind, REP_ACK);
    assert!(hs.closed_by_peer(5));
    let mut srv = srv;
    let st = common::wait_exit(&mut srv.child, 10).expect("exits after the last client");
    assert!(st.success());
    assert!(!srv.sock.exists() && srv.pidfile.exists());
}
