//! Pacers: a few threads (one per core by default) that send every paced viewer its bytes
//! from the shared cache blocks, on one coalesced timer per thread instead of one task and
//! one timer per viewer.
//!
//! Why: with a task per viewer, 10,000 viewers on a 200 ms tick are 50,000 task wake-ups,
//! timer re-arms and small writes a second, and the accept task waits in the same run queue.
//! Here a viewer costs one vectored `sendmsg` per send-ahead period (1 s by default, as nginx's
//! `limit_rate` allows), no task, no waker and no epoll registration: a pacer wakes once per
//! slot (1/64 of the period), takes the viewers whose turn it is and writes each of them, with
//! `MSG_DONTWAIT`, everything that falls due up to one period ahead, straight from the shared
//! `Bytes` blocks (one iovec per block, no copy in user space). The accept path stays on the
//! tokio runtime and never queues behind pacing.
//!
//! Pacing ([`Pace`]): by `t` after its head a viewer may have received
//! `prefetch + rate × (t + period + margin)` bytes of its range (margin: an eighth of the
//! period); it is
//! served again one margin before the bytes it has fall due, so each write carries one period
//! of video, bytes are never late unless the machine is overloaded by more than the margin,
//! and never more than a period and a margin early.
//!
//! A viewer whose socket accepts nothing for the write timeout has stopped reading: it is
//! dropped and counted. One whose block is not cached yet asks the fetcher for it and is
//! retried at the next slot. A handoff or stop bumps the distributor's close generation and
//! wakes every pacer, which closes its viewers at once.
//!
//! ## Layout
//! - [`Pace`]: the pure pacing arithmetic (target bytes, next service time).
//! - `PacedViewer`: one viewer's state (socket, range, position, held blocks); its `Drop`
//!   unregisters it from the cache and the counters, whatever ended it.
//! - `PacerPool` / `run_pacer`: the threads, their timer wheels and command channels.

use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::http::ConnGuard;
use crate::video::{Stats, VideoEntry, lock};

/// Timer-wheel slots per send-ahead period. Fine slots spread the writes over the period:
/// with 16, 20,000 viewers came in bursts of 1,250 writes (60 MB at once), which the
/// readers could not drain before the next, and TCP memory went past the kernel's pressure
/// mark; a pacer wake-up costs a few microseconds, so 64 a second is nothing.
pub const SLOTS_PER_PERIOD: u32 = 64;
/// The timer-wheel slot of a pacer with this period.
pub fn slot(period: Duration) -> Duration {
    (period / SLOTS_PER_PERIOD).max(Duration::from_millis(1))
}

/// How far ahead of due a viewer is served again (an eighth of the period, at least two
/// slots): absorbs timer jitter and a busy machine.
pub fn margin(period: Duration) -> Duration {
    (period / 8).max(slot(period) * 2)
}

/// The send-ahead of a pacer with this period: a viewer is written when what it holds ends
/// one margin ahead of due, up to one period plus the margin ahead, so every write carries
/// one whole period of video (one write per viewer per period, like nginx's once-a-second
/// `limit_rate` bursts).
pub fn send_ahead(period: Duration) -> Duration {
    period + margin(period)
}

/// Slots in a pacer's wheel (four periods; later services are re-checked at the far end).
const WHEEL: usize = 4 * SLOTS_PER_PERIOD as usize;
/// Most blocks one write spans (a period of video at most this many blocks).
const MAX_IOV: usize = 8;

/// The pacing of one response: `[start, end)` at `rate` bytes/s after `prefetch` bytes, sent
/// up to `ahead` in advance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// First byte of the response.
    pub start: u64,
    /// End of the response (exclusive).
    pub end: u64,
    /// Bytes sent at once when the response starts.
    pub prefetch: u64,
    /// Bytes per second.
    pub rate: f64,
    /// Send-ahead period.
    pub ahead: Duration,
}

impl Pace {
    /// The end of what may have been sent `elapsed` after the head.
    pub fn target(&self, elapsed: Duration) -> u64 {
        let paced = self.rate * (elapsed + self.ahead).as_secs_f64();
        (self.start + self.prefetch)
            .saturating_add(paced as u64)
            .min(self.end)
    }

    /// When (after the head) byte `pos` falls due: a viewer playing at the rate needs it then.
    pub fn due(&self, pos: u64) -> Duration {
        let paced = pos.saturating_sub(self.start + self.prefetch) as f64;
        Duration::from_secs_f64(paced / self.rate.max(1e-9))
    }

    /// When to serve a viewer that has everything before `pos`: `margin` before that byte
    /// falls due, and not before `now + min_gap`.
    pub fn next_service(
        &self,
        pos: u64,
        now: Duration,
        margin: Duration,
        min_gap: Duration,
    ) -> Duration {
        self.due(pos).saturating_sub(margin).max(now + min_gap)
    }
}

/// What ended a paced viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The whole range was sent.
    Done,
    /// The socket failed (the viewer left).
    Failed,
    /// The socket accepted nothing for the write timeout.
    TimedOut,
}

/// A viewer counted as active and registered at a block of its video's cache. Dropping it
/// undoes both, whatever ended the viewer (done, error, timeout, handoff, shutdown).
pub(crate) struct Registration {
    pub(crate) entry: Arc<VideoEntry>,
    pub(crate) stats: Arc<Stats>,
    /// The block this viewer is registered at (for eviction and read-ahead).
    pub(crate) block: u64,
    pub(crate) _conn: ConnGuard,
}

impl Registration {
    /// Registers a viewer at `block` and counts it.
    pub(crate) fn new(
        entry: Arc<VideoEntry>,
        stats: Arc<Stats>,
        block: u64,
        conn: ConnGuard,
    ) -> Self {
        stats.viewers_total.fetch_add(1, Ordering::Relaxed);
        stats.viewers_active.fetch_add(1, Ordering::Relaxed);
        lock(&entry.cache).add_viewer(block);
        entry.fetch_wake.notify_one();
        Self {
            entry,
            stats,
            block,
            _conn: conn,
        }
    }

    /// Moves the registration to block `b`; true when it moved.
    pub(crate) fn move_to(&mut self, b: u64) -> bool {
        if self.block == b {
            return false;
        }
        let wake = lock(&self.entry.cache).move_viewer(self.block, b);
        self.block = b;
        if wake {
            self.entry.fetch_wake.notify_one();
        }
        true
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.entry.cache).remove_viewer(self.block);
        self.entry.fetch_wake.notify_one();
        self.stats.viewers_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One paced viewer, owned by a pacer thread.
pub(crate) struct PacedViewer {
    pub(crate) sock: socket2::Socket,
    pub(crate) reg: Registration,
    pub(crate) pace: Pace,
    /// The pacing clock's zero: when the head was written.
    pub(crate) t0: Instant,
    /// Next byte to send.
    pub(crate) pos: u64,
    /// The close generation it was admitted under (see `Distributor::close_gen`).
    pub(crate) generation: u64,
    /// Cached blocks from the one holding `pos` on, held so that a service costs no lock.
    pub(crate) held: Vec<(u64, Bytes)>,
    /// Since when the socket has accepted nothing.
    pub(crate) stuck_since: Option<Instant>,
}

/// The result of serving a viewer once.
enum Served {
    /// Serve again at this time (since the viewer's `t0`).
    At(Duration),
    Ended(End),
}

impl PacedViewer {
    /// Sends what is due (up to one period ahead) without blocking.
    fn serve(&mut self, now: Instant, slot: Duration, cfg: &PacerConfig) -> Served {
        let elapsed = now.saturating_duration_since(self.t0);
        if self.pos >= self.pace.end {
            return Served::Ended(End::Done);
        }
        let target = self.pace.target(elapsed);
        let retry = Served::At(elapsed + slot);
        if target <= self.pos {
            return self.next(elapsed, slot, margin(cfg.period));
        }
        let missing = self.hold_blocks(target);
        let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
        let (mut n_iov, mut len) = (0, 0u64);
        let bs = self.block_size();
        for (b, data) in &self.held {
            let from = (self.pos + len).saturating_sub(b * bs) as usize;
            let upto = (target.saturating_sub(b * bs) as usize).min(data.len());
            if from >= upto || n_iov == MAX_IOV {
                break;
            }
            iov[n_iov] = IoSlice::new(&data[from..upto]);
            n_iov += 1;
            len += (upto - from) as u64;
        }
        if len == 0 {
            // The block at `pos` is not cached yet: the fetcher was asked; retry next slot.
            return retry;
        }
        let more = if cfg.cork { libc::MSG_MORE } else { 0 };
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | more;
        // Counted before the syscall and corrected after (see `http::write_counted`).
        let sent = &self.reg.stats.bytes_sent;
        sent.fetch_add(len, Ordering::Relaxed);
        let r = self.sock.send_vectored_with_flags(&iov[..n_iov], flags);
        let accepted = *r.as_ref().unwrap_or(&0) as u64;
        if accepted < len {
            sent.fetch_sub(len - accepted, Ordering::Relaxed);
        }
        match r {
            Ok(n) => {
                self.pos += n as u64;
                self.stuck_since = None;
                if self.pos >= self.pace.end {
                    Served::Ended(End::Done)
                } else if (n as u64) < len || missing {
                    // The socket buffer is full (a slow reader) or a block is still coming.
                    retry
                } else {
                    self.next(elapsed, slot, margin(cfg.period))
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *self.stuck_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= cfg.write_timeout {
                    Served::Ended(End::TimedOut)
                } else {
                    retry
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => retry,
            Err(_) => Served::Ended(End::Failed),
        }
    }

    /// Serve again one margin before what the viewer holds falls due.
    fn next(&self, elapsed: Duration, slot: Duration, margin: Duration) -> Served {
        Served::At(self.pace.next_service(self.pos, elapsed, margin, slot))
    }

    fn block_size(&self) -> u64 {
        self.reg.entry.block_size
    }

    /// Holds the cached blocks covering `[pos, target)` (as far as they are cached) and keeps
    /// the viewer's cache registration at the block of `pos`. Takes the cache lock only when a
    /// block is missing from `held` or the viewer changed block. Returns true when a block
    /// in the range is not cached (the fetcher has been asked for it).
    fn hold_blocks(&mut self, target: u64) -> bool {
        let bs = self.block_size();
        let first = self.pos / bs;
        let last = (target - 1) / bs;
        self.held.retain(|(b, _)| *b >= first);
        let have_upto = self.held.last().map(|(b, _)| b + 1).unwrap_or(first);
        if have_upto > last && self.reg.block == first {
            return false;
        }
        let mut missing = false;
        let reg = &mut self.reg;
        let mut wake = false;
        {
            let mut c = lock(&reg.entry.cache);
            if reg.block != first {
                wake = c.move_viewer(reg.block, first);
                reg.block = first;
            }
            for b in have_upto..=last.min(have_upto + MAX_IOV as u64 - 1) {
                match c.get(b) {
                    Some(d) => self.held.push((b, d)),
                    None => {
                        c.want(b);
                        missing = true;
                        break;
                    }
                }
            }
        }
        if wake || missing {
            reg.entry.fetch_wake.notify_one();
        }
        missing
    }
}

enum Cmd {
    Add(Box<PacedViewer>),
    /// Look at the close generation now (a handoff or stop happened).
    Wake,
}

/// Settings of the pacer threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PacerConfig {
    pub(crate) period: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) cork: bool,
}

/// The pacer threads of one distributor. Dropping it stops them (their viewers are closed).
#[derive(Debug)]
pub(crate) struct PacerPool {
    shards: Vec<mpsc::Sender<Cmd>>,
    next: AtomicU64,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::Add(_) => "Add",
            Cmd::Wake => "Wake",
        })
    }
}

impl PacerPool {
    /// Starts `threads` pacers. `close_gen` is the distributor's close generation.
    pub(crate) fn start(
        threads: usize,
        cfg: PacerConfig,
        stats: Arc<Stats>,
        close_gen: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let mut shards = Vec::new();
        for i in 0..threads.max(1) {
            let (tx, rx) = mpsc::channel();
            let (stats, close_gen) = (stats.clone(), close_gen.clone());
            std::thread::Builder::new()
                .name(format!("pacer-{i}"))
                .spawn(move || run_pacer(rx, cfg, stats, close_gen))?;
            shards.push(tx);
        }
        Ok(Self {
            shards,
            next: AtomicU64::new(0),
        })
    }

    /// Hands a viewer to the next pacer (round robin).
    pub(crate) fn add(&self, v: PacedViewer) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.shards.len();
        // A pacer only exits when the pool is dropped, so a failed send drops the viewer
        // (closing it) during shutdown, which is what shutdown means.
        let _ = self.shards[i].send(Cmd::Add(Box::new(v)));
    }

    /// Makes every pacer look at the close generation now.
    pub(crate) fn wake_all(&self) {
        for s in &self.shards {
            let _ = s.send(Cmd::Wake);
        }
    }
}

/// One pacer thread: a timer wheel of `WHEEL` slots of `period / SLOTS_PER_PERIOD`.
fn run_pacer(
    rx: mpsc::Receiver<Cmd>,
    cfg: PacerConfig,
    stats: Arc<Stats>,
    close_gen: Arc<AtomicU64>,
) {
    // Pacers keep the default priority: a lower one would let co-hosted services (SMART
    // packs many on a node) take the CPU the pacers need; measured, it made 19k viewers
    // stall beside other builds. Start-up is protected by the accept path having its own
    // threads (the tokio workers), which the kernel schedules as soon as a connection comes.
    let slot = slot(cfg.period);
    let base = Instant::now();
    let slot_ns = slot.as_nanos() as u64;
    let slot_start = |k: u64| base + Duration::from_nanos(slot_ns.saturating_mul(k));
    let mut wheel: Vec<Vec<PacedViewer>> = (0..WHEEL).map(|_| Vec::new()).collect();
    let mut spare: Vec<PacedViewer> = Vec::new();
    // Absolute index of the next slot to run; slot k covers [base + k·slot, base + (k+1)·slot).
    let mut current: u64 = 1;
    let mut generation = close_gen.load(Ordering::Acquire);
    let slot_of =
        |t: Instant| (t.saturating_duration_since(base).as_nanos() / slot_ns as u128) as u64;
    // Where a viewer due at `when` goes: never the slot being run, never past the wheel.
    let place = |wheel: &mut Vec<Vec<PacedViewer>>, current: u64, v: PacedViewer, when: Instant| {
        let k = slot_of(when).clamp(current, current + WHEEL as u64 - 1);
        wheel[(k % WHEEL as u64) as usize].push(v);
    };
    let mut added: Vec<Box<PacedViewer>> = Vec::new();
    loop {
        let wait = slot_start(current).saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Cmd::Add(v)) => added.push(v),
            Ok(Cmd::Wake) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        // Everything else queued, in one go (a burst of new viewers is one wake-up).
        while let Ok(c) = rx.try_recv() {
            if let Cmd::Add(v) = c {
                added.push(v);
            }
        }
        let now_gen = close_gen.load(Ordering::Acquire);
        if now_gen != generation {
            generation = now_gen;
            for s in wheel.iter_mut() {
                s.retain(|v| v.generation >= generation);
            }
        }
        for v in added.drain(..) {
            if v.generation >= generation {
                // Its first period was sent at accept: next service one margin before due.
                let when = v.t0
                    + v.pace
                        .next_service(v.pos, Duration::ZERO, margin(cfg.period), slot);
                place(&mut wheel, current, *v, when);
            }
        }
        let now = Instant::now();
        while slot_start(current) <= now {
            let idx = (current % WHEEL as u64) as usize;
            std::mem::swap(&mut wheel[idx], &mut spare);
            current += 1;
            for mut v in spare.drain(..) {
                match v.serve(now, slot, &cfg) {
                    Served::At(d) => {
                        let when = v.t0 + d;
                        place(&mut wheel, current, v, when);
                    }
                    Served::Ended(e) => {
                        match e {
                            End::TimedOut => {
                                stats.write_timeouts.fetch_add(1, Ordering::Relaxed);
                            }
                            End::Failed => {
                                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                            }
                            End::Done => {}
                        }
                        drop(v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace() -> Pace {
        Pace {
            start: 1000,
            end: 1_000_000,
            prefetch: 5000,
            rate: 10_000.0,
            ahead: Duration::from_secs(1),
        }
    }

    #[test]
    fn target_is_prefetch_plus_rate_one_period_ahead() {
        let p = pace();
        assert_eq!(p.target(Duration::ZERO), 1000 + 5000 + 10_000);
        assert_eq!(p.target(Duration::from_secs(2)), 1000 + 5000 + 30_000);
        assert_eq!(p.target(Duration::from_secs(10_000)), 1_000_000);
    }

    #[test]
    fn due_inverts_target_and_next_service_keeps_a_margin() {
        let p = pace();
        assert_eq!(p.due(1000), Duration::ZERO);
        assert_eq!(p.due(6000), Duration::ZERO);
        assert_eq!(p.due(16_000), Duration::from_secs(1));
        let slot = Duration::from_millis(62);
        // Right after a service at t = 3 s the viewer holds bytes due until 4 s.
        let pos = p.target(Duration::from_secs(3));
        let next = p.next_service(pos, Duration::from_secs(3), slot * 2, slot);
        assert_eq!(next, Duration::from_secs(4) - slot * 2);
        // A viewer that has nothing ahead is served one slot later at the earliest.
        let next = p.next_service(6000, Duration::from_secs(3), slot * 2, slot);
        assert_eq!(next, Duration::from_secs(3) + slot);
    }
}
