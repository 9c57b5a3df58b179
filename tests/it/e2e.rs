//! End to end: a real local service is deployed, goes bad, and the agent —
//! the real binary — rolls it back through a stand-in platform exactly once,
//! also across a restart.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop_tests::{backstop_bin, closed_port, wait_for_port, HttpServer, Reply};
use serde_json::json;

/// The service under watch: its version and whether its health is good.
#[derive(Clone)]
pub(crate) struct Service(Arc<Mutex<(String, bool)>>);

impl Service {
    pub(crate) fn set(&self, version: &str, healthy: bool) {
        *self.0.lock().unwrap() = (version.to_string(), healthy);
    }
}

pub(crate) async fn service() -> (Service, HttpServer) {
    let state = Service(Arc::new(Mutex::new(("v1".to_string(), true))));
    let s = state.clone();
    let server = HttpServer::start(move |r| {
        let (version, healthy) = s.0.lock().unwrap().clone();
        match r.path.as_str() {
            "/version" => Reply::json(200, json!({ "version": version })),
            "/health" if healthy => Reply::text(200, "ok"),
            "/health" => Reply::text(503, "down"),
            _ => Reply::status(404),
        }
    })
    .await;
    (state, server)
}

fn config(
    dir: &std::path::Path,
    port: u16,
    svc: &HttpServer,
    platform: &HttpServer,
) -> std::path::PathBuf {
    config_with(dir, port, svc, platform, "3s", "")
}

/// The agent's configuration, with its own watch and more sections (such
/// as `[store]`) at the end.
pub(crate) fn config_with(
    dir: &std::path::Path,
    port: u16,
    svc: &HttpServer,
    platform: &HttpServer,
    watch: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join("backstop.toml");
    std::fs::write(
        &path,
        format!(
            r#"[agent]
listen = "127.0.0.1:{port}"
state_dir = "{state}"

[service]
name = "shop"

[deployment]
id_url = "{version}"
id_pointer = "/version"
poll_interval = "200ms"
warmup = "1s"
watch = "{watch}"

[[probe]]
name = "health"
level = 1
type = "http"
url = "{health}"
interval = "200ms"
timeout = "150ms"
critical = true

[rollback]
target = "webhook"
cooldown = "1s"
verify = "5s"
deadline = "5s"

[rollback.webhook]
url = "{hook}"

{extra}
"#,
            state = dir.join("state").display(),
            version = svc.url("/version"),
            health = svc.url("/health"),
            hook = platform.url("/rollback"),
        ),
    )
    .unwrap();
    path
}

pub(crate) struct Agent(Child);

impl Agent {
    pub(crate) fn start(config: &std::path::Path, port: u16) -> Self {
        let child = Command::new(backstop_bin())
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port);
        Self(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) async fn status(port: u16) -> serde_json::Value {
    reqwest::get(format!("http://127.0.0.1:{port}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls `/status` until `f` holds (up to 20 s).
pub(crate) async fn until(
    port: u16,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..200 {
        last = status(port).await;
        if f(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}; last /status:\n{last:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_that_goes_bad_is_rolled_back_exactly_once_even_across_a_restart() {
    let (svc, server) = service().await;
    let switch = svc.clone();
    let platform = HttpServer::start(move |r| {
        // The platform goes back to what it was asked to return to.
        let to = r.json()["return_to"].as_str().unwrap_or("v1").to_string();
        switch.set(&to, true);
        Reply::json(200, json!({ "ok": true }))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let cfg = config(dir.path(), port, &server, &platform);
    {
        let _agent = Agent::start(&cfg, port);
        until(port, "v1 stable", |s| {
            s["deployment"]["id"] == "v1" && s["deployment"]["state"] == "stable"
        })
        .await;
        svc.set("v2", false);
        let s = until(port, "the rollback of v2", |s| {
            s["last_rollback"]["deployment"] == "v2" && s["last_rollback"]["status"] == "succeeded"
        })
        .await;
        assert_eq!(s["last_rollback"]["rule"], "health failing");
        assert_eq!(s["last_rollback"]["returned_to"], "v1");
        assert!(
            s["last_rollback"]["reason"]
                .as_str()
                .unwrap()
                .contains("consecutive_failures"),
            "{s:#}"
        );
        until(port, "v1 again", |s| s["deployment"]["id"] == "v1").await;

        // The delivery figures the run implies: one deployment stable (v1),
        // one rolled back (v2), one detection and one recovery, the
        // recovery no sooner than the detection.
        let m = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let value = |series: &str| -> f64 {
            m.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no {series} in /metrics:\n{m}"))
        };
        assert_eq!(
            value(r#"backstop_deployments_total{outcome="stable"}"#),
            1.0
        );
        assert_eq!(
            value(r#"backstop_deployments_total{outcome="rolled_back"}"#),
            1.0
        );
        assert_eq!(value("backstop_detection_seconds_count"), 1.0);
        assert_eq!(value("backstop_recovery_seconds_count"), 1.0);
        let (detect, recover) = (
            value("backstop_detection_seconds_sum"),
            value("backstop_recovery_seconds_sum"),
        );
        // v2's rules are armed after its 1 s warm-up; its health fails at
        // once, so the rollback is decided after at least that.
        assert!(detect >= 1.0, "detection {detect} s:\n{m}");
        assert!(
            recover >= detect,
            "recovery {recover} s, detection {detect} s:\n{m}"
        );
        assert_eq!(
            value(r#"backstop_detection_seconds_bucket{le="+Inf"}"#),
            1.0,
            "a histogram with buckets, not a summary:\n{m}"
        );
    }
    let calls = platform.requests();
    assert_eq!(calls.len(), 1, "exactly one rollback call: {calls:?}");
    let body = calls[0].json();
    assert_eq!(calls[0].method, "POST");
    assert_eq!(body["event"], "rollback");
    assert_eq!(body["service"], "shop");
    assert_eq!(body["deployment"], "v2");
    assert_eq!(body["rule"], "health failing");
    assert_eq!(body["return_to"], "v1");
    assert!(body["reason"]
        .as_str()
        .unwrap()
        .contains("consecutive_failures"));

    // v2 is deployed again by mistake while the agent restarts: it has been
    // rolled back once already, so no second call is made.
    svc.set("v2", false);
    let _agent = Agent::start(&cfg, port);
    // What the store knows of v2 (its rollback) is read off the watch's
    // path: until it comes (a moment under load) v2 shows as warming.
    let s = until(port, "v2 seen again, known as rolled back", |s| {
        s["deployment"]["id"] == "v2" && s["deployment"]["state"] != "warming"
    })
    .await;
    assert_eq!(s["deployment"]["state"], "rolled_back");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        platform.requests().len(),
        1,
        "no second call after a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_stays_healthy_is_never_rolled_back() {
    let (_svc, server) = service().await;
    let platform = HttpServer::start(|_| Reply::json(200, json!({}))).await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let cfg = config(dir.path(), port, &server, &platform);
    let _agent = Agent::start(&cfg, port);
    until(port, "v1 stable", |s| s["deployment"]["state"] == "stable").await;
    assert!(platform.requests().is_empty());
}

#[test]
fn the_demo_runs_to_its_end_and_exits_0() {
    let out = Command::new(backstop_bin()).arg("demo").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("rule \"health failing\" fired"), "{text}");
    assert!(
        text.contains("platform received a rollback call: deployment v2, return to v1"),
        "{text}"
    );
    assert!(text.contains("done: v2 was rolled back to v1"), "{text}");
}
