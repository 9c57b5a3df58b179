//! The `scenario` probe against real servers on loopback: a token login, a
//! cookie session, captured headers, and steps that fail or hang.

use std::time::{Duration, Instant};

use backstop::config::Config;
use backstop_probes::{Context, Probe, ProbeError, ProbeSpec, Report};
use backstop_tests::{HttpServer, Recorded, Reply};
use serde_json::{json, Value};

/// Builds a `scenario` probe the way the agent does, from its settings.
fn probe(steps: Value, timeout: Duration) -> Probe {
    let spec = ProbeSpec::deserialize_typed("scenario", json!({ "step": steps }))
        .expect("settings deserialize")
        .expect("scenario is a probe type");
    spec.build(Context { timeout })
        .unwrap_or_else(|p| panic!("probe builds: {p:?}"))
}

fn unhealthy(result: Result<Report, ProbeError>) -> (String, Report) {
    match result {
        Err(ProbeError::Unhealthy { message, report }) => (message, report),
        other => panic!("expected an unhealthy result, got {other:?}"),
    }
}

const SECONDS: Duration = Duration::from_secs(5);

/// A service with a token login: `POST /api/login` answers a token for the
/// right password, `GET /api/me` needs it as a bearer token.
fn token_service(r: &Recorded) -> Reply {
    match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/api/login") => {
            let creds = r.json();
            if creds == json!({ "username": "smoke", "password": "pw-1" }) {
                Reply::json(200, json!({ "token": "t-123", "expires_in": 60 }))
            } else {
                Reply::json(401, json!({ "error": "bad credentials" }))
            }
        }
        ("GET", "/api/me") if r.header("authorization") == Some("Bearer t-123") => {
            Reply::json(200, json!({ "name": "smoke" }))
        }
        ("GET", "/api/me") => Reply::status(401),
        _ => Reply::status(404),
    }
}

fn login_steps(server: &HttpServer, password: &str) -> Value {
    json!([
        {
            "method": "POST",
            "url": server.url("/api/login"),
            "json": { "username": "smoke", "password": password },
            "expect_status": [200],
            "capture": { "token": "/token" },
        },
        {
            "method": "GET",
            "url": server.url("/api/me"),
            "headers": { "Authorization": "Bearer {{token}}" },
            "expect_status": [200],
            "expect_body": [{ "pointer": "/name", "equals": "smoke" }],
        },
    ])
}

#[tokio::test]
async fn a_login_flow_passes_the_captured_token_to_the_next_step() {
    let server = HttpServer::start(token_service).await;
    let report = probe(login_steps(&server, "pw-1"), SECONDS)
        .check()
        .await
        .unwrap();
    assert_eq!(report.get("steps_ok"), Some(2.0));
    assert_eq!(report.get("step_failed"), None);
    assert!(report.get("latency_ms").unwrap() >= 0.0);
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].header("content-type"), Some("application/json"));
    assert_eq!(requests[1].header("authorization"), Some("Bearer t-123"));
}

#[tokio::test]
async fn a_failing_step_names_itself_and_stops_the_scenario() {
    let server = HttpServer::start(token_service).await;
    let mut steps = login_steps(&server, "pw-1");
    // The second step sends no token, so the service refuses it.
    steps[1]["headers"] = json!({});
    steps
        .as_array_mut()
        .unwrap()
        .push(json!({ "url": server.url("/api/orders") }));
    let (message, report) = unhealthy(probe(steps, SECONDS).check().await);
    assert_eq!(message, "step 2 (GET /api/me): status 401, expected [200]");
    assert_eq!(report.get("steps_ok"), Some(1.0));
    assert_eq!(report.get("step_failed"), Some(2.0));
    assert!(report.get("latency_ms").is_some());
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/api/login", "/api/me"], "step 3 must not run");
}

#[tokio::test]
async fn a_value_missing_from_the_body_fails_the_step_that_captures_it() {
    let server = HttpServer::start(|_| Reply::json(200, json!({ "session": "s" }))).await;
    let steps = json!([
        { "method": "POST", "url": server.url("/api/login"), "capture": { "token": "/token" } },
        { "url": server.url("/api/me"), "headers": { "Authorization": "Bearer {{token}}" } },
    ]);
    let (message, report) = unhealthy(probe(steps, SECONDS).check().await);
    assert_eq!(
        message,
        "step 1 (POST /api/login): body has no value at /token to capture as token"
    );
    assert_eq!(report.get("step_failed"), Some(1.0));
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_cookie_session_lasts_for_one_run_and_not_into_the_next() {
    let server = HttpServer::start(|r| match r.path.as_str() {
        "/login" => Reply::status(204).header("set-cookie", "session=s-42; Path=/; HttpOnly"),
        "/account" if r.header("cookie") == Some("session=s-42") => Reply::text(200, "yours"),
        _ => Reply::status(401),
    })
    .await;
    let steps = json!([
        { "method": "POST", "url": server.url("/login") },
        { "url": server.url("/account"), "expect_body": [{ "regex": "^yours$" }] },
    ]);
    let p = probe(steps, SECONDS);
    for run in 0..2 {
        let report = p.check().await.unwrap_or_else(|e| panic!("run {run}: {e}"));
        assert_eq!(report.get("steps_ok"), Some(2.0));
    }
    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    assert_eq!(requests[0].header("cookie"), None);
    assert_eq!(
        requests[2].header("cookie"),
        None,
        "a cookie outlived its run"
    );
}

#[tokio::test]
async fn captures_response_headers_and_follows_a_captured_relative_location() {
    let server = HttpServer::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/api/orders") => Reply::json(201, json!({ "id": 42 }))
            .header("location", "/api/orders/42")
            .header("x-request-id", "req-7"),
        ("GET", "/api/orders/42") if r.header("x-parent-request") == Some("req-7") => {
            Reply::json(200, json!({ "id": 42, "state": "new" }))
        }
        _ => Reply::status(404),
    })
    .await;
    let steps = json!([
        {
            "method": "POST",
            "url": server.url("/api/orders"),
            "json": { "item": "smoke" },
            "expect_status": [201],
            "capture": { "order": "header:Location", "request": "header:X-Request-Id", "id": "/id" },
        },
        {
            "url": "{{order}}",
            "headers": { "X-Parent-Request": "{{request}}" },
            "expect_body": [{ "pointer": "/state", "equals": "new" }],
        },
        {
            "method": "DELETE",
            "url": server.url("/api/orders/{{id}}/missing"),
            "expect_status": [404],
        },
    ]);
    let report = probe(steps, SECONDS).check().await.unwrap();
    assert_eq!(report.get("steps_ok"), Some(3.0));
    assert_eq!(server.requests()[2].path, "/api/orders/42/missing");
}

#[tokio::test]
async fn a_missing_header_to_capture_fails_the_step() {
    let server = HttpServer::start(|_| Reply::status(200)).await;
    let steps = json!([
        { "url": server.url("/start"), "capture": { "next": "header:Location" } },
        { "url": "{{next}}" },
    ]);
    let (message, _) = unhealthy(probe(steps, SECONDS).check().await);
    assert_eq!(
        message,
        "step 1 (GET /start): no location header to capture as next"
    );
}

#[tokio::test]
async fn a_hanging_step_ends_at_its_own_timeout_or_at_the_scenarios() {
    let server = HttpServer::start(|r| match r.path.as_str() {
        "/slow" => Reply::text(200, "late").after(Duration::from_secs(30)),
        _ => Reply::text(200, "ok"),
    })
    .await;
    let cases = [
        (
            json!({ "url": server.url("/slow"), "timeout": "300ms" }),
            SECONDS,
            "step 2 (GET /slow): no response within 300ms",
        ),
        (
            json!({ "url": server.url("/slow") }),
            Duration::from_millis(500),
            "step 2 (GET /slow): no response within the scenario's 500ms timeout",
        ),
    ];
    for (slow_step, timeout, want) in cases {
        let steps = json!([{ "url": server.url("/fast") }, slow_step]);
        let start = Instant::now();
        let (message, report) = unhealthy(probe(steps, timeout).check().await);
        assert_eq!(message, want);
        assert_eq!(report.get("step_failed"), Some(2.0));
        assert!(start.elapsed() < timeout + Duration::from_secs(3), "{want}");
    }
}

#[test]
fn the_login_scenario_of_the_spec_reads_from_toml() {
    let text = r#"
[service]
name = "web"

[[probe]]
name = "login"
level = 3
type = "scenario"
  [[probe.step]]
  method = "POST"
  url = "http://127.0.0.1:8080/api/login"
  json = { username = "smoke", password = "${SMOKE_PASSWORD}" }
  expect_status = [200]
  capture = { token = "/token" }
  [[probe.step]]
  method = "GET"
  url = "http://127.0.0.1:8080/api/me"
  headers = { Authorization = "Bearer {{token}}" }
  expect_status = [200]
  timeout = "2s"
"#;
    let config = Config::parse(text, |k| (k == "SMOKE_PASSWORD").then(|| "pw".into()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.probes[0].type_name(), "scenario");
    config.probes[0].build().unwrap();
}

#[test]
fn scenario_problems_name_the_step_and_key_in_the_configuration() {
    let text = r#"
[service]
name = "web"

[[probe]]
name = "login"
level = 3
type = "scenario"
  [[probe.step]]
  url = "http://127.0.0.1:8080/api/login"
  [[probe.step]]
  url = "http://127.0.0.1:8080/api/me"
  headers = { Authorization = "Bearer {{token}}" }
  timeout = "2x"
"#;
    let errors = Config::parse(text, |_| None).unwrap_err().to_string();
    assert!(
        errors.contains("probe[0].step[1].timeout: invalid duration \"2x\""),
        "{errors}"
    );

    let text = text.replace("timeout = \"2x\"", "");
    let errors = Config::parse(&text, |_| None).unwrap_err().to_string();
    assert!(
        errors.contains(
            "probe[0].step[1].headers.Authorization: {{token}} is not captured by an earlier step"
        ),
        "{errors}"
    );
}

#[tokio::test]
async fn steps_report_numbers_from_their_bodies_under_the_names_they_declare() {
    let server = HttpServer::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/api/login") => Reply::json(200, json!({ "token": "t-123", "expires_in": "60" })),
        ("GET", "/api/me") => Reply::json(200, json!({ "name": "smoke", "orders": { "open": 3 } })),
        _ => Reply::status(404),
    })
    .await;
    let mut steps = login_steps(&server, "pw-1");
    steps[0]["signals"] = json!({ "token_ttl_s": "/expires_in", "missing": "/nope" });
    steps[1]["signals"] = json!({ "open_orders": "/orders/open", "name": "/name" });
    let spec = ProbeSpec::deserialize_typed("scenario", json!({ "step": steps.clone() }))
        .unwrap()
        .unwrap();
    let declared: Vec<String> = spec
        .signals()
        .into_iter()
        .map(|s| s.name.into_owned())
        .collect();
    for name in ["token_ttl_s", "missing", "open_orders", "name", "steps_ok"] {
        assert!(declared.contains(&name.to_string()), "{name}: {declared:?}");
    }

    let report = probe(steps.clone(), SECONDS).check().await.unwrap();
    assert_eq!(report.get("token_ttl_s"), Some(60.0));
    assert_eq!(report.get("open_orders"), Some(3.0));
    assert_eq!(report.get("name"), None, "not a number");
    assert_eq!(report.get("missing"), None);
    assert_eq!(report.get("steps_ok"), Some(2.0));
    for (name, _) in &report.signals {
        assert!(declared.contains(&name.to_string()), "{name}");
    }

    // The second step fails: the first step's signal stays in its report.
    steps[1]["url"] = json!(server.url("/api/gone"));
    let (message, report) = unhealthy(probe(steps, SECONDS).check().await);
    assert!(message.starts_with("step 2 (GET /api/gone)"), "{message}");
    assert_eq!(report.get("token_ttl_s"), Some(60.0));
    assert_eq!(report.get("open_orders"), None);
}

#[test]
fn a_body_signal_two_steps_declare_is_a_problem_of_the_later_step() {
    let text = r#"
[service]
name = "web"

[[probe]]
name = "login"
level = 3
type = "scenario"
  [[probe.step]]
  url = "http://127.0.0.1:8080/api/login"
  signals = { queue = "/queue" }
  [[probe.step]]
  url = "http://127.0.0.1:8080/api/me"
  signals = { queue = "/queue", steps_ok = "/n" }
"#;
    let errors = Config::parse(text, |_| None).unwrap_err().to_string();
    assert!(
        errors.contains(
            "probe[0].step[1].signals.queue: queue is already declared by step[0]: a signal comes from one step (line 14)"
        ),
        "{errors}"
    );
    assert!(
        errors.contains("probe[0].step[1].signals.steps_ok: steps_ok is a signal the scenario probe yields itself"),
        "{errors}"
    );
}
