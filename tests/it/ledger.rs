//! The deployment ledger with the real binary: `backstop verdict --wait` as
//! a CI gate (0 for a deployment that becomes stable, 1 for one rolled
//! back), a pipeline's `POST /v1/deployments` (its metadata shown in
//! `/status`, `/v1/deployments` and `backstop history`; bad input 400, no
//! token 401), `backstop history` from the running agent and from the
//! store, the retention, and the ledger on the PostgreSQL store, with the
//! migration of an older schema's rows.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use backstop::config::StoreConfig;
use backstop::secret::Secret;
use backstop::store::{DeploymentMeta, Retention, Store, WatchState};
use backstop_tests::{backstop_bin, closed_port, postgres_url, HttpServer, Reply};
use serde_json::{json, Value};

use crate::e2e::{config_with, service, until, Agent};

const TOKEN: &str = "ledger-admin-token-0123";

/// An agent watching `svc` (warm-up 1 s, watch 5 s) that rolls back
/// through `platform`'s webhook, with an admin token and `extra` in
/// `[agent]`, and more sections at the end.
fn config(
    dir: &Path,
    port: u16,
    svc: &HttpServer,
    platform: &HttpServer,
    agent_extra: &str,
    extra: &str,
) -> PathBuf {
    // The end-to-end tests' agent, with a 5 s watch and the admin token.
    let path = config_with(dir, port, svc, platform, "5s", extra);
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "[agent]\n",
        &format!("[agent]\nadmin_token = \"{TOKEN}\"\n{agent_extra}\n"),
        1,
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `backstop ARGS --config CONFIG` to its end, off the runtime.
async fn backstop(config: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(backstop_bin());
    cmd.args(args).arg("--config").arg(config);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn post(port: u16, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/deployments"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(port: u16, path: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Polls `/v1/deployments` until `f` holds (up to 20 s).
async fn ledger_until(port: u16, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (status, doc) = get(port, "/v1/deployments").await;
        assert_eq!(status, 200, "{doc:#}");
        if let Some(list) = doc["deployments"].as_array() {
            if f(list) {
                return list.clone();
            }
        }
        last = doc;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}; last ledger:\n{last:#}");
}

fn states(entry: &Value) -> Vec<String> {
    entry["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap().to_string())
        .collect()
}

/// The ledger's two deployments after the story: v2 rolled back by
/// "health failing" with its pipeline's metadata, v1 stable.
fn check_story(list: &[Value]) {
    let ids: Vec<&str> = list.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["v2", "v1"], "newest first: {list:#?}");
    let (v2, v1) = (&list[0], &list[1]);
    assert_eq!(v2["state"], "rolled_back", "{v2:#}");
    assert_eq!(states(v2), ["warming", "watching", "rolled_back"], "{v2:#}");
    assert_eq!(v2["commit"], "abc123");
    assert_eq!(v2["triggered_by"], "alice");
    assert_eq!(v2["environment"], "production");
    assert_eq!(v2["annotations"]["pipeline"], "build-77");
    assert_eq!(v2["rollback"]["rule"], "health failing");
    assert!(
        v2["rollback"]["reason"]
            .as_str()
            .unwrap()
            .contains("consecutive_failures"),
        "{v2:#}"
    );
    assert_eq!(v2["rollback"]["status"], "succeeded");
    assert_eq!(v1["state"], "stable", "{v1:#}");
    assert_eq!(states(v1), ["warming", "watching", "stable"], "{v1:#}");
    assert!(v1["stable_at_ms"].as_u64().is_some());
    assert!(v1["rollback"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_registers_a_deployment_and_gates_on_its_verdict() {
    let (svc, server) = service().await;
    let switch = svc.clone();
    let platform = HttpServer::start(move |r| {
        let to = r.json()["return_to"].as_str().unwrap_or("v1").to_string();
        switch.set(&to, true);
        Reply::json(200, json!({ "ok": true }))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let cfg = config(dir.path(), port, &server, &platform, "", "");
    let agent = Agent::start(&cfg, port);

    // v1 becomes stable: the gate passes.
    let out = backstop(&cfg, &["verdict", "--wait", "--timeout", "60s"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("v1: stable"),
        "{}",
        text(&out)
    );

    // What a pipeline sends wrong is refused, with what is wrong.
    let (status, body) = post(port, None, r#"{"id":"v2"}"#).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(port, Some("wrong-token-000000000"), r#"{"id":"v2"}"#).await;
    assert_eq!(status, 401, "{body}");
    for (bad, want) in [
        (r#"{"commit":"abc123"}"#, "id: required"),
        (r#"{"id":"v2","author":"alice"}"#, "unknown field `author`"),
        ("{not json", "body is not a registration"),
        (r#"{"id":"v2","annotations":{"k":7}}"#, "invalid type"),
    ] {
        let (status, body) = post(port, Some(TOKEN), bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(want),
            "{bad}: {body}"
        );
    }
    assert!(platform.requests().is_empty());

    // The pipeline registers v2 before the service reports it: its watch
    // starts at once, with its metadata in /status.
    let (status, body) = post(
        port,
        Some(TOKEN),
        r#"{"id":"v2","commit":"abc123","triggered_by":"alice","environment":"production",
            "annotations":{"pipeline":"build-77"}}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["watch"], "started");
    let s = until(port, "v2 watched", |s| s["deployment"]["id"] == "v2").await;
    assert_eq!(s["deployment"]["commit"], "abc123", "{s:#}");
    assert_eq!(s["deployment"]["triggered_by"], "alice", "{s:#}");
    // Registered again: the current deployment, nothing restarts.
    let (status, body) = post(port, Some(TOKEN), r#"{"id":"v2","commit":"abc123","triggered_by":"alice","environment":"production","annotations":{"pipeline":"build-77"}}"#).await;
    assert_eq!((status, body["watch"].as_str()), (200, Some("current")));

    // Still watching: no verdict yet without --wait.
    let out = backstop(&cfg, &["verdict", "--deployment", "v2"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("v2: still"),
        "{}",
        text(&out)
    );

    // The service switches to v2, which fails: rolled back, the gate fails.
    svc.set("v2", false);
    let out = backstop(
        &cfg,
        &[
            "verdict",
            "--deployment",
            "v2",
            "--wait",
            "--timeout",
            "60s",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("v2: rolled back"), "{}", text(&out));
    assert!(said.contains("rule \"health failing\""), "{}", text(&out));
    assert!(said.contains("consecutive_failures"), "{}", text(&out));
    until(port, "v1 again", |s| s["deployment"]["id"] == "v1").await;
    // Metadata registered after the deployment was seen is kept too.
    let (status, body) = post(
        port,
        Some(TOKEN),
        r#"{"id":"v1","commit":"fff000","triggered_by":"bob"}"#,
    )
    .await;
    assert_eq!((status, body["watch"].as_str()), (200, Some("current")));

    let list = ledger_until(port, "v2 rolled back in the ledger", |l| {
        l.first()
            .is_some_and(|e| e["state"] == "rolled_back" && !e["rollback"].is_null())
            && l.get(1).is_some_and(|e| e["commit"] == "fff000")
    })
    .await;
    check_story(&list);
    let (status, one) = get(port, "/v1/deployments/v2").await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["rollback"]["rule"], "health failing");
    let (status, _) = get(port, "/v1/deployments/v9").await;
    assert_eq!(status, 404);
    let (status, body) = get(port, "/v1/deployments?limit=0").await;
    assert_eq!(status, 400, "{body}");
    let (_, doc) = get(port, "/v1/deployments?limit=1").await;
    assert_eq!(doc["deployments"].as_array().unwrap().len(), 1);

    // The running agent holds the embedded store: history asks it.
    let out = backstop(&cfg, &["history", "--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["service"], "shop");
    check_story(doc["deployments"].as_array().unwrap());
    let out = backstop(&cfg, &["history"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let v2 = table.lines().find(|l| l.starts_with("v2 ")).expect(&table);
    for want in ["rolled_back", "abc123", "alice", "health failing"] {
        assert!(v2.contains(want), "{want} not in {v2:?}\n{table}");
    }

    // With the agent stopped, history reads the store itself.
    drop(agent);
    let out = backstop(&cfg, &["history", "--format", "json", "--limit", "5"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    check_story(doc["deployments"].as_array().unwrap());
    assert_eq!(platform.requests().len(), 1, "one rollback call");

    // Neither a store nor an agent: a clear error, exit 2.
    let empty = tempfile::tempdir().unwrap();
    let cfg = config(empty.path(), closed_port(), &server, &platform, "", "");
    let out = backstop(&cfg, &["history"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("there is no store at"), "{}", text(&out));
    assert!(
        err.contains("no running agent answered at"),
        "{}",
        text(&out)
    );
    let out = backstop(&cfg, &["verdict"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot ask the agent"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_keeps_at_most_history_max_deployments() {
    let (_svc, server) = service().await;
    let platform = HttpServer::start(|_| Reply::json(200, json!({}))).await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let cfg = config(dir.path(), port, &server, &platform, "history_max = 2", "");
    let _agent = Agent::start(&cfg, port);
    until(port, "v1 stable", |s| s["deployment"]["state"] == "stable").await;
    for id in ["a", "b", "c"] {
        let (status, body) = post(port, Some(TOKEN), &format!(r#"{{"id":"{id}"}}"#)).await;
        assert_eq!(status, 201, "{body}");
        until(port, id, |s| s["deployment"]["id"] == id).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The newest two, and v1: the deployment to return to.
    let list = ledger_until(port, "the ledger pruned", |l| l.len() == 3).await;
    let ids: Vec<&str> = list.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["c", "b", "v1"], "{list:#?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, doc) = get(port, "/v1/deployments").await;
    assert_eq!(doc["deployments"].as_array().unwrap().len(), 3, "{doc:#}");
}

/// A schema no other test uses.
fn unique_schema(stem: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("t_{stem}_{}_{n}", std::process::id())
}

async fn client() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rows_of_an_older_schema_show_in_the_ledger_after_the_migration() {
    let schema = unique_schema("ledger_migration");
    let c = client().await;
    // The tables as the version before the ledger (schema version 3) left
    // them, with its rows.
    c.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.backstop_schema_version (
             version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .unwrap();
    for (version, sql) in backstop::store::postgres::MIGRATIONS
        .iter()
        .filter(|(v, _)| *v <= 3)
    {
        c.batch_execute(&sql.replace("{s}", &format!("\"{schema}\"")))
            .await
            .unwrap();
        c.execute(
            &format!("INSERT INTO {schema}.backstop_schema_version (version) VALUES ($1)"),
            &[version],
        )
        .await
        .unwrap();
    }
    c.batch_execute(&format!(
        "INSERT INTO {schema}.backstop_deployments
             (service, deployment, first_seen_ms, state, stable_at_ms)
         VALUES ('shop', 'v1', 1000, 'stable', 4000),
                ('shop', 'v2', 5000, 'rolled_back', NULL),
                ('other', 'x1', 9000, 'stable', 9500);
         INSERT INTO {schema}.backstop_rollbacks
             (service, deployment, return_to, rule, reason, evidence, target, status,
              intent_at_ms, finished_at_ms, detail, returned_to, by_replica)
         VALUES ('shop', 'v2', 'v1', 'health failing', 'consecutive_failures 3 >= 3',
                 '[]', 'webhook', 'succeeded', 6000, 6500, 'ok', 'v1', 'replica-b');
         INSERT INTO {schema}.backstop_services (service, last_stable, current)
         VALUES ('shop', 'v1', 'v1');"
    ))
    .await
    .unwrap();

    let config = StoreConfig {
        url: Secret::new(postgres_url()),
        schema: schema.clone(),
        pool_size: 2,
        timeout: Duration::from_secs(5),
    };
    let store = Store::connect(&config, "shop")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let version: i32 = c
        .query_one(
            &format!("SELECT max(version) FROM {schema}.backstop_schema_version"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, backstop::store::postgres::SCHEMA_VERSION);
    let ledger = store.ledger(50).await.unwrap();
    let ids: Vec<&str> = ledger.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["v2", "v1"], "only this service's, newest first");
    let v2 = &ledger[0];
    assert_eq!(v2.state, Some(WatchState::RolledBack));
    let v2_states: Vec<(WatchState, u64)> = v2.states.iter().map(|s| (s.state, s.at_ms)).collect();
    assert_eq!(
        v2_states,
        [(WatchState::Warming, 5000), (WatchState::RolledBack, 6500)]
    );
    let rb = v2.rollback.as_ref().unwrap();
    assert_eq!(rb.rule, "health failing");
    assert_eq!(rb.by.as_deref(), Some("replica-b"));
    let v1_states: Vec<WatchState> = ledger[1].states.iter().map(|s| s.state).collect();
    assert_eq!(v1_states, [WatchState::Warming, WatchState::Stable]);

    // Metadata: registered before the deployment is seen, and after.
    let meta = |id: &str, at: u64| DeploymentMeta {
        id: id.into(),
        commit: Some(format!("sha-{id}")),
        triggered_by: Some("ci".into()),
        environment: Some("prod".into()),
        annotations: [("pr".to_string(), "42".to_string())].into(),
        registered_at_ms: at,
    };
    store.save_meta(&meta("v3", 7000)).await.unwrap();
    store.save_meta(&meta("v2", 4900)).await.unwrap();
    let ledger = store.ledger(50).await.unwrap();
    let ids: Vec<&str> = ledger.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["v3", "v2", "v1"]);
    assert_eq!(ledger[0].state, None, "registered, not seen yet");
    assert_eq!(ledger[0].meta(), Some(meta("v3", 7000)));
    assert_eq!(ledger[1].commit.as_deref(), Some("sha-v2"));
    assert_eq!(ledger[1].annotations["pr"], "42");
    let one = store.ledger_entry("v2").await.unwrap().unwrap();
    assert_eq!(one, ledger[1]);
    assert_eq!(
        store.ledger_entry("x1").await.unwrap(),
        None,
        "another service's"
    );
    assert_eq!(store.ledger(1).await.unwrap().len(), 1);

    // Retention: the newest two, and v1 (current and last stable) always.
    let retention = Retention {
        max_age: Duration::from_secs(3600),
        max_count: 2,
    };
    assert_eq!(store.prune(&retention, 8000).await.unwrap(), 0);
    let keep_one = Retention {
        max_age: Duration::from_secs(3600),
        max_count: 1,
    };
    assert_eq!(store.prune(&keep_one, 8000).await.unwrap(), 1);
    let ids: Vec<String> = store
        .ledger(50)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["v3", "v1"]);
    assert_eq!(store.rollback("v2").await.unwrap(), None);
    let other: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {schema}.backstop_deployments WHERE service = 'other'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(other, 1, "another service's rows are never pruned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_keeps_its_ledger_in_the_postgres_store() {
    let (svc, server) = service().await;
    let platform = HttpServer::start(|_| Reply::json(200, json!({}))).await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let schema = unique_schema("ledger_agent");
    let store = format!(
        "[store]\nurl = \"{}\"\nschema = \"{schema}\"\n",
        postgres_url()
    );
    let cfg = config(dir.path(), port, &server, &platform, "", &store);
    let _agent = Agent::start(&cfg, port);
    until(port, "v1 stable", |s| s["deployment"]["state"] == "stable").await;
    let (status, body) = post(
        port,
        Some(TOKEN),
        r#"{"id":"v2","commit":"abc123","triggered_by":"alice"}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    svc.set("v2", true);
    let out = backstop(
        &cfg,
        &[
            "verdict",
            "--deployment",
            "v2",
            "--wait",
            "--timeout",
            "60s",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The agent holds no lock on PostgreSQL: history reads it directly.
    let mut doc = Value::Null;
    for _ in 0..50 {
        let out = backstop(&cfg, &["history", "--format", "json"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        doc = serde_json::from_slice(&out.stdout).unwrap();
        if doc["deployments"][0]["state"] == "stable" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list = doc["deployments"].as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["v2", "v1"], "{doc:#}");
    assert_eq!(list[0]["state"], "stable");
    assert_eq!(list[0]["commit"], "abc123");
    assert_eq!(list[0]["triggered_by"], "alice");
    assert_eq!(states(&list[0]), ["warming", "watching", "stable"]);
    assert_eq!(states(&list[1]), ["warming", "watching", "stable"]);
}
