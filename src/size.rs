//! Sizes as nbdkit writes them: a number of bytes with an optional suffix
//! (`s` for 512-byte sectors, `K` … `E` for powers of 1024), for the command
//! line and the filters' parameters alike; and sizes as a person reads them.

/// What a SIZE may be, for messages.
pub const SIZE_FORMS: &str = "SIZE is a number of bytes with an optional suffix: \
     s for 512-byte sectors, or K, M, G, T, P, E for powers of 1024";

/// Parses sizes like `512`, `64K`, `1M`, `10G`, `2s` (sectors). At most 2^63-1 bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, suffix) = s.split_at(digits);
    let shift = match suffix {
        "" | "b" | "B" => 0,
        "s" | "S" => 9,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        "e" | "E" => 60,
        _ => return Err(unparsed(s, num, suffix)),
    };
    let n: u64 = num.parse().map_err(|_| unparsed(s, num, suffix))?;
    n.checked_mul(1u64 << shift)
        .filter(|&v| v <= i64::MAX as u64)
        .ok_or_else(|| format!("size '{s}' is too large (the limit is 2^63-1 bytes)"))
}

/// Why `s` is no size: with the spelling we take when the suffix is a unit
/// written another way (`1GB`, `1GiB`: `1G`).
fn unparsed(s: &str, num: &str, suffix: &str) -> String {
    match unit_letter(suffix) {
        Some(l) if !num.is_empty() => {
            format!("could not parse size '{s}': write {num}{l} for {num} {l}iB ({SIZE_FORMS})")
        }
        _ => format!("could not parse size '{s}' ({SIZE_FORMS})"),
    }
}

/// A size as a person reads it: `64 MiB`, or bytes when it is no round
/// number of a unit.
pub fn show_size(n: u64) -> String {
    for (shift, unit) in [
        (60, "EiB"),
        (50, "PiB"),
        (40, "TiB"),
        (30, "GiB"),
        (20, "MiB"),
        (10, "KiB"),
    ] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// The suffix of ours a unit such as `GiB`, `GB`, `gb` or `G` stands for.
pub fn unit_letter(unit: &str) -> Option<&'static str> {
    let lower = unit.to_ascii_lowercase();
    let (letter, rest) = lower.split_at(lower.len().min(1));
    if !matches!(rest, "" | "b" | "i" | "ib") {
        return None;
    }
    Some(match letter {
        "k" => "K",
        "m" => "M",
        "g" => "G",
        "t" => "T",
        "p" => "P",
        "e" => "E",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("3s"), Ok(1536));
        assert_eq!(parse_size("7E"), Ok(7 << 60));
        assert_eq!(parse_size("9223372036854775807"), Ok(i64::MAX as u64));
        for bad in [
            "",
            "G",
            "1X",
            "8E",
            "-1",
            "1.5G",
            "9223372036854775808",
            "99999999999999999999",
            " 1",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn size_messages_list_the_suffixes() {
        for (bad, hint) in [
            ("1GB", "write 1G for 1 GiB"),
            ("1GiB", "write 1G for 1 GiB"),
            ("64mb", "write 64M for 64 MiB"),
            ("2kib", "write 2K for 2 KiB"),
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains(hint), "{bad}: {e}");
            assert!(e.contains("K, M, G, T, P, E"), "{bad}: {e}");
        }
        let e = parse_size("lots").unwrap_err();
        assert_eq!(e, format!("could not parse size 'lots' ({SIZE_FORMS})"));
        assert_eq!(show_size(64 << 20), "64 MiB");
        assert_eq!(show_size(3 << 30), "3 GiB");
        assert_eq!(show_size(1000), "1000 bytes");
    }
}
