//! Where a filter says the data reads as zeroes (truncate: past the end of
//! what is below): requests it answers so (`Verdict::Zeroes`), and the parts
//! of requests it cut short (`Call::len` shorter than the client's request).
//! Zeroes in replies are lent from one shared block, never copied, so a large
//! READ past the end costs neither memory nor a memset.

use std::rc::Rc;

use super::{Incoming, reply, status};
use crate::backend::Extent;
use crate::buf::{Out, all_zero};
use crate::filter::Call;
use crate::proto::reply::{self as wire, Style};
use crate::proto::*;

/// The shared block of zeroes lent into replies: a 64 MiB READ of zeroes is
/// 256 pieces of it, one writev's worth.
const ZERO_BLOCK: usize = 256 * 1024;

thread_local! {
    /// Made when first needed (the server has one thread: one block).
    static ZEROES: Rc<[u8]> = vec![0u8; ZERO_BLOCK].into();
}

/// Answers `call` as if everything it covers read as zeroes; returns the NBD
/// error its reply carries (0: none).
pub fn answer(r: &Incoming, call: &Call, out: &mut Out) -> u32 {
    match call.kind {
        CMD_READ => {
            read(r, out);
            0
        }
        CMD_WRITE if !all_zero(r.payload) => refuse_write(r, out),
        CMD_BLOCK_STATUS => {
            let mut hole = vec![Extent {
                len: call.len,
                flags: STATE_HOLE | STATE_ZERO,
            }];
            status::put(r, &mut hole, call.len, 1, out);
            0
        }
        _ => {
            reply::ok(&r.agreed, &r.req, out);
            0
        }
    }
}

/// A READ of zeroes only: one hole chunk where the agreement has chunks (and
/// the client did not forbid splitting, which one chunk does not do anyway),
/// else the zeroes themselves.
pub fn read(r: &Incoming, out: &mut Out) {
    let len = r.req.length;
    match r.agreed.style {
        Style::Simple => {
            out.put(wire::simple(0, r.req.cookie).as_bytes());
            lend(len, out);
        }
        _ if len == 0 => reply::chunk(&r.agreed, &r.req, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0, out),
        _ => {
            let kind = REPLY_TYPE_OFFSET_HOLE;
            let payload = wire::HOLE_LEN as u64;
            reply::chunk(&r.agreed, &r.req, REPLY_FLAG_DONE, kind, payload, out);
            out.put(&wire::hole_payload(r.req.offset, len as u32)); // ≤ max_request, checked
        }
    }
}

/// How many zero bytes follow the data from below in a READ's reply: the
/// part of the client's request a filter cut off.
pub fn tail(r: &Incoming, call: &Call) -> u64 {
    r.req.length.saturating_sub(call.len)
}

/// Queues `n` zero bytes, lent from the shared block.
pub fn lend(mut n: u64, out: &mut Out) {
    if n == 0 {
        return; // the common case: nothing cut
    }
    ZEROES.with(|z| {
        while n > 0 {
            let k = n.min(ZERO_BLOCK as u64) as usize; // ≤ ZERO_BLOCK
            out.lend(z.clone(), 0..k);
            n -= k as u64;
        }
    });
}

/// A WRITE's payload as far as it goes below (a filter may have cut the
/// rest: see `cut_write_fits`).
pub fn below<'a>(r: &Incoming<'a>, call: &Call) -> &'a [u8] {
    let n = (call.len as usize).min(r.payload.len());
    &r.payload[..n]
}

/// A WRITE cut short: whether what was cut off is zeroes (which need not be
/// stored: they read back as zeroes anyway).
pub fn cut_write_fits(r: &Incoming, call: &Call) -> bool {
    all_zero(&r.payload[below(r, call).len()..])
}

/// Data past the end of what is below that is not zeroes: it cannot be
/// stored (as nbdkit's truncate filter: ENOSPC).
pub fn refuse_write(r: &Incoming, out: &mut Out) -> u32 {
    log::debug!(
        "WRITE offset {}: data past the end of the device below",
        r.req.offset
    );
    reply::error(
        &r.agreed,
        &r.req,
        out,
        ENOSPC,
        "write beyond the end of the device below",
    );
    ENOSPC
}
