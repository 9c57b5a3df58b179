//! Signals and the configuration file: SIGHUP applies a valid new file and
//! keeps the running configuration when the new one is bad; SIGTERM stops
//! the agent with exit code 0 quickly; a file anyone may write is refused by
//! every command.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_checks_exits_0_within_5_seconds() {
    // A target slower than the timeout keeps checks in flight.
    let target = HttpServer::start(|_| Reply::text(200, "ok").after(Duration::from_secs(2))).await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let path = Daemon::write_config(
        dir.path(),
        &config(port, &dir.path().join("state"), &target, ""),
    );
    let mut agent = Daemon::start(&path, port, "human", &[]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let start = Instant::now();
    agent.signal("TERM");
    let code = agent.wait_exit(Duration::from_secs(5));
    assert_eq!(
        code,
        Some(0),
        "exit within 5s of SIGTERM:\n{}",
        agent.output()
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(agent.output().contains("SIGTERM"));
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
