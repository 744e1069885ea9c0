//! Transmission as a client speaks it: request headers (and BLOCK_STATUS's
//! payload) out; reply headers, chunks and whole replies in.

use super::*;

/// A compact request header; a WRITE's `len` bytes of data follow it.
pub fn compact_request(
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u32,
) -> [u8; COMPACT_REQUEST_LEN] {
    let mut h = [0u8; COMPACT_REQUEST_LEN];
    h[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    request_fields(&mut h, flags, kind, cookie, offset);
    h[24..].copy_from_slice(&len.to_be_bytes());
    h
}

/// An extended request header: `len` is the payload's length when `flags`
/// has PAYLOAD_LEN, else the length the command acts on.
pub fn extended_request(
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u64,
) -> [u8; EXTENDED_REQUEST_LEN] {
    let mut h = [0u8; EXTENDED_REQUEST_LEN];
    h[..4].copy_from_slice(&EXT_REQUEST_MAGIC.to_be_bytes());
    request_fields(&mut h, flags, kind, cookie, offset);
    h[24..].copy_from_slice(&len.to_be_bytes());
    h
}

/// The fields both request headers have, at the same places.
fn request_fields(h: &mut [u8], flags: u16, kind: u16, cookie: u64, offset: u64) {
    h[4..6].copy_from_slice(&flags.to_be_bytes());
    h[6..8].copy_from_slice(&kind.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h[16..24].copy_from_slice(&offset.to_be_bytes());
}

/// A request header, extended or compact (where `len` keeps its low 32
/// bits: a test may want exactly that).
pub fn request(
    extended: bool,
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u64,
) -> Vec<u8> {
    if extended {
        extended_request(flags, kind, cookie, offset, len).to_vec()
    } else {
        compact_request(flags, kind, cookie, offset, len as u32).to_vec()
    }
}

/// BLOCK_STATUS's payload (extended headers, with PAYLOAD_LEN): the length
/// to report on, then the ids of the contexts wanted.
pub fn block_status_payload(effect_len: u64, contexts: &[u32]) -> Vec<u8> {
    let mut v = effect_len.to_be_bytes().to_vec();
    for id in contexts {
        v.extend_from_slice(&id.to_be_bytes());
    }
    v
}

/// A structured or extended chunk's header; `len` bytes of payload follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub extended: bool,
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    /// The request's offset, echoed: extended chunks only (0 otherwise).
    pub offset: u64,
    pub len: u64,
}

impl ChunkHeader {
    /// The last chunk for its request.
    pub fn done(&self) -> bool {
        self.flags & REPLY_FLAG_DONE != 0
    }
}

/// A reply's header, whichever of the three kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A successful READ's data follows, as long as the READ asked for.
    Simple {
        error: u32,
        cookie: u64,
    },
    Chunk(ChunkHeader),
}

pub fn reply_header(buf: &[u8]) -> Parse<ReplyHeader> {
    if buf.len() < 4 {
        return Parse::NeedMore(4 - buf.len());
    }
    let len = match u32_at(buf, 0) {
        SIMPLE_MAGIC => SIMPLE_REPLY_LEN,
        STRUCTURED_MAGIC => STRUCTURED_REPLY_LEN,
        EXTENDED_MAGIC => EXTENDED_REPLY_LEN,
        _ => return Parse::Malformed("bad reply magic"),
    };
    if let Some(n) = short(buf, len) {
        return Parse::NeedMore(n);
    }
    let cookie = u64_at(buf, 8);
    let h = match len {
        SIMPLE_REPLY_LEN => ReplyHeader::Simple {
            error: u32_at(buf, 4),
            cookie,
        },
        _ => {
            let extended = len == EXTENDED_REPLY_LEN;
            ReplyHeader::Chunk(ChunkHeader {
                extended,
                flags: u16_at(buf, 4),
                kind: u16_at(buf, 6),
                cookie,
                offset: if extended { u64_at(buf, 16) } else { 0 },
                len: if extended {
                    u64_at(buf, 24)
                } else {
                    u64::from(u32_at(buf, 16))
                },
            })
        }
    };
    Parse::Done(h, len)
}

/// What a chunk carries, by its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk<'a> {
    None,
    Data {
        offset: u64,
        data: &'a [u8],
    },
    Hole {
        offset: u64,
        len: u32,
    },
    /// Compact or extended descriptors alike: (length, flags) each.
    BlockStatus {
        context: u32,
        extents: Vec<(u64, u64)>,
    },
    /// ERROR, ERROR_OFFSET (with its offset) or an error type this client
    /// does not know.
    Error {
        errno: u32,
        message: &'a [u8],
        offset: Option<u64>,
    },
}

/// A chunk's payload, checked against what the spec says of its type. An
/// unknown type without the error bit is malformed: a client cannot go on.
pub fn chunk(kind: u16, p: &[u8]) -> Result<Chunk<'_>, &'static str> {
    match kind {
        T_NONE if p.is_empty() => Ok(Chunk::None),
        T_NONE => Err("NONE chunk with a payload"),
        T_DATA if p.len() > 8 => Ok(Chunk::Data {
            offset: u64_at(p, 0),
            data: &p[8..],
        }),
        T_DATA => Err("data chunk without data"),
        T_HOLE if p.len() == 12 && u32_at(p, 8) > 0 => Ok(Chunk::Hole {
            offset: u64_at(p, 0),
            len: u32_at(p, 8),
        }),
        T_HOLE => Err("hole chunk of the wrong length"),
        T_BS | T_BS_EXT => block_status(kind == T_BS_EXT, p),
        k if k & T_ERROR_BIT != 0 => error_chunk(k, p),
        _ => Err("unknown chunk type"),
    }
}

/// A block status chunk: the context id, (extended: a count,) then at least
/// one descriptor, none of them empty.
fn block_status(extended: bool, p: &[u8]) -> Result<Chunk<'_>, &'static str> {
    let (head, per) = if extended { (8, 16) } else { (4, 8) };
    if p.len() < head + per || !(p.len() - head).is_multiple_of(per) {
        return Err("block status chunk of the wrong length");
    }
    let extents: Vec<(u64, u64)> = p[head..]
        .chunks_exact(per)
        .map(|d| {
            if extended {
                (u64_at(d, 0), u64_at(d, 8))
            } else {
                (u64::from(u32_at(d, 0)), u64::from(u32_at(d, 4)))
            }
        })
        .collect();
    if extended && u32_at(p, 4) as usize != extents.len() {
        return Err("block status count does not match its descriptors");
    }
    if extents.iter().any(|&(len, _)| len == 0) {
        return Err("an empty extent");
    }
    Ok(Chunk::BlockStatus {
        context: u32_at(p, 0),
        extents,
    })
}

/// An error chunk: errno (not 0), message length, message; ERROR ends
/// there, ERROR_OFFSET has an offset after it.
fn error_chunk(kind: u16, p: &[u8]) -> Result<Chunk<'_>, &'static str> {
    if p.len() < 6 {
        return Err("error chunk too short");
    }
    let errno = u32_at(p, 0);
    let end = 6 + usize::from(u16_at(p, 4));
    let tail = match kind {
        T_ERROR => Some(0),
        T_ERROR_OFFSET => Some(8),
        _ => None, // unknown: its message is all we can read
    };
    let fits = match tail {
        Some(t) => p.len() == end + t,
        None => p.len() >= end,
    };
    if errno == 0 || !fits || end - 6 > MAX_STRING {
        return Err("malformed error chunk");
    }
    Ok(Chunk::Error {
        errno,
        message: &p[6..end],
        offset: (kind == T_ERROR_OFFSET).then(|| u64_at(p, end)),
    })
}

/// A whole reply (a simple one, or one chunk) with its payload, as a
/// blocking client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Which kind of header it came with.
    pub magic: u32,
    /// Chunks only.
    pub flags: u16,
    /// Chunks only: the chunk's type.
    pub kind: u16,
    pub cookie: u64,
    /// Extended chunks only.
    pub offset: u64,
    /// Simple replies only.
    pub error: u32,
    /// A simple READ's data, or a chunk's payload.
    pub payload: Vec<u8>,
}

/// A whole reply. `read_len` is the length of the READ it answers when
/// simple replies are in use: a successful simple reply to it carries that
/// much data. A chunk's payload must be what its type allows.
pub fn reply(buf: &[u8], read_len: Option<usize>) -> Parse<Reply> {
    let (h, hlen) = match reply_header(buf).value() {
        Ok(v) => v,
        Err(p) => return p,
    };
    let plen = match h {
        ReplyHeader::Simple { error: 0, .. } => read_len.unwrap_or(0) as u64,
        ReplyHeader::Simple { .. } => 0,
        ReplyHeader::Chunk(c) => c.len,
    };
    let Some(end) = usize::try_from(plen).ok().and_then(|p| p.checked_add(hlen)) else {
        return Parse::Malformed("reply longer than memory");
    };
    if let Some(n) = short(buf, end) {
        return Parse::NeedMore(n);
    }
    let payload = &buf[hlen..end];
    let r = match h {
        ReplyHeader::Simple { error, cookie } => Reply {
            magic: SIMPLE_MAGIC,
            flags: 0,
            kind: 0,
            cookie,
            offset: 0,
            error,
            payload: payload.to_vec(),
        },
        ReplyHeader::Chunk(c) => {
            if let Err(e) = chunk(c.kind, payload) {
                return Parse::Malformed(e);
            }
            Reply {
                magic: u32_at(buf, 0),
                flags: c.flags,
                kind: c.kind,
                cookie: c.cookie,
                offset: c.offset,
                error: 0,
                payload: payload.to_vec(),
            }
        }
    };
    Parse::Done(r, end)
}

impl Reply {
    /// The last reply for its request: a simple one, or a chunk marked DONE.
    pub fn done(&self) -> bool {
        self.magic == SIMPLE_MAGIC || self.flags & REPLY_FLAG_DONE != 0
    }

    /// What a chunk carries; None for a simple reply (or a payload that is
    /// not what its type allows, which `reply` never returns).
    pub fn chunk(&self) -> Option<Chunk<'_>> {
        if self.magic == SIMPLE_MAGIC {
            return None;
        }
        chunk(self.kind, &self.payload).ok()
    }

    /// The error of a simple reply or an error chunk; 0 otherwise.
    pub fn errno(&self) -> u32 {
        if self.magic == SIMPLE_MAGIC {
            return self.error;
        }
        match self.chunk() {
            Some(Chunk::Error { errno, .. }) => errno,
            _ => 0,
        }
    }

    /// An error chunk's message; empty for anything else.
    pub fn message(&self) -> String {
        match self.chunk() {
            Some(Chunk::Error { message, .. }) => String::from_utf8_lossy(message).into_owned(),
            _ => String::new(),
        }
    }
}
