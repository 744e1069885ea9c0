//! The command line, nbdkit-style: `nbdlite [OPTIONS] BACKEND [KEY=VALUE ...]`,
//! with nbdkit's spellings of each option.
//!
//! Parses a list of arguments (never the process environment) into a `Config`,
//! so that tests can call it directly. `values` turns option values into
//! settings, `backend` reads the backend and its parameter, `help` holds what
//! nbdlite says about itself.

mod backend;
pub mod curl;
mod filters;
mod help;
mod values;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;
use crate::filter::Spec;
use crate::logging::Sink;
use crate::proto::MAX_STRING;
use crate::tls::{self, TlsOptions};

pub use backend::{Allocator, BackendSpec, parse_size, show_size};
pub use curl::{CurlSpec, Secret};
pub use help::{
    HELP, LONG_OPTIONS, SHORT_OPTIONS, dump_config, dump_plugin, help, option_list, tls_available,
    version,
};
pub use values::{DEFAULT_BUSY_POLL, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};
use values::{flag, os_value, value};

pub const DEFAULT_PORT: u16 = 10809;

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Serve(Box<Config>),
    /// `--help`, or `BACKEND --help` (a backend that exists).
    Help(Option<&'static backend::Kind>),
    /// `--version`, or `BACKEND --version` (a backend that exists).
    Version(Option<String>),
    DumpConfig,
    /// `BACKEND --dump-plugin`.
    DumpPlugin(&'static backend::Kind),
    /// `--short-options` or `--long-options`: the list to print.
    Options(&'static [&'static str]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixSocket {
    Path(PathBuf),
    /// `-U -`: a private socket in a fresh temporary directory.
    Random,
}

/// `-4` / `-6`: TCP on one address family only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub foreground: bool,
    pub unix: Option<UnixSocket>,
    pub port: Option<u16>,
    pub ipaddr: Option<String>,
    /// `-4`/`-6`; `None`: both families.
    pub family: Option<Family>,
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
    /// `-D NAME.FLAG=N`, accepted as nbdkit's are: warn that they do nothing.
    pub debug_flags: Vec<String>,
    /// `--filter`s, first nearest the client, each with its parameters.
    pub filters: Vec<Spec>,
    pub backend: BackendSpec,
    /// Hardening: `--handshake-timeout` (None: never) and `--max-connections`
    /// (None: what the descriptor limit allows).
    pub handshake_timeout: Option<Duration>,
    pub max_connections: Option<usize>,
    /// `--request-timeout` (None: never): a client that leaves a request
    /// half-sent, with nothing more for this long, is dropped.
    pub request_timeout: Option<Duration>,
    /// `--memory-budget`, in bytes (None: the default that fits the host).
    pub memory_budget: Option<u64>,
    /// `--tls`, `--tls-certificates`, `--tls-verify-peer`, `--tls-psk`.
    pub tls: TlsOptions,
    /// `--mask-handshake`: the newstyle handshake flags that may be offered
    /// (all bits set by default; nbdkit's option, for testing clients).
    pub mask_handshake: u32,
}

impl Config {
    /// Whether the process stays in the foreground.
    pub fn stays_in_foreground(&self, activated: bool) -> bool {
        self.foreground || self.single || self.run.is_some() || self.exit_with_parent || activated
    }
}

/// The options that take a value, as given (each under any of its spellings).
struct Values {
    unix: Option<String>,
    port: Option<String>,
    ipaddr: Option<String>,
    export_name: Option<String>,
    description: Option<String>,
    pidfile: Option<OsString>,
    run: Option<String>,
    idle: Option<String>,
    tls: TlsOptions,
    threads: Option<String>,
    busy_poll: Option<String>,
    user: Option<String>,
    group: Option<String>,
    log: Option<String>,
    handshake_timeout: Option<String>,
    max_connections: Option<String>,
    request_timeout: Option<String>,
    memory_budget: Option<String>,
    mask_handshake: Option<String>,
    debug: Vec<String>,
    filters: Vec<String>,
}

impl Values {
    /// Takes them off the command line first: combined short flags (`-fv`)
    /// are only safe to look for once no value is left that could look like one.
    fn take(p: &mut pico_args::Arguments) -> Result<Values, Error> {
        Ok(Values {
            unix: value(p, &["-U", "--unix"])?,
            port: value(p, &["-p", "--port"])?,
            ipaddr: value(p, &["-i", "--ipaddr", "--ip-addr"])?,
            export_name: value(p, &["-e", "--exportname", "--export-name", "--export"])?,
            description: value(p, &["--description"])?,
            pidfile: os_value(p, &["-P", "--pidfile", "--pid-file"])?,
            run: value(p, &["--run"])?,
            idle: value(p, &["--idle-timeout"])?,
            tls: tls::parse(p)?,
            threads: value(p, &["-t", "--threads"])?,
            busy_poll: value(p, &["--busy-poll"])?,
            user: value(p, &["-u", "--user"])?,
            group: value(p, &["-g", "--group"])?,
            log: value(p, &["--log"])?,
            handshake_timeout: value(p, &["--handshake-timeout"])?,
            max_connections: value(p, &["--max-connections"])?,
            request_timeout: value(p, &["--request-timeout"])?,
            memory_budget: value(p, &["--memory-budget"])?,
            mask_handshake: value(p, &["--mask-handshake"])?,
            debug: p
                .values_from_str(["-D", "--debug"])
                .map_err(|e| Error::usage(e.to_string()))?,
            filters: p
                .values_from_str("--filter")
                .map_err(|e| Error::usage(e.to_string()))?,
        })
    }
}

/// Parses `args` (without the program name). `activated` says socket activation
/// is on, which rules out every flag that chooses where to listen.
pub fn parse(args: Vec<OsString>, activated: bool) -> Result<Command, Error> {
    let mut p = pico_args::Arguments::from_vec(filters::spaced(args));
    let v = Values::take(&mut p)?;
    // -4 and -6: the last one wins (as nbdkit), so their order matters.
    let rest = p.finish();
    let family = last_family(&rest);
    let mut p = pico_args::Arguments::from_vec(rest);
    flag(&mut p, &["-4", "--ipv4-only"]);
    flag(&mut p, &["-6", "--ipv6-only"]);
    for (spellings, command) in [
        (&["--short-options"][..], Command::Options(SHORT_OPTIONS)),
        (&["--long-options"], Command::Options(LONG_OPTIONS)),
        (&["--dump-config"], Command::DumpConfig),
    ] {
        if flag(&mut p, spellings) {
            return Ok(command);
        }
    }
    let f = Flags::take(&mut p);
    let rest = remaining(p)?;
    if f.help || f.version || f.dump_plugin {
        return about(&f, &rest);
    }
    check_combinations(&v, &f, activated)?;
    let mask_handshake = mask_handshake(&v)?;
    if let Some(t) = &v.threads {
        values::threads(t)?;
    }
    for d in &v.debug {
        values::debug_flag(d)?;
    }
    let port = v.port.as_deref().map(values::port).transpose()?;
    let unix = unix_socket(&v, port);
    let export_name = v.export_name.clone().unwrap_or_default();
    check_lengths(&export_name, v.description.as_deref())?;
    unknown_option(&rest)?;
    let Some((name, params)) = rest.split_first() else {
        return Err(Error::usage(
            "no backend given: try 'nbdlite -f memory 1G' (see nbdlite --help)",
        ));
    };
    let (filters, params) = filters::sort(&v.filters, name, params)?;
    let backend = backend::parse(name, &params)?;
    if let BackendSpec::Dir(..) = backend {
        check_dir(&filters, f.oldstyle)?;
    }
    let server = Server {
        unix,
        port,
        family,
        export_name,
        mask_handshake,
        filters,
        backend,
    };
    Ok(Command::Serve(Box::new(config(v, f, server)?)))
}

/// The flags that take no value.
struct Flags {
    help: bool,
    dump_plugin: bool,
    version: bool,
    foreground: bool,
    single: bool,
    read_only: bool,
    verbose: bool,
    newstyle: bool,
    oldstyle: bool,
    exit_with_parent: bool,
    no_sr: bool,
    print_uri: bool,
}

impl Flags {
    fn take(p: &mut pico_args::Arguments) -> Flags {
        Flags {
            help: flag(p, &["--help", "-h"]),
            dump_plugin: flag(p, &["--dump-plugin"]),
            version: flag(p, &["-V", "--version"]),
            foreground: flag(p, &["-f", "--foreground", "--no-fork"]),
            single: flag(p, &["-s", "--single", "--stdin"]),
            read_only: flag(p, &["-r", "--readonly", "--read-only"]),
            verbose: flag(p, &["-v", "--verbose"]),
            newstyle: flag(p, &["-n", "--newstyle", "--new-style"]),
            oldstyle: flag(p, &["-o", "--oldstyle", "--old-style"]),
            exit_with_parent: flag(p, &["--exit-with-parent"]),
            no_sr: flag(p, &["--no-sr"]),
            print_uri: flag(p, &["--print-uri"]),
        }
    }
}

/// What the server is, apart from the options' plain values.
struct Server {
    unix: Option<UnixSocket>,
    port: Option<u16>,
    family: Option<Family>,
    export_name: String,
    mask_handshake: u32,
    filters: Vec<Spec>,
    backend: BackendSpec,
}

/// `--help`, `--version`, `--dump-plugin`: about a backend, if one is named
/// (it must exist).
fn about(f: &Flags, rest: &[String]) -> Result<Command, Error> {
    let named = rest.iter().find(|a| !a.starts_with('-'));
    let kind = named.map(|n| backend::lookup(n)).transpose()?;
    if f.help {
        return Ok(Command::Help(kind));
    }
    if f.version {
        return Ok(Command::Version(named.cloned()));
    }
    dump_plugin_of(kind, rest, f.single)
}

/// Options that cannot go together.
fn check_combinations(v: &Values, f: &Flags, activated: bool) -> Result<(), Error> {
    if activated {
        for (given, flag) in [
            (v.ipaddr.is_some(), "-i"),
            (v.port.is_some(), "-p"),
            (f.single, "-s"),
            (v.unix.is_some(), "-U"),
            (v.run.is_some(), "--run"),
        ] {
            if given {
                return Err(Error::usage(format!(
                    "cannot use socket activation with {flag} flag"
                )));
            }
        }
    }
    if f.newstyle && f.oldstyle {
        return Err(Error::usage("-n and -o cannot be used together"));
    }
    let listens = v.unix.is_some() || v.port.is_some() || v.ipaddr.is_some();
    if f.single && (listens || v.run.is_some()) {
        return Err(Error::usage("-s cannot be used with -U, -p, -i or --run"));
    }
    v.tls.check_oldstyle(f.oldstyle)?;
    for (flag, name) in [("-u", &v.user), ("-g", &v.group)] {
        if name.as_deref() == Some("") {
            return Err(Error::usage(format!("{flag}: empty name")));
        }
    }
    Ok(())
}

/// Filters that read or reshape what is below them once, at start-up (a
/// partition table, a size to cut or extend, an overlay as large as the
/// disk): with `file dir=` there is nothing below them then, and each
/// export has a size of its own.
const SHAPED_AT_START: [&str; 4] = ["cow", "offset", "partition", "truncate"];

/// `file dir=`: each file is an export of its own, chosen by name as a
/// client enters it. Oldstyle clients cannot name one, and the filters of
/// `SHAPED_AT_START` cannot be set up for each.
fn check_dir(filters: &[Spec], oldstyle: bool) -> Result<(), Error> {
    if oldstyle {
        return Err(Error::usage(
            "file dir=: -o cannot be used: oldstyle clients cannot name the file they want",
        ));
    }
    if let Some(f) = filters.iter().find(|f| SHAPED_AT_START.contains(&f.name)) {
        return Err(Error::usage(format!(
            "file dir=: the {} filter cannot be used: it is set up once, at start, for one \
             export, and each file of the directory is an export of its own",
            f.name
        )));
    }
    Ok(())
}

/// `--mask-handshake` (all flags offered by default).
fn mask_handshake(v: &Values) -> Result<u32, Error> {
    let mask = v
        .mask_handshake
        .as_deref()
        .map_or(Ok(u32::MAX), values::mask_handshake)?;
    if mask & 1 == 0 && v.tls.mode() == tls::TlsMode::Require {
        return Err(Error::usage(
            "--mask-handshake: without bit 0 (fixed newstyle) no client can start \
             TLS, which --tls=require demands",
        ));
    }
    Ok(mask)
}

/// `-U PATH` or `-U -`; a captive server (`--run`) is private unless told
/// where to listen.
fn unix_socket(v: &Values, port: Option<u16>) -> Option<UnixSocket> {
    let unix = v.unix.as_ref().map(|u| match u.as_str() {
        "-" => UnixSocket::Random,
        path => UnixSocket::Path(PathBuf::from(path)),
    });
    let elsewhere = port.is_some() || v.ipaddr.is_some();
    match (unix, v.run.is_some() && !elsewhere) {
        (None, true) => Some(UnixSocket::Random),
        (unix, _) => unix,
    }
}

/// The export's name and description, which the protocol bounds.
fn check_lengths(export_name: &str, description: Option<&str>) -> Result<(), Error> {
    for (what, s) in [
        ("export name", Some(export_name)),
        ("description", description),
    ] {
        if s.is_some_and(|s| s.len() > MAX_STRING) {
            return Err(Error::usage(format!(
                "{what} is longer than {MAX_STRING} bytes"
            )));
        }
    }
    Ok(())
}

/// The configuration, from the options' values, the flags and the rest.
fn config(v: Values, f: Flags, s: Server) -> Result<Config, Error> {
    Ok(Config {
        foreground: f.foreground,
        unix: s.unix,
        port: s.port,
        ipaddr: v.ipaddr,
        family: s.family,
        single: f.single,
        read_only: f.read_only,
        export_name: s.export_name,
        description: v.description,
        pidfile: v.pidfile.map(PathBuf::from),
        verbose: f.verbose,
        oldstyle: f.oldstyle,
        run: v.run,
        exit_with_parent: f.exit_with_parent,
        idle_timeout: v.idle.as_deref().map(values::idle_timeout).transpose()?,
        busy_poll: values::busy_poll(v.busy_poll.as_deref())?,
        no_sr: f.no_sr,
        print_uri: f.print_uri,
        user: v.user,
        group: v.group,
        log: v.log.as_deref().map(values::log).transpose()?,
        threads_ignored: v.threads.is_some(),
        debug_flags: v.debug,
        filters: s.filters,
        backend: s.backend,
        handshake_timeout: values::handshake_timeout(v.handshake_timeout.as_deref())?,
        max_connections: v
            .max_connections
            .as_deref()
            .map(values::max_connections)
            .transpose()?,
        request_timeout: values::request_timeout(v.request_timeout.as_deref())?,
        memory_budget: v
            .memory_budget
            .as_deref()
            .map(values::memory_budget)
            .transpose()?,
        tls: v.tls,
        mask_handshake: s.mask_handshake,
    })
}

/// An option left once every known one is taken is an error.
fn unknown_option(rest: &[String]) -> Result<(), Error> {
    let Some(opt) = rest.iter().find(|a| a.starts_with('-') && a.len() > 1) else {
        return Ok(());
    };
    Err(Error::usage(format!(
        "unknown option: {opt} (see nbdlite --help)"
    )))
}

/// `BACKEND --dump-plugin`: the backend must be named, and its parameters, if
/// any, must be ones it takes (as nbdkit hands them to the plugin first);
/// none is required. Not with `-s`, whose stdout is the client's.
fn dump_plugin_of(
    kind: Option<&'static backend::Kind>,
    rest: &[String],
    single: bool,
) -> Result<Command, Error> {
    let Some(kind) = kind else {
        return Err(Error::usage(
            "--dump-plugin: name a backend, as in 'nbdlite memory --dump-plugin' \
             (--dump-config describes the server)",
        ));
    };
    if single {
        return Err(Error::usage(
            "--dump-plugin cannot be used with -s (its output would go to the client)",
        ));
    }
    unknown_option(rest)?;
    let params: Vec<String> = rest
        .iter()
        .skip_while(|a| **a != kind.name)
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .cloned()
        .collect();
    backend::given(kind, &params)?;
    Ok(Command::DumpPlugin(kind))
}

/// The family of the last `-4`/`-6` (`--ipv4-only`/`--ipv6-only`), also
/// inside combined short flags (`-f6`). Only flags are left in `args` by now,
/// besides the backend and its parameters, which do not start with `-`.
fn last_family(args: &[OsString]) -> Option<Family> {
    let mut family = None;
    for a in args.iter().filter_map(|a| a.to_str()) {
        match a {
            "--ipv4-only" => family = Some(Family::V4),
            "--ipv6-only" => family = Some(Family::V6),
            _ if a.starts_with('-') && !a.starts_with("--") => {
                for c in a.chars() {
                    match c {
                        '4' => family = Some(Family::V4),
                        '6' => family = Some(Family::V6),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    family
}

/// What is left once every option is taken: the backend and its parameters
/// (and any unknown option, which the caller reports).
fn remaining(p: pico_args::Arguments) -> Result<Vec<String>, Error> {
    p.finish()
        .into_iter()
        .map(|a| {
            a.into_string()
                .map_err(|a| Error::usage(format!("argument is not UTF-8: {a:?}")))
        })
        .collect()
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
        assert!(c.no_sr);
        assert!(error("--bogus memory 1M", false).contains("unknown option: --bogus"));
        assert!(error("--filter=nosuch memory 1M", false).contains("unknown filter 'nosuch'"));
        assert!(error("--filter nosuch memory 1M", false).contains("unknown filter 'nosuch'"));
        let c = config("--filter=delay --filter error memory 1M rdelay=1 error-rate=1%");
        let names: Vec<&str> = c.filters.iter().map(|f| f.name).collect();
        assert_eq!(names, ["delay", "error"]);
        assert!(error("-p http memory 1M", false).contains("not a port"));
        assert!(error("--tls=maybe memory 1M", false).contains("--tls"));
        if cfg!(feature = "tls") {
            assert!(error("--tls=require -o memory 1M", false).contains("oldstyle"));
            let c = config("--tls=require --tls-certificates=/x --tls-verify-peer memory 1M");
            assert_eq!(c.tls.mode(), tls::TlsMode::Require);
            assert!(c.tls.verify_peer);
        } else {
            assert!(error("--tls=require memory 1M", false).contains("without TLS"));
        }
        assert!(error("--idle-timeout 0 memory 1M", false).contains("idle-timeout"));
        assert!(error("-s -U x memory 1M", false).contains("-s cannot"));
        assert!(matches!(
            parse(args("--help"), false),
            Ok(Command::Help(None))
        ));
        assert!(error("-f", false).contains("no backend"));
    }

    #[test]
    fn hardening_options() {
        let c = config("memory 1M");
        assert_eq!(c.handshake_timeout, Some(DEFAULT_HANDSHAKE_TIMEOUT));
        assert_eq!(c.request_timeout, Some(DEFAULT_REQUEST_TIMEOUT));
        assert_eq!((c.max_connections, c.memory_budget), (None, None));
        let c = config("--handshake-timeout 0 --max-connections=3 memory 1M");
        assert_eq!(c.handshake_timeout, None);
        assert_eq!(c.max_connections, Some(3));
        let c = config("--handshake-timeout=1.5 memory 1M");
        assert_eq!(c.handshake_timeout, Some(Duration::from_millis(1500)));
        assert!(error("--handshake-timeout -1 memory 1M", false).contains("handshake-timeout"));
        assert!(error("--handshake-timeout x memory 1M", false).contains("handshake-timeout"));
        assert!(error("--max-connections 0 memory 1M", false).contains("max-connections"));
        assert!(error("--max-connections lots memory 1M", false).contains("max-connections"));
        let c = config("--request-timeout=0 --memory-budget 256M memory 1M");
        assert_eq!(
            (c.request_timeout, c.memory_budget),
            (None, Some(256 << 20))
        );
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

    #[test]
    fn nbdkit_spellings() {
        let c = config(
            "--read-only --export=disk --pid-file /tmp/p --no-fork --ip-addr ::1 \
             --new-style memory 1M",
        );
        assert!(c.read_only && c.foreground && !c.oldstyle);
        assert_eq!(c.export_name, "disk");
        assert_eq!(c.pidfile, Some(PathBuf::from("/tmp/p")));
        assert_eq!(c.ipaddr.as_deref(), Some("::1"));
        assert_eq!(config("--export-name x memory 1M").export_name, "x");
        assert_eq!(config("--pidfile=/p memory 1M").pidfile, Some("/p".into()));
        assert!(config("--old-style memory 1M").oldstyle);
        assert!(error("--new-style --old-style memory 1M", false).contains("-n and -o"));
        assert!(error("-e a --export b memory 1M", false).contains("more than once"));
        let c = config("-D nbdkit.backend.datapath=0 --debug=a.b=1 -t 4 memory 1M");
        assert_eq!(c.debug_flags, ["nbdkit.backend.datapath=0", "a.b=1"]);
        assert!(c.threads_ignored);
        assert!(error("-D foo memory 1M", false).contains("NAME.FLAG=N"));
        assert!(error("-t x memory 1M", false).contains("-t"));
    }

    #[test]
    fn mask_handshake() {
        assert_eq!(config("memory 1M").mask_handshake, u32::MAX);
        assert_eq!(config("--mask-handshake=0 memory 1M").mask_handshake, 0);
        assert_eq!(config("--mask-handshake 0x2 memory 1M").mask_handshake, 2);
        assert!(error("--mask-handshake=x memory 1M", false).contains("not a number"));
        if cfg!(feature = "tls") {
            let e = error("--mask-handshake=2 --tls=require memory 1M", false);
            assert!(e.contains("no client can start TLS"), "{e}");
            let c = config("--mask-handshake=3 --tls=require memory 1M");
            assert_eq!(c.mask_handshake, 3);
        }
    }

    #[test]
    fn dump_plugin() {
        let dump = |s: &str| match parse(args(s), false) {
            Ok(Command::DumpPlugin(k)) => k.name,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(dump("memory --dump-plugin"), "memory");
        assert_eq!(dump("--dump-plugin file"), "file");
        // Parameters need not be given, nor their values be right, as with
        // nbdkit; their keys must be the backend's.
        assert_eq!(dump("-f memory 1G allocator=zstd --dump-plugin"), "memory");
        for (bad, msg) in [
            ("--dump-plugin", "name a backend"),
            ("--dump-plugin -s null", "cannot be used with -s"),
            (
                "memory colour=red --dump-plugin",
                "unknown parameter 'colour'",
            ),
            ("nosuch --dump-plugin", "unknown backend 'nosuch'"),
            ("memory --dump-plugin --bogus", "unknown option: --bogus"),
        ] {
            assert!(error(bad, false).contains(msg), "{bad}");
        }
    }

    /// `--short-options` and `--long-options` list every option the parser
    /// takes and `--help` shows, under every spelling, and nothing else.
    #[test]
    fn option_lists_match_the_parser_and_help() {
        let list = |s: &str| match parse(args(s), false) {
            Ok(Command::Options(l)) => l,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(list("--short-options"), SHORT_OPTIONS);
        assert_eq!(list("--long-options"), LONG_OPTIONS);
        for opt in SHORT_OPTIONS.iter().chain(LONG_OPTIONS) {
            if let Err(e) = parse(args(&format!("{opt} memory 1M")), false) {
                assert!(!e.to_string().starts_with("unknown option"), "{opt}: {e}");
            }
        }
        let mut in_help: Vec<&str> = HELP
            .split_whitespace()
            .map(|w| w.trim_start_matches('(').trim_end_matches([',', ':', ')']))
            .filter(|w| {
                let long = w.strip_prefix("--").is_some_and(|n| {
                    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
                let short =
                    w.len() == 2 && w.starts_with('-') && w.as_bytes()[1].is_ascii_alphanumeric();
                long || short
            })
            .filter(|w| !matches!(*w, "--short-options" | "--long-options"))
            .collect();
        in_help.sort();
        in_help.dedup();
        let mut listed: Vec<&str> = SHORT_OPTIONS.iter().chain(LONG_OPTIONS).copied().collect();
        listed.sort();
        assert_eq!(in_help, listed);
    }

    #[test]
    fn last_of_ipv4_and_ipv6_only_wins() {
        assert_eq!(config("memory 1M").family, None);
        assert_eq!(config("-4 memory 1M").family, Some(Family::V4));
        assert_eq!(config("--ipv6-only memory 1M").family, Some(Family::V6));
        assert_eq!(config("-4 -6 memory 1M").family, Some(Family::V6));
        assert_eq!(
            config("-6 -f --ipv4-only memory 1M").family,
            Some(Family::V4)
        );
        let c = config("-f6v4 memory 1M");
        assert_eq!(c.family, Some(Family::V4));
        assert!(c.foreground && c.verbose);
        // a value that looks like the flag is not one
        assert_eq!(config("-e -6 memory 1M").family, None);
    }

    #[test]
    fn version_help_and_dump_config() {
        let version = |s: &str| match parse(args(s), false) {
            Ok(Command::Version(b)) => b,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(version("--version"), None);
        assert_eq!(version("-V"), None);
        assert_eq!(version("memory --version").as_deref(), Some("memory"));
        assert_eq!(version("-f null 1M --version").as_deref(), Some("null"));
        assert!(error("nosuch --version", false).contains("unknown backend 'nosuch'"));
        assert!(matches!(
            parse(args("--dump-config"), false),
            Ok(Command::DumpConfig)
        ));
        assert!(matches!(
            parse(args("-h memory"), false),
            Ok(Command::Help(Some(k))) if k.name == "memory"
        ));
    }
}
