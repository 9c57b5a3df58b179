//! `backstop run`: the daemon. Opens the store, builds every probe, starts
//! their loops, the watch loop and the listener, and stops cleanly on
//! SIGTERM or Ctrl-C.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::app::App;
use crate::config::Config;
use crate::deployment::IdSource;
use crate::schedule::{run_probe, ProbeSlot, Wake};
use crate::store::Store;
use crate::telemetry::{self, ProbeMetrics};
use crate::watch::{Clock, ManualOutcome, Notifier, Rollbacker, RuleStatus, Watcher};

/// How far back a window reaches at least, whatever the deployment's state:
/// only the probe's rules (and `/status`) read it. The baseline of a watch
/// is fed each sample as it is recorded (`ProbeState::feed`), so no window
/// needs to cover the watch.
pub const SETTLED_SPAN: Duration = Duration::from_secs(60);

/// The store could not be opened at start: exit code 2, like a bad config.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct UnusableStore(pub anyhow::Error);

/// What the admin API asks of the watch loop.
pub enum Command {
    Rollback {
        reason: String,
        reply: oneshot::Sender<anyhow::Result<ManualOutcome>>,
    },
    Pause(bool, oneshot::Sender<anyhow::Result<()>>),
}

/// Starts the agent and runs it until `stop` turns true. Sends the bound
/// address through `bound` as soon as the listener is up.
pub async fn run(
    mut config: Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    stop: watch::Receiver<bool>,
    bound: Option<oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<()> {
    let store = Arc::new(Store::from_config(&config).await.map_err(UnusableStore)?);
    let listener = TcpListener::bind(config.agent.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.agent.listen))?;
    let addr = listener.local_addr()?;
    telemetry::build_info();
    let epoch = Instant::now();
    let wake = Arc::new(Wake::default());
    let mut tasks = tokio::task::JoinSet::new();
    let mut slots = Vec::new();
    let settings = crate::rules::Settings::default();
    // One HTTP client (and connection pool) per distinct client setting.
    let clients = backstop_probes::Clients::default();
    // Each probe's configuration moves into its slot: the agent keeps one
    // copy of it, not one in the configuration and one in the slot.
    for cfg in std::mem::take(&mut config.probes) {
        let span = window_span(&config.rules, &cfg, &settings);
        let probe = cfg.build_shared(&clients).map_err(|problems| {
            anyhow::anyhow!(
                "probe {}: {}",
                cfg.name,
                problems
                    .iter()
                    .map(|p| format!("{}: {}", p.key, p.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        let m = ProbeMetrics::new(&cfg.name, cfg.level, cfg.type_name());
        let slot = Arc::new(ProbeSlot::new(cfg, span));
        tasks.spawn(run_probe(
            slot.clone(),
            probe,
            m,
            epoch,
            Some(wake.clone()),
            stop.clone(),
        ));
        slots.push(slot);
    }

    // Built once: the watch calls it, and with `from_platform` the id
    // source asks it which deployment is live.
    let built: Option<Arc<crate::rollback::Target>> = match &config.rollback {
        Some(rb) => Some(Arc::new(
            rb.build().context("building the rollback target")?,
        )),
        None => None,
    };
    let target = built.clone().map(|t| t as Arc<dyn Rollbacker>);
    let fixed_id = matches!(
        config.deployment.source,
        crate::config::DeploymentSource::Fixed(_)
    );
    let guard = match &config.rollback {
        Some(rb) => crate::watch::Guard {
            dry_run: rb.dry_run,
            cooldown: rb.cooldown,
            max_per_hour: rb.max_per_hour,
            // With a fixed id the deployment cannot change in this process:
            // the platform replaces it instead, so there is nothing to verify.
            verify: (!fixed_id).then_some(rb.verify),
        },
        None => crate::watch::Guard {
            dry_run: false,
            cooldown: Duration::from_secs(600),
            max_per_hour: 3,
            verify: None,
        },
    };
    let notifier: Arc<dyn Notifier> = Arc::new(crate::notify::Notifiers::build(&config.notify)?);
    let coordinator = match &config.fleet {
        Some(f) => {
            let timeout = config
                .store
                .as_ref()
                .map(|s| s.timeout)
                .unwrap_or(Duration::from_secs(5));
            let c = crate::fleet::Coordinator::connect(f, &store, timeout)
                .await
                .map_err(|e| UnusableStore(e.context("the fleet's coordination store")))?;
            Some((Arc::new(c), f.clone()))
        }
        None => None,
    };
    let mut watcher = Watcher::new(
        config.service.clone(),
        None,
        store.clone(),
        target,
        notifier,
        guard,
        config.deployment.warmup,
        config.deployment.watch,
        Clock::new(),
    )
    .await
    .map_err(UnusableStore)?;
    if let Some((coord, f)) = coordinator {
        tracing::info!(replica = %f.replica, coordinator = %coord.describe(), quorum = f.quorum, "deciding with the fleet");
        watcher = watcher.with_fleet(coord, f);
    }
    let view = watcher.view.clone();
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let ids = IdSource::new(config.deployment.source.clone(), built).map_err(anyhow::Error::msg)?;
    let baseline = match watcher.last_stable() {
        Some(dep) => store.baseline(dep).await.unwrap_or_else(|e| {
            tracing::error!(error = %format!("{e:#}"), "cannot read the baseline; baseline rules stay inconclusive");
            None
        }),
        None => None,
    };
    tasks.spawn(watch_loop(
        Judge {
            watcher,
            ids: Arc::new(ids),
            poll_interval: config.deployment.poll_interval,
            warmup: config.deployment.warmup,
            slots: slots.clone(),
            rules: config.rules.clone(),
            settings,
            baseline,
            baseline_kept: None,
            store_failing: false,
            plan: Judge::plan(&config.rules, &slots),
            depends: Judge::depends(&slots),
            percentiles: slots.iter().map(|s| s.cfg.latency_percentiles()).collect(),
            feeding: None,
            statuses: Vec::new(),
            seen: Vec::new(),
            rejudge: true,
        },
        wake,
        cmd_rx,
        stop.clone(),
    ));

    if let Some(handle) = &metrics {
        tasks.spawn(telemetry::upkeep(handle.clone(), stop.clone()));
    }
    let app = Arc::new(App {
        config,
        slots,
        epoch,
        metrics,
        view: Some(view),
        commands: Some(cmd_tx),
    });
    tracing::info!(
        listen = %addr,
        service = %app.config.service,
        probes = app.slots.len(),
        store = %store.describe(),
        "backstop running"
    );
    if let Some(tx) = bound {
        let _ = tx.send(addr);
    }
    tasks.spawn(crate::server::serve(listener, app.clone(), stop.clone()));
    let mut stopping = stop.clone();
    let drained = async {
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                if e.is_panic() {
                    tracing::error!(error = %e, "an agent task panicked");
                }
            }
        }
    };
    tokio::pin!(drained);
    tokio::select! {
        _ = &mut drained => {}
        _ = async {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("work still in flight {} after the stop signal; ending it", crate::duration::format(SHUTDOWN_GRACE));
        }
    }
    tracing::info!("backstop stopped");
    Ok(())
}

/// The shortest time between two judgements of the rules after probes
/// report: it adds at most this much to the detection time.
pub const JUDGE_GAP: Duration = Duration::from_millis(100);

/// How long in-flight checks and calls get to finish after a stop signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(4000);

impl Rollbacker for crate::rollback::Target {
    fn name(&self) -> &'static str {
        crate::rollback::Target::name(self)
    }

    fn rollback<'a>(
        &'a self,
        req: &'a crate::evidence::RollbackRequest,
    ) -> crate::watch::Call<'a, Result<crate::evidence::RollbackDone, String>> {
        Box::pin(async move {
            crate::rollback::Target::rollback(self, req)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn reconcile<'a>(
        &'a self,
        req: &'a crate::evidence::RollbackRequest,
    ) -> crate::watch::Call<'a, crate::evidence::Reconciled> {
        Box::pin(crate::rollback::Target::reconcile(self, req))
    }
}

impl Notifier for crate::notify::Notifiers {
    fn notify(&self, event: crate::evidence::Event) {
        // Deliveries go on in the background; a failing notifier is logged
        // and counted there, and never holds up the watch.
        drop(self.send(event));
    }
}

/// What the watch loop works with.
struct Judge {
    watcher: Watcher,
    ids: Arc<IdSource>,
    poll_interval: Duration,
    warmup: Duration,
    slots: Vec<Arc<ProbeSlot>>,
    rules: Vec<crate::config::RuleConfig>,
    settings: crate::rules::Settings,
    baseline: Option<crate::baseline::Baseline>,
    /// The baseline the store kept for the deployment that turned stable
    /// last, once it answers.
    baseline_kept: Option<tokio::sync::oneshot::Receiver<crate::baseline::Baseline>>,
    /// Whether the last step failed on the store.
    store_failing: bool,
    /// The rules that can be judged, as (index in `rules`, index in `slots`).
    plan: Vec<(usize, usize)>,
    /// For each slot, the slots of its `depends_on` probes.
    depends: Vec<Vec<usize>>,
    /// For each slot, whether its `p50_ms` … `p99_ms` are percentiles of
    /// its latency.
    percentiles: Vec<bool>,
    /// The latest status of each rule of `plan`, in its order.
    statuses: Vec<RuleStatus>,
    /// `ProbeState::recorded` of each rule's probe when it was last judged.
    seen: Vec<u64>,
    /// Every rule must be judged again (new windows, a new baseline).
    rejudge: bool,
    /// The deployment whose baseline the probes feed (`ProbeState::feed`)
    /// while it warms up or is watched.
    feeding: Option<String>,
}

/// How far back a probe's window reaches: far enough for every rule on it,
/// and at least [`SETTLED_SPAN`].
fn window_span(
    rules: &[crate::config::RuleConfig],
    cfg: &crate::config::ProbeConfig,
    settings: &crate::rules::Settings,
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

impl Judge {
    /// The store failed a step: nothing is rolled back while it fails.
    /// People are told once, when it starts failing; `backstop_store_up`
    /// says so all along.
    fn store_failed(&mut self, message: &str) {
        metrics::gauge!("backstop_store_up").set(0.0);
        if !self.store_failing {
            tracing::error!(error = %message, "store failed; no rollback until it works again");
            self.store_failing = true;
            self.watcher.tell_store(false, message);
        } else {
            tracing::debug!(error = %message, "store still failing");
        }
    }

    fn store_ok(&mut self) {
        metrics::gauge!("backstop_store_up").set(1.0);
        if self.store_failing {
            self.store_failing = false;
            tracing::info!("store works again");
            self.watcher.tell_store(true, "the store works again");
        }
    }

    /// Says whether the store answers, from what the watch saw of it last.
    fn check_store(&mut self) {
        match self.watcher.store_trouble() {
            Some(e) => self.store_failed(&e),
            None => self.store_ok(),
        }
    }

    /// Which probe each rule is judged on; a rule without an expression or
    /// whose probe is gone is left out.
    fn plan(rules: &[crate::config::RuleConfig], slots: &[Arc<ProbeSlot>]) -> Vec<(usize, usize)> {
        rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.expr.is_some())
            .filter_map(|(i, r)| Some((i, slots.iter().position(|s| s.cfg.name == r.probe)?)))
            .collect()
    }

    /// For each slot, the slots its probe `depends_on`.
    fn depends(slots: &[Arc<ProbeSlot>]) -> Vec<Vec<usize>> {
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
    fn held_by(&self, si: usize) -> Option<crate::watch::Held> {
        use crate::observe::Outcome;
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
    fn evaluate(&mut self, all: bool) {
        let now = Instant::now();
        let all = all || std::mem::take(&mut self.rejudge);
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
                crate::rules::evaluate(
                    expr,
                    &crate::rules::Input {
                        probe: &rule.probe,
                        state: &state,
                        baseline: self.baseline.as_ref(),
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
                evidence: crate::rules::evidence(rule, &judgement),
                detail: crate::rules::Detail {
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

    /// Takes note of the deployment running now; a new one (seen, rolled
    /// back to, rolled forward to) starts afresh.
    async fn observe(&mut self, id: &str) {
        let before = self.watcher.deployment().map(str::to_string);
        self.watcher.observe_deployment(id).await;
        if before.is_some_and(|b| b != id) {
            self.forget_windows();
        }
    }

    /// The id read has come: the deployment running now, or why it could
    /// not be read (logged once while it says the same; the last one is
    /// kept).
    async fn take_id(
        &mut self,
        read: Result<Result<String, String>, tokio::task::JoinError>,
        id_error: &mut Option<String>,
    ) {
        match read.unwrap_or_else(|e| Err(format!("the read of the id failed: {e}"))) {
            Ok(id) => {
                if id_error.take().is_some() {
                    tracing::info!("deployment id readable again");
                }
                self.observe(&id).await;
            }
            Err(e) => {
                if id_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(error = %e, "cannot read the deployment id; keeping the last one");
                    *id_error = Some(e);
                }
            }
        }
    }

    /// Moves the watch along: a deployment that turns stable gets its
    /// baseline, and the probes feed the one being watched.
    fn advance(&mut self) {
        if let Ok(kept) = self.baseline_kept.as_mut().map_or(
            Err(tokio::sync::oneshot::error::TryRecvError::Empty),
            |rx| rx.try_recv(),
        ) {
            // The one another agent kept first, or this one.
            if self.baseline.as_ref() != Some(&kept) {
                self.baseline = Some(kept);
                self.rejudge = true;
            }
            self.baseline_kept = None;
        }
        if let Some(stable) = self.watcher.advance() {
            self.record_baseline(&stable);
        }
        self.feed_baseline();
    }

    /// Keeps the probes feeding the baseline of the deployment while it
    /// warms up or is watched: a deployment that starts being watched gets
    /// a feed on every probe (given the samples its windows hold already);
    /// one that is stable or rolled back, or gone, has its feeds dropped.
    fn feed_baseline(&mut self) {
        use crate::store::WatchState;
        let watched = match (self.watcher.deployment(), self.watcher.state()) {
            (Some(id), Some(WatchState::Warming | WatchState::Watching)) => Some(id),
            _ => None,
        };
        if watched == self.feeding.as_deref() {
            return;
        }
        let watched = watched.map(str::to_string);
        let since = watched.as_ref().and_then(|_| self.warmup_end());
        for slot in &self.slots {
            let mut state = slot.state.lock().expect("probe state lock");
            match &watched {
                Some(id) => {
                    state.start_feed(crate::baseline::Feed::new(id, &slot.cfg.name, since));
                }
                None => state.feed = None,
            }
        }
        self.feeding = watched;
    }

    /// When the warm-up of the current deployment ends (or ended): samples
    /// before it are not part of the baseline. `None` when it ended before
    /// any instant this process can name.
    fn warmup_end(&self) -> Option<Instant> {
        let age = Duration::from_millis(self.watcher.age_ms());
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
    fn forget_windows(&mut self) {
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
    fn record_baseline(&mut self, deployment: &str) {
        let since = self.warmup_end();
        let mut baseline = crate::baseline::Baseline {
            deployment: deployment.to_string(),
            ..Default::default()
        };
        for slot in &self.slots {
            let mut state = slot.state.lock().expect("probe state lock");
            let feed = match state.feed.take() {
                Some(feed) if feed.deployment() == deployment => *feed,
                _ => {
                    let mut feed = crate::baseline::Feed::new(deployment, &slot.cfg.name, since);
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
        self.watcher
            .writer()
            .write(crate::store::writer::Write::Baseline(
                Box::new(baseline.clone()),
                Some(tx),
            ));
        self.baseline_kept = Some(rx);
        self.baseline = Some(baseline);
        self.rejudge = true;
    }
}

/// Polls the deployment id, moves the watch along, judges the rules after
/// every observation (and at least once a second), and serves the admin
/// commands. A failure of its own (the store, the id source) is logged and
/// never acted on.
async fn watch_loop(
    mut judge: Judge,
    wake: Arc<Wake>,
    mut commands: mpsc::Receiver<Command>,
    mut stop: watch::Receiver<bool>,
) {
    // Often enough for the fleet's heartbeat, when there is one.
    let period = judge
        .watcher
        .fleet_heartbeat()
        .map_or(Duration::from_secs(1), |h| h.min(Duration::from_secs(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_poll = Instant::now();
    let mut last_read: Option<Instant> = None;
    // A changed outcome reads the id at once, but a platform's API no more
    // than ten times per poll interval.
    let change_gap = judge.poll_interval / 10;
    let first_gap = judge.poll_interval.min(Duration::from_secs(1));
    let mut id_error: Option<String> = None;
    let mut last_judged = Instant::now();
    // A job of the watch (a read of the store, a rollback's claim or call)
    // has its result ready.
    let done = judge.watcher.wake();
    // The id is read by a task of its own, so a slow source (a platform's
    // API) never holds the watch; after a changed outcome, the rules are
    // not judged until it is known which deployment caused it.
    let mut reading: Option<tokio::task::JoinHandle<Result<String, String>>> = None;
    let mut after_change = false;
    loop {
        // Once a second every rule is judged; after probes report, only
        // theirs.
        let all = tokio::select! {
            _ = tick.tick() => true,
            _ = wake.notified() => {
                // Many probes report every second: judge their news together,
                // at most once per JUDGE_GAP, instead of once per check.
                let due = last_judged + JUDGE_GAP;
                if Instant::now() < due {
                    tokio::time::sleep_until(due).await;
                }
                false
            }
            _ = done.notified() => false,
            read = async { reading.as_mut().expect("a read in flight").await }, if reading.is_some() => {
                reading = None;
                after_change = false;
                judge.take_id(read, &mut id_error).await;
                true
            }
            Some(cmd) = commands.recv() => {
                match cmd {
                    Command::Rollback { reason, reply } => {
                        judge.watcher.manual_rollback(&reason, reply).await;
                    }
                    Command::Pause(paused, reply) => {
                        judge.watcher.set_paused(paused);
                        let _ = reply.send(Ok(()));
                    }
                }
                continue;
            }
            _ = stop.changed() => {
                if let Some(r) = reading.take() {
                    r.abort();
                }
                judge.watcher.leave_fleet().await;
                let left = judge.watcher.stop(STOP_WAIT).await;
                if left > 0 {
                    tracing::warn!(writes = left, "the store did not take every write before the stop; they are lost");
                }
                return;
            }
        };
        let changed = wake.take_changed();
        let now = Instant::now();
        let soon = changed && last_read.is_none_or(|t| now >= t + change_gap);
        // The tick that comes for the poll may come a hair before it.
        let due = now + Duration::from_millis(50) >= next_poll;
        // No deployment known yet (its source failing at start): asked
        // once a second at most, never at every probe's check.
        let unknown =
            judge.watcher.deployment().is_none() && last_read.is_none_or(|t| now >= t + first_gap);
        if (due || soon || unknown) && reading.is_none() {
            next_poll = now + judge.poll_interval;
            last_read = Some(now);
            after_change = soon;
            let ids = judge.ids.clone();
            let mut read = tokio::spawn(async move { ids.current().await });
            // Most sources answer at once: taken in this step, so the
            // observation that made the agent look is charged to the
            // deployment that caused it.
            match tokio::time::timeout(ID_AT_ONCE, &mut read).await {
                Ok(r) => {
                    after_change = false;
                    judge.take_id(r, &mut id_error).await;
                }
                Err(_) => reading = Some(read),
            }
        }
        judge.advance();
        if !after_change {
            last_judged = Instant::now();
            judge.evaluate(all);
            judge.watcher.act(&judge.statuses).await;
        }
        judge.check_store();
    }
}

/// How long a step waits for the deployment id before going on without
/// it (the read goes on, off the watch's path).
const ID_AT_ONCE: Duration = Duration::from_millis(50);

/// How long a stop waits for a rollback's call in flight and for the
/// store to take the watch's last writes (within `SHUTDOWN_GRACE`).
const STOP_WAIT: Duration = Duration::from_millis(3500);

/// Runs the daemon from a configuration file until SIGTERM or Ctrl-C. On
/// SIGHUP the file is read again: a valid one replaces the running
/// configuration (the agent restarts its loops; the store keeps its state),
/// a bad one is logged and the running configuration stays.
pub async fn run_with_signals(
    path: std::path::PathBuf,
    mut config: Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Moved, not copied: a reload brings a new one.
        let mut running = tokio::spawn(run(config, metrics.clone(), stop_rx, None));
        let next = loop {
            tokio::select! {
                r = &mut running => return r.context("the agent task failed")?,
                _ = term.recv() => {
                    tracing::info!("SIGTERM received, stopping");
                    break None;
                }
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("interrupt received, stopping");
                    break None;
                }
                _ = hup.recv() => match Config::load_file(&path) {
                    Ok(new) => {
                        tracing::info!(config = %path.display(), "SIGHUP: configuration reloaded, restarting the loops");
                        break Some(new);
                    }
                    Err(e) => tracing::error!(config = %path.display(), error = %e, "SIGHUP: the new configuration is rejected; the running one stays"),
                },
            }
        };
        let _ = stop_tx.send(true);
        running.await.context("the agent task failed")??;
        match next {
            Some(new) => config = new,
            None => return Ok(()),
        }
    }
}

/// A lock helper for views shared with the HTTP server.
pub fn read<T: Clone>(m: &Mutex<T>) -> T {
    m.lock().expect("view lock").clone()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let settings = crate::rules::Settings::default();
        let span = |i: usize| window_span(&config.rules, &config.probes[i], &settings);
        // Before, a window reached over the whole watch (here 2 h) until the
        // deployment turned stable; now only what the rules need.
        assert_eq!(span(0), Duration::from_secs(5 * 60 + 10));
        assert_eq!(span(1), SETTLED_SPAN);
        assert!(span(0) < config.deployment.watch / 10);
    }

    struct Quiet;

    impl Notifier for Quiet {
        fn notify(&self, _: crate::evidence::Event) {}
    }

    /// A platform whose rollbacks succeed.
    struct Platform;

    impl Rollbacker for Platform {
        fn name(&self) -> &'static str {
            "webhook"
        }
        fn rollback<'a>(
            &'a self,
            req: &'a crate::evidence::RollbackRequest,
        ) -> crate::watch::Call<'a, Result<crate::evidence::RollbackDone, String>> {
            Box::pin(async move {
                Ok(crate::evidence::RollbackDone {
                    returned_to: req.return_to.clone(),
                    detail: "accepted".into(),
                })
            })
        }
        fn reconcile<'a>(
            &'a self,
            _: &'a crate::evidence::RollbackRequest,
        ) -> crate::watch::Call<'a, crate::evidence::Reconciled> {
            Box::pin(async { crate::evidence::Reconciled::Unknown("not asked".into()) })
        }
    }

    /// A judge of one `http` probe checked every second (its samples are
    /// recorded by the test), warm-up 30 s, watch 15 min, no rules.
    async fn judge(store: Arc<Store>) -> Judge {
        let config = Config::parse(
            r#"[service]
name = "web"

[deployment]
warmup = "30s"
watch = "15m"

[[probe]]
name = "health"
level = 1
type = "http"
url = "http://127.0.0.1:8080/health"
interval = "1s"
"#,
            |_| None,
        )
        .unwrap();
        let settings = crate::rules::Settings::default();
        let span = window_span(&config.rules, &config.probes[0], &settings);
        let slots = vec![Arc::new(ProbeSlot::new(config.probes[0].clone(), span))];
        let watcher = Watcher::new(
            "web".into(),
            None,
            store.clone(),
            Some(Arc::new(Platform)),
            Arc::new(Quiet),
            crate::watch::Guard {
                dry_run: false,
                cooldown: Duration::from_secs(600),
                max_per_hour: 3,
                verify: None,
            },
            config.deployment.warmup,
            config.deployment.watch,
            Clock::new(),
        )
        .await
        .unwrap();
        Judge {
            watcher,
            ids: Arc::new(IdSource::new(config.deployment.source.clone(), None).unwrap()),
            poll_interval: config.deployment.poll_interval,
            warmup: config.deployment.warmup,
            plan: Judge::plan(&config.rules, &slots),
            depends: Judge::depends(&slots),
            percentiles: slots.iter().map(|s| s.cfg.latency_percentiles()).collect(),
            slots,
            rules: config.rules.clone(),
            settings,
            baseline: None,
            baseline_kept: None,
            store_failing: false,
            feeding: None,
            statuses: Vec::new(),
            seen: Vec::new(),
            rejudge: true,
        }
    }

    /// One check, one second later: recorded, then the watch moves on.
    async fn tick(judge: &mut Judge, latency_ms: f64) -> Instant {
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        let obs = crate::observe::Observation::from_result(
            Ok(backstop_probes::Report::new().with("latency_ms", latency_ms)),
            Duration::from_millis(1),
            None,
        );
        judge.slots[0].state.lock().unwrap().record(obs, now);
        judge.advance();
        judge.watcher.settle_all().await;
        judge.advance();
        now
    }

    fn window_len(judge: &Judge) -> usize {
        judge.slots[0].state.lock().unwrap().window.len()
    }

    /// Checks at `latency_ms` until the watched deployment turns stable;
    /// its baseline counts every check from the warm-up's end (30 s).
    async fn watch_to_stable(judge: &mut Judge, deployment: &str, latency_ms: f64) {
        use crate::store::WatchState;
        let start = Instant::now();
        let mut counted = 0u64;
        while judge.watcher.state() != Some(WatchState::Stable) {
            let at = tick(judge, latency_ms).await;
            if at >= start + Duration::from_secs(30) {
                counted += 1;
            }
        }
        let b = judge.baseline.clone().expect("a baseline");
        assert_eq!(b.deployment, deployment);
        let latency = b.signal("health", "latency_ms").unwrap();
        assert_eq!(latency.summary.count, counted);
        assert_eq!(latency.summary.max, latency_ms);
    }

    fn feeding(judge: &Judge) -> Option<String> {
        let state = judge.slots[0].state.lock().unwrap();
        state.feed.as_ref().map(|f| f.deployment().to_string())
    }

    fn fail(judge: &Judge) {
        let obs = crate::observe::Observation::from_result(
            Err(backstop_probes::ProbeError::unhealthy("status 503")),
            Duration::from_millis(1),
            None,
        );
        judge.slots[0]
            .state
            .lock()
            .unwrap()
            .record(obs, Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deployment_returned_to_by_a_rollback_keeps_nothing_of_the_bad_ones_failures() {
        let dir = tempfile::tempdir().unwrap();
        let mut judge = judge(Arc::new(Store::open(dir.path()).unwrap())).await;
        judge.observe("v1").await;
        judge.watcher.settle_all().await;
        for _ in 0..3 {
            tick(&mut judge, 5.0).await;
        }
        judge.observe("v2").await;
        judge.watcher.settle_all().await;
        for _ in 0..5 {
            tokio::time::advance(Duration::from_millis(250)).await;
            fail(&judge);
        }
        assert_eq!(judge.slots[0].state.lock().unwrap().consecutive_failures, 5);
        // v2 is rolled back and v1 returns: none of v2's failures are v1's.
        judge.observe("v1").await;
        judge.watcher.settle_all().await;
        let state = judge.slots[0].state.lock().unwrap();
        assert!(state.window.is_empty());
        assert_eq!(state.consecutive_failures, 0);
        assert!(state.last.is_none(), "nothing observed of v1 yet");
    }

    /// Two probes checked by the test: `health`, which `depends_on` `db`.
    fn dependent_slots() -> (Vec<Arc<ProbeSlot>>, Vec<Vec<usize>>) {
        let config = Config::parse(
            r#"[service]
name = "web"

[[probe]]
name = "db"
level = 2
type = "tcp"
address = "127.0.0.1:5432"
interval = "5s"

[[probe]]
name = "health"
level = 1
type = "http"
url = "http://127.0.0.1:8080/health"
interval = "1s"
timeout = "500ms"
depends_on = ["db"]
"#,
            |_| None,
        )
        .unwrap();
        let slots: Vec<_> = config
            .probes
            .iter()
            .map(|p| Arc::new(ProbeSlot::new(p.clone(), SETTLED_SPAN)))
            .collect();
        let depends = Judge::depends(&slots);
        (slots, depends)
    }

    fn check(slot: &ProbeSlot, up: bool) {
        let result = if up {
            Ok(backstop_probes::Report::new().with("latency_ms", 1.0))
        } else {
            Err(backstop_probes::ProbeError::unhealthy("down"))
        };
        let obs = crate::observe::Observation::from_result(result, Duration::from_millis(1), None);
        slot.state.lock().unwrap().record(obs, Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dependency_holds_the_rules_while_it_fails_or_until_it_is_checked_again() {
        let (slots, depends) = dependent_slots();
        let dir = tempfile::tempdir().unwrap();
        let judge = judge(Arc::new(Store::open(dir.path()).unwrap())).await;
        let judge = Judge {
            percentiles: vec![true; slots.len()],
            slots: slots.clone(),
            depends,
            ..judge
        };
        let (db, health) = (&slots[0], &slots[1]);
        check(db, true);
        tokio::time::advance(Duration::from_secs(1)).await;
        check(health, true);
        assert_eq!(judge.held_by(1), None, "nothing fails");
        assert_eq!(judge.held_by(0), None, "db depends on nothing");

        // health fails after db's last check: db is asked at once, and the
        // rules wait for its answer.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(1)).await;
            check(health, false);
        }
        let held = judge.held_by(1).expect("held until db is checked");
        assert!(!held.failing);
        assert!(held.why.contains("checking it now"), "{}", held.why);
        // db answers that it fails: an outage, not the deployment.
        tokio::time::advance(Duration::from_millis(10)).await;
        check(db, false);
        let held = judge.held_by(1).expect("db fails");
        assert!(held.failing);
        assert_eq!(held.dependency, "db");

        // db recovers; health's failures still date from db's outage until
        // health is checked again after it.
        tokio::time::advance(Duration::from_millis(100)).await;
        check(db, true);
        let held = judge.held_by(1).expect("health not checked since");
        assert!(!held.failing);
        assert!(
            held.why.contains("waiting for its next one"),
            "{}",
            held.why
        );
        // health still fails with db fine: now it is the deployment.
        tokio::time::advance(Duration::from_secs(1)).await;
        check(health, false);
        assert_eq!(judge.held_by(1), None);

        // db's own probe cannot run (the agent's fault): whether db is
        // behind health's failures is unknown, and the rules wait.
        tokio::time::advance(Duration::from_secs(1)).await;
        let obs = crate::observe::Observation::from_result(
            Err(backstop_probes::ProbeError::cannot_run(
                "password authentication failed",
            )),
            Duration::from_millis(1),
            None,
        );
        db.state.lock().unwrap().record(obs, Instant::now());
        let held = judge.held_by(1).expect("db cannot be checked");
        assert!(!held.failing);
        assert!(held.why.contains("cannot be checked"), "{}", held.why);
    }

    #[tokio::test(start_paused = true)]
    async fn the_baseline_covers_the_whole_watch_while_windows_stay_short() {
        use crate::store::WatchState;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut judge = judge(store.clone()).await;
        // Checks before the deployment id is read are in the window, and
        // before the warm-up's end, so not in the baseline.
        for _ in 0..3 {
            tick(&mut judge, 1000.0).await;
        }
        judge.observe("v1").await;
        judge.watcher.settle_all().await;
        judge.advance();
        judge.watcher.settle_all().await;
        judge.advance();
        let start = Instant::now();
        assert_eq!(feeding(&judge).as_deref(), Some("v1"));

        let mut longest = 0;
        let mut counted = 0u64;
        let mut values = Vec::new();
        while judge.watcher.state() != Some(WatchState::Stable) {
            let latency = (values.len() % 50) as f64;
            let at = tick(&mut judge, latency).await;
            if at >= start + Duration::from_secs(30) {
                counted += 1;
                values.push(latency);
            }
            longest = longest.max(window_len(&judge));
        }
        let b = judge.baseline.clone().expect("a baseline for v1");
        assert_eq!(b.deployment, "v1");
        let latency = b.signal("health", "latency_ms").unwrap();
        // Every check from the warm-up's end to the last, none before.
        assert!(counted > 850, "{counted}");
        assert_eq!(latency.summary.count, counted);
        assert_eq!(latency.summary.max, 49.0);
        assert_eq!(latency.summary.min, 0.0);
        assert_eq!(
            latency.summary.mean,
            values.iter().sum::<f64>() / counted as f64
        );
        assert_eq!(store.baseline("v1").await.unwrap(), Some(b));
        // A minute and a check, never the 15-minute watch.
        assert!(longest <= 62, "{longest}");
        assert_eq!(feeding(&judge), None);

        // A new deployment feeds its own baseline from nothing; v2 is
        // replaced by v3 mid-watch, and v3's baseline holds nothing of v2's.
        judge.observe("v2").await;
        judge.watcher.settle_all().await;
        judge.advance();
        judge.watcher.settle_all().await;
        judge.advance();
        assert_eq!(feeding(&judge).as_deref(), Some("v2"));
        for _ in 0..100 {
            tick(&mut judge, 5000.0).await;
        }
        judge.observe("v3").await;
        judge.watcher.settle_all().await;
        judge.advance();
        judge.watcher.settle_all().await;
        judge.advance();
        assert_eq!(feeding(&judge).as_deref(), Some("v3"));
        watch_to_stable(&mut judge, "v3", 7.0).await;

        // A deployment rolled back mid-watch drops its feed: no baseline of
        // it is kept, and the next one starts from nothing.
        judge.observe("v4").await;
        judge.watcher.settle_all().await;
        judge.advance();
        judge.watcher.settle_all().await;
        judge.advance();
        for _ in 0..100 {
            tick(&mut judge, 9000.0).await;
        }
        assert_eq!(feeding(&judge).as_deref(), Some("v4"));
        let (tx, rx) = tokio::sync::oneshot::channel();
        judge.watcher.manual_rollback("test", tx).await;
        let outcome = rx.await.unwrap().unwrap();
        assert!(matches!(outcome, ManualOutcome::Started), "{outcome:?}");
        judge.watcher.settle_all().await;
        assert_eq!(judge.watcher.state(), Some(WatchState::RolledBack));
        tick(&mut judge, 9000.0).await;
        assert_eq!(feeding(&judge), None);
        assert_eq!(store.baseline("v4").await.unwrap(), None);
        judge.observe("v5").await;
        judge.watcher.settle_all().await;
        judge.advance();
        judge.watcher.settle_all().await;
        judge.advance();
        watch_to_stable(&mut judge, "v5", 8.0).await;
    }
}
