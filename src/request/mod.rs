//! One request's life, once the driver has framed it and admitted it (the
//! memory budget had room for its payload and reply; the I/O engine has room
//! for it), read top to bottom in `serve` and `onward`:
//!
//! 1. check: valid for the agreement and the export (`check.rs`), else its
//!    error reply;
//! 2. **the filter seam**: each configured filter, first nearest the client,
//!    sees the request on its way down (`crate::filter`) and may answer it,
//!    change it, hold it on a timer (it comes back through `resume`) or end
//!    the connection;
//! 3. run: on data at hand at once (`now.rs`), or handed to the backend's
//!    I/O engine (`engine.rs`), whose completion comes back to `complete`;
//! 4. reply: queued on the connection's output (`reply.rs`, `read.rs`), its
//!    outcome told to the filters on its way up.
//!
//! No sockets: the caller hands over the request's bytes and an appender on
//! its output queue, and reads back what became of it (`Served`).

mod check;
mod engine;
mod now;
mod read;
mod reply;
mod status;
mod zeroes;

pub use check::{Refusal, check};
pub use reply::error as refuse;

use std::time::Instant;

use crate::agreement::Agreement;
use crate::aio::Done;
use crate::backend::Access;
use crate::buf::Out;
use crate::filter::{Call, Held, Verdict};
use crate::origin::Origin;
use crate::proto::request::Request;
use crate::proto::*;
use crate::storage::{Flight, Owed, Storage};

/// A complete request as it leaves the driver: who sent it, under what
/// agreement, and its payload (empty but for WRITE and BLOCK_STATUS's
/// payload form).
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub origin: Origin,
    /// The connection's number (as in log lines), for filters.
    pub conn: u64,
    pub agreed: Agreement,
    pub req: Request,
    pub payload: &'a [u8],
    /// The loop's clock as it takes the request up.
    pub now: Instant,
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Its reply is queued.
    Replied,
    /// It went to the I/O engine: its reply comes when its completion does
    /// (`complete`), and until then it costs the connection this.
    Submitted(Owed),
    /// A filter holds it: it comes back through `resume`, and until then
    /// costs the connection this.
    Held(Owed),
    /// A filter ends the connection.
    Disconnect(&'static str),
}

/// Serves one request whose payload is complete, appending its reply to
/// `out`, or handing it on. `shutting_down`: the server refuses new requests
/// (ESHUTDOWN).
pub fn serve(r: &Incoming, storage: &mut Storage, shutting_down: bool, out: &mut Out) -> Served {
    let req = &r.req;
    // With -v only: the level check is one atomic load when debug is off.
    log::debug!(
        "{} cookie {:#x} offset {} length {} flags {:#x}",
        command_name(req.kind),
        req.cookie,
        req.offset,
        req.length,
        req.flags
    );
    // 1. Check.
    let effect = match admissible(r, &storage.export, shutting_down) {
        Ok(len) => len,
        Err(refusal) => {
            reply::error(&r.agreed, req, out, refusal.errno, refusal.msg);
            storage.tally.refused();
            return Served::Replied;
        }
    };
    let call = Call {
        conn: r.conn,
        kind: req.kind,
        flags: req.flags,
        offset: req.offset,
        len: effect,
        started: r.now,
    };
    onward(r, call, 0, storage, out)
}

/// A request a filter held, now due: on from the stage below the one that
/// held it (or, while the server shuts down, refused).
pub fn resume(
    h: Held,
    storage: &mut Storage,
    now: Instant,
    shutting_down: bool,
    out: &mut Out,
) -> Served {
    let r = Incoming {
        origin: h.origin,
        conn: h.call.conn,
        agreed: h.agreed,
        req: h.req,
        payload: &h.payload,
        now,
    };
    if shutting_down {
        reply::error(&r.agreed, &r.req, out, ESHUTDOWN, "server is shutting down");
        storage.answered(&h.call, ESHUTDOWN, h.stage, now);
        return Served::Replied;
    }
    onward(&r, h.call, h.stage + 1, storage, out)
}

/// The rest of a checked request's way, from filter stage `from`.
fn onward(
    r: &Incoming,
    mut call: Call,
    from: usize,
    storage: &mut Storage,
    out: &mut Out,
) -> Served {
    // 2. The filter seam.
    let mut depth = 0;
    if !storage.filters.is_empty() {
        let (verdict, stage) = storage.filters.down(&mut call, from, r.now);
        match verdict {
            Verdict::Pass => depth = stage,
            Verdict::Fail(errno) => {
                reply::error(&r.agreed, &r.req, out, errno, "error from a filter");
                storage.answered(&call, errno, stage, r.now);
                return Served::Replied;
            }
            Verdict::Hold(at) => return hold(r, call, stage, at, storage),
            Verdict::Disconnect(why) => return Served::Disconnect(why),
            Verdict::Zeroes => {
                let errno = zeroes::answer(r, &call, out);
                storage.answered(&call, errno, stage, r.now);
                return Served::Replied;
            }
        }
    }
    // 3. Run, and 4. reply.
    match run(r, &call, storage, out) {
        Ran::Replied(errno) => {
            storage.answered(&call, errno, depth, r.now);
            Served::Replied
        }
        Ran::Submitted(owed) => Served::Submitted(owed),
    }
}

/// What running a request below the filters came to.
enum Ran {
    /// Its reply is queued: 0, or the NBD error it carries.
    Replied(u32),
    /// The I/O engine has it.
    Submitted(Owed),
}

/// Runs a request on the backend: at once on data at hand, else through the
/// engine.
fn run(r: &Incoming, call: &Call, storage: &mut Storage, out: &mut Out) -> Ran {
    if call.kind == CMD_BLOCK_STATUS {
        return Ran::Replied(read::block_status(r, call, storage, out));
    }
    // A filter cut it short (what is below ends): past the cut, zeroes.
    let cut = call.len < r.req.length && matches!(call.kind, CMD_READ | CMD_WRITE);
    if cut && call.kind == CMD_WRITE && !zeroes::cut_write_fits(r, call) {
        return Ran::Replied(zeroes::refuse_write(r, out));
    }
    if cut && call.len == 0 {
        return Ran::Replied(zeroes::answer(r, call, out));
    }
    if call.kind == CMD_READ
        && let Err(e) = read::find_holes(&r.agreed, call, storage)
    {
        return Ran::Replied(read::failed(r, call.len, &e, out));
    }
    match storage.split() {
        (Access::Now(store), holes) => Ran::Replied(now::run(r, call, store, holes, out)),
        (Access::Engine(_), _) => engine::submit(r, call, storage, out),
    }
}

/// A filter holds the request until `at`: its payload is copied out of the
/// connection's input, which moves on.
fn hold(r: &Incoming, call: Call, stage: usize, at: Instant, storage: &mut Storage) -> Served {
    let held = Held {
        origin: r.origin,
        agreed: r.agreed,
        req: r.req,
        call,
        stage,
        payload: r.payload.to_vec(),
    };
    let owed = held.owed();
    storage.filters.hold(held, at);
    Served::Held(owed)
}

/// The rest of a request's life once the engine is done with it: its reply,
/// and its outcome told to the filters.
pub fn complete(flight: &Flight, done: Done, storage: &mut Storage, now: Instant, out: &mut Out) {
    let errno = engine::reply(flight, done, out);
    let depth = storage.filters.depth();
    storage.answered(&flight.call, errno, depth, now);
}

/// The storage a request's reply will hold for its data, besides its header:
/// what the memory budget is asked for before the request runs. A READ's data
/// goes into a buffer of ours (the I/O engine's, or the output queue), or is
/// lent by the store: counted all the same, since a lent page outlives a
/// write to the disk there (which gives the disk a new one); the other
/// replies are small. A READ that will be refused costs nothing: one too
/// long, or one that carries a payload (its length is then the payload's,
/// already counted, and asking for it twice could ask for more than the
/// budget can ever give, stalling every large request behind it).
pub fn reply_cost(req: &Request, storage: &Storage, shutting_down: bool) -> usize {
    let refused = req.length > storage.export.max_request || req.payload != 0;
    if req.kind != CMD_READ || refused || shutting_down {
        return 0;
    }
    req.length as usize // ≤ max_request, checked
}

/// The checks every request passes first: not while shutting down, and valid
/// for the agreement and the export. Returns the effect length.
fn admissible(
    r: &Incoming,
    ex: &crate::export::Export,
    shutting_down: bool,
) -> Result<u64, Refusal> {
    if shutting_down {
        return Err(Refusal {
            errno: ESHUTDOWN,
            msg: "server is shutting down",
        });
    }
    let req = &r.req;
    check(&r.agreed, ex, req, r.payload).inspect_err(|refusal| {
        log::debug!(
            "{} offset {} length {}: {} ({})",
            command_name(req.kind),
            req.offset,
            req.length,
            refusal.msg,
            refusal.errno
        );
    })
}

/// What the unit tests of this module (and the driver's) share.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::backend::Memory;
    use crate::buf::{OutQueue, Pool};
    use crate::export::Export;

    pub fn session(ex: &Export, style: crate::proto::reply::Style, meta: bool) -> Agreement {
        Agreement::new(ex, style, meta)
    }

    pub fn req(kind: u16, flags: u16, offset: u64, length: u64) -> Request {
        Request {
            flags,
            kind,
            cookie: 7,
            offset,
            length,
            payload: 0,
        }
    }

    /// Storage serving `ex` from RAM.
    pub fn with_memory(ex: &Export) -> Storage {
        let filters = crate::filter::Stack::default();
        Storage::new(Box::new(Memory::new(ex.size)), ex.clone(), filters)
    }

    /// Serves one request; returns every byte it queued.
    pub fn run(s: &Agreement, storage: &mut Storage, req: Request, payload: &[u8]) -> Vec<u8> {
        run_in(s, storage, req, payload, false)
    }

    pub fn run_in(
        s: &Agreement,
        storage: &mut Storage,
        req: Request,
        payload: &[u8],
        shutting_down: bool,
    ) -> Vec<u8> {
        let (mut q, mut pool) = (OutQueue::default(), Pool::default());
        let r = Incoming {
            origin: Origin::new(0, 0),
            conn: 0,
            agreed: *s,
            req,
            payload,
            now: Instant::now(),
        };
        serve(&r, storage, shutting_down, &mut q.writer(&mut pool));
        let mut iov = [std::io::IoSlice::new(&[]); 64];
        let n = q.slices(&mut iov);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{req, run, run_in, session, with_memory};
    use super::*;
    use crate::export::test_export as export;
    use crate::proto::reply::{self, Style};

    #[test]
    fn simple_read_write() {
        let ex = export(false, 1);
        let s = session(&ex, Style::Simple, false);
        let mut st = with_memory(&ex);
        let mut w = req(CMD_WRITE, 0, 10, 3);
        w.payload = 3;
        let r = run(&s, &mut st, w, b"abc");
        assert_eq!(r, reply::simple(0, 7).as_bytes());
        let r = run(&s, &mut st, req(CMD_READ, 0, 9, 5), &[]);
        assert_eq!(&r[16..], b"\0abc\0");
        let r = run(&s, &mut st, req(CMD_READ, 0, 1 << 20, 1), &[]);
        assert_eq!(r, reply::simple(EINVAL, 7).as_bytes());
    }

    #[test]
    fn shutdown_refuses_requests() {
        let ex = export(false, 1);
        let s = session(&ex, Style::Simple, false);
        let mut st = with_memory(&ex);
        let r = run_in(&s, &mut st, req(CMD_READ, 0, 0, 1), &[], true);
        assert_eq!(r, reply::simple(ESHUTDOWN, 7).as_bytes());
    }
}
