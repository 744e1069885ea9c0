//! The start-up probe: one `GET` of byte 0 (`Range: bytes=0-0`), which says
//! in one round trip how large the object is (`Content-Range: bytes
//! 0-0/SIZE`), that the server honours `Range` (a 206, not a 200 with the
//! whole object), and where redirects lead. A GET rather than a HEAD: a
//! presigned object store URL is signed for one method, GET.
//!
//! It runs before the event loop, so it may wait, on a Poll of its own and
//! never longer than the request timeout per request.

use std::time::Instant;

use mio::{Events, Poll, Token};

use super::config::{Options, Settings};
use super::transport::{Recv, Transport};
use crate::http::response::MAX_HEAD;
use crate::http::{ContentRange, Event, Head, Reader};

/// Redirects followed at most (libcurl follows more, but a disk image that
/// needs more than a few is misconfigured).
pub const MAX_REDIRECTS: usize = 10;

/// What the probe found: where to send requests and the object's size.
pub struct Probed {
    pub settings: Settings,
    pub size: u64,
}

pub fn probe(options: &Options) -> Result<Probed, String> {
    let mut url = options.url.clone();
    for _ in 0..=MAX_REDIRECTS {
        let settings = options.settings(&url)?;
        let head = first_byte(&settings).map_err(|e| format!("{url}: {e}"))?;
        let whence = |why: &str| format!("{url}: {why}");
        match head.status {
            206 => {
                return size_of(&head)
                    .map(|size| Probed { settings, size })
                    .map_err(|e| whence(&e));
            }
            416 => match head.content_range {
                // An empty object: byte 0 does not exist.
                Some(ContentRange::Unsatisfied { total: 0 }) => {
                    return Ok(Probed { settings, size: 0 });
                }
                _ => {
                    return Err(whence(&format!(
                        "HTTP {} to a request of byte 0",
                        head.status_line()
                    )));
                }
            },
            200 => {
                return Err(whence(
                    "the server does not support range requests (it answered \
                     'Range: bytes=0-0' with 200 OK and the whole object)",
                ));
            }
            301 | 302 | 303 | 307 | 308 => {
                let Some(location) = &head.location else {
                    return Err(whence(&format!(
                        "HTTP {} without a Location",
                        head.status_line()
                    )));
                };
                if !options.followlocation {
                    return Err(whence(&format!(
                        "HTTP {} to {location} (followlocation=false)",
                        head.status_line()
                    )));
                }
                url = url.join(location).map_err(|e| whence(&e))?;
                log::debug!("curl: redirected to {url}");
            }
            _ => return Err(whence(&format!("HTTP {}", head.status_line()))),
        }
    }
    Err(format!(
        "{}: too many redirects (more than {MAX_REDIRECTS})",
        options.url
    ))
}

/// The size a 206 to `bytes=0-0` gives.
fn size_of(head: &Head) -> Result<u64, String> {
    match head.content_range {
        Some(ContentRange::Bytes {
            first: 0,
            last: 0,
            total: Some(t),
        }) => Ok(t),
        Some(ContentRange::Bytes { total: None, .. }) => Err(
            "the server does not say how large the object is (Content-Range: bytes 0-0/*)".into(),
        ),
        _ => Err("a 206 whose Content-Range is not the byte asked for".into()),
    }
}

/// Sends `GET` with `Range: bytes=0-0` and returns the response's head.
fn first_byte(s: &Settings) -> Result<Head, String> {
    let deadline = Instant::now() + s.timeout;
    let io = |e: std::io::Error| crate::error::plain(&e);
    let mut poll = Poll::new().map_err(io)?;
    let mut events = Events::with_capacity(4);
    let mut link = Transport::connect(
        &s.endpoint,
        s.nodelay,
        #[cfg(feature = "tls")]
        s.tls.as_ref(),
    )
    .map_err(|e| format!("cannot connect to {}: {}", s.endpoint, io(e)))?;
    link.register(poll.registry(), Token(0)).map_err(io)?;
    let mut request = Vec::new();
    s.template.get(0, 1, &mut request);
    let mut sent = 0;
    let mut buf = vec![0u8; MAX_HEAD];
    let (mut have, mut used) = (0, 0);
    let mut reader = Reader::new(false);
    loop {
        while sent < request.len() {
            match link.send(&request[sent..]).map_err(io)? {
                0 => break,
                n => sent += n,
            }
        }
        link.flush().map_err(io)?;
        loop {
            if have == buf.len() {
                return Err("response head too large".into());
            }
            match link.recv(&mut buf[have..]).map_err(io)? {
                Recv::Bytes(n) => have += n,
                Recv::WouldBlock => break,
                Recv::Eof => {
                    return Err("the server closed the connection without a response".into());
                }
            }
            loop {
                let (n, ev) = reader
                    .step(&buf[used..have])
                    .map_err(|e| format!("bad response: {e}"))?;
                used += n;
                match ev {
                    Event::Head(h) => return Ok(h),
                    _ if n == 0 => break,
                    _ => {}
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no response within {} s (timeout=)",
                s.timeout.as_secs()
            ));
        }
        poll.poll(&mut events, Some(left)).map_err(io)?;
    }
}
