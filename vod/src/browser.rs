//! A headless browser for tests: Debian's Chromium driven through playwright-core by a small
//! node script (`vod/ui/driver.mjs`) that speaks JSON lines on stdin/stdout.
//!
//! Why this way: it works offline here (Chromium from Debian, playwright-core from the npm
//! registry via `npm ci`, no browser download), playwright handles the DevTools protocol,
//! page loads and timeouts, and the Rust side stays a few lines with no new crates (the
//! DevTools crates generate the whole protocol, a long build on a 2-core machine).
//!
//! ## Layout
//! - [`Browser::find`] → [`Tools`] (or what is missing); [`Browser::launch`].
//! - [`Browser::goto`], [`Browser::eval`], [`Browser::screenshot`], [`Browser::close`].

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::player::ui_dir;
use crate::tools::which;

/// Browser failure.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// A tool is not installed (the message says which and how to get it).
    #[error("missing: {0}")]
    Missing(String),
    /// Spawning or talking to the driver.
    #[error("browser driver: {0}")]
    Io(#[from] std::io::Error),
    /// The driver answered something unexpected or nothing in time.
    #[error("browser driver: {0}")]
    Protocol(String),
    /// The page operation failed (navigation error, script exception).
    #[error("page: {0}")]
    Page(String),
}

/// What the browser needs, found.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `node`.
    pub node: PathBuf,
    /// Chromium (`$SMART_CHROMIUM`, else `chromium` on PATH).
    pub chromium: PathBuf,
    /// The driver script.
    pub driver: PathBuf,
}

/// A running headless Chromium with one page.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    /// Chromium's version.
    pub version: String,
}

const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

impl Browser {
    /// Finds node, Chromium and the driver with its npm packages, or says what is missing.
    pub fn find() -> Result<Tools, BrowserError> {
        let missing = |what: &str| BrowserError::Missing(format!("{what} (run scripts/setup.sh)"));
        let chromium = std::env::var_os("SMART_CHROMIUM")
            .map(PathBuf::from)
            .or_else(|| which("chromium"))
            .ok_or_else(|| missing("chromium"))?;
        let node = which("node").ok_or_else(|| missing("node"))?;
        let ui = ui_dir();
        for pkg in ["playwright-core", "hls.js"] {
            if !ui
                .join("node_modules")
                .join(pkg)
                .join("package.json")
                .is_file()
            {
                return Err(missing(&format!("{pkg} in {}/node_modules", ui.display())));
            }
        }
        Ok(Tools {
            node,
            chromium,
            driver: ui.join("driver.mjs"),
        })
    }

    /// Starts Chromium (headless) through the driver and waits until it is ready.
    pub async fn launch(tools: &Tools) -> Result<Self, BrowserError> {
        let mut child = Command::new(&tools.node)
            .arg(&tools.driver)
            .env("SMART_CHROMIUM", &tools.chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| BrowserError::Protocol("no stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BrowserError::Protocol("no stdout".into()))?;
        let mut b = Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            next_id: 0,
            version: String::new(),
        };
        let hello = b.read().await?;
        if hello["ready"] != true {
            return Err(BrowserError::Protocol(format!("driver said {hello}")));
        }
        b.version = hello["version"].as_str().unwrap_or("").to_string();
        Ok(b)
    }

    async fn read(&mut self) -> Result<Value, BrowserError> {
        let line = tokio::time::timeout(ANSWER_TIMEOUT, self.lines.next_line())
            .await
            .map_err(|_| BrowserError::Protocol("no answer in 30 s".into()))??
            .ok_or_else(|| BrowserError::Protocol("driver exited".into()))?;
        serde_json::from_str(&line).map_err(|e| BrowserError::Protocol(format!("{e}: {line}")))
    }

    async fn call(&mut self, mut req: Value) -> Result<Value, BrowserError> {
        self.next_id += 1;
        req["id"] = json!(self.next_id);
        let mut line = req.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await?;
        let v = self.read().await?;
        if v["id"] != json!(self.next_id) {
            return Err(BrowserError::Protocol(format!("answer out of order: {v}")));
        }
        if v["ok"] != true {
            let e = v["error"].as_str().unwrap_or("unspecified").to_string();
            return Err(BrowserError::Page(e));
        }
        Ok(v)
    }

    /// Opens `url` and waits for its load event.
    pub async fn goto(&mut self, url: &str) -> Result<(), BrowserError> {
        self.call(json!({"op": "goto", "url": url}))
            .await
            .map(|_| ())
    }

    /// Evaluates a JavaScript expression in the page; returns its value as JSON.
    pub async fn eval(&mut self, expr: &str) -> Result<Value, BrowserError> {
        Ok(self.call(json!({"op": "eval", "expr": expr})).await?["value"].take())
    }

    /// Saves a PNG of the page.
    pub async fn screenshot(&mut self, path: &std::path::Path) -> Result<(), BrowserError> {
        self.call(json!({"op": "screenshot", "path": path}))
            .await
            .map(|_| ())
    }

    /// Closes the browser and waits for the driver to exit.
    pub async fn close(mut self) {
        let _ = self.call(json!({"op": "close"})).await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
