//! Several replicas, one decision. Each replica's agent publishes its own
//! verdict on every rollback rule, with a heartbeat that expires; a fleet
//! rollback needs at least `quorum` of the live replicas on the same
//! deployment to agree, and exactly one agent — the holder of a lease with a
//! fencing token — calls the platform. The coordination store is PostgreSQL
//! (the `[store]`) or Redis (`[fleet] redis`); both back ends keep the same
//! records and mean the same by every method.

pub mod config;
pub mod link;
pub mod postgres;
pub mod redis;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::RollbackRecord;

pub use self::config::{FleetConfig, LossPolicy};

/// A rule's verdict on one replica, as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    pub rule: String,
    /// `holds`, `clear` or `inconclusive` (see `watch::Verdict::as_str`).
    pub verdict: String,
    /// One line: the first piece of evidence when it holds, else empty.
    #[serde(default)]
    pub summary: String,
}

/// What one replica publishes on every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub replica: String,
    pub deployment: String,
    /// When it was published, in Unix milliseconds.
    pub at_ms: u64,
    /// Its rollback rules' verdicts; a rule absent is not armed there.
    pub votes: Vec<Vote>,
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
pub fn tally(reports: &[Report], rule: &str) -> Tally {
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

/// The coordination store. Every method means the same on both back ends;
/// an error is an error, never read as "nobody there" or "no lease".
pub enum Coordinator {
    Postgres(postgres::PgFleet),
    Redis(redis::RedisFleet),
}

impl Coordinator {
    /// The coordination store `[fleet]` asks for: Redis with `redis`, else
    /// the PostgreSQL `[store]`, on the store's own pool. Without either
    /// there is nothing to coordinate through (the configuration refuses
    /// it before this).
    pub async fn connect(
        config: &FleetConfig,
        store: &crate::store::Store,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        match (&config.redis, store) {
            (Some(url), _) => match redis::RedisFleet::connect(url, timeout).await {
                Ok(c) => Ok(Self::Redis(c)),
                // Down at start is no reason to stop probing: the agent
                // starts, holds and alerts, and every step tries again.
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "the fleet's coordination store does not answer at start: no fleet rollback until it does");
                    redis::RedisFleet::unconnected(url, timeout).map(Self::Redis)
                }
            },
            (None, crate::store::Store::Postgres(pg)) => {
                Ok(Self::Postgres(postgres::PgFleet::new(pg)))
            }
            (None, crate::store::Store::Embedded(_)) => anyhow::bail!(
                "[fleet] needs a coordination store: set [fleet] redis or a PostgreSQL [store]"
            ),
        }
    }

    /// Where it is, for the log: a URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Self::Postgres(c) => c.describe(),
            Self::Redis(c) => c.describe(),
        }
    }

    /// Publishes this replica's report; it counts as live until
    /// `report.at_ms + expiry` (by the store's clock where it has one).
    pub async fn publish(
        &self,
        service: &str,
        report: &Report,
        expiry: Duration,
    ) -> anyhow::Result<()> {
        match self {
            Self::Postgres(c) => c.publish(service, report, expiry).await,
            Self::Redis(c) => c.publish(service, report, expiry).await,
        }
    }

    /// The reports of the live replicas on `deployment`, one per replica.
    pub async fn live(&self, service: &str, deployment: &str) -> anyhow::Result<Vec<Report>> {
        match self {
            Self::Postgres(c) => c.live(service, deployment).await,
            Self::Redis(c) => c.live(service, deployment).await,
        }
    }

    /// Removes this replica's report (a clean shutdown), so the others stop
    /// counting it at once instead of after `expiry`.
    pub async fn leave(&self, service: &str, replica: &str) -> anyhow::Result<()> {
        match self {
            Self::Postgres(c) => c.leave(service, replica).await,
            Self::Redis(c) => c.leave(service, replica).await,
        }
    }

    /// Takes the lease to roll `deployment` back, with a new fencing token
    /// greater than every earlier one of the service; `None` while another
    /// holder's lease has not expired.
    pub async fn acquire(
        &self,
        service: &str,
        deployment: &str,
        holder: &str,
        ttl: Duration,
    ) -> anyhow::Result<Option<Lease>> {
        match self {
            Self::Postgres(c) => c.acquire(service, deployment, holder, ttl).await,
            Self::Redis(c) => c.acquire(service, deployment, holder, ttl).await,
        }
    }

    /// Extends a lease still held with its token; `false` when it was lost.
    pub async fn renew(
        &self,
        service: &str,
        lease: &mut Lease,
        ttl: Duration,
    ) -> anyhow::Result<bool> {
        match self {
            Self::Postgres(c) => c.renew(service, lease, ttl).await,
            Self::Redis(c) => c.renew(service, lease, ttl).await,
        }
    }

    /// Gives the lease up, only if it is still held with this token
    /// (compare-and-delete).
    pub async fn release(&self, service: &str, lease: &Lease) -> anyhow::Result<()> {
        match self {
            Self::Postgres(c) => c.release(service, lease).await,
            Self::Redis(c) => c.release(service, lease).await,
        }
    }

    /// Writes the fleet's rollback record of `rec.deployment`, fenced: only
    /// while `lease` (its exact token) is still the deployment's lease, and
    /// never over a record written with a newer token. `false` when the
    /// write was refused because the lease was lost; a record of another
    /// deployment than the lease's is an error.
    pub async fn record(
        &self,
        service: &str,
        lease: &Lease,
        rec: &RollbackRecord,
    ) -> anyhow::Result<bool> {
        match self {
            Self::Postgres(c) => c.record(service, lease, rec).await,
            Self::Redis(c) => c.record(service, lease, rec).await,
        }
    }

    /// The fleet's rollback record of a deployment, whoever wrote it.
    pub async fn outcome(
        &self,
        service: &str,
        deployment: &str,
    ) -> anyhow::Result<Option<RollbackRecord>> {
        match self {
            Self::Postgres(c) => c.outcome(service, deployment).await,
            Self::Redis(c) => c.outcome(service, deployment).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(replica: &str, holds: bool) -> Report {
        Report {
            replica: replica.into(),
            deployment: "d2".into(),
            at_ms: 0,
            votes: vec![Vote {
                rule: "errors".into(),
                verdict: if holds { "holds" } else { "clear" }.into(),
                summary: String::new(),
            }],
        }
    }

    #[test]
    fn one_sick_replica_of_three_does_not_reach_half() {
        let r = [report("a", true), report("b", false), report("c", false)];
        let t = tally(&r, "errors");
        assert_eq!(t, Tally { agree: 1, live: 3 });
        assert!(!t.reaches(0.5));
        assert!(t.reaches(0.3));
    }

    #[test]
    fn two_of_three_reach_half_and_an_exact_share_counts() {
        let r = [report("a", true), report("b", true), report("c", false)];
        assert!(tally(&r, "errors").reaches(0.5));
        assert!(tally(&r[..2], "errors").reaches(1.0));
        assert!(Tally { agree: 1, live: 2 }.reaches(0.5));
        assert!(!tally(&r, "errors").reaches(1.0));
    }

    #[test]
    fn nobody_live_or_another_rule_never_reaches() {
        assert!(!tally(&[], "errors").reaches(0.01));
        let r = [report("a", true)];
        assert_eq!(tally(&r, "latency").agree, 0);
    }
}
