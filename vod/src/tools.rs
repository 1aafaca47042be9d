//! External tools the real-client tests use (ffmpeg, chromium, node): finding them, and the
//! rule for when one is missing: the test prints `skipped: ...` and passes, unless
//! `SMART_REQUIRE_TOOLS=1` (CI sets it after `scripts/setup.sh`), where it fails.
//!
//! ## Layout
//! - [`which`], [`require`], [`REQUIRE_ENV`].

use std::path::{Path, PathBuf};

/// Set to `1` to turn "tool missing, skipped" into a test failure.
pub const REQUIRE_ENV: &str = "SMART_REQUIRE_TOOLS";

/// Finds an executable on PATH (or in sbin directories).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// True when missing tools must fail tests.
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// For a test that needs `what`: `Some(value)` when `found` has it; otherwise prints
/// `skipped: <what> (<hint>)` and returns None, or panics when [`REQUIRE_ENV`] is set.
pub fn require<T>(what: &str, found: Option<T>, hint: &str) -> Option<T> {
    if found.is_none() {
        assert!(
            !required(),
            "{what} is required ({REQUIRE_ENV}=1) but missing: {hint}"
        );
        println!("skipped: {what} missing ({hint})");
    }
    found
}

/// `which(name)` under the [`require`] rule.
pub fn require_bin(name: &str) -> Option<PathBuf> {
    require(name, which(name), "run scripts/setup.sh")
}
