//! The clock guard. At start-up it asks the configured SNTP servers how far the kernel's
//! clock is off (the median of those that answer) and, past the limit, refuses the start
//! (the runtime's [`StartGate`], exit code 4) or, with `on_skew = "degrade"`, starts with
//! the clock marked untrusted. While running it checks again every `recheck_hours`, right
//! after the kernel reports a clock step, every `retry_secs` while the clock is skewed, and
//! from `retry_secs` backing off to 30 min while no server answers; each finding goes to the runtime's clock ([`ClockAuthority`]), which every
//! module's `Context` reads and the heartbeat shows. It never sets the clock: that is
//! systemd-timesyncd's or chrony's job.
//!
//! Building blocks: the SNTP codec ([`sntp`]), the client asking several servers
//! ([`client`]), the verdict ([`verdict`]) and the kernel's view ([`kernel`]).

pub mod client;
pub mod config;
pub mod kernel;
pub mod sntp;
pub mod verdict;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fleet_module_api::{
    async_trait, Capability, Clock, ClockAuthority, ClockStatus, ConfigError, Context, Descriptor,
    ExtensionKind, ExtensionsBuilder, GateVerdict, Health, ModuleError, Needs, Probe, StartGate,
    SystemClock,
};

use config::{Config, OnSkew, NAME};
use verdict::Verdict;

/// Longest wait between checks while no server answers.
const UNVERIFIED_MAX_RETRY: Duration = Duration::from_secs(1800);

/// How the agent finds and configures this module.
pub const DESCRIPTOR: Descriptor = Descriptor { name: NAME, build };

fn build(section: Option<&toml::Value>) -> Result<Arc<dyn Capability>, ConfigError> {
    Ok(Arc::new(TimeGuard::new(Config::from_toml(section)?)))
}

/// The module.
pub struct TimeGuard {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Config,
    authority: OnceLock<Arc<dyn ClockAuthority>>,
    /// The last status reported (`None` before the first check).
    last: Mutex<Option<ClockStatus>>,
}

impl TimeGuard {
    /// A guard with `cfg` (already validated).
    pub fn new(cfg: Config) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                authority: OnceLock::new(),
                last: Mutex::new(None),
            }),
        }
    }
}

impl Inner {
    fn on_skew(&self) -> OnSkew {
        self.cfg.on_skew().unwrap_or(OnSkew::RefuseStart)
    }

    /// One round of queries; the result goes to the runtime's clock, and a change of state
    /// is logged once (a clock that stays skewed does not repeat itself every retry).
    async fn check(&self) -> (Verdict, ClockStatus) {
        let timeout = Duration::from_millis(self.cfg.query_timeout_ms);
        let round = client::query_all(&self.cfg.servers, timeout).await;
        let verdict = Verdict::of(&round, self.cfg.limit_secs as f64);
        // The kernel clock being judged (the runtime's guarded clock reads the same).
        let checked_at = SystemClock.unix_secs();
        let kernel = kernel::sync_state();
        let ms = |s: f64| (s * 1000.0).round() as i64;
        let status = match &verdict {
            Verdict::Trusted { offset_secs } => ClockStatus::Trusted {
                offset_ms: ms(*offset_secs),
                checked_at,
                kernel,
            },
            Verdict::Skewed {
                offset_secs,
                limit_secs,
            } => ClockStatus::Skewed {
                offset_ms: ms(*offset_secs),
                limit_ms: ms(*limit_secs),
                checked_at,
                kernel,
            },
            Verdict::Unverified { why } => ClockStatus::Unverified {
                reason: why.clone(),
                checked_at,
                kernel,
            },
        };
        let before = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(status.clone());
        if before.as_ref().map(ClockStatus::state) != Some(status.state()) {
            self.log_change(before.is_some(), &verdict, &status);
        }
        if let Some(a) = self.authority.get() {
            a.report(status.clone());
        }
        (verdict, status)
    }

    fn log_change(&self, running: bool, verdict: &Verdict, status: &ClockStatus) {
        let offset_ms = status.offset_ms().unwrap_or(0);
        match verdict {
            Verdict::Trusted { .. } if running => tracing::info!(
                offset_ms,
                "clock within the limit again: time-bound work allowed"
            ),
            Verdict::Trusted { .. } => {
                tracing::info!(offset_ms, "clock checked: within the limit")
            }
            Verdict::Skewed { .. } => {
                let why = verdict.refusal().unwrap_or_default();
                if running || self.on_skew() == OnSkew::Degrade {
                    tracing::warn!(
                        offset_ms,
                        "{why}; time-bound work (command expiry, secret fetch) is refused until the clock is back within the limit"
                    );
                }
                // A refused start is logged by the runtime, with the exit.
            }
            Verdict::Unverified { why } => tracing::warn!(
                "clock unverified: no time server answered ({why}); running on the kernel clock"
            ),
        }
    }
}

/// The start-up check, as the runtime asks it before anything else runs.
struct Gate(Arc<Inner>);

#[async_trait]
impl StartGate for Gate {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn admit(&self) -> GateVerdict {
        if self.0.cfg.servers.is_empty() {
            return GateVerdict::Admit;
        }
        let (verdict, _) = self.0.check().await;
        match verdict.refusal() {
            Some(message) if self.0.on_skew() == OnSkew::RefuseStart => GateVerdict::Refuse {
                message,
                hold: Duration::from_secs(self.0.cfg.hold_secs),
                recheck: Duration::from_secs(self.0.cfg.retry_secs),
            },
            _ => GateVerdict::Admit,
        }
    }
}

#[async_trait]
impl Capability for TimeGuard {
    fn name(&self) -> &'static str {
        NAME
    }

    fn needs(&self) -> Needs {
        Needs::none()
            .consumes(ExtensionKind::ClockAuthority)
            .exclusive("clock")
    }

    fn provide(&self, ext: &mut ExtensionsBuilder) {
        if let Some(a) = ext.get::<dyn ClockAuthority>() {
            let _ = self.inner.authority.set(a);
        }
        ext.provide::<dyn StartGate>(Arc::new(Gate(self.inner.clone())));
    }

    async fn probe(&self, _ctx: &Context) -> Probe {
        let cfg = &self.inner.cfg;
        if cfg.servers.is_empty() {
            return Probe::unavailable("no time servers configured ([modules.time-guard] servers)");
        }
        Probe::available(format!(
            "{} server(s) ({}); limit {} s, on_skew {}",
            cfg.servers.len(),
            cfg.servers.join(", "),
            cfg.limit_secs,
            cfg.on_skew
        ))
    }

    async fn run(self: Arc<Self>, ctx: Context) -> Result<(), ModuleError> {
        let inner = &self.inner;
        let recheck = Duration::from_secs_f64(inner.cfg.recheck_hours * 3600.0);
        let retry = Duration::from_secs(inner.cfg.retry_secs);
        let mut steps = match kernel::StepWatch::new() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for clock steps; checking on the timer only");
                None
            }
        };
        if inner
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            inner.check().await;
            ctx.status.health_changed(NAME);
        }
        // While unverified (offline), the retry backs off to UNVERIFIED_MAX_RETRY: a clock
        // step (an NTP daemon syncing once the network is back) still re-checks at once.
        let mut unverified_retry = retry;
        loop {
            let state = inner
                .last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map_or("unguarded", ClockStatus::state);
            let wait = match state {
                "trusted" => recheck,
                "unverified" => {
                    let w = unverified_retry;
                    unverified_retry = (w * 2).min(UNVERIFIED_MAX_RETRY.max(retry));
                    w
                }
                _ => retry,
            }
            .min(recheck);
            if state != "unverified" {
                unverified_retry = retry;
            }
            let due = tokio::time::Instant::now() + wait;
            // Waiting is the job between checks: tick on every pulse, check only when due.
            loop {
                ctx.progress.tick();
                tokio::select! {
                    () = ctx.shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep_until(due) => break,
                    () = ctx.progress.pulse() => {}
                    r = stepped(&mut steps) => match r {
                        Ok(()) => {
                            tracing::info!("kernel clock stepped: checking it again");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "clock step watch failed; checking on the timer only");
                            steps = None;
                        }
                    },
                }
            }
            ctx.progress.tick();
            inner.check().await;
        }
    }

    fn health(&self) -> Health {
        match &*self.inner.last.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Health::Starting,
            // Measuring is the module's job, and it does it whatever it finds; the clock's
            // state is the heartbeat's `clock` flag, not this module's health (a skewed
            // clock must not hold back an upgrade's check-in on a healthy agent).
            Some(_) => Health::Healthy,
        }
    }
}

async fn stepped(w: &mut Option<kernel::StepWatch>) -> std::io::Result<()> {
    match w {
        Some(w) => w.stepped().await,
        None => std::future::pending().await,
    }
}
