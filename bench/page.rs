//! What the agent's page (`GET /`) costs to draw: the time of one render
//! and its bytes, for an agent of 10 and of 200 probes whose windows are
//! full, with a rule per probe, a baseline and a rollback to show.
//!
//! `cargo run --release -p backstop --example page` (figures in
//! bench/README.md, "The page"). Measures, asserts nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use backstop::app::App;
use backstop::config::Config;
use backstop::schedule::ProbeSlot;
use backstop::store::{DeploymentRecord, RollbackRecord, RollbackStatus, WatchState};
use backstop::watch::{BaselineView, ProbeBands, RuleView, WatchView};
use backstop_judge::baseline::Summary;
use backstop_judge::observe::{Observation, Outcome};
use backstop_judge::rules::{Detail, Expr, Finding, Verdict};
use tokio::time::Instant;

/// An agent of `n` http probes, each checked every second with a window
/// of `samples` checks.
fn agent(n: usize, samples: usize) -> App {
    let mut text = String::from(
        "[agent]\nlisten = \"127.0.0.1:0\"\n[service]\nname = \"shop\"\n[deployment]\nid = \"v2\"\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[probe]]\nname = \"p{i}\"\nlevel = 1\ntype = \"http\"\nurl = \"http://127.0.0.1:1/{i}\"\ninterval = \"1s\"\n"
        ));
    }
    let config = Config::parse(&text, |_| None).expect("a valid configuration");
    let now = Instant::now();
    let slots: Vec<Arc<ProbeSlot>> = config
        .probes
        .iter()
        .map(|p| {
            let slot = ProbeSlot::new(p.clone(), Duration::from_secs(samples as u64 + 1));
            {
                let mut state = slot.state.lock().unwrap();
                for k in 0..samples {
                    let failed = k + 5 > samples;
                    let obs = Observation::from_check(
                        if failed { Outcome::Failed } else { Outcome::Ok },
                        vec![
                            ("status".into(), 200.0),
                            ("latency_ms".into(), 5.0 + (k % 17) as f64),
                        ],
                        failed.then(|| "status 503".to_string()),
                        Duration::from_millis(5),
                        None,
                    );
                    let at = now - Duration::from_secs((samples - k) as u64);
                    state.record(obs, at);
                }
            }
            Arc::new(slot)
        })
        .collect();
    let cmp = match backstop_judge::rules::parse("latency_ms > 2x baseline for 5m").unwrap() {
        Expr::Cmp(c) => c,
        _ => unreachable!(),
    };
    let rules = (0..n)
        .map(|i| RuleView {
            name: format!("p{i} latency regression"),
            probe: format!("p{i}"),
            action: "rollback",
            armed: true,
            verdict: "clear",
            reason: None,
            summary: None,
            detail: Detail {
                when: "latency_ms > 2x baseline for 5m".into(),
                default: true,
                findings: vec![Finding {
                    condition: "latency_ms > 2x baseline for 5m".into(),
                    signal: "latency_ms".into(),
                    verdict: Verdict::Clear,
                    observed: Some(12.5),
                    threshold: Some(20.0),
                    baseline: Some(10.0),
                    ratio: Some(1.25),
                    p_value: Some(0.3),
                    test: Some("mann_whitney"),
                    samples: samples.min(300),
                    baseline_samples: Some(900),
                    baseline_source: Some("stored"),
                    baseline_deployment: Some("v1".into()),
                    baseline_replicas: None,
                    requests: None,
                    baseline_requests: None,
                    comparison: cmp.clone(),
                }],
            },
        })
        .collect();
    let summary = Summary {
        count: 900,
        mean: 11.0,
        min: 5.0,
        max: 40.0,
        p50: 10.0,
        p95: 21.0,
        p99: 30.0,
    };
    let baseline = BaselineView {
        generation: 1,
        deployment: "v1".into(),
        probes: (0..n)
            .map(|i| {
                let mut bands = ProbeBands::default();
                bands.signals.insert("latency_ms".into(), summary);
                (format!("p{i}"), bands)
            })
            .collect(),
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let view = WatchView {
        deployment: Some(DeploymentRecord {
            id: "v2".into(),
            first_seen_ms: now_ms - 600_000,
            state: WatchState::Watching,
            stable_at_ms: None,
            states: Vec::new(),
        }),
        last_stable: Some("v1".into()),
        rules,
        last_rollback: Some(RollbackRecord {
            deployment: "v0".into(),
            return_to: Some("v1".into()),
            rule: "p0 failing".into(),
            reason: "consecutive_failures 3 >= 3 on probe p0".into(),
            evidence: Vec::new(),
            target: "webhook".into(),
            status: RollbackStatus::Succeeded,
            intent_at_ms: now_ms - 900_000,
            finished_at_ms: Some(now_ms - 899_000),
            detail: "the webhook accepted the rollback".into(),
            returned_to: Some("v1".into()),
            not_effective: false,
            by: None,
        }),
        baseline: Some(Arc::new(baseline)),
        ..WatchView::default()
    };
    App {
        config,
        slots,
        epoch: now,
        metrics: None,
        view: Some(Arc::new(Mutex::new(view))),
        commands: None,
        store: None,
        current_meta: Default::default(),
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    if let Ok(path) = std::env::var("PAGE_OUT") {
        std::fs::write(
            path,
            backstop::page::render(&agent(200, 300), &Ok(Vec::new())),
        )
        .unwrap();
    }
    println!("| probes | samples per window | render (median of 50) | min | bytes |");
    println!("|---|---|---|---|---|");
    for (n, samples) in [(10, 300), (10, 8192), (200, 300), (200, 8192)] {
        let app = agent(n, samples);
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..51 {
            let t = StdInstant::now();
            let page = backstop::page::render(&app, &Ok(Vec::new()));
            times.push(t.elapsed());
            bytes = page.len();
            std::hint::black_box(page);
        }
        times.remove(0);
        times.sort();
        println!(
            "| {n} | {samples} | {:.2} ms | {:.2} ms | {bytes} |",
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3
        );
    }
}
