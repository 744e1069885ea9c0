//! Replies without data: success, and errors (simple, or an error chunk that
//! carries a message for humans), in whichever style the handshake agreed.

use crate::agreement::Agreement;
use crate::backend::nbd_errno;
use crate::buf::Out;
use crate::proto::reply::{self, Style};
use crate::proto::request::Request;
use crate::proto::*;

/// The reply to a request without data in its reply, once it is done.
pub fn finish(
    s: &Agreement,
    req: &Request,
    effect: u64,
    result: std::io::Result<()>,
    out: &mut Out,
) {
    match result {
        Ok(()) => ok(s, req, out),
        Err(e) => {
            let errno = nbd_errno(&e);
            if errno != ENOTSUP {
                log::warn!(
                    "{} offset {} length {}: {e}",
                    command_name(req.kind),
                    req.offset,
                    effect
                );
            }
            error(s, req, out, errno, "backend error")
        }
    }
}

/// A successful reply with no payload.
pub fn ok(s: &Agreement, req: &Request, out: &mut Out) {
    match s.style {
        Style::Extended => chunk(s, req, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0, out),
        _ => out.put(reply::simple(0, req.cookie).as_bytes()),
    }
}

/// An error reply: simple when nothing else was negotiated, else an error chunk
/// carrying `msg`.
pub fn error(s: &Agreement, req: &Request, out: &mut Out, errno: u32, msg: &str) {
    if s.style == Style::Simple {
        return out.put(reply::simple(errno, req.cookie).as_bytes());
    }
    let msg = &msg.as_bytes()[..msg.len().min(MAX_STRING)];
    let payload = reply::error_payload_len(msg.len());
    chunk(s, req, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, payload, out);
    out.put(&reply::error_payload(errno, msg.len() as u16)); // ≤ MAX_STRING
    out.put(msg);
}

/// A structured or extended chunk header.
pub fn chunk(s: &Agreement, req: &Request, flags: u16, kind: u16, payload: u64, out: &mut Out) {
    out.put(reply::chunk(s.style, flags, kind, req.cookie, req.offset, payload).as_bytes());
}
