//! The check's own readers of the wire: option replies and transmission
//! replies (simple, or chunks with their READ data and block-status extents),
//! parsed as the spec states them, apart from the server's `proto` parsers and
//! encoders so that a bug there is not mirrored here. Each reader panics, with
//! a message, on what the spec does not allow.

use crate::agreement::Agreement;
use crate::export::BASE_ALLOCATION_ID;
use crate::proto::*;

// Big-endian fields at byte `i`; callers have checked the length.

pub(super) fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

pub(super) fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

pub(super) fn u64_at(b: &[u8], i: usize) -> u64 {
    (u64::from(u32_at(b, i)) << 32) | u64::from(u32_at(b, i + 4))
}

/// A request header, as read here.
pub(super) struct Req {
    pub(super) flags: u16,
    pub(super) kind: u16,
    pub(super) cookie: u64,
    pub(super) offset: u64,
    pub(super) length: u64,
}

pub(super) fn is_final(t: u32) -> bool {
    t == REP_ACK || t & (1 << 31) != 0
}

/// Splits option replies, checking each header and its data; returns the types.
pub(super) fn option_replies(mut rest: &[u8], opt: u32) -> Vec<u32> {
    let mut types = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 20, "truncated option reply");
        assert_eq!(u64_at(rest, 0), OPT_REPLY_MAGIC);
        assert_eq!(u32_at(rest, 8), opt, "reply to another option");
        let (t, len) = (u32_at(rest, 12), u32_at(rest, 16) as usize);
        assert!(rest.len() >= 20 + len, "option reply data truncated");
        option_reply_data(opt, t, &rest[20..20 + len]);
        types.push(t);
        rest = &rest[20 + len..];
    }
    types
}

/// The data of one option reply fits its type, and the type fits the option.
fn option_reply_data(opt: u32, t: u32, d: &[u8]) {
    match t {
        REP_ACK => assert!(d.is_empty()),
        REP_SERVER => {
            assert_eq!(opt, OPT_LIST);
            assert!(d.len() >= 4 && u32_at(d, 0) as usize <= d.len() - 4);
        }
        REP_INFO => {
            assert!(matches!(opt, OPT_INFO | OPT_GO));
            assert!(d.len() >= 2);
            match u16_at(d, 0) {
                INFO_EXPORT => assert_eq!(d.len(), 12),
                INFO_BLOCK_SIZE => {
                    assert_eq!(d.len(), 14);
                    let (min, pref, max) = (u32_at(d, 2), u32_at(d, 6), u32_at(d, 10));
                    assert!(min.is_power_of_two() && min <= pref && pref <= max);
                }
                INFO_NAME | INFO_DESCRIPTION => assert!(d.len() - 2 <= MAX_STRING),
                i => panic!("unknown info item {i}"),
            }
        }
        REP_META_CONTEXT => {
            assert!(matches!(opt, OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT));
            assert!(d.len() > 4 && d.len() - 4 <= MAX_STRING);
        }
        t if t & (1 << 31) != 0 => {
            let known = [
                REP_ERR_UNSUP,
                REP_ERR_POLICY,
                REP_ERR_TLS_REQD,
                REP_ERR_INVALID,
                REP_ERR_UNKNOWN,
                REP_ERR_SHUTDOWN,
                REP_ERR_TOO_BIG,
                REP_ERR_EXT_HEADER_REQD,
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
    use reply::Style;
    assert!(reply.len() >= 4, "no reply");
    if u32_at(reply, 0) == SIMPLE_REPLY_MAGIC {
        assert!(
            s.style != Style::Extended,
            "simple reply after extended headers"
        );
        assert!(reply.len() >= 16);
        let error = u32_at(reply, 4);
        assert_eq!(u64_at(reply, 8), req.cookie);
        assert!(error == 0 || known_errno(error), "errno {error}");
        let data = reply.len() - 16;
        if error == 0 && req.kind == CMD_READ && s.style == Style::Simple {
            assert_eq!(data as u64, req.length, "READ data");
        } else {
            // A structured READ's data must come in chunks.
            assert!(data == 0 && !(error == 0 && req.kind == CMD_READ && req.length > 0));
        }
        return;
    }
    assert!(s.style != Style::Simple, "chunk without structured replies");
    chunks(s, req, reply);
}

fn chunks(s: &Agreement, req: &Req, mut rest: &[u8]) {
    let extended = s.style == reply::Style::Extended;
    let (hdr, magic) = if extended {
        (32, EXT_REPLY_MAGIC)
    } else {
        (20, STRUCTURED_REPLY_MAGIC)
    };
    let mut done = false;
    let mut read_pos = req.offset;
    let mut error = false;
    while !rest.is_empty() {
        assert!(!done, "a chunk after DONE");
        assert!(rest.len() >= hdr, "truncated chunk header");
        assert_eq!(u32_at(rest, 0), magic);
        let (flags, kind) = (u16_at(rest, 4), u16_at(rest, 6));
        assert_eq!(u64_at(rest, 8), req.cookie);
        let len = if extended {
            assert_eq!(u64_at(rest, 16), req.offset);
            u64_at(rest, 24)
        } else {
            u64::from(u32_at(rest, 16))
        };
        assert!(
            rest.len() as u64 >= hdr as u64 + len,
            "chunk payload truncated"
        );
        let p = &rest[hdr..hdr + len as usize]; // checked just above
        assert_eq!(flags & !REPLY_FLAG_DONE, 0, "unknown chunk flags");
        match kind {
            REPLY_TYPE_NONE => assert!(p.is_empty() && flags & REPLY_FLAG_DONE != 0),
            REPLY_TYPE_OFFSET_DATA | REPLY_TYPE_OFFSET_HOLE => {
                assert_eq!(req.kind, CMD_READ);
                let (at, n) = if kind == REPLY_TYPE_OFFSET_DATA {
                    assert!(p.len() > 8, "empty data chunk");
                    (u64_at(p, 0), p.len() as u64 - 8)
                } else {
                    assert_eq!(p.len(), 12);
                    (u64_at(p, 0), u64::from(u32_at(p, 8)))
                };
                assert!(n > 0 && at == read_pos, "READ chunks out of order");
                read_pos += n;
            }
            REPLY_TYPE_BLOCK_STATUS | REPLY_TYPE_BLOCK_STATUS_EXT => {
                assert_eq!(req.kind, CMD_BLOCK_STATUS);
                assert_eq!(kind == REPLY_TYPE_BLOCK_STATUS_EXT, extended);
                block_status(p, extended, req.flags & CMD_FLAG_REQ_ONE != 0);
            }
            REPLY_TYPE_ERROR => {
                assert!(p.len() >= 6 && known_errno(u32_at(p, 0)));
                assert_eq!(usize::from(u16_at(p, 4)), p.len() - 6);
                error = true;
            }
            k => panic!("unknown chunk type {k}"),
        }
        done = flags & REPLY_FLAG_DONE != 0;
        rest = &rest[hdr + len as usize..];
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

fn block_status(p: &[u8], extended: bool, req_one: bool) {
    let (head, per) = if extended { (8, 16) } else { (4, 8) };
    assert!(p.len() >= head + per, "no descriptor");
    assert_eq!(u32_at(p, 0), BASE_ALLOCATION_ID);
    assert_eq!((p.len() - head) % per, 0);
    let n = (p.len() - head) / per;
    if extended {
        assert_eq!(u32_at(p, 4) as usize, n);
    }
    assert!(!req_one || n == 1, "REQ_ONE answered with {n} extents");
    for d in p[head..].chunks_exact(per) {
        let (len, flags) = if extended {
            (u64_at(d, 0), u64_at(d, 8))
        } else {
            (u64::from(u32_at(d, 0)), u64::from(u32_at(d, 4)))
        };
        assert!(len > 0, "an empty extent");
        assert_eq!(flags & !u64::from(STATE_HOLE | STATE_ZERO), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reply::{Style, chunk, simple};

    fn session(style: Style) -> Agreement {
        Agreement {
            style,
            flags: 0,
            meta: true,
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
        let mut c = chunk(Style::Structured, 0, REPLY_TYPE_OFFSET_DATA, 7, 512, 12)
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
        option::put_reply(&mut out, OPT_LIST, REP_ACK, &[]);
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
