//! The `postgres` probe against real PostgreSQL servers: healthy, stopped,
//! restarted, refusing the agent, hanging, and the write/read cycle.

use std::time::{Duration, Instant};

use backstop_probes::postgres::{Mode, PostgresConfig, PostgresProbe};
use backstop_probes::{Context, ProbeError};
use backstop_tests::{closed_port, postgres_url, PostgresServer};

const TIMEOUT: Duration = Duration::from_secs(2);

fn probe_with(
    url: &str,
    timeout: Duration,
    edit: impl FnOnce(&mut PostgresConfig),
) -> PostgresProbe {
    let mut cfg = PostgresConfig {
        url: url.into(),
        query: None,
        mode: Mode::Ping,
        table: None,
    };
    edit(&mut cfg);
    PostgresProbe::new(&cfg, Context { timeout }).expect("valid probe")
}

fn probe(url: &str) -> PostgresProbe {
    probe_with(url, TIMEOUT, |_| {})
}

/// A plain connection of the test's own, to look at what the probe left.
async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("test connection");
    tokio::spawn(connection);
    client
}

fn unique_table(stem: &str) -> String {
    format!("{stem}_{}", closed_port())
}

async fn rows_in(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

fn expect_unhealthy(result: Result<backstop_probes::Report, ProbeError>) -> String {
    match result {
        Err(ProbeError::Unhealthy { message, .. }) => message,
        other => panic!("expected unhealthy, got {other:?}"),
    }
}

#[tokio::test]
async fn reports_latency_and_connection_slots_of_a_healthy_server() {
    let probe = probe(&postgres_url());
    for _ in 0..2 {
        let report = probe.check().await.expect("healthy");
        assert!(report.get("latency_ms").unwrap() >= 0.0);
        // tests/run.sh starts the server with max_connections=200.
        assert_eq!(report.get("max_connections"), Some(200.0));
        let used = report.get("connections_used").unwrap();
        assert!(used >= 1.0, "{report:?}");
        let utilization = report.get("pool_utilization").unwrap();
        assert!((utilization - used / 200.0).abs() < 1e-9, "{report:?}");
        assert_eq!(report.get("is_replica"), Some(0.0));
        assert_eq!(report.get("replication_lag_seconds"), None);
    }
}

#[tokio::test]
async fn fails_fast_while_the_server_is_stopped_and_recovers_when_it_returns() {
    let server = PostgresServer::start();
    let probe = probe(&server.url());
    probe.check().await.expect("healthy before the stop");

    server.stop();
    for _ in 0..2 {
        let start = Instant::now();
        let message = expect_unhealthy(probe.check().await);
        assert!(start.elapsed() < TIMEOUT * 5, "took {:?}", start.elapsed());
        assert!(!message.contains("throwaway-pg-pw"), "{message}");
    }

    server.start_again();
    probe.check().await.expect("healthy after the restart");
}

#[tokio::test]
async fn blames_the_agent_for_a_wrong_password_without_repeating_it() {
    let url = postgres_url();
    let wrong = {
        let mut u = url::Url::parse(&url).unwrap();
        u.set_password(Some("definitely-wrong-pw")).unwrap();
        u.to_string()
    };
    match probe(&wrong).check().await {
        Err(ProbeError::CannotRun(message)) => {
            assert!(!message.contains("definitely-wrong-pw"), "{message}");
            assert!(message.contains("28P01"), "{message}");
        }
        other => panic!("expected cannot-run, got {other:?}"),
    }
}

#[tokio::test]
async fn reports_a_port_nobody_listens_on_as_unhealthy() {
    let url = format!(
        "postgres://backstop:pw@127.0.0.1:{}/backstop",
        closed_port()
    );
    let message = expect_unhealthy(probe(&url).check().await);
    assert!(message.contains("127.0.0.1"), "{message}");
    assert!(!message.contains(":pw@"), "{message}");
}

#[tokio::test]
async fn gives_up_on_a_server_that_accepts_and_never_answers_within_the_timeout() {
    // Connections complete in the kernel's backlog; nothing ever reads them.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "postgres://backstop:pw@{}/backstop",
        silent.local_addr().unwrap()
    );
    let timeout = Duration::from_millis(500);
    let probe = probe_with(&url, timeout, |_| {});
    let start = Instant::now();
    expect_unhealthy(probe.check().await);
    assert!(start.elapsed() < timeout * 10, "took {:?}", start.elapsed());
    drop(silent);
}

#[tokio::test]
async fn runs_the_configured_query_and_blames_the_agent_for_broken_sql() {
    let url = postgres_url();
    let good = probe_with(&url, TIMEOUT, |c| {
        c.query = Some("SELECT count(*) FROM pg_class".into())
    });
    good.check().await.expect("valid query");

    let broken = probe_with(&url, TIMEOUT, |c| c.query = Some("SELEC 1".into()));
    match broken.check().await {
        Err(ProbeError::CannotRun(message)) => assert!(message.contains("42601"), "{message}"),
        other => panic!("expected cannot-run, got {other:?}"),
    }
    // The connection survives a refused statement: the next check works.
    good.check().await.expect("still healthy");
}

#[tokio::test]
async fn reports_a_failing_query_as_unhealthy_with_its_latency() {
    let probe = probe_with(&postgres_url(), TIMEOUT, |c| {
        c.query = Some("SELECT 1 / 0".into())
    });
    match probe.check().await {
        Err(ProbeError::Unhealthy { message, report }) => {
            assert!(message.contains("22012"), "{message}");
            assert!(report.get("latency_ms").is_some());
        }
        other => panic!("expected unhealthy, got {other:?}"),
    }
}

#[tokio::test]
async fn write_read_writes_reads_and_leaves_no_row_behind() {
    let url = postgres_url();
    let table = unique_table("probe_write_read");
    let probe = probe_with(&url, TIMEOUT, |c| {
        c.mode = Mode::WriteRead;
        c.table = Some(table.clone());
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
    let client = connect(&url).await;
    assert_eq!(rows_in(&client, &table).await, 0);
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn write_read_deletes_the_row_of_a_check_that_timed_out_and_stale_rows() {
    let url = postgres_url();
    let table = unique_table("probe_leftovers");
    let probe = probe_with(&url, Duration::from_millis(700), |c| {
        c.mode = Mode::WriteRead;
        c.table = Some(table.clone());
    });
    probe.check().await.expect("creates the table");

    // A row left by an agent that died long ago, locked by another session:
    // the probe's sweep of old rows then blocks, so its check times out
    // after it wrote its own row.
    let holder = connect(&url).await;
    holder
        .batch_execute(&format!(
            "INSERT INTO {table} (token, written_at) VALUES ('stale', now() - interval '2 hours')"
        ))
        .await
        .unwrap();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT * FROM {table} WHERE token = 'stale' FOR UPDATE"
        ))
        .await
        .unwrap();
    expect_unhealthy(probe.check().await);
    let observer = connect(&url).await;
    assert_eq!(
        rows_in(&observer, &table).await,
        2,
        "the stale row and the probe's"
    );

    holder.batch_execute("ROLLBACK").await.unwrap();
    probe.check().await.expect("healthy again");
    assert_eq!(rows_in(&observer, &table).await, 0);
    observer
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn write_read_blames_the_agent_when_it_may_not_create_the_table() {
    // `backstop` owns its database but not the schema of another role.
    let url = postgres_url();
    let probe = probe_with(&url, TIMEOUT, |c| {
        c.mode = Mode::WriteRead;
        c.table = Some("pg_catalog.backstop_probe".into());
    });
    assert!(matches!(probe.check().await, Err(ProbeError::CannotRun(_))));
}
