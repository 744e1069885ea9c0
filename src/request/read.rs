//! The replies that carry data: READ (sent from the backend's storage where it
//! can lend it, holes as holes in structured replies) and BLOCK_STATUS.

use super::{Incoming, reply, status, zeroes};
use crate::agreement::Agreement;
use crate::backend::{Extent, Store, nbd_errno};
use crate::buf::Out;
use crate::filter::Call;
use crate::proto::reply::{self as wire, Style};
use crate::proto::*;
use crate::storage::Storage;

/// Most descriptors in one block-status reply (the spec asks for at most 2^20).
const MAX_EXTENTS: usize = 1 << 16;
/// Most descriptors in one reply when each costs a system call (a file's
/// SEEK_DATA and SEEK_HOLE, about 1 µs each): the walk over a file of many
/// extents is cut into replies of this many, about a millisecond of the
/// loop's time each, and the client asks again for the rest (the spec lets a
/// reply cover less than was asked, so long as it says something).
const MAX_COSTLY_EXTENTS: usize = 1024;
/// Reads at least this large are sent from the backend's storage without a copy
/// when it can lend it; smaller ones are cheaper to copy.
const LEND_MIN: u64 = 32 * 1024;
/// Most chunks one sparse READ is split into; the rest goes as data.
const MAX_READ_CHUNKS: usize = 64;

/// Finds the runs a structured READ is split into, holes and data, where the
/// backend knows them cheaply (and DF was not asked for, and the agreement
/// has chunks); none: one run of data. They stay in the storage's scratch
/// list for `read`.
pub fn find_holes(s: &Agreement, call: &Call, storage: &mut Storage) -> std::io::Result<()> {
    let chunks = s.style != Style::Simple;
    let wanted = chunks && call.len > 0 && call.flags & CMD_FLAG_DF == 0;
    let max = match wanted && s.caps.sparse_reads {
        true => MAX_READ_CHUNKS,
        false => 0,
    };
    let conn = call.conn;
    storage
        .find_extents(conn, call.offset, call.len, max)
        .map(|_| ())
}

/// A READ that failed: said in the log, and as its reply; returns its NBD error.
pub fn failed(r: &Incoming, len: u64, e: &std::io::Error, out: &mut Out) -> u32 {
    log::warn!("READ offset {} length {len}: {e}", r.req.offset);
    let errno = nbd_errno(e);
    reply::error(&r.agreed, &r.req, out, errno, "read failed");
    errno
}

/// READ on data at hand: straight from the store into the output queue,
/// behind its header, split at `holes` (see `find_holes`). Returns its NBD
/// error (0: none).
pub fn read(
    r: &Incoming,
    call: &Call,
    store: &mut dyn Store,
    holes: &[Extent],
    out: &mut Out,
) -> u32 {
    let mark = out.mark();
    let len = call.len;
    // Zeroes past what is below, where a filter cut the request short.
    let tail = zeroes::tail(r, call);
    let result = match r.agreed.style {
        Style::Simple => {
            out.put(wire::simple(0, r.req.cookie).as_bytes());
            read_into(store, call.offset, len, out).map(|()| zeroes::lend(tail, out))
        }
        _ if tail > 0 => {
            data_header(r, len + tail, out);
            read_into(store, call.offset, len, out).map(|()| zeroes::lend(tail, out))
        }
        _ if len == 0 => {
            reply::chunk(&r.agreed, &r.req, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0, out);
            Ok(())
        }
        _ => read_chunks(r, call, store, holes, out),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            out.rollback(mark);
            failed(r, len, &e, out)
        }
    }
}

/// The header of a READ reply whose `len` bytes of data follow in one piece:
/// simple, or one OFFSET_DATA chunk that is the last.
pub fn data_header(r: &Incoming, len: u64, out: &mut Out) {
    match r.agreed.style {
        Style::Simple => out.put(wire::simple(0, r.req.cookie).as_bytes()),
        _ => {
            let payload = wire::data_payload_len(len);
            let kind = REPLY_TYPE_OFFSET_DATA;
            reply::chunk(&r.agreed, &r.req, REPLY_FLAG_DONE, kind, payload, out);
            out.put(&r.req.offset.to_be_bytes());
        }
    }
}

/// Puts `len` bytes of the export behind the reply header just queued: lent by
/// the store when it can and the read is large enough to be worth it, else
/// copied straight into the output queue.
fn read_into(store: &mut dyn Store, offset: u64, len: u64, out: &mut Out) -> std::io::Result<()> {
    if len >= LEND_MIN && store.lend(offset, len, &mut |bytes, range| out.lend(bytes, range)) {
        return Ok(());
    }
    let n = len as usize; // ≤ MAX_REQUEST, checked
    store.read(&mut out.space(n)[..n], offset)?;
    out.commit(n);
    Ok(())
}

/// A structured READ reply: holes as OFFSET_HOLE, data as OFFSET_DATA, split at
/// `holes`; the last chunk is DONE. Chunks name the client's offsets; the
/// data comes from `call`'s (a filter may have moved it).
fn read_chunks(
    r: &Incoming,
    call: &Call,
    store: &mut dyn Store,
    holes: &[Extent],
    out: &mut Out,
) -> std::io::Result<()> {
    let end = r.req.offset + call.len;
    let mut pos = r.req.offset;
    let below = |pos: u64| pos - r.req.offset + call.offset;
    let mut runs = holes.iter();
    while pos < end {
        // The run at `pos`: a known hole, or data up to the next hole (or the end).
        let (run, hole) = match runs.next() {
            Some(e) => (e.len, e.flags & STATE_ZERO != 0),
            None => (end - pos, false),
        };
        let n = run.min(end - pos);
        let done = if pos + n == end { REPLY_FLAG_DONE } else { 0 };
        let (s, req) = (&r.agreed, &r.req);
        if hole {
            reply::chunk(
                s,
                req,
                done,
                REPLY_TYPE_OFFSET_HOLE,
                wire::HOLE_LEN as u64,
                out,
            );
            out.put(&wire::hole_payload(pos, n as u32)); // ≤ MAX_REQUEST
        } else {
            let payload = wire::data_payload_len(n);
            reply::chunk(s, req, done, REPLY_TYPE_OFFSET_DATA, payload, out);
            out.put(&pos.to_be_bytes());
            read_into(store, below(pos), n, out)?;
        }
        pos += n;
    }
    Ok(())
}

/// BLOCK_STATUS: one chunk for our one context; returns its NBD error (0:
/// none). An export without extents (`Caps::extents` false) reports the
/// whole range as allocated data.
pub fn block_status(r: &Incoming, call: &Call, storage: &mut Storage, out: &mut Out) -> u32 {
    let (req, len) = (&r.req, call.len);
    let req_one = req.flags & CMD_FLAG_REQ_ONE != 0;
    let caps = r.agreed.caps;
    let max = match (caps.extents, req_one) {
        (false, _) => 0,
        (true, true) => 1,
        (true, false) if caps.sparse_reads => MAX_EXTENTS,
        (true, false) => MAX_COSTLY_EXTENTS,
    };
    let min_block = r.agreed.caps.min_block;
    // A filter's export may end before what is below it does (offset's
    // range, a partition, truncate): nothing past its end is described.
    let room = match storage.filters.is_empty() {
        true => None,
        false => Some(r.agreed.size.saturating_sub(req.offset)),
    };
    let ext = match storage.find_extents(call.conn, call.offset, len, max) {
        Ok(ext) => ext,
        Err(e) => {
            log::warn!("BLOCK_STATUS offset {} length {len}: {e}", req.offset);
            let errno = nbd_errno(&e);
            reply::error(&r.agreed, req, out, errno, "block status failed");
            return errno;
        }
    };
    if let Some(room) = room {
        clip_to(ext, room);
    }
    status::put(r, ext, len, min_block, out);
    0
}

/// Cuts the extents at `room` bytes (the end of the export).
fn clip_to(ext: &mut Vec<Extent>, room: u64) {
    let mut pos = 0u64;
    for i in 0..ext.len() {
        if pos + ext[i].len >= room {
            ext[i].len = room - pos;
            ext.truncate(if ext[i].len == 0 { i } else { i + 1 });
            return;
        }
        pos += ext[i].len;
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::Access;
    use crate::export::{BASE_ALLOCATION_ID, test_export as export};
    use crate::proto::reply::Style;
    use crate::proto::*;
    use crate::request::testing::{req, run, session, with_memory};

    #[test]
    fn structured_read_with_holes() {
        let ex = export(false, 1);
        let s = session(&ex, Style::Structured, false);
        let mut c = with_memory(&ex);
        let Access::Now(store) = c.backend().access() else {
            panic!("RAM is at hand")
        };
        store.write(&[9; 4096], 65536, false).unwrap();
        let r = run(&s, &mut c, req(CMD_READ, 0, 0, 131072), &[]);
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
        let r = run(&s, &mut c, req(CMD_READ, CMD_FLAG_DF, 0, 131072), &[]);
        assert_eq!(r.len(), 20 + 8 + 131072);
        assert_eq!(be16(&r[4..]), REPLY_FLAG_DONE);
    }

    #[test]
    fn extended_replies_echo_offset() {
        let ex = export(false, 1);
        let s = session(&ex, Style::Extended, true);
        let mut c = with_memory(&ex);
        let r = run(&s, &mut c, req(CMD_FLUSH, 0, 0, 0), &[]);
        assert_eq!(r.len(), 32);
        assert_eq!(be32(&r), EXT_REPLY_MAGIC);
        let r = run(&s, &mut c, req(CMD_BLOCK_STATUS, 0, 4096, 8192), &[]);
        assert_eq!(be16(&r[6..]), REPLY_TYPE_BLOCK_STATUS_EXT);
        assert_eq!(be64(&r[16..]), 4096);
        assert_eq!(be64(&r[24..]), 8 + 16);
        assert_eq!(be32(&r[32..]), BASE_ALLOCATION_ID);
        assert_eq!(be32(&r[36..]), 1);
        assert_eq!(be64(&r[40..]), (1 << 20) - 4096);
        assert_eq!(be64(&r[48..]), 3);
        let r = run(&s, &mut c, req(CMD_WRITE_ZEROES, 0, 0, 1 << 21), &[]);
        assert_eq!(be16(&r[6..]), REPLY_TYPE_ERROR);
        assert_eq!(be32(&r[32..]), ENOSPC);
    }

    #[test]
    fn req_one_is_clipped() {
        let ex = export(false, 1);
        let s = session(&ex, Style::Structured, true);
        let mut c = with_memory(&ex);
        let r = run(
            &s,
            &mut c,
            req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 100),
            &[],
        );
        assert_eq!(be16(&r[6..]), REPLY_TYPE_BLOCK_STATUS);
        assert_eq!(be32(&r[16..]), 12);
        assert_eq!(be32(&r[24..]), 100);
    }
}
