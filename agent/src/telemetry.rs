//! The agent's Prometheus exposition and logs. The binary installs the
//! recorder for the agent-wide series; each probe's series are a few atomics
//! of its own ([`ProbeMetrics`]), made once, so a check costs a few atomic
//! operations and a probe's series take about 200 bytes, and `/metrics`
//! writes them straight into the one buffer it renders.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use backstop_judge::observe::{Observation, Outcome};

/// Buckets of `backstop_probe_duration_seconds`.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of `backstop_detection_seconds` and `backstop_recovery_seconds`:
/// from a few seconds (a health check failing at once) to an hour (a
/// sustained rule over a long watch, a slow platform).
pub const DELIVERY_BUCKETS: &[f64] = &[
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
];

/// Builds the recorder and its render handle, and installs it as the
/// process's global recorder.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(DETECTION_SECONDS.to_string()),
            DELIVERY_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(RECOVERY_SECONDS.to_string()),
            DELIVERY_BUCKETS,
        )?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
    describe();
    Ok(handle)
}

/// HELP text for every metric SPEC names that the recorder keeps (the
/// per-probe families are written by [`render_probes`]).
pub fn describe() {
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
    describe_counter!(
        DEPLOYMENTS_TOTAL,
        "Deployments this agent watched to an end, by outcome: stable or rolled_back."
    );
    describe_histogram!(
        DETECTION_SECONDS,
        Unit::Seconds,
        "From a deployment first seen to its automatic rollback decided, for each rollback called."
    );
    describe_histogram!(
        RECOVERY_SECONDS,
        Unit::Seconds,
        "From a deployment first seen to its rollback taking effect: the agent sees another deployment running after the platform accepted the call."
    );
    crate::notify::describe();
}

/// Delivery figures: change-failure rate and time to recover are one
/// PromQL query each. In a fleet every agent counts what it watched, so
/// each replica's series tell the same story.
pub const DEPLOYMENTS_TOTAL: &str = "backstop_deployments_total";
pub const DETECTION_SECONDS: &str = "backstop_detection_seconds";
pub const RECOVERY_SECONDS: &str = "backstop_recovery_seconds";

/// A deployment's watch ended with `outcome`: `stable` or `rolled_back`.
pub fn deployment_ended(outcome: &'static str) {
    metrics::counter!(DEPLOYMENTS_TOTAL, "outcome" => outcome).increment(1);
}

/// The seconds from `from_ms` to `to_ms` (Unix milliseconds), never
/// negative (a clock stepped back gives 0).
fn seconds_between(from_ms: u64, to_ms: u64) -> f64 {
    to_ms.saturating_sub(from_ms) as f64 / 1000.0
}

/// A deployment first seen at `first_seen_ms` was found bad and its
/// automatic rollback decided at `decided_ms`.
pub fn detected(first_seen_ms: u64, decided_ms: u64) {
    metrics::histogram!(DETECTION_SECONDS).record(seconds_between(first_seen_ms, decided_ms));
}

/// A deployment first seen at `first_seen_ms` was rolled back and another
/// deployment is running at `now_ms`.
pub fn recovered(first_seen_ms: u64, now_ms: u64) {
    metrics::histogram!(RECOVERY_SECONDS).record(seconds_between(first_seen_ms, now_ms));
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

/// Renders everything `/metrics` shows: the recorder's agent-wide series
/// (after folding its histogram samples), then every probe's series, into
/// one buffer.
pub fn render(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    let mut out = handle.render();
    render_probes(&mut out);
    out
}

/// The per-probe families, as (name, type, help): written by
/// [`render_probes`], not by the recorder, so not `describe_*!`d.
pub const PROBE_FAMILIES: [(&str, &str, &str); 4] = [
    (
        "backstop_probe_checks_total",
        "counter",
        "Checks run, by outcome: ok, degraded, failed or error (the probe could not run).",
    ),
    (
        "backstop_probe_up",
        "gauge",
        "Whether the probe's last check found its target up (1) or not (0).",
    ),
    (
        "backstop_probe_consecutive_failures",
        "gauge",
        "Failed checks in a row; the probe's own errors do not count.",
    ),
    (
        "backstop_probe_duration_seconds",
        "histogram",
        "How long each check took.",
    ),
];

/// A family's `# HELP` and `# TYPE` lines.
fn family_header(out: &mut String, i: usize) {
    let (name, kind, help) = PROBE_FAMILIES[i];
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// Every probe whose metrics were made in this process, in the order they
/// were made; a probe of an earlier configuration (before a reload) keeps
/// its series, as a recorder would.
static PROBES: Mutex<Vec<Arc<ProbeSeries>>> = Mutex::new(Vec::new());

/// One probe's series: its label set, rendered once, and atomics.
struct ProbeSeries {
    /// `probe="…",level="…",type="…"`.
    labels: Box<str>,
    /// The length of the `probe="…"` part of `labels`.
    probe_len: usize,
    up: AtomicU64,
    failures: AtomicU64,
    /// Checks by outcome, in the order of [`Outcome::ALL`].
    checks: [AtomicU64; 4],
    /// Checks per duration bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    /// The sum of the durations, in nanoseconds.
    sum_ns: AtomicU64,
}

/// A probe's metric handle, made once: `backstop_probe_up`,
/// `backstop_probe_duration_seconds`, `backstop_probe_checks_total` and
/// `backstop_probe_consecutive_failures` of one probe.
pub struct ProbeMetrics(Arc<ProbeSeries>);

/// A label value as the text format writes it.
fn escape_label(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

impl ProbeMetrics {
    /// The probe's series; the same probe (name, level and type) made again,
    /// as after a reload, gets the series it had.
    pub fn new(probe: &str, level: u8, kind: &'static str) -> Self {
        let mut labels = String::from("probe=\"");
        escape_label(probe, &mut labels);
        labels.push('"');
        let probe_len = labels.len();
        let _ = write!(labels, ",level=\"{level}\",type=\"");
        escape_label(kind, &mut labels);
        labels.push('"');
        let mut all = PROBES.lock().expect("probe metrics lock");
        if let Some(kept) = all.iter().find(|s| *s.labels == *labels) {
            return Self(kept.clone());
        }
        let series = Arc::new(ProbeSeries {
            labels: labels.into_boxed_str(),
            probe_len,
            up: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            checks: Default::default(),
            buckets: Default::default(),
            sum_ns: AtomicU64::new(0),
        });
        all.push(series.clone());
        Self(series)
    }

    pub fn record(&self, obs: &Observation, consecutive_failures: u32) {
        let s = &self.0;
        s.up.store(u64::from(obs.outcome.is_up()), Ordering::Relaxed);
        if obs.outcome != Outcome::Error {
            let secs = obs.latency.as_secs_f64();
            let i = DURATION_BUCKETS
                .iter()
                .position(|le| secs <= *le)
                .unwrap_or(DURATION_BUCKETS.len());
            s.buckets[i].fetch_add(1, Ordering::Relaxed);
            let ns = u64::try_from(obs.latency.as_nanos()).unwrap_or(u64::MAX);
            s.sum_ns.fetch_add(ns, Ordering::Relaxed);
        }
        let i = Outcome::ALL
            .iter()
            .position(|o| *o == obs.outcome)
            .expect("ALL has every outcome");
        s.checks[i].fetch_add(1, Ordering::Relaxed);
        s.failures
            .store(u64::from(consecutive_failures), Ordering::Relaxed);
    }
}

/// Appends every probe's series to `out`, family by family, in the text
/// format (each family's `# HELP` and `# TYPE` once, before its series).
pub fn render_probes(out: &mut String) {
    let all = PROBES.lock().expect("probe metrics lock").clone();
    if all.is_empty() {
        return;
    }
    out.reserve(all.len() * 2048);
    family_header(out, 0);
    for s in &all {
        for (o, n) in Outcome::ALL.iter().zip(&s.checks) {
            let _ = writeln!(
                out,
                "backstop_probe_checks_total{{{},outcome=\"{}\"}} {}",
                s.labels,
                o.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
    }
    out.push('\n');
    family_header(out, 1);
    for s in &all {
        let _ = writeln!(
            out,
            "backstop_probe_up{{{}}} {}",
            s.labels,
            s.up.load(Ordering::Relaxed)
        );
    }
    out.push('\n');
    family_header(out, 2);
    for s in &all {
        let _ = writeln!(
            out,
            "backstop_probe_consecutive_failures{{{}}} {}",
            &s.labels[..s.probe_len],
            s.failures.load(Ordering::Relaxed)
        );
    }
    out.push('\n');
    family_header(out, 3);
    for s in &all {
        let mut cumulative = 0u64;
        for (i, n) in s.buckets.iter().enumerate() {
            cumulative += n.load(Ordering::Relaxed);
            match DURATION_BUCKETS.get(i) {
                Some(le) => {
                    let _ = writeln!(
                        out,
                        "backstop_probe_duration_seconds_bucket{{{},le=\"{le}\"}} {cumulative}",
                        s.labels
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "backstop_probe_duration_seconds_bucket{{{},le=\"+Inf\"}} {cumulative}",
                        s.labels
                    );
                }
            }
        }
        let sum = s.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            out,
            "backstop_probe_duration_seconds_sum{{{}}} {sum}\nbackstop_probe_duration_seconds_count{{{}}} {cumulative}",
            s.labels, s.labels
        );
    }
    out.push('\n');
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn obs(outcome: Outcome, ms: u64) -> Observation {
        Observation {
            at: std::time::SystemTime::now(),
            outcome,
            latency: Duration::from_millis(ms),
            signals: vec![],
            error: None,
        }
    }

    fn probe_lines(text: &str, probe: &str) -> Vec<String> {
        let label = format!("probe=\"{probe}\"");
        text.lines()
            .filter(|l| l.contains(&label))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_probes_series_are_rendered_from_its_checks() {
        let m = ProbeMetrics::new("render-test", 2, "http");
        m.record(&obs(Outcome::Ok, 3), 0);
        m.record(&obs(Outcome::Failed, 30), 1);
        m.record(&obs(Outcome::Failed, 20_000), 2);
        // The probe's own error counts as a check but has no duration.
        m.record(&obs(Outcome::Error, 7), 2);
        let mut text = String::new();
        render_probes(&mut text);
        let lines = probe_lines(&text, "render-test");
        let l = r#"probe="render-test",level="2",type="http""#;
        for want in [
            format!("backstop_probe_checks_total{{{l},outcome=\"ok\"}} 1"),
            format!("backstop_probe_checks_total{{{l},outcome=\"degraded\"}} 0"),
            format!("backstop_probe_checks_total{{{l},outcome=\"failed\"}} 2"),
            format!("backstop_probe_checks_total{{{l},outcome=\"error\"}} 1"),
            format!("backstop_probe_up{{{l}}} 0"),
            r#"backstop_probe_consecutive_failures{probe="render-test"} 2"#.to_string(),
            format!("backstop_probe_duration_seconds_bucket{{{l},le=\"0.0025\"}} 0"),
            format!("backstop_probe_duration_seconds_bucket{{{l},le=\"0.005\"}} 1"),
            format!("backstop_probe_duration_seconds_bucket{{{l},le=\"0.025\"}} 1"),
            format!("backstop_probe_duration_seconds_bucket{{{l},le=\"0.05\"}} 2"),
            format!("backstop_probe_duration_seconds_bucket{{{l},le=\"10\"}} 2"),
            format!("backstop_probe_duration_seconds_bucket{{{l},le=\"+Inf\"}} 3"),
            format!("backstop_probe_duration_seconds_sum{{{l}}} 20.033"),
            format!("backstop_probe_duration_seconds_count{{{l}}} 3"),
        ] {
            assert!(
                lines.contains(&want),
                "{want} not in:\n{}",
                lines.join("\n")
            );
        }
        assert_eq!(lines.len(), 4 + 1 + 1 + 14 + 2, "{}", lines.join("\n"));
        // Each family is announced once, before its series.
        for family in [
            "backstop_probe_checks_total",
            "backstop_probe_up",
            "backstop_probe_consecutive_failures",
            "backstop_probe_duration_seconds",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {family} ")).count(),
                1,
                "{text}"
            );
        }
    }

    #[test]
    fn the_same_probe_made_again_keeps_its_series() {
        let a = ProbeMetrics::new("reload-test", 1, "tcp");
        a.record(&obs(Outcome::Ok, 1), 0);
        let b = ProbeMetrics::new("reload-test", 1, "tcp");
        b.record(&obs(Outcome::Ok, 1), 0);
        let mut text = String::new();
        render_probes(&mut text);
        let lines = probe_lines(&text, "reload-test");
        assert!(
            lines.contains(
                &r#"backstop_probe_checks_total{probe="reload-test",level="1",type="tcp",outcome="ok"} 2"#
                    .to_string()
            ),
            "{}",
            lines.join("\n")
        );
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("backstop_probe_up{"))
                .count(),
            1
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let m = ProbeMetrics::new("quote\"back\\slash", 1, "tcp");
        m.record(&obs(Outcome::Ok, 1), 0);
        let mut text = String::new();
        render_probes(&mut text);
        assert!(
            text.contains(
                r#"backstop_probe_up{probe="quote\"back\\slash",level="1",type="tcp"} 1"#
            ),
            "{text}"
        );
    }
}
