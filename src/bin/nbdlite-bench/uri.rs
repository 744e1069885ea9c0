//! NBD URIs (the subset of the NBD URI spec that a benchmark needs): where to
//! connect, which export to ask for, and whether TLS must be used, with the
//! query parameters libnbd gives TLS (`tls-hostname=`, `tls-certificates=`).

use std::path::PathBuf;

/// The port NBD servers listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 10809;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String, u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub address: Address,
    pub export: String,
    /// `nbds://` and `nbds+unix://`: TLS, which must succeed (the URI spec's
    /// rule: never a fallback to plaintext).
    pub tls: Option<TlsTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsTarget {
    /// The name the server's certificate must carry: `tls-hostname=`, else
    /// the URI's host, else `localhost` (a Unix socket has no host), as libnbd.
    pub hostname: String,
    /// The client's certificate directory (`tls-certificates=`, or the
    /// command line's `--tls-certificates`); `None`: libnbd's default places.
    pub certificates: Option<PathBuf>,
}

/// Parses `nbd[s]://HOST[:PORT]/EXPORT` or `nbd[s]+unix:///EXPORT?socket=PATH`.
pub fn parse(uri: &str) -> Result<Target, String> {
    let bad = |why: &str| format!("{uri}: {why}");
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| bad("not a URI (nbd://HOST/EXPORT or nbd+unix:///EXPORT?socket=PATH)"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let export = percent_decode(path).ok_or_else(|| bad("bad %-escape in the export name"))?;
    let param = |key: &str| {
        param(query, key)
            .map(|v| v.ok_or_else(|| bad(&format!("bad %-escape in {key}="))))
            .transpose()
    };
    let socket = param("socket")?;
    let hostname = param("tls-hostname")?;
    let certificates = param("tls-certificates")?;
    let (unix, tls) = match scheme {
        "nbd" => (false, false),
        "nbds" => (false, true),
        "nbd+unix" => (true, false),
        "nbds+unix" => (true, true),
        _ => {
            return Err(bad(
                "unknown scheme (expecting nbd://, nbds://, nbd+unix:// or nbds+unix://)",
            ));
        }
    };
    let address = if unix {
        if !authority.is_empty() {
            return Err(bad(&format!(
                "{scheme}:// URIs have no host ({scheme}:///EXPORT?socket=PATH)"
            )));
        }
        match socket {
            Some(p) if !p.is_empty() => Address::Unix(PathBuf::from(p)),
            Some(_) => return Err(bad("bad socket= path")),
            None => return Err(bad(&format!("{scheme}:// needs ?socket=PATH"))),
        }
    } else {
        if socket.is_some() {
            return Err(bad("socket= belongs in nbd+unix:// URIs"));
        }
        let (host, port) = split_host_port(authority).map_err(|e| bad(&e))?;
        Address::Tcp(host, port)
    };
    for (key, v) in [
        ("tls-hostname", &hostname),
        ("tls-certificates", &certificates),
    ] {
        if v.as_deref() == Some("") {
            return Err(bad(&format!("empty {key}=")));
        }
    }
    if !tls && (hostname.is_some() || certificates.is_some()) {
        return Err(bad(
            "tls-hostname= and tls-certificates= belong in nbds:// and nbds+unix:// URIs",
        ));
    }
    let tls = tls.then(|| TlsTarget {
        hostname: match (hostname, &address) {
            (Some(h), _) => h,
            (None, Address::Tcp(host, _)) => host.clone(),
            (None, Address::Unix(_)) => "localhost".into(),
        },
        certificates: certificates.map(PathBuf::from),
    });
    Ok(Target {
        address,
        export,
        tls,
    })
}

/// The first `key=value` of `query` for `key`, %-decoded (`Some(None)`: a
/// bad escape).
fn param(query: Option<&str>, key: &str) -> Option<Option<String>> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(authority: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("unclosed '[' in the host")?;
        match after {
            "" => (h, None),
            _ => (
                h,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or("junk after ']' in the host")?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => parse_port(p)?,
    };
    Ok((host.to_string(), port))
}

/// A TCP port number, 1..=65535.
pub fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("bad port '{p}'")),
    }
}

/// Undoes `%XX` escapes; `None` if one is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(h: &str, p: u16, e: &str) -> Target {
        Target {
            address: Address::Tcp(h.into(), p),
            export: e.into(),
            tls: None,
        }
    }

    fn tls(hostname: &str, certificates: Option<&str>) -> Option<TlsTarget> {
        Some(TlsTarget {
            hostname: hostname.into(),
            certificates: certificates.map(PathBuf::from),
        })
    }

    #[test]
    fn tcp_uris() {
        assert_eq!(
            parse("nbd://localhost").unwrap(),
            tcp("localhost", 10809, "")
        );
        assert_eq!(parse("nbd://h:99/disk").unwrap(), tcp("h", 99, "disk"));
        assert_eq!(parse("nbd://[::1]:7/a%20b").unwrap(), tcp("::1", 7, "a b"));
        assert_eq!(parse("nbd://[::1]/").unwrap(), tcp("::1", 10809, ""));
    }

    #[test]
    fn unix_uris() {
        let t = parse("nbd+unix:///exp?socket=/tmp/s%2c").unwrap();
        assert_eq!(t.address, Address::Unix("/tmp/s,".into()));
        assert_eq!(t.export, "exp");
        let t = parse("nbd+unix:///?socket=/tmp/x&foo=1").unwrap();
        assert_eq!(t.address, Address::Unix("/tmp/x".into()));
        assert_eq!(t.export, "");
    }

    #[test]
    fn tls_uris() {
        let t = parse("nbds://h:99/disk").unwrap();
        assert_eq!(
            (t.address, t.export),
            (Address::Tcp("h".into(), 99), "disk".into())
        );
        assert_eq!(t.tls, tls("h", None));
        assert_eq!(parse("nbds://[::1]").unwrap().tls, tls("::1", None));
        let t = parse("nbds+unix:///e?socket=/s&tls-certificates=/c%20d").unwrap();
        assert_eq!(t.address, Address::Unix("/s".into()));
        assert_eq!(t.tls, tls("localhost", Some("/c d")));
        let t = parse("nbds://10.0.0.1/?tls-hostname=nbd.example.com").unwrap();
        assert_eq!(t.tls, tls("nbd.example.com", None));
        assert_eq!(parse("nbd://h/").unwrap().tls, None);
    }

    #[test]
    fn refusals() {
        for u in [
            "",
            "localhost",
            "http://x/",
            "nbd://",
            "nbd://h:0/",
            "nbd://h:99999/",
            "nbd://h:x/",
            "nbd://[::1/",
            "nbd+unix:///x",
            "nbd+unix://host/x?socket=/s",
            "nbd+unix:///?socket=",
            "nbd:///%zz?socket=/s",
            "nbd://h/?socket=/s",
            "nbds://",
            "nbds+unix:///x",
            "nbds+unix://h/?socket=/s",
            "nbds://h/?socket=/s",
            "nbd://h/?tls-certificates=/c",
            "nbd+unix:///?socket=/s&tls-hostname=h",
            "nbds://h/?tls-hostname=",
            "nbds://h/?tls-certificates=",
            "nbds://h/?tls-certificates=%g0",
            "nbdx://h/",
        ] {
            assert!(parse(u).is_err(), "{u}");
        }
    }
}
