//! Transmission-phase requests: the compact 28-byte and the extended 32-byte header.

use super::*;

pub const COMPACT_LEN: usize = 28;
pub const EXTENDED_LEN: usize = 32;
/// BLOCK_STATUS's payload form (extended headers): the length to report on,
/// then context ids of this many bytes each.
const STATUS_LENGTH_LEN: usize = 8;
const CONTEXT_ID_LEN: usize = 4;

/// The payload of a BLOCK_STATUS with PAYLOAD_LEN: the length to report on and
/// the context ids asked for; None if it is not that shape (no id at all, or
/// a partial one).
pub fn block_status_payload(p: &[u8]) -> Option<(u64, impl Iterator<Item = u32> + '_)> {
    let ids = p.get(STATUS_LENGTH_LEN..)?;
    if ids.is_empty() || !ids.len().is_multiple_of(CONTEXT_ID_LEN) {
        return None;
    }
    Some((be64(p), ids.chunks_exact(CONTEXT_ID_LEN).map(be32)))
}

/// A request header as it came off the wire, before any check against the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    /// Effect length, or payload length for a request that carries a payload.
    pub length: u64,
    /// Bytes of payload that follow the header on the wire.
    pub payload: u64,
}

/// Parses one request header. `extended` says which header the handshake agreed on;
/// the other magic is a framing error.
pub fn parse_request(buf: &[u8], extended: bool) -> Parse<Request> {
    let need = if extended { EXTENDED_LEN } else { COMPACT_LEN };
    if buf.len() < 4 {
        return Parse::NeedMore;
    }
    let magic = be32(buf);
    let expected = if extended {
        EXT_REQUEST_MAGIC
    } else {
        REQUEST_MAGIC
    };
    if magic != expected {
        return Parse::Malformed(match magic {
            REQUEST_MAGIC => "compact request after extended headers were negotiated",
            EXT_REQUEST_MAGIC => "extended request without extended headers",
            _ => "bad request magic",
        });
    }
    if buf.len() < need {
        return Parse::NeedMore;
    }
    let flags = be16(&buf[4..]);
    let kind = be16(&buf[6..]);
    let cookie = be64(&buf[8..]);
    let offset = be64(&buf[16..]);
    let (length, payload) = if extended {
        let length = be64(&buf[24..]);
        // The spec says an extended WRITE MUST set PAYLOAD_LEN, but qemu 10 sends
        // it without, as qemu-nbd accepts: a WRITE's length is its payload either way.
        let payload = if flags & CMD_FLAG_PAYLOAD_LEN != 0 || kind == CMD_WRITE {
            length
        } else {
            0
        };
        (length, payload)
    } else {
        let length = u64::from(be32(&buf[24..]));
        let payload = if kind == CMD_WRITE { length } else { 0 };
        (length, payload)
    };
    Parse::Done(
        Request {
            flags,
            kind,
            cookie,
            offset,
            length,
            payload,
        },
        need,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compact(flags: u16, kind: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v
    }

    fn extended(flags: u16, kind: u16, cookie: u64, offset: u64, len: u64) -> Vec<u8> {
        let mut v = EXT_REQUEST_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v
    }

    #[test]
    fn compact_every_prefix() {
        let v = compact(CMD_FLAG_FUA, CMD_WRITE, 0xdead_beef, 512, 4096);
        for i in 0..v.len() {
            assert_eq!(parse_request(&v[..i], false), Parse::NeedMore, "prefix {i}");
        }
        let Parse::Done(r, n) = parse_request(&v, false) else {
            panic!()
        };
        assert_eq!(n, 28);
        assert_eq!(
            r,
            Request {
                flags: CMD_FLAG_FUA,
                kind: CMD_WRITE,
                cookie: 0xdead_beef,
                offset: 512,
                length: 4096,
                payload: 4096
            }
        );
        let Parse::Done(r, _) = parse_request(&compact(0, CMD_READ, 1, 0, 7), false) else {
            panic!()
        };
        assert_eq!(r.payload, 0);
    }

    #[test]
    fn extended_lengths() {
        let v = extended(0, CMD_WRITE_ZEROES, 1, 0, 1 << 40);
        for i in 0..v.len() {
            assert_eq!(parse_request(&v[..i], true), Parse::NeedMore, "prefix {i}");
        }
        let Parse::Done(r, n) = parse_request(&v, true) else {
            panic!()
        };
        assert_eq!((n, r.length, r.payload), (32, 1 << 40, 0));
        for flags in [CMD_FLAG_PAYLOAD_LEN, 0] {
            let w = extended(flags, CMD_WRITE, 1, 0, 512);
            let Parse::Done(r, _) = parse_request(&w, true) else {
                panic!()
            };
            assert_eq!(r.payload, 512);
        }
    }

    #[test]
    fn wrong_magic() {
        let v = compact(0, CMD_READ, 1, 0, 1);
        assert!(matches!(parse_request(&v, true), Parse::Malformed(_)));
        let v = extended(0, CMD_READ, 1, 0, 1);
        assert!(matches!(parse_request(&v, false), Parse::Malformed(_)));
        assert!(matches!(
            parse_request(&[0x12, 0x56, 0x09, 0x53], false),
            Parse::Malformed(_)
        ));
    }
}
