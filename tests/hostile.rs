//! Hostile input, one class at a time, against the running binary. After every
//! case the server is alive and a fresh client reads and writes correctly.
//!
//! Classes covered elsewhere, not repeated here:
//! - unknown client flags, bad option magic: wire_handshake `bad_client_flags_and_magic_drop_only_that_client`
//! - unknown options (small and 1 MiB of data): wire_handshake `unknown_options_and_tls`
//! - hanging up mid-option and before the greeting: wire_handshake `abort_and_vanishing_clients`
//! - bad request magic, hanging up mid-header and mid-payload, a compact WRITE over
//!   64 MiB (refused, payload skipped): wire_transmission `oversized_and_truncated_requests`
//! - an extended WRITE over 64 MiB (cannot be skipped safely: hang up):
//!   wire_transmission `extended_requests_with_64_bit_lengths`
//! - a compact header after extended headers and the reverse: wire_transmission
//!   `wrong_header_style_is_a_framing_error`
//! - reads over 64 MiB with simple and structured replies, unknown command 99:
//!   wire_transmission `errors_with_simple_replies`, `commands_with_structured_replies`
//! - hanging up mid-reply: lifecycle `a_client_that_vanishes_mid_reply_does_not_kill_the_server`
//! - never reading replies: wire_transmission `a_client_that_never_reads_does_not_stall_others`
//!
//! Requests up to 64 MiB (nbdkit's limit) are served although 32 MiB is the
//! advertised maximum; only larger ones are refused.

mod common;
#[path = "common/pipeline.rs"]
mod pipeline;
#[path = "common/wire.rs"]
mod wire;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{Server, rss_kib};
use pipeline::{Batch, Inbox, Style};
use wire::*;

const SIZE: u64 = 1 << 20;

#[track_caller]
fn alive_and_serving(srv: &mut Server) {
    assert!(srv.alive(), "the server died: {}", srv.log_text());
    still_serves(&srv.sock);
}

/// Wrong greeting: bytes of other protocols where the client flags belong.
#[test]
fn wrong_greeting_other_protocols() {
    let mut srv = Server::start(&["memory", "1M"]);
    for (class, bytes) in [
        ("http", &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]),
        (
            "tls_client_hello",
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00][..],
        ),
        ("ssh", &b"SSH-2.0-OpenSSH_9.6\r\n"[..]),
        ("all_ones", &[0xff; 64][..]),
    ] {
        let mut c = Client::connect(&srv.sock);
        c.send_lossy(bytes);
        assert!(c.closed_by_peer(5), "{class}: still connected");
        alive_and_serving(&mut srv);
    }
}

/// Option data an option cannot need is answered from the header alone: none of
/// it is buffered, so a 4 GiB length costs nothing.
#[test]
fn option_length_beyond_what_the_option_needs() {
    let mut srv = Server::start(&["memory", "1M"]);
    let base = rss_kib(srv.pid());
    // (class, option, length, reply; None: the server must hang up)
    let table: &[(&str, u32, u32, Option<u32>)] = &[
        ("list_4gib", OPT_LIST, u32::MAX, Some(ERR_INVALID)),
        ("starttls_4gib", OPT_STARTTLS, u32::MAX, Some(ERR_INVALID)),
        ("structured_reply_4gib", OPT_SR, u32::MAX, Some(ERR_INVALID)),
        ("extended_headers_4gib", OPT_EH, u32::MAX, Some(ERR_INVALID)),
        ("info_4gib", OPT_INFO, u32::MAX, Some(ERR_TOO_BIG)),
        ("go_over_a_name", OPT_GO, 4097 + 6 + 200, Some(ERR_TOO_BIG)),
        ("list_meta_4gib", OPT_LIST_META, u32::MAX, Some(ERR_TOO_BIG)),
        ("set_meta_4gib", OPT_SET_META, u32::MAX, Some(ERR_TOO_BIG)),
        ("unknown_4gib", 0x7777, u32::MAX, Some(ERR_UNSUP)),
        ("abort_4gib", OPT_ABORT, u32::MAX, Some(REP_ACK)),
        ("export_name_over_4096", OPT_EXPORT_NAME, 4097, None),
        ("export_name_4gib", OPT_EXPORT_NAME, u32::MAX, None),
    ];
    for &(class, opt, len, reply) in table {
        // 20 clients per class, each leaving with the data unsent.
        for _ in 0..20 {
            let mut c = Client::start(&srv.sock);
            c.send(&option_header(opt, len));
            match reply {
                Some(kind) => {
                    let r = c.recv_opt_reply();
                    assert_eq!((r.opt, r.kind), (opt, kind), "{class}");
                }
                None => assert!(c.closed_by_peer(5), "{class}: not dropped"),
            }
        }
        alive_and_serving(&mut srv);
    }
    let rss = rss_kib(srv.pid());
    assert!(rss < base + 8192, "RSS {base} -> {rss} KiB");
    // A client that sends the data after all is read past, and goes on.
    let mut c = Client::start(&srv.sock);
    for opt in [OPT_LIST, OPT_GO, 0x7777] {
        c.send_opt(opt, &vec![0xa5; 100_000]);
        assert!(c.recv_opt_reply().kind & 0x8000_0000 != 0);
    }
    c.go(b"");
    assert_eq!(c.write(0, b"after"), 0);
}

/// A client that hangs up while the server is throwing its option data away.
#[test]
fn hang_up_mid_skipped_option_data() {
    let mut srv = Server::start(&["memory", "1M"]);
    let mut c = Client::start(&srv.sock);
    c.send_opt(OPT_LIST, &[]);
    c.send(&option_header(0x9999, 1 << 30));
    c.send(&vec![0; 300_000]);
    drop(c);
    alive_and_serving(&mut srv);
}

/// Flags a command does not take, and bits no command has: EINVAL, and the
/// connection goes on (a WRITE's payload is still read past).
#[test]
fn unknown_command_flags() {
    let mut srv = Server::start(&["memory", "1M"]);
    let (mut c, _, _) = Client::ready(&srv.sock, true, false, true);
    let table: &[(&str, u16, u16)] = &[
        ("read_req_one", CMD_READ, F_REQ_ONE),
        ("read_no_hole", CMD_READ, F_NO_HOLE),
        ("read_fast_zero", CMD_READ, F_FAST_ZERO),
        ("write_df", CMD_WRITE, F_DF),
        ("write_no_hole", CMD_WRITE, F_NO_HOLE),
        ("write_payload_len_without_eh", CMD_WRITE, F_PAYLOAD_LEN),
        ("trim_df", CMD_TRIM, F_DF),
        ("trim_fast_zero", CMD_TRIM, F_FAST_ZERO),
        ("zero_df", CMD_ZERO, F_DF),
        ("zero_req_one", CMD_ZERO, F_REQ_ONE),
        ("flush_no_hole", CMD_FLUSH, F_NO_HOLE),
        ("cache_req_one", CMD_CACHE, F_REQ_ONE),
        ("block_status_df", CMD_BLOCK_STATUS, F_DF),
        ("block_status_fast_zero", CMD_BLOCK_STATUS, F_FAST_ZERO),
        ("read_bit_6", CMD_READ, 0x40),
        ("write_bit_15", CMD_WRITE, 0x8000),
        ("flush_all_bits", CMD_FLUSH, 0xffff),
    ];
    for (i, &(class, kind, flags)) in table.iter().enumerate() {
        let payload: &[u8] = if kind == CMD_WRITE { b"abcd" } else { &[] };
        c.request(flags, kind, 100 + i as u64, 0, 4, payload);
        let rs = c.replies(None);
        let r = rs.last().unwrap();
        assert_eq!((r.cookie, r.errno()), (100 + i as u64, EINVAL), "{class}");
    }
    assert_eq!(c.read(0, 0, 4).unwrap(), [0; 4], "no write took effect");
    alive_and_serving(&mut srv);
}

/// Unknown commands: EINVAL; with extended headers and PAYLOAD_LEN the server
/// knows how much to read past, and does.
#[test]
fn unknown_commands() {
    let mut srv = Server::start(&["memory", "1M"]);
    for (sr, eh) in [(false, false), (true, false), (false, true)] {
        let (mut c, _, _) = Client::ready(&srv.sock, sr, eh, false);
        for kind in [8u16, 9, 0x100, 0xffff] {
            assert_eq!(c.cmd(0, kind, 0, 512), EINVAL, "command {kind}");
        }
        if eh {
            c.request(F_PAYLOAD_LEN, 0x42, 1, 0, 5, b"12345");
            assert_eq!(c.reply(None).errno(), EINVAL);
        }
        assert_eq!(c.write(0, b"ok"), 0);
    }
    alive_and_serving(&mut srv);
}

/// Every ranged command past the end, with length 0, and with an offset whose
/// sum with the length overflows 64 bits, in every reply style.
#[test]
fn ranges_past_the_end_empty_and_overflowing() {
    let mut srv = Server::start(&["memory", "1M"]);
    // (class, command, offset, length, errno)
    let table: &[(&str, u16, u64, u64, u32)] = &[
        ("read_past_end", CMD_READ, SIZE - 1, 2, EINVAL),
        ("write_past_end", CMD_WRITE, SIZE - 1, 2, ENOSPC),
        ("trim_past_end", CMD_TRIM, SIZE, 1, EINVAL),
        ("zero_past_end", CMD_ZERO, SIZE - 4, 8, ENOSPC),
        ("block_status_past_end", CMD_BLOCK_STATUS, SIZE, 1, EINVAL),
        ("read_beyond_end_empty", CMD_READ, SIZE + 1, 0, EINVAL),
        ("read_empty", CMD_READ, 0, 0, 0),
        ("write_empty", CMD_WRITE, 0, 0, 0),
        ("trim_empty", CMD_TRIM, 0, 0, 0),
        ("zero_empty", CMD_ZERO, 0, 0, 0),
        ("block_status_empty", CMD_BLOCK_STATUS, 0, 0, EINVAL),
        ("read_overflow", CMD_READ, u64::MAX - 3, 10, EINVAL),
        ("write_overflow", CMD_WRITE, u64::MAX - 3, 10, ENOSPC),
        ("trim_overflow", CMD_TRIM, u64::MAX - 3, 10, EINVAL),
        ("zero_overflow", CMD_ZERO, u64::MAX - 3, 10, ENOSPC),
        (
            "block_status_overflow",
            CMD_BLOCK_STATUS,
            u64::MAX - 3,
            10,
            EINVAL,
        ),
        ("cache_overflow", CMD_CACHE, u64::MAX, 1, EINVAL),
    ];
    for (style, sr, eh) in [
        ("simple", false, false),
        ("structured", true, false),
        ("extended", false, true),
    ] {
        let (mut c, _, _) = Client::ready(&srv.sock, sr, eh, sr || eh);
        for &(class, kind, offset, len, errno) in table {
            if kind == CMD_BLOCK_STATUS && !(sr || eh) {
                continue; // needs a metadata context
            }
            let payload = if kind == CMD_WRITE {
                vec![0x77; len as usize]
            } else {
                Vec::new()
            };
            let flags = if kind == CMD_WRITE && eh {
                F_PAYLOAD_LEN
            } else {
                0
            };
            c.request(flags, kind, 5, offset, len, &payload);
            let got = if kind == CMD_READ && !sr && !eh {
                c.reply(Some(len as usize)).errno()
            } else {
                let rs = c.replies(None);
                rs.iter().map(Reply::errno).find(|&e| e != 0).unwrap_or(0)
            };
            assert_eq!(got, errno, "{style}: {class}");
        }
        assert_eq!(
            c.read(0, SIZE - 4, 4).unwrap(),
            [0; 4],
            "{style}: nothing written"
        );
    }
    alive_and_serving(&mut srv);
}

/// Requests over the advertised 32 MiB: served up to 64 MiB; reads beyond are
/// refused with an error and the connection goes on, also with 64-bit lengths.
#[test]
fn requests_over_32_mib() {
    let mut srv = Server::start(&["memory", "8G"]);
    let (mut c, _, _) = Client::ready(&srv.sock, false, true, true);
    let n = (33 << 20) as usize;
    assert_eq!(c.read(0, 0, n).map(|d| d.len()), Ok(n), "33 MiB is served");
    for len in [(64 << 20) + 1, 1 << 32, 1 << 33] {
        c.request(0, CMD_READ, 3, 0, len, &[]);
        let r = c.reply(None);
        assert!(r.done() && r.errno() != 0, "READ of {len}: {r:?}");
    }
    // Commands without a payload may cover more: they cost no buffer.
    assert_eq!(c.cmd(0, CMD_ZERO, 0, 1 << 32), 0);
    assert_eq!(c.cmd(0, CMD_CACHE, 0, 1 << 32), 0);
    assert_eq!(c.write(0, b"ok"), 0);
    alive_and_serving(&mut srv);
}

/// Minimal NBD over TCP: greeting, flags, GO with the default export.
fn tcp_client(port: u16) -> TcpStream {
    pipeline::tcp(port, Style::Simple)
}

/// Closes with replies still unread in the socket's receive queue: the kernel
/// then answers with a reset instead of a FIN (RFC 2525), as SO_LINGER 0 would.
fn reset(s: TcpStream) {
    drop(s);
}

/// The server still answers a fresh client over TCP.
#[track_caller]
fn alive_and_serving_tcp(srv: &mut Server) {
    assert!(srv.alive(), "the server died: {}", srv.log_text());
    let mut s = tcp_client(srv.tcp_port());
    let mut b = Batch::new(Style::Simple);
    b.cmd(0, CMD_READ, 1, 0, 512);
    s.write_all(&b.bytes).unwrap();
    let f = Inbox::new(Style::Simple, &b.sent).next(&mut s);
    assert_eq!(f.errno, 0, "READ reply");
}

/// A client that resets the connection while 100 replies are queued for it.
#[test]
fn reset_with_a_hundred_replies_queued() {
    let mut srv = Server::start_tcp(&["-v", "memory", "64M"]);
    for len in [512u64, 1 << 20] {
        let mut s = tcp_client(srv.tcp_port());
        s.write_all(&read_batch(100, len, 64 << 20)).unwrap();
        // The first reply is back: the rest are queued or on their way.
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        reset(s);
        alive_and_serving_tcp(&mut srv);
    }
    // Each reset is met as an error on that connection alone.
    common::wait_until(10, "both resets to be seen", || {
        srv.log_text().matches("reset by peer").count() >= 2
    });
    alive_and_serving_tcp(&mut srv);
}
