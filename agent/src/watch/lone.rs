//! The lone agent's side of a rollback, and the lifecycle's transitions:
//! the guard rails and why a rollback is held back, the claim and the call
//! (as a job), what a claim or a call ended with, a manual rollback, the
//! check that an accepted rollback took effect, and a watch that ends
//! `stable` or `unhealthy`.

use std::time::Duration;

use tokio::time::Instant;

use super::job::{self, Done, Ended, ManualReply};
use super::types::{summarize, to_text, Held, ManualOutcome};
use super::Watcher;
use crate::evidence::{EventKind, Reconciled, RollbackDone, RollbackRequest};
use crate::store::writer::Write;
use crate::store::{DeploymentRecord, RollbackRecord, RollbackStatus, WatchState};
use backstop_judge::evidence::Evidence;

/// How old the rollbacks read for the cooldown and the hourly cap may be
/// when an automatic rollback is decided; older, they are read again first.
const RECENT_FRESH: Duration = Duration::from_secs(5);

impl Watcher {
    /// A rollback's claim and call ended: recorded, shown and told.
    pub(super) fn rolled(&mut self, ended: Ended) {
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
    pub(super) fn known(&mut self, rec: RollbackRecord) {
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
    pub(super) fn finish_call(
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
                self.mark_rolled_back(&rec);
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
                self.incidents_end(&dep, "was rolled back", &Default::default());
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
    pub(super) fn resumed(
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
    pub(super) fn mark_rolled_back(&mut self, rec: &RollbackRecord) {
        let now = self.clock.now_ms();
        if let Some(cur) = self.current.as_mut().filter(|c| c.id == rec.deployment) {
            let changed = cur.state != WatchState::RolledBack;
            cur.enter(WatchState::RolledBack, now);
            let cur = cur.clone();
            self.persist(&cur);
            if changed {
                rolled_back_figures(&cur, rec);
            }
        }
    }

    /// The request that carries `rec`'s rollback to the platform.
    pub(super) fn request_for(
        &self,
        rec: &RollbackRecord,
        fencing_token: Option<i64>,
    ) -> RollbackRequest {
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

    /// The deployment turns stable: the baseline and the deployment to
    /// return to from now on.
    pub(super) fn become_stable(&mut self, cur: DeploymentRecord, now: u64) -> String {
        let mut next = cur;
        next.enter(WatchState::Stable, now);
        next.stable_at_ms = Some(now);
        self.persist(&next);
        crate::telemetry::deployment_ended("stable");
        tracing::info!(deployment = %next.id, "watch over: deployment is stable and becomes the baseline");
        let holding = self.firing.iter().cloned().collect();
        self.incidents_end(&next.id, "became stable", &holding);
        self.last_stable = Some(next.id.clone());
        let id = next.id.clone();
        self.current = Some(next);
        id
    }

    /// The watch ended while rollback rule `rule` held and something kept
    /// the rollback back: the deployment is `unhealthy`, never the baseline
    /// nor the deployment to return to, and people are told once, loudly.
    pub(super) fn become_unhealthy(
        &mut self,
        cur: DeploymentRecord,
        rule: String,
        evidence: Vec<Evidence>,
    ) {
        let mut next = cur;
        next.enter(WatchState::Unhealthy, self.clock.now_ms());
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
            judged_by: None,
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

    /// The guard rails: why a rollback of `dep` is held back now, if it is.
    /// People are told once per (rule, reason); `/status` shows it. The
    /// rollbacks recorded for the cooldown and the hourly cap are read
    /// again when they are older than `RECENT_FRESH` (off the watch's
    /// path): until they come, an automatic rollback waits.
    pub(super) fn hold_reason(
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

    /// Reads the rollbacks recorded again once half of `RECENT_FRESH` has
    /// passed, so that they are fresh when a rollback is decided.
    pub(super) fn keep_recent_fresh(&mut self) {
        if self
            .recent_at
            .is_none_or(|t| t.elapsed() >= RECENT_FRESH / 2)
        {
            self.ask_recent();
        }
    }

    /// Reads the rollbacks recorded, unless a read is in flight.
    pub(super) fn ask_recent(&mut self) {
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
    pub(super) fn hold_for_dependency(&mut self, rule: &str, held: &Held, evidence: Vec<Evidence>) {
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
    pub(super) fn new_record(
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
    pub(super) fn try_rollback(
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

    pub(super) fn check_verification(&mut self) {
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
}

/// Deployment `cur` has just been seen rolled back by `rec`: counted, and
/// the time to detect an automatic rollback recorded.
pub(super) fn rolled_back_figures(cur: &DeploymentRecord, rec: &RollbackRecord) {
    crate::telemetry::deployment_ended("rolled_back");
    if rec.rule != "manual" {
        crate::telemetry::detected(cur.first_seen_ms, rec.intent_at_ms);
    }
}
