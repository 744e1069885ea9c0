//! What nbdlite says about itself: `--help` (with a backend: its
//! parameters too), `--version` (with or without a backend, as nbdkit does),
//! `--dump-config` and `BACKEND --dump-plugin`, the `key=value` lines tools
//! probe an nbdkit-like server with, and `--short-options`/`--long-options`,
//! what nbdkit's bash completion asks.

use std::path::Path;

use super::backend::Kind;

pub const HELP: &str = "\
nbdlite - a single-threaded NBD server

usage: nbdlite [OPTIONS] [--filter=FILTER ...] BACKEND [KEY=VALUE ...]

Options:
  -f, --foreground, --no-fork
                          do not fork into the background
  -U, --unix PATH         listen on a Unix socket (- for a private random one)
  -p, --port PORT         TCP port (default 10809)
  -i, --ipaddr, --ip-addr ADDR
                          listen on this address only
  -4, --ipv4-only         TCP on IPv4 only (-i resolves to IPv4 addresses)
  -6, --ipv6-only         TCP on IPv6 only (-i resolves to IPv6 addresses)
  -s, --single, --stdin   serve one client on stdin/stdout, then exit
  -r, --readonly, --read-only
                          refuse writes
  -e, --exportname, --export-name, --export NAME
                          the name LIST and $uri show (default \"\"); a
                          client asking for any name gets the export
                          (file dir=: the file $uri names)
      --description TEXT  the export's description
  -P, --pidfile, --pid-file PATH
                          write the server's pid here once it is listening
  -n, --newstyle, --new-style
                          fixed newstyle handshake (default)
  -o, --oldstyle, --old-style
                          oldstyle handshake
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
      --request-timeout SECS
                          drop clients that leave a request half-sent, or
                          hold replies they do not read, for SECS (default
                          30; 0: never)
      --memory-budget SIZE
                          what the server may hold for its clients, buffers,
                          socket buffers and TLS included (default: from the
                          cgroup's memory limit, else the physical memory;
                          see nbdlite(1))
      --max-connections N at most N clients at once; one beyond waits up to a
                          second for a place (default and most: as many as
                          the memory budget holds at their worst; -v says)
      --no-sr             do not offer structured replies
      --mask-handshake MASK
                          offer only these newstyle handshake flags (bit 0:
                          fixed newstyle, bit 1: no zeroes; default: both)
      --tls off|on|require
                          TLS (STARTTLS): refused, offered, or demanded before
                          any other option (default: on with
                          --tls-certificates, else off)
      --tls-certificates DIR
                          ca-cert.pem, server-cert.pem, server-key.pem and an
                          optional ca-crl.pem (default: /etc/pki/nbdkit for
                          root, else ~/.pki/nbdkit)
      --tls-verify-peer   clients must show a certificate signed by the CA
      --tls-psk FILE      not supported: rustls has no TLS-PSK (see nbdlite(1))
  -t, --threads N         accepted for nbdkit compatibility; no effect
  -D, --debug NAME.FLAG=N accepted for nbdkit compatibility; no effect
      --filter FILTER     a filter in front of the backend (the first one
                          given is nearest the client); its KEY=VALUEs mix
                          with the backend's (see Filters below)
  -v, --verbose           debug messages (always on stderr)
      --dump-config       print the build's configuration as key=value lines
      --dump-plugin       (BACKEND --dump-plugin) print what the backend is
                          and can do, as key=value lines
      --short-options, --long-options
                          list the options, one a line (for completion)
  -h, --help              this text (BACKEND --help: and its parameters)
  -V, --version           print the version (BACKEND --version: and the
                          backend's)

Backends:
  memory [size=]SIZE [allocator=sparse|malloc[,mlock=true]]
                          RAM disk: sparse (the default) takes memory as data
                          is written; malloc takes all of it at start
                          (mlock=true: locked in RAM)
  file [file=]PATH        a regular file or block device; or dir=DIR: an
                          export for each file in DIR, chosen by name; also
                          cache=none, fadvise=normal|random|sequential
  null [size=]SIZE        reads zeroes, discards writes (default size 0)
  pattern [size=]SIZE     read-only; each 8-byte word holds its own offset
                          (default size 0)
  curl [url=]URL          read-only; an object on an HTTP or HTTPS server,
                          read with range requests (alias: http); also
                          header=, user=, password=, cookie=, user-agent=,
                          cainfo=, capath=, sslverify=, timeout=,
                          followlocation=, connections=, unix-socket-path=,
                          protocols=, tcp-nodelay= (see nbdlite(1))

SIZE is bytes with an optional suffix: s (512), k/K, M, G, T, P, E (powers of 1024).
Socket activation (LISTEN_FDS/LISTEN_PID) and NOTIFY_SOCKET are supported; see nbdlite(1).

Filters (nbdkit's names and parameters; see nbdlite(1)):
";

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Every short option, for `--short-options`: nbdkit's that nbdlite takes,
/// and `-h`.
pub const SHORT_OPTIONS: &[&str] = &[
    "-4", "-6", "-D", "-e", "-f", "-g", "-h", "-i", "-n", "-o", "-p", "-P", "-r", "-s", "-t", "-u",
    "-U", "-v", "-V",
];

/// Every long option under each of its spellings, for `--long-options`
/// (which, as nbdkit's, leaves out itself and `--short-options`).
pub const LONG_OPTIONS: &[&str] = &[
    "--busy-poll",
    "--debug",
    "--description",
    "--dump-config",
    "--dump-plugin",
    "--exit-with-parent",
    "--export",
    "--export-name",
    "--exportname",
    "--filter",
    "--foreground",
    "--group",
    "--handshake-timeout",
    "--help",
    "--idle-timeout",
    "--ip-addr",
    "--ipaddr",
    "--ipv4-only",
    "--ipv6-only",
    "--log",
    "--mask-handshake",
    "--max-connections",
    "--memory-budget",
    "--new-style",
    "--newstyle",
    "--no-fork",
    "--no-sr",
    "--old-style",
    "--oldstyle",
    "--pid-file",
    "--pidfile",
    "--port",
    "--print-uri",
    "--read-only",
    "--readonly",
    "--request-timeout",
    "--run",
    "--single",
    "--stdin",
    "--threads",
    "--tls",
    "--tls-certificates",
    "--tls-psk",
    "--tls-verify-peer",
    "--unix",
    "--user",
    "--verbose",
    "--version",
];

/// `--short-options` or `--long-options`: one option a line.
pub fn option_list(options: &[&str]) -> String {
    options.iter().map(|o| format!("{o}\n")).collect()
}

/// `--help`, or `BACKEND --help`: the backend's parameters follow.
/// `--help`: the options, the backends, and each filter with its
/// parameters; `BACKEND --help`: and that backend's parameters.
pub fn help(backend: Option<&Kind>) -> String {
    let filters = crate::filter::describe();
    match backend {
        None => format!("{HELP}{filters}"),
        Some(kind) => format!("{HELP}{filters}\n{}", super::backend::help(kind)),
    }
}

/// `BACKEND --dump-plugin`: what `nbdkit PLUGIN --dump-plugin` prints that
/// means something for a backend built into nbdlite (its name and version,
/// thread model, magic key and feature lines), and its parameters. `path` is
/// the file the backend lives in (for nbdkit a plugin's `.so`; here the
/// binary itself).
pub fn dump_plugin(kind: &Kind, binary: Option<&Path>) -> String {
    let mut lines = Vec::new();
    if let Some(b) = binary {
        lines.push(format!("path={}", b.display()));
    }
    lines.push(format!("name={}", kind.name));
    lines.push(format!("version={VERSION}"));
    lines.push(format!("max_thread_model={}", kind.thread_model));
    lines.push(format!("thread_model={}", kind.thread_model));
    lines.push(format!("magic_config_key={}", kind.magic()));
    // Not nbdkit's (it has no such line): every parameter the backend
    // takes, comma-separated so that the output stays safe to `eval`.
    let keys: Vec<&str> = kind.params.iter().map(|p| p.key).collect();
    lines.push(format!("parameters={}", keys.join(",")));
    for (k, v) in kind.features {
        lines.push(format!("{k}={v}"));
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Whether this build can serve TLS (the default `tls` cargo feature).
pub fn tls_available() -> bool {
    cfg!(feature = "tls")
}

/// `--version`, and `BACKEND --version`, which names the backend too (as
/// `nbdkit PLUGIN --version` does). Backends are built in, so theirs is ours.
pub fn version(backend: Option<&str>) -> String {
    let mut s = format!("nbdlite {VERSION}\n");
    if let Some(b) = backend {
        s.push_str(&format!("{b} {VERSION}\n"));
    }
    s
}

/// `--dump-config`: nbdkit's keys that mean something for nbdlite, in
/// nbdkit's format (sorted `key=value` lines), each one true of this build.
/// `binary` is the running executable, if the kernel can tell.
pub fn dump_config(binary: Option<&Path>) -> String {
    let mut lines = vec![
        ("exit_with_parent", "yes".to_string()),
        ("host_cpu", std::env::consts::ARCH.to_string()),
        ("host_os", host_os()),
        ("name", "nbdlite".to_string()),
        ("tls", yes_no(tls_available())),
        ("version", VERSION.to_string()),
        ("version_major", env!("CARGO_PKG_VERSION_MAJOR").to_string()),
        ("version_minor", env!("CARGO_PKG_VERSION_MINOR").to_string()),
    ];
    if let Some(b) = binary {
        lines.push(("binary", b.display().to_string()));
    }
    lines.sort();
    lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// The operating system the way autoconf (and so nbdkit) spells it:
/// `linux-gnu`, `linux-musl`.
fn host_os() -> String {
    let env = if cfg!(target_env = "gnu") {
        "-gnu"
    } else if cfg!(target_env = "musl") {
        "-musl"
    } else {
        ""
    };
    format!("{}{env}", std::env::consts::OS)
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::FILTERS;

    #[test]
    fn versions_like_nbdkit() {
        assert_eq!(version(None), format!("nbdlite {VERSION}\n"));
        assert_eq!(
            version(Some("memory")),
            format!("nbdlite {VERSION}\nmemory {VERSION}\n")
        );
    }

    #[test]
    fn dump_config_is_sorted_key_value_lines() {
        let d = dump_config(Some(Path::new("/usr/bin/nbdlite")));
        let keys: Vec<&str> = d.lines().map(|l| l.split_once('=').unwrap().0).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for want in [
            "binary=/usr/bin/nbdlite",
            "name=nbdlite",
            if cfg!(feature = "tls") {
                "tls=yes"
            } else {
                "tls=no"
            },
            "exit_with_parent=yes",
            &format!("version={VERSION}"),
            &format!("host_cpu={}", std::env::consts::ARCH),
        ] {
            assert!(d.lines().any(|l| l == want), "{want} in {d}");
        }
        let major = d.lines().find_map(|l| l.strip_prefix("version_major="));
        let minor = d.lines().find_map(|l| l.strip_prefix("version_minor="));
        assert_eq!(
            format!("{}.{}.", major.unwrap(), minor.unwrap()),
            VERSION[..VERSION.rfind('.').unwrap() + 1]
        );
        assert!(!dump_config(None).contains("binary="));
    }

    /// Every filter and every one of its parameters is in `--help` and in the
    /// man page.
    #[test]
    fn every_filter_is_documented() {
        let help = super::help(None);
        let man = include_str!("../../man/nbdlite.1").replace("\\-", "-");
        for f in FILTERS {
            assert!(
                help.contains(&format!("  {} ", f.name)),
                "--help: {}",
                f.name
            );
            assert!(
                man.contains(&format!("--filter={}", f.name)),
                "man: {}",
                f.name
            );
            for p in f.params {
                assert!(help.contains(&format!("{}=", p.key)), "--help: {}", p.key);
                assert!(
                    man.contains(&format!("{}=", p.key)),
                    "man: {} of {}",
                    p.key,
                    f.name
                );
            }
        }
    }
}
