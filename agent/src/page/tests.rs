use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::schedule::ProbeSlot;
use crate::store::{DeploymentRecord, RollbackStatus};
use backstop_judge::evidence::Evidence;
use backstop_judge::observe::Observation;

/// An agent whose configuration has a name that needs escaping, two
/// probes and a webhook URL with a token in it.
fn app(view: WatchView) -> App {
    let text = r#"
[agent]
listen = "127.0.0.1:0"
admin_token = "admin-token-never-shown"

[service]
name = "shop <&> \"co\""

[deployment]
id = "v2"

[[probe]]
name = "health"
level = 1
type = "http"
url = "http://127.0.0.1:1/health"
interval = "1s"

[[probe]]
name = "db"
level = 1
type = "tcp"
address = "127.0.0.1:1"

[rollback]
target = "webhook"

[rollback.webhook]
url = "https://hooks.example.com/deploy?token=hook-secret-never-shown"
"#;
    let config = crate::config::Config::parse(text, |_| None).expect("a valid configuration");
    let slots = config
        .probes
        .iter()
        .map(|p| Arc::new(ProbeSlot::new(p.clone(), Duration::from_secs(300))))
        .collect();
    App {
        config,
        slots,
        epoch: Instant::now(),
        metrics: None,
        view: Some(Arc::new(Mutex::new(view))),
        commands: None,
        store: None,
        current_meta: Default::default(),
    }
}

fn check(outcome: Outcome, ms: f64) -> Observation {
    Observation::from_check(
        outcome,
        vec![("latency_ms".into(), ms), ("status".into(), 200.0)],
        (outcome == Outcome::Failed).then(|| "status 503 <b>".to_string()),
        Duration::from_millis(ms as u64),
        None,
    )
}

fn rolled_back_view() -> WatchView {
    let now_ms = (unix_now() * 1e3) as u64;
    WatchView {
        deployment: Some(DeploymentRecord {
            id: "v1".into(),
            first_seen_ms: now_ms - 20_000,
            state: WatchState::Stable,
            stable_at_ms: Some(now_ms - 20_000),
            states: Vec::new(),
        }),
        last_stable: Some("v1".into()),
        last_rollback: Some(RollbackRecord {
            deployment: "v2<img>".into(),
            return_to: Some("v1".into()),
            rule: "health-fails".into(),
            reason: "rule health-fails held".into(),
            evidence: vec![Evidence {
                rule: "health-fails".into(),
                probe: "health<script>".into(),
                expression: "consecutive_failures >= 3".into(),
                signal: Some("consecutive_failures".into()),
                observed: Some(4.0),
                threshold: Some(3.0),
                window: None,
                baseline: None,
                ratio: None,
                p_value: Some(0.00012),
                summary: "health failed 4 times in a row".into(),
                judged_by: None,
            }],
            target: "webhook".into(),
            status: RollbackStatus::Succeeded,
            intent_at_ms: now_ms - 25_000,
            finished_at_ms: Some(now_ms - 24_000),
            detail: "HTTP 200 <ok>".into(),
            returned_to: Some("v1".into()),
            not_effective: false,
            by: None,
        }),
        ..WatchView::default()
    }
}

#[test]
fn the_style_hash_in_the_policy_is_the_stylesheets() {
    use base64::Engine;
    use sha2::Digest;
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(CSS));
    assert!(
        CSP.contains(&format!("'sha256-{hash}'")),
        "the CSP must carry 'sha256-{hash}'"
    );
    for part in [
        "default-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ] {
        assert!(CSP.contains(part), "{part}");
    }
    assert!(!CSP.contains("unsafe"));
}

#[test]
fn a_page_escapes_what_comes_from_the_configuration_and_platforms_and_shows_no_secret() {
    let app = app(rolled_back_view());
    let now = Instant::now();
    for i in 0..50 {
        let outcome = if i > 45 { Outcome::Failed } else { Outcome::Ok };
        app.slots[0]
            .state
            .lock()
            .unwrap()
            .record(check(outcome, 5.0 + f64::from(i)), now);
    }
    let page = render(&app, &Ok(Vec::new()));
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.ends_with("</html>\n"));
    assert!(page.contains("shop &lt;&amp;&gt; &quot;co&quot;"));
    assert!(page.contains("health&lt;script&gt;"));
    assert!(page.contains("v2&lt;img&gt;"));
    assert!(page.contains("HTTP 200 &lt;ok&gt;"));
    assert!(page.contains("status 503 &lt;b&gt;"));
    for raw in ["<script", "<img", "<ok>", "<&>"] {
        assert!(!page.contains(raw), "{raw} unescaped");
    }
    for secret in ["hook-secret-never-shown", "admin-token-never-shown"] {
        assert!(!page.contains(secret), "{secret} shown");
    }
    assert!(page.contains("consecutive failures <b>4</b>"));
    assert!(page.contains("health failed 4 times in a row"));
    assert!(page.contains("p-value 1.200e-4"));
    assert!(page.contains("returned to <b>v1</b>"));
    assert_eq!(page.matches("<svg class=\"chart\"").count(), 2);
    assert_eq!(page.matches("<svg class=\"timeline\"").count(), 1);
    assert!(!page.contains("style="), "no inline style attribute");
    assert!(!page.contains("<script"), "no script");
    assert!(page.contains("<meta http-equiv=\"refresh\""));
}

#[test]
fn a_page_without_any_data_still_renders() {
    let app = app(WatchView::default());
    let page = render(&app, &Ok(Vec::new()));
    assert!(page.contains("No deployment seen yet"));
    assert!(page.contains("No rollback recorded"));
    assert!(page.contains("No rule judged yet"));
    assert!(page.contains("not checked yet"));
    assert_eq!(page.matches("no samples in the window").count(), 2);
    let app = App { view: None, ..app };
    assert!(render(&app, &Ok(Vec::new())).contains("No deployment seen yet"));
}

#[test]
fn a_full_window_keeps_the_page_small() {
    let app = app(rolled_back_view());
    let start = Instant::now();
    for slot in &app.slots {
        let mut state = slot.state.lock().unwrap();
        for i in 0..backstop_judge::observe::MAX_SAMPLES {
            let at = start + Duration::from_millis(i as u64 * 30);
            state.record(check(Outcome::Ok, (i % 97) as f64), at);
        }
    }
    let page = render(&app, &Ok(Vec::new()));
    // Each series' path: a move and at most MAX_POINTS - 1 steps.
    for d in page.split("class=\"line\" d=\"").skip(1) {
        let d = d.split('"').next().unwrap();
        let numbers = d.replace(['M', 'l', '-'], " ").split_whitespace().count();
        assert!(numbers <= 2 * svg::MAX_POINTS, "{numbers} numbers in {d}");
    }
    assert!(page.len() < 40_000, "{} bytes", page.len());
}

#[test]
fn times_are_written_in_utc() {
    assert_eq!(utc(0.0), "1970-01-01 00:00:00 UTC");
    assert_eq!(utc(951_782_400.0), "2000-02-29 00:00:00 UTC");
    assert_eq!(utc(1_796_557_648.9), "2026-12-06 11:47:28 UTC");
    assert_eq!(clock(1_796_557_648.0), "11:47:28");
    assert_eq!(ago(100.0, 130.0), "30 s ago");
    assert_eq!(ago(0.0, 600.0), "10 min ago");
}

#[test]
fn numbers_read_plainly() {
    assert_eq!(num(3.0), "3");
    assert_eq!(num(0.25), "0.25");
    assert_eq!(num(0.677), "0.677");
    assert_eq!(num(12.5), "12.5");
    assert_eq!(num(12.3456), "12.35");
    assert_eq!(num(1234.4), "1234");
    assert_eq!(num(0.00012), "1.200e-4");
}

#[test]
fn a_fleet_shows_its_replicas_votes_and_lease_holder() {
    let view = WatchView {
        fleet: Some(serde_json::json!({
            "replica": "web-1",
            "coordinator": "redis://127.0.0.1:6379/0",
            "up": true,
            "quorum": 2,
            "deployment": "v2",
            "live": [
                {"replica": "web-1", "deployment": "v2", "at_ms": 1_796_557_648_000u64,
                 "votes": [{"rule": "health failing", "verdict": "holds", "summary": ""}]},
                {"replica": "web-<2>", "deployment": "v2", "at_ms": 1_796_557_648_000u64,
                 "votes": [{"rule": "health failing", "verdict": "clear\" onclick=\"x", "summary": ""}]}
            ],
            "tally": [{"rule": "health failing", "agree": 1, "live": 2, "reaches_quorum": false}],
            "lease_holder": "web-1",
            "rollback": null
        })),
        ..WatchView::default()
    };
    let page = render(&app(view), &Ok(Vec::new()));
    let fleet = page
        .split("<section id=\"fleet\">")
        .nth(1)
        .expect("a fleet section");
    assert!(fleet.contains("<dt>lease holder</dt><dd>web-1</dd>"));
    assert!(fleet.contains("<dt>quorum</dt><dd>2</dd>"));
    assert!(fleet.contains("web-&lt;2&gt;"));
    assert!(fleet.contains("health failing <span class=\"b holds\">holds</span>"));
    assert!(fleet.contains("clear&quot; onclick=&quot;x"));
    assert!(!fleet.contains("onclick=\"x"));
    assert!(fleet.contains("2026-12-06 11:47:28 UTC"));
    assert!(!render(&app(WatchView::default()), &Ok(Vec::new())).contains("id=\"fleet\""));
}

#[test]
fn a_probe_with_a_baseline_and_an_error_rate_draws_both_with_the_band() {
    let mut view = rolled_back_view();
    let mut bands = crate::watch::ProbeBands {
        error_rate: Some(0.01),
        ..Default::default()
    };
    bands.signals.insert(
        "latency_ms".into(),
        backstop_judge::baseline::Summary {
            count: 100,
            mean: 10.0,
            min: 4.0,
            max: 30.0,
            p50: 9.0,
            p95: 20.0,
            p99: 28.0,
        },
    );
    view.baseline = Some(Arc::new(BaselineView {
        generation: 1,
        deployment: "v1".into(),
        probes: [("health".to_string(), bands)].into(),
    }));
    let app = app(view);
    let now = Instant::now();
    for i in 0..30 {
        let obs = Observation::from_check(
            Outcome::Ok,
            vec![
                ("latency_ms".into(), 10.0),
                ("requests".into(), 100.0),
                ("errors".into(), f64::from(i % 5)),
            ],
            None,
            Duration::from_millis(10),
            None,
        );
        app.slots[0].state.lock().unwrap().record(obs, now);
    }
    let page = render(&app, &Ok(Vec::new()));
    let health = page
        .split("<h3>health")
        .nth(1)
        .unwrap()
        .split("<div class=\"probe")
        .next()
        .unwrap();
    assert_eq!(
        health.matches("<svg class=\"chart\"").count(),
        2,
        "{health}"
    );
    assert_eq!(health.matches("class=\"band\"").count(), 1, "{health}");
    assert_eq!(health.matches("class=\"mid\"").count(), 2, "{health}");
    assert!(health.contains("baseline 4–20 ms (min–p95), median 9 ms"));
    assert!(health.contains("error rate; baseline 0.01"));
    assert!(page.contains("the rules compare with the baseline of <b>v1</b>"));
}

#[test]
fn the_recent_deployments_show_the_ledger_escaped_with_their_states_and_rollback() {
    use crate::store::StateAt;
    let view = rolled_back_view();
    let r = view.last_rollback.clone().unwrap();
    let at = |state, at_ms| StateAt { state, at_ms };
    let v2 = LedgerEntry {
        id: "v2<img>".into(),
        first_seen_ms: Some(r.intent_at_ms - 9_000),
        state: Some(WatchState::RolledBack),
        states: vec![
            at(WatchState::Warming, r.intent_at_ms - 9_000),
            at(WatchState::Watching, r.intent_at_ms - 8_000),
            at(WatchState::RolledBack, r.intent_at_ms),
        ],
        stable_at_ms: None,
        commit: Some("4f2a9c1".into()),
        triggered_by: Some("<script>bot</script>".into()),
        environment: None,
        annotations: Default::default(),
        registered_at_ms: None,
        rollback: Some(r.clone()),
    };
    let page = render(&app(view), &Ok(vec![v2]));
    let history = page
        .split("<section id=\"history\">")
        .nth(1)
        .unwrap()
        .split("</section>")
        .next()
        .unwrap();
    assert!(history.contains("<b>v2&lt;img&gt;</b>"), "{history}");
    assert!(history.contains("4f2a9c1"), "{history}");
    assert!(
        history.contains("&lt;script&gt;bot&lt;/script&gt;"),
        "{history}"
    );
    assert!(!page.contains("<script"), "no script");
    assert!(history.contains("warming "), "{history}");
    assert!(history.contains(" → watching "), "{history}");
    assert!(history.contains(" → rolled back "), "{history}");
    assert!(history.contains("rule <b>health-fails</b>"), "{history}");
    assert!(history.contains("returned to v1"), "{history}");
    // The rolled-back deployment's own warm-up and watch are on the timeline.
    let timeline = page
        .split("<svg class=\"timeline\"")
        .nth(1)
        .unwrap()
        .split("</svg>")
        .next()
        .unwrap();
    assert_eq!(
        timeline.matches("class=\"warming\"").count(),
        2,
        "v1's warm-up and v2's: {timeline}"
    );
    assert!(timeline.contains("class=\"rolled_back\""), "{timeline}");

    let page = render(
        &app(WatchView::default()),
        &Err("the store did not answer within 500ms".into()),
    );
    assert!(page.contains("The ledger could not be read: the store did not answer within 500ms"));
    let page = render(&app(WatchView::default()), &Ok(Vec::new()));
    assert!(page.contains("The ledger holds no deployment yet"));
}

#[test]
fn a_rule_says_which_baseline_judged_it() {
    use backstop_judge::rules::{Detail, Expr, Finding};
    let cmp = match backstop_judge::rules::parse("latency_ms > 1.3x baseline for 5m").unwrap() {
        Expr::Cmp(c) => c,
        _ => unreachable!(),
    };
    let finding = |source: &'static str, replicas: Option<usize>| Finding {
        condition: "latency_ms > 1.3x baseline for 5m".into(),
        signal: "latency_ms".into(),
        verdict: Verdict::Clear,
        observed: Some(16.0),
        threshold: Some(19.5),
        baseline: Some(15.0),
        ratio: Some(1.07),
        p_value: Some(0.4),
        test: Some("mann_whitney"),
        samples: 60,
        baseline_samples: Some(120),
        baseline_source: Some(source),
        baseline_deployment: Some("v1<b>".into()),
        baseline_replicas: replicas,
        requests: None,
        baseline_requests: None,
        comparison: cmp.clone(),
    };
    let rule = |name: &str, f: Finding| RuleView {
        name: name.into(),
        probe: "health".into(),
        action: "rollback",
        armed: true,
        verdict: "clear",
        reason: None,
        summary: None,
        detail: Detail {
            when: "latency_ms > 1.3x baseline for 5m".into(),
            default: false,
            findings: vec![f],
        },
    };
    let view = WatchView {
        rules: vec![
            rule("slow live", finding("live", Some(2))),
            rule("slow stored", finding("stored", None)),
        ],
        ..WatchView::default()
    };
    let page = render(&app(view), &Ok(Vec::new()));
    assert!(page.contains("live, 2 replicas on v1&lt;b&gt;"), "{page}");
    assert!(page.contains("stored on v1&lt;b&gt;"), "{page}");
}
