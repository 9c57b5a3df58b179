//! The agent's Prometheus exposition and logs. The binary installs the
//! recorder; everything else updates metrics through handles made once per
//! probe, so a check costs a few atomic operations.

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::observe::{Observation, Outcome};

/// Buckets of `backstop_probe_duration_seconds`.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Builds the recorder and its render handle, and installs it as the
/// process's global recorder.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("backstop_probe_duration_seconds".into()),
            DURATION_BUCKETS,
        )?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
    describe();
    Ok(handle)
}

/// HELP text for every metric SPEC names.
pub fn describe() {
    describe_gauge!(
        "backstop_probe_up",
        "Whether the probe's last check found its target up (1) or not (0)."
    );
    describe_histogram!(
        "backstop_probe_duration_seconds",
        metrics::Unit::Seconds,
        "How long each check took."
    );
    describe_counter!(
        "backstop_probe_checks_total",
        "Checks run, by outcome: ok, degraded, failed or error (the probe could not run)."
    );
    describe_gauge!(
        "backstop_probe_consecutive_failures",
        "Failed checks in a row; the probe's own errors do not count."
    );
    describe_gauge!(
        "backstop_rule_firing",
        "Whether the rule's condition holds now (1) or not (0)."
    );
    describe_gauge!(
        "backstop_deployment_info",
        "The deployment being watched and its watch state."
    );
    describe_counter!(
        "backstop_rollbacks_total",
        "Rollbacks by target and outcome: succeeded, failed or dry_run."
    );
    describe_gauge!("backstop_build_info", "The agent's version.");
    describe_gauge!(
        "backstop_store_up",
        "Whether the store (embedded, or PostgreSQL shared by the replicas) worked at the last step (1) or failed (0); while it fails nothing is rolled back."
    );
    describe_gauge!(
        "backstop_fleet_up",
        "With [fleet]: whether the fleet's coordination store answered at the last try (1) or not (0); while it fails the fleet is not rolled back (unless on_coordination_loss = \"local\")."
    );
    describe_gauge!(
        "backstop_fleet_live_replicas",
        "With [fleet]: the replicas on this deployment whose heartbeat is fresh, as read last."
    );
    describe_gauge!(
        "backstop_fleet_agreeing",
        "With [fleet]: the live replicas whose own verdict on the rollback rule holds, as read last."
    );
    crate::notify::describe();
}

/// How often histogram samples are folded into their buckets between
/// scrapes.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the histograms' recorded samples into their buckets every
/// [`UPKEEP_EVERY`] until `stop` turns true. The recorder keeps every sample
/// until then: without it, an agent nobody scrapes would hold 8 bytes more
/// for every check, for good.
pub async fn upkeep(handle: PrometheusHandle, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => handle.run_upkeep(),
            _ = stop.changed() => return,
        }
    }
}

/// Sets the constant `backstop_build_info` series.
pub fn build_info() {
    metrics::gauge!("backstop_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// A probe's metric handles, made once.
pub struct ProbeMetrics {
    up: Gauge,
    duration: Histogram,
    checks: [Counter; 4],
    failures: Gauge,
}

impl ProbeMetrics {
    pub fn new(probe: &str, level: u8, kind: &'static str) -> Self {
        let labels = [
            ("probe", probe.to_string()),
            ("level", level.to_string()),
            ("type", kind.to_string()),
        ];
        let checks = Outcome::ALL.map(|o| {
            let mut l = labels.to_vec();
            l.push(("outcome", o.as_str().to_string()));
            let c = metrics::counter!("backstop_probe_checks_total", &l);
            c.increment(0);
            c
        });
        Self {
            up: metrics::gauge!("backstop_probe_up", &labels),
            duration: metrics::histogram!("backstop_probe_duration_seconds", &labels),
            checks,
            failures: metrics::gauge!("backstop_probe_consecutive_failures", "probe" => probe.to_string()),
        }
    }

    pub fn record(&self, obs: &Observation, consecutive_failures: u32) {
        self.up.set(if obs.outcome.is_up() { 1.0 } else { 0.0 });
        if obs.outcome != Outcome::Error {
            self.duration.record(obs.latency.as_secs_f64());
        }
        let i = Outcome::ALL
            .iter()
            .position(|o| *o == obs.outcome)
            .expect("ALL has every outcome");
        self.checks[i].increment(1);
        self.failures.set(consecutive_failures as f64);
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Installs the tracing subscriber; `RUST_LOG` overrides the default `info`.
pub fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder.with_target(false).init(),
    }
}
