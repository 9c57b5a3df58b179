//! Judgement: false rollbacks and detection.
//!
//! Runs the rule evaluator over many generated pairs of windows — a current
//! deployment's and its baseline's — and counts how often a `x baseline`
//! rule Holds when both come from the same distribution (a false rollback)
//! and when the current one is really worse (a detection). Seeded, so every
//! run prints the same figures:
//!
//! ```text
//! cargo run -p backstop --example judgement
//! ```
//!
//! A reduced run with generous bounds is part of `cargo test -p backstop`.

use std::time::Duration;

use backstop_judge::baseline::{Baseline, BaselineBuilder};
use backstop_judge::observe::{Outcome, ProbeState, Sample};
use backstop_judge::rules::{self, Expr, Input, Settings, Verdict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Binomial, Distribution, LogNormal, Poisson};
use tokio::time::Instant;

const SEED: u64 = 20_260_101;
const SIGMAS: [f64; 5] = [0.2, 0.4, 0.6, 0.8, 1.0];
const LATENCY_RULES: [&str; 7] = [
    "latency_ms > 1.5x baseline",
    "latency_ms > 2x baseline",
    "latency_ms > baseline + 20%",
    // Percentiles of the same latency samples (an `http` probe's).
    "p50_ms > 1.5x baseline",
    "p90_ms > 1.5x baseline",
    "p95_ms > 1.5x baseline",
    "p99_ms > 1.5x baseline",
];
/// The first of [`LATENCY_RULES`] over a percentile.
const FIRST_PERCENTILE_RULE: usize = 3;
const RATE_RULES: [&str; 2] = [
    "error_rate > 1.5x baseline for 5m",
    "error_rate > 2x baseline for 5m",
];

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    trials: u64,
    holds: u64,
    inconclusive: u64,
}

impl Tally {
    fn add(&mut self, v: &Verdict) {
        self.trials += 1;
        match v {
            Verdict::Holds => self.holds += 1,
            Verdict::Inconclusive(_) => self.inconclusive += 1,
            Verdict::Clear => {}
        }
    }

    fn rate(&self) -> f64 {
        self.holds as f64 / self.trials.max(1) as f64
    }

    fn cell(&self) -> String {
        format!(
            "{:6.2}% ({}/{})",
            100.0 * self.rate(),
            self.holds,
            self.trials
        )
    }
}

struct Report {
    /// [rule][sigma]: same distribution, 50 current vs 50..1000 baseline.
    latency_same: Vec<Vec<Tally>>,
    /// [rule][sigma]: 2.5x slower, 50 samples a side.
    latency_shift: Vec<Vec<Tally>>,
    /// [rule][sigma]: 2.5x slower, 200 samples a side (the percentile
    /// rules only; the others' rows stay empty).
    latency_shift_200: Vec<Vec<Tally>>,
    /// [rule]: same error rate (0-10%), traffic 1-500 rps.
    rate_same: Vec<Tally>,
    /// [rule]: same, but a source without request counts (U test).
    rate_same_uncounted: Vec<Tally>,
    /// [rule]: 3x the error rate (0.5-3%), traffic 5-500 rps.
    rate_shift: Vec<Tally>,
    /// `error_rate > 5% for 5m` with a true rate of 0-4%.
    absolute_false: Tally,
}

fn now() -> Instant {
    Instant::now() + Duration::from_secs(1_000_000)
}

/// A probe whose window holds `signals`, one sample every `every`, the last
/// one `every` before `now`.
fn state(samples: Vec<Vec<(&'static str, f64)>>, every: Duration, now: Instant) -> ProbeState {
    let mut s = ProbeState::new(Duration::from_secs(3600));
    let n = samples.len() as u32;
    for (i, signals) in samples.into_iter().enumerate() {
        s.window.push_back(Sample::new(
            Outcome::Ok,
            now - every * (n - i as u32),
            signals,
        ));
    }
    s
}

fn baseline(samples: Vec<Vec<(&'static str, f64)>>, seed: u64) -> Baseline {
    let mut b = BaselineBuilder::with_capacity("stable", 1000, seed);
    for signals in samples {
        b.add("app", &Sample::new(Outcome::Ok, now(), signals));
    }
    b.finish()
}

fn verdict(
    expr: &Expr,
    state: &ProbeState,
    base: &Baseline,
    interval: Duration,
    now: Instant,
) -> Verdict {
    rules::evaluate(
        expr,
        &Input {
            probe: "app",
            state,
            baseline: Some(base),
            live: None,
            choice: backstop_judge::live::Choice::Auto,
            interval,
            now,
            latency_percentiles: true,
        },
        &Settings::default(),
    )
    .verdict
}

fn latencies(
    rng: &mut StdRng,
    dist: &LogNormal<f64>,
    scale: f64,
    n: usize,
) -> Vec<Vec<(&'static str, f64)>> {
    (0..n)
        .map(|_| vec![("latency_ms", scale * dist.sample(rng))])
        .collect()
}

/// Requests and errors of `n` samples 10s apart.
fn traffic(
    rng: &mut StdRng,
    rps: f64,
    p: f64,
    n: usize,
    counted: bool,
) -> Vec<Vec<(&'static str, f64)>> {
    let poisson = Poisson::new(rps * 10.0).expect("positive rate");
    (0..n)
        .map(|_| {
            let requests: f64 = poisson.sample(rng);
            let errors = if requests > 0.0 {
                Binomial::new(requests as u64, p)
                    .expect("a probability")
                    .sample(rng) as f64
            } else {
                0.0
            };
            let rate = if requests > 0.0 {
                errors / requests
            } else {
                0.0
            };
            if counted {
                vec![
                    ("requests", requests),
                    ("errors", errors),
                    ("error_rate", rate),
                ]
            } else {
                vec![("error_rate", rate)]
            }
        })
        .collect()
}

/// Runs `pairs` pairs per cell.
fn run(pairs: usize) -> Report {
    let mut rng = StdRng::seed_from_u64(SEED);
    let now = now();
    let five_s = Duration::from_secs(5);
    let ten_s = Duration::from_secs(10);
    let latency_rules: Vec<Expr> = LATENCY_RULES
        .iter()
        .map(|r| rules::parse(r).unwrap())
        .collect();
    let rate_rules: Vec<Expr> = RATE_RULES
        .iter()
        .map(|r| rules::parse(r).unwrap())
        .collect();

    let mut latency_same = vec![vec![Tally::default(); SIGMAS.len()]; LATENCY_RULES.len()];
    let mut latency_shift = latency_same.clone();
    let mut latency_shift_200 = latency_same.clone();
    for (k, &sigma) in SIGMAS.iter().enumerate() {
        for _ in 0..pairs {
            // Typical service latencies: a median between 5ms and 500ms.
            let mu = rng.gen_range(5f64.ln()..500f64.ln());
            let dist = LogNormal::new(mu, sigma).unwrap();
            let n_base = [50, 180, 1000][rng.gen_range(0..3)];
            let base = baseline(latencies(&mut rng, &dist, 1.0, n_base), rng.gen());
            let same = state(latencies(&mut rng, &dist, 1.0, 50), five_s, now);
            let base50 = baseline(latencies(&mut rng, &dist, 1.0, 50), rng.gen());
            let slow = state(latencies(&mut rng, &dist, 2.5, 50), five_s, now);
            for (r, e) in latency_rules.iter().enumerate() {
                latency_same[r][k].add(&verdict(e, &same, &base, five_s, now));
                latency_shift[r][k].add(&verdict(e, &slow, &base50, five_s, now));
            }
            // A percentile of 50 samples is noisy in the tail: the same
            // shift with 200 samples a side (one a second, over 5 minutes).
            let base200 = baseline(latencies(&mut rng, &dist, 1.0, 200), rng.gen());
            let slow200 = state(
                latencies(&mut rng, &dist, 2.5, 200),
                Duration::from_secs(1),
                now,
            );
            for (r, e) in latency_rules.iter().enumerate().skip(FIRST_PERCENTILE_RULE) {
                latency_shift_200[r][k].add(&verdict(
                    e,
                    &slow200,
                    &base200,
                    Duration::from_secs(1),
                    now,
                ));
            }
        }
    }

    let mut rate_same = vec![Tally::default(); RATE_RULES.len()];
    let mut rate_same_uncounted = rate_same.clone();
    let mut rate_shift = rate_same.clone();
    let mut absolute_false = Tally::default();
    let absolute = rules::parse("error_rate > 5% for 5m").unwrap();
    for _ in 0..pairs * SIGMAS.len() {
        // Traffic log-uniform over 1-500 requests per second; error rate 0-10%.
        let rps = rng.gen_range(0f64..500f64.ln()).exp();
        let p = rng.gen_range(0.0..0.10);
        // A 15m watch of baseline, a 5m window now, one sample per 10s.
        let base = baseline(traffic(&mut rng, rps, p, 90, true), rng.gen());
        let now_counted = state(traffic(&mut rng, rps, p, 30, true), ten_s, now);
        let base_u = baseline(traffic(&mut rng, rps, p, 90, false), rng.gen());
        let now_u = state(traffic(&mut rng, rps, p, 30, false), ten_s, now);
        for (r, e) in rate_rules.iter().enumerate() {
            rate_same[r].add(&verdict(e, &now_counted, &base, ten_s, now));
            rate_same_uncounted[r].add(&verdict(e, &now_u, &base_u, ten_s, now));
        }
        let p_low = rng.gen_range(0.0..0.04);
        let low = state(traffic(&mut rng, rps, p_low, 30, true), ten_s, now);
        absolute_false.add(&verdict(&absolute, &low, &base, ten_s, now));

        let rps = rng.gen_range(5f64.ln()..500f64.ln()).exp();
        let p = rng.gen_range(0.005..0.03);
        let base = baseline(traffic(&mut rng, rps, p, 90, true), rng.gen());
        let bad = state(traffic(&mut rng, rps, 3.0 * p, 30, true), ten_s, now);
        for (r, e) in rate_rules.iter().enumerate() {
            rate_shift[r].add(&verdict(e, &bad, &base, ten_s, now));
        }
    }
    Report {
        latency_same,
        latency_shift,
        latency_shift_200,
        rate_same,
        rate_same_uncounted,
        rate_shift,
        absolute_false,
    }
}

fn total(cells: &[Tally]) -> Tally {
    cells.iter().fold(Tally::default(), |a, b| Tally {
        trials: a.trials + b.trials,
        holds: a.holds + b.holds,
        inconclusive: a.inconclusive + b.inconclusive,
    })
}

fn print(r: &Report) {
    let header = || {
        print!("{:30}", "rule \\ sigma");
        for s in SIGMAS {
            print!(" {:>20}", s);
        }
        println!(" {:>22}", "all");
    };
    let rows = |cells: &Vec<Vec<Tally>>, from: usize| {
        for (i, rule) in LATENCY_RULES.iter().enumerate().skip(from) {
            print!("{rule:30}");
            for c in &cells[i] {
                print!(" {:>20}", c.cell());
            }
            println!(" {:>22}", total(&cells[i]).cell());
        }
    };
    println!(
        "Latency, same distribution (false rollbacks), 50 current vs 50/180/1000 baseline samples:"
    );
    header();
    rows(&r.latency_same, 0);
    println!();
    println!("Latency, 2.5x slower (detections), 50 samples a side:");
    header();
    rows(&r.latency_shift, 0);
    println!();
    println!("Latency percentiles, 2.5x slower (detections), 200 samples a side:");
    header();
    rows(&r.latency_shift_200, FIRST_PERCENTILE_RULE);
    println!();
    println!("Error rate 0-10%, 1-500 rps, 5m (30 samples) vs 15m baseline:");
    for (i, rule) in RATE_RULES.iter().enumerate() {
        println!(
            "  {rule:36} same, counted (Fisher): {}   same, uncounted (U test): {}   3x rate (Fisher): {}",
            r.rate_same[i].cell(),
            r.rate_same_uncounted[i].cell(),
            r.rate_shift[i].cell()
        );
    }
    println!(
        "  {:36} true rate 0-4%: {}",
        "error_rate > 5% for 5m",
        r.absolute_false.cell()
    );
}

/// The live baseline's rules (without `for`: the 50 samples 5 s apart of
/// each side are the last 250 s of the 5 m baseline window).
const LIVE_RULES: [&str; 3] = [
    "latency_ms > 1.3x baseline",
    "latency_ms > 1.5x baseline",
    "p95_ms > 1.5x baseline",
];

/// Per rule of [`LIVE_RULES`]: every replica `load`× slower (1.3-2×) than
/// when the stored baseline was measured, judged against the live peers
/// and against the stored baseline; and a canary 2.5× slower than its
/// peers, 50 samples a side.
struct LiveReport {
    shared_live: Vec<Tally>,
    shared_stored: Vec<Tally>,
    canary_live: Vec<Tally>,
}

/// `peers` replicas' samples of the same minutes as the canary's window.
fn live_of(
    rng: &mut StdRng,
    dist: &LogNormal<f64>,
    scale: f64,
    peers: usize,
    each: usize,
    now: Instant,
) -> backstop_judge::live::Live {
    let every = Duration::from_secs(5) * 50 / each as u32;
    backstop_judge::live::Live {
        deployment: "stable".into(),
        peers: (0..peers)
            .map(|i| backstop_judge::live::LivePeer {
                replica: format!("r{i}"),
                probes: [(
                    "app".to_string(),
                    [(
                        "latency_ms".to_string(),
                        (0..each)
                            .map(|k| (now - every * (k as u32 + 1), scale * dist.sample(rng)))
                            .collect(),
                    )]
                    .into(),
                )]
                .into(),
            })
            .collect(),
    }
}

fn live_verdict(expr: &Expr, state: &ProbeState, live: &backstop_judge::live::Live) -> Verdict {
    rules::evaluate(
        expr,
        &Input {
            probe: "app",
            state,
            baseline: None,
            live: Some(live),
            choice: backstop_judge::live::Choice::Live,
            interval: Duration::from_secs(5),
            now: now(),
            latency_percentiles: true,
        },
        &Settings::default(),
    )
    .verdict
}

fn run_live(pairs: usize) -> LiveReport {
    let mut rng = StdRng::seed_from_u64(SEED + 1);
    let now = now();
    let five_s = Duration::from_secs(5);
    let exprs: Vec<Expr> = LIVE_RULES
        .iter()
        .map(|r| rules::parse(r).unwrap())
        .collect();
    let mut r = LiveReport {
        shared_live: vec![Tally::default(); LIVE_RULES.len()],
        shared_stored: vec![Tally::default(); LIVE_RULES.len()],
        canary_live: vec![Tally::default(); LIVE_RULES.len()],
    };
    for _ in 0..pairs * SIGMAS.len() {
        let sigma = SIGMAS[rng.gen_range(0..SIGMAS.len())];
        let mu = rng.gen_range(5f64.ln()..500f64.ln());
        let dist = LogNormal::new(mu, sigma).unwrap();
        // Load, not the deploy: every replica, the canary too, slower by
        // the same factor; two peers of 50 samples each.
        let load = rng.gen_range(1.3..2.0);
        let stored = baseline(latencies(&mut rng, &dist, 1.0, 1000), rng.gen());
        let canary = state(latencies(&mut rng, &dist, load, 50), five_s, now);
        let peers = live_of(&mut rng, &dist, load, 2, 50, now);
        // A canary 2.5x slower than its peers: 50 samples a side (two
        // peers of 25).
        let slow = state(latencies(&mut rng, &dist, 2.5 * load, 50), five_s, now);
        let peers50 = live_of(&mut rng, &dist, load, 2, 25, now);
        for (i, e) in exprs.iter().enumerate() {
            r.shared_live[i].add(&live_verdict(e, &canary, &peers));
            r.shared_stored[i].add(&verdict(e, &canary, &stored, five_s, now));
            r.canary_live[i].add(&live_verdict(e, &slow, &peers50));
        }
    }
    r
}

fn print_live(r: &LiveReport) {
    println!();
    println!("Live baseline: every replica 1.3-2x slower together (load), canary 50 samples vs 2 peers x 50;");
    println!(
        "a canary 2.5x slower than its peers, 50 samples a side (2 peers x 25); sigma 0.2-1.0:"
    );
    println!(
        "  {:30} {:>26} {:>26} {:>26}",
        "rule", "shared, live (false)", "shared, stored (false)", "canary 2.5x, live (caught)"
    );
    for (i, rule) in LIVE_RULES.iter().enumerate() {
        println!(
            "  {rule:30} {:>26} {:>26} {:>26}",
            r.shared_live[i].cell(),
            r.shared_stored[i].cell(),
            r.canary_live[i].cell()
        );
    }
    // What one replica publishes per heartbeat: one signal of one probe,
    // its newest LIVE_SAMPLES values as (age ms, value), JSON.
    let mut rng = StdRng::seed_from_u64(SEED + 2);
    let dist = LogNormal::new(3.0, 0.5).unwrap();
    let mut s = backstop_judge::live::LiveSummary::new("stable-deployment-id");
    let n = backstop_judge::live::LIVE_SAMPLES;
    s.probes.insert(
        "app".into(),
        [(
            "latency_ms".to_string(),
            (0..n)
                .map(|k| {
                    ((k * 1000) as u32, {
                        let v: f64 = dist.sample(&mut rng);
                        (v * 1000.0).round() / 1000.0
                    })
                })
                .collect(),
        )]
        .into(),
    );
    println!(
        "  samples published per heartbeat, one signal of one probe, {n} values: {} bytes of JSON",
        serde_json::to_string(&s).unwrap().len()
    );
}

fn main() {
    let started = std::time::Instant::now();
    let r = run(1000);
    print(&r);
    print_live(&run_live(1000));
    println!("\n({:.1}s)", started.elapsed().as_secs_f64());
}

#[test]
fn the_live_baseline_ignores_a_shared_load_and_catches_a_slow_canary() {
    let r = run_live(100);
    print_live(&r);
    for (i, rule) in LIVE_RULES.iter().enumerate() {
        let t = &r.shared_live[i];
        assert!(t.rate() < 0.015, "{rule}: false rollbacks {}", t.cell());
        // A tail percentile of 50 samples is noisier (as against a
        // stored baseline, above).
        let least = if rule.starts_with("p95") { 0.93 } else { 0.97 };
        let t = &r.canary_live[i];
        assert!(t.rate() > least, "{rule}: detections {}", t.cell());
    }
    // The stored baseline, measured before the load, is fooled by it.
    assert!(
        r.shared_stored[0].rate() > 0.5,
        "{}",
        r.shared_stored[0].cell()
    );
}

#[test]
fn judgement_rarely_rolls_back_noise_and_catches_real_regressions() {
    let r = run(200);
    print(&r);
    // Bounds are looser than the full run's figures (bench/README.md) so a
    // change of seed or of sample counts does not make them flaky, yet tight
    // enough that a broken test or effect size fails them.
    for (i, rule) in LATENCY_RULES.iter().enumerate() {
        let same = total(&r.latency_same[i]);
        assert!(
            same.rate() < 0.015,
            "{rule}: false rollbacks {}",
            same.cell()
        );
    }
    let caught = total(&r.latency_shift[0]);
    assert!(caught.rate() > 0.97, "1.5x: detections {}", caught.cell());
    // The percentile rules at 50 samples a side (the tail ones are limited
    // by the noise of a tail percentile of 50 samples), and at 200.
    for (i, least, least_200) in [
        (3, 0.97, 0.97),
        (4, 0.95, 0.97),
        (5, 0.93, 0.97),
        (6, 0.88, 0.94),
    ] {
        let caught = total(&r.latency_shift[i]);
        let rule = LATENCY_RULES[i];
        assert!(
            caught.rate() > least,
            "{rule}: detections {}",
            caught.cell()
        );
        let caught = total(&r.latency_shift_200[i]);
        assert!(
            caught.rate() > least_200,
            "{rule}, 200 a side: detections {}",
            caught.cell()
        );
    }
    for i in 0..RATE_RULES.len() {
        assert!(r.rate_same[i].rate() < 0.01, "{}", r.rate_same[i].cell());
        assert!(
            r.rate_same_uncounted[i].rate() < 0.01,
            "{}",
            r.rate_same_uncounted[i].cell()
        );
        assert!(r.rate_shift[i].rate() > 0.95, "{}", r.rate_shift[i].cell());
    }
    assert!(
        r.absolute_false.rate() < 0.01,
        "{}",
        r.absolute_false.cell()
    );
}
