//! Runs every probe on its own interval, each in its own task: a slow probe
//! never delays another, and one probe never has two checks in flight. Starts
//! are jittered so probes of many agents and many probes of one agent do not
//! fire together.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop_probes::{Probe, ProbeError, Report};
use futures_util::FutureExt;
use rand::Rng;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::probe_config::ProbeConfig;
use crate::telemetry::ProbeMetrics;
use backstop_judge::observe::{Observation, Outcome, ProbeState};

/// A probe's configuration and the state the scheduler keeps for it.
pub struct ProbeSlot {
    pub cfg: ProbeConfig,
    pub state: Mutex<ProbeState>,
    /// Milliseconds since `epoch` of the loop's last sign of life.
    beat: AtomicU64,
    /// Asks the loop for a check now, ahead of its schedule: `asked` says
    /// a check is owed, `now` wakes the loop.
    now: tokio::sync::Notify,
    asked: std::sync::atomic::AtomicBool,
}

impl ProbeSlot {
    pub fn new(cfg: ProbeConfig, span: Duration) -> Self {
        Self {
            cfg,
            state: Mutex::new(ProbeState::new(span)),
            beat: AtomicU64::new(0),
            now: tokio::sync::Notify::new(),
            asked: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Asks for a check as soon as none is in flight (the watch wants to
    /// know whether a dependency fails before it blames a deployment).
    /// Several requests before the check are one.
    pub fn check_soon(&self) {
        self.asked.store(true, Ordering::Release);
        self.now.notify_one();
    }

    /// A copy of the state, taken under the lock, without the baseline
    /// feed (its reservoirs are no reader's business). The agent itself
    /// reads the state under the lock (`/status`, the rules).
    #[cfg(test)]
    pub fn snapshot(&self) -> ProbeState {
        let state = self.state.lock().expect("probe state lock");
        ProbeState {
            last: state.last.clone(),
            consecutive_failures: state.consecutive_failures,
            window: state.window.clone(),
            span: state.span,
            recorded: state.recorded,
            feed: None,
        }
    }

    /// Whether the loop showed life recently enough for its schedule.
    pub fn alive(&self, epoch: Instant, now: Instant) -> bool {
        let last = Duration::from_millis(self.beat.load(Ordering::Relaxed));
        let allowed = self.cfg.interval + self.cfg.timeout + Duration::from_secs(10);
        now.saturating_duration_since(epoch) <= last + allowed
    }
}

/// Something the scheduler can check: a [`Probe`], or a stand-in in tests.
pub trait Check: Send + Sync + 'static {
    fn check(
        &self,
    ) -> impl std::future::Future<
        Output = Result<backstop_probes::Report, backstop_probes::ProbeError>,
    > + Send;
}

impl Check for Probe {
    fn check(
        &self,
    ) -> impl std::future::Future<
        Output = Result<backstop_probes::Report, backstop_probes::ProbeError>,
    > + Send {
        Probe::check(self)
    }
}

/// Runs one check with the probe's timeout; a panic inside the probe is the
/// agent's fault and becomes an `error` observation. Probes enforce the
/// timeout themselves with a more precise reason ("no response within 1s");
/// the agent's own bound, a little later, catches any that do not.
pub async fn check_once(probe: &impl Check, cfg: &ProbeConfig) -> Observation {
    let start = Instant::now();
    // Boxed: the check's future (several KiB for the largest probe types)
    // lives on the heap only while a check runs, instead of inside every
    // probe loop's task for good.
    let run = AssertUnwindSafe(Box::pin(probe.check())).catch_unwind();
    let grace = (cfg.timeout / 10).min(Duration::from_millis(250));
    match tokio::time::timeout(cfg.timeout + grace, run).await {
        Ok(Ok(result)) => observation(result, start.elapsed(), cfg.max_latency),
        Ok(Err(_panic)) => observation(
            Err(ProbeError::cannot_run("the probe panicked (agent bug)")),
            start.elapsed(),
            None,
        ),
        Err(_) => Observation::timed_out(cfg.timeout),
    }
}

/// What a probe reported, as an observation judged against `max_latency`
/// (`elapsed` is the wall time of the check): a check that succeeded is
/// `ok`, or `degraded` when slower than `max_latency`; an unhealthy target
/// is `failed`, with whatever was measured before the failure; a probe that
/// could not run is `error`, with no signals.
pub fn observation(
    result: Result<Report, ProbeError>,
    elapsed: Duration,
    max_latency: Option<Duration>,
) -> Observation {
    let (outcome, report, error) = match result {
        Ok(report) => (Outcome::Ok, report, None),
        Err(ProbeError::Unhealthy { message, report }) => (Outcome::Failed, report, Some(message)),
        Err(ProbeError::CannotRun(message)) => (Outcome::Error, Report::new(), Some(message)),
    };
    Observation::from_check(outcome, report.signals, error, elapsed, max_latency)
}

/// The random delay before a probe's first check: up to one interval, at
/// most five seconds, so a fresh agent has its first answers quickly.
pub fn first_delay(interval: Duration) -> Duration {
    let cap = interval.min(Duration::from_secs(5));
    rand::thread_rng().gen_range(Duration::ZERO..=cap)
}

/// How the probe loops wake the watch loop: after every check, and with
/// `changed` set when a probe's outcome changed, since a new deployment
/// may be behind it and its id is read again before anything is counted.
#[derive(Debug, Default)]
pub struct Wake {
    notify: tokio::sync::Notify,
    changed: std::sync::atomic::AtomicBool,
}

impl Wake {
    /// A check was recorded; `changed` when its outcome differs from the
    /// probe's previous one.
    pub fn checked(&self, changed: bool) {
        if changed {
            self.changed.store(true, Ordering::Release);
        }
        self.notify.notify_one();
    }

    /// Waits for the next check.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Whether an outcome changed since the last call.
    pub fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }
}

/// Checks one probe every interval until `stop` turns true.
pub async fn run_probe(
    slot: Arc<ProbeSlot>,
    probe: impl Check,
    metrics: ProbeMetrics,
    epoch: Instant,
    wake: Option<Arc<Wake>>,
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
            // The stop first: a probe slower than its interval always has a
            // tick due, and an unbiased select would go on checking after
            // the stop with even odds each round.
            biased;
            _ = stop.changed() => return,
            _ = ticks.tick() => {}
            _ = slot.now.notified() => {
                // A wake-up left over from requests a check already served.
                if !slot.asked.swap(false, Ordering::AcqRel) {
                    continue;
                }
                ticks.reset();
            }
        }
        beat(&slot);
        let obs = check_once(&probe, cfg).await;
        let (flipped, changed, failures) = {
            let mut state = slot.state.lock().expect("probe state lock");
            let before = state.last.as_ref().map(|o| o.outcome);
            let changed = obs.outcome != Outcome::Error && before.is_some_and(|b| b != obs.outcome);
            let flipped = state.record(obs.clone(), Instant::now());
            (flipped, changed, state.consecutive_failures)
        };
        metrics.record(&obs, failures);
        log_observation(cfg, &obs, flipped);
        if let Some(w) = &wake {
            w.checked(changed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A probe that takes `delay` and counts overlapping checks.
    struct Slow {
        delay: Duration,
        running: Arc<AtomicU32>,
        overlaps: Arc<AtomicU32>,
        fail: bool,
    }

    impl Check for Slow {
        async fn check(&self) -> Result<Report, ProbeError> {
            /// Counts the check as finished even when the timeout drops it.
            struct Running(Arc<AtomicU32>);
            impl Drop for Running {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            if self.running.fetch_add(1, Ordering::SeqCst) > 0 {
                self.overlaps.fetch_add(1, Ordering::SeqCst);
            }
            let _running = Running(self.running.clone());
            tokio::time::sleep(self.delay).await;
            if self.fail {
                Err(ProbeError::unhealthy("status 503"))
            } else {
                Ok(Report::new())
            }
        }
    }

    fn cfg(name: &str, interval_ms: u64, timeout_ms: u64) -> ProbeConfig {
        ProbeConfig {
            name: name.into(),
            level: 1,
            spec: backstop_probes::ProbeSpec::Tcp(backstop_probes::tcp::TcpConfig {
                address: "127.0.0.1:1".into(),
            }),
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            max_latency: None,
            critical: false,
            depends_on: Vec::new(),
        }
    }

    fn slow(delay_ms: u64, fail: bool) -> (Slow, Arc<AtomicU32>) {
        let overlaps = Arc::new(AtomicU32::new(0));
        (
            Slow {
                delay: Duration::from_millis(delay_ms),
                running: Arc::new(AtomicU32::new(0)),
                overlaps: overlaps.clone(),
                fail,
            },
            overlaps,
        )
    }

    #[test]
    fn a_probe_result_is_an_observation_of_whose_fault_it_is() {
        let unhealthy = observation(
            Err(ProbeError::Unhealthy {
                message: "503".into(),
                report: Report::new().with("status", 503.0),
            }),
            Duration::from_secs(2),
            None,
        );
        assert_eq!(unhealthy.outcome, Outcome::Failed);
        assert_eq!(unhealthy.error.as_deref(), Some("503"));
        assert_eq!(
            unhealthy.signals,
            [("status", 503.0), ("latency_ms", 2000.0)]
        );
        let own = observation(
            Err(ProbeError::cannot_run("no credentials")),
            Duration::from_secs(2),
            None,
        );
        assert_eq!(own.outcome, Outcome::Error);
        assert_eq!(own.error.as_deref(), Some("no credentials"));
        assert!(own.signals.is_empty());
        let slow = observation(
            Ok(Report::new().with("latency_ms", 150.0)),
            Duration::from_millis(151),
            Some(Duration::from_millis(100)),
        );
        assert_eq!((slow.outcome, slow.error), (Outcome::Degraded, None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_probe_neither_overlaps_itself_nor_delays_another() {
        let (stop_tx, stop) = watch::channel(false);
        let epoch = Instant::now();
        // Slow: each check takes 2.5 intervals, cut by its timeout.
        let slow_slot = Arc::new(ProbeSlot::new(
            cfg("slow", 1000, 1000),
            Duration::from_secs(3600),
        ));
        let (slow_probe, overlaps) = slow(2500, false);
        let fast_slot = Arc::new(ProbeSlot::new(
            cfg("fast", 1000, 500),
            Duration::from_secs(3600),
        ));
        let (fast_probe, _) = slow(10, false);
        let a = tokio::spawn(run_probe(
            slow_slot.clone(),
            slow_probe,
            ProbeMetrics::new("slow", 1, "tcp"),
            epoch,
            None,
            stop.clone(),
        ));
        let b = tokio::spawn(run_probe(
            fast_slot.clone(),
            fast_probe,
            ProbeMetrics::new("fast", 1, "tcp"),
            epoch,
            None,
            stop,
        ));
        tokio::time::sleep(Duration::from_secs(60)).await;
        stop_tx.send(true).unwrap();
        a.await.unwrap();
        b.await.unwrap();
        assert_eq!(overlaps.load(Ordering::SeqCst), 0);
        let fast = fast_slot.snapshot();
        assert!(
            (55..=61).contains(&fast.window.len()),
            "fast probe ran {} times in 60s",
            fast.window.len()
        );
        let slow = slow_slot.snapshot();
        assert_eq!(
            slow.last.unwrap().error.as_deref(),
            Some("timed out after 1s")
        );
        assert!(slow.window.len() <= 61, "{}", slow.window.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_asked_for_runs_at_once_and_the_schedule_goes_on_from_it() {
        let (stop_tx, stop) = watch::channel(false);
        let slot = Arc::new(ProbeSlot::new(
            cfg("db", 60_000, 1000),
            Duration::from_secs(3600),
        ));
        let (probe, _) = slow(10, false);
        let wake = Arc::new(Wake::default());
        let task = tokio::spawn(run_probe(
            slot.clone(),
            probe,
            ProbeMetrics::new("db", 1, "tcp"),
            Instant::now(),
            Some(wake.clone()),
            stop,
        ));
        // The first check comes within 5 s (the jittered start).
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(slot.snapshot().window.len(), 1);
        slot.check_soon();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(slot.snapshot().window.len(), 2, "checked at once");
        // Asked twice before it runs: one check.
        slot.check_soon();
        slot.check_soon();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(slot.snapshot().window.len(), 3);
        tokio::time::sleep(Duration::from_secs(50)).await;
        assert_eq!(
            slot.snapshot().window.len(),
            3,
            "the next one a whole interval later"
        );
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(slot.snapshot().window.len(), 4);
        // Every check woke the watch; none changed its outcome.
        assert!(!wake.take_changed());
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_slower_than_its_interval_starts_no_check_after_the_stop() {
        // Such a probe always has a tick due when a check ends; the stop must
        // win over it every time, not by chance. Twenty rounds: were it a
        // coin toss, two checks after the stop would show in one of them
        // with a likelihood above 99%.
        for _ in 0..20 {
            let (stop_tx, stop) = watch::channel(false);
            let slot = Arc::new(ProbeSlot::new(
                cfg("slow", 1000, 1000),
                Duration::from_secs(3600),
            ));
            let (probe, _) = slow(2500, false);
            let task = tokio::spawn(run_probe(
                slot.clone(),
                probe,
                ProbeMetrics::new("slow", 1, "tcp"),
                Instant::now(),
                None,
                stop,
            ));
            tokio::time::sleep(Duration::from_secs(10)).await;
            let before = slot.snapshot().window.len();
            stop_tx.send(true).unwrap();
            task.await.unwrap();
            let after = slot.snapshot().window.len();
            // At most the check in flight when the stop came.
            assert!(after <= before + 1, "{before} checks, then {after}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_are_counted_each_interval() {
        let (stop_tx, stop) = watch::channel(false);
        let slot = Arc::new(ProbeSlot::new(
            cfg("health", 1000, 500),
            Duration::from_secs(3600),
        ));
        let (probe, _) = slow(5, true);
        let task = tokio::spawn(run_probe(
            slot.clone(),
            probe,
            ProbeMetrics::new("health", 1, "tcp"),
            Instant::now(),
            None,
            stop,
        ));
        // First check within the jitter (at most one interval), then one per second.
        tokio::time::sleep(Duration::from_millis(3000 + 1000 + 100)).await;
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        let state = slot.snapshot();
        assert!(
            state.consecutive_failures >= 3,
            "{}",
            state.consecutive_failures
        );
        assert_eq!(state.last.unwrap().outcome, Outcome::Failed);
    }

    #[test]
    fn first_checks_are_spread_over_at_most_one_interval() {
        for _ in 0..1000 {
            assert!(first_delay(Duration::from_secs(2)) <= Duration::from_secs(2));
            assert!(first_delay(Duration::from_secs(60)) <= Duration::from_secs(5));
        }
    }
}
