//! Invariants of one `Driver::one` step, checked against the wire format as the
//! spec states it. The request header and the replies are parsed here with small
//! readers of their own, so a bug in the server's parser or encoder is not
//! mirrored by the check.

use crate::driver::{Driver, Progress};
use crate::export::{BASE_ALLOCATION_ID, Export, MAX_REQUEST};
use crate::proto::*;
use crate::transmission::Session;

use super::Start;

/// Most reply bytes one handshake step may produce: a handful of replies
/// carrying our own short strings.
const HANDSHAKE_REPLY_MAX: usize = 16 * 1024;
/// Reply bytes one request may produce beyond the data it reads: headers of at
/// most 65 READ chunks, or a block-status reply for a small export.
const REQUEST_OVERHEAD_MAX: usize = 16 * 1024;

/// What the driver looked like before a step.
#[derive(Debug, Clone, Copy)]
pub struct State {
    session: Option<Session>,
    skip: u64,
}

impl State {
    pub fn of(d: &Driver) -> State {
        State {
            session: d.session(),
            skip: d.skip(),
        }
    }
}

/// Checks steps in order; remembers what earlier steps established.
pub struct Checker {
    size: u64,
    flags_read: bool,
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    (u64::from(u32_at(b, i)) << 32) | u64::from(u32_at(b, i + 4))
}

impl Checker {
    pub fn new(ex: &Export, start: Start) -> Checker {
        Checker {
            size: ex.size,
            flags_read: start == Start::Transmission,
        }
    }

    /// One step: `pending` was the input, of which `used` bytes were used;
    /// `reply` is everything it queued; `after` is the driver now.
    pub fn step(
        &mut self,
        before: &State,
        after: &Driver,
        pending: &[u8],
        used: usize,
        progress: Progress,
        reply: &[u8],
    ) {
        assert!(used <= pending.len(), "used {used} of {}", pending.len());
        assert!(
            after.need() <= MAX_REQUEST as usize + request::EXTENDED_LEN,
            "would read {} bytes ahead",
            after.need()
        );
        let skipped = before.skip.min(pending.len() as u64) as usize; // ≤ pending.len()
        assert!(used >= skipped, "skipped {skipped} but used only {used}");
        if before.skip > skipped as u64 {
            // Still skipping: nothing else may happen.
            assert_eq!((used, progress), (skipped, Progress::NeedInput));
            assert!(reply.is_empty() && after.skip() == before.skip - skipped as u64);
            return;
        }
        let msg = &pending[skipped..];
        let used = used - skipped;
        if progress == Progress::Some {
            assert!(used > 0, "a message handled without using input");
        } else {
            assert_eq!(used, 0, "input used by a step that handled nothing");
        }
        match before.session {
            None => self.handshake(after, msg, used, progress, reply),
            Some(s) => self.request(&s, after, msg, used, progress, reply),
        }
    }

    fn handshake(
        &mut self,
        after: &Driver,
        msg: &[u8],
        used: usize,
        progress: Progress,
        reply: &[u8],
    ) {
        if !self.flags_read {
            assert!(reply.is_empty(), "a reply to the client's flags");
            match progress {
                Progress::Some => {
                    assert_eq!(used, 4);
                    self.flags_read = true;
                }
                Progress::NeedInput => assert!(msg.len() < 4),
                Progress::Close(_) => assert!(u32_at(msg, 0) & !3 != 0, "valid flags refused"),
                Progress::Blocked => panic!("the handshake waited for the I/O engine"),
            }
            return;
        }
        assert!(
            reply.len() <= HANDSHAKE_REPLY_MAX,
            "{} reply bytes",
            reply.len()
        );
        if msg.len() < 16 {
            assert_eq!(progress, Progress::NeedInput);
            assert!(reply.is_empty());
            return;
        }
        let magic_ok = u64_at(msg, 0) == IHAVEOPT;
        let (opt, len) = (u32_at(msg, 8), u32_at(msg, 12));
        match progress {
            Progress::NeedInput => {
                assert!(magic_ok && len <= buffered_limit(opt) && msg.len() < 16 + len as usize);
                assert!(reply.is_empty());
            }
            Progress::Blocked => panic!("the handshake waited for the I/O engine"),
            Progress::Close(_) => {
                // Only ABORT is answered before the close.
                if !reply.is_empty() {
                    assert_eq!(opt, OPT_ABORT);
                    assert_eq!(option_replies(reply, opt), vec![REP_ACK]);
                }
            }
            Progress::Some => {
                assert!(magic_ok, "a bad option magic accepted");
                self.option(after, opt, len, used, reply);
            }
        }
    }

    /// An option that was handled: its length framing, and exactly one final
    /// reply (ACK or error), last.
    fn option(&self, after: &Driver, opt: u32, len: u32, used: usize, reply: &[u8]) {
        if len > buffered_limit(opt) {
            assert_eq!(used, 16, "oversized option data not skipped");
            assert_eq!(after.skip(), u64::from(len));
        } else {
            assert_eq!(used, 16 + len as usize, "option framing");
        }
        if let Some(s) = after.session() {
            assert!(
                matches!(opt, OPT_GO | OPT_EXPORT_NAME),
                "option {opt} ended the handshake"
            );
            if opt == OPT_EXPORT_NAME {
                assert!(reply.len() == 10 || reply.len() == 134);
                assert_eq!(u64_at(reply, 0), self.size);
                assert_eq!(u16_at(reply, 8), s.flags);
                assert!(reply[10..].iter().all(|&b| b == 0));
                return;
            }
        }
        let types = option_replies(reply, opt);
        let finals = types.iter().filter(|&&t| is_final(t)).count();
        assert_eq!(finals, 1, "option {opt}: replies {types:x?}");
        assert!(types.last().is_some_and(|&t| is_final(t)));
        if after.session().is_some() {
            assert_eq!(types.last(), Some(&REP_ACK));
        }
    }

    fn request(
        &self,
        s: &Session,
        after: &Driver,
        msg: &[u8],
        used: usize,
        progress: Progress,
        reply: &[u8],
    ) {
        let extended = s.style == reply::Style::Extended;
        let hdr_len = if extended { 32 } else { 28 };
        if progress != Progress::Some {
            assert!(reply.is_empty(), "a reply without a request");
            return;
        }
        assert!(msg.len() >= hdr_len);
        let magic = if extended {
            EXT_REQUEST_MAGIC
        } else {
            REQUEST_MAGIC
        };
        assert_eq!(u32_at(msg, 0), magic, "a bad request magic accepted");
        let req = Req {
            flags: u16_at(msg, 4),
            kind: u16_at(msg, 6),
            cookie: u64_at(msg, 8),
            offset: u64_at(msg, 16),
            length: if extended {
                u64_at(msg, 24)
            } else {
                u64::from(u32_at(msg, 24))
            },
        };
        assert_ne!(req.kind, CMD_DISC, "DISC answered");
        if used == hdr_len && after.skip() > 0 {
            // A compact WRITE too large to serve: refused, its payload skipped.
            assert!(!extended && req.kind == CMD_WRITE && req.length > MAX_REQUEST);
            assert_eq!(after.skip(), req.length);
        } else {
            let payload = used - hdr_len;
            assert!(
                payload == 0 || payload as u64 == req.length,
                "request framing"
            );
        }
        let max = REQUEST_OVERHEAD_MAX + self.size.min(req.length) as usize;
        assert!(reply.len() <= max, "{} reply bytes", reply.len());
        check_replies(s, &req, reply);
    }
}

/// A request header, as read here.
struct Req {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    length: u64,
}

fn is_final(t: u32) -> bool {
    t == REP_ACK || t & (1 << 31) != 0
}

/// Splits option replies, checking each header and its data; returns the types.
fn option_replies(mut rest: &[u8], opt: u32) -> Vec<u32> {
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
fn check_replies(s: &Session, req: &Req, reply: &[u8]) {
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

fn chunks(s: &Session, req: &Req, mut rest: &[u8]) {
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

/// How much option data the server may buffer, per option, written down here
/// independently of the handshake code: a name (4096 bytes) for EXPORT_NAME; a
/// name, its length and up to 64 information requests for INFO and GO; 64 KiB
/// for the META_CONTEXT options; nothing for options that take no data or are
/// unknown (answered from the header, their data skipped).
fn buffered_limit(opt: u32) -> u32 {
    match opt {
        OPT_EXPORT_NAME => 4096,
        OPT_INFO | OPT_GO => 4 + 4096 + 2 + 2 * 64,
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => 64 * 1024,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reply::{Style, chunk, simple};

    fn session(style: Style) -> Session {
        Session {
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
