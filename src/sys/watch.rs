//! What `--filter=exitwhen` watches for: whether the writer of a pipe passed
//! to us has gone.

use std::io;
use std::os::fd::RawFd;

/// The read end of a pipe (or a socket), as poll(2) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeEnd {
    Open,
    /// Its writers have all closed it.
    HungUp,
    /// Not an open descriptor (any more).
    Invalid,
}

/// Looks at `fd` without waiting and without reading from it. A number, not
/// a borrowed fd: nothing in the process owns the descriptor it names.
pub fn pipe_end(fd: RawFd) -> io::Result<PipeEnd> {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd and a zero timeout; poll only reads the fd's
    // state (a closed one gives POLLNVAL).
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(match p.revents {
        r if r & libc::POLLNVAL != 0 => PipeEnd::Invalid,
        r if r & (libc::POLLHUP | libc::POLLERR) != 0 => PipeEnd::HungUp,
        _ => PipeEnd::Open,
    })
}
