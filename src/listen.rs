//! Listening sockets: the ones we bind (`-U`, `-p`, `-i`) and the ones a
//! superserver hands us. Every one ends up registered with the same Poll.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use mio::event::Source;
use mio::net::{TcpListener, UnixListener};

use crate::cli::{Config, DEFAULT_PORT, UnixSocket};
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
        let l = UnixListener::bind(&path).map_err(Error::setup(path.display().to_string()))?;
        b.listeners.push(Listener::Unix(l));
        b.unix_path = Some(path);
    }
    if cfg.unix.is_none() || cfg.port.is_some() || cfg.ipaddr.is_some() {
        let port = cfg.port.unwrap_or(DEFAULT_PORT);
        let (listeners, port) = match &cfg.ipaddr {
            Some(addr) => bind_addr(addr, port)?,
            None => bind_any(port)?,
        };
        b.listeners.extend(listeners);
        b.port = Some(port);
    }
    Ok(b)
}

/// `-i ADDR`: every address the name resolves to.
fn bind_addr(addr: &str, port: u16) -> Result<(Vec<Listener>, u16), Error> {
    let addrs: Vec<SocketAddr> = (addr, port)
        .to_socket_addrs()
        .map_err(Error::setup(format!("-i {addr}")))?
        .collect();
    let mut out = Vec::new();
    let mut port = port;
    for a in addrs {
        let a = SocketAddr::new(a.ip(), port);
        out.push(tcp(a).map_err(Error::setup(a.to_string()))?);
        port = local_port(&out)?; // with -p 0, the rest share the first one's port
    }
    Ok((out, port))
}

/// No address: IPv6 and IPv4 wildcards. On a dual-stack host `[::]` already
/// takes IPv4 too and the second bind fails with EADDRINUSE, which is fine; on
/// a host without IPv6 only the first fails.
fn bind_any(port: u16) -> Result<(Vec<Listener>, u16), Error> {
    let mut out = Vec::new();
    let mut port = port;
    let mut first_error = None;
    for ip in ["::", "0.0.0.0"] {
        let a = SocketAddr::new(ip.parse().expect("literal address"), port);
        match tcp(a) {
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

fn tcp(addr: SocketAddr) -> io::Result<Listener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    if let Err(e) = sys::listen_max(l.as_fd()) {
        log::debug!("listen backlog: {e}");
    }
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
