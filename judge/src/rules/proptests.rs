//! Properties of the language and of judgement over generated inputs.

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;
use crate::baseline::BaselineBuilder;
use crate::observe::{Outcome, ProbeState, Sample};

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        (0u32..100_000).prop_map(f64::from),
        (0u32..100_000, 1u32..4).prop_map(|(n, d)| f64::from(n) / 10f64.powi(d as i32)),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(f64::abs),
    ]
}

fn positive() -> impl Strategy<Value = f64> {
    number().prop_filter("positive", |x| *x > 0.0)
}

fn comparison() -> impl Strategy<Value = Comparison> {
    let signal = prop_oneof![
        Just("latency_ms".to_string()),
        Just("error_rate".to_string()),
        Just("consecutive_failures".to_string()),
        "[a-z_][a-z0-9_]{0,12}".prop_filter("not a keyword", |s| {
            !["and", "or", "for", "baseline", "consecutive_failures"].contains(&s.as_str())
        }),
    ];
    let ordered = prop_oneof![Just(Op::Gt), Just(Op::Ge), Just(Op::Lt), Just(Op::Le)];
    let any_op = prop_oneof![ordered.clone(), Just(Op::Eq), Just(Op::Ne)];
    let window = proptest::option::of(prop_oneof![
        (1u64..100_000).prop_map(Duration::from_millis),
        (1u64..200).prop_map(|m| Duration::from_secs(60 * m)),
    ]);
    let absolute = (
        any_op,
        prop_oneof![
            number().prop_map(Value::Number),
            number().prop_map(|n| Value::Number(-n)),
            number().prop_map(Value::Percent),
        ],
    );
    let relative = prop_oneof![
        (ordered, positive().prop_map(Value::TimesBaseline)),
        (
            prop_oneof![Just(Op::Gt), Just(Op::Ge)],
            number().prop_map(Value::BaselinePlus)
        ),
    ];
    (signal, prop_oneof![absolute, relative], window)
        .prop_filter("baseline needs a sampled signal", |(s, (_, v), _)| {
            !(v.is_baseline() && s == CONSECUTIVE_FAILURES)
        })
        .prop_map(|(signal, (op, value), window)| Comparison {
            signal,
            op,
            value,
            window,
        })
}

pub(super) fn expr() -> impl Strategy<Value = Expr> {
    comparison()
        .prop_map(Expr::Cmp)
        .prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| a.and(b)),
                (inner.clone(), inner).prop_map(|(a, b)| a.or(b)),
            ]
        })
}

/// A state whose window holds `values` of `signal`, 5s apart, ending now.
fn window_of(signal: &'static str, values: &[f64], now: Instant) -> ProbeState {
    let mut s = ProbeState::new(Duration::from_secs(3600));
    let n = values.len() as u32;
    for (i, &v) in values.iter().enumerate() {
        s.window.push_back(Sample::new(
            Outcome::Ok,
            now - Duration::from_secs(5) * (n - i as u32),
            vec![(signal, v)],
        ));
    }
    s
}

fn judge_values(when: &Expr, current: &[f64], baseline: &[f64]) -> Verdict {
    let now = Instant::now() + Duration::from_secs(100_000);
    let state = window_of("latency_ms", current, now);
    let mut b = BaselineBuilder::with_capacity("v1", 1000, 9);
    for &v in baseline {
        b.add(
            "app",
            &Sample::new(Outcome::Ok, now, vec![("latency_ms", v)]),
        );
    }
    let base = b.finish();
    evaluate(
        when,
        &Input {
            probe: "app",
            state: &state,
            baseline: Some(&base),
            live: None,
            choice: crate::live::Choice::Auto,
            interval: Duration::from_secs(5),
            now,
            latency_percentiles: false,
        },
        &Settings::default(),
    )
    .verdict
}

fn latency() -> impl Strategy<Value = f64> {
    prop_oneof![(1u32..5000).prop_map(f64::from), 0.1f64..5000.0]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_canonical_form_parses_back_to_the_same_expression(e in expr()) {
        let text = e.to_string();
        prop_assert_eq!(parse(&text), Ok(e), "{}", text);
    }

    #[test]
    fn parsing_never_panics(text in "[a-z_ ><=!%()+.0-9x]{0,40}") {
        let _ = parse(&text);
    }

    #[test]
    fn the_same_samples_as_the_baseline_never_hold(
        values in prop::collection::vec(latency(), 20..120),
        factor in 0.1f64..3.0,
        op in prop_oneof![Just(">"), Just(">="), Just("<"), Just("<=")],
        window in prop_oneof![Just(""), Just(" for 5m")],
    ) {
        let e = parse(&format!("latency_ms {op} {factor}x baseline{window}")).unwrap();
        let v = judge_values(&e, &values, &values);
        prop_assert_ne!(v, Verdict::Holds);
    }

    #[test]
    fn lowering_the_current_samples_never_turns_clear_into_holds(
        current in prop::collection::vec(latency(), 20..80),
        baseline in prop::collection::vec(latency(), 20..200),
        drop in prop::collection::vec(0.0f64..2000.0, 80),
        when in prop_oneof![
            Just("latency_ms > 1.5x baseline"),
            Just("latency_ms >= 1x baseline"),
            Just("latency_ms > baseline + 20%"),
            Just("latency_ms > 0.5x baseline"),
            Just("latency_ms > 300"),
            Just("latency_ms >= 200 for 1m"),
        ],
    ) {
        let e = parse(when).unwrap();
        let before = judge_values(&e, &current, &baseline);
        let lowered: Vec<f64> = current.iter().zip(&drop).map(|(x, d)| x - d).collect();
        let after = judge_values(&e, &lowered, &baseline);
        if before == Verdict::Clear {
            prop_assert_ne!(after, Verdict::Holds);
        }
    }
}
