//! The BLOCK_STATUS reply for our one context, `base:allocation`: extents
//! fitted to what the reply may carry, then encoded in the agreed style.

use super::{Incoming, reply};
use crate::backend::Extent;
use crate::buf::Out;
use crate::export::BASE_ALLOCATION_ID;
use crate::proto::reply::{self as wire, Style};
use crate::proto::*;

/// The reply to BLOCK_STATUS of `len` bytes whose extents are `ext`.
pub fn put(r: &Incoming, ext: &mut Vec<Extent>, len: u64, min_block: u32, out: &mut Out) {
    let (s, req) = (&r.agreed, &r.req);
    let req_one = req.flags & CMD_FLAG_REQ_ONE != 0;
    clip_extents(ext, len, req_one, s.style, min_block);
    let (per, head) = wire::block_status_layout(s.style);
    let kind = if s.extended() {
        REPLY_TYPE_BLOCK_STATUS_EXT
    } else {
        REPLY_TYPE_BLOCK_STATUS
    };
    let payload = (head + per * ext.len()) as u64;
    reply::chunk(s, req, REPLY_FLAG_DONE, kind, payload, out);
    out.put(&BASE_ALLOCATION_ID.to_be_bytes());
    if s.extended() {
        out.put(&(ext.len() as u32).to_be_bytes()); // ≤ MAX_EXTENTS
    }
    let mut d = [0u8; 16];
    for e in ext.iter() {
        wire::descriptor(s.style, e.len, e.flags, &mut d);
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
