//! Fleet coordination through Redis, through `Coordinator`, against real
//! servers: heartbeats and their expiry, the lease and its fencing token,
//! the fenced rollback record, and a server that is unreachable, silent or
//! restarted. Every test uses a service name of its own.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backstop::fleet::redis::RedisFleet;
use backstop::fleet::{tally, Coordination, Coordinator, Heartbeat, Lease, Vote};
use backstop::secret::Secret;
use backstop::store::{RollbackRecord, RollbackStatus};
use backstop_tests::{closed_port, redis_url, RedisServer};
use fred::prelude::{ClientLike, KeysInterface};

const TIMEOUT: Duration = Duration::from_secs(2);
const LONG: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_millis(300);

async fn fleet(url: &str) -> Coordinator {
    Coordinator::Redis(
        RedisFleet::connect(&Secret::new(url), TIMEOUT)
            .await
            .expect("connect"),
    )
}

/// A service name no other test (or earlier run) uses.
fn service(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{test}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn report(replica: &str, deployment: &str, holds: bool) -> Heartbeat {
    Heartbeat {
        replica: replica.into(),
        deployment: deployment.into(),
        at_ms: 1,
        votes: vec![Vote {
            rule: "errors".into(),
            verdict: if holds { "holds" } else { "clear" }.into(),
            summary: if holds {
                "error_rate 0.2 > 0.05".into()
            } else {
                String::new()
            },
        }],
    }
}

fn record(deployment: &str, by: &str) -> RollbackRecord {
    RollbackRecord {
        deployment: deployment.into(),
        return_to: Some("d1".into()),
        rule: "errors".into(),
        reason: format!("{by}: errors held on 2 of 3 replicas"),
        evidence: Vec::new(),
        target: "webhook".into(),
        status: RollbackStatus::Succeeded,
        intent_at_ms: 1_000,
        finished_at_ms: Some(2_000),
        detail: "200 OK".into(),
        returned_to: Some("d1".into()),
        not_effective: false,
        by: Some(by.into()),
    }
}

fn names(reports: &[Heartbeat]) -> Vec<&str> {
    reports.iter().map(|r| r.replica.as_str()).collect()
}

/// Polls `live` until it lists exactly `want` (at most 10 s), and returns
/// the last answer either way.
async fn live_until(c: &Coordinator, svc: &str, deployment: &str, want: &[&str]) -> Vec<Heartbeat> {
    let mut last = Vec::new();
    for _ in 0..200 {
        last = c.live(svc, deployment).await.expect("live");
        if names(&last) == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

async fn raw_client(url: &str) -> fred::prelude::Client {
    let config = fred::prelude::Config::from_url(url).unwrap();
    let client = fred::prelude::Builder::from_config(config).build().unwrap();
    client.init().await.expect("raw client connects");
    client
}

#[tokio::test]
async fn live_lists_the_fresh_replicas_of_the_deployment_once_each() {
    let c = fleet(&redis_url()).await;
    let svc = service("live");
    c.publish(&svc, &report("a", "d2", false), LONG)
        .await
        .unwrap();
    c.publish(&svc, &report("b", "d2", true), LONG)
        .await
        .unwrap();
    c.publish(&svc, &report("c", "d1", true), LONG)
        .await
        .unwrap();
    c.publish(&svc, &report("short", "d2", true), SHORT)
        .await
        .unwrap();
    // A second heartbeat replaces the first.
    c.publish(&svc, &report("a", "d2", true), LONG)
        .await
        .unwrap();

    let live = c.live(&svc, "d2").await.unwrap();
    // `short` may already have expired on a slow machine; the rest is sure.
    assert!(
        names(&live) == ["a", "b", "short"] || names(&live) == ["a", "b"],
        "{live:?}"
    );
    assert_eq!(live[0], report("a", "d2", true));
    assert_eq!(names(&c.live(&svc, "d1").await.unwrap()), ["c"]);
    assert!(c.live(&svc, "d3").await.unwrap().is_empty());
    assert!(c.live("another-service", "d2").await.unwrap().is_empty());

    // The short heartbeat expires; the others stay.
    let live = live_until(&c, &svc, "d2", &["a", "b"]).await;
    assert_eq!(names(&live), ["a", "b"]);
    // A replica that comes back counts again.
    c.publish(&svc, &report("short", "d2", false), LONG)
        .await
        .unwrap();
    assert_eq!(
        names(&c.live(&svc, "d2").await.unwrap()),
        ["a", "b", "short"]
    );
}

#[tokio::test]
async fn peers_see_each_others_reports_and_a_replica_that_leaves_stops_counting_at_once() {
    let url = redis_url();
    let (a, b) = (fleet(&url).await, fleet(&url).await);
    let svc = service("leave");
    a.publish(&svc, &report("a", "d2", true), LONG)
        .await
        .unwrap();
    b.publish(&svc, &report("b", "d2", false), LONG)
        .await
        .unwrap();
    assert_eq!(names(&a.live(&svc, "d2").await.unwrap()), ["a", "b"]);
    assert_eq!(names(&b.live(&svc, "d2").await.unwrap()), ["a", "b"]);

    b.leave(&svc, "b").await.unwrap();
    assert_eq!(names(&a.live(&svc, "d2").await.unwrap()), ["a"]);
    // Leaving twice, or without having published, is not an error.
    b.leave(&svc, "b").await.unwrap();
    b.leave(&svc, "never-published").await.unwrap();
    a.leave(&svc, "a").await.unwrap();
    assert!(a.live(&svc, "d2").await.unwrap().is_empty());
}

#[tokio::test]
async fn one_holding_replica_of_three_does_not_reach_half() {
    let c = fleet(&redis_url()).await;
    let svc = service("tally");
    c.publish(&svc, &report("a", "d2", true), LONG)
        .await
        .unwrap();
    c.publish(&svc, &report("b", "d2", false), LONG)
        .await
        .unwrap();
    c.publish(&svc, &report("c", "d2", false), LONG)
        .await
        .unwrap();
    let t = tally(&c.live(&svc, "d2").await.unwrap(), "errors");
    assert_eq!((t.agree, t.live), (1, 3));
    assert!(!t.reaches(0.5));

    c.publish(&svc, &report("b", "d2", true), LONG)
        .await
        .unwrap();
    let t = tally(&c.live(&svc, "d2").await.unwrap(), "errors");
    assert_eq!((t.agree, t.live), (2, 3));
    assert!(t.reaches(0.5));
}

#[tokio::test]
async fn keys_carry_the_service_as_hash_tag_and_expire() {
    let url = redis_url();
    let c = fleet(&url).await;
    let svc = service("keys");
    c.publish(&svc, &report("a", "d2", true), LONG)
        .await
        .unwrap();
    let lease = c.acquire(&svc, "d2", "a", LONG).await.unwrap().unwrap();
    assert!(c.record(&svc, &lease, &record("d2", "a")).await.unwrap());

    let raw = raw_client(&url).await;
    let pttl = |key: String| {
        let raw = raw.clone();
        async move { raw.pttl::<i64, _>(key).await.unwrap() }
    };
    for what in ["reports", "live", "lease:d2"] {
        let left = pttl(format!("backstop:{{{svc}}}:{what}")).await;
        assert!(left > 0 && left <= 60_000, "{what}: {left}");
    }
    let left = pttl(format!("backstop:{{{svc}}}:rollback:d2")).await;
    assert!(left > 29 * 24 * 3600 * 1000, "rollback record: {left}");
    // The counter of tokens never expires.
    assert_eq!(pttl(format!("backstop:{{{svc}}}:fence")).await, -1);
    let held: Option<String> = raw
        .get(format!("backstop:{{{svc}}}:lease:d2"))
        .await
        .unwrap();
    assert_eq!(held, Some(format!("{}:a", lease.token)));
    raw.quit().await.unwrap();
}

#[tokio::test]
async fn a_lease_is_exclusive_while_held_and_tokens_grow() {
    let url = redis_url();
    let (a, b) = (fleet(&url).await, fleet(&url).await);
    let svc = service("lease");
    let first = a.acquire(&svc, "d2", "a", LONG).await.unwrap().unwrap();
    assert_eq!(
        (first.deployment.as_str(), first.holder.as_str()),
        ("d2", "a")
    );
    assert!(first.token > 0);
    assert_eq!(b.acquire(&svc, "d2", "b", LONG).await.unwrap(), None);
    // The holder itself cannot take it a second time either.
    assert_eq!(a.acquire(&svc, "d2", "a", LONG).await.unwrap(), None);

    a.release(&svc, &first).await.unwrap();
    let second = b.acquire(&svc, "d2", "b", LONG).await.unwrap().unwrap();
    assert!(second.token > first.token, "{second:?} after {first:?}");
    // Another deployment has a lease of its own, with a token still greater.
    let other = a.acquire(&svc, "d3", "a", LONG).await.unwrap().unwrap();
    assert!(other.token > second.token, "{other:?} after {second:?}");
    // Expiry is by the store's clock, a minute ahead.
    assert!(second.expires_at_ms > 1_600_000_000_000, "{second:?}");
}

#[tokio::test]
async fn of_many_agents_racing_for_a_lease_exactly_one_gets_it() {
    let url = redis_url();
    let svc = Arc::new(service("race"));
    let mut tasks = Vec::new();
    for i in 0..12 {
        let c = fleet(&url).await;
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            c.acquire(&svc, "d2", &format!("r{i}"), LONG).await.unwrap()
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        if let Some(lease) = t.await.unwrap() {
            won.push(lease);
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
}

#[tokio::test]
async fn renew_keeps_a_lease_held_past_its_first_ttl() {
    let url = redis_url();
    let (a, b) = (fleet(&url).await, fleet(&url).await);
    let svc = service("renew");
    let mut lease = a.acquire(&svc, "d2", "a", SHORT).await.unwrap().unwrap();
    let before = lease.expires_at_ms;
    assert!(a.renew(&svc, &mut lease, LONG).await.unwrap());
    assert!(lease.expires_at_ms > before, "{lease:?} after {before}");
    tokio::time::sleep(SHORT * 3).await;
    assert_eq!(b.acquire(&svc, "d2", "b", LONG).await.unwrap(), None);
    assert!(a.record(&svc, &lease, &record("d2", "a")).await.unwrap());
}

/// `a` takes a lease that expires; `b` takes the deployment's lease over.
async fn taken_over(a: &Coordinator, b: &Coordinator, svc: &str) -> (Lease, Lease) {
    let old = a.acquire(svc, "d2", "a", SHORT).await.unwrap().unwrap();
    for _ in 0..200 {
        if let Some(new) = b.acquire(svc, "d2", "b", LONG).await.unwrap() {
            return (old, new);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the lease of {old:?} never expired");
}

#[tokio::test]
async fn an_expired_lease_goes_to_another_holder_with_a_greater_token() {
    let url = redis_url();
    let (a, b) = (fleet(&url).await, fleet(&url).await);
    let svc = service("expired");
    let (old, new) = taken_over(&a, &b, &svc).await;
    assert!(new.token > old.token, "{new:?} after {old:?}");
    assert_eq!(new.holder, "b");

    // The old holder learns it lost the lease, and cannot take it back.
    let mut stale = old.clone();
    assert!(!a.renew(&svc, &mut stale, LONG).await.unwrap());
    assert_eq!(stale.expires_at_ms, old.expires_at_ms);
    assert_eq!(a.acquire(&svc, "d2", "a", LONG).await.unwrap(), None);

    // Releasing the stale lease leaves the new holder's in place.
    a.release(&svc, &old).await.unwrap();
    assert_eq!(a.acquire(&svc, "d2", "c", LONG).await.unwrap(), None);
    let mut held = new.clone();
    assert!(b.renew(&svc, &mut held, LONG).await.unwrap());

    // The new holder's own release frees it.
    b.release(&svc, &held).await.unwrap();
    let third = a.acquire(&svc, "d2", "c", LONG).await.unwrap().unwrap();
    assert!(third.token > new.token);
}

#[tokio::test]
async fn a_stale_lease_cannot_write_the_record() {
    let url = redis_url();
    let (a, b) = (fleet(&url).await, fleet(&url).await);
    let svc = service("fenced");
    assert_eq!(a.outcome(&svc, "d2").await.unwrap(), None);
    let (old, new) = taken_over(&a, &b, &svc).await;

    // Nothing written yet: the stale write is refused and writes nothing.
    assert!(!a.record(&svc, &old, &record("d2", "a")).await.unwrap());
    assert_eq!(b.outcome(&svc, "d2").await.unwrap(), None);

    let mut theirs = record("d2", "b");
    theirs.status = RollbackStatus::Intent;
    theirs.finished_at_ms = None;
    assert!(b.record(&svc, &new, &theirs).await.unwrap());
    assert_eq!(a.outcome(&svc, "d2").await.unwrap(), Some(theirs.clone()));
    // The holder may update its own record while it holds the lease.
    let done = record("d2", "b");
    assert!(b.record(&svc, &new, &done).await.unwrap());

    // The stale write is still refused and the record unchanged.
    assert!(!a.record(&svc, &old, &record("d2", "a")).await.unwrap());
    assert_eq!(a.outcome(&svc, "d2").await.unwrap(), Some(done.clone()));

    // Once released, even the last holder cannot write any more.
    b.release(&svc, &new).await.unwrap();
    assert!(!b.record(&svc, &new, &record("d2", "b2")).await.unwrap());
    assert_eq!(a.outcome(&svc, "d2").await.unwrap(), Some(done));
    assert_eq!(a.outcome(&svc, "d3").await.unwrap(), None);
}

#[tokio::test]
async fn a_record_of_another_deployment_than_the_lease_is_an_error() {
    let c = fleet(&redis_url()).await;
    let svc = service("mismatch");
    let lease = c.acquire(&svc, "d2", "a", LONG).await.unwrap().unwrap();
    let err = c
        .record(&svc, &lease, &record("d3", "a"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"d3\""), "{err}");
    assert_eq!(c.outcome(&svc, "d3").await.unwrap(), None);
}

#[tokio::test]
async fn an_unreadable_report_is_an_error_not_an_absent_replica() {
    let url = redis_url();
    let c = fleet(&url).await;
    let svc = service("garbled");
    c.publish(&svc, &report("a", "d2", true), LONG)
        .await
        .unwrap();
    let raw = raw_client(&url).await;
    let _: () = raw
        .custom(
            fred::types::CustomCommand::new_static(
                "HSET",
                fred::types::ClusterHash::FirstKey,
                false,
            ),
            vec![
                format!("backstop:{{{svc}}}:reports"),
                "a".into(),
                "{not json".into(),
            ],
        )
        .await
        .unwrap();
    let err = c.live(&svc, "d2").await.unwrap_err().to_string();
    assert!(err.contains("not readable"), "{err}");
    raw.quit().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error_without_the_password() {
    let port = closed_port();
    let url = format!("redis://:redis-test-pw@127.0.0.1:{port}/0");
    let err = match RedisFleet::connect(&Secret::new(&url), TIMEOUT).await {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e.to_string(),
    };
    assert!(!err.contains("redis-test-pw"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[tokio::test]
async fn a_wrong_password_is_refused_without_echoing_either() {
    let good = redis_url();
    let bad = good.replace("redis-test-pw", "not-the-password");
    assert_ne!(good, bad, "the suite's URL carries redis-test-pw");
    let err = match RedisFleet::connect(&Secret::new(&bad), TIMEOUT).await {
        Ok(_) => panic!("connected with a wrong password"),
        Err(e) => e.to_string(),
    };
    assert!(!err.contains("not-the-password"), "{err}");
    assert!(!err.contains("redis-test-pw"), "{err}");
    assert!(err.contains("***"), "{err}");
}

#[tokio::test]
async fn urls_it_cannot_use_are_refused_by_name() {
    for url in [
        "rediss://:redis-test-pw@127.0.0.1:6380/0",
        "http://:redis-test-pw@127.0.0.1:6379",
        "not a url",
    ] {
        let err = match RedisFleet::connect(&Secret::new(url), TIMEOUT).await {
            Ok(_) => panic!("{url} accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("[fleet] redis"), "{url}: {err}");
        assert!(!err.contains("redis-test-pw"), "{url}: {err}");
    }
}

#[tokio::test]
async fn a_server_that_never_answers_fails_within_the_timeout() {
    // Accepts connections (the kernel does) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = format!("redis://:redis-test-pw@127.0.0.1:{port}/0");
    let err = match RedisFleet::connect(&Secret::new(&url), Duration::from_millis(300)).await {
        Ok(_) => panic!("connected to a silent server"),
        Err(e) => e.to_string(),
    };
    assert!(!err.contains("redis-test-pw"), "{err}");
    assert!(err.contains(&port.to_string()), "{err}");
}

#[tokio::test]
async fn a_restarted_server_fails_calls_while_down_and_serves_them_after() {
    let mut server = RedisServer::start();
    let c = fleet(&server.url()).await;
    let svc = service("restart");
    c.publish(&svc, &report("a", "d2", true), LONG)
        .await
        .unwrap();
    assert_eq!(names(&c.live(&svc, "d2").await.unwrap()), ["a"]);
    let before = c.acquire(&svc, "d2", "a", LONG).await.unwrap().unwrap();

    server.stop();
    for _ in 0..3 {
        let err = c.live(&svc, "d2").await.unwrap_err().to_string();
        assert!(!err.contains(&server.password), "{err}");
        assert!(err.contains("live"), "{err}");
        let err = c
            .acquire(&svc, "d2", "a", LONG)
            .await
            .unwrap_err()
            .to_string();
        assert!(!err.contains(&server.password), "{err}");
    }

    // The server comes back empty (no persistence) and without the scripts
    // it had loaded; the same coordinator serves again.
    let _back = RedisServer::start_on(server.port);
    let mut last = None;
    for _ in 0..40 {
        match c.publish(&svc, &report("a", "d2", false), LONG).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        last.is_none(),
        "did not recover after the restart: {last:?}"
    );
    assert_eq!(
        c.live(&svc, "d2").await.unwrap(),
        [report("a", "d2", false)]
    );
    // The lease went with the data; the tokens still grow.
    let lease = c.acquire(&svc, "d2", "a", LONG).await.unwrap().unwrap();
    assert!(lease.token > before.token, "{lease:?} after {before:?}");
    assert!(c.record(&svc, &lease, &record("d2", "a")).await.unwrap());
}

/// The commands and keys the module documentation lists for a Redis user
/// restricted by ACL are enough for every call.
#[tokio::test]
async fn works_as_a_user_allowed_only_what_the_documentation_lists() {
    let url = redis_url();
    let svc = service("acl");
    let user = format!("fleet-{svc}");
    let raw = raw_client(&url).await;
    let mut rule: Vec<String> = ["on", ">acl-user-pw-1", "resetkeys", "~backstop:*", "-@all"]
        .map(String::from)
        .to_vec();
    rule.extend(
        backstop::fleet::redis::ACL_COMMANDS
            .split_whitespace()
            .map(|c| format!("+{c}")),
    );
    let mut args = vec!["SETUSER".to_string(), user.clone()];
    args.extend(rule);
    let _: String = raw
        .custom(
            fred::types::CustomCommand::new_static("ACL", fred::types::ClusterHash::Random, false),
            args,
        )
        .await
        .unwrap();

    let port = url::Url::parse(&url).unwrap().port().unwrap();
    let c = fleet(&format!("redis://{user}:acl-user-pw-1@127.0.0.1:{port}/0")).await;
    c.publish(&svc, &report("a", "d2", true), LONG)
        .await
        .unwrap();
    assert_eq!(names(&c.live(&svc, "d2").await.unwrap()), ["a"]);
    let mut lease = c.acquire(&svc, "d2", "a", LONG).await.unwrap().unwrap();
    assert!(c.renew(&svc, &mut lease, LONG).await.unwrap());
    assert!(c.record(&svc, &lease, &record("d2", "a")).await.unwrap());
    assert_eq!(
        c.outcome(&svc, "d2").await.unwrap(),
        Some(record("d2", "a"))
    );
    c.release(&svc, &lease).await.unwrap();
    c.publish_samples(&svc, "a", &live_summary("d2", 1.0), LONG)
        .await
        .unwrap();
    assert_eq!(c.live_samples(&svc, "d2", 100).await.unwrap().len(), 1);
    c.leave(&svc, "a").await.unwrap();
    // The rule above is really applied: other keys and commands are refused.
    let as_user = raw_client(&format!("redis://{user}:acl-user-pw-1@127.0.0.1:{port}/0")).await;
    let other: Result<Option<String>, _> = as_user.get("elsewhere").await;
    assert!(other.unwrap_err().details().contains("NOPERM"));
    let keys: Result<Vec<String>, _> = as_user
        .custom(
            fred::types::CustomCommand::new_static("KEYS", fred::types::ClusterHash::Random, false),
            vec!["backstop:*".to_string()],
        )
        .await;
    assert!(keys.unwrap_err().details().contains("NOPERM"));
    as_user.quit().await.unwrap();

    let _: i64 = raw
        .custom(
            fred::types::CustomCommand::new_static("ACL", fred::types::ClusterHash::Random, false),
            vec!["DELUSER".to_string(), user],
        )
        .await
        .unwrap();
    raw.quit().await.unwrap();
}

fn live_summary(deployment: &str, value: f64) -> backstop_judge::live::LiveSummary {
    let mut s = backstop_judge::live::LiveSummary::new(deployment);
    s.probes.insert(
        "app".into(),
        [("latency_ms".to_string(), vec![(0, value), (500, value)])].into(),
    );
    s
}

#[tokio::test]
async fn samples_beside_the_heartbeat_are_read_per_deployment_with_their_age_and_expire() {
    let url = redis_url();
    let (a, b) = (fleet(&url).await, fleet(&url).await);
    let svc = service("samples");
    a.publish_samples(&svc, "a|1", &live_summary("d1", 10.0), LONG)
        .await
        .unwrap();
    b.publish_samples(&svc, "b", &live_summary("d1", 11.0), SHORT)
        .await
        .unwrap();
    a.publish_samples(&svc, "c", &live_summary("d2", 12.0), LONG)
        .await
        .unwrap();
    let got = b.live_samples(&svc, "d1", 100).await.unwrap();
    let replicas: Vec<&str> = got.iter().map(|p| p.replica.as_str()).collect();
    assert_eq!(replicas, ["a|1", "b"]);
    assert_eq!(got[0].summary, live_summary("d1", 10.0));
    assert!(got[0].age < LONG);
    // The votes read as before: no samples in them.
    assert!(a.live(&svc, "d1").await.unwrap().is_empty());
    tokio::time::sleep(SHORT * 2).await;
    let got = b.live_samples(&svc, "d1", 100).await.unwrap();
    assert_eq!(got.len(), 1, "b's samples expired");
    assert!(
        got[0].age >= SHORT,
        "aged by the server's clock: {:?}",
        got[0].age
    );
    a.leave(&svc, "a|1").await.unwrap();
    assert!(b.live_samples(&svc, "d1", 100).await.unwrap().is_empty());
    assert_eq!(b.live_samples(&svc, "d2", 100).await.unwrap().len(), 1);
    a.leave(&svc, "c").await.unwrap();
}
