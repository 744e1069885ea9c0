//! Whether a request may run: its command, flags, range and alignment against
//! what was advertised and negotiated. Pure: a request in, an effect length or
//! the NBD error to send back out.

use crate::agreement::Agreement;
use crate::export::{BASE_ALLOCATION_ID, Export};
use crate::proto::reply::Style;
use crate::proto::request::{Request, block_status_payload};
use crate::proto::*;

/// An NBD error to send back, with a message for humans where the reply can carry one.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub errno: u32,
    pub msg: &'static str,
}

fn refuse<T>(errno: u32, msg: &'static str) -> Result<T, Refusal> {
    Err(Refusal { errno, msg })
}

/// Flags each command accepts, given what was advertised and negotiated.
fn allowed_flags(s: &Agreement, kind: u16) -> u16 {
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

/// Checks a request against the protocol and the export chosen (its size
/// and caps, as the agreement carries them; `ex` is the server's, for what
/// all exports share: the largest request). Returns the effect length.
pub fn check(s: &Agreement, ex: &Export, req: &Request, payload: &[u8]) -> Result<u64, Refusal> {
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
    if s.caps.read_only && matches!(kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) {
        return refuse(EPERM, "export is read-only");
    }
    if kind == CMD_WRITE_ZEROES && !s.caps.zero {
        return refuse(EINVAL, "WRITE_ZEROES is not offered");
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
        Some(end) if end <= s.size => {}
        _ if matches!(kind, CMD_WRITE | CMD_WRITE_ZEROES) => {
            return refuse(ENOSPC, "write beyond the end of the export");
        }
        _ => return refuse(EINVAL, "request beyond the end of the export"),
    }
    let min = u64::from(s.caps.min_block);
    if min > 1 && (!req.offset.is_multiple_of(min) || len % min != 0) {
        return refuse(EINVAL, "request not aligned to the minimum block size");
    }
    if kind == CMD_READ && len > ex.max_request {
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
    let Some((len, mut ids)) = block_status_payload(payload) else {
        return refuse(EINVAL, "malformed block status payload");
    };
    // We have one context: the only valid list is [BASE_ALLOCATION_ID], once.
    if ids.next() != Some(BASE_ALLOCATION_ID) || ids.next().is_some() {
        return refuse(EINVAL, "unknown or repeated context id");
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_proto;
    use crate::export::test_export as export;
    use crate::request::testing::{req, session};

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

    /// With exports chosen by name, a connection's export is the one its
    /// agreement carries, not the server's: its size, its read-only state,
    /// its block size.
    #[test]
    fn the_agreement_carries_the_export() {
        let server = export(false, 1);
        let mut file = export(true, 512);
        file.size = 4096;
        let s = session(&file, Style::Structured, true);
        let c = |r: Request| errno(check(&s, &server, &r, &[]));
        assert_eq!(c(req(CMD_READ, 0, 0, 4096)), 0);
        assert_eq!(c(req(CMD_READ, 0, 4096, 512)), EINVAL, "past its end");
        assert_eq!(c(req(CMD_READ, 0, 0, 100)), EINVAL, "its block size");
        assert_eq!(c(req(CMD_WRITE, 0, 0, 512)), EPERM, "read-only");
    }

    #[test]
    fn block_status_payload_form() {
        let ex = export(false, 1);
        let s = session(&ex, Style::Extended, true);
        let p = client_proto::block_status_payload(4096, &[BASE_ALLOCATION_ID]);
        let mut r = req(CMD_BLOCK_STATUS, CMD_FLAG_PAYLOAD_LEN, 0, p.len() as u64);
        r.payload = r.length;
        assert_eq!(check(&s, &ex, &r, &p), Ok(4096));
        let p = client_proto::block_status_payload(4096, &[BASE_ALLOCATION_ID; 2]);
        assert_eq!(errno(check(&s, &ex, &r, &p)), EINVAL);
    }
}
