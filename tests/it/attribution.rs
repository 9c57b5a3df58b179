//! Attribution, end to end with the real binary: what a probe saw is charged
//! to the deployment that caused it, and only to it. A new deployment is
//! seen as soon as a probe's outcome changes; an outage of a dependency is
//! held and told, never rolled back; a deployment that broke its own access
//! is rolled back once; a percentile regression against the baseline is
//! caught; and nothing of a rolled-back deployment fires on the one the
//! rollback returned to.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop_tests::{closed_port, HttpServer, PostgresServer, Reply};
use serde_json::json;

use crate::e2e::{until, Agent};

/// The service under watch: its version, whether its health is good, and
/// how long its health endpoint takes.
#[derive(Clone)]
struct Service(Arc<Mutex<(String, bool, u64)>>);

impl Service {
    fn set(&self, version: &str, healthy: bool) {
        let mut s = self.0.lock().unwrap();
        s.0 = version.to_string();
        s.1 = healthy;
    }

    fn set_delay(&self, version: &str, delay_ms: u64) {
        let mut s = self.0.lock().unwrap();
        s.0 = version.to_string();
        s.2 = delay_ms;
    }
}

async fn service() -> (Service, HttpServer) {
    let state = Service(Arc::new(Mutex::new(("v1".to_string(), true, 0))));
    let s = state.clone();
    let server = HttpServer::start(move |r| {
        let (version, healthy, delay) = s.0.lock().unwrap().clone();
        let delay = Duration::from_millis(delay);
        match r.path.as_str() {
            "/version" => Reply::json(200, json!({ "version": version })),
            "/health" if healthy => Reply::text(200, "ok").after(delay),
            "/health" => Reply::text(503, "down"),
            _ => Reply::status(404),
        }
    })
    .await;
    (state, server)
}

/// A platform whose rollbacks return the service to the deployment asked
/// for, healthy and fast, and which notes when each call arrived.
async fn platform(svc: &Service) -> (HttpServer, Arc<Mutex<Vec<Instant>>>) {
    let switch = svc.clone();
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let noted = arrivals.clone();
    let server = HttpServer::start(move |r| {
        noted.lock().unwrap().push(Instant::now());
        let to = r.json()["return_to"].as_str().unwrap_or("v1").to_string();
        switch.set(&to, true);
        switch.set_delay(&to, 0);
        Reply::json(200, json!({ "ok": true }))
    })
    .await;
    (server, arrivals)
}

/// Events told to the notify webhook, as `(event, deployment, rule, summary)`.
fn told(notify: &HttpServer) -> Vec<(String, String, String, String)> {
    notify
        .requests()
        .iter()
        .map(|r| {
            let b = r.json();
            let s = |k: &str| b[k].as_str().unwrap_or("").to_string();
            (s("event"), s("deployment"), s("rule"), s("summary"))
        })
        .collect()
}

struct Setup {
    dir: tempfile::TempDir,
    port: u16,
}

impl Setup {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            port: closed_port(),
        }
    }

    /// Writes the configuration: `[deployment]` from the service's
    /// `/version` with the given warm-up and watch, the probes and rules
    /// given, a webhook rollback target and a webhook notifier.
    fn config(
        &self,
        svc: &HttpServer,
        platform: &HttpServer,
        notify: &HttpServer,
        deployment: &str,
        rest: &str,
    ) -> std::path::PathBuf {
        let path = self.dir.path().join("backstop.toml");
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
{deployment}

{rest}

[rollback]
target = "webhook"
cooldown = "1s"
verify = "5s"
deadline = "5s"

[rollback.webhook]
url = "{hook}"

[[notify]]
type = "webhook"
url = "{notify}"
"#,
                port = self.port,
                state = self.dir.path().join("state").display(),
                version = svc.url("/version"),
                hook = platform.url("/rollback"),
                notify = notify.url("/events"),
            )
            .replace("{health}", &svc.url("/health")),
        )
        .unwrap();
        path
    }
}

/// Waits until `id` is the deployment and stable.
async fn stable(port: u16, id: &str) -> serde_json::Value {
    until(port, &format!("{id} stable"), |s| {
        s["deployment"]["id"] == id && s["deployment"]["state"] == "stable"
    })
    .await
}

/// Waits until the rollback of `id` succeeded; `/status` then.
async fn rolled_back(port: u16, id: &str) -> serde_json::Value {
    until(port, &format!("the rollback of {id}"), |s| {
        s["last_rollback"]["deployment"] == id && s["last_rollback"]["status"] == "succeeded"
    })
    .await
}

fn rule<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no rule {name} in {status:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_whose_health_fails_is_seen_at_once_rolled_back_once_and_nothing_fires_on_the_one_returned_to(
) {
    let (svc, server) = service().await;
    let (platform, arrivals) = platform(&svc).await;
    let notify = HttpServer::start(|_| Reply::status(200)).await;
    let setup = Setup::new();
    // No poll_interval: the default. The id is read again as soon as the
    // health probe's outcome changes.
    let cfg = setup.config(
        &server,
        &platform,
        &notify,
        "warmup = \"2s\"\nwatch = \"3s\"",
        r#"[[probe]]
name = "health"
level = 1
type = "http"
url = "{health}"
interval = "250ms"
timeout = "200ms"
critical = true
"#,
    );
    let _agent = Agent::start(&cfg, setup.port);
    stable(setup.port, "v1").await;
    let deployed = Instant::now();
    svc.set("v2", false);
    let s = rolled_back(setup.port, "v2").await;
    let called = arrivals.lock().unwrap()[0];
    eprintln!(
        "deploy to rollback call: {:.2} s",
        called.duration_since(deployed).as_secs_f64()
    );
    assert_eq!(s["last_rollback"]["rule"], "health failing");
    // The failures counted are v2's own: the warm-up (2 s) was v2's, and
    // the rule held on the checks after it.
    let reason = s["last_rollback"]["reason"].as_str().unwrap();
    assert!(reason.contains("consecutive_failures"), "{reason}");

    // Back on v1: its watch resumes as stable, and v2's failures are not
    // its own.
    let s = until(setup.port, "v1 again", |s| s["deployment"]["id"] == "v1").await;
    assert_eq!(s["deployment"]["state"], "stable");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = crate::e2e::status(setup.port).await;
    assert_eq!(s["deployment"]["id"], "v1");
    let health = rule(&s, "health failing");
    assert_ne!(health["verdict"], "holds", "{s:#}");
    assert_eq!(arrivals.lock().unwrap().len(), 1, "exactly one call");
    let events = told(&notify);
    let on_v1: Vec<_> = events
        .iter()
        .filter(|e| e.1 == "v1" && (e.0 == "alert" || e.0.starts_with("rollback")))
        .collect();
    assert!(on_v1.is_empty(), "nothing fires on v1: {events:?}");
    assert!(
        events.iter().any(|e| e.0 == "rollback" && e.1 == "v2"),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_held_and_told_while_a_deployment_that_broke_its_own_access_is_rolled_back_once(
) {
    let pg = PostgresServer::start();
    let (svc, server) = service().await;
    let (platform, arrivals) = platform(&svc).await;
    let notify = HttpServer::start(|_| Reply::status(200)).await;
    let setup = Setup::new();
    let cfg = setup.config(
        &server,
        &platform,
        &notify,
        // Long enough a watch for the outage to be seen within it.
        "poll_interval = \"250ms\"\nwarmup = \"1s\"\nwatch = \"10s\"",
        &format!(
            r#"[[probe]]
name = "db"
level = 2
type = "postgres"
url = "{}"
interval = "1s"
timeout = "500ms"

[[probe]]
name = "health"
level = 1
type = "http"
url = "{{health}}"
interval = "250ms"
timeout = "200ms"
critical = true
depends_on = ["db"]
"#,
            pg.url()
        ),
    );
    let _agent = Agent::start(&cfg, setup.port);
    stable(setup.port, "v1").await;

    // v2 is fine; during its watch the database goes down for everyone,
    // and the service's health with it.
    svc.set("v2", true);
    until(setup.port, "v2 watched", |s| {
        s["deployment"]["id"] == "v2" && s["deployment"]["state"] == "watching"
    })
    .await;
    pg.stop();
    svc.set("v2", false);
    // Held at once: first until db, asked for a check, answers; then
    // because it fails.
    let s = until(setup.port, "health failing held by db", |s| {
        s["rules"].as_array().is_some_and(|rs| {
            rs.iter().any(|r| {
                r["name"] == "health failing"
                    && r["verdict"] == "held"
                    && r["reason"]
                        .as_str()
                        .is_some_and(|w| w.contains("is failing"))
            })
        })
    })
    .await;
    let reason = rule(&s, "health failing")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("db (depends_on) is failing"), "{reason}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = crate::e2e::status(setup.port).await;
    assert_eq!(s["deployment"]["id"], "v2");
    assert!(s["held"].as_str().unwrap_or("").contains("db"), "{s:#}");
    assert!(
        arrivals.lock().unwrap().is_empty(),
        "an outage is never rolled back"
    );
    let events = told(&notify);
    let held: Vec<_> = events.iter().filter(|e| e.0 == "rollback_held").collect();
    assert_eq!(held.len(), 1, "told once: {events:?}");
    assert_eq!(held[0].1, "v2");
    assert!(held[0].3.contains("db (depends_on) is failing"), "{held:?}");
    // The agent's own view of the database alerts, and never rolls back.
    assert!(
        events
            .iter()
            .any(|e| e.0 == "alert" && e.2 == "db unreachable"),
        "{events:?}"
    );

    // The database comes back, and the service with it: v2 goes on to
    // become stable, never called about.
    pg.start_again();
    svc.set("v2", true);
    stable(setup.port, "v2").await;
    assert!(arrivals.lock().unwrap().is_empty());

    // v3 breaks its own access to the database while the database is
    // fine for the agent: that is the deployment, rolled back once.
    svc.set("v3", false);
    let s = rolled_back(setup.port, "v3").await;
    assert_eq!(s["last_rollback"]["rule"], "health failing");
    assert_eq!(s["last_rollback"]["returned_to"], "v2");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(arrivals.lock().unwrap().len(), 1, "exactly one call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p95_latency_regression_against_the_baseline_is_rolled_back_once() {
    let (svc, server) = service().await;
    svc.set_delay("v1", 20);
    let (platform, arrivals) = platform(&svc).await;
    let notify = HttpServer::start(|_| Reply::status(200)).await;
    let setup = Setup::new();
    let cfg = setup.config(
        &server,
        &platform,
        &notify,
        "poll_interval = \"250ms\"\nwarmup = \"1s\"\nwatch = \"6s\"",
        r#"[[probe]]
name = "api"
level = 4
type = "http"
url = "{health}"
interval = "100ms"
timeout = "90ms"

[[rule]]
name = "p95 regression"
probe = "api"
when = "p95_ms > 1.5x baseline for 3s"
action = "rollback"
"#,
    );
    let _agent = Agent::start(&cfg, setup.port);
    stable(setup.port, "v1").await;
    // v2 answers in 50 ms where v1 took 20 ms: 2.5 times slower.
    svc.set_delay("v2", 50);
    let s = rolled_back(setup.port, "v2").await;
    assert_eq!(s["last_rollback"]["rule"], "p95 regression");
    let evidence = &s["last_rollback"]["evidence"][0];
    assert_eq!(evidence["signal"], "p95_ms");
    let ratio = evidence["ratio"].as_f64().unwrap();
    assert!(ratio > 1.5, "{evidence:#}");
    assert!(evidence["p_value"].as_f64().unwrap() < 0.01, "{evidence:#}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(arrivals.lock().unwrap().len(), 1, "exactly one call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_leak_reported_by_the_deep_health_body_is_rolled_back_once() {
    // The service reports its memory in its deep health body; v2 leaks.
    let version = Arc::new(Mutex::new(("v1".to_string(), Instant::now())));
    let v = version.clone();
    let server = HttpServer::start(move |r| {
        let (id, since) = v.lock().unwrap().clone();
        let memory_mb = if id == "v2" {
            // 600 MB and growing by 400 MB a second.
            600.0 + 400.0 * since.elapsed().as_secs_f64()
        } else {
            300.0
        };
        match r.path.as_str() {
            "/version" => Reply::json(200, json!({ "version": id })),
            "/health" => Reply::json(200, json!({ "status": "ok", "memory_mb": memory_mb })),
            _ => Reply::status(404),
        }
    })
    .await;
    let back = version.clone();
    let platform = HttpServer::start(move |r| {
        let to = r.json()["return_to"].as_str().unwrap_or("v1").to_string();
        *back.lock().unwrap() = (to, Instant::now());
        Reply::json(200, json!({ "ok": true }))
    })
    .await;
    let notify = HttpServer::start(|_| Reply::status(200)).await;
    let setup = Setup::new();
    let cfg = setup.config(
        &server,
        &platform,
        &notify,
        "poll_interval = \"250ms\"\nwarmup = \"1s\"\nwatch = \"3s\"",
        r#"[[probe]]
name = "deep"
level = 2
type = "http"
url = "{health}"
interval = "200ms"
timeout = "150ms"
signals = { memory_mb = "/memory_mb" }

[[rule]]
name = "memory leak"
probe = "deep"
when = "memory_mb > 1024 for 2s"
action = "rollback"
"#,
    );
    let _agent = Agent::start(&cfg, setup.port);
    stable(setup.port, "v1").await;
    *version.lock().unwrap() = ("v2".to_string(), Instant::now());
    let s = rolled_back(setup.port, "v2").await;
    assert_eq!(s["last_rollback"]["rule"], "memory leak");
    let evidence = &s["last_rollback"]["evidence"][0];
    assert_eq!(evidence["signal"], "memory_mb");
    assert!(
        evidence["observed"].as_f64().unwrap() > 1024.0,
        "{evidence:#}"
    );
    until(setup.port, "v1 again", |s| s["deployment"]["id"] == "v1").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(platform.requests().len(), 1, "exactly one call");
}
