//! Programs outside the crate that some tests drive (HAProxy, redis-server): found, or the
//! test says *visibly* that it was skipped, or, under CI, it fails.
//!
//! libtest has no "skipped" outcome, and it hides what `println!` and `eprintln!` print in a
//! test that passes. So a missing program is reported by writing straight to the test
//! process's stderr, which libtest does not capture: `cargo test` shows one line per skipped
//! test, `SKIPPED <test>: <program> is not installed (<how to install it>)`, between its own.
//!
//! Under CI a missing program fails the test instead: when `CI` is set to anything but `""`,
//! `0` or `false` (`.ci/run` sets it, as most CI services do), or when
//! `REQUIRE_EXTERNAL_PROGRAMS=1` asks for it on a developer's machine.
//!
//! ```ignore
//! let Some(haproxy) = common::external::require("haproxy", "-v", "apt-get install haproxy")
//! else {
//!     return;
//! };
//! assert!(haproxy.version.starts_with("HAProxy version 2.6."), "{}", haproxy.version);
//! ```
#![allow(dead_code, unreachable_pub)]

use std::io::Write as _;
use std::process::Command;

/// A program found on `PATH`.
#[derive(Debug, Clone)]
pub struct Program {
    /// The name it was found under, to run it with.
    pub name: String,
    /// The first line it printed when asked for its version.
    pub version: String,
}

/// Whether a missing program fails the tests that need it, rather than skipping them.
pub fn required() -> bool {
    let set = |name: &str| {
        std::env::var(name).is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE"))
    };
    set("CI") || set("REQUIRE_EXTERNAL_PROGRAMS")
}

/// Finds `name` by running `name version_arg`. Missing: under CI ([`required`]) the test
/// panics; elsewhere the skip is written where `cargo test` shows it, and `None` returned,
/// for the test to return at once.
#[track_caller]
pub fn require(name: &str, version_arg: &str, install: &str) -> Option<Program> {
    match version(name, version_arg) {
        Some(version) => Some(Program { name: name.to_owned(), version }),
        None if required() => panic!(
            "`{name}` is required under CI (CI or REQUIRE_EXTERNAL_PROGRAMS is set) and is not \
             installed: {install}"
        ),
        None => {
            skipped(&format!("`{name}` is not installed ({install})"));
            None
        }
    }
}

/// Reports the current test as skipped, on the real stderr (libtest does not capture it).
pub fn skipped(why: &str) {
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or("a test");
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test}: {why}; set CI=1 or REQUIRE_EXTERNAL_PROGRAMS=1 to make this a failure"
    );
}

/// The first non-empty line `name version_arg` prints (stdout, else stderr), if it runs and
/// succeeds.
fn version(name: &str, version_arg: &str) -> Option<String> {
    let out = Command::new(name).arg(version_arg).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = if out.stdout.is_empty() { out.stderr } else { out.stdout };
    let text = String::from_utf8_lossy(&text);
    Some(text.lines().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_owned())
}
