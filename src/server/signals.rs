//! Signals, as bytes on a pipe the Poll watches, and the `--run` command,
//! whose exit (SIGCHLD) ends the server with its status. SIGUSR1 asks for a
//! report, and the server goes on.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Child;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::sys;

/// What the signals that arrived mean for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT, SIGTERM, SIGQUIT, SIGHUP: stop.
    Stop(libc::c_int),
    /// The `--run` command exited; the server exits with this status.
    RunExited(i32),
    /// SIGUSR1: a summary line in the log, and the filters' reports.
    Report,
}

pub struct Signals {
    /// The read end of the signal pipe (see `sys::signal_pipe`).
    pipe: OwnedFd,
    run_child: Option<Child>,
}

impl Signals {
    pub fn new(pipe: OwnedFd, registry: &Registry, token: Token) -> io::Result<Signals> {
        registry.register(&mut SourceFd(&pipe.as_raw_fd()), token, Interest::READABLE)?;
        Ok(Signals {
            pipe,
            run_child: None,
        })
    }

    /// The `--run` command: its exit ends the server, with its status.
    pub fn set_run_child(&mut self, child: Child) {
        self.run_child = Some(child);
    }

    /// Asks the `--run` command to end (SIGTERM): a second signal came while the
    /// server was waiting for it.
    pub fn end_run_child(&mut self) {
        if let Some(child) = &self.run_child {
            log::info!("ending the --run command");
            if let Err(e) = sys::terminate(child.id()) {
                log::warn!("--run command: kill: {e}");
            }
        }
    }

    /// Everything the pipe holds, in the order it came.
    pub fn take(&mut self) -> Vec<Signal> {
        let mut found = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match sys::read(self.pipe.as_fd(), &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    for &sig in &buf[..n] {
                        match libc::c_int::from(sig) {
                            libc::SIGCHLD => found.extend(self.reap_run_child()),
                            libc::SIGUSR1 => found.push(Signal::Report),
                            sig => found.push(Signal::Stop(sig)),
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break, // EAGAIN: drained
            }
        }
        found
    }

    /// The `--run` command's status, if it is the child that exited.
    fn reap_run_child(&mut self) -> Option<Signal> {
        let child = self.run_child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt;
                let code = status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(1);
                log::debug!("--run command exited: {status}");
                self.run_child = None;
                Some(Signal::RunExited(code))
            }
            Ok(None) => None,
            Err(e) => {
                log::warn!("waitpid: {e}");
                None
            }
        }
    }
}
