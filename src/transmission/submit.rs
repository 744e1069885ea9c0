//! Requests on a backend whose data goes through the I/O engine (`crate::aio`):
//! each becomes an operation that owns its buffer, and its reply is built when
//! its completion comes back, in whatever order completions come. NBD lets a
//! server answer in any order; every reply is built whole, so replies never
//! interleave.

use slab::Slab;

use super::{Handled, error, finish, read, zero_how};
use crate::aio::{Done, Engine, Op};
use crate::backend::Data;
use crate::buf::{OutQueue, Pool};
use crate::ctx::{Ctx, InFlight};
use crate::origin::Origin;
use crate::proto::request::Request;
use crate::proto::*;
use crate::session::Session;

/// Most requests one connection has in the engine at once: a client with a
/// deep queue takes no more than this, so others always find room.
const MAX_PER_CONNECTION: usize = 32;

/// Buffers smaller than this (a pool block's size) are the request's own,
/// exactly its size, and never enter the pool. A pool block cut down to 4 KiB
/// came back to the pool too short for the input and output it is kept for,
/// so every turn allocated a fresh 64 KiB block, zeroed: 15% of the server's
/// CPU in cached 4 KiB reads went to that memset.
const OWN_BUFFER: usize = 64 * 1024;

/// Whether a connection with `in_flight` requests in the engine may handle
/// another now: always on data at hand; with an engine, while it has room and
/// the connection is under its share.
pub fn room_for(ctx: &mut Ctx, in_flight: usize) -> bool {
    match ctx.backend.data() {
        Data::Now(_) => true,
        Data::Engine(e) => in_flight < MAX_PER_CONNECTION && e.has_room(),
    }
}

/// Hands a checked request with a nonzero effect (or a FLUSH) to the engine.
#[allow(clippy::too_many_arguments)]
pub fn submit(
    s: &Session,
    engine: &mut Engine,
    inflight: &mut Slab<InFlight>,
    origin: Origin,
    req: &Request,
    effect: u64,
    payload: &[u8],
    pool: &mut Pool,
    queue: &mut OutQueue,
) -> Handled {
    let (offset, len) = (req.offset, effect);
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let op = match req.kind {
        CMD_READ => Op::Read {
            offset,
            buf: block(pool, effect as usize), // ≤ MAX_REQUEST, checked
        },
        CMD_WRITE => {
            let mut buf = block(pool, payload.len());
            buf.copy_from_slice(payload);
            Op::Write { offset, buf, fua }
        }
        CMD_FLUSH => Op::Flush,
        CMD_TRIM => Op::Trim { offset, len, fua },
        CMD_WRITE_ZEROES => {
            let how = zero_how(req);
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
    };
    let flight = InFlight {
        origin,
        session: *s,
        req: *req,
        effect,
    };
    let tag = inflight.insert(flight);
    match engine.submit(op, tag as u64) {
        Ok(()) => Handled::Submitted,
        Err((op, _)) => {
            // The connection asked `room_for` first, so this does not happen;
            // if it did, the client gets an answer rather than silence.
            inflight.remove(tag);
            log::warn!("{}: no room in the I/O engine", command_name(req.kind));
            if let Op::Read { buf, .. } | Op::Write { buf, .. } = op {
                recycle(pool, buf);
            }
            let out = &mut queue.writer(pool);
            error(s, req, out, ENOMEM, "server busy");
            Handled::Replied
        }
    }
}

/// Bytes of the buffer a request lends the engine (READ: its data; WRITE: a
/// copy of its payload), held until its completion is reaped.
pub fn engine_bytes(req: &Request, effect: u64) -> usize {
    match req.kind {
        CMD_READ | CMD_WRITE => effect as usize, // ≤ max_request, checked
        _ => 0,
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
fn recycle(pool: &mut Pool, b: Vec<u8>) {
    if b.len() >= OWN_BUFFER {
        pool.give(b);
    }
}

/// Builds the reply to a request whose completion came back: a large READ's
/// data goes out of the buffer the disk read into, without a copy; a small
/// one's is copied in behind its header, where other replies join it.
pub fn complete(flight: &InFlight, done: Done, pool: &mut Pool, queue: &mut OutQueue) {
    let InFlight {
        session: s,
        req,
        effect,
        ..
    } = flight;
    let mut spare = done.buf;
    {
        let out = &mut queue.writer(pool);
        match (req.kind, done.result) {
            (CMD_READ, Ok(())) => {
                read::data_header(s, req, *effect, out);
                if spare.len() < OWN_BUFFER {
                    out.put(&spare);
                } else {
                    out.give(std::mem::take(&mut spare));
                }
            }
            (CMD_READ, Err(e)) => read::failed(s, req, *effect, &e, out),
            (_, result) => finish(s, req, *effect, result, out),
        }
    }
    recycle(pool, spare);
}
