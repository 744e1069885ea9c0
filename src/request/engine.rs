//! Requests on a backend whose data goes through the I/O engine (`crate::aio`):
//! each becomes an operation that owns its buffer, and its reply is built when
//! its completion comes back, in whatever order completions come. NBD lets a
//! server answer in any order; every reply is built whole, so replies never
//! interleave.

use super::now::zero_how;
use super::{Incoming, Ran, read, reply, zeroes};
use crate::aio::{Done, Op};
use crate::buf::{Out, Pool};
use crate::filter::Call;
use crate::proto::*;
use crate::storage::{Flight, Storage};

/// Buffers smaller than this (a pool block's size) are the request's own,
/// exactly its size, and never enter the pool. A pool block cut down to 4 KiB
/// came back to the pool too short for the input and output it is kept for,
/// so every turn allocated a fresh 64 KiB block, zeroed: 15% of the server's
/// CPU in cached 4 KiB reads went to that memset.
const OWN_BUFFER: usize = 64 * 1024;

/// Hands `call` to the engine (or, if it has nothing to do, answers it at once).
pub fn submit(r: &Incoming, call: &Call, storage: &mut Storage, out: &mut Out) -> Ran {
    let req = &r.req;
    if call.len == 0 && call.kind != CMD_FLUSH {
        reply::ok(&r.agreed, req, out); // nothing to do: done
        return Ran::Replied(0);
    }
    let op = operation(r, call, out.pool());
    let flight = Flight {
        origin: r.origin,
        agreed: r.agreed,
        req: *req,
        call: *call,
    };
    match storage.submit(flight, op) {
        Ok(()) => Ran::Submitted(flight.owed()),
        Err(op) => {
            // The driver asked `Storage::has_room` first (the server too, before
            // it released a request a filter held), so this does not
            // happen; if it did, the client gets an answer rather than silence.
            log::warn!("{}: no room in the I/O engine", command_name(req.kind));
            if let Op::Read { buf, .. } | Op::Write { buf, .. } = op {
                recycle(out.pool(), buf);
            }
            reply::error(&r.agreed, req, out, ENOMEM, "server busy");
            Ran::Replied(ENOMEM)
        }
    }
}

/// The engine's operation for a request with a nonzero effect (or a FLUSH).
fn operation(r: &Incoming, call: &Call, pool: &mut Pool) -> Op {
    let (offset, len) = (call.offset, call.len);
    let fua = call.flags & CMD_FLAG_FUA != 0;
    match call.kind {
        CMD_READ => Op::Read {
            offset,
            buf: block(pool, len as usize), // ≤ MAX_REQUEST, checked
        },
        CMD_WRITE => {
            // Only what is below: a filter may have cut the rest (see `Call::len`).
            let below = zeroes::below(r, call);
            let mut buf = block(pool, below.len());
            buf.copy_from_slice(below);
            Op::Write { offset, buf, fua }
        }
        CMD_FLUSH => Op::Flush,
        CMD_TRIM => Op::Trim { offset, len, fua },
        CMD_WRITE_ZEROES => {
            let how = zero_how(call);
            let (may_trim, fast) = (how.may_trim, how.fast);
            Op::Zero {
                offset,
                len,
                may_trim,
                fast,
                fua,
            }
        }
        CMD_CACHE => Op::Cache { offset, len },
        _ => unreachable!("only data commands reach the engine"),
    }
}

/// A buffer of exactly `n` bytes: its own when small (see `OWN_BUFFER`), else
/// a pool block (whose spare capacity stays with it).
fn block(pool: &mut Pool, n: usize) -> Vec<u8> {
    if n < OWN_BUFFER {
        return vec![0; n];
    }
    let mut b = pool.take(n);
    b.truncate(n);
    b
}

/// A buffer back from the engine: a pool block returns to the pool, a small
/// one of the request's own is freed.
pub fn recycle(pool: &mut Pool, b: Vec<u8>) {
    if b.len() >= OWN_BUFFER {
        pool.give(b);
    }
}

/// The reply to a request whose completion came back; returns its NBD error
/// (0: none). A large READ's data goes out of the buffer the disk read into,
/// without a copy; a small one's is copied in behind its header, where other
/// replies join it.
pub fn reply(flight: &Flight, done: Done, out: &mut Out) -> u32 {
    let r = Incoming {
        origin: flight.origin,
        conn: flight.call.conn,
        agreed: flight.agreed,
        req: flight.req,
        payload: &[],
        now: flight.call.started,
    };
    let len = flight.call.len;
    let mut spare = done.buf;
    let errno = match (r.req.kind, done.result) {
        (CMD_READ, Ok(())) => {
            // Zeroes past what is below, where a filter cut the request short.
            let tail = zeroes::tail(&r, &flight.call);
            read::data_header(&r, len + tail, out);
            if spare.len() < OWN_BUFFER {
                out.put(&spare);
            } else {
                out.give(std::mem::take(&mut spare));
            }
            zeroes::lend(tail, out);
            0
        }
        (CMD_READ, Err(e)) => read::failed(&r, len, &e, out),
        (_, result) => reply::finish(&r.agreed, &r.req, len, result, out),
    };
    recycle(out.pool(), spare);
    errno
}
