//! The unit files shipped in `systemd/`: `systemd-analyze verify` finds nothing
//! to say about them, README and the man page show them as shipped, and each
//! service's ExecStart, run under `systemd-socket-activate` as its socket unit
//! would start it, serves a client.

mod common;

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Reap, TempDir, bin, have, run, run_ok, system_path, wait_until};

/// Where the units say the binary is (`cargo install --locked --path . --root /usr/local`).
const INSTALLED: &str = "/usr/local/bin/nbdlite";

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

/// (file name, text) of every shipped unit, sorted by name.
fn units() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = fs::read_dir(units_dir())
        .expect("systemd/")
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read_to_string(&p).unwrap())
        })
        .filter(|(n, _)| n.ends_with(".socket") || n.ends_with(".service"))
        .collect();
    v.sort();
    assert!(v.len() >= 4, "{v:?}");
    v
}

/// A unit without its comments and blank lines: what README and the man page show.
fn settings(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The value of `key=` in a unit.
fn setting(text: &str, key: &str) -> String {
    settings(text)
        .into_iter()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(String::from))
        .unwrap_or_else(|| panic!("no {key}= in {text}"))
}

#[test]
fn systemd_analyze_verify_is_silent() {
    if !have(&["systemd-analyze"]) {
        return;
    }
    // The check that ExecStart's binary exists needs one: the built binary,
    // in copies of the units, stands in for the installed one.
    let dir = TempDir::new();
    let mut paths = Vec::new();
    for (name, text) in units() {
        if name.ends_with(".service") {
            assert!(text.contains(&format!("ExecStart={INSTALLED} ")), "{name}");
        }
        let p = dir.join(&name);
        fs::write(&p, text.replace(INSTALLED, bin())).unwrap();
        paths.push(p);
    }
    let out = run(
        Command::new("systemd-analyze")
            .arg("verify")
            .args(&paths)
            .env("PATH", system_path()),
        60,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Unknown keys are only warnings: none may be said.
    assert!(err.trim().is_empty(), "{err}");
}

/// The ```ini blocks of README, each after a `# /etc/systemd/system/NAME` line.
fn readme_units() -> Vec<(String, Vec<String>)> {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let mut out = Vec::new();
    for block in readme.split("```ini\n").skip(1) {
        let block = block.split("```").next().unwrap();
        let name = block
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# /etc/systemd/system/"))
            .expect("an ini block starts with its path");
        out.push((name.to_string(), settings(block)));
    }
    out
}

/// The unit examples of the man page (`.I /etc/systemd/system/NAME`, then `.EX`).
fn man_units() -> Vec<(String, Vec<String>)> {
    let man = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/nbdlite.1"))
        .expect("man/nbdlite.1");
    let mut out = Vec::new();
    for part in man.split(".I /etc/systemd/system/").skip(1) {
        let name = part.lines().next().unwrap().replace("\\-", "-");
        let ex = part
            .split(".EX\n")
            .nth(1)
            .unwrap()
            .split(".EE")
            .next()
            .unwrap();
        out.push((name, settings(&ex.replace("\\-", "-"))));
    }
    out
}

#[test]
fn readme_and_man_page_show_the_shipped_units() {
    let shipped: Vec<(String, Vec<String>)> = units()
        .into_iter()
        .map(|(n, t)| (n, settings(&t)))
        .collect();
    for (what, mut shown) in [("README", readme_units()), ("man page", man_units())] {
        shown.sort();
        assert_eq!(shown, shipped, "{what} and systemd/ differ");
    }
}

/// Each service's ExecStart, started as its socket would start it: the
/// listening socket passed in (`Accept=yes`: one connection), a client served.
#[test]
fn each_exec_start_serves_under_socket_activation() {
    if !have(&["systemd-socket-activate", "nbdinfo"]) {
        return;
    }
    let units = units();
    let find = |n: &str| &units.iter().find(|(name, _)| name == n).unwrap().1;
    let dir = TempDir::new();
    let disk = dir.join("disk.img");
    fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    for (service, socket, size) in [
        ("nbdlite.service", "nbdlite.socket", 1 << 20),
        ("nbdlite-ram@.service", "nbdlite-ram.socket", 1u64 << 30),
    ] {
        let exec = setting(find(service), "ExecStart")
            .replace(INSTALLED, bin())
            .replace("/srv/disk.img", disk.to_str().unwrap());
        let accept = settings(find(socket)).contains(&"Accept=yes".to_string());
        let sock = dir.join(&format!("{socket}.sock"));
        let mut cmd = Command::new("systemd-socket-activate");
        if accept {
            cmd.arg("--accept");
        }
        cmd.arg("-l").arg(&sock).args(exec.split_whitespace());
        let _activator = Reap(cmd.env("PATH", system_path()).spawn().unwrap());
        // Listening once a connection goes through (then dropped unused).
        wait_until(10, "the activation socket", || {
            UnixStream::connect(&sock).is_ok()
        });
        let uri = format!("nbd+unix:///?socket={}", sock.display());
        let out = run_ok(
            Command::new("nbdinfo")
                .args(["--size", &uri])
                .env("PATH", system_path()),
            30,
        );
        assert_eq!(out.trim(), size.to_string(), "{service}");
    }
}

/// The TLS service's ExecStart under socket activation, with `%d` (systemd's
/// credentials directory) standing for a directory of test certificates: a
/// TLS client with a certificate from the CA is served, one without is not.
#[cfg(feature = "tls")]
#[test]
fn the_tls_service_serves_tls_clients_under_socket_activation() {
    if !have(&["systemd-socket-activate", "nbdinfo"]) {
        return;
    }
    let dir = TempDir::new();
    let Some(c) = common::certs::make_or_skip(dir.path()) else {
        return;
    };
    let units = units();
    let find = |n: &str| &units.iter().find(|(name, _)| name == n).unwrap().1;
    assert!(settings(find("nbdlite-tls.socket")).contains(&"ListenStream=10809".to_string()));
    let exec = setting(find("nbdlite-tls.service"), "ExecStart")
        .replace(INSTALLED, bin())
        .replace("%d", c.dir.to_str().unwrap());
    let sock = dir.join("tls.sock");
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l").arg(&sock).args(exec.split_whitespace());
    let _activator = Reap(cmd.env("PATH", system_path()).spawn().unwrap());
    wait_until(10, "the activation socket", || {
        common::unix_listening(&sock)
    });
    let uri = |certs: &Path| {
        format!(
            "nbds+unix:///?socket={}&tls-certificates={}",
            sock.display(),
            certs.display()
        )
    };
    let nbdinfo = |u: String| run(Command::new("nbdinfo").args(["--size", &u]), 30);
    let out = nbdinfo(uri(&c.dir));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (1u64 << 30).to_string()
    );
    let bare = dir.join("bare");
    fs::create_dir(&bare).unwrap();
    fs::copy(c.dir.join("ca-cert.pem"), bare.join("ca-cert.pem")).unwrap();
    assert!(
        !nbdinfo(uri(&bare)).status.success(),
        "served without a client certificate"
    );
}
