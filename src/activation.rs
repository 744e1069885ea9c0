//! Socket activation (the systemd protocol): LISTEN_PID, LISTEN_FDS and
//! LISTEN_FDNAMES name sockets our parent opened for us at fds 3, 4, ….
//!
//! `detect` is a pure check of the variables; `take` claims the fds and asks the
//! kernel what each one is.

use std::os::fd::{AsFd, OwnedFd, RawFd};

use crate::error::Error;
use crate::sys::{self, SocketKind};

/// The first inherited fd, by the protocol.
pub const FIRST_FD: RawFd = 3;

/// What the environment said, before anything was done about it.
#[derive(Debug, PartialEq, Eq)]
pub enum Detected {
    /// Neither variable set: no activation.
    None,
    /// Activation is on with this many fds.
    Fds(u32),
    /// The variables were set but are not for us, or malformed: warn and ignore.
    Ignored(String),
}

/// Checks LISTEN_PID / LISTEN_FDS against our pid.
pub fn detect(listen_pid: Option<&str>, listen_fds: Option<&str>, our_pid: u32) -> Detected {
    let (pid, fds) = match (listen_pid, listen_fds) {
        (None, None) => return Detected::None,
        (Some(p), Some(f)) => (p, f),
        (Some(_), None) => {
            return Detected::Ignored("LISTEN_PID is set but LISTEN_FDS is not".into());
        }
        (None, Some(_)) => {
            return Detected::Ignored("LISTEN_FDS is set but LISTEN_PID is not".into());
        }
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return Detected::Ignored(format!("malformed LISTEN_PID environment variable '{pid}'"));
    };
    if pid != our_pid {
        return Detected::Ignored(format!("LISTEN_PID={pid} was not for us (pid {our_pid})"));
    }
    // Far more than any superserver passes; keeps fd arithmetic trivially in range.
    match fds.parse::<u32>() {
        Ok(n) if (1..=1024).contains(&n) => Detected::Fds(n),
        _ => Detected::Ignored(format!("malformed LISTEN_FDS environment variable '{fds}'")),
    }
}

/// Splits LISTEN_FDNAMES (colon-separated), for logging.
pub fn names(listen_fdnames: Option<&str>) -> Vec<String> {
    listen_fdnames
        .map(|s| s.split(':').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// An inherited socket, sorted by what the server does with it.
pub enum Inherited {
    /// A listening socket (SO_ACCEPTCONN): accept clients from it.
    Listener { fd: OwnedFd, domain: libc::c_int },
    /// A connected stream socket (systemd `Accept=yes`): it is one client.
    Connection(OwnedFd),
}

/// Sets FD_CLOEXEC on fds 3…3+n-1, so no child of ours inherits them. An fd that
/// is not open means activation went wrong: a fatal error.
pub fn set_cloexec(n: u32) -> Result<(), Error> {
    for fd in FIRST_FD..FIRST_FD + n as RawFd {
        sys::set_cloexec(fd).map_err(|e| {
            Error::Setup(
                format!("socket activation: invalid file descriptor fd = {fd}"),
                e,
            )
        })?;
    }
    Ok(())
}

/// Claims fds 3…3+n-1 (after `set_cloexec` checked they are open), makes them
/// non-blocking and sorts them. Anything but a stream socket is a fatal error.
pub fn take(n: u32) -> Result<Vec<Inherited>, Error> {
    let mut out = Vec::with_capacity(n as usize);
    for fd in FIRST_FD..FIRST_FD + n as RawFd {
        // Open: `set_cloexec` checked; claimed once: the superserver handed it to us.
        let owned = sys::claim_inherited(fd).map_err(|e| {
            Error::Setup(
                format!("socket activation: invalid file descriptor fd = {fd}"),
                e,
            )
        })?;
        let kind = sys::socket_kind(owned.as_fd()).map_err(|e| {
            Error::Setup(
                format!("socket activation: fd {fd} is not a usable socket"),
                e,
            )
        })?;
        classify(fd, kind)?;
        sys::set_nonblocking(owned.as_fd()).map_err(Error::setup(format!(
            "socket activation: fd {fd}: O_NONBLOCK"
        )))?;
        out.push(if kind.listening {
            Inherited::Listener {
                fd: owned,
                domain: kind.domain,
            }
        } else if kind.domain == libc::AF_UNIX {
            Inherited::Connection(owned)
        } else {
            // A TCP client (Accept=yes): replies are written whole, so no Nagle.
            let tcp = std::net::TcpStream::from(owned);
            if let Err(e) = tcp.set_nodelay(true) {
                log::debug!("fd {fd}: TCP_NODELAY: {e}");
            }
            Inherited::Connection(tcp.into())
        });
    }
    Ok(out)
}

/// Refuses fds we cannot serve, with a message that says what they are.
fn classify(fd: RawFd, kind: SocketKind) -> Result<(), Error> {
    if kind.sock_type != libc::SOCK_STREAM {
        return Err(Error::usage(format!(
            "socket activation: fd {fd} is not a stream socket (type {}): use ListenStream= in the .socket unit",
            kind.sock_type
        )));
    }
    if !matches!(kind.domain, libc::AF_UNIX | libc::AF_INET | libc::AF_INET6) {
        return Err(Error::usage(format!(
            "socket activation: fd {fd} has unsupported address family {}",
            kind.domain
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        assert_eq!(detect(None, None, 7), Detected::None);
        assert_eq!(detect(Some("7"), Some("2"), 7), Detected::Fds(2));
        assert!(
            matches!(detect(Some("8"), Some("1"), 7), Detected::Ignored(m) if m.contains("not for us"))
        );
        assert!(
            matches!(detect(Some("x"), Some("1"), 7), Detected::Ignored(m) if m.contains("LISTEN_PID"))
        );
        for bad in ["0", "-1", "one", "", "1x", "99999999999"] {
            assert!(
                matches!(detect(Some("7"), Some(bad), 7), Detected::Ignored(ref m) if m.contains("LISTEN_FDS")),
                "{bad}"
            );
        }
        assert!(matches!(detect(Some("7"), None, 7), Detected::Ignored(_)));
    }

    #[test]
    fn fd_names() {
        assert_eq!(names(Some("nbd:nbd6")), vec!["nbd", "nbd6"]);
        assert!(names(None).is_empty());
    }

    #[test]
    fn only_stream_sockets() {
        let k = |t, d| SocketKind {
            sock_type: t,
            domain: d,
            listening: false,
        };
        assert!(classify(3, k(libc::SOCK_STREAM, libc::AF_INET6)).is_ok());
        assert!(classify(3, k(libc::SOCK_DGRAM, libc::AF_UNIX)).is_err());
        assert!(classify(3, k(libc::SOCK_STREAM, libc::AF_NETLINK)).is_err());
    }
}
