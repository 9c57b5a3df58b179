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
//!
//! This file holds the [`Watcher`] and its step; `lone` the lone agent's
//! guard rails, claim and call and the watch's end, `fleet` the fleet's
//! side (with `fleet_call`, its rollback as a job), `view` what `/status`
//! shows, and `types` what they all share.

mod fleet;
mod fleet_call;
mod incidents;
mod job;
mod lone;
#[cfg(test)]
mod tests;
mod types;
mod view;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::evidence::EventKind;
use crate::rule_config::Action;
use crate::store::writer::{Write, Writer};
use crate::store::{DeploymentRecord, RollbackRecord, RollbackStatus, Store, WatchState};
use backstop_judge::evidence::Evidence;
use backstop_judge::rules::Verdict;
use job::{Done, Jobs};

pub use fleet::FLEET_READ_EVERY;
pub use types::{
    BaselineView, Call, Clock, Guard, Held, ManualOutcome, Notifier, ProbeBands, Rollbacker,
    RuleStatus, RuleView, WatchView,
};

/// How long a step waits for what the store knows of a deployment just
/// seen before going on without it (the read goes on, off its path).
const SETTLE_AT_ONCE: Duration = Duration::from_millis(50);

/// How soon a read the store failed is tried again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The watch of the deployment running now (see the module's
/// documentation).
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
    /// (rule, reason) pairs already told as held for the current deployment
    /// since the rule last cleared (its clearing is told as resolved).
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
    fleet: Option<fleet::Fleet>,
    /// The rules told of that stay open until told over (see `incidents`).
    incidents: incidents::Incidents,
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
        let previous = store.current().await?;
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
            incidents: incidents::Incidents::new(previous),
            view: Arc::new(Mutex::new(WatchView::default())),
        })
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
        if let Some(prev) = self.current.as_ref() {
            let accepted = self.recorded.as_ref().is_some_and(|r| {
                r.deployment == prev.id && r.status == RollbackStatus::Succeeded && !r.not_effective
            });
            if prev.state == WatchState::RolledBack && accepted {
                crate::telemetry::recovered(prev.first_seen_ms, self.clock.now_ms());
            }
        }
        if let Some((bad, _)) = &self.verify_pending {
            if bad != id {
                tracing::info!(from = %bad, to = %id, "rollback took effect: the deployment changed");
                self.verify_pending = None;
            }
        }
        if let Some(old) = self.deployment().map(str::to_string) {
            self.incidents_end(&old, &format!("was replaced by {id}"), &BTreeSet::new());
        }
        self.incidents_start(id);
        self.firing.clear();
        self.held_told.clear();
        self.holding = None;
        self.clear_since_ms = None;
        self.rollback_read_at = None;
        self.recorded = None;
        self.unsure = None;
        self.current = Some(DeploymentRecord::new(id, self.clock.now_ms()));
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
                self.incidents_resumed();
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
            let mut next = cur.clone();
            next.enter(WatchState::Watching, now);
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
    pub async fn act(&mut self, rules: &[RuleStatus]) {
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
        self.incidents_judged(rules);
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
        } else {
            // While a rollback rule holds, the rollbacks the guard rails
            // read are kept fresh ahead of the decision: a fleet decides
            // only on its heartbeat's read, which must not be spent waiting.
            self.keep_recent_fresh();
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
                self.incident_resolved(&r.name);
                // Told over: should it hold again, it is told again.
                self.held_told.retain(|(rule, _)| *rule != r.name);
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

    /// Tells people that the store stopped (or started again) working:
    /// while it fails, no rollback is made.
    pub fn tell_store(&mut self, works: bool, detail: &str) {
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
        self.tell_agent(kind, "store", summary);
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
