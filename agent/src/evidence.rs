//! Why the agent acts: the same account of a rule that fired (the rules'
//! [`Evidence`]) goes to `/status`, the log, every notification and every
//! rollback call; here are the calls and events that carry it.

use backstop_judge::evidence::Evidence;
use serde::{Deserialize, Serialize};

/// What a rollback target is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub service: String,
    /// The bad deployment being rolled back.
    pub deployment: String,
    /// The last stable deployment, when the agent knows it.
    pub return_to: Option<String>,
    /// The rule that decided (or `manual`).
    pub rule: String,
    /// One line: why.
    pub reason: String,
    pub evidence: Vec<Evidence>,
    /// The fleet lease's fencing token, when a fleet decided: it grows
    /// with every lease, so a platform that keeps the highest it has seen
    /// can refuse a late call from an earlier holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<i64>,
}

impl RollbackRequest {
    /// The same for every call about this deployment of this service, by
    /// any replica's agent, before or after a restart: `<service>:<deployment>`,
    /// percent-encoded outside `A-Z a-z 0-9 . _ ~ -`, so that it fits an
    /// HTTP header and a Kubernetes annotation. A receiver that treats
    /// calls with the same key as one makes a repeated call harmless.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", encode(&self.service), encode(&self.deployment))
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a target finds when asked, after a restart, whether a rollback
/// call that was interrupted by the agent's stop took effect.
#[derive(Debug, Clone, PartialEq)]
pub enum Reconciled {
    /// The platform shows the rollback, or something newer than the bad
    /// deployment: calling again would roll back twice.
    Done(RollbackDone),
    /// The platform shows the bad deployment untouched: the call never took
    /// effect, so it is made now. The reason, one line.
    NotDone(String),
    /// The target cannot tell; the reason, one line.
    Unknown(String),
}

/// What a rollback target reports after a successful call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackDone {
    /// The deployment (or revision) the platform returns to, when it says.
    pub returned_to: Option<String>,
    /// A short note from the platform (a new deployment id, a revision).
    pub detail: String,
}

/// What a notifier is told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub service: String,
    pub deployment: String,
    pub rule: Option<String>,
    /// One line for a title or a Slack header.
    pub summary: String,
    pub evidence: Vec<Evidence>,
    /// The last stable deployment, when known.
    pub return_to: Option<String>,
}

/// The kinds of things people are told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A rule with `action = "alert"` fired, or a rollback rule after stable.
    Alert,
    /// A rollback rule fired but the agent held back (paused, no baseline,
    /// cooldown, cap, coordination lost); the summary says why.
    RollbackHeld,
    /// The rollback call was accepted (or recorded, in dry run).
    RollbackPerformed,
    /// The rollback call failed after its retries.
    RollbackFailed,
    /// The platform accepted the call but the deployment did not change.
    RollbackNotEffective,
    /// What an earlier event reported is over: its rule no longer holds, or
    /// the deployment it was about was rolled back, replaced, or became
    /// stable (with the rule no longer holding).
    Resolved,
    /// The watch ended while a rollback rule held and a guard rail kept the
    /// rollback back: the deployment is `unhealthy`, not the baseline.
    Unhealthy,
    /// Not a name in `events`: an incident the agent may have opened for
    /// this deployment and rule before it restarted (it keeps no list of
    /// them across a restart) is closed. Told only to notifiers that keep
    /// incidents open (PagerDuty), for which closing one never opened is
    /// harmless.
    Closed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::RollbackHeld => "rollback_held",
            Self::RollbackPerformed => "rollback",
            Self::RollbackFailed => "rollback_failed",
            Self::RollbackNotEffective => "rollback_not_effective",
            Self::Resolved => "resolved",
            Self::Unhealthy => "unhealthy",
            Self::Closed => "closed",
        }
    }

    /// Whether PagerDuty opens an incident for it (an Events API
    /// `trigger`), which a later `resolved` (or `closed`) of the same
    /// service, deployment and rule closes.
    pub fn opens_incident(self) -> bool {
        matches!(
            self,
            Self::Alert
                | Self::RollbackHeld
                | Self::RollbackFailed
                | Self::RollbackNotEffective
                | Self::Unhealthy
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idempotency_key_names_service_and_deployment_in_header_safe_characters() {
        let req = |service: &str, deployment: &str| RollbackRequest {
            service: service.into(),
            deployment: deployment.into(),
            return_to: None,
            rule: "r".into(),
            reason: "x".into(),
            evidence: vec![],
            fencing_token: None,
        };
        assert_eq!(req("web", "v2.1_a-b~c").idempotency_key(), "web:v2.1_a-b~c");
        assert_eq!(
            req("api gw", "sha/ü:1").idempotency_key(),
            "api%20gw:sha%2F%C3%BC%3A1"
        );
        // Different pairs that would read alike unencoded stay apart.
        assert_ne!(
            req("a:b", "c").idempotency_key(),
            req("a", "b:c").idempotency_key()
        );
    }
}
