//! The transmission phase: checking a request against the export, running it on
//! the backend, and encoding its reply into the connection's output buffer.

use crate::backend::{Backend, Extent, Zero, nbd_errno};
use crate::buf::Out;
use crate::export::{BASE_ALLOCATION_ID, Export, MAX_REQUEST};
use crate::proto::reply::{self, Style};
use crate::proto::request::Request;
use crate::proto::*;

/// Most descriptors in one block-status reply (the spec asks for at most 2^20).
const MAX_EXTENTS: usize = 1 << 16;
/// Reads at least this large are sent from the backend's storage without a copy
/// when it can lend it; smaller ones are cheaper to copy.
const LEND_MIN: u64 = 32 * 1024;
/// Most chunks one sparse READ is split into; the rest goes as data.
const MAX_READ_CHUNKS: usize = 64;

/// What the handshake agreed for the rest of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub style: Style,
    /// Transmission flags as sent to the client.
    pub flags: u16,
    /// `base:allocation` is selected for this export.
    pub meta: bool,
}

impl Session {
    pub fn extended(&self) -> bool {
        self.style == Style::Extended
    }

    fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

/// What the server lends a connection to run one request.
pub struct Env<'a> {
    pub backend: &'a mut dyn Backend,
    pub export: &'a Export,
    /// Scratch space for extents, shared by all connections.
    pub extents: &'a mut Vec<Extent>,
    pub shutting_down: bool,
}

/// An NBD error to send back, with a message for humans where the reply can carry one.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub errno: u32,
    pub msg: &'static str,
}

fn refuse<T>(errno: u32, msg: &'static str) -> Result<T, Refusal> {
    Err(Refusal { errno, msg })
}

/// Runs one request whose payload (if any) is complete, appending its reply to `out`.
pub fn handle(s: &Session, env: &mut Env, req: &Request, payload: &[u8], out: &mut Out) {
    // With -v only: the level check is one atomic load when debug is off.
    log::debug!(
        "{} cookie {:#x} offset {} length {} flags {:#x}",
        command_name(req.kind),
        req.cookie,
        req.offset,
        req.length,
        req.flags
    );
    if env.shutting_down {
        return error(s, req, out, ESHUTDOWN, "server is shutting down");
    }
    let effect = match check(s, env.export, req, payload) {
        Ok(len) => len,
        Err(r) => {
            log::debug!(
                "{} offset {} length {}: {} ({})",
                command_name(req.kind),
                req.offset,
                req.length,
                r.msg,
                r.errno
            );
            return error(s, req, out, r.errno, r.msg);
        }
    };
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let result = match req.kind {
        CMD_READ => return read(s, env, req, effect, out),
        CMD_BLOCK_STATUS => return block_status(s, env, req, effect, out),
        _ if effect == 0 && req.kind != CMD_FLUSH => Ok(()),
        CMD_WRITE => env.backend.write(payload, req.offset, fua),
        CMD_FLUSH => env.backend.flush(),
        CMD_TRIM => env.backend.trim(req.offset, effect, fua),
        CMD_WRITE_ZEROES => {
            let how = Zero {
                may_trim: req.flags & CMD_FLAG_NO_HOLE == 0,
                fast: req.flags & CMD_FLAG_FAST_ZERO != 0,
            };
            env.backend.zero(req.offset, effect, how, fua)
        }
        CMD_CACHE => env.backend.cache(req.offset, effect),
        _ => unreachable!("check() refuses unknown commands"),
    };
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

/// Flags each command accepts, given what was advertised and negotiated.
fn allowed_flags(s: &Session, kind: u16) -> u16 {
    let mut f = if s.has(TF_SEND_FUA) { CMD_FLAG_FUA } else { 0 };
    match kind {
        CMD_READ if s.has(TF_SEND_DF) => f |= CMD_FLAG_DF,
        CMD_WRITE if s.extended() => f |= CMD_FLAG_PAYLOAD_LEN,
        CMD_WRITE_ZEROES => {
            f |= CMD_FLAG_NO_HOLE;
            if s.has(TF_SEND_FAST_ZERO) {
                f |= CMD_FLAG_FAST_ZERO;
            }
        }
        CMD_BLOCK_STATUS => {
            f |= CMD_FLAG_REQ_ONE;
            if s.has(TF_BLOCK_STATUS_PAYLOAD) {
                f |= CMD_FLAG_PAYLOAD_LEN;
            }
        }
        _ => {}
    }
    f
}

/// Checks a request against the protocol and the export. Returns the effect length.
pub fn check(s: &Session, ex: &Export, req: &Request, payload: &[u8]) -> Result<u64, Refusal> {
    let kind = req.kind;
    if !matches!(
        kind,
        CMD_READ
            | CMD_WRITE
            | CMD_FLUSH
            | CMD_TRIM
            | CMD_CACHE
            | CMD_WRITE_ZEROES
            | CMD_BLOCK_STATUS
    ) {
        return refuse(EINVAL, "unknown command");
    }
    if req.flags & !allowed_flags(s, kind) != 0 {
        return refuse(EINVAL, "flag not valid for this command");
    }
    if ex.caps.read_only && matches!(kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) {
        return refuse(EPERM, "export is read-only");
    }
    if kind == CMD_FLUSH {
        return Ok(0); // offset and length are reserved
    }
    let len = if kind == CMD_BLOCK_STATUS {
        if !s.meta {
            return refuse(EINVAL, "no metadata context selected");
        }
        let len = block_status_length(req, payload)?;
        if len == 0 {
            return refuse(EINVAL, "zero-length block status");
        }
        len
    } else {
        req.length
    };
    match req.offset.checked_add(len) {
        Some(end) if end <= ex.size => {}
        _ if matches!(kind, CMD_WRITE | CMD_WRITE_ZEROES) => {
            return refuse(ENOSPC, "write beyond the end of the export");
        }
        _ => return refuse(EINVAL, "request beyond the end of the export"),
    }
    let min = u64::from(ex.caps.min_block);
    if min > 1 && (!req.offset.is_multiple_of(min) || len % min != 0) {
        return refuse(EINVAL, "request not aligned to the minimum block size");
    }
    if kind == CMD_READ && len > MAX_REQUEST {
        let errno = if s.style == Style::Simple {
            EINVAL
        } else {
            EOVERFLOW
        };
        return refuse(errno, "read too large");
    }
    Ok(len)
}

/// The effect length of BLOCK_STATUS: the header's, or (payload form, extended
/// headers only) the payload's u64 followed by the context ids to report.
fn block_status_length(req: &Request, payload: &[u8]) -> Result<u64, Refusal> {
    if req.flags & CMD_FLAG_PAYLOAD_LEN == 0 {
        return Ok(req.length);
    }
    if payload.len() < 12 || !(payload.len() - 8).is_multiple_of(4) {
        return refuse(EINVAL, "malformed block status payload");
    }
    let ids = &payload[8..];
    // We have one context: the only valid list is [BASE_ALLOCATION_ID], once.
    if ids.len() != 4 || be32(ids) != BASE_ALLOCATION_ID {
        return refuse(EINVAL, "unknown or repeated context id");
    }
    Ok(be64(payload))
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

/// READ: data straight from the backend into the output buffer, behind its header.
fn read(s: &Session, env: &mut Env, req: &Request, len: u64, out: &mut Out) {
    let mark = out.mark();
    let result = match s.style {
        Style::Simple => {
            out.put(reply::simple(0, req.cookie).as_bytes());
            read_into(env.backend, req.offset, len, out)
        }
        _ if len == 0 => {
            put_chunk(s, req, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0, out);
            Ok(())
        }
        _ => read_chunks(s, env, req, len, out),
    };
    if let Err(e) = result {
        log::warn!("READ offset {} length {len}: {e}", req.offset);
        out.rollback(mark);
        error(s, req, out, nbd_errno(&e), "read failed");
    }
}

/// Puts `len` bytes of the export behind the reply header just queued: lent by
/// the backend when it can and the read is large enough to be worth it, else
/// copied straight into the output queue.
fn read_into(
    backend: &mut dyn Backend,
    offset: u64,
    len: u64,
    out: &mut Out,
) -> std::io::Result<()> {
    if len >= LEND_MIN && backend.lend(offset, len, &mut |bytes, range| out.lend(bytes, range)) {
        return Ok(());
    }
    let n = len as usize; // ≤ MAX_REQUEST, checked
    backend.read(&mut out.space(n)[..n], offset)?;
    out.commit(n);
    Ok(())
}

/// A structured READ reply: holes as OFFSET_HOLE where the backend knows them
/// cheaply (and DF was not asked for), data as OFFSET_DATA. The last chunk is DONE.
fn read_chunks(
    s: &Session,
    env: &mut Env,
    req: &Request,
    len: u64,
    out: &mut Out,
) -> std::io::Result<()> {
    let end = req.offset + len;
    let runs = &mut *env.extents;
    runs.clear();
    if env.backend.caps().sparse_reads && req.flags & CMD_FLAG_DF == 0 {
        env.backend
            .extents(req.offset, len, MAX_READ_CHUNKS, runs)?;
    }
    let mut pos = req.offset;
    let mut i = 0;
    while pos < end {
        // The run at `pos`: a known hole, or data up to the next hole (or the end).
        let (run, hole) = match runs.get(i) {
            Some(e) if e.flags & STATE_ZERO != 0 => (e.len, true),
            Some(e) => (e.len, false),
            None => (end - pos, false),
        };
        i += 1;
        let n = run.min(end - pos);
        let done = if pos + n == end { REPLY_FLAG_DONE } else { 0 };
        if hole {
            put_chunk(s, req, done, REPLY_TYPE_OFFSET_HOLE, 12, out);
            out.put(&reply::hole_payload(pos, n as u32));
        } else {
            put_chunk(s, req, done, REPLY_TYPE_OFFSET_DATA, 8 + n, out);
            out.put(&pos.to_be_bytes());
            read_into(env.backend, pos, n, out)?;
        }
        pos += n;
    }
    Ok(())
}

/// BLOCK_STATUS: one chunk for our one context.
fn block_status(s: &Session, env: &mut Env, req: &Request, len: u64, out: &mut Out) {
    let ext = &mut *env.extents;
    ext.clear();
    let req_one = req.flags & CMD_FLAG_REQ_ONE != 0;
    let max = if req_one { 1 } else { MAX_EXTENTS };
    if let Err(e) = env.backend.extents(req.offset, len, max, ext) {
        log::warn!("BLOCK_STATUS offset {} length {len}: {e}", req.offset);
        return error(s, req, out, nbd_errno(&e), "block status failed");
    }
    clip_extents(ext, len, req_one, s.style, env.export.caps.min_block);
    let (per, head) = reply::block_status_layout(s.style);
    let kind = if s.extended() {
        REPLY_TYPE_BLOCK_STATUS_EXT
    } else {
        REPLY_TYPE_BLOCK_STATUS
    };
    put_chunk(
        s,
        req,
        REPLY_FLAG_DONE,
        kind,
        (head + per * ext.len()) as u64,
        out,
    );
    out.put(&BASE_ALLOCATION_ID.to_be_bytes());
    if s.extended() {
        out.put(&(ext.len() as u32).to_be_bytes());
    }
    let mut d = [0u8; 16];
    for e in ext.iter() {
        reply::descriptor(s.style, e.len, e.flags, &mut d);
        out.put(&d[..per]);
    }
}

/// Makes extents fit the reply: none past the request with REQ_ONE, and none
/// wider than 32 bits in compact replies (cut at a block boundary, dropping the rest).
fn clip_extents(ext: &mut Vec<Extent>, len: u64, req_one: bool, style: Style, min_block: u32) {
    if ext.is_empty() {
        // A backend that found nothing to say: status 0 ("allocated") is always true.
        ext.push(Extent { len, flags: 0 });
    }
    if req_one {
        ext.truncate(1);
        ext[0].len = ext[0].len.min(len);
    }
    if style != Style::Extended {
        let cap = u64::from(u32::MAX) & !(u64::from(min_block.max(512)) - 1);
        if let Some(i) = ext.iter().position(|e| e.len > cap) {
            ext.truncate(i + 1);
            ext[i].len = cap;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Memory;
    use crate::buf::{OutQueue, Pool};
    use crate::export::test_export as export;

    fn session(ex: &Export, style: Style, meta: bool) -> Session {
        Session {
            style,
            flags: ex.flags(style, meta),
            meta,
        }
    }

    fn req(kind: u16, flags: u16, offset: u64, length: u64) -> Request {
        Request {
            flags,
            kind,
            cookie: 7,
            offset,
            length,
            payload: 0,
        }
    }

    fn errno(r: Result<u64, Refusal>) -> u32 {
        r.map(|_| 0).unwrap_or_else(|r| r.errno)
    }

    #[test]
    fn checks() {
        let ex = export(false, 1);
        let s = session(&ex, Style::Structured, true);
        let c = |r: Request| errno(check(&s, &ex, &r, &[]));
        assert_eq!(c(req(CMD_READ, 0, 0, 4096)), 0);
        assert_eq!(c(req(CMD_READ, 0, (1 << 20) - 1, 2)), EINVAL);
        assert_eq!(c(req(CMD_READ, 0, u64::MAX, 2)), EINVAL);
        assert_eq!(c(req(CMD_WRITE, 0, 1 << 20, 1)), ENOSPC);
        assert_eq!(c(req(CMD_WRITE_ZEROES, 0, 1 << 20, 1)), ENOSPC);
        assert_eq!(c(req(CMD_TRIM, 0, 1 << 20, 1)), EINVAL);
        assert_eq!(c(req(99, 0, 0, 0)), EINVAL);
        assert_eq!(c(req(CMD_READ, CMD_FLAG_NO_HOLE, 0, 1)), EINVAL);
        assert_eq!(c(req(CMD_READ, CMD_FLAG_DF | CMD_FLAG_FUA, 0, 1)), 0);
        assert_eq!(c(req(CMD_WRITE, CMD_FLAG_PAYLOAD_LEN, 0, 1)), EINVAL);
        assert_eq!(c(req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 0)), EINVAL);
        assert_eq!(c(req(CMD_FLUSH, 0, u64::MAX, u64::MAX)), 0);
        let ro = export(true, 1);
        let s = session(&ro, Style::Simple, false);
        assert_eq!(errno(check(&s, &ro, &req(CMD_WRITE, 0, 0, 1), &[])), EPERM);
        assert_eq!(
            errno(check(&s, &ro, &req(CMD_READ, CMD_FLAG_DF, 0, 1), &[])),
            EINVAL
        );
        assert_eq!(
            errno(check(&s, &ro, &req(CMD_BLOCK_STATUS, 0, 0, 1), &[])),
            EINVAL
        );
        let blk = export(false, 512);
        let s = session(&blk, Style::Extended, true);
        assert_eq!(errno(check(&s, &blk, &req(CMD_READ, 0, 512, 1024), &[])), 0);
        assert_eq!(
            errno(check(&s, &blk, &req(CMD_READ, 0, 1, 512), &[])),
            EINVAL
        );
        assert_eq!(
            errno(check(&s, &blk, &req(CMD_WRITE, 0, 0, 100), &[])),
            EINVAL
        );
    }

    #[test]
    fn block_status_payload_form() {
        let ex = export(false, 1);
        let s = session(&ex, Style::Extended, true);
        let mut p = 4096u64.to_be_bytes().to_vec();
        p.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
        let mut r = req(CMD_BLOCK_STATUS, CMD_FLAG_PAYLOAD_LEN, 0, p.len() as u64);
        r.payload = r.length;
        assert_eq!(check(&s, &ex, &r, &p), Ok(4096));
        p.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
        assert_eq!(errno(check(&s, &ex, &r, &p)), EINVAL);
    }

    fn run(s: &Session, ex: &Export, be: &mut Memory, r: Request, payload: &[u8]) -> Vec<u8> {
        run_env(s, ex, be, r, payload, false)
    }

    fn run_env(
        s: &Session,
        ex: &Export,
        be: &mut Memory,
        r: Request,
        payload: &[u8],
        shutting_down: bool,
    ) -> Vec<u8> {
        let (mut q, mut pool) = (OutQueue::default(), Pool::default());
        let mut extents = Vec::new();
        let mut env = Env {
            backend: be,
            export: ex,
            extents: &mut extents,
            shutting_down,
        };
        handle(s, &mut env, &r, payload, &mut q.writer(&mut pool));
        let mut iov = [std::io::IoSlice::new(&[]); 64];
        let n = q.slices(&mut iov);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn simple_read_write() {
        let ex = export(false, 1);
        let s = session(&ex, Style::Simple, false);
        let mut be = Memory::new(ex.size);
        let mut w = req(CMD_WRITE, 0, 10, 3);
        w.payload = 3;
        let r = run(&s, &ex, &mut be, w, b"abc");
        assert_eq!(r, reply::simple(0, 7).as_bytes());
        let r = run(&s, &ex, &mut be, req(CMD_READ, 0, 9, 5), &[]);
        assert_eq!(&r[16..], b"\0abc\0");
        let r = run(&s, &ex, &mut be, req(CMD_READ, 0, 1 << 20, 1), &[]);
        assert_eq!(r, reply::simple(EINVAL, 7).as_bytes());
    }

    #[test]
    fn structured_read_with_holes() {
        let ex = export(false, 1);
        let s = session(&ex, Style::Structured, false);
        let mut be = Memory::new(ex.size);
        be.write(&[9; 4096], 65536, false).unwrap();
        let r = run(&s, &ex, &mut be, req(CMD_READ, 0, 0, 131072), &[]);
        // hole chunk, data chunk (a whole 32 KiB page), final hole chunk
        assert_eq!(be16(&r[6..]), REPLY_TYPE_OFFSET_HOLE);
        assert_eq!(be16(&r[4..]), 0);
        assert_eq!(be64(&r[20..]), 0);
        assert_eq!(be32(&r[28..]), 65536);
        let d = &r[32..];
        assert_eq!(be16(&d[6..]), REPLY_TYPE_OFFSET_DATA);
        assert_eq!(be32(&d[16..]) as usize, 8 + 32768);
        assert_eq!(be64(&d[20..]), 65536);
        assert_eq!(&d[28..28 + 4096], &[9; 4096]);
        let h = &d[28 + 32768..];
        assert_eq!(be16(&h[4..]), REPLY_FLAG_DONE);
        assert_eq!(be16(&h[6..]), REPLY_TYPE_OFFSET_HOLE);
        assert_eq!(be32(&h[28..]), 32768);
        assert_eq!(h.len(), 32);
        // DF: one data chunk with the zeroes in it
        let r = run(&s, &ex, &mut be, req(CMD_READ, CMD_FLAG_DF, 0, 131072), &[]);
        assert_eq!(r.len(), 20 + 8 + 131072);
        assert_eq!(be16(&r[4..]), REPLY_FLAG_DONE);
    }

    #[test]
    fn extended_replies_echo_offset() {
        let ex = export(false, 1);
        let s = session(&ex, Style::Extended, true);
        let mut be = Memory::new(ex.size);
        let r = run(&s, &ex, &mut be, req(CMD_FLUSH, 0, 0, 0), &[]);
        assert_eq!(r.len(), 32);
        assert_eq!(be32(&r), EXT_REPLY_MAGIC);
        let r = run(&s, &ex, &mut be, req(CMD_BLOCK_STATUS, 0, 4096, 8192), &[]);
        assert_eq!(be16(&r[6..]), REPLY_TYPE_BLOCK_STATUS_EXT);
        assert_eq!(be64(&r[16..]), 4096);
        assert_eq!(be64(&r[24..]), 8 + 16);
        assert_eq!(be32(&r[32..]), BASE_ALLOCATION_ID);
        assert_eq!(be32(&r[36..]), 1);
        assert_eq!(be64(&r[40..]), (1 << 20) - 4096);
        assert_eq!(be64(&r[48..]), 3);
        let r = run(&s, &ex, &mut be, req(CMD_WRITE_ZEROES, 0, 0, 1 << 21), &[]);
        assert_eq!(be16(&r[6..]), REPLY_TYPE_ERROR);
        assert_eq!(be32(&r[32..]), ENOSPC);
    }

    #[test]
    fn req_one_is_clipped() {
        let ex = export(false, 1);
        let s = session(&ex, Style::Structured, true);
        let mut be = Memory::new(ex.size);
        let r = run(
            &s,
            &ex,
            &mut be,
            req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 100),
            &[],
        );
        assert_eq!(be16(&r[6..]), REPLY_TYPE_BLOCK_STATUS);
        assert_eq!(be32(&r[16..]), 12);
        assert_eq!(be32(&r[24..]), 100);
    }

    #[test]
    fn shutdown_refuses_requests() {
        let ex = export(false, 1);
        let s = session(&ex, Style::Simple, false);
        let mut be = Memory::new(ex.size);
        let r = run_env(&s, &ex, &mut be, req(CMD_READ, 0, 0, 1), &[], true);
        assert_eq!(r, reply::simple(ESHUTDOWN, 7).as_bytes());
    }
}
