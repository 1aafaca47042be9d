//! The rule for a test that needs something the machine may lack (ffmpeg, a browser,
//! promtool, root, usable cgroups): without it the test prints `skipped: ...` and passes,
//! unless `SMART_REQUIRE_TOOLS=1` (CI sets it after `scripts/setup.sh`), where it fails.
//! Every such skip goes through [`require`] (written once, in `smart_vod::tools`, where the
//! data plane's tools are found; re-exported here for suites that do not use the data
//! plane), so that CI cannot pass a test that did not run.

pub use smart_vod::tools::{REQUIRE_ENV, require, require_bin, required};

/// [`require`] for a `Result`: the error says what is missing.
pub fn require_ok<T, E: std::fmt::Display>(what: &str, found: Result<T, E>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(e) => require(what, None, &e.to_string()),
    }
}

/// Root, under the [`require`] rule (cgroups, namespaces and nice values below 0 need it).
pub fn require_root(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    require(what, root.then_some(()), "needs root").is_some()
}
