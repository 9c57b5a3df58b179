//! What the watch and the link ask of a coordination store, whichever it
//! is: PostgreSQL (`postgres`), Redis (`redis`), or the in-memory one of
//! the tests (`memory`). Every method means the same on each; an error is
//! an error, never read as "nobody there" or "no lease".

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::protocol::{Heartbeat, Lease, PeerSamples};
use crate::store::RollbackRecord;
use backstop_judge::live::LiveSummary;

/// What a [`Coordination`] method returns: a future that may borrow its
/// arguments, so the trait can be used as `dyn Coordination`.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send + 'a>>;

/// The coordination store of a fleet.
pub trait Coordination: Send + Sync {
    /// Where it is, for the log and `/status`: a URL without its password.
    fn describe(&self) -> String;

    /// Whether the fleet's rollback record is a row of the agent's own
    /// `[store]` (PostgreSQL); otherwise the watch keeps a copy of it in
    /// its store.
    fn keeps_records_in_store(&self) -> bool;

    /// Publishes this replica's heartbeat; it counts as live until
    /// `report.at_ms + expiry` (by the store's clock where it has one).
    fn publish<'a>(
        &'a self,
        service: &'a str,
        report: &'a Heartbeat,
        expiry: Duration,
    ) -> Pending<'a, ()>;

    /// The heartbeats of the live replicas on `deployment`, one per
    /// replica, in the order of their names.
    fn live<'a>(&'a self, service: &'a str, deployment: &'a str) -> Pending<'a, Vec<Heartbeat>>;

    /// Publishes this replica's samples of the recent minutes (of the
    /// deployment `summary.deployment`), kept until `expiry` unless
    /// replaced; beside the heartbeat, so reading the votes stays as light
    /// as it was.
    fn publish_samples<'a>(
        &'a self,
        service: &'a str,
        replica: &'a str,
        summary: &'a LiveSummary,
        expiry: Duration,
    ) -> Pending<'a, ()>;

    /// The samples published and not expired of the replicas on
    /// `deployment`, at most `limit` of them (the freshest), in the order
    /// of their names.
    fn live_samples<'a>(
        &'a self,
        service: &'a str,
        deployment: &'a str,
        limit: usize,
    ) -> Pending<'a, Vec<PeerSamples>>;

    /// Removes this replica's heartbeat (a clean shutdown), so the others
    /// stop counting it at once instead of after `expiry`.
    fn leave<'a>(&'a self, service: &'a str, replica: &'a str) -> Pending<'a, ()>;

    /// Takes the lease to roll `deployment` back, with a new fencing token
    /// greater than every earlier one of the service; `None` while another
    /// holder's lease has not expired.
    fn acquire<'a>(
        &'a self,
        service: &'a str,
        deployment: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> Pending<'a, Option<Lease>>;

    /// Extends a lease still held with its token; `false` when it was lost.
    fn renew<'a>(
        &'a self,
        service: &'a str,
        lease: &'a mut Lease,
        ttl: Duration,
    ) -> Pending<'a, bool>;

    /// Gives the lease up, only if it is still held with this token
    /// (compare-and-delete).
    fn release<'a>(&'a self, service: &'a str, lease: &'a Lease) -> Pending<'a, ()>;

    /// Writes the fleet's rollback record of `rec.deployment`, fenced: only
    /// while `lease` (its exact token) is still the deployment's lease, and
    /// never over a record written with a newer token. `false` when the
    /// write was refused because the lease was lost; a record of another
    /// deployment than the lease's is an error.
    fn record<'a>(
        &'a self,
        service: &'a str,
        lease: &'a Lease,
        rec: &'a RollbackRecord,
    ) -> Pending<'a, bool>;

    /// The fleet's rollback record of a deployment, whoever wrote it.
    fn outcome<'a>(
        &'a self,
        service: &'a str,
        deployment: &'a str,
    ) -> Pending<'a, Option<RollbackRecord>>;
}

/// Implements [`Coordination`] for a back end whose inherent `async fn`s
/// have the trait's names and arguments.
macro_rules! by_inherent_methods {
    ($ty:ty, keeps_records_in_store = $keeps:expr) => {
        impl Coordination for $ty {
            fn describe(&self) -> String {
                <$ty>::describe(self)
            }

            fn keeps_records_in_store(&self) -> bool {
                $keeps
            }

            fn publish<'a>(
                &'a self,
                service: &'a str,
                report: &'a Heartbeat,
                expiry: Duration,
            ) -> Pending<'a, ()> {
                Box::pin(<$ty>::publish(self, service, report, expiry))
            }

            fn live<'a>(
                &'a self,
                service: &'a str,
                deployment: &'a str,
            ) -> Pending<'a, Vec<Heartbeat>> {
                Box::pin(<$ty>::live(self, service, deployment))
            }

            fn leave<'a>(&'a self, service: &'a str, replica: &'a str) -> Pending<'a, ()> {
                Box::pin(<$ty>::leave(self, service, replica))
            }

            fn publish_samples<'a>(
                &'a self,
                service: &'a str,
                replica: &'a str,
                summary: &'a LiveSummary,
                expiry: Duration,
            ) -> Pending<'a, ()> {
                Box::pin(<$ty>::publish_samples(
                    self, service, replica, summary, expiry,
                ))
            }

            fn live_samples<'a>(
                &'a self,
                service: &'a str,
                deployment: &'a str,
                limit: usize,
            ) -> Pending<'a, Vec<PeerSamples>> {
                Box::pin(<$ty>::live_samples(self, service, deployment, limit))
            }

            fn acquire<'a>(
                &'a self,
                service: &'a str,
                deployment: &'a str,
                holder: &'a str,
                ttl: Duration,
            ) -> Pending<'a, Option<Lease>> {
                Box::pin(<$ty>::acquire(self, service, deployment, holder, ttl))
            }

            fn renew<'a>(
                &'a self,
                service: &'a str,
                lease: &'a mut Lease,
                ttl: Duration,
            ) -> Pending<'a, bool> {
                Box::pin(<$ty>::renew(self, service, lease, ttl))
            }

            fn release<'a>(&'a self, service: &'a str, lease: &'a Lease) -> Pending<'a, ()> {
                Box::pin(<$ty>::release(self, service, lease))
            }

            fn record<'a>(
                &'a self,
                service: &'a str,
                lease: &'a Lease,
                rec: &'a RollbackRecord,
            ) -> Pending<'a, bool> {
                Box::pin(<$ty>::record(self, service, lease, rec))
            }

            fn outcome<'a>(
                &'a self,
                service: &'a str,
                deployment: &'a str,
            ) -> Pending<'a, Option<RollbackRecord>> {
                Box::pin(<$ty>::outcome(self, service, deployment))
            }
        }
    };
}

// PostgreSQL keeps the fleet's record in the store's `backstop_rollbacks`.
by_inherent_methods!(super::postgres::PgFleet, keeps_records_in_store = true);
by_inherent_methods!(super::redis::RedisFleet, keeps_records_in_store = false);
by_inherent_methods!(super::memory::MemoryFleet, keeps_records_in_store = false);
