//! Tests that did not really run, said where a newcomer sees it.
//!
//! libtest captures what a test prints with `print!` and `eprint!`, and shows
//! it only when the test fails: a SKIP line printed so is never seen, and
//! "N passed" counts a test that tested nothing. So a skip is written straight
//! to the process's stderr (which libtest does not capture) when it happens,
//! and listed again when the test binary exits, under libtest's
//! "test result:" line, so that it is not lost in the scroll.
//!
//! A missing tool (`missing_tool`) is a failure instead under
//! NBDLITE_REQUIRE_INTEROP=1; what a machine cannot do (root, fd limits, an
//! IPv6 loopback, io_uring) stays a skip everywhere.
//!
//! Std and `nbdlite::sys` only: the library's and the bench's unit tests
//! include it too (`#[path]`).
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Mutex, Once};

/// Every skip of this test binary, as listed at exit.
static SKIPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

/// The test did not run: `why` says what it lacked.
pub fn skip(why: &str) {
    report(&format!("{}: {why}", test_name()));
}

/// Part of the test did not run: `why` says which part, and what it lacked.
pub fn skip_part(why: &str) {
    report(&format!("{} (in part): {why}", test_name()));
}

/// Whether interop tools are mandatory (CI sets NBDLITE_REQUIRE_INTEROP=1).
pub fn interop_required() -> bool {
    std::env::var("NBDLITE_REQUIRE_INTEROP").is_ok_and(|v| v == "1")
}

/// `tool` is not installed: the test fails when NBDLITE_REQUIRE_INTEROP=1,
/// else it is skipped.
#[track_caller]
pub fn missing_tool(tool: &str) {
    if interop_required() {
        panic!("{tool} is required (NBDLITE_REQUIRE_INTEROP=1) but not installed");
    }
    skip(&format!("{tool} is not installed"));
}

fn report(line: &str) {
    // One write, so that lines of tests running side by side do not mix.
    let _ = std::io::stderr().write_all(format!("*** SKIP {line}\n").as_bytes());
    SKIPPED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(line.to_string());
    AT_EXIT.call_once(|| {
        if let Err(e) = nbdlite::os::at_exit(summary) {
            let _ = writeln!(std::io::stderr(), "*** cannot list skips at exit: {e}");
        }
    });
}

/// At exit, after libtest's summary: the list, or nothing if no test skipped.
extern "C" fn summary() {
    // A test still running (timed out) might hold the lock: do not wait on it.
    let Ok(list) = SKIPPED.try_lock() else {
        return;
    };
    let n = list.len();
    let mut text = format!(
        "*** {n} test{} of {} did not really run, though counted as passed above:\n",
        if n == 1 { "" } else { "s" },
        test_binary()
    );
    for line in list.iter() {
        text.push_str(&format!("***   {line}\n"));
    }
    text.push('\n');
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// `BINARY::TEST`, as `cargo test` names them: libtest runs each test on a
/// thread named after it.
fn test_name() -> String {
    let thread = std::thread::current();
    format!(
        "{}::{}",
        test_binary(),
        thread.name().unwrap_or("(a helper thread)")
    )
}

/// The test binary (tests/NAME.rs), from this module's path, which starts
/// with its crate's name.
fn test_binary() -> &'static str {
    module_path!().split("::").next().unwrap_or("?")
}
