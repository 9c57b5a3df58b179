//! An outage of the PostgreSQL `[store]` never slows the watch: one agent —
//! the real binary — keeps its state in the test server through a proxy
//! that falls silent (a partition) or refuses connections while a bad
//! deployment arrives. The agent answers within a second throughout, sees
//! the deployment at the pace of its poll, ends its warm-up and its watch
//! on time, makes no rollback call while the store cannot record the claim,
//! ends the watch with the deployment `unhealthy` (never stable, never the
//! baseline), and makes exactly one call once the store answers again.
//! Also: an agent restarted while its deployment is `unhealthy` resumes it
//! as `unhealthy`.

use std::time::{Duration, Instant};

use backstop_tests::{closed_port, postgres_url, HttpServer, Reply};
use serde_json::{json, Value};

use crate::e2e::{config_with, service, status, until, Agent, Service};
use crate::proxy::{answers_within_a_second, Fault, Proxy};

/// `[deployment]` of `config_with`: the id is read every 200 ms, the
/// warm-up lasts 1 s; the watch is given below.
const WARMUP: Duration = Duration::from_secs(1);
const WATCH: Duration = Duration::from_secs(3);
/// `[store] timeout`: a step that waited for the silent store would take
/// this long.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// A schema no other test uses.
fn unique_schema(stem: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("t_outage_{stem}_{}_{n}", std::process::id())
}

/// A platform whose rollbacks return the service to the deployment asked
/// for, healthy; it counts the calls (`requests`).
async fn platform(svc: &Service) -> HttpServer {
    let switch = svc.clone();
    HttpServer::start(move |r| {
        let to = r.json()["return_to"].as_str().unwrap_or("v1").to_string();
        switch.set(&to, true);
        Reply::json(200, json!({ "ok": true }))
    })
    .await
}

async fn metrics(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// v1 becomes stable with the store healthy; then the store fails
/// (`fault`) and v2 is deployed, its health answering 503, so the default
/// rule `health failing` holds on it. v2's watch ends while the store
/// still fails; then the store heals.
async fn a_bad_deployment_during_a_store_outage(fault: Fault) {
    let upstream = url::Url::parse(&postgres_url()).unwrap();
    let proxy = Proxy::start(upstream.port().expect("the test server's port")).await;
    let mut via = upstream.clone();
    via.set_port(Some(proxy.port)).unwrap();
    let (svc, server) = service().await;
    let platform = platform(&svc).await;
    let port = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\nurl = \"{via}\"\nschema = \"{}\"\ntimeout = \"{}s\"\n",
        unique_schema(match fault {
            Fault::Silent => "silent",
            Fault::Refused => "refused",
        }),
        STORE_TIMEOUT.as_secs()
    );
    let cfg = config_with(
        dir.path(),
        port,
        &server,
        &platform,
        &format!("{}s", WATCH.as_secs()),
        &store,
    );
    let _agent = Agent::start(&cfg, port);
    until(port, "v1 stable", |s| {
        s["deployment"]["id"] == "v1" && s["deployment"]["state"] == "stable"
    })
    .await;

    proxy.fail(fault).await;
    let switched = Instant::now();
    svc.set("v2", false);

    // Every 200 ms until v2's watch is over (a generous bound: the loop
    // ends as soon as v2 is unhealthy): the agent answers within a second,
    // calls nothing, and never takes v2 for stable nor for the baseline.
    let mut seen = None;
    let mut watching = false;
    let mut last = Value::Null;
    while switched.elapsed() < WARMUP + WATCH + Duration::from_secs(10) {
        answers_within_a_second(port, "the agent").await;
        let s = status(port).await;
        assert!(
            platform.requests().is_empty(),
            "no rollback call while the store is {fault}: {s:#}"
        );
        assert_eq!(s["last_stable"], "v1", "{s:#}");
        assert_eq!(s["baseline"]["deployment"], "v1", "{s:#}");
        if s["deployment"]["id"] == "v2" {
            seen.get_or_insert(switched.elapsed());
            let state = &s["deployment"]["state"];
            assert!(
                state != "stable" && state != "rolled_back",
                "v2 while the store is {fault}: {s:#}"
            );
            watching |= state == "watching";
        }
        let unhealthy = s["deployment"]["id"] == "v2" && s["deployment"]["state"] == "unhealthy";
        last = s;
        if unhealthy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Seen at the pace of the poll: sooner than a single wait for the
    // store could end, so nothing on the way waited for it.
    let seen = seen.unwrap_or_else(|| {
        panic!("v2 was never seen while the store is {fault}; last /status: {last:#}")
    });
    assert!(
        seen < STORE_TIMEOUT,
        "v2 seen {seen:?} after the switch (the id is read every 200 ms; the store's timeout is {STORE_TIMEOUT:?})"
    );
    assert!(
        watching,
        "v2's warm-up ended while the store is {fault}: it was `watching` before its watch ended; last /status: {last:#}"
    );
    assert_eq!(
        last["deployment"]["state"], "unhealthy",
        "v2's watch is over with its rollback rule holding and the store {fault}: {last:#}"
    );

    // Still failing, a while longer: v2 stays unhealthy, no call, the
    // store is reported down.
    let until_then = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until_then {
        answers_within_a_second(port, "the agent").await;
        let s = status(port).await;
        assert_eq!(s["deployment"]["id"], "v2", "{s:#}");
        assert_eq!(s["deployment"]["state"], "unhealthy", "{s:#}");
        assert_eq!(s["last_stable"], "v1", "{s:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        platform.requests().is_empty(),
        "no rollback call while the store is {fault}"
    );
    let m = metrics(port).await;
    assert!(
        m.lines().any(|l| l == "backstop_store_up 0"),
        "the store is reported down:\n{m}"
    );

    // It heals: the rule still holds on v2, and it is rolled back once.
    proxy.heal().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while platform.requests().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls = platform.requests();
    assert_eq!(
        calls.len(),
        1,
        "one rollback call within 30 s of the store answering again; last /status: {:#}",
        status(port).await
    );
    let body = calls[0].json();
    assert_eq!(body["deployment"], "v2", "{body}");
    assert_eq!(body["return_to"], "v1", "{body}");
    // The claim (`intent`) is written before the call and its outcome
    // after it, so /status may show the call in flight for a moment.
    let s = until(port, "v2's rollback shown with its outcome", |s| {
        s["last_rollback"]["deployment"] == "v2" && s["last_rollback"]["status"] != "intent"
    })
    .await;
    assert_eq!(s["last_rollback"]["status"], "succeeded", "{s:#}");
    assert_eq!(s["last_rollback"]["returned_to"], "v1", "{s:#}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(platform.requests().len(), 1, "still exactly one call");
    let s = status(port).await;
    assert_eq!(s["deployment"]["id"], "v1", "back on v1: {s:#}");
    assert_eq!(s["last_stable"], "v1", "{s:#}");
    // The writes queued during the outage are retried with a backoff of
    // up to 5 s each: the store is reported up once the first is taken.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut m = metrics(port).await;
    while !m.lines().any(|l| l == "backstop_store_up 1") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        m = metrics(port).await;
    }
    assert!(
        m.lines().any(|l| l == "backstop_store_up 1"),
        "the store is reported up again:\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_silent_during_a_bad_deployment_the_watch_keeps_its_pace_it_ends_unhealthy_then_is_rolled_back_once(
) {
    a_bad_deployment_during_a_store_outage(Fault::Silent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_refused_during_a_bad_deployment_the_watch_keeps_its_pace_it_ends_unhealthy_then_is_rolled_back_once(
) {
    a_bad_deployment_during_a_store_outage(Fault::Refused).await;
}

/// v2's rollback is held back (`dry_run`), so its watch ends with v2
/// `unhealthy`; the agent is killed and started again on the same
/// `state_dir`: v2 is resumed as `unhealthy` — not watched again from its
/// warm-up, not stable — and v1 stays the last stable deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_while_its_deployment_is_unhealthy_resumes_it_unhealthy() {
    let (svc, server) = service().await;
    let platform = platform(&svc).await;
    let port = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with(dir.path(), port, &server, &platform, "3s", "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("[rollback]\n"), "{text}");
    std::fs::write(
        &cfg,
        text.replace("[rollback]\n", "[rollback]\ndry_run = true\n"),
    )
    .unwrap();
    {
        let _agent = Agent::start(&cfg, port);
        until(port, "v1 stable", |s| {
            s["deployment"]["id"] == "v1" && s["deployment"]["state"] == "stable"
        })
        .await;
        svc.set("v2", false);
        let s = until(port, "v2 unhealthy once its watch is over", |s| {
            s["deployment"]["id"] == "v2" && s["deployment"]["state"] == "unhealthy"
        })
        .await;
        assert_eq!(s["last_stable"], "v1", "{s:#}");
        assert_eq!(s["last_rollback"]["status"], "dry_run", "{s:#}");
        // Dropped: SIGKILL.
    }

    let _agent = Agent::start(&cfg, port);
    let s = until(port, "v2 after the restart", |s| {
        s["deployment"]["id"] == "v2"
    })
    .await;
    assert_eq!(s["deployment"]["state"], "unhealthy", "{s:#}");
    assert_eq!(s["last_stable"], "v1", "{s:#}");
    assert_eq!(s["baseline"]["deployment"], "v1", "{s:#}");
    // Longer than a warm-up, with the rule holding again: still unhealthy.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = status(port).await;
        assert_eq!(s["deployment"]["id"], "v2", "{s:#}");
        assert_eq!(s["deployment"]["state"], "unhealthy", "{s:#}");
        assert_eq!(s["last_stable"], "v1", "{s:#}");
    }
    assert!(platform.requests().is_empty(), "no call in dry run");
}
