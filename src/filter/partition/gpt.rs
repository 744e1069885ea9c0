//! GPT partition tables: the header in sector 1, the entries where it says
//! (sector 2 on every disk we know of). Partition N is entry N-1, if its
//! type is not all zeroes (unused).

use super::{Disk, SECTOR, Span};

const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The smallest entry the specification allows, and all we read of one.
const ENTRY: usize = 128;

pub fn is_header(sector: &[u8]) -> bool {
    sector.starts_with(SIGNATURE)
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Partition `number` of the disk of `size` bytes whose GPT header is `header`.
pub fn find(disk: &mut dyn Disk, size: u64, header: &[u8], number: u32) -> Result<Span, String> {
    let entries_lba = le64(&header[72..80]);
    let count = le32(&header[80..84]);
    let entry_size = le32(&header[84..88]);
    if number > count {
        return Err(format!(
            "GPT partition {number} is out of range (the table has {count})"
        ));
    }
    if (entry_size as usize) < ENTRY {
        return Err("GPT partition entries are smaller than 128 bytes".into());
    }
    // The table (and its backup) must fit on the disk, else the header is
    // bogus. Two u32s multiply within a u64, but twice that may not: a
    // table so large that the sum overflows cannot fit either.
    let table = u64::from(count) * u64::from(entry_size);
    let at = entries_lba.saturating_mul(SECTOR);
    let needs = table
        .checked_mul(2)
        .and_then(|both| both.checked_add(3 * SECTOR));
    if needs.is_none_or(|n| n > size) || at.saturating_add(table) > size {
        return Err("the GPT partition table is too large for this disk".into());
    }
    let mut e = [0u8; ENTRY];
    disk.read(&mut e, at + u64::from(number - 1) * u64::from(entry_size))?;
    if e[..16].iter().all(|&b| b == 0) {
        return Err(format!("GPT partition {number} not found"));
    }
    let (first, last) = (le64(&e[32..40]), le64(&e[40..48]));
    let span = last
        .checked_sub(first)
        .and_then(|n| n.checked_add(1))
        .and_then(|n| n.checked_mul(SECTOR))
        .zip(first.checked_mul(SECTOR));
    match span {
        Some((len, offset)) => Ok(Span { offset, len }),
        None => Err(format!("GPT partition {number} is outside the disk")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Image;
    use super::*;

    /// A GPT with 128 entries of 128 bytes at sector 2, and `parts`
    /// (first, last LBA) in entries 0, 1, …; an entry (0, 0) is unused.
    fn disk(size: u64, parts: &[(u64, u64)]) -> Image {
        let mut img = Image(vec![0; size as usize]);
        let mut h = [0u8; 92];
        h[..8].copy_from_slice(SIGNATURE);
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        img.put(512, &h);
        for (i, &(first, last)) in parts.iter().enumerate() {
            if (first, last) == (0, 0) {
                continue;
            }
            let mut e = [0u8; 128];
            e[..16].copy_from_slice(&[0xaf; 16]);
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            img.put(1024 + 128 * i as u64, &e);
        }
        img
    }

    #[test]
    fn entries_by_number() {
        let size = 1u64 << 20;
        let mut img = disk(size, &[(34, 99), (0, 0), (100, 100)]);
        let header = img.0[512..1024].to_vec();
        assert!(is_header(&header));
        let one = find(&mut img, size, &header, 1).unwrap();
        assert_eq!(
            one,
            Span {
                offset: 34 * 512,
                len: 66 * 512
            }
        );
        assert_eq!(find(&mut img, size, &header, 3).unwrap().len, 512);
        assert_eq!(
            find(&mut img, size, &header, 2).unwrap_err(),
            "GPT partition 2 not found"
        );
        assert!(
            find(&mut img, size, &header, 129)
                .unwrap_err()
                .contains("out of range")
        );
    }

    #[test]
    fn bogus_entries_and_headers() {
        let size = 1u64 << 20;
        let mut img = disk(size, &[(100, 99)]);
        let header = img.0[512..1024].to_vec();
        assert!(
            find(&mut img, size, &header, 1)
                .unwrap_err()
                .contains("outside")
        );
        let mut small = disk(64 * 1024, &[]);
        let mut header = small.0[512..1024].to_vec();
        header[80..84].copy_from_slice(&1000u32.to_le_bytes());
        assert!(
            find(&mut small, 64 * 1024, &header, 1)
                .unwrap_err()
                .contains("too large")
        );
        // Twice the largest table overflows a u64: refused, not a panic.
        header[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
        header[84..88].copy_from_slice(&u32::MAX.to_le_bytes());
        let size = u64::MAX;
        assert!(
            find(&mut small, size, &header, 1)
                .unwrap_err()
                .contains("too large")
        );
    }
}
