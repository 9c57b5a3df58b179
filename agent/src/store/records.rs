//! The records both stores keep, as the watch and `/status` see them: a
//! deployment and its state, a rollback and its outcome, a claim's answer.

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
