//! The fleet side of the watch (`[fleet]`): this replica's verdicts go to
//! the link, the live replicas' come back and are tallied, and when a
//! quorum agrees the replicas that agree try for the lease (`fleet_call`);
//! what the try reports is applied, told and shown (`/status` `fleet`).
//! See ARCHITECTURE.md, "Fleet".

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::fleet_call;
use super::job::FleetEnded;
use super::job::ManualReply;
use super::types::{summarize, to_text, ManualOutcome, RuleStatus};
use super::Watcher;
use crate::evidence::EventKind;
use crate::fleet::link::{Link, Outgoing};
use crate::fleet::{tally, Coordination, FleetConfig, Heartbeat, LossPolicy, Vote};
use crate::rule_config::Action;
use crate::store::writer::Write;
use crate::store::{RollbackRecord, RollbackStatus, WatchState};
use backstop_judge::evidence::Evidence;

/// The fleet side of the watch (`[fleet]`): what this replica published and
/// read last from the coordination store.
pub(super) struct Fleet {
    coord: Arc<dyn Coordination>,
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
    live: Vec<Heartbeat>,
    live_for: Option<String>,
    /// Whether `live` was read in this step.
    fresh: bool,
    /// The fleet's rollback record of `live_for`, as read last.
    record: Option<RollbackRecord>,
    /// Since when each rollback rule has held here, for the quorum message.
    holding_since: std::collections::HashMap<String, Instant>,
}

/// How many heartbeats pass between two reads of the live replicas while
/// none of this replica's rollback rules holds (only for `/status`).
pub const FLEET_READ_EVERY: u64 = 6;

impl Watcher {
    /// Decides with the fleet (`[fleet]`): a rollback rule that holds here
    /// rolls back only when `quorum` of the live replicas agree, and only
    /// the holder of the lease calls the platform.
    pub fn with_fleet(mut self, coord: Arc<dyn Coordination>, cfg: FleetConfig) -> Self {
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

    /// Publishes this replica's verdicts on every heartbeat (and at once
    /// when one changes), and reads the live replicas and the fleet's
    /// record: on every heartbeat while one of this replica's rollback
    /// rules holds, else every `FLEET_READ_EVERY` heartbeats for `/status`.
    pub(super) async fn fleet_step(&mut self, rules: &[RuleStatus], state: WatchState) {
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
                report: Heartbeat {
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
    pub(super) fn fleet_failed(&mut self, e: &anyhow::Error) {
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
            self.tell_agent(
                EventKind::Alert,
                "fleet",
                format!("the fleet's coordination store {shown} is failing; {then}: {message}"),
            );
        } else {
            // Said once at error level; `backstop_fleet_up` says the rest.
            tracing::debug!(coordinator = %shown, error = %message, "the fleet's coordination store is still failing");
        }
    }

    pub(super) fn fleet_ok(&mut self) {
        metrics::gauge!("backstop_fleet_up").set(1.0);
        let f = self.fleet.as_mut().expect("fleet");
        if f.up.replace(true) == Some(false) {
            tracing::info!("the fleet's coordination store works again");
            self.tell_agent(
                EventKind::Resolved,
                "fleet",
                "the fleet's coordination store works again: fleet rollbacks are possible again"
                    .into(),
            );
        }
    }

    /// A rollback rule holds on this replica: the fleet decides. Only on a
    /// fresh read of the live replicas; the replicas that agree try to take
    /// the lease, and only its holder calls the platform.
    pub(super) fn fleet_rollback(&mut self, rule: &str, evidence: Vec<Evidence>) {
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
    pub(super) fn fleet_try(
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
    pub(super) fn fleet_intent(&mut self, rec: RollbackRecord) {
        self.fleet_local_copy(&rec);
        if let Some(f) = self.fleet.as_mut() {
            f.record = Some(rec.clone());
        }
        let shown = self.fleet_view(&[]);
        let mut view = self.view.lock().expect("view lock");
        view.last_rollback = Some(rec);
        view.fleet = shown;
    }

    /// Unless the coordination store keeps the fleet's record in the
    /// agent's store (PostgreSQL, in the store's table), as Redis does not,
    /// it is kept in this agent's store too.
    pub(super) fn fleet_local_copy(&self, rec: &RollbackRecord) {
        if let Some(f) = &self.fleet {
            if !f.coord.keeps_records_in_store() {
                self.writer.write(Write::Rollback(rec.clone()));
            }
        }
    }

    /// A fleet's rollback ended: recorded, shown and told.
    pub(super) fn fleet_ended(&mut self, ended: FleetEnded) {
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
                        self.mark_rolled_back(&rec);
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
                        self.incidents_end(&dep, "was rolled back", &Default::default());
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
    pub(super) fn show_fleet_record(&mut self, rec: RollbackRecord) {
        if rec.status == RollbackStatus::Succeeded
            && self.deployment() == Some(rec.deployment.as_str())
        {
            let now = self.clock.now_ms();
            let mut ended = false;
            if let Some(cur) = self.current.as_mut() {
                if cur.state != WatchState::RolledBack {
                    tracing::info!(deployment = %rec.deployment, by = ?rec.by, "the fleet rolled this deployment back");
                    cur.enter(WatchState::RolledBack, now);
                    super::lone::rolled_back_figures(cur, &rec);
                    ended = true;
                }
            }
            if ended {
                self.incidents_end(&rec.deployment, "was rolled back", &Default::default());
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
    pub(super) fn fleet_view(&self, rules: &[RuleStatus]) -> Option<Value> {
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

    /// A rollback asked for by hand in a fleet: no quorum, but the fleet's
    /// lease, so that no agent takes its intent for one left by a holder
    /// that stopped, and no two calls are made at once. Answered once the
    /// lease is taken (or not).
    pub(super) fn manual_fleet_rollback(
        &mut self,
        dep: &str,
        evidence: Vec<Evidence>,
        reply: ManualReply,
    ) {
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
}
