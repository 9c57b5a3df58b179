//! Micro-benchmarks of the agent's hot paths, with criterion:
//!
//! - rule evaluation: a `for 5m` rule over a 300-sample window, and an
//!   `Nx baseline` rule over 2,000 current against 2,000 baseline samples;
//! - the significance test behind it (`stats::shift`) on 2 × 2,000 samples;
//! - rendering `/metrics` with 1,000 probes' series;
//! - reading a 5,000-line Prometheus exposition through the `scrape`
//!   probe's own cutting and parsing;
//! - loading `config.example.toml` and a 1,000-probe file.
//!
//! ```text
//! cargo bench -p backstop --bench micro
//! ```
//!
//! The figures and the conditions they were taken under are in
//! `bench/README.md`.

use std::hint::black_box;
use std::time::Duration;

use backstop::config::Config;
use backstop::telemetry::{self, ProbeMetrics};
use backstop_judge::baseline::{Baseline, ProbeBaseline, SignalBaseline, Summary};
use backstop_judge::observe::{Outcome, ProbeState, Sample};
use backstop_judge::rules::{self, Input, Settings, Verdict};
use backstop_judge::stats::{self, Worse};
use backstop_probes::scrape::{ScrapeConfig, ScrapeProbe};
use backstop_probes::{Context, Report};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal};
use tokio::time::Instant;

const SEED: u64 = 20_260_101;

/// `n` lognormal latencies with the given median, in milliseconds.
fn latencies(rng: &mut StdRng, n: usize, median_ms: f64) -> Vec<f64> {
    let d = LogNormal::new(median_ms.ln(), 0.5).expect("valid lognormal");
    (0..n).map(|_| d.sample(rng)).collect()
}

/// A probe's state holding `values` as `latency_ms`, one every `every`,
/// the last one at `now`; each sample also carries the counts a `scrape`
/// probe reports (100 requests, 10 errors).
fn state(values: &[f64], every: Duration, now: Instant) -> ProbeState {
    let mut s = ProbeState::new(Duration::from_secs(30 * 60));
    let n = values.len() as u32;
    for (i, v) in values.iter().enumerate() {
        s.window.push_back(Sample::new(
            Outcome::Ok,
            now - every * (n - 1 - i as u32),
            vec![
                ("latency_ms", *v),
                ("requests", 100.0),
                ("errors", 10.0),
                ("error_rate", 0.1),
            ],
        ));
    }
    s
}

fn baseline(probe: &str, samples: Vec<f64>) -> Baseline {
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize];
    let summary = Summary {
        count: samples.len() as u64,
        mean: samples.iter().sum::<f64>() / samples.len() as f64,
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        p50: q(0.5),
        p95: q(0.95),
        p99: q(0.99),
    };
    let mut probe_baseline = ProbeBaseline::default();
    probe_baseline
        .signals
        .insert("latency_ms".into(), SignalBaseline { summary, samples });
    let mut b = Baseline {
        deployment: "v1".into(),
        ..Baseline::default()
    };
    b.probes.insert(probe.into(), probe_baseline);
    b
}

fn rule_evaluation(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(SEED);
    let settings = Settings::default();
    // Anchored in the future, so no instant before the process started is needed.
    let now = Instant::now() + Duration::from_secs(3600);

    // `for 5m` over 300 samples, one a second; every sample satisfies the
    // comparison, so the whole window is read (the most expensive verdict).
    let window = state(&latencies(&mut rng, 300, 20.0), Duration::from_secs(1), now);
    for when in ["error_rate > 5% for 5m", "latency_ms > 1 for 5m"] {
        let expr = rules::parse(when).expect("a valid rule");
        let input = Input {
            probe: "api",
            state: &window,
            baseline: None,
            live: None,
            choice: backstop_judge::live::Choice::Auto,
            interval: Duration::from_secs(1),
            now,
            latency_percentiles: false,
        };
        assert_eq!(
            rules::evaluate(&expr, &input, &settings).verdict,
            Verdict::Holds
        );
        c.bench_function(&format!("rule `{when}`, 300 samples"), |b| {
            b.iter(|| rules::evaluate(black_box(&expr), black_box(&input), &settings))
        });
    }

    // `2x baseline for 5m`: 2,000 current samples in five minutes (one
    // every 150 ms) against 2,000 baseline samples, 3x slower now.
    let current = state(
        &latencies(&mut rng, 2000, 60.0),
        Duration::from_millis(150),
        now,
    );
    let base = baseline("api", latencies(&mut rng, 2000, 20.0));
    let when = "latency_ms > 2x baseline for 5m";
    let expr = rules::parse(when).expect("a valid rule");
    let input = Input {
        probe: "api",
        state: &current,
        baseline: Some(&base),
        live: None,
        choice: backstop_judge::live::Choice::Auto,
        interval: Duration::from_millis(150),
        now,
        latency_percentiles: false,
    };
    assert_eq!(
        rules::evaluate(&expr, &input, &settings).verdict,
        Verdict::Holds
    );
    c.bench_function(&format!("rule `{when}`, 2x2000 samples"), |b| {
        b.iter(|| rules::evaluate(black_box(&expr), black_box(&input), &settings))
    });
}

fn significance(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(SEED + 1);
    let current = latencies(&mut rng, 2000, 22.0);
    let base = latencies(&mut rng, 2000, 20.0);
    c.bench_function("stats::shift (U test), 2x2000 samples", |b| {
        b.iter(|| {
            stats::shift(
                black_box(&current),
                black_box(&base),
                2.0,
                Worse::Larger,
                false,
                stats::DEFAULT_ALPHA,
                stats::DEFAULT_MIN_SAMPLES,
            )
        })
    });
    c.bench_function("stats::mann_whitney, 2x2000 samples", |b| {
        b.iter(|| stats::mann_whitney(black_box(&current), black_box(&base)))
    });
}

fn metrics_rendering(c: &mut Criterion) {
    let handle = telemetry::install().expect("the only recorder of this process");
    telemetry::build_info();
    let probes: Vec<ProbeMetrics> = (0..1000)
        .map(|i| ProbeMetrics::new(&format!("probe-{i:04}"), 1 + (i % 4) as u8, "http"))
        .collect();
    for (i, m) in probes.iter().enumerate() {
        for k in 0..20 {
            let ms = 1.0 + ((i * 7 + k * 13) % 400) as f64;
            let obs = backstop::schedule::observation(
                Ok(Report::new().with("latency_ms", ms)),
                Duration::from_secs_f64(ms / 1e3),
                None,
            );
            m.record(&obs, 0);
        }
    }
    let text = telemetry::render(&handle);
    let lines = text.lines().count();
    c.bench_function(
        &format!("/metrics render, 1000 probes ({lines} lines)"),
        |b| {
            b.iter(|| {
                // What `App::render_metrics` does for each scrape.
                telemetry::render(&handle)
            })
        },
    );
}

/// A 5,000-line exposition like a busy web service's: a request counter
/// and a latency histogram by handler (the configured metrics, 700
/// lines), and 4,300 lines of other families.
fn exposition() -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let mut lines = 0;
    let handlers = 40;
    s.push_str("# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n");
    lines += 2;
    for h in 0..handlers {
        for code in ["200", "201", "404", "500", "503"] {
            writeln!(
                s,
                "http_requests_total{{handler=\"/api/v1/items/{h}/{{id}}\",method=\"GET\",code=\"{code}\"}} {}",
                1000 + h * 17
            )
            .unwrap();
            lines += 1;
        }
    }
    s.push_str("# HELP http_request_duration_seconds Latency.\n# TYPE http_request_duration_seconds histogram\n");
    lines += 2;
    let bounds = [
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
    ];
    for h in 0..handlers {
        for (i, le) in bounds.iter().enumerate() {
            writeln!(
                s,
                "http_request_duration_seconds_bucket{{handler=\"/api/v1/items/{h}/{{id}}\",le=\"{le}\"}} {}",
                100 * (i + 1)
            )
            .unwrap();
        }
        writeln!(
            s,
            "http_request_duration_seconds_sum{{handler=\"/api/v1/items/{h}/{{id}}\"}} 12.5"
        )
        .unwrap();
        writeln!(
            s,
            "http_request_duration_seconds_count{{handler=\"/api/v1/items/{h}/{{id}}\"}} 1200"
        )
        .unwrap();
        lines += bounds.len() + 2;
    }
    let mut family = 0;
    while lines < 5000 {
        writeln!(
            s,
            "# HELP app_other_{family} Something else.\n# TYPE app_other_{family} gauge"
        )
        .unwrap();
        lines += 2;
        for i in 0..48 {
            if lines >= 5000 {
                break;
            }
            writeln!(
                s,
                "app_other_{family}{{shard=\"{i}\",zone=\"z{}\"}} {}.5",
                i % 3,
                i * 31
            )
            .unwrap();
            lines += 1;
        }
        family += 1;
    }
    s
}

fn scrape_parsing(c: &mut Criterion) {
    let body = exposition();
    assert_eq!(body.lines().count(), 5000);
    let cfg: ScrapeConfig = serde_json::from_value(serde_json::json!({
        "url": "http://127.0.0.1:1/metrics",
        "requests": "http_requests_total",
        "latency": "http_request_duration_seconds",
    }))
    .expect("a valid scrape configuration");
    let probe = ScrapeProbe::new(
        &cfg,
        Context {
            timeout: Duration::from_secs(1),
        },
    )
    .expect("a valid scrape probe");
    assert_eq!(probe.count_series(&body, false).unwrap(), 240);
    c.bench_function("scrape: read a 5000-line exposition", |b| {
        b.iter(|| probe.count_series(black_box(&body), false))
    });
}

/// A configuration with `n` probes, half `http`, half `tcp`, with the
/// default rules.
fn config_with(n: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::from(
        "[agent]\nlisten = \"127.0.0.1:9469\"\nstate_dir = \"/tmp/backstop-bench\"\n\
         default_rules = true\n\n[service]\nname = \"web\"\n\n[deployment]\nid = \"v1\"\n",
    );
    for i in 0..n {
        if i % 2 == 0 {
            write!(
                s,
                "\n[[probe]]\nname = \"http-{i}\"\nlevel = 1\ntype = \"http\"\n\
                 url = \"http://127.0.0.1:8080/api/{i}\"\ninterval = \"5s\"\ntimeout = \"1s\"\n\
                 expect_status = [200]\nmax_latency = \"100ms\"\ncritical = true\n"
            )
            .unwrap();
        } else {
            write!(
                s,
                "\n[[probe]]\nname = \"tcp-{i}\"\nlevel = 1\ntype = \"tcp\"\n\
                 address = \"127.0.0.1:{}\"\n",
                10_000 + i
            )
            .unwrap();
        }
    }
    s
}

fn config_loading(c: &mut Criterion) {
    let example = include_str!("../config.example.toml");
    let env = |_: &str| None;
    Config::parse(example, env).expect("config.example.toml is valid");
    c.bench_function("config: parse config.example.toml", |b| {
        b.iter(|| Config::parse(black_box(example), env))
    });
    let big = config_with(1000);
    let parsed = Config::parse(&big, env).expect("the 1000-probe file is valid");
    assert_eq!(parsed.probes.len(), 1000);
    c.bench_function("config: parse a 1000-probe file", |b| {
        b.iter(|| Config::parse(black_box(&big), env))
    });
}

criterion_group! {
    name = micro;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = rule_evaluation, significance, metrics_rendering, scrape_parsing, config_loading
}
criterion_main!(micro);
