//! What the handshake agreed for the rest of a connection: the reply style,
//! the transmission flags the client was sent, and the export it chose, as
//! that connection sees it. Plain data, shared by the handshake that makes it
//! and the transmission phase that obeys it.

use crate::backend::Caps;
use crate::export::Export;
use crate::proto::reply::Style;

/// What the handshake agreed for the rest of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    pub style: Style,
    /// Transmission flags as sent to the client.
    pub flags: u16,
    /// `base:allocation` is selected for this export.
    pub meta: bool,
    /// The size of the export chosen, as the client was told it.
    pub size: u64,
    /// What the export chosen can do. Where one export is served, the
    /// server's; with `file dir=`, the chosen file's (its size, whether it
    /// can be written, its block size): carried here, so that checking a
    /// request never looks its export up.
    pub caps: Caps,
}

impl Agreement {
    /// The agreement for entering export `ex` with `style`, with or without
    /// a metadata context.
    pub fn new(ex: &Export, style: Style, meta: bool) -> Agreement {
        Agreement {
            style,
            flags: ex.flags(style, meta),
            meta,
            size: ex.size,
            caps: ex.caps,
        }
    }

    pub fn extended(&self) -> bool {
        self.style == Style::Extended
    }

    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}
