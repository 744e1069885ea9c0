//! Requests byte by byte, with a raw client: every command, every error the
//! spec prescribes, extended headers with 64-bit lengths, and abusive clients.

mod common;
#[path = "common/wire.rs"]
mod wire;

use common::Server;
use wire::*;

#[test]
fn errors_with_simple_replies() {
    let srv = Server::start(&["memory", "1M"]);
    let (mut c, size, flags) = Client::ready(&srv.sock, false, false, false);
    assert_eq!(size, 1 << 20);
    assert_eq!(
        flags, 0xd6d,
        "memory export flags without structured replies"
    );
    assert_eq!(c.write(100, b"hello"), 0);
    assert_eq!(c.read(0, 98, 9).unwrap(), b"\0\0hello\0\0");
    assert_eq!(
        c.read(0, (1 << 20) - 1, 2),
        Err(EINVAL),
        "read past the end"
    );
    assert_eq!(c.write((1 << 20) - 1, b"ab"), ENOSPC, "write past the end");
    assert_eq!(c.cmd(0, CMD_TRIM, 1 << 20, 1), EINVAL);
    assert_eq!(c.cmd(0, CMD_ZERO, 1 << 20, 1), ENOSPC);
    assert_eq!(
        c.cmd(0, CMD_CACHE, u64::MAX - 10, 20),
        EINVAL,
        "offset + length overflows"
    );
    assert_eq!(c.cmd(0, 99, 0, 0), EINVAL, "unknown command");
    assert_eq!(c.cmd(0x4000, CMD_FLUSH, 0, 0), EINVAL, "unknown flag");
    assert_eq!(
        c.read(F_DF, 0, 8),
        Err(EINVAL),
        "DF needs structured replies"
    );
    assert_eq!(
        c.cmd(0, CMD_BLOCK_STATUS, 0, 512),
        EINVAL,
        "no metadata context"
    );
    assert_eq!(
        c.cmd(F_NO_HOLE, CMD_TRIM, 0, 512),
        EINVAL,
        "NO_HOLE only on WRITE_ZEROES"
    );
    // Zero-length requests succeed; FLUSH ignores offset and length.
    assert_eq!(c.read(0, 0, 0).unwrap(), b"");
    assert_eq!(c.write(0, b""), 0);
    assert_eq!(c.cmd(0, CMD_TRIM, 0, 0), 0);
    assert_eq!(c.cmd(F_FUA, CMD_FLUSH, 12345, 678), 0);
    // A READ over 64 MiB cannot be answered with a simple reply.
    assert_eq!(c.read(0, 0, (64 << 20) + 1), Err(EINVAL));
    assert_eq!(
        c.read(0, 100, 5).unwrap(),
        b"hello",
        "the connection goes on"
    );
}

#[test]
fn commands_with_structured_replies() {
    let srv = Server::start(&["memory", "128M"]);
    let (mut c, _, flags) = Client::ready(&srv.sock, true, false, true);
    assert_eq!(flags, 0xded);
    assert_eq!(c.write(65536, &[0xab; 4096]), 0);
    // A sparse read: holes as OFFSET_HOLE chunks, data as OFFSET_DATA, last DONE.
    c.request(0, CMD_READ, 7, 0, 262144, &[]);
    let rs = c.replies(None);
    assert!(
        rs.iter().any(|r| r.kind == T_HOLE),
        "{:?}",
        rs.iter().map(|r| r.kind).collect::<Vec<_>>()
    );
    assert!(
        rs.iter()
            .all(|r| r.cookie == 7 && r.magic == STRUCTURED_MAGIC)
    );
    assert!(rs.last().unwrap().done());
    let data = c.read(0, 0, 262144).unwrap();
    assert!(data[65536..69632].iter().all(|&b| b == 0xab));
    assert!(data[..65536].iter().all(|&b| b == 0));
    // DF: exactly one content chunk.
    c.request(F_DF, CMD_READ, 8, 0, 262144, &[]);
    let rs = c.replies(None);
    assert_eq!(
        rs.iter()
            .filter(|r| r.kind == T_DATA || r.kind == T_HOLE)
            .count(),
        1
    );
    assert_eq!(rs[0].payload.len(), 8 + 262144);
    // Errors are error chunks carrying a message.
    c.request(0, CMD_READ, 9, 128 << 20, 1, &[]);
    let r = c.reply(None);
    assert_eq!((r.kind, r.errno(), r.done()), (T_ERROR, EINVAL, true));
    assert!(!r.message().is_empty());
    assert_eq!(c.read(0, 0, (64 << 20) + 1), Err(EOVERFLOW));
    // Block status: data 0, hole 3; REQ_ONE clips to the request.
    c.request(0, CMD_BLOCK_STATUS, 10, 0, 4 << 20, &[]);
    let d = descriptors(&c.reply(None));
    assert_eq!(d[0], (65536, 3));
    assert_eq!(d[1], (32768, 0));
    assert!(d.iter().map(|x| x.0).sum::<u64>() >= 4 << 20);
    c.request(F_REQ_ONE, CMD_BLOCK_STATUS, 11, 65536, 100, &[]);
    assert_eq!(descriptors(&c.reply(None)), vec![(100, 0)]);
    // TRIM and WRITE_ZEROES read back as zeroes and become holes again.
    assert_eq!(c.cmd(F_FUA, CMD_TRIM, 65536, 32768), 0);
    assert_eq!(c.read(0, 65536, 4096).unwrap(), vec![0; 4096]);
    assert_eq!(c.write(1 << 20, &[1; 8192]), 0);
    assert_eq!(c.cmd(F_NO_HOLE, CMD_ZERO, 1 << 20, 4096), 0);
    assert_eq!(c.cmd(F_FAST_ZERO, CMD_ZERO, (1 << 20) + 4096, 4096), 0);
    assert_eq!(c.read(0, 1 << 20, 8192).unwrap(), vec![0; 8192]);
    assert_eq!(c.cmd(0, CMD_CACHE, 0, 4 << 20), 0);
    assert_eq!(c.cmd(F_FUA, CMD_FLUSH, 0, 0), 0);
}

#[test]
fn read_only_and_pattern_exports() {
    let srv = Server::start(&["-r", "memory", "1M"]);
    let (mut c, _, flags) = Client::ready(&srv.sock, true, false, false);
    assert_ne!(flags & 2, 0, "READ_ONLY");
    assert_eq!(
        flags & (0x20 | 0x40 | 0x800),
        0,
        "no TRIM, WRITE_ZEROES, FAST_ZERO"
    );
    assert_eq!(c.write(0, b"x"), EPERM);
    assert_eq!(c.cmd(0, CMD_TRIM, 0, 1), EPERM);
    assert_eq!(c.cmd(0, CMD_ZERO, 0, 1), EPERM);
    assert_eq!(c.read(0, 0, 4).unwrap(), vec![0; 4]);

    let srv = Server::start(&["pattern", "1M"]);
    let (mut c, _, flags) = Client::ready(&srv.sock, false, false, false);
    assert_ne!(flags & 2, 0);
    let d = c.read(0, 4093, 16).unwrap();
    let mut want = Vec::new();
    for w in [4088u64, 4096, 4104] {
        want.extend_from_slice(&w.to_be_bytes());
    }
    assert_eq!(d, &want[5..21]);
    assert_eq!(c.write(0, b"x"), EPERM);

    let srv = Server::start(&["null", "1M"]);
    let (mut c, _, _) = Client::ready(&srv.sock, true, false, false);
    assert_eq!(c.write(0, b"gone"), 0);
    c.request(0, CMD_READ, 1, 0, 4096, &[]);
    let r = c.reply(None);
    assert_eq!(
        (r.kind, r.done()),
        (T_HOLE, true),
        "null reads are one hole"
    );
}

#[test]
fn oversized_and_truncated_requests() {
    let srv = Server::start(&["memory", "64M"]);
    let (mut c, _, _) = Client::ready(&srv.sock, false, false, false);
    // A 64 MiB + 1 WRITE: refused, its payload read and thrown away, the client stays.
    let n = (64 << 20) + 1;
    c.request(0, CMD_WRITE, 1, 0, n as u64, &vec![0x5a; n]);
    assert_eq!(c.reply(None).error, EINVAL);
    assert_eq!(c.read(0, 0, 4).unwrap(), vec![0; 4], "nothing was written");
    // 48 MiB, as the NBD project's integrity test sends: over the advertised 32 MiB,
    // within the 64 MiB served.
    let big = vec![7u8; 48 << 20];
    assert_eq!(c.write(0, &big), 0);
    assert_eq!(
        c.read(0, (48 << 20) - 4, 8).unwrap(),
        [7, 7, 7, 7, 0, 0, 0, 0]
    );
    // Bad magic: that client is dropped, others are not.
    c.send_lossy(&[0x12, 0x56, 0x09, 0x53, 0, 0, 0, 0]);
    c.send_lossy(&[0; 20]); // the server may already have hung up
    assert!(c.closed_by_peer(5));
    // A request cut short, then EOF.
    let (mut c, _, _) = Client::ready(&srv.sock, false, false, false);
    c.send(&REQUEST_MAGIC.to_be_bytes());
    c.send(&[0, 0, 0, 1]);
    drop(c);
    // A WRITE whose payload never fully arrives.
    let (mut c, _, _) = Client::ready(&srv.sock, false, false, false);
    c.request(0, CMD_WRITE, 1, 0, 4096, &[1; 100]);
    drop(c);
    still_serves(&srv.sock);
    assert!(srv.log_text().contains("bad request magic"));
}

#[test]
fn disc_sends_queued_replies_then_closes() {
    let srv = Server::start(&["memory", "1M"]);
    let (mut c, _, _) = Client::ready(&srv.sock, false, false, false);
    c.request(0, CMD_WRITE, 1, 0, 3, b"abc");
    c.request(0, CMD_READ, 2, 0, 3, &[]);
    c.request(0, CMD_DISC, 3, 0, 0, &[]);
    assert_eq!(c.reply(None).cookie, 1);
    let r = c.reply(Some(3));
    assert_eq!((r.cookie, r.payload.as_slice()), (2, &b"abc"[..]));
    assert!(c.closed_by_peer(5));
}

#[test]
fn pipelining_hundreds_of_requests() {
    let srv = Server::start(&["memory", "16M"]);
    let (mut c, _, _) = Client::ready(&srv.sock, true, false, false);
    let mut batch = Vec::new();
    for i in 0..200u64 {
        batch.extend(request(false, 0, CMD_WRITE, 1000 + i, i * 4096, 4096));
        batch.extend_from_slice(&[i as u8; 4096]);
    }
    c.send(&batch);
    let mut seen: Vec<u64> = (0..200).map(|_| c.reply(None)).map(|r| r.cookie).collect();
    seen.sort();
    assert_eq!(seen, (1000..1200).collect::<Vec<_>>());
    for i in [0u64, 99, 199] {
        assert_eq!(c.read(0, i * 4096, 4096).unwrap(), vec![i as u8; 4096]);
    }
}

#[test]
fn a_client_that_never_reads_does_not_stall_others() {
    let srv = Server::start(&["memory", "64M"]);
    let (mut hog, _, _) = Client::ready(&srv.sock, false, false, false);
    // 256 reads of 1 MiB, replies never read: far more than the socket buffers hold.
    hog.send(&read_batch(256, 1 << 20, 64 << 20));
    for _ in 0..3 {
        still_serves(&srv.sock);
    }
    drop(hog); // vanishes with replies pending
    still_serves(&srv.sock);
}

#[test]
fn extended_requests_with_64_bit_lengths() {
    let srv = Server::start(&["memory", "1T"]);
    let (mut c, size, flags) = Client::ready(&srv.sock, false, true, true);
    assert_eq!(size, 1 << 40);
    assert_ne!(
        flags & 0x1000,
        0,
        "BLOCK_STATUS_PAYLOAD with EH and a context"
    );
    // Writes with and without PAYLOAD_LEN (qemu omits it).
    assert_eq!(c.write(5 << 32, b"far away"), 0);
    c.request(0, CMD_WRITE, 3, (5 << 32) + 8, 4, b"more");
    let r = c.reply(None);
    assert_eq!(
        (r.magic, r.errno(), r.offset),
        (EXTENDED_MAGIC, 0, (5 << 32) + 8)
    );
    assert_eq!(c.read(0, 5 << 32, 12).unwrap(), b"far awaymore");
    // Every reply is an extended chunk echoing the request's offset.
    c.request(0, CMD_FLUSH, 4, 777, 0, &[]);
    let r = c.reply(None);
    assert_eq!(
        (r.magic, r.kind, r.offset, r.done()),
        (EXTENDED_MAGIC, T_NONE, 777, true)
    );
    // Effect lengths over 4 GiB.
    c.request(0, CMD_BLOCK_STATUS, 5, 0, 1 << 40, &[]);
    let r = c.reply(None);
    assert_eq!(r.kind, T_BS_EXT);
    let d = descriptors(&r);
    assert_eq!(d[0], (5 << 32, 3));
    assert_eq!(d.iter().map(|x| x.0).sum::<u64>(), 1 << 40);
    assert_eq!(c.cmd(0, CMD_ZERO, 4 << 32, 3 << 32), 0);
    assert_eq!(c.read(0, 5 << 32, 8).unwrap(), vec![0; 8]);
    assert_eq!(c.write(1 << 33, b"x"), 0);
    assert_eq!(c.cmd(0, CMD_TRIM, 0, 1 << 39), 0);
    assert_eq!(c.read(0, 1 << 33, 1).unwrap(), vec![0]);
    assert_eq!(c.cmd(0, CMD_TRIM, 1 << 40, 1), EINVAL);
    // PAYLOAD_LEN on a command without a payload form: consumed, then EINVAL.
    c.request(F_PAYLOAD_LEN, CMD_TRIM, 6, 0, 5, b"12345");
    assert_eq!(c.reply(None).errno(), EINVAL);
    c.request(F_PAYLOAD_LEN, CMD_FLUSH, 7, 0, 3, b"abc");
    assert_eq!(c.reply(None).errno(), EINVAL);
    // The payload form of BLOCK_STATUS: effect length, then context ids.
    assert_eq!(c.write(5 << 32, b"again"), 0);
    let p = block_status_payload(1 << 20, &[1]);
    c.request(
        F_PAYLOAD_LEN,
        CMD_BLOCK_STATUS,
        8,
        5 << 32,
        p.len() as u64,
        &p,
    );
    let r = c.reply(None);
    assert_eq!(r.kind, T_BS_EXT);
    assert_eq!(descriptors(&r)[0], (32768, 0));
    let p = block_status_payload(1 << 20, &[1, 1]); // the same id twice
    c.request(F_PAYLOAD_LEN, CMD_BLOCK_STATUS, 9, 0, p.len() as u64, &p);
    assert_eq!(c.reply(None).errno(), EINVAL);
    // A payload over 64 MiB is a denial of service: hang up.
    c.request(F_PAYLOAD_LEN, CMD_WRITE, 10, 0, 1 << 30, &[]);
    assert!(c.closed_by_peer(5));
    still_serves(&srv.sock);
}

#[test]
fn wrong_header_style_is_a_framing_error() {
    let srv = Server::start(&["memory", "1M"]);
    let (mut c, _, _) = Client::ready(&srv.sock, false, true, false);
    c.extended = false; // send a compact request after EH
    c.request(0, CMD_READ, 1, 0, 1, &[]);
    assert!(c.closed_by_peer(5));
    let (mut c, _, flags) = Client::ready(&srv.sock, true, false, false);
    assert_eq!(flags & 0x1000, 0, "no BLOCK_STATUS_PAYLOAD without EH");
    c.extended = true; // an extended request without EH
    c.request(0, CMD_READ, 1, 0, 1, &[]);
    assert!(c.closed_by_peer(5));
    still_serves(&srv.sock);
}

#[test]
fn shutdown_finishes_in_flight_requests() {
    let srv = Server::start(&["memory", "1M"]);
    let (mut c, _, _) = Client::ready(&srv.sock, true, false, false);
    assert_eq!(c.write(0, b"kept"), 0);
    srv.signal("TERM");
    // The server closes this idle client once its replies are out, and exits.
    assert!(c.closed_by_peer(10));
    let mut srv = srv;
    let st = common::wait_exit(&mut srv.child, 10).expect("exit");
    assert!(st.success());
    assert!(!srv.sock.exists() && srv.pidfile.exists());
}

#[test]
fn shutdown_refuses_requests_that_arrive_after_the_signal() {
    // A client mid-payload when the signal lands: its request completes with
    // ESHUTDOWN rather than a hang-up, and then the server closes it and exits.
    let srv = Server::start(&["-v", "memory", "1M"]);
    let (mut c, _, _) = Client::ready(&srv.sock, true, false, false);
    c.request(0, CMD_WRITE, 42, 0, 8, b"half"); // 4 of 8 payload bytes
    srv.signal("TERM");
    common::wait_until(10, "the server to take the signal", || {
        srv.log_text().contains("shutting down")
    });
    c.send(b"rest");
    let r = c.reply(None);
    assert_eq!((r.cookie, r.errno()), (42, ESHUTDOWN));
    // ESHUTDOWN obliges the client to disconnect softly; the server waits for that.
    c.request(0, CMD_DISC, 0, 0, 0, &[]);
    assert!(c.closed_by_peer(10));
    let mut srv = srv;
    assert!(
        common::wait_exit(&mut srv.child, 10)
            .expect("exit")
            .success()
    );
}

#[test]
fn shutdown_under_load_answers_every_request() {
    // Four clients keep 32 requests each in flight while SIGTERM lands. Every
    // request gets its reply, in order: done, or ESHUTDOWN. A refused client then
    // stops sending and disconnects softly, as the spec says it must; the server
    // exits once they all have.
    let srv = Server::start(&["memory", "64M"]);
    let path = srv.sock.clone();
    let started = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let clients: Vec<_> = (0..4u64)
        .map(|n| {
            let (path, started) = (path.clone(), started.clone());
            std::thread::spawn(move || {
                let (mut c, _, _) = Client::ready(&path, true, false, false);
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (mut sent, mut answered, mut refused) = (0u64, 0u64, false);
                loop {
                    while !refused && sent - answered < 32 {
                        let offset = (n * 16 + sent % 16) * 4096;
                        c.request(0, CMD_WRITE, sent, offset, 4096, &[n as u8; 4096]);
                        sent += 1;
                    }
                    if answered == sent {
                        break;
                    }
                    let r = c.reply(None);
                    assert_eq!(r.cookie, answered, "replies in order, none lost");
                    match r.errno() {
                        0 => {}
                        ESHUTDOWN => refused = true,
                        e => panic!("unexpected error {e}"),
                    }
                    answered += 1;
                }
                c.request(0, CMD_DISC, 0, 0, 0, &[]);
                assert!(c.closed_by_peer(10));
                answered
            })
        })
        .collect();
    common::wait_until(10, "clients", || {
        started.load(std::sync::atomic::Ordering::SeqCst) == 4
    });
    srv.signal("TERM");
    for c in clients {
        assert!(c.join().expect("client thread") > 0);
    }
    let mut srv = srv;
    assert!(
        common::wait_exit(&mut srv.child, 10)
            .expect("exit")
            .success()
    );
    assert!(!srv.sock.exists());
}

#[test]
fn block_device_minimum_block_size() {
    let dir = common::TempDir::new();
    let img = dir.join("blk.img");
    common::sparse_file(&img, 8 << 20);
    // 4096-byte logical sectors.
    let Some(dev) = common::LoopDevice::new(&img, Some(4096)) else {
        common::skip("cannot set up a loop device (needs root)");
        return;
    };
    let srv = Server::start(&["file", &dev.0]);
    let mut c = Client::start(&srv.sock);
    let r = c.opt(OPT_INFO, &info_data(b"", &[3]));
    let bs = r
        .iter()
        .find(|r| r.kind == REP_INFO && info_type(r) == 3)
        .expect("BLOCK_SIZE");
    assert_eq!((u32_at(&bs.data, 2), u32_at(&bs.data, 6)), (4096, 4096));
    c.go(b"");
    assert_eq!(c.write(4096, &[0x77; 4096]), 0);
    assert_eq!(c.read(0, 4096, 4096).unwrap(), vec![0x77; 4096]);
    assert_eq!(c.write(512, &[1; 512]), EINVAL, "misaligned write");
    assert_eq!(c.read(0, 4096, 100), Err(EINVAL), "misaligned length");
    assert_eq!(c.cmd(0, CMD_ZERO, 100, 4096), EINVAL);
    assert_eq!(
        c.read(0, 4096, 4096).unwrap(),
        vec![0x77; 4096],
        "nothing corrupted"
    );
}

#[test]
fn queued_reads_are_not_changed_by_later_writes() {
    // Large reads are sent straight from the memory backend's pages. A reply still
    // queued for a slow client must show the data as it was when it was read,
    // whatever other clients write meanwhile: every 1 MiB reply is all old or all new.
    let srv = Server::start(&["memory", "16M"]);
    let (mut w, _, _) = Client::ready(&srv.sock, false, false, false);
    for i in 0..16u64 {
        assert_eq!(w.write(i << 20, &vec![0x11; 1 << 20]), 0);
    }
    let (mut hog, _, _) = Client::ready(&srv.sock, false, false, false);
    hog.send(&read_batch(48, 1 << 20, 16 << 20));
    for i in 0..16u64 {
        assert_eq!(w.write(i << 20, &vec![0x22; 1 << 20]), 0);
        assert_eq!(w.cmd(0, CMD_TRIM, (i << 20) + 4096, 65536), 0);
    }
    for _ in 0..48 {
        let r = hog.reply(Some(1 << 20));
        assert_eq!(r.error, 0);
        // The states a region goes through: old, rewritten, rewritten and trimmed.
        let old = vec![0x11u8; 1 << 20];
        let new = vec![0x22u8; 1 << 20];
        let mut trimmed = new.clone();
        trimmed[4096..4096 + 65536].fill(0);
        let p = &r.payload;
        assert!(
            *p == old || *p == new || *p == trimmed,
            "reply {} mixes states",
            r.cookie
        );
    }
}

/// A client that sends its last request and shuts down its side at once: the
/// data and the FIN often arrive in one edge. The request is answered, and the
/// connection is closed (it must not linger, holding a slot, for ever).
#[test]
fn last_request_and_fin_together() {
    // No busy-polling: the server sleeps, so both arrive before it wakes up.
    let srv = Server::start(&["--busy-poll", "0", "memory", "1M"]);
    for i in 0..40 {
        let (mut c, _, _) = Client::ready(&srv.sock, false, false, false);
        let mut msg = request(false, 0, CMD_WRITE, 1, 0, 4);
        msg.extend_from_slice(b"last");
        msg.extend(request(false, 0, CMD_READ, 2, 0, 4));
        c.send(&msg);
        c.s.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(c.reply(None).errno(), 0, "round {i}: WRITE");
        let r = c.reply(Some(4));
        assert_eq!((r.errno(), &r.payload[..]), (0, &b"last"[..]), "round {i}");
        assert!(
            c.closed_by_peer(5),
            "round {i}: the server kept the connection"
        );
    }
    still_serves(&srv.sock);
}
