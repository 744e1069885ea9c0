//! The transmission phase: checking a request against the export, running it on
//! the backend, and encoding its reply into the connection's output queue.

mod check;
mod read;
mod submit;

pub use check::{Refusal, check};
pub use submit::{complete, engine_bytes, room_for};

use crate::backend::{Data, Extent, Store, Zero, nbd_errno};
use crate::buf::{Out, OutQueue};
use crate::ctx::Ctx;
use crate::proto::reply::{self, Style};
use crate::proto::request::Request;
use crate::proto::*;
use crate::session::Session;

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Its reply is queued.
    Replied,
    /// It went to the backend's I/O engine; its reply is built when its
    /// completion comes back (`complete`).
    Submitted,
}

/// Runs one request whose payload (if any) is complete, appending its reply to
/// `queue`, or hands it to the backend's I/O engine.
pub fn handle(
    s: &Session,
    ctx: &mut Ctx,
    req: &Request,
    payload: &[u8],
    queue: &mut OutQueue,
) -> Handled {
    // With -v only: the level check is one atomic load when debug is off.
    log::debug!(
        "{} cookie {:#x} offset {} length {} flags {:#x}",
        command_name(req.kind),
        req.cookie,
        req.offset,
        req.length,
        req.flags
    );
    let effect = match admit(s, ctx, req, payload) {
        Ok(len) => len,
        Err(r) => {
            error(s, req, &mut queue.writer(&mut ctx.pool), r.errno, r.msg);
            return Handled::Replied;
        }
    };
    let Ctx {
        backend,
        export,
        extents,
        pool,
        inflight,
        serving,
        ..
    } = ctx;
    let backend = &mut **backend;
    if req.kind == CMD_BLOCK_STATUS {
        let out = &mut queue.writer(pool);
        let min_block = export.caps.min_block;
        read::block_status(s, backend, extents, min_block, req, effect, out);
        return Handled::Replied;
    }
    if req.kind == CMD_READ
        && let Err(e) = read::sparse_runs(s, backend, extents, req, effect)
    {
        read::failed(s, req, effect, &e, &mut queue.writer(pool));
        return Handled::Replied;
    }
    match backend.data() {
        Data::Engine(engine) if effect > 0 || req.kind == CMD_FLUSH => {
            let origin = *serving;
            submit::submit(
                s, engine, inflight, origin, req, effect, payload, pool, queue,
            )
        }
        Data::Engine(_) => {
            ok(s, req, &mut queue.writer(pool)); // nothing to do: done
            Handled::Replied
        }
        Data::Now(store) => {
            now(
                s,
                store,
                extents,
                req,
                effect,
                payload,
                &mut queue.writer(pool),
            );
            Handled::Replied
        }
    }
}

/// The storage a request's reply will hold for its data, besides its header:
/// what the memory budget is asked for before the request runs. A READ's data
/// goes into a buffer of ours (the I/O engine's, or the output queue), unless
/// the store lends its pages, which cost nothing more (they are the RAM disk
/// itself); the other replies are small. A READ that will be refused costs
/// nothing: one too long, or one that carries a payload (its length is then
/// the payload's, already counted, and asking for it twice could ask for more
/// than the budget can ever give, stalling every large request behind it).
pub fn reply_cost(s: &Session, ctx: &mut Ctx, req: &Request) -> usize {
    let refused = req.length > ctx.export.max_request || req.payload != 0;
    if req.kind != CMD_READ || refused || ctx.shutting_down() {
        return 0;
    }
    let len = req.length as usize; // ≤ max_request, checked
    match ctx.backend.data() {
        Data::Engine(_) => len,
        // A zero-length lend asks the store whether it lends at all.
        Data::Now(store) => match store.lend(0, 0, &mut |_, _| {}) {
            true => read::copied_at_most(s, len),
            false => len,
        },
    }
}

/// The checks every request passes first: not while shutting down, and valid
/// for the session and the export. Returns the effect length.
fn admit(s: &Session, ctx: &Ctx, req: &Request, payload: &[u8]) -> Result<u64, Refusal> {
    if ctx.shutting_down() {
        return Err(Refusal {
            errno: ESHUTDOWN,
            msg: "server is shutting down",
        });
    }
    check(s, &ctx.export, req, payload).inspect_err(|r| {
        log::debug!(
            "{} offset {} length {}: {} ({})",
            command_name(req.kind),
            req.offset,
            req.length,
            r.msg,
            r.errno
        );
    })
}

/// A request on data at hand: done now, its reply queued.
fn now(
    s: &Session,
    store: &mut dyn Store,
    runs: &[Extent],
    req: &Request,
    effect: u64,
    payload: &[u8],
    out: &mut Out,
) {
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let result = match req.kind {
        CMD_READ => return read::read(s, store, runs, req, effect, out),
        _ if effect == 0 && req.kind != CMD_FLUSH => Ok(()),
        CMD_WRITE => store.write(payload, req.offset, fua),
        CMD_FLUSH => store.flush(),
        CMD_TRIM => store.trim(req.offset, effect, fua),
        CMD_WRITE_ZEROES => store.zero(req.offset, effect, zero_how(req), fua),
        CMD_CACHE => store.cache(req.offset, effect),
        _ => unreachable!("check() refuses unknown commands"),
    };
    finish(s, req, effect, result, out);
}

/// How WRITE_ZEROES may be carried out, from its flags.
fn zero_how(req: &Request) -> Zero {
    Zero {
        may_trim: req.flags & CMD_FLAG_NO_HOLE == 0,
        fast: req.flags & CMD_FLAG_FAST_ZERO != 0,
    }
}

/// The reply to a request without data in its reply, once it is done.
fn finish(s: &Session, req: &Request, effect: u64, result: std::io::Result<()>, out: &mut Out) {
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
fn ok(s: &Session, req: &Request, out: &mut Out) {
    match s.style {
        Style::Extended => put_chunk(s, req, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0, out),
        _ => out.put(reply::simple(0, req.cookie).as_bytes()),
    }
}

/// An error reply: simple when nothing else was negotiated, else an error chunk
/// carrying `msg`.
pub fn error(s: &Session, req: &Request, out: &mut Out, errno: u32, msg: &str) {
    if s.style == Style::Simple {
        return out.put(reply::simple(errno, req.cookie).as_bytes());
    }
    let msg = &msg.as_bytes()[..msg.len().min(MAX_STRING)];
    put_chunk(
        s,
        req,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        6 + msg.len() as u64,
        out,
    );
    out.put(&reply::error_payload(errno, msg.len() as u16));
    out.put(msg);
}

fn put_chunk(s: &Session, req: &Request, flags: u16, kind: u16, payload: u64, out: &mut Out) {
    out.put(reply::chunk(s.style, flags, kind, req.cookie, req.offset, payload).as_bytes());
}

/// What the unit tests of this phase share.
#[cfg(test)]
mod testing {
    use super::*;
    use crate::backend::Memory;
    use crate::export::Export;
    use crate::lifecycle::Lifecycle;
    use crate::notify::Notifier;

    pub fn session(ex: &Export, style: Style, meta: bool) -> Session {
        Session {
            style,
            flags: ex.flags(style, meta),
            meta,
        }
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

    /// A context serving `ex` from RAM.
    pub fn with_memory(ex: &Export) -> Ctx {
        let lifecycle = Lifecycle::new(None, false, Notifier::new(None));
        Ctx::new(Box::new(Memory::new(ex.size)), ex.clone(), lifecycle)
    }

    /// Runs one request; returns every byte it queued.
    pub fn run(s: &Session, ctx: &mut Ctx, r: Request, payload: &[u8]) -> Vec<u8> {
        let mut q = OutQueue::default();
        handle(s, ctx, &r, payload, &mut q);
        let mut iov = [std::io::IoSlice::new(&[]); 64];
        let n = q.slices(&mut iov);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{req, run, session, with_memory};
    use super::*;
    use crate::export::test_export as export;

    #[test]
    fn simple_read_write() {
        let ex = export(false, 1);
        let s = session(&ex, Style::Simple, false);
        let mut c = with_memory(&ex);
        let mut w = req(CMD_WRITE, 0, 10, 3);
        w.payload = 3;
        let r = run(&s, &mut c, w, b"abc");
        assert_eq!(r, reply::simple(0, 7).as_bytes());
        let r = run(&s, &mut c, req(CMD_READ, 0, 9, 5), &[]);
        assert_eq!(&r[16..], b"\0abc\0");
        let r = run(&s, &mut c, req(CMD_READ, 0, 1 << 20, 1), &[]);
        assert_eq!(r, reply::simple(EINVAL, 7).as_bytes());
    }

    #[test]
    fn shutdown_refuses_requests() {
        let ex = export(false, 1);
        let s = session(&ex, Style::Simple, false);
        let mut c = with_memory(&ex);
        c.lifecycle.shut_down(0);
        let r = run(&s, &mut c, req(CMD_READ, 0, 0, 1), &[]);
        assert_eq!(r, reply::simple(ESHUTDOWN, 7).as_bytes());
    }
}
