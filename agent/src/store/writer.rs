//! The store's writes, off the watch's path: the watch keeps its state in
//! memory and hands every write to one task that applies them in order,
//! retrying each until the store takes it. A store that refuses or falls
//! silent delays what is stored, never the watch; what a crash would lose
//! is at most the writes still queued, which the store was not taking
//! anyway. The one write that must be made before acting — a rollback's
//! claim — is not here: it is made by the rollback itself.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use super::records::{DeploymentMeta, DeploymentRecord, Retention, RollbackRecord};
use super::Store;
use backstop_judge::baseline::Baseline;

/// One write, as the watch hands it over.
pub enum Write {
    Deployment(DeploymentRecord),
    /// The deployment turned stable: saved and made the one to return to.
    Stable(DeploymentRecord),
    Current(String),
    Rollback(RollbackRecord),
    Paused(bool),
    /// A stable deployment's baseline; the reply is the baseline to judge
    /// against: this one, or the one another agent kept first.
    Baseline(Box<Baseline>, Option<oneshot::Sender<Baseline>>),
    /// What a pipeline registered of a deployment.
    Meta(Box<DeploymentMeta>),
    /// Forget what the retention no longer keeps.
    Prune(Retention),
}

impl Write {
    fn what(&self) -> &'static str {
        match self {
            Self::Deployment(_) => "a deployment's state",
            Self::Stable(_) => "a stable deployment",
            Self::Current(_) => "the current deployment",
            Self::Rollback(_) => "a rollback's record",
            Self::Paused(_) => "the pause switch",
            Self::Baseline(..) => "a baseline",
            Self::Meta(_) => "a deployment's metadata",
            Self::Prune(_) => "the ledger's pruning",
        }
    }
}

/// The first retry comes after this, then twice as long each time.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const LAST_RETRY: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Shared {
    queue: VecDeque<Write>,
    /// Whether the task is applying a write taken off the queue.
    busy: bool,
    /// The store's last error while a write is retried.
    failing: Option<String>,
}

/// Hands writes to the store in order, off the caller's path.
pub struct Writer {
    shared: Arc<Mutex<Shared>>,
    /// Wakes the task on a new write, or to end.
    queued: Arc<Notify>,
    /// Wakes whoever waits for the queue to drain.
    drained: Arc<Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Writer {
    /// Starts the task that applies the writes to `store`; it ends with
    /// [`Writer::close`], or when the `Writer` is dropped.
    pub fn start(store: Arc<Store>) -> Self {
        let shared: Arc<Mutex<Shared>> = Default::default();
        let (queued, drained) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let task = tokio::spawn(work(
            store,
            Arc::downgrade(&shared),
            queued.clone(),
            drained.clone(),
        ));
        Self {
            shared,
            queued,
            drained,
            task: Some(task),
        }
    }

    /// Queues a write; returns at once.
    pub fn write(&self, write: Write) {
        self.shared
            .lock()
            .expect("writer lock")
            .queue
            .push_back(write);
        self.queued.notify_one();
    }

    /// The store's error while a write is being retried.
    pub fn failing(&self) -> Option<String> {
        self.shared.lock().expect("writer lock").failing.clone()
    }

    /// How many writes the store has not taken yet.
    pub fn pending(&self) -> usize {
        let s = self.shared.lock().expect("writer lock");
        s.queue.len() + usize::from(s.busy)
    }

    /// Waits until every write queued so far is stored, or `within` has
    /// passed; returns how many were left.
    pub async fn flush(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.pending() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return self.pending();
            }
        }
    }

    /// A clean stop: waits up to `within` for the queued writes, then ends
    /// the task, so that the store is let go of (the embedded one can be
    /// opened again at once). Returns how many writes were lost.
    pub async fn close(&mut self, within: Duration) -> usize {
        let left = self.flush(within).await;
        self.shared.lock().expect("writer lock").queue.clear();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        left
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Applies the queued writes in order, each retried until the store takes
/// it; ends once the `Writer` is gone.
async fn work(
    store: Arc<Store>,
    shared: std::sync::Weak<Mutex<Shared>>,
    queued: Arc<Notify>,
    drained: Arc<Notify>,
) {
    loop {
        let next = {
            let Some(s) = shared.upgrade() else { return };
            let mut s = s.lock().expect("writer lock");
            let next = s.queue.pop_front();
            s.busy = next.is_some();
            next
        };
        let Some(mut write) = next else {
            drained.notify_waiters();
            queued.notified().await;
            continue;
        };
        let mut wait = FIRST_RETRY;
        loop {
            match apply(&store, &mut write).await {
                Ok(()) => break,
                Err(e) => {
                    let Some(s) = shared.upgrade() else { return };
                    let message = format!("cannot store {}: {e:#}", write.what());
                    tracing::debug!(error = %message, retry_in = ?wait, "store write failed; retrying");
                    s.lock().expect("writer lock").failing = Some(message);
                    drop(s);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(LAST_RETRY);
                }
            }
        }
        if let Some(s) = shared.upgrade() {
            s.lock().expect("writer lock").failing = None;
        }
    }
}

async fn apply(store: &Store, write: &mut Write) -> anyhow::Result<()> {
    match write {
        Write::Deployment(rec) => store.save_deployment(rec).await,
        Write::Stable(rec) => store.mark_stable(rec).await,
        Write::Current(id) => store.set_current(id).await,
        Write::Rollback(rec) => store.update_rollback(rec).await,
        Write::Paused(p) => store.set_paused(*p).await,
        Write::Meta(m) => store.save_meta(m).await,
        Write::Prune(r) => {
            let n = store.prune(r, super::now_ms()).await?;
            if n > 0 {
                tracing::info!(
                    deployments = n,
                    "ledger pruned: older deployments forgotten"
                );
            }
            Ok(())
        }
        Write::Baseline(b, reply) => {
            let kept = if store.save_baseline(b).await? {
                tracing::info!(deployment = %b.deployment, "baseline recorded");
                None
            } else {
                // Another agent of the service kept its baseline first:
                // judged against that one, as every agent does.
                let kept = store.baseline(&b.deployment).await?;
                if kept.is_some() {
                    tracing::info!(deployment = %b.deployment, "baseline already recorded by another agent; using it");
                }
                kept
            };
            if let Some(reply) = reply.take() {
                let _ = reply.send(kept.unwrap_or_else(|| (**b).clone()));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::WatchState;

    fn rec(id: &str, state: WatchState) -> DeploymentRecord {
        DeploymentRecord {
            id: id.into(),
            first_seen_ms: 1,
            state,
            stable_at_ms: None,
            states: vec![],
        }
    }

    #[tokio::test]
    async fn writes_are_stored_in_order_and_flush_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let w = Writer::start(store.clone());
        w.write(Write::Deployment(rec("v1", WatchState::Warming)));
        w.write(Write::Deployment(rec("v1", WatchState::Watching)));
        w.write(Write::Stable(rec("v1", WatchState::Stable)));
        w.write(Write::Current("v1".into()));
        w.write(Write::Paused(true));
        assert_eq!(w.flush(Duration::from_secs(5)).await, 0);
        assert_eq!(
            store.deployment("v1").await.unwrap().unwrap().state,
            WatchState::Stable
        );
        assert_eq!(store.last_stable().await.unwrap().as_deref(), Some("v1"));
        assert_eq!(store.current().await.unwrap().as_deref(), Some("v1"));
        assert!(store.paused().await.unwrap());
        assert_eq!(w.failing(), None);
    }

    #[tokio::test]
    async fn the_first_baseline_kept_is_the_one_replied() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let w = Writer::start(store.clone());
        let first = Baseline {
            deployment: "v1".into(),
            ..Default::default()
        };
        let mut second = first.clone();
        second.probes.insert("health".into(), Default::default());
        let (tx, rx) = oneshot::channel();
        w.write(Write::Baseline(Box::new(first.clone()), Some(tx)));
        assert_eq!(rx.await.unwrap(), first);
        let (tx, rx) = oneshot::channel();
        w.write(Write::Baseline(Box::new(second), Some(tx)));
        assert_eq!(rx.await.unwrap(), first, "the first one kept wins");
    }
}
