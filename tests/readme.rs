//! README's examples, run as written, in order: every ```sh block that is not
//! marked `norun` (installing, building, root-only) runs under bash in one
//! fresh directory, with the built nbdlite and nbdlite-bench first on PATH
//! (blocks marked `tls` only in a build with TLS).
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

use common::{TempDir, bin, have, system_path, wait_exit};

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
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let blocks = examples(&readme);
    assert!(blocks.len() >= 5, "README lost its examples");
    let dir = TempDir::new();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let marker = format!("{}-{nanos}", std::process::id());
    let _cleanup = KillMarked(marker.clone());
    let bin_dir = Path::new(bin()).parent().expect("target dir");
    let path = format!("{}:{}", bin_dir.display(), system_path());
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
