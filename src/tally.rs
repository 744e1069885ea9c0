//! What the server has done since it started, for the summary line SIGUSR1
//! asks for: requests answered, bytes read and written, errors. A few
//! integer adds per request, where its outcome is known (`Storage::answered`,
//! and where a request is refused before it gets that far).

use std::time::Duration;

use crate::proto::{CMD_READ, CMD_WRITE};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Requests answered (refused ones too).
    pub requests: u64,
    /// Bytes of data read and written by requests that succeeded.
    pub bytes: u64,
    /// Requests answered with an error.
    pub errors: u64,
}

impl Tally {
    /// A request of `kind` acting on `len` bytes was answered with `errno`
    /// (0: it succeeded).
    pub fn note(&mut self, kind: u16, len: u64, errno: u32) {
        self.requests += 1;
        if errno != 0 {
            self.errors += 1;
        } else if kind == CMD_READ || kind == CMD_WRITE {
            self.bytes += len;
        }
    }

    /// A request refused before it reached the filters and the backend.
    pub fn refused(&mut self) {
        self.requests += 1;
        self.errors += 1;
    }

    /// The summary line: `connections` accepted since the start, `open` now,
    /// over `up`.
    pub fn summary(&self, connections: u64, open: usize, up: Duration) -> String {
        format!(
            "summary: {:.1} s since start, {connections} connections ({open} open), \
             {} requests, {} bytes read and written, {} errors",
            up.as_secs_f64(),
            self.requests,
            self.bytes,
            self.errors
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{CMD_FLUSH, EIO};

    #[test]
    fn counts_requests_bytes_and_errors() {
        let mut t = Tally::default();
        t.note(CMD_READ, 4096, 0);
        t.note(CMD_WRITE, 512, 0);
        t.note(CMD_WRITE, 512, EIO);
        t.note(CMD_FLUSH, 0, 0);
        t.refused();
        assert_eq!(
            t,
            Tally {
                requests: 5,
                bytes: 4608,
                errors: 2
            }
        );
        assert_eq!(
            t.summary(3, 1, Duration::from_millis(2500)),
            "summary: 2.5 s since start, 3 connections (1 open), 5 requests, \
             4608 bytes read and written, 2 errors"
        );
    }
}
