//! What the handshake agreed for the rest of a connection: the reply style
//! and the transmission flags the client was sent. Plain data, shared by the
//! handshake that makes it and the transmission phase that obeys it.

use crate::proto::reply::Style;

/// What the handshake agreed for the rest of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    pub style: Style,
    /// Transmission flags as sent to the client.
    pub flags: u16,
    /// `base:allocation` is selected for this export.
    pub meta: bool,
}

impl Agreement {
    pub fn extended(&self) -> bool {
        self.style == Style::Extended
    }

    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}
