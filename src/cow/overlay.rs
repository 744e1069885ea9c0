//! The overlay's file: made in `$TMPDIR` (else /var/tmp, as nbdkit's cow
//! filter, a disk rather than the RAM of /tmp on many systems) without a
//! name where the filesystem allows (O_TMPFILE), else named and unlinked at
//! once, so that nothing is left behind after a crash, not even after kill -9.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the overlay goes.
pub fn dir() -> PathBuf {
    match std::env::var_os("TMPDIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("/var/tmp"),
    }
}

/// A new, empty file in `dir` that no name leads to.
pub fn create(dir: &Path) -> io::Result<File> {
    let unnamed = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match unnamed {
        Ok(f) => Ok(f),
        // The filesystem (or kernel) cannot make unnamed files.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
            named_then_unlinked(dir)
        }
        Err(e) => Err(e),
    }
}

fn named_then_unlinked(dir: &Path) -> io::Result<File> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("nbdlite-cow-{}-{n}", std::process::id()));
        let made = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match made {
            Ok(f) => {
                fs::remove_file(&path)?;
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    #[test]
    fn leaves_no_name_behind() {
        let d = std::env::temp_dir().join(format!("nbdlite-overlay-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        for mut f in [create(&d).unwrap(), named_then_unlinked(&d).unwrap()] {
            f.write_all(b"abc").unwrap();
            f.seek(SeekFrom::Start(0)).unwrap();
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            assert_eq!(s, "abc");
        }
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "nothing named");
        fs::remove_dir(&d).unwrap();
    }
}
