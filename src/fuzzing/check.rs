//! Invariants of one `Driver::one` step, checked against the wire format as the
//! spec states it. The request header is parsed here, and the replies in
//! `replies`, with small readers of their own, so a bug in the server's parser or
//! encoder is not mirrored by the check.

use crate::agreement::Agreement;
use crate::driver::{Driver, Progress};
use crate::export::{Export, MAX_REQUEST};
use crate::proto::*;

use super::Start;

/// The reply parsers: part of this check alone, hence a child module.
mod replies;

use replies::{Req, check_replies, is_final, option_replies, u16_at, u32_at, u64_at};

/// Most reply bytes one handshake step may produce: a handful of replies
/// carrying our own short strings.
const HANDSHAKE_REPLY_MAX: usize = 16 * 1024;
/// Reply bytes one request may produce beyond the data it reads: headers of at
/// most 65 READ chunks, or a block-status reply for a small export.
const REQUEST_OVERHEAD_MAX: usize = 16 * 1024;

/// What the driver looked like before a step.
#[derive(Debug, Clone, Copy)]
pub struct State {
    session: Option<Agreement>,
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
        if matches!(progress, Progress::Handled | Progress::StartTls) {
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
                Progress::Handled => {
                    assert_eq!(used, 4);
                    self.flags_read = true;
                }
                Progress::NeedInput => assert!(msg.len() < 4),
                Progress::Close(_) => assert!(u32_at(msg, 0) & !3 != 0, "valid flags refused"),
                Progress::NeedRoom | Progress::StartTls | Progress::NeedMemory => {
                    panic!("{progress:?} for client flags")
                }
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
            Progress::NeedRoom => panic!("the handshake waited for the I/O engine"),
            Progress::NeedMemory => panic!("the handshake waited for memory"),
            Progress::StartTls => {
                // Only an empty STARTTLS, answered with one ACK and nothing more.
                assert!(magic_ok && opt == OPT_STARTTLS && len == 0 && used == 16);
                assert_eq!(option_replies(reply, opt), vec![REP_ACK]);
            }
            Progress::Close(_) => {
                // Only ABORT is answered before the close.
                if !reply.is_empty() {
                    assert_eq!(opt, OPT_ABORT);
                    assert_eq!(option_replies(reply, opt), vec![REP_ACK]);
                }
            }
            Progress::Handled => {
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
        s: &Agreement,
        after: &Driver,
        msg: &[u8],
        used: usize,
        progress: Progress,
        reply: &[u8],
    ) {
        let extended = s.style == reply::Style::Extended;
        let hdr_len = if extended { 32 } else { 28 };
        if progress != Progress::Handled {
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
