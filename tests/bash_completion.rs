//! `bash-completion/nbdlite`, the completion README's install step puts in
//! place: sourced into bash as bash-completion would load it, with the built
//! nbdlite first on PATH, and asked what it completes, as readline asks.

mod common;

use std::path::Path;
use std::process::Command;

use common::{bin, have, run_ok};

/// What `_nbdlite` offers for a command line whose last word is being
/// completed (`words`, the last one possibly empty), one word a line.
#[track_caller]
fn complete(words: &[&str]) -> Vec<String> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("bash-completion/nbdlite");
    let dir = Path::new(bin()).parent().expect("target dir");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = r#"source "$0" || exit 1
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))
_nbdlite
printf '%s\n' "${COMPREPLY[@]}""#;
    let out = run_ok(
        Command::new("bash")
            .args(["--norc", "--noprofile", "-c", script])
            .arg(file)
            .args(words)
            .env("PATH", path),
        30,
    );
    out.lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn options_backends_and_parameters() {
    if !have(&["bash"]) {
        return;
    }
    // Options, from nbdlite --short-options and --long-options.
    assert_eq!(complete(&["nbdlite", "--mask"]), ["--mask-handshake"]);
    let all = complete(&["nbdlite", "-"]);
    for o in [
        "-f",
        "-U",
        "--foreground",
        "--dump-plugin",
        "--tls-verify-peer",
    ] {
        assert!(all.iter().any(|w| w == o), "{o} in {all:?}");
    }
    assert!(
        complete(&["nbdlite", "--"])
            .iter()
            .all(|w| w.starts_with("--"))
    );
    // Values from a list, spelled --opt VALUE or --opt=VALUE.
    assert_eq!(complete(&["nbdlite", "--tls", "r"]), ["require"]);
    assert_eq!(complete(&["nbdlite", "--tls", "=", "o"]), ["off", "on"]);
    assert_eq!(complete(&["nbdlite", "--log", "s"]), ["stderr", "syslog"]);
    // Backends, then their parameters (not the one a bare value sets).
    assert_eq!(
        complete(&["nbdlite", "-f", ""]),
        ["memory", "file", "null", "pattern", "curl"]
    );
    // Filters, and their parameters once named.
    assert_eq!(complete(&["nbdlite", "--filter", "de"]), ["delay"]);
    assert_eq!(complete(&["nbdlite", "--filter", "=", "er"]), ["error"]);
    let with_delay = complete(&["nbdlite", "--filter", "delay", "memory", "1G", "rd"]);
    assert_eq!(with_delay, ["rdelay="]);
    assert_eq!(complete(&["nbdlite", "-e", "memory", "nu"]), ["null"]);
    assert_eq!(complete(&["nbdlite", "memory", "1G", "a"]), ["allocator="]);
    assert_eq!(complete(&["nbdlite", "file", "di"]), ["dir=", "directory="]);
    assert_eq!(
        complete(&["nbdlite", "file", "dir=/srv", "fa"]),
        ["fadvise="]
    );
    assert_eq!(
        complete(&["nbdlite", "memory", "allocator", "=", "m"]),
        ["malloc", "malloc,mlock=true"]
    );
    // A path, a size, a port: left to bash's own completion.
    for words in [
        &["nbdlite", "file", ""][..],
        &["nbdlite", "-U", ""],
        &["nbdlite", "-p", ""],
        &["nbdlite", "memory", "size", "=", ""],
    ] {
        assert_eq!(complete(words), Vec::<String>::new(), "{words:?}");
    }
}
