//! The embedded store in `state_dir`: deployments and their watch state, the
//! last stable deployment, every rollback, the pause switch. Each write is a
//! committed, durable transaction, so a restart resumes where the agent was
//! and a rollback recorded as intended is never called again.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::evidence::Evidence;

const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");
const ROLLBACKS: TableDefinition<&str, &[u8]> = TableDefinition::new("rollbacks");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const BASELINES: TableDefinition<&str, &[u8]> = TableDefinition::new("baselines");

/// Where a deployment is in its life, as SPEC names the states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchState {
    Warming,
    Watching,
    Stable,
    RolledBack,
}

impl WatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warming => "warming",
            Self::Watching => "watching",
            Self::Stable => "stable",
            Self::RolledBack => "rolled_back",
        }
    }
}

/// One deployment the agent has seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: String,
    /// When this agent first saw it, in Unix milliseconds.
    pub first_seen_ms: u64,
    pub state: WatchState,
    pub stable_at_ms: Option<u64>,
}

/// Where a rollback call stands. `Intent` is written before the call: a
/// record left in `Intent` means the agent died during the call, and the
/// call is never made again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackStatus {
    Intent,
    Succeeded,
    Failed,
    DryRun,
}

impl RollbackStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Intent => "intent",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::DryRun => "dry_run",
        }
    }
}

/// The record of the one rollback of a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackRecord {
    pub deployment: String,
    pub return_to: Option<String>,
    pub rule: String,
    pub reason: String,
    pub evidence: Vec<Evidence>,
    pub target: String,
    pub status: RollbackStatus,
    pub intent_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// What the platform said, or why the call failed.
    pub detail: String,
    pub returned_to: Option<String>,
    /// Set when the deployment had not changed `verify` after the call.
    #[serde(default)]
    pub not_effective: bool,
    /// Which agent made the call (its replica name), for fleets.
    #[serde(default)]
    pub by: Option<String>,
}

/// What [`Store::claim_rollback`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This agent recorded the intent and may call the platform, once.
    Claimed,
    /// A rollback of this deployment was already recorded.
    AlreadyRecorded(Box<RollbackRecord>),
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the store in `state_dir`. Fails clearly when the
    /// directory cannot be written or another agent holds the store.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;
        let path = state_dir.join("backstop.redb");
        let db = Database::create(&path).map_err(|e| {
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

    /// Keeps the baseline of a deployment that became stable.
    pub fn save_baseline(&self, baseline: &crate::baseline::Baseline) -> anyhow::Result<()> {
        self.put(BASELINES, &baseline.deployment, baseline)
    }

    pub fn baseline(&self, deployment: &str) -> anyhow::Result<Option<crate::baseline::Baseline>> {
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

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(dep: &str) -> RollbackRecord {
        RollbackRecord {
            deployment: dep.into(),
            return_to: Some("v1".into()),
            rule: "health failing".into(),
            reason: "health failed 3 times".into(),
            evidence: vec![],
            target: "webhook".into(),
            status: RollbackStatus::Intent,
            intent_at_ms: now_ms(),
            finished_at_ms: None,
            detail: String::new(),
            returned_to: None,
            not_effective: false,
            by: None,
        }
    }

    #[test]
    fn a_rollback_is_claimed_once_even_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.claim_rollback(&record("v2")).unwrap(), Claim::Claimed);
            assert!(matches!(
                store.claim_rollback(&record("v2")).unwrap(),
                Claim::AlreadyRecorded(_)
            ));
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(
            store.claim_rollback(&record("v2")).unwrap(),
            Claim::AlreadyRecorded(r) if r.status == RollbackStatus::Intent
        ));
        assert_eq!(store.claim_rollback(&record("v3")).unwrap(), Claim::Claimed);
        assert_eq!(store.rollbacks().unwrap().len(), 2);
    }

    #[test]
    fn stable_deployments_and_the_pause_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .mark_stable(&DeploymentRecord {
                    id: "v1".into(),
                    first_seen_ms: 1,
                    state: WatchState::Stable,
                    stable_at_ms: Some(2),
                })
                .unwrap();
            store.set_paused(true).unwrap();
            store.set_current("v1").unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_stable().unwrap().as_deref(), Some("v1"));
        assert_eq!(store.current().unwrap().as_deref(), Some("v1"));
        assert!(store.paused().unwrap());
        assert_eq!(
            store.deployment("v1").unwrap().unwrap().state,
            WatchState::Stable
        );
    }

    #[test]
    fn a_second_agent_on_the_same_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(format!("{err:#}").contains("another backstop"), "{err:#}");
    }
}
