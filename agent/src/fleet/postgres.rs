//! Fleet coordination through the PostgreSQL `[store]`, on the store's own
//! pool (no second pool is opened). The tables are made by the store's
//! migrations (version 2, see `store::postgres`):
//!
//! - `backstop_fleet_reports`: one row per (service, replica), its latest
//!   report and `expires_at`, set from the server's `now()` so the replicas'
//!   clocks do not matter;
//! - `backstop_fleet_samples`: one row per (service, replica), the samples
//!   of the recent minutes it published for the live baseline, with when
//!   (by the server's clock) and `expires_at`;
//! - `backstop_fleet_leases`: one row per (service, deployment), the holder,
//!   its fencing token and `expires_at`;
//! - `backstop_fleet_fences`: the newest fencing token of each service;
//! - `backstop_rollbacks`: the fleet's rollback record, the row the lone
//!   agent's claim writes too, with the `fence` of the lease that wrote it.
//!
//! Acquiring is one statement: the service's counter is incremented and the
//! lease row inserted, or taken over only when it has expired. A fenced
//! write locks the lease row (`FOR UPDATE` in the same statement) and
//! writes only while the row still carries the writer's token, so a holder
//! whose lease was taken over can no longer write.

use std::time::Duration;

use anyhow::anyhow;

use super::protocol::{Heartbeat, Lease, PeerSamples};
use crate::store::postgres::{
    rollback_from, unms, Postgres, RollbackRow, ROLLBACK_COLUMNS, ROLLBACK_INSERT_COLUMNS,
    ROLLBACK_INSERT_VALUES, ROLLBACK_UPDATE_SET,
};
use crate::store::RollbackRecord;
use backstop_judge::live::LiveSummary;

pub struct PgFleet {
    pg: Postgres,
    shown: String,
}

/// `expires_at` as Unix milliseconds, by the server's clock.
const EXPIRES_MS: &str = "(extract(epoch FROM expires_at) * 1000)::bigint";

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl PgFleet {
    /// Coordination on the store's pool and schema.
    pub fn new(store: &Postgres) -> Self {
        Self {
            shown: store.describe(),
            pg: store.clone(),
        }
    }

    pub fn describe(&self) -> String {
        self.shown.clone()
    }

    fn s(&self) -> &str {
        self.pg.schema()
    }

    pub async fn publish(
        &self,
        service: &str,
        report: &Heartbeat,
        expiry: Duration,
    ) -> anyhow::Result<()> {
        let c = self.pg.client().await?;
        let sql = format!(
            "INSERT INTO {}.backstop_fleet_reports
                 (service, replica, deployment, report, expires_at)
             VALUES ($1, $2, $3, $4::text::jsonb, now() + $5::float8 * interval '1 millisecond')
             ON CONFLICT (service, replica) DO UPDATE SET
                 deployment = EXCLUDED.deployment, report = EXCLUDED.report,
                 expires_at = EXCLUDED.expires_at",
            self.s()
        );
        let json = serde_json::to_string(report)?;
        self.pg
            .timed(
                "publishing this replica's report",
                c.execute(
                    &sql,
                    &[
                        &service,
                        &report.replica,
                        &report.deployment,
                        &json,
                        &millis(expiry),
                    ],
                ),
            )
            .await?;
        Ok(())
    }

    pub async fn live(&self, service: &str, deployment: &str) -> anyhow::Result<Vec<Heartbeat>> {
        let c = self.pg.client().await?;
        let sql = format!(
            "SELECT report::text FROM {}.backstop_fleet_reports
             WHERE service = $1 AND deployment = $2 AND expires_at > now()
             ORDER BY replica",
            self.s()
        );
        let rows = self
            .pg
            .timed(
                "reading the live replicas",
                c.query(&sql, &[&service, &deployment]),
            )
            .await?;
        rows.iter()
            .map(|r| {
                let text: String = r.try_get(0)?;
                serde_json::from_str(&text)
                    .map_err(|e| anyhow!("a replica's report is unreadable: {e}"))
            })
            .collect()
    }

    pub async fn leave(&self, service: &str, replica: &str) -> anyhow::Result<()> {
        let c = self.pg.client().await?;
        for table in ["backstop_fleet_reports", "backstop_fleet_samples"] {
            let sql = format!(
                "DELETE FROM {}.{table} WHERE service = $1 AND replica = $2",
                self.s()
            );
            self.pg
                .timed("leaving the fleet", c.execute(&sql, &[&service, &replica]))
                .await?;
        }
        Ok(())
    }

    pub async fn publish_samples(
        &self,
        service: &str,
        replica: &str,
        summary: &LiveSummary,
        expiry: Duration,
    ) -> anyhow::Result<()> {
        let c = self.pg.client().await?;
        let sql = format!(
            "INSERT INTO {}.backstop_fleet_samples
                 (service, replica, deployment, samples, published_at, expires_at)
             VALUES ($1, $2, $3, $4::text::jsonb, now(),
                     now() + $5::float8 * interval '1 millisecond')
             ON CONFLICT (service, replica) DO UPDATE SET
                 deployment = EXCLUDED.deployment, samples = EXCLUDED.samples,
                 published_at = EXCLUDED.published_at, expires_at = EXCLUDED.expires_at",
            self.s()
        );
        let json = serde_json::to_string(summary)?;
        self.pg
            .timed(
                "publishing this replica's samples",
                c.execute(
                    &sql,
                    &[
                        &service,
                        &replica,
                        &summary.deployment,
                        &json,
                        &millis(expiry),
                    ],
                ),
            )
            .await?;
        Ok(())
    }

    pub async fn live_samples(
        &self,
        service: &str,
        deployment: &str,
        limit: usize,
    ) -> anyhow::Result<Vec<PeerSamples>> {
        let c = self.pg.client().await?;
        let sql = format!(
            "SELECT s.replica, s.samples::text,
                    greatest(extract(epoch FROM now() - s.published_at) * 1000, 0)::float8
             FROM {s}.backstop_fleet_samples s
             JOIN (SELECT replica FROM {s}.backstop_fleet_samples
                   WHERE service = $1 AND deployment = $2 AND expires_at > now()
                   ORDER BY published_at DESC LIMIT $3) freshest USING (replica)
             WHERE s.service = $1
             ORDER BY s.replica",
            s = self.s()
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .pg
            .timed(
                "reading the live replicas' samples",
                c.query(&sql, &[&service, &deployment, &limit]),
            )
            .await?;
        rows.iter()
            .map(|r| {
                let text: String = r.try_get(1)?;
                let age: f64 = r.try_get(2)?;
                Ok(PeerSamples {
                    replica: r.try_get(0)?,
                    age: Duration::from_secs_f64(age.max(0.0) / 1e3),
                    summary: serde_json::from_str(&text)
                        .map_err(|e| anyhow!("a replica's samples are unreadable: {e}"))?,
                })
            })
            .collect()
    }

    /// One statement: when no unexpired lease of the deployment is seen, the
    /// service's fencing counter goes up by one and the lease is inserted,
    /// or taken over if it has expired. Two agents racing both increment
    /// the counter (one after the other: the counter's row is locked), but
    /// only one inserts or takes over the lease row; the other gets nothing.
    pub async fn acquire(
        &self,
        service: &str,
        deployment: &str,
        holder: &str,
        ttl: Duration,
    ) -> anyhow::Result<Option<Lease>> {
        let c = self.pg.client().await?;
        let s = self.s();
        let sql = format!(
            "WITH free AS (
                 SELECT NOT EXISTS (
                     SELECT 1 FROM {s}.backstop_fleet_leases
                     WHERE service = $1 AND deployment = $2 AND expires_at >= now()
                 ) AS ok
             ), fence AS (
                 INSERT INTO {s}.backstop_fleet_fences (service, token)
                 SELECT $1, 1 FROM free WHERE free.ok
                 ON CONFLICT (service) DO UPDATE SET token = backstop_fleet_fences.token + 1
                 RETURNING token
             )
             INSERT INTO {s}.backstop_fleet_leases AS l (service, deployment, holder, token, expires_at)
             SELECT $1, $2, $3, fence.token, now() + $4::float8 * interval '1 millisecond'
             FROM fence
             ON CONFLICT (service, deployment) DO UPDATE SET
                 holder = EXCLUDED.holder, token = EXCLUDED.token,
                 expires_at = EXCLUDED.expires_at
             WHERE l.expires_at < now()
             RETURNING token, {EXPIRES_MS}"
        );
        let row = self
            .pg
            .timed(
                "taking the fleet lease",
                c.query_opt(&sql, &[&service, &deployment, &holder, &millis(ttl)]),
            )
            .await?;
        Ok(match row {
            Some(r) => Some(Lease {
                deployment: deployment.to_string(),
                holder: holder.to_string(),
                token: r.try_get(0)?,
                expires_at_ms: unms(r.try_get(1)?),
            }),
            None => None,
        })
    }

    /// Extends the lease while its row still carries this token: a lease
    /// that expired but was not taken over is still this holder's.
    pub async fn renew(
        &self,
        service: &str,
        lease: &mut Lease,
        ttl: Duration,
    ) -> anyhow::Result<bool> {
        let c = self.pg.client().await?;
        let sql = format!(
            "UPDATE {}.backstop_fleet_leases
             SET expires_at = now() + $4::float8 * interval '1 millisecond'
             WHERE service = $1 AND deployment = $2 AND token = $3
             RETURNING {EXPIRES_MS}",
            self.s()
        );
        let row = self
            .pg
            .timed(
                "renewing the fleet lease",
                c.query_opt(
                    &sql,
                    &[&service, &lease.deployment, &lease.token, &millis(ttl)],
                ),
            )
            .await?;
        match row {
            Some(r) => {
                lease.expires_at_ms = unms(r.try_get(0)?);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub async fn release(&self, service: &str, lease: &Lease) -> anyhow::Result<()> {
        let c = self.pg.client().await?;
        let sql = format!(
            "DELETE FROM {}.backstop_fleet_leases
             WHERE service = $1 AND deployment = $2 AND token = $3",
            self.s()
        );
        self.pg
            .timed(
                "releasing the fleet lease",
                c.execute(&sql, &[&service, &lease.deployment, &lease.token]),
            )
            .await?;
        Ok(())
    }

    /// One statement: the lease row is locked and must still carry this
    /// token; a record written under a newer fence is never overwritten.
    pub async fn record(
        &self,
        service: &str,
        lease: &Lease,
        rec: &RollbackRecord,
    ) -> anyhow::Result<bool> {
        if rec.deployment != lease.deployment {
            anyhow::bail!(
                "the lease is for {}, not for {}",
                lease.deployment,
                rec.deployment
            );
        }
        let c = self.pg.client().await?;
        let s = self.s();
        let sql = format!(
            "WITH l AS (
                 SELECT token FROM {s}.backstop_fleet_leases
                 WHERE service = $1 AND deployment = $2 AND token = $15
                 FOR UPDATE
             )
             INSERT INTO {s}.backstop_rollbacks AS r ({ROLLBACK_INSERT_COLUMNS}, fence)
             SELECT {ROLLBACK_INSERT_VALUES}, l.token
             FROM l
             ON CONFLICT (service, deployment) DO UPDATE SET
                 {ROLLBACK_UPDATE_SET}, fence = EXCLUDED.fence, updated_at = now()
             WHERE r.fence IS NULL OR r.fence <= EXCLUDED.fence"
        );
        let row = RollbackRow::new(service, rec)?;
        let mut params = row.params();
        params.push(&lease.token);
        let n = self
            .pg
            .timed(
                "writing the fleet's rollback record",
                c.execute(&sql, &params),
            )
            .await?;
        Ok(n == 1)
    }

    pub async fn outcome(
        &self,
        service: &str,
        deployment: &str,
    ) -> anyhow::Result<Option<RollbackRecord>> {
        let c = self.pg.client().await?;
        let sql = format!(
            "SELECT {ROLLBACK_COLUMNS} FROM {}.backstop_rollbacks
             WHERE service = $1 AND deployment = $2",
            self.s()
        );
        let row = self
            .pg
            .timed(
                "reading the fleet's rollback record",
                c.query_opt(&sql, &[&service, &deployment]),
            )
            .await?;
        row.map(|r| rollback_from(&r)).transpose()
    }
}
