//! `--run CMD`: captive mode. The command runs under `sh -c` with the NBD URI in
//! its environment; when it exits, so do we, with its exit status.

use std::path::Path;
use std::process::{Child, Command};

use crate::error::Error;
use crate::tls::TlsMode;

/// Where clients reach us, in the forms nbdkit exports to `--run`.
pub struct Endpoint<'a> {
    pub unix: Option<&'a Path>,
    pub port: Option<u16>,
    pub ipaddr: Option<&'a str>,
    pub export_name: &'a str,
    /// `--tls=require` makes the URI an `nbds` one.
    pub tls: TlsMode,
}

/// The NBD URI (doc/uri.md of the NBD project); a Unix socket is preferred.
/// With `--tls=require` it is an `nbds` URI: a client must use TLS.
pub fn uri(ep: &Endpoint) -> String {
    let name = percent_encode(ep.export_name);
    let scheme = if ep.tls == TlsMode::Require {
        "nbds"
    } else {
        "nbd"
    };
    match (ep.unix, ep.port) {
        (Some(path), _) => format!(
            "{scheme}+unix:///{name}?socket={}",
            percent_encode(&path.to_string_lossy())
        ),
        (None, Some(port)) => {
            let host = match ep.ipaddr {
                Some(a) if a.contains(':') => format!("[{a}]"),
                Some(a) => a.to_string(),
                None => "localhost".to_string(),
            };
            let slash = if name.is_empty() { "" } else { "/" };
            format!("{scheme}://{host}:{port}{slash}{name}")
        }
        (None, None) => String::new(),
    }
}

/// Escapes everything but unreserved characters and '/'.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Starts the command with `$uri`, `$nbd`, `$port`, `$unixsocket`, `$exportname`
/// and `$tls` (0, 1, 2 for `--tls=off|on|require`) in its environment, so the
/// shell expands them where CMD says `$name`. `$nbd` equals `$uri`, as in
/// nbdkit ≥ 1.24: qemu takes URIs.
pub fn spawn(cmd: &str, ep: &Endpoint, nofile: Option<u64>) -> Result<Child, Error> {
    let uri = uri(ep);
    let mut c = Command::new("/bin/sh");
    if let Some(soft) = nofile {
        crate::sys::nofile_limit_on_exec(&mut c, soft);
    }
    // Not left running on its own if we are killed (we wait for it otherwise).
    crate::sys::end_with_parent_on_exec(&mut c);
    c.arg("-c")
        .arg(cmd)
        .env("uri", &uri)
        .env("nbd", &uri)
        .env("port", ep.port.map(|p| p.to_string()).unwrap_or_default())
        .env(
            "unixsocket",
            ep.unix.map(|p| p.as_os_str()).unwrap_or_default(),
        )
        .env("exportname", ep.export_name)
        .env("tls", ep.tls.number().to_string());
    c.spawn().map_err(Error::setup("--run: /bin/sh"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let ep = |unix: Option<&'static str>, port, ip, name| Endpoint {
            unix: unix.map(Path::new),
            port,
            ipaddr: ip,
            export_name: name,
            tls: TlsMode::Off,
        };
        assert_eq!(
            uri(&ep(Some("/tmp/s"), None, None, "")),
            "nbd+unix:///?socket=/tmp/s"
        );
        assert_eq!(
            uri(&ep(Some("/tmp/a b"), Some(1), None, "d")),
            "nbd+unix:///d?socket=/tmp/a%20b"
        );
        assert_eq!(
            uri(&ep(None, Some(10809), None, "")),
            "nbd://localhost:10809"
        );
        assert_eq!(
            uri(&ep(None, Some(5), Some("::1"), "x y")),
            "nbd://[::1]:5/x%20y"
        );
        assert_eq!(
            uri(&ep(None, Some(5), Some("127.0.0.1"), "")),
            "nbd://127.0.0.1:5"
        );
        let required = |e: Endpoint<'static>| {
            uri(&Endpoint {
                tls: TlsMode::Require,
                ..e
            })
        };
        assert_eq!(
            required(ep(Some("/tmp/s"), None, None, "")),
            "nbds+unix:///?socket=/tmp/s"
        );
        assert_eq!(
            required(ep(None, Some(5), Some("127.0.0.1"), "")),
            "nbds://127.0.0.1:5"
        );
    }
}
