//! An export as clients are told it: its name, size, limits and flags. The
//! server holds one (`Storage::export`): the one it serves, or, with
//! exports chosen by name, what they share; each of those is made from it
//! (`crate::catalog`).

use crate::backend::Caps;
use crate::proto::reply::Style;
use crate::proto::*;
use crate::tls::TlsMode;

/// Largest payload we advertise (NBD_INFO_BLOCK_SIZE maximum): the spec's default.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Largest READ or WRITE we serve (nbdkit's limit); clients stay below MAX_PAYLOAD.
/// A low memory budget lowers both (`Export::max_request`).
pub const MAX_REQUEST: u64 = 64 << 20;
/// Preferred block size we advertise.
pub const PREFERRED_BLOCK: u32 = 4096;
/// The id of `base:allocation` in SET_META_CONTEXT replies.
pub const BASE_ALLOCATION_ID: u32 = 1;

#[derive(Debug, Clone)]
pub struct Export {
    /// The name NBD_OPT_LIST and `$uri` show (`-e`). Clients may ask for any
    /// name: all reach this one export (but with exports chosen by name,
    /// where this is the file's).
    pub name: Vec<u8>,
    /// `--description`, for NBD_INFO_DESCRIPTION and NBD_OPT_LIST.
    pub description: Option<Vec<u8>>,
    pub size: u64,
    pub caps: Caps,
    /// `--no-sr`: refuse STRUCTURED_REPLY (and EXTENDED_HEADERS, which implies it).
    pub no_sr: bool,
    /// The newstyle handshake flags offered (`proto::option::HANDSHAKE_FLAGS`
    /// less what `--mask-handshake` takes away). Without FIXED_NEWSTYLE, a
    /// client may only send EXPORT_NAME; without NO_ZEROES, it gets the 124
    /// bytes of padding after it.
    pub handshake_flags: u16,
    /// Whether clients may, or must, reach it over TLS (`--tls`).
    pub tls: TlsMode,
    /// Largest READ or WRITE served: `MAX_REQUEST`, or less when the memory
    /// budget could not always find room for one (`Budget::largest_request`).
    /// Larger ones are refused as requests over the maximum are.
    pub max_request: u64,
    /// (minimum, preferred, maximum) to advertise instead of what the backend
    /// and `max_request` give (`--filter=blocksize-policy`). Only what clients
    /// are told: `check` still enforces the backend's own `caps.min_block`,
    /// so a filter may ask clients for more than the server refuses.
    pub block_override: Option<(u32, u32, u32)>,
}

impl Export {
    /// An export of `size` bytes that can do `caps`, with no name or
    /// description, every handshake flag offered, no TLS, and the largest
    /// requests nbdlite serves; the rest are the caller's to set.
    pub fn new(size: u64, caps: Caps) -> Export {
        Export {
            name: Vec::new(),
            description: None,
            size,
            caps,
            no_sr: false,
            handshake_flags: crate::proto::option::HANDSHAKE_FLAGS,
            tls: TlsMode::Off,
            max_request: MAX_REQUEST,
            block_override: None,
        }
    }

    /// Transmission flags for a client that negotiated `style`, with or without
    /// a metadata context.
    pub fn flags(&self, style: Style, meta: bool) -> u16 {
        let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_CACHE;
        if self.caps.multi_conn {
            f |= TF_CAN_MULTI_CONN;
        }
        if style != Style::Simple {
            f |= TF_SEND_DF;
        }
        if style == Style::Extended && meta {
            f |= TF_BLOCK_STATUS_PAYLOAD;
        }
        if self.caps.read_only {
            f |= TF_READ_ONLY;
        } else {
            f |= TF_SEND_FUA | TF_SEND_TRIM;
            if self.caps.zero {
                f |= TF_SEND_WRITE_ZEROES;
            }
            if self.caps.zero && self.caps.fast_zero {
                f |= TF_SEND_FAST_ZERO;
            }
        }
        f
    }

    /// (minimum, preferred, maximum payload) for NBD_INFO_BLOCK_SIZE: the
    /// maximum follows `max_request`, so that clients that honour it never
    /// send a request the memory budget could not take.
    pub fn block_sizes(&self) -> (u32, u32, u32) {
        if let Some(sizes) = self.block_override {
            return sizes;
        }
        let min = self.caps.min_block;
        let preferred = PREFERRED_BLOCK.max(min);
        let max = self.max_request.min(u64::from(MAX_PAYLOAD)) as u32;
        (min, preferred, max.max(preferred))
    }
}

/// A 1 MiB export named "disk", for unit tests.
#[cfg(test)]
pub fn test_export(read_only: bool, min_block: u32) -> Export {
    Export {
        name: b"disk".to_vec(),
        description: Some(b"a test disk".to_vec()),
        size: 1 << 20,
        caps: Caps {
            read_only,
            zero: true,
            fast_zero: true,
            extents: true,
            sparse_reads: true,
            min_block,
            multi_conn: true,
        },
        no_sr: false,
        handshake_flags: crate::proto::option::HANDSHAKE_FLAGS,
        tls: TlsMode::Off,
        max_request: MAX_REQUEST,
        block_override: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(read_only: bool) -> Export {
        test_export(read_only, 1)
    }

    #[test]
    fn flags_follow_negotiation() {
        let e = export(false);
        let simple = e.flags(Style::Simple, false);
        assert_eq!(simple & TF_SEND_DF, 0);
        assert_eq!(e.flags(Style::Structured, true), simple | TF_SEND_DF);
        assert_eq!(
            e.flags(Style::Extended, true),
            simple | TF_SEND_DF | TF_BLOCK_STATUS_PAYLOAD
        );
        // what nbdkit's memory plugin advertises, plus nothing it lacks
        assert_eq!(e.flags(Style::Structured, false), 0xded);
        let ro = export(true).flags(Style::Structured, false);
        assert_ne!(ro & TF_READ_ONLY, 0);
        assert_eq!(
            ro & (TF_SEND_TRIM | TF_SEND_WRITE_ZEROES | TF_SEND_FAST_ZERO),
            0
        );
    }
}
