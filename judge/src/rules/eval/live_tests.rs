//! `Nx baseline` against the live peers' samples of the same minutes.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal};
use tokio::time::Instant;

use super::*;
use crate::baseline::BaselineBuilder;
use crate::live::{Choice, Live, LivePeer};
use crate::observe::{Observation, Outcome, ProbeState, Sample};
use crate::rules::parse;

const EVERY: Duration = Duration::from_secs(5);

/// 60 samples, one every 5 s, ending at `now`.
fn times(now: Instant) -> impl Iterator<Item = Instant> {
    (0..60u32).rev().map(move |k| now - EVERY * k)
}

fn window(signal: &'static str, values: &[f64], now: Instant) -> ProbeState {
    let mut s = ProbeState::new(Duration::from_secs(3600));
    for (at, &v) in times(now).zip(values) {
        s.record(
            Observation {
                at: SystemTime::now(),
                outcome: Outcome::Ok,
                latency: Duration::from_millis(5),
                signals: vec![(signal, v)],
                error: None,
            },
            at,
        );
    }
    s
}

fn peer(name: &str, signal: &str, values: &[f64], now: Instant) -> LivePeer {
    let series = times(now).zip(values.iter().copied()).collect();
    LivePeer {
        replica: name.into(),
        probes: [("app".to_string(), [(signal.to_string(), series)].into())].into(),
    }
}

fn stored(signal: &'static str, values: &[f64], now: Instant) -> Baseline {
    let mut b = BaselineBuilder::with_capacity("v1", 1000, 3);
    for &v in values {
        b.add("app", &Sample::new(Outcome::Ok, now, vec![(signal, v)]));
    }
    b.finish()
}

fn draw(dist: &LogNormal<f64>, scale: f64, n: usize, rng: &mut impl rand::Rng) -> Vec<f64> {
    (0..n).map(|_| scale * dist.sample(rng)).collect()
}

struct Case {
    state: ProbeState,
    stored: Option<Baseline>,
    live: Option<Live>,
    now: Instant,
    percentiles: bool,
}

impl Case {
    fn judge(&self, when: &str, choice: Choice) -> Judgement {
        let expr = parse(when).unwrap();
        evaluate(
            &expr,
            &Input {
                probe: "app",
                state: &self.state,
                baseline: self.stored.as_ref(),
                live: self.live.as_ref(),
                choice,
                interval: EVERY,
                now: self.now,
                latency_percentiles: self.percentiles,
            },
            &Settings::default(),
        )
    }
}

/// The stored baseline measured at ×1; now every replica runs at `load`×
/// and the canary at `load × canary`×.
fn fleet(load: f64, canary: f64, peers: usize, seed: u64) -> Case {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dist = LogNormal::new(3.0, 0.3).unwrap();
    let now = Instant::now() + Duration::from_secs(100_000);
    let stored_values = draw(&dist, 1.0, 1000, &mut rng);
    let current = draw(&dist, load * canary, 60, &mut rng);
    let live = Live {
        deployment: "v1".into(),
        peers: (0..peers)
            .map(|i| {
                let v = draw(&dist, load, 60, &mut rng);
                peer(&format!("r{i}"), "latency_ms", &v, now)
            })
            .collect(),
    };
    Case {
        state: window("latency_ms", &current, now),
        stored: Some(stored("latency_ms", &stored_values, now)),
        live: Some(live),
        now,
        percentiles: true,
    }
}

const RULE: &str = "latency_ms > 1.3x baseline for 5m";

#[tokio::test]
async fn a_load_every_replica_shares_is_no_regression_against_the_live_peers() {
    let case = fleet(1.6, 1.0, 2, 1);
    // The stored baseline, measured before the load, would roll back.
    assert_eq!(case.judge(RULE, Choice::Stored).verdict, Verdict::Holds);
    let j = case.judge(RULE, Choice::Auto);
    assert_eq!(j.verdict, Verdict::Clear);
    let f = &j.findings[0];
    assert_eq!(f.baseline_source, Some("live"));
    assert_eq!(f.baseline_replicas, Some(2));
    assert_eq!((f.samples, f.baseline_samples), (60, Some(120)));
    assert_eq!(case.judge(RULE, Choice::Live).verdict, Verdict::Clear);
}

#[tokio::test]
async fn a_canary_slower_than_its_live_peers_holds_and_says_which_baseline_judged() {
    let case = fleet(1.6, 2.5, 2, 2);
    let j = case.judge(RULE, Choice::Auto);
    assert_eq!(j.verdict, Verdict::Holds);
    let ev = evidence(
        RuleRef {
            name: "slow",
            probe: "app",
            when: RULE,
        },
        &j,
    );
    let by = ev[0].judged_by.clone().unwrap();
    assert_eq!(
        (by.source.as_str(), by.deployment.as_str(), by.replicas),
        ("live", "v1", Some(2))
    );
    assert_eq!((by.samples, by.baseline_samples), (60, Some(120)));
    assert!(
        ev[0]
            .summary
            .contains("60 vs 120 samples, live baseline: 2 replicas on v1"),
        "{}",
        ev[0].summary
    );
    // A percentile of the latency compares with the peers' latency too.
    let p = case.judge("p95_ms > 1.5x baseline for 5m", Choice::Live);
    assert_eq!(p.verdict, Verdict::Holds);
    assert_eq!(p.findings[0].baseline_source, Some("live"));
}

#[tokio::test]
async fn too_few_live_peers_fall_back_to_the_stored_baseline_or_stay_inconclusive() {
    let case = fleet(1.0, 1.0, 1, 3);
    let j = case.judge(RULE, Choice::Auto);
    assert_eq!(j.findings[0].baseline_source, Some("stored"));
    assert_eq!(j.verdict, Verdict::Clear);
    let Verdict::Inconclusive(why) = case.judge(RULE, Choice::Live).verdict else {
        panic!("live without enough peers must be inconclusive");
    };
    assert!(
        why.contains("live baseline: 1 of 1 replicas on v1 gave latency_ms in the last 5m, need 2"),
        "{why}"
    );
    let none = Case { live: None, ..case };
    let Verdict::Inconclusive(why) = none.judge(RULE, Choice::Live).verdict else {
        panic!("live without peers must be inconclusive");
    };
    assert!(why.contains("no replica reports"), "{why}");
    // `stored` never reads the peers.
    let busy = fleet(1.0, 1.0, 3, 4);
    assert_eq!(
        busy.judge(RULE, Choice::Stored).findings[0].baseline_source,
        Some("stored")
    );
}

#[tokio::test]
async fn only_the_peers_samples_of_the_same_minutes_count() {
    let mut case = fleet(1.0, 1.0, 2, 5);
    // Samples older than the rule's window are not the same minutes.
    let old = case.now - Duration::from_secs(600);
    for p in &mut case.live.as_mut().unwrap().peers {
        for s in p.probes.get_mut("app").unwrap().values_mut() {
            for (at, _) in s.iter_mut() {
                *at = old;
            }
        }
    }
    assert_eq!(
        case.judge(RULE, Choice::Auto).findings[0].baseline_source,
        Some("stored")
    );
}

#[tokio::test]
async fn error_rates_against_live_peers_compare_their_counts() {
    let now = Instant::now() + Duration::from_secs(100_000);
    let mut s = ProbeState::new(Duration::from_secs(3600));
    for at in times(now) {
        s.record(
            Observation {
                at: SystemTime::now(),
                outcome: Outcome::Ok,
                latency: Duration::from_millis(5),
                signals: vec![("requests", 100.0), ("errors", 5.0), ("error_rate", 0.05)],
                error: None,
            },
            at,
        );
    }
    let peer_of = |name: &str, errors: f64| {
        let series = |v: f64| times(now).map(|at| (at, v)).collect::<Vec<_>>();
        LivePeer {
            replica: name.into(),
            probes: [(
                "app".to_string(),
                [
                    ("requests".to_string(), series(100.0)),
                    ("errors".to_string(), series(errors)),
                ]
                .into(),
            )]
            .into(),
        }
    };
    let case = |errors: f64| Case {
        state: s.clone(),
        stored: None,
        live: Some(Live {
            deployment: "v1".into(),
            peers: vec![peer_of("a", errors), peer_of("b", errors)],
        }),
        now,
        percentiles: false,
    };
    let rule = "error_rate > 2x baseline for 5m";
    // 5% against the peers' 1%: a regression.
    let j = case(1.0).judge(rule, Choice::Live);
    assert_eq!(j.verdict, Verdict::Holds);
    let f = &j.findings[0];
    assert_eq!(f.test, Some("fisher"));
    assert_eq!(f.baseline_requests, Some(12_000.0));
    // The peers fail as often: the same.
    assert_eq!(case(5.0).judge(rule, Choice::Live).verdict, Verdict::Clear);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// However much every replica slows down together, the same code is
    /// never a regression against its live peers.
    #[test]
    fn a_shift_every_replica_shares_never_holds(load in 1.0f64..3.0, seed in any::<u64>()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _guard = rt.enter();
        let case = fleet(load, 1.0, 2, seed);
        prop_assert_ne!(case.judge(RULE, Choice::Auto).verdict, Verdict::Holds);
    }
}
