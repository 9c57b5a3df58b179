//! Several replicas, one decision: three real agents, each beside its own
//! replica of the service (its own health endpoint, so one can be sick
//! alone), sharing a coordination store, and a stand-in platform counting
//! rollback calls. Bad everywhere → exactly one call; bad on one of three →
//! none; the lease holder killed mid-call → another completes it after the
//! lease expires; the coordination store restarted during a watch → held
//! while it is down, one call once it is back; Redis silent or refusing
//! behind a proxy (`proxy.rs`) as the watch ends → the agents answer at
//! once, v2 ends `unhealthy`, one call once it heals. Every scenario runs
//! against a back end given as a parameter: PostgreSQL (the `[store]`), or
//! Redis (`[fleet] redis`).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::config::StoreConfig;
use backstop::secret::Secret;
use backstop::store::{now_ms, DeploymentRecord, Store, WatchState};
use backstop_tests::{
    backstop_bin, closed_port, postgres_url, redis_url, wait_for_port, HttpServer, PostgresServer,
    RedisServer, Reply,
};
use serde_json::{json, Value};

use crate::e2e::status;
use crate::proxy::{answers_within_a_second, Fault, Proxy};

const ADMIN_TOKEN: &str = "fleet-admin-token-0123456789";

/// Where the replicas coordinate.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    /// Through the PostgreSQL `[store]`.
    Postgres,
    /// Through `[fleet] redis`, the `[store]` being PostgreSQL still.
    Redis,
}

/// A schema no other test uses.
pub(crate) fn unique_schema(stem: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    format!("t_fleet_{stem}_{}_{n}", std::process::id())
}

/// The store's tables, with `v1` stable: the deployment to return to.
/// The service is named after the schema, so no two tests share keys in
/// Redis either. Returns the store, for more seeding.
pub(crate) async fn seed(store_url: &str, schema: &str) -> Store {
    let store = Store::connect(
        &StoreConfig {
            url: Secret::new(store_url),
            schema: schema.to_string(),
            pool_size: 2,
            timeout: Duration::from_secs(5),
        },
        schema,
    )
    .await
    .unwrap_or_else(|e| panic!("seeding the store: {e:#}"));
    let t = now_ms() - 3_600_000;
    store
        .mark_stable(&DeploymentRecord {
            id: "v1".into(),
            first_seen_ms: t,
            state: WatchState::Stable,
            stable_at_ms: Some(t + 900_000),
            states: vec![],
        })
        .await
        .unwrap();
    store
}

/// One replica of the service: its health endpoint and its agent.
struct Replica {
    name: String,
    healthy: Arc<Mutex<bool>>,
    _server: HttpServer,
    port: u16,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
    agent: Option<Child>,
}

impl Replica {
    fn set_healthy(&self, healthy: bool) {
        *self.healthy.lock().unwrap() = healthy;
    }

    fn start(&mut self) {
        let child = Command::new(backstop_bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(self.port);
        self.agent = Some(child);
    }

    /// SIGKILL: no clean shutdown, no release, no leave.
    fn kill(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where the replicas' agents keep and coordinate things.
struct Stores {
    store_url: String,
    schema: String,
    redis_url: Option<String>,
}

/// The `[store]` and `[fleet]` sections of replica `name`. A short lease,
/// so a takeover comes soon; an expiry of ten heartbeats, so a healthy
/// replica slowed down by a busy machine is not dropped from the count
/// (which would let one sick replica of the two left reach the quorum).
fn fleet_config(backend: Backend, stores: &Stores, name: &str) -> String {
    let redis = match backend {
        Backend::Postgres => String::new(),
        Backend::Redis => format!(
            "redis = \"{}\"\n",
            stores.redis_url.clone().unwrap_or_else(redis_url)
        ),
    };
    format!(
        "[store]\nurl = \"{}\"\nschema = \"{}\"\ntimeout = \"1s\"\n\n\
         [fleet]\nreplica = \"{name}\"\nquorum = 0.5\nheartbeat = \"300ms\"\nexpiry = \"3s\"\nlease = \"2s\"\n{redis}",
        stores.store_url, stores.schema
    )
}

/// `n` replicas watching deployment `v2`, one rollback target.
async fn replicas(
    backend: Backend,
    stores: &Stores,
    platform: &HttpServer,
    n: usize,
) -> Vec<Replica> {
    replicas_watching(backend, stores, platform, n, "10m").await
}

async fn replicas_watching(
    backend: Backend,
    stores: &Stores,
    platform: &HttpServer,
    n: usize,
    watch: &str,
) -> Vec<Replica> {
    let rollback = format!(
        "[rollback]\ntarget = \"webhook\"\ncooldown = \"1s\"\ndeadline = \"5s\"\n\n[rollback.webhook]\nurl = \"{}\"\n",
        platform.url("/rollback")
    );
    replicas_with(backend, stores, &rollback, n, watch).await
}

/// `n` replicas watching deployment `v2` for `watch`, rolling back through
/// the `[rollback]` section `rollback`.
async fn replicas_with(
    backend: Backend,
    stores: &Stores,
    rollback: &str,
    n: usize,
    watch: &str,
) -> Vec<Replica> {
    seed(&stores.store_url, &stores.schema).await;
    let mut out = Vec::new();
    for i in 0..n {
        let name = format!("r{i}");
        let healthy = Arc::new(Mutex::new(true));
        let h = healthy.clone();
        let server = HttpServer::start(move |r| match r.path.as_str() {
            "/health" if *h.lock().unwrap() => Reply::text(200, "ok"),
            "/health" => Reply::text(503, "down"),
            _ => Reply::status(404),
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let port = closed_port();
        let config = dir.path().join("backstop.toml");
        std::fs::write(
            &config,
            format!(
                r#"[agent]
listen = "127.0.0.1:{port}"
state_dir = "{state}"
admin_token = "{ADMIN_TOKEN}"

[service]
name = "{service}"

[deployment]
id = "v2"
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

{rollback}
{fleet}
"#,
                state = dir.path().join("state").display(),
                health = server.url("/health"),
                fleet = fleet_config(backend, stores, &name),
                service = stores.schema,
            ),
        )
        .unwrap();
        let mut r = Replica {
            name,
            healthy,
            _server: server,
            port,
            config,
            _dir: dir,
            agent: None,
        };
        r.start();
        out.push(r);
    }
    out
}

/// Polls every replica's `/status` until `f` holds for each (up to 30 s).
async fn all_until(rs: &[&Replica], what: &str, f: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut last = vec![];
    for _ in 0..300 {
        last.clear();
        for r in rs {
            last.push(status(r.port).await);
        }
        if last.iter().all(&f) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}; last /status:\n{last:#?}");
}

/// Every replica watches v2 and sees the others live.
async fn all_watching(rs: &[Replica]) {
    let n = rs.len();
    let all: Vec<&Replica> = rs.iter().collect();
    all_until(&all, "every replica watching v2 with its peers live", |s| {
        s["deployment"]["state"] == "watching"
            && s["fleet"]["live"].as_array().map(Vec::len) == Some(n)
    })
    .await;
}

fn stores(backend: Backend, store_url: String) -> Stores {
    Stores {
        store_url,
        schema: unique_schema(match backend {
            Backend::Postgres => "pg",
            Backend::Redis => "redis",
        }),
        redis_url: None,
    }
}

/// A platform that answers every call at once, counting them.
async fn platform() -> HttpServer {
    HttpServer::start(|_| Reply::json(200, json!({ "ok": true }))).await
}

async fn bad_everywhere_is_rolled_back_by_exactly_one_agent(backend: Backend) {
    let platform = platform().await;
    let st = stores(backend, postgres_url());
    let rs = replicas(backend, &st, &platform, 3).await;
    all_watching(&rs).await;
    for r in &rs {
        r.set_healthy(false);
    }
    let all: Vec<&Replica> = rs.iter().collect();
    let seen = all_until(&all, "every replica showing the fleet's rollback", |s| {
        s["fleet"]["rollback"]["status"] == "succeeded"
    })
    .await;
    let by = seen[0]["fleet"]["rollback"]["by"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(rs.iter().any(|r| r.name == by), "by names a replica: {by}");
    for s in &seen {
        assert_eq!(
            s["fleet"]["rollback"], seen[0]["fleet"]["rollback"],
            "every agent shows the same record"
        );
        assert_eq!(s["last_rollback"]["by"], by.as_str());
        assert_eq!(s["fleet"]["rollback"]["deployment"], "v2");
        assert_eq!(s["fleet"]["rollback"]["returned_to"], "v1");
        assert_eq!(s["fleet"]["rollback"]["rule"], "health failing");
    }
    // Time for a second call to show up if any agent were to make one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = platform.requests();
    assert_eq!(calls.len(), 1, "exactly one rollback call: {calls:?}");
    let body = calls[0].json();
    assert_eq!(body["deployment"], "v2");
    assert_eq!(body["return_to"], "v1");
    assert!(body["fencing_token"].as_i64().unwrap() > 0, "{body}");
    let holder = rs.iter().find(|r| r.name == by).unwrap();
    let m = holder.metrics().await;
    assert!(
        m.lines().any(|l| l.starts_with("backstop_rollbacks_total")
            && l.contains("succeeded")
            && l.ends_with(" 1")),
        "{m}"
    );
    assert!(m.lines().any(|l| l == "backstop_fleet_up 1"), "{m}");
}

async fn one_sick_replica_of_three_alerts_and_rolls_nothing_back(backend: Backend) {
    let platform = platform().await;
    let st = stores(backend, postgres_url());
    let rs = replicas(backend, &st, &platform, 3).await;
    all_watching(&rs).await;
    rs[0].set_healthy(false);
    // Both from one /status: on a busy machine a late check can make the
    // rule's verdict and the tally read at different moments.
    let s = all_until(&[&rs[0]], "the sick replica holding, alone", |s| {
        s["held"]
            .as_str()
            .is_some_and(|h| h.contains("holds on this replica only"))
            && s["fleet"]["tally"].as_array().is_some_and(|ts| {
                ts.iter()
                    .any(|t| t["rule"] == "health failing" && t["agree"] == 1)
            })
    })
    .await
    .remove(0);
    assert_eq!(
        s["held"],
        "rule health failing holds on this replica only: 1 of 3 live replicas agree (quorum 0.5); not rolling the fleet back",
        "{s:#}"
    );
    let t = s["fleet"]["tally"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["rule"] == "health failing")
        .unwrap()
        .clone();
    assert_eq!(
        t,
        json!({ "rule": "health failing", "agree": 1, "live": 3, "reaches_quorum": false })
    );
    let mut m = String::new();
    for _ in 0..50 {
        m = rs[0].metrics().await;
        if m.lines()
            .any(|l| l == "backstop_fleet_agreeing{rule=\"health failing\"} 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        m.lines()
            .any(|l| l == "backstop_fleet_agreeing{rule=\"health failing\"} 1"),
        "{m}"
    );
    assert!(
        m.lines().any(|l| l == "backstop_fleet_live_replicas 3"),
        "{m}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(platform.requests().is_empty(), "no rollback call");
    for r in &rs {
        let s = status(r.port).await;
        assert!(s["last_rollback"].is_null(), "{s:#}");
        assert!(s["fleet"]["rollback"].is_null(), "{s:#}");
        assert_eq!(s["deployment"]["state"], "watching");
    }
}

/// Makes every replica sick, waits until every agent shows the lease
/// holder's intent and its call has reached the platform (`calls` counts
/// them), then kills the holder with SIGKILL; returns it.
async fn kill_the_holder_mid_call(rs: &mut Vec<Replica>, calls: &AtomicUsize) -> Replica {
    for r in rs.iter() {
        r.set_healthy(false);
    }
    let all: Vec<&Replica> = rs.iter().collect();
    let seen = all_until(&all, "every agent showing the first holder's intent", |s| {
        s["fleet"]["rollback"]["status"] == "intent"
    })
    .await;
    let first = seen[0]["fleet"]["rollback"]["by"]
        .as_str()
        .unwrap()
        .to_string();
    for s in &seen {
        assert_eq!(s["fleet"]["lease_holder"], first.as_str(), "{s:#}");
    }
    for _ in 0..100 {
        if calls.load(Ordering::SeqCst) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the holder's call arrived");
    let i = rs.iter().position(|r| r.name == first).unwrap();
    rs[i].kill();
    rs.remove(i)
}

async fn the_lease_holder_killed_mid_call_is_taken_over_after_its_lease_expires(backend: Backend) {
    // The first call hangs (the platform never answers it in time); every
    // later one is answered at once.
    let calls = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let (c, a) = (calls.clone(), answered.clone());
    let platform = HttpServer::start(move |_| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::json(200, json!({ "ok": true })).after(Duration::from_secs(600))
        } else {
            a.fetch_add(1, Ordering::SeqCst);
            Reply::json(200, json!({ "ok": true }))
        }
    })
    .await;
    let st = stores(backend, postgres_url());
    let mut rs = replicas(backend, &st, &platform, 3).await;
    all_watching(&rs).await;
    let dead = kill_the_holder_mid_call(&mut rs, &calls).await;
    let rest: Vec<&Replica> = rs.iter().collect();
    let seen = all_until(&rest, "another agent completing the rollback", |s| {
        s["fleet"]["rollback"]["status"] == "succeeded"
    })
    .await;
    let second = seen[0]["fleet"]["rollback"]["by"].as_str().unwrap();
    assert_ne!(second, dead.name, "{seen:#?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        answered.load(Ordering::SeqCst),
        1,
        "exactly one completed call"
    );
    let reqs = platform.requests();
    assert_eq!(reqs.len(), 2, "the hung call and the one that completed");
    let (t1, t2) = (
        reqs[0].json()["fencing_token"].as_i64().unwrap(),
        reqs[1].json()["fencing_token"].as_i64().unwrap(),
    );
    assert!(
        t2 > t1,
        "the second holder's token is newer: {t1} then {t2}"
    );
}

/// As above, against a platform that can be asked (a Railway stand-in
/// that keeps state): the holder's call reaches it and takes effect, the
/// holder dies before the answer, and the agent that takes over finds the
/// rollback done and makes no second call.
async fn a_holder_killed_after_its_call_took_effect_is_found_done_without_a_second_call(
    backend: Backend,
) {
    let mutations = Arc::new(AtomicUsize::new(0));
    let m = mutations.clone();
    let platform = HttpServer::start(move |r| {
        let query = r.json()["query"].as_str().unwrap_or_default().to_string();
        if query.contains("deploymentRollback") {
            m.fetch_add(1, Ordering::SeqCst);
            // Acted on; the answer never reaches the holder in time.
            return Reply::json(200, json!({"data": {"deploymentRollback": true}}))
                .after(Duration::from_secs(600));
        }
        let node = |id: &str, status: &str, can: bool| json!({"node": {"id": id, "status": status, "createdAt": "2026-11-01T00:00:00Z", "canRollback": can}});
        let mut edges = vec![node("v2", "SUCCESS", true), node("v1", "REMOVED", true)];
        if m.load(Ordering::SeqCst) > 0 {
            edges.insert(0, node("v1-again", "DEPLOYING", false));
        }
        Reply::json(200, json!({"data": {"deployments": {"edges": edges}}}))
    })
    .await;
    let rollback = format!(
        "[rollback]\ntarget = \"railway\"\ncooldown = \"1s\"\ndeadline = \"5s\"\n\n[rollback.railway]\ntoken = \"fleet-railway-token\"\nproject_id = \"p\"\nservice_id = \"s\"\nenvironment_id = \"e\"\napi_url = \"{}\"\ntimeout = \"1s\"\n",
        platform.url("/graphql/v2")
    );
    let st = stores(backend, postgres_url());
    let mut rs = replicas_with(backend, &st, &rollback, 3, "10m").await;
    all_watching(&rs).await;
    let dead = kill_the_holder_mid_call(&mut rs, &mutations).await;
    let rest: Vec<&Replica> = rs.iter().collect();
    let seen = all_until(&rest, "another agent recording the rollback as done", |s| {
        s["fleet"]["rollback"]["status"] == "succeeded"
    })
    .await;
    let rec = &seen[0]["fleet"]["rollback"];
    let detail = rec["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!(
            "made by {} before it stopped took effect",
            dead.name
        )) && detail.contains("v1-again"),
        "{rec:#}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        mutations.load(Ordering::SeqCst),
        1,
        "no second rollback call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_holder_killed_after_its_call_took_effect_is_found_done_without_a_second_call() {
    a_holder_killed_after_its_call_took_effect_is_found_done_without_a_second_call(
        Backend::Postgres,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_holder_killed_after_its_call_took_effect_is_found_done_without_a_second_call() {
    a_holder_killed_after_its_call_took_effect_is_found_done_without_a_second_call(Backend::Redis)
        .await;
}

/// A call that takes longer than `expiry` (the platform answers after 6 s,
/// the expiry is 3 s): the holder goes on publishing while it calls, so
/// every replica keeps counting it live, and the call completes once.
async fn a_holder_in_a_long_call_stays_live(backend: Backend) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let platform = HttpServer::start(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        Reply::json(200, json!({ "ok": true })).after(Duration::from_secs(6))
    })
    .await;
    let st = stores(backend, postgres_url());
    let rs = replicas(backend, &st, &platform, 3).await;
    all_watching(&rs).await;
    for r in &rs {
        r.set_healthy(false);
    }
    let all: Vec<&Replica> = rs.iter().collect();
    all_until(&all, "the holder's intent", |s| {
        s["fleet"]["rollback"]["status"] == "intent"
    })
    .await;
    // Past the expiry, well into the call: still three live everywhere.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for r in &rs {
        let s = status(r.port).await;
        if s["fleet"]["rollback"]["status"] != "intent" {
            continue; // the call finished early on a slow machine
        }
        assert_eq!(
            s["fleet"]["live"].as_array().map(Vec::len),
            Some(3),
            "{}: {:#}",
            r.name,
            s["fleet"]
        );
    }
    all_until(&all, "the call completed", |s| {
        s["fleet"]["rollback"]["status"] == "succeeded"
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_holder_in_a_long_call_stays_live() {
    a_holder_in_a_long_call_stays_live(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_holder_in_a_long_call_stays_live() {
    a_holder_in_a_long_call_stays_live(Backend::Redis).await;
}

/// Redis down when the agents start: they start all the same, probe, hold
/// and say so, and join the fleet once Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_the_agents_start_hold_and_join_when_it_answers() {
    let platform = platform().await;
    let mut redis = RedisServer::start();
    let port = redis.port;
    let mut st = stores(Backend::Redis, postgres_url());
    st.redis_url = Some(redis.url());
    redis.stop();
    let rs = replicas(Backend::Redis, &st, &platform, 3).await;
    let all: Vec<&Replica> = rs.iter().collect();
    all_until(
        &all,
        "every agent up, seeing its coordination store down",
        |s| s["fleet"]["up"] == false && s["deployment"]["id"] == "v2",
    )
    .await;
    for r in &rs {
        let m = r.metrics().await;
        assert!(m.lines().any(|l| l == "backstop_fleet_up 0"), "{m}");
    }
    let _redis = RedisServer::start_on(port);
    all_watching(&rs).await;
    all_until(&all, "every agent seeing the store up", |s| {
        s["fleet"]["up"] == true
    })
    .await;
    assert!(platform.requests().is_empty(), "no rollback");
}

async fn the_coordination_store_restarted_during_a_watch_holds_then_rolls_back_once(
    backend: Backend,
) {
    let platform = platform().await;
    // The server that goes away: the PostgreSQL store itself, or Redis.
    let pg = (backend == Backend::Postgres).then(PostgresServer::start);
    let mut redis = (backend == Backend::Redis).then(RedisServer::start);
    let mut st = stores(
        backend,
        pg.as_ref().map_or_else(postgres_url, PostgresServer::url),
    );
    st.redis_url = redis.as_ref().map(RedisServer::url);
    let rs = replicas(backend, &st, &platform, 3).await;
    all_watching(&rs).await;
    match (&pg, &mut redis) {
        (Some(pg), _) => pg.stop(),
        (_, Some(r)) => r.stop(),
        _ => unreachable!(),
    }
    let all: Vec<&Replica> = rs.iter().collect();
    all_until(
        &all,
        "every agent seeing its coordination store down",
        |s| s["fleet"]["up"] == false,
    )
    .await;
    for r in &rs {
        r.set_healthy(false);
    }
    let s = all_until(&all, "every agent holding", |s| {
        s["held"]
            .as_str()
            .is_some_and(|h| h.contains("coordination store is failing"))
    })
    .await;
    assert!(s[0]["last_rollback"].is_null(), "{:#}", s[0]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        platform.requests().is_empty(),
        "no rollback while it is down"
    );
    for r in &rs {
        let m = r.metrics().await;
        assert!(m.lines().any(|l| l == "backstop_fleet_up 0"), "{m}");
    }
    // Probing goes on.
    let failures = |s: &Value| s["probes"][0]["consecutive_failures"].as_u64().unwrap_or(0);
    let before = failures(&status(rs[0].port).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(failures(&status(rs[0].port).await) > before);

    match (&pg, &mut redis) {
        (Some(pg), _) => pg.start_again(),
        (_, Some(r)) => *r = RedisServer::start_on(r.port),
        _ => unreachable!(),
    }
    let seen = all_until(&all, "the fleet's rollback once the store is back", |s| {
        s["fleet"]["rollback"]["status"] == "succeeded"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(platform.requests().len(), 1, "exactly one call");
    for (r, s) in rs.iter().zip(&seen) {
        assert_eq!(s["fleet"]["up"], true, "{s:#}");
        assert_eq!(
            s["fleet"]["rollback"]["by"],
            seen[0]["fleet"]["rollback"]["by"]
        );
        let m = r.metrics().await;
        assert!(m.lines().any(|l| l == "backstop_fleet_up 1"), "{m}");
    }
}

/// A rollback asked for by hand on one replica, the fleet healthy: made
/// once, under the fleet's lease, shown everywhere; asked again on another
/// replica, refused.
async fn a_manual_rollback_in_a_fleet_is_made_once(backend: Backend) {
    let platform = platform().await;
    let st = stores(backend, postgres_url());
    let rs = replicas(backend, &st, &platform, 3).await;
    all_watching(&rs).await;
    let ask = |port: u16| async move {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/v1/rollback"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "reason": "bad release" }))
            .send()
            .await
            .unwrap()
    };
    let r = ask(rs[1].port).await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let all: Vec<&Replica> = rs.iter().collect();
    let seen = all_until(&all, "every agent showing the manual rollback", |s| {
        s["fleet"]["rollback"]["status"] == "succeeded"
    })
    .await;
    for s in &seen {
        assert_eq!(s["fleet"]["rollback"]["by"], "r1", "{s:#}");
        assert_eq!(s["fleet"]["rollback"]["rule"], "manual");
    }
    let r = ask(rs[2].port).await;
    assert_eq!(r.status(), 409);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(platform.requests().len(), 1, "exactly one call");
    assert!(platform.requests()[0].json()["fencing_token"]
        .as_i64()
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_manual_rollback_in_a_fleet_is_made_once() {
    a_manual_rollback_in_a_fleet_is_made_once(Backend::Postgres).await;
}

/// Three agents see v2 become stable together: one baseline is written
/// (the first write wins; the others read that one, see `run.rs`); an
/// agent stopped cleanly leaves the fleet.
async fn three_agents_keep_one_baseline_and_a_clean_stop_leaves_the_fleet(backend: Backend) {
    let platform = platform().await;
    let st = stores(backend, postgres_url());
    let rs = replicas_watching(backend, &st, &platform, 3, "2s").await;
    let all: Vec<&Replica> = rs.iter().collect();
    let seen = all_until(&all, "v2 stable everywhere", |s| {
        s["deployment"]["state"] == "stable"
    })
    .await;
    for s in &seen {
        assert_eq!(s["baseline"]["deployment"], "v2", "{s:#}");
    }
    let (client, conn) = tokio_postgres::connect(&st.store_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query(
            &format!(
                "SELECT deployment, summary::text FROM \"{}\".backstop_baselines WHERE service = $1",
                st.schema
            ),
            &[&st.schema],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one baseline, however many agents");
    assert_eq!(rows[0].get::<_, String>(0), "v2");
    assert!(platform.requests().is_empty());

    // A clean shutdown leaves the fleet: its report is gone at once.
    if backend == Backend::Postgres {
        let mut rs = rs;
        let mut child = rs[0].agent.take().unwrap();
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        assert!(child.wait().unwrap().success());
        let replicas: Vec<String> = client
            .query(
                &format!(
                    "SELECT replica FROM \"{}\".backstop_fleet_reports WHERE service = $1 ORDER BY replica",
                    st.schema
                ),
                &[&st.schema],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(replicas, ["r1", "r2"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_agents_keep_one_baseline_and_a_clean_stop_leaves_the_fleet() {
    three_agents_keep_one_baseline_and_a_clean_stop_leaves_the_fleet(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bad_everywhere_is_rolled_back_by_exactly_one_agent() {
    bad_everywhere_is_rolled_back_by_exactly_one_agent(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_sick_replica_of_three_alerts_and_rolls_nothing_back() {
    one_sick_replica_of_three_alerts_and_rolls_nothing_back(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_lease_holder_killed_mid_call_is_taken_over_after_its_lease_expires() {
    the_lease_holder_killed_mid_call_is_taken_over_after_its_lease_expires(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_store_restarted_during_a_watch_holds_then_rolls_back_once() {
    the_coordination_store_restarted_during_a_watch_holds_then_rolls_back_once(Backend::Postgres)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bad_everywhere_is_rolled_back_by_exactly_one_agent() {
    bad_everywhere_is_rolled_back_by_exactly_one_agent(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_one_sick_replica_of_three_alerts_and_rolls_nothing_back() {
    one_sick_replica_of_three_alerts_and_rolls_nothing_back(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_the_lease_holder_killed_mid_call_is_taken_over_after_its_lease_expires() {
    the_lease_holder_killed_mid_call_is_taken_over_after_its_lease_expires(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_the_coordination_store_restarted_during_a_watch_holds_then_rolls_back_once() {
    the_coordination_store_restarted_during_a_watch_holds_then_rolls_back_once(Backend::Redis)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_manual_rollback_in_a_fleet_is_made_once() {
    a_manual_rollback_in_a_fleet_is_made_once(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_three_agents_keep_one_baseline_and_a_clean_stop_leaves_the_fleet() {
    three_agents_keep_one_baseline_and_a_clean_stop_leaves_the_fleet(Backend::Redis).await;
}

/// Asks every replica's `/healthz` and `/status`, each within a second.
async fn all_answer_within_a_second(rs: &[Replica]) {
    for r in rs {
        answers_within_a_second(r.port, &r.name).await;
    }
}

/// Redis behind a proxy fails (`fault`) as v2 goes bad everywhere, and the
/// watch ends while it still fails: the agents answer within a second
/// throughout, v2 ends `unhealthy` on time with no call, and once Redis
/// answers again the fleet rolls it back once.
async fn a_failing_coordination_store_holds_a_bad_deployment_without_slowing_the_watch_then_rolls_it_back_once(
    fault: Fault,
) {
    let platform = platform().await;
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port).await;
    let mut st = stores(Backend::Redis, postgres_url());
    st.redis_url = Some(format!(
        "redis://:{}@127.0.0.1:{}/0",
        redis.password, proxy.port
    ));
    // A watch that ends while the coordination store fails.
    let rs = replicas_watching(Backend::Redis, &st, &platform, 3, "8s").await;
    all_watching(&rs).await;
    let watching_since = std::time::Instant::now();

    // Redis fails as v2 goes bad everywhere.
    proxy.fail(fault).await;
    for r in &rs {
        r.set_healthy(false);
    }
    let all: Vec<&Replica> = rs.iter().collect();
    all_until(
        &all,
        "every agent seeing its coordination store fail",
        |s| s["fleet"]["up"] == false,
    )
    .await;
    // The watch keeps its pace: it ends on time, and v2, whose rollback
    // rule holds, is not promoted. The agents answer at once throughout.
    let mut last = vec![];
    while watching_since.elapsed() < Duration::from_secs(12) {
        all_answer_within_a_second(&rs).await;
        last.clear();
        for r in &rs {
            last.push(status(r.port).await);
        }
        if last.iter().all(|s| s["deployment"]["state"] == "unhealthy") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for s in &last {
        assert_eq!(s["deployment"]["id"], "v2", "{s:#}");
        assert_eq!(s["deployment"]["state"], "unhealthy", "{s:#}");
        assert_eq!(s["last_stable"], "v1", "{s:#}");
        assert!(
            s["held"]
                .as_str()
                .is_some_and(|h| h.contains("coordination store is failing")),
            "{s:#}"
        );
    }
    assert!(
        platform.requests().is_empty(),
        "no call while the store is {fault}"
    );
    all_answer_within_a_second(&rs).await;

    // It heals: the rule still holds, and the fleet rolls back once.
    proxy.heal().await;
    all_until(&all, "the fleet's rollback once the store answers", |s| {
        s["fleet"]["rollback"]["status"] == "succeeded"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(platform.requests().len(), 1, "exactly one call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_silent_coordination_store_holds_a_bad_deployment_without_slowing_the_watch_then_rolls_it_back_once(
) {
    a_failing_coordination_store_holds_a_bad_deployment_without_slowing_the_watch_then_rolls_it_back_once(Fault::Silent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_refused_coordination_store_holds_a_bad_deployment_without_slowing_the_watch_then_rolls_it_back_once(
) {
    a_failing_coordination_store_holds_a_bad_deployment_without_slowing_the_watch_then_rolls_it_back_once(Fault::Refused).await;
}
