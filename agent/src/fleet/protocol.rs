//! What the replicas of a service exchange through the coordination
//! store: each one's heartbeat with its votes, the lease of a deployment
//! with its fencing token, and the tally of a rule's votes.

use serde::{Deserialize, Serialize};

/// A rule's verdict on one replica, as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    pub rule: String,
    /// `holds`, `clear` or `inconclusive` (the rules' `Verdict`), or `held`
    /// while a dependency fails (see `watch::RuleStatus`).
    pub verdict: String,
    /// One line: the first piece of evidence when it holds, else empty.
    #[serde(default)]
    pub summary: String,
}

/// What one replica publishes on every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub replica: String,
    pub deployment: String,
    /// When it was published, in Unix milliseconds.
    pub at_ms: u64,
    /// Its rollback rules' verdicts; a rule absent is not armed there.
    pub votes: Vec<Vote>,
}

/// One replica's samples of the recent minutes, as published beside its
/// heartbeat while it runs the deployment to return to (the live baseline,
/// see `backstop_judge::live`), with how old they are by the store's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerSamples {
    pub replica: String,
    /// How long ago they were published, when read.
    pub age: std::time::Duration,
    pub summary: backstop_judge::live::LiveSummary,
}

/// The right to call the platform for one deployment. `token` grows with
/// every lease granted for the service, so a write carrying an older token
/// than the store's newest is refused (fencing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub deployment: String,
    pub holder: String,
    pub token: i64,
    pub expires_at_ms: u64,
}

/// How many live replicas agree that a rule holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub agree: usize,
    pub live: usize,
}

impl Tally {
    /// Whether `agree / live ≥ quorum`, with no replica live meaning no.
    pub fn reaches(&self, quorum: f64) -> bool {
        self.live > 0 && self.agree as f64 >= quorum * self.live as f64 - 1e-9
    }
}

/// Counts, among the live reports of one deployment, those whose verdict on
/// `rule` is `holds`. An inconclusive or missing verdict does not agree.
pub fn tally(reports: &[Heartbeat], rule: &str) -> Tally {
    let agree = reports
        .iter()
        .filter(|r| {
            r.votes
                .iter()
                .any(|v| v.rule == rule && v.verdict == "holds")
        })
        .count();
    Tally {
        agree,
        live: reports.len(),
    }
}
