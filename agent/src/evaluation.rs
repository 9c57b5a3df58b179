//! The rules judged over the probes' windows, and the baselines they
//! leave: which rule is judged on which probe, whether a `depends_on` probe
//! holds a rule's rollback, every rule's verdict after its probe reports,
//! and the baseline each deployment feeds while it is watched and keeps
//! once it turns stable. Reads the probes' state, never the network; the
//! watch loop (`run.rs`) calls it and hands the verdicts to the watch.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::{ProbeConfig, RuleConfig};
use crate::schedule::ProbeSlot;
use crate::store::writer::{Write, Writer};
use crate::watch::RuleStatus;
use backstop_judge::baseline::Baseline;

/// How far back a window reaches at least, whatever the deployment's state:
/// only the probe's rules (and `/status`) read it. The baseline of a watch
/// is fed each sample as it is recorded (`ProbeState::feed`), so no window
/// needs to cover the watch.
pub const SETTLED_SPAN: Duration = Duration::from_secs(60);

/// The rules of one agent, judged over its probes.
pub struct Evaluation {
    pub slots: Vec<Arc<ProbeSlot>>,
    rules: Vec<RuleConfig>,
    settings: backstop_judge::rules::Settings,
    warmup: Duration,
    /// The baseline rules compare with: the last stable deployment's.
    pub baseline: Option<Baseline>,
    /// Counts the changes of `baseline`, so that what shows it (the page)
    /// copies its figures once per baseline.
    pub baseline_generation: u64,
    /// The baseline the store kept for the deployment that turned stable
    /// last, once it answers.
    baseline_kept: Option<oneshot::Receiver<Baseline>>,
    /// The rules that can be judged, as (index in `rules`, index in `slots`).
    plan: Vec<(usize, usize)>,
    /// For each slot, the slots of its `depends_on` probes.
    depends: Vec<Vec<usize>>,
    /// For each slot, whether its `p50_ms` … `p99_ms` are percentiles of
    /// its latency.
    percentiles: Vec<bool>,
    /// The latest status of each rule of `plan`, in its order.
    pub statuses: Vec<RuleStatus>,
    /// `ProbeState::recorded` of each rule's probe when it was last judged.
    seen: Vec<u64>,
    /// Every rule must be judged again (new windows, a new baseline).
    rejudge: bool,
    /// The deployment whose baseline the probes feed (`ProbeState::feed`)
    /// while it warms up or is watched.
    feeding: Option<String>,
    /// With `[fleet]`: what this agent shares with the exchange of the live
    /// baseline (`fleet::live`), and the peers' samples it read.
    live: Option<crate::fleet::live::LiveHandle>,
}

/// How far back a probe's window reaches: far enough for every rule on it,
/// and at least [`SETTLED_SPAN`].
pub fn window_span(
    rules: &[RuleConfig],
    cfg: &ProbeConfig,
    settings: &backstop_judge::rules::Settings,
) -> Duration {
    rules
        .iter()
        .filter(|r| r.probe == cfg.name)
        .filter_map(|r| r.expr.as_ref())
        .map(|e| e.span_needed(settings) + cfg.interval)
        .chain([SETTLED_SPAN])
        .max()
        .unwrap_or(SETTLED_SPAN)
}

impl Evaluation {
    /// The rules over `slots`, judged against `baseline` until a newer one.
    pub fn new(
        slots: Vec<Arc<ProbeSlot>>,
        rules: Vec<RuleConfig>,
        settings: backstop_judge::rules::Settings,
        warmup: Duration,
        baseline: Option<Baseline>,
    ) -> Self {
        Self {
            plan: Self::plan(&rules, &slots),
            depends: Self::depends(&slots),
            percentiles: slots.iter().map(|s| s.cfg.latency_percentiles()).collect(),
            slots,
            rules,
            settings,
            warmup,
            baseline,
            baseline_generation: 0,
            baseline_kept: None,
            statuses: Vec::new(),
            seen: Vec::new(),
            rejudge: true,
            feeding: None,
            live: None,
        }
    }

    /// Starts with `baseline` as the stored baseline.
    pub fn with_baseline(mut self, baseline: Option<Baseline>) -> Self {
        self.baseline = baseline;
        self
    }

    /// Judges `Nx baseline` rules against the live peers the exchange of
    /// `handle` reads (`[fleet]`).
    pub fn with_live(mut self, handle: crate::fleet::live::LiveHandle) -> Self {
        self.live = Some(handle);
        self
    }

    /// Tells the exchange of the live baseline this replica's deployment,
    /// the one to return to, and whether this replica is failing (a
    /// rollback rule holds on a comparison that is not with a baseline, or
    /// a critical probe fails): then its samples are not shared. A
    /// baseline comparison holding on the deployment to return to compares
    /// it with its own older self — the shift every replica shares, which
    /// the live baseline is there to tell apart — and is no sign that this
    /// replica is sick.
    pub fn share_live(&self, current: Option<&str>, return_to: Option<&str>) {
        let Some(handle) = &self.live else { return };
        let failing = self.statuses.iter().any(|s| {
            s.verdict.holds()
                && s.action == crate::config::Action::Rollback
                && s.detail
                    .findings
                    .iter()
                    .any(|f| f.verdict.holds() && !f.comparison.value.is_baseline())
        }) || self.slots.iter().any(|slot| {
            slot.cfg.critical
                && slot
                    .state
                    .lock()
                    .expect("probe state lock")
                    .last
                    .as_ref()
                    .is_some_and(|o| o.outcome == backstop_judge::observe::Outcome::Failed)
        });
        let mut s = handle.lock().expect("live lock");
        s.current = current.map(str::to_string);
        s.return_to = return_to.map(str::to_string);
        s.failing = failing;
    }

    /// The slots that slot `si`'s probe `depends_on`.
    #[cfg(test)]
    pub fn depends_of(&self, si: usize) -> &[usize] {
        &self.depends[si]
    }

    /// Takes the baseline the store kept for the deployment that turned
    /// stable last, once it has answered: the one another agent kept
    /// first, or this one.
    pub fn take_kept_baseline(&mut self) {
        let Some(rx) = self.baseline_kept.as_mut() else {
            return;
        };
        match rx.try_recv() {
            Ok(kept) => {
                if self.baseline.as_ref() != Some(&kept) {
                    self.baseline = Some(kept);
                    self.baseline_generation += 1;
                    self.rejudge = true;
                }
                self.baseline_kept = None;
            }
            Err(oneshot::error::TryRecvError::Empty) => {}
            Err(oneshot::error::TryRecvError::Closed) => self.baseline_kept = None,
        }
    }

    /// Which probe each rule is judged on; a rule without an expression or
    /// whose probe is gone is left out.
    pub fn plan(rules: &[RuleConfig], slots: &[Arc<ProbeSlot>]) -> Vec<(usize, usize)> {
        rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.expr.is_some())
            .filter_map(|(i, r)| Some((i, slots.iter().position(|s| s.cfg.name == r.probe)?)))
            .collect()
    }

    /// For each slot, the slots its probe `depends_on`.
    pub fn depends(slots: &[Arc<ProbeSlot>]) -> Vec<Vec<usize>> {
        slots
            .iter()
            .map(|s| {
                s.cfg
                    .depends_on
                    .iter()
                    .filter_map(|d| slots.iter().position(|o| o.cfg.name == *d))
                    .collect()
            })
            .collect()
    }

    /// Why the rollback rules of slot `si` are held by one of its
    /// `depends_on` probes, if they are: the dependency fails now; or it
    /// has not been checked since this probe's failures began, and is
    /// asked for a check at once (its answer decides who is at fault); or
    /// it failed since this probe's last check started, whose failure may
    /// still be the dependency's.
    pub fn held_by(&self, si: usize) -> Option<crate::watch::Held> {
        use backstop_judge::observe::Outcome;
        let dependent = &self.slots[si];
        let (checked, streak_since) = {
            let state = dependent.state.lock().expect("probe state lock");
            let judged = || {
                state
                    .window
                    .iter()
                    .rev()
                    .filter(|s| s.outcome() != Outcome::Error)
            };
            let checked = judged().next().map(|s| s.at());
            let streak_since = judged()
                .take_while(|s| s.outcome() == Outcome::Failed)
                .last()
                .map(|s| s.at());
            (checked, streak_since)
        };
        self.depends[si].iter().find_map(|&d| {
            let slot = &self.slots[d];
            let (failing, last_checked, last_error, failed_at) = {
                let state = slot.state.lock().expect("probe state lock");
                let failing = state
                    .last
                    .as_ref()
                    .is_some_and(|o| o.outcome == Outcome::Failed);
                // Any check, an `error` one too: it was asked, and answered.
                let last_checked = state.window.back().map(|s| s.at());
                let last_error = state
                    .last
                    .as_ref()
                    .filter(|o| o.outcome == Outcome::Error)
                    .and_then(|o| o.error.clone());
                let failed_at = state
                    .window
                    .iter()
                    .rev()
                    .find(|s| s.outcome() == Outcome::Failed)
                    .map(|s| s.at());
                (failing, last_checked, last_error, failed_at)
            };
            let name = slot.cfg.name.clone();
            if failing {
                return Some(crate::watch::Held::failing(name));
            }
            if let Some(since) = streak_since {
                if last_checked.is_none_or(|c| c < since) {
                    slot.check_soon();
                    return Some(crate::watch::Held::unknown(
                        name,
                        "has not been checked since the failures began; checking it now",
                    ));
                }
                // The dependency's probe cannot run (the agent's own fault):
                // whether it is behind the failures is unknown.
                if let Some(error) = last_error {
                    return Some(crate::watch::Held::unknown(
                        name,
                        &format!("cannot be checked ({error}): whether it is behind the failures is unknown"),
                    ));
                }
            }
            match (failed_at, checked) {
                (Some(f), Some(c)) if c <= f + dependent.cfg.timeout => {
                    Some(crate::watch::Held::unknown(
                        name,
                        "failed during this probe's last check; waiting for its next one",
                    ))
                }
                _ => None,
            }
        })
    }

    /// Every rule's verdict now, each judged under its probe's lock (no copy
    /// of the window is made). A rule is judged again only when its probe
    /// recorded something since, unless `all`: what a window's ageing alone
    /// changes waits for the next `all` (once a second).
    pub fn evaluate(&mut self, all: bool) {
        let now = Instant::now();
        let all = all || std::mem::take(&mut self.rejudge);
        let live = self
            .live
            .as_ref()
            .and_then(|h| h.lock().expect("live lock").live.clone());
        for (k, &(ri, si)) in self.plan.iter().enumerate() {
            let rule = &self.rules[ri];
            let slot = &self.slots[si];
            let Some(expr) = rule.expr.as_ref() else {
                continue;
            };
            let judgement = {
                let state = slot.state.lock().expect("probe state lock");
                if !all && self.seen.get(k) == Some(&state.recorded) {
                    continue;
                }
                match self.seen.get_mut(k) {
                    Some(seen) => *seen = state.recorded,
                    None => self.seen.push(state.recorded),
                }
                backstop_judge::rules::evaluate(
                    expr,
                    &backstop_judge::rules::Input {
                        probe: &rule.probe,
                        state: &state,
                        baseline: self.baseline.as_ref(),
                        live: live.as_deref(),
                        choice: rule.baseline.unwrap_or_default(),
                        interval: slot.cfg.interval,
                        now,
                        latency_percentiles: self.percentiles[si],
                    },
                    &self.settings,
                )
            };
            let verdict = judgement.verdict.clone();
            let held_by = (judgement.verdict.holds()
                && rule.action == crate::config::Action::Rollback)
                .then(|| self.held_by(si))
                .flatten();
            let status = RuleStatus {
                held_by,
                name: rule.name.clone(),
                probe: rule.probe.clone(),
                action: rule.action,
                after_stable: rule.after_stable,
                evidence: backstop_judge::rules::evidence(
                    backstop_judge::rules::RuleRef {
                        name: &rule.name,
                        probe: &rule.probe,
                        when: &rule.when,
                    },
                    &judgement,
                ),
                detail: backstop_judge::rules::Detail {
                    when: rule.when.clone(),
                    default: rule.default,
                    findings: judgement.findings,
                },
                verdict,
            };
            match self.statuses.get_mut(k) {
                Some(kept) => *kept = status,
                None => self.statuses.push(status),
            }
        }
    }

    /// Keeps the probes feeding the baseline of the deployment while it
    /// warms up or is watched: a deployment that starts being watched gets
    /// a feed on every probe (given the samples its windows hold already);
    /// one that is stable or rolled back, or gone, has its feeds dropped.
    /// `watched` is the deployment warming up or watched, if one is, and
    /// `age` how long ago it was first seen.
    pub fn feed_baseline(&mut self, watched: Option<&str>, age: Duration) {
        if watched == self.feeding.as_deref() {
            return;
        }
        let watched = watched.map(str::to_string);
        let since = watched.as_ref().and_then(|_| self.warmup_end(age));
        for slot in &self.slots {
            let mut state = slot.state.lock().expect("probe state lock");
            match &watched {
                Some(id) => {
                    state.start_feed(backstop_judge::baseline::Feed::new(
                        id,
                        &slot.cfg.name,
                        since,
                    ));
                }
                None => state.feed = None,
            }
        }
        self.feeding = watched;
    }

    /// When the warm-up of the current deployment ends (or ended): samples
    /// before it are not part of the baseline. `None` when it ended before
    /// any instant this process can name.
    fn warmup_end(&self, age: Duration) -> Option<Instant> {
        let now = Instant::now();
        match age.checked_sub(self.warmup) {
            Some(watched) => now.checked_sub(watched),
            None => Some(now + (self.warmup - age)),
        }
    }

    /// A new deployment (seen, rolled back to, rolled forward to) starts
    /// with empty windows, no consecutive failures and no last observation:
    /// what the last one did must not be judged against this one, nor fire
    /// on it (after a rollback, the bad one's failures on the one returned
    /// to). Its id is read again as soon as a probe's outcome changes, so
    /// at most the check that made the agent look is not counted, and its
    /// rules are not armed during the warm-up anyway.
    pub fn forget_windows(&mut self) {
        for slot in &self.slots {
            let mut state = slot.state.lock().expect("probe state lock");
            state.window.clear();
            state.consecutive_failures = 0;
            state.last = None;
            state.feed = None;
        }
        self.feeding = None;
        self.rejudge = true;
    }

    /// Finishes the baseline of the deployment that just became stable
    /// from what its probes fed during its watch, and keeps it. A probe
    /// that fed nothing for it (the agent started when the watch was over)
    /// gives what its window holds.
    /// `age` is how long ago the deployment was first seen; the baseline
    /// is kept through `writer`.
    pub fn record_baseline(&mut self, deployment: &str, age: Duration, writer: &Writer) {
        let since = self.warmup_end(age);
        let mut baseline = backstop_judge::baseline::Baseline {
            deployment: deployment.to_string(),
            ..Default::default()
        };
        for slot in &self.slots {
            let mut state = slot.state.lock().expect("probe state lock");
            let feed = match state.feed.take() {
                Some(feed) if feed.deployment() == deployment => *feed,
                _ => {
                    let mut feed =
                        backstop_judge::baseline::Feed::new(deployment, &slot.cfg.name, since);
                    feed.add_all(&state.window);
                    feed
                }
            };
            baseline.probes.extend(feed.finish().probes);
        }
        self.feeding = None;
        // Kept in the store behind the watch; the first one kept for the
        // deployment (perhaps by another agent) is judged against once the
        // store answers, this one until then.
        let (tx, rx) = tokio::sync::oneshot::channel();
        writer.write(Write::Baseline(Box::new(baseline.clone()), Some(tx)));
        self.baseline_kept = Some(rx);
        self.baseline = Some(baseline);
        self.baseline_generation += 1;
        self.rejudge = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_window_reaches_as_far_as_its_rules_need_however_long_the_watch() {
        let config = Config::parse(
            r#"[service]
name = "web"

[deployment]
warmup = "1m"
watch = "2h"

[[probe]]
name = "health"
level = 1
type = "http"
url = "http://127.0.0.1:8080/health"
interval = "10s"

[[probe]]
name = "quiet"
level = 1
type = "http"
url = "http://127.0.0.1:8080/quiet"

[[rule]]
name = "slow health"
probe = "health"
when = "latency_ms > 500 for 5m"
action = "alert"
"#,
            |_| None,
        )
        .unwrap();
        let settings = backstop_judge::rules::Settings::default();
        let span = |i: usize| window_span(&config.rules, &config.probes[i], &settings);
        // Before, a window reached over the whole watch (here 2 h) until the
        // deployment turned stable; now only what the rules need.
        assert_eq!(span(0), Duration::from_secs(5 * 60 + 10));
        assert_eq!(span(1), SETTLED_SPAN);
        assert!(span(0) < config.deployment.watch / 10);
    }
}
