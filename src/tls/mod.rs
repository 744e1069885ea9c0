//! TLS (issue 13): nbdkit's `--tls` options, the rustls configuration they
//! load, and the non-blocking encrypted stream a connection switches to after
//! STARTTLS.
//!
//! `options` is compiled in every build, so that a plaintext-only nbdlite
//! (`--no-default-features`) refuses `--tls=on|require` with a clear message;
//! the rest needs the `tls` feature (rustls with the ring provider).

#[cfg(feature = "tls")]
pub mod config;
pub mod options;
#[cfg(feature = "tls")]
pub mod stream;

#[cfg(feature = "tls")]
pub use config::{provider, server_config};
pub use options::{TlsMode, TlsOptions, parse};
#[cfg(feature = "tls")]
pub use stream::{MEMORY, Stream};
