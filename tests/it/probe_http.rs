//! The `http` probe against real servers on loopback: well-behaved ones, and
//! raw sockets that answer badly, slowly, endlessly or not at all.

use std::time::{Duration, Instant};

use backstop_probes::{Context, Probe, ProbeError, ProbeSpec, Report};
use backstop_tests::{closed_port, read_request_head, HttpServer, RawServer, Reply, TlsServer};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// Builds an `http` probe the way the agent does, from its settings.
fn probe(settings: Value, timeout: Duration) -> Probe {
    let spec = ProbeSpec::deserialize_typed("http", settings)
        .expect("settings deserialize")
        .expect("http is a probe type");
    spec.build(Context { timeout })
        .unwrap_or_else(|p| panic!("probe builds: {p:?}"))
}

fn unhealthy(result: Result<Report, ProbeError>) -> (String, Report) {
    match result {
        Err(ProbeError::Unhealthy { message, report }) => (message, report),
        other => panic!("expected an unhealthy result, got {other:?}"),
    }
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn judges_the_status_against_expect_status_or_any_2xx() {
    let server = HttpServer::start(|r| match r.path.as_str() {
        "/ok" => Reply::text(200, "ok"),
        "/empty" => Reply::status(204),
        _ => Reply::text(503, "down"),
    })
    .await;
    let cases = [
        ("/ok", json!(null), Ok(200)),
        ("/empty", json!(null), Ok(204)),
        ("/down", json!(null), Err("status 503, expected 2xx")),
        ("/down", json!([503]), Ok(503)),
        ("/empty", json!([200]), Err("status 204, expected [200]")),
    ];
    for (path, expect_status, want) in cases {
        let mut settings = json!({ "url": server.url(path) });
        if !expect_status.is_null() {
            settings["expect_status"] = expect_status.clone();
        }
        let result = probe(settings, SECOND).check().await;
        let label = format!("{path} with expect_status {expect_status}");
        match want {
            Ok(status) => {
                let report = result.unwrap_or_else(|e| panic!("{label}: {e}"));
                assert_eq!(report.get("status"), Some(f64::from(status)), "{label}");
                assert!(report.get("latency_ms").unwrap() >= 0.0, "{label}");
            }
            Err(message) => {
                let (got, report) = unhealthy(result);
                assert_eq!(got, message, "{label}");
                assert!(report.get("status").is_some(), "{label}");
            }
        }
    }
}

#[tokio::test]
async fn checks_the_body_with_json_pointers_and_regular_expressions() {
    let server = HttpServer::start(|r| match r.path.as_str() {
        "/text" => Reply::text(200, "all good"),
        _ => Reply::json(
            200,
            json!({ "status": "up", "db": { "ok": true }, "version": "1.2.3" }),
        ),
    })
    .await;
    let cases = [
        (json!({ "pointer": "/status", "equals": "up" }), None),
        (json!({ "pointer": "/db/ok" }), None),
        (json!({ "pointer": "/db/ok", "equals": true }), None),
        (json!({ "regex": "\"version\":\"1\\.\\d+" }), None),
        (
            json!({ "pointer": "/status", "equals": "down" }),
            Some("body at /status is \"up\", expected \"down\""),
        ),
        (
            json!({ "pointer": "/cache" }),
            Some("body has no value at /cache"),
        ),
        (
            json!({ "regex": "maintenance" }),
            Some("body does not match /maintenance/"),
        ),
    ];
    for (assertion, want) in cases {
        let p = probe(
            json!({ "url": server.url("/health"), "expect_body": [assertion.clone()] }),
            SECOND,
        );
        match want {
            None => {
                p.check()
                    .await
                    .unwrap_or_else(|e| panic!("{assertion}: {e}"));
            }
            Some(message) => assert_eq!(unhealthy(p.check().await).0, message, "{assertion}"),
        }
    }

    let p = probe(
        json!({ "url": server.url("/text"), "expect_body": [{ "pointer": "/status" }] }),
        SECOND,
    );
    let (message, _) = unhealthy(p.check().await);
    assert!(message.starts_with("body is not JSON: "), "{message}");
}

#[tokio::test]
async fn sends_the_method_headers_and_json_body_it_is_given() {
    let server = HttpServer::start(|_| Reply::status(200)).await;
    let p = probe(
        json!({
            "url": server.url("/hook"),
            "method": "post",
            "headers": { "X-Api-Key": "k-1" },
            "json": { "ping": true },
        }),
        SECOND,
    );
    p.check().await.unwrap();
    let req = &server.requests()[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.header("x-api-key"), Some("k-1"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.json(), json!({ "ping": true }));
    assert!(req.header("user-agent").unwrap().starts_with("backstop/"));
}

/// Answers every request with a chunked body that never ends.
async fn endless_server() -> RawServer {
    RawServer::start(|mut stream| async move {
        if !read_request_head(&mut stream).await {
            return;
        }
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = format!("{:x}\r\n{}\r\n", 4096, "y".repeat(4096));
        // Until the client hangs up.
        while stream.write_all(chunk.as_bytes()).await.is_ok() {}
    })
    .await
}

#[tokio::test]
async fn an_endless_body_without_assertions_is_read_only_up_to_the_cap() {
    let server = endless_server().await;
    let timeout = Duration::from_secs(5);
    let p = probe(
        json!({ "url": server.url("/stream"), "max_body_bytes": 65536 }),
        timeout,
    );
    let start = Instant::now();
    let report = p
        .check()
        .await
        .expect("headers were fine and the cap stops the read");
    assert_eq!(report.get("status"), Some(200.0));
    assert!(start.elapsed() < timeout, "the check hung on the body");
}

#[tokio::test]
async fn a_body_over_the_cap_fails_the_assertions_with_a_clear_message() {
    let endless = endless_server().await;
    let sized = HttpServer::start(|_| Reply::text(200, &"x".repeat(2048))).await;
    let want = "body is larger than max_body_bytes (1024 bytes), so it cannot be checked";
    for url in [endless.url("/stream"), sized.url("/big")] {
        let p = probe(
            json!({
                "url": url,
                "max_body_bytes": 1024,
                "expect_body": [{ "regex": "x" }],
            }),
            Duration::from_secs(5),
        );
        let (message, report) = unhealthy(p.check().await);
        assert_eq!(message, want, "{url}");
        assert_eq!(report.get("status"), Some(200.0));
    }
}

#[tokio::test]
async fn a_server_that_never_answers_or_trickles_its_headers_fails_within_the_timeout() {
    let silent = RawServer::start(|stream| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(stream);
    })
    .await;
    let trickling = RawServer::start(|mut stream| async move {
        read_request_head(&mut stream).await;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n").await;
        for _ in 0..600 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(b"x").await.is_err() {
                return;
            }
        }
    })
    .await;
    for url in [silent.url("/health"), trickling.url("/health")] {
        let p = probe(json!({ "url": url }), Duration::from_millis(500));
        let start = Instant::now();
        let (message, report) = unhealthy(p.check().await);
        assert_eq!(message, "no response within 500ms", "{url}");
        assert!(report.get("latency_ms").unwrap() >= 500.0);
        assert!(start.elapsed() < Duration::from_secs(5), "{url}");
    }
}

#[tokio::test]
async fn a_body_that_stalls_fails_within_the_timeout() {
    let server = RawServer::start(|mut stream| async move {
        read_request_head(&mut stream).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly some")
            .await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let p = probe(
        json!({ "url": server.url("/"), "expect_body": [{ "regex": "some" }] }),
        Duration::from_millis(500),
    );
    let start = Instant::now();
    let (message, _) = unhealthy(p.check().await);
    assert_eq!(message, "body not complete within 500ms");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_malformed_or_cut_off_response_is_unhealthy_with_a_clear_reason() {
    let cases: [(&'static [u8], &str); 5] = [
        (
            b"this is not http\r\n\r\n",
            "malformed response: invalid HTTP version parsed",
        ),
        (
            b"HTTP/1.1 abc OK\r\n\r\n",
            "malformed response: invalid HTTP status-code parsed",
        ),
        (
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            "malformed response: invalid HTTP header parsed",
        ),
        (b"", "connection closed before a complete response"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\ncut",
            "connection closed before the body was complete",
        ),
    ];
    for (answer, want) in cases {
        let server = RawServer::start(move |mut stream| async move {
            read_request_head(&mut stream).await;
            let _ = stream.write_all(answer).await;
            let _ = stream.shutdown().await;
        })
        .await;
        let p = probe(
            json!({ "url": server.url("/"), "expect_body": [{ "regex": "." }] }),
            SECOND,
        );
        let (message, _) = unhealthy(p.check().await);
        assert_eq!(message, want, "{:?}", String::from_utf8_lossy(answer));
    }
}

#[tokio::test]
async fn a_refused_connection_reads_as_one_plain_line() {
    let port = closed_port();
    let p = probe(
        json!({ "url": format!("http://127.0.0.1:{port}/health") }),
        SECOND,
    );
    let (message, _) = unhealthy(p.check().await);
    assert_eq!(
        message,
        format!("connect to 127.0.0.1:{port}: connection refused")
    );
}

#[tokio::test]
async fn a_redirect_is_reported_as_its_status_unless_following_is_enabled() {
    let server = HttpServer::start(|r| match r.path.as_str() {
        "/old" => Reply::status(302).header("location", "/new?token=sekrit"),
        _ => Reply::text(200, "new"),
    })
    .await;
    let (message, report) = unhealthy(
        probe(json!({ "url": server.url("/old") }), SECOND)
            .check()
            .await,
    );
    assert_eq!(
        message,
        format!(
            "status 302 (redirect to {}), expected 2xx",
            server.url("/new?token=***")
        )
    );
    assert_eq!(report.get("status"), Some(302.0));

    let report = probe(
        json!({ "url": server.url("/old"), "follow_redirects": true }),
        SECOND,
    )
    .check()
    .await
    .unwrap();
    assert_eq!(report.get("status"), Some(200.0));
}

#[tokio::test]
async fn a_self_signed_certificate_fails_unless_tls_verify_is_off() {
    let server = TlsServer::start().await;
    let (message, _) = unhealthy(
        probe(json!({ "url": server.url("/health") }), SECOND)
            .check()
            .await,
    );
    assert_eq!(
        message,
        format!(
            "tls handshake with {}: certificate problem: not trusted (unknown issuer: self-signed or signed by an unknown CA)",
            server.addr
        )
    );

    let report = probe(
        json!({ "url": server.url("/health"), "tls_verify": false, "expect_body": [{ "regex": "^secure$" }] }),
        SECOND,
    )
    .check()
    .await
    .unwrap();
    assert_eq!(report.get("status"), Some(200.0));
}

#[tokio::test]
async fn a_password_in_the_url_never_appears_in_an_error() {
    let down = HttpServer::start(|_| Reply::status(302).header("location", "/login")).await;
    let garbage = RawServer::start(|mut stream| async move {
        read_request_head(&mut stream).await;
        let _ = stream.write_all(b"garbage\r\n\r\n").await;
    })
    .await;
    let silent = RawServer::start(|stream| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(stream);
    })
    .await;
    let with_password = |addr: String| format!("http://smoke:hunter2@{addr}/health");
    let urls = [
        with_password(format!("127.0.0.1:{}", closed_port())),
        with_password(down.addr.to_string()),
        with_password(garbage.addr.to_string()),
        with_password(silent.addr.to_string()),
    ];
    for url in urls {
        let (message, _) = unhealthy(
            probe(json!({ "url": url }), Duration::from_millis(300))
                .check()
                .await,
        );
        assert!(!message.contains("hunter2"), "{message}");
        assert!(!message.contains("smoke:"), "{message}");
    }
}

#[tokio::test]
async fn checks_reuse_one_connection() {
    let server = RawServer::start(|mut stream| async move {
        while read_request_head(&mut stream).await {
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if stream.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    let p = probe(json!({ "url": server.url("/health") }), SECOND);
    for _ in 0..3 {
        p.check().await.unwrap();
    }
    assert_eq!(server.connections(), 1);
}

/// The body of a health endpoint that reports its own figures.
fn deep_health() -> Value {
    json!({
        "status": "up",
        "memory_mb": 512,
        "uptime_s": "86400",
        "checks": { "database": { "latency": 4.5, "ok": true }, "cache": { "latency": "n/a" } },
    })
}

#[tokio::test]
async fn numbers_from_a_json_body_become_signals_and_anything_else_is_simply_missing() {
    let server = HttpServer::start(|r| match r.path.as_str() {
        "/health" => Reply::json(200, deep_health()),
        "/html" => Reply::text(200, "<html>memory_mb=512</html>"),
        _ => Reply::json(503, deep_health()),
    })
    .await;
    let signals = json!({
        "memory_mb": "/memory_mb",
        "uptime_s": "/uptime_s",
        "db_latency_ms": "/checks/database/latency",
        "cache_latency_ms": "/checks/cache/latency",
        "db_ok": "/checks/database/ok",
        "queue": "/queue/depth",
    });
    let settings = |path: &str| json!({ "url": server.url(path), "signals": signals });
    let spec = ProbeSpec::deserialize_typed("http", settings("/health"))
        .unwrap()
        .unwrap();
    let declared: Vec<String> = spec
        .signals()
        .into_iter()
        .map(|s| s.name.into_owned())
        .collect();

    let report = probe(settings("/health"), SECOND).check().await.unwrap();
    assert_eq!(report.get("memory_mb"), Some(512.0));
    assert_eq!(report.get("uptime_s"), Some(86400.0), "a numeric string");
    assert_eq!(report.get("db_latency_ms"), Some(4.5), "a nested pointer");
    for missing in ["cache_latency_ms", "db_ok", "queue"] {
        assert_eq!(report.get(missing), None, "{missing}");
    }
    for (name, _) in &report.signals {
        assert!(
            declared.contains(&name.to_string()),
            "{name} not in {declared:?}"
        );
    }

    // A body that is not JSON leaves them all missing; the check is fine.
    let report = probe(settings("/html"), SECOND).check().await.unwrap();
    assert_eq!(report.signals.len(), 2, "{report:?}");
    assert_eq!(report.get("status"), Some(200.0));

    // A failing status ends the check before the body is read.
    let (message, report) = unhealthy(probe(settings("/down"), SECOND).check().await);
    assert_eq!(message, "status 503, expected 2xx");
    assert_eq!(report.get("memory_mb"), None);
}

#[tokio::test]
async fn a_body_over_the_cap_leaves_body_signals_missing_without_failing() {
    let endless = endless_server().await;
    let sized = HttpServer::start(|_| {
        Reply::json(200, json!({ "memory_mb": 1, "padding": "x".repeat(4096) }))
    })
    .await;
    for url in [endless.url("/stream"), sized.url("/big")] {
        let p = probe(
            json!({ "url": url, "max_body_bytes": 1024, "signals": { "memory_mb": "/memory_mb" } }),
            Duration::from_secs(5),
        );
        let report = p.check().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(report.get("memory_mb"), None, "{url}");
        assert_eq!(report.get("status"), Some(200.0), "{url}");
    }
}

#[test]
fn a_bad_body_signal_is_a_problem_of_the_probe_with_its_key_and_line() {
    let text = r#"
[service]
name = "web"

[[probe]]
name = "deep"
level = 2
type = "http"
url = "http://127.0.0.1:8080/health"
signals = { memory_mb = "/memory_mb", "p95_ms" = "/p95", consecutive_failures = "/n" }
"#;
    let errors = backstop::config::Config::parse(text, |_| None)
        .unwrap_err()
        .to_string();
    assert!(
        errors.contains(
            "probe[0].signals.p95_ms: p95_ms is a percentile the agent computes from latency_ms"
        ) && errors.contains(
            "probe[0].signals.consecutive_failures: consecutive_failures is the agent's count"
        ) && errors.matches("(line 10)").count() == 2,
        "{errors}"
    );
    assert!(!errors.contains("memory_mb"), "{errors}");
}
