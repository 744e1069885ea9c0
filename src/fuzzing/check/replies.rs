//! The check's readers of the wire: option replies and transmission replies
//! (simple, or chunks with their READ data and block-status extents), split
//! and decoded by the client's side of the protocol (`client_proto`), apart
//! from the server's `proto` parsers and encoders so that a bug there is not
//! mirrored here, then held to what the spec allows this server to send.
//! Each reader panics, with a message, on anything else.

use crate::agreement::Agreement;
use crate::client_proto::*;
use crate::export::BASE_ALLOCATION_ID;
use crate::proto::reply::Style;

/// A request header, as read here.
pub(super) struct Req {
    pub(super) flags: u16,
    pub(super) kind: u16,
    pub(super) cookie: u64,
    pub(super) offset: u64,
    pub(super) length: u64,
}

/// The complete value at the start of `buf`, or a panic saying why not.
#[track_caller]
fn whole<T>(p: Parse<T>, what: &str) -> (T, usize) {
    match p {
        Parse::Done(v, n) => (v, n),
        Parse::NeedMore(n) => panic!("{what} truncated ({n} bytes missing)"),
        Parse::Malformed(e) => panic!("{what}: {e}"),
    }
}

/// Splits option replies, checking each header and its data; returns the types.
pub(super) fn option_replies(mut rest: &[u8], opt: u32) -> Vec<u32> {
    let mut types = Vec::new();
    while !rest.is_empty() {
        let (r, n) = whole(option_reply(rest), "option reply");
        assert_eq!(r.opt, opt, "reply to another option");
        option_reply_data(&r);
        types.push(r.kind);
        rest = &rest[n..];
    }
    types
}

/// The data of one option reply fits its type, and the type fits the option.
fn option_reply_data(r: &OptReply) {
    let (opt, d) = (r.opt, &r.data[..]);
    match r.kind {
        REP_ACK => assert!(d.is_empty()),
        REP_SERVER => {
            assert_eq!(opt, OPT_LIST);
            server_entry(d).expect("export entry");
        }
        REP_INFO => {
            assert!(matches!(opt, OPT_INFO | OPT_GO));
            match info(d).expect("information reply") {
                Info::BlockSize {
                    min,
                    preferred,
                    max,
                } => assert!(min.is_power_of_two() && min <= preferred && preferred <= max),
                Info::Unknown(i) => panic!("unknown info item {i}"),
                Info::Export(_) | Info::Name(_) | Info::Description(_) => {}
            }
        }
        REP_META => {
            assert!(matches!(opt, OPT_LIST_META | OPT_SET_META));
            meta_context(d).expect("meta context");
        }
        t if t & REP_ERROR_BIT != 0 => {
            let known = [
                ERR_UNSUP,
                ERR_POLICY,
                ERR_TLS_REQD,
                ERR_INVALID,
                ERR_UNKNOWN,
                ERR_SHUTDOWN,
                ERR_TOO_BIG,
                ERR_EXT_HEADER_REQD,
            ];
            assert!(known.contains(&t), "unknown error {t:#x}");
            assert!(d.len() <= MAX_STRING);
        }
        t => panic!("unknown reply type {t}"),
    }
}

fn known_errno(e: u32) -> bool {
    [
        EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN,
    ]
    .contains(&e)
}

/// The replies to one request: a simple reply where the style allows it, or
/// chunks with exactly one DONE, last, all carrying the request's cookie.
pub(super) fn check_replies(s: &Agreement, req: &Req, reply: &[u8]) {
    let (h, n) = whole(reply_header(reply), "reply header");
    let ReplyHeader::Simple { error, cookie } = h else {
        assert!(s.style != Style::Simple, "chunk without structured replies");
        return chunks(s, req, reply);
    };
    assert!(
        s.style != Style::Extended,
        "simple reply after extended headers"
    );
    assert_eq!(cookie, req.cookie);
    assert!(error == 0 || known_errno(error), "errno {error}");
    let data = reply.len() - n;
    if error == 0 && req.kind == CMD_READ && s.style == Style::Simple {
        assert_eq!(data as u64, req.length, "READ data");
    } else {
        // A structured READ's data must come in chunks.
        assert!(data == 0 && !(error == 0 && req.kind == CMD_READ && req.length > 0));
    }
}

fn chunks(s: &Agreement, req: &Req, mut rest: &[u8]) {
    let extended = s.style == Style::Extended;
    let mut done = false;
    let mut read_pos = req.offset;
    let mut error = false;
    while !rest.is_empty() {
        assert!(!done, "a chunk after DONE");
        let (h, hlen) = whole(reply_header(rest), "chunk header");
        let ReplyHeader::Chunk(c) = h else {
            panic!("a simple reply among chunks")
        };
        assert_eq!(c.extended, extended, "chunk header of the other style");
        assert_eq!(c.cookie, req.cookie);
        if extended {
            assert_eq!(c.offset, req.offset);
        }
        assert!(
            (rest.len() - hlen) as u64 >= c.len,
            "chunk payload truncated"
        );
        let p = &rest[hlen..hlen + c.len as usize]; // checked just above
        assert_eq!(c.flags & !REPLY_FLAG_DONE, 0, "unknown chunk flags");
        match chunk(c.kind, p).unwrap_or_else(|e| panic!("chunk type {}: {e}", c.kind)) {
            Chunk::None => assert!(c.done()),
            Chunk::Data { offset, data } => {
                assert_eq!(req.kind, CMD_READ);
                read_pos = next_read(read_pos, offset, data.len() as u64);
            }
            Chunk::Hole { offset, len } => {
                assert_eq!(req.kind, CMD_READ);
                read_pos = next_read(read_pos, offset, u64::from(len));
            }
            Chunk::BlockStatus { context, extents } => {
                assert_eq!(req.kind, CMD_BLOCK_STATUS);
                assert_eq!(c.kind == T_BS_EXT, extended);
                assert_eq!(context, BASE_ALLOCATION_ID);
                let req_one = req.flags & F_REQ_ONE != 0;
                let n = extents.len();
                assert!(!req_one || n == 1, "REQ_ONE answered with {n} extents");
                for (_, flags) in extents {
                    assert_eq!(flags & !(STATE_HOLE | STATE_ZERO), 0);
                }
            }
            Chunk::Error { errno, .. } => {
                assert_eq!(c.kind, T_ERROR);
                assert!(known_errno(errno));
                error = true;
            }
        }
        done = c.done();
        rest = &rest[hlen + p.len()..];
    }
    assert!(done, "no DONE chunk");
    if req.kind == CMD_READ && !error {
        assert_eq!(
            read_pos - req.offset,
            req.length,
            "READ chunks cover the request"
        );
    }
}

/// READ chunks come in order: one at `at` of `n` bytes must start where the
/// last one ended. Returns where the next one starts.
fn next_read(pos: u64, at: u64, n: u64) -> u64 {
    assert!(at == pos, "READ chunks out of order");
    pos + n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::option::put_reply;
    use crate::proto::reply::{chunk, simple};

    fn session(style: Style) -> Agreement {
        Agreement {
            flags: 0,
            ..Agreement::new(&crate::export::test_export(false, 1), style, true)
        }
    }

    fn read(length: u64) -> Req {
        Req {
            flags: 0,
            kind: CMD_READ,
            cookie: 7,
            offset: 512,
            length,
        }
    }

    fn fails(f: impl FnOnce() + std::panic::UnwindSafe) -> bool {
        std::panic::catch_unwind(f).is_err()
    }

    /// The checks are not vacuous: each catches the fault it is there for.
    #[test]
    fn catches_malformed_replies() {
        let ok = simple(0, 7).as_bytes().to_vec();
        let mut data = ok.clone();
        data.extend_from_slice(&[0; 4]);
        check_replies(&session(Style::Simple), &read(4), &data);
        assert!(fails(|| check_replies(
            &session(Style::Simple),
            &read(5),
            &data
        )));
        assert!(fails(|| check_replies(
            &session(Style::Extended),
            &read(0),
            &ok
        )));
        let wrong_cookie = simple(0, 8).as_bytes().to_vec();
        assert!(fails(|| check_replies(
            &session(Style::Simple),
            &read(0),
            &wrong_cookie
        )));
        // A structured READ must end with DONE and cover the request.
        let s = session(Style::Structured);
        let mut c = chunk(Style::Structured, 0, T_DATA, 7, 512, 12)
            .as_bytes()
            .to_vec();
        c.extend_from_slice(&512u64.to_be_bytes());
        c.extend_from_slice(&[1; 4]);
        assert!(fails(|| check_replies(&s, &read(4), &c)));
        c[5] = REPLY_FLAG_DONE as u8;
        check_replies(&s, &read(4), &c);
        assert!(fails(|| check_replies(&s, &read(8), &c)));
    }

    #[test]
    fn catches_malformed_option_replies() {
        let mut out = Vec::new();
        put_reply(&mut out, OPT_LIST, REP_ACK, &[]);
        assert_eq!(option_replies(&out, OPT_LIST), vec![REP_ACK]);
        assert!(fails(|| {
            option_replies(&out, OPT_GO);
        }));
        out[19] = 1; // announces data that is not there
        assert!(fails(|| {
            option_replies(&out, OPT_LIST);
        }));
    }
}
