//! The deployment ledger in PostgreSQL: what pipelines registered
//! (`backstop_deployment_meta`), the ledger read as one join of the
//! deployments, their metadata and their rollbacks, and its pruning.

use std::collections::BTreeMap;

use anyhow::anyhow;
use tokio_postgres::Row;

use super::{deployment_from, ms, rollback_from, unms, Postgres, ROLLBACK_COLUMNS};
use crate::store::records::{DeploymentMeta, LedgerEntry, Retention, RollbackRecord};

impl Postgres {
    /// Keeps what a pipeline registered of a deployment; a later
    /// registration of the same id replaces it.
    pub async fn save_meta(&self, m: &DeploymentMeta) -> anyhow::Result<()> {
        let c = self.client().await?;
        let sql = format!(
            "INSERT INTO {}.backstop_deployment_meta
                 (service, deployment, commit_id, triggered_by, environment, annotations,
                  registered_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7)
             ON CONFLICT (service, deployment) DO UPDATE SET
                 commit_id = EXCLUDED.commit_id, triggered_by = EXCLUDED.triggered_by,
                 environment = EXCLUDED.environment, annotations = EXCLUDED.annotations,
                 registered_at_ms = EXCLUDED.registered_at_ms, updated_at = now()",
            self.schema
        );
        let annotations = serde_json::to_string(&m.annotations)?;
        self.timed(
            "saving a deployment's metadata",
            c.execute(
                &sql,
                &[
                    &self.service,
                    &m.id,
                    &m.commit,
                    &m.triggered_by,
                    &m.environment,
                    &annotations,
                    &ms(m.registered_at_ms),
                ],
            ),
        )
        .await?;
        Ok(())
    }

    /// The ledger, newest first (or the one deployment `id`): the
    /// deployments seen and those only registered, each with its metadata
    /// and its rollback.
    pub async fn ledger(&self, id: Option<&str>, limit: usize) -> anyhow::Result<Vec<LedgerEntry>> {
        let c = self.client().await?;
        let s = &self.schema;
        let sql = format!(
            "SELECT coalesce(d.deployment, m.deployment), d.first_seen_ms, d.state,
                    d.stable_at_ms, d.states::text,
                    m.deployment, m.commit_id, m.triggered_by, m.environment,
                    m.annotations::text, m.registered_at_ms
             FROM (SELECT * FROM {s}.backstop_deployments WHERE service = $1) d
             FULL OUTER JOIN (SELECT * FROM {s}.backstop_deployment_meta WHERE service = $1) m
                  ON m.deployment = d.deployment
             WHERE $2::text IS NULL OR coalesce(d.deployment, m.deployment) = $2::text
             ORDER BY coalesce(d.first_seen_ms, m.registered_at_ms) DESC,
                      coalesce(d.deployment, m.deployment)
             LIMIT $3"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .timed(
                "reading the ledger",
                c.query(&sql, &[&self.service, &id, &limit]),
            )
            .await?;
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let sql = format!(
            "SELECT {ROLLBACK_COLUMNS} FROM {s}.backstop_rollbacks
             WHERE service = $1 AND deployment = ANY($2)"
        );
        let found = self
            .timed(
                "reading the ledger's rollbacks",
                c.query(&sql, &[&self.service, &ids]),
            )
            .await?;
        let mut rollbacks: BTreeMap<String, RollbackRecord> = BTreeMap::new();
        for r in &found {
            let rec = rollback_from(r)?;
            rollbacks.insert(rec.deployment.clone(), rec);
        }
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get(0)?;
            let dep = match r.try_get::<_, Option<i64>>(1)? {
                Some(_) => Some(deployment_from(r)?),
                None => None,
            };
            let meta = meta_from(r)?;
            out.extend(LedgerEntry::join(dep, meta, rollbacks.remove(&id)));
        }
        Ok(out)
    }

    /// Forgets what `retention` no longer keeps, in one transaction.
    pub async fn prune(&self, retention: &Retention, now_ms: u64) -> anyhow::Result<usize> {
        let mut c = self.client().await?;
        let s = &self.schema;
        let tx = self.timed("starting the pruning", c.transaction()).await?;
        // Registrations and deployments of the service, serialized with
        // other agents' pruning by the lock on its services row.
        let keep = self
            .timed(
                "reading what the ledger keeps",
                tx.query_opt(
                    &format!(
                        "SELECT current, last_stable FROM {s}.backstop_services
                         WHERE service = $1 FOR UPDATE"
                    ),
                    &[&self.service],
                ),
            )
            .await?;
        let keep: Vec<String> = match keep {
            Some(r) => [r.try_get::<_, Option<String>>(0)?, r.try_get(1)?]
                .into_iter()
                .flatten()
                .collect(),
            None => vec![],
        };
        let rows = self
            .timed(
                "reading the ledger",
                tx.query(
                    &format!(
                        "SELECT deployment, first_seen_ms FROM {s}.backstop_deployments
                         WHERE service = $1
                         UNION ALL
                         SELECT m.deployment, m.registered_at_ms
                         FROM {s}.backstop_deployment_meta m
                         WHERE m.service = $1 AND NOT EXISTS (
                             SELECT 1 FROM {s}.backstop_deployments d
                             WHERE d.service = m.service AND d.deployment = m.deployment)"
                    ),
                    &[&self.service],
                ),
            )
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for r in &rows {
            entries.push((r.try_get::<_, String>(0)?, unms(r.try_get(1)?)));
        }
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        let gone = retention.to_prune(&entries, &keep, now_ms);
        if gone.is_empty() {
            return Ok(0);
        }
        for table in [
            "backstop_deployments",
            "backstop_deployment_meta",
            "backstop_rollbacks",
            "backstop_baselines",
        ] {
            self.timed(
                "pruning the ledger",
                tx.execute(
                    &format!("DELETE FROM {s}.{table} WHERE service = $1 AND deployment = ANY($2)"),
                    &[&self.service, &gone],
                ),
            )
            .await?;
        }
        self.timed("committing the pruning", tx.commit()).await?;
        Ok(gone.len())
    }
}

/// The metadata columns of a ledger row (5 to 10), when it has any.
fn meta_from(r: &Row) -> anyhow::Result<Option<DeploymentMeta>> {
    let Some(id) = r.try_get::<_, Option<String>>(5)? else {
        return Ok(None);
    };
    let annotations: String = r.try_get(9)?;
    Ok(Some(DeploymentMeta {
        id,
        commit: r.try_get(6)?,
        triggered_by: r.try_get(7)?,
        environment: r.try_get(8)?,
        annotations: serde_json::from_str(&annotations).map_err(|e| {
            anyhow!(
                "the annotations of {} are unreadable: {e}",
                r.get::<_, String>(0)
            )
        })?,
        registered_at_ms: unms(r.try_get(10)?),
    }))
}
