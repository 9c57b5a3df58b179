//! The embedded store: a redb file in `state_dir`, for one agent. Each write
//! is a committed, durable transaction, so a restart resumes where the agent
//! was and a rollback recorded as intended is never called again.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

use super::records::{Claim, DeploymentRecord, RollbackRecord};
use backstop_judge::baseline::Baseline;

const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");
const ROLLBACKS: TableDefinition<&str, &[u8]> = TableDefinition::new("rollbacks");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const BASELINES: TableDefinition<&str, &[u8]> = TableDefinition::new("baselines");

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
}
