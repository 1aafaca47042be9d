//! Logging set-up shared by SMART's two binaries (`smart` and `vod`), so that both read the
//! same environment:
//!
//! - `SMART_LOG`: the filter (`tracing_subscriber::EnvFilter` syntax, e.g.
//!   `info,smart_supervision=warn`); each binary has its own default;
//! - `SMART_LOG_FORMAT`: `text` (default) or `json` (one JSON object per line: timestamp,
//!   level, target, fields, and the spans with their fields, e.g. the node id), also set by
//!   the binaries' `--log-format`.
//!
//! Logs go to stderr; colours only on a terminal and never in JSON.
//!
//! ## Layout
//! - [`LogFormat`], [`init`].

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// The filter variable.
pub const FILTER_ENV: &str = "SMART_LOG";
/// The format variable.
pub const FORMAT_ENV: &str = "SMART_LOG_FORMAT";

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" | "" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{FORMAT_ENV}={other}: expected text or json")),
        }
    }
}

/// Installs the subscriber: `format` from the command line wins over `SMART_LOG_FORMAT`;
/// the filter is `SMART_LOG`, else `default`.
pub fn init(format: Option<LogFormat>, default: &str) {
    let format = format.unwrap_or_else(|| {
        std::env::var(FORMAT_ENV)
            .ok()
            .and_then(|v| match v.parse() {
                Ok(f) => Some(f),
                Err(e) => {
                    eprintln!("{e}; using text");
                    None
                }
            })
            .unwrap_or_default()
    });
    let mut filter =
        EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| EnvFilter::new(default));
    // The Raft engine of the desired-state log reports an unreachable peer at WARN and
    // ERROR ten times a second while it is down: what the failure detector already says
    // once. Quiet unless the filter names it.
    if !std::env::var(FILTER_ENV).is_ok_and(|f| f.contains("openraft")) {
        for d in ["openraft=error", "openraft::replication=off"] {
            if let Ok(d) = d.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}
