//! The command line as a user runs it: `validate`, `check`, exit codes.

use std::process::Command;

use backstop_tests::{backstop_bin, closed_port, HttpServer, Reply};

fn write_config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("backstop.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `backstop validate` on `config`, expects exit code 2 (a
/// configuration error) and returns what it printed on stderr.
fn validate_refuses(config: &std::path::Path) -> String {
    let out = Command::new(backstop_bin())
        .args(["validate", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exits_1_when_a_critical_probe_fails_and_prints_json() {
    let server = HttpServer::start(|r| {
        if r.path == "/ok" {
            Reply::text(200, "ok")
        } else {
            Reply::text(503, "down")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &format!(
            r#"
[service]
name = "web"

[[probe]]
name = "health"
level = 1
type = "http"
url = "{}"
critical = true

[[probe]]
name = "port"
level = 1
type = "tcp"
address = "127.0.0.1:{}"
"#,
            server.url("/down"),
            closed_port()
        ),
    );
    let out = Command::new(backstop_bin())
        .args(["check", "--format", "json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let probes = doc["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 2);
    assert_eq!(probes[0]["name"], "health");
    assert_eq!(probes[0]["outcome"], "failed");
    assert!(probes[0]["error"].as_str().unwrap().contains("503"));
    assert_eq!(probes[1]["outcome"], "failed");
}

#[test]
fn validate_reports_every_problem_with_key_and_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        r#"[service]
name = "web"

[[probe]]
name = "a"
level = 1
type = "http"
url = "http://127.0.0.1:1/"

[[probe]]
name = "b"
level = 1
type = "tcp"
address = "127.0.0.1:1"
interval = "10x"
"#,
    );
    let err = validate_refuses(&config);
    assert!(
        err.contains(r#"probe[1].interval: invalid duration "10x""#) && err.contains("(line 15)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_shows_the_signals_of_every_probe_body_signals_included() {
    let server = HttpServer::start(|_| {
        Reply::json(
            200,
            serde_json::json!({ "memory_mb": 512.5, "checks": { "db": { "latency": "3.25" } } }),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &format!(
            r#"
[service]
name = "web"

[[probe]]
name = "deep"
level = 2
type = "http"
url = "{}"
signals = {{ memory_mb = "/memory_mb", db_latency_ms = "/checks/db/latency", gone = "/nope" }}
"#,
            server.url("/health/deep")
        ),
    );
    let run = |format: &str| {
        let out = Command::new(backstop_bin())
            .args(["check", "--format", format, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let doc: serde_json::Value = serde_json::from_str(&run("json")).unwrap();
    let probe = &doc["probes"][0];
    assert_eq!(probe["outcome"], "ok", "{doc}");
    let signals = probe["signals"].as_object().unwrap();
    assert_eq!(signals["memory_mb"], 512.5, "{doc}");
    assert_eq!(signals["db_latency_ms"], 3.25, "{doc}");
    assert_eq!(signals["status"], 200.0, "{doc}");
    assert!(signals["latency_ms"].as_f64().unwrap() >= 0.0, "{doc}");
    assert!(!signals.contains_key("gone"), "{doc}");

    let table = run("table");
    let header = table.lines().next().unwrap();
    assert!(header.contains("SIGNALS"), "{table}");
    let row = table.lines().nth(1).unwrap();
    for shown in [
        "status=200",
        "memory_mb=512.5",
        "db_latency_ms=3.2",
        "latency_ms=",
    ] {
        assert!(row.contains(shown), "{shown} in {table}");
    }
    assert!(!row.contains("gone"), "{table}");
}

#[test]
fn validate_names_a_bad_body_signal_with_its_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        r#"[service]
name = "web"

[[probe]]
name = "deep"
level = 2
type = "http"
url = "http://127.0.0.1:1/"
signals = { memory_mb = "memory_mb", status = "/status" }
"#,
    );
    let err = validate_refuses(&config);
    assert!(
        err.contains(r#"probe[0].signals.memory_mb: JSON pointer "memory_mb" must be empty or start with '/' (line 9)"#),
        "{err}"
    );
    assert!(
        err.contains("probe[0].signals.status: status is a signal the http probe yields itself")
            && err.matches("(line 9)").count() == 2,
        "{err}"
    );
}

#[test]
fn validate_refuses_rules_that_could_never_hold_and_names_what_would_work() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        r#"[service]
name = "web"

[[probe]]
name = "health"
level = 1
type = "http"
url = "http://127.0.0.1:1/health"
signals = { memory_mb = "/memory_mb" }

[[probe]]
name = "port"
level = 1
type = "tcp"
address = "127.0.0.1:1"
depends_on = ["db"]

[[rule]]
name = "bogus"
probe = "health"
when = "bogus_signal > 5 for 1m"

[[rule]]
name = "tcp errors"
probe = "port"
when = "error_rate > 5% for 5m"

[[rule]]
name = "latency"
probe = "health"
when = "p95_ms > 2x baseline for 5m"

[[rule]]
name = "leak"
probe = "health"
when = "memory_mb > 1024 for 1m"
"#,
    );
    let err = validate_refuses(&config);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [
            "backstop: 3 configuration problems",
            r#"  probe[1].depends_on[0]: no probe named "db"; name one of the other probes: health (line 16)"#,
            r#"  rule[0].when: probe "health" (http) never yields "bogus_signal", so this rule could never hold; its signals are latency_ms, status, memory_mb, p50_ms, p90_ms, p95_ms, p99_ms, consecutive_failures (line 21)"#,
            r#"  rule[1].when: probe "port" (tcp) never yields "error_rate", so this rule could never hold; its signals are latency_ms, p50_ms, p90_ms, p95_ms, p99_ms, consecutive_failures (line 26)"#,
        ],
        "{err}"
    );
}
