//! What a filter may read at start-up (`Filter::prepare`): the data as the
//! filters below it and the backend serve it, read at once, before the event
//! loop runs (so it may wait on a disk). A read goes down through each
//! filter below as a client's would (its offset moved, its length cut, an
//! error injected…), but is never held: nothing waits at start-up.

use std::time::Instant;

use super::{Call, Filter, Verdict};
use crate::backend::Backend;
use crate::proto::CMD_READ;

pub struct StartupRead<'a> {
    /// The filters below the one reading, nearest it first.
    pub(super) filters: &'a mut [Box<dyn Filter>],
    pub(super) backend: &'a mut dyn Backend,
}

impl StartupRead<'_> {
    /// Fills `buf` from `offset` (in the coordinates of the filter reading).
    pub fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<(), String> {
        let now = Instant::now();
        let mut call = Call {
            conn: 0,
            kind: CMD_READ,
            flags: 0,
            offset,
            len: buf.len() as u64,
            started: now,
        };
        let mut depth = self.filters.len();
        let mut zeroes = false;
        for (i, f) in self.filters.iter_mut().enumerate() {
            match f.request(&mut call, now) {
                Verdict::Pass | Verdict::Hold(_) => {}
                Verdict::Zeroes => {
                    (depth, zeroes) = (i, true);
                    break;
                }
                Verdict::Fail(errno) => return Err(self.failed(&call, i, errno, offset)),
                Verdict::Disconnect(why) => return Err(format!("reading at {offset}: {why}")),
            }
        }
        let n = (call.len as usize).min(buf.len());
        let result = if zeroes {
            buf.fill(0);
            Ok(())
        } else {
            self.read_backend(&mut buf[..n], call.offset)
        };
        if result.is_ok() {
            buf[n..].fill(0); // past a cut: zeroes
        }
        let errno = if result.is_ok() { 0 } else { crate::proto::EIO };
        for f in self.filters[..depth].iter_mut().rev() {
            f.reply(&call, errno, now);
        }
        result.map_err(|e| format!("reading at {offset}: {e}"))
    }

    fn read_backend(&mut self, buf: &mut [u8], offset: u64) -> Result<(), String> {
        let size = self.backend.size();
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > size)
        {
            return Err(format!("beyond the end of the backend ({size} bytes)"));
        }
        self.backend
            .read_at_start(buf, offset)
            .map_err(|e| crate::error::plain(&e))
    }

    /// A filter below answered with an error: told to those above it.
    fn failed(&mut self, call: &Call, stage: usize, errno: u32, offset: u64) -> String {
        let now = Instant::now();
        for f in self.filters[..stage].iter_mut().rev() {
            f.reply(call, errno, now);
        }
        let name = self.filters[stage].name();
        format!("reading at {offset}: the {name} filter gave NBD error {errno}")
    }
}
