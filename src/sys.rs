//! The unsafe corner: every libc call the server makes, each wrapped once.
//!
//! Everything else in the crate is safe code. Each `unsafe` block says why it
//! is sound; most are plain system calls on an fd the caller owns or borrows.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

#[cfg(feature = "fuzzing")]
pub mod alloc;
mod log;
mod memory;
pub mod net;
/// Release builds only: they abort on panic, and link the unwinder
/// dynamically unless the build is static (see the module).
#[cfg(all(panic = "abort", not(target_feature = "crt-static")))]
mod unwind;
pub mod uring;
mod watch;

pub use log::{poll_writable, syslog_time};
#[cfg(target_env = "gnu")]
pub use memory::heap_in_use;
pub use memory::{memlock_limit, mlock, physical_memory, trim_heap};
pub use watch::{PipeEnd, pipe_end};

/// Turns the C convention (-1 and errno) into `io::Result`.
fn cvt<T: PartialEq + From<i8>>(r: T) -> io::Result<T> {
    if r == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub fn read(fd: BorrowedFd, buf: &mut [u8]) -> io::Result<usize> {
    let fd = fd.as_raw_fd();
    // SAFETY: buf is a valid writable region of buf.len() bytes.
    let n = cvt(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })?;
    Ok(n as usize)
}

/// writev(2). `IoSlice` is documented to be ABI-compatible with `struct iovec`.
pub fn writev(fd: BorrowedFd, bufs: &[IoSlice]) -> io::Result<usize> {
    let fd = fd.as_raw_fd();
    let n = bufs.len().min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: bufs points to n IoSlices (each a valid iovec over live memory).
    let w = cvt(unsafe { libc::writev(fd, bufs.as_ptr().cast(), n) })?;
    Ok(w as usize)
}

/// Sets FD_CLOEXEC; fails (EBADF) when `fd` is not open. A number, not a
/// borrowed fd: it checks inherited descriptors that nothing owns yet.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an integer fd has no memory effects; a bad fd gives EBADF.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    Ok(())
}

pub fn set_nonblocking(fd: BorrowedFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on an integer fd has no memory effects.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// Clears O_NONBLOCK: a file opened non-blocking (so that opening a FIFO in
/// its place could not wait) must not stay so, or io_uring would refuse to
/// wait for its disk (EAGAIN) rather than hand the read to a worker.
pub fn clear_nonblocking(fd: BorrowedFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on an integer fd has no memory effects.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) })?;
    Ok(())
}

fn getsockopt_int(
    fd: BorrowedFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let fd = fd.as_raw_fd();
    // SAFETY: v and len are valid for writes and len holds v's size.
    cvt(unsafe { libc::getsockopt(fd, level, name, (&raw mut v).cast(), &mut len) })?;
    Ok(v)
}

/// What an inherited fd turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketKind {
    /// SOCK_STREAM, SOCK_DGRAM, …
    pub sock_type: libc::c_int,
    /// AF_UNIX, AF_INET, AF_INET6, …
    pub domain: libc::c_int,
    /// SO_ACCEPTCONN: a listening socket.
    pub listening: bool,
}

/// Asks the kernel what kind of socket `fd` is (ENOTSOCK when it is none).
pub fn socket_kind(fd: BorrowedFd) -> io::Result<SocketKind> {
    Ok(SocketKind {
        sock_type: getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?,
        domain: getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?,
        listening: getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0,
    })
}

/// Descriptors claimed by `claim_inherited`: each may be claimed once.
static CLAIMED: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

/// Takes ownership of a descriptor inherited from our parent: a socket-activated
/// one (3 and up) or, with `-s`, stdin or stdout. Fails if it is not open or was
/// claimed before, so no two owners can ever close the same descriptor.
pub fn claim_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    // A poisoned lock only means a panic elsewhere; the list itself is intact.
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    if fd < 0 || claimed.contains(&fd) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: fcntl on an integer fd has no memory effects; EBADF if not open.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    claimed.push(fd);
    // SAFETY: fd is open; the process was handed it by its parent and nothing in
    // it takes inherited descriptors but this function, which hands each out once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The backlog asked of listen(2): the kernel caps it at net.core.somaxconn.
/// std binds with 128, too few for a harness that opens hundreds of clients
/// at once.
const LISTEN_BACKLOG: libc::c_int = 4096;

/// Raises a listening socket's backlog to `LISTEN_BACKLOG` (the kernel caps
/// it at somaxconn).
pub fn listen_max(fd: BorrowedFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: no memory is passed; listen on a listening socket just updates its backlog.
    cvt(unsafe { libc::listen(fd, LISTEN_BACKLOG) })?;
    Ok(())
}

pub fn fallocate(fd: BorrowedFd, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: no memory is passed; the kernel checks fd and ranges.
    cvt(unsafe { libc::fallocate(fd, mode, offset as libc::off_t, len as libc::off_t) })?;
    Ok(())
}

fn seek(fd: BorrowedFd, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let fd = fd.as_raw_fd();
    // SAFETY: lseek has no memory effects.
    match cvt(unsafe { libc::lseek(fd, offset as libc::off_t, whence) }) {
        Ok(pos) => Ok(Some(pos as u64)),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Next offset ≥ `offset` holding data; None when only a hole follows.
pub fn seek_data(fd: BorrowedFd, offset: u64) -> io::Result<Option<u64>> {
    seek(fd, offset, libc::SEEK_DATA)
}

/// Next hole ≥ `offset` (end of file counts as one).
pub fn seek_hole(fd: BorrowedFd, offset: u64) -> io::Result<Option<u64>> {
    seek(fd, offset, libc::SEEK_HOLE)
}

pub fn fadvise_willneed(fd: BorrowedFd, offset: u64, len: u64) -> io::Result<()> {
    fadvise(fd, offset, len, libc::POSIX_FADV_WILLNEED)
}

/// Writes `[offset, offset + len)` of a file back and waits for it
/// (sync_file_range with WAIT_BEFORE, WRITE and WAIT_AFTER): its pages can
/// then be dropped from the page cache. Makes nothing durable (no metadata,
/// no disk cache flush).
pub fn write_back(fd: BorrowedFd, offset: u64, len: u64) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: no memory is passed; the kernel checks fd and range.
    cvt(unsafe {
        libc::sync_file_range(fd, offset as libc::off64_t, len as libc::off64_t, flags)
    })?;
    Ok(())
}

/// Drops a file's clean cached pages (benchmarks start cold with it).
pub fn fadvise_dontneed(fd: BorrowedFd, offset: u64, len: u64) -> io::Result<()> {
    fadvise(fd, offset, len, libc::POSIX_FADV_DONTNEED)
}

/// How a whole file will be read, told to the kernel's readahead (nbdkit's
/// `fadvise=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    Normal,
    /// Readahead off.
    Random,
    /// Readahead doubled.
    Sequential,
}

pub fn advise(fd: BorrowedFd, advice: Advice) -> io::Result<()> {
    let advice = match advice {
        Advice::Normal => libc::POSIX_FADV_NORMAL,
        Advice::Random => libc::POSIX_FADV_RANDOM,
        Advice::Sequential => libc::POSIX_FADV_SEQUENTIAL,
    };
    fadvise(fd, 0, 0, advice)
}

fn fadvise(fd: BorrowedFd, offset: u64, len: u64, advice: libc::c_int) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: no memory is passed. posix_fadvise returns the error instead of setting errno.
    let r = unsafe { libc::posix_fadvise(fd, offset as libc::off_t, len as libc::off_t, advice) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// Logical sector size of a block device (BLKSSZGET).
pub fn logical_sector_size(fd: BorrowedFd) -> io::Result<u32> {
    let fd = fd.as_raw_fd();
    const BLKSSZGET: libc::c_ulong = 0x1268;
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which is valid.
    cvt(unsafe { libc::ioctl(fd, BLKSSZGET, &mut size) })?;
    u32::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two() && *s <= 65536)
        .ok_or_else(|| io::Error::other("odd logical sector size"))
}

/// Write end of the self-pipe; the signal handler's only state.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signo: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    let byte = signo as u8;
    // SAFETY: write(2) is async-signal-safe; errno is saved and restored around it
    // so the interrupted code never sees it change. A full pipe drops the byte, which
    // is harmless: a byte already waiting will wake the loop.
    unsafe {
        let errno = *libc::__errno_location();
        libc::write(fd, (&raw const byte).cast(), 1);
        *libc::__errno_location() = errno;
    }
}

/// Installs handlers that turn `signals` into bytes on a non-blocking pipe, and
/// ignores SIGPIPE. Returns the read end, for the Poll.
pub fn signal_pipe(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two fds pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: pipe2 just opened both fds and nothing else owns them.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The write end must outlive every handler call: it lives for the whole process.
    SIGNAL_PIPE.store(wr.as_raw_fd(), Ordering::Relaxed);
    std::mem::forget(wr);
    for &sig in signals {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler only
        // calls async-signal-safe functions. SA_RESTART keeps blocking calls simple.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            cvt(libc::sigaction(sig, &sa, std::ptr::null_mut()))?;
        }
    }
    // SAFETY: setting a disposition to SIG_IGN has no memory effects.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Ok(rd)
}

/// Result of `fork`.
pub enum Forked {
    Parent,
    Child,
}

/// Forks. Only called while the process is single-threaded.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the process has one thread, so the child inherits no locked mutex or
    // half-finished state of another thread.
    match cvt(unsafe { libc::fork() })? {
        0 => Ok(Forked::Child),
        _ => Ok(Forked::Parent),
    }
}

pub fn setsid() -> io::Result<()> {
    // SAFETY: no memory effects.
    cvt(unsafe { libc::setsid() })?;
    Ok(())
}

/// Points `target` (0, 1 or 2) at `fd`.
pub fn dup2(fd: BorrowedFd, target: RawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: no memory effects; target is a standard stream we mean to replace.
    cvt(unsafe { libc::dup2(fd, target) })?;
    Ok(())
}

/// Asks the kernel to send us SIGTERM when our parent dies (--exit-with-parent).
pub fn exit_with_parent() -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number, no memory.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) })?;
    Ok(())
}

/// Sends SIGTERM to process `pid` (our `--run` child).
pub fn terminate(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: kill(2) takes two integers; no memory is involved.
    cvt(unsafe { libc::kill(pid, libc::SIGTERM) })?;
    Ok(())
}

/// Makes the child `cmd` will start receive SIGTERM when we die, however we
/// die (even by SIGKILL, which we cannot catch to end it ourselves). If we are
/// already gone by the time it runs, it does not start.
pub fn end_with_parent_on_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid takes no arguments and cannot fail.
    let parent = unsafe { libc::getpid() };
    let run = move || {
        // SAFETY: PR_SET_PDEATHSIG takes a signal number, no memory.
        cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) })?;
        // SAFETY: getppid takes no arguments and cannot fail.
        if unsafe { libc::getppid() } != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: between fork and exec the closure only calls prctl and getppid,
    // which are async-signal-safe, and allocates nothing on success.
    unsafe { cmd.pre_exec(run) };
}

/// Exits at once without unwinding or flushing: the parent side of a fork.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Whether fds 0 and 1 are the same open socket, so one fd serves both
/// directions. Numbers: they are looked at before anything owns them.
pub fn same_file(a: RawFd, b: RawFd) -> bool {
    let stat = |fd| {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat fills st when it returns 0.
        let r = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
        // SAFETY: initialised by the successful fstat above.
        (r == 0).then(|| unsafe { st.assume_init() })
    };
    match (stat(a), stat(b)) {
        (Some(x), Some(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

/// Removes an environment variable. Only called from `main` before any thread
/// exists (edition 2024 makes `remove_var` unsafe for that reason).
pub fn unsetenv(name: &str) {
    // SAFETY: single-threaded at start-up: nothing reads the environment concurrently.
    unsafe { std::env::remove_var(name) };
}

pub fn getppid() -> libc::pid_t {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getppid() }
}

/// Calls a `get*_r` function with a buffer that grows on ERANGE (a group with
/// many members can need more than any fixed size). "No such entry" is
/// `Ok(None)`, including the errors some NSS modules report it as.
fn lookup_r(mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, bool)) -> io::Result<bool> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    loop {
        match call(&mut buf) {
            (0, found) => return Ok(found),
            (libc::ERANGE, _) if buf.len() < 16 << 20 => buf.resize(buf.len() * 2, 0),
            (libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM, _) => return Ok(false),
            (e, _) => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// A user's uid and primary gid, by name (getpwnam_r).
pub fn user_by_name(name: &str) -> io::Result<Option<(libc::uid_t, libc::gid_t)>> {
    let cname = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: all-zero is a valid `struct passwd` (null pointers, zero ids).
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let found = lookup_r(|buf| {
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf's length is passed.
        let r = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        (r, !result.is_null())
    })?;
    Ok(found.then_some((pwd.pw_uid, pwd.pw_gid)))
}

/// A user's primary gid, by uid (getpwuid_r).
pub fn user_by_id(uid: libc::uid_t) -> io::Result<Option<libc::gid_t>> {
    // SAFETY: all-zero is a valid `struct passwd`.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let found = lookup_r(|buf| {
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf's length is passed.
        let r =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        (r, !result.is_null())
    })?;
    Ok(found.then_some(pwd.pw_gid))
}

/// A group's gid, by name (getgrnam_r).
pub fn group_by_name(name: &str) -> io::Result<Option<libc::gid_t>> {
    let cname = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: all-zero is a valid `struct group`.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let found = lookup_r(|buf| {
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf's length is passed.
        let r = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        (r, !result.is_null())
    })?;
    Ok(found.then_some(grp.gr_gid))
}

/// Drops privileges for good: supplementary groups to just `gid`, then the
/// gid, then the uid (in that order: after setuid we could no longer change
/// groups). A uid comes with its gid (see `privileges`); a gid may come alone.
pub fn change_identity(uid: Option<libc::uid_t>, gid: Option<libc::gid_t>) -> io::Result<()> {
    if let Some(gid) = gid {
        // SAFETY: one gid read from a valid pointer.
        cvt(unsafe { libc::setgroups(1, &gid) })?;
        // SAFETY: plain system call.
        cvt(unsafe { libc::setgid(gid) })?;
    }
    if let Some(uid) = uid {
        // SAFETY: plain system call.
        cvt(unsafe { libc::setuid(uid) })?;
    }
    Ok(())
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (capped at what the kernel
/// allows a process, `fs.nr_open`), so that a server with many clients does not
/// run out of descriptors long before the administrator's limit. Returns the
/// soft limits before and after.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is valid for writes of one struct rlimit.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    let before = lim.rlim_cur;
    let want = if lim.rlim_max == libc::RLIM_INFINITY {
        // An unlimited hard limit cannot be a soft one for NOFILE: cap it at
        // nr_open (read only then: this is on the cold-start path).
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
            .unwrap_or(1 << 20)
    } else {
        lim.rlim_max
    };
    if want > lim.rlim_cur {
        let new = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: new is a valid struct rlimit, only read by the kernel.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) })?;
        lim.rlim_cur = want;
    }
    Ok((before, lim.rlim_cur))
}

/// Makes `cmd` start with the soft RLIMIT_NOFILE we were given (`soft`), not
/// the one we raised for ourselves: programs that close every descriptor up to
/// the limit, or use select(2), expect the usual one.
pub fn nofile_limit_on_exec(cmd: &mut std::process::Command, soft: u64) {
    use std::os::unix::process::CommandExt;
    let run = move || {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: lim is valid for writes of one struct rlimit.
        cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
        lim.rlim_cur = soft.min(lim.rlim_max);
        // SAFETY: lim is a valid struct rlimit, only read by the kernel.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
        Ok(())
    };
    // SAFETY: between fork and exec the closure only calls getrlimit and
    // setrlimit, which are async-signal-safe, and allocates nothing.
    unsafe { cmd.pre_exec(run) };
}

/// The soft RLIMIT_NOFILE: the lowest fd number we cannot open.
pub fn nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is valid for writes of one struct rlimit.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    Ok(lim.rlim_cur)
}

/// The lowest descriptor number not in use: at start-up, when descriptors are
/// allocated densely from 0, about how many are open. (Cheaper than listing
/// /proc/self/fd, on the path of a socket-activated cold start.)
pub fn lowest_free_fd(open: BorrowedFd) -> io::Result<usize> {
    let open = open.as_raw_fd();
    // SAFETY: F_DUPFD_CLOEXEC on an open fd creates a new fd, closed below.
    let fd = cvt(unsafe { libc::fcntl(open, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: fd was just created by us and is owned by nothing else.
    unsafe { libc::close(fd) };
    Ok(fd as usize)
}

/// The effective user id: nbdkit's rule for where TLS certificates live
/// (root: /etc/pki/nbdkit; anyone else: under $HOME) follows it.
pub fn geteuid() -> libc::uid_t {
    // SAFETY: geteuid takes nothing, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// Runs `f` when the process exits through `exit` (returning from `main`, or
/// `std::process::exit`), after Rust has flushed stdout. The test harness
/// uses it to list, after libtest's summary, the tests that did not really
/// run: libtest has no hook of its own there.
pub fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: atexit only records a function pointer, valid for the whole
    // life of the process (a plain fn item).
    if unsafe { libc::atexit(f) } != 0 {
        return Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            "atexit: no room",
        ));
    }
    Ok(())
}
