//! The one error type that ends the program: each variant is a message for the user.

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum Error {
    /// The command line is wrong: what to fix.
    Usage(String),
    /// Setting up failed: what we were doing, and why it failed.
    Setup(String, io::Error),
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
            Error::Setup(what, e) => write!(f, "{what}: {e}"),
        }
    }
}
