//! From a parsed command line to a running server: open the backend, take or
//! bind the sockets, go into the background, write the pidfile, say we are
//! ready, start `--run`, and hand over to the event loop.

use std::os::fd::{AsFd, OwnedFd};

use crate::activation::{self, Inherited};
use crate::backend::{self, Backend};
use crate::budget::host;
use crate::captive;
use crate::cli::{Allocator, BackendSpec, Config, show_size};
use crate::daemon::{self, Cleanup, ReadyPipe};
use crate::error::Error;
use crate::export::Export;
use crate::filter::Stack;
use crate::listen::{self, Listener};
use crate::logging::{self, Sink};
use crate::notify::Notifier;
use crate::privileges::Identity;
use crate::proto::option::HANDSHAKE_FLAGS;
use crate::server::{Server, Setup};
use crate::sys;

/// Serves until the server stops; returns the exit code. `activated` is the
/// number of inherited sockets, if socket activation is on; `parent` is our
/// parent as it was when we started (for `--exit-with-parent`).
pub fn serve(
    cfg: &Config,
    activated: Option<u32>,
    notify_socket: Option<String>,
    parent: libc::pid_t,
) -> Result<i32, Error> {
    if cfg.threads_ignored {
        log::warn!("-t/--threads is ignored: one thread serves every connection");
    }
    let identity = Identity::resolve(cfg.user.as_deref(), cfg.group.as_deref())?;
    // Certificates are read before privileges are dropped (as nbdkit).
    #[cfg(feature = "tls")]
    let tls = load_tls(cfg)?;
    let nofile = raise_nofile_limit();
    let (backend, export, filters) = storage(cfg)?;
    let memory_budget = memory_budget(cfg);
    let signals = catch_signals()?;
    let mut cleanup = Cleanup::default();
    let (listeners, connections, port) = sockets(cfg, activated, &mut cleanup)?;
    let unix_socket = cleanup.unix_socket.clone();
    let ep = captive::Endpoint {
        unix: unix_socket.as_deref(),
        port,
        ipaddr: cfg.ipaddr.as_deref(),
        export_name: &cfg.export_name,
        tls: cfg.tls.mode(),
    };
    if cfg.print_uri {
        print_uri(&ep)?;
    }
    let detached = detach(cfg, activated.is_some(), identity, parent, &mut cleanup)?;
    if let Detached::ParentGone = detached {
        return Ok(0);
    }
    let setup = Setup {
        export,
        filters,
        accept_once: cfg.single && !listeners.is_empty(),
        listeners,
        connections,
        signals,
        oldstyle: cfg.oldstyle,
        idle_timeout: cfg.idle_timeout,
        busy_poll: cfg.busy_poll,
        notifier: Notifier::new(notify_socket),
        handshake_timeout: cfg.handshake_timeout,
        request_timeout: cfg.request_timeout,
        memory_budget,
        max_connections: cfg.max_connections,
        #[cfg(feature = "tls")]
        tls,
    };
    let notifier = setup.notifier.clone();
    let mut server = Server::new(setup, backend).map_err(Error::setup("event loop"))?;
    notifier.ready();
    if let Detached::Background(ready) = detached {
        announce_from_background(cfg, ready)?;
    }
    if let Some(cmd) = &cfg.run {
        server.set_run_child(captive::spawn(cmd, &ep, nofile)?);
    }
    let code = server.run();
    // First the server, whose filters finish writing their files, then the
    // socket and the pidfile: whoever waits for those to go finds the files
    // complete.
    drop(server);
    drop(cleanup);
    Ok(code)
}

/// What is served: the backend under its layers, its export, the filters.
/// Built before anything is bound or forked: a filter that cannot start (a
/// partition not found, an offset past the end) is one line and exit 1,
/// and its files (logfile=, statsfile=) open by the names given, from the
/// directory we were started in (the background runs from /). Layers of
/// storage (cow) go over the backend first, the stages in front.
fn storage(cfg: &Config) -> Result<(Box<dyn Backend>, Export, Stack), Error> {
    let mut filters = crate::filter::build(&cfg.filters).map_err(Error::usage)?;
    let layers = crate::filter::Layers::sort(&mut filters);
    let backend = open_backend(cfg, layers.read_only_below())?;
    let mut backend = layers.wrap(backend)?;
    let mut export = export_of(cfg, backend.as_ref());
    let mut filters = Stack::new(filters);
    filters
        .prepare(backend.as_mut(), &mut export)
        .map_err(Error::usage)?;
    Ok((backend, export, filters))
}

/// SIGHUP is a clean quit too (as nbdkit): its default would kill us and
/// leave the socket and the pidfile behind. Caught before the socket is
/// bound, so no signal can leave it behind either.
fn catch_signals() -> Result<OwnedFd, Error> {
    let stops = [libc::SIGINT, libc::SIGTERM, libc::SIGQUIT, libc::SIGHUP];
    // SIGUSR1 asks for a report (its default would kill us, as SIGHUP's).
    let others = [libc::SIGCHLD, libc::SIGUSR1];
    sys::signal_pipe(&[&stops[..], &others[..]].concat()).map_err(Error::setup("signals"))
}

/// Where `detach` left the process.
enum Detached {
    Foreground,
    /// Forked: the parent waits on this until the server is ready.
    Background(ReadyPipe),
    /// `--exit-with-parent`, and the parent has already gone: just exit.
    ParentGone,
}

/// Goes into the background unless told not to, writes the pidfile, drops
/// privileges and follows the parent (`--exit-with-parent`).
fn detach(
    cfg: &Config,
    activated: bool,
    identity: Option<Identity>,
    parent: libc::pid_t,
    cleanup: &mut Cleanup,
) -> Result<Detached, Error> {
    let pidfile = cfg
        .pidfile
        .as_ref()
        .map(std::path::absolute)
        .transpose()
        .map_err(Error::setup("-P"))?;
    let detached = if cfg.stays_in_foreground(activated) {
        Detached::Foreground
    } else {
        Detached::Background(daemon::fork_into_background()?)
    };
    // Written while we may still write where root can (/run).
    if let Some(p) = &pidfile {
        daemon::write_pidfile(p)?;
    }
    if let Some(id) = identity {
        drop_privileges(&id, cleanup)?;
    }
    // After the privilege drop, which clears the parent-death signal.
    if cfg.exit_with_parent && !follow_parent(parent)? {
        return Ok(Detached::ParentGone);
    }
    Ok(detached)
}

/// In the background: logs go to syslog unless told otherwise, stdio is let
/// go, and the parent that forked us learns that we serve.
fn announce_from_background(cfg: &Config, ready: ReadyPipe) -> Result<(), Error> {
    if cfg.log.is_none() {
        // In the background nobody reads our stderr (as nbdkit).
        logging::set_sink(Sink::Syslog);
    }
    // Keep stderr where it was asked for: -v (debug lines), or --log=stderr.
    daemon::detach_stdio(cfg.verbose || cfg.log == Some(Sink::Stderr))?;
    ready.signal();
    Ok(())
}

/// The TLS configuration, when `--tls` is on or required: the certificates
/// and key are loaded (and checked against each other) now, so that any
/// problem is one line at start, not a failed handshake later.
#[cfg(feature = "tls")]
fn load_tls(cfg: &Config) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, Error> {
    if cfg.tls.mode() == crate::tls::TlsMode::Off {
        return Ok(None);
    }
    let config = crate::tls::server_config(&cfg.tls)?;
    log::debug!(
        "TLS: {:?}, verify peer: {}",
        cfg.tls.mode(),
        cfg.tls.verify_peer
    );
    Ok(Some(config))
}

/// Many clients need many descriptors: take all the administrator allows.
/// Returns the limit we were given, for `--run` to get back.
fn raise_nofile_limit() -> Option<u64> {
    match sys::raise_nofile_limit() {
        Ok((before, after)) => {
            // Already at the hard limit is the usual case and worth no line.
            if after != before {
                log::debug!("RLIMIT_NOFILE: {before} raised to {after}");
            }
            Some(before)
        }
        Err(e) => {
            log::warn!("cannot raise RLIMIT_NOFILE: {e}");
            None
        }
    }
}

/// `-u`/`-g`. The private directory of `-U -` goes to the new user, so it can
/// be removed at exit; a socket or pidfile the user cannot remove stays behind
/// (as with nbdkit).
fn drop_privileges(id: &Identity, cleanup: &Cleanup) -> Result<(), Error> {
    if cleanup.tmpdir.is_some() {
        for p in [&cleanup.tmpdir, &cleanup.unix_socket]
            .into_iter()
            .flatten()
        {
            id.give(p)?;
        }
    }
    id.assume()
}

/// `--exit-with-parent`: asks for SIGTERM when the parent exits. False if it
/// has already gone (before the kernel could be asked to tell us).
fn follow_parent(parent: libc::pid_t) -> Result<bool, Error> {
    sys::exit_with_parent().map_err(Error::setup("--exit-with-parent"))?;
    if sys::getppid() != parent {
        log::info!("--exit-with-parent: the parent has already exited");
        return Ok(false);
    }
    Ok(true)
}

/// `--print-uri`: the URI on stdout, before we fork, so a script can read it
/// from our output.
fn print_uri(ep: &captive::Endpoint) -> Result<(), Error> {
    use std::io::Write;
    let uri = captive::uri(ep);
    if uri.is_empty() {
        return Ok(()); // -s or socket activation: there is no address to tell
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{uri}")
        .and_then(|()| out.flush())
        .map_err(Error::setup("--print-uri"))
}

/// The backend, read-only with `-r` or when a layer over it must never
/// write to it (`read_only_below`: cow).
fn open_backend(cfg: &Config, read_only_below: bool) -> Result<Box<dyn Backend>, Error> {
    let read_only = cfg.read_only || read_only_below;
    Ok(match &cfg.backend {
        BackendSpec::Memory {
            size,
            allocator: Allocator::Sparse,
        } => Box::new(backend::Memory::new(*size)),
        BackendSpec::Memory {
            size,
            allocator: Allocator::Malloc { mlock },
        } => Box::new(malloc(*size, *mlock)?),
        BackendSpec::Null(size) => Box::new(backend::Null::new(*size)),
        BackendSpec::Pattern(size) => Box::new(backend::Pattern::new(*size)),
        BackendSpec::File(path, options) => Box::new(
            backend::File::open(path, read_only, crate::aio::sync_asked(), *options).map_err(
                |e| {
                    if e.kind() == std::io::ErrorKind::IsADirectory {
                        return Error::usage(format!(
                            "file: {} is a directory: give a file or block device, \
                             or dir={0} to serve each file in it",
                            path.display()
                        ));
                    }
                    Error::Setup(format!("file: {}", path.display()), e)
                },
            )?,
        ),
        BackendSpec::Dir(path, options) => Box::new(
            backend::Dir::open(path, read_only, crate::aio::sync_asked(), *options)
                .map_err(Error::setup(format!("file: dir={}", path.display())))?,
        ),
        BackendSpec::Curl(spec) => Box::new(
            backend::Curl::open(spec)
                .map_err(|e| Error::Setup("curl".into(), std::io::Error::other(e)))?,
        ),
    })
}

/// `memory allocator=malloc[,mlock=true]`: the whole disk now, so that a
/// disk the host cannot hold fails here, with a message, not at some write.
fn malloc(size: u64, mlock: bool) -> Result<backend::Malloc, Error> {
    let m = backend::Malloc::new(size).map_err(|e| {
        Error::usage(format!(
            "memory: allocator=malloc cannot take {} at start: {} \
             (allocator=sparse takes memory only for what is written)",
            show_size(size),
            crate::error::plain(&e)
        ))
    })?;
    if mlock {
        m.lock().map_err(|e| {
            let limit = match sys::memlock_limit() {
                Ok(Some(l)) => format!("the locked-memory limit (ulimit -l) is {}", show_size(l)),
                _ => "the locked-memory limit is ulimit -l's".to_string(),
            };
            Error::usage(format!(
                "memory: mlock=true: cannot lock {} in RAM: {}; {limit}: raise it \
                 (ulimit -l, LimitMEMLOCK= in a systemd unit), or run with \
                 CAP_IPC_LOCK (as root)",
                show_size(size),
                crate::error::plain(&e)
            ))
        })?;
        log::debug!("memory: {} allocated and locked in RAM", show_size(size));
    } else {
        log::debug!("memory: {} allocated", show_size(size));
    }
    Ok(m)
}

/// `--memory-budget`, or the default that fits the host: below the memory
/// limit of our cgroup (or a fraction of the physical memory), less what a
/// `memory` backend may itself come to hold (see `budget::host`).
fn memory_budget(cfg: &Config) -> usize {
    if let Some(b) = cfg.memory_budget {
        log::debug!("memory budget: {} MiB (--memory-budget)", b >> 20);
        return usize::try_from(b).unwrap_or(usize::MAX);
    }
    let disk = match cfg.backend {
        BackendSpec::Memory { size, .. } => size,
        _ => 0,
    };
    let limit = host::memory_limit();
    if let host::Limit::Cgroup(l) = limit
        && host::overcommitted(limit, disk)
    {
        log::warn!(
            "the memory backend ({} MiB) cannot be filled within the memory limit ({} MiB)",
            disk >> 20,
            l >> 20
        );
    }
    let budget = host::default_budget(limit, disk).max(crate::budget::MIN_BUDGET as u64);
    log::debug!("memory budget: {} MiB ({limit:?})", budget >> 20);
    usize::try_from(budget).unwrap_or(usize::MAX)
}

/// What is served, as clients will see it.
fn export_of(cfg: &Config, backend: &dyn Backend) -> Export {
    let caps = backend::Caps {
        read_only: cfg.read_only || backend.caps().read_only,
        ..backend.caps()
    };
    Export {
        name: cfg.export_name.clone().into_bytes(),
        description: cfg.description.clone().map(String::into_bytes),
        no_sr: cfg.no_sr,
        // --mask-handshake keeps what it names of the flags nbdlite offers
        // (it is 16 bits on the wire; higher bits mean nothing yet).
        handshake_flags: HANDSHAKE_FLAGS & cfg.mask_handshake as u16,
        tls: cfg.tls.mode(),
        // max_request: lowered by a small budget (Server::new)
        ..Export::new(backend.size(), caps)
    }
}

/// Listening sockets and already-connected clients, and the TCP port bound:
/// inherited under socket activation, stdin/stdout with `-s`, else bound.
fn sockets(cfg: &Config, activated: Option<u32>, cleanup: &mut Cleanup) -> Result<Sockets, Error> {
    Ok(match activated {
        Some(n) => {
            let (l, c) = inherited(activation::take(n)?);
            (l, c, None)
        }
        None if cfg.single => stdio()?,
        None => {
            let b = listen::bind(cfg)?;
            cleanup.unix_socket = b.unix_path.clone();
            cleanup.tmpdir = b.tmpdir.clone();
            (b.listeners, Vec::new(), b.port)
        }
    })
}

type Connections = Vec<(OwnedFd, Option<OwnedFd>)>;
type Sockets = (Vec<Listener>, Connections, Option<u16>);

/// Sorts inherited sockets into listeners and ready-made connections.
fn inherited(fds: Vec<Inherited>) -> (Vec<Listener>, Connections) {
    let mut listeners = Vec::new();
    let mut connections = Vec::new();
    for i in fds {
        match i {
            Inherited::Listener { fd, domain } => listeners.push(Listener::inherited(fd, domain)),
            Inherited::Connection(fd) => connections.push((fd, None)),
        }
    }
    (listeners, connections)
}

/// `-s`: the client is on stdin/stdout (one socket, or two pipes or files).
/// An inetd in "wait" mode (`systemd-socket-activate --inetd` without
/// `--accept`) hands us its listening socket instead: we accept one client
/// from it. nbd-server's inetd convention (nbd-tester-client's `-I` mode)
/// puts the client's socket on stdin alone, stdout left on a log file or
/// closed: replies then go back on that socket, the only way to the client.
fn stdio() -> Result<Sockets, Error> {
    let stdin = sys::claim_inherited(0).map_err(Error::setup("-s: fd 0"))?;
    sys::set_nonblocking(stdin.as_fd()).map_err(Error::setup("-s: fd 0"))?;
    let stdin_socket = sys::socket_kind(stdin.as_fd()).ok();
    if let Some(kind) = stdin_socket
        && kind.listening
    {
        return Ok((
            vec![Listener::inherited(stdin, kind.domain)],
            Vec::new(),
            None,
        ));
    }
    // fd 1 is only looked at here (closed: not a socket); it is claimed below
    // when it is the write side.
    let stdout_socket = sys::socket_kind(std::io::stdout().as_fd()).is_ok();
    let stdout = if sys::same_file(0, 1) {
        None
    } else if stdin_socket.is_some() && !stdout_socket {
        log::debug!("-s: stdin is a socket and stdout is not: replying on stdin's socket");
        None
    } else {
        let fd = sys::claim_inherited(1).map_err(Error::setup("-s: fd 1"))?;
        sys::set_nonblocking(fd.as_fd()).map_err(Error::setup("-s: fd 1"))?;
        Some(fd)
    };
    Ok((Vec::new(), vec![(stdin, stdout)], None))
}
