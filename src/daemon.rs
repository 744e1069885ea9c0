//! Going into the background like nbdkit: one fork once we are listening; the
//! parent exits only when the child is ready (pidfile written), so a script can
//! connect as soon as `nbdlite` returns.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::sys::{self, Forked};

/// The child's end of the "I am ready" pipe.
pub struct ReadyPipe(io::PipeWriter);

impl ReadyPipe {
    /// Tells the waiting parent to exit 0.
    pub fn signal(mut self) {
        let _ = self.0.write_all(b"1");
    }
}

/// Forks. The parent waits for the child's word and exits (0 if the child got
/// ready, 1 if it died first); only the child returns.
pub fn fork_into_background() -> Result<ReadyPipe, Error> {
    let (mut rx, tx) = io::pipe().map_err(Error::setup("pipe"))?;
    match sys::fork().map_err(Error::setup("fork"))? {
        Forked::Parent => {
            drop(tx);
            let mut b = [0u8; 1];
            let code = if rx.read_exact(&mut b).is_ok() { 0 } else { 1 };
            sys::exit_now(code)
        }
        Forked::Child => {
            drop(rx);
            sys::setsid().map_err(Error::setup("setsid"))?;
            std::env::set_current_dir("/").map_err(Error::setup("chdir /"))?;
            Ok(ReadyPipe(tx))
        }
    }
}

/// Points stdin and stdout (and stderr unless `keep_stderr`) at /dev/null, as a
/// daemon must: the terminal that started us may go away.
pub fn detach_stdio(keep_stderr: bool) -> Result<(), Error> {
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(Error::setup("/dev/null"))?;
    let targets: &[i32] = if keep_stderr { &[0, 1] } else { &[0, 1, 2] };
    for &fd in targets {
        sys::dup2(null.as_fd(), fd).map_err(Error::setup("dup2"))?;
    }
    Ok(())
}

/// Writes our pid, atomically (temp file + rename) so a reader never sees it half-written.
pub fn write_pidfile(path: &Path) -> Result<(), Error> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        writeln!(f, "{}", std::process::id())?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Setup(path.display().to_string(), e)
    })
}

/// Files to remove when we exit, however we exit (except the forked parent,
/// which leaves them to the child). The pidfile stays, as nbdkit's does:
/// scripts read it after the server has gone to check that it has.
#[derive(Default)]
pub struct Cleanup {
    pub unix_socket: Option<PathBuf>,
    pub tmpdir: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = &self.unix_socket {
            let _ = std::fs::remove_file(p);
        }
        if let Some(d) = &self.tmpdir {
            let _ = std::fs::remove_dir(d);
        }
    }
}
