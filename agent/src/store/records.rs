//! The records both stores keep, as the watch and `/status` see them: a
//! deployment and its state, a rollback and its outcome, a claim's answer,
//! the metadata a pipeline registered, and the ledger that joins them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use backstop_judge::evidence::Evidence;

/// Where a deployment is in its life, as SPEC names the states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchState {
    Warming,
    Watching,
    Stable,
    RolledBack,
    /// A rollback rule still held when the watch ended, but a guard rail
    /// kept the rollback back: never the baseline, never the deployment to
    /// return to. Rolled back once what held it back lifts, if the rule
    /// still holds; stable once no rollback rule holds for a whole watch.
    Unhealthy,
}

impl WatchState {
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Warming,
            Self::Watching,
            Self::Stable,
            Self::RolledBack,
            Self::Unhealthy,
        ]
        .into_iter()
        .find(|w| w.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warming => "warming",
            Self::Watching => "watching",
            Self::Stable => "stable",
            Self::RolledBack => "rolled_back",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// One state a deployment entered, and when (Unix milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateAt {
    pub state: WatchState,
    pub at_ms: u64,
}

/// The most state changes a record keeps (a watch has a handful).
const MAX_STATES: usize = 16;

/// One deployment the agent has seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: String,
    /// When this agent first saw it, in Unix milliseconds.
    pub first_seen_ms: u64,
    pub state: WatchState,
    pub stable_at_ms: Option<u64>,
    /// Each state it entered, in order. Empty in records written before
    /// the states were kept: [`DeploymentRecord::history`] derives them.
    #[serde(default)]
    pub states: Vec<StateAt>,
}

impl DeploymentRecord {
    /// A deployment seen for the first time at `now_ms`: warming.
    pub fn new(id: &str, now_ms: u64) -> Self {
        Self {
            id: id.to_string(),
            first_seen_ms: now_ms,
            state: WatchState::Warming,
            stable_at_ms: None,
            states: vec![StateAt {
                state: WatchState::Warming,
                at_ms: now_ms,
            }],
        }
    }

    /// Enters `state` at `at_ms`, noting the change in [`Self::states`].
    pub fn enter(&mut self, state: WatchState, at_ms: u64) {
        if self.states.is_empty() {
            self.states = self.history(None);
        }
        if self.state == state && !self.states.is_empty() {
            return;
        }
        self.state = state;
        if state == WatchState::Stable {
            self.stable_at_ms = Some(at_ms);
        }
        if self.states.len() >= MAX_STATES {
            self.states.remove(1);
        }
        self.states.push(StateAt { state, at_ms });
    }

    /// The states it entered, with their times. A record written before
    /// the states were kept (an upgrade) has them derived from what it has:
    /// warming when first seen, stable when it became stable, rolled back
    /// when its rollback was made, and its state now otherwise.
    pub fn history(&self, rollback: Option<&RollbackRecord>) -> Vec<StateAt> {
        if !self.states.is_empty() {
            return self.states.clone();
        }
        let mut out = vec![StateAt {
            state: WatchState::Warming,
            at_ms: self.first_seen_ms,
        }];
        if let Some(at_ms) = self.stable_at_ms {
            out.push(StateAt {
                state: WatchState::Stable,
                at_ms,
            });
        }
        let at_ms = match (self.state, rollback) {
            (WatchState::Warming, _) => return out,
            (WatchState::Stable, _) if self.stable_at_ms.is_some() => return out,
            (WatchState::RolledBack, Some(r)) => r.finished_at_ms.unwrap_or(r.intent_at_ms),
            // When it entered this state is not known: not before the last
            // one known.
            _ => out.last().map_or(self.first_seen_ms, |s| s.at_ms),
        };
        out.push(StateAt {
            state: self.state,
            at_ms,
        });
        out
    }
}

/// What a pipeline said of a deployment (`POST /v1/deployments`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeploymentMeta {
    pub id: String,
    pub commit: Option<String>,
    pub triggered_by: Option<String>,
    pub environment: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When it was registered, in Unix milliseconds.
    pub registered_at_ms: u64,
}

/// One deployment in the ledger: what the agent saw of it, what a
/// pipeline registered of it, and its rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub id: String,
    /// `None` while it is only registered, not seen yet.
    pub first_seen_ms: Option<u64>,
    pub state: Option<WatchState>,
    pub states: Vec<StateAt>,
    pub stable_at_ms: Option<u64>,
    pub commit: Option<String>,
    pub triggered_by: Option<String>,
    pub environment: Option<String>,
    pub annotations: BTreeMap<String, String>,
    pub registered_at_ms: Option<u64>,
    /// Its rollback: rule, reason, evidence, outcome, who made it.
    pub rollback: Option<RollbackRecord>,
}

impl LedgerEntry {
    /// Joins what the store keeps of one deployment; `None` when it keeps
    /// nothing but a rollback record (not a deployment of the ledger).
    pub fn join(
        dep: Option<DeploymentRecord>,
        meta: Option<DeploymentMeta>,
        rollback: Option<RollbackRecord>,
    ) -> Option<Self> {
        let id = dep
            .as_ref()
            .map(|d| d.id.clone())
            .or_else(|| meta.as_ref().map(|m| m.id.clone()))?;
        let states = dep
            .as_ref()
            .map(|d| d.history(rollback.as_ref()))
            .unwrap_or_default();
        let meta = meta.unwrap_or_default();
        Some(Self {
            id,
            first_seen_ms: dep.as_ref().map(|d| d.first_seen_ms),
            state: dep.as_ref().map(|d| d.state),
            states,
            stable_at_ms: dep.as_ref().and_then(|d| d.stable_at_ms),
            commit: meta.commit,
            triggered_by: meta.triggered_by,
            environment: meta.environment,
            annotations: meta.annotations,
            registered_at_ms: (meta.registered_at_ms > 0).then_some(meta.registered_at_ms),
            rollback,
        })
    }

    /// What a pipeline registered of it, if it did.
    pub fn meta(&self) -> Option<DeploymentMeta> {
        Some(DeploymentMeta {
            id: self.id.clone(),
            commit: self.commit.clone(),
            triggered_by: self.triggered_by.clone(),
            environment: self.environment.clone(),
            annotations: self.annotations.clone(),
            registered_at_ms: self.registered_at_ms?,
        })
    }

    /// When it entered the ledger: first seen, else registered. The ledger
    /// is ordered by it, newest first.
    pub fn at_ms(&self) -> u64 {
        self.first_seen_ms.or(self.registered_at_ms).unwrap_or(0)
    }
}

/// How much of the ledger the store keeps (`[agent] history_retention`
/// and `history_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Duration,
    pub max_count: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(90 * 86_400),
            max_count: 1000,
        }
    }
}

impl Retention {
    /// The deployments to forget, of `entries` (id, when it entered the
    /// ledger): those older than `max_age` and those beyond the newest
    /// `max_count` — never one of `keep` (the current deployment and the
    /// one to return to).
    pub fn to_prune(&self, entries: &[(String, u64)], keep: &[&str], now_ms: u64) -> Vec<String> {
        let oldest = now_ms.saturating_sub(self.max_age.as_millis() as u64);
        let mut sorted: Vec<&(String, u64)> = entries.iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        sorted
            .into_iter()
            .enumerate()
            .filter(|(n, (id, at))| {
                (*n >= self.max_count || *at < oldest) && !keep.contains(&id.as_str())
            })
            .map(|(_, (id, _))| id.clone())
            .collect()
    }
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
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Intent, Self::Succeeded, Self::Failed, Self::DryRun]
            .into_iter()
            .find(|r| r.as_str() == s)
    }

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

    fn at(state: WatchState, at_ms: u64) -> StateAt {
        StateAt { state, at_ms }
    }

    fn old(state: WatchState, stable_at_ms: Option<u64>) -> DeploymentRecord {
        DeploymentRecord {
            id: "v1".into(),
            first_seen_ms: 1_000,
            state,
            stable_at_ms,
            states: vec![],
        }
    }

    #[test]
    fn a_watch_notes_each_state_it_enters_once() {
        let mut d = DeploymentRecord::new("v2", 10);
        d.enter(WatchState::Warming, 11);
        d.enter(WatchState::Watching, 20);
        d.enter(WatchState::Unhealthy, 30);
        d.enter(WatchState::Stable, 40);
        assert_eq!(d.state, WatchState::Stable);
        assert_eq!(d.stable_at_ms, Some(40));
        assert_eq!(
            d.states,
            vec![
                at(WatchState::Warming, 10),
                at(WatchState::Watching, 20),
                at(WatchState::Unhealthy, 30),
                at(WatchState::Stable, 40),
            ]
        );
        assert_eq!(d.history(None), d.states);
    }

    #[test]
    fn the_states_of_a_record_written_before_they_were_kept_are_derived() {
        // As an older version wrote it: no `states` key.
        let json = r#"{"id":"v1","first_seen_ms":1000,"state":"stable","stable_at_ms":5000}"#;
        let d: DeploymentRecord = serde_json::from_str(json).unwrap();
        assert!(d.states.is_empty());
        assert_eq!(
            d.history(None),
            vec![at(WatchState::Warming, 1000), at(WatchState::Stable, 5000)]
        );
        let rollback = RollbackRecord {
            deployment: "v1".into(),
            return_to: None,
            rule: "health failing".into(),
            reason: "down".into(),
            evidence: vec![],
            target: "webhook".into(),
            status: RollbackStatus::Succeeded,
            intent_at_ms: 3000,
            finished_at_ms: Some(3500),
            detail: String::new(),
            returned_to: None,
            not_effective: false,
            by: None,
        };
        assert_eq!(
            old(WatchState::RolledBack, None).history(Some(&rollback)),
            vec![
                at(WatchState::Warming, 1000),
                at(WatchState::RolledBack, 3500)
            ]
        );
        assert_eq!(
            old(WatchState::Warming, None).history(None),
            vec![at(WatchState::Warming, 1000)]
        );
        // Entering a state keeps what was derived before it.
        let mut d = old(WatchState::Warming, None);
        d.enter(WatchState::Watching, 2000);
        assert_eq!(
            d.states,
            vec![
                at(WatchState::Warming, 1000),
                at(WatchState::Watching, 2000)
            ]
        );
    }

    #[test]
    fn retention_forgets_the_oldest_beyond_the_count_and_age_but_never_what_it_must_keep() {
        let day = 86_400_000;
        let now = 100 * day;
        let r = Retention {
            max_age: Duration::from_secs(30 * 86_400),
            max_count: 3,
        };
        let entries: Vec<(String, u64)> = [
            ("v1", 10 * day),
            ("v2", 75 * day),
            ("v3", 80 * day),
            ("v4", 90 * day),
            ("v5", 99 * day),
        ]
        .iter()
        .map(|(id, at)| (id.to_string(), *at))
        .collect();
        let mut gone = r.to_prune(&entries, &[], now);
        gone.sort();
        assert_eq!(gone, ["v1", "v2"]);
        // The one to return to is kept however old.
        let mut gone = r.to_prune(&entries, &["v1"], now);
        gone.sort();
        assert_eq!(gone, ["v2"]);
        let r = Retention {
            max_age: Duration::from_secs(60 * 86_400),
            max_count: 10,
        };
        assert_eq!(r.to_prune(&entries, &[], now), ["v1"]);
    }

    #[test]
    fn a_ledger_entry_joins_the_record_the_metadata_and_the_rollback() {
        let meta = DeploymentMeta {
            id: "v3".into(),
            commit: Some("abc123".into()),
            triggered_by: Some("ci".into()),
            environment: None,
            annotations: [("pr".to_string(), "42".to_string())].into(),
            registered_at_ms: 500,
        };
        let only_meta = LedgerEntry::join(None, Some(meta.clone()), None).unwrap();
        assert_eq!(only_meta.state, None);
        assert_eq!(only_meta.at_ms(), 500);
        assert_eq!(only_meta.meta(), Some(meta.clone()));
        let seen =
            LedgerEntry::join(Some(DeploymentRecord::new("v3", 700)), Some(meta), None).unwrap();
        assert_eq!(seen.at_ms(), 700);
        assert_eq!(seen.commit.as_deref(), Some("abc123"));
        assert_eq!(seen.states, vec![at(WatchState::Warming, 700)]);
        assert!(LedgerEntry::join(None, None, None).is_none());
    }
}
