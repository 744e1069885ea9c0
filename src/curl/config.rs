//! From the parsed `curl` parameters to what connections need: secrets read
//! (`+FILE`, `-`, `-FD`), the TLS configuration, the server's address
//! (resolved once, here: name lookups block), and the request template.
//! Start-up only: everything here may block.

use std::io::{self, BufRead};
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use super::transport::Endpoint;
use super::{CurlSpec, Secret};
use crate::http::{Extras, HeaderArg, Scheme, Template, Url};

/// How long a request may take without `timeout=`: long enough for a slow
/// object store, short enough that a server that stopped answering costs a
/// client an error rather than a hung disk.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What stays the same whatever URL a redirect leads to.
pub struct Options {
    /// The URL given (redirects are followed from it at start-up).
    pub url: Url,
    user: Option<String>,
    password: Option<String>,
    cookie: Option<String>,
    user_agent: Option<String>,
    headers: Vec<HeaderArg>,
    unix_socket: Option<PathBuf>,
    pub followlocation: bool,
    protocols: Option<Vec<Scheme>>,
    pub timeout: Duration,
    pub connections: usize,
    pub nodelay: bool,
    #[cfg(feature = "tls")]
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// Everything one connection to the (final) URL needs.
#[derive(Clone)]
pub struct Settings {
    pub url: Url,
    pub template: Template,
    pub endpoint: Endpoint,
    #[cfg(feature = "tls")]
    pub tls: Option<super::transport::TlsTarget>,
    pub timeout: Duration,
    pub connections: usize,
    pub nodelay: bool,
}

impl Options {
    pub fn new(spec: &CurlSpec) -> Result<Options, String> {
        let password = match &spec.password {
            Some(s) => Some(read_secret(s, "password")?),
            None => spec.url.password.clone(),
        };
        let cookie = spec
            .cookie
            .as_ref()
            .map(|s| read_secret(s, "cookie"))
            .transpose()?;
        Ok(Options {
            url: spec.url.clone(),
            user: spec.user.clone().or_else(|| spec.url.user.clone()),
            password,
            cookie,
            user_agent: spec.user_agent.clone(),
            headers: spec.headers.clone(),
            unix_socket: spec.unix_socket_path.clone(),
            followlocation: spec.followlocation,
            protocols: spec.protocols.clone(),
            timeout: spec
                .timeout
                .map_or(DEFAULT_TIMEOUT, |s| Duration::from_secs(s.into())),
            connections: spec.connections,
            nodelay: spec.tcp_nodelay,
            #[cfg(feature = "tls")]
            tls: tls_config(spec)?,
        })
    }

    /// The settings for connections to `url` (the one given, or where it
    /// redirects): its address looked up, its request head built.
    pub fn settings(&self, url: &Url) -> Result<Settings, String> {
        if let Some(p) = &self.protocols
            && !p.contains(&url.scheme)
        {
            return Err(format!(
                "{url}: the {} scheme is not in protocols=",
                url.scheme.name()
            ));
        }
        if cfg!(not(feature = "tls")) && url.scheme == Scheme::Https {
            return Err(format!(
                "{url}: https needs TLS, and this nbdlite was built without it"
            ));
        }
        let endpoint = match &self.unix_socket {
            Some(path) => Endpoint::Unix(path.clone()),
            None => Endpoint::Tcp(resolve(url)?),
        };
        // Credentials go to the origin they were given for (as libcurl's),
        // or with the URL that carries them.
        let basic = match (&self.user, url.same_origin(&self.url)) {
            (Some(u), true) => Some((u.as_str(), self.password.as_deref().unwrap_or(""))),
            _ => url
                .user
                .as_deref()
                .map(|u| (u, url.password.as_deref().unwrap_or(""))),
        };
        let extras = Extras {
            basic,
            cookie: self.cookie.as_deref(),
            user_agent: self.user_agent.as_deref(),
            headers: &self.headers,
        };
        Ok(Settings {
            url: url.clone(),
            template: Template::new(url, &extras),
            endpoint,
            #[cfg(feature = "tls")]
            tls: self.tls_target(url)?,
            timeout: self.timeout,
            connections: self.connections,
            nodelay: self.nodelay,
        })
    }

    #[cfg(feature = "tls")]
    fn tls_target(&self, url: &Url) -> Result<Option<super::transport::TlsTarget>, String> {
        if url.scheme != Scheme::Https {
            return Ok(None);
        }
        let config = self.tls.clone().ok_or("TLS is not configured")?;
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|_| format!("'{}' is not a valid TLS server name", url.host))?;
        Ok(Some(super::transport::TlsTarget { config, name }))
    }
}

/// The TLS client configuration, unless nothing can need it (an `http` URL
/// with `followlocation=false` or `protocols=http`).
#[cfg(feature = "tls")]
fn tls_config(spec: &CurlSpec) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
    let https = spec.url.scheme == Scheme::Https
        || (spec.followlocation
            && spec
                .protocols
                .as_ref()
                .is_none_or(|p| p.contains(&Scheme::Https)));
    if !https {
        return Ok(None);
    }
    let trust = super::tls::Trust {
        cainfo: spec.cainfo.as_deref(),
        capath: spec.capath.as_deref(),
        verify: spec.sslverify,
    };
    match super::tls::client_config(&trust) {
        Ok(c) => Ok(Some(c)),
        // Only an https URL must have it; a redirect to one fails later.
        Err(e) if spec.url.scheme == Scheme::Https => Err(e),
        Err(_) => Ok(None),
    }
}

/// The first address of `url`'s host. Looked up once: a name whose address
/// changes while the server runs keeps the one it had at start-up.
fn resolve(url: &Url) -> Result<std::net::SocketAddr, String> {
    let mut addrs = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", url.host))?;
    addrs
        .next()
        .ok_or_else(|| format!("{}: no address", url.host))
}

/// A secret as nbdkit reads it: the value, a file's contents, a line from
/// stdin, or what an inherited descriptor holds; one trailing newline dropped.
fn read_secret(s: &Secret, what: &str) -> Result<String, String> {
    let text = match s {
        Secret::Value(v) => return Ok(v.clone()),
        Secret::File(p) => {
            std::fs::read_to_string(p).map_err(|e| format!("{what}: {}: {e}", p.display()))?
        }
        Secret::Fd(fd) => std::fs::read_to_string(format!("/proc/self/fd/{fd}"))
            .map_err(|e| format!("{what}: file descriptor {fd}: {e}"))?,
        Secret::Stdin => {
            eprint!("{what}: ");
            let mut line = String::new();
            io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| format!("{what}: {e}"))?;
            line
        }
    };
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &str) -> Options {
        let words: Vec<String> = args.split_whitespace().map(String::from).collect();
        Options::new(&crate::cli::curl::parse("curl", &words).unwrap()).unwrap()
    }

    fn head(o: &Options, url: &str) -> String {
        let s = o.settings(&Url::parse(url).unwrap()).unwrap();
        let mut out = Vec::new();
        s.template.get(0, 1, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn credentials_stay_with_their_origin() {
        let o = options("http://127.0.0.1:8/a user=bob password=pw");
        assert!(head(&o, "http://127.0.0.1:8/b").contains("Authorization: Basic Ym9iOnB3"));
        assert!(!head(&o, "http://127.0.0.2:8/b").contains("Authorization"));
        let o = options("http://al:x@127.0.0.1:8/a");
        assert!(head(&o, "http://127.0.0.1:8/a").contains("Authorization: Basic YWw6eA=="));
    }

    #[test]
    fn secrets_from_files() {
        let dir = std::env::temp_dir().join(format!("nbdlite-secret-{}", std::process::id()));
        std::fs::write(&dir, "hunter2\n").unwrap();
        let s = read_secret(&Secret::File(dir.clone()), "password").unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(s, "hunter2");
        assert!(read_secret(&Secret::File("/nonexistent/x".into()), "password").is_err());
        assert!(
            read_secret(&Secret::Fd(999), "cookie")
                .unwrap_err()
                .contains("descriptor 999")
        );
    }

    #[test]
    fn protocols_apply_to_redirects() {
        let o = options("http://127.0.0.1/a protocols=http");
        assert!(
            o.settings(&Url::parse("https://127.0.0.1/").unwrap())
                .is_err()
        );
        let o = options("http://127.0.0.1/a unix-socket-path=/tmp/s");
        let s = o.settings(&o.url).unwrap();
        assert!(matches!(s.endpoint, Endpoint::Unix(_)));
    }
}
