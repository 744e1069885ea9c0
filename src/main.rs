//! nbdlite: a single-threaded NBD server. `main` reads the environment and the
//! command line, sets up the backend and the sockets, and hands over to the
//! event loop in `server`.

mod activation;
mod backend;
mod buf;
mod captive;
mod cli;
mod conn;
mod daemon;
mod error;
mod export;
mod handshake;
mod listen;
mod notify;
mod proto;
mod server;
mod sys;
mod transmission;

use std::os::fd::OwnedFd;

use activation::{Detected, Inherited};
use backend::Backend;
use cli::{BackendSpec, Command, Config};
use daemon::Cleanup;
use error::Error;
use export::Export;
use listen::Listener;
use notify::Notifier;
use server::{Server, Setup};

fn main() {
    let code = match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nbdlite: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// The environment variables we consume, read and removed before anything else
/// runs, so that no child (`--run`) inherits them.
struct Environment {
    listen_pid: Option<String>,
    listen_fds: Option<String>,
    listen_fdnames: Option<String>,
    notify_socket: Option<String>,
}

impl Environment {
    fn take() -> Environment {
        let take = |name: &str| {
            let v = std::env::var(name).ok();
            if v.is_some() {
                sys::unsetenv(name);
            }
            v
        };
        Environment {
            listen_pid: take("LISTEN_PID"),
            listen_fds: take("LISTEN_FDS"),
            listen_fdnames: take("LISTEN_FDNAMES"),
            notify_socket: take("NOTIFY_SOCKET"),
        }
    }
}

fn real_main() -> Result<i32, Error> {
    let env = Environment::take();
    let activated = match activation::detect(
        env.listen_pid.as_deref(),
        env.listen_fds.as_deref(),
        std::process::id(),
    ) {
        Detected::Fds(n) => {
            activation::set_cloexec(n)?;
            Some(n)
        }
        Detected::Ignored(why) => {
            eprintln!("nbdlite: warning: {why} (ignored)");
            None
        }
        Detected::None => None,
    };
    let cfg = match cli::parse(std::env::args_os().skip(1).collect(), activated.is_some())? {
        Command::Help => {
            print!("{}", cli::HELP);
            return Ok(0);
        }
        Command::Version => {
            println!("nbdlite {}", env!("CARGO_PKG_VERSION"));
            return Ok(0);
        }
        Command::Serve(cfg) => cfg,
    };
    init_logging(cfg.verbose);
    if let Some(n) = activated {
        log::debug!(
            "socket activation: {n} fd(s), names {:?}",
            activation::names(env.listen_fdnames.as_deref())
        );
    }
    let backend = open_backend(&cfg)?;
    let export = Export {
        name: cfg.export_name.clone().into_bytes(),
        description: cfg.description.clone().map(String::into_bytes),
        size: backend.size(),
        caps: backend::Caps {
            read_only: cfg.read_only || backend.caps().read_only,
            ..backend.caps()
        },
        no_sr: cfg.no_sr,
    };
    let mut cleanup = Cleanup::default();
    let (listeners, connections, port) = match activated {
        Some(n) => {
            let (l, c) = inherited(activation::take(n)?);
            (l, c, None)
        }
        None if cfg.single => (Vec::new(), vec![stdio_connection()?], None),
        None => {
            let b = listen::bind(&cfg)?;
            cleanup.unix_socket = b.unix_path.clone();
            cleanup.tmpdir = b.tmpdir.clone();
            (b.listeners, Vec::new(), b.port)
        }
    };
    let signals = sys::signal_pipe(&[libc::SIGINT, libc::SIGTERM, libc::SIGQUIT, libc::SIGCHLD])
        .map_err(Error::setup("signals"))?;
    if cfg.exit_with_parent {
        sys::exit_with_parent().map_err(Error::setup("--exit-with-parent"))?;
    }
    let pidfile = cfg
        .pidfile
        .as_ref()
        .map(std::path::absolute)
        .transpose()
        .map_err(Error::setup("-P"))?;
    let ready = if cfg.stays_in_foreground(activated.is_some()) {
        None
    } else {
        Some(daemon::fork_into_background()?)
    };

    let setup = Setup {
        export,
        listeners,
        connections,
        signals,
        oldstyle: cfg.oldstyle,
        idle_timeout: cfg.idle_timeout,
        busy_poll: cfg.busy_poll,
        notifier: Notifier::new(env.notify_socket),
    };
    let notifier = setup.notifier.clone();
    let mut server = Server::new(setup, backend).map_err(Error::setup("event loop"))?;
    if let Some(p) = &pidfile {
        daemon::write_pidfile(p)?;
        cleanup.pidfile = Some(p.clone());
    }
    notifier.ready();
    if let Some(ready) = ready {
        daemon::detach_stdio(cfg.verbose)?;
        ready.signal();
    }
    if let Some(cmd) = &cfg.run {
        let ep = captive::Endpoint {
            unix: cleanup.unix_socket.as_deref(),
            port,
            ipaddr: cfg.ipaddr.as_deref(),
            export_name: &cfg.export_name,
        };
        server.set_run_child(captive::spawn(cmd, &ep)?);
    }
    let code = server.run();
    drop(cleanup);
    Ok(code)
}

fn init_logging(verbose: bool) {
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    // Only fails if a logger is already set, which nothing else does.
    let _ = simple_logger::SimpleLogger::new().with_level(level).init();
}

fn open_backend(cfg: &Config) -> Result<Box<dyn Backend>, Error> {
    Ok(match &cfg.backend {
        BackendSpec::Memory(size) => Box::new(backend::Memory::new(*size)),
        BackendSpec::Null(size) => Box::new(backend::Null::new(*size)),
        BackendSpec::Pattern(size) => Box::new(backend::Pattern::new(*size)),
        BackendSpec::File(path) => Box::new(
            backend::File::open(path, cfg.read_only)
                .map_err(Error::setup(format!("file: {}", path.display())))?,
        ),
    })
}

/// Sorts inherited sockets into listeners and ready-made connections.
type Inheritance = (Vec<Listener>, Vec<(OwnedFd, Option<OwnedFd>)>);

fn inherited(fds: Vec<Inherited>) -> Inheritance {
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

/// `-s`: the client is on stdin/stdout (one socket, or two pipes).
fn stdio_connection() -> Result<(OwnedFd, Option<OwnedFd>), Error> {
    for fd in [0, 1] {
        sys::set_nonblocking(fd).map_err(Error::setup(format!("-s: fd {fd}")))?;
    }
    // SAFETY: fds 0 and 1 are open (set_nonblocking succeeded) and nothing else
    // in this process uses them: -s reserves stdin and stdout for the client.
    let rfd = unsafe { sys::own_fd(0) };
    let wfd = if sys::same_file(0, 1) {
        None
    } else {
        // SAFETY: as above.
        Some(unsafe { sys::own_fd(1) })
    };
    Ok((rfd, wfd))
}
