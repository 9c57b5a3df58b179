//! The fleet's coordination through PostgreSQL (`fleet::postgres`) against a
//! real server, several agents' coordinators on one schema: the lease is
//! exclusive, its fencing token grows, an expired lease is taken over and
//! its old holder can no longer write, and only fresh reports are live.

use std::time::Duration;

use backstop::config::StoreConfig;
use backstop::fleet::{Coordination, Coordinator, FleetConfig, Heartbeat, LossPolicy, Vote};
use backstop::secret::Secret;
use backstop::store::{now_ms, RollbackRecord, RollbackStatus, Store};
use backstop_tests::postgres_url;

/// A schema no other test uses.
fn unique_schema(stem: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("t_fleet_{stem}_{}_{n}", std::process::id())
}

/// One agent's coordinator on `schema`, on its own store's pool.
async fn agent(schema: &str, replica: &str) -> Coordinator {
    let store = Store::connect(
        &StoreConfig {
            url: Secret::new(postgres_url()),
            schema: schema.to_string(),
            pool_size: 4,
            timeout: Duration::from_secs(5),
        },
        "web",
    )
    .await
    .unwrap_or_else(|e| panic!("connecting to the store: {e:#}"));
    let cfg = FleetConfig {
        replica: replica.into(),
        quorum: 0.5,
        redis: None,
        heartbeat: Duration::from_secs(1),
        expiry: Duration::from_secs(3),
        lease: Duration::from_secs(5),
        on_coordination_loss: LossPolicy::Hold,
        live_baseline_min_peers: 2,
    };
    let c = Coordinator::connect(&cfg, &store, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        !c.describe().contains("backstop-test-pw"),
        "{}",
        c.describe()
    );
    c
}

fn report(replica: &str, deployment: &str, holds: bool) -> Heartbeat {
    Heartbeat {
        replica: replica.into(),
        deployment: deployment.into(),
        at_ms: now_ms(),
        votes: vec![Vote {
            rule: "health failing".into(),
            verdict: if holds { "holds" } else { "clear" }.into(),
            summary: if holds {
                "consecutive_failures 3 >= 3 on probe health".into()
            } else {
                String::new()
            },
        }],
    }
}

fn intent(deployment: &str, by: &str) -> RollbackRecord {
    RollbackRecord {
        deployment: deployment.into(),
        return_to: Some("v1".into()),
        rule: "health failing".into(),
        reason: "consecutive_failures 3 >= 3 on probe health".into(),
        evidence: vec![],
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_exclusive_and_its_token_grows_with_every_grant() {
    let schema = unique_schema("lease");
    let a = agent(&schema, "a").await;
    let b = agent(&schema, "b").await;
    let ttl = Duration::from_secs(30);
    let la = a.acquire("web", "v2", "a", ttl).await.unwrap().unwrap();
    assert_eq!((la.holder.as_str(), la.deployment.as_str()), ("a", "v2"));
    assert!(la.expires_at_ms > now_ms() - 60_000, "{la:?}");
    assert_eq!(b.acquire("web", "v2", "b", ttl).await.unwrap(), None);
    assert_eq!(
        a.acquire("web", "v2", "a", ttl).await.unwrap(),
        None,
        "not even its holder takes a lease twice"
    );
    // A compare-and-delete with a token that is not the lease's does nothing.
    let mut wrong = la.clone();
    wrong.token += 1000;
    b.release("web", &wrong).await.unwrap();
    assert_eq!(b.acquire("web", "v2", "b", ttl).await.unwrap(), None);
    a.release("web", &la).await.unwrap();
    let lb = b.acquire("web", "v2", "b", ttl).await.unwrap().unwrap();
    assert!(lb.token > la.token, "{lb:?} after {la:?}");
    // Another deployment of the service: its own lease, a newer token still.
    let lc = a.acquire("web", "v3", "a", ttl).await.unwrap().unwrap();
    assert!(lc.token > lb.token, "{lc:?} after {lb:?}");

    // Eight agents racing for one deployment: exactly one gets it.
    let mut racing = Vec::new();
    for i in 0..8 {
        let c = agent(&schema, &format!("r{i}")).await;
        racing.push(tokio::spawn(async move {
            c.acquire("web", "v4", &format!("r{i}"), ttl).await
        }));
    }
    let mut granted = Vec::new();
    for r in racing {
        if let Some(l) = r.await.unwrap().unwrap() {
            granted.push(l);
        }
    }
    assert_eq!(granted.len(), 1, "{granted:?}");
    assert!(granted[0].token > lc.token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_taken_over_and_its_old_holder_can_no_longer_write() {
    let schema = unique_schema("takeover");
    let a = agent(&schema, "a").await;
    let b = agent(&schema, "b").await;
    let mut la = a
        .acquire("web", "v2", "a", Duration::from_millis(400))
        .await
        .unwrap()
        .unwrap();
    assert!(a.record("web", &la, &intent("v2", "a")).await.unwrap());
    assert!(a
        .renew("web", &mut la, Duration::from_millis(400))
        .await
        .unwrap());
    // Not renewed again: it expires, and b takes it over.
    let mut lb = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        lb = b
            .acquire("web", "v2", "b", Duration::from_secs(30))
            .await
            .unwrap();
        if lb.is_some() {
            break;
        }
    }
    let lb = lb.expect("the expired lease was taken over");
    assert!(lb.token > la.token);
    let left = a.outcome("web", "v2").await.unwrap().unwrap();
    assert_eq!(
        (left.status, left.by.as_deref()),
        (RollbackStatus::Intent, Some("a")),
        "the intent of the holder that stopped is still there"
    );

    let mut done = intent("v2", "b");
    done.status = RollbackStatus::Succeeded;
    done.finished_at_ms = Some(now_ms());
    done.detail = "accepted".into();
    assert!(b.record("web", &lb, &done).await.unwrap());

    // The old holder, fenced: it can neither renew nor write.
    assert!(!a
        .renew("web", &mut la, Duration::from_secs(30))
        .await
        .unwrap());
    let mut late = intent("v2", "a");
    late.status = RollbackStatus::Failed;
    late.detail = "late".into();
    assert!(!a.record("web", &la, &late).await.unwrap());
    a.release("web", &la).await.unwrap();
    assert_eq!(
        a.acquire("web", "v2", "a", Duration::from_secs(30))
            .await
            .unwrap(),
        None,
        "the old holder's release left the new lease alone"
    );
    let rec = b.outcome("web", "v2").await.unwrap().unwrap();
    assert_eq!(rec.status, RollbackStatus::Succeeded);
    assert_eq!(rec.by.as_deref(), Some("b"));
    assert_eq!(rec.detail, "accepted");

    // Released, the lease is free; the record stays; a record may not be
    // written for another deployment than the lease's.
    b.release("web", &lb).await.unwrap();
    assert!(!b.record("web", &lb, &intent("v2", "b")).await.unwrap());
    assert!(b.record("web", &lb, &intent("v9", "b")).await.is_err());
    assert!(b.outcome("web", "v9").await.unwrap().is_none());
    assert_eq!(
        b.outcome("web", "v2").await.unwrap().unwrap().status,
        RollbackStatus::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_fresh_reports_of_the_deployment_are_live_and_leaving_is_immediate() {
    let schema = unique_schema("live");
    let a = agent(&schema, "a").await;
    let b = agent(&schema, "b").await;
    a.publish("web", &report("a", "v2", true), Duration::from_millis(500))
        .await
        .unwrap();
    b.publish("web", &report("b", "v2", false), Duration::from_secs(30))
        .await
        .unwrap();
    b.publish("web", &report("c", "v1", true), Duration::from_secs(30))
        .await
        .unwrap();
    // Another service on the same schema is not counted.
    b.publish("api", &report("d", "v2", true), Duration::from_secs(30))
        .await
        .unwrap();
    let live = a.live("web", "v2").await.unwrap();
    let names: Vec<&str> = live.iter().map(|r| r.replica.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(live[0], report_like(&live[0], "a", "v2", true));
    let t = backstop::fleet::tally(&live, "health failing");
    assert_eq!((t.agree, t.live), (1, 2));

    // A new report replaces the replica's old one.
    b.publish("web", &report("b", "v2", true), Duration::from_secs(30))
        .await
        .unwrap();
    let live = a.live("web", "v2").await.unwrap();
    assert_eq!(backstop::fleet::tally(&live, "health failing").agree, 2);

    // a's report expires by the server's clock.
    let mut names = vec![];
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        names = a
            .live("web", "v2")
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.replica)
            .collect::<Vec<_>>();
        if names == ["b"] {
            break;
        }
    }
    assert_eq!(names, ["b"]);
    b.leave("web", "b").await.unwrap();
    assert!(a.live("web", "v2").await.unwrap().is_empty());
    assert_eq!(a.live("web", "v1").await.unwrap().len(), 1);
}

/// The report as published, with the `at_ms` it was published with.
fn report_like(got: &Heartbeat, replica: &str, deployment: &str, holds: bool) -> Heartbeat {
    Heartbeat {
        at_ms: got.at_ms,
        ..report(replica, deployment, holds)
    }
}

#[tokio::test]
async fn samples_beside_the_heartbeat_are_read_per_deployment_with_their_age_and_expire() {
    let schema = unique_schema("samples");
    let (a, b) = (agent(&schema, "a").await, agent(&schema, "b").await);
    let summary = |deployment: &str, value: f64| {
        let mut s = backstop_judge::live::LiveSummary::new(deployment);
        s.probes.insert(
            "app".into(),
            [("latency_ms".to_string(), vec![(0, value), (500, value)])].into(),
        );
        s
    };
    let long = Duration::from_secs(60);
    let short = Duration::from_millis(300);
    a.publish_samples("web", "a", &summary("d1", 10.0), long)
        .await
        .unwrap();
    b.publish_samples("web", "b", &summary("d1", 11.0), short)
        .await
        .unwrap();
    b.publish_samples("web", "c", &summary("d2", 12.0), long)
        .await
        .unwrap();
    let got = a.live_samples("web", "d1", 100).await.unwrap();
    let replicas: Vec<&str> = got.iter().map(|p| p.replica.as_str()).collect();
    assert_eq!(replicas, ["a", "b"]);
    assert_eq!(got[1].summary, summary("d1", 11.0));
    assert!(got[0].age < long);
    // The votes read as before: no samples in them.
    assert!(a.live("web", "d1").await.unwrap().is_empty());
    tokio::time::sleep(short * 2).await;
    let got = a.live_samples("web", "d1", 100).await.unwrap();
    assert_eq!(got.len(), 1, "b's samples expired");
    assert!(
        got[0].age >= short,
        "aged by the server's clock: {:?}",
        got[0].age
    );
    // Published again, a replica's row is replaced, not added.
    a.publish_samples("web", "a", &summary("d2", 13.0), long)
        .await
        .unwrap();
    assert!(a.live_samples("web", "d1", 100).await.unwrap().is_empty());
    assert_eq!(a.live_samples("web", "d2", 100).await.unwrap().len(), 2);
    a.leave("web", "a").await.unwrap();
    assert_eq!(a.live_samples("web", "d2", 100).await.unwrap().len(), 1);
}
