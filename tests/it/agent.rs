//! The running agent as Prometheus and operators see it: `/healthz`,
//! `/status`, `/metrics` (checked by `promtool`) and the admin endpoints.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use backstop_tests::{backstop_bin, closed_port, wait_for_port, HttpServer, Reply};

struct Agent {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(extra_agent: &str, probes: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = closed_port();
        let config = dir.path().join("backstop.toml");
        std::fs::write(
            &config,
            format!(
                r#"[agent]
listen = "127.0.0.1:{port}"
state_dir = "{state}"
{extra_agent}

[service]
name = "web"

[deployment]
id = "v1"
warmup = "1s"
watch = "1h"

{probes}
"#,
                state = dir.path().join("state").display()
            ),
        )
        .unwrap();
        let child = Command::new(backstop_bin())
            .args(["run", "--log-format", "json", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port);
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn probes(target: &HttpServer) -> String {
    format!(
        r#"
[[probe]]
name = "health"
level = 1
type = "http"
url = "{}"
interval = "200ms"
timeout = "150ms"
critical = true

[[probe]]
name = "port"
level = 1
type = "tcp"
address = "127.0.0.1:{}"
interval = "200ms"
timeout = "150ms"
"#,
        target.url("/health"),
        closed_port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_the_spec_names_and_pass_promtool() {
    let target = HttpServer::start(|_| Reply::text(200, "ok")).await;
    let agent = Agent::start("", &probes(&target));
    let client = reqwest::Client::new();
    let mut text = String::new();
    let url = agent.url("/metrics");
    for _ in 0..100 {
        text = client.get(&url).send().await.unwrap().text().await.unwrap();
        if text.contains(r#"outcome="failed"} 2"#) && text.contains("backstop_deployment_info") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for name in [
        "backstop_probe_up",
        "backstop_probe_duration_seconds_bucket",
        "backstop_probe_checks_total",
        "backstop_probe_consecutive_failures",
        "backstop_deployment_info",
        "backstop_build_info",
    ] {
        assert!(
            text.contains(&format!("# HELP {}", name.trim_end_matches("_bucket"))),
            "no HELP for {name}:\n{text}"
        );
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(
        text.contains(r#"backstop_probe_up{probe="health",level="1",type="http"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"backstop_probe_up{probe="port",level="1",type="tcp"} 0"#),
        "{text}"
    );
    assert!(
        !text.contains("127.0.0.1"),
        "a URL leaked into a label:\n{text}"
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (from Debian's prometheus package; tests/run.sh installs it)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_deployment_and_every_probe() {
    let target = HttpServer::start(|_| Reply::text(503, "down")).await;
    let agent = Agent::start("", &probes(&target));
    let client = reqwest::Client::new();
    let mut doc = serde_json::Value::Null;
    let url = agent.url("/status");
    for _ in 0..100 {
        doc = client.get(&url).send().await.unwrap().json().await.unwrap();
        if doc["probes"][0]["consecutive_failures"].as_u64() >= Some(2)
            && doc["deployment"]["state"] == "watching"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(doc["service"], "web");
    assert_eq!(doc["deployment"]["id"], "v1");
    assert_eq!(doc["deployment"]["state"], "watching");
    let health = &doc["probes"][0];
    assert_eq!(health["name"], "health");
    assert_eq!(health["last"]["outcome"], "failed");
    assert!(health["last"]["error"].as_str().unwrap().contains("503"));
    assert!(health["consecutive_failures"].as_u64().unwrap() >= 2);
    let healthz = client.get(agent.url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_are_absent_without_a_token_and_guarded_with_one() {
    let target = HttpServer::start(|_| Reply::text(200, "ok")).await;
    let client = reqwest::Client::new();
    {
        let agent = Agent::start("", &probes(&target));
        for path in ["/v1/pause", "/v1/resume", "/v1/rollback"] {
            let r = client.post(agent.url(path)).send().await.unwrap();
            assert_eq!(r.status(), 404, "{path} without a configured token");
        }
    }
    let token = "a-long-enough-admin-token";
    let agent = Agent::start(&format!("admin_token = \"{token}\""), &probes(&target));
    for auth in [None, Some("Bearer wrong-token-of-some-length"), Some(token)] {
        let mut req = client.post(agent.url("/v1/pause"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        assert_eq!(req.send().await.unwrap().status(), 401, "{auth:?}");
    }
    let r = client
        .post(agent.url("/v1/pause"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let status: serde_json::Value = client
        .get(agent.url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["paused"], true);
    let r = client
        .post(agent.url("/v1/rollback"))
        .bearer_auth(token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a manual rollback needs a reason");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_agent_cleanly_with_exit_code_0() {
    let target = HttpServer::start(|_| Reply::text(200, "ok")).await;
    let mut agent = Agent::start("", &probes(&target));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = agent.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut code = None;
    for _ in 0..100 {
        if let Some(status) = agent.child.try_wait().unwrap() {
            code = status.code();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        code,
        Some(0),
        "the agent did not exit 0 within 10s of SIGTERM"
    );
}
