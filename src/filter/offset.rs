//! `--filter=offset`: a byte range of what is below, `[offset, offset +
//! range)`, served as the whole export. Requests move by `offset`; the range
//! must lie inside what is below (checked at start-up: use truncate to grow).

use std::time::Instant;

use super::params::Param;
use super::params::{Params, size};
use super::{Call, Filter, StartupRead, Verdict};
use crate::export::Export;
use crate::proto::CMD_FLUSH;

pub const PARAMS: &[Param] = &[
    Param::new("offset", "SIZE", "where the range starts (0)"),
    Param::new("range", "SIZE", "how long it is (to the end)"),
];

#[derive(Debug)]
struct Offset {
    offset: u64,
    /// As given; found at start-up (to the end of what is below) if not.
    range: Option<u64>,
}

pub fn build(params: &Params) -> Result<Box<dyn Filter>, String> {
    Ok(Box::new(Offset {
        offset: params.parsed("offset", size)?.unwrap_or(0),
        range: params.parsed("range", size)?,
    }))
}

/// The length of `[offset, offset + range)` inside `size` bytes (`range`
/// None: to the end), or why it does not fit.
pub fn fit(offset: u64, range: Option<u64>, size: u64) -> Result<u64, String> {
    match range {
        Some(r) if offset.checked_add(r).is_none_or(|end| end > size) => Err(format!(
            "offset+range ({offset}+{r}) is larger than the size ({size}) of what is below"
        )),
        Some(r) => Ok(r),
        None if offset > size => Err(format!(
            "offset ({offset}) is larger than the size ({size}) of what is below"
        )),
        None => Ok(size - offset),
    }
}

impl Filter for Offset {
    fn name(&self) -> &'static str {
        "offset"
    }

    fn prepare(&mut self, _: &mut StartupRead, export: &Export) -> Result<(), String> {
        self.range = Some(fit(self.offset, self.range, export.size)?);
        Ok(())
    }

    fn shape(&mut self, export: &mut Export) {
        export.size = self.range.unwrap_or(export.size); // found by `prepare`
    }

    fn request(&mut self, call: &mut Call, _: Instant) -> Verdict {
        if call.kind != CMD_FLUSH {
            // Inside the export (checked), so inside what is below (`fit`).
            call.offset += self.offset;
        }
        Verdict::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::*;

    #[test]
    fn the_range_must_fit() {
        assert_eq!(fit(0, None, 100), Ok(100));
        assert_eq!(fit(10, None, 100), Ok(90));
        assert_eq!(fit(100, None, 100), Ok(0));
        assert_eq!(fit(10, Some(90), 100), Ok(90));
        assert!(fit(101, None, 100).is_err());
        assert!(fit(11, Some(90), 100).unwrap_err().contains("11+90"));
        assert!(fit(u64::MAX, Some(2), 100).is_err(), "no overflow");
    }

    #[test]
    fn requests_move_by_the_offset() {
        let p = Params(vec![("offset".into(), "1K".into())]);
        let mut f = build(&p).expect("valid");
        let mut call = Call {
            conn: 1,
            kind: CMD_READ,
            flags: 0,
            offset: 512,
            len: 512,
            started: Instant::now(),
        };
        assert_eq!(f.request(&mut call, Instant::now()), Verdict::Pass);
        assert_eq!((call.offset, call.len), (1536, 512));
        let bad = Params(vec![("range".into(), "lots".into())]);
        assert!(build(&bad).err().is_some_and(|e| e.starts_with("range: ")));
    }
}
