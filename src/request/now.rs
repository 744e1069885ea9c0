//! Requests on data at hand (RAM, synthetic exports): done at once, on the
//! loop's thread, their reply queued before `serve` returns.

use super::{Incoming, read, reply};
use crate::backend::{Extent, Store, Zero};
use crate::buf::Out;
use crate::proto::request::Request;
use crate::proto::*;

/// Runs a checked request on `store`. `holes`: where a structured READ is
/// split (see `read::find_holes`).
pub fn run(r: &Incoming, effect: u64, store: &mut dyn Store, holes: &[Extent], out: &mut Out) {
    let req = &r.req;
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let result = match req.kind {
        CMD_READ => return read::read(r, effect, store, holes, out),
        _ if effect == 0 && req.kind != CMD_FLUSH => Ok(()),
        CMD_WRITE => store.write(r.payload, req.offset, fua),
        CMD_FLUSH => store.flush(),
        CMD_TRIM => store.trim(req.offset, effect, fua),
        CMD_WRITE_ZEROES => store.zero(req.offset, effect, zero_how(req), fua),
        CMD_CACHE => store.cache(req.offset, effect),
        _ => unreachable!("check() refuses unknown commands"),
    };
    reply::finish(&r.session, req, effect, result, out);
}

/// How WRITE_ZEROES may be carried out, from its flags.
pub fn zero_how(req: &Request) -> Zero {
    Zero {
        may_trim: req.flags & CMD_FLAG_NO_HOLE == 0,
        fast: req.flags & CMD_FLAG_FAST_ZERO != 0,
    }
}
