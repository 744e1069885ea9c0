//! nbdlite: a single-threaded NBD server. `main` reads the environment and the
//! command line, sets up logging, and hands over to `startup`; errors become a
//! one-line message and exit status 1.

#![forbid(unsafe_code)]

use nbdlite::activation::{self, Detected};
use nbdlite::cli::{self, Command};
use nbdlite::error::Error;
use nbdlite::{logging, os as sys, startup};

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
    // Before anything else: --exit-with-parent must notice a parent that died
    // before the kernel was asked to tell us.
    let parent = sys::getppid();
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
        Command::Help(backend) => {
            print!("{}", cli::help(backend));
            return Ok(0);
        }
        Command::Version(backend) => {
            print!("{}", cli::version(backend.as_deref()));
            return Ok(0);
        }
        Command::DumpConfig => {
            let exe = std::env::current_exe().ok();
            print!("{}", cli::dump_config(exe.as_deref()));
            return Ok(0);
        }
        Command::DumpPlugin(backend) => {
            let exe = std::env::current_exe().ok();
            print!("{}", cli::dump_plugin(backend, exe.as_deref()));
            return Ok(0);
        }
        Command::Options(list) => {
            print!("{}", cli::option_list(list));
            return Ok(0);
        }
        Command::Serve(cfg) => cfg,
    };
    logging::init(cfg.log.unwrap_or(logging::Sink::Stderr), cfg.verbose);
    if !cfg.debug_flags.is_empty() {
        log::warn!(
            "-D {} has no effect: nbdlite has no debug flags",
            cfg.debug_flags.join(" -D ")
        );
    }
    if let Some(n) = activated {
        log::debug!(
            "socket activation: {n} fd(s), names {:?}",
            activation::names(env.listen_fdnames.as_deref())
        );
    }
    startup::serve(&cfg, activated, env.notify_socket, parent)
}
