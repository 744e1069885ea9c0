//! The few bytes of the transmission phase the bench writes and reads:
//! compact request headers, simple reply headers, and the errors servers send.

use nbdlite::proto::{REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC};

pub const REQUEST_LEN: usize = 28;
pub const REPLY_LEN: usize = 16;

/// A compact request header.
pub fn request(kind: u16, cookie: u64, offset: u64, len: u32) -> [u8; REQUEST_LEN] {
    let mut h = [0u8; REQUEST_LEN];
    h[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    h[6..8].copy_from_slice(&kind.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h[16..24].copy_from_slice(&offset.to_be_bytes());
    h[24..28].copy_from_slice(&len.to_be_bytes());
    h
}

/// A simple reply header: its error and cookie.
pub fn parse_reply(h: &[u8; REPLY_LEN]) -> Result<(u32, u64), &'static str> {
    let word = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    match word(0) {
        SIMPLE_REPLY_MAGIC => {}
        STRUCTURED_REPLY_MAGIC => return Err("structured reply, which we did not ask for"),
        _ => return Err("bad reply magic (garbage from the server)"),
    }
    let cookie = (u64::from(word(8)) << 32) | u64::from(word(12));
    Ok((word(4), cookie))
}

/// Names of the errors NBD servers send.
pub fn errno_name(e: u32) -> &'static str {
    match e {
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        22 => "EINVAL",
        28 => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbdlite::proto::CMD_WRITE;

    #[test]
    fn headers() {
        let h = request(CMD_WRITE, 0x0102, 4096, 512);
        assert_eq!(&h[..4], &REQUEST_MAGIC.to_be_bytes());
        assert_eq!(&h[6..8], &CMD_WRITE.to_be_bytes());
        assert_eq!(h[15], 2);
        assert_eq!(&h[24..], &512u32.to_be_bytes());
        let mut r = [0u8; REPLY_LEN];
        r[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        r[7] = 5;
        r[15] = 9;
        assert_eq!(parse_reply(&r), Ok((5, 9)));
        assert_eq!(errno_name(5), "EIO");
        r[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert!(parse_reply(&r).is_err());
    }
}
