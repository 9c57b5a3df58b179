//! Where the agent keeps what must survive it: deployments and their watch
//! state, the last stable deployment, every rollback, the pause switch and
//! the baselines. Either the embedded store in `state_dir` (one agent) or
//! PostgreSQL (`[store] url`, shared by the agents of one or more services);
//! both keep the same records, and both record a rollback's intent with one
//! atomic check-and-write, so a deployment is never rolled back twice.

pub mod config;
pub mod embedded;
pub mod postgres;
mod records;
pub mod writer;

use std::path::Path;

pub use self::config::StoreConfig;

use backstop_judge::baseline::Baseline;

pub use records::{
    now_ms, Claim, DeploymentMeta, DeploymentRecord, LedgerEntry, Retention, RollbackRecord,
    RollbackStatus, StateAt, WatchState,
};

/// The store the agent uses. Every method means the same on both back ends;
/// an error is an error — never read as "nothing recorded".
pub enum Store {
    Embedded(embedded::Embedded),
    Postgres(postgres::Postgres),
}

impl Store {
    /// Opens (or creates) the embedded store in `state_dir`.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        embedded::Embedded::open(state_dir).map(Self::Embedded)
    }

    /// Connects to PostgreSQL and brings its tables up to date; the rows
    /// read and written are `service`'s.
    pub async fn connect(config: &StoreConfig, service: &str) -> anyhow::Result<Self> {
        postgres::Postgres::connect(config, service)
            .await
            .map(Self::Postgres)
    }

    /// The store a configuration asks for: PostgreSQL with `[store]`, else
    /// the embedded one in `state_dir`.
    pub async fn from_config(
        store: Option<&StoreConfig>,
        service: &str,
        state_dir: &Path,
    ) -> anyhow::Result<Self> {
        match store {
            Some(s) => Self::connect(s, service).await,
            None => Self::open(state_dir),
        }
    }

    /// Where the store is, for the log: a path, or a URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Self::Embedded(s) => s.path().display().to_string(),
            Self::Postgres(s) => s.describe(),
        }
    }

    pub async fn deployment(&self, id: &str) -> anyhow::Result<Option<DeploymentRecord>> {
        match self {
            Self::Embedded(s) => s.deployment(id),
            Self::Postgres(s) => s.deployment(id).await,
        }
    }

    pub async fn save_deployment(&self, rec: &DeploymentRecord) -> anyhow::Result<()> {
        match self {
            Self::Embedded(s) => s.save_deployment(rec),
            Self::Postgres(s) => s.save_deployment(rec).await,
        }
    }

    /// Marks a deployment stable and makes it the one to return to, in one
    /// transaction.
    pub async fn mark_stable(&self, rec: &DeploymentRecord) -> anyhow::Result<()> {
        match self {
            Self::Embedded(s) => s.mark_stable(rec),
            Self::Postgres(s) => s.mark_stable(rec).await,
        }
    }

    /// The last deployment that became stable, the one to return to.
    pub async fn last_stable(&self) -> anyhow::Result<Option<String>> {
        match self {
            Self::Embedded(s) => s.last_stable(),
            Self::Postgres(s) => s.last_stable().await,
        }
    }

    /// The deployment watched last, to resume after a restart.
    pub async fn current(&self) -> anyhow::Result<Option<String>> {
        match self {
            Self::Embedded(s) => s.current(),
            Self::Postgres(s) => s.current().await,
        }
    }

    pub async fn set_current(&self, id: &str) -> anyhow::Result<()> {
        match self {
            Self::Embedded(s) => s.set_current(id),
            Self::Postgres(s) => s.set_current(id).await,
        }
    }

    pub async fn paused(&self) -> anyhow::Result<bool> {
        match self {
            Self::Embedded(s) => s.paused(),
            Self::Postgres(s) => s.paused().await,
        }
    }

    pub async fn set_paused(&self, paused: bool) -> anyhow::Result<()> {
        match self {
            Self::Embedded(s) => s.set_paused(paused),
            Self::Postgres(s) => s.set_paused(paused).await,
        }
    }

    /// Records the intent to roll `rec.deployment` back, unless a rollback of
    /// it is already recorded. The check and the write are one atomic step,
    /// also between agents sharing a PostgreSQL store: of all the claims of
    /// one deployment, exactly one is [`Claim::Claimed`].
    pub async fn claim_rollback(&self, rec: &RollbackRecord) -> anyhow::Result<Claim> {
        match self {
            Self::Embedded(s) => s.claim_rollback(rec),
            Self::Postgres(s) => s.claim_rollback(rec).await,
        }
    }

    /// Updates the record of a rollback (its outcome, its verification).
    pub async fn update_rollback(&self, rec: &RollbackRecord) -> anyhow::Result<()> {
        match self {
            Self::Embedded(s) => s.update_rollback(rec),
            Self::Postgres(s) => s.update_rollback(rec).await,
        }
    }

    pub async fn rollback(&self, deployment: &str) -> anyhow::Result<Option<RollbackRecord>> {
        match self {
            Self::Embedded(s) => s.rollback(deployment),
            Self::Postgres(s) => s.rollback(deployment).await,
        }
    }

    /// Every rollback recorded (of this service), newest first.
    pub async fn rollbacks(&self) -> anyhow::Result<Vec<RollbackRecord>> {
        match self {
            Self::Embedded(s) => s.rollbacks(),
            Self::Postgres(s) => s.rollbacks().await,
        }
    }

    /// Keeps the baseline of a deployment that became stable. The first
    /// write wins: a deployment's baseline, once kept, is never replaced, so
    /// every agent judges against the same numbers. Returns whether this
    /// write was the one kept.
    pub async fn save_baseline(&self, baseline: &Baseline) -> anyhow::Result<bool> {
        match self {
            Self::Embedded(s) => s.save_baseline(baseline),
            Self::Postgres(s) => s.save_baseline(baseline).await,
        }
    }

    pub async fn baseline(&self, deployment: &str) -> anyhow::Result<Option<Baseline>> {
        match self {
            Self::Embedded(s) => s.baseline(deployment),
            Self::Postgres(s) => s.baseline(deployment).await,
        }
    }

    /// Keeps what a pipeline registered of a deployment; a later
    /// registration of the same id replaces it.
    pub async fn save_meta(&self, meta: &DeploymentMeta) -> anyhow::Result<()> {
        match self {
            Self::Embedded(s) => s.save_meta(meta),
            Self::Postgres(s) => s.save_meta(meta).await,
        }
    }

    /// The ledger: the deployments seen or registered, newest first, at
    /// most `limit` of them.
    pub async fn ledger(&self, limit: usize) -> anyhow::Result<Vec<LedgerEntry>> {
        match self {
            Self::Embedded(s) => s.ledger(None, limit),
            Self::Postgres(s) => s.ledger(None, limit).await,
        }
    }

    /// One deployment of the ledger.
    pub async fn ledger_entry(&self, id: &str) -> anyhow::Result<Option<LedgerEntry>> {
        let found = match self {
            Self::Embedded(s) => s.ledger(Some(id), 1)?,
            Self::Postgres(s) => s.ledger(Some(id), 1).await?,
        };
        Ok(found.into_iter().next())
    }

    /// Forgets the deployments the retention no longer keeps (their record,
    /// metadata, rollback record and baseline), never the current one nor
    /// the one to return to. Returns how many were forgotten.
    pub async fn prune(&self, retention: &Retention, now_ms: u64) -> anyhow::Result<usize> {
        match self {
            Self::Embedded(s) => s.prune(retention, now_ms),
            Self::Postgres(s) => s.prune(retention, now_ms).await,
        }
    }
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

    #[tokio::test]
    async fn a_rollback_is_claimed_once_even_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(
                store.claim_rollback(&record("v2")).await.unwrap(),
                Claim::Claimed
            );
            assert!(matches!(
                store.claim_rollback(&record("v2")).await.unwrap(),
                Claim::AlreadyRecorded(_)
            ));
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(
            store.claim_rollback(&record("v2")).await.unwrap(),
            Claim::AlreadyRecorded(r) if r.status == RollbackStatus::Intent
        ));
        assert_eq!(
            store.claim_rollback(&record("v3")).await.unwrap(),
            Claim::Claimed
        );
        assert_eq!(store.rollbacks().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn stable_deployments_and_the_pause_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .mark_stable(&DeploymentRecord {
                    id: "v1".into(),
                    first_seen_ms: 1,
                    state: WatchState::Stable,
                    stable_at_ms: Some(2),
                    states: vec![],
                })
                .await
                .unwrap();
            store.set_paused(true).await.unwrap();
            store.set_current("v1").await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_stable().await.unwrap().as_deref(), Some("v1"));
        assert_eq!(store.current().await.unwrap().as_deref(), Some("v1"));
        assert!(store.paused().await.unwrap());
        assert_eq!(
            store.deployment("v1").await.unwrap().unwrap().state,
            WatchState::Stable
        );
    }

    #[tokio::test]
    async fn the_first_baseline_of_a_deployment_is_the_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = Baseline {
            deployment: "v1".into(),
            ..Baseline::default()
        };
        let mut second = first.clone();
        second.probes.insert("app".into(), Default::default());
        assert!(store.save_baseline(&first).await.unwrap());
        assert!(!store.save_baseline(&second).await.unwrap());
        assert_eq!(store.baseline("v1").await.unwrap(), Some(first));
    }

    #[tokio::test]
    async fn a_second_agent_on_the_same_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(format!("{err:#}").contains("another backstop"), "{err:#}");
    }
}
