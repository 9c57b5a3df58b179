//! The live baseline: three real agents, each beside its own replica of the
//! service (a stand-in whose latency the test sets), sharing a
//! coordination store. One replica (`r0`) runs the new deployment `v2`,
//! the others still run `v1`, the deployment to return to, whose stored
//! baseline was measured at 20 ms. All replicas slowing down together
//! (load, not the deploy) is no regression against the live peers, though
//! it is against the stored baseline; a canary 2.5× slower than its peers
//! is rolled back, once; with no live peer, or once the peers are gone,
//! the rule falls back to the stored baseline (`auto`) or stays
//! inconclusive (`live`). Every scenario
//! runs on PostgreSQL (the `[store]`) and on Redis (`[fleet] redis`).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backstop::config::StoreConfig;
use backstop::secret::Secret;
use backstop::store::Store;
use backstop_judge::baseline::BaselineBuilder;
use backstop_judge::observe::{Outcome, Sample};
use backstop_tests::{
    backstop_bin, closed_port, postgres_url, redis_url, wait_for_port, HttpServer, Reply,
};
use serde_json::{json, Value};

use crate::e2e::status;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Postgres,
    Redis,
}

/// The stored baseline's typical latency.
const BASE_MS: f64 = 20.0;

fn unique_schema(stem: &str) -> String {
    crate::fleet::unique_schema(&format!("live_{stem}"))
}

/// A spread of ±20 % around 1, the same sequence for every run.
fn jitter(state: &AtomicU64) -> f64 {
    let mut x = state.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    0.8 + 0.4 * (x % 10_000) as f64 / 10_000.0
}

/// `v1` stable, with a baseline measured at [`BASE_MS`].
async fn seed(schema: &str) {
    let store = crate::fleet::seed(&postgres_url(), schema).await;
    let j = AtomicU64::new(7);
    let mut b = BaselineBuilder::with_capacity("v1", 1000, 1);
    for _ in 0..500 {
        let v = BASE_MS * jitter(&j);
        b.add(
            "app",
            &Sample::new(
                Outcome::Ok,
                tokio::time::Instant::now(),
                vec![("latency_ms", v)],
            ),
        );
    }
    assert!(store.save_baseline(&b.finish()).await.unwrap());
}

struct Replica {
    _server: HttpServer,
    port: u16,
    _dir: tempfile::TempDir,
    agent: Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

const RULES: &str = r#"
[[rule]]
name = "slower than v1"
probe = "app"
when = "latency_ms > 1.3x baseline for 5s"
action = "rollback"

[[rule]]
name = "slower than the stored v1"
probe = "app"
when = "latency_ms > 1.3x baseline for 5s"
action = "alert"
baseline = "stored"

[[rule]]
name = "slower than the live v1"
probe = "app"
when = "latency_ms > 1.3x baseline for 5s"
action = "alert"
baseline = "live"
"#;

/// Replica `name` on `deployment`, answering in `ms` (±20 %), checked every 100 ms.
async fn replica(
    backend: Backend,
    schema: &str,
    platform: &HttpServer,
    name: &str,
    deployment: &str,
    ms: f64,
) -> Replica {
    let j = AtomicU64::new(name.len() as u64 * 1_000_003 + ms as u64);
    let server = HttpServer::start(move |_| {
        Reply::text(200, "ok").after(Duration::from_secs_f64(ms * jitter(&j) / 1e3))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let config = dir.path().join("backstop.toml");
    let redis = match backend {
        Backend::Postgres => String::new(),
        Backend::Redis => format!("redis = \"{}\"\n", redis_url()),
    };
    std::fs::write(
        &config,
        format!(
            r#"[agent]
listen = "127.0.0.1:{port}"
state_dir = "{state}"
default_rules = false

[service]
name = "{schema}"

[deployment]
id = "{deployment}"
warmup = "1s"
watch = "10m"

[[probe]]
name = "app"
level = 4
type = "http"
url = "{url}"
interval = "100ms"
timeout = "90ms"
{RULES}
[rollback]
target = "webhook"
cooldown = "1s"
deadline = "5s"

[rollback.webhook]
url = "{platform}"

[store]
url = "{store}"
schema = "{schema}"
timeout = "1s"

[fleet]
replica = "{name}"
heartbeat = "300ms"
expiry = "3s"
lease = "2s"
{redis}"#,
            state = dir.path().join("state").display(),
            url = server.url("/"),
            platform = platform.url("/rollback"),
            store = postgres_url(),
        ),
    )
    .unwrap();
    let agent = Command::new(backstop_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    Replica {
        _server: server,
        port,
        _dir: dir,
        agent,
    }
}

/// The canary on `v2` answering in `canary` ms, and `peers` replicas on
/// `v1` answering in `load` ms.
async fn fleet(
    backend: Backend,
    platform: &HttpServer,
    canary: f64,
    load: f64,
    peers: usize,
) -> Vec<Replica> {
    let schema = unique_schema(match backend {
        Backend::Postgres => "pg",
        Backend::Redis => "redis",
    });
    seed(&schema).await;
    let mut out = Vec::new();
    for i in 1..=peers {
        out.push(replica(backend, &schema, platform, &format!("r{i}"), "v1", load).await);
    }
    out.insert(
        0,
        replica(backend, &schema, platform, "r0", "v2", canary).await,
    );
    out
}

fn finding<'a>(s: &'a Value, rule: &str) -> &'a Value {
    let r = s["rules"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == rule));
    r.map_or(&Value::Null, |r| &r["detail"]["findings"][0])
}

/// Polls the canary's `/status` until `f` holds (up to 30 s).
async fn until(r: &Replica, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        last = status(r.port).await;
        if f(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}; last /status:\n{last:#}");
}

async fn platform() -> HttpServer {
    HttpServer::start(|_| Reply::json(200, json!({ "ok": true }))).await
}

async fn a_load_every_replica_shares_rolls_nothing_back(backend: Backend) {
    let platform = platform().await;
    // Every replica 1.6× slower than when v1's baseline was measured.
    let rs = fleet(backend, &platform, 1.6 * BASE_MS, 1.6 * BASE_MS, 2).await;
    let judged = |s: &Value| {
        let live = finding(s, "slower than v1");
        let stored = finding(s, "slower than the stored v1");
        live["baseline_source"] == "live"
            && live["verdict"] == "clear"
            && live["samples"].as_u64() >= Some(30)
            && stored["verdict"] == "holds"
    };
    until(&rs[0], "v2 judged clear against its live peers", judged).await;
    // A few more windows' time: it stays clear, nothing is called.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = status(rs[0].port).await;
    let f = finding(&s, "slower than v1");
    assert_eq!(f["verdict"], "clear", "{s:#}");
    assert_eq!(f["baseline_replicas"], 2, "{f:#}");
    assert_eq!(f["baseline_deployment"], "v1", "{f:#}");
    assert!(f["baseline_samples"].as_u64().unwrap() >= 40, "{f:#}");
    // The stored baseline, measured before the load, would have rolled
    // back: the rule forced to it holds.
    assert_eq!(finding(&s, "slower than the stored v1")["verdict"], "holds");
    assert_eq!(
        finding(&s, "slower than the stored v1")["baseline_source"],
        "stored"
    );
    assert!(
        platform.requests().is_empty(),
        "no rollback call: {:?}",
        platform.requests()
    );
}

async fn a_canary_slower_than_its_live_peers_is_rolled_back_once(backend: Backend) {
    let platform = platform().await;
    let rs = fleet(backend, &platform, 2.5 * BASE_MS, BASE_MS, 2).await;
    until(&rs[0], "v2 rolled back", |s| {
        s["last_rollback"]["status"] == "succeeded"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = platform.requests();
    assert_eq!(calls.len(), 1, "exactly one rollback call: {calls:?}");
    let body = calls[0].json();
    assert_eq!(body["deployment"], "v2");
    assert_eq!(body["rule"], "slower than v1");
    let judged_by = &body["evidence"][0]["judged_by"];
    assert_eq!(judged_by["source"], "live", "{body:#}");
    assert_eq!(judged_by["deployment"], "v1", "{body:#}");
    assert_eq!(judged_by["replicas"], 2, "{body:#}");
    let summary = body["evidence"][0]["summary"].as_str().unwrap();
    assert!(
        summary.contains("live baseline: 2 replicas on v1"),
        "{summary}"
    );
}

async fn without_live_peers_auto_uses_the_stored_baseline_and_live_stays_inconclusive(
    backend: Backend,
) {
    let platform = platform().await;
    let rs = fleet(backend, &platform, BASE_MS, BASE_MS, 0).await;
    let s = until(&rs[0], "v2 judged against the stored baseline", |s| {
        finding(s, "slower than v1")["baseline_source"] == "stored"
            && finding(s, "slower than v1")["verdict"] == "clear"
    })
    .await;
    let live = finding(&s, "slower than the live v1");
    assert_eq!(live["verdict"], "inconclusive", "{live:#}");
    assert!(
        live["reason"]
            .as_str()
            .unwrap()
            .contains("live baseline: no replica reports"),
        "{live:#}"
    );
    assert!(platform.requests().is_empty());
}

/// The peers stop (killed: no clean leave): once their samples expire, the
/// canary's `auto` rule goes back to the stored baseline and its `live`
/// rule turns inconclusive.
async fn when_the_live_peers_are_gone_auto_falls_back_to_the_stored_baseline(backend: Backend) {
    let platform = platform().await;
    let mut rs = fleet(backend, &platform, BASE_MS, BASE_MS, 2).await;
    until(&rs[0], "v2 judged clear against its live peers", |s| {
        finding(s, "slower than v1")["baseline_source"] == "live"
            && finding(s, "slower than v1")["verdict"] == "clear"
            && finding(s, "slower than the live v1")["verdict"] == "clear"
    })
    .await;
    rs.truncate(1);
    let s = until(&rs[0], "v2 judged against the stored baseline again", |s| {
        finding(s, "slower than v1")["baseline_source"] == "stored"
            && finding(s, "slower than v1")["verdict"] == "clear"
            && finding(s, "slower than the live v1")["verdict"] == "inconclusive"
    })
    .await;
    assert_eq!(
        finding(&s, "slower than v1")["baseline_replicas"],
        Value::Null
    );
    // Their samples out of the window ("0 of 2 replicas … gave") or
    // expired ("no replica reports"), whichever the step saw.
    let why = finding(&s, "slower than the live v1")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.starts_with("live baseline: "), "{why}");
    assert!(platform.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_when_the_live_peers_are_gone_auto_falls_back_to_the_stored_baseline() {
    when_the_live_peers_are_gone_auto_falls_back_to_the_stored_baseline(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_when_the_live_peers_are_gone_auto_falls_back_to_the_stored_baseline() {
    when_the_live_peers_are_gone_auto_falls_back_to_the_stored_baseline(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_load_every_replica_shares_rolls_nothing_back() {
    a_load_every_replica_shares_rolls_nothing_back(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_load_every_replica_shares_rolls_nothing_back() {
    a_load_every_replica_shares_rolls_nothing_back(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_canary_slower_than_its_live_peers_is_rolled_back_once() {
    a_canary_slower_than_its_live_peers_is_rolled_back_once(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_canary_slower_than_its_live_peers_is_rolled_back_once() {
    a_canary_slower_than_its_live_peers_is_rolled_back_once(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_live_peers_auto_uses_the_stored_baseline_and_live_stays_inconclusive() {
    without_live_peers_auto_uses_the_stored_baseline_and_live_stays_inconclusive(Backend::Postgres)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_without_live_peers_auto_uses_the_stored_baseline_and_live_stays_inconclusive() {
    without_live_peers_auto_uses_the_stored_baseline_and_live_stays_inconclusive(Backend::Redis)
        .await;
}

/// What the live baseline costs each store: one replica's samples (one
/// signal of one probe, [`backstop_judge::live::LIVE_SAMPLES`] values) as
/// published per heartbeat, and the time of a read of every replica's by
/// the new deployment's agent, at 3, 50 and 500 replicas. It runs with the
/// suite and checks that a bounded read returns the freshest replicas, no
/// more, whatever the store holds; the figures it prints are those of
/// `bench/README.md`:
/// `bash tests/run.sh -p backstop-tests --test it -- fleet_live::cost --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_of_the_live_baseline_per_store() {
    use backstop::fleet::{Coordination, Coordinator, FleetConfig, LossPolicy};
    let summary = {
        let j = AtomicU64::new(3);
        let mut s = backstop_judge::live::LiveSummary::new("v1");
        s.probes.insert(
            "app".into(),
            [(
                "latency_ms".to_string(),
                (0..backstop_judge::live::LIVE_SAMPLES)
                    .map(|k| {
                        (
                            (k * 1000) as u32,
                            (BASE_MS * jitter(&j) * 1000.0).round() / 1000.0,
                        )
                    })
                    .collect(),
            )]
            .into(),
        );
        s
    };
    let bytes = serde_json::to_string(&summary).unwrap().len();
    println!("one replica's samples per heartbeat: {bytes} bytes of JSON");
    for backend in [Backend::Postgres, Backend::Redis] {
        for n in [3usize, 50, 500] {
            let schema = unique_schema("cost");
            let store = Store::connect(
                &StoreConfig {
                    url: Secret::new(postgres_url()),
                    schema: schema.clone(),
                    pool_size: 4,
                    timeout: Duration::from_secs(10),
                },
                &schema,
            )
            .await
            .unwrap();
            let cfg = FleetConfig {
                replica: "r0".into(),
                quorum: 0.5,
                redis: (backend == Backend::Redis).then(|| Secret::new(redis_url())),
                heartbeat: Duration::from_secs(1),
                expiry: Duration::from_secs(60),
                lease: Duration::from_secs(5),
                on_coordination_loss: LossPolicy::Hold,
                live_baseline_min_peers: 2,
            };
            let c = Coordinator::connect(&cfg, &store, Duration::from_secs(10))
                .await
                .unwrap();
            let started = std::time::Instant::now();
            for i in 0..n {
                c.publish_samples(&schema, &format!("r{i}"), &summary, cfg.expiry)
                    .await
                    .unwrap();
            }
            let publish = started.elapsed() / n as u32;
            let bounded = backstop::fleet::live::PEERS_READ + 1;
            let median = |limit: usize| {
                let c = &c;
                let schema = &schema;
                async move {
                    let mut reads = Vec::new();
                    for _ in 0..21 {
                        let t = std::time::Instant::now();
                        let got = c.live_samples(schema, "v1", limit).await.unwrap();
                        reads.push(t.elapsed());
                        assert_eq!(got.len(), n.min(limit));
                    }
                    reads.sort();
                    reads[10].as_secs_f64() * 1e3
                }
            };
            let all = median(n).await;
            let some = median(bounded).await;
            println!(
                "{backend:?}, {n} replicas: publish {:.2} ms each; read of all {:.2} ms ({} KB); \
                 read of the freshest {bounded} (what an agent reads) {:.2} ms ({} KB); medians of 21",
                publish.as_secs_f64() * 1e3,
                all,
                n * bytes / 1024,
                some,
                n.min(bounded) * bytes / 1024,
            );
        }
    }
}
