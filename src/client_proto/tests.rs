//! The encoders against the spec's layouts, and every decoder fed every
//! prefix of what a server sends (need more, never an error), the whole of
//! it, and garbage (an error, never a panic). Server bytes are written out
//! field by field here, not taken from the server's encoders.

use std::fmt::Debug;

use super::*;

/// Fields, concatenated.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `bytes` is one whole message that `parse` reads as `want`: every prefix
/// needs more (and never more than the message holds), a blocking reader
/// reading exactly what it is told to lands on the message's end, and bytes
/// after it are left alone.
#[track_caller]
fn whole<T: Debug + PartialEq + Clone>(parse: impl Fn(&[u8]) -> Parse<T>, bytes: &[u8], want: T) {
    for i in 0..bytes.len() {
        match parse(&bytes[..i]) {
            Parse::NeedMore(n) => assert!(n > 0 && i + n <= bytes.len(), "prefix {i}: {n} more"),
            other => panic!("prefix {i} of {bytes:02x?}: {other:?}"),
        }
    }
    let mut got = 0;
    let mut reads = 0;
    while let Parse::NeedMore(n) = parse(&bytes[..got]) {
        got += n;
        reads += 1;
        assert!(reads <= 3, "a reader told to read in small steps");
    }
    assert_eq!(got, bytes.len(), "the hints lead to the message's end");
    assert_eq!(parse(bytes), Parse::Done(want.clone(), bytes.len()));
    let more = cat(&[bytes, &[0xff; 40]]);
    assert_eq!(parse(&more), Parse::Done(want, bytes.len()));
}

#[track_caller]
fn malformed<T: Debug>(p: Parse<T>) {
    assert!(matches!(p, Parse::Malformed(_)), "{p:?}");
}

/// xorshift64, for garbage that is the same on every run.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn option_encoders() {
    assert_eq!(
        client_flags(CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES),
        [0, 0, 0, 3]
    );
    let o = option(OPT_EXPORT_NAME, b"disk");
    assert_eq!(&o[..8], b"IHAVEOPT");
    assert_eq!(&o[8..], &[0, 0, 0, 1, 0, 0, 0, 4, b'd', b'i', b's', b'k']);
    assert_eq!(&option(OPT_ABORT, &[])[8..], &[0, 0, 0, 2, 0, 0, 0, 0]);
    assert_eq!(option_header(OPT_GO, 100)[12..], [0, 0, 0, 100]);
    assert_eq!(
        info_data(b"ab", &[INFO_NAME, INFO_BLOCK_SIZE]),
        [0, 0, 0, 2, b'a', b'b', 0, 2, 0, 1, 0, 3]
    );
    assert_eq!(
        meta_data(b"", &[b"base:", BASE_ALLOCATION]),
        cat(&[
            &[0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 5],
            b"base:",
            &[0, 0, 0, 15],
            b"base:allocation"
        ])
    );
}

#[test]
fn request_encoders() {
    let c = compact_request(F_FUA, CMD_WRITE, 0x0102, 4096, 512);
    assert_eq!(
        c.to_vec(),
        cat(&[
            &[0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1],
            &0x0102u64.to_be_bytes(),
            &4096u64.to_be_bytes(),
            &512u32.to_be_bytes()
        ])
    );
    let e = extended_request(F_PAYLOAD_LEN, CMD_BLOCK_STATUS, 7, 1 << 40, 12);
    assert_eq!(&e[..8], &[0x21, 0xe4, 0x1c, 0x71, 0, 0x20, 0, 7]);
    assert_eq!(u64_at(&e, 8), 7);
    assert_eq!(u64_at(&e, 16), 1 << 40);
    assert_eq!(u64_at(&e, 24), 12);
    assert_eq!(request(false, F_FUA, CMD_WRITE, 0x0102, 4096, 512), c);
    assert_eq!(
        request(true, F_PAYLOAD_LEN, CMD_BLOCK_STATUS, 7, 1 << 40, 12),
        e
    );
    // compact: the low 32 bits of the length
    assert_eq!(
        u32_at(&request(false, 0, CMD_READ, 0, 0, 1 << 32 | 5), 24),
        5
    );
    assert_eq!(
        block_status_payload(1 << 20, &[1, 2]),
        cat(&[&(1u64 << 20).to_be_bytes(), &[0, 0, 0, 1, 0, 0, 0, 2]])
    );
}

#[test]
fn greetings() {
    let newstyle = cat(&[b"NBDMAGIC", b"IHAVEOPT", &[0, 3]]);
    whole(greeting, &newstyle, Greeting::Newstyle { flags: 3 });
    let oldstyle = cat(&[
        b"NBDMAGIC",
        &[0, 0, 0x42, 0x02, 0x81, 0x86, 0x12, 0x53],
        &(1u64 << 20).to_be_bytes(),
        &[0, 0, 0, 0x0d],
        &[0; 124],
    ]);
    let export = Export {
        size: 1 << 20,
        flags: 0x0d,
    };
    whole(greeting, &oldstyle, Greeting::Oldstyle(export));
    malformed(greeting(b"HTTP/1.1 400 Bad Request\r\n"));
    malformed(greeting(b"NBDMAGIX")); // 8 bytes are enough to know
    malformed(greeting(&cat(&[b"NBDMAGIC", b"IHAVEOPX", &[0, 3]])));
}

#[test]
fn export_name_replies() {
    let r = cat(&[&(5u64 << 20).to_be_bytes(), &[0, 1]]);
    let e = Export {
        size: 5 << 20,
        flags: 1,
    };
    whole(|b| export_name_reply(b, true), &r, e);
    whole(|b| export_name_reply(b, false), &cat(&[&r, &[0; 124]]), e);
}

/// An option reply as a server sends it.
fn opt_reply(opt: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    cat(&[
        &[0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9],
        &opt.to_be_bytes(),
        &kind.to_be_bytes(),
        &(data.len() as u32).to_be_bytes(),
        data,
    ])
}

#[test]
fn option_replies() {
    let ack = opt_reply(OPT_GO, REP_ACK, b"");
    let h = OptReplyHeader {
        opt: OPT_GO,
        kind: REP_ACK,
        len: 0,
    };
    whole(option_reply_header, &ack, h);
    let r = OptReply {
        opt: OPT_GO,
        kind: REP_ACK,
        data: Vec::new(),
    };
    whole(option_reply, &ack, r.clone());
    assert!(r.is_final());
    let err = opt_reply(OPT_LIST, ERR_INVALID, b"no data, please");
    let Parse::Done(e, n) = option_reply(&err) else {
        panic!()
    };
    assert_eq!(
        (e.kind, &e.data[..], n),
        (ERR_INVALID, &b"no data, please"[..], 35)
    );
    whole(option_reply, &err, e.clone());
    assert!(e.is_final() && !is_final(REP_INFO) && !is_final(REP_SERVER));
    malformed(option_reply(&cat(&[b"IHAVEOPT", &[0; 12]])));
    malformed(option_reply_header(&[0xff; 8]));
}

#[test]
fn option_reply_data() {
    let export = cat(&[&[0, 0], &(1u64 << 30).to_be_bytes(), &[0x0d, 0xed]]);
    let e = Export {
        size: 1 << 30,
        flags: 0x0ded,
    };
    assert_eq!(info(&export), Ok(Info::Export(e)));
    assert!(info(&export[..11]).is_err() && info(&cat(&[&export, &[0]])).is_err());
    let bs = [0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0];
    let want = Info::BlockSize {
        min: 1,
        preferred: 4096,
        max: 32 << 20,
    };
    assert_eq!(info(&bs), Ok(want));
    assert!(info(&bs[..13]).is_err());
    assert_eq!(info(b"\0\x01disk"), Ok(Info::Name(b"disk")));
    assert_eq!(info(b"\0\x02a disk"), Ok(Info::Description(b"a disk")));
    assert_eq!(info(b"\0\x09?"), Ok(Info::Unknown(9)));
    assert!(info(b"\0").is_err());
    assert!(info(&cat(&[&[0, 1], &[b'x'; 4097]])).is_err());
    let entry = cat(&[&[0, 0, 0, 4], b"disk", b"a test disk"]);
    assert_eq!(
        server_entry(&entry),
        Ok((&b"disk"[..], &b"a test disk"[..]))
    );
    assert_eq!(server_entry(&[0, 0, 0, 0]), Ok((&b""[..], &b""[..])));
    assert!(server_entry(&entry[..7]).is_err() && server_entry(&[0, 0, 0]).is_err());
    let meta = cat(&[&[0, 0, 0, 1], BASE_ALLOCATION]);
    assert_eq!(meta_context(&meta), Ok((1, BASE_ALLOCATION)));
    assert!(meta_context(&meta[..4]).is_err());
}

/// A chunk as a server sends it: structured, or extended echoing `offset`.
fn chunk_bytes(extended: bool, flags: u16, kind: u16, offset: u64, payload: &[u8]) -> Vec<u8> {
    let head = cat(&[
        &flags.to_be_bytes(),
        &kind.to_be_bytes(),
        &9u64.to_be_bytes(),
    ]);
    if extended {
        cat(&[
            &EXTENDED_MAGIC.to_be_bytes(),
            &head,
            &offset.to_be_bytes(),
            &(payload.len() as u64).to_be_bytes(),
            payload,
        ])
    } else {
        cat(&[
            &STRUCTURED_MAGIC.to_be_bytes(),
            &head,
            &(payload.len() as u32).to_be_bytes(),
            payload,
        ])
    }
}

#[test]
fn reply_headers() {
    let simple = cat(&[
        &[0x67, 0x44, 0x66, 0x98],
        &[0, 0, 0, 5],
        &9u64.to_be_bytes(),
    ]);
    let want = ReplyHeader::Simple {
        error: EIO,
        cookie: 9,
    };
    whole(reply_header, &simple, want);
    for extended in [false, true] {
        let c = chunk_bytes(extended, REPLY_FLAG_DONE, T_NONE, 512, b"");
        let want = ChunkHeader {
            extended,
            flags: REPLY_FLAG_DONE,
            kind: T_NONE,
            cookie: 9,
            offset: if extended { 512 } else { 0 },
            len: 0,
        };
        whole(reply_header, &c, ReplyHeader::Chunk(want));
        assert!(want.done());
    }
    malformed(reply_header(&[0xff; 16]));
    malformed(reply_header(&REQUEST_MAGIC.to_be_bytes()));
}

#[test]
fn chunk_payloads() {
    assert_eq!(chunk(T_NONE, b""), Ok(Chunk::None));
    let data = cat(&[&4096u64.to_be_bytes(), b"abc"]);
    let want = Chunk::Data {
        offset: 4096,
        data: b"abc",
    };
    assert_eq!(chunk(T_DATA, &data), Ok(want));
    let hole = cat(&[&4096u64.to_be_bytes(), &[0, 0, 2, 0]]);
    let want = Chunk::Hole {
        offset: 4096,
        len: 512,
    };
    assert_eq!(chunk(T_HOLE, &hole), Ok(want));
    let bs = [
        0, 0, 0, 1, 0, 0, 0x80, 0, 0, 0, 0, 3, 0, 0, 2, 0, 0, 0, 0, 0,
    ];
    let want = Chunk::BlockStatus {
        context: 1,
        extents: vec![(32768, STATE_HOLE | STATE_ZERO), (512, 0)],
    };
    assert_eq!(chunk(T_BS, &bs), Ok(want));
    let bs_ext = cat(&[
        &[0, 0, 0, 1, 0, 0, 0, 1],
        &(1u64 << 40).to_be_bytes(),
        &STATE_ZERO.to_be_bytes(),
    ]);
    let want = Chunk::BlockStatus {
        context: 1,
        extents: vec![(1 << 40, STATE_ZERO)],
    };
    assert_eq!(chunk(T_BS_EXT, &bs_ext), Ok(want));
    let err = cat(&[&EINVAL.to_be_bytes(), &[0, 3], b"bad"]);
    let want = Chunk::Error {
        errno: EINVAL,
        message: b"bad",
        offset: None,
    };
    assert_eq!(chunk(T_ERROR, &err), Ok(want));
    let err_at = cat(&[&err, &512u64.to_be_bytes()]);
    let want = Chunk::Error {
        errno: EINVAL,
        message: b"bad",
        offset: Some(512),
    };
    assert_eq!(chunk(T_ERROR_OFFSET, &err_at), Ok(want));
    // Every truncation and extension of a payload with a fixed layout is
    // refused (compact block status: but for whole descriptors).
    for (kind, p) in [
        (T_HOLE, &hole[..]),
        (T_BS, &bs),
        (T_BS_EXT, &bs_ext),
        (T_ERROR, &err),
        (T_ERROR_OFFSET, &err_at),
    ] {
        for i in (0..p.len()).filter(|&i| kind != T_BS || i != 12) {
            assert!(chunk(kind, &p[..i]).is_err(), "type {kind}, {i} bytes");
        }
        assert!(chunk(kind, &cat(&[p, &[0; 3]])).is_err(), "type {kind}");
    }
    assert!(chunk(T_DATA, &data[..8]).is_err() && chunk(T_NONE, b"x").is_err());
    assert!(
        chunk(T_HOLE, &cat(&[&hole[..8], &[0; 4]])).is_err(),
        "an empty hole"
    );
    assert!(
        chunk(T_BS, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err(),
        "an empty extent"
    );
    let mut miscounted = bs_ext.clone();
    miscounted[7] = 2;
    assert!(chunk(T_BS_EXT, &miscounted).is_err());
    assert!(chunk(T_ERROR, &[0, 0, 0, 0, 0, 0]).is_err(), "errno 0");
    assert!(
        chunk(3, b"").is_err(),
        "an unknown type without the error bit"
    );
    let unknown = cat(&[&err, b"and more"]);
    assert!(matches!(
        chunk(0x8042, &unknown),
        Ok(Chunk::Error { errno: EINVAL, .. })
    ));
}

#[test]
fn whole_replies() {
    let simple = cat(&[&SIMPLE_MAGIC.to_be_bytes(), &[0; 4], &3u64.to_be_bytes()]);
    let read = cat(&[&simple, b"data"]);
    let want = Reply {
        magic: SIMPLE_MAGIC,
        flags: 0,
        kind: 0,
        cookie: 3,
        offset: 0,
        error: 0,
        payload: b"data".to_vec(),
    };
    whole(|b| reply(b, Some(4)), &read, want.clone());
    assert!(want.done() && want.errno() == 0 && want.chunk().is_none());
    let failed = cat(&[
        &SIMPLE_MAGIC.to_be_bytes(),
        &EIO.to_be_bytes(),
        &3u64.to_be_bytes(),
    ]);
    let Parse::Done(r, 16) = reply(&failed, Some(4)) else {
        panic!("a failed READ carries no data")
    };
    assert_eq!(r.errno(), EIO);
    for extended in [false, true] {
        let p = cat(&[&ENOSPC.to_be_bytes(), &[0, 4], b"full"]);
        let c = chunk_bytes(extended, REPLY_FLAG_DONE, T_ERROR, 512, &p);
        let want = Reply {
            magic: u32_at(&c, 0),
            flags: REPLY_FLAG_DONE,
            kind: T_ERROR,
            cookie: 9,
            offset: if extended { 512 } else { 0 },
            error: 0,
            payload: p,
        };
        whole(|b| reply(b, None), &c, want.clone());
        assert!(want.done());
        assert_eq!((want.errno(), want.message()), (ENOSPC, "full".to_string()));
        let data = chunk_bytes(extended, 0, T_DATA, 512, &[0, 0, 0, 0, 0, 0, 2, 0, 1]);
        let Parse::Done(r, _) = reply(&data, None) else {
            panic!()
        };
        assert!(!r.done() && r.errno() == 0 && r.message().is_empty());
        // A chunk whose payload its type does not allow.
        malformed(reply(&chunk_bytes(extended, 0, T_HOLE, 0, &[0; 11]), None));
    }
    let huge = cat(&[&EXTENDED_MAGIC.to_be_bytes(), &[0; 20], &[0xff; 8]]);
    malformed(reply(&huge, None));
}

/// No input makes a decoder panic; a magic it does not know is an error.
#[test]
fn garbage_is_an_error() {
    for seed in 0..2000 {
        let g = garbage(seed, (seed % 200) as usize);
        if g.len() >= 8 {
            malformed(greeting(&g));
            malformed(option_reply(&g));
        }
        if g.len() >= 4 {
            malformed(reply_header(&g));
            malformed(reply(&g, Some(512)));
        }
        let _ = export_name_reply(&g, seed % 2 == 0);
        let _ = info(&g);
        let _ = server_entry(&g);
        let _ = meta_context(&g);
        for kind in [
            T_NONE,
            T_DATA,
            T_HOLE,
            T_BS,
            T_BS_EXT,
            T_ERROR,
            T_ERROR_OFFSET,
            0x8042,
        ] {
            let _ = chunk(kind, &g);
        }
    }
    assert_eq!(errno_name(ENOSPC), "ENOSPC");
    assert_eq!(errno_name(7), "unknown");
}

/// A reader over bytes in memory that notes what it was asked for.
struct Source<'a> {
    rest: &'a [u8],
    asks: Vec<usize>,
}

impl Source<'_> {
    fn read_exact(&mut self, b: &mut [u8]) -> Result<(), &'static str> {
        if b.len() > self.rest.len() {
            return Err("end of stream");
        }
        let (now, rest) = self.rest.split_at(b.len());
        b.copy_from_slice(now);
        self.rest = rest;
        self.asks.push(b.len());
        Ok(())
    }
}

/// The reading loop asks for what the decoders need, no more, and stops at
/// the limit it is given or the reader's error.
#[test]
fn read_message_reads_exactly_the_message() {
    let g = cat(&[b"NBDMAGIC", b"IHAVEOPT", &[0, 3], b"next"]);
    let mut src = Source {
        rest: &g,
        asks: Vec::new(),
    };
    let got = read_message(|b| src.read_exact(b), 1 << 20, greeting);
    assert_eq!(got, Ok(Greeting::Newstyle { flags: 3 }));
    assert_eq!(
        (src.asks.as_slice(), src.rest),
        (&[16, 2][..], &b"next"[..])
    );
    let eof = read_message(|b| src.read_exact(b), 1 << 20, greeting);
    assert_eq!(eof, Err(ReadError::Read("end of stream")));
    let mut src = Source {
        rest: &[0xff; 100],
        asks: Vec::new(),
    };
    let bad = read_message(|b| src.read_exact(b), 1 << 20, greeting);
    assert!(matches!(bad, Err(ReadError::Malformed(_))));
    // A chunk announcing 1 GiB: refused before anything is allocated for it.
    let huge = cat(&[&STRUCTURED_MAGIC.to_be_bytes(), &[0; 12], &[0x40, 0, 0, 0]]);
    let mut src = Source {
        rest: &huge,
        asks: Vec::new(),
    };
    let r = read_message(|b| src.read_exact(b), 1 << 20, |b| reply(b, None));
    let e = r.unwrap_err().to_string();
    assert_eq!(e, "message longer than the reader allows");
    assert_eq!(src.asks, [4, 16]);
}
