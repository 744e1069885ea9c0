//! README's examples, run as written, in order: every ```sh block that is not
//! marked `norun` (installing, building, root-only) runs under bash in one
//! fresh directory, with the built nbdlite and nbdlite-bench first on PATH and
//! then the caller's PATH as it is, as in the shell a user pastes them into
//! (blocks marked `tls` only in a build with TLS). A command that needs the
//! system's python3 (nbdsh) must say so itself: it is checked with a python3
//! that lacks libnbd's module first on PATH, as pyenv's is.
//!
//! README's install commands are run too, into a scratch prefix: the man
//! pages must land where `man` finds them from the binary's directory.
//!
//! Each block has a time limit and must succeed. Every process a block starts
//! carries a marker in its environment; once the block is over none may be
//! left (README stops what it starts), and whatever is left when the test ends,
//! pass or fail, is killed.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TempDir, bin, have, run, run_ok, wait_exit};

/// How long one block may take (the benchmark block measures for 10 s).
const BLOCK_SECS: u64 = 180;

/// A ```sh block: the README line it starts on, and its text.
struct Block {
    line: usize,
    text: String,
}

/// The ```sh blocks of `readme` that are examples (not ```sh norun; and not
/// ```sh tls in a build without the `tls` feature).
fn examples(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, bool, String)> = None;
    for (i, l) in readme.lines().enumerate() {
        match &mut open {
            None => {
                if let Some(info) = l.strip_prefix("```") {
                    let mut words = info.split_whitespace();
                    let sh = words.next() == Some("sh");
                    let marks: Vec<&str> = words.collect();
                    let needs_tls = marks.contains(&"tls") && !cfg!(feature = "tls");
                    let runs = sh && !marks.contains(&"norun") && !needs_tls;
                    open = Some((i + 1, runs, String::new()));
                }
            }
            Some((line, runs, text)) => {
                if l.starts_with("```") {
                    if *runs {
                        blocks.push(Block {
                            line: *line,
                            text: std::mem::take(text),
                        });
                    }
                    open = None;
                } else {
                    text.push_str(l);
                    text.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "README has an unclosed ``` block");
    blocks
}

/// The processes whose environment holds `marker` (this test's children and
/// everything they started, daemons included), other than zombies.
fn marked(marker: &str) -> Vec<String> {
    let needle = format!("NBDLITE_README_RUN={marker}");
    let mut pids = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in dir.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(env) = fs::read(e.path().join("environ")) else {
            continue;
        };
        let zombie = fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        });
        if !zombie && env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// What each remaining marked process is, for a failure message.
fn describe(pids: &[String]) -> String {
    pids.iter()
        .map(|p| {
            let cmd = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            format!("{p}: {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kills every marked process when dropped, so a failed block leaks nothing.
struct KillMarked(String);

impl Drop for KillMarked {
    fn drop(&mut self) {
        for pid in marked(&self.0) {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
    }
}

/// The built binaries' directory, then `first` if given, then the caller's
/// PATH as it is.
fn users_path(first: Option<&Path>) -> String {
    let bin_dir = Path::new(bin()).parent().expect("target dir");
    let mut path = format!("{}:", bin_dir.display());
    if let Some(f) = first {
        path.push_str(&format!("{}:", f.display()));
    }
    path + &std::env::var("PATH").unwrap_or_default()
}

fn readme() -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md")
}

/// Every command of an example that runs nbdsh: nbdsh runs the first python3
/// on PATH, and the command must reach libnbd's module even when that one is
/// a python3 without it (pyenv's, a virtualenv's), as README says.
#[test]
fn nbdsh_commands_do_not_depend_on_the_first_python3() {
    if !have(&["bash", "nbdsh"]) {
        return;
    }
    let readme = readme();
    let blocks = examples(&readme);
    let lines: Vec<&str> = blocks
        .iter()
        .flat_map(|b| b.text.lines())
        .filter(|l| l.contains("nbdsh ") && !l.trim_start().starts_with('#'))
        .collect();
    assert!(!lines.is_empty(), "README lost its nbdsh example");
    let dir = TempDir::new();
    let shadow = dir.join("shadow");
    fs::create_dir(&shadow).unwrap();
    let python = shadow.join("python3");
    fs::write(
        &python,
        "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'nbd'\" >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&python, fs::Permissions::from_mode(0o755)).unwrap();
    let path = users_path(Some(&shadow));
    // The shadow is seen: plain nbdsh fails with it first on PATH.
    let out = run(
        Command::new("bash")
            .args(["-c", "nbdsh -c 'print(1)'"])
            .env("PATH", &path),
        60,
    );
    assert!(!out.status.success(), "the shadow python3 was not run");
    for line in lines {
        run_ok(
            Command::new("bash")
                .args(["-euo", "pipefail", "-c", line])
                .current_dir(dir.path())
                .env("PATH", &path),
            60,
        );
    }
}

/// README's install commands but `apt-get` and `cargo install` (which is the
/// build `cargo test` made), with `/usr/local` a scratch prefix: the man pages
/// go where `man` finds them from the binary's directory on PATH, the bash
/// completion where bash-completion looks, and the build is `--locked`.
#[test]
fn install_commands_put_the_man_pages_where_man_finds_them() {
    if !have(&["bash", "man", "install"]) {
        return;
    }
    let readme = readme();
    let block = readme
        .split("```sh norun\n")
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains("cargo install"))
        .expect("README's install block");
    let cargo = block
        .lines()
        .find(|l| l.starts_with("cargo install"))
        .unwrap();
    assert!(cargo.contains(" --locked "), "{cargo}");
    assert!(cargo.contains(" --root /usr/local"), "{cargo}");
    let prefix = TempDir::new();
    let p = prefix.path().to_str().unwrap();
    let script: String = block
        .lines()
        .filter(|l| !l.starts_with("apt-get") && !l.starts_with("cargo install"))
        .map(|l| l.replace("/usr/local", p) + "\n")
        .collect();
    run_ok(
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(env!("CARGO_MANIFEST_DIR")),
        60,
    );
    // What cargo install --root would have put there.
    fs::create_dir_all(prefix.join("bin")).unwrap();
    fs::copy(bin(), prefix.join("bin/nbdlite")).unwrap();
    for page in ["nbdlite", "nbdlite-bench"] {
        let found = run_ok(
            Command::new("man")
                .args(["-w", page])
                .env_remove("MANPATH")
                .env("PATH", format!("{p}/bin:/usr/bin:/bin")),
            30,
        );
        assert_eq!(found.trim(), format!("{p}/share/man/man1/{page}.1"));
    }
    assert!(
        prefix
            .join("share/bash-completion/completions/nbdlite")
            .is_file()
    );
}

#[test]
fn readme_examples_run_as_written() {
    let tools = [
        "bash",
        "qemu-img",
        "qemu-io",
        "qemu-nbd",
        "nbdinfo",
        "nbdcopy",
        "nbdsh",
        "nbdkit",
        "fio",
        "systemd-socket-activate",
        "openssl",
        "sfdisk",
    ];
    if !have(&tools) {
        return;
    }
    let readme = readme();
    let blocks = examples(&readme);
    assert!(blocks.len() >= 5, "README lost its examples");
    let dir = TempDir::new();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let marker = format!("{}-{nanos}", std::process::id());
    let _cleanup = KillMarked(marker.clone());
    let path = users_path(None);
    for (n, b) in blocks.iter().enumerate() {
        let what = format!("README block at line {}", b.line);
        let out = dir.join(&format!("block-{n}.out"));
        let file = fs::File::create(&out).unwrap();
        let mut child = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &b.text])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("NBDLITE_README_RUN", &marker)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("bash");
        let status = wait_exit(&mut child, BLOCK_SECS);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let output = fs::read_to_string(&out).unwrap_or_default();
        let status = status.unwrap_or_else(|| panic!("{what} ran over {BLOCK_SECS}s:\n{output}"));
        assert!(
            status.success(),
            "{what} failed ({status}):\n{}\n{output}",
            b.text
        );
        // README stops what it starts: a killed server may take a moment to go.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !marked(&marker).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = marked(&marker);
        assert!(
            left.is_empty(),
            "{what} left processes running:\n{}",
            describe(&left)
        );
    }
}
