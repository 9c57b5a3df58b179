//! The `redis` probe against real Redis servers: healthy, stopped,
//! restarted, refusing the agent, hanging, and the write/read cycle.

use std::time::{Duration, Instant};

use backstop_probes::redis::{Mode, RedisConfig, RedisProbe};
use backstop_probes::{Context, ProbeError, Report};
use backstop_tests::{closed_port, redis_url, RedisServer};
use fred::prelude::ClientLike;

const TIMEOUT: Duration = Duration::from_secs(2);

fn probe_with(url: &str, timeout: Duration, edit: impl FnOnce(&mut RedisConfig)) -> RedisProbe {
    let mut cfg = RedisConfig {
        url: url.into(),
        mode: Mode::Ping,
        key_prefix: None,
    };
    edit(&mut cfg);
    RedisProbe::new(&cfg, Context { timeout }).expect("valid probe")
}

fn probe(url: &str) -> RedisProbe {
    probe_with(url, TIMEOUT, |_| {})
}

fn expect_unhealthy(result: Result<Report, ProbeError>) -> String {
    match result {
        Err(ProbeError::Unhealthy { message, .. }) => message,
        other => panic!("expected unhealthy, got {other:?}"),
    }
}

/// Keys under `prefix`, seen by a client of the test's own.
async fn keys_under(url: &str, prefix: &str) -> Vec<String> {
    let client = fred::prelude::Builder::from_config(fred::prelude::Config::from_url(url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    let keys: Vec<String> = client
        .custom(
            fred::types::CustomCommand::new_static("KEYS", None, false),
            vec![format!("{prefix}*")],
        )
        .await
        .unwrap();
    let _ = client.quit().await;
    keys
}

#[tokio::test]
async fn reports_ping_latency_memory_clients_and_role_of_a_healthy_server() {
    let probe = probe(&redis_url());
    for _ in 0..2 {
        let report = probe.check().await.expect("healthy");
        assert!(report.get("latency_ms").unwrap() >= 0.0);
        assert!(report.get("used_memory").unwrap() > 0.0, "{report:?}");
        assert_eq!(report.get("maxmemory"), Some(0.0));
        assert_eq!(report.get("memory_utilization"), None, "no maxmemory set");
        assert!(report.get("connected_clients").unwrap() >= 1.0);
        assert_eq!(report.get("is_master"), Some(1.0));
        assert_eq!(report.get("master_link_up"), None);
    }
}

#[tokio::test]
async fn fails_fast_while_the_server_is_stopped_and_recovers_when_it_returns() {
    let mut server = RedisServer::start();
    let probe = probe(&server.url());
    probe.check().await.expect("healthy before the stop");

    server.stop();
    for _ in 0..3 {
        let start = Instant::now();
        let message = expect_unhealthy(probe.check().await);
        assert!(start.elapsed() < TIMEOUT * 5, "took {:?}", start.elapsed());
        assert!(!message.contains(&server.password), "{message}");
    }

    let _back = RedisServer::start_on(server.port);
    let mut last = None;
    for _ in 0..20 {
        match probe.check().await {
            Ok(_) => return,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("did not recover after the restart: {last:?}");
}

#[tokio::test]
async fn blames_the_agent_for_a_wrong_password_without_repeating_it() {
    let url = redis_url();
    let wrong = {
        let mut u = url::Url::parse(&url).unwrap();
        u.set_password(Some("definitely-wrong-pw")).unwrap();
        u.to_string()
    };
    let probe = probe(&wrong);
    for _ in 0..2 {
        match probe.check().await {
            Err(ProbeError::CannotRun(message)) => {
                assert!(!message.contains("definitely-wrong-pw"), "{message}");
                assert!(message.contains("WRONGPASS"), "{message}");
            }
            other => panic!("expected cannot-run, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn blames_the_agent_for_a_missing_password() {
    let url = redis_url();
    let without = {
        let mut u = url::Url::parse(&url).unwrap();
        u.set_password(None).unwrap();
        u.to_string()
    };
    assert!(matches!(
        probe(&without).check().await,
        Err(ProbeError::CannotRun(_))
    ));
}

#[tokio::test]
async fn reports_a_port_nobody_listens_on_as_unhealthy() {
    let url = format!("redis://:pw-of-nobody@127.0.0.1:{}/0", closed_port());
    let message = expect_unhealthy(probe(&url).check().await);
    assert!(message.contains("127.0.0.1"), "{message}");
    assert!(!message.contains("pw-of-nobody"), "{message}");
}

#[tokio::test]
async fn gives_up_on_a_server_that_accepts_and_never_answers_within_the_timeout() {
    // Connections complete in the kernel's backlog; nothing ever reads them.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://:pw@{}/0", silent.local_addr().unwrap());
    let timeout = Duration::from_millis(500);
    let probe = probe_with(&url, timeout, |_| {});
    for _ in 0..2 {
        let start = Instant::now();
        expect_unhealthy(probe.check().await);
        assert!(start.elapsed() < timeout * 10, "took {:?}", start.elapsed());
    }
    drop(silent);
}

#[tokio::test]
async fn write_read_sets_gets_and_leaves_no_key_behind() {
    let url = redis_url();
    let prefix = format!("backstop:it:{}:", closed_port());
    let probe = probe_with(&url, TIMEOUT, |c| {
        c.mode = Mode::WriteRead;
        c.key_prefix = Some(prefix.clone());
    });
    for _ in 0..3 {
        let report = probe.check().await.expect("write/read works");
        let (write, read, total) = (
            report.get("write_ms").unwrap(),
            report.get("read_ms").unwrap(),
            report.get("latency_ms").unwrap(),
        );
        assert!(
            write >= 0.0 && read >= 0.0 && total >= write + read,
            "{report:?}"
        );
    }
    assert_eq!(keys_under(&url, &prefix).await, Vec::<String>::new());
}

#[tokio::test]
async fn write_read_reports_a_full_server_as_unhealthy() {
    let server = RedisServer::start();
    let admin = fred::prelude::Builder::from_config(
        fred::prelude::Config::from_url(&server.url()).unwrap(),
    )
    .build()
    .unwrap();
    admin.init().await.unwrap();
    let _: () = admin
        .custom(
            fred::types::CustomCommand::new_static("CONFIG", None, false),
            vec!["SET", "maxmemory", "1"],
        )
        .await
        .unwrap();
    let probe = probe_with(&server.url(), TIMEOUT, |c| c.mode = Mode::WriteRead);
    match probe.check().await {
        Err(ProbeError::Unhealthy { message, report }) => {
            assert!(message.contains("OOM"), "{message}");
            assert!(
                report.get("memory_utilization").unwrap() > 1.0,
                "{report:?}"
            );
        }
        other => panic!("expected unhealthy, got {other:?}"),
    }
    let _ = admin.quit().await;
}
