//! The one error type that ends the program: each variant is a message for the user.

use std::fmt;
use std::io;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// The command line is wrong: what to fix.
    Usage(String),
    /// Setting up failed: what we were doing, and why it failed.
    Setup(String, io::Error),
    /// A file named by the command line (or found where it says) is unusable
    /// for a reason that is no system error: which file, and what is wrong.
    BadFile(PathBuf, String),
}

impl Error {
    pub fn usage(msg: impl Into<String>) -> Error {
        Error::Usage(msg.into())
    }

    pub fn setup(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        move |e| Error::Setup(what.into(), e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Error::Usage(msg) => f.write_str(msg),
            Error::Setup(what, e) => write!(f, "{what}: {}", plain(e)),
            Error::BadFile(path, why) => write!(f, "{}: {why}", path.display()),
        }
    }
}

/// An I/O error as a user reads it: "No such file or directory", without Rust's
/// " (os error 2)" suffix.
pub fn plain(e: &io::Error) -> String {
    let text = e.to_string();
    match (e.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(i)) => text[..i].to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_like_c_tools() {
        let e = Error::Setup(
            "disk.img".into(),
            io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(e.to_string(), "disk.img: No such file or directory");
        let e = Error::Setup("x".into(), io::Error::other("odd"));
        assert_eq!(e.to_string(), "x: odd");
    }
}
