use super::*;

/// What a reader made of a byte stream fed in pieces of `sizes` (cycled):
/// the head, the body, whether it ended, and how many bytes were left over.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    head: Option<Head>,
    body: Vec<u8>,
    ended: bool,
    left: usize,
}

fn feed(stream: &[u8], head_request: bool, sizes: &[usize]) -> Result<Seen, &'static str> {
    let mut r = Reader::new(head_request);
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = Seen {
        head: None,
        body: Vec::new(),
        ended: false,
        left: 0,
    };
    let mut pos = 0;
    let mut k = 0;
    while !seen.ended {
        loop {
            let (used, ev) = r.step(&buf)?;
            match ev {
                Event::Head(h) => seen.head = Some(h),
                Event::Data(range) => seen.body.extend_from_slice(&buf[range]),
                Event::End => seen.ended = true,
                Event::NeedMore => {}
            }
            buf.drain(..used);
            if seen.ended || used == 0 {
                break;
            }
        }
        if seen.ended || pos == stream.len() {
            break;
        }
        let n = sizes[k % sizes.len()].max(1).min(stream.len() - pos);
        k += 1;
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
    }
    seen.left = buf.len() + stream.len() - pos;
    Ok(seen)
}

/// Every proper prefix of `stream` reads as "not yet ended", without an
/// error, and never yields more body than the whole does.
#[track_caller]
fn prefixes_need_more(stream: &[u8], head_request: bool) {
    let whole = feed(stream, head_request, &[stream.len()]).unwrap();
    assert!(whole.ended);
    for i in 0..stream.len() - whole.left {
        let s = feed(&stream[..i], head_request, &[i.max(1)]).unwrap();
        assert!(!s.ended, "prefix {i} ended");
        assert!(whole.body.starts_with(&s.body), "prefix {i}");
    }
    for sizes in [&[1][..], &[2, 3], &[7, 1, 13], &[100]] {
        assert_eq!(
            feed(stream, head_request, sizes).unwrap(),
            whole,
            "{sizes:?}"
        );
    }
}

const RANGE_206: &[u8] = b"HTTP/1.1 206 Partial Content\r\nServer: nginx\r\n\
Content-Type: application/octet-stream\r\nContent-Length: 5\r\n\
Content-Range: bytes 10-14/100\r\nConnection: keep-alive\r\n\r\nhello";

#[test]
fn a_range_response() {
    prefixes_need_more(RANGE_206, false);
    let s = feed(RANGE_206, false, &[1000]).unwrap();
    let h = s.head.unwrap();
    assert_eq!((h.status, h.reason.as_str()), (206, "Partial Content"));
    assert_eq!(h.framing, Framing::Length(5));
    assert!(h.keep_alive);
    assert_eq!(
        h.content_range,
        Some(ContentRange::Bytes {
            first: 10,
            last: 14,
            total: Some(100)
        })
    );
    assert_eq!(s.body, b"hello");
    assert_eq!(s.left, 0);
}

#[test]
fn chunked_error_page_with_trailers() {
    let stream = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Internal Server Error\r\n\
Transfer-Encoding: gzip, chunked\r\n\r\n5;ext=1\r\nhello\r\n1A\r\n abcdefghijklmnopqrstuvwxy\r\n\
0\r\nX-Trailer: 1\r\n\r\n";
    prefixes_need_more(stream, false);
    let s = feed(stream, false, &[3]).unwrap();
    let h = s.head.unwrap();
    assert_eq!(h.status, 500);
    assert_eq!(h.framing, Framing::Chunked);
    assert_eq!(s.body, b"hello abcdefghijklmnopqrstuvwxy");
}

#[test]
fn head_responses_and_empty_bodies() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
    prefixes_need_more(head, true);
    let s = feed(head, true, &[100]).unwrap();
    assert_eq!(s.head.unwrap().framing, Framing::Empty);
    let s = feed(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        false,
        &[9],
    );
    assert!(s.unwrap().ended);
    // Bytes after a complete response are left for the caller to judge.
    let s = feed(b"HTTP/1.1 204 No Content\r\n\r\nXYZ", false, &[100]).unwrap();
    assert_eq!(s.left, 3);
}

#[test]
fn bodies_until_close() {
    let stream = b"HTTP/1.0 200 OK\r\n\r\nsome data";
    let mut r = Reader::new(false);
    let (used, ev) = r.step(stream).unwrap();
    let Event::Head(h) = ev else { panic!("{ev:?}") };
    assert_eq!(h.framing, Framing::UntilClose);
    assert!(!h.keep_alive);
    assert_eq!(r.step(&stream[used..]).unwrap(), (9, Event::Data(0..9)));
    assert_eq!(r.eof(), Ok(Event::End));
    // HTTP/1.0 with keep-alive and a length: reusable.
    let p = parse_head(
        b"HTTP/1.0 206 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n",
        false,
    );
    assert!(matches!(
        p,
        Parse::Done(
            Head {
                keep_alive: true,
                ..
            },
            _
        )
    ));
    let p = parse_head(
        b"HTTP/1.1 206 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
        false,
    );
    assert!(matches!(
        p,
        Parse::Done(
            Head {
                keep_alive: false,
                ..
            },
            _
        )
    ));
}

#[test]
fn short_bodies_are_errors_at_eof() {
    let mut r = Reader::new(false);
    let (used, _) = r.step(RANGE_206).unwrap();
    r.step(&RANGE_206[used..used + 2]).unwrap();
    assert!(r.eof().is_err());
    assert!(Reader::new(false).eof().is_err());
}

#[test]
fn garbage_is_malformed() {
    for bad in [
        &b"SSH-2.0-OpenSSH_9.2\r\n"[..],
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 206 OK\r\nContent-Length: 12x\r\n\r\n",
        b"HTTP/1.1 206 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 206 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 206 OK\r\nContent-Range: bytes 5-4/10\r\n\r\n",
        b"HTTP/1.1 206 OK\r\nContent-Range: bytes 0-10/10\r\n\r\n",
        b"HTTP/1.1 206 OK\r\nContent-Range: items 0-1/10\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    ] {
        assert!(
            feed(bad, false, &[bad.len()]).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
    huge.resize(MAX_HEAD + 10, b'a');
    assert!(feed(&huge, false, &[huge.len()]).is_err());
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert!(feed(&many, false, &[many.len()]).is_err());
}

#[test]
fn content_ranges() {
    let p = parse_content_range;
    assert_eq!(
        p("bytes 0-0/1"),
        Some(ContentRange::Bytes {
            first: 0,
            last: 0,
            total: Some(1)
        })
    );
    assert_eq!(
        p("bytes 3-9/*"),
        Some(ContentRange::Bytes {
            first: 3,
            last: 9,
            total: None
        })
    );
    assert_eq!(p("bytes */0"), Some(ContentRange::Unsatisfied { total: 0 }));
    for bad in [
        "bytes 1-/2",
        "bytes -1/2",
        "bytes 1-2",
        "bytes */*",
        "bytes +1-2/3",
        "",
    ] {
        assert_eq!(p(bad), None, "{bad}");
    }
}

/// Random bytes never panic the reader, and it never claims more body than
/// it was given.
#[test]
fn random_input_never_panics() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seeds: [&[u8]; 3] = [
        RANGE_206,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"0\r\n\r\n",
    ];
    for _ in 0..3000 {
        let mut s = seeds[(next() % 3) as usize].to_vec();
        for _ in 0..(next() % 6) {
            let i = (next() as usize) % s.len();
            s[i] = next() as u8;
        }
        let sizes = [(next() % 17) as usize + 1];
        if let Ok(seen) = feed(&s, false, &sizes) {
            assert!(seen.body.len() <= s.len());
        }
    }
}
