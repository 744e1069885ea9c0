//! `curl [url=]URL [KEY=VALUE ...]`: nbdkit-curl-plugin's parameters, those
//! that apply to HTTP and HTTPS. The ones nbdlite does not implement are
//! refused by name, so that a command line never silently means less than
//! it says. Nothing here touches a file or the network: secrets given as
//! `+FILE`, `-` or `-FD` are read at start-up (`crate::curl::config`).

use std::path::PathBuf;

pub use crate::curl::{CurlSpec, Secret};
use crate::error::Error;
use crate::http::{HeaderArg, Scheme, Url};

/// Web server connections by default: nbdkit's curl plugin's pool size.
pub const DEFAULT_CONNECTIONS: usize = 16;
/// Most connections `connections=` may ask for.
pub const MAX_CONNECTIONS: usize = 256;

/// nbdkit-curl-plugin keys that nbdlite does not implement.
pub const UNSUPPORTED: &[&str] = &[
    "proxy",
    "proxy-user",
    "proxy-password",
    "cookiefile",
    "cookiejar",
    "cookie-script",
    "cookie-script-renew",
    "header-script",
    "header-script-renew",
    "ssl-version",
    "ssl-cipher-list",
    "tls13-ciphers",
    "tcp-keepalive",
];

/// The keys `set` takes.
const KEYS: &[&str] = &[
    "url",
    "header",
    "user",
    "password",
    "cookie",
    "user-agent",
    "cainfo",
    "capath",
    "sslverify",
    "followlocation",
    "tcp-nodelay",
    "timeout",
    "connections",
    "unix-socket-path",
    "protocols",
];

/// Whether `key` is one of the curl backend's (or one of nbdkit's it refuses
/// by name): how the command line tells its keys from the filters'.
pub fn takes(key: &str) -> bool {
    KEYS.contains(&key) || UNSUPPORTED.contains(&key)
}

/// Parses the parameters after `curl`.
pub fn parse(name: &str, params: &[String]) -> Result<CurlSpec, Error> {
    let usage = |m: String| Error::usage(format!("{name}: {m}"));
    let mut url: Option<&str> = None;
    let mut spec = CurlSpec {
        url: Url::parse("http://localhost/").map_err(usage)?,
        headers: Vec::new(),
        user: None,
        password: None,
        cookie: None,
        user_agent: None,
        cainfo: None,
        capath: None,
        sslverify: true,
        timeout: None,
        followlocation: true,
        connections: DEFAULT_CONNECTIONS,
        unix_socket_path: None,
        tcp_nodelay: true,
        protocols: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    for param in params {
        let (key, v) = param.split_once('=').unwrap_or(("url", param));
        if key != "header" && seen.contains(&key) {
            return Err(usage(format!("{key} given more than once")));
        }
        seen.push(key);
        set(&mut spec, &mut url, key, v).map_err(usage)?;
    }
    let url = url.ok_or_else(|| usage("the url parameter is required".into()))?;
    spec.url = Url::parse(url).map_err(usage)?;
    if let Some(p) = &spec.protocols
        && !p.contains(&spec.url.scheme)
    {
        return Err(usage(format!(
            "the URL's scheme '{}' is not in protocols=",
            spec.url.scheme.name()
        )));
    }
    Ok(spec)
}

/// Applies one `key=value`.
fn set<'a>(
    spec: &mut CurlSpec,
    url: &mut Option<&'a str>,
    key: &str,
    v: &'a str,
) -> Result<(), String> {
    match key {
        "url" => *url = Some(v),
        "header" => spec.headers.push(HeaderArg::parse(v)?),
        "user" => spec.user = Some(v.to_string()),
        "password" => spec.password = Some(Secret::parse(v)),
        "cookie" => spec.cookie = Some(Secret::parse(v)),
        "user-agent" => spec.user_agent = Some(v.to_string()),
        "cainfo" => spec.cainfo = Some(PathBuf::from(v)),
        "capath" => spec.capath = Some(PathBuf::from(v)),
        "sslverify" => spec.sslverify = boolean(key, v)?,
        "followlocation" => spec.followlocation = boolean(key, v)?,
        "tcp-nodelay" => spec.tcp_nodelay = boolean(key, v)?,
        "timeout" => {
            let secs: u32 = v
                .parse()
                .map_err(|_| format!("timeout '{v}': not a number of seconds"))?;
            spec.timeout = (secs > 0).then_some(secs);
        }
        "connections" => {
            spec.connections = v
                .parse()
                .ok()
                .filter(|n| (1..=MAX_CONNECTIONS).contains(n))
                .ok_or_else(|| format!("connections '{v}': expecting 1 to {MAX_CONNECTIONS}"))?;
        }
        "unix-socket-path" if v.is_empty() => return Err("unix-socket-path is empty".into()),
        "unix-socket-path" => spec.unix_socket_path = Some(PathBuf::from(v)),
        "protocols" => spec.protocols = Some(protocols(v)?),
        k if UNSUPPORTED.contains(&k) => return Err(format!("'{k}' is not supported")),
        k => return Err(format!("unknown parameter '{k}'")),
    }
    Ok(())
}

/// nbdkit's booleans.
fn boolean(key: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("{key}: '{v}' is not a boolean")),
    }
}

/// `protocols=http,https`: any of curl's names is accepted, only HTTP and
/// HTTPS can ever be used.
fn protocols(v: &str) -> Result<Vec<Scheme>, String> {
    let mut out = Vec::new();
    for p in v.split(',').map(str::trim) {
        match p.to_ascii_lowercase().as_str() {
            "http" => out.push(Scheme::Http),
            "https" => out.push(Scheme::Https),
            "" => return Err(format!("protocols '{v}': an empty name")),
            _ => {} // another of curl's protocols: allowed, and never used
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<CurlSpec, String> {
        let words: Vec<String> = s.split_whitespace().map(String::from).collect();
        parse("curl", &words).map_err(|e| e.to_string())
    }

    #[test]
    fn the_url_and_defaults() {
        let s = spec("http://h/disk.img").unwrap();
        assert_eq!(s.url.host, "h");
        assert_eq!(s.connections, DEFAULT_CONNECTIONS);
        assert!(s.sslverify && s.followlocation && s.tcp_nodelay);
        assert_eq!(s.timeout, None);
        let s = spec("url=https://h/x connections=4 sslverify=false timeout=5 followlocation=no")
            .unwrap();
        assert_eq!(s.url.scheme, Scheme::Https);
        assert_eq!(
            (s.connections, s.sslverify, s.timeout, s.followlocation),
            (4, false, Some(5), false)
        );
        assert_eq!(spec("http://h/ timeout=0").unwrap().timeout, None);
    }

    #[test]
    fn secrets_and_headers() {
        let s = spec("http://h/ password=+/run/pw cookie=-3 header=X-A:1 header=X-B;").unwrap();
        assert_eq!(s.password, Some(Secret::File("/run/pw".into())));
        assert_eq!(s.cookie, Some(Secret::Fd(3)));
        assert_eq!(s.headers.len(), 2);
        assert_eq!(
            spec("http://h/ password=-").unwrap().password,
            Some(Secret::Stdin)
        );
        assert_eq!(
            spec("http://h/ password=-x1").unwrap().password,
            Some(Secret::Value("-x1".into()))
        );
        assert_eq!(
            spec("http://h/ password=s3cret").unwrap().password,
            Some(Secret::Value("s3cret".into()))
        );
    }

    #[test]
    fn refusals() {
        let e = |s| spec(s).unwrap_err();
        assert!(e("").contains("url parameter is required"));
        assert!(e("http://h/ proxy=http://p/").contains("curl: 'proxy' is not supported"));
        assert!(e("http://h/ ssl-version=tlsv1.3").contains("'ssl-version' is not supported"));
        assert!(e("http://h/ colour=red").contains("unknown parameter 'colour'"));
        assert!(e("http://h/ http://i/").contains("url given more than once"));
        assert!(e("ftp://h/x").contains("not supported"));
        assert!(e("http://h/ connections=0").contains("expecting 1 to"));
        assert!(e("http://h/ connections=1000").contains("expecting 1 to"));
        assert!(e("http://h/ sslverify=maybe").contains("not a boolean"));
        assert!(e("http://h/ timeout=soon").contains("not a number"));
        assert!(e("http://h/ header=nocolon").contains("Name: value"));
        assert!(e("http://h/ protocols=https").contains("not in protocols="));
        assert!(spec("https://h/ protocols=https,ftp").is_ok());
        assert!(e("http://h/ unix-socket-path=").contains("empty"));
    }
}
