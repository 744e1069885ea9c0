//! A TCP listener that takes IPv6 clients only (`-6`, as nbdkit's): the
//! IPV6_V6ONLY option must be set between socket(2) and bind(2), and std's
//! `TcpListener::bind` offers no moment to do it.

use std::io;
use std::net::SocketAddrV6;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;

/// Binds and listens on `addr` with IPV6_V6ONLY and SO_REUSEADDR (as std sets
/// it), with the largest backlog the system allows. Blocking, close-on-exec.
pub fn tcp_listener_v6_only(addr: SocketAddrV6) -> io::Result<std::net::TcpListener> {
    // SAFETY: no memory is passed; the result is checked before use.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket(2) just returned this fd, so it is open and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    let sa = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: addr.port().to_be(),
        sin6_flowinfo: addr.flowinfo(),
        sin6_addr: libc::in6_addr {
            s6_addr: addr.ip().octets(),
        },
        sin6_scope_id: addr.scope_id(),
    };
    let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: sa is a valid sockaddr_in6 of len bytes, only read by the kernel.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), len) })?;
    // SAFETY: no memory is passed.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), super::LISTEN_BACKLOG) })?;
    Ok(std::net::TcpListener::from(fd))
}

fn set_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsFd;
    set_int_on(fd.as_fd(), level, name, v)
}

/// Asks for `send` bytes of send buffer and `receive` of receive buffer on a
/// connected socket (which also ends TCP's autotuning, which would grow them
/// to megabytes).
pub fn bound_socket_buffers(fd: BorrowedFd, send: usize, receive: usize) -> io::Result<()> {
    for (name, bytes) in [(libc::SO_SNDBUF, send), (libc::SO_RCVBUF, receive)] {
        let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        set_int_on(fd, libc::SOL_SOCKET, name, v)?;
    }
    Ok(())
}

/// What the kernel allows a socket's send and receive buffers together (it
/// doubles what was asked, for its bookkeeping).
pub fn socket_buffers(fd: BorrowedFd) -> io::Result<usize> {
    let mut total = 0;
    for name in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        let got = super::getsockopt_int(fd, libc::SOL_SOCKET, name)?;
        total += usize::try_from(got).unwrap_or(0);
    }
    Ok(total)
}

fn set_int_on(
    fd: BorrowedFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v lives across the call and len is its size; the kernel only reads it.
    cvt(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (&raw const v).cast(), len) })?;
    Ok(())
}

/// Bytes we sent on a socket that the peer has not yet taken (SIOCOUTQ: on a
/// Unix socket, what waits in the peer's queue; over TCP, what is not yet
/// acknowledged): kernel memory charged to us, which outlives our close.
pub fn unsent_bytes(fd: BorrowedFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which is valid.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &raw mut n) })?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// shutdown(SHUT_WR): the peer reads what is queued, then EOF.
pub fn shutdown_write(fd: BorrowedFd) -> io::Result<()> {
    // SAFETY: no memory is passed.
    cvt(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) })?;
    Ok(())
}

/// Whether both directions of a socket are over (POLLHUP) or it failed
/// (POLLERR): its peer has gone, and what we sent is no longer queued for it.
pub fn hung_up(fd: BorrowedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout: the kernel only writes revents.
    let n = unsafe { libc::poll(&raw mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0
}
