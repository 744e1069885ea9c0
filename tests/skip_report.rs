//! The test suite says which tests did not really run: `cargo test` (without
//! `--nocapture`) shows each skip as it happens and lists them again under the
//! test binary's summary; NBDLITE_REQUIRE_INTEROP=1 turns a missing tool into
//! a failure.
//!
//! The two fixtures below skip on purpose. They are `#[ignore]`d, and do
//! nothing unless NBDLITE_SKIP_FIXTURE=1: the test runs this very binary with
//! them selected, as `cargo test` would run a binary whose tests skip.

mod common;

use std::process::Command;

use common::{have, run, skip_part};

const MISSING: &str = "nbdlite-no-such-tool";

#[test]
#[ignore = "a fixture: skipped_tests_are_named_under_the_summary runs it"]
fn fixture_without_its_tool() {
    if std::env::var_os("NBDLITE_SKIP_FIXTURE").is_some() {
        assert!(!have(&[MISSING]));
    }
}

#[test]
#[ignore = "a fixture: skipped_tests_are_named_under_the_summary runs it"]
fn fixture_in_part() {
    if std::env::var_os("NBDLITE_SKIP_FIXTURE").is_some() {
        skip_part("the second half needs what this machine lacks");
    }
}

/// This test binary, running the fixtures as `cargo test` runs tests: output
/// captured, stdout and stderr into one stream, in order.
fn fixtures(require_interop: bool) -> (Option<i32>, String) {
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exec \"$0\" --ignored fixture_ 2>&1"])
        .arg(exe)
        .env("NBDLITE_SKIP_FIXTURE", "1")
        .env_remove("NBDLITE_REQUIRE_INTEROP");
    if require_interop {
        cmd.env("NBDLITE_REQUIRE_INTEROP", "1");
    }
    let out = run(&mut cmd, 60);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn skipped_tests_are_named_under_the_summary() {
    let (code, out) = fixtures(false);
    assert_eq!(code, Some(0), "{out}");
    let whole = format!("skip_report::fixture_without_its_tool: {MISSING} is not installed");
    let part =
        "skip_report::fixture_in_part (in part): the second half needs what this machine lacks";
    // As each happens...
    for line in [&whole, part] {
        assert!(out.contains(&format!("*** SKIP {line}\n")), "{out}");
    }
    // ...and after libtest's summary, which counted them as passed.
    let summary = out.find("test result: ok. 2 passed").expect(&out);
    let list = &out[summary..];
    let head = "*** 2 tests of skip_report did not really run, though counted as passed above:";
    assert!(list.contains(head), "{out}");
    for line in [&whole, part] {
        assert!(list.contains(&format!("***   {line}\n")), "{out}");
    }
}

#[test]
fn a_missing_tool_fails_when_interop_is_required() {
    let (code, out) = fixtures(true);
    assert_eq!(code, Some(101), "{out}");
    assert!(
        out.contains(&format!(
            "{MISSING} is required (NBDLITE_REQUIRE_INTEROP=1) but not installed"
        )),
        "{out}"
    );
    assert!(
        out.contains("test fixture_without_its_tool ... FAILED"),
        "{out}"
    );
}
