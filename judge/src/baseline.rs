//! What the last stable deployment looked like, for `Nx baseline` rules: per
//! probe and signal, a summary and a bounded, uniform reservoir of raw
//! samples; per probe, the requests and errors it saw. Built incrementally
//! while a deployment is watched, and kept in the store once it is stable.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use tokio::time::Instant;

use crate::observe::{Outcome, Sample, SignalId};
use crate::stats::{self, Counts};

/// The most raw samples kept per probe and signal.
pub const RESERVOIR: usize = 1000;

/// The signals that count requests and errors (per sample, since the
/// previous one).
pub const REQUESTS: &str = "requests";
pub const ERRORS: &str = "errors";
pub const ERROR_RATE: &str = "error_rate";

/// The baseline of one deployment.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Baseline {
    /// The deployment it describes.
    pub deployment: String,
    pub probes: BTreeMap<String, ProbeBaseline>,
}

/// One probe's part of a baseline.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProbeBaseline {
    pub signals: BTreeMap<String, SignalBaseline>,
    /// Requests and errors summed over the watch, when the samples counted
    /// them.
    pub traffic: Option<Counts>,
}

/// One signal of one probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalBaseline {
    pub summary: Summary,
    /// A uniform random sample of at most [`RESERVOIR`] of the values seen.
    pub samples: Vec<f64>,
}

/// A signal's numbers over a whole watch. `count`, `mean`, `min` and `max`
/// are exact; the quantiles are estimated from the reservoir.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Baseline {
    pub fn probe(&self, probe: &str) -> Option<&ProbeBaseline> {
        self.probes.get(probe)
    }

    /// The baseline of one probe's signal.
    pub fn signal(&self, probe: &str, signal: &str) -> Option<&SignalBaseline> {
        self.probe(probe)?.signals.get(signal)
    }
}

impl ProbeBaseline {
    /// The pooled error rate of the watch.
    pub fn error_rate(&self) -> Option<f64> {
        self.traffic?.rate()
    }
}

/// Builds a [`Baseline`] from the samples of a watch, one at a time.
#[derive(Debug, Clone)]
pub struct BaselineBuilder {
    deployment: String,
    capacity: usize,
    rng: StdRng,
    probes: BTreeMap<String, ProbeBuild>,
}

#[derive(Debug, Clone, Default)]
struct ProbeBuild {
    signals: BTreeMap<String, SignalBuild>,
    traffic: Option<Counts>,
}

#[derive(Debug, Clone)]
struct SignalBuild {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    reservoir: Vec<f64>,
}

impl BaselineBuilder {
    /// A builder keeping at most [`RESERVOIR`] samples per signal.
    pub fn new(deployment: impl Into<String>) -> Self {
        Self::with_capacity(deployment, RESERVOIR, rand::random())
    }

    /// A builder with its own reservoir size and random seed (for tests).
    pub fn with_capacity(deployment: impl Into<String>, capacity: usize, seed: u64) -> Self {
        Self {
            deployment: deployment.into(),
            capacity: capacity.max(1),
            rng: StdRng::seed_from_u64(seed),
            probes: BTreeMap::new(),
        }
    }

    /// Adds one sample of `probe`. Samples with outcome `error` (the probe's
    /// own fault) say nothing about the deployment and are skipped, as are
    /// values that are not finite.
    pub fn add(&mut self, probe: &str, sample: &Sample) {
        if sample.outcome() == Outcome::Error {
            return;
        }
        if !self.probes.contains_key(probe) {
            self.probes.insert(probe.to_string(), ProbeBuild::default());
        }
        let Some(p) = self.probes.get_mut(probe) else {
            return;
        };
        for (name, value) in sample.signals() {
            if !value.is_finite() {
                continue;
            }
            if !p.signals.contains_key(name) {
                p.signals.insert(
                    name.to_string(),
                    SignalBuild {
                        count: 0,
                        sum: 0.0,
                        min: f64::INFINITY,
                        max: f64::NEG_INFINITY,
                        reservoir: Vec::new(),
                    },
                );
            }
            let Some(s) = p.signals.get_mut(name) else {
                continue;
            };
            s.count += 1;
            s.sum += value;
            s.min = s.min.min(value);
            s.max = s.max.max(value);
            // Algorithm R: the i-th value replaces a random slot with
            // probability capacity / i, so every value seen is equally likely
            // to be kept however long the watch.
            if s.reservoir.len() < self.capacity {
                s.reservoir.push(value);
            } else {
                let j = self.rng.gen_range(0..s.count);
                if (j as usize) < self.capacity {
                    s.reservoir[j as usize] = value;
                }
            }
        }
        if let Some(c) = sample_counts(sample) {
            let t = p.traffic.get_or_insert_with(Counts::default);
            t.requests += c.requests;
            t.errors += c.errors;
        }
    }

    pub fn finish(self) -> Baseline {
        let probes = self
            .probes
            .into_iter()
            .map(|(name, p)| {
                let signals = p
                    .signals
                    .into_iter()
                    .map(|(signal, s)| {
                        let q = |q| stats::quantile(&s.reservoir, q).unwrap_or(f64::NAN);
                        let summary = Summary {
                            count: s.count,
                            mean: s.sum / s.count as f64,
                            min: s.min,
                            max: s.max,
                            p50: q(0.5),
                            p95: q(0.95),
                            p99: q(0.99),
                        };
                        (
                            signal,
                            SignalBaseline {
                                summary,
                                samples: s.reservoir,
                            },
                        )
                    })
                    .collect();
                (
                    name,
                    ProbeBaseline {
                        signals,
                        traffic: p.traffic,
                    },
                )
            })
            .collect();
        Baseline {
            deployment: self.deployment,
            probes,
        }
    }
}

/// One probe's part of the baseline of the deployment being watched, fed
/// each sample as the probe records it (`ProbeState::record`), so the
/// baseline covers the whole watch while the window holds only what the
/// rules need. Its builder (and random generator) is made with the first
/// sample after the warm-up, so a feed costs little during the warm-up.
#[derive(Debug, Clone)]
pub struct Feed {
    deployment: String,
    probe: String,
    /// Samples before this instant (the end of the warm-up) are left out.
    since: Option<Instant>,
    builder: Option<Box<BaselineBuilder>>,
}

impl Feed {
    pub fn new(deployment: &str, probe: &str, since: Option<Instant>) -> Self {
        Self {
            deployment: deployment.to_string(),
            probe: probe.to_string(),
            since,
            builder: None,
        }
    }

    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// Adds `sample` unless it is older than the warm-up's end.
    pub fn add(&mut self, sample: &Sample) {
        if self.since.is_none_or(|t| sample.at() >= t) {
            self.builder
                .get_or_insert_with(|| Box::new(BaselineBuilder::new(self.deployment.as_str())))
                .add(&self.probe, sample);
        }
    }

    /// Adds each of `samples` as [`Feed::add`] does.
    pub fn add_all<'a>(&mut self, samples: impl IntoIterator<Item = &'a Sample>) {
        for sample in samples {
            self.add(sample);
        }
    }

    pub fn finish(self) -> Baseline {
        match self.builder {
            Some(b) => b.finish(),
            None => Baseline {
                deployment: self.deployment,
                probes: BTreeMap::new(),
            },
        }
    }
}

/// A sample's requests and errors: `errors`, or else `error_rate ×
/// requests`. `None` when it does not count requests.
pub fn sample_counts(sample: &Sample) -> Option<Counts> {
    let get = |id: SignalId| {
        sample
            .values()
            .find(|(k, v)| *k == id && v.is_finite())
            .map(|(_, v)| v)
    };
    let requests = get(SignalId::REQUESTS)?.max(0.0);
    let errors = get(SignalId::ERRORS)
        .or_else(|| get(SignalId::ERROR_RATE).map(|r| r * requests))
        .unwrap_or(0.0)
        .clamp(0.0, requests);
    Some(Counts { requests, errors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn sample(outcome: Outcome, signals: Vec<(&'static str, f64)>) -> Sample {
        Sample::new(outcome, Instant::now(), signals)
    }

    #[test]
    fn summarises_each_probe_and_signal() {
        let mut b = BaselineBuilder::with_capacity("v1", 1000, 7);
        for i in 1..=100 {
            b.add("app", &sample(Outcome::Ok, vec![("latency_ms", i as f64)]));
        }
        b.add("db", &sample(Outcome::Failed, vec![("latency_ms", 5.0)]));
        b.add("db", &sample(Outcome::Error, vec![("latency_ms", 999.0)]));
        let base = b.finish();
        assert_eq!(base.deployment, "v1");
        let s = base.signal("app", "latency_ms").unwrap();
        assert_eq!(s.summary.count, 100);
        assert_eq!(s.summary.mean, 50.5);
        assert_eq!((s.summary.min, s.summary.max), (1.0, 100.0));
        assert_eq!(s.summary.p50, 50.5);
        assert!((s.summary.p95 - 95.05).abs() < 1e-9);
        assert_eq!(s.samples.len(), 100);
        // The probe's own error is not part of the baseline.
        assert_eq!(base.signal("db", "latency_ms").unwrap().summary.count, 1);
        assert!(base.signal("app", "p95_ms").is_none());
        assert!(base.signal("cache", "latency_ms").is_none());
    }

    #[test]
    fn the_reservoir_stays_bounded_and_uniform() {
        let mut b = BaselineBuilder::with_capacity("v1", 1000, 42);
        for i in 0..100_000 {
            b.add("app", &sample(Outcome::Ok, vec![("latency_ms", i as f64)]));
        }
        let base = b.finish();
        let s = base.signal("app", "latency_ms").unwrap();
        assert_eq!(s.samples.len(), 1000);
        assert_eq!(s.summary.count, 100_000);
        // Uniform over the whole watch: each tenth holds about a tenth.
        for decile in 0..10 {
            let lo = decile as f64 * 10_000.0;
            let n = s
                .samples
                .iter()
                .filter(|&&v| v >= lo && v < lo + 10_000.0)
                .count();
            assert!((60..=140).contains(&n), "decile {decile}: {n}");
        }
        assert!((s.summary.p50 - 50_000.0).abs() < 5_000.0);
    }

    #[test]
    fn counts_requests_and_errors() {
        let mut b = BaselineBuilder::with_capacity("v1", 10, 1);
        b.add(
            "app",
            &sample(Outcome::Ok, vec![("requests", 100.0), ("errors", 2.0)]),
        );
        b.add(
            "app",
            &sample(Outcome::Ok, vec![("requests", 300.0), ("error_rate", 0.01)]),
        );
        b.add(
            "app",
            &sample(Outcome::Error, vec![("requests", 1e6), ("errors", 1e6)]),
        );
        b.add("health", &sample(Outcome::Ok, vec![("latency_ms", 3.0)]));
        let base = b.finish();
        let t = base.probe("app").unwrap().traffic.unwrap();
        assert_eq!(
            t,
            Counts {
                requests: 400.0,
                errors: 5.0
            }
        );
        assert_eq!(base.probe("app").unwrap().error_rate(), Some(5.0 / 400.0));
        assert_eq!(base.probe("health").unwrap().traffic, None);
    }

    #[test]
    fn survives_a_round_trip_through_json() {
        let mut b = BaselineBuilder::with_capacity("v1", 10, 1);
        b.add(
            "app",
            &sample(Outcome::Ok, vec![("latency_ms", 12.5), ("requests", 10.0)]),
        );
        let base = b.finish();
        let text = serde_json::to_string(&base).unwrap();
        let back: Baseline = serde_json::from_str(&text).unwrap();
        assert_eq!(back, base);
    }
}
