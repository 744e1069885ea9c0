//! The one request the curl backend sends, `GET` with a `Range`, encoded into
//! a buffer. Everything but the range is the same for every request, so it is
//! built once (`Template`) and each request appends the `Range` line to it.

use super::url::Url;

/// A `header=` parameter, as nbdkit's curl plugin (libcurl) reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderArg {
    /// `Name: value` (or `Name;` for a header with an empty value): sent,
    /// replacing any header of that name we would send ourselves.
    Set(String, String),
    /// `Name:` with nothing after it: a header we would send is left out.
    Remove(String),
}

impl HeaderArg {
    /// Parses `Name: value`, `Name;` or `Name:`.
    pub fn parse(s: &str) -> Result<HeaderArg, String> {
        if s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!("header '{s}': line breaks are not allowed"));
        }
        let (name, value, empty) = match s.split_once(':') {
            Some((n, v)) => (n, v.trim(), false),
            None => match s.strip_suffix(';') {
                Some(n) => (n, "", true),
                None => return Err(format!("header '{s}': expecting 'Name: value'")),
            },
        };
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(format!("header '{s}': '{name}' is not a header name"));
        }
        Ok(match (value.is_empty(), empty) {
            (true, false) => HeaderArg::Remove(name.to_string()),
            _ => HeaderArg::Set(name.to_string(), value.to_string()),
        })
    }

    fn name(&self) -> &str {
        match self {
            HeaderArg::Set(n, _) | HeaderArg::Remove(n) => n,
        }
    }
}

/// What every request carries besides its range.
#[derive(Debug, Default, Clone)]
pub struct Extras<'a> {
    /// `user=`/`password=` (or the URL's): HTTP Basic authentication.
    pub basic: Option<(&'a str, &'a str)>,
    pub cookie: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub headers: &'a [HeaderArg],
}

/// A request head up to its `Range` line.
#[derive(Debug, Clone)]
pub struct Template {
    prefix: Vec<u8>,
}

impl Template {
    pub fn new(url: &Url, extras: &Extras<'_>) -> Template {
        let mut ours: Vec<(&str, String)> = vec![("Host", url.authority())];
        if let Some((user, password)) = extras.basic {
            let token = base64(format!("{user}:{password}").as_bytes());
            ours.push(("Authorization", format!("Basic {token}")));
        }
        if let Some(c) = extras.cookie {
            ours.push(("Cookie", c.to_string()));
        }
        if let Some(a) = extras.user_agent {
            ours.push(("User-Agent", a.to_string()));
        }
        ours.push(("Accept", "*/*".to_string()));
        let mut prefix = format!("GET {} HTTP/1.1\r\n", url.target).into_bytes();
        let named = |n: &str| {
            extras
                .headers
                .iter()
                .any(|h| h.name().eq_ignore_ascii_case(n))
        };
        for (name, value) in &ours {
            if !named(name) {
                prefix.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
        }
        for h in extras.headers {
            if let HeaderArg::Set(name, value) = h {
                prefix.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
        }
        Template { prefix }
    }

    /// Appends a GET of `[start, start + len)` (`len` ≥ 1) to `out`.
    pub fn get(&self, start: u64, len: u64, out: &mut Vec<u8>) {
        use std::io::Write;
        out.extend_from_slice(&self.prefix);
        let last = start + len - 1;
        // Writing to a Vec cannot fail.
        let _ = write!(out, "Range: bytes={start}-{last}\r\n\r\n");
    }
}

/// Standard base64 with padding (RFC 4648), for Basic credentials.
pub fn base64(input: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn header_arguments() {
        let p = |s| HeaderArg::parse(s);
        assert_eq!(
            p("X-A: 1 2 "),
            Ok(HeaderArg::Set("X-A".into(), "1 2".into()))
        );
        assert_eq!(
            p("X-Empty;"),
            Ok(HeaderArg::Set("X-Empty".into(), "".into()))
        );
        assert_eq!(p("Accept:"), Ok(HeaderArg::Remove("Accept".into())));
        assert!(p("no colon").is_err());
        assert!(p(": v").is_err());
        assert!(p("X A: v").is_err());
        assert!(p("X-A: v\r\nEvil: 1").is_err());
    }

    #[test]
    fn request_head() {
        let url = Url::parse("http://[::1]:8080/d.img?sig=a%2Fb").unwrap();
        let headers = [
            HeaderArg::parse("Accept:").unwrap(),
            HeaderArg::parse("X-Amz-Security-Token: t").unwrap(),
        ];
        let extras = Extras {
            basic: Some(("Aladdin", "open sesame")),
            cookie: Some("a=1; b=2"),
            user_agent: None,
            headers: &headers,
        };
        let t = Template::new(&url, &extras);
        let mut out = Vec::new();
        t.get(4096, 512, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /d.img?sig=a%2Fb HTTP/1.1\r\nHost: [::1]:8080\r\n\
             Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\nCookie: a=1; b=2\r\n\
             X-Amz-Security-Token: t\r\nRange: bytes=4096-4607\r\n\r\n"
        );
        let mut out = Vec::new();
        let host = [HeaderArg::parse("host: other").unwrap()];
        let t = Template::new(
            &url,
            &Extras {
                headers: &host,
                ..Extras::default()
            },
        );
        t.get(0, 1, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains("host: other\r\n") && !s.contains("Host: [::1]"),
            "{s}"
        );
        assert!(
            s.ends_with("Accept: */*\r\nhost: other\r\nRange: bytes=0-0\r\n\r\n"),
            "{s}"
        );
    }
}
