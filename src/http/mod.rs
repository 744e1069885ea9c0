//! HTTP/1.1 as the curl backend speaks it, pure: URLs, the range request it
//! sends, and the responses it reads. No sockets here (see `crate::curl`).

pub mod request;
pub mod response;
pub mod url;

pub use request::{Extras, HeaderArg, Template};
pub use response::{ContentRange, Event, Framing, Head, Reader};
pub use url::{Scheme, Url};
