//! The live baseline over the fleet's coordination store. Every heartbeat,
//! an agent on the deployment to return to (the last stable one) publishes
//! its probes' samples of the recent minutes, for the signals its rules
//! compare with a baseline — unless one of its own rollback rules holds or
//! a critical probe fails: a sick replica is no baseline. An agent on any
//! other deployment (a new one being watched) reads the samples of its
//! peers on the deployment to return to, and its `Nx baseline` rules
//! compare with them (`Evaluation::evaluate`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop_judge::live::{Choice, Live, LiveSummary, ERRORS, LIVE_SAMPLES, REQUESTS};
use backstop_judge::rules::{percentile_of, Settings, LATENCY};
use tokio::sync::watch;
use tokio::time::Instant;

use super::config::FleetConfig;
use super::coordination::Coordination;
use crate::rule_config::RuleConfig;
use crate::schedule::ProbeSlot;

/// The most peers whose samples an agent reads once a heartbeat: the
/// freshest. Enough for the tests at the sizes a live baseline needs (two
/// peers of 50 samples decide as well as a stored baseline of 1,000), and
/// it keeps a read's cost flat however large the fleet (`bench/README.md`).
pub const PEERS_READ: usize = 20;

/// What the watch loop and the exchange share.
#[derive(Debug, Default)]
pub struct Shared {
    /// This replica's deployment, set by the watch loop.
    pub current: Option<String>,
    /// The deployment to return to: the last stable one.
    pub return_to: Option<String>,
    /// One of this replica's rollback rules holds, or a critical probe
    /// fails: its samples are no baseline.
    pub failing: bool,
    /// The peers on `return_to` and their samples, as read last while
    /// this replica runs another deployment.
    pub live: Option<Arc<Live>>,
}

pub type LiveHandle = Arc<Mutex<Shared>>;

/// Per probe, the signals to publish: those its rules compare with a
/// baseline (other than `baseline = "stored"`), `latency_ms` for a
/// percentile of it, requests and errors for `error_rate`.
pub fn signals_to_share(
    rules: &[RuleConfig],
    slots: &[Arc<ProbeSlot>],
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rules {
        if r.baseline == Some(Choice::Stored) {
            continue;
        }
        let Some(expr) = &r.expr else { continue };
        let percentiles = slots
            .iter()
            .find(|s| s.cfg.name == r.probe)
            .is_some_and(|s| s.cfg.latency_percentiles());
        for c in expr.comparisons().filter(|c| c.value.is_baseline()) {
            let names: Vec<&str> = match c.signal.as_str() {
                s if percentiles && percentile_of(s).is_some() => vec![LATENCY],
                "error_rate" => vec!["error_rate", REQUESTS, ERRORS],
                s => vec![s],
            };
            let kept = out.entry(r.probe.clone()).or_default();
            for n in names {
                if !kept.iter().any(|k| k == n) {
                    kept.push(n.to_string());
                }
            }
        }
    }
    out
}

/// How far back the samples published reach: the longest window of a
/// baseline comparison that may use them.
pub fn span_to_share(rules: &[RuleConfig], settings: &Settings) -> Duration {
    rules
        .iter()
        .filter(|r| r.baseline != Some(Choice::Stored))
        .filter_map(|r| r.expr.as_ref())
        .filter(|e| e.uses_baseline())
        .map(|e| e.span_needed(settings))
        .max()
        .unwrap_or(settings.baseline_window)
}

/// This replica's summary of the last `span`.
pub fn summary(
    deployment: &str,
    slots: &[Arc<ProbeSlot>],
    signals: &BTreeMap<String, Vec<String>>,
    span: Duration,
) -> LiveSummary {
    let now = Instant::now();
    let mut s = LiveSummary::new(deployment);
    for slot in slots {
        let Some(names) = signals.get(&slot.cfg.name) else {
            continue;
        };
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let state = slot.state.lock().expect("probe state lock");
        s.add_window(
            &slot.cfg.name,
            state.window.iter(),
            &names,
            now,
            span,
            LIVE_SAMPLES,
        );
    }
    s
}

/// Everything the exchange works with.
pub struct Exchange {
    pub coord: Arc<dyn Coordination>,
    pub service: String,
    pub cfg: FleetConfig,
    pub slots: Vec<Arc<ProbeSlot>>,
    pub signals: BTreeMap<String, Vec<String>>,
    pub span: Duration,
    pub shared: LiveHandle,
}

impl Exchange {
    /// Publishes or reads once a heartbeat until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        if self.signals.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(self.cfg.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            match self.step().await {
                Ok(()) => failing = false,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %format!("{e:#}"), "cannot exchange samples for the live baseline; baseline rules use the stored one meanwhile");
                    }
                    failing = true;
                    self.shared.lock().expect("live lock").live = None;
                }
            }
        }
    }

    async fn step(&self) -> anyhow::Result<()> {
        let (current, return_to, sick) = {
            let s = self.shared.lock().expect("live lock");
            (s.current.clone(), s.return_to.clone(), s.failing)
        };
        let (Some(current), Some(return_to)) = (current, return_to) else {
            self.shared.lock().expect("live lock").live = None;
            return Ok(());
        };
        if current == return_to {
            self.shared.lock().expect("live lock").live = None;
            if !sick {
                let s = summary(&current, &self.slots, &self.signals, self.span);
                self.coord
                    .publish_samples(&self.service, &self.cfg.replica, &s, self.cfg.expiry)
                    .await?;
            }
            return Ok(());
        }
        // One more than read, in case this replica's own are among them.
        let peers = self
            .coord
            .live_samples(&self.service, &return_to, PEERS_READ + 1)
            .await?;
        let now = Instant::now();
        let live = Live {
            deployment: return_to,
            peers: peers
                .into_iter()
                .filter(|p| p.replica != self.cfg.replica && p.age <= self.cfg.expiry)
                .take(PEERS_READ)
                .map(|p| p.summary.into_peer(p.replica, now, p.age))
                .collect(),
        };
        self.shared.lock().expect("live lock").live = Some(Arc::new(live));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::fleet::memory::MemoryFleet;
    use backstop_judge::observe::{Observation, Outcome};
    use std::time::SystemTime;

    const CONFIG: &str = r#"[service]
name = "web"

[agent]
default_rules = false

[[probe]]
name = "app"
level = 1
type = "http"
url = "http://127.0.0.1:8080/"

[[probe]]
name = "other"
level = 1
type = "http"
url = "http://127.0.0.1:8080/other"

[[rule]]
name = "slow"
probe = "app"
when = "p95_ms > 2x baseline for 30s or latency_ms > 3x baseline for 1m"
action = "rollback"

[[rule]]
name = "stored only"
probe = "other"
when = "latency_ms > 2x baseline"
baseline = "stored"

[[rule]]
name = "plain"
probe = "other"
when = "latency_ms > 500"

[fleet]
replica = "a"
redis = "redis://127.0.0.1:6379"
heartbeat = "1s"
"#;

    fn setup() -> (Config, Vec<Arc<ProbeSlot>>) {
        let config = Config::parse(CONFIG, |_| None).unwrap();
        let slots = config
            .probes
            .iter()
            .map(|p| Arc::new(ProbeSlot::new(p.clone(), Duration::from_secs(600))))
            .collect();
        (config, slots)
    }

    #[test]
    fn only_what_baseline_rules_compare_is_shared() {
        let (config, slots) = setup();
        let signals = signals_to_share(&config.rules, &slots);
        assert_eq!(
            signals,
            [("app".to_string(), vec!["latency_ms".to_string()])].into()
        );
        // The longest window of a comparison with the live baseline.
        assert_eq!(
            span_to_share(&config.rules, &Settings::default()),
            Duration::from_secs(60)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_stable_replicas_publish_and_the_new_one_reads_them_unless_they_fail() {
        let (config, slots) = setup();
        let memory = MemoryFleet::default();
        let shared: Vec<LiveHandle> = (0..3).map(|_| LiveHandle::default()).collect();
        let exchange = |i: usize| Exchange {
            coord: Arc::new(memory.connection()),
            service: "web".into(),
            cfg: FleetConfig {
                replica: format!("r{i}"),
                ..config.fleet.clone().unwrap()
            },
            slots: slots.clone(),
            signals: signals_to_share(&config.rules, &slots),
            span: Duration::from_secs(60),
            shared: shared[i].clone(),
        };
        for k in 0..5 {
            slots[0].state.lock().unwrap().record(
                Observation {
                    at: SystemTime::now(),
                    outcome: Outcome::Ok,
                    latency: Duration::from_millis(5),
                    signals: vec![("latency_ms", 10.0 + k as f64)],
                    error: None,
                },
                Instant::now(),
            );
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let set = |i: usize, current: &str, failing: bool| {
            let mut s = shared[i].lock().unwrap();
            s.current = Some(current.into());
            s.return_to = Some("v1".into());
            s.failing = failing;
        };
        set(0, "v1", false);
        set(1, "v1", true);
        set(2, "v2", false);
        for i in 0..3 {
            exchange(i).step().await.unwrap();
        }
        let live = shared[2].lock().unwrap().live.clone().unwrap();
        assert_eq!(live.deployment, "v1");
        // The failing replica's samples are left out.
        assert_eq!(live.peers.len(), 1);
        assert_eq!(live.peers[0].replica, "r0");
        let pooled = live.pooled("app", "latency_ms", None, Instant::now());
        assert_eq!(pooled.values.len(), 5);
        assert!(shared[0].lock().unwrap().live.is_none());
    }
}
