//! Listening sockets: the ones we bind (`-U`, `-p`, `-i`) and the ones a
//! superserver hands us. Every one ends up registered with the same Poll.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use mio::event::Source;
use mio::net::{TcpListener, UnixListener};

use crate::cli::{Config, DEFAULT_PORT, Family, UnixSocket};
use crate::error::Error;
use crate::sys;

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Wraps an inherited listening socket of the given address family.
    pub fn inherited(fd: OwnedFd, domain: libc::c_int) -> Listener {
        if domain == libc::AF_UNIX {
            Listener::Unix(UnixListener::from(fd))
        } else {
            Listener::Tcp(TcpListener::from(fd))
        }
    }

    /// Accepts one client: a non-blocking, close-on-exec socket, and who it is
    /// (formatted only if the log asks).
    pub fn accept(&self) -> io::Result<(OwnedFd, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept()?;
                // Replies are written whole; Nagle would only delay them.
                if let Err(e) = s.set_nodelay(true) {
                    log::debug!("TCP_NODELAY: {e}");
                }
                Ok((s.into(), Peer::Tcp(peer)))
            }
            Listener::Unix(l) => {
                let (s, peer) = l.accept()?;
                Ok((s.into(), Peer::Unix(peer)))
            }
        }
    }

    pub fn source(&mut self) -> &mut dyn Source {
        match self {
            Listener::Tcp(l) => l,
            Listener::Unix(l) => l,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string()),
            Listener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_else(|| "unix socket".into()),
        }
    }
}

/// Who a client is, for the log line that says it connected.
pub enum Peer {
    Tcp(SocketAddr),
    Unix(std::os::unix::net::SocketAddr),
    /// Handed to us already connected (`-s`, `Accept=yes`).
    Inherited,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix(a) => match a.as_pathname() {
                Some(p) => write!(f, "{}", p.display()),
                None => f.write_str("a Unix socket"),
            },
            Peer::Inherited => f.write_str("an inherited socket"),
        }
    }
}

/// What `bind` made, and what must be removed at exit.
#[derive(Default)]
pub struct Bound {
    pub listeners: Vec<Listener>,
    /// The Unix socket we created (absolute, since we may chdir /).
    pub unix_path: Option<PathBuf>,
    /// The private directory of `-U -`.
    pub tmpdir: Option<PathBuf>,
    /// The TCP port, once bound (the real one if `-p 0`).
    pub port: Option<u16>,
}

/// Binds everything the command line asks for: `-U` and/or TCP (`-p`, `-i`, or
/// port 10809 on every address when no `-U` was given).
pub fn bind(cfg: &Config) -> Result<Bound, Error> {
    let mut b = Bound::default();
    if let Some(unix) = &cfg.unix {
        let path = match unix {
            UnixSocket::Path(p) => {
                std::path::absolute(p).map_err(Error::setup(p.display().to_string()))?
            }
            UnixSocket::Random => {
                let dir = private_dir()?;
                b.tmpdir = Some(dir.clone());
                dir.join("socket")
            }
        };
        b.listeners.push(Listener::Unix(bind_unix(&path)?));
        b.unix_path = Some(path);
    }
    if cfg.unix.is_none() || cfg.port.is_some() || cfg.ipaddr.is_some() {
        let port = cfg.port.unwrap_or(DEFAULT_PORT);
        let (listeners, port) = match &cfg.ipaddr {
            Some(addr) => bind_addr(addr, port, cfg.family)?,
            None => bind_any(port, cfg.family)?,
        };
        b.listeners.extend(listeners);
        b.port = Some(port);
    }
    Ok(b)
}

/// The longest path a Unix socket address holds: `sun_path` is 108 bytes,
/// and the kernel wants a terminating NUL in them.
const MAX_UNIX_PATH: usize = 107;

/// `-U PATH`. A path in use gets a message saying what is there: a file that
/// is no socket, a socket some server listens on, or a stale socket left by an
/// earlier server (nbdkit does not remove those either: the user decides).
fn bind_unix(path: &Path) -> Result<UnixListener, Error> {
    let shown = path.display().to_string();
    let len = path.as_os_str().len();
    if len > MAX_UNIX_PATH {
        return Err(Error::usage(format!(
            "{shown}: a Unix socket path is at most {MAX_UNIX_PATH} bytes, this one is {len}: \
             choose a shorter one"
        )));
    }
    UnixListener::bind(path).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => Error::usage(format!("{shown}: {}", in_use(path))),
        _ => Error::Setup(shown, e),
    })
}

/// Why a Unix socket path is taken.
fn in_use(path: &Path) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            "exists and is not a socket: remove it or choose another path"
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                "a stale socket from an earlier server (nobody listens on it): remove it"
            }
            _ => "another server is listening on this socket",
        },
        Err(_) => "Address already in use",
    }
}

/// `-i ADDR`: every address the name resolves to (of one family with `-4`/`-6`).
fn bind_addr(addr: &str, port: u16, family: Option<Family>) -> Result<(Vec<Listener>, u16), Error> {
    let addrs: Vec<SocketAddr> = (addr, port)
        .to_socket_addrs()
        .map_err(Error::setup(format!("-i {addr}")))?
        .filter(|a| of_family(a, family))
        .collect();
    if addrs.is_empty() {
        let (flag, which) = match family {
            Some(Family::V6) => ("-6", "IPv6"),
            _ => ("-4", "IPv4"),
        };
        return Err(Error::usage(format!(
            "-i {addr}: no {which} address, and {flag} asks for one"
        )));
    }
    let mut out = Vec::new();
    let mut port = port;
    for a in addrs {
        let a = SocketAddr::new(a.ip(), port);
        out.push(tcp(a, family).map_err(Error::setup(a.to_string()))?);
        port = local_port(&out)?; // with -p 0, the rest share the first one's port
    }
    Ok((out, port))
}

fn of_family(a: &SocketAddr, family: Option<Family>) -> bool {
    match family {
        None => true,
        Some(Family::V4) => a.is_ipv4(),
        Some(Family::V6) => a.is_ipv6(),
    }
}

/// No address: IPv6 and IPv4 wildcards (one of them with `-4`/`-6`). On a
/// dual-stack host `[::]` already takes IPv4 too and the second bind fails
/// with EADDRINUSE, which is fine; on a host without IPv6 only the first fails.
fn bind_any(port: u16, family: Option<Family>) -> Result<(Vec<Listener>, u16), Error> {
    let mut out = Vec::new();
    let mut port = port;
    let mut first_error = None;
    let wildcards = [
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    ];
    for ip in wildcards {
        let a = SocketAddr::new(ip, port);
        if !of_family(&a, family) {
            continue;
        }
        match tcp(a, family) {
            Ok(l) => {
                out.push(l);
                port = local_port(&out)?;
            }
            Err(e) if !out.is_empty() && e.kind() == io::ErrorKind::AddrInUse => {}
            Err(e) => {
                first_error.get_or_insert(Error::Setup(a.to_string(), e));
            }
        }
    }
    match (out.is_empty(), first_error) {
        (true, Some(e)) => Err(e),
        _ => Ok((out, port)),
    }
}

/// A TCP listener; with `-6`, an IPv6 one that takes no IPv4 clients.
fn tcp(addr: SocketAddr, family: Option<Family>) -> io::Result<Listener> {
    let l = match addr {
        SocketAddr::V6(a) if family == Some(Family::V6) => sys::net::tcp_listener_v6_only(a)?,
        _ => {
            let l = std::net::TcpListener::bind(addr)?;
            if let Err(e) = sys::listen_max(l.as_fd()) {
                log::debug!("listen backlog: {e}");
            }
            l
        }
    };
    l.set_nonblocking(true)?;
    Ok(Listener::Tcp(TcpListener::from_std(l)))
}

fn local_port(listeners: &[Listener]) -> Result<u16, Error> {
    match listeners.last() {
        Some(Listener::Tcp(l)) => l
            .local_addr()
            .map(|a| a.port())
            .map_err(Error::setup("getsockname")),
        _ => Ok(0),
    }
}

/// A fresh directory only we can enter, for `-U -`.
fn private_dir() -> Result<PathBuf, Error> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    let pid = std::process::id();
    for n in 0..1000u32 {
        let dir = base.join(format!("nbdlite{pid}-{n}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                return std::path::absolute(&dir).map_err(Error::setup(dir.display().to_string()));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::Setup(dir.display().to_string(), e)),
        }
    }
    Err(Error::usage("cannot create a private directory for -U -"))
}
