use std::time::{Duration, SystemTime};

use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal};
use tokio::time::{advance, Instant};

use super::*;
use crate::baseline::BaselineBuilder;
use crate::observe::{Observation, Outcome, ProbeState};
use crate::rules::parse;

type Signals = Vec<(&'static str, f64)>;

const S30: Duration = Duration::from_secs(30);

fn obs(outcome: Outcome, signals: Signals) -> Observation {
    Observation {
        at: SystemTime::now(),
        outcome,
        latency: Duration::from_millis(5),
        signals,
        error: None,
    }
}

fn state() -> ProbeState {
    ProbeState::new(Duration::from_secs(3600))
}

/// Records each observation, then lets `every` pass.
async fn feed(
    s: &mut ProbeState,
    every: Duration,
    items: impl IntoIterator<Item = (Outcome, Signals)>,
) {
    for (outcome, signals) in items {
        s.record(obs(outcome, signals), Instant::now());
        advance(every).await;
    }
}

fn ok(signals: Signals) -> (Outcome, Signals) {
    (Outcome::Ok, signals)
}

fn judge(when: &str, s: &ProbeState, baseline: Option<&Baseline>) -> Judgement {
    let expr = parse(when).unwrap_or_else(|e| panic!("{when}: {e}"));
    evaluate(
        &expr,
        &Input {
            probe: "app",
            state: s,
            baseline,
            live: None,
            choice: crate::live::Choice::Auto,
            interval: S30,
            now: Instant::now(),
            latency_percentiles: false,
        },
        &Settings::default(),
    )
}

fn reason(j: &Judgement) -> &str {
    match &j.verdict {
        Verdict::Inconclusive(why) => why,
        v => panic!("expected inconclusive, got {v:?}"),
    }
}

fn rate(r: f64, requests: f64) -> Signals {
    vec![("error_rate", r), ("requests", requests)]
}

#[tokio::test(start_paused = true)]
async fn a_window_holds_when_every_sample_satisfies() {
    let mut s = state();
    feed(
        &mut s,
        S30,
        (0..10).map(|i| ok(rate(0.08 + i as f64 * 0.001, 50.0))),
    )
    .await;
    let j = judge("error_rate > 5% for 5m", &s, None);
    assert_eq!(j.verdict, Verdict::Holds);
    let f = &j.findings[0];
    assert_eq!(f.observed, Some(0.08), "the least satisfying value");
    assert_eq!(f.threshold, Some(0.05));
    assert_eq!(f.samples, 10);
    assert_eq!(f.requests, Some(500.0));
}

#[tokio::test(start_paused = true)]
async fn one_sample_that_does_not_satisfy_clears_the_window() {
    let mut s = state();
    let mut items: Vec<_> = (0..10).map(|_| ok(rate(0.08, 50.0))).collect();
    items[6] = ok(rate(0.02, 50.0));
    feed(&mut s, S30, items).await;
    let j = judge("error_rate > 5% for 5m", &s, None);
    assert_eq!(j.verdict, Verdict::Clear);
    assert_eq!(j.findings[0].observed, Some(0.02));
    // Even before the window is covered, a breaking sample clears it.
    let mut s = state();
    feed(&mut s, S30, [ok(rate(0.08, 500.0)), ok(rate(0.01, 500.0))]).await;
    assert_eq!(
        judge("error_rate > 5% for 5m", &s, None).verdict,
        Verdict::Clear
    );
}

#[tokio::test(start_paused = true)]
async fn a_window_needs_data_reaching_back_its_length_less_one_interval() {
    let cases = [
        // (samples 30s apart, verdict)
        (1, false),
        (4, false),
        (8, false), // reaches back 4m
        (9, true),  // reaches back 4m30s: one interval short is enough
        (10, true),
        (30, true),
    ];
    for (n, holds) in cases {
        let mut s = state();
        feed(&mut s, S30, (0..n).map(|_| ok(rate(0.08, 100.0)))).await;
        let j = judge("error_rate > 5% for 5m", &s, None);
        if holds {
            assert_eq!(j.verdict, Verdict::Holds, "{n} samples");
        } else {
            assert!(
                reason(&j).contains("window not yet covered"),
                "{n}: {:?}",
                j.verdict
            );
        }
    }
    let mut s = state();
    feed(&mut s, S30, (0..4).map(|_| ok(rate(0.08, 100.0)))).await;
    assert_eq!(
        reason(&judge("error_rate > 5% for 5m", &s, None)),
        "error_rate > 5% for 5m: window not yet covered: 4 samples reaching back 2m of 5m"
    );
}

#[tokio::test(start_paused = true)]
async fn a_signal_only_some_samples_carry_is_judged_over_the_window_the_probe_watched() {
    // A scrape every 30s, with requests since the previous one only on
    // every fourth: the others carry `requests = 0` and no rate or latency.
    // The probe watched the whole window, whichever sample is the oldest to
    // carry the signal, so the window is covered at every step.
    let mut s = state();
    let baseline = {
        let mut b = BaselineBuilder::with_capacity("v1", 1000, 5);
        for i in 0..100 {
            let sample = crate::observe::Sample::new(
                Outcome::Ok,
                Instant::now(),
                vec![
                    ("p95_ms", 100.0 + i as f64),
                    ("requests", 100.0),
                    ("errors", 1.0),
                    ("error_rate", 0.01),
                ],
            );
            b.add("app", &sample);
        }
        b.finish()
    };
    for i in 0..40 {
        let signals = if i % 4 == 0 {
            vec![
                ("requests", 1.0),
                ("errors", 1.0),
                ("error_rate", 1.0),
                ("p95_ms", 900.0),
            ]
        } else {
            vec![("requests", 0.0)]
        };
        feed(&mut s, S30, [ok(signals)]).await;
        if i < 10 {
            continue;
        }
        // Two or three requests, and as many latency samples, in 5m.
        let cases = [
            ("error_rate > 5% for 5m", "too few requests"),
            ("error_rate > 2x baseline for 5m", "too few requests"),
            ("p95_ms > 2x baseline for 5m", "too few samples"),
        ];
        for (when, why) in cases {
            let j = judge(when, &s, Some(&baseline));
            assert!(
                reason(&j).starts_with(&format!("{when}: {why}")),
                "after {i}: {:?}",
                j.verdict
            );
        }
        // Not a rate, and every value in the window satisfies it.
        assert_eq!(
            judge("p95_ms > 500 for 5m", &s, None).verdict,
            Verdict::Holds,
            "after {i}"
        );
    }
    // Two samples carrying the signal are the least a window is judged on.
    let mut s = state();
    let items = (0..12).map(|i| {
        ok(if i == 11 {
            vec![("requests", 1.0), ("p95_ms", 900.0)]
        } else {
            vec![("requests", 0.0)]
        })
    });
    feed(&mut s, S30, items).await;
    assert_eq!(
        reason(&judge("p95_ms > 500 for 5m", &s, None)),
        "p95_ms > 500 for 5m: too few samples: 1 of 10 in 5m carries p95_ms, need 2"
    );
}

#[tokio::test(start_paused = true)]
async fn error_samples_neither_satisfy_nor_break() {
    let mut s = state();
    let items = (0..20).map(|i| {
        if i % 2 == 0 {
            ok(rate(0.08, 50.0))
        } else {
            // The probe's own fault: what it says is not about the service.
            (Outcome::Error, rate(0.0, 50.0))
        }
    });
    feed(&mut s, Duration::from_secs(15), items).await;
    let j = judge("error_rate > 5% for 5m", &s, None);
    assert_eq!(j.verdict, Verdict::Holds);
    assert_eq!(j.findings[0].samples, 10);
    assert_eq!(j.findings[0].requests, Some(500.0));

    // Errors alone cover nothing.
    let mut s = state();
    feed(
        &mut s,
        S30,
        (0..10).map(|_| (Outcome::Error, rate(0.5, 1000.0))),
    )
    .await;
    assert!(reason(&judge("error_rate > 5% for 5m", &s, None)).contains("0 samples"));
    assert_eq!(
        reason(&judge("error_rate > 5%", &s, None)),
        "error_rate > 5%: no data"
    );
}

#[tokio::test(start_paused = true)]
async fn thin_traffic_never_decides_a_rate() {
    let mut s = state();
    // Two errors out of three requests, every time.
    feed(&mut s, S30, (0..10).map(|_| ok(rate(0.67, 3.0)))).await;
    let j = judge("error_rate > 5% for 5m", &s, None);
    assert_eq!(
        reason(&j),
        "error_rate > 5% for 5m: too few requests: 30 in 5m, need 200"
    );
    assert!(reason(&judge("error_rate > 5%", &s, None))
        .contains("too few requests: 3 in the latest sample"));
    // A source without request counts (PromQL) skips the minimum.
    let mut s = state();
    feed(&mut s, S30, (0..10).map(|_| ok(vec![("error_rate", 0.67)]))).await;
    assert_eq!(
        judge("error_rate > 5% for 5m", &s, None).verdict,
        Verdict::Holds
    );
    // Signals that are not rates have no minimum.
    let mut s = state();
    feed(
        &mut s,
        S30,
        (0..10).map(|_| ok(vec![("pool_utilization", 0.95), ("requests", 1.0)])),
    )
    .await;
    assert_eq!(
        judge("pool_utilization > 90% for 5m", &s, None).verdict,
        Verdict::Holds
    );
}

#[tokio::test(start_paused = true)]
async fn without_for_the_latest_observation_decides() {
    let mut s = state();
    assert_eq!(
        reason(&judge("memory_percent > 95", &s, None)),
        "memory_percent > 95: no data"
    );
    feed(
        &mut s,
        S30,
        [
            ok(vec![("memory_percent", 99.0)]),
            ok(vec![("memory_percent", 97.0)]),
        ],
    )
    .await;
    let cases = [
        ("memory_percent > 95", Verdict::Holds),
        ("memory_percent >= 97", Verdict::Holds),
        ("memory_percent > 97", Verdict::Clear),
        ("memory_percent < 98", Verdict::Holds),
        ("memory_percent <= 96", Verdict::Clear),
        ("memory_percent == 97", Verdict::Holds),
        ("memory_percent != 97", Verdict::Clear),
    ];
    for (when, want) in cases {
        let j = judge(when, &s, None);
        assert_eq!(j.verdict, want, "{when}");
        assert_eq!(j.findings[0].observed, Some(97.0), "{when}");
    }
    // A later error sample is skipped.
    feed(
        &mut s,
        S30,
        [(Outcome::Error, vec![("memory_percent", 10.0)])],
    )
    .await;
    assert_eq!(
        judge("memory_percent > 95", &s, None).verdict,
        Verdict::Holds
    );
    // Another signal is simply absent.
    assert!(reason(&judge("status >= 500", &s, None)).ends_with("no data"));
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_is_a_signal_like_any_other() {
    let failed = || (Outcome::Failed, vec![("latency_ms", 1000.0)]);
    let up = || ok(vec![("latency_ms", 10.0)]);
    let mut s = state();
    assert!(reason(&judge("consecutive_failures >= 3", &s, None)).ends_with("no data"));
    feed(&mut s, S30, [up(), failed(), failed()]).await;
    assert_eq!(
        judge("consecutive_failures >= 3", &s, None).verdict,
        Verdict::Clear
    );
    feed(&mut s, S30, [(Outcome::Error, vec![]), failed()]).await;
    let j = judge("consecutive_failures >= 3", &s, None);
    assert_eq!(j.verdict, Verdict::Holds);
    assert_eq!(j.findings[0].observed, Some(3.0));

    // Over a window, the count after each sample is replayed.
    let mut s = state();
    feed(&mut s, S30, (0..3).map(|_| up())).await;
    feed(&mut s, S30, (0..12).map(|_| failed())).await;
    // Failing for the last 6 minutes (12 checks): the count reached 3 at
    // the third failure, 5 minutes ago, and 4 a check later.
    let cases = [
        ("consecutive_failures >= 3 for 5m", Verdict::Holds),
        ("consecutive_failures >= 4 for 5m", Verdict::Clear),
        ("consecutive_failures >= 1 for 6m", Verdict::Holds),
        ("consecutive_failures >= 1 for 7m", Verdict::Clear),
    ];
    for (when, want) in cases {
        assert_eq!(judge(when, &s, None).verdict, want, "{when}");
    }
    // Without any success in the window, the count is derived from the state.
    let mut s = ProbeState::new(Duration::from_secs(120));
    feed(&mut s, S30, (0..20).map(|_| failed())).await;
    assert_eq!(
        judge("consecutive_failures >= 10 for 2m", &s, None).verdict,
        Verdict::Holds
    );
}

#[tokio::test(start_paused = true)]
async fn and_or_combine_three_ways() {
    let mut s = state();
    feed(&mut s, S30, [ok(vec![("a", 5.0), ("b", 0.0)])]).await;
    // a > 1 holds, b > 1 is clear, c > 1 is inconclusive (no data).
    let cases = [
        ("a > 1 and a > 2", "holds"),
        ("a > 1 and b > 1", "clear"),
        ("a > 1 and c > 1", "inconclusive"),
        ("b > 1 and c > 1", "clear"),
        ("a > 1 or b > 1", "holds"),
        ("a > 1 or c > 1", "holds"),
        ("b > 1 or c > 1", "inconclusive"),
        ("b > 1 or b > 2", "clear"),
        ("b > 1 or a > 1 and c > 1", "inconclusive"),
        ("(b > 1 or a > 1) and a > 4", "holds"),
        ("b > 1 and c > 1 or a > 1", "holds"),
    ];
    for (when, want) in cases {
        let j = judge(when, &s, None);
        let got = match j.verdict {
            Verdict::Holds => "holds",
            Verdict::Clear => "clear",
            Verdict::Inconclusive(_) => "inconclusive",
        };
        assert_eq!(got, want, "{when}");
        assert_eq!(
            j.findings.len(),
            parse(when).unwrap().comparisons().count(),
            "{when}"
        );
    }
}

/// A baseline of `n` latency samples drawn from `dist`, as `p95_ms` (a
/// `scrape` probe's own).
fn latency_baseline(dist: &LogNormal<f64>, n: usize, rng: &mut impl rand::Rng) -> Baseline {
    baseline_of("p95_ms", dist, n, rng)
}

/// A baseline of `n` values of `signal` drawn from `dist`.
fn baseline_of(
    signal: &'static str,
    dist: &LogNormal<f64>,
    n: usize,
    rng: &mut impl rand::Rng,
) -> Baseline {
    let mut b = BaselineBuilder::with_capacity("v1", 1000, 3);
    for _ in 0..n {
        let sample = crate::observe::Sample::new(
            Outcome::Ok,
            Instant::now(),
            vec![(signal, dist.sample(rng))],
        );
        b.add("app", &sample);
    }
    b.finish()
}

async fn latency_window(dist: &LogNormal<f64>, scale: f64, rng: &mut impl rand::Rng) -> ProbeState {
    let mut s = state();
    // One sample every 5s for 5m: 60 samples.
    let items: Vec<_> = (0..60)
        .map(|_| ok(vec![("p95_ms", scale * dist.sample(rng))]))
        .collect();
    feed(&mut s, Duration::from_secs(5), items).await;
    s
}

#[tokio::test(start_paused = true)]
async fn a_baseline_comparison_needs_a_baseline_and_enough_samples() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let dist = LogNormal::new(4.0, 0.3).unwrap();
    let s = latency_window(&dist, 3.0, &mut rng).await;
    let when = "p95_ms > 2x baseline for 5m";
    assert_eq!(
        reason(&judge(when, &s, None)),
        format!("{when}: no baseline yet")
    );
    let other = BaselineBuilder::with_capacity("v0", 10, 1).finish();
    assert_eq!(
        reason(&judge(when, &s, Some(&other))),
        format!("{when}: the baseline (v0) has no p95_ms for probe app")
    );
    let thin = latency_baseline(&dist, 12, &mut rng);
    assert_eq!(
        reason(&judge(when, &s, Some(&thin))),
        format!("{when}: too few samples: 60 current and 12 baseline, need 20 each")
    );
    let base = latency_baseline(&dist, 500, &mut rng);
    let j = judge(when, &s, Some(&base));
    assert_eq!(j.verdict, Verdict::Holds);
    let f = &j.findings[0];
    assert_eq!((f.samples, f.baseline_samples), (60, Some(500)));
    assert!(f.ratio.unwrap() > 2.5 && f.ratio.unwrap() < 3.5, "{f:?}");
    assert!(f.p_value.unwrap() < 1e-10, "{f:?}");
    assert_eq!(f.test, Some("mann_whitney"));
    // Not yet covered: the same samples over a longer window.
    assert!(
        reason(&judge("p95_ms > 2x baseline for 10m", &s, Some(&base)))
            .contains("window not yet covered")
    );
    // Without `for`, the last 5 minutes are compared and need no coverage.
    assert_eq!(
        judge("p95_ms > 2x baseline", &s, Some(&base)).verdict,
        Verdict::Holds
    );
    assert_eq!(
        judge("p95_ms > baseline + 150%", &s, Some(&base)).verdict,
        Verdict::Holds
    );
    assert_eq!(
        judge("p95_ms > 4x baseline", &s, Some(&base)).verdict,
        Verdict::Clear
    );
}

#[tokio::test(start_paused = true)]
async fn faster_is_never_a_regression() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let dist = LogNormal::new(4.0, 0.5).unwrap();
    let base = latency_baseline(&dist, 1000, &mut rng);
    let s = latency_window(&dist, 0.2, &mut rng).await;
    for when in [
        "p95_ms > 0.5x baseline for 5m",
        "p95_ms > 0.1x baseline",
        "p95_ms >= baseline + 0%",
    ] {
        assert_eq!(
            judge(when, &s, Some(&base)).verdict,
            Verdict::Clear,
            "{when}"
        );
    }
    // Where smaller is what the rule says is worse, it is.
    assert_eq!(
        judge("p95_ms < 0.5x baseline for 5m", &s, Some(&base)).verdict,
        Verdict::Holds
    );
}

#[tokio::test(start_paused = true)]
async fn noisy_but_the_same_never_holds() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for sigma in [0.2, 0.5, 1.0, 1.5] {
        let dist = LogNormal::new(3.0, sigma).unwrap();
        let base = latency_baseline(&dist, 1000, &mut rng);
        for _ in 0..10 {
            let s = latency_window(&dist, 1.0, &mut rng).await;
            for when in ["p95_ms > 1.2x baseline for 5m", "p95_ms > baseline + 10%"] {
                let j = judge(when, &s, Some(&base));
                assert_eq!(
                    j.verdict,
                    Verdict::Clear,
                    "{when} at sigma {sigma}: {:?}",
                    j.findings[0]
                );
            }
        }
    }
}

fn traffic_baseline(requests: f64, errors: f64) -> Baseline {
    let mut b = BaselineBuilder::with_capacity("v1", 1000, 3);
    for _ in 0..90 {
        let sample = crate::observe::Sample::new(
            Outcome::Ok,
            Instant::now(),
            vec![("requests", requests / 90.0), ("errors", errors / 90.0)],
        );
        b.add("app", &sample);
    }
    b.finish()
}

#[tokio::test(start_paused = true)]
async fn error_rates_against_the_baseline_compare_counts() {
    let base = traffic_baseline(90_000.0, 90.0); // 0.1%
    let counted = |errors: f64| {
        ok(vec![
            ("requests", 100.0),
            ("errors", errors),
            ("error_rate", errors / 100.0),
        ])
    };
    let cases = [
        // errors per 100 requests over 10 samples, verdict
        (0.0, "clear"),
        (0.1, "clear"), // the same rate
        (0.3, "clear"), // 3x, but 3 errors where 1 was expected is not significant
        (1.0, "holds"), // 10 errors where 1 was expected is
        (5.0, "holds"),
    ];
    for (errors, want) in cases {
        let mut s = state();
        feed(&mut s, S30, (0..10).map(|_| counted(errors))).await;
        let j = judge("error_rate > 2x baseline for 5m", &s, Some(&base));
        let got = match &j.verdict {
            Verdict::Holds => "holds",
            Verdict::Clear => "clear",
            Verdict::Inconclusive(why) => panic!("{errors}: {why}"),
        };
        assert_eq!(got, want, "{errors} errors per sample: {:?}", j.findings[0]);
        let f = &j.findings[0];
        assert_eq!(f.test, Some("fisher"));
        assert_eq!(
            (f.requests, f.baseline_requests),
            (Some(1000.0), Some(90_000.0))
        );
        assert_eq!(f.baseline, Some(0.001));
    }
    // Thin traffic is inconclusive here too.
    let mut s = state();
    feed(
        &mut s,
        S30,
        (0..10).map(|_| {
            ok(vec![
                ("requests", 2.0),
                ("errors", 2.0),
                ("error_rate", 1.0),
            ])
        }),
    )
    .await;
    assert!(
        reason(&judge("error_rate > 2x baseline for 5m", &s, Some(&base)))
            .contains("too few requests")
    );
}

#[tokio::test(start_paused = true)]
async fn evidence_reads_as_a_sentence() {
    let mut s = state();
    let mut items: Vec<_> = (0..10).map(|_| ok(rate(0.09, 41.0))).collect();
    items[3] = ok(rate(0.079, 43.0));
    feed(&mut s, S30, items).await;
    let rule = RuleRef {
        name: "errors",
        probe: "app",
        when: "error_rate > 5% for 5m",
    };
    let j = judge(rule.when, &s, None);
    let ev = evidence(rule, &j);
    assert_eq!(ev.len(), 1);
    assert_eq!(
        ev[0].summary,
        "error_rate 7.9% > 5% for 5m on probe app (412 requests)"
    );
    assert_eq!(ev[0].observed, Some(0.079));
    assert_eq!(ev[0].threshold, Some(0.05));
    assert_eq!(ev[0].window.as_deref(), Some("5m"));
    assert_eq!(ev[0].expression, "error_rate > 5% for 5m");
    assert_eq!(j.summary("app"), ev[0].summary);

    // Nothing to show for a rule that does not hold.
    let j = judge("error_rate > 10% for 5m", &s, None);
    assert!(evidence(rule, &j).is_empty());
    assert_eq!(j.summary("app"), "clear");

    // The baseline's numbers are in the sentence too.
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let dist = LogNormal::new(4.0, 0.3).unwrap();
    let base = latency_baseline(&dist, 500, &mut rng);
    let s = latency_window(&dist, 3.0, &mut rng).await;
    let j = judge("p95_ms > 2x baseline for 5m", &s, Some(&base));
    let line = j.summary("app");
    assert!(
        line.starts_with("p95_ms ")
            && line.contains(" > 2x baseline ")
            && line.contains("for 5m on probe app (")
            && line.contains("p<0.0001, 60 vs 500 samples, stored baseline v1)"),
        "{line}"
    );
    // And in the evidence's own fields, for whoever reads the rollback call.
    let rule = RuleRef {
        name: "latency",
        when: "p95_ms > 2x baseline for 5m",
        ..rule
    };
    let ev = evidence(rule, &j);
    let f = &j.findings[0];
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].observed, ev[0].baseline, ev[0].ratio, ev[0].p_value),
        (f.observed, f.baseline, f.ratio, f.p_value)
    );
    assert!(ev[0].ratio.unwrap() > 2.5 && ev[0].p_value.unwrap() < 1e-4);
    assert_eq!(ev[0].summary, line);
}

#[tokio::test(start_paused = true)]
async fn a_judgement_serializes_for_status() {
    let mut s = state();
    feed(&mut s, S30, [ok(vec![("a", 5.0)])]).await;
    let j = judge("a > 1 and c > 1", &s, None);
    let v = serde_json::to_value(&j).unwrap();
    assert_eq!(v["verdict"], "inconclusive");
    assert_eq!(v["reason"], "c > 1: no data");
    assert_eq!(v["findings"][0]["verdict"], "holds");
    assert_eq!(v["findings"][0]["observed"], 5.0);
    assert_eq!(v["findings"][1]["condition"], "c > 1");
}

#[test]
fn numbers_read_well() {
    let cases = [
        (412.0, "412"),
        (7.9, "7.9"),
        (7.912, "7.91"),
        (412.337, "412"),
        (12.34, "12.3"),
        (0.000_312_3, "0.000312"),
        (0.5, "0.5"),
        (0.0, "0"),
    ];
    for (x, want) in cases {
        assert_eq!(num(x), want, "{x}");
    }
}

#[test]
fn the_latest_value_read_from_the_end_is_the_last_point_of_the_window() {
    // Windows of mixed outcomes, some samples without the signal and some
    // NaN: reading the latest value from the end agrees with replaying the
    // whole window, whatever the mix.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let start = Instant::now();
    for _ in 0..500 {
        let mut s = state();
        let n = rand::Rng::gen_range(&mut rng, 0..20);
        for i in 0..n {
            let outcome = Outcome::ALL[rand::Rng::gen_range(&mut rng, 0..4)];
            let signals = match rand::Rng::gen_range(&mut rng, 0..4) {
                0 => vec![],
                1 => vec![("latency_ms", f64::NAN)],
                2 => vec![("status", 200.0)],
                _ => vec![
                    ("latency_ms", i as f64),
                    ("requests", 10.0),
                    ("errors", 1.0),
                ],
            };
            s.record(obs(outcome, signals), start + Duration::from_millis(i));
        }
        let replayed = points(&s, "latency_ms")
            .last()
            .map(|p| (p.at, p.value, p.counts));
        let latest = latest_point(&s, "latency_ms").map(|p| (p.at, p.value, p.counts));
        assert_eq!(latest, replayed);
    }
}

/// Judged on a probe whose `p95_ms` and kin are percentiles of its
/// `latency_ms` (an `http` probe).
fn judge_latency(when: &str, s: &ProbeState, baseline: Option<&Baseline>) -> Judgement {
    let expr = parse(when).unwrap_or_else(|e| panic!("{when}: {e}"));
    evaluate(
        &expr,
        &Input {
            probe: "app",
            state: s,
            baseline,
            live: None,
            choice: crate::live::Choice::Auto,
            interval: Duration::from_secs(5),
            now: Instant::now(),
            latency_percentiles: true,
        },
        &Settings::default(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_percentile_is_read_from_the_latency_samples_of_the_window() {
    let mut s = state();
    // 1..=100 ms, one every 3 s: 5 minutes.
    let items: Vec<_> = (1..=100)
        .map(|i| ok(vec![("latency_ms", i as f64)]))
        .collect();
    feed(&mut s, Duration::from_secs(3), items).await;
    let cases = [
        ("p50_ms > 50 for 5m", Verdict::Holds, 50.5),
        ("p50_ms > 51 for 5m", Verdict::Clear, 50.5),
        ("p90_ms > 90 for 5m", Verdict::Holds, 90.1),
        ("p95_ms > 95 for 5m", Verdict::Holds, 95.05),
        ("p99_ms > 99.5 for 5m", Verdict::Clear, 99.01),
        ("p99_ms >= 99 for 5m", Verdict::Holds, 99.01),
        ("p99_ms < 99 for 5m", Verdict::Clear, 99.01),
    ];
    for (when, verdict, observed) in cases {
        let j = judge_latency(when, &s, None);
        assert_eq!(j.verdict, verdict, "{when}");
        let got = j.findings[0].observed.unwrap();
        assert!((got - observed).abs() < 1e-9, "{when}: {got}");
        assert_eq!(j.findings[0].samples, 100, "{when}");
    }
    // A window not yet covered cannot hold.
    assert!(
        reason(&judge_latency("p95_ms > 10 for 10m", &s, None)).contains("window not yet covered")
    );
    // Without percentiles of its own latency (a `scrape` probe), `p95_ms`
    // is the probe's own signal, which these samples do not carry.
    assert!(reason(&judge("p95_ms > 10 for 5m", &s, None)).contains("too few samples"));
}

/// A baseline of `n` latency samples drawn from `dist`, as `latency_ms`.
fn latency_ms_baseline(dist: &LogNormal<f64>, n: usize, rng: &mut impl rand::Rng) -> Baseline {
    baseline_of("latency_ms", dist, n, rng)
}

#[tokio::test(start_paused = true)]
async fn a_percentile_regression_against_the_baseline_holds_only_when_large_and_significant() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let dist = LogNormal::new(4.0, 0.4).unwrap();
    let base = latency_ms_baseline(&dist, 300, &mut rng);
    let window = |scale: f64, rng: &mut rand::rngs::StdRng| {
        let items: Vec<_> = (0..60)
            .map(|_| ok(vec![("latency_ms", scale * dist.sample(rng))]))
            .collect();
        items
    };
    let mut slow = state();
    feed(&mut slow, Duration::from_secs(5), window(2.5, &mut rng)).await;
    for when in [
        "p50_ms > 1.5x baseline for 5m",
        "p95_ms > 1.5x baseline for 5m",
        "p99_ms > 1.5x baseline",
    ] {
        let j = judge_latency(when, &slow, Some(&base));
        assert_eq!(j.verdict, Verdict::Holds, "{when}: {j:?}");
        let f = &j.findings[0];
        assert_eq!(f.test, Some("quantile"));
        assert_eq!(f.baseline_samples, Some(300));
        assert!(f.ratio.unwrap() > 1.5, "{f:?}");
        assert!(f.p_value.unwrap() < 0.01, "{f:?}");
    }
    // No latency in the baseline for this probe.
    let other = BaselineBuilder::with_capacity("v0", 10, 1).finish();
    assert!(reason(&judge_latency(
        "p95_ms > 2x baseline for 5m",
        &slow,
        Some(&other)
    ))
    .contains("the baseline (v0) has no latency_ms for probe app"));
    // Larger, but not by the factor.
    assert_eq!(
        judge_latency("p95_ms > 4x baseline for 5m", &slow, Some(&base)).verdict,
        Verdict::Clear
    );
    // Faster is never a regression.
    let mut fast = state();
    feed(&mut fast, Duration::from_secs(5), window(0.4, &mut rng)).await;
    assert_eq!(
        judge_latency("p95_ms > 1.5x baseline for 5m", &fast, Some(&base)).verdict,
        Verdict::Clear
    );
    // The same distribution does not hold.
    let mut same = state();
    feed(&mut same, Duration::from_secs(5), window(1.0, &mut rng)).await;
    assert_eq!(
        judge_latency("p95_ms > 1.5x baseline for 5m", &same, Some(&base)).verdict,
        Verdict::Clear
    );
    // A tail that grew while the middle stayed: p99 holds, p50 does not.
    let mut tail = state();
    let items: Vec<_> = (0..60)
        .map(|i| {
            let x = dist.sample(&mut rng);
            ok(vec![("latency_ms", if i % 5 == 0 { 20.0 * x } else { x })])
        })
        .collect();
    feed(&mut tail, Duration::from_secs(5), items).await;
    assert_eq!(
        judge_latency("p99_ms > 2x baseline for 5m", &tail, Some(&base)).verdict,
        Verdict::Holds
    );
    assert_eq!(
        judge_latency("p50_ms > 2x baseline for 5m", &tail, Some(&base)).verdict,
        Verdict::Clear
    );
}
