//! What the watch told that stays open until told over: an alert, a held,
//! failed or ineffective rollback, an unhealthy deployment (a PagerDuty
//! incident, keyed by service, deployment and rule). Each is resolved when
//! its rule no longer holds (in `act`), or when its deployment is rolled
//! back, replaced, or becomes stable with the rule no longer holding.
//!
//! The watch keeps the rules it told of for the current deployment in
//! memory. After a restart it does not know what it told before: for a
//! deployment it resumes, every rule (and `manual`) is unknown until the
//! rule is judged clear (closed) or holding (told again as it goes on);
//! what is still unknown when the deployment ends is closed then. A
//! deployment that was replaced while the agent was down has all of its
//! rules closed. `closed` goes to PagerDuty only, where closing an incident
//! never opened changes nothing.
//!
//! The agent's own trouble (the store, the fleet's coordination store) is
//! not the deployment's: it is told over when it ends, for the deployment
//! it was first told for.

use std::collections::BTreeSet;

use super::types::RuleStatus;
use super::Watcher;
use crate::evidence::{Event, EventKind};
use crate::store::WatchState;
use backstop_judge::rules::Verdict;

/// The rule a manual rollback is recorded (and told) under.
const MANUAL: &str = "manual";

/// What the watch knows of the incidents it opened (see the module's
/// documentation).
#[derive(Debug, Default)]
pub(super) struct Incidents {
    /// Rules told of with an event that opens an incident, for the
    /// current deployment, by this process.
    opened: BTreeSet<String>,
    /// Rules of the current deployment that may have opened an incident
    /// before the agent restarted.
    unknown: BTreeSet<String>,
    /// The current deployment was resumed after a restart: `unknown` is
    /// filled at the next judgement, when the rules' names are known.
    resumed: bool,
    /// Whether the current deployment is the first this process watches
    /// (one seen again later, as the one a rollback returns to, had what
    /// it opened resolved when it ended here).
    first: bool,
    /// Whether a deployment was watched yet.
    started: bool,
    /// The deployment watched before the restart, when another one runs
    /// now: all its rules are closed at the next judgement.
    replaced_while_down: Option<String>,
    /// The agent's own trouble told and not yet over (`store`, `fleet`),
    /// with the deployment it was told for: it is told over for that
    /// deployment, so under the same key, whatever runs by then.
    agent_open: std::collections::BTreeMap<&'static str, String>,
}

impl Incidents {
    /// `previous` is the deployment the store says was current before this
    /// start.
    pub(super) fn new(previous: Option<String>) -> Self {
        Self {
            replaced_while_down: previous,
            ..Self::default()
        }
    }
}

impl Watcher {
    /// Tells people about the current deployment, and remembers the rules
    /// that opened an incident.
    pub(super) fn tell(
        &mut self,
        kind: EventKind,
        rule: Option<String>,
        summary: String,
        evidence: Vec<backstop_judge::evidence::Evidence>,
    ) {
        if let Some(r) = rule.as_ref().filter(|_| kind.opens_incident()) {
            self.incidents.opened.insert(r.clone());
        }
        let dep = self.deployment().unwrap_or("").to_string();
        self.tell_about(kind, &dep, rule, summary, evidence);
    }

    /// Tells people about deployment `dep`, remembering nothing.
    pub(super) fn tell_about(
        &self,
        kind: EventKind,
        dep: &str,
        rule: Option<String>,
        summary: String,
        evidence: Vec<backstop_judge::evidence::Evidence>,
    ) {
        self.notifier.notify(Event {
            kind,
            service: self.service.clone(),
            deployment: dep.to_string(),
            rule,
            summary,
            evidence,
            return_to: self.last_stable.clone(),
        });
    }

    /// Tells people of the agent's own trouble `what` (`store`, `fleet`),
    /// not of the deployment's: its `resolved` names the deployment its
    /// alert named, even when another deployment runs by then.
    pub(super) fn tell_agent(&mut self, kind: EventKind, what: &'static str, summary: String) {
        let current = self.deployment().unwrap_or("").to_string();
        let dep = if kind == EventKind::Resolved {
            self.incidents.agent_open.remove(what).unwrap_or(current)
        } else {
            self.incidents
                .agent_open
                .entry(what)
                .or_insert(current)
                .clone()
        };
        self.tell_about(kind, &dep, Some(what.to_string()), summary, vec![]);
    }

    /// A new deployment is watched from the start: nothing is open for it.
    pub(super) fn incidents_start(&mut self, id: &str) {
        let i = &mut self.incidents;
        i.opened.clear();
        i.unknown.clear();
        i.resumed = false;
        i.first = !i.started;
        i.started = true;
        if i.replaced_while_down.as_deref() == Some(id) {
            i.replaced_while_down = None;
        }
    }

    /// The store knows the deployment seen: when it is the first this
    /// process watches, it was watched before the agent restarted.
    pub(super) fn incidents_resumed(&mut self) {
        self.incidents.resumed = self.incidents.first;
    }

    /// At every judgement: what an earlier start may have opened is closed
    /// once known to be over (its rule judged clear, or its deployment
    /// replaced while the agent was stopped).
    pub(super) fn incidents_judged(&mut self, rules: &[RuleStatus]) {
        if let Some(prev) = self.incidents.replaced_while_down.take() {
            if self.deployment().is_some_and(|d| d != prev) {
                let how = format!(
                    "was replaced by {} while the agent was stopped",
                    self.deployment().unwrap_or("")
                );
                for rule in all_rules(rules) {
                    self.close(&prev, rule, &how);
                }
            }
        }
        if self.settling.is_some() {
            return;
        }
        if std::mem::take(&mut self.incidents.resumed) {
            self.incidents.unknown = all_rules(rules).collect();
        }
        if self.incidents.unknown.is_empty() {
            return;
        }
        let dep = self.deployment().unwrap_or("").to_string();
        let state = self.state();
        if state == Some(WatchState::RolledBack) {
            let how = "was rolled back";
            self.incidents_end(&dep, how, &BTreeSet::new());
            return;
        }
        for r in rules {
            if !self.incidents.unknown.contains(&r.name) {
                continue;
            }
            match r.verdict {
                Verdict::Clear => {
                    self.incidents.unknown.remove(&r.name);
                    self.close(
                        &dep,
                        r.name.clone(),
                        "is running and the rule no longer holds",
                    );
                }
                // Taken as told: resolved once it clears or its
                // deployment ends.
                Verdict::Holds if state != Some(WatchState::Warming) => {
                    self.incidents.unknown.remove(&r.name);
                    self.incidents.opened.insert(r.name.clone());
                }
                Verdict::Holds | Verdict::Inconclusive(_) => {}
            }
        }
    }

    /// A rule told of no longer holds: its `resolved` was told.
    pub(super) fn incident_resolved(&mut self, rule: &str) {
        self.incidents.opened.remove(rule);
        self.incidents.unknown.remove(rule);
    }

    /// Deployment `dep` ended its watch `how` ("was rolled back", "was
    /// replaced by v3", "became stable"): what was told about it is
    /// resolved, except, with `keep`, the rules that still hold (told over
    /// when they clear). Call while `dep` is still the current deployment.
    pub(super) fn incidents_end(&mut self, dep: &str, how: &str, keep: &BTreeSet<String>) {
        if self.deployment() != Some(dep) {
            return;
        }
        let opened: Vec<String> = self
            .incidents
            .opened
            .iter()
            .filter(|r| !keep.contains(*r))
            .cloned()
            .collect();
        for rule in opened {
            self.incidents.opened.remove(&rule);
            self.incidents.unknown.remove(&rule);
            tracing::info!(deployment = %dep, rule = %rule, "{how}: resolving what the rule reported");
            self.tell_about(
                EventKind::Resolved,
                dep,
                Some(rule.clone()),
                format!("{dep} {how}: what rule {rule} reported about it is over"),
                vec![],
            );
        }
        let unknown: Vec<String> = std::mem::take(&mut self.incidents.unknown)
            .into_iter()
            .filter(|r| !keep.contains(r))
            .collect();
        for rule in unknown {
            self.close(dep, rule, how);
        }
    }

    /// Closes, at PagerDuty, what rule `rule` may have opened about `dep`.
    fn close(&self, dep: &str, rule: String, how: &str) {
        tracing::debug!(deployment = %dep, rule = %rule, "closing what the rule may have opened before the agent restarted");
        self.tell_about(
            EventKind::Closed,
            dep,
            Some(rule.clone()),
            format!("{dep} {how}: what rule {rule} may have reported about it is over"),
            vec![],
        );
    }
}

/// Every rule's name, and `manual`.
fn all_rules(rules: &[RuleStatus]) -> impl Iterator<Item = String> + '_ {
    rules
        .iter()
        .map(|r| r.name.clone())
        .chain(std::iter::once(MANUAL.to_string()))
}
