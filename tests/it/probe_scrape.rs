//! The `scrape` probe against a service on loopback whose `/metrics` the test
//! rewrites between checks, as requests come and go and the service restarts.

use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop_probes::{Context, Probe, ProbeError, ProbeSpec, Report};
use backstop_tests::{closed_port, HttpServer, Reply};
use serde_json::{json, Value};

/// Builds a `scrape` probe the way the agent does, from its settings.
fn probe(settings: Value) -> Probe {
    let spec = ProbeSpec::deserialize_typed("scrape", settings)
        .expect("settings deserialize")
        .expect("scrape is a probe type");
    spec.build(Context {
        timeout: Duration::from_secs(5),
    })
    .unwrap_or_else(|p| panic!("probe builds: {p:?}"))
}

/// A service whose `/metrics` answers whatever the test last set.
struct Service {
    server: HttpServer,
    answer: Arc<Mutex<(u16, &'static str, String)>>,
}

impl Service {
    async fn start() -> Self {
        let answer = Arc::new(Mutex::new((
            200,
            "text/plain; version=0.0.4",
            String::new(),
        )));
        let shared = answer.clone();
        let server = HttpServer::start(move |_| {
            let (status, content_type, body) = shared.lock().unwrap().clone();
            Reply {
                status,
                headers: vec![("content-type".into(), content_type.into())],
                body: body.into(),
                delay: Duration::ZERO,
            }
        })
        .await;
        Self { server, answer }
    }

    fn set(&self, body: String) {
        self.answer(200, "text/plain; version=0.0.4", body);
    }

    fn answer(&self, status: u16, content_type: &'static str, body: String) {
        *self.answer.lock().unwrap() = (status, content_type, body);
    }

    fn url(&self) -> String {
        self.server.url("/metrics")
    }
}

const BOUNDS: [&str; 6] = ["0.05", "0.1", "0.25", "0.5", "1", "+Inf"];

/// An exposition as a Go service writes it: the two metrics the probe reads
/// among families it must skip, one of which a strict parser would refuse,
/// and label values that hold braces, commas and escaped quotes.
fn exposition(requests: &[(&str, &str, f64)], latency: &[(&str, [f64; 6])]) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::from(
        "# HELP go_goroutines Number of goroutines that currently exist.\n\
         # TYPE go_goroutines gauge\n\
         go_goroutines 42\n\
         # HELP rpc_duration_seconds RPC latency.\n\
         # TYPE rpc_duration_seconds summary\n\
         rpc_duration_seconds{quantile=\"0.5\"} 0.01\n\
         rpc_duration_seconds_sum 1.5\n\
         rpc_duration_seconds_count 100\n",
    );
    out.push_str(
        "# HELP http_requests_total Requests by status code.\n\
         # TYPE http_requests_total counter\n",
    );
    for (handler, code, n) in requests {
        writeln!(
            out,
            "http_requests_total{{code=\"{code}\",handler=\"{}\"}} {n}",
            esc(handler)
        )
        .unwrap();
    }
    out.push_str(
        "# HELP http_request_duration_seconds Request latency.\n\
         # TYPE http_request_duration_seconds histogram\n",
    );
    for (handler, counts) in latency {
        let h = esc(handler);
        for (le, n) in BOUNDS.iter().zip(counts) {
            writeln!(
                out,
                "http_request_duration_seconds_bucket{{handler=\"{h}\",le=\"{le}\"}} {n}"
            )
            .unwrap();
        }
        writeln!(
            out,
            "http_request_duration_seconds_sum{{handler=\"{h}\"}} 12.5"
        )
        .unwrap();
        writeln!(
            out,
            "http_request_duration_seconds_count{{handler=\"{h}\"}} {}",
            counts[5]
        )
        .unwrap();
    }
    // Valid Prometheus text (untyped, no TYPE line) that openmetrics-parser
    // would refuse right after another family: the probe never parses it.
    out.push_str("legacy_untyped_total 7\n");
    out
}

const USERS: &str = "/users/{id}, \"quoted\"";

fn close(got: Option<f64>, want: f64) -> bool {
    got.is_some_and(|g| (g - want).abs() < 1e-9)
}

#[tokio::test]
async fn reports_rates_error_rate_and_quantiles_of_what_changed_between_checks() {
    let service = Service::start().await;
    service.set(exposition(
        &[
            ("/api", "200", 1000.0),
            ("/api", "404", 10.0),
            ("/api", "500", 20.0),
            ("/api", "503", 5.0),
            (USERS, "200", 77.0),
        ],
        &[
            ("/api", [500.0, 800.0, 950.0, 1000.0, 1020.0, 1035.0]),
            (USERS, [70.0, 77.0, 77.0, 77.0, 77.0, 77.0]),
        ],
    ));
    let p = probe(json!({
        "url": service.url(),
        "requests": "http_requests_total",
        "latency": "http_request_duration_seconds",
        "headers": { "Authorization": "Bearer metrics-token" },
    }));

    let first = p.check().await.expect("first check succeeds");
    assert!(first.get("latency_ms").is_some());
    for name in ["requests", "request_rate", "error_rate", "p95_ms"] {
        assert_eq!(first.get(name), None, "{name} on the first check");
    }

    // 100 requests: 80 ok, 10 not found, 6 + 4 server errors. Latency: 40
    // under 50ms, 30 more under 100ms, then 20, 6, 4, and none slower.
    service.set(exposition(
        &[
            ("/api", "200", 1080.0),
            ("/api", "404", 20.0),
            ("/api", "500", 26.0),
            ("/api", "503", 9.0),
            (USERS, "200", 77.0),
        ],
        &[
            ("/api", [540.0, 870.0, 1040.0, 1096.0, 1120.0, 1135.0]),
            (USERS, [70.0, 77.0, 77.0, 77.0, 77.0, 77.0]),
        ],
    ));
    let r = p.check().await.expect("second check succeeds");
    assert_eq!(r.get("requests"), Some(100.0));
    assert_eq!(r.get("errors"), Some(10.0));
    assert!(close(r.get("error_rate"), 0.1), "{r:?}");
    assert!(r.get("request_rate").is_some_and(|v| v > 0.0), "{r:?}");
    assert_eq!(r.get("latency_samples"), Some(100.0));
    // Rank 50 lies 10 of 30 into (50ms, 100ms]; rank 95 lies 5 of 6 into
    // (250ms, 500ms]; rank 99 lies 3 of 4 into (500ms, 1s].
    assert!(close(r.get("p50_ms"), 50.0 + 50.0 * 10.0 / 30.0), "{r:?}");
    assert!(close(r.get("p95_ms"), 250.0 + 250.0 * 5.0 / 6.0), "{r:?}");
    assert!(close(r.get("p99_ms"), 500.0 + 500.0 * 3.0 / 4.0), "{r:?}");

    // Nothing happened: rates are zero, and with no requests there is no
    // error rate and no quantile, which is missing data rather than zero.
    let idle = p.check().await.expect("idle check succeeds");
    assert_eq!(idle.get("requests"), Some(0.0));
    assert_eq!(idle.get("request_rate"), Some(0.0));
    assert_eq!(idle.get("error_rate"), None);
    assert_eq!(idle.get("latency_samples"), Some(0.0));
    assert_eq!(idle.get("p99_ms"), None);

    let sent = service.server.requests();
    assert_eq!(sent.len(), 3);
    assert_eq!(
        sent[0].header("authorization"),
        Some("Bearer metrics-token")
    );
}

#[tokio::test]
async fn a_restarted_service_counts_its_new_values_from_zero() {
    let service = Service::start().await;
    let p = probe(json!({
        "url": service.url(),
        "requests": "http_requests_total",
        "latency": "http_request_duration_seconds",
    }));
    service.set(exposition(
        &[("/api", "200", 5000.0), ("/api", "500", 50.0)],
        &[("/api", [4000.0, 5000.0, 5050.0, 5050.0, 5050.0, 5050.0])],
    ));
    p.check().await.expect("first check succeeds");

    // After the restart: 30 requests, 2 of them errors, all under 50ms but 2.
    service.set(exposition(
        &[("/api", "200", 28.0), ("/api", "500", 2.0)],
        &[("/api", [28.0, 28.0, 30.0, 30.0, 30.0, 30.0])],
    ));
    let r = p.check().await.expect("check after the restart succeeds");
    assert_eq!(r.get("requests"), Some(30.0));
    assert_eq!(r.get("errors"), Some(2.0));
    assert!(close(r.get("error_rate"), 2.0 / 30.0), "{r:?}");
    assert_eq!(r.get("latency_samples"), Some(30.0));
    // Rank 29.7 lies 1.7 of 2 into (100ms, 250ms].
    assert!(close(r.get("p99_ms"), 100.0 + 150.0 * 1.7 / 2.0), "{r:?}");
}

#[tokio::test]
async fn match_and_error_codes_select_the_series_and_what_counts_as_an_error() {
    let service = Service::start().await;
    let p = probe(json!({
        "url": service.url(),
        "requests": "http_requests_total",
        "latency": "http_request_duration_seconds",
        "match": { "handler": USERS },
        "error_codes": ["5xx", "429"],
    }));
    let at = |api: f64, users: f64, users_429: f64, users_slow: f64| {
        exposition(
            &[
                ("/api", "500", api),
                (USERS, "200", users),
                (USERS, "429", users_429),
            ],
            &[
                ("/api", [api; 6]),
                (
                    USERS,
                    [
                        users,
                        users,
                        users,
                        users,
                        users + users_slow,
                        users + users_slow,
                    ],
                ),
            ],
        )
    };
    service.set(at(0.0, 0.0, 0.0, 0.0));
    p.check().await.expect("first check succeeds");
    service.set(at(1000.0, 16.0, 4.0, 2.0));
    let r = p.check().await.expect("second check succeeds");
    assert_eq!(r.get("requests"), Some(20.0));
    assert_eq!(r.get("errors"), Some(4.0));
    assert!(close(r.get("error_rate"), 0.2), "{r:?}");
    assert_eq!(r.get("latency_samples"), Some(18.0));
    // Rank 9 is in the first bucket: 9 of 16 into (0, 50ms].
    assert!(close(r.get("p50_ms"), 50.0 * 9.0 / 16.0), "{r:?}");
}

#[tokio::test]
async fn reads_an_openmetrics_exposition_when_that_is_what_the_service_speaks() {
    let service = Service::start().await;
    let om = |ok: u64, failed: u64| {
        format!(
            "# TYPE http_requests counter\n\
             # HELP http_requests Requests.\n\
             http_requests_total{{code=\"200\"}} {ok}\n\
             http_requests_created{{code=\"200\"}} 1.7e9\n\
             http_requests_total{{code=\"502\"}} {failed}\n\
             http_requests_created{{code=\"502\"}} 1.7e9\n\
             # EOF\n"
        )
    };
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    let p = probe(json!({ "url": service.url(), "requests": "http_requests_total" }));
    service.answer(200, content_type, om(10, 0));
    p.check().await.expect("first check succeeds");
    service.answer(200, content_type, om(17, 3));
    let r = p.check().await.expect("second check succeeds");
    assert_eq!(r.get("requests"), Some(10.0));
    assert!(close(r.get("error_rate"), 0.3), "{r:?}");
}

#[tokio::test]
async fn reads_a_5000_line_exposition() {
    let service = Service::start().await;
    let big = |scale: f64| {
        let handlers: Vec<String> = (0..300).map(|i| format!("/api/v1/items/{i}")).collect();
        let requests: Vec<(&str, &str, f64)> = handlers
            .iter()
            .flat_map(|h| [(h.as_str(), "200", 9.0 * scale), (h.as_str(), "500", scale)])
            .collect();
        let latency: Vec<(&str, [f64; 6])> = handlers
            .iter()
            .map(|h| (h.as_str(), [0.0, scale, scale, scale, scale, scale]))
            .collect();
        let mut text = exposition(&requests, &latency);
        // Unrelated families fill up the rest, as in a real service.
        text.push_str("# HELP process_fd Open descriptors.\n# TYPE process_fd gauge\n");
        for i in 0..2100 {
            writeln!(text, "process_fd{{pool=\"p{i}\"}} {i}").unwrap();
        }
        text
    };
    assert!(big(1.0).lines().count() >= 5000);
    let p = probe(json!({
        "url": service.url(),
        "requests": "http_requests_total",
        "latency": "http_request_duration_seconds",
    }));
    service.set(big(1.0));
    p.check().await.expect("first check succeeds");
    service.set(big(3.0));
    let r = p.check().await.expect("second check succeeds");
    // 300 handlers, each 20 more requests of which 2 errors, 2 more observations.
    assert_eq!(r.get("requests"), Some(6000.0));
    assert!(close(r.get("error_rate"), 0.1), "{r:?}");
    assert_eq!(r.get("latency_samples"), Some(600.0));
    assert!(close(r.get("p50_ms"), 75.0), "{r:?}");
}

#[tokio::test]
async fn sorts_what_goes_wrong_into_the_service_failing_or_the_probe_not_fitting_it() {
    enum Want {
        Unhealthy(String),
        CannotRun(String),
    }
    use Want::{CannotRun, Unhealthy};
    let valid = exposition(&[("/api", "200", 1.0)], &[("/api", [1.0; 6])]);
    let broken = valid.replace(
        "http_requests_total{code=\"200\",handler=\"/api\"} 1",
        "http_requests_total{code=\"200\",handler=\"/api\" 1",
    );
    let broken_line = valid
        .lines()
        .position(|l| l.starts_with("http_requests_total{"))
        .unwrap()
        + 1;
    let cases: Vec<(&str, u16, String, Value, Want)> = vec![
        (
            "an HTML page",
            200,
            "<html><body>Welcome</body></html>\n".into(),
            json!({}),
            Unhealthy("did not answer a Prometheus exposition".into()),
        ),
        (
            "a server error",
            503,
            valid.clone(),
            json!({}),
            Unhealthy("answered 503, expected 2xx".into()),
        ),
        (
            "a broken line of a configured metric",
            200,
            broken,
            json!({}),
            Unhealthy(format!("line {broken_line}: ")),
        ),
        (
            "a body past max_body_bytes",
            200,
            valid.clone(),
            json!({ "max_body_bytes": 100 }),
            Unhealthy("larger than max_body_bytes (100 bytes)".into()),
        ),
        (
            "a renamed counter",
            200,
            valid.replace("http_requests_total", "http_server_requests_total"),
            json!({}),
            CannotRun("metric http_requests_total is not in the exposition".into()),
        ),
        (
            "an empty exposition",
            200,
            String::new(),
            json!({}),
            CannotRun("metric http_requests_total is not in the exposition".into()),
        ),
        (
            "a summary where a histogram was configured",
            200,
            valid.clone(),
            json!({ "latency": "rpc_duration_seconds" }),
            CannotRun("latency metric rpc_duration_seconds is a summary, not a histogram".into()),
        ),
        (
            "a gauge where a counter was configured",
            200,
            valid.clone(),
            json!({ "requests": "go_goroutines" }),
            CannotRun("requests metric go_goroutines is a gauge, not a counter".into()),
        ),
    ];
    let service = Service::start().await;
    for (what, status, body, extra, want) in cases {
        let mut settings = json!({
            "url": service.url(),
            "requests": "http_requests_total",
            "latency": "http_request_duration_seconds",
        });
        settings
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        service.answer(status, "text/plain; version=0.0.4", body);
        match (probe(settings).check().await, want) {
            (Err(ProbeError::Unhealthy { message, .. }), Unhealthy(part))
            | (Err(ProbeError::CannotRun(message)), CannotRun(part)) => {
                assert!(
                    message.contains(&part),
                    "{what}: {message:?} lacks {part:?}"
                );
            }
            (got, _) => panic!("{what}: unexpected {got:?}"),
        }
    }
}

#[tokio::test]
async fn an_unreachable_service_is_unhealthy() {
    let p = probe(json!({
        "url": format!("http://127.0.0.1:{}/metrics", closed_port()),
        "requests": "http_requests_total",
    }));
    match p.check().await {
        Err(ProbeError::Unhealthy { message, .. }) => {
            assert!(message.contains("scrape of http://127.0.0.1:"), "{message}");
        }
        other => panic!("expected unhealthy, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failed_check_keeps_the_previous_reading_for_the_next_delta() {
    let service = Service::start().await;
    let p = probe(json!({ "url": service.url(), "requests": "http_requests_total" }));
    let at = |n: f64| exposition(&[("/api", "200", n)], &[]);
    service.set(at(10.0));
    p.check().await.expect("first check succeeds");
    service.answer(500, "text/plain", "oops".into());
    assert!(p.check().await.is_err());
    service.set(at(25.0));
    let r: Report = p.check().await.expect("third check succeeds");
    assert_eq!(r.get("requests"), Some(15.0));
}
