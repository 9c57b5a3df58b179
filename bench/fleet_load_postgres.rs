//! The load fleet coordination puts on a PostgreSQL store: what one agent
//! costs per heartbeat, and what that means for 500 replicas. It runs the
//! coordinator's real statements (`backstop::fleet::Coordinator` on the
//! store's pool) in a schema of its own, dropped at the end.
//!
//! `cargo run --release -p backstop --example fleet_load_postgres -- postgres://user:pw@host/db`
//! (or with `$BACKSTOP_TEST_POSTGRES_URL`, as `tests/run.sh` exports it).
//! Figures and how to read them: `bench/README.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::config::StoreConfig;
use backstop::fleet::{Coordination, Coordinator, FleetConfig, Heartbeat, LossPolicy, Vote};
use backstop::secret::Secret;
use backstop::store::{now_ms, Store};
use backstop::watch::FLEET_READ_EVERY;

const SERVICE: &str = "bench";
const DEPLOYMENT: &str = "v2";
const REPLICAS: usize = 500;
const HEARTBEAT_S: f64 = 5.0;

fn report(i: usize, holds: bool) -> Heartbeat {
    let vote = |rule: &str, holds: bool| Vote {
        rule: rule.into(),
        verdict: if holds { "holds" } else { "clear" }.into(),
        summary: if holds {
            format!("consecutive_failures 3 >= 3 on probe {rule}")
        } else {
            String::new()
        },
    };
    Heartbeat {
        replica: format!("web-7d9f8c6b5-{i:05}"),
        deployment: DEPLOYMENT.into(),
        at_ms: now_ms(),
        votes: vec![vote("health failing", holds), vote("errors", false)],
    }
}

fn mean_ms(total: Duration, n: u64) -> f64 {
    total.as_secs_f64() * 1e3 / n as f64
}

async fn wal_lsn(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// How many times `op` completes in `secs` seconds with `workers` running
/// it concurrently.
async fn throughput<F, Fut>(workers: usize, secs: f64, op: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (op, done) = (op.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut k = 0u64;
            while Instant::now() < until {
                op(w, k).await;
                k += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / secs
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("BACKSTOP_TEST_POSTGRES_URL").ok())
        .expect("a PostgreSQL URL: the first argument or $BACKSTOP_TEST_POSTGRES_URL");
    let secs: f64 = std::env::var("FLEET_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let schema = format!("bench_fleet_{}", std::process::id());
    let workers = 8;
    let store = Store::connect(
        &StoreConfig {
            url: Secret::new(url.clone()),
            schema: schema.clone(),
            pool_size: workers,
            timeout: Duration::from_secs(10),
        },
        SERVICE,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let cfg = FleetConfig {
        replica: "bench".into(),
        quorum: 0.5,
        redis: None,
        heartbeat: Duration::from_secs(5),
        expiry: Duration::from_secs(15),
        lease: Duration::from_secs(30),
        on_coordination_loss: LossPolicy::Hold,
        live_baseline_min_peers: 2,
    };
    let coord = Arc::new(
        Coordinator::connect(&cfg, &store, Duration::from_secs(10))
            .await
            .unwrap(),
    );
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let expiry = cfg.expiry;
    println!("# fleet coordination through PostgreSQL: store load");

    // One agent, one heartbeat at a time: latency of each statement and
    // the WAL one publish writes (three replicas live).
    for i in 0..3 {
        coord
            .publish(SERVICE, &report(i, false), expiry)
            .await
            .unwrap();
    }
    let n = 2000u64;
    let before = wal_lsn(&admin).await;
    let t = Instant::now();
    for k in 0..n {
        coord
            .publish(SERVICE, &report((k % 3) as usize, false), expiry)
            .await
            .unwrap();
    }
    let publish = t.elapsed();
    let wal = (wal_lsn(&admin).await - before) as f64 / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        coord.live(SERVICE, DEPLOYMENT).await.unwrap();
    }
    let live3 = t.elapsed();
    let t = Instant::now();
    for _ in 0..n {
        coord.outcome(SERVICE, DEPLOYMENT).await.unwrap();
    }
    let outcome = t.elapsed();
    let bytes = serde_json::to_string(&report(0, true)).unwrap().len();
    println!("report size: {bytes} bytes of JSON (two rules)");
    println!(
        "one agent, sequential: publish {:.3} ms, live (3 replicas) {:.3} ms, outcome {:.3} ms; WAL per publish {:.0} bytes",
        mean_ms(publish, n),
        mean_ms(live3, n),
        mean_ms(outcome, n),
        wal
    );
    let normal = 1.0 + 2.0 / FLEET_READ_EVERY as f64;
    println!(
        "statements per agent per heartbeat: {normal:.2} in normal times (1 publish, live + outcome every {FLEET_READ_EVERY}th), 3 while one of its rollback rules holds"
    );

    // 500 replicas live.
    for i in 0..REPLICAS {
        coord
            .publish(SERVICE, &report(i, false), Duration::from_secs(3600))
            .await
            .unwrap();
    }
    let n = 200u64;
    let t = Instant::now();
    let mut rows = 0;
    for _ in 0..n {
        rows = coord.live(SERVICE, DEPLOYMENT).await.unwrap().len();
    }
    let live500 = t.elapsed();
    println!(
        "live with {rows} replicas: {:.3} ms per read, about {} kB returned",
        mean_ms(live500, n),
        rows * bytes / 1000
    );

    // Capacity with `workers` connections: publishes, 500-row reads, and
    // whole heartbeats of the normal and the holding pattern.
    let c = coord.clone();
    let publishes = throughput(workers, secs, move |w, k| {
        let c = c.clone();
        async move {
            let i = (w * 10_007 + k as usize) % REPLICAS;
            c.publish(SERVICE, &report(i, false), Duration::from_secs(3600))
                .await
                .unwrap();
        }
    })
    .await;
    let c = coord.clone();
    let reads = throughput(workers, secs, move |_, _| {
        let c = c.clone();
        async move {
            c.live(SERVICE, DEPLOYMENT).await.unwrap();
        }
    })
    .await;
    let c = coord.clone();
    let holding = throughput(workers, secs, move |w, k| {
        let c = c.clone();
        async move {
            let i = (w * 10_007 + k as usize) % REPLICAS;
            c.publish(SERVICE, &report(i, true), Duration::from_secs(3600))
                .await
                .unwrap();
            c.live(SERVICE, DEPLOYMENT).await.unwrap();
            c.outcome(SERVICE, DEPLOYMENT).await.unwrap();
        }
    })
    .await;
    println!(
        "capacity with {workers} connections, {REPLICAS} replicas live: {publishes:.0} publishes/s, {reads:.0} live reads/s, {holding:.0} holding heartbeats/s (publish + live + outcome)"
    );
    let beats = REPLICAS as f64 / HEARTBEAT_S;
    let need_normal_pub = beats;
    let need_normal_reads = beats / FLEET_READ_EVERY as f64;
    let busy_normal = need_normal_pub / publishes + need_normal_reads / reads;
    let busy_holding = beats / holding;
    println!(
        "{REPLICAS} replicas, heartbeat {HEARTBEAT_S}s: normal {need_normal_pub:.0} publishes/s + {need_normal_reads:.1} live reads/s = {:.0}% of the measured capacity; all holding {beats:.0} heartbeats/s = {:.0}% of it",
        busy_normal * 100.0,
        busy_holding * 100.0
    );
    println!(
        "WAL at {REPLICAS} replicas, normal: {:.0} kB/s",
        need_normal_pub * wal / 1000.0
    );

    admin
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}
