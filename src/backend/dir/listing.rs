//! What LIST shows of the directory: the names of its regular files and
//! block devices (following symbolic links), in the order the directory
//! gives them (readdir's, as nbdkit lists them: its own tests check that
//! order), read anew each time a client asks. On the loop's thread, so
//! bounded: at most `MAX_SCANNED` entries are read, at most `MAX_LISTED`
//! names listed.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use super::name::file_name;

/// Most names one LIST shows: the first ones the directory gives. Files past
/// them are served all the same, to a client that names them.
pub const MAX_LISTED: usize = 4096;
/// Most directory entries one LIST reads (a directory is read in pages of
/// a few hundred entries, each page one system call; a symbolic link costs
/// a stat more): a LIST of a huge directory lists what it found in these.
pub const MAX_SCANNED: usize = 16384;

/// The names a LIST shows now (see the module's doc).
pub fn names(dir: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut listed = Vec::new();
    for (scanned, entry) in fs::read_dir(dir)?.enumerate() {
        if scanned == MAX_SCANNED || listed.len() == MAX_LISTED {
            log::warn!(
                "{}: listing the first {} files (of {scanned} entries read): \
                 the others are served, not listed",
                dir.display(),
                listed.len()
            );
            break;
        }
        let entry = entry?;
        let name = entry.file_name().into_vec();
        // The type the directory gives (d_type), which needs no stat.
        if is_served(dir, &name, entry.file_type().ok()) {
            listed.push(name);
        }
    }
    Ok(listed)
}

/// Whether the entry `name` of `dir`, of type `kind` as the directory gives
/// it, is or leads to a regular file or a block device, under a name a
/// client can give. A symbolic link (or an entry of a filesystem that does
/// not say) is followed, at a stat.
fn is_served(dir: &Path, name: &[u8], kind: Option<fs::FileType>) -> bool {
    let Ok(name) = file_name(name) else {
        return false;
    };
    match kind {
        Some(t) if t.is_file() || t.is_block_device() => true,
        Some(t) if !t.is_symlink() => false,
        _ => fs::metadata(dir.join(name))
            .is_ok_and(|m| m.is_file() || m.file_type().is_block_device()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fresh directory, removed on drop.
    struct Tmp(std::path::PathBuf);

    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let p =
                std::env::temp_dir().join(format!("nbdlite-listing-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).expect("a scratch directory");
            Tmp(p)
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn files_and_links_to_files() {
        let t = Tmp::new("kinds");
        let d = &t.0;
        for f in ["b", "a", "C"] {
            fs::write(d.join(f), f).unwrap();
        }
        symlink("b", d.join("link-to-b")).unwrap();
        symlink("/dev/null", d.join("link-to-a-char-device")).unwrap();
        symlink(".", d.join("link-to-a-directory")).unwrap();
        symlink("nowhere", d.join("dangling")).unwrap();
        fs::create_dir(d.join("subdir")).unwrap();
        std::os::unix::net::UnixListener::bind(d.join("socket")).unwrap();
        let names = names(d).unwrap();
        let mut names: Vec<&str> = names
            .iter()
            .map(|n| std::str::from_utf8(n).unwrap())
            .collect();
        names.sort_unstable(); // listed in the directory's order
        assert_eq!(names, ["C", "a", "b", "link-to-b"]);
    }

    #[test]
    fn a_long_listing_is_cut() {
        let t = Tmp::new("long");
        for i in 0..MAX_LISTED + 3 {
            fs::write(t.0.join(format!("f{i:05}")), "").unwrap();
        }
        let mut names = names(&t.0).unwrap();
        assert_eq!(names.len(), MAX_LISTED);
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), MAX_LISTED, "each once");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        assert!(names(Path::new("/nonexistent/nbdlite")).is_err());
    }
}
