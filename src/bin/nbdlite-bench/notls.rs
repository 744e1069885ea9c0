//! Stands in for `tls.rs` in a build without the `tls` feature: an `nbds`
//! URI is refused in one line before anything connects, and since no
//! `Session` can exist, every connection is plaintext. The signatures match
//! `tls.rs`, so the rest of the bench compiles the same either way.

use std::io::{self, IoSlice};

use crate::stream::Stream;
use crate::uri::TlsTarget;

/// Never made: `new` refuses.
pub enum Client {}

/// Never made.
pub enum Session {}

impl Client {
    pub fn new(_: &TlsTarget) -> Result<Client, String> {
        Err(
            "nbds URIs need TLS, and this nbdlite-bench was built without it \
             (the 'tls' cargo feature)"
                .into(),
        )
    }

    pub fn handshake(&self, _: &mut Stream) -> Result<Session, String> {
        match *self {}
    }

    pub fn hung_up(&self) -> String {
        match *self {}
    }
}

impl Session {
    pub fn blocking<'a>(&'a mut self, _: &'a mut Stream) -> &'a mut Stream {
        match *self {}
    }

    pub fn feed(&mut self, _: &mut &[u8]) -> io::Result<()> {
        match *self {}
    }

    pub fn plaintext(&mut self) -> io::Result<Option<&[u8]>> {
        match *self {}
    }

    pub fn consume(&mut self, _: usize) {
        match *self {}
    }

    pub fn seal(&mut self, _: &[IoSlice]) -> io::Result<usize> {
        match *self {}
    }

    pub fn send(&mut self, _: &mut Stream) -> io::Result<()> {
        match *self {}
    }

    pub fn close(&mut self) {
        match *self {}
    }

    pub fn describe(&self) -> String {
        match *self {}
    }
}
