//! `postgres`: runs a query (by default `SELECT 1`) over a small pool of the
//! probe's own, and reads how full the server's connection slots are and, on
//! a replica, how far it lags behind. With `mode = "write_read"` it writes a
//! row to a scratch table, reads it back and deletes it again.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use serde::Deserialize;
use tokio_postgres::NoTls;

use crate::redact::ms;
use crate::{redact_url, ConfigProblem, Context, ProbeError, Report, SignalInfo};

/// The signals a `postgres` probe yields; `write_ms` and `read_ms` only in
/// `write_read` mode (see [`PostgresConfig::signals`]).
const SIGNALS: [SignalInfo; 8] = [
    SignalInfo::fixed(
        "latency_ms",
        "milliseconds the query took (`ping`), or the write, read and delete together (`write_read`)",
    ),
    SignalInfo::fixed(
        "write_ms",
        "milliseconds the insert of a scratch row took; `write_read` mode only",
    ),
    SignalInfo::fixed(
        "read_ms",
        "milliseconds reading the row back took; `write_read` mode only",
    ),
    SignalInfo::fixed(
        "connections_used",
        "client connections the server has open",
    ),
    SignalInfo::fixed("max_connections", "the server's `max_connections`"),
    SignalInfo::fixed(
        "pool_utilization",
        "`connections_used` / `max_connections`, a fraction (rules write `90%`)",
    ),
    SignalInfo::fixed("is_replica", "1 on a replica (in recovery), else 0"),
    SignalInfo::fixed(
        "replication_lag_seconds",
        "on a replica: 0 while it has replayed all it received, else the age of the last replayed transaction",
    ),
];

/// The names only `write_read` mode yields.
const WRITE_READ_ONLY: [&str; 2] = ["write_ms", "read_ms"];

pub(crate) fn type_signals() -> Vec<SignalInfo> {
    SIGNALS.to_vec()
}

/// The pool never holds more connections than this: one check uses one.
const POOL_SIZE: usize = 2;

/// Rows of the scratch table older than this are swept by any check, so a
/// row left by an agent that died mid-check does not stay for ever.
const STALE_ROWS: &str = "1 hour";

/// Tokens of unfinished checks remembered for deletion; past this the
/// oldest are forgotten and left to the age sweep.
const MAX_PENDING: usize = 64;

/// Settings of a `postgres` probe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database`. Required. TLS modes
    /// (`sslmode=require`, `verify-ca`, `verify-full`) are refused: the probe
    /// connects in plain text.
    pub url: String,
    /// The SQL run in `ping` mode; its duration is `latency_ms`. Default
    /// `SELECT 1`. Not used in `write_read` mode.
    #[serde(default)]
    pub query: Option<String>,
    /// `ping` runs `query`; `write_read` inserts, reads back and deletes a
    /// row of `table`. Default `ping`.
    #[serde(default)]
    pub mode: Mode,
    /// The scratch table of `write_read` mode, created when missing: a
    /// lowercase identifier, optionally schema-qualified (`ops.probe`).
    /// Default `backstop_probe`.
    #[serde(default)]
    pub table: Option<String>,
}

impl crate::ProbeType for PostgresConfig {
    fn levels() -> &'static [u8] {
        &[2, 3]
    }
}

/// What one check does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Runs `query`.
    #[default]
    Ping,
    /// Writes, reads and deletes a row of the scratch table.
    WriteRead,
}

impl PostgresConfig {
    /// What a check in this configuration's mode can yield.
    pub fn signals(&self) -> Vec<SignalInfo> {
        SIGNALS
            .iter()
            .filter(|s| self.mode == Mode::WriteRead || !WRITE_READ_ONLY.contains(&&*s.name))
            .cloned()
            .collect()
    }
}

const DEFAULT_QUERY: &str = "SELECT 1";
const DEFAULT_TABLE: &str = "backstop_probe";

#[derive(Debug)]
enum Work {
    Ping {
        query: String,
    },
    WriteRead {
        /// Quoted, ready to paste into SQL.
        table: String,
        table_ready: AtomicBool,
        /// Tokens written by checks that did not get to delete them.
        pending: Mutex<Vec<String>>,
    },
}

pub struct PostgresProbe {
    pool: Pool,
    /// The URL with its password hidden, for messages.
    shown: String,
    /// Hidden from every message, whatever the driver says.
    password: Option<String>,
    timeout: Duration,
    work: Work,
}

impl std::fmt::Debug for PostgresProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresProbe")
            .field("url", &self.shown)
            .field("timeout", &self.timeout)
            .field("work", &self.work)
            .finish_non_exhaustive()
    }
}

impl PostgresProbe {
    pub fn new(cfg: &PostgresConfig, ctx: Context) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let timeout = ctx.timeout.max(Duration::from_millis(1));
        let shown = redact_url(&cfg.url);
        let password = crate::redact::url_password(&cfg.url).filter(|p| !p.is_empty());
        let pg = match parse_url(&cfg.url, password.as_deref()) {
            Ok(mut pg) => {
                pg.connect_timeout(timeout);
                if pg.get_application_name().is_none() {
                    pg.application_name("backstop");
                }
                // The server gives up on a statement the probe has given up
                // on, so a stuck write never keeps its locks.
                let options = pg.get_options().unwrap_or_default().to_string();
                if !options.contains("statement_timeout") {
                    let ms = timeout.as_millis().max(1);
                    pg.options(format!("{options} -c statement_timeout={ms}").trim());
                }
                Some(pg)
            }
            Err(message) => {
                problems.push(ConfigProblem::new("url", message));
                None
            }
        };
        let work = match cfg.mode {
            Mode::Ping => {
                if cfg.table.is_some() {
                    problems.push(ConfigProblem::new(
                        "table",
                        "table is only used with mode = \"write_read\"",
                    ));
                }
                let query = cfg.query.clone().unwrap_or_else(|| DEFAULT_QUERY.into());
                if query.trim().is_empty() {
                    problems.push(ConfigProblem::new("query", "must not be empty"));
                }
                Work::Ping { query }
            }
            Mode::WriteRead => {
                if cfg.query.is_some() {
                    problems.push(ConfigProblem::new(
                        "query",
                        "query is not used with mode = \"write_read\"; remove it",
                    ));
                }
                let table = cfg.table.as_deref().unwrap_or(DEFAULT_TABLE);
                let quoted = match quote_table(table) {
                    Ok(q) => q,
                    Err(message) => {
                        problems.push(ConfigProblem::new("table", message));
                        String::new()
                    }
                };
                Work::WriteRead {
                    table: quoted,
                    table_ready: AtomicBool::new(false),
                    pending: Mutex::new(Vec::new()),
                }
            }
        };
        let Some(pg) = pg else {
            return Err(problems);
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| vec![ConfigProblem::new("url", format!("cannot build pool: {e}"))])?;
        Ok(Self {
            pool,
            shown,
            password,
            timeout,
            work,
        })
    }

    pub async fn check(&self) -> Result<Report, ProbeError> {
        match tokio::time::timeout(self.timeout, self.run()).await {
            Ok(result) => result,
            Err(_) => Err(ProbeError::unhealthy(format!(
                "no answer from {} within {:?}",
                self.shown, self.timeout
            ))),
        }
    }

    async fn run(&self) -> Result<Report, ProbeError> {
        let object = self.pool.get().await.map_err(|e| self.pool_error(e))?;
        // Until the check ends cleanly the connection is suspect: if the
        // check fails on the connection or is cancelled mid-query, the lease
        // closes it instead of handing it to the next check.
        let mut lease = Lease {
            object: Some(object),
            keep: false,
        };
        let client = lease.object.as_ref().expect("set above");
        let mut report = Report::new();
        let outcome = match &self.work {
            Work::Ping { query } => {
                let start = Instant::now();
                let result = client.simple_query(query).await;
                report.push("latency_ms", ms(start.elapsed()));
                result
                    .map(|_| ())
                    .map_err(|e| Failure::Driver("query failed", e))
            }
            Work::WriteRead {
                table,
                table_ready,
                pending,
            } => write_read(client, table, table_ready, pending, &mut report).await,
        };
        match outcome {
            Ok(()) => {}
            Err(Failure::Target(message)) => {
                lease.keep = true;
                return Err(ProbeError::unhealthy_with(
                    format!("{}: {message}", self.shown),
                    report,
                ));
            }
            Err(Failure::Driver(what, e)) => {
                // A statement the server refused leaves the connection fine.
                lease.keep = e.as_db_error().is_some() && !client.is_closed();
                return Err(match self.classify(what, &e) {
                    ProbeError::Unhealthy { message, .. } => {
                        ProbeError::unhealthy_with(message, report)
                    }
                    other => other,
                });
            }
        }
        match client.simple_query(STATS_SQL).await {
            Ok(messages) => read_stats(&messages, &mut report),
            Err(e) if e.as_db_error().is_some() => {
                // The target answered the probe's real work; statistics it
                // will not give are simply not reported.
                tracing::debug!(error = %self.scrub(&e.to_string()), "postgres statistics unavailable");
            }
            Err(e) => {
                return Err(match self.classify("reading statistics failed", &e) {
                    ProbeError::Unhealthy { message, .. } => {
                        ProbeError::unhealthy_with(message, report)
                    }
                    other => other,
                })
            }
        }
        lease.keep = true;
        Ok(report)
    }

    fn pool_error(&self, e: PoolError) -> ProbeError {
        match e {
            PoolError::Backend(e) => self.classify("cannot connect", &e),
            PoolError::Timeout(_) => ProbeError::unhealthy(format!(
                "no answer from {} within {:?} while connecting",
                self.shown, self.timeout
            )),
            PoolError::Closed | PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => {
                ProbeError::cannot_run(format!("connection pool unusable: {e}"))
            }
        }
    }

    /// Sorts a driver error: the agent's own credentials, rights, database
    /// name or SQL being wrong is [`ProbeError::CannotRun`]; anything else,
    /// from a refused connection to a full server, is the target's.
    fn classify(&self, what: &str, e: &tokio_postgres::Error) -> ProbeError {
        let message = self.scrub(&format!("{}: {what}: {}", self.shown, describe(e)));
        match e.code().map(|c| c.code()) {
            Some(code) if agent_fault(code) => ProbeError::cannot_run(message),
            _ => ProbeError::unhealthy(message),
        }
    }

    /// Hides the password should any text ever repeat it.
    fn scrub(&self, text: &str) -> String {
        crate::redact::scrub_password(text, self.password.as_deref())
    }
}

/// Why one step of a check failed.
enum Failure {
    /// The driver reported an error while doing this.
    Driver(&'static str, tokio_postgres::Error),
    /// The server answered, but not what it should have.
    Target(String),
}

/// Hands the connection back to the pool only when the check vouched for it.
struct Lease {
    object: Option<Object>,
    keep: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(object) = self.object.take() {
            if !self.keep {
                // Taking it out of the pool drops it, which closes it.
                drop(Object::take(object));
            }
        }
    }
}

/// SQLSTATEs that mean the probe, not the server, is at fault.
fn agent_fault(code: &str) -> bool {
    // 28: invalid authorization (wrong password, no such role, pg_hba);
    // 42: syntax error or access rule violation (bad query, no privilege);
    // 3D000: no such database; 0A000: feature not supported.
    code.starts_with("28") || code.starts_with("42") || code == "3D000" || code == "0A000"
}

/// The write/read cycle of level 3. Rows are committed, not written in a
/// transaction that is rolled back: a rolled-back insert never reaches the
/// commit (WAL flush, synchronous replicas), which is where a sick database
/// usually fails. Nothing is left behind all the same: a token is remembered
/// before its row is written and forgotten only once deleted, and every
/// delete also removes the remembered tokens of checks that were cancelled or
/// failed, plus rows older than an hour left by an agent that died.
async fn write_read(
    client: &Object,
    table: &str,
    table_ready: &AtomicBool,
    pending: &Mutex<Vec<String>>,
    report: &mut Report,
) -> Result<(), Failure> {
    if !table_ready.load(Ordering::Relaxed) {
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {table} (\
             token text PRIMARY KEY, \
             written_at timestamptz NOT NULL DEFAULT now())"
        );
        match client.simple_query(&create).await {
            Ok(_) => {}
            // Two agents creating it at once: the other one won.
            Err(e) if matches!(e.code().map(|c| c.code()), Some("23505" | "42P07")) => {}
            Err(e) => return Err(Failure::Driver("creating the scratch table failed", e)),
        }
        table_ready.store(true, Ordering::Relaxed);
    }
    let token = format!("{:032x}", rand::random::<u128>());
    {
        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
        p.push(token.clone());
        if p.len() > MAX_PENDING {
            let excess = p.len() - MAX_PENDING;
            p.drain(..excess);
        }
    }
    let start = Instant::now();
    let insert = client
        .prepare_cached(&format!("INSERT INTO {table} (token) VALUES ($1)"))
        .await
        .map_err(|e| Failure::Driver("preparing the insert failed", e))?;
    client
        .execute(&insert, &[&token])
        .await
        .map_err(|e| Failure::Driver("insert failed", e))?;
    let written = start.elapsed();
    report.push("write_ms", ms(written));

    let select = client
        .prepare_cached(&format!("SELECT token FROM {table} WHERE token = $1"))
        .await
        .map_err(|e| Failure::Driver("preparing the select failed", e))?;
    let rows = client
        .query(&select, &[&token])
        .await
        .map_err(|e| Failure::Driver("select failed", e))?;
    report.push("read_ms", ms(start.elapsed() - written));
    let found = rows.len() == 1;

    let doomed: Vec<String> = pending.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let delete = client
        .prepare_cached(&format!(
            "DELETE FROM {table} WHERE token = ANY($1) \
             OR written_at < now() - interval '{STALE_ROWS}'"
        ))
        .await
        .map_err(|e| Failure::Driver("preparing the delete failed", e))?;
    client
        .execute(&delete, &[&doomed])
        .await
        .map_err(|e| Failure::Driver("delete failed", e))?;
    pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|t| !doomed.contains(t));
    report.push("latency_ms", ms(start.elapsed()));
    if !found {
        // The row, if any, is already deleted.
        return Err(Failure::Target(
            "the row just written was not read back".into(),
        ));
    }
    Ok(())
}

/// Server connections in use and allowed, and replication state, in one
/// round trip. On a replica the lag is zero while it has replayed all it
/// received, else the age of the last replayed transaction.
const STATS_SQL: &str = "SELECT \
    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), \
    current_setting('max_connections'), \
    pg_is_in_recovery(), \
    CASE WHEN NOT pg_is_in_recovery() THEN NULL \
         WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
         ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END";

fn read_stats(messages: &[tokio_postgres::SimpleQueryMessage], report: &mut Report) {
    let Some(row) = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
        _ => None,
    }) else {
        return;
    };
    stats_row(|i| row.get(i), report);
}

/// Reports the columns of [`STATS_SQL`]'s row, as `row(i)` gives them.
fn stats_row<'a>(row: impl Fn(usize) -> Option<&'a str>, report: &mut Report) {
    let num = |i: usize| -> Option<f64> { row(i).and_then(|v| v.trim().parse().ok()) };
    let used = num(0);
    let max = num(1);
    if let Some(u) = used {
        report.push("connections_used", u);
    }
    if let Some(m) = max {
        report.push("max_connections", m);
    }
    if let (Some(u), Some(m)) = (used, max) {
        if m > 0.0 {
            report.push("pool_utilization", u / m);
        }
    }
    let replica = row(2) == Some("t");
    report.push("is_replica", if replica { 1.0 } else { 0.0 });
    if replica {
        if let Some(lag) = num(3) {
            report.push("replication_lag_seconds", lag.max(0.0));
        }
    }
}

/// Parses the URL, refusing what the probe cannot honour.
fn parse_url(raw: &str, password: Option<&str>) -> Result<tokio_postgres::Config, String> {
    let scrub = |s: String| match password {
        Some(p) => s.replace(p, "***"),
        None => s,
    };
    let parsed =
        url::Url::parse(raw).map_err(|e| format!("invalid URL {:?}: {e}", redact_url(raw)))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "scheme {:?} is not postgres or postgresql",
            parsed.scheme()
        ));
    }
    if let Some((_, mode)) = parsed.query_pairs().find(|(k, _)| k == "sslmode") {
        if matches!(&*mode, "require" | "verify-ca" | "verify-full") {
            return Err(format!(
                "sslmode={mode} is not supported: the postgres probe connects without TLS; \
                 use sslmode=disable or sslmode=prefer, or reach the server over a trusted network"
            ));
        }
    }
    let pg = tokio_postgres::Config::from_str(raw)
        .map_err(|e| scrub(format!("invalid URL {:?}: {e}", redact_url(raw))))?;
    if pg.get_hosts().is_empty() {
        return Err("the URL names no host".into());
    }
    if pg.get_user().is_none() {
        return Err("the URL names no user (postgres://user:password@host/db)".into());
    }
    Ok(pg)
}

/// Quotes a lowercase identifier, optionally schema-qualified.
fn quote_table(name: &str) -> Result<String, String> {
    let parts: Vec<&str> = name.split('.').collect();
    let valid = |p: &str| {
        let mut chars = p.chars();
        matches!(chars.next(), Some('a'..='z' | '_'))
            && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
            && p.len() <= 63
    };
    if parts.len() > 2 || !parts.iter().all(|p| valid(p)) {
        return Err(format!(
            "{name:?} is not a table name: use lowercase letters, digits and underscores \
             (at most 63, not starting with a digit), optionally as schema.table"
        ));
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

/// A driver error as one line: the server's own message and SQLSTATE when it
/// sent one, else the error with its causes.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            timeout: Duration::from_secs(1),
        }
    }

    fn config(url: &str) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            query: None,
            mode: Mode::Ping,
            table: None,
        }
    }

    fn problem_keys(cfg: &PostgresConfig) -> Vec<String> {
        match PostgresProbe::new(cfg, ctx()) {
            Ok(_) => vec![],
            Err(problems) => problems.into_iter().map(|p| p.key).collect(),
        }
    }

    #[test]
    fn builds_without_a_runtime_or_the_network() {
        // Nothing listens on port 1, and no runtime runs here.
        let probe = PostgresProbe::new(&config("postgres://app:hunter2@127.0.0.1:1/app"), ctx());
        let shown = format!("{:?}", probe.unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn refuses_urls_it_cannot_honour_without_echoing_the_password() {
        let cases = [
            "mysql://app:hunter2@db/app",
            "postgres://app:hunter2@db/app?sslmode=require",
            "postgres://app:hunter2@db/app?sslmode=verify-full",
            "postgres://app:hunter2@db/app?sslmode=bogus",
            "postgres://app:hunter2@db:notaport/app",
            "not a url",
        ];
        for url in cases {
            let problems = PostgresProbe::new(&config(url), ctx()).unwrap_err();
            assert_eq!(problems.len(), 1, "{url}: {problems:?}");
            assert_eq!(problems[0].key, "url", "{url}");
            assert!(
                !problems[0].message.contains("hunter2"),
                "{url}: {problems:?}"
            );
        }
    }

    #[test]
    fn accepts_plain_and_opportunistic_tls_modes() {
        for url in [
            "postgres://app:pw@db:5432/app",
            "postgresql://app:pw@db/app?sslmode=disable",
            "postgres://app:pw@db/app?sslmode=prefer",
        ] {
            assert!(problem_keys(&config(url)).is_empty(), "{url}");
        }
    }

    #[test]
    fn validates_the_scratch_table_name() {
        let cases = [
            ("backstop_probe", Ok("\"backstop_probe\"")),
            ("ops.probe_2", Ok("\"ops\".\"probe_2\"")),
            ("_t", Ok("\"_t\"")),
            ("Probe", Err(())),
            ("1probe", Err(())),
            ("probe; DROP TABLE users", Err(())),
            ("a.b.c", Err(())),
            ("", Err(())),
            ("x\"y", Err(())),
        ];
        for (name, want) in cases {
            let got = quote_table(name).ok();
            assert_eq!(got.as_deref(), want.ok(), "{name}");
        }
        assert!(quote_table(&"a".repeat(64)).is_err());
    }

    #[test]
    fn rejects_settings_that_do_not_belong_to_the_mode() {
        let mut ping = config("postgres://app:pw@db/app");
        ping.table = Some("t".into());
        assert_eq!(problem_keys(&ping), ["table"]);

        let mut write_read = config("postgres://app:pw@db/app");
        write_read.mode = Mode::WriteRead;
        write_read.query = Some("SELECT 2".into());
        write_read.table = Some("Bad Name".into());
        assert_eq!(problem_keys(&write_read), ["query", "table"]);
    }

    #[test]
    fn reads_unknown_keys_as_errors() {
        let err = serde_json::from_value::<PostgresConfig>(serde_json::json!({
            "url": "postgres://a@b/c",
            "pool_size": 4
        }))
        .unwrap_err();
        assert!(err.to_string().contains("pool_size"), "{err}");
        let cfg: PostgresConfig = serde_json::from_value(serde_json::json!({
            "url": "postgres://a@b/c",
            "mode": "write_read"
        }))
        .unwrap();
        assert_eq!(cfg.mode, Mode::WriteRead);
    }

    #[test]
    fn every_signal_the_statistics_report_is_declared() {
        let primary = [Some("12"), Some("100"), Some("f"), None];
        let mut report = Report::new();
        stats_row(|i| primary[i], &mut report);
        assert_eq!(report.get("pool_utilization"), Some(0.12));
        assert_eq!(report.get("is_replica"), Some(0.0));
        assert_eq!(report.get("replication_lag_seconds"), None);

        let replica = [Some("3"), Some("50"), Some("t"), Some("1.5")];
        let mut report = Report::new().with("latency_ms", 1.0);
        stats_row(|i| replica[i], &mut report);
        assert_eq!(report.get("replication_lag_seconds"), Some(1.5));
        let cfg = config("postgres://app@db/app");
        assert_eq!(crate::testing::assert_declared(&report, &cfg.signals()), 6);
    }

    /// Runs both modes against the server of `BACKSTOP_TEST_POSTGRES_URL`
    /// when `tests/run.sh` started one; the integration tests cover the
    /// probe against it in depth.
    #[tokio::test]
    async fn every_signal_a_check_reports_is_declared() {
        let Ok(url) = std::env::var("BACKSTOP_TEST_POSTGRES_URL") else {
            eprintln!("BACKSTOP_TEST_POSTGRES_URL is not set: only the statistics are checked");
            return;
        };
        for mode in [Mode::Ping, Mode::WriteRead] {
            let mut cfg = config(&url);
            cfg.mode = mode;
            let ctx = Context {
                timeout: Duration::from_secs(10),
            };
            let report = PostgresProbe::new(&cfg, ctx)
                .unwrap()
                .check()
                .await
                .unwrap();
            let n = crate::testing::assert_declared(&report, &cfg.signals());
            assert!(n >= 4, "{mode:?}: {report:?}");
        }
    }

    #[test]
    fn blames_the_agent_only_for_its_own_credentials_rights_and_sql() {
        let cases = [
            ("28P01", true),  // wrong password
            ("28000", true),  // no pg_hba entry
            ("42501", true),  // insufficient privilege
            ("42601", true),  // syntax error in the configured query
            ("3D000", true),  // no such database
            ("53300", false), // too many connections
            ("57P03", false), // the server is starting up
            ("08006", false), // connection failure
            ("25006", false), // read-only transaction
            ("53100", false), // disk full
        ];
        for (code, agent) in cases {
            assert_eq!(agent_fault(code), agent, "{code}");
        }
    }
}
