//! The `promql` probe against the Prometheus server `tests/run.sh` started,
//! which scrapes itself, and against a stand-in where Prometheus cannot be
//! made to misbehave.

use std::time::Duration;

use backstop_probes::{Context, Probe, ProbeError, ProbeSpec};
use backstop_tests::{closed_port, prometheus_url, HttpServer, Reply};
use serde_json::{json, Value};

/// Builds a `promql` probe the way the agent does, from its settings.
fn probe(settings: Value) -> Probe {
    let spec = ProbeSpec::deserialize_typed("promql", settings)
        .expect("settings deserialize")
        .expect("promql is a probe type");
    spec.build(Context {
        timeout: Duration::from_secs(5),
    })
    .unwrap_or_else(|p| panic!("probe builds: {p:?}"))
}

fn cannot_run(result: Result<backstop_probes::Report, ProbeError>) -> String {
    match result {
        Err(ProbeError::CannotRun(message)) => message,
        other => panic!("expected cannot-run, got {other:?}"),
    }
}

#[tokio::test]
async fn reports_the_single_value_of_a_scalar_or_a_one_series_vector() {
    let cases = [
        ("42", "value", 42.0),
        ("scalar(vector(0.25))", "error_rate", 0.25),
        ("vector(3) * 2", "p95_ms", 6.0),
        (r#"up{job="prometheus"}"#, "value", 1.0),
        ("count(prometheus_build_info)", "value", 1.0),
    ];
    for (query, signal, want) in cases {
        let p = probe(json!({ "url": prometheus_url(), "query": query, "signal": signal }));
        let report = p.check().await.unwrap_or_else(|e| panic!("{query}: {e}"));
        assert_eq!(report.get(signal), Some(want), "{query}");
        assert!(report.get("latency_ms").is_some(), "{query}");
    }
}

#[tokio::test]
async fn no_data_several_series_and_a_range_vector_cannot_run() {
    let two_series = r#"label_replace(vector(1), "a", "x", "", "") or label_replace(vector(2), "a", "y", "", "")"#;
    let cases = [
        ("vector(1) > 2", "no data (an empty vector)"),
        (r#"up{job="no-such-job"}"#, "no data (an empty vector)"),
        ("0 / 0", "query returned NaN: no data to judge"),
        (two_series, "query returned 2 series"),
        (two_series, "aggregate it to one"),
        ("up[1m]", "query returned a matrix"),
    ];
    for (query, part) in cases {
        let p = probe(json!({ "url": prometheus_url(), "query": query }));
        let message = cannot_run(p.check().await);
        assert!(
            message.contains(part),
            "{query}: {message:?} lacks {part:?}"
        );
    }
}

#[tokio::test]
async fn a_syntax_error_carries_prometheus_own_message() {
    let p = probe(json!({ "url": prometheus_url(), "query": "sum(up" }));
    let message = cannot_run(p.check().await);
    // Prometheus 2.x says "unclosed left parenthesis"; the position is its own.
    assert!(message.contains("parse error"), "{message}");
    assert!(message.contains("unclosed left parenthesis"), "{message}");
}

#[tokio::test]
async fn an_unreachable_prometheus_cannot_run() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let p = probe(json!({ "url": url, "query": "up" }));
    let message = cannot_run(p.check().await);
    assert!(message.contains("unreachable"), "{message}");
}

#[tokio::test]
async fn sends_headers_under_a_path_prefix_and_a_refusal_cannot_run() {
    let server = HttpServer::start(|r| {
        if r.header("authorization") == Some("Bearer prom-token") {
            Reply::json(
                200,
                json!({
                    "status": "success",
                    "data": { "resultType": "vector", "result": [
                        { "metric": { "job": "web" }, "value": [1.7e9, "0.5"] }
                    ]}
                }),
            )
        } else {
            Reply::text(401, "unauthorized")
        }
    })
    .await;
    let base = server.url("/prom/");
    let p = probe(json!({
        "url": base,
        "query": "avg(up)",
        "signal": "pool_utilization",
        "headers": { "Authorization": "Bearer prom-token" },
    }));
    let report = p.check().await.expect("authorized query succeeds");
    assert_eq!(report.get("pool_utilization"), Some(0.5));
    let sent = &server.requests()[0];
    assert_eq!(sent.path, "/prom/api/v1/query");
    assert!(
        sent.query
            .as_deref()
            .unwrap_or("")
            .contains("query=avg%28up%29"),
        "{:?}",
        sent.query
    );

    let p = probe(json!({ "url": base, "query": "avg(up)" }));
    let message = cannot_run(p.check().await);
    assert!(message.contains("answered 401"), "{message}");
}
