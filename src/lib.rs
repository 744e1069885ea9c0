//! nbdlite as a library: the server's modules, shared by the `nbdlite` binary,
//! the `nbdlite-bench` load generator, the fuzz targets and the tests. Only the
//! binary is a supported interface; the library exists so that the protocol
//! code that is fuzzed and tested is the very code the server runs.
//!
//! Unsafe code lives in `sys` alone (each block says why it is sound).

#![deny(unsafe_code)]

// The unit tests report their skips as the integration tests do
// (tests/common/skipped.rs, which names this crate `nbdlite`).
#[cfg(test)]
extern crate self as nbdlite;
#[cfg(test)]
#[path = "../tests/common/skipped.rs"]
mod skipped;

// The facade: what the `nbdlite` binary runs (command line, logging,
// start-up), what the bench and the tests build on (the client's side of the
// protocol, the TLS configuration, the I/O engine, the wire format), the fuzz
// harness, and the few system calls tests make (`os`). Everything else is the
// server's own, crate-private, so that the compiler sees what is unused.
pub mod activation;
pub mod aio;
pub mod cli;
#[doc(hidden)]
pub mod client_proto;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod proto;
pub mod startup;
pub mod tls;

/// The system calls the binaries and the tests make themselves.
pub mod os {
    pub use crate::sys::net::bound_socket_buffers;
    pub use crate::sys::{
        at_exit, fadvise_dontneed, geteuid, getppid, heap_in_use, memlock_limit,
        raise_nofile_limit, unsetenv,
    };
}

mod agreement;
mod backend;
mod budget;
mod buf;
mod captive;
mod catalog;
mod conn;
mod cow;
mod curl;
mod daemon;
mod driver;
mod export;
mod filter;
mod handshake;
mod http;
mod lifecycle;
mod listen;
mod notify;
mod origin;
mod privileges;
mod request;
mod server;
mod shared;
mod size;
mod storage;
#[allow(unsafe_code)]
mod sys;
mod tally;
