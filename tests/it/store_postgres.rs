//! The PostgreSQL store (`[store] url`) against a real server: migrations,
//! the exactly-once claim between agents, every record's round trip, and the
//! agent — the real binary — resuming from it with an empty `state_dir`,
//! refusing to start without it and holding rollbacks while it is down.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use backstop::config::StoreConfig;
use backstop::secret::Secret;
use backstop::store::{
    now_ms, Claim, DeploymentRecord, RollbackRecord, RollbackStatus, Store, WatchState,
};
use backstop_judge::baseline::{Baseline, BaselineBuilder};
use backstop_judge::evidence::Evidence;
use backstop_judge::observe::{Outcome, Sample};
use backstop_tests::{backstop_bin, closed_port, postgres_url, HttpServer, PostgresServer, Reply};
use serde_json::json;

use crate::e2e::{config_with, service, until, Agent};

/// A schema no other test uses.
fn unique_schema(stem: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("t_{stem}_{}_{n}", std::process::id())
}

fn store_config(url: &str, schema: &str) -> StoreConfig {
    StoreConfig {
        url: Secret::new(url),
        schema: schema.to_string(),
        pool_size: 4,
        timeout: Duration::from_secs(5),
    }
}

async fn connect(schema: &str, service: &str) -> Store {
    Store::connect(&store_config(&postgres_url(), schema), service)
        .await
        .unwrap_or_else(|e| panic!("connecting to the store: {e:#}"))
}

async fn client() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

fn rollback(dep: &str, by: &str) -> RollbackRecord {
    RollbackRecord {
        deployment: dep.into(),
        return_to: Some("v1".into()),
        rule: "health failing".into(),
        reason: "consecutive_failures 3 >= 3 on probe health".into(),
        evidence: vec![Evidence {
            rule: "health failing".into(),
            probe: "health".into(),
            expression: "consecutive_failures >= 3".into(),
            signal: Some("consecutive_failures".into()),
            observed: Some(3.0),
            threshold: Some(3.0),
            window: None,
            baseline: None,
            ratio: None,
            p_value: None,
            judged_by: None,
            summary: "consecutive_failures 3 >= 3 on probe health".into(),
        }],
        target: "webhook".into(),
        status: RollbackStatus::Intent,
        intent_at_ms: now_ms(),
        finished_at_ms: None,
        detail: String::new(),
        returned_to: None,
        not_effective: false,
        by: Some(by.into()),
    }
}

fn baseline(dep: &str, seed: u64) -> Baseline {
    let mut b = BaselineBuilder::with_capacity(dep, 50, seed);
    let now = tokio::time::Instant::now();
    for i in 0..200u32 {
        b.add(
            "app",
            &Sample::new(
                Outcome::Ok,
                now,
                vec![
                    ("p95_ms", 40.0 + (i % 17) as f64 + seed as f64),
                    ("requests", 10.0),
                    ("errors", (i % 3) as f64),
                ],
            ),
        );
    }
    b.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_twice_are_harmless_and_agents_migrating_together_are_safe() {
    let schema = unique_schema("migrate");
    let starting = (0..8).map(|i| {
        let schema = schema.clone();
        tokio::spawn(async move {
            Store::connect(&store_config(&postgres_url(), &schema), &format!("svc{i}")).await
        })
    });
    for r in futures_join(starting).await {
        r.unwrap_or_else(|e| panic!("an agent starting with the others failed: {e:#}"));
    }
    let again = connect(&schema, "svc0").await;
    again.set_paused(true).await.unwrap();
    let again = connect(&schema, "svc0").await;
    assert!(
        again.paused().await.unwrap(),
        "a second migration kept the rows"
    );
    let rows = client()
        .await
        .query(
            &format!("SELECT version FROM \"{schema}\".backstop_schema_version"),
            &[],
        )
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5], "one row per version applied");
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_many_concurrent_claims_from_two_agents_exactly_one_wins() {
    let schema = unique_schema("claim");
    let a = Arc::new(connect(&schema, "web").await);
    let b = Arc::new(connect(&schema, "web").await);
    for round in 0..5 {
        let dep = format!("v{round}");
        let claims = (0..24).map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let rec = rollback(&dep, &format!("replica-{i}"));
            tokio::spawn(async move { store.claim_rollback(&rec).await.unwrap() })
        });
        let claims = futures_join(claims).await;
        let won = claims.iter().filter(|c| **c == Claim::Claimed).count();
        assert_eq!(won, 1, "round {round}: exactly one claim wins: {claims:?}");
        let winner = a.rollback(&dep).await.unwrap().unwrap().by;
        for c in &claims {
            if let Claim::AlreadyRecorded(r) = c {
                assert_eq!(r.by, winner, "the losers read back the winner's record");
            }
        }
    }
    // Another service in the same database claims its own deployments.
    let other = connect(&schema, "api").await;
    assert_eq!(
        other.claim_rollback(&rollback("v0", "x")).await.unwrap(),
        Claim::Claimed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_round_trips_and_services_keep_to_their_own_rows() {
    let schema = unique_schema("records");
    let store = connect(&schema, "web").await;
    let other = connect(&schema, "api").await;

    assert_eq!(store.deployment("v1").await.unwrap(), None);
    assert_eq!(store.last_stable().await.unwrap(), None);
    assert_eq!(store.current().await.unwrap(), None);
    assert!(!store.paused().await.unwrap());
    assert_eq!(store.rollback("v2").await.unwrap(), None);
    assert_eq!(store.baseline("v1").await.unwrap(), None);

    let v1 = DeploymentRecord::new("v1", 1_700_000_000_123);
    store.save_deployment(&v1).await.unwrap();
    assert_eq!(store.deployment("v1").await.unwrap().as_ref(), Some(&v1));
    let mut stable = v1.clone();
    stable.enter(WatchState::Stable, 1_700_000_930_456);
    store.mark_stable(&stable).await.unwrap();
    assert_eq!(store.deployment("v1").await.unwrap(), Some(stable));
    assert_eq!(store.last_stable().await.unwrap().as_deref(), Some("v1"));
    store.set_current("v2").await.unwrap();
    assert_eq!(store.current().await.unwrap().as_deref(), Some("v2"));
    store.set_paused(true).await.unwrap();
    assert!(store.paused().await.unwrap());
    store.set_paused(false).await.unwrap();
    assert!(!store.paused().await.unwrap());

    let mut older = rollback("v0", "replica-a");
    older.intent_at_ms -= 60_000;
    older.status = RollbackStatus::DryRun;
    assert_eq!(store.claim_rollback(&older).await.unwrap(), Claim::Claimed);
    let mut rec = rollback("v2", "replica-a");
    assert_eq!(store.claim_rollback(&rec).await.unwrap(), Claim::Claimed);
    assert_eq!(store.rollback("v2").await.unwrap().as_ref(), Some(&rec));
    rec.status = RollbackStatus::Succeeded;
    rec.finished_at_ms = Some(rec.intent_at_ms + 250);
    rec.detail = "accepted".into();
    rec.returned_to = Some("v1".into());
    rec.not_effective = true;
    store.update_rollback(&rec).await.unwrap();
    assert_eq!(store.rollback("v2").await.unwrap().as_ref(), Some(&rec));
    assert_eq!(
        store.rollbacks().await.unwrap(),
        vec![rec.clone(), older],
        "newest first"
    );

    let b = baseline("v1", 1);
    assert!(store.save_baseline(&b).await.unwrap());
    let expected: Baseline = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
    assert_eq!(store.baseline("v1").await.unwrap(), Some(expected));

    // The other service sees none of it.
    assert_eq!(other.deployment("v1").await.unwrap(), None);
    assert_eq!(other.last_stable().await.unwrap(), None);
    assert_eq!(other.rollbacks().await.unwrap(), vec![]);
    assert_eq!(other.baseline("v1").await.unwrap(), None);

    // The registry view shows a deployment with its rollback in one row.
    store
        .save_deployment(&DeploymentRecord {
            id: "v2".into(),
            first_seen_ms: now_ms(),
            state: WatchState::RolledBack,
            stable_at_ms: None,
            states: vec![],
        })
        .await
        .unwrap();
    let row = client()
        .await
        .query_one(
            &format!(
                "SELECT state, rollback_status, rollback_target, returned_to, by, evidence::text
                 FROM \"{schema}\".backstop_deployment_registry
                 WHERE service = 'web' AND deployment = 'v2'"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "rolled_back");
    assert_eq!(row.get::<_, String>(1), "succeeded");
    assert_eq!(row.get::<_, String>(2), "webhook");
    assert_eq!(row.get::<_, String>(3), "v1");
    assert_eq!(row.get::<_, String>(4), "replica-a");
    assert!(row.get::<_, String>(5).contains("consecutive_failures"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baseline_is_kept_once_and_every_agent_reads_that_one() {
    let schema = unique_schema("baseline");
    let first = connect(&schema, "web").await;
    let second = connect(&schema, "web").await;
    let kept = baseline("v1", 1);
    assert!(first.save_baseline(&kept).await.unwrap());
    assert!(
        !second.save_baseline(&baseline("v1", 2)).await.unwrap(),
        "a second write of v1's baseline is a no-op"
    );
    let expected: Baseline = serde_json::from_str(&serde_json::to_string(&kept).unwrap()).unwrap();
    assert_eq!(second.baseline("v1").await.unwrap(), Some(expected.clone()));
    assert_eq!(first.baseline("v1").await.unwrap(), Some(expected));
    let rows: i64 = client()
        .await
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".backstop_baselines"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_fresh_state_dir_resumes_from_the_store_and_never_calls_again() {
    let (svc, server) = service().await;
    let switch = svc.clone();
    let platform = HttpServer::start(move |r| {
        let to = r.json()["return_to"].as_str().unwrap_or("v1").to_string();
        switch.set(&to, true);
        Reply::json(200, json!({ "ok": true }))
    })
    .await;
    let store = format!(
        "[store]\nurl = \"{}\"\nschema = \"{}\"\n",
        postgres_url(),
        unique_schema("resume")
    );
    let port = closed_port();
    let first_dir = tempfile::tempdir().unwrap();
    let cfg = config_with(first_dir.path(), port, &server, &platform, "3s", &store);
    {
        let _agent = Agent::start(&cfg, port);
        until(port, "v1 stable", |s| {
            s["deployment"]["id"] == "v1" && s["deployment"]["state"] == "stable"
        })
        .await;
        svc.set("v2", false);
        until(port, "the rollback of v2", |s| {
            s["last_rollback"]["deployment"] == "v2" && s["last_rollback"]["status"] == "succeeded"
        })
        .await;
        until(port, "v1 again", |s| s["deployment"]["id"] == "v1").await;
    }
    assert_eq!(platform.requests().len(), 1);

    // A new machine: an empty state_dir, the same [store]; v2 is back.
    svc.set("v2", false);
    let second_dir = tempfile::tempdir().unwrap();
    let cfg = config_with(second_dir.path(), port, &server, &platform, "3s", &store);
    let _agent = Agent::start(&cfg, port);
    // What the store knows of v2 (its rollback) is read off the watch's
    // path: until it comes (a moment under load) v2 shows as warming.
    let s = until(port, "v2 seen again, known as rolled back", |s| {
        s["deployment"]["id"] == "v2" && s["deployment"]["state"] != "warming"
    })
    .await;
    assert_eq!(s["deployment"]["state"], "rolled_back", "{s:#}");
    assert_eq!(s["last_stable"], "v1", "{s:#}");
    let s = until(port, "v2's rollback shown", |s| {
        s["last_rollback"]["deployment"] == "v2"
    })
    .await;
    assert_eq!(s["last_rollback"]["status"], "succeeded");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        platform.requests().len(),
        1,
        "no second call from an agent with a fresh state_dir"
    );
    assert!(
        !second_dir
            .path()
            .join("state")
            .join("backstop.redb")
            .exists(),
        "with [store] the embedded store is not used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_store_at_start_exits_2_with_a_clear_message_and_no_password() {
    let server = PostgresServer::start();
    server.stop();
    let wrong_password = postgres_url().replace("backstop-test-pw", "not-the-pw-9x");
    let cases = [
        (server.url(), "throwaway-pg-pw", "connect"),
        (
            wrong_password.clone(),
            "not-the-pw-9x",
            "password authentication failed",
        ),
    ];
    for (url, password, why) in cases {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("backstop.toml");
        std::fs::write(
            &cfg,
            format!(
                "[agent]\nlisten = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\n\n[service]\nname = \"web\"\n\n\
                 [store]\nurl = \"{url}\"\ntimeout = \"2s\"\n",
                closed_port(),
                dir.path().join("state").display()
            ),
        )
        .unwrap();
        let out = Command::new(backstop_bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains("cannot use the store"), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
        assert!(stderr.contains(":***@127.0.0.1"), "{stderr}");
        assert!(!stderr.contains(password), "the password leaked: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_store_is_down_probing_goes_on_and_nothing_is_rolled_back_until_it_returns() {
    let pg = PostgresServer::start();
    let (svc, server) = service().await;
    let switch = svc.clone();
    let platform = HttpServer::start(move |r| {
        let to = r.json()["return_to"].as_str().unwrap_or("v1").to_string();
        switch.set(&to, true);
        Reply::json(200, json!({ "ok": true }))
    })
    .await;
    let people = HttpServer::start(|_| Reply::json(200, json!({ "ok": true }))).await;
    let store = format!(
        "[store]\nurl = \"{}\"\ntimeout = \"1s\"\n\n[[notify]]\ntype = \"webhook\"\nurl = \"{}\"\n",
        pg.url(),
        people.url("/events")
    );
    // What people were told about the store: (event, summary).
    let told = |people: &HttpServer| -> Vec<(String, String)> {
        people
            .requests()
            .iter()
            .map(|r| r.json())
            .filter(|e| e["rule"] == "store")
            .map(|e| {
                (
                    e["event"].as_str().unwrap_or_default().to_string(),
                    e["summary"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let port = closed_port();
    let dir = tempfile::tempdir().unwrap();
    // A long watch, so v2 is still watched when the store returns.
    let cfg = config_with(dir.path(), port, &server, &platform, "12s", &store);
    let _agent = Agent::start(&cfg, port);
    until(port, "v1 stable", |s| s["deployment"]["state"] == "stable").await;
    svc.set("v2", true);
    until(port, "v2 watched", |s| {
        s["deployment"]["id"] == "v2" && s["deployment"]["state"] == "watching"
    })
    .await;

    pg.stop();
    svc.set("v2", false);
    let failures =
        |s: &serde_json::Value| s["probes"][0]["consecutive_failures"].as_u64().unwrap_or(0);
    let s = until(port, "the health probe failing", |s| failures(s) >= 5).await;
    let seen = failures(&s);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = crate::e2e::status(port).await;
    assert!(failures(&s) > seen, "probing goes on: {s:#}");
    assert!(
        platform.requests().is_empty(),
        "no rollback while the store is down"
    );
    assert!(s["last_rollback"].is_null(), "{s:#}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l == "backstop_store_up 0"),
        "the store is reported down:\n{metrics}"
    );
    let alerts = told(&people);
    assert_eq!(
        alerts.len(),
        1,
        "one alert while the store is down: {alerts:?}"
    );
    assert_eq!(alerts[0].0, "alert", "{alerts:?}");
    assert!(alerts[0].1.contains("no rollback"), "{alerts:?}");
    assert!(!alerts[0].1.contains("throwaway-pg-pw"), "{alerts:?}");

    pg.start_again();
    let s = until(port, "the rollback of v2 once the store is back", |s| {
        s["last_rollback"]["deployment"] == "v2" && s["last_rollback"]["status"] == "succeeded"
    })
    .await;
    assert_eq!(s["last_rollback"]["returned_to"], "v1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(platform.requests().len(), 1, "exactly one call");
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l == "backstop_store_up 1"),
        "the store is reported up again:\n{metrics}"
    );
    let told = told(&people);
    assert_eq!(
        told.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(),
        ["alert", "resolved"],
        "{told:?}"
    );
}
