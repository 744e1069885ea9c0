//! NBD URIs (the subset of the NBD URI spec that a benchmark needs): where to
//! connect and which export to ask for.

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
}

/// Parses `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH`.
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
    let socket = query.and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("socket="))
            .map(|s| percent_decode(s).map(PathBuf::from))
    });
    let address = match scheme {
        "nbd" => {
            if socket.is_some() {
                return Err(bad("socket= belongs in nbd+unix:// URIs"));
            }
            let (host, port) = split_host_port(authority).map_err(|e| bad(&e))?;
            Address::Tcp(host, port)
        }
        "nbd+unix" => {
            if !authority.is_empty() {
                return Err(bad(
                    "nbd+unix:// URIs have no host (nbd+unix:///EXPORT?socket=PATH)",
                ));
            }
            match socket {
                Some(Some(p)) if !p.as_os_str().is_empty() => Address::Unix(p),
                Some(_) => return Err(bad("bad socket= path")),
                None => return Err(bad("nbd+unix:// needs ?socket=PATH")),
            }
        }
        "nbds" | "nbds+unix" => return Err(bad("TLS is not supported")),
        _ => return Err(bad("unknown scheme (expecting nbd:// or nbd+unix://)")),
    };
    Ok(Target { address, export })
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
        }
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
            "nbds://h/",
        ] {
            assert!(parse(u).is_err(), "{u}");
        }
    }
}
