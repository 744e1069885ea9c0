//! Transmission-phase replies: simple replies, structured chunks, extended chunks.
//!
//! Encoders return fixed-size byte arrays so that the caller can place them in
//! its own buffer without allocating.

use super::*;

/// Which reply headers the handshake agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Simple replies only (no STRUCTURED_REPLY, no EXTENDED_HEADERS).
    Simple,
    /// 20-byte structured chunks (simple replies allowed where there is no payload).
    Structured,
    /// 32-byte extended chunks for everything.
    Extended,
}

pub const SIMPLE_LEN: usize = 16;
pub const STRUCTURED_LEN: usize = 20;
pub const EXTENDED_LEN: usize = 32;

/// A reply header: the first `len` bytes of `bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    bytes: [u8; EXTENDED_LEN],
    len: usize,
}

impl Header {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A simple reply header; a successful READ's data follows it.
pub fn simple(error: u32, cookie: u64) -> Header {
    let mut bytes = [0u8; EXTENDED_LEN];
    bytes[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    bytes[4..8].copy_from_slice(&error.to_be_bytes());
    bytes[8..16].copy_from_slice(&cookie.to_be_bytes());
    Header {
        bytes,
        len: SIMPLE_LEN,
    }
}

/// A structured or extended chunk header announcing `payload` bytes.
/// `offset` is the request's offset, which only the extended header carries.
/// In structured style `payload` must fit 32 bits: every caller bounds it by the
/// largest request we serve (64 MiB) or the descriptor limit.
pub fn chunk(
    style: Style,
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    payload: u64,
) -> Header {
    let mut bytes = [0u8; EXTENDED_LEN];
    bytes[4..6].copy_from_slice(&flags.to_be_bytes());
    bytes[6..8].copy_from_slice(&kind.to_be_bytes());
    bytes[8..16].copy_from_slice(&cookie.to_be_bytes());
    if style == Style::Extended {
        bytes[..4].copy_from_slice(&EXT_REPLY_MAGIC.to_be_bytes());
        bytes[16..24].copy_from_slice(&offset.to_be_bytes());
        bytes[24..32].copy_from_slice(&payload.to_be_bytes());
        Header {
            bytes,
            len: EXTENDED_LEN,
        }
    } else {
        debug_assert!(payload <= u64::from(u32::MAX));
        bytes[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        bytes[16..20].copy_from_slice(&(payload as u32).to_be_bytes());
        Header {
            bytes,
            len: STRUCTURED_LEN,
        }
    }
}

/// Bytes of an error chunk's payload before its message: error, message length.
pub const ERROR_HEAD_LEN: usize = 6;
/// Bytes of an `NBD_REPLY_TYPE_OFFSET_HOLE` chunk's payload: offset, length.
pub const HOLE_LEN: usize = 12;
/// Bytes of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk's payload before its data: the offset.
pub const DATA_HEAD_LEN: usize = 8;

/// The payload length of an error chunk whose message is `msg_len` bytes.
pub fn error_payload_len(msg_len: usize) -> u64 {
    (ERROR_HEAD_LEN + msg_len) as u64
}

/// The payload length of an OFFSET_DATA chunk carrying `data` bytes.
pub fn data_payload_len(data: u64) -> u64 {
    DATA_HEAD_LEN as u64 + data
}

/// Payload of an `NBD_REPLY_TYPE_ERROR` chunk without its message: error, message length.
pub fn error_payload(error: u32, msg_len: u16) -> [u8; ERROR_HEAD_LEN] {
    let mut p = [0u8; ERROR_HEAD_LEN];
    p[..4].copy_from_slice(&error.to_be_bytes());
    p[4..].copy_from_slice(&msg_len.to_be_bytes());
    p
}

/// Payload of an `NBD_REPLY_TYPE_OFFSET_HOLE` chunk.
pub fn hole_payload(offset: u64, len: u32) -> [u8; HOLE_LEN] {
    let mut p = [0u8; HOLE_LEN];
    p[..8].copy_from_slice(&offset.to_be_bytes());
    p[8..].copy_from_slice(&len.to_be_bytes());
    p
}

/// Bytes per block-status descriptor in `style`, plus the bytes before the first one.
pub fn block_status_layout(style: Style) -> (usize, usize) {
    match style {
        Style::Extended => (16, 8),
        _ => (8, 4),
    }
}

/// One block-status descriptor: u32/u32 compact, u64/u64 extended.
pub fn descriptor(style: Style, len: u64, flags: u32, out: &mut [u8]) {
    if style == Style::Extended {
        out[..8].copy_from_slice(&len.to_be_bytes());
        out[8..16].copy_from_slice(&u64::from(flags).to_be_bytes());
    } else {
        debug_assert!(len <= u64::from(u32::MAX));
        out[..4].copy_from_slice(&(len as u32).to_be_bytes());
        out[4..8].copy_from_slice(&flags.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_layout() {
        let h = simple(EINVAL, 0x0102_0304_0506_0708);
        let b = h.as_bytes();
        assert_eq!(b.len(), 16);
        assert_eq!(be32(b), SIMPLE_REPLY_MAGIC);
        assert_eq!(be32(&b[4..]), EINVAL);
        assert_eq!(be64(&b[8..]), 0x0102_0304_0506_0708);
    }

    #[test]
    fn chunk_layouts() {
        let h = chunk(
            Style::Structured,
            REPLY_FLAG_DONE,
            REPLY_TYPE_OFFSET_DATA,
            9,
            4096,
            520,
        );
        let b = h.as_bytes();
        assert_eq!(b.len(), 20);
        assert_eq!(be32(b), STRUCTURED_REPLY_MAGIC);
        assert_eq!(be16(&b[4..]), REPLY_FLAG_DONE);
        assert_eq!(be16(&b[6..]), REPLY_TYPE_OFFSET_DATA);
        assert_eq!(be64(&b[8..]), 9);
        assert_eq!(be32(&b[16..]), 520);
        let h = chunk(Style::Extended, 0, REPLY_TYPE_NONE, 9, 4096, 0);
        let b = h.as_bytes();
        assert_eq!(b.len(), 32);
        assert_eq!(be32(b), EXT_REPLY_MAGIC);
        assert_eq!(be64(&b[16..]), 4096);
        assert_eq!(be64(&b[24..]), 0);
    }

    #[test]
    fn descriptors() {
        let mut d = [0u8; 16];
        descriptor(Style::Extended, 1 << 40, STATE_HOLE | STATE_ZERO, &mut d);
        assert_eq!(be64(&d), 1 << 40);
        assert_eq!(be64(&d[8..]), 3);
        descriptor(Style::Structured, 512, STATE_ZERO, &mut d);
        assert_eq!(be32(&d), 512);
        assert_eq!(be32(&d[4..]), 2);
    }
}
