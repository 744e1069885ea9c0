//! The command line, parsed into a `Config` (from a list of arguments, never the
//! process environment, so that tests can call it).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use nbdlite::cli::parse_size;

use crate::uri::{self, Address, Target};
use crate::workload::Pattern;

pub const HELP: &str = "\
nbdlite-bench - a load generator for NBD servers

usage: nbdlite-bench [OPTIONS] URI
       nbdlite-bench [OPTIONS] -U PATH | -p PORT

URI is nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH, or with
TLS nbds://HOST[:PORT]/EXPORT or nbds+unix:///EXPORT?socket=PATH.

Options:
  -c, --connections N     connections to open (default 1)
  -q, --queue-depth Q     requests in flight on each connection (default 1)
  -t, --time SECONDS      how long to measure (default 5; fractions allowed)
      --warmup SECONDS    run this long before measuring (default 0)
  -s, --size BYTES        request size, with K/M/G suffixes (default 4K)
      --rw PATTERN        read, write, randread, randwrite or randrw (default randread)
      --rwmix-read PCT    percent of reads with --rw randrw (default 50)
      --range BYTES       use the first BYTES of the export (default all of it)
      --seed N            seed for random offsets and the read/write mix (default 1)
      --threads K         split the connections over K threads (default 1)
  -U, --unix PATH         the server's Unix socket (instead of a URI)
  -p, --port PORT         the server's TCP port on localhost (instead of a URI)
  -e, --exportname NAME   the export to ask for with -U or -p (default \"\")
      --tls-certificates DIR
                          with nbds: DIR/ca-cert.pem is the CA that signed the
                          server's certificate; DIR/client-cert.pem and
                          DIR/client-key.pem, if there, are shown to the server
      --json              print the results as one JSON object
      --interval SECONDS  print a progress line on stderr this often (default:
                          each second when stderr is a terminal, else never;
                          0: never)
      --help              this text
      --version           print the version

Prints IOPS, MiB/s and latency percentiles; exits 1 if any request failed or a
connection was lost. See nbdlite-bench(1).
";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub target: Target,
    /// The URI as the user gave it (or as -U/-p/-e spell it), for the report.
    pub uri: String,
    pub connections: usize,
    pub queue_depth: usize,
    pub time: Duration,
    pub warmup: Duration,
    pub size: u64,
    pub pattern: Pattern,
    pub rwmix_read: u64,
    pub range: Option<u64>,
    pub seed: u64,
    pub threads: usize,
    pub json: bool,
    /// `--interval`: how often to print progress (zero: never); `None`: each
    /// second on a terminal.
    pub interval: Option<Duration>,
}

#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

/// Parses `args` (without the program name).
pub fn parse(args: Vec<OsString>) -> Result<Command, String> {
    let mut p = pico_args::Arguments::from_vec(args);
    let connections = opt(&mut p, ["-c", "--connections"])?;
    let queue_depth = opt(&mut p, ["-q", "--queue-depth"])?;
    let time = opt(&mut p, ["-t", "--time"])?;
    let warmup = opt(&mut p, "--warmup")?;
    let size = opt(&mut p, ["-s", "--size"])?;
    let rw = opt(&mut p, "--rw")?;
    let rwmix = opt(&mut p, "--rwmix-read")?;
    let range = opt(&mut p, "--range")?;
    let seed = opt(&mut p, "--seed")?;
    let threads = opt(&mut p, "--threads")?;
    let unix = opt(&mut p, ["-U", "--unix"])?;
    let port = opt(&mut p, ["-p", "--port"])?;
    let export = opt(&mut p, ["-e", "--exportname"])?;
    let tls_certificates = opt(&mut p, "--tls-certificates")?;
    let interval = opt(&mut p, "--interval")?;
    if p.contains(["-h", "--help"]) {
        return Ok(Command::Help);
    }
    if p.contains(["-V", "--version"]) {
        return Ok(Command::Version);
    }
    let json = p.contains("--json");
    let free: Option<String> = p.opt_free_from_str().map_err(|e| e.to_string())?;
    let rest = p.finish();
    if let Some(extra) = rest.first() {
        return Err(format!("unexpected argument '{}'", extra.to_string_lossy()));
    }

    let (mut target, uri) = target(free, unix, port, export)?;
    if let Some(dir) = tls_certificates {
        certificates(&mut target, dir)?;
    }
    let pattern = match rw {
        None => Pattern::RandRead,
        Some(r) => Pattern::parse(&r).ok_or_else(|| {
            format!("--rw: expecting read, write, randread, randwrite or randrw, not '{r}'")
        })?,
    };
    if rwmix.is_some() && pattern != Pattern::RandRw {
        return Err("--rwmix-read only applies to --rw randrw".into());
    }
    let connections = count("--connections", connections, 1, 1, 100_000)?;
    let size = match size {
        None => 4096,
        Some(s) => match parse_size(&s)? {
            n @ 1..=0xffff_ffff => n,
            _ => return Err(format!("--size: '{s}' is not between 1 byte and 4G-1")),
        },
    };
    Ok(Command::Run(Box::new(Config {
        target,
        uri,
        connections,
        queue_depth: count("--queue-depth", queue_depth, 1, 1, 65_536)?,
        time: seconds("--time", time, 5.0, false)?,
        warmup: seconds("--warmup", warmup, 0.0, true)?,
        size,
        pattern,
        rwmix_read: count("--rwmix-read", rwmix, 50, 0, 100)? as u64,
        range: range.map(|r| parse_size(&r)).transpose()?,
        seed: match seed {
            None => 1,
            Some(s) => s
                .parse()
                .map_err(|_| format!("--seed: not a number: '{s}'"))?,
        },
        threads: count("--threads", threads, 1, 1, 1024)?.min(connections),
        json,
        interval: match interval {
            None => None,
            v => Some(seconds("--interval", v, 0.0, true)?),
        },
    })))
}

/// The server to talk to: a URI, or `-U`/`-p` with `-e`.
fn target(
    free: Option<String>,
    unix: Option<String>,
    port: Option<String>,
    export: Option<String>,
) -> Result<(Target, String), String> {
    let export_given = export.is_some();
    let export = export.unwrap_or_default();
    let address = match (free, unix, port) {
        (Some(u), None, None) if !export_given => return Ok((uri::parse(&u)?, u)),
        (Some(_), _, _) => return Err("give either a URI or -U/-p/-e, not both".into()),
        (None, Some(_), Some(_)) => return Err("-U and -p cannot be used together".into()),
        (None, Some(path), None) => Address::Unix(PathBuf::from(path)),
        (None, None, Some(p)) => Address::Tcp("localhost".into(), uri::parse_port(&p)?),
        (None, None, None) => return Err("no server given: a URI, -U PATH or -p PORT".into()),
    };
    let shown = match &address {
        Address::Unix(p) => format!("nbd+unix:///{export}?socket={}", p.display()),
        Address::Tcp(h, p) => format!("nbd://{h}:{p}/{export}"),
    };
    let target = Target {
        address,
        export,
        tls: None,
    };
    Ok((target, shown))
}

/// `--tls-certificates DIR`, into the target's TLS settings.
fn certificates(target: &mut Target, dir: String) -> Result<(), String> {
    match &mut target.tls {
        _ if dir.is_empty() => Err("--tls-certificates: empty path".into()),
        None => Err("--tls-certificates needs an nbds:// or nbds+unix:// URI".into()),
        Some(t) if t.certificates.is_some() => {
            Err("give --tls-certificates or tls-certificates= in the URI, not both".into())
        }
        Some(t) => {
            t.certificates = Some(PathBuf::from(dir));
            Ok(())
        }
    }
}

/// An option's value, if given.
fn opt(
    p: &mut pico_args::Arguments,
    keys: impl Into<pico_args::Keys>,
) -> Result<Option<String>, String> {
    p.opt_value_from_str(keys).map_err(|e| e.to_string())
}

/// A whole number in `min..=max`; `default` when absent.
fn count(
    what: &str,
    v: Option<String>,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, String> {
    let Some(v) = v else {
        return Ok(default);
    };
    match v.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{what}: expecting a number from {min} to {max}, not '{v}'"
        )),
    }
}

/// Seconds as a float: positive (or zero if `zero_ok`), at most a day.
fn seconds(what: &str, v: Option<String>, default: f64, zero_ok: bool) -> Result<Duration, String> {
    let secs = match &v {
        None => default,
        Some(s) => s.parse::<f64>().unwrap_or(f64::NAN),
    };
    let ok = secs.is_finite() && secs <= 86_400.0 && (secs > 0.0 || (zero_ok && secs == 0.0));
    if !ok {
        return Err(format!(
            "{what}: expecting seconds (up to 86400), not '{}'",
            v.unwrap_or_default()
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Command, String> {
        parse(s.split_whitespace().map(OsString::from).collect())
    }

    fn config(s: &str) -> Config {
        match parse_str(s) {
            Ok(Command::Run(c)) => *c,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = config("nbd://h/x");
        assert_eq!(c.target.address, Address::Tcp("h".into(), 10809));
        assert_eq!((c.connections, c.queue_depth, c.size), (1, 1, 4096));
        assert_eq!(c.time, Duration::from_secs(5));
        assert_eq!(c.warmup, Duration::ZERO);
        assert_eq!(
            (c.pattern, c.rwmix_read, c.range),
            (Pattern::RandRead, 50, None)
        );
        assert_eq!((c.seed, c.threads, c.json), (1, 1, false));
        assert_eq!(c.interval, None);
    }

    #[test]
    fn everything() {
        let c = config(
            "-c 64 -q 2 -t 0.5 --warmup 1 -s 1M --rw randrw --rwmix-read 70 \
             --range 1G --seed 7 --threads 2 --json -U /tmp/s -e disk --interval 0.5",
        );
        assert_eq!(c.target.address, Address::Unix("/tmp/s".into()));
        assert_eq!(c.target.export, "disk");
        assert_eq!(c.uri, "nbd+unix:///disk?socket=/tmp/s");
        assert_eq!((c.connections, c.queue_depth, c.size), (64, 2, 1 << 20));
        assert_eq!(c.time, Duration::from_millis(500));
        assert_eq!(
            (c.pattern, c.rwmix_read, c.range),
            (Pattern::RandRw, 70, Some(1 << 30))
        );
        assert_eq!((c.seed, c.threads, c.json), (7, 2, true));
        assert_eq!(c.interval, Some(Duration::from_millis(500)));
        assert_eq!(config("-p 1 --interval 0").interval, Some(Duration::ZERO));
        assert_eq!(config("-p 99 --threads 8 -c 3").threads, 3);
        let c = config("--tls-certificates /pki nbds+unix:///?socket=/s");
        let tls = c.target.tls.unwrap();
        assert_eq!(tls.certificates, Some(PathBuf::from("/pki")));
        assert_eq!(tls.hostname, "localhost");
        assert!(matches!(parse_str("--help"), Ok(Command::Help)));
        assert!(matches!(parse_str("--version"), Ok(Command::Version)));
    }

    #[test]
    fn refusals() {
        for s in [
            "",
            "-c 0 -p 1",
            "-q x -p 1",
            "-t 0 -p 1",
            "-t -1 -p 1",
            "-t nan -p 1",
            "--warmup inf -p 1",
            "-s 0 -p 1",
            "-s 4G -p 1",
            "-s 4X -p 1",
            "--rw sideways -p 1",
            "--rwmix-read 50 -p 1",
            "--rw randrw --rwmix-read 101 -p 1",
            "-U /s -p 1",
            "-U /s nbd://h/",
            "-e x nbd://h/",
            "nbd://h/ extra",
            "-p 0",
            "--bogus -p 1",
            "--interval -1 -p 1",
            "--interval x -p 1",
            "--tls-certificates /pki -p 1",
            "--tls-certificates /pki nbd://h/",
            "--tls-certificates /pki nbds://h/?tls-certificates=/c",
        ] {
            assert!(parse_str(s).is_err(), "{s}");
        }
    }
}
