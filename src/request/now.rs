//! Requests on data at hand (RAM, synthetic exports): done at once, on the
//! loop's thread, their reply queued before `serve` returns.

use super::{Incoming, read, reply, zeroes};
use crate::backend::{Extent, Store, Zero};
use crate::buf::Out;
use crate::filter::Call;
use crate::proto::*;

/// Runs `call` on `store` and queues the reply to `r`; returns the NBD error
/// it carries (0: none). `holes`: where a structured READ is split (see
/// `read::find_holes`).
pub fn run(
    r: &Incoming,
    call: &Call,
    store: &mut dyn Store,
    holes: &[Extent],
    out: &mut Out,
) -> u32 {
    let (offset, len) = (call.offset, call.len);
    let fua = call.flags & CMD_FLAG_FUA != 0;
    let result = match call.kind {
        CMD_READ => return read::read(r, call, store, holes, out),
        _ if len == 0 && call.kind != CMD_FLUSH => Ok(()),
        // Only what is below: a filter may have cut the rest (see `Call::len`).
        CMD_WRITE => store.write(zeroes::below(r, call), offset, fua),
        CMD_FLUSH => store.flush(),
        CMD_TRIM => store.trim(offset, len, fua),
        CMD_WRITE_ZEROES => store.zero(offset, len, zero_how(call), fua),
        CMD_CACHE => store.cache(offset, len),
        _ => unreachable!("check() refuses unknown commands"),
    };
    reply::finish(&r.agreed, &r.req, len, result, out)
}

/// How WRITE_ZEROES may be carried out, from its flags.
pub fn zero_how(call: &Call) -> Zero {
    Zero {
        may_trim: call.flags & CMD_FLAG_NO_HOLE == 0,
        fast: call.flags & CMD_FLAG_FAST_ZERO != 0,
    }
}
