//! Which names a client may give for a file of the directory: pure, and the
//! only door from a client's bytes to a path.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// The longest file name Linux has (NAME_MAX): anything longer names no file.
const NAME_MAX: usize = 255;

/// The file name `name` stands for, directly in the directory; or why it
/// cannot be one. A name is a single component: no `/` (so no path can
/// climb out, `../x`, nor reach into a subdirectory, `a/b`), not `.` or
/// `..` (the directory itself, its parent), no NUL (which no file name
/// holds, and which would cut a C string short), UTF-8 (the protocol's
/// names are), and no longer than a file name can be. The empty name (a
/// client's default export) names no file: nbdkit refuses it too.
pub fn file_name(name: &[u8]) -> Result<&OsStr, &'static str> {
    match name {
        [] => Err("the default export (an empty name) names no file"),
        b"." | b".." => Err("names the directory, not a file in it"),
        _ if name.contains(&b'/') => Err("a name with '/' is not directly in the directory"),
        _ if name.contains(&0) => Err("a name with a NUL byte names no file"),
        _ if name.len() > NAME_MAX => Err("longer than any file name"),
        _ if std::str::from_utf8(name).is_err() => Err("not UTF-8"),
        _ => Ok(OsStr::from_bytes(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_in_the_directory() {
        for ok in [
            "a",
            "disk.img",
            "..a",
            "a..",
            ".hidden",
            "é",
            "a b",
            "x".repeat(255).as_str(),
        ] {
            assert_eq!(file_name(ok.as_bytes()), Ok(OsStr::new(ok)), "{ok}");
        }
        for bad in [
            &b""[..],
            b".",
            b"..",
            b"../x",
            b"a/b",
            b"/",
            b"/etc/passwd",
            b"a/",
            b"./a",
            b"a\0",
            b"\0",
            b"\xff\xfe",
            &[b'x'; 256][..],
            &[b'x'; 4096][..],
        ] {
            assert!(file_name(bad).is_err(), "{bad:?}");
        }
    }
}
