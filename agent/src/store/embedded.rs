//! The embedded store: a redb file in `state_dir`, for one agent. Each write
//! is a committed, durable transaction, so a restart resumes where the agent
//! was and a rollback recorded as intended is never called again.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

use super::records::{
    Claim, DeploymentMeta, DeploymentRecord, LedgerEntry, Retention, RollbackRecord,
};
use backstop_judge::baseline::Baseline;

const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");
const ROLLBACKS: TableDefinition<&str, &[u8]> = TableDefinition::new("rollbacks");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const BASELINES: TableDefinition<&str, &[u8]> = TableDefinition::new("baselines");
/// What pipelines registered of deployments (`POST /v1/deployments`).
const METAS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployment_meta");

/// redb's cache: 90% for pages read, 10% for pages written before a commit.
const CACHE_BYTES: usize = 256 * 1024;

/// The redb file `state_dir/backstop.redb`; a second agent on the same
/// `state_dir` is refused.
pub struct Embedded {
    db: Database,
    path: PathBuf,
}

impl Embedded {
    /// Opens (or creates) the store in `state_dir`. Fails clearly when the
    /// directory cannot be written or another agent holds the store.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;
        let path = state_dir.join("backstop.redb");
        // redb keeps every page it writes in a read cache of up to 90% of
        // its cache size (1 GiB by default): the region allocator's pages
        // written when the file is created alone stayed as 0.5 MB of heap
        // for the agent's whole life. The store is small and read seldom;
        // the kernel's page cache serves it as well.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot open the store {}: {e} (is another backstop using this state_dir?)",
                    path.display()
                )
            })?;
        let store = Self { db, path };
        // Create the tables up front so readers never see them missing.
        let tx = store.db.begin_write()?;
        tx.open_table(DEPLOYMENTS)?;
        tx.open_table(ROLLBACKS)?;
        tx.open_table(META)?;
        tx.open_table(BASELINES)?;
        tx.open_table(METAS)?;
        tx.commit()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> anyhow::Result<Option<T>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table)?;
        match t.get(key)? {
            Some(v) => Ok(Some(
                serde_json::from_slice(v.value())
                    .with_context(|| format!("store record {key:?} is unreadable"))?,
            )),
            None => Ok(None),
        }
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(value)?;
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(table)?;
            t.insert(key, bytes.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn deployment(&self, id: &str) -> anyhow::Result<Option<DeploymentRecord>> {
        self.get(DEPLOYMENTS, id)
    }

    pub fn save_deployment(&self, rec: &DeploymentRecord) -> anyhow::Result<()> {
        self.put(DEPLOYMENTS, &rec.id, rec)
    }

    /// Marks a deployment stable and makes it the one to return to, in one
    /// transaction.
    pub fn mark_stable(&self, rec: &DeploymentRecord) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(rec)?;
        let id = serde_json::to_vec(&rec.id)?;
        let tx = self.db.begin_write()?;
        {
            let mut d = tx.open_table(DEPLOYMENTS)?;
            d.insert(rec.id.as_str(), bytes.as_slice())?;
            let mut m = tx.open_table(META)?;
            m.insert("last_stable", id.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The last deployment that became stable, the one to return to.
    pub fn last_stable(&self) -> anyhow::Result<Option<String>> {
        self.get(META, "last_stable")
    }

    /// The deployment this agent watched last, to resume after a restart.
    pub fn current(&self) -> anyhow::Result<Option<String>> {
        self.get(META, "current")
    }

    pub fn set_current(&self, id: &str) -> anyhow::Result<()> {
        self.put(META, "current", &id)
    }

    pub fn paused(&self) -> anyhow::Result<bool> {
        Ok(self.get(META, "paused")?.unwrap_or(false))
    }

    pub fn set_paused(&self, paused: bool) -> anyhow::Result<()> {
        self.put(META, "paused", &paused)
    }

    /// Records the intent to roll `rec.deployment` back, unless a rollback of
    /// it is already recorded. The check and the write are one transaction.
    pub fn claim_rollback(&self, rec: &RollbackRecord) -> anyhow::Result<Claim> {
        let bytes = serde_json::to_vec(rec)?;
        let tx = self.db.begin_write()?;
        let existing = {
            let mut t = tx.open_table(ROLLBACKS)?;
            let existing = t
                .get(rec.deployment.as_str())?
                .map(|v| serde_json::from_slice::<RollbackRecord>(v.value()))
                .transpose()?;
            if existing.is_none() {
                t.insert(rec.deployment.as_str(), bytes.as_slice())?;
            }
            existing
        };
        match existing {
            Some(r) => {
                tx.abort()?;
                Ok(Claim::AlreadyRecorded(Box::new(r)))
            }
            None => {
                tx.commit()?;
                Ok(Claim::Claimed)
            }
        }
    }

    /// Updates the record of a rollback (its outcome, its verification).
    pub fn update_rollback(&self, rec: &RollbackRecord) -> anyhow::Result<()> {
        self.put(ROLLBACKS, &rec.deployment, rec)
    }

    pub fn rollback(&self, deployment: &str) -> anyhow::Result<Option<RollbackRecord>> {
        self.get(ROLLBACKS, deployment)
    }

    /// Keeps the baseline of a deployment that became stable, unless one is
    /// kept already; returns whether this one was written.
    pub fn save_baseline(&self, baseline: &Baseline) -> anyhow::Result<bool> {
        let bytes = serde_json::to_vec(baseline)?;
        let tx = self.db.begin_write()?;
        let written = {
            let mut t = tx.open_table(BASELINES)?;
            let kept = t.get(baseline.deployment.as_str())?.is_some();
            if !kept {
                t.insert(baseline.deployment.as_str(), bytes.as_slice())?;
            }
            !kept
        };
        tx.commit()?;
        Ok(written)
    }

    pub fn baseline(&self, deployment: &str) -> anyhow::Result<Option<Baseline>> {
        self.get(BASELINES, deployment)
    }

    /// Every rollback recorded, newest first.
    pub fn rollbacks(&self) -> anyhow::Result<Vec<RollbackRecord>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(ROLLBACKS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (_, v) = entry?;
            out.push(serde_json::from_slice::<RollbackRecord>(v.value())?);
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.intent_at_ms));
        Ok(out)
    }

    pub fn save_meta(&self, meta: &DeploymentMeta) -> anyhow::Result<()> {
        self.put(METAS, &meta.id, meta)
    }

    /// The ledger, newest first (or the one deployment `id`), from one
    /// read transaction. Records written by an older version have no
    /// states: [`DeploymentRecord::history`] derives them.
    pub fn ledger(&self, id: Option<&str>, limit: usize) -> anyhow::Result<Vec<LedgerEntry>> {
        let tx = self.db.begin_read()?;
        let deps = tx.open_table(DEPLOYMENTS)?;
        let metas = tx.open_table(METAS)?;
        let rollbacks = tx.open_table(ROLLBACKS)?;
        let ids: std::collections::BTreeSet<String> = match id {
            Some(id) => [id.to_string()].into(),
            None => keys(&deps)?.into_iter().chain(keys(&metas)?).collect(),
        };
        let mut out = Vec::new();
        for id in &ids {
            let entry = LedgerEntry::join(
                decode(&deps, id)?,
                decode(&metas, id)?,
                decode(&rollbacks, id)?,
            );
            out.extend(entry);
        }
        out.sort_by(|a, b| b.at_ms().cmp(&a.at_ms()).then_with(|| a.id.cmp(&b.id)));
        out.truncate(limit);
        Ok(out)
    }

    /// Forgets what `retention` no longer keeps, in one transaction.
    pub fn prune(&self, retention: &Retention, now_ms: u64) -> anyhow::Result<usize> {
        let tx = self.db.begin_write()?;
        let gone = {
            let deps = tx.open_table(DEPLOYMENTS)?;
            let metas = tx.open_table(METAS)?;
            let meta = tx.open_table(META)?;
            let mut entries = Vec::new();
            for id in keys(&deps)? {
                if let Some(d) = decode::<DeploymentRecord>(&deps, &id)? {
                    entries.push((id, d.first_seen_ms));
                }
            }
            for id in keys(&metas)? {
                if deps.get(id.as_str())?.is_none() {
                    if let Some(m) = decode::<DeploymentMeta>(&metas, &id)? {
                        entries.push((id, m.registered_at_ms));
                    }
                }
            }
            let current: Option<String> = decode(&meta, "current")?;
            let last_stable: Option<String> = decode(&meta, "last_stable")?;
            let keep: Vec<&str> = current
                .iter()
                .chain(&last_stable)
                .map(String::as_str)
                .collect();
            retention.to_prune(&entries, &keep, now_ms)
        };
        if gone.is_empty() {
            tx.abort()?;
            return Ok(0);
        }
        for table in [DEPLOYMENTS, METAS, ROLLBACKS, BASELINES] {
            let mut t = tx.open_table(table)?;
            for id in &gone {
                t.remove(id.as_str())?;
            }
        }
        tx.commit()?;
        Ok(gone.len())
    }
}

/// Every key of a table.
fn keys(t: &impl ReadableTable<&'static str, &'static [u8]>) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in t.iter()? {
        out.push(entry?.0.value().to_string());
    }
    Ok(out)
}

/// The record under `key`, read from JSON.
fn decode<T: DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> anyhow::Result<Option<T>> {
    match t.get(key)? {
        Some(v) => Ok(Some(
            serde_json::from_slice(v.value())
                .with_context(|| format!("store record {key:?} is unreadable"))?,
        )),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::{RollbackStatus, StateAt, WatchState};

    /// Writes `json` under `key` as an older version of the agent did.
    fn write_raw(store: &Embedded, table: TableDefinition<&str, &[u8]>, key: &str, json: &str) {
        let tx = store.db.begin_write().unwrap();
        tx.open_table(table)
            .unwrap()
            .insert(key, json.as_bytes())
            .unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn the_records_of_an_older_version_show_in_the_ledger_after_an_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = Embedded::open(dir.path()).unwrap();
            // The records as the version before the ledger wrote them.
            write_raw(
                &old,
                DEPLOYMENTS,
                "v1",
                r#"{"id":"v1","first_seen_ms":1000,"state":"stable","stable_at_ms":4000}"#,
            );
            write_raw(
                &old,
                DEPLOYMENTS,
                "v2",
                r#"{"id":"v2","first_seen_ms":5000,"state":"rolled_back","stable_at_ms":null}"#,
            );
            write_raw(
                &old,
                ROLLBACKS,
                "v2",
                r#"{"deployment":"v2","return_to":"v1","rule":"health failing","reason":"down 3 times",
                    "evidence":[],"target":"webhook","status":"succeeded","intent_at_ms":6000,
                    "finished_at_ms":6500,"detail":"ok","returned_to":"v1"}"#,
            );
            write_raw(&old, META, "last_stable", r#""v1""#);
        }
        let store = Embedded::open(dir.path()).unwrap();
        let ledger = store.ledger(None, 10).unwrap();
        let ids: Vec<&str> = ledger.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["v2", "v1"], "newest first");
        let v2 = &ledger[0];
        assert_eq!(v2.state, Some(WatchState::RolledBack));
        assert_eq!(
            v2.states,
            vec![
                StateAt {
                    state: WatchState::Warming,
                    at_ms: 5000
                },
                StateAt {
                    state: WatchState::RolledBack,
                    at_ms: 6500
                },
            ]
        );
        let rb = v2.rollback.as_ref().unwrap();
        assert_eq!(
            (rb.rule.as_str(), rb.reason.as_str()),
            ("health failing", "down 3 times")
        );
        assert_eq!(rb.status, RollbackStatus::Succeeded);
        assert_eq!(ledger[1].states.last().unwrap().state, WatchState::Stable);
        assert_eq!(store.ledger(Some("v1"), 1).unwrap()[0].id, "v1");
        assert!(store.ledger(Some("v9"), 1).unwrap().is_empty());
    }

    #[test]
    fn pruning_forgets_every_record_of_a_deployment_but_keeps_the_current_and_last_stable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(dir.path()).unwrap();
        for (i, id) in ["v1", "v2", "v3", "v4", "v5"].iter().enumerate() {
            store
                .save_deployment(&DeploymentRecord::new(id, 1000 * (i as u64 + 1)))
                .unwrap();
            store
                .save_baseline(&Baseline {
                    deployment: id.to_string(),
                    ..Baseline::default()
                })
                .unwrap();
        }
        store
            .save_meta(&DeploymentMeta {
                id: "v6".into(),
                registered_at_ms: 6000,
                ..Default::default()
            })
            .unwrap();
        store.put(META, "last_stable", &"v1").unwrap();
        store.set_current("v2").unwrap();
        let retention = Retention {
            max_age: std::time::Duration::from_secs(3600),
            max_count: 2,
        };
        assert_eq!(store.prune(&retention, 7000).unwrap(), 2);
        let ids: Vec<String> = store
            .ledger(None, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, ["v6", "v5", "v2", "v1"]);
        assert!(store.deployment("v3").unwrap().is_none());
        assert!(store.baseline("v4").unwrap().is_none());
        assert!(store.baseline("v1").unwrap().is_some());
        assert_eq!(store.prune(&retention, 7000).unwrap(), 0);
    }
}
