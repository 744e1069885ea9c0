//! `http://` and `https://` URLs: what the curl backend connects to and what it
//! puts in its request line and `Host` header. Pure: no name resolution.
//!
//! Only what a disk image's URL needs: scheme, `user:password@`, a host name,
//! IPv4 or bracketed IPv6 literal, a port, and the path with its query kept
//! byte for byte (a presigned S3 URL's signature covers it). The fragment is
//! dropped, as a client never sends it.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// `user[:password]` from the URL, percent-decoded.
    pub user: Option<String>,
    pub password: Option<String>,
    /// A name or an address, without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
    /// The request target: path and query, at least "/".
    pub target: String,
}

/// Never shows the password (URLs end up in log lines).
impl fmt::Debug for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// The URL without its credentials, for messages.
impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.name(),
            self.authority(),
            self.target
        )
    }
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let bad = |why: &str| format!("'{}': {why}", redact(s));
        if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("spaces or control characters in a URL"));
        }
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("not a URL"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return Err(bad(&format!("the '{other}' scheme is not supported"))),
        };
        let rest = rest.split('#').next().unwrap_or(""); // split yields at least one piece
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        let target = match target {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = host_port(hostport, scheme).map_err(|w| bad(&w))?;
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (Some(decode(u)), Some(decode(p))),
                None => (Some(decode(u)), None),
            },
        };
        Ok(Url {
            scheme,
            user,
            password,
            host,
            port,
            target,
        })
    }

    /// `host[:port]` as the `Host` header says it: the port only when not
    /// the scheme's default, an IPv6 literal in brackets.
    pub fn authority(&self) -> String {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        match self.port == self.scheme.default_port() {
            true => host,
            false => format!("{host}:{}", self.port),
        }
    }

    /// Same scheme, host and port: a connection to one serves the other.
    pub fn same_origin(&self, other: &Url) -> bool {
        self.scheme == other.scheme
            && self.host.eq_ignore_ascii_case(&other.host)
            && self.port == other.port
    }

    /// Where a redirect's `Location` points, relative to this URL: an absolute
    /// URL, `//host/path`, `/path`, or a path relative to this one's directory.
    /// Credentials are kept only on the same origin.
    pub fn join(&self, location: &str) -> Result<Url, String> {
        let mut next = if location.contains("://") {
            Url::parse(location)?
        } else if let Some(rest) = location.strip_prefix("//") {
            Url::parse(&format!("{}://{rest}", self.scheme.name()))?
        } else {
            if location.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(format!("bad redirect location '{location}'"));
            }
            let location = location.split('#').next().unwrap_or("");
            let target = if location.starts_with('/') {
                location.to_string()
            } else if location.starts_with('?') {
                let path = self.target.split('?').next().unwrap_or("/");
                format!("{path}{location}")
            } else {
                let path = self.target.split('?').next().unwrap_or("/");
                let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
                format!("{dir}{location}")
            };
            Url {
                target,
                ..self.clone()
            }
        };
        if next.same_origin(self) && next.user.is_none() {
            next.user.clone_from(&self.user);
            next.password.clone_from(&self.password);
        }
        Ok(next)
    }
}

/// Splits `host[:port]` or `[v6][:port]`.
fn host_port(s: &str, scheme: Scheme) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("an unclosed '[' in the host")?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("'{h}' is not an IPv6 address"));
        }
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':').ok_or("junk after ']'")?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if !host.contains(':')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b))
    {
        return Err(format!("'{host}' is not a host name"));
    }
    let port = match port {
        None | Some("") => scheme.default_port(),
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("'{p}' is not a port"))?,
    };
    Ok((host.to_string(), port))
}

/// Percent-decoding of user names and passwords (invalid escapes stay as they are).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `s` with any `user:password@` replaced, for messages about a URL that
/// did not parse.
pub fn redact(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_parts() {
        let u =
            Url::parse("https://alice:s%3Acret@example.com:8443/a/disk.img?X-Sig=ab%2F&y=1#frag")
                .unwrap();
        assert_eq!(u.scheme, Scheme::Https);
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("s:cret"));
        assert_eq!(u.host, "example.com");
        assert_eq!(u.port, 8443);
        assert_eq!(u.target, "/a/disk.img?X-Sig=ab%2F&y=1");
        assert_eq!(u.authority(), "example.com:8443");
        assert_eq!(
            u.to_string(),
            "https://example.com:8443/a/disk.img?X-Sig=ab%2F&y=1"
        );
        assert!(!format!("{u:?}").contains("cret"));

        let u = Url::parse("http://[::1]:8080?q").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8080));
        assert_eq!(u.target, "/?q");
        assert_eq!(u.authority(), "[::1]:8080");
        let u = Url::parse("HTTP://127.0.0.1").unwrap();
        assert_eq!((u.port, u.target.as_str()), (80, "/"));
        assert_eq!(u.authority(), "127.0.0.1");
        assert_eq!(Url::parse("https://[::1]/x").unwrap().authority(), "[::1]");
        assert_eq!(Url::parse("http://h:/x").unwrap().port, 80);
        assert_eq!(Url::parse("http://u@h/x").unwrap().password, None);
    }

    #[test]
    fn refuses_what_is_not_an_http_url() {
        for bad in [
            "disk.img",
            "ftp://h/x",
            "http:///x",
            "http://h:0/",
            "http://h:99999/",
            "http://h:x/",
            "http://[::1/",
            "http://[nope]/",
            "http://[::1]x/",
            "http://h h/",
            "http://h/a b",
            "http://h\u{7f}/",
            "http://a,b/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        let e = Url::parse("ftp://bob:pw@h/x").unwrap_err();
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn joins_redirect_locations() {
        let base = Url::parse("http://u:p@h:81/dir/disk.img?a=1").unwrap();
        let j = |l: &str| base.join(l).unwrap();
        assert_eq!(j("/x?b").target, "/x?b");
        assert_eq!(j("other.img").target, "/dir/other.img");
        assert_eq!(j("?b=2").target, "/dir/disk.img?b=2");
        assert_eq!(j("sub/x#f").target, "/dir/sub/x");
        assert_eq!(j("/x").user.as_deref(), Some("u"));
        let far = j("https://cdn.example/blob?sig=1");
        assert_eq!(
            (far.scheme, far.host.as_str(), far.port),
            (Scheme::Https, "cdn.example", 443)
        );
        assert_eq!(far.user, None);
        let far = j("//cdn.example/blob");
        assert_eq!(
            (far.scheme, far.host.as_str()),
            (Scheme::Http, "cdn.example")
        );
        assert!(base.join("/a b").is_err());
        assert!(base.join("gopher://x/").is_err());
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact("http://a:b@h/x@y"), "http://***@h/x@y");
        assert_eq!(redact("http://h/x"), "http://h/x");
        assert_eq!(redact("nope"), "nope");
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(decode("a%20b%zz%4"), "a b%zz%4");
        assert_eq!(decode("%41%42"), "AB");
    }
}
