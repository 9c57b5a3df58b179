//! Signals and the configuration file: SIGHUP applies a valid new file and
//! keeps the running configuration when the new one is bad; SIGTERM lets a
//! rollback call in flight finish and be recorded, then stops the agent with
//! exit code 0; a file anyone may write is refused by every command.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop_tests::{closed_port, HttpServer, Reply};

use crate::daemon::{probe, run_cli, Daemon};

fn config(port: u16, state: &std::path::Path, target: &HttpServer, extra: &str) -> String {
    format!(
        r#"[agent]
listen = "127.0.0.1:{port}"
state_dir = "{state}"

[service]
name = "web"

[deployment]
id = "v1"
warmup = "200ms"
watch = "1h"

[[probe]]
name = "health"
level = 1
type = "http"
url = "{url}"
interval = "200ms"
timeout = "150ms"
{extra}
"#,
        state = state.display(),
        url = target.url("/health"),
    )
}

fn extra_probe(target: &HttpServer) -> String {
    format!(
        r#"
[[probe]]
name = "added"
level = 2
type = "http"
url = "{}"
interval = "200ms"
timeout = "150ms"
"#,
        target.url("/added")
    )
}

const ADMIN: &str = "reload-admin-token-0123";

fn names(status: &serde_json::Value) -> Vec<String> {
    status["probes"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_file_and_keeps_the_running_one_when_the_new_is_bad() {
    let target = HttpServer::start(|_| Reply::text(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = closed_port();
    let path = Daemon::write_config(dir.path(), &config(port, &state, &target, ""));
    let agent = Daemon::start(&path, port, "json", &[]);
    agent
        .until("health observed", |s| {
            probe(s, "health")["last"]["outcome"] == "ok"
        })
        .await;

    // A valid new file with one more probe.
    Daemon::write_config(
        dir.path(),
        &config(port, &state, &target, &extra_probe(&target)),
    );
    agent.signal("HUP");
    let s = agent
        .until("the added probe observed", |s| {
            probe(s, "added")["last"]["outcome"] == "ok"
        })
        .await;
    assert_eq!(names(&s), ["health", "added"]);
    assert!(agent.output().contains("configuration reloaded"));

    // A bad file: logged, and the running configuration stays.
    let bad = config(port, &state, &target, &extra_probe(&target)).replace(
        "interval = \"200ms\"\ntimeout = \"150ms\"\n\n[[probe]]",
        "interval = \"10x\"\ntimeout = \"150ms\"\n\n[[probe]]",
    );
    assert!(bad.contains("10x"));
    Daemon::write_config(dir.path(), &bad);
    agent.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.output().contains("rejected") {
        assert!(
            Instant::now() < deadline,
            "no rejection logged:\n{}",
            agent.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = agent.output();
    let line = log
        .lines()
        .find(|l| l.contains("rejected"))
        .unwrap_or_default();
    assert!(line.contains("\"level\":\"ERROR\""), "{line}");
    assert!(line.contains("probe[0].interval"), "names the key: {line}");

    // Both probes still run, and keep running.
    let before = agent.status().await;
    let count = |s: &serde_json::Value| probe(s, "added")["samples"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = agent.status().await;
    assert_eq!(names(&after), ["health", "added"]);
    assert_eq!(probe(&after, "added")["last"]["outcome"], "ok");
    let (a, b) = (count(&before), count(&after));
    assert!(b > a, "the added probe stopped: {a} then {b} samples");
    let (code, _) = agent.get("/healthz").await;
    assert_eq!(code, 200);

    // A file made world-writable is refused on reload as well.
    use std::os::unix::fs::PermissionsExt;
    Daemon::write_config(dir.path(), &config(port, &state, &target, ""));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    agent.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.output().contains("world-writable") {
        assert!(
            Instant::now() < deadline,
            "not refused:\n{}",
            agent.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(names(&agent.status().await), ["health", "added"]);
}

/// Waits (without blocking the runtime) up to `within` for the agent to
/// exit; its exit code, `None` if it is still running or died of a signal.
async fn exit_code(agent: &mut Daemon, within: Duration) -> Option<i32> {
    let mut waited = Duration::ZERO;
    while waited < within {
        if let Some(code) = agent.try_exit() {
            return code;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_rollback_call_finishes_it_records_it_and_exits_0() {
    // Checks are in flight all along: the target answers after their timeout.
    let target = HttpServer::start(|_| Reply::text(200, "ok").after(Duration::from_secs(2))).await;
    // The platform gets SIGTERM sent to the agent the moment it is called,
    // and answers a second later: the call is in flight when the agent is
    // told to stop.
    let pid = Arc::new(AtomicU32::new(0));
    let p = pid.clone();
    let platform = HttpServer::start(move |_| {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &p.load(Ordering::SeqCst).to_string()])
            .status();
        Reply::json(200, serde_json::json!({ "ok": true })).after(Duration::from_secs(1))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let rollback = format!(
        "\n[rollback]\ntarget = \"webhook\"\n  [rollback.webhook]\n  url = \"{}\"\n  timeout = \"3s\"\n",
        platform.url("/rollback")
    );
    let text = config(port, &dir.path().join("state"), &target, &rollback).replace(
        "[service]",
        &format!("admin_token = \"{ADMIN}\"\n\n[service]"),
    );
    let path = Daemon::write_config(dir.path(), &text);
    let mut agent = Daemon::start(&path, port, "human", &[]);
    pid.store(agent.pid(), Ordering::SeqCst);
    agent
        .until("v1 known", |s| s["deployment"]["id"] == "v1")
        .await;
    let ask = reqwest::Client::new()
        .post(agent.url("/v1/rollback"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({ "reason": "sigterm test" }))
        .timeout(Duration::from_secs(30))
        .send();
    let asked = tokio::spawn(ask);

    // A generous wait: the bound itself is the agent's own grace period.
    let code = exit_code(&mut agent, Duration::from_secs(30)).await;
    let out = agent.output();
    assert_eq!(code, Some(0), "exit code after SIGTERM:\n{out}");
    assert!(out.contains("SIGTERM"), "{out}");
    assert!(
        !out.contains("still in flight"),
        "the call was cut short instead of finished:\n{out}"
    );
    assert_eq!(platform.requests().len(), 1);
    let answer = asked.await.unwrap();
    assert!(
        answer.is_ok_and(|r| r.status().is_success()),
        "the admin request was answered before the exit"
    );

    // What the store holds: the finished call, not a leftover intent.
    let again = Daemon::start(&path, port, "human", &[]);
    let s = again
        .until("the rollback record after the restart", |s| {
            !s["last_rollback"].is_null()
        })
        .await;
    let rec = &s["last_rollback"];
    assert_eq!(rec["deployment"], "v1", "{rec:#}");
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    assert_eq!(platform.requests().len(), 1, "no call after the restart");
}

#[test]
fn a_world_writable_configuration_is_refused_by_every_command() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = Daemon::write_config(
        dir.path(),
        &format!(
            "[agent]\nlisten = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\n\n[service]\nname = \"web\"\n",
            closed_port(),
            dir.path().join("state").display()
        ),
    );
    let path = path.to_str().unwrap();
    let (code, out) = run_cli(&["validate", "--config", path], &[]);
    assert_eq!(code, Some(0), "{out}");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
    for command in ["validate", "check", "run"] {
        let (code, out) = run_cli(&[command, "--config", path], &[]);
        assert_eq!(code, Some(2), "{command}: {out}");
        assert!(out.contains("world-writable"), "{command}: {out}");
    }
}
