//! What `/status` shows of the watch: [`WatchView`], refreshed on every
//! step, and one [`RuleView`] per rule.

use std::time::Duration;
use tokio::time::Instant;

use super::job::Done;
use super::types::{summarize, RuleStatus, RuleView};
use super::Watcher;
use crate::store::WatchState;
use backstop_judge::rules::Verdict;

/// How often `/status` reads a rollback record of the current deployment
/// that it does not show yet (one recorded before a restart, or by another
/// agent sharing the store).
const ROLLBACK_READ_EVERY: Duration = Duration::from_secs(10);

impl Watcher {
    pub(super) fn refresh_view(&mut self, rules: &[RuleStatus]) {
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
