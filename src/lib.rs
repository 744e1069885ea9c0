//! nbdlite as a library: the server's modules, shared by the `nbdlite` binary,
//! the `nbdlite-bench` load generator, the fuzz targets and the tests. Only the
//! binary is a supported interface; the library exists so that the protocol
//! code that is fuzzed and tested is the very code the server runs.
//!
//! Unsafe code lives in `sys` alone (each block says why it is sound).

#![deny(unsafe_code)]

pub mod activation;
pub mod agreement;
pub mod aio;
pub mod backend;
pub mod budget;
pub mod buf;
pub mod captive;
pub mod cli;
#[doc(hidden)]
pub mod client_proto;
pub mod conn;
pub mod curl;
pub mod daemon;
pub mod driver;
pub mod error;
pub mod export;
pub mod filter;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod http;
pub mod lifecycle;
pub mod listen;
pub mod logging;
pub mod notify;
pub mod origin;
pub mod privileges;
pub mod proto;
pub mod request;
pub mod server;
pub mod shared;
pub mod startup;
pub mod storage;
#[allow(unsafe_code)]
pub mod sys;
pub mod tally;
pub mod tls;
