//! A fleet's rollback, off the watch's path: take the deployment's lease,
//! read the fleet's record again (settling an intent left by a holder whose
//! lease expired), write the intent fenced, call the platform while renewing
//! the lease, write the outcome fenced, release the lease. The watch decides
//! whether to try (quorum, guard rails) and applies what this reports
//! ([`FleetEnded`]); a coordination store that falls silent in the middle
//! delays the report, never the watch.

use std::sync::Arc;
use std::time::Duration;

use super::job::{Done, FleetEnded, ManualReply};
use super::types::{Clock, ManualOutcome, Rollbacker};
use crate::evidence::{Reconciled, RollbackRequest};
use crate::fleet::{Coordination, Lease};
use crate::store::{RollbackRecord, RollbackStatus};

/// What the watch hands over for one try.
pub(super) struct FleetCall {
    pub coord: Arc<dyn Coordination>,
    pub service: String,
    pub replica: String,
    pub lease_ttl: Duration,
    pub dep: String,
    pub target: Arc<dyn Rollbacker>,
    /// The record to write as the intent (or as the dry run).
    pub rec: RollbackRecord,
    pub clock: Clock,
    /// A rollback asked for by hand, answered once the lease is settled.
    pub reply: Option<ManualReply>,
}

/// One try: see the module's documentation. The lease is released however
/// the try ends once it was taken.
pub(super) async fn run(call: FleetCall, intent: impl Fn(RollbackRecord) + Send) -> Done {
    let FleetCall {
        coord,
        service,
        replica,
        lease_ttl,
        dep,
        target,
        rec,
        clock,
        mut reply,
    } = call;
    let mut answer = |outcome: anyhow::Result<ManualOutcome>| {
        if let Some(reply) = reply.take() {
            let _ = reply.send(outcome);
        }
    };
    let lease = match coord.acquire(&service, &dep, &replica, lease_ttl).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            answer(Ok(ManualOutcome::Refused(format!(
                "another agent holds the fleet's lease for {dep} and is rolling it back"
            ))));
            return Done::Fleet(FleetEnded::Taken);
        }
        Err(e) => {
            let e = format!("{e:#}");
            answer(Ok(ManualOutcome::Refused(format!(
                "the fleet's coordination store is failing: {e}"
            ))));
            return Done::Fleet(FleetEnded::StoreFailed(e));
        }
    };
    tracing::info!(deployment = %dep, rule = %rec.rule, token = lease.token, "took the fleet lease");
    answer(Ok(ManualOutcome::Started));
    let ended = holding(
        &*coord, &service, &lease, lease_ttl, &dep, target, rec, clock, intent,
    )
    .await;
    if let Err(e) = coord.release(&service, &lease).await {
        tracing::warn!(error = %format!("{e:#}"), "cannot release the fleet lease; it expires on its own");
    }
    Done::Fleet(ended)
}

/// Holding the lease: records the intent (fenced), calls the platform
/// while renewing the lease, and records the outcome (fenced).
#[allow(clippy::too_many_arguments)]
async fn holding(
    coord: &dyn Coordination,
    service: &str,
    lease: &Lease,
    ttl: Duration,
    dep: &str,
    target: Arc<dyn Rollbacker>,
    mut rec: RollbackRecord,
    clock: Clock,
    intent: impl Fn(RollbackRecord),
) -> FleetEnded {
    let request = |rec: &RollbackRecord| RollbackRequest {
        service: service.to_string(),
        deployment: rec.deployment.clone(),
        return_to: rec.return_to.clone(),
        rule: rec.rule.clone(),
        reason: rec.reason.clone(),
        evidence: rec.evidence.clone(),
        fencing_token: Some(lease.token),
    };
    let dry_run = rec.status == RollbackStatus::DryRun;
    // Again, now that no other agent can write: a holder whose lease
    // expired may have finished meanwhile, or stopped mid-call.
    match coord.outcome(service, dep).await {
        Ok(Some(found)) if found.status != RollbackStatus::Intent => {
            return FleetEnded::Found(found);
        }
        Ok(Some(mut prev)) => {
            tracing::warn!(deployment = %dep, by = ?prev.by, "the earlier holder of the fleet lease stopped during the call; asking the platform whether it took effect");
            if !dry_run {
                match target.reconcile(&request(&prev)).await {
                    Reconciled::Done(done) => {
                        prev.status = RollbackStatus::Succeeded;
                        prev.detail = format!(
                            "the call made by {} before it stopped took effect: {}",
                            prev.by.as_deref().unwrap_or("the earlier lease holder"),
                            done.detail
                        );
                        prev.returned_to = done.returned_to.or(prev.return_to.clone());
                        prev.finished_at_ms = Some(clock.now_ms());
                        match coord.record(service, lease, &prev).await {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::warn!(deployment = %dep, "the fleet lease was taken over meanwhile; not recording");
                                return FleetEnded::Overtaken;
                            }
                            Err(e) => return FleetEnded::StoreFailed(format!("{e:#}")),
                        }
                        return FleetEnded::FoundDone {
                            rec: prev,
                            target: target.name(),
                        };
                    }
                    // The call is completed. A target that cannot be asked
                    // gets it again (ARCHITECTURE.md, "Fleet"), with the
                    // same idempotency key and a newer token.
                    Reconciled::NotDone(why) | Reconciled::Unknown(why) => {
                        tracing::warn!(deployment = %dep, found = %why, "completing the interrupted fleet rollback");
                    }
                }
            }
        }
        Ok(None) => {}
        Err(e) => return FleetEnded::StoreFailed(format!("{e:#}")),
    }
    if dry_run {
        rec.detail = "dry run: no call made".into();
        rec.finished_at_ms = Some(rec.intent_at_ms);
    }
    match coord.record(service, lease, &rec).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(deployment = %dep, "the fleet lease was taken over before the intent was written; not calling");
            return FleetEnded::Overtaken;
        }
        Err(e) => return FleetEnded::StoreFailed(format!("{e:#}")),
    }
    if dry_run {
        return FleetEnded::DryRun(rec);
    }
    tracing::warn!(deployment = %dep, rule = %rec.rule, target = target.name(), token = lease.token, return_to = ?rec.return_to, reason = %rec.reason, "rolling the fleet back");
    intent(rec.clone());
    let req = request(&rec);
    let renewing = async {
        let mut held = lease.clone();
        // Still live while calling: the link's heartbeat goes on.
        loop {
            tokio::time::sleep(ttl / 3).await;
            match coord.renew(service, &mut held, ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(deployment = %held.deployment, "the fleet lease was lost during the call; its outcome is recorded only if no other agent took over");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot renew the fleet lease")
                }
            }
        }
        std::future::pending::<()>().await
    };
    let result = tokio::select! {
        r = target.rollback(&req) => r,
        () = renewing => unreachable!("the renewal never ends"),
    };
    rec.finished_at_ms = Some(clock.now_ms());
    match &result {
        Ok(done) => {
            rec.status = RollbackStatus::Succeeded;
            rec.detail = done.detail.clone();
            rec.returned_to = done.returned_to.clone().or(rec.return_to.clone());
        }
        Err(err) => {
            rec.status = RollbackStatus::Failed;
            rec.detail = err.clone();
        }
    }
    match coord.record(service, lease, &rec).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::error!(deployment = %dep, status = rec.status.as_str(), "the fleet lease was taken over during the call; this outcome is not recorded")
        }
        Err(e) => {
            tracing::error!(deployment = %dep, error = %format!("{e:#}"), "cannot record the fleet rollback's outcome; the next holder asks the platform")
        }
    }
    FleetEnded::Called {
        rec,
        target: target.name(),
        result,
    }
}
