//! `--filter=partition`: one partition of a disk image (MBR, primary or
//! logical, or GPT) served as the whole export, as `qemu-nbd -P`. The table
//! is read once, at start-up, through the filters below (`StartupRead`); requests
//! move by the partition's start. A partition that is not there, or lies
//! outside the disk, stops the server from starting.

mod gpt;
mod mbr;

use std::time::Instant;

use super::params::Param;
use super::params::Params;
use super::{Call, Filter, StartupRead, Verdict};
use crate::export::Export;
use crate::proto::CMD_FLUSH;

pub const PARAMS: &[Param] = &[Param::new(
    "partition",
    "N",
    "the partition to serve, from 1 (required)",
)];

/// Partition tables count in 512-byte sectors.
pub const SECTOR: u64 = 512;

/// Where the table is read from.
pub trait Disk {
    /// Fills `buf` from `offset`.
    fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<(), String>;
}

impl Disk for StartupRead<'_> {
    fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<(), String> {
        StartupRead::read(self, buf, offset)
    }
}

/// Where a partition lies on its disk, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug)]
struct Partition {
    number: u32,
    /// Found at start-up.
    span: Span,
    /// "MBR" or "GPT", for the export's description.
    table: &'static str,
}

pub fn build(params: &Params) -> Result<Box<dyn Filter>, String> {
    let number = params
        .parsed("partition", |v| {
            v.parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("invalid partition number '{v}': counting from 1"))
        })?
        .ok_or("the partition parameter is required (partition=N, counting from 1)")?;
    Ok(Box::new(Partition {
        number,
        span: Span { offset: 0, len: 0 },
        table: "",
    }))
}

/// Finds partition `number` of the disk of `size` bytes; returns its span
/// and the kind of table it is in.
pub fn find(disk: &mut dyn Disk, size: u64, number: u32) -> Result<(Span, &'static str), String> {
    if size < 2 * SECTOR {
        return Err("the disk is too small to be a partitioned disk".into());
    }
    let mut lba01 = [0u8; 2 * SECTOR as usize];
    disk.read(&mut lba01, 0)?;
    let (lba0, lba1) = lba01.split_at(SECTOR as usize);
    let (span, table) = if size >= 2 * 34 * SECTOR && gpt::is_header(lba1) {
        (gpt::find(disk, size, lba1, number)?, "GPT")
    } else if mbr::is_mbr(lba0) {
        (mbr::find(disk, size, lba0, number)?, "MBR")
    } else {
        return Err("the disk does not contain an MBR or GPT partition table signature".into());
    };
    if span
        .offset
        .checked_add(span.len)
        .is_none_or(|end| end > size)
    {
        return Err(format!("{table} partition {number} is outside the disk"));
    }
    Ok((span, table))
}

impl Filter for Partition {
    fn name(&self) -> &'static str {
        "partition"
    }

    fn prepare(&mut self, below: &mut StartupRead, export: &Export) -> Result<(), String> {
        (self.span, self.table) = find(below, export.size, self.number)?;
        log::debug!(
            "partition {} ({}): offset {} length {}",
            self.number,
            self.table,
            self.span.offset,
            self.span.len
        );
        Ok(())
    }

    fn shape(&mut self, export: &mut Export) {
        export.size = self.span.len;
        if let Some(d) = &export.description {
            let about = format!("partition {} of {} disk: ", self.number, self.table);
            export.description = Some([about.as_bytes(), d].concat());
        }
    }

    fn request(&mut self, call: &mut Call, _: Instant) -> Verdict {
        if call.kind != CMD_FLUSH {
            // Inside the export (checked), so inside the disk (`find`).
            call.offset += self.span.offset;
        }
        Verdict::Pass
    }
}

/// A disk in memory, for the tables' unit tests.
#[cfg(test)]
pub mod testing {
    use super::*;

    pub struct Image(pub Vec<u8>);

    impl Disk for Image {
        fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<(), String> {
            let start = usize::try_from(offset).map_err(|e| e.to_string())?;
            let src = self
                .0
                .get(start..start + buf.len())
                .ok_or("beyond the end of the disk")?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    impl Image {
        pub fn put(&mut self, offset: u64, bytes: &[u8]) {
            let at = offset as usize;
            self.0[at..at + bytes.len()].copy_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Image;
    use super::*;

    #[test]
    fn the_number_is_required_and_counts_from_1() {
        let p = |v: &str| Params(vec![("partition".into(), v.into())]);
        assert!(build(&p("1")).is_ok());
        assert!(build(&p("0")).is_err());
        assert!(build(&p("-1")).is_err());
        assert!(build(&p("x")).is_err());
        assert!(
            build(&Params::default())
                .err()
                .is_some_and(|e| e.contains("required"))
        );
    }

    #[test]
    fn no_table_no_partition() {
        let mut blank = Image(vec![0; 1 << 20]);
        let e = find(&mut blank, 1 << 20, 1).unwrap_err();
        assert!(e.contains("MBR or GPT"), "{e}");
        let mut tiny = Image(vec![0; 1000]);
        assert!(find(&mut tiny, 1000, 1).unwrap_err().contains("too small"));
    }
}
