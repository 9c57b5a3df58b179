//! What the watch asks of the store and the platform without waiting for
//! it: reads of what the store knows, a rollback's claim and call, and the
//! settling of a call interrupted by a restart. Each runs as a task of its
//! own and hands its result back as a [`Done`], which the watch applies at
//! its next step; the watch loop is woken as soon as one is ready. A store
//! or a platform that is slow or silent delays these results, never the
//! watch's own pace.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use super::types::WatchView;
use super::types::{ManualOutcome, Rollbacker};
use crate::evidence::{Reconciled, RollbackDone, RollbackRequest};
use crate::store::{Claim, DeploymentRecord, RollbackRecord, Store};

/// A result handed back to the watch.
pub(super) enum Done {
    /// What the store knows of a deployment just seen: its record and its
    /// rollback's.
    Seen {
        id: String,
        read: anyhow::Result<(Option<DeploymentRecord>, Option<RollbackRecord>)>,
    },
    /// The rollbacks recorded, for the cooldown and the hourly cap, as read
    /// from `asked` on.
    Recent {
        asked: Instant,
        read: anyhow::Result<Vec<RollbackRecord>>,
    },
    /// A rollback of `dep` recorded since (before a restart, or by another
    /// agent sharing the store).
    Recorded {
        dep: String,
        read: anyhow::Result<Option<RollbackRecord>>,
    },
    /// A rollback's claim and call ended.
    Rollback(Ended),
    /// A fleet's rollback ended (see `fleet_call`).
    Fleet(FleetEnded),
    /// A fleet's rollback wrote its intent and is calling: a report on the
    /// way, not the end of a job.
    Intent(RollbackRecord),
}

/// How a rollback's claim and call ended.
pub(super) enum Ended {
    /// The store did not take the claim: nothing was called. Whether the
    /// claim was written is not known; the next try tells.
    ClaimFailed { rec: RollbackRecord, error: String },
    /// A rollback of the deployment was recorded already: never called.
    AlreadyRecorded(RollbackRecord),
    /// Dry run: the claim is the record, and no call is made.
    DryRun(RollbackRecord),
    /// The platform was called, once; its answer.
    Called {
        rec: RollbackRecord,
        target: &'static str,
        result: Result<RollbackDone, String>,
    },
    /// An intent left by a call the agent's stop interrupted: what the
    /// platform shows, and the call made when it shows the call not done.
    Resumed {
        rec: RollbackRecord,
        target: Option<&'static str>,
        found: Reconciled,
        call: Option<Result<RollbackDone, String>>,
    },
}

/// How a fleet's try ended.
pub(super) enum FleetEnded {
    /// The coordination store failed: nothing more was done.
    StoreFailed(String),
    /// Another agent holds the lease (it is calling).
    Taken,
    /// The fleet's record of the deployment is finished already: shown.
    Found(RollbackRecord),
    /// The call of a holder that stopped took effect, as the platform
    /// shows: recorded as done (fenced), no call.
    FoundDone {
        rec: RollbackRecord,
        target: &'static str,
    },
    /// The lease was taken over before the intent was written: no call.
    Overtaken,
    /// Dry run: the intent is the record, no call.
    DryRun(RollbackRecord),
    /// The platform was called once; its answer, and whether the outcome
    /// was recorded (the lease still the deployment's newest).
    Called {
        rec: RollbackRecord,
        target: &'static str,
        result: Result<RollbackDone, String>,
    },
}

/// The tasks in flight and the way their results come back.
pub(super) struct Jobs {
    tx: mpsc::UnboundedSender<Done>,
    rx: mpsc::UnboundedReceiver<Done>,
    wake: Arc<Notify>,
    in_flight: usize,
}

impl Jobs {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx,
            wake: Arc::new(Notify::new()),
            in_flight: 0,
        }
    }

    /// Notified whenever a result is ready.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn spawn(&mut self, job: impl Future<Output = Done> + Send + 'static) {
        self.in_flight += 1;
        let (tx, wake) = (self.tx.clone(), self.wake.clone());
        tokio::spawn(async move {
            let done = job.await;
            let _ = tx.send(done);
            wake.notify_one();
        });
    }

    /// A result that is ready, if one is.
    pub fn ready(&mut self) -> Option<Done> {
        let done = self.rx.try_recv().ok()?;
        if !matches!(done, Done::Intent(_)) {
            self.in_flight -= 1;
        }
        Some(done)
    }

    /// How a job reports that it wrote an intent and is calling.
    pub fn intent(&self) -> impl Fn(RollbackRecord) + Send + 'static {
        let (tx, wake) = (self.tx.clone(), self.wake.clone());
        move |rec| {
            let _ = tx.send(Done::Intent(rec));
            wake.notify_one();
        }
    }
}

pub(super) type ManualReply = oneshot::Sender<anyhow::Result<ManualOutcome>>;

/// Claims the rollback of `rec.deployment` in the store and, holding the
/// claim, calls the platform once. `unsure` is this agent's own earlier
/// claim of the same deployment whose answer was lost (the store timed out
/// after it may have written it): found in the store, it is this claim, and
/// no call was made for it.
pub(super) async fn claim_and_call(
    store: Arc<Store>,
    target: Arc<dyn Rollbacker>,
    view: Arc<Mutex<WatchView>>,
    mut rec: RollbackRecord,
    req: RollbackRequest,
    unsure: bool,
    reply: Option<ManualReply>,
) -> Done {
    let answer = |reply: Option<ManualReply>, outcome: anyhow::Result<ManualOutcome>| {
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
    };
    match store.claim_rollback(&rec).await {
        Err(e) => {
            let error = format!("{e:#}");
            answer(
                reply,
                Err(anyhow::anyhow!(
                    "the store cannot record the rollback's claim: {error}"
                )),
            );
            return Done::Rollback(Ended::ClaimFailed { rec, error });
        }
        Ok(Claim::AlreadyRecorded(found)) if !(unsure && same_claim(&found, &rec)) => {
            answer(
                reply,
                Ok(ManualOutcome::AlreadyRecorded(format!(
                    "deployment {} already has a rollback recorded ({})",
                    found.deployment,
                    found.status.as_str()
                ))),
            );
            return Done::Rollback(Ended::AlreadyRecorded(*found));
        }
        Ok(Claim::AlreadyRecorded(found)) => {
            tracing::info!(deployment = %found.deployment, "the store had taken this agent's claim before it timed out; no call was made for it");
            rec = *found;
        }
        Ok(Claim::Claimed) => {}
    }
    view.lock().expect("view lock").last_rollback = Some(rec.clone());
    answer(reply, Ok(ManualOutcome::Started));
    if rec.status == crate::store::RollbackStatus::DryRun {
        return Done::Rollback(Ended::DryRun(rec));
    }
    let result = target.rollback(&req).await;
    Done::Rollback(Ended::Called {
        rec,
        target: target.name(),
        result,
    })
}

/// Whether `found` is the claim `rec` itself (same deployment, rule, time
/// and agent), not another one.
fn same_claim(found: &RollbackRecord, rec: &RollbackRecord) -> bool {
    found.deployment == rec.deployment
        && found.rule == rec.rule
        && found.intent_at_ms == rec.intent_at_ms
        && found.by == rec.by
        && found.status == rec.status
}

/// An intent this agent recorded before it stopped, without an outcome:
/// the call may not have left, may have been answered, or anything in
/// between. The platform is asked whether it took effect; the call is made
/// only when the platform shows it did not, so there is one effective call
/// whichever moment the stop came.
pub(super) async fn resume(
    target: Option<Arc<dyn Rollbacker>>,
    dry_run: bool,
    rec: RollbackRecord,
    req: RollbackRequest,
) -> Done {
    let found = match &target {
        _ if dry_run => Reconciled::Unknown("dry_run is on now".into()),
        Some(t) => {
            tracing::warn!(deployment = %rec.deployment, rule = %rec.rule, target = t.name(), "a rollback call was interrupted by the agent's stop; asking the platform whether it took effect");
            t.reconcile(&req).await
        }
        None => Reconciled::Unknown("no rollback target is configured now".into()),
    };
    let call = match (&found, &target) {
        (Reconciled::NotDone(why), Some(t)) => {
            tracing::warn!(deployment = %rec.deployment, target = t.name(), found = %why, "the interrupted rollback did not take effect: calling now");
            Some(t.rollback(&req).await)
        }
        _ => None,
    };
    Done::Rollback(Ended::Resumed {
        rec,
        target: target.as_ref().map(|t| t.name()),
        found,
        call,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::store::RollbackStatus;
    use crate::watch::Call;

    #[derive(Default)]
    struct Counting(AtomicU32);

    impl Rollbacker for Counting {
        fn name(&self) -> &'static str {
            "webhook"
        }
        fn rollback<'a>(
            &'a self,
            req: &'a RollbackRequest,
        ) -> Call<'a, Result<RollbackDone, String>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                Ok(RollbackDone {
                    returned_to: req.return_to.clone(),
                    detail: "accepted".into(),
                })
            })
        }
        fn reconcile<'a>(&'a self, _: &'a RollbackRequest) -> Call<'a, Reconciled> {
            Box::pin(async { Reconciled::Unknown("cannot tell".into()) })
        }
    }

    fn intent(at_ms: u64) -> RollbackRecord {
        RollbackRecord {
            deployment: "v2".into(),
            return_to: Some("v1".into()),
            rule: "health failing".into(),
            reason: "health failed".into(),
            evidence: vec![],
            target: "webhook".into(),
            status: RollbackStatus::Intent,
            intent_at_ms: at_ms,
            finished_at_ms: None,
            detail: String::new(),
            returned_to: None,
            not_effective: false,
            by: None,
        }
    }

    fn request(rec: &RollbackRecord) -> RollbackRequest {
        RollbackRequest {
            service: "web".into(),
            deployment: rec.deployment.clone(),
            return_to: rec.return_to.clone(),
            rule: rec.rule.clone(),
            reason: rec.reason.clone(),
            evidence: vec![],
            fencing_token: None,
        }
    }

    /// What `claim_and_call` does when the store holds `stored` already
    /// and the claim `rec` is tried (`unsure`: as this agent's own claim
    /// whose answer was lost); returns the calls made and how it ended.
    async fn claim_over(
        stored: &RollbackRecord,
        rec: RollbackRecord,
        unsure: bool,
    ) -> (u32, &'static str) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        assert_eq!(store.claim_rollback(stored).await.unwrap(), Claim::Claimed);
        let target = Arc::new(Counting::default());
        let req = request(&rec);
        let done = claim_and_call(
            store,
            target.clone(),
            Default::default(),
            rec,
            req,
            unsure,
            None,
        )
        .await;
        let ended = match done {
            Done::Rollback(Ended::Called { .. }) => "called",
            Done::Rollback(Ended::AlreadyRecorded(_)) => "already recorded",
            _ => "other",
        };
        (target.0.load(Ordering::SeqCst), ended)
    }

    #[tokio::test]
    async fn a_lost_claim_found_in_the_store_is_this_agents_own_and_is_called_once() {
        // The store took the claim but its answer was lost: trying the same
        // record again finds it, and the call it was made for follows.
        assert_eq!(claim_over(&intent(1), intent(1), true).await, (1, "called"));
    }

    #[tokio::test]
    async fn a_claim_found_in_the_store_is_never_called_again_unless_it_is_the_lost_one() {
        // Another claim (another agent's, or from before a restart).
        assert_eq!(
            claim_over(&intent(1), intent(2), true).await,
            (0, "already recorded")
        );
        // The same record, but not one whose answer was lost.
        assert_eq!(
            claim_over(&intent(1), intent(1), false).await,
            (0, "already recorded")
        );
        // A claim of the same record that already has its outcome.
        let mut done = intent(1);
        done.status = RollbackStatus::Succeeded;
        assert_eq!(
            claim_over(&done, intent(1), true).await,
            (0, "already recorded")
        );
    }
}
