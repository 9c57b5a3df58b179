//! Safety properties of judgement over arbitrary input: evaluation never
//! panics whatever the window holds, the probe's own `error` samples never
//! change a verdict, and the statistics stay in range and treat both sides
//! alike.

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::proptests::expr;
use super::*;
use crate::baseline::BaselineBuilder;
use crate::observe::{Outcome, ProbeState, Sample};
use crate::stats;

const SIGNALS: &[&str] = &[
    "latency_ms",
    "error_rate",
    "requests",
    "errors",
    "status",
    "p95_ms",
];

/// Any number, NaN and infinities included.
fn wild() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => 0.0f64..5000.0,
        2 => any::<f64>(),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(0.0),
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Ok),
        Just(Outcome::Degraded),
        Just(Outcome::Failed),
        Just(Outcome::Error),
    ]
}

/// One sample's gap to the previous one (ms), outcome and signals.
type Raw = (u64, Outcome, Vec<(usize, f64)>);

fn raw_samples(max: usize) -> impl Strategy<Value = Vec<Raw>> {
    prop::collection::vec(
        (
            0u64..120_000,
            outcome(),
            prop::collection::vec((0..SIGNALS.len(), wild()), 0..4),
        ),
        0..max,
    )
}

/// A window built from `raw`, in time order, ending at `now`.
fn state_of(raw: &[Raw], now: Instant, consecutive: u32) -> ProbeState {
    let mut s = ProbeState::new(Duration::from_secs(24 * 3600));
    let total: u64 = raw.iter().map(|r| r.0).sum();
    let mut at = now - Duration::from_millis(total);
    for (gap, outcome, signals) in raw {
        at += Duration::from_millis(*gap);
        s.window.push_back(Sample::new(
            *outcome,
            at,
            signals.iter().map(|(i, v)| (SIGNALS[*i], *v)),
        ));
    }
    s.consecutive_failures = consecutive;
    s
}

fn baseline_of(raw: &[Raw], now: Instant) -> crate::baseline::Baseline {
    let mut b = BaselineBuilder::with_capacity("v1", 500, 7);
    for sample in state_of(raw, now, 0).window {
        b.add("app", &sample);
    }
    b.finish()
}

fn judge(
    e: &Expr,
    state: &ProbeState,
    base: Option<&crate::baseline::Baseline>,
    now: Instant,
) -> Judgement {
    evaluate(
        e,
        &Input {
            probe: "app",
            state,
            baseline: base,
            live: None,
            choice: crate::live::Choice::Auto,
            interval: Duration::from_secs(5),
            now,
            latency_percentiles: false,
        },
        &Settings::default(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn evaluation_never_panics_on_any_window_or_baseline(
        e in expr(),
        current in raw_samples(80),
        base in proptest::option::of(raw_samples(80)),
        consecutive in any::<u32>(),
    ) {
        let now = Instant::now() + Duration::from_secs(1_000_000);
        let state = state_of(&current, now, consecutive);
        let base = base.map(|b| baseline_of(&b, now));
        let j = judge(&e, &state, base.as_ref(), now);
        prop_assert!(!j.findings.is_empty());
        let _ = serde_json::to_string(&j).unwrap();
    }

    #[test]
    fn an_error_sample_never_changes_a_verdict(
        e in expr(),
        current in raw_samples(60),
        base in proptest::option::of(raw_samples(60)),
        errors in prop::collection::vec(
            (any::<prop::sample::Index>(), prop::collection::vec((0..SIGNALS.len(), wild()), 0..4)),
            1..10,
        ),
        consecutive in 0u32..10,
    ) {
        let now = Instant::now() + Duration::from_secs(1_000_000);
        let state = state_of(&current, now, consecutive);
        let base = base.map(|b| baseline_of(&b, now));
        let before = judge(&e, &state, base.as_ref(), now).verdict;

        // The same window with `error` samples slipped in between, each at
        // the time of its neighbour, carrying whatever signals.
        let mut with_errors = state.clone();
        for (at, signals) in &errors {
            let i = if with_errors.window.is_empty() { 0 } else { at.index(with_errors.window.len() + 1) };
            let t = with_errors
                .window
                .get(i)
                .or(with_errors.window.back())
                .map(|s| s.at())
                .unwrap_or(now);
            with_errors.window.insert(i.min(with_errors.window.len()), Sample::new(Outcome::Error, t, signals.iter().map(|(k, v)| (SIGNALS[*k], *v))));
        }
        let after = judge(&e, &with_errors, base.as_ref(), now).verdict;
        prop_assert_eq!(before, after);
    }

    #[test]
    fn the_u_test_p_value_is_a_probability_and_both_sides_are_treated_alike(
        a in prop::collection::vec(prop_oneof![0.0f64..1000.0, (0u32..20).prop_map(f64::from), any::<f64>().prop_filter("no NaN", |x| !x.is_nan())], 1..120),
        b in prop::collection::vec(prop_oneof![0.0f64..1000.0, (0u32..20).prop_map(f64::from), any::<f64>().prop_filter("no NaN", |x| !x.is_nan())], 1..120),
    ) {
        let ab = stats::mann_whitney(&a, &b).unwrap();
        let ba = stats::mann_whitney(&b, &a).unwrap();
        for t in [ab, ba] {
            prop_assert!((0.0..=1.0).contains(&t.p_value), "p = {}", t.p_value);
        }
        // U counts pairs; the two sides' U add up to every pair.
        let pairs = (a.len() * b.len()) as f64;
        prop_assert!((ab.u + ba.u - pairs).abs() <= 1e-6 * pairs.max(1.0), "{} + {} != {}", ab.u, ba.u, pairs);
        // The two one-sided tests cannot both find their side larger.
        prop_assert!(ab.p_value + ba.p_value >= 1.0 - 1e-9, "{} + {}", ab.p_value, ba.p_value);
        // The order of the samples does not matter.
        let (ra, rb): (Vec<f64>, Vec<f64>) = (a.iter().rev().copied().collect(), b.iter().rev().copied().collect());
        prop_assert_eq!(stats::mann_whitney(&ra, &rb), Some(ab));
    }

    #[test]
    fn fisher_p_values_are_probabilities_for_any_counts(
        ce in wild(), cr in wild(), be in wild(), br in wild(),
    ) {
        let p = stats::fisher(ce, cr, be, br);
        prop_assert!((0.0..=1.0).contains(&p), "p = {p}");
    }

    #[test]
    fn the_normal_tail_is_a_probability_and_decreasing(z in -40.0f64..40.0, dz in 0.0f64..5.0) {
        let (p, q) = (stats::normal_sf(z), stats::normal_sf(z + dz));
        prop_assert!((0.0..=1.0).contains(&p));
        prop_assert!(q <= p + 1e-12, "sf({z}) = {p} < sf({}) = {q}", z + dz);
    }
}
