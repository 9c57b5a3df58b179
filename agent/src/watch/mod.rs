//! The life of one deployment in the agent: `warming` (rules not armed) →
//! `watching` (rules armed) → `stable` (the deployment to return to) or
//! `rolled_back`. The watcher takes the rules' verdicts and decides, behind
//! guard rails, whether to alert, hold or roll back — and rolls back at most
//! once per deployment: the intent is recorded in the store before the call,
//! and a recorded intent is never called again, not after a restart either.
//! With `[fleet]` a rollback rule that holds here does not call by itself:
//! the replicas' verdicts are tallied, and the holder of the fleet's lease
//! calls (see ARCHITECTURE.md, "Fleet", and `fleet`).
//!
//! The watch keeps its state in memory and never waits for the store: its
//! writes go through the store's [`Writer`], its reads and a rollback's claim
//! and call run as jobs (`job`) whose results it applies when they come.

mod fleet_call;
mod job;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Action;
use crate::evidence::{Event, EventKind, Reconciled, RollbackDone, RollbackRequest};
use crate::fleet::link::{Link, Outgoing};
use crate::fleet::{tally, Coordinator, FleetConfig, LossPolicy, Report, Vote};
use crate::store::writer::{Write, Writer};
use crate::store::{DeploymentRecord, RollbackRecord, RollbackStatus, Store, WatchState};
use backstop_judge::evidence::Evidence;
use job::{Done, Ended, Jobs, ManualReply};

/// A platform that can roll a deployment back (see `rollback`).
/// What a [`Rollbacker`] returns: a future it may borrow from.
pub type Call<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Rollbacker: Send + Sync {
    /// The target's name, the `target` label of `backstop_rollbacks_total`.
    fn name(&self) -> &'static str;
    /// Calls the platform, with its retries; the error is one line, no secrets.
    fn rollback<'a>(&'a self, req: &'a RollbackRequest) -> Call<'a, Result<RollbackDone, String>>;
    /// After a restart, for a call the agent's stop interrupted: whether
    /// the platform shows that it took effect. Reads only.
    fn reconcile<'a>(&'a self, req: &'a RollbackRequest) -> Call<'a, Reconciled>;
}

/// Tells people; never blocks the caller (see `notify`).
pub trait Notifier: Send + Sync {
    fn notify(&self, event: Event);
}

/// A rule's verdict now.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Holds,
    Clear,
    Inconclusive(String),
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Holds => "holds",
            Self::Clear => "clear",
            Self::Inconclusive(_) => "inconclusive",
        }
    }
}

/// One rule's judgement, as the rules module produced it.
#[derive(Debug, Clone)]
pub struct RuleStatus {
    pub name: String,
    pub probe: String,
    pub action: Action,
    /// Whether a rollback rule still rolls back once the deployment is stable.
    pub after_stable: bool,
    pub verdict: Verdict,
    /// One entry per condition that holds; empty unless the rule holds.
    pub evidence: Vec<Evidence>,
    /// The numbers behind the verdict, for `/status`.
    pub detail: backstop_judge::rules::Detail,
    /// A probe of the rule's probe's `depends_on` that fails, or may have
    /// caused what the rule saw: a rollback rule that holds is then held,
    /// never acted on.
    pub held_by: Option<Held>,
}

/// Why a dependency holds a rule's rollback.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// The `depends_on` probe.
    pub dependency: String,
    /// Whether it fails now: an outage, told once per deployment and
    /// dependency. Otherwise it is not yet known whether it caused what
    /// the rule saw (`why`), which is settled within a check or two.
    pub failing: bool,
    pub why: String,
}

impl Held {
    pub fn failing(dependency: String) -> Self {
        let why = format!(
            "{dependency} (depends_on) is failing: an outage of a dependency, which a rollback cannot fix"
        );
        Self {
            dependency,
            failing: true,
            why,
        }
    }

    pub fn unknown(dependency: String, what: &str) -> Self {
        let why = format!("{dependency} (depends_on) {what}");
        Self {
            dependency,
            failing: false,
            why,
        }
    }
}

impl RuleStatus {
    /// Whether the rule holds and nothing it depends on is failing.
    fn acts(&self) -> bool {
        self.verdict == Verdict::Holds && self.held_by.is_none()
    }

    /// The verdict as `/status`, the fleet and the page name it: `held`
    /// when it holds while a dependency fails.
    fn verdict_str(&self) -> &'static str {
        if self.verdict == Verdict::Holds && self.held_by.is_some() {
            "held"
        } else {
            self.verdict.as_str()
        }
    }
}

/// The guard rails of `[rollback]`.
#[derive(Debug, Clone)]
pub struct Guard {
    pub dry_run: bool,
    pub cooldown: Duration,
    pub max_per_hour: u32,
    /// How long after an accepted call the deployment must have changed.
    /// `None` when the id cannot change in this process (a fixed id).
    pub verify: Option<Duration>,
}

/// Wall-clock milliseconds that advance with tokio's clock, so paused-time
/// tests can move them, and a wall-clock jump cannot.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor: Instant,
    anchor_ms: u64,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            anchor: Instant::now(),
            anchor_ms: crate::store::now_ms(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.anchor_ms + self.anchor.elapsed().as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// What the watch shows in `/status`, refreshed on every step.
#[derive(Debug, Clone, Default)]
pub struct WatchView {
    pub deployment: Option<DeploymentRecord>,
    pub last_stable: Option<String>,
    pub paused: bool,
    pub rules: Vec<RuleView>,
    pub last_rollback: Option<RollbackRecord>,
    pub held: Option<String>,
    pub notes: Vec<String>,
    /// The fleet as this replica sees it; `None` without `[fleet]`.
    pub fleet: Option<Value>,
}

/// One rule as `/status` shows it: kept as it is and written as JSON only
/// when `/status` is asked for (a JSON value per rule, rebuilt on every
/// judgement, cost kilobytes per rule).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleView {
    pub name: String,
    pub probe: String,
    pub action: &'static str,
    pub armed: bool,
    pub verdict: &'static str,
    pub reason: Option<String>,
    pub summary: Option<String>,
    pub detail: backstop_judge::rules::Detail,
}

/// The fleet side of the watch (`[fleet]`): what this replica published and
/// read last from the coordination store.
struct Fleet {
    coord: Arc<Coordinator>,
    cfg: FleetConfig,
    /// Whether the coordination store answered at the last try; `None`
    /// before the first.
    up: Option<bool>,
    /// Publishes this replica's report and reads the live replicas, off the
    /// watch's path (also during this replica's own rollback call, so that
    /// a call longer than `expiry` does not drop the holder from the live
    /// count).
    link: Link,
    /// The deployment and (rule, verdict) pairs handed to the link last.
    published: Option<(String, Vec<(String, String)>)>,
    /// The link's reads of the live replicas taken in so far.
    consumed: u64,
    /// The live reports of `live_for`, as read last.
    live: Vec<Report>,
    live_for: Option<String>,
    /// Whether `live` was read in this step.
    fresh: bool,
    /// The fleet's rollback record of `live_for`, as read last.
    record: Option<RollbackRecord>,
    /// Since when each rollback rule has held here, for the quorum message.
    holding_since: std::collections::HashMap<String, Instant>,
}

/// How often `/status` reads a rollback record of the current deployment
/// that it does not show yet (one recorded before a restart, or by another
/// agent sharing the store).
const ROLLBACK_READ_EVERY: Duration = Duration::from_secs(10);

/// How long a step waits for what the store knows of a deployment just
/// seen before going on without it (the read goes on, off its path).
const SETTLE_AT_ONCE: Duration = Duration::from_millis(50);

/// How soon a read the store failed is tried again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// How old the rollbacks read for the cooldown and the hourly cap may be
/// when an automatic rollback is decided; older, they are read again first.
const RECENT_FRESH: Duration = Duration::from_secs(5);

/// How many heartbeats pass between two reads of the live replicas while
/// none of this replica's rollback rules holds (only for `/status`).
pub const FLEET_READ_EVERY: u64 = 6;

/// The answer to a manual rollback request.
#[derive(Debug, Clone, PartialEq)]
pub enum ManualOutcome {
    Started,
    AlreadyRecorded(String),
    Refused(String),
}

pub struct Watcher {
    service: String,
    replica: Option<String>,
    store: Arc<Store>,
    target: Option<Arc<dyn Rollbacker>>,
    notifier: Arc<dyn Notifier>,
    guard: Guard,
    warmup: Duration,
    watch: Duration,
    clock: Clock,
    current: Option<DeploymentRecord>,
    last_stable: Option<String>,
    paused: bool,
    firing: HashSet<String>,
    /// (rule, reason) pairs already told as held for the current deployment.
    held_told: HashSet<(String, String)>,
    /// The first rollback rule that held at the last judgement, with its
    /// evidence: a watch that ends with one is not promoted.
    holding: Option<(String, Vec<Evidence>)>,
    /// Since when no rollback rule has held on an `unhealthy` deployment.
    clear_since_ms: Option<u64>,
    /// When `/status`'s rollback record of the deployment was last read.
    rollback_read_at: Option<Instant>,
    /// Writes the watch's state to the store, off its path.
    writer: Writer,
    /// Reads, claims and calls in flight.
    jobs: Jobs,
    /// The deployment just seen whose stored record is being read: until
    /// it is known, nothing of it is written and it is not rolled back.
    settling: Option<String>,
    /// The rollback recorded for the current deployment, as known.
    recorded: Option<RollbackRecord>,
    /// A claim of the current deployment's rollback, or its call, is in
    /// flight (also a fleet's try for the lease).
    rolling: bool,
    /// How many replicas agreed when the fleet's try in flight was made,
    /// for the message.
    fleet_agreeing: String,
    /// This agent's claim whose answer was lost (the store timed out): the
    /// next try claims the same record, and finding it means it is ours.
    unsure: Option<RollbackRecord>,
    /// The rollbacks recorded (cooldown, hourly cap), and when they were
    /// read; `None` while a read is in flight.
    recent: Vec<RollbackRecord>,
    recent_at: Option<Instant>,
    recent_asked: bool,
    /// The store's last error on a read or a claim, until one succeeds.
    store_error: Option<String>,
    verify_pending: Option<(String, u64)>,
    info_labels: Option<(String, &'static str)>,
    fleet: Option<Fleet>,
    pub view: Arc<Mutex<WatchView>>,
}

impl Watcher {
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        service: String,
        replica: Option<String>,
        store: Arc<Store>,
        target: Option<Arc<dyn Rollbacker>>,
        notifier: Arc<dyn Notifier>,
        guard: Guard,
        warmup: Duration,
        watch: Duration,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let last_stable = store.last_stable().await?;
        let paused = store.paused().await?;
        let recent = store.rollbacks().await?;
        let writer = Writer::start(store.clone());
        Ok(Self {
            service,
            replica,
            store,
            target,
            notifier,
            guard,
            warmup,
            watch,
            clock,
            current: None,
            last_stable,
            paused,
            firing: HashSet::new(),
            held_told: HashSet::new(),
            holding: None,
            clear_since_ms: None,
            rollback_read_at: None,
            writer,
            jobs: Jobs::new(),
            settling: None,
            recorded: None,
            rolling: false,
            fleet_agreeing: String::new(),
            unsure: None,
            recent,
            recent_at: Some(Instant::now()),
            recent_asked: false,
            store_error: None,
            verify_pending: None,
            info_labels: None,
            fleet: None,
            view: Arc::new(Mutex::new(WatchView::default())),
        })
    }

    /// Decides with the fleet (`[fleet]`): a rollback rule that holds here
    /// rolls back only when `quorum` of the live replicas agree, and only
    /// the holder of the lease calls the platform.
    pub fn with_fleet(mut self, coord: Arc<Coordinator>, cfg: FleetConfig) -> Self {
        self.replica = Some(cfg.replica.clone());
        let link = Link::start(
            coord.clone(),
            self.service.clone(),
            cfg.heartbeat,
            cfg.expiry,
            FLEET_READ_EVERY,
        );
        self.fleet = Some(Fleet {
            coord,
            cfg,
            up: None,
            link,
            published: None,
            consumed: 0,
            live: vec![],
            live_for: None,
            fresh: false,
            record: None,
            holding_since: Default::default(),
        });
        self
    }

    /// The shortest time between two steps the fleet needs.
    pub fn fleet_heartbeat(&self) -> Option<Duration> {
        self.fleet.as_ref().map(|f| f.cfg.heartbeat)
    }

    /// Removes this replica's report (a clean shutdown).
    pub async fn leave_fleet(&self) {
        if let Some(f) = &self.fleet {
            f.link.stop();
            match f.coord.leave(&self.service, &f.cfg.replica).await {
                Ok(()) => tracing::info!(replica = %f.cfg.replica, "left the fleet"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot leave the fleet; the others stop counting this replica when its report expires")
                }
            }
        }
    }

    pub fn state(&self) -> Option<WatchState> {
        self.current.as_ref().map(|c| c.state)
    }

    pub fn deployment(&self) -> Option<&str> {
        self.current.as_ref().map(|c| c.id.as_str())
    }

    /// The deployment whose baseline level-4 rules compare with.
    pub fn last_stable(&self) -> Option<&str> {
        self.last_stable.as_deref()
    }

    /// Milliseconds since the current deployment was first seen.
    pub fn age_ms(&self) -> u64 {
        self.current
            .as_ref()
            .map(|c| self.clock.now_ms().saturating_sub(c.first_seen_ms))
            .unwrap_or(0)
    }

    /// Takes note of the deployment running now; a new id starts a new
    /// watch at once. What the store knows of it (a state recorded before a
    /// restart, a rollback) is taken in this step when the store answers
    /// within `SETTLE_AT_ONCE`, else off the watch's path when it comes
    /// (see [`Self::apply`]).
    pub async fn observe_deployment(&mut self, id: &str) {
        if self.current.as_ref().is_some_and(|c| c.id == id) {
            return;
        }
        if let Some((bad, _)) = &self.verify_pending {
            if bad != id {
                tracing::info!(from = %bad, to = %id, "rollback took effect: the deployment changed");
                self.verify_pending = None;
            }
        }
        self.firing.clear();
        self.held_told.clear();
        self.holding = None;
        self.clear_since_ms = None;
        self.rollback_read_at = None;
        self.recorded = None;
        self.unsure = None;
        self.current = Some(DeploymentRecord {
            id: id.to_string(),
            first_seen_ms: self.clock.now_ms(),
            state: WatchState::Warming,
            stable_at_ms: None,
        });
        self.settling = Some(id.to_string());
        let mut read = tokio::spawn(read_seen(self.store.clone(), id.to_string()));
        match tokio::time::timeout(SETTLE_AT_ONCE, &mut read).await {
            Ok(r) => self.settle(id.to_string(), joined(r)),
            Err(_) => {
                let id = id.to_string();
                self.jobs.spawn(async move {
                    let read = joined(read.await);
                    Done::Seen { id, read }
                });
            }
        }
    }

    /// Reads what the store knows of deployment `id` again, after `delay`.
    fn ask_seen(&mut self, id: &str, delay: Duration) {
        let (store, id) = (self.store.clone(), id.to_string());
        self.jobs.spawn(async move {
            tokio::time::sleep(delay).await;
            let read = read_seen(store, id.clone()).await;
            Done::Seen { id, read }
        });
    }

    /// Applies the results of the jobs that are ready.
    pub fn apply(&mut self) {
        while let Some(done) = self.jobs.ready() {
            match done {
                Done::Seen { id, read } => self.settle(id, read),
                Done::Recent { asked, read } => {
                    self.recent_asked = false;
                    match read {
                        Ok(recent) => {
                            self.store_works();
                            self.recent = recent;
                            self.recent_at = Some(asked);
                        }
                        Err(e) => self.store_fails(&e),
                    }
                }
                Done::Recorded { dep, read } => match read {
                    Ok(Some(r)) if self.deployment() == Some(dep.as_str()) => {
                        self.store_works();
                        if self.recorded.is_none() && !self.rolling {
                            self.recorded = Some(r.clone());
                        }
                        let mut view = self.view.lock().expect("view lock");
                        if view.last_rollback.is_none() {
                            view.last_rollback = Some(r);
                        }
                    }
                    Ok(_) => self.store_works(),
                    // Only shown: an error here just leaves it out.
                    Err(e) => self.store_fails(&e),
                },
                Done::Rollback(ended) => {
                    self.rolling = false;
                    self.rolled(ended);
                }
                Done::Fleet(ended) => {
                    self.rolling = false;
                    self.fleet_ended(ended);
                }
                Done::Intent(rec) => self.fleet_intent(rec),
            }
        }
    }

    /// Notified when a job's result is ready to [`Self::apply`].
    pub fn wake(&self) -> Arc<Notify> {
        self.jobs.wake()
    }

    /// The store's trouble, while it has some: a read or a claim that
    /// failed last, or a write being retried.
    pub fn store_trouble(&self) -> Option<String> {
        self.store_error.clone().or_else(|| self.writer.failing())
    }

    /// Waits until every job in flight has ended and is applied, and
    /// every write is stored.
    #[cfg(test)]
    pub async fn settle_all(&mut self) {
        loop {
            self.apply();
            if self.jobs.in_flight() == 0 {
                break;
            }
            self.jobs.wake().notified().await;
        }
        self.writer.flush(Duration::from_secs(3600)).await;
    }

    /// Writes the watch's state to the store, off the watch's path.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// A clean stop: waits up to `within` for the jobs in flight (a
    /// rollback's call is finished and its outcome recorded, not cut
    /// short) and for the store to take the queued writes, then lets go of
    /// the store. Returns how many writes were lost.
    pub async fn stop(&mut self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            self.apply();
            if self.jobs.in_flight() == 0 {
                break;
            }
            let wake = self.jobs.wake();
            if tokio::time::timeout_at(deadline, wake.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.writer.close(left).await
    }

    fn store_works(&mut self) {
        self.store_error = None;
    }

    fn store_fails(&mut self, e: &anyhow::Error) {
        self.store_error = Some(format!("{e:#}"));
    }

    /// What the store knows of the deployment just seen has come.
    fn settle(
        &mut self,
        id: String,
        read: anyhow::Result<(Option<DeploymentRecord>, Option<RollbackRecord>)>,
    ) {
        if self.settling.as_deref() != Some(id.as_str()) {
            return; // another deployment was seen meanwhile
        }
        let (stored, rollback) = match read {
            Ok(found) => found,
            Err(e) => {
                self.store_fails(&e);
                self.ask_seen(&id, STORE_RETRY);
                return;
            }
        };
        self.store_works();
        self.settling = None;
        match stored {
            Some(rec) => {
                tracing::info!(deployment = %id, state = rec.state.as_str(), "resuming the watch of a known deployment");
                self.current = Some(rec);
            }
            None => {
                let cur = self.current.clone().expect("the deployment being settled");
                tracing::info!(deployment = %id, warmup = %crate::duration::format(self.warmup), watch = %crate::duration::format(self.watch), "new deployment: watching it");
                self.persist(&cur);
            }
        }
        self.writer.write(Write::Current(id.clone()));
        // A rollback of this deployment recorded before a restart.
        let Some(r) = rollback else { return };
        self.recorded = Some(r.clone());
        self.view.lock().expect("view lock").last_rollback = Some(r.clone());
        if r.status == RollbackStatus::Intent && self.fleet.is_some() {
            // In a fleet the intent belongs to the holder of a lease: once
            // the lease expires another agent completes the call.
            tracing::warn!(deployment = %id, by = ?r.by, "a fleet rollback of this deployment is in progress or was interrupted");
        } else if r.status == RollbackStatus::Intent {
            let req = self.request_for(&r, None);
            self.rolling = true;
            self.jobs
                .spawn(job::resume(self.target.clone(), self.guard.dry_run, r, req));
        } else if r.status == RollbackStatus::Succeeded && !r.not_effective {
            if let (Some(verify), Some(done)) = (self.guard.verify, r.finished_at_ms) {
                self.verify_pending = Some((id, done + verify.as_millis() as u64));
            }
        }
    }

    /// Queues the current deployment's state for the store, unless what
    /// the store knows of it is still being read (then it is written once
    /// that is known).
    fn persist(&self, rec: &DeploymentRecord) {
        if self.settling.as_deref() == Some(rec.id.as_str()) {
            return;
        }
        self.writer.write(if rec.state == WatchState::Stable {
            Write::Stable(rec.clone())
        } else {
            Write::Deployment(rec.clone())
        });
    }

    /// A rollback's claim and call ended: recorded, shown and told.
    fn rolled(&mut self, ended: Ended) {
        match ended {
            Ended::ClaimFailed { rec, error } => {
                tracing::error!(deployment = %rec.deployment, error = %error, "the store cannot record the rollback's claim: not calling; trying again while the rule holds");
                self.store_error = Some(error.clone());
                self.view.lock().expect("view lock").held =
                    Some(format!("the store cannot record the rollback: {error}"));
                if self.deployment() == Some(rec.deployment.as_str()) {
                    self.unsure = Some(rec);
                }
            }
            Ended::AlreadyRecorded(r) => {
                self.store_works();
                if self.deployment() == Some(r.deployment.as_str()) {
                    self.recorded = Some(r.clone());
                    self.view.lock().expect("view lock").last_rollback = Some(r);
                }
            }
            Ended::DryRun(mut rec) => {
                self.store_works();
                let now = self.clock.now_ms();
                rec.detail = "dry run: no call made".into();
                rec.finished_at_ms = Some(now);
                self.writer.write(Write::Rollback(rec.clone()));
                self.recent.insert(0, rec.clone());
                metrics::counter!("backstop_rollbacks_total", "target" => rec.target.clone(), "outcome" => "dry_run").increment(1);
                tracing::warn!(deployment = %rec.deployment, rule = %rec.rule, return_to = ?rec.return_to, reason = %rec.reason, "dry run: would roll back");
                self.tell(
                    EventKind::RollbackPerformed,
                    Some(rec.rule.clone()),
                    format!(
                        "dry run: would roll back {}{}: {}",
                        rec.deployment,
                        to_text(&rec.return_to),
                        rec.reason
                    ),
                    rec.evidence.clone(),
                );
                self.known(rec);
            }
            Ended::Called {
                rec,
                target,
                result,
            } => {
                self.store_works();
                self.finish_call(rec, target, result, None);
            }
            Ended::Resumed {
                rec,
                target,
                found,
                call,
            } => self.resumed(rec, target, found, call),
        }
    }

    /// `rec` is the rollback recorded for its deployment now.
    fn known(&mut self, rec: RollbackRecord) {
        if let Some(r) = self
            .recent
            .iter_mut()
            .find(|r| r.deployment == rec.deployment)
        {
            *r = rec.clone();
        }
        if self.deployment() == Some(rec.deployment.as_str()) {
            self.recorded = Some(rec.clone());
        }
        self.view.lock().expect("view lock").last_rollback = Some(rec);
    }

    /// Records the outcome of the platform's call for the intent `rec`,
    /// whatever it is: the call is never made again. `note` says how the
    /// call came about, for the message.
    fn finish_call(
        &mut self,
        mut rec: RollbackRecord,
        target: &'static str,
        result: Result<RollbackDone, String>,
        note: Option<&str>,
    ) {
        let dep = rec.deployment.clone();
        rec.finished_at_ms = Some(self.clock.now_ms());
        let note = note.map(|n| format!(" ({n})")).unwrap_or_default();
        match result {
            Ok(done) => {
                rec.status = RollbackStatus::Succeeded;
                rec.detail = done.detail.clone();
                rec.returned_to = done.returned_to.clone().or(rec.return_to.clone());
                self.writer.write(Write::Rollback(rec.clone()));
                self.mark_rolled_back(&dep);
                metrics::counter!("backstop_rollbacks_total", "target" => target, "outcome" => "succeeded").increment(1);
                tracing::warn!(deployment = %dep, target, returned_to = ?rec.returned_to, detail = %done.detail, "rollback accepted by the platform");
                if let Some(verify) = self.guard.verify {
                    self.verify_pending =
                        Some((dep.clone(), self.clock.now_ms() + verify.as_millis() as u64));
                }
                self.tell(
                    EventKind::RollbackPerformed,
                    Some(rec.rule.clone()),
                    format!(
                        "rolled back {dep}{}: {}{note}",
                        to_text(&rec.returned_to),
                        rec.reason
                    ),
                    rec.evidence.clone(),
                );
            }
            Err(err) => {
                rec.status = RollbackStatus::Failed;
                rec.detail = err.clone();
                self.writer.write(Write::Rollback(rec.clone()));
                metrics::counter!("backstop_rollbacks_total", "target" => target, "outcome" => "failed").increment(1);
                tracing::error!(deployment = %dep, target, error = %err, "rollback failed; it will not be called again for this deployment");
                self.tell(
                    EventKind::RollbackFailed,
                    Some(rec.rule.clone()),
                    format!("rollback of {dep} failed: {err}{note}"),
                    rec.evidence.clone(),
                );
            }
        }
        self.known(rec);
    }

    /// The platform was asked about a call the agent's stop interrupted.
    /// Done → recorded as done, no call; not done → called once (`call`);
    /// cannot tell → reported and never called again.
    fn resumed(
        &mut self,
        mut r: RollbackRecord,
        target: Option<&'static str>,
        found: Reconciled,
        call: Option<Result<RollbackDone, String>>,
    ) {
        let dep = r.deployment.clone();
        match (found, target, call) {
            (Reconciled::NotDone(_), Some(target), Some(result)) => {
                self.finish_call(r, target, result, Some("called after the agent's restart"));
            }
            (Reconciled::Done(done), Some(target), _) => {
                r.detail = format!(
                    "the call made before the agent's restart took effect: {}",
                    done.detail
                );
                tracing::warn!(deployment = %dep, target, detail = %r.detail, "the interrupted rollback had taken effect: not calling again");
                let detail = r.detail.clone();
                self.finish_call(
                    r,
                    target,
                    Ok(RollbackDone {
                        returned_to: done.returned_to,
                        detail,
                    }),
                    Some("found done after the agent's restart"),
                );
            }
            (found, _, _) => {
                let why = match found {
                    Reconciled::Unknown(why) | Reconciled::NotDone(why) => why,
                    Reconciled::Done(done) => done.detail,
                };
                r.status = RollbackStatus::Failed;
                r.detail = format!(
                    "the agent stopped during the rollback call; it will not call again: check the platform ({why})"
                );
                r.finished_at_ms = Some(self.clock.now_ms());
                self.writer.write(Write::Rollback(r.clone()));
                // Without a notifier this line is the only place besides
                // /status where a person learns of it.
                tracing::error!(deployment = %dep, rule = %r.rule, target = %r.target, detail = %r.detail, "a rollback call was interrupted");
                self.tell(
                    EventKind::RollbackFailed,
                    Some(r.rule.clone()),
                    r.detail.clone(),
                    r.evidence.clone(),
                );
                self.known(r);
            }
        }
    }

    /// Deployment `dep`, if current, was rolled back: so recorded.
    fn mark_rolled_back(&mut self, dep: &str) {
        if let Some(cur) = self.current.as_mut().filter(|c| c.id == dep) {
            cur.state = WatchState::RolledBack;
            let cur = cur.clone();
            self.persist(&cur);
        }
    }

    /// The request that carries `rec`'s rollback to the platform.
    fn request_for(&self, rec: &RollbackRecord, fencing_token: Option<i64>) -> RollbackRequest {
        RollbackRequest {
            service: self.service.clone(),
            deployment: rec.deployment.clone(),
            return_to: rec.return_to.clone(),
            rule: rec.rule.clone(),
            reason: rec.reason.clone(),
            evidence: rec.evidence.clone(),
            fencing_token,
        }
    }

    /// Moves the watch along with time: warming → watching → stable, or
    /// `unhealthy` when a rollback rule still holds as the watch ends (a
    /// guard rail kept the rollback back); unhealthy → stable once no
    /// rollback rule held for a whole watch. Returns the deployment that
    /// just became stable, if one did. The state is kept in memory and
    /// written behind: a store that does not answer never holds it.
    pub fn advance(&mut self) -> Option<String> {
        self.apply();
        let now = self.clock.now_ms();
        let cur = self.current.clone()?;
        let age = Duration::from_millis(now.saturating_sub(cur.first_seen_ms));
        if cur.state == WatchState::Warming && age >= self.warmup {
            let next = DeploymentRecord {
                state: WatchState::Watching,
                ..cur.clone()
            };
            self.persist(&next);
            tracing::info!(deployment = %cur.id, "warm-up over: rules armed");
            self.current = Some(next);
        }
        let cur = self.current.clone()?;
        match cur.state {
            WatchState::Watching if age >= self.warmup + self.watch => match self.holding.clone() {
                Some((rule, evidence)) => {
                    self.become_unhealthy(cur, rule, evidence);
                    None
                }
                None => Some(self.become_stable(cur, now)),
            },
            WatchState::Unhealthy if self.holding.is_none() => {
                let since = *self.clear_since_ms.get_or_insert(now);
                if now.saturating_sub(since) < self.watch.as_millis() as u64 {
                    return None;
                }
                tracing::info!(deployment = %cur.id, "no rollback rule held for a whole watch: the unhealthy deployment recovered");
                Some(self.become_stable(cur, now))
            }
            WatchState::Unhealthy => {
                self.clear_since_ms = None;
                None
            }
            _ => None,
        }
    }

    /// The deployment turns stable: the baseline and the deployment to
    /// return to from now on.
    fn become_stable(&mut self, cur: DeploymentRecord, now: u64) -> String {
        let next = DeploymentRecord {
            state: WatchState::Stable,
            stable_at_ms: Some(now),
            ..cur
        };
        self.persist(&next);
        tracing::info!(deployment = %next.id, "watch over: deployment is stable and becomes the baseline");
        self.last_stable = Some(next.id.clone());
        let id = next.id.clone();
        self.current = Some(next);
        id
    }

    /// The watch ended while rollback rule `rule` held and something kept
    /// the rollback back: the deployment is `unhealthy`, never the baseline
    /// nor the deployment to return to, and people are told once, loudly.
    fn become_unhealthy(&mut self, cur: DeploymentRecord, rule: String, evidence: Vec<Evidence>) {
        let next = DeploymentRecord {
            state: WatchState::Unhealthy,
            ..cur
        };
        self.persist(&next);
        let dep = next.id.clone();
        self.current = Some(next);
        self.clear_since_ms = None;
        let held = self.view.lock().expect("view lock").held.clone();
        let held = match (held, &self.recorded) {
            (_, Some(r)) => format!("its rollback is recorded as {}", r.status.as_str()),
            (Some(reason), None) => format!("the rollback was held back: {reason}"),
            (None, None) if self.settling.is_some() => {
                "the rollback was held back: the store has not answered".to_string()
            }
            (None, None) => "no rollback was made".to_string(),
        };
        let stays = match &self.last_stable {
            Some(s) => format!("{s} stays the baseline and the deployment to return to"),
            None => "there is no stable deployment to return to".to_string(),
        };
        let summary = format!(
            "watch over: {dep} is unhealthy and does not become the baseline: {}; {held}; {stays}",
            summarize(&rule, &evidence)
        );
        tracing::error!(deployment = %dep, rule = %rule, summary = %summary, "deployment unhealthy");
        self.tell(EventKind::Unhealthy, Some(rule), summary, evidence);
    }

    /// Pauses or resumes automatic rollbacks, at once; the switch is
    /// written behind.
    pub fn set_paused(&mut self, paused: bool) {
        self.writer.write(Write::Paused(paused));
        self.paused = paused;
        tracing::info!(
            paused,
            "automatic rollbacks {}",
            if paused { "paused" } else { "resumed" }
        );
        self.refresh_view(&[]);
    }

    /// Acts on the rules' verdicts. Call after [`Self::observe_deployment`]
    /// and [`Self::advance`].
    pub async fn judge(&mut self, rules: &[RuleStatus]) {
        self.apply();
        self.check_verification();
        let Some(state) = self.state() else {
            self.refresh_view(rules);
            return;
        };
        self.holding = rules
            .iter()
            .find(|r| r.action == Action::Rollback && r.verdict == Verdict::Holds)
            .map(|r| (r.name.clone(), r.evidence.clone()));
        if self.fleet.is_some() {
            self.fleet_step(rules, state).await;
        }
        // `held` says why a rollback that a rule asks for is not made; with
        // no such rule holding any more, there is nothing held back.
        if !rules
            .iter()
            .any(|r| r.verdict == Verdict::Holds && self.rolls_back(r, state))
        {
            self.view.lock().expect("view lock").held = None;
        }
        for r in rules {
            let holds = r.verdict == Verdict::Holds;
            metrics::gauge!("backstop_rule_firing", "rule" => r.name.clone(), "action" => r.action.as_str())
                .set(if holds && state != WatchState::Warming { 1.0 } else { 0.0 });
            let was = self.firing.contains(&r.name);
            if state == WatchState::Warming || state == WatchState::RolledBack {
                continue;
            }
            if holds && !was {
                self.firing.insert(r.name.clone());
                let ev = r.evidence.clone().into_iter().collect::<Vec<_>>();
                let summary = ev
                    .first()
                    .map(|e| e.summary.clone())
                    .unwrap_or_else(|| format!("rule {} holds", r.name));
                tracing::warn!(rule = %r.name, probe = %r.probe, action = r.action.as_str(), summary = %summary, "rule firing");
                if !self.rolls_back(r, state) {
                    self.tell(EventKind::Alert, Some(r.name.clone()), summary, ev);
                }
            } else if !holds && was {
                self.firing.remove(&r.name);
                tracing::info!(rule = %r.name, "rule no longer holds");
                self.tell(
                    EventKind::Resolved,
                    Some(r.name.clone()),
                    format!("rule {} no longer holds", r.name),
                    vec![],
                );
            }
            if holds && self.rolls_back(r, state) {
                let ev = r.evidence.clone();
                if let Some(held) = &r.held_by {
                    self.hold_for_dependency(&r.name, held, ev);
                    continue;
                }
                if self.fleet.is_some() {
                    self.fleet_rollback(&r.name, ev);
                } else {
                    self.try_rollback(&r.name, ev, &mut None);
                }
                if self.state() == Some(WatchState::RolledBack) {
                    break;
                }
            }
        }
        self.refresh_view(rules);
    }

    fn rolls_back(&self, r: &RuleStatus, state: WatchState) -> bool {
        r.action == Action::Rollback
            && (matches!(state, WatchState::Watching | WatchState::Unhealthy)
                || (state == WatchState::Stable && r.after_stable))
    }

    /// Publishes this replica's verdicts on every heartbeat (and at once
    /// when one changes), and reads the live replicas and the fleet's
    /// record: on every heartbeat while one of this replica's rollback
    /// rules holds, else every `FLEET_READ_EVERY` heartbeats for `/status`.
    async fn fleet_step(&mut self, rules: &[RuleStatus], state: WatchState) {
        let Some(dep) = self.deployment().map(str::to_string) else {
            return;
        };
        let votes: Vec<Vote> = rules
            .iter()
            .filter(|r| self.rolls_back(r, state))
            .map(|r| Vote {
                rule: r.name.clone(),
                verdict: r.verdict_str().to_string(),
                summary: if r.acts() {
                    summarize(&r.name, &r.evidence)
                } else {
                    String::new()
                },
            })
            .collect();
        let now = Instant::now();
        let at_ms = self.clock.now_ms();
        let f = self.fleet.as_mut().expect("fleet");
        f.fresh = false;
        f.holding_since.retain(|rule, _| {
            votes
                .iter()
                .any(|v| v.rule == *rule && v.verdict == "holds")
        });
        for v in votes.iter().filter(|v| v.verdict == "holds") {
            f.holding_since.entry(v.rule.clone()).or_insert(now);
        }
        // The link publishes the report at once when it changes and every
        // heartbeat after; the watch never waits for the store.
        let holding = votes.iter().any(|v| v.verdict == "holds");
        let key = (
            dep.clone(),
            votes
                .iter()
                .map(|v| (v.rule.clone(), v.verdict.clone()))
                .collect::<Vec<_>>(),
        );
        if f.published.as_ref() != Some(&key) {
            f.link.publish(Outgoing {
                report: Report {
                    replica: f.cfg.replica.clone(),
                    deployment: dep.clone(),
                    at_ms,
                    votes,
                },
                read_always: holding,
            });
            f.published = Some(key);
        }
        let (up, error, reads) = f.link.status();
        match up {
            None => return,
            Some(false) => {
                let e = anyhow::anyhow!(error.unwrap_or_else(|| "not answering".into()));
                self.fleet_failed(&e);
                return;
            }
            Some(true) => {}
        }
        if reads > f.consumed {
            let seen = f.link.seen();
            f.consumed = seen.reads;
            if seen.live_for.as_deref() == Some(dep.as_str()) {
                metrics::gauge!("backstop_fleet_live_replicas").set(seen.live.len() as f64);
                for r in rules.iter().filter(|r| r.action == Action::Rollback) {
                    metrics::gauge!("backstop_fleet_agreeing", "rule" => r.name.clone())
                        .set(tally(&seen.live, &r.name).agree as f64);
                }
                f.live = seen.live;
                f.live_for = seen.live_for;
                f.record = None;
                f.fresh = true;
                // Whoever wrote it, every agent shows the fleet's record.
                if let Some(rec) = seen.record {
                    self.show_fleet_record(rec);
                }
            }
        }
        self.fleet_ok();
    }

    /// The coordination store failed: no fleet rollback while it fails
    /// (unless `on_coordination_loss = "local"`). Told once when it starts
    /// failing; `backstop_fleet_up` says so all along.
    fn fleet_failed(&mut self, e: &anyhow::Error) {
        metrics::gauge!("backstop_fleet_up").set(0.0);
        let f = self.fleet.as_mut().expect("fleet");
        let was = f.up.replace(false);
        f.fresh = false;
        let message = format!("{e:#}");
        let policy = f.cfg.on_coordination_loss;
        let shown = f.coord.describe();
        if was != Some(false) {
            tracing::error!(coordinator = %shown, error = %message, "the fleet's coordination store is failing");
            let then = match policy {
                LossPolicy::Hold => "no fleet rollback until it works again",
                LossPolicy::Local => {
                    "this replica decides on its own verdicts until it works again"
                }
            };
            self.tell(
                EventKind::Alert,
                Some("fleet".into()),
                format!("the fleet's coordination store {shown} is failing; {then}: {message}"),
                vec![],
            );
        } else {
            // Said once at error level; `backstop_fleet_up` says the rest.
            tracing::debug!(coordinator = %shown, error = %message, "the fleet's coordination store is still failing");
        }
    }

    fn fleet_ok(&mut self) {
        metrics::gauge!("backstop_fleet_up").set(1.0);
        let f = self.fleet.as_mut().expect("fleet");
        if f.up.replace(true) == Some(false) {
            tracing::info!("the fleet's coordination store works again");
            self.tell(
                EventKind::Resolved,
                Some("fleet".into()),
                "the fleet's coordination store works again: fleet rollbacks are possible again"
                    .into(),
                vec![],
            );
        }
    }

    /// A rollback rule holds on this replica: the fleet decides. Only on a
    /// fresh read of the live replicas; the replicas that agree try to take
    /// the lease, and only its holder calls the platform.
    fn fleet_rollback(&mut self, rule: &str, evidence: Vec<Evidence>) {
        let Some(dep) = self.deployment().map(str::to_string) else {
            return;
        };
        if self.rolling {
            return;
        }
        let f = self.fleet.as_ref().expect("fleet");
        if f.up == Some(false) {
            if f.cfg.on_coordination_loss == LossPolicy::Local {
                self.try_rollback(rule, evidence, &mut None);
            } else {
                self.view.lock().expect("view lock").held = Some(
                    "the fleet's coordination store is failing: no fleet rollback until it works again"
                        .into(),
                );
            }
            return;
        }
        if !f.fresh || f.live_for.as_deref() != Some(dep.as_str()) {
            return;
        }
        let t = tally(&f.live, rule);
        let quorum = f.cfg.quorum;
        if !t.reaches(quorum) {
            let settled = f
                .holding_since
                .get(rule)
                .is_some_and(|since| since.elapsed() >= f.cfg.expiry);
            let msg = format!(
                "rule {rule} holds on this replica only: {} of {} live replicas agree (quorum {quorum}); not rolling the fleet back",
                t.agree, t.live
            );
            // Told once the others have had time to publish, once per
            // (rule, deployment).
            if settled
                && self
                    .held_told
                    .insert((rule.to_string(), "fleet quorum".into()))
            {
                tracing::warn!(deployment = %dep, rule, agree = t.agree, live = t.live, quorum, "rule holds on this replica only; the fleet is not rolled back");
                self.tell(
                    EventKind::RollbackHeld,
                    Some(rule.to_string()),
                    msg.clone(),
                    evidence,
                );
            }
            self.view.lock().expect("view lock").held = Some(msg);
            return;
        }
        if let Some(rec) = f.record.clone() {
            if rec.status != RollbackStatus::Intent {
                self.show_fleet_record(rec);
                return;
            }
        }
        if self.hold_reason(rule, &dep, &evidence, false).is_some() {
            return;
        }
        let agreeing = format!("{} of {} live replicas agree", t.agree, t.live);
        tracing::info!(deployment = %dep, rule, agree = t.agree, live = t.live, "trying for the fleet lease");
        self.fleet_try(&dep, rule, evidence, agreeing, None);
    }

    /// Starts a fleet's rollback of `dep` (`fleet_call`), off the watch's
    /// path: take the lease, then record, call and record, fenced.
    fn fleet_try(
        &mut self,
        dep: &str,
        rule: &str,
        evidence: Vec<Evidence>,
        agreeing: String,
        reply: Option<ManualReply>,
    ) {
        let Some(target) = self.target.clone() else {
            return;
        };
        let rec = self.new_record(dep, rule, &evidence, target.name());
        let f = self.fleet.as_ref().expect("fleet");
        let call = fleet_call::FleetCall {
            coord: f.coord.clone(),
            service: self.service.clone(),
            replica: f.cfg.replica.clone(),
            lease_ttl: f.cfg.lease,
            dep: dep.to_string(),
            target,
            rec,
            clock: self.clock,
            reply,
        };
        self.rolling = true;
        self.fleet_agreeing = agreeing;
        let intent = self.jobs.intent();
        self.jobs.spawn(fleet_call::run(call, intent));
    }

    /// A fleet's rollback wrote its intent and is calling: shown in
    /// `/status` (the lease holder, the record) meanwhile.
    fn fleet_intent(&mut self, rec: RollbackRecord) {
        self.fleet_local_copy(&rec);
        if let Some(f) = self.fleet.as_mut() {
            f.record = Some(rec.clone());
        }
        let shown = self.fleet_view(&[]);
        let mut view = self.view.lock().expect("view lock");
        view.last_rollback = Some(rec);
        view.fleet = shown;
    }

    /// With Redis as the coordination store, the fleet's record is kept in
    /// this agent's store too (PostgreSQL keeps it in the store's table).
    fn fleet_local_copy(&self, rec: &RollbackRecord) {
        if let Some(f) = &self.fleet {
            if matches!(*f.coord, Coordinator::Redis(_)) {
                self.writer.write(Write::Rollback(rec.clone()));
            }
        }
    }

    /// A fleet's rollback ended: recorded, shown and told.
    fn fleet_ended(&mut self, ended: fleet_call::FleetEnded) {
        use fleet_call::FleetEnded;
        let agreeing = std::mem::take(&mut self.fleet_agreeing);
        match ended {
            FleetEnded::StoreFailed(e) => self.fleet_failed(&anyhow::anyhow!(e)),
            FleetEnded::Taken | FleetEnded::Overtaken => {}
            FleetEnded::Found(rec) => self.show_fleet_record(rec),
            FleetEnded::FoundDone { rec, target } => {
                self.fleet_local_copy(&rec);
                metrics::counter!("backstop_rollbacks_total", "target" => target, "outcome" => "succeeded").increment(1);
                tracing::warn!(deployment = %rec.deployment, target, detail = %rec.detail, "the interrupted fleet rollback had taken effect: not calling again");
                self.tell(
                    EventKind::RollbackPerformed,
                    Some(rec.rule.clone()),
                    format!(
                        "rolled back {}{} for the fleet: {} (found done after its holder stopped)",
                        rec.deployment,
                        to_text(&rec.returned_to),
                        rec.reason
                    ),
                    rec.evidence.clone(),
                );
                self.show_fleet_record(rec);
            }
            FleetEnded::DryRun(rec) => {
                self.fleet_local_copy(&rec);
                metrics::counter!("backstop_rollbacks_total", "target" => rec.target.clone(), "outcome" => "dry_run").increment(1);
                tracing::warn!(deployment = %rec.deployment, rule = %rec.rule, return_to = ?rec.return_to, reason = %rec.reason, "dry run: would roll the fleet back");
                self.tell(
                    EventKind::RollbackPerformed,
                    Some(rec.rule.clone()),
                    format!(
                        "dry run: would roll back {}{} ({agreeing}): {}",
                        rec.deployment,
                        to_text(&rec.return_to),
                        rec.reason
                    ),
                    rec.evidence.clone(),
                );
                self.show_fleet_record(rec);
            }
            FleetEnded::Called {
                rec,
                target,
                result,
            } => {
                self.fleet_local_copy(&rec);
                let dep = rec.deployment.clone();
                match result {
                    Ok(done) => {
                        self.mark_rolled_back(&dep);
                        metrics::counter!("backstop_rollbacks_total", "target" => target, "outcome" => "succeeded").increment(1);
                        tracing::warn!(deployment = %dep, target, returned_to = ?rec.returned_to, detail = %done.detail, "fleet rollback accepted by the platform");
                        if let Some(verify) = self.guard.verify {
                            self.verify_pending = Some((
                                dep.clone(),
                                self.clock.now_ms() + verify.as_millis() as u64,
                            ));
                        }
                        self.tell(
                            EventKind::RollbackPerformed,
                            Some(rec.rule.clone()),
                            format!(
                                "rolled back {dep}{} for the fleet ({agreeing}): {}",
                                to_text(&rec.returned_to),
                                rec.reason
                            ),
                            rec.evidence.clone(),
                        );
                    }
                    Err(err) => {
                        metrics::counter!("backstop_rollbacks_total", "target" => target, "outcome" => "failed").increment(1);
                        tracing::error!(deployment = %dep, target, error = %err, "fleet rollback failed; it will not be called again for this deployment");
                        self.tell(
                            EventKind::RollbackFailed,
                            Some(rec.rule.clone()),
                            format!("rollback of {dep} failed: {err}"),
                            rec.evidence.clone(),
                        );
                    }
                }
                self.show_fleet_record(rec);
            }
        }
    }

    /// The fleet's record of the current deployment, whoever wrote it: shown
    /// in `/status`; a deployment rolled back by the fleet is no longer
    /// judged here either.
    fn show_fleet_record(&mut self, rec: RollbackRecord) {
        if rec.status == RollbackStatus::Succeeded
            && self.deployment() == Some(rec.deployment.as_str())
        {
            if let Some(cur) = self.current.as_mut() {
                if cur.state != WatchState::RolledBack {
                    tracing::info!(deployment = %rec.deployment, by = ?rec.by, "the fleet rolled this deployment back");
                    cur.state = WatchState::RolledBack;
                }
            }
        }
        if rec.status != RollbackStatus::Intent
            && self.deployment() == Some(rec.deployment.as_str())
        {
            self.recorded = Some(rec.clone());
        }
        if let Some(f) = self.fleet.as_mut() {
            f.record = Some(rec.clone());
        }
        self.view.lock().expect("view lock").last_rollback = Some(rec);
    }

    /// The `fleet` object of `/status`.
    fn fleet_view(&self, rules: &[RuleStatus]) -> Option<Value> {
        let f = self.fleet.as_ref()?;
        let mut names: Vec<String> = rules
            .iter()
            .filter(|r| r.action == Action::Rollback)
            .map(|r| r.name.clone())
            .collect();
        for v in f.live.iter().flat_map(|r| &r.votes) {
            if !names.contains(&v.rule) {
                names.push(v.rule.clone());
            }
        }
        let tallies: Vec<Value> = names
            .iter()
            .map(|n| {
                let t = tally(&f.live, n);
                json!({ "rule": n, "agree": t.agree, "live": t.live, "reaches_quorum": t.reaches(f.cfg.quorum) })
            })
            .collect();
        let record = f
            .record
            .as_ref()
            .filter(|r| f.live_for.as_deref() == Some(r.deployment.as_str()));
        Some(json!({
            "replica": f.cfg.replica,
            "coordinator": f.coord.describe(),
            "up": f.up,
            "quorum": f.cfg.quorum,
            "on_coordination_loss": f.cfg.on_coordination_loss,
            "heartbeat_s": f.cfg.heartbeat.as_secs_f64(),
            "expiry_s": f.cfg.expiry.as_secs_f64(),
            "deployment": f.live_for,
            "live": f.live.iter().map(|r| json!({
                "replica": r.replica,
                "deployment": r.deployment,
                "at_ms": r.at_ms,
                "votes": r.votes,
            })).collect::<Vec<_>>(),
            "tally": tallies,
            "lease_holder": record.filter(|r| r.status == RollbackStatus::Intent).and_then(|r| r.by.clone()),
            "rollback": record,
        }))
    }

    /// A rollback asked for through the admin API; `reply` is answered
    /// once the claim is recorded (or refused), not after the call.
    pub async fn manual_rollback(&mut self, reason: &str, reply: ManualReply) {
        self.apply();
        let Some(dep) = self.deployment().map(str::to_string) else {
            let _ = reply.send(Ok(ManualOutcome::Refused(
                "no deployment is known yet".into(),
            )));
            return;
        };
        if let Some(r) = &self.recorded {
            let _ = reply.send(Ok(ManualOutcome::AlreadyRecorded(format!(
                "deployment {dep} already has a rollback recorded ({})",
                r.status.as_str()
            ))));
            return;
        }
        let ev = vec![Evidence {
            rule: "manual".into(),
            probe: String::new(),
            expression: String::new(),
            signal: None,
            observed: None,
            threshold: None,
            window: None,
            baseline: None,
            ratio: None,
            p_value: None,
            summary: format!("manual rollback: {reason}"),
        }];
        if self.fleet.is_some() {
            self.manual_fleet_rollback(&dep, ev, reply);
            return;
        }
        let mut reply = Some(reply);
        if let Some(refusal) = self.try_rollback("manual", ev, &mut reply) {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(ManualOutcome::Refused(refusal)));
            }
        }
    }

    /// A rollback asked for by hand in a fleet: no quorum, but the fleet's
    /// lease, so that no agent takes its intent for one left by a holder
    /// that stopped, and no two calls are made at once. Answered once the
    /// lease is taken (or not).
    fn manual_fleet_rollback(&mut self, dep: &str, evidence: Vec<Evidence>, reply: ManualReply) {
        if self.target.is_none() {
            let _ = reply.send(Ok(ManualOutcome::Refused(
                "no [rollback] target is configured".into(),
            )));
            return;
        }
        if self.rolling {
            let _ = reply.send(Ok(ManualOutcome::Refused(format!(
                "a rollback of {dep} is in progress"
            ))));
            return;
        }
        self.fleet_try(
            dep,
            "manual",
            evidence,
            "asked for by hand".into(),
            Some(reply),
        );
    }

    /// The guard rails: why a rollback of `dep` is held back now, if it is.
    /// People are told once per (rule, reason); `/status` shows it. The
    /// rollbacks recorded for the cooldown and the hourly cap are read
    /// again when they are older than `RECENT_FRESH` (off the watch's
    /// path): until they come, an automatic rollback waits.
    fn hold_reason(
        &mut self,
        rule: &str,
        dep: &str,
        evidence: &[Evidence],
        manual: bool,
    ) -> Option<String> {
        let return_to = self.last_stable.clone().filter(|s| s != dep);
        let now = self.clock.now_ms();
        let fresh = self.recent_at.is_some_and(|t| t.elapsed() < RECENT_FRESH);
        if !manual && !fresh {
            self.ask_recent();
        }
        // The deployment's own record (an intent left by a fleet holder
        // that stopped) is not an earlier rollback.
        let recent: Vec<&RollbackRecord> =
            self.recent.iter().filter(|r| r.deployment != dep).collect();
        let hold = if self.target.is_none() {
            Some("no [rollback] target is configured".to_string())
        } else if self.paused && !manual {
            Some("automatic rollbacks are paused".to_string())
        } else if return_to.is_none() && !manual {
            Some("there is no earlier stable deployment to return to".to_string())
        } else if !manual && !fresh {
            // Not told: it lasts as long as one read of the store, and a
            // store that does not answer is told of on its own.
            let why = match &self.store_error {
                Some(e) => format!("the store does not answer: {e}"),
                None => "reading the rollbacks recorded (cooldown, hourly cap)".to_string(),
            };
            self.view.lock().expect("view lock").held = Some(why.clone());
            return Some(why);
        } else if let Some(last) = recent.iter().find(|r| {
            r.status != RollbackStatus::DryRun
                && now.saturating_sub(r.intent_at_ms) < self.guard.cooldown.as_millis() as u64
        }) {
            (!manual).then(|| {
                format!(
                    "cooldown: deployment {} was rolled back less than {} ago",
                    last.deployment,
                    crate::duration::format(self.guard.cooldown)
                )
            })
        } else {
            let last_hour = recent
                .iter()
                .filter(|r| {
                    r.status != RollbackStatus::DryRun
                        && now.saturating_sub(r.intent_at_ms) < 3_600_000
                })
                .count() as u32;
            (last_hour >= self.guard.max_per_hour && !manual).then(|| {
                format!(
                    "cap: {last_hour} rollbacks in the last hour (max_per_hour = {})",
                    self.guard.max_per_hour
                )
            })
        };
        if let Some(reason) = hold {
            let key = (rule.to_string(), reason.clone());
            if self.held_told.insert(key) {
                tracing::warn!(deployment = %dep, rule, reason = %reason, "rollback held back");
                self.tell(
                    EventKind::RollbackHeld,
                    Some(rule.to_string()),
                    format!("rollback of {dep} held back: {reason}"),
                    evidence.to_vec(),
                );
            }
            self.view.lock().expect("view lock").held = Some(reason.clone());
            return Some(reason);
        }
        None
    }

    /// Reads the rollbacks recorded, unless a read is in flight.
    fn ask_recent(&mut self) {
        if self.recent_asked {
            return;
        }
        self.recent_asked = true;
        let store = self.store.clone();
        self.jobs.spawn(async move {
            let asked = Instant::now();
            let read = store.rollbacks().await;
            Done::Recent { asked, read }
        });
    }

    /// A rollback rule holds while a probe it depends on fails: an outage
    /// of the dependency, which a rollback cannot fix. Told once per
    /// deployment and dependency; `/status` shows it.
    fn hold_for_dependency(&mut self, rule: &str, held: &Held, evidence: Vec<Evidence>) {
        let reason = held.why.clone();
        let dep = self.deployment().unwrap_or("").to_string();
        let dependency = held.dependency.as_str();
        if held.failing
            && self
                .held_told
                .insert((String::new(), format!("depends_on {dependency}")))
        {
            tracing::warn!(deployment = %dep, rule, dependency, "rollback held: a dependency is failing");
            self.tell(
                EventKind::RollbackHeld,
                Some(rule.to_string()),
                format!("rollback of {dep} held back: {reason}"),
                evidence,
            );
        }
        self.view.lock().expect("view lock").held = Some(reason);
    }

    /// The record of a rollback about to be made now: an intent, or a dry
    /// run, by this replica, back to the last stable deployment.
    fn new_record(
        &self,
        dep: &str,
        rule: &str,
        evidence: &[Evidence],
        target: &str,
    ) -> RollbackRecord {
        RollbackRecord {
            deployment: dep.to_string(),
            return_to: self.last_stable.clone().filter(|s| s != dep),
            rule: rule.to_string(),
            reason: summarize(rule, evidence),
            evidence: evidence.to_vec(),
            target: target.to_string(),
            status: if self.guard.dry_run {
                RollbackStatus::DryRun
            } else {
                RollbackStatus::Intent
            },
            intent_at_ms: self.clock.now_ms(),
            finished_at_ms: None,
            detail: String::new(),
            returned_to: None,
            not_effective: false,
            by: self.replica.clone(),
        }
    }

    /// Rolls the current deployment back unless a guard rail says no:
    /// the claim and the call run as a job, off the watch's path. Returns
    /// why it held back, if it did; a manual `reply` is taken by the job.
    fn try_rollback(
        &mut self,
        rule: &str,
        evidence: Vec<Evidence>,
        reply: &mut Option<ManualReply>,
    ) -> Option<String> {
        let manual = reply.is_some();
        let Some(dep) = self.deployment().map(str::to_string) else {
            return Some("no deployment is known yet".into());
        };
        if self.rolling {
            return manual.then(|| format!("a rollback of {dep} is in progress"));
        }
        if self.recorded.is_some() {
            return None;
        }
        if self.settling.is_some() {
            let why = match &self.store_error {
                Some(e) => format!("the store does not answer what it knows of {dep}: {e}"),
                None => format!("reading what the store knows of {dep}"),
            };
            self.view.lock().expect("view lock").held = Some(why.clone());
            return Some(why);
        }
        if let Some(reason) = self.hold_reason(rule, &dep, &evidence, manual) {
            return Some(reason);
        }
        let target = self.target.clone().expect("checked above");
        // A claim whose answer was lost is claimed again as it was.
        let (rec, unsure) = match self.unsure.take().filter(|u| u.deployment == dep) {
            Some(u) => (u, true),
            None => (self.new_record(&dep, rule, &evidence, target.name()), false),
        };
        if rec.status == RollbackStatus::DryRun {
            tracing::info!(deployment = %dep, rule = %rec.rule, "dry run: recording what would be rolled back");
        } else {
            tracing::warn!(deployment = %dep, rule = %rec.rule, target = target.name(), return_to = ?rec.return_to, reason = %rec.reason, "rolling back");
        }
        self.recent.retain(|r| r.deployment != dep);
        self.recent.insert(0, rec.clone());
        let req = self.request_for(&rec, None);
        self.rolling = true;
        self.view.lock().expect("view lock").held = None;
        self.jobs.spawn(job::claim_and_call(
            self.store.clone(),
            target,
            self.view.clone(),
            rec,
            req,
            unsure,
            reply.take(),
        ));
        None
    }

    fn check_verification(&mut self) {
        let Some((dep, deadline)) = self.verify_pending.clone() else {
            return;
        };
        if self.deployment() != Some(dep.as_str()) {
            self.verify_pending = None;
            return;
        }
        if self.clock.now_ms() < deadline {
            return;
        }
        self.verify_pending = None;
        if let Some(mut r) = self.recorded.clone().filter(|r| r.deployment == dep) {
            r.not_effective = true;
            self.writer.write(Write::Rollback(r.clone()));
            let msg = format!(
                "the platform accepted the rollback of {dep}, but the deployment has not changed; it will not be called again"
            );
            tracing::error!(deployment = %dep, "{msg}");
            self.tell(
                EventKind::RollbackNotEffective,
                Some(r.rule.clone()),
                msg,
                r.evidence.clone(),
            );
            self.known(r);
        }
    }

    /// Tells people that the store stopped (or started again) working:
    /// while it fails, no rollback is made.
    pub fn tell_store(&self, works: bool, detail: &str) {
        let (kind, summary) = if works {
            (
                EventKind::Resolved,
                "the store works again: rollbacks are possible again".to_string(),
            )
        } else {
            (
                EventKind::Alert,
                format!("the store is failing; no rollback until it works again: {detail}"),
            )
        };
        self.tell(kind, Some("store".into()), summary, vec![]);
    }

    fn tell(
        &self,
        kind: EventKind,
        rule: Option<String>,
        summary: String,
        evidence: Vec<Evidence>,
    ) {
        self.notifier.notify(Event {
            kind,
            service: self.service.clone(),
            deployment: self.deployment().unwrap_or("").to_string(),
            rule,
            summary,
            evidence,
            return_to: self.last_stable.clone(),
        });
    }

    fn refresh_view(&mut self, rules: &[RuleStatus]) {
        let state = self.state();
        if let (Some(dep), Some(st)) = (self.deployment().map(str::to_string), state) {
            let labels = (dep, st.as_str());
            if self.info_labels.as_ref() != Some(&labels) {
                if let Some((old_dep, old_state)) = self.info_labels.take() {
                    metrics::gauge!("backstop_deployment_info", "deployment" => old_dep, "state" => old_state).set(0.0);
                }
                metrics::gauge!("backstop_deployment_info", "deployment" => labels.0.clone(), "state" => labels.1).set(1.0);
                self.info_labels = Some(labels);
            }
        }
        let armed = matches!(state, Some(WatchState::Watching | WatchState::Unhealthy));
        // A rollback recorded by another agent sharing the store; only
        // shown. Read (off the watch's path) every ROLLBACK_READ_EVERY
        // while none is known, once the deployment's own record is read.
        let missing = self.view.lock().expect("view lock").last_rollback.is_none();
        let due = self
            .rollback_read_at
            .is_none_or(|t| t.elapsed() >= ROLLBACK_READ_EVERY);
        if let (true, true, None, Some(dep)) = (
            missing,
            due,
            &self.settling,
            self.deployment().map(str::to_string),
        ) {
            self.rollback_read_at = Some(Instant::now());
            let store = self.store.clone();
            self.jobs.spawn(async move {
                let read = store.rollback(&dep).await;
                Done::Recorded { dep, read }
            });
        }
        let mut view = self.view.lock().expect("view lock");
        view.deployment = self.current.clone();
        view.last_stable = self.last_stable.clone();
        view.paused = self.paused;
        if !rules.is_empty() || view.rules.is_empty() {
            view.rules = rules
                .iter()
                .map(|r| RuleView {
                    name: r.name.clone(),
                    probe: r.probe.clone(),
                    action: r.action.as_str(),
                    armed: armed || (state == Some(WatchState::Stable) && r.after_stable),
                    verdict: r.verdict_str(),
                    reason: match (&r.verdict, &r.held_by) {
                        (Verdict::Inconclusive(why), _) => Some(why.clone()),
                        (Verdict::Holds, Some(held)) => Some(held.why.clone()),
                        _ => None,
                    },
                    summary: (!r.evidence.is_empty()).then(|| summarize(&r.name, &r.evidence)),
                    detail: r.detail.clone(),
                })
                .collect();
        }
        drop(view);
        if self.fleet.is_some() {
            let fleet = self.fleet_view(rules);
            self.view.lock().expect("view lock").fleet = fleet;
        }
    }
}

/// What the store knows of deployment `id`: its record and its rollback's.
async fn read_seen(
    store: Arc<Store>,
    id: String,
) -> anyhow::Result<(Option<DeploymentRecord>, Option<RollbackRecord>)> {
    let rec = store.deployment(&id).await?;
    let rollback = store.rollback(&id).await?;
    Ok((rec, rollback))
}

/// A task's result, its panic as an error.
fn joined<T>(r: Result<anyhow::Result<T>, tokio::task::JoinError>) -> anyhow::Result<T> {
    r.unwrap_or_else(|e| Err(anyhow::anyhow!("the read of the store failed: {e}")))
}

/// One line for all the conditions of a rule that hold.
fn summarize(rule: &str, evidence: &[Evidence]) -> String {
    if evidence.is_empty() {
        format!("rule {rule} holds")
    } else {
        evidence
            .iter()
            .map(|e| e.summary.as_str())
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

fn to_text(return_to: &Option<String>) -> String {
    match return_to {
        Some(r) => format!(" to {r}"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Default)]
    struct Platform {
        calls: AtomicU32,
        fail: bool,
        /// What `reconcile` finds: done, not done, or (`None`) cannot tell.
        found: Option<bool>,
        asked: AtomicU32,
    }

    impl Rollbacker for Platform {
        fn name(&self) -> &'static str {
            "webhook"
        }
        fn rollback<'a>(
            &'a self,
            req: &'a RollbackRequest,
        ) -> Call<'a, Result<RollbackDone, String>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let fail = self.fail;
            Box::pin(async move {
                if fail {
                    Err("webhook answered 503 Service Unavailable".into())
                } else {
                    Ok(RollbackDone {
                        returned_to: req.return_to.clone(),
                        detail: "accepted".into(),
                    })
                }
            })
        }
        fn reconcile<'a>(&'a self, _req: &'a RollbackRequest) -> Call<'a, Reconciled> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let found = match self.found {
                Some(true) => Reconciled::Done(RollbackDone {
                    returned_to: Some("v1".into()),
                    detail: "the platform lists a newer deployment".into(),
                }),
                Some(false) => Reconciled::NotDone("v2 is still the newest".into()),
                None => Reconciled::Unknown("a webhook cannot be asked".into()),
            };
            Box::pin(async move { found })
        }
    }

    #[derive(Default)]
    struct Told(Mutex<Vec<Event>>);

    impl Notifier for Told {
        fn notify(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }

    impl Told {
        fn kinds(&self) -> Vec<EventKind> {
            self.0.lock().unwrap().iter().map(|e| e.kind).collect()
        }
    }

    fn guard() -> Guard {
        Guard {
            dry_run: false,
            cooldown: Duration::from_secs(600),
            max_per_hour: 3,
            verify: Some(Duration::from_secs(300)),
        }
    }

    fn rule(verdict: Verdict) -> RuleStatus {
        RuleStatus {
            held_by: None,
            name: "health failing".into(),
            probe: "health".into(),
            action: Action::Rollback,
            after_stable: false,
            evidence: (verdict == Verdict::Holds)
                .then(|| Evidence {
                    rule: "health failing".into(),
                    probe: "health".into(),
                    expression: "consecutive_failures >= 3".into(),
                    signal: Some("consecutive_failures".into()),
                    observed: Some(3.0),
                    threshold: Some(3.0),
                    window: None,
                    baseline: None,
                    ratio: None,
                    p_value: None,
                    summary: "consecutive_failures 3 >= 3 on probe health".into(),
                })
                .into_iter()
                .collect(),
            verdict,
            detail: Default::default(),
        }
    }

    struct Rig {
        _dir: tempfile::TempDir,
        store: Arc<Store>,
        platform: Arc<Platform>,
        told: Arc<Told>,
    }

    impl Rig {
        fn new(fail: bool) -> Self {
            Self::finding(fail, None)
        }

        fn finding(fail: bool, found: Option<bool>) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path()).unwrap());
            Self {
                _dir: dir,
                store,
                platform: Arc::new(Platform {
                    calls: AtomicU32::new(0),
                    fail,
                    found,
                    asked: AtomicU32::new(0),
                }),
                told: Arc::new(Told::default()),
            }
        }

        async fn watcher(&self, guard: Guard) -> Watcher {
            Watcher::new(
                "web".into(),
                None,
                self.store.clone(),
                Some(self.platform.clone()),
                self.told.clone(),
                guard,
                Duration::from_secs(30),
                Duration::from_secs(900),
                Clock::new(),
            )
            .await
            .unwrap()
        }

        fn calls(&self) -> u32 {
            self.platform.calls.load(Ordering::SeqCst)
        }
    }

    async fn step(w: &mut Watcher, id: &str, verdict: Verdict) {
        judged(w, id, &[rule(verdict)]).await;
    }

    /// One step of the watch loop, with every job it starts (reads of the
    /// store, a rollback's claim and call) ended and applied.
    async fn judged(w: &mut Watcher, id: &str, rules: &[RuleStatus]) {
        w.observe_deployment(id).await;
        w.settle_all().await;
        w.advance();
        w.judge(rules).await;
        w.settle_all().await;
        // What the jobs brought (the rollbacks read for the guard rails)
        // is acted on at the next step, at once.
        w.judge(rules).await;
        w.settle_all().await;
    }

    async fn make_stable(w: &mut Watcher, id: &str) {
        step(w, id, Verdict::Clear).await;
        tokio::time::advance(Duration::from_secs(931)).await;
        step(w, id, Verdict::Clear).await;
        assert_eq!(w.state(), Some(WatchState::Stable));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deployment_warms_up_then_is_watched_then_becomes_stable() {
        let rig = Rig::new(false);
        let mut w = rig.watcher(guard()).await;
        step(&mut w, "v1", Verdict::Clear).await;
        assert_eq!(w.state(), Some(WatchState::Warming));
        tokio::time::advance(Duration::from_secs(31)).await;
        step(&mut w, "v1", Verdict::Clear).await;
        assert_eq!(w.state(), Some(WatchState::Watching));
        tokio::time::advance(Duration::from_secs(900)).await;
        step(&mut w, "v1", Verdict::Clear).await;
        assert_eq!(w.state(), Some(WatchState::Stable));
        assert_eq!(
            rig.store.last_stable().await.unwrap().as_deref(),
            Some("v1")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rolls_back_a_bad_deployment_exactly_once() {
        let rig = Rig::new(false);
        let mut w = rig.watcher(guard()).await;
        make_stable(&mut w, "v1").await;
        step(&mut w, "v2", Verdict::Holds).await;
        assert_eq!(rig.calls(), 0, "rules are not armed while warming");
        tokio::time::advance(Duration::from_secs(31)).await;
        for _ in 0..5 {
            step(&mut w, "v2", Verdict::Holds).await;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(rig.calls(), 1);
        assert_eq!(w.state(), Some(WatchState::RolledBack));
        let rec = rig.store.rollback("v2").await.unwrap().unwrap();
        assert_eq!(rec.status, RollbackStatus::Succeeded);
        assert_eq!(rec.returned_to.as_deref(), Some("v1"));
        assert!(rig.told.kinds().contains(&EventKind::RollbackPerformed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rule_held_by_a_failing_dependency_is_told_once_and_acts_once_it_recovers() {
        let rig = Rig::new(false);
        let mut w = rig.watcher(guard()).await;
        make_stable(&mut w, "v2").await;
        step(&mut w, "v3", Verdict::Clear).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        let held = RuleStatus {
            held_by: Some(Held::failing("db".into())),
            ..rule(Verdict::Holds)
        };
        for _ in 0..5 {
            judged(&mut w, "v3", std::slice::from_ref(&held)).await;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(rig.calls(), 0, "a dependency's outage never rolls back");
        let told = rig.told.0.lock().unwrap().clone();
        let held_events: Vec<_> = told
            .iter()
            .filter(|e| e.kind == EventKind::RollbackHeld)
            .collect();
        assert_eq!(held_events.len(), 1, "{told:?}");
        assert!(
            held_events[0]
                .summary
                .contains("db (depends_on) is failing"),
            "{}",
            held_events[0].summary
        );
        {
            let view = w.view.lock().unwrap();
            assert_eq!(view.rules[0].verdict, "held");
            assert!(view.held.as_deref().unwrap().contains("db"));
        }
        // The dependency recovers and the rule still holds: now it is the
        // deployment's fault.
        step(&mut w, "v3", Verdict::Holds).await;
        assert_eq!(rig.calls(), 1);
        assert_eq!(w.state(), Some(WatchState::RolledBack));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_agent_never_calls_again_for_the_same_deployment() {
        let rig = Rig::new(false);
        {
            let mut w = rig.watcher(guard()).await;
            make_stable(&mut w, "v1").await;
            step(&mut w, "v2", Verdict::Clear).await;
            tokio::time::advance(Duration::from_secs(31)).await;
            step(&mut w, "v2", Verdict::Holds).await;
        }
        assert_eq!(rig.calls(), 1);
        let mut w = rig.watcher(guard()).await;
        for _ in 0..3 {
            step(&mut w, "v2", Verdict::Holds).await;
        }
        assert_eq!(rig.calls(), 1);
        assert_eq!(w.state(), Some(WatchState::RolledBack));
    }

    #[tokio::test(start_paused = true)]
    async fn an_intent_left_by_a_crash_is_reported_and_never_called() {
        let rig = Rig::new(false);
        leave_intent(&rig).await;
        let mut w = rig.watcher(guard()).await;
        tokio::time::advance(Duration::from_secs(100)).await;
        step(&mut w, "v2", Verdict::Holds).await;
        assert_eq!(rig.platform.asked.load(Ordering::SeqCst), 1);
        assert_eq!(rig.calls(), 0);
        assert_eq!(rig.told.kinds(), vec![EventKind::RollbackFailed]);
        let rec = rig.store.rollback("v2").await.unwrap().unwrap();
        assert_eq!(rec.status, RollbackStatus::Failed);
        assert!(
            rec.detail.contains("a webhook cannot be asked"),
            "{}",
            rec.detail
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_intent_the_platform_shows_untouched_is_called_once_after_the_restart() {
        let rig = Rig::finding(false, Some(false));
        leave_intent(&rig).await;
        let mut w = rig.watcher(guard()).await;
        step(&mut w, "v2", Verdict::Holds).await;
        assert_eq!(rig.calls(), 1);
        let rec = rig.store.rollback("v2").await.unwrap().unwrap();
        assert_eq!(rec.status, RollbackStatus::Succeeded);
        assert_eq!(w.state(), Some(WatchState::RolledBack));
        assert_eq!(rig.told.kinds(), vec![EventKind::RollbackPerformed]);
        // Another restart finds the outcome and neither asks nor calls.
        let mut again = rig.watcher(guard()).await;
        step(&mut again, "v2", Verdict::Holds).await;
        assert_eq!(
            (rig.calls(), rig.platform.asked.load(Ordering::SeqCst)),
            (1, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_intent_the_platform_shows_done_is_recorded_as_done_without_a_call() {
        let rig = Rig::finding(false, Some(true));
        leave_intent(&rig).await;
        let mut w = rig.watcher(guard()).await;
        step(&mut w, "v2", Verdict::Holds).await;
        assert_eq!(rig.calls(), 0);
        let rec = rig.store.rollback("v2").await.unwrap().unwrap();
        assert_eq!(rec.status, RollbackStatus::Succeeded);
        assert!(rec.detail.contains("took effect"), "{}", rec.detail);
        assert_eq!(rec.returned_to.as_deref(), Some("v1"));
        assert_eq!(w.state(), Some(WatchState::RolledBack));
        assert_eq!(rig.told.kinds(), vec![EventKind::RollbackPerformed]);
    }

    #[tokio::test(start_paused = true)]
    async fn in_dry_run_an_intent_is_reported_and_never_called() {
        let rig = Rig::finding(false, Some(false));
        leave_intent(&rig).await;
        let mut w = rig
            .watcher(Guard {
                dry_run: true,
                ..guard()
            })
            .await;
        step(&mut w, "v2", Verdict::Holds).await;
        assert_eq!(rig.calls(), 0);
        assert_eq!(
            rig.store.rollback("v2").await.unwrap().unwrap().status,
            RollbackStatus::Failed
        );
    }

    /// An intent for v2, as an agent killed during the call leaves it.
    async fn leave_intent(rig: &Rig) {
        rig.store
            .claim_rollback(&RollbackRecord {
                deployment: "v2".into(),
                return_to: Some("v1".into()),
                rule: "health failing".into(),
                reason: "x".into(),
                evidence: vec![],
                target: "webhook".into(),
                status: RollbackStatus::Intent,
                intent_at_ms: crate::store::now_ms(),
                finished_at_ms: None,
                detail: String::new(),
                returned_to: None,
                not_effective: false,
                by: None,
            })
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn holds_back_without_an_earlier_stable_deployment_and_says_so_once() {
        let rig = Rig::new(false);
        let mut w = rig.watcher(guard()).await;
        step(&mut w, "v1", Verdict::Clear).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        for _ in 0..3 {
            step(&mut w, "v1", Verdict::Holds).await;
        }
        assert_eq!(rig.calls(), 0);
        assert_eq!(
            rig.told.kinds(),
            vec![EventKind::RollbackHeld],
            "told once, not on every evaluation"
        );
        let view = w.view.clone();
        let held = || view.lock().unwrap().held.clone();
        assert!(held().is_some_and(|h| h.contains("stable")), "{:?}", held());
        step(&mut w, "v1", Verdict::Clear).await;
        assert_eq!(held(), None, "nothing is held back once the rule clears");
    }

    #[tokio::test(start_paused = true)]
    async fn paused_holds_back_and_resume_rolls_back_if_the_rule_still_holds() {
        let rig = Rig::new(false);
        let mut w = rig.watcher(guard()).await;
        make_stable(&mut w, "v1").await;
        w.set_paused(true);
        step(&mut w, "v2", Verdict::Clear).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        step(&mut w, "v2", Verdict::Holds).await;
        assert_eq!(rig.calls(), 0);
        w.set_paused(false);
        step(&mut w, "v2", Verdict::Holds).await;
        assert_eq!(rig.calls(), 1);
    }

    /// Steps `id` with `verdict` every 10 s for `secs` seconds.
    async fn hold_for(w: &mut Watcher, id: &str, verdict: Verdict, secs: u64) {
        for _ in 0..secs / 10 {
            step(w, id, verdict.clone()).await;
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        step(w, id, verdict).await;
    }

    /// The first event of `kind` told.
    fn first(rig: &Rig, kind: EventKind) -> Event {
        rig.told
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.kind == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind:?} event"))
    }

    fn count(rig: &Rig, kind: EventKind) -> usize {
        rig.told
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.kind == kind)
            .count()
    }

    /// What keeps a rollback back through a whole watch, and how it lifts.
    #[derive(Clone, Copy, Debug)]
    enum Rail {
        /// v2 was rolled back less than `cooldown` (2 h) ago.
        Cooldown,
        /// One rollback an hour, and v2's was it.
        Cap,
        Paused,
    }

    #[tokio::test(start_paused = true)]
    async fn a_deployment_whose_rollback_a_guard_rail_held_back_ends_unhealthy_and_is_rolled_back_once_it_lifts(
    ) {
        for rail in [Rail::Cooldown, Rail::Cap, Rail::Paused] {
            let rig = Rig::new(false);
            let guard = match rail {
                Rail::Cooldown => Guard {
                    cooldown: Duration::from_secs(7200),
                    ..guard()
                },
                Rail::Cap => Guard {
                    cooldown: Duration::ZERO,
                    max_per_hour: 1,
                    ..guard()
                },
                Rail::Paused => guard(),
            };
            let mut w = rig.watcher(guard).await;
            make_stable(&mut w, "v1").await;
            if matches!(rail, Rail::Paused) {
                w.set_paused(true);
            } else {
                // v2 is bad and rolled back; the platform returns to v1.
                step(&mut w, "v2", Verdict::Clear).await;
                tokio::time::advance(Duration::from_secs(31)).await;
                step(&mut w, "v2", Verdict::Holds).await;
                assert_eq!(rig.calls(), 1, "{rail:?}");
                step(&mut w, "v1", Verdict::Clear).await;
            }
            let before = rig.calls();
            // v3 is bad too, through its whole warm-up and watch.
            hold_for(&mut w, "v3", Verdict::Holds, 940).await;
            assert_eq!(rig.calls(), before, "{rail:?}: held back");
            assert_eq!(w.state(), Some(WatchState::Unhealthy), "{rail:?}");
            assert_eq!(
                w.last_stable(),
                Some("v1"),
                "{rail:?}: v1 stays the baseline"
            );
            assert_eq!(
                rig.store.last_stable().await.unwrap().as_deref(),
                Some("v1"),
                "{rail:?}"
            );
            assert_eq!(count(&rig, EventKind::Unhealthy), 1, "{rail:?}: told once");
            let unhealthy = first(&rig, EventKind::Unhealthy);
            assert!(
                unhealthy.summary.contains("v3 is unhealthy")
                    && unhealthy.summary.contains("held back")
                    && unhealthy.summary.contains("v1 stays the baseline"),
                "{rail:?}: {}",
                unhealthy.summary
            );
            // What held it back lifts, and the rule still holds: one call.
            match rail {
                Rail::Cooldown | Rail::Cap => {
                    tokio::time::advance(Duration::from_secs(7200)).await;
                }
                Rail::Paused => w.set_paused(false),
            }
            hold_for(&mut w, "v3", Verdict::Holds, 30).await;
            assert_eq!(rig.calls(), before + 1, "{rail:?}: rolled back once");
            assert_eq!(w.state(), Some(WatchState::RolledBack), "{rail:?}");
            assert_eq!(count(&rig, EventKind::Unhealthy), 1, "{rail:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn in_dry_run_a_bad_deployment_ends_unhealthy_with_its_dry_run_recorded_and_no_call() {
        let rig = Rig::new(false);
        let mut w = rig
            .watcher(Guard {
                dry_run: true,
                ..guard()
            })
            .await;
        make_stable(&mut w, "v1").await;
        hold_for(&mut w, "v2", Verdict::Holds, 940).await;
        assert_eq!(w.state(), Some(WatchState::Unhealthy));
        assert_eq!(rig.calls(), 0);
        assert_eq!(w.last_stable(), Some("v1"));
        let unhealthy = first(&rig, EventKind::Unhealthy);
        assert!(
            unhealthy.summary.contains("recorded as dry_run"),
            "{}",
            unhealthy.summary
        );
        hold_for(&mut w, "v2", Verdict::Holds, 600).await;
        assert_eq!(rig.calls(), 0, "a dry run never calls");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unhealthy_deployment_resumes_unhealthy_after_a_restart_and_recovers_after_a_clear_watch(
    ) {
        let rig = Rig::new(false);
        {
            let mut w = rig.watcher(guard()).await;
            w.set_paused(true);
            make_stable(&mut w, "v1").await;
            hold_for(&mut w, "v2", Verdict::Holds, 940).await;
            assert_eq!(w.state(), Some(WatchState::Unhealthy));
        }
        // Restarted: neither watched from the start nor stable.
        let mut w = rig.watcher(guard()).await;
        step(&mut w, "v2", Verdict::Clear).await;
        assert_eq!(w.state(), Some(WatchState::Unhealthy));
        assert_eq!(w.last_stable(), Some("v1"));
        // Clear for less than a watch, then holding again: still unhealthy.
        hold_for(&mut w, "v2", Verdict::Clear, 600).await;
        step(&mut w, "v2", Verdict::Holds).await;
        hold_for(&mut w, "v2", Verdict::Clear, 600).await;
        assert_eq!(w.state(), Some(WatchState::Unhealthy));
        // Clear for a whole watch: it recovered, and becomes stable.
        hold_for(&mut w, "v2", Verdict::Clear, 400).await;
        assert_eq!(w.state(), Some(WatchState::Stable));
        assert_eq!(w.last_stable(), Some("v2"));
        assert_eq!(rig.calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dry_run_records_and_reports_without_calling() {
        let rig = Rig::new(false);
        let mut w = rig
            .watcher(Guard {
                dry_run: true,
                ..guard()
            })
            .await;
        make_stable(&mut w, "v1").await;
        step(&mut w, "v2", Verdict::Clear).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        step(&mut w, "v2", Verdict::Holds).await;
        step(&mut w, "v2", Verdict::Holds).await;
        assert_eq!(rig.calls(), 0);
        assert_eq!(
            rig.store.rollback("v2").await.unwrap().unwrap().status,
            RollbackStatus::DryRun
        );
        let performed = rig
            .told
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.kind == EventKind::RollbackPerformed)
            .count();
        assert_eq!(performed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_call_is_reported_and_not_repeated() {
        let rig = Rig::new(true);
        let mut w = rig.watcher(guard()).await;
        make_stable(&mut w, "v1").await;
        step(&mut w, "v2", Verdict::Clear).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        step(&mut w, "v2", Verdict::Holds).await;
        step(&mut w, "v2", Verdict::Holds).await;
        assert_eq!(rig.calls(), 1);
        assert!(rig.told.kinds().contains(&EventKind::RollbackFailed));
    }

    #[tokio::test(start_paused = true)]
    async fn the_cooldown_holds_back_a_second_rollback() {
        let rig = Rig::new(false);
        let mut w = rig.watcher(guard()).await;
        make_stable(&mut w, "v1").await;
        step(&mut w, "v2", Verdict::Clear).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        step(&mut w, "v2", Verdict::Holds).await;
        assert_eq!(rig.calls(), 1);
        // The platform went back to v1; a v3 goes bad two minutes later.
        step(&mut w, "v1", Verdict::Clear).await;
        step(&mut w, "v3", Verdict::Clear).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        step(&mut w, "v3", Verdict::Holds).await;
        assert_eq!(rig.calls(), 1);
        assert!(rig.told.kinds().contains(&EventKind::RollbackHeld));
        tokio::time::advance(Duration::from_secs(600)).await;
        step(&mut w, "v3", Verdict::Holds).await;
        assert_eq!(rig.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_manual_rollback_of_an_unhealthy_deployment_is_made_once() {
        let rig = Rig::new(false);
        let mut w = rig
            .watcher(Guard {
                cooldown: Duration::from_secs(7200),
                ..guard()
            })
            .await;
        make_stable(&mut w, "v1").await;
        // v2 is rolled back; v3 goes bad within the cooldown and ends its
        // watch unhealthy.
        step(&mut w, "v2", Verdict::Clear).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        step(&mut w, "v2", Verdict::Holds).await;
        step(&mut w, "v1", Verdict::Clear).await;
        hold_for(&mut w, "v3", Verdict::Holds, 940).await;
        assert_eq!(w.state(), Some(WatchState::Unhealthy));
        assert_eq!(rig.calls(), 1);
        // A person rolls it back by hand: the cooldown does not hold that.
        let (tx, rx) = tokio::sync::oneshot::channel();
        w.manual_rollback("v3 is broken", tx).await;
        assert_eq!(rx.await.unwrap().unwrap(), ManualOutcome::Started);
        w.settle_all().await;
        assert_eq!(rig.calls(), 2);
        assert_eq!(w.state(), Some(WatchState::RolledBack));
        let rec = rig.store.rollback("v3").await.unwrap().unwrap();
        assert_eq!(
            (rec.rule.as_str(), rec.status),
            ("manual", RollbackStatus::Succeeded)
        );
        // Asked again: already recorded, no second call.
        let (tx, rx) = tokio::sync::oneshot::channel();
        w.manual_rollback("again", tx).await;
        assert!(matches!(
            rx.await.unwrap().unwrap(),
            ManualOutcome::AlreadyRecorded(_)
        ));
        w.settle_all().await;
        assert_eq!(rig.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_accepted_rollback_that_changes_nothing_is_reported_once() {
        let rig = Rig::new(false);
        let mut w = rig.watcher(guard()).await;
        make_stable(&mut w, "v1").await;
        step(&mut w, "v2", Verdict::Clear).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        step(&mut w, "v2", Verdict::Holds).await;
        tokio::time::advance(Duration::from_secs(301)).await;
        step(&mut w, "v2", Verdict::Holds).await;
        step(&mut w, "v2", Verdict::Holds).await;
        let kinds = rig.told.kinds();
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == EventKind::RollbackNotEffective)
                .count(),
            1
        );
        assert_eq!(rig.calls(), 1);
        assert!(
            rig.store
                .rollback("v2")
                .await
                .unwrap()
                .unwrap()
                .not_effective
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_stable_a_rollback_rule_alerts_instead() {
        let rig = Rig::new(false);
        let mut w = rig.watcher(guard()).await;
        make_stable(&mut w, "v1").await;
        step(&mut w, "v1", Verdict::Holds).await;
        assert_eq!(rig.calls(), 0);
        assert_eq!(rig.told.kinds(), vec![EventKind::Alert]);
        step(&mut w, "v1", Verdict::Clear).await;
        assert_eq!(
            rig.told.kinds(),
            vec![EventKind::Alert, EventKind::Resolved]
        );
    }
}
