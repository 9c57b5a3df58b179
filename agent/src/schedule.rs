//! Runs every probe on its own interval, each in its own task: a slow probe
//! never delays another, and one probe never has two checks in flight. Starts
//! are jittered so probes of many agents and many probes of one agent do not
//! fire together.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop_probes::Probe;
use futures_util::FutureExt;
use rand::Rng;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::ProbeConfig;
use crate::observe::{Observation, Outcome, ProbeState};
use crate::telemetry::ProbeMetrics;

/// A probe's configuration and the state the scheduler keeps for it.
pub struct ProbeSlot {
    pub cfg: ProbeConfig,
    pub state: Mutex<ProbeState>,
    /// Milliseconds since `epoch` of the loop's last sign of life.
    beat: AtomicU64,
}

impl ProbeSlot {
    pub fn new(cfg: ProbeConfig, span: Duration) -> Self {
        Self {
            cfg,
            state: Mutex::new(ProbeState::new(span)),
            beat: AtomicU64::new(0),
        }
    }

    /// A copy of the state, taken under the lock.
    pub fn snapshot(&self) -> ProbeState {
        self.state.lock().expect("probe state lock").clone()
    }

    /// Whether the loop showed life recently enough for its schedule.
    pub fn alive(&self, epoch: Instant, now: Instant) -> bool {
        let last = Duration::from_millis(self.beat.load(Ordering::Relaxed));
        let allowed = self.cfg.interval + self.cfg.timeout + Duration::from_secs(10);
        now.saturating_duration_since(epoch) <= last + allowed
    }
}

/// Runs one check with the probe's timeout; a panic inside the probe is the
/// agent's fault and becomes an `error` observation.
pub async fn check_once(probe: &Probe, cfg: &ProbeConfig) -> Observation {
    let start = Instant::now();
    let run = AssertUnwindSafe(probe.check()).catch_unwind();
    match tokio::time::timeout(cfg.timeout, run).await {
        Ok(Ok(result)) => Observation::from_result(result, start.elapsed(), cfg.max_latency),
        Ok(Err(_panic)) => Observation::from_result(
            Err(backstop_probes::ProbeError::cannot_run(
                "the probe panicked (agent bug)",
            )),
            start.elapsed(),
            None,
        ),
        Err(_) => Observation::timed_out(cfg.timeout),
    }
}

/// The random delay before a probe's first check: up to one interval, at
/// most five seconds, so a fresh agent has its first answers quickly.
pub fn first_delay(interval: Duration) -> Duration {
    let cap = interval.min(Duration::from_secs(5));
    rand::thread_rng().gen_range(Duration::ZERO..=cap)
}

/// Checks one probe every interval until `stop` turns true.
pub async fn run_probe(
    slot: Arc<ProbeSlot>,
    probe: Probe,
    metrics: ProbeMetrics,
    epoch: Instant,
    wake: Option<Arc<tokio::sync::Notify>>,
    mut stop: watch::Receiver<bool>,
) {
    let cfg = &slot.cfg;
    let beat = |slot: &ProbeSlot| {
        let ms = Instant::now().saturating_duration_since(epoch).as_millis() as u64;
        slot.beat.store(ms, Ordering::Relaxed);
    };
    beat(&slot);
    let mut ticks =
        tokio::time::interval_at(Instant::now() + first_delay(cfg.interval), cfg.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        beat(&slot);
        let obs = check_once(&probe, cfg).await;
        let (flipped, failures) = {
            let mut state = slot.state.lock().expect("probe state lock");
            let flipped = state.record(obs.clone(), Instant::now());
            (flipped, state.consecutive_failures)
        };
        metrics.record(&obs, failures);
        log_observation(cfg, &obs, flipped);
        if let Some(w) = &wake {
            w.notify_one();
        }
        beat(&slot);
    }
}

/// Logs when a probe goes down or comes back, and every `error`: not on
/// every check.
fn log_observation(cfg: &ProbeConfig, obs: &Observation, flipped: bool) {
    let latency_ms = obs.latency.as_secs_f64() * 1e3;
    let error = obs.error.as_deref().unwrap_or("");
    match (obs.outcome, flipped) {
        (Outcome::Error, _) => tracing::warn!(
            probe = %cfg.name, level = cfg.level, r#type = cfg.type_name(),
            error = %error, "probe could not run"
        ),
        (Outcome::Failed, true) => tracing::warn!(
            probe = %cfg.name, level = cfg.level, r#type = cfg.type_name(),
            latency_ms, error = %error, "probe failing"
        ),
        (_, true) => tracing::info!(
            probe = %cfg.name, level = cfg.level, r#type = cfg.type_name(),
            latency_ms, outcome = obs.outcome.as_str(), "probe recovered"
        ),
        _ => tracing::debug!(
            probe = %cfg.name, outcome = obs.outcome.as_str(), latency_ms, "check"
        ),
    }
}
