//! The live baseline: what the replicas still running the deployment to
//! return to saw over the same minutes as the new deployment. A stored
//! baseline was measured at another time; when load rises at the moment of
//! a deploy every replica slows down together, and only the replicas that
//! did not change tell the deployment's effect apart from the load's.
//!
//! Each agent on the deployment to return to publishes, with its
//! heartbeat, a [`LiveSummary`]: per probe and signal that a rule compares
//! with a baseline, the newest raw samples of its recent window (at most
//! [`LIVE_SAMPLES`]) with their age. The agent of the new deployment turns
//! the summaries of its peers into a [`Live`] and its `Nx baseline` rules
//! compare with their samples of the rule's own window (see
//! [`crate::rules::Input::live`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::baseline::sample_counts;
use crate::observe::{Outcome, Sample};
use crate::stats::Counts;

/// The most samples a peer publishes per probe and signal: its newest.
pub const LIVE_SAMPLES: usize = 200;

/// The series a summary carries for `error_rate` comparisons (Fisher's test
/// needs requests and errors, not rates).
pub const REQUESTS: &str = "requests";
pub const ERRORS: &str = "errors";

/// Which baseline a rule's `Nx baseline` comparisons judge against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    /// The live peers when enough report, else the stored baseline.
    #[default]
    Auto,
    /// The live peers only; inconclusive without enough of them.
    Live,
    /// The stored baseline only.
    Stored,
}

impl Choice {
    pub fn as_str(self) -> &'static str {
        match self {
            Choice::Auto => "auto",
            Choice::Live => "live",
            Choice::Stored => "stored",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Choice::Auto),
            "live" => Some(Choice::Live),
            "stored" => Some(Choice::Stored),
            _ => None,
        }
    }
}

/// What one agent publishes: its deployment's recent samples, per probe
/// and signal, newest first, as `(age in ms at publication, value)`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LiveSummary {
    /// The deployment the samples are of.
    pub deployment: String,
    pub probes: BTreeMap<String, BTreeMap<String, Vec<(u32, f64)>>>,
}

impl LiveSummary {
    pub fn new(deployment: impl Into<String>) -> Self {
        Self {
            deployment: deployment.into(),
            probes: BTreeMap::new(),
        }
    }

    /// Adds `probe`'s samples of the last `span` before `now` (those with
    /// outcome `error`, the probe's own fault, left out): for each of
    /// `signals`, its newest `cap` values. `requests` and `errors` are the
    /// counts of [`sample_counts`].
    pub fn add_window<'a>(
        &mut self,
        probe: &str,
        window: impl DoubleEndedIterator<Item = &'a Sample>,
        signals: &[&str],
        now: Instant,
        span: Duration,
        cap: usize,
    ) {
        let from = now.checked_sub(span);
        let mut series: BTreeMap<String, Vec<(u32, f64)>> = BTreeMap::new();
        for s in window.rev() {
            if from.is_some_and(|f| s.at() < f) {
                break;
            }
            if s.outcome() == Outcome::Error || s.at() > now {
                continue;
            }
            let age = now.saturating_duration_since(s.at()).as_millis();
            let age = u32::try_from(age).unwrap_or(u32::MAX);
            let counts = sample_counts(s);
            for &name in signals {
                let value = match name {
                    REQUESTS => counts.map(|c| c.requests),
                    ERRORS => counts.map(|c| c.errors),
                    _ => s.signal(name),
                };
                let Some(v) = value.filter(|v| v.is_finite()) else {
                    continue;
                };
                let kept = series.entry(name.to_string()).or_default();
                if kept.len() < cap {
                    kept.push((age, v));
                }
            }
        }
        if !series.is_empty() {
            self.probes.insert(probe.to_string(), series);
        }
    }

    /// The number of values it carries.
    pub fn len(&self) -> usize {
        self.probes
            .values()
            .flat_map(|p| p.values())
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The summary as one peer of a [`Live`], its ages turned into instants
    /// of this process's clock: `age` is how old the summary is at `now`.
    pub fn into_peer(self, replica: impl Into<String>, now: Instant, age: Duration) -> LivePeer {
        let published = now.checked_sub(age).unwrap_or(now);
        let probes = self
            .probes
            .into_iter()
            .map(|(probe, signals)| {
                let signals = signals
                    .into_iter()
                    .map(|(name, values)| {
                        let values = values
                            .into_iter()
                            .map(|(ms, v)| {
                                let at = published
                                    .checked_sub(Duration::from_millis(ms.into()))
                                    .unwrap_or(published);
                                (at, v)
                            })
                            .collect();
                        (name, values)
                    })
                    .collect();
                (probe, signals)
            })
            .collect();
        LivePeer {
            replica: replica.into(),
            probes,
        }
    }
}

/// The live baseline: the peers on `deployment`, each with its samples.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Live {
    /// The deployment the peers run: the one to return to.
    pub deployment: String,
    pub peers: Vec<LivePeer>,
}

/// One peer's samples, per probe and signal, as `(instant, value)`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LivePeer {
    pub replica: String,
    pub probes: BTreeMap<String, BTreeMap<String, Vec<(Instant, f64)>>>,
}

/// The peers' samples of one signal over a window.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pooled {
    pub values: Vec<f64>,
    /// Requests and errors summed, for `error_rate` (when every counted).
    pub counts: Option<Counts>,
    /// How many peers gave at least one value.
    pub replicas: usize,
}

impl Live {
    /// The peers' values of `probe`'s `signal` in `[from, now]` (from the
    /// start of time when `from` is `None`), pooled.
    pub fn pooled(&self, probe: &str, signal: &str, from: Option<Instant>, now: Instant) -> Pooled {
        let inside = |at: &Instant| from.is_none_or(|f| *at >= f) && *at <= now;
        let mut out = Pooled::default();
        for peer in &self.peers {
            let Some(p) = peer.probes.get(probe) else {
                continue;
            };
            let before = out.values.len();
            if let Some(series) = p.get(signal) {
                out.values
                    .extend(series.iter().filter(|(at, _)| inside(at)).map(|(_, v)| *v));
            }
            let sum = |name: &str| -> Option<f64> {
                let s = p.get(name)?;
                let mut any = false;
                let total = s
                    .iter()
                    .filter(|(at, _)| inside(at))
                    .inspect(|_| any = true)
                    .map(|(_, v)| *v)
                    .sum();
                any.then_some(total)
            };
            let counted = match (sum(REQUESTS), sum(ERRORS)) {
                (Some(requests), errors) => Some(Counts {
                    requests,
                    errors: errors.unwrap_or(0.0).clamp(0.0, requests),
                }),
                _ => None,
            };
            if let Some(c) = counted {
                let t = out.counts.get_or_insert_with(Counts::default);
                t.requests += c.requests;
                t.errors += c.errors;
            }
            if out.values.len() > before || counted.is_some() {
                out.replicas += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_keeps_the_newest_samples_of_the_window_and_comes_back_as_instants() {
        let t0 = Instant::now() + Duration::from_secs(1000);
        let window: Vec<Sample> = (0..300)
            .map(|i| {
                Sample::new(
                    if i == 299 {
                        Outcome::Error
                    } else {
                        Outcome::Ok
                    },
                    t0 + Duration::from_secs(i),
                    vec![
                        ("latency_ms", i as f64),
                        ("requests", 10.0),
                        ("errors", 1.0),
                    ],
                )
            })
            .collect();
        let now = t0 + Duration::from_secs(300);
        let mut s = LiveSummary::new("v1");
        s.add_window(
            "app",
            window.iter(),
            &["latency_ms", REQUESTS, ERRORS, "p95_ms"],
            now,
            Duration::from_secs(100),
            50,
        );
        let lat = &s.probes["app"]["latency_ms"];
        assert_eq!(lat.len(), 50);
        // Newest first, the `error` sample left out.
        assert_eq!(lat[0], (2000, 298.0));
        assert!(!s.probes["app"].contains_key("p95_ms"));
        let text = serde_json::to_string(&s).unwrap();
        let back: LiveSummary = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);

        let live = Live {
            deployment: "v1".into(),
            peers: vec![back.into_peer("a", now, Duration::ZERO)],
        };
        let p = live.pooled(
            "app",
            "latency_ms",
            now.checked_sub(Duration::from_secs(10)),
            now,
        );
        assert_eq!(p.replicas, 1);
        assert_eq!(p.values.len(), 9);
        let c = live
            .pooled(
                "app",
                "error_rate",
                now.checked_sub(Duration::from_secs(10)),
                now,
            )
            .counts
            .unwrap();
        assert_eq!((c.requests, c.errors), (90.0, 9.0));
        assert_eq!(
            live.pooled("db", "latency_ms", None, now),
            Pooled::default()
        );
    }

    #[test]
    fn choices_round_trip() {
        for c in [Choice::Auto, Choice::Live, Choice::Stored] {
            assert_eq!(Choice::parse(c.as_str()), Some(c));
        }
        assert_eq!(Choice::parse("peers"), None);
    }
}
