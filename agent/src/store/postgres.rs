//! The PostgreSQL store (`[store] url`): the records of the embedded store in
//! tables that the agents of one or more services share, every row keyed by
//! the service's name. The tables are created and migrated at start, under
//! an advisory lock, so agents starting together are safe. A rollback's
//! intent is claimed with `INSERT … ON CONFLICT DO NOTHING` on
//! (service, deployment): of all the agents racing to claim one deployment,
//! exactly one inserts the row.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use backstop_probes::redact_url;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::{NoTls, Row};

mod ledger;

use super::config::{check_url, StoreConfig};
use super::records::{Claim, DeploymentRecord, RollbackRecord, RollbackStatus, WatchState};
use backstop_judge::baseline::Baseline;

/// The newest schema version this build knows; `backstop_schema_version`
/// holds one row per version applied.
pub const SCHEMA_VERSION: i32 = 5;

/// The advisory lock class of migrations; the schema's name picks the lock.
const MIGRATION_LOCK: i32 = 0x6273_7470; // "bstp"

/// Each version's statements, `{s}` standing for the quoted schema. Applied
/// in order, each once, all in one transaction.
pub const MIGRATIONS: &[(i32, &str)] = &[(1, V1), (2, V2), (3, V3), (4, V4), (5, V5)];

/// The live baseline (`fleet::postgres::PgFleet::publish_samples`): each
/// replica's samples of the recent minutes, beside its report, so reading
/// the votes stays as light as it was.
const V5: &str = r#"
CREATE TABLE IF NOT EXISTS {s}.backstop_fleet_samples (
    service      text        NOT NULL,
    replica      text        NOT NULL,
    deployment   text        NOT NULL,
    samples      jsonb       NOT NULL,
    published_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (service, replica)
);
"#;

/// The deployment ledger: each deployment's states with their times (rows
/// of older versions keep `[]`, and their states are derived from the
/// other columns when read), and what pipelines registered of deployments.
const V4: &str = r#"
ALTER TABLE {s}.backstop_deployments
    ADD COLUMN IF NOT EXISTS states jsonb NOT NULL DEFAULT '[]'::jsonb;
CREATE TABLE IF NOT EXISTS {s}.backstop_deployment_meta (
    service          text        NOT NULL,
    deployment       text        NOT NULL,
    commit_id        text,
    triggered_by     text,
    environment      text,
    annotations      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    registered_at_ms bigint      NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, deployment)
);
"#;

/// The `unhealthy` state of a deployment.
const V3: &str = r#"
ALTER TABLE {s}.backstop_deployments
    DROP CONSTRAINT IF EXISTS backstop_deployments_state_check;
ALTER TABLE {s}.backstop_deployments
    ADD CONSTRAINT backstop_deployments_state_check
    CHECK (state IN ('warming', 'watching', 'stable', 'rolled_back', 'unhealthy'));
"#;

const V1: &str = r#"
CREATE TABLE IF NOT EXISTS {s}.backstop_deployments (
    service       text        NOT NULL,
    deployment    text        NOT NULL,
    first_seen_ms bigint      NOT NULL,
    state         text        NOT NULL
                  CHECK (state IN ('warming', 'watching', 'stable', 'rolled_back')),
    stable_at_ms  bigint,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, deployment)
);
CREATE TABLE IF NOT EXISTS {s}.backstop_rollbacks (
    service        text        NOT NULL,
    deployment     text        NOT NULL,
    return_to      text,
    rule           text        NOT NULL,
    reason         text        NOT NULL,
    evidence       jsonb       NOT NULL,
    target         text        NOT NULL,
    status         text        NOT NULL
                   CHECK (status IN ('intent', 'succeeded', 'failed', 'dry_run')),
    intent_at_ms   bigint      NOT NULL,
    finished_at_ms bigint,
    detail         text        NOT NULL,
    returned_to    text,
    not_effective  boolean     NOT NULL DEFAULT false,
    by_replica     text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, deployment)
);
CREATE TABLE IF NOT EXISTS {s}.backstop_services (
    service     text        PRIMARY KEY,
    last_stable text,
    current     text,
    paused      boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {s}.backstop_baselines (
    service    text        NOT NULL,
    deployment text        NOT NULL,
    summary    jsonb       NOT NULL,
    reservoir  jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, deployment)
);
CREATE OR REPLACE VIEW {s}.backstop_deployment_registry AS
SELECT d.service,
       d.deployment,
       to_timestamp(d.first_seen_ms / 1000.0)  AS first_seen,
       d.state,
       to_timestamp(d.stable_at_ms / 1000.0)   AS stable_at,
       r.reason                                AS rollback_reason,
       r.rule                                  AS rollback_rule,
       r.evidence,
       r.status                                AS rollback_status,
       r.detail                                AS rollback_detail,
       r.target                                AS rollback_target,
       r.return_to,
       r.returned_to,
       r.by_replica                            AS by,
       to_timestamp(r.intent_at_ms / 1000.0)   AS rollback_at,
       to_timestamp(r.finished_at_ms / 1000.0) AS rollback_finished_at,
       greatest(d.updated_at, r.updated_at)    AS updated_at
FROM {s}.backstop_deployments d
LEFT JOIN {s}.backstop_rollbacks r USING (service, deployment);
"#;

/// Fleet coordination (`[fleet]` without `redis`, see `fleet::postgres`):
/// each replica's latest report, expiring by the server's clock; one lease
/// per (service, deployment); a fencing counter per service; and the fence
/// of the lease that wrote a rollback record.
const V2: &str = r#"
CREATE TABLE IF NOT EXISTS {s}.backstop_fleet_reports (
    service    text        NOT NULL,
    replica    text        NOT NULL,
    deployment text        NOT NULL,
    report     jsonb       NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (service, replica)
);
CREATE INDEX IF NOT EXISTS backstop_fleet_reports_live
    ON {s}.backstop_fleet_reports (service, deployment, expires_at);
CREATE TABLE IF NOT EXISTS {s}.backstop_fleet_fences (
    service text   PRIMARY KEY,
    token   bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.backstop_fleet_leases (
    service    text        NOT NULL,
    deployment text        NOT NULL,
    holder     text        NOT NULL,
    token      bigint      NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (service, deployment)
);
ALTER TABLE {s}.backstop_rollbacks ADD COLUMN IF NOT EXISTS fence bigint;
"#;

pub(crate) const ROLLBACK_COLUMNS: &str =
    "deployment, return_to, rule, reason, evidence::text, target, \
     status, intent_at_ms, finished_at_ms, detail, returned_to, not_effective, by_replica";

/// The columns [`RollbackRow::params`] fills, `$1` to `$14` in this order.
pub(crate) const ROLLBACK_INSERT_COLUMNS: &str =
    "service, deployment, return_to, rule, reason, evidence, target, status, \
     intent_at_ms, finished_at_ms, detail, returned_to, not_effective, by_replica";

/// Those parameters as values (evidence is JSON).
pub(crate) const ROLLBACK_INSERT_VALUES: &str =
    "$1, $2, $3, $4, $5, $6::text::jsonb, $7, $8, $9, $10, $11, $12, $13, $14";

/// An upsert's update of every column the row carries.
pub(crate) const ROLLBACK_UPDATE_SET: &str =
    "return_to = EXCLUDED.return_to, rule = EXCLUDED.rule, \
     reason = EXCLUDED.reason, evidence = EXCLUDED.evidence, \
     target = EXCLUDED.target, status = EXCLUDED.status, \
     intent_at_ms = EXCLUDED.intent_at_ms, finished_at_ms = EXCLUDED.finished_at_ms, \
     detail = EXCLUDED.detail, returned_to = EXCLUDED.returned_to, \
     not_effective = EXCLUDED.not_effective, by_replica = EXCLUDED.by_replica";

/// A pool of connections to one schema, reading and writing one service's rows.
/// A clone shares the pool.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    service: String,
    /// The quoted schema, ready to prefix table names.
    schema: String,
    /// The URL without its password, and the schema: for messages.
    shown: String,
    password: Option<String>,
    timeout: Duration,
}

impl Postgres {
    /// Connects and migrates. Fails clearly — the URL shown without its
    /// password — when the server cannot be reached, refuses the login or
    /// the tables cannot be made.
    pub async fn connect(config: &StoreConfig, service: &str) -> anyhow::Result<Self> {
        let url = config.url.expose();
        let shown = format!("{} (schema {})", redact_url(url), config.schema);
        let mut pg = check_url(url).map_err(|e| anyhow!("the store {shown}: {e}"))?;
        pg.connect_timeout(config.timeout);
        pg.application_name("backstop");
        let password = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| !p.is_empty());
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .build()
            .map_err(|e| anyhow!("the store {shown}: cannot build the connection pool: {e}"))?;
        let store = Self {
            pool,
            service: service.to_string(),
            schema: format!("\"{}\"", config.schema),
            shown,
            password,
            timeout: config.timeout,
        };
        store
            .migrate(&config.schema)
            .await
            .map_err(|e| anyhow!("cannot use the store {}: {e:#}", store.shown))?;
        Ok(store)
    }

    /// The URL without its password, and the schema.
    pub fn describe(&self) -> String {
        self.shown.clone()
    }

    /// The connection pool, shared with the fleet coordination.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The quoted schema, ready to prefix table names.
    pub(crate) fn schema(&self) -> &str {
        &self.schema
    }

    /// Creates the schema and tables that are missing and applies the
    /// migrations not applied yet, in one transaction, holding an advisory
    /// lock so that agents starting together take turns.
    async fn migrate(&self, schema: &str) -> anyhow::Result<()> {
        let mut client = self.client().await?;
        let tx = self
            .timed("starting the migration", client.transaction())
            .await?;
        let s = &self.schema;
        self.timed(
            "taking the migration lock",
            tx.execute(
                "SELECT pg_advisory_xact_lock($1::int4, hashtext($2::text))",
                &[&MIGRATION_LOCK, &schema],
            ),
        )
        .await?;
        // CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege on the
        // database even when the schema is there, so only when it is not.
        let exists = self
            .timed(
                "looking for the schema",
                tx.query_opt(
                    "SELECT 1 FROM pg_namespace WHERE nspname = $1::text",
                    &[&schema],
                ),
            )
            .await?
            .is_some();
        if !exists {
            self.timed(
                "creating the schema",
                tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {s}")),
            )
            .await?;
        }
        self.timed(
            "creating backstop_schema_version",
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {s}.backstop_schema_version (
                     version    integer     PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 )"
            )),
        )
        .await?;
        let row = self
            .timed(
                "reading the schema version",
                tx.query_one(
                    &format!("SELECT coalesce(max(version), 0) FROM {s}.backstop_schema_version"),
                    &[],
                ),
            )
            .await?;
        let current: i32 = row.try_get(0)?;
        if current > SCHEMA_VERSION {
            anyhow::bail!(
                "its tables are at schema version {current}, newer than this backstop knows \
                 ({SCHEMA_VERSION}): run a newer backstop"
            );
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            self.timed("migrating", tx.batch_execute(&sql.replace("{s}", s)))
                .await
                .map_err(|e| anyhow!("migration to version {version}: {e:#}"))?;
            self.timed(
                "recording the schema version",
                tx.execute(
                    &format!("INSERT INTO {s}.backstop_schema_version (version) VALUES ($1)"),
                    &[version],
                ),
            )
            .await?;
        }
        self.timed("committing the migration", tx.commit()).await?;
        if current < SCHEMA_VERSION {
            tracing::info!(store = %self.shown, from = current, to = SCHEMA_VERSION, "store tables migrated");
        }
        Ok(())
    }

    /// A connection from the pool, within the timeout.
    pub(crate) async fn client(&self) -> anyhow::Result<Object> {
        match tokio::time::timeout(self.timeout, self.pool.get()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(anyhow!("{}", self.scrub(describe_pool(&e, self.timeout)))),
            Err(_) => Err(anyhow!(
                "no connection within {}",
                crate::duration::format(self.timeout)
            )),
        }
    }

    /// Runs one driver call within the timeout; its error as one line,
    /// without the password.
    pub(crate) async fn timed<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(anyhow!("{what}: {}", self.scrub(describe(&e)))),
            Err(_) => Err(anyhow!(
                "{what}: no answer within {}",
                crate::duration::format(self.timeout)
            )),
        }
    }

    fn scrub(&self, s: String) -> String {
        match &self.password {
            Some(p) => s.replace(p.as_str(), "***"),
            None => s,
        }
    }

    pub async fn deployment(&self, id: &str) -> anyhow::Result<Option<DeploymentRecord>> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT deployment, first_seen_ms, state, stable_at_ms, states::text
             FROM {}.backstop_deployments WHERE service = $1 AND deployment = $2",
            self.schema
        );
        let row = self
            .timed(
                "reading a deployment",
                c.query_opt(&sql, &[&self.service, &id]),
            )
            .await?;
        row.map(|r| deployment_from(&r)).transpose()
    }

    pub async fn save_deployment(&self, rec: &DeploymentRecord) -> anyhow::Result<()> {
        let c = self.client().await?;
        let sql = format!(
            "INSERT INTO {}.backstop_deployments
                 (service, deployment, first_seen_ms, state, stable_at_ms, states)
             VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)
             ON CONFLICT (service, deployment) DO UPDATE SET
                 first_seen_ms = EXCLUDED.first_seen_ms, state = EXCLUDED.state,
                 stable_at_ms = EXCLUDED.stable_at_ms, states = EXCLUDED.states,
                 updated_at = now()",
            self.schema
        );
        self.timed(
            "saving a deployment",
            c.execute(
                &sql,
                &[
                    &self.service,
                    &rec.id,
                    &ms(rec.first_seen_ms),
                    &rec.state.as_str(),
                    &rec.stable_at_ms.map(ms),
                    &serde_json::to_string(&rec.states)?,
                ],
            ),
        )
        .await?;
        Ok(())
    }

    /// The deployment and the service's last stable one, in one statement.
    pub async fn mark_stable(&self, rec: &DeploymentRecord) -> anyhow::Result<()> {
        let c = self.client().await?;
        let s = &self.schema;
        let sql = format!(
            "WITH d AS (
                 INSERT INTO {s}.backstop_deployments
                     (service, deployment, first_seen_ms, state, stable_at_ms, states)
                 VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)
                 ON CONFLICT (service, deployment) DO UPDATE SET
                     first_seen_ms = EXCLUDED.first_seen_ms, state = EXCLUDED.state,
                     stable_at_ms = EXCLUDED.stable_at_ms, states = EXCLUDED.states,
                     updated_at = now()
             )
             INSERT INTO {s}.backstop_services (service, last_stable) VALUES ($1, $2)
             ON CONFLICT (service) DO UPDATE SET
                 last_stable = EXCLUDED.last_stable, updated_at = now()"
        );
        self.timed(
            "marking a deployment stable",
            c.execute(
                &sql,
                &[
                    &self.service,
                    &rec.id,
                    &ms(rec.first_seen_ms),
                    &rec.state.as_str(),
                    &rec.stable_at_ms.map(ms),
                    &serde_json::to_string(&rec.states)?,
                ],
            ),
        )
        .await?;
        Ok(())
    }

    pub async fn last_stable(&self) -> anyhow::Result<Option<String>> {
        self.service_text("last_stable").await
    }

    pub async fn current(&self) -> anyhow::Result<Option<String>> {
        self.service_text("current").await
    }

    async fn service_text(&self, column: &str) -> anyhow::Result<Option<String>> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT {column} FROM {}.backstop_services WHERE service = $1",
            self.schema
        );
        let row = self
            .timed(
                &format!("reading {column}"),
                c.query_opt(&sql, &[&self.service]),
            )
            .await?;
        Ok(match row {
            Some(r) => r.try_get(0)?,
            None => None,
        })
    }

    pub async fn set_current(&self, id: &str) -> anyhow::Result<()> {
        let c = self.client().await?;
        let sql = format!(
            "INSERT INTO {}.backstop_services (service, current) VALUES ($1, $2)
             ON CONFLICT (service) DO UPDATE SET current = EXCLUDED.current, updated_at = now()",
            self.schema
        );
        self.timed(
            "saving the current deployment",
            c.execute(&sql, &[&self.service, &id]),
        )
        .await?;
        Ok(())
    }

    pub async fn paused(&self) -> anyhow::Result<bool> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT paused FROM {}.backstop_services WHERE service = $1",
            self.schema
        );
        let row = self
            .timed("reading the pause", c.query_opt(&sql, &[&self.service]))
            .await?;
        Ok(match row {
            Some(r) => r.try_get(0)?,
            None => false,
        })
    }

    pub async fn set_paused(&self, paused: bool) -> anyhow::Result<()> {
        let c = self.client().await?;
        let sql = format!(
            "INSERT INTO {}.backstop_services (service, paused) VALUES ($1, $2)
             ON CONFLICT (service) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()",
            self.schema
        );
        self.timed(
            "saving the pause",
            c.execute(&sql, &[&self.service, &paused]),
        )
        .await?;
        Ok(())
    }

    /// The atomic claim: the insert does nothing when a record of the
    /// deployment exists (or is being inserted by another agent, whose
    /// transaction it waits for), and that record is read back. Any error is
    /// returned as an error, never as a claim.
    pub async fn claim_rollback(&self, rec: &RollbackRecord) -> anyhow::Result<Claim> {
        let c = self.client().await?;
        let sql = format!(
            "INSERT INTO {}.backstop_rollbacks ({ROLLBACK_INSERT_COLUMNS})
             VALUES ({ROLLBACK_INSERT_VALUES})
             ON CONFLICT (service, deployment) DO NOTHING",
            self.schema
        );
        let row = RollbackRow::new(&self.service, rec)?;
        let inserted = self
            .timed("claiming the rollback", c.execute(&sql, &row.params()))
            .await?;
        if inserted == 1 {
            return Ok(Claim::Claimed);
        }
        drop(c);
        match self.rollback(&rec.deployment).await? {
            Some(existing) => Ok(Claim::AlreadyRecorded(Box::new(existing))),
            None => Err(anyhow!(
                "the rollback record of {} was neither inserted nor found",
                rec.deployment
            )),
        }
    }

    pub async fn update_rollback(&self, rec: &RollbackRecord) -> anyhow::Result<()> {
        let c = self.client().await?;
        let sql = format!(
            "INSERT INTO {}.backstop_rollbacks ({ROLLBACK_INSERT_COLUMNS})
             VALUES ({ROLLBACK_INSERT_VALUES})
             ON CONFLICT (service, deployment) DO UPDATE SET
                 {ROLLBACK_UPDATE_SET}, updated_at = now()",
            self.schema
        );
        let row = RollbackRow::new(&self.service, rec)?;
        self.timed(
            "updating the rollback record",
            c.execute(&sql, &row.params()),
        )
        .await?;
        Ok(())
    }

    pub async fn rollback(&self, deployment: &str) -> anyhow::Result<Option<RollbackRecord>> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT {ROLLBACK_COLUMNS} FROM {}.backstop_rollbacks
             WHERE service = $1 AND deployment = $2",
            self.schema
        );
        let row = self
            .timed(
                "reading the rollback record",
                c.query_opt(&sql, &[&self.service, &deployment]),
            )
            .await?;
        row.map(|r| rollback_from(&r)).transpose()
    }

    pub async fn rollbacks(&self) -> anyhow::Result<Vec<RollbackRecord>> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT {ROLLBACK_COLUMNS} FROM {}.backstop_rollbacks
             WHERE service = $1 ORDER BY intent_at_ms DESC",
            self.schema
        );
        let rows = self
            .timed("reading the rollbacks", c.query(&sql, &[&self.service]))
            .await?;
        rows.iter().map(rollback_from).collect()
    }

    /// Keeps a baseline unless the deployment has one: the first write wins
    /// (`ON CONFLICT DO NOTHING`), so every agent reads the same one.
    pub async fn save_baseline(&self, baseline: &Baseline) -> anyhow::Result<bool> {
        let (summary, reservoir) = split(baseline)?;
        let c = self.client().await?;
        let sql = format!(
            "INSERT INTO {}.backstop_baselines (service, deployment, summary, reservoir)
             VALUES ($1, $2, $3::text::jsonb, $4::text::jsonb)
             ON CONFLICT (service, deployment) DO NOTHING",
            self.schema
        );
        let n = self
            .timed(
                "saving the baseline",
                c.execute(
                    &sql,
                    &[&self.service, &baseline.deployment, &summary, &reservoir],
                ),
            )
            .await?;
        Ok(n == 1)
    }

    pub async fn baseline(&self, deployment: &str) -> anyhow::Result<Option<Baseline>> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT summary::text, reservoir::text FROM {}.backstop_baselines
             WHERE service = $1 AND deployment = $2",
            self.schema
        );
        let row = self
            .timed(
                "reading the baseline",
                c.query_opt(&sql, &[&self.service, &deployment]),
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let summary: String = row.try_get(0)?;
        let reservoir: String = row.try_get(1)?;
        join(&summary, &reservoir)
            .map(Some)
            .map_err(|e| anyhow!("the baseline of {deployment} is unreadable: {e}"))
    }
}

/// The samples of each probe's signals, apart from everything else.
type Reservoir = BTreeMap<String, BTreeMap<String, Vec<f64>>>;

/// A baseline as its summary (without samples) and its reservoir, both JSON.
fn split(baseline: &Baseline) -> anyhow::Result<(String, String)> {
    let mut summary = baseline.clone();
    let mut reservoir = Reservoir::new();
    for (probe, pb) in &mut summary.probes {
        for (signal, sb) in &mut pb.signals {
            reservoir
                .entry(probe.clone())
                .or_default()
                .insert(signal.clone(), std::mem::take(&mut sb.samples));
        }
    }
    Ok((
        serde_json::to_string(&summary)?,
        serde_json::to_string(&reservoir)?,
    ))
}

fn join(summary: &str, reservoir: &str) -> Result<Baseline, serde_json::Error> {
    let mut baseline: Baseline = serde_json::from_str(summary)?;
    let reservoir: Reservoir = serde_json::from_str(reservoir)?;
    for (probe, signals) in reservoir {
        for (signal, samples) in signals {
            if let Some(sb) = baseline
                .probes
                .get_mut(&probe)
                .and_then(|p| p.signals.get_mut(&signal))
            {
                sb.samples = samples;
            }
        }
    }
    Ok(baseline)
}

/// A deployment from the columns `deployment, first_seen_ms, state,
/// stable_at_ms, states::text`.
fn deployment_from(r: &Row) -> anyhow::Result<DeploymentRecord> {
    let state: String = r.try_get(2)?;
    let states: String = r.try_get(4)?;
    Ok(DeploymentRecord {
        id: r.try_get(0)?,
        first_seen_ms: unms(r.try_get(1)?),
        state: WatchState::parse(&state)
            .ok_or_else(|| anyhow!("unknown deployment state {state:?} in the store"))?,
        stable_at_ms: r.try_get::<_, Option<i64>>(3)?.map(unms),
        states: serde_json::from_str(&states)
            .map_err(|e| anyhow!("the states of a deployment record are unreadable: {e}"))?,
    })
}

pub(crate) fn rollback_from(r: &Row) -> anyhow::Result<RollbackRecord> {
    let evidence: String = r.try_get(4)?;
    let status: String = r.try_get(6)?;
    Ok(RollbackRecord {
        deployment: r.try_get(0)?,
        return_to: r.try_get(1)?,
        rule: r.try_get(2)?,
        reason: r.try_get(3)?,
        evidence: serde_json::from_str(&evidence)
            .map_err(|e| anyhow!("the evidence of a rollback record is unreadable: {e}"))?,
        target: r.try_get(5)?,
        status: RollbackStatus::parse(&status)
            .ok_or_else(|| anyhow!("unknown rollback status {status:?} in the store"))?,
        intent_at_ms: unms(r.try_get(7)?),
        finished_at_ms: r.try_get::<_, Option<i64>>(8)?.map(unms),
        detail: r.try_get(9)?,
        returned_to: r.try_get(10)?,
        not_effective: r.try_get(11)?,
        by: r.try_get(12)?,
    })
}

/// A rollback record as the parameters `$1`..`$14` of every statement that
/// writes `backstop_rollbacks`: the service, then the columns in the order
/// those statements name them.
pub(crate) struct RollbackRow<'a> {
    service: &'a str,
    rec: &'a RollbackRecord,
    evidence: String,
    status: &'static str,
    intent_at_ms: i64,
    finished_at_ms: Option<i64>,
}

impl<'a> RollbackRow<'a> {
    pub(crate) fn new(service: &'a str, rec: &'a RollbackRecord) -> anyhow::Result<Self> {
        Ok(Self {
            service,
            rec,
            evidence: serde_json::to_string(&rec.evidence)?,
            status: rec.status.as_str(),
            intent_at_ms: ms(rec.intent_at_ms),
            finished_at_ms: rec.finished_at_ms.map(ms),
        })
    }

    pub(crate) fn params(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        let r = self.rec;
        vec![
            &self.service,
            &r.deployment,
            &r.return_to,
            &r.rule,
            &r.reason,
            &self.evidence,
            &r.target,
            &self.status,
            &self.intent_at_ms,
            &self.finished_at_ms,
            &r.detail,
            &r.returned_to,
            &r.not_effective,
            &r.by,
        ]
    }
}

pub(crate) fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn unms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A driver error as one line: the server's own message and SQLSTATE when
/// it sent one, else the error with its causes.
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

fn describe_pool(e: &PoolError, timeout: Duration) -> String {
    match e {
        PoolError::Backend(e) => describe(e),
        PoolError::Timeout(_) => {
            format!("no connection within {}", crate::duration::format(timeout))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_judge::baseline::BaselineBuilder;

    #[test]
    fn a_baseline_split_into_summary_and_reservoir_joins_back_whole() {
        let mut b = BaselineBuilder::with_capacity("v1", 10, 7);
        let now = tokio::time::Instant::now();
        for i in 0..25 {
            let sample = backstop_judge::observe::Sample::new(
                backstop_judge::observe::Outcome::Ok,
                now,
                vec![("latency_ms", i as f64), ("p95_ms", 10.0 + i as f64 / 3.0)],
            );
            b.add("app", &sample);
        }
        let baseline = b.finish();
        assert!(!baseline.probes.is_empty());
        let (summary, reservoir) = split(&baseline).unwrap();
        assert!(summary.contains("\"samples\":[]"), "{summary}");
        // The same as the embedded store gives back: serde_json's parser
        // may differ from the written float in the last bit.
        let whole: Baseline =
            serde_json::from_str(&serde_json::to_string(&baseline).unwrap()).unwrap();
        assert_eq!(join(&summary, &reservoir).unwrap(), whole);
    }
}
