//! nbdlite: a single-threaded NBD server. `main` reads the environment and the
//! command line, sets up logging, and hands over to `startup`; errors become a
//! one-line message and exit status 1.

use nbdlite::activation::{self, Detected};
use nbdlite::cli::{self, Command};
use nbdlite::error::Error;
use nbdlite::{startup, sys};

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
    startup::serve(&cfg, activated, env.notify_socket)
}

fn init_logging(verbose: bool) {
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    nbdlite::logger::init(level);
}
