//! Progress ticks: how a module's run loop shows the runtime that it is still doing its job,
//! and the runtime's own liveness verdict, which a module that drives a hardware watchdog
//! follows.
//!
//! A tick is one atomic store of a monotonic timestamp (no allocation, no lock), cheap
//! enough for every loop iteration. The supervisor restarts a module whose last tick is
//! older than its budget ([`crate::Capability::progress_budget`]); when the module's task
//! cannot be stopped (a thread blocked in a synchronous call), the runtime stops petting
//! systemd's service watchdog and withdraws its [`Liveness`] verdict.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The progress budget a module gets unless it overrides
/// [`crate::Capability::progress_budget`].
pub const DEFAULT_PROGRESS_BUDGET: Duration = Duration::from_secs(300);

/// The runtime's verdict on the whole agent, shared by every module's [`Progress`]: "healthy
/// until" a monotonic deadline that the runtime extends each time it pets systemd's service
/// watchdog (or would, when systemd armed none). A lapsed deadline means the runtime is stuck
/// or has found a module it cannot restart.
#[derive(Debug)]
pub struct Liveness {
    origin: Instant,
    /// Milliseconds since `origin` until which the agent counts as healthy; 0 = never.
    healthy_until: AtomicU64,
}

impl Liveness {
    /// A verdict that has not vouched for anything yet.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            healthy_until: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1: 0 stays "never"; u64 milliseconds cover any uptime.
        u64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// The runtime vouches for the agent for `valid_for` from now. Only the runtime calls
    /// this.
    pub fn vouch(&self, valid_for: Duration) {
        let ms = u64::try_from(valid_for.as_millis()).unwrap_or(u64::MAX);
        self.healthy_until
            .store(self.now_ms().saturating_add(ms), Ordering::Release);
    }

    /// The runtime withdraws its verdict at once.
    pub fn withdraw(&self) {
        self.healthy_until.store(0, Ordering::Release);
    }

    /// Does the runtime currently vouch for the agent?
    pub fn healthy(&self) -> bool {
        self.now_ms() < self.healthy_until.load(Ordering::Acquire)
    }
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug)]
struct Inner {
    budget: Duration,
    origin: Instant,
    /// Milliseconds since `origin` of the last tick.
    last: AtomicU64,
    agent: Arc<Liveness>,
}

/// One module's progress handle (in [`crate::Context::progress`]); clones share the tick.
#[derive(Debug, Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

impl Progress {
    /// A handle with `budget`, following the runtime's verdict `agent`. Built by the runtime
    /// (and by tests); counts as ticked now.
    pub fn new(budget: Duration, agent: Arc<Liveness>) -> Self {
        Self {
            inner: Arc::new(Inner {
                budget,
                origin: Instant::now(),
                last: AtomicU64::new(0),
                agent,
            }),
        }
    }

    /// Shows progress: one atomic store of the monotonic time.
    pub fn tick(&self) {
        let ms = u64::try_from(self.inner.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.last.store(ms, Ordering::Relaxed);
    }

    /// How long ago the last tick was (or the handle was made).
    pub fn since_tick(&self) -> Duration {
        let now = self.inner.origin.elapsed();
        now.saturating_sub(Duration::from_millis(
            self.inner.last.load(Ordering::Relaxed),
        ))
    }

    /// The module's budget: the supervisor restarts it after this long without a tick.
    pub fn budget(&self) -> Duration {
        self.inner.budget
    }

    /// How often a waiting loop should tick: a third of the budget.
    pub fn interval(&self) -> Duration {
        (self.inner.budget / 3).max(Duration::from_millis(1))
    }

    /// Sleeps one [`interval`](Self::interval): a `select!` branch for loops that wait on
    /// events, so that the loop comes round to tick while nothing happens.
    pub async fn pulse(&self) {
        tokio::time::sleep(self.interval()).await;
    }

    /// Awaits `fut`, ticking every [`interval`](Self::interval) while it is pending: waiting
    /// on a long awaited operation (a download, a child process, the next event) is progress,
    /// since the task is still being polled. A thread blocked inside `fut` stops the ticks.
    pub async fn during<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        self.tick();
        loop {
            tokio::select! {
                out = &mut fut => {
                    self.tick();
                    return out;
                }
                () = self.pulse() => self.tick(),
            }
        }
    }

    /// Does the runtime currently vouch for the whole agent (the condition that gates its
    /// pings to systemd's service watchdog)? A module driving a hardware watchdog pets it only
    /// while this holds.
    pub fn agent_healthy(&self) -> bool {
        self.inner.agent.healthy()
    }
}

impl Default for Progress {
    /// The default budget and a verdict of its own that never vouches (for contexts built
    /// outside the runtime).
    fn default() -> Self {
        Self::new(DEFAULT_PROGRESS_BUDGET, Arc::new(Liveness::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_vouches_until_its_deadline_or_withdrawal() {
        let l = Liveness::new();
        assert!(!l.healthy(), "vouched before anything");
        l.vouch(Duration::from_secs(60));
        assert!(l.healthy());
        l.withdraw();
        assert!(!l.healthy());
        l.vouch(Duration::ZERO);
        assert!(!l.healthy(), "a zero validity lapses at once");
    }

    #[test]
    fn tick_resets_the_age() {
        let p = Progress::new(Duration::from_secs(9), Arc::new(Liveness::new()));
        assert_eq!(p.budget(), Duration::from_secs(9));
        assert_eq!(p.interval(), Duration::from_secs(3));
        std::thread::sleep(Duration::from_millis(30));
        assert!(p.since_tick() >= Duration::from_millis(30));
        p.tick();
        assert!(p.since_tick() < Duration::from_millis(30));
        assert!(!p.agent_healthy());
    }

    #[tokio::test]
    async fn during_ticks_while_the_future_is_pending() {
        let p = Progress::new(Duration::from_millis(60), Arc::new(Liveness::new()));
        let watcher = p.clone();
        let waited = tokio::spawn(async move { p.during(std::future::pending::<()>()).await });
        // Well past the budget, the handle has still been ticked within it (a wait without
        // `during` would be 300 ms old and growing).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while watcher.since_tick() >= watcher.budget() {
            assert!(Instant::now() < deadline, "no tick while pending");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        waited.abort();
    }
}
