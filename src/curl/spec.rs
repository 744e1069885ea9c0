//! What the curl backend is asked to serve, and how: the URL and
//! nbdkit-curl-plugin's parameters, once the command line has checked them
//! (`cli::curl`). Secrets stay as given until start-up reads them.

use std::path::PathBuf;

use crate::http::{HeaderArg, Scheme, Url};

/// A value nbdkit lets come from elsewhere: `+FILE`, `-` (a line from the
/// terminal) or `-FD` (an inherited descriptor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    Value(String),
    File(PathBuf),
    Stdin,
    Fd(i32),
}

impl Secret {
    /// `VALUE`, `+FILE`, `-` or `-FD`, as nbdkit spells them.
    pub fn parse(v: &str) -> Secret {
        if let Some(f) = v.strip_prefix('+') {
            return Secret::File(PathBuf::from(f));
        }
        match v.strip_prefix('-') {
            Some("") => Secret::Stdin,
            Some(fd) if fd.bytes().all(|b| b.is_ascii_digit()) => match fd.parse() {
                Ok(n) => Secret::Fd(n),
                Err(_) => Secret::Value(v.to_string()),
            },
            _ => Secret::Value(v.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurlSpec {
    pub url: Url,
    pub headers: Vec<HeaderArg>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub cookie: Option<Secret>,
    pub user_agent: Option<String>,
    /// CA bundle (PEM); `Some("")`: no default store.
    pub cainfo: Option<PathBuf>,
    pub capath: Option<PathBuf>,
    pub sslverify: bool,
    /// Seconds a request may take (None: the default).
    pub timeout: Option<u32>,
    pub followlocation: bool,
    pub connections: usize,
    pub unix_socket_path: Option<PathBuf>,
    pub tcp_nodelay: bool,
    /// `protocols=`: the schemes the URL (and redirects) may use.
    pub protocols: Option<Vec<Scheme>>,
}
