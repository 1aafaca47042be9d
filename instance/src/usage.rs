//! The sampler's side of the workload control API: every tick, `usage` of each instance,
//! over the one client of that API ([`smart_proto::workload::WorkloadClient`]).
//!
//! An instance with no socket, or one that does not answer within the timeout, "does not
//! speak the API": the sampler then falls back to what the OS offers, and the poller retries
//! the API later with an exponential back-off, so a silent instance costs one timeout per
//! back-off period, not one per tick. All instances of a tick are asked concurrently, so one
//! slow instance delays the tick once, not once per instance.
//!
//! # Layout
//! - [`UsagePoller`]: one instance: a kept connection, reconnect once, back-off.
//! - [`UsagePollers`]: every instance of a node, polled together; `poll_blocking` for the
//!   synchronous callers (the profiler, benchmarks, tests).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use smart_proto::workload::{WorkloadClient, WorkloadError};

pub use smart_proto::workload::Usage;

use crate::runtime::Probe;

/// Longest wait between retries of a silent instance.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// `usage` of one instance, with back-off after failures.
#[derive(Debug)]
pub struct UsagePoller {
    path: PathBuf,
    timeout: Duration,
    client: Option<WorkloadClient>,
    failures: u32,
    next_try: Option<Instant>,
    speaks: bool,
}

impl UsagePoller {
    /// A poller for the control socket at `path`; `timeout` bounds each query.
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            path: path.into(),
            timeout,
            client: None,
            failures: 0,
            next_try: None,
            speaks: false,
        }
    }

    /// True once the instance has answered and not failed since.
    pub fn speaks_api(&self) -> bool {
        self.speaks
    }

    async fn query(&mut self) -> Result<Usage, WorkloadError> {
        if let Some(c) = self.client.as_mut() {
            match c.usage().await {
                Ok(u) => return Ok(u),
                // A kept connection the instance closed since: one retry on a new one. A
                // timed-out one is never reused (a late reply would answer the next query).
                Err(WorkloadError::Timeout(t)) => {
                    self.client = None;
                    return Err(WorkloadError::Timeout(t));
                }
                Err(_) => self.client = None,
            }
        }
        let mut c = WorkloadClient::connect(&self.path, self.timeout).await?;
        let u = c.usage().await?;
        self.client = Some(c);
        Ok(u)
    }

    /// Queries now unless backing off; `None` means "no answer this tick".
    pub async fn poll(&mut self, now: Instant) -> Option<Usage> {
        if self.next_try.is_some_and(|t| now < t) {
            return None;
        }
        match self.query().await {
            Ok(u) => {
                self.failures = 0;
                self.next_try = None;
                self.speaks = true;
                Some(u)
            }
            Err(e) => {
                if self.speaks {
                    tracing::debug!(error = %e, socket = %self.path.display(), "instance stopped answering the control API");
                }
                self.client = None;
                self.speaks = false;
                self.failures = self.failures.saturating_add(1);
                let wait = Duration::from_secs(1 << self.failures.min(6)).min(MAX_BACKOFF);
                self.next_try = Some(now + wait);
                None
            }
        }
    }
}

/// The pollers of every instance on a node.
#[derive(Debug)]
pub struct UsagePollers {
    timeout: Duration,
    pollers: HashMap<String, UsagePoller>,
    /// For [`UsagePollers::poll_blocking`]: made on first use.
    rt: Option<tokio::runtime::Runtime>,
}

impl UsagePollers {
    /// Pollers whose queries each take at most `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            pollers: HashMap::new(),
            rt: None,
        }
    }

    /// True when the instance answered the control API on its last try.
    pub fn speaks_api(&self, name: &str) -> bool {
        self.pollers.get(name).is_some_and(UsagePoller::speaks_api)
    }

    /// Asks every probed instance at once; returns the answers by instance name. Pollers
    /// of instances no longer probed are dropped.
    pub async fn poll(&mut self, probes: &[Probe], now: Instant) -> HashMap<String, Usage> {
        self.pollers
            .retain(|k, _| probes.iter().any(|p| &p.name == k));
        for p in probes {
            self.pollers
                .entry(p.name.clone())
                .or_insert_with(|| UsagePoller::new(&p.control_socket, self.timeout));
        }
        let asks = self.pollers.iter_mut().map(|(name, p)| async move {
            let u = p.poll(now).await;
            (name.clone(), u)
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(|(n, u)| Some((n, u?)))
            .collect()
    }

    /// [`UsagePollers::poll`] for synchronous callers (not from inside an async task).
    pub fn poll_blocking(&mut self, probes: &[Probe], now: Instant) -> HashMap<String, Usage> {
        let rt = match self.rt.take() {
            Some(rt) => rt,
            None => match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!(error = %e, "no runtime for control API queries");
                    return HashMap::new();
                }
            },
        };
        let out = rt.block_on(self.poll(probes, now));
        self.rt = Some(rt);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    use std::path::Path;

    /// A tiny server answering `usage` lines with a growing counter; closes after
    /// `per_conn` replies per connection (to exercise reconnect).
    fn serve(path: &Path, per_conn: usize) -> std::thread::JoinHandle<()> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            for s in l.incoming().take(3) {
                let mut s = BufReader::new(s.unwrap());
                for _ in 0..per_conn {
                    let mut line = String::new();
                    if s.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    assert_eq!(line, "{\"op\":\"usage\"}\n");
                    sent += 1000;
                    let reply = format!(
                        "{{\"bytes_sent\":{sent},\"bytes_received\":5,\"clients\":2,\"cache_bytes\":7}}\n"
                    );
                    s.get_mut().write_all(reply.as_bytes()).unwrap();
                }
            }
        })
    }

    fn probe(name: &str, socket: &Path) -> Probe {
        Probe {
            name: name.into(),
            pgid: 0,
            group: None,
            control_socket: socket.to_path_buf(),
        }
    }

    #[tokio::test]
    async fn usage_round_trip_reuses_and_reconnects() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.sock");
        let _srv = serve(&p, 2);
        let mut c = UsagePoller::new(&p, Duration::from_secs(2));
        let a = c.poll(Instant::now()).await.unwrap();
        assert_eq!(
            (a.bytes_sent, a.bytes_received, a.clients, a.cache_bytes),
            (1000, 5, 2, 7)
        );
        assert_eq!(c.poll(Instant::now()).await.unwrap().bytes_sent, 2000);
        // The server closed after two replies: the poller reconnects transparently.
        assert_eq!(c.poll(Instant::now()).await.unwrap().bytes_sent, 3000);
    }

    #[tokio::test]
    async fn missing_socket_and_silent_server_fail_within_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = UsagePoller::new(dir.path().join("none.sock"), Duration::from_millis(100));
        assert_eq!(c.poll(Instant::now()).await, None);

        let p = dir.path().join("silent.sock");
        let _l = UnixListener::bind(&p).unwrap(); // accepts (backlog) but never answers
        let mut c = UsagePoller::new(&p, Duration::from_millis(100));
        let t0 = Instant::now();
        assert_eq!(c.poll(t0).await, None);
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn garbage_and_oversized_replies_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (i, reply) in ["not json\n".to_string(), "x".repeat(70_000) + "\n"]
            .into_iter()
            .enumerate()
        {
            let p = dir.path().join(format!("g{i}.sock"));
            let l = UnixListener::bind(&p).unwrap();
            let t = std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let _ = s.write_all(reply.as_bytes());
                std::thread::sleep(Duration::from_millis(200));
            });
            let mut c = UsagePoller::new(&p, Duration::from_secs(1));
            assert_eq!(c.poll(Instant::now()).await, None);
            assert!(!c.speaks_api());
            t.join().unwrap();
        }
    }

    #[test]
    fn polls_of_a_tick_share_one_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.sock");
        let _srv = serve(&good, 10);
        let silent: Vec<_> = (0..5)
            .map(|i| {
                let p = dir.path().join(format!("silent{i}.sock"));
                (UnixListener::bind(&p).unwrap(), p)
            })
            .collect();
        let timeout = Duration::from_millis(200);
        let mut probes: Vec<Probe> = silent
            .iter()
            .enumerate()
            .map(|(i, (_, p))| probe(&format!("s{i}"), p))
            .collect();
        probes.push(probe("good", &good));
        let mut polls = UsagePollers::new(timeout);
        let t0 = Instant::now();
        let got = polls.poll_blocking(&probes, t0);
        let took = t0.elapsed();
        assert_eq!(got.len(), 1);
        assert_eq!(got["good"].bytes_sent, 1000);
        assert!(polls.speaks_api("good") && !polls.speaks_api("s0"));
        // Five silent instances cost one shared timeout, not five.
        assert!(took < timeout * 3, "{took:?}");
    }

    #[tokio::test]
    async fn poller_backs_off_after_failure() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("later.sock");
        let mut poller = UsagePoller::new(&p, Duration::from_millis(100));
        let t0 = Instant::now();
        assert_eq!(poller.poll(t0).await, None);
        let _srv = serve(&p, 10);
        // Within the back-off window the socket is not even tried.
        assert_eq!(poller.poll(t0 + Duration::from_millis(500)).await, None);
        assert!(!poller.speaks_api());
        let u = poller.poll(t0 + Duration::from_secs(3)).await.unwrap();
        assert_eq!(u.bytes_sent, 1000);
        assert!(poller.speaks_api());
    }
}
