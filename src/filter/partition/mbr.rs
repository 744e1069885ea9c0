//! MBR partition tables: four primary entries in sector 0, and logical
//! partitions in a chain of EBRs inside the extended partition (numbered
//! from 5, as Linux numbers them).

use super::{Disk, SECTOR, Span};

/// Partition types that are extended partitions (as Linux's
/// `is_extended_partition`).
fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0f | 0x85)
}

/// Whether `sector` ends with the boot signature.
pub fn is_mbr(sector: &[u8]) -> bool {
    sector.len() >= 512 && sector[0x1fe] == 0x55 && sector[0x1ff] == 0xaa
}

/// Entry `i` (0..4) of a table sector.
#[derive(Debug, Clone, Copy)]
struct Entry {
    kind: u8,
    start: u32,
    sectors: u32,
}

fn entry(sector: &[u8], i: usize) -> Entry {
    let e = &sector[0x1be + 16 * i..0x1be + 16 * (i + 1)];
    let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    Entry {
        kind: e[4],
        start: le32(&e[8..12]),
        sectors: le32(&e[12..16]),
    }
}

/// Partition `number` of the disk of `size` bytes whose sector 0 is `mbr`.
pub fn find(disk: &mut dyn Disk, size: u64, mbr: &[u8], number: u32) -> Result<Span, String> {
    if number <= 4 {
        let e = entry(mbr, number as usize - 1);
        if e.sectors > 0 && e.kind != 0 && !is_extended(e.kind) {
            return Ok(Span {
                offset: u64::from(e.start) * SECTOR,
                len: u64::from(e.sectors) * SECTOR,
            });
        }
        return Err(format!("MBR partition {number} not found"));
    }
    let Some(ext) = (0..4)
        .map(|i| entry(mbr, i))
        .find(|e| e.sectors > 0 && is_extended(e.kind))
    else {
        return Err(format!(
            "MBR logical partition {number} selected, \
             but there is no extended partition in the partition table"
        ));
    };
    logical(disk, size, ext, number)
}

/// Follows the EBR chain inside the extended partition `ext` to logical
/// partition `number` (≥ 5). Each link must lead further into the disk, so
/// the walk ends.
fn logical(disk: &mut dyn Disk, size: u64, ext: Entry, number: u32) -> Result<Span, String> {
    let ext_end = (u64::from(ext.start) + u64::from(ext.sectors)) * SECTOR;
    let mut ebr = u64::from(ext.start) * SECTOR;
    let mut sector = [0u8; SECTOR as usize];
    for n in 5.. {
        if !ebr.is_multiple_of(SECTOR) || ebr < SECTOR || ebr >= size - SECTOR {
            return Err("invalid EBR chain: an EBR lies outside the disk".into());
        }
        disk.read(&mut sector, ebr)?;
        if n == number {
            // The first entry: the logical partition, from its EBR.
            let e = entry(&sector, 0);
            let offset = ebr + u64::from(e.start) * SECTOR;
            let len = u64::from(e.sectors) * SECTOR;
            if offset <= ebr || offset + len > ext_end {
                return Err(format!(
                    "logical partition {number} starts or ends outside its extended partition \
                     (offset {offset}, length {len})"
                ));
            }
            return Ok(Span { offset, len });
        }
        // The second entry: the next EBR, from the extended partition's start.
        let link = entry(&sector, 1);
        if link.start == 0 && link.sectors == 0 {
            break;
        }
        let next = (u64::from(ext.start) + u64::from(link.start)) * SECTOR;
        if next <= ebr {
            return Err(format!(
                "invalid EBR chain: the EBR after {ebr} is at {next}"
            ));
        }
        ebr = next;
    }
    Err(format!("MBR partition {number} not found"))
}

#[cfg(test)]
mod tests {
    use super::super::testing::Image;
    use super::*;

    /// A table entry's 16 bytes.
    fn raw(kind: u8, start: u32, sectors: u32) -> [u8; 16] {
        let mut e = [0u8; 16];
        e[4] = kind;
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&sectors.to_le_bytes());
        e
    }

    /// A table sector at `at` with `entries`.
    fn table(img: &mut Image, at: u64, entries: &[[u8; 16]]) {
        for (i, e) in entries.iter().enumerate() {
            img.put(at + 0x1be + 16 * i as u64, e);
        }
        img.put(at + 0x1fe, &[0x55, 0xaa]);
    }

    fn sector0(img: &Image) -> Vec<u8> {
        img.0[..512].to_vec()
    }

    #[test]
    fn primary_partitions() {
        let size = 1u64 << 20;
        let mut img = Image(vec![0; size as usize]);
        table(
            &mut img,
            0,
            &[raw(0x83, 2048, 100), [0; 16], raw(0x83, 4, 8)],
        );
        let mbr = sector0(&img);
        assert!(is_mbr(&mbr));
        let span = find(&mut img, size, &mbr, 1).unwrap();
        assert_eq!(
            span,
            Span {
                offset: 2048 * 512,
                len: 100 * 512
            }
        );
        assert_eq!(find(&mut img, size, &mbr, 3).unwrap().offset, 4 * 512);
        let e = find(&mut img, size, &mbr, 2).unwrap_err();
        assert_eq!(e, "MBR partition 2 not found");
        assert!(
            find(&mut img, size, &mbr, 5)
                .unwrap_err()
                .contains("no extended")
        );
    }

    #[test]
    fn logical_partitions_follow_the_chain() {
        let size = 1u64 << 20;
        let mut img = Image(vec![0; size as usize]);
        // Extended partition at sector 100, 1000 sectors; EBRs at 100 and 300.
        table(&mut img, 0, &[raw(0x83, 1, 50), raw(0x05, 100, 1000)]);
        table(
            &mut img,
            100 * 512,
            &[raw(0x83, 10, 50), raw(0x05, 200, 100)],
        );
        table(&mut img, 300 * 512, &[raw(0x83, 2, 20)]);
        let mbr = sector0(&img);
        let five = find(&mut img, size, &mbr, 5).unwrap();
        assert_eq!(
            five,
            Span {
                offset: 110 * 512,
                len: 50 * 512
            }
        );
        let six = find(&mut img, size, &mbr, 6).unwrap();
        assert_eq!(
            six,
            Span {
                offset: 302 * 512,
                len: 20 * 512
            }
        );
        assert_eq!(
            find(&mut img, size, &mbr, 7).unwrap_err(),
            "MBR partition 7 not found"
        );
        assert_eq!(
            find(&mut img, size, &mbr, 2).unwrap_err(),
            "MBR partition 2 not found"
        );
        // A link that leads back is refused, not followed for ever.
        table(&mut img, 300 * 512, &[raw(0x83, 2, 20), raw(0x05, 0, 100)]);
        assert!(
            find(&mut img, size, &mbr, 9)
                .unwrap_err()
                .contains("EBR chain")
        );
    }
}
