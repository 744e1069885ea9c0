//! The `curl` backend's I/O: an object on a web server (HTTP or HTTPS, as
//! nbdkit's curl plugin serves it), read with range GETs over a pool of
//! keep-alive connections on the server's one Poll.
//!
//! - `config`: the parameters made usable (secrets read, TLS, addresses);
//! - `probe`: the start-up request that finds the size and checks `Range`;
//! - `transport`: one non-blocking socket, with TLS when `https`;
//! - `conn`, `exchange`: one connection and the request it carries;
//! - `pool`: the connections as an I/O engine (`aio::Remote`).
//!
//! HTTP itself (URLs, the request, parsing responses) is `crate::http`, pure.

pub mod config;
mod conn;
mod exchange;
pub mod pool;
pub mod probe;
mod spec;
#[cfg(feature = "tls")]
mod tls;
pub mod transport;

pub use config::Options;
pub use pool::Pool;
pub use spec::{CurlSpec, Secret};
