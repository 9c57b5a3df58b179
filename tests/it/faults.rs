//! Faults, against the real binary and real servers on loopback: targets
//! that fail in every way a network can (no such host, a certificate nobody
//! signed, silence, an endless or huge body, a malformed answer, headers a
//! byte at a time) are each a `failed` probe with a clear reason while the
//! agent stays healthy, small, and rolls nothing back for them; a rollback
//! API that times out, fails, throttles or refuses, and an agent killed in
//! the middle of the call, still make one effective call, never two: after
//! the restart the agent asks the platform whether the call took effect and
//! makes it only if not (a target that cannot be asked is never called
//! again, unless its receiver is declared idempotent); a store
//! that cannot be opened stops the agent at start with exit code 2.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop_tests::{closed_port, read_request_head, HttpServer, RawServer, Reply, TlsServer};
use bytes::Bytes;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::daemon::{probe, Daemon};

/// A bound on the agent's resident memory: it holds bounded windows and
/// reads at most `max_body_bytes` (1 MiB by default) of any body. The bound
/// is below the 50 MB body, so an agent that read it whole could not stay
/// under it (the debug build peaked at 31.5 MiB here).
const MAX_RSS_KIB: u64 = 48 * 1024;

fn kill(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// A server that accepts and reads the request, then never answers.
async fn silent() -> RawServer {
    RawServer::start(|mut s| async move {
        read_request_head(&mut s).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(s);
    })
    .await
}

/// A server whose JSON body never ends.
async fn endless() -> RawServer {
    RawServer::start(|mut s| async move {
        read_request_head(&mut s).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = format!("{:x}\r\n{}\r\n", 65536, "[".repeat(65536));
        while s.write_all(chunk.as_bytes()).await.is_ok() {}
    })
    .await
}

/// A server that answers something that is not HTTP.
async fn malformed() -> RawServer {
    RawServer::start(|mut s| async move {
        read_request_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 two-hundred OK\r\nno colon here\r\n\r\n")
            .await;
        let _ = s.shutdown().await;
    })
    .await
}

/// A server that sends its status line, then a header line now and then,
/// never finishing the head.
async fn slow_headers() -> RawServer {
    RawServer::start(|mut s| async move {
        read_request_head(&mut s).await;
        if s.write_all(b"HTTP/1.1 200 OK\r\n").await.is_err() {
            return;
        }
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if s.write_all(format!("x-slow-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    })
    .await
}

/// A 50 MB JSON document, made once.
fn huge_json() -> Bytes {
    let item = "\"0123456789abcdef0123456789abcdef\",";
    let n = 50 * 1024 * 1024 / item.len();
    let mut s = String::with_capacity(n * item.len() + 32);
    s.push_str("{\"items\":[");
    for _ in 0..n {
        s.push_str(item);
    }
    s.push_str("\"end\"]}");
    Bytes::from(s)
}

fn http_probe(name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[[probe]]
name = "{name}"
level = 2
type = "http"
url = "{url}"
interval = "1s"
timeout = "800ms"
{extra}

[[rule]]
name = "{name} down"
probe = "{name}"
when = "consecutive_failures >= 2"
action = "alert"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_network_fault_is_a_failed_probe_with_its_reason_and_nothing_is_rolled_back() {
    let service = HttpServer::start(|_| Reply::text(200, "ok")).await;
    let body = huge_json();
    let huge = HttpServer::start(move |_| Reply {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.clone(),
        delay: Duration::ZERO,
    })
    .await;
    let platform = HttpServer::start(|_| Reply::json(200, json!({ "ok": true }))).await;
    let tls = TlsServer::start().await;
    let (silent, endless, malformed, slow) = (
        silent().await,
        endless().await,
        malformed().await,
        slow_headers().await,
    );

    let dir = tempfile::tempdir().unwrap();
    let id_file = dir.path().join("release");
    std::fs::write(&id_file, "v1").unwrap();
    let port = closed_port();
    let read_body = r#"expect_body = [{ pointer = "/items" }]"#;
    // (probe, URL, extra settings, what its reason must say)
    let cases = [
        (
            "dns",
            "http://backstop-fault-test.invalid/health".to_string(),
            "",
            &["resolve backstop-fault-test.invalid"][..],
        ),
        (
            "tls",
            tls.url("/health"),
            "",
            &["tls handshake", "certificate"][..],
        ),
        ("silent", silent.url("/health"), "", &["800ms"][..]),
        (
            "endless",
            endless.url("/health"),
            read_body,
            &["max_body_bytes"][..],
        ),
        (
            "malformed",
            malformed.url("/health"),
            "",
            &["malformed response"][..],
        ),
        (
            "huge",
            huge.url("/health"),
            read_body,
            &["max_body_bytes"][..],
        ),
        ("slow-headers", slow.url("/health"), "", &["800ms"][..]),
    ];
    let probes: String = cases
        .iter()
        .map(|(name, url, extra, _)| http_probe(name, url, extra))
        .collect();
    let text = format!(
        r#"[agent]
listen = "127.0.0.1:{port}"
state_dir = "{state}"

[service]
name = "web"

[deployment]
id_file = "{id_file}"
poll_interval = "200ms"
warmup = "500ms"
watch = "6s"

[[probe]]
name = "health"
level = 1
type = "http"
url = "{health}"
interval = "1s"
timeout = "800ms"
critical = true
{probes}
[rollback]
target = "webhook"
cooldown = "1s"
  [rollback.webhook]
  url = "{hook}"
"#,
        state = dir.path().join("state").display(),
        id_file = id_file.display(),
        health = service.url("/health"),
        hook = platform.url("/rollback"),
    );
    let path = Daemon::write_config(dir.path(), &text);
    let agent = Daemon::start(&path, port, "json", &[]);

    // v1 becomes the stable deployment to return to, and v2 is watched:
    // every rollback guard but the rules themselves is open.
    agent
        .until("v1 stable", |s| s["deployment"]["state"] == "stable")
        .await;
    std::fs::write(&id_file, "v2").unwrap();
    let peak = std::cell::Cell::new(0);
    let status = agent
        .until(
            "every faulty probe failed three times while v2 is watched",
            |s| {
                peak.set(peak.get().max(agent.rss_kib()));
                s["deployment"]["id"] == "v2"
                    && s["deployment"]["state"] == "watching"
                    && cases.iter().all(|(name, ..)| {
                        probe(s, name)["consecutive_failures"].as_u64().unwrap_or(0) >= 3
                    })
            },
        )
        .await;
    for (name, _, _, words) in &cases {
        let last = &probe(&status, name)["last"];
        assert_eq!(last["outcome"], "failed", "{name}: {last:#}");
        let reason = last["error"].as_str().unwrap_or_default();
        assert!(
            words.iter().all(|w| reason.contains(w)),
            "{name}: the reason {reason:?} does not say {words:?}"
        );
    }
    // A few more rounds of every fault, memory watched all along.
    let mut peak = peak.get();
    for _ in 0..20 {
        peak = peak.max(agent.rss_kib());
        let (code, _) = agent.get("/healthz").await;
        assert_eq!(code, 200, "/healthz while the targets misbehave");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        peak < MAX_RSS_KIB,
        "the agent's RSS reached {peak} KiB (bound {MAX_RSS_KIB} KiB)"
    );
    let status = agent.status().await;
    assert_ne!(status["deployment"]["state"], "rolled_back", "{status:#}");
    assert!(
        platform.requests().is_empty(),
        "faults of dependencies under alert rules rolled back: {:?}",
        platform.requests()
    );
}

/// An agent with a fixed deployment, a webhook rollback target at `hook`
/// and an admin token, so a rollback can be asked for.
fn rollback_config(dir: &std::path::Path, port: u16, hook: &str, timeout: &str) -> String {
    agent_config(
        dir,
        port,
        "v2",
        &format!(
            r#"[rollback]
target = "webhook"
deadline = "4s"
  [rollback.webhook]
  url = "{hook}"
  timeout = "{timeout}"
"#
        ),
    )
}

/// An agent on the fixed deployment `deployment`, with an admin token and
/// the `[rollback]` section `rollback`.
fn agent_config(dir: &std::path::Path, port: u16, deployment: &str, rollback: &str) -> String {
    format!(
        r#"[agent]
listen = "127.0.0.1:{port}"
state_dir = "{state}"
admin_token = "{ADMIN}"

[service]
name = "web"

[deployment]
id = "{deployment}"
warmup = "100ms"
watch = "1h"

{rollback}"#,
        state = dir.join("state").display(),
    )
}

const ADMIN: &str = "faults-admin-token-0123";

/// Asks for a manual rollback; the answer comes once the call is over.
async fn ask_rollback(agent_url: String) -> Option<serde_json::Value> {
    let r = reqwest::Client::new()
        .post(agent_url)
        .bearer_auth(ADMIN)
        .json(&json!({ "reason": "fault test" }))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// Runs one rollback through a platform stand-in answering with `answers`
/// in turn (the last one repeated); returns the agent's final record, the
/// calls and when each came.
async fn rollback_through(
    answers: Vec<Reply>,
    timeout: &str,
) -> (serde_json::Value, Vec<Instant>, Daemon, tempfile::TempDir) {
    let times = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = times.clone();
    let answers = Arc::new(std::sync::Mutex::new(answers));
    let platform = HttpServer::start(move |_| {
        seen.lock().unwrap().push(Instant::now());
        let mut a = answers.lock().unwrap();
        if a.len() > 1 {
            a.remove(0)
        } else {
            a[0].clone_reply()
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let path = Daemon::write_config(
        dir.path(),
        &rollback_config(dir.path(), port, &platform.url("/rollback"), timeout),
    );
    let agent = Daemon::start(&path, port, "json", &[]);
    agent
        .until("v2 known", |s| s["deployment"]["id"] == "v2")
        .await;
    ask_rollback(agent.url("/v1/rollback")).await;
    let status = agent
        .until("the rollback finished", |s| {
            matches!(
                s["last_rollback"]["status"].as_str(),
                Some("succeeded" | "failed")
            )
        })
        .await;
    // Nothing more is called afterwards, whatever the outcome.
    let calls = times.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = ask_rollback(agent.url("/v1/rollback")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = times.lock().unwrap().clone();
    assert_eq!(after.len(), calls, "calls after the rollback finished");
    assert!(
        again
            .as_ref()
            .is_some_and(|a| a.to_string().contains("already")),
        "a second request is refused: {again:?}"
    );
    drop(platform);
    (status["last_rollback"].clone(), after, agent, dir)
}

trait CloneReply {
    fn clone_reply(&self) -> Reply;
}

impl CloneReply for Reply {
    fn clone_reply(&self) -> Reply {
        Reply {
            status: self.status,
            headers: self.headers.clone(),
            body: self.body.clone(),
            delay: self.delay,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_answering_5xx_is_retried_until_it_accepts_once() {
    let (rec, calls, ..) = rollback_through(
        vec![
            Reply::text(502, "bad gateway"),
            Reply::text(503, "unavailable"),
            Reply::json(200, json!({ "ok": true })),
        ],
        "2s",
    )
    .await;
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    assert_eq!(calls.len(), 3, "two failures then one accepted call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_that_times_out_is_retried_and_accepts_once() {
    let (rec, calls, ..) = rollback_through(
        vec![
            Reply::json(200, json!({ "late": true })).after(Duration::from_secs(3)),
            Reply::json(200, json!({ "ok": true })),
        ],
        "500ms",
    )
    .await;
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    assert_eq!(calls.len(), 2, "{rec:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_answering_429_is_called_again_only_after_retry_after() {
    let (rec, calls, ..) = rollback_through(
        vec![
            Reply::text(429, "slow down").header("retry-after", "2"),
            Reply::json(200, json!({ "ok": true })),
        ],
        "2s",
    )
    .await;
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    assert_eq!(calls.len(), 2);
    let waited = calls[1] - calls[0];
    assert!(
        waited >= Duration::from_millis(1900),
        "called again after {waited:?}, Retry-After said 2s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_that_always_fails_ends_in_a_failed_record_and_no_more_calls() {
    let (rec, calls, ..) = rollback_through(vec![Reply::text(500, "boom")], "1s").await;
    assert_eq!(rec["status"], "failed", "{rec:#}");
    assert!(calls.len() >= 2, "5xx is retried within the deadline");
    assert!(
        rec["detail"].as_str().unwrap_or_default().contains("500"),
        "{rec:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_refusing_connections_ends_in_a_failed_record() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let hook = format!("http://127.0.0.1:{}/rollback", closed_port());
    let path = Daemon::write_config(dir.path(), &rollback_config(dir.path(), port, &hook, "1s"));
    let agent = Daemon::start(&path, port, "human", &[]);
    agent
        .until("v2 known", |s| s["deployment"]["id"] == "v2")
        .await;
    ask_rollback(agent.url("/v1/rollback")).await;
    let s = agent
        .until("the rollback failed", |s| {
            s["last_rollback"]["status"] == "failed"
        })
        .await;
    let detail = s["last_rollback"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("connect") || detail.contains("refused"),
        "{s:#}"
    );
    let (code, _) = agent.get("/healthz").await;
    assert_eq!(code, 200);
}

/// Starts the agent of `path`, waits until it knows `deployment`, asks it
/// for a rollback, and waits until the platform's stand-in has killed it
/// (with SIGKILL, reading the agent's pid from `pid`).
async fn ask_and_be_killed(path: &std::path::Path, port: u16, deployment: &str, pid: &AtomicU32) {
    let mut agent = Daemon::start(path, port, "json", &[]);
    pid.store(agent.pid(), Ordering::SeqCst);
    agent
        .until("the deployment known", |s| {
            s["deployment"]["id"] == deployment
        })
        .await;
    tokio::spawn(ask_rollback(agent.url("/v1/rollback")));
    assert_eq!(
        agent.wait_exit(Duration::from_secs(10)),
        None,
        "killed by a signal"
    );
}

/// After the restart: another request is refused as already recorded, and
/// the platform has had `expected` rollback calls in all, two seconds on.
async fn no_second_call(again: &Daemon, calls: impl Fn() -> u32, expected: u32) {
    let answer = ask_rollback(again.url("/v1/rollback")).await;
    assert!(
        answer
            .as_ref()
            .is_some_and(|a| a.to_string().contains("already")),
        "{answer:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        calls(),
        expected,
        "rollback calls in all, after the restart"
    );
}

/// Kills the agent with SIGKILL at the moment `platform` decides, starts it
/// again on the same store, and checks the leftover intent is reported and
/// never called again.
async fn killed_during_the_call(kill_when_answered: bool) {
    let pid = Arc::new(AtomicU32::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let (p, c) = (pid.clone(), calls.clone());
    let platform = HttpServer::start(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        let pid = p.load(Ordering::SeqCst);
        if kill_when_answered {
            // The answer is on its way when the agent dies.
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                kill(pid);
            });
            Reply::json(200, json!({ "ok": true }))
        } else {
            // The platform got the call; the agent dies before any answer.
            kill(pid);
            Reply::json(200, json!({ "ok": true })).after(Duration::from_millis(200))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let path = Daemon::write_config(
        dir.path(),
        &rollback_config(dir.path(), port, &platform.url("/rollback"), "2s"),
    );
    ask_and_be_killed(&path, port, "v2", &pid).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let again = Daemon::start(&path, port, "json", &[]);
    let s = again
        .until("the rollback record after the restart", |s| {
            s["deployment"]["id"] == "v2" && !s["last_rollback"].is_null()
        })
        .await;
    let rec = &s["last_rollback"];
    assert!(
        matches!(rec["status"].as_str(), Some("failed" | "succeeded")),
        "{rec:#}"
    );
    if rec["status"] == "failed" {
        assert!(
            rec["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("will not call again"),
            "{rec:#}"
        );
    }
    no_second_call(&again, || calls.load(Ordering::SeqCst), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_while_the_platform_handles_the_call_never_calls_again() {
    killed_during_the_call(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_right_after_the_call_was_answered_never_calls_again() {
    killed_during_the_call(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_after_recording_the_intent_for_a_webhook_reports_it_and_makes_no_call() {
    // The platform's connection is accepted — the intent is in the store by
    // then — and the agent dies before a byte of the request is read.
    let pid = Arc::new(AtomicU32::new(0));
    let p = pid.clone();
    let platform = RawServer::start(move |s| {
        kill(p.load(Ordering::SeqCst));
        async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let path = Daemon::write_config(
        dir.path(),
        &rollback_config(dir.path(), port, &platform.url("/rollback"), "2s"),
    );
    ask_and_be_killed(&path, port, "v2", &pid).await;
    assert_eq!(platform.connections(), 1);

    let again = Daemon::start(&path, port, "json", &[]);
    let s = again
        .until("the leftover intent reported", |s| {
            s["last_rollback"]["status"] == "failed"
        })
        .await;
    assert_eq!(s["last_rollback"]["deployment"], "v2");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(platform.connections(), 1, "no call after the restart");
    assert!(
        again.output().contains("will not call again"),
        "the leftover intent is logged:\n{}",
        again.output()
    );
}

/// A Railway stand-in that keeps its state: the rollback mutation puts a
/// new deployment on top of the list, as Railway does. The agent, on
/// deployment `dep-new`, is killed once: at its first listing (the intent
/// is recorded, the rollback call not yet sent) or once the mutation has
/// reached the platform, before its answer. Started again on the same store, it must leave
/// exactly one mutation made, and say so.
async fn railway_killed(at_the_mutation: bool) {
    let pid = Arc::new(AtomicU32::new(0));
    let mutations = Arc::new(AtomicU32::new(0));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p, m, k) = (pid.clone(), mutations.clone(), killed.clone());
    let platform = HttpServer::start(move |r| {
        let query = r.json()["query"].as_str().unwrap_or_default().to_string();
        let mutation = query.contains("deploymentRollback");
        if mutation {
            m.fetch_add(1, Ordering::SeqCst);
        }
        let kill_now = mutation == at_the_mutation && !k.swap(true, Ordering::SeqCst);
        if kill_now {
            // The platform has the request (and, for the mutation, has
            // acted on it); the agent dies before any answer.
            kill(p.load(Ordering::SeqCst));
        }
        let node = |id: &str, status: &str, can: bool| json!({"node": {"id": id, "status": status, "createdAt": "2026-11-01T00:00:00Z", "canRollback": can}});
        let reply = if mutation {
            Reply::json(200, json!({"data": {"deploymentRollback": true}}))
        } else {
            let mut edges = vec![
                node("dep-new", "SUCCESS", true),
                node("dep-good", "REMOVED", true),
            ];
            if m.load(Ordering::SeqCst) > 0 {
                edges.insert(0, node("dep-rolled-back", "DEPLOYING", false));
            }
            Reply::json(200, json!({"data": {"deployments": {"edges": edges}}}))
        };
        if kill_now {
            reply.after(Duration::from_millis(500))
        } else {
            reply
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let config = agent_config(
        dir.path(),
        port,
        "dep-new",
        &format!(
            r#"[rollback]
target = "railway"
deadline = "4s"
  [rollback.railway]
  token = "railway-fault-token-0123"
  project_id = "prj-1"
  service_id = "svc-1"
  environment_id = "env-1"
  api_url = "{}"
  timeout = "2s"
"#,
            platform.url("/graphql/v2")
        ),
    );
    let path = Daemon::write_config(dir.path(), &config);
    ask_and_be_killed(&path, port, "dep-new", &pid).await;
    assert_eq!(
        mutations.load(Ordering::SeqCst),
        u32::from(at_the_mutation),
        "mutations before the restart"
    );

    let again = Daemon::start(&path, port, "json", &[]);
    let s = again
        .until("the rollback settled after the restart", |s| {
            s["deployment"]["id"] == "dep-new"
                && matches!(
                    s["last_rollback"]["status"].as_str(),
                    Some("succeeded" | "failed")
                )
        })
        .await;
    let rec = &s["last_rollback"];
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    let detail = rec["detail"].as_str().unwrap_or_default();
    if at_the_mutation {
        assert!(
            detail.contains("took effect") && detail.contains("dep-rolled-back"),
            "{rec:#}"
        );
    } else {
        assert!(
            detail.contains("rolling back to deployment dep-good"),
            "{rec:#}"
        );
    }
    no_second_call(&again, || mutations.load(Ordering::SeqCst), 1).await;
    assert!(
        !again.output().contains("railway-fault-token-0123"),
        "the token shows in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_before_its_call_left_makes_the_one_call_after_the_restart() {
    railway_killed(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_after_its_call_reached_the_platform_finds_it_done_after_the_restart() {
    railway_killed(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_webhook_gets_the_interrupted_call_again_with_the_same_key() {
    let pid = Arc::new(AtomicU32::new(0));
    let keys = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (p, seen) = (pid.clone(), keys.clone());
    let platform = HttpServer::start(move |r| {
        let mut keys = seen.lock().unwrap();
        keys.push(r.header("idempotency-key").unwrap_or_default().to_string());
        if keys.len() == 1 {
            // The receiver got the call; the agent dies before any answer.
            kill(p.load(Ordering::SeqCst));
            return Reply::json(200, json!({ "ok": true })).after(Duration::from_millis(200));
        }
        Reply::json(200, json!({ "ok": true }))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let config = rollback_config(dir.path(), port, &platform.url("/rollback"), "2s")
        + "  idempotent = true\n";
    let path = Daemon::write_config(dir.path(), &config);
    ask_and_be_killed(&path, port, "v2", &pid).await;

    let again = Daemon::start(&path, port, "json", &[]);
    let s = again
        .until("the call sent again", |s| {
            s["last_rollback"]["status"] == "succeeded"
        })
        .await;
    assert_eq!(s["last_rollback"]["deployment"], "v2");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let keys = keys.lock().unwrap().clone();
    // Two deliveries of one rollback: the receiver, idempotent by
    // configuration, counts one.
    assert_eq!(keys, ["web:v2", "web:v2"]);
}

#[test]
fn a_state_dir_that_cannot_be_created_stops_the_agent_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where a directory is needed: refused even for root.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let port = closed_port();
    let text = format!(
        "[agent]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n\n[service]\nname = \"web\"\n",
        blocker.join("state").display()
    );
    let path = Daemon::write_config(dir.path(), &text);
    let mut agent = Daemon::spawn(&path, port, "human", &[], "");
    let code = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(2), "{}", agent.output());
    let out = agent.output();
    assert!(out.contains("not-a-dir"), "names the state dir:\n{out}");
}

#[test]
fn a_second_agent_on_the_same_state_dir_stops_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = |name: &str, port: u16| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let text = format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n\n[service]\nname = \"web\"\n",
            state.display()
        );
        Daemon::write_config(&d, &text)
    };
    let first_port = closed_port();
    let _first = Daemon::start(&config("a", first_port), first_port, "human", &[]);
    let port = closed_port();
    let mut second = Daemon::spawn(&config("b", port), port, "human", &[], "");
    let code = second.wait_exit(Duration::from_secs(10));
    let out = second.output();
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.to_lowercase().contains("another") || out.contains("lock") || out.contains("in use"),
        "says the store is held:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_and_redis_down_during_a_watch_are_failed_probes_and_roll_nothing_back()
{
    let pg = backstop_tests::PostgresServer::start();
    let mut redis = backstop_tests::RedisServer::start();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h = healthy.clone();
    let service = HttpServer::start(move |_| {
        if h.load(Ordering::SeqCst) {
            Reply::text(200, "ok")
        } else {
            Reply::text(503, "down")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let id_file = dir.path().join("release");
    std::fs::write(&id_file, "v1").unwrap();
    // The platform puts v1 back, as a real one would.
    let back = id_file.clone();
    let platform = HttpServer::start(move |_| {
        std::fs::write(&back, "v1").unwrap();
        Reply::json(200, json!({ "ok": true }))
    })
    .await;
    let port = closed_port();
    // The database's default rule rolls back when it is unreachable; here
    // the operator's rule of the same name only alerts. The health probe
    // keeps its default rule (three failures running roll back).
    let text = format!(
        r#"[agent]
listen = "127.0.0.1:{port}"
state_dir = "{state}"

[service]
name = "web"

[deployment]
id_file = "{id_file}"
poll_interval = "200ms"
warmup = "500ms"
watch = "20s"

[[probe]]
name = "health"
level = 1
type = "http"
url = "{health}"
interval = "300ms"
timeout = "250ms"
critical = true

[[probe]]
name = "db"
level = 2
type = "postgres"
url = "{pg}"
interval = "500ms"
timeout = "400ms"

[[probe]]
name = "cache"
level = 2
type = "redis"
url = "{redis}"
interval = "500ms"
timeout = "400ms"

[[rule]]
name = "db unreachable"
probe = "db"
when = "consecutive_failures >= 3"
action = "alert"

[rollback]
target = "webhook"
cooldown = "1s"
  [rollback.webhook]
  url = "{hook}"
"#,
        state = dir.path().join("state").display(),
        id_file = id_file.display(),
        health = service.url("/health"),
        pg = pg.url(),
        redis = redis.url(),
        hook = platform.url("/rollback"),
    );
    let path = Daemon::write_config(dir.path(), &text);
    let agent = Daemon::start(&path, port, "json", &[]);
    agent
        .until("v1 stable", |s| s["deployment"]["state"] == "stable")
        .await;
    std::fs::write(&id_file, "v2").unwrap();
    agent
        .until("v2 watched, its dependencies up", |s| {
            s["deployment"]["id"] == "v2"
                && s["deployment"]["state"] == "watching"
                && probe(s, "db")["last"]["outcome"] == "ok"
                && probe(s, "cache")["last"]["outcome"] == "ok"
        })
        .await;

    pg.stop();
    redis.stop();
    let failing = |s: &serde_json::Value, name: &str| {
        probe(s, name)["consecutive_failures"].as_u64().unwrap_or(0) >= 3
    };
    let s = agent
        .until("both dependencies failed three times", |s| {
            failing(s, "db") && failing(s, "cache")
        })
        .await;
    for (name, port, password) in [
        ("db", pg.port, "throwaway-pg-pw"),
        ("cache", redis.port, redis.password.as_str()),
    ] {
        let last = &probe(&s, name)["last"];
        assert_eq!(last["outcome"], "failed", "{name}: {last:#}");
        let reason = last["error"].as_str().unwrap_or_default();
        assert!(
            reason.contains(&port.to_string())
                || reason.contains("connect")
                || reason.contains("closed"),
            "{name}: the reason {reason:?} does not say what failed"
        );
        assert!(!reason.contains(password), "{name}: {reason}");
    }
    assert_eq!(
        agent.get("/healthz").await.0,
        200,
        "/healthz with both down"
    );

    pg.start_again();
    let _redis_again = backstop_tests::RedisServer::start_on(redis.port);
    let s = agent
        .until("both dependencies back", |s| {
            probe(s, "db")["last"]["outcome"] == "ok"
                && probe(s, "cache")["last"]["outcome"] == "ok"
        })
        .await;
    assert_eq!(
        s["deployment"]["state"], "watching",
        "all of it during the watch: {s:#}"
    );
    assert!(s["last_rollback"].is_null(), "{s:#}");
    assert!(
        platform.requests().is_empty(),
        "dependencies under alert rules rolled back: {:?}",
        platform.requests()
    );
    assert_eq!(agent.get("/healthz").await.0, 200);

    // The guard rails were open all along: the service's own rule does
    // roll back, once.
    healthy.store(false, Ordering::SeqCst);
    let s = agent
        .until("the service's rule rolled back", |s| {
            s["last_rollback"]["status"] == "succeeded"
        })
        .await;
    assert_eq!(s["last_rollback"]["deployment"], "v2", "{s:#}");
    assert_eq!(platform.requests().len(), 1);
}
