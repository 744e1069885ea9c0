//! The command line, nbdkit-style: `nbdlite [OPTIONS] BACKEND [KEY=VALUE ...]`.
//!
//! Parses a list of arguments (never the process environment) into a `Config`,
//! so that tests can call it directly.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;
use crate::logging::Sink;

pub const DEFAULT_PORT: u16 = 10809;
/// See `Server::spin`: long enough to catch a client's next request at queue
/// depth 1 on a local socket, short enough to cost little when none comes.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);
/// How long a client may take over the handshake before it is dropped.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub const HELP: &str = "\
nbdlite - a single-threaded NBD server

usage: nbdlite [OPTIONS] BACKEND [KEY=VALUE ...]

Options:
  -f, --foreground        do not fork into the background
  -U, --unix PATH         listen on a Unix socket (- for a private random one)
  -p, --port PORT         TCP port (default 10809)
  -i, --ipaddr ADDR       listen on this address only
  -s, --single, --stdin   serve one client on stdin/stdout, then exit
  -r, --readonly          refuse writes
  -e, --exportname NAME   the export's name (default \"\")
      --description TEXT  the export's description
  -P, --pidfile PATH      write the server's pid here once it is listening
  -n, --newstyle          fixed newstyle handshake (default)
  -o, --oldstyle          oldstyle handshake
      --run CMD           run CMD (with $uri set), exit when it exits; implies
                          -f and, without -U/-p/-i, a private Unix socket
      --print-uri         print the export's NBD URI on stdout once listening
  -u, --user USER         change to this user (name or uid) after binding
  -g, --group GROUP       change to this group (name or gid) after binding
      --log DEST          stderr, syslog or null (default: stderr in the
                          foreground, syslog once in the background)
      --exit-with-parent  exit when the parent process exits
      --idle-timeout SECS exit once no client has been connected for SECS
      --busy-poll USECS   spin up to this long for the next request before
                          sleeping; adapts to the traffic (default 50; 0: never)
      --handshake-timeout SECS
                          drop clients that have not finished the handshake
                          after SECS (default 10; 0: never)
      --max-connections N refuse clients beyond N at once (default: as many
                          as the file descriptor limit allows)
      --no-sr             do not offer structured replies
      --tls off           TLS is not supported: only 'off' is accepted
  -t, --threads N         accepted for nbdkit compatibility; ignored
  -v, --verbose           debug messages (always on stderr)
      --help              this text
      --version           print the version

Backends:
  memory [size=]SIZE      sparse RAM disk
  file [file=]PATH        a regular file or block device
  null [size=]SIZE        reads zeroes, discards writes
  pattern [size=]SIZE     read-only; each 8-byte word holds its own offset

SIZE is bytes with an optional suffix: s (512), k/K, M, G, T, P, E (powers of 1024).
Socket activation (LISTEN_FDS/LISTEN_PID) and NOTIFY_SOCKET are supported; see nbdlite(1).
";

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Serve(Box<Config>),
    Help,
    Version,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixSocket {
    Path(PathBuf),
    /// `-U -`: a private socket in a fresh temporary directory.
    Random,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    Memory(u64),
    File(PathBuf),
    Null(u64),
    Pattern(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub foreground: bool,
    pub unix: Option<UnixSocket>,
    pub port: Option<u16>,
    pub ipaddr: Option<String>,
    pub single: bool,
    pub read_only: bool,
    pub export_name: String,
    pub description: Option<String>,
    pub pidfile: Option<PathBuf>,
    pub verbose: bool,
    pub oldstyle: bool,
    pub run: Option<String>,
    pub exit_with_parent: bool,
    pub idle_timeout: Option<Duration>,
    pub busy_poll: Duration,
    pub no_sr: bool,
    pub print_uri: bool,
    pub user: Option<String>,
    pub group: Option<String>,
    /// `--log`; `None` means the default, which depends on forking.
    pub log: Option<Sink>,
    /// `-t N` was given: warn that it is ignored.
    pub threads_ignored: bool,
    pub backend: BackendSpec,
    /// Hardening: `--handshake-timeout` (None: never) and `--max-connections`
    /// (None: what the descriptor limit allows).
    pub handshake_timeout: Option<Duration>,
    pub max_connections: Option<usize>,
}

impl Config {
    /// Whether the process stays in the foreground.
    pub fn stays_in_foreground(&self, activated: bool) -> bool {
        self.foreground || self.single || self.run.is_some() || self.exit_with_parent || activated
    }
}

/// Parses `args` (without the program name). `activated` says socket activation
/// is on, which rules out every flag that chooses where to listen.
pub fn parse(args: Vec<OsString>, activated: bool) -> Result<Command, Error> {
    let mut p = pico_args::Arguments::from_vec(args);
    let bad = |e: pico_args::Error| Error::usage(e.to_string());
    // Options that take values first: combined short flags are only safe after them.
    let unix: Option<String> = p.opt_value_from_str(["-U", "--unix"]).map_err(bad)?;
    let port: Option<String> = p.opt_value_from_str(["-p", "--port"]).map_err(bad)?;
    let ipaddr: Option<String> = p.opt_value_from_str(["-i", "--ipaddr"]).map_err(bad)?;
    let export_name: Option<String> = p.opt_value_from_str(["-e", "--exportname"]).map_err(bad)?;
    let description: Option<String> = p.opt_value_from_str("--description").map_err(bad)?;
    let pidfile: Option<PathBuf> = p
        .opt_value_from_os_str(["-P", "--pidfile"], |s| Ok::<_, String>(PathBuf::from(s)))
        .map_err(bad)?;
    let run: Option<String> = p.opt_value_from_str("--run").map_err(bad)?;
    let idle: Option<String> = p.opt_value_from_str("--idle-timeout").map_err(bad)?;
    let tls: Option<String> = p.opt_value_from_str("--tls").map_err(bad)?;
    let threads: Option<String> = p.opt_value_from_str(["-t", "--threads"]).map_err(bad)?;
    let busy_poll: Option<String> = p.opt_value_from_str("--busy-poll").map_err(bad)?;
    let user: Option<String> = p.opt_value_from_str(["-u", "--user"]).map_err(bad)?;
    let group: Option<String> = p.opt_value_from_str(["-g", "--group"]).map_err(bad)?;
    let log: Option<String> = p.opt_value_from_str("--log").map_err(bad)?;
    let (handshake_timeout, max_connections) = hardening(&mut p)?;

    if p.contains("--help") || p.contains("-h") {
        return Ok(Command::Help);
    }
    if p.contains(["-V", "--version"]) {
        return Ok(Command::Version);
    }
    let foreground = p.contains(["-f", "--foreground"]);
    let single = p.contains(["-s", "--single"]) | p.contains("--stdin");
    let read_only = p.contains(["-r", "--readonly"]);
    let verbose = p.contains(["-v", "--verbose"]);
    let newstyle = p.contains(["-n", "--newstyle"]);
    let oldstyle = p.contains(["-o", "--oldstyle"]);
    let exit_with_parent = p.contains("--exit-with-parent");
    let no_sr = p.contains("--no-sr");
    let print_uri = p.contains("--print-uri");

    if activated {
        for (given, flag) in [
            (ipaddr.is_some(), "-i"),
            (port.is_some(), "-p"),
            (single, "-s"),
            (unix.is_some(), "-U"),
            (run.is_some(), "--run"),
        ] {
            if given {
                return Err(Error::usage(format!(
                    "cannot use socket activation with {flag} flag"
                )));
            }
        }
    }
    if newstyle && oldstyle {
        return Err(Error::usage("-n and -o cannot be used together"));
    }
    if single && (unix.is_some() || port.is_some() || ipaddr.is_some() || run.is_some()) {
        return Err(Error::usage("-s cannot be used with -U, -p, -i or --run"));
    }
    match tls.as_deref() {
        None | Some("off") => {}
        Some("on" | "require") => {
            return Err(Error::usage("TLS is not supported (only --tls=off)"));
        }
        Some(other) => {
            return Err(Error::usage(format!(
                "--tls: expecting off, on or require, not '{other}'"
            )));
        }
    }
    if let Some(t) = &threads
        && t.parse::<u32>().is_err()
    {
        return Err(Error::usage(format!("-t: not a number: '{t}'")));
    }
    let log = log
        .map(|l| {
            Sink::parse(&l).ok_or_else(|| {
                Error::usage(format!(
                    "--log: expecting stderr, syslog or null, not '{l}'"
                ))
            })
        })
        .transpose()?;
    for (flag, v) in [("-u", &user), ("-g", &group)] {
        if v.as_deref() == Some("") {
            return Err(Error::usage(format!("{flag}: empty name")));
        }
    }
    let port = port.map(|s| parse_port(&s)).transpose()?;
    let idle_timeout = idle.map(|s| parse_seconds(&s)).transpose()?;
    let busy_poll = match busy_poll {
        None => DEFAULT_BUSY_POLL,
        Some(s) => match s.parse::<u64>() {
            Ok(us) if us <= 1_000_000 => Duration::from_micros(us),
            _ => {
                return Err(Error::usage(format!(
                    "--busy-poll: '{s}' is not a number of microseconds (0 to 1000000)"
                )));
            }
        },
    };
    let mut unix = unix.map(|u| {
        if u == "-" {
            UnixSocket::Random
        } else {
            UnixSocket::Path(PathBuf::from(u))
        }
    });
    if run.is_some() && unix.is_none() && port.is_none() && ipaddr.is_none() {
        // A captive server is private unless asked otherwise.
        unix = Some(UnixSocket::Random);
    }
    let export_name = export_name.unwrap_or_default();
    for (what, s) in [
        ("export name", Some(&export_name)),
        ("description", description.as_ref()),
    ] {
        if s.is_some_and(|s| s.len() > 4096) {
            return Err(Error::usage(format!("{what} is longer than 4096 bytes")));
        }
    }

    let rest: Vec<String> = p
        .finish()
        .into_iter()
        .map(|a| {
            a.into_string()
                .map_err(|a| Error::usage(format!("argument is not UTF-8: {a:?}")))
        })
        .collect::<Result<_, _>>()?;
    if let Some(opt) = rest.iter().find(|a| a.starts_with('-') && a.len() > 1) {
        return Err(Error::usage(format!(
            "unknown option: {opt} (see nbdlite --help)"
        )));
    }
    let Some((name, params)) = rest.split_first() else {
        return Err(Error::usage(
            "no backend given: try 'nbdlite -f memory 1G' (see nbdlite --help)",
        ));
    };
    let backend = parse_backend(name, params)?;

    Ok(Command::Serve(Box::new(Config {
        foreground,
        unix,
        port,
        ipaddr,
        single,
        read_only,
        export_name,
        description,
        pidfile,
        verbose,
        oldstyle,
        run,
        exit_with_parent,
        idle_timeout,
        busy_poll,
        no_sr,
        print_uri,
        user,
        group,
        log,
        threads_ignored: threads.is_some(),
        backend,
        handshake_timeout,
        max_connections,
    })))
}

/// `--handshake-timeout SECS` (0: none) and `--max-connections N`.
fn hardening(p: &mut pico_args::Arguments) -> Result<(Option<Duration>, Option<usize>), Error> {
    let bad = |e: pico_args::Error| Error::usage(e.to_string());
    let timeout: Option<String> = p.opt_value_from_str("--handshake-timeout").map_err(bad)?;
    let max: Option<String> = p.opt_value_from_str("--max-connections").map_err(bad)?;
    let timeout = match timeout.as_deref() {
        None => Some(DEFAULT_HANDSHAKE_TIMEOUT),
        Some(s) => match s.parse::<f64>() {
            Ok(0.0) => None,
            // Under a millisecond would drop every client before it could speak.
            Ok(v) if (0.001..=1e9).contains(&v) => Some(Duration::from_secs_f64(v)),
            _ => {
                return Err(Error::usage(format!(
                    "--handshake-timeout: '{s}' is not a number of seconds (0 for none, else at least 0.001)"
                )));
            }
        },
    };
    let max = match max.as_deref() {
        None => None,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(Error::usage(format!(
                    "--max-connections: '{s}' is not a positive number"
                )));
            }
        },
    };
    Ok((timeout, max))
}

fn parse_port(s: &str) -> Result<u16, Error> {
    s.parse::<u16>()
        .map_err(|_| Error::usage(format!("-p: '{s}' is not a port number")))
}

fn parse_seconds(s: &str) -> Result<Duration, Error> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1e9 => Ok(Duration::from_secs_f64(v)),
        _ => Err(Error::usage(format!(
            "--idle-timeout: '{s}' is not a positive number of seconds"
        ))),
    }
}

/// `BACKEND [KEY=VALUE ...]`: the first bare word is the backend's main parameter.
fn parse_backend(name: &str, params: &[String]) -> Result<BackendSpec, Error> {
    let magic = match name {
        "memory" | "null" | "pattern" => "size",
        "file" => "file",
        _ => {
            return Err(Error::usage(format!(
                "unknown backend '{name}': expecting memory, file, null or pattern"
            )));
        }
    };
    let mut value: Option<&str> = None;
    for param in params {
        let (key, v) = match param.split_once('=') {
            Some((k, v)) => (k, v),
            None => (magic, param.as_str()),
        };
        if key != magic {
            return Err(Error::usage(format!("{name}: unknown parameter '{key}'")));
        }
        if value.replace(v).is_some() {
            return Err(Error::usage(format!(
                "{name}: {magic} given more than once"
            )));
        }
    }
    let Some(value) = value else {
        return Err(Error::usage(format!(
            "{name}: the {magic} parameter is required"
        )));
    };
    let size = || parse_size(value).map_err(|e| Error::usage(format!("{name}: {e}")));
    Ok(match name {
        "memory" => BackendSpec::Memory(size()?),
        "null" => BackendSpec::Null(size()?),
        "pattern" => BackendSpec::Pattern(size()?),
        _ => {
            if value.is_empty() {
                return Err(Error::usage("file: the file parameter is empty"));
            }
            BackendSpec::File(PathBuf::from(value))
        }
    })
}

/// Parses sizes like `512`, `64K`, `1M`, `10G`, `2s` (sectors). At most 2^63-1 bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, suffix) = s.split_at(digits);
    let shift = match suffix {
        "" | "b" | "B" => 0,
        "s" | "S" => 9,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        "e" | "E" => 60,
        _ => return Err(format!("could not parse size '{s}'")),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("could not parse size '{s}'"))?;
    n.checked_mul(1u64 << shift)
        .filter(|&v| v <= i64::MAX as u64)
        .ok_or_else(|| format!("size '{s}' is too large (the limit is 2^63-1 bytes)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    fn config(s: &str) -> Config {
        match parse(args(s), false) {
            Ok(Command::Serve(c)) => *c,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn error(s: &str, activated: bool) -> String {
        match parse(args(s), activated) {
            Err(e) => e.to_string(),
            Ok(c) => panic!("{s}: accepted: {c:?}"),
        }
    }

    #[test]
    fn nbdkit_service_options() {
        let c = config("-u nobody --group=nogroup --log=syslog --print-uri -t 4 memory 1M");
        assert_eq!(c.user.as_deref(), Some("nobody"));
        assert_eq!(c.group.as_deref(), Some("nogroup"));
        assert_eq!(c.log, Some(Sink::Syslog));
        assert!(c.print_uri && c.threads_ignored);
        let c = config("--threads=2 --log null memory 1M");
        assert_eq!((c.log, c.threads_ignored), (Some(Sink::Null), true));
        assert_eq!(config("memory 1M").log, None);
        assert!(error("--log=journal memory 1M", false).contains("--log"));
        assert!(error("-u= memory 1M", false).contains("-u"));
    }

    #[test]
    fn run_defaults_to_a_private_socket() {
        assert_eq!(
            config("--run true memory 1M").unix,
            Some(UnixSocket::Random)
        );
        let c = config("--run true -p 0 memory 1M");
        assert_eq!((c.unix, c.port), (None, Some(0)));
        assert_eq!(config("--run true -i ::1 memory 1M").unix, None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("3s"), Ok(1536));
        assert_eq!(parse_size("7E"), Ok(7 << 60));
        assert_eq!(parse_size("9223372036854775807"), Ok(i64::MAX as u64));
        for bad in [
            "",
            "G",
            "1X",
            "8E",
            "-1",
            "1.5G",
            "9223372036854775808",
            "99999999999999999999",
            " 1",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backends_and_magic_parameters() {
        assert_eq!(config("memory 1G").backend, BackendSpec::Memory(1 << 30));
        assert_eq!(
            config("memory size=1M").backend,
            BackendSpec::Memory(1 << 20)
        );
        assert_eq!(config("null 0").backend, BackendSpec::Null(0));
        assert_eq!(config("pattern size=1s").backend, BackendSpec::Pattern(512));
        assert_eq!(
            config("file disk.img").backend,
            BackendSpec::File("disk.img".into())
        );
        assert_eq!(
            config("file file=/a=b").backend,
            BackendSpec::File("/a=b".into())
        );
        assert!(error("memory", false).contains("size parameter is required"));
        assert!(error("memory 1G 2G", false).contains("more than once"));
        assert!(error("memory colour=red", false).contains("unknown parameter"));
        assert!(error("memory lots", false).contains("could not parse size"));
        assert!(error("disk 1G", false).contains("unknown backend"));
        assert!(error("-f", false).contains("no backend"));
    }

    #[test]
    fn options_anywhere() {
        let c = config("-U - memory 1G --run true -r");
        assert_eq!(c.unix, Some(UnixSocket::Random));
        assert_eq!(c.run.as_deref(), Some("true"));
        assert!(c.read_only);
        let c = config("-fv -p 0 -e disk --description=hello memory 1M");
        assert!(c.foreground && c.verbose);
        assert_eq!(c.port, Some(0));
        assert_eq!(c.export_name, "disk");
        assert_eq!(c.description.as_deref(), Some("hello"));
        let c = config("--idle-timeout 2.5 -t 16 --tls=off --no-sr --busy-poll 0 memory 1M");
        assert_eq!(c.idle_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(c.busy_poll, Duration::ZERO);
        assert_eq!(config("memory 1").busy_poll, DEFAULT_BUSY_POLL);
        assert!(error("--busy-poll -1 memory 1M", false).contains("busy-poll"));
        assert!(c.no_sr);
        assert!(error("--bogus memory 1M", false).contains("unknown option: --bogus"));
        assert!(error("-p http memory 1M", false).contains("not a port"));
        assert!(error("--tls=require memory 1M", false).contains("TLS"));
        assert!(error("--idle-timeout 0 memory 1M", false).contains("idle-timeout"));
        assert!(error("-s -U x memory 1M", false).contains("-s cannot"));
        assert!(matches!(parse(args("--help"), false), Ok(Command::Help)));
        assert!(matches!(
            parse(args("--version"), false),
            Ok(Command::Version)
        ));
    }

    #[test]
    fn hardening_options() {
        let c = config("memory 1M");
        assert_eq!(c.handshake_timeout, Some(DEFAULT_HANDSHAKE_TIMEOUT));
        assert_eq!(c.max_connections, None);
        let c = config("--handshake-timeout 0 --max-connections=3 memory 1M");
        assert_eq!(c.handshake_timeout, None);
        assert_eq!(c.max_connections, Some(3));
        let c = config("--handshake-timeout=1.5 memory 1M");
        assert_eq!(c.handshake_timeout, Some(Duration::from_millis(1500)));
        assert!(error("--handshake-timeout -1 memory 1M", false).contains("handshake-timeout"));
        assert!(error("--handshake-timeout x memory 1M", false).contains("handshake-timeout"));
        assert!(error("--max-connections 0 memory 1M", false).contains("max-connections"));
        assert!(error("--max-connections lots memory 1M", false).contains("max-connections"));
    }

    #[test]
    fn activation_forbids_listening_flags() {
        for (flags, name) in [
            ("-i ::1", "-i"),
            ("-p 1", "-p"),
            ("-s", "-s"),
            ("-U x", "-U"),
            ("--run true", "--run"),
        ] {
            let msg = error(&format!("{flags} memory 1M"), true);
            assert_eq!(
                msg,
                format!("cannot use socket activation with {name} flag")
            );
        }
        assert!(matches!(
            parse(args("-P /tmp/p -v memory 1M"), true),
            Ok(Command::Serve(_))
        ));
    }
}
