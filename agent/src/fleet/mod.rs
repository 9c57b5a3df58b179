//! Several replicas, one decision. Each replica's agent publishes its own
//! verdict on every rollback rule, with a heartbeat that expires; a fleet
//! rollback needs at least `quorum` of the live replicas on the same
//! deployment to agree, and exactly one agent — the holder of a lease with a
//! fencing token — calls the platform. The coordination store is PostgreSQL
//! (the `[store]`) or Redis (`[fleet] redis`); both back ends keep the same
//! records and mean the same by every method of [`Coordination`], which an
//! in-memory store (`memory`) implements too, for tests.

pub mod config;
mod coordination;
pub mod link;
pub mod live;
pub mod memory;
pub mod postgres;
mod protocol;
pub mod redis;

pub use coordination::{Coordination, Pending};

use std::time::Duration;

use crate::store::RollbackRecord;

pub use self::config::{FleetConfig, LossPolicy};
pub use self::protocol::{tally, Heartbeat, Lease, PeerSamples, Tally, Vote};

/// The coordination store `[fleet]` configures: PostgreSQL or Redis. Every
/// operation is the [`Coordination`] trait's, which this implements by
/// handing it to the back end.
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
        self.back_end().describe()
    }

    fn back_end(&self) -> &dyn Coordination {
        match self {
            Self::Postgres(c) => c,
            Self::Redis(c) => c,
        }
    }
}

impl Coordination for Coordinator {
    fn describe(&self) -> String {
        self.back_end().describe()
    }

    fn keeps_records_in_store(&self) -> bool {
        self.back_end().keeps_records_in_store()
    }

    fn publish<'a>(
        &'a self,
        service: &'a str,
        report: &'a Heartbeat,
        expiry: Duration,
    ) -> Pending<'a, ()> {
        self.back_end().publish(service, report, expiry)
    }

    fn live<'a>(&'a self, service: &'a str, deployment: &'a str) -> Pending<'a, Vec<Heartbeat>> {
        self.back_end().live(service, deployment)
    }

    fn leave<'a>(&'a self, service: &'a str, replica: &'a str) -> Pending<'a, ()> {
        self.back_end().leave(service, replica)
    }

    fn publish_samples<'a>(
        &'a self,
        service: &'a str,
        replica: &'a str,
        summary: &'a backstop_judge::live::LiveSummary,
        expiry: Duration,
    ) -> Pending<'a, ()> {
        self.back_end()
            .publish_samples(service, replica, summary, expiry)
    }

    fn live_samples<'a>(
        &'a self,
        service: &'a str,
        deployment: &'a str,
        limit: usize,
    ) -> Pending<'a, Vec<PeerSamples>> {
        self.back_end().live_samples(service, deployment, limit)
    }

    fn acquire<'a>(
        &'a self,
        service: &'a str,
        deployment: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> Pending<'a, Option<Lease>> {
        self.back_end().acquire(service, deployment, holder, ttl)
    }

    fn renew<'a>(
        &'a self,
        service: &'a str,
        lease: &'a mut Lease,
        ttl: Duration,
    ) -> Pending<'a, bool> {
        self.back_end().renew(service, lease, ttl)
    }

    fn release<'a>(&'a self, service: &'a str, lease: &'a Lease) -> Pending<'a, ()> {
        self.back_end().release(service, lease)
    }

    fn record<'a>(
        &'a self,
        service: &'a str,
        lease: &'a Lease,
        rec: &'a RollbackRecord,
    ) -> Pending<'a, bool> {
        self.back_end().record(service, lease, rec)
    }

    fn outcome<'a>(
        &'a self,
        service: &'a str,
        deployment: &'a str,
    ) -> Pending<'a, Option<RollbackRecord>> {
        self.back_end().outcome(service, deployment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(replica: &str, holds: bool) -> Heartbeat {
        Heartbeat {
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
