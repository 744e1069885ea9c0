//! What the log needs from the system: whether stderr takes a line without
//! waiting, and syslog's timestamp.

use std::os::fd::{AsRawFd, BorrowedFd};

/// Whether `fd` takes a write now (poll(2) with no wait): the log checks
/// before each line, so that a pipe or terminal nobody reads never stops the
/// loop. A write of at most PIPE_BUF bytes to a pipe with room does not block.
pub fn poll_writable(fd: BorrowedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, and a zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLOUT != 0
}

/// The local time as syslog(3) writes it ("Mar  5 14:03:07").
pub fn syslog_time() -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // SAFETY: time(2) with a null pointer only returns the time.
    let t = unsafe { libc::time(std::ptr::null_mut()) };
    let mut tm = std::mem::MaybeUninit::<libc::tm>::zeroed();
    // SAFETY: both pointers are valid; localtime_r fills tm when it returns non-null.
    if unsafe { libc::localtime_r(&t, tm.as_mut_ptr()) }.is_null() {
        return String::from("Jan  1 00:00:00");
    }
    // SAFETY: initialised by the successful localtime_r above (and zeroed before).
    let tm = unsafe { tm.assume_init() };
    format!(
        "{} {:2} {:02}:{:02}:{:02}",
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}
