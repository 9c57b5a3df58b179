//! `backstop run`: the daemon. Opens the store, builds every probe, starts
//! their loops, the watch loop and the listener, and stops cleanly on
//! SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::app::{App, Command, Registered};
use crate::config::Config;
use crate::deployment::{DeploymentSource, IdSource};
use crate::evaluation::{window_span, Evaluation};
use crate::schedule::{run_probe, ProbeSlot, Wake};
use crate::store::writer::Write;
use crate::store::{DeploymentMeta, Retention, Store};
use crate::telemetry::{self, ProbeMetrics};
use crate::watch::{Clock, Notifier, Rollbacker, Watcher};

/// The store could not be opened at start: exit code 2, like a bad config.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct UnusableStore(pub anyhow::Error);

/// Starts the agent and runs it until `stop` turns true. Sends the bound
/// address through `bound` as soon as the listener is up.
pub async fn run(
    mut config: Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    stop: watch::Receiver<bool>,
    bound: Option<oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<()> {
    let state_dir = &config.agent.state_dir;
    let store = Store::from_config(config.store.as_ref(), &config.service, state_dir);
    let store = Arc::new(store.await.map_err(UnusableStore)?);
    let listener = TcpListener::bind(config.agent.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.agent.listen))?;
    let addr = listener.local_addr()?;
    telemetry::build_info();
    let epoch = Instant::now();
    let wake = Arc::new(Wake::default());
    let mut tasks = tokio::task::JoinSet::new();
    let mut slots = Vec::new();
    let settings = backstop_judge::rules::Settings {
        live_min_peers: config
            .fleet
            .as_ref()
            .map_or(2, |f| f.live_baseline_min_peers),
        ..Default::default()
    };
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
    let fixed_id = matches!(config.deployment.source, DeploymentSource::Fixed(_));
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
    let mut eval = Evaluation::new(
        slots.clone(),
        config.rules.clone(),
        settings.clone(),
        config.deployment.warmup,
        None,
    );
    if let Some((coord, f)) = coordinator {
        tracing::info!(replica = %f.replica, coordinator = %coord.describe(), quorum = f.quorum, "deciding with the fleet");
        let exchange = crate::fleet::live::Exchange {
            coord: coord.clone(),
            service: config.service.clone(),
            cfg: f.clone(),
            signals: crate::fleet::live::signals_to_share(&config.rules, &slots),
            span: crate::fleet::live::span_to_share(&config.rules, &settings),
            slots: slots.clone(),
            shared: Default::default(),
        };
        eval = eval.with_live(exchange.shared.clone());
        tasks.spawn(exchange.run(stop.clone()));
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
    let retention = config.agent.retention;
    watcher.writer().write(Write::Prune(retention));
    tasks.spawn(watch_loop(
        WatchLoop {
            watcher,
            ids: Arc::new(ids),
            poll_interval: config.deployment.poll_interval,
            eval: eval.with_baseline(baseline),
            store_failing: false,
            retention,
            pushed: None,
            source_said: None,
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
        store: Some(Arc::downgrade(&store)),
        current_meta: Default::default(),
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

/// What the watch loop works with: the watch, where the deployment id
/// comes from, and the rules' evaluation.
struct WatchLoop {
    watcher: Watcher,
    ids: Arc<IdSource>,
    poll_interval: Duration,
    eval: Evaluation,
    /// Whether the last step failed on the store.
    store_failing: bool,
    /// How much of the ledger the store keeps; pruned at start and on
    /// each new deployment.
    retention: Retention,
    /// A deployment a pipeline registered (`POST /v1/deployments`) and
    /// whose watch it started, until the id source reports a new one.
    pushed: Option<String>,
    /// What the id source reported last.
    source_said: Option<String>,
}

impl WatchLoop {
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

    /// Takes note of the deployment running now; a new one (seen, rolled
    /// back to, rolled forward to) starts afresh.
    async fn observe(&mut self, id: &str) {
        let before = self.watcher.deployment().map(str::to_string);
        self.watcher.observe_deployment(id).await;
        if before.as_deref().is_some_and(|b| b != id) {
            self.eval.forget_windows();
        }
        if before.as_deref() != Some(id) {
            self.watcher.writer().write(Write::Prune(self.retention));
        }
    }

    /// A pipeline registered a deployment: its metadata is stored, and an
    /// id never seen that is not the current one is watched at once. The
    /// id source still decides what runs: once it reports a deployment
    /// other than the one it reported before, that one is watched.
    async fn register(&mut self, meta: DeploymentMeta, seen: bool) -> Registered {
        let id = meta.id.clone();
        self.watcher.writer().write(Write::Meta(Box::new(meta)));
        if self.watcher.deployment() == Some(id.as_str()) {
            return Registered::Current;
        }
        if seen {
            return Registered::Known;
        }
        tracing::info!(deployment = %id, "deployment registered by a pipeline: watching it now");
        self.pushed = Some(id.clone());
        self.observe(&id).await;
        Registered::Started
    }

    /// The id source reported `id`: the deployment running now, unless a
    /// registered deployment is watched and the source still reports what
    /// it reported before the registration (it has not seen the switch yet).
    async fn reported(&mut self, id: &str) {
        let changed = self.source_said.as_deref() != Some(id);
        if changed {
            self.source_said = Some(id.to_string());
        }
        if self.pushed.is_some() {
            if !changed {
                return;
            }
            self.pushed = None;
        }
        self.observe(id).await;
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
                self.reported(&id).await;
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
        use crate::store::WatchState;
        self.eval.take_kept_baseline();
        let age = Duration::from_millis(self.watcher.age_ms());
        if let Some(stable) = self.watcher.advance() {
            self.eval
                .record_baseline(&stable, age, self.watcher.writer());
        }
        let watched = match (self.watcher.deployment(), self.watcher.state()) {
            (Some(id), Some(WatchState::Warming | WatchState::Watching)) => Some(id),
            _ => None,
        };
        let age = Duration::from_millis(self.watcher.age_ms());
        self.eval.feed_baseline(watched, age);
        self.show_baseline();
    }

    /// Gives the page the figures of the baseline the rules compare with,
    /// once per baseline.
    fn show_baseline(&self) {
        let generation = self.eval.baseline_generation;
        let mut view = self.watcher.view.lock().expect("view lock");
        let shown = view.baseline.as_ref().map(|b| b.generation);
        match &self.eval.baseline {
            Some(b) if shown != Some(generation) => {
                view.baseline = Some(Arc::new(crate::watch::BaselineView::new(generation, b)));
            }
            None if shown.is_some() => view.baseline = None,
            _ => {}
        }
    }
}

/// Polls the deployment id, moves the watch along, judges the rules after
/// every observation (and at least once a second), and serves the admin
/// commands. A failure of its own (the store, the id source) is logged and
/// never acted on.
async fn watch_loop(
    mut wl: WatchLoop,
    wake: Arc<Wake>,
    mut commands: mpsc::Receiver<Command>,
    mut stop: watch::Receiver<bool>,
) {
    // Often enough for the fleet's heartbeat, when there is one.
    let period = wl
        .watcher
        .fleet_heartbeat()
        .map_or(Duration::from_secs(1), |h| h.min(Duration::from_secs(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_poll = Instant::now();
    let mut last_read: Option<Instant> = None;
    // A changed outcome reads the id at once, but a platform's API no more
    // than ten times per poll interval.
    let change_gap = wl.poll_interval / 10;
    let first_gap = wl.poll_interval.min(Duration::from_secs(1));
    let mut id_error: Option<String> = None;
    let mut last_judged = Instant::now();
    // A job of the watch (a read of the store, a rollback's claim or call)
    // has its result ready.
    let done = wl.watcher.wake();
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
                // Many probes report every second: wl their news together,
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
                wl.take_id(read, &mut id_error).await;
                true
            }
            Some(cmd) = commands.recv() => {
                match cmd {
                    Command::Rollback { reason, reply } => {
                        wl.watcher.manual_rollback(&reason, reply).await;
                    }
                    Command::Pause(paused, reply) => {
                        wl.watcher.set_paused(paused);
                        let _ = reply.send(Ok(()));
                    }
                    Command::Register { meta, seen, reply } => {
                        let _ = reply.send(wl.register(*meta, seen).await);
                    }
                }
                continue;
            }
            _ = stop.changed() => {
                if let Some(r) = reading.take() {
                    r.abort();
                }
                wl.watcher.leave_fleet().await;
                let left = wl.watcher.stop(STOP_WAIT).await;
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
            wl.watcher.deployment().is_none() && last_read.is_none_or(|t| now >= t + first_gap);
        if (due || soon || unknown) && reading.is_none() {
            next_poll = now + wl.poll_interval;
            last_read = Some(now);
            after_change = soon;
            let ids = wl.ids.clone();
            let mut read = tokio::spawn(async move { ids.current().await });
            // Most sources answer at once: taken in this step, so the
            // observation that made the agent look is charged to the
            // deployment that caused it.
            match tokio::time::timeout(ID_AT_ONCE, &mut read).await {
                Ok(r) => {
                    after_change = false;
                    wl.take_id(r, &mut id_error).await;
                }
                Err(_) => reading = Some(read),
            }
        }
        wl.advance();
        if !after_change {
            last_judged = Instant::now();
            wl.eval
                .share_live(wl.watcher.deployment(), wl.watcher.last_stable());
            wl.eval.evaluate(all);
            wl.watcher.act(&wl.eval.statuses).await;
        }
        wl.check_store();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluation::SETTLED_SPAN;
    use crate::watch::ManualOutcome;

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

    /// A wl of one `http` probe checked every second (its samples are
    /// recorded by the test), warm-up 30 s, watch 15 min, no rules.
    async fn watch_loop_over(store: Arc<Store>) -> WatchLoop {
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
        let settings = backstop_judge::rules::Settings::default();
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
        WatchLoop {
            watcher,
            ids: Arc::new(IdSource::new(config.deployment.source.clone(), None).unwrap()),
            poll_interval: config.deployment.poll_interval,
            eval: Evaluation::new(
                slots,
                config.rules.clone(),
                settings,
                config.deployment.warmup,
                None,
            ),
            store_failing: false,
            retention: Retention::default(),
            pushed: None,
            source_said: None,
        }
    }

    /// One check, one second later: recorded, then the watch moves on.
    async fn tick(wl: &mut WatchLoop, latency_ms: f64) -> Instant {
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        let obs = crate::schedule::observation(
            Ok(backstop_probes::Report::new().with("latency_ms", latency_ms)),
            Duration::from_millis(1),
            None,
        );
        wl.eval.slots[0].state.lock().unwrap().record(obs, now);
        wl.advance();
        wl.watcher.settle_all().await;
        wl.advance();
        now
    }

    fn window_len(wl: &WatchLoop) -> usize {
        wl.eval.slots[0].state.lock().unwrap().window.len()
    }

    /// Checks at `latency_ms` until the watched deployment turns stable;
    /// its baseline counts every check from the warm-up's end (30 s).
    async fn watch_to_stable(wl: &mut WatchLoop, deployment: &str, latency_ms: f64) {
        use crate::store::WatchState;
        let start = Instant::now();
        let mut counted = 0u64;
        while wl.watcher.state() != Some(WatchState::Stable) {
            let at = tick(wl, latency_ms).await;
            if at >= start + Duration::from_secs(30) {
                counted += 1;
            }
        }
        let b = wl.eval.baseline.clone().expect("a baseline");
        assert_eq!(b.deployment, deployment);
        let latency = b.signal("health", "latency_ms").unwrap();
        assert_eq!(latency.summary.count, counted);
        assert_eq!(latency.summary.max, latency_ms);
    }

    fn feeding(wl: &WatchLoop) -> Option<String> {
        let state = wl.eval.slots[0].state.lock().unwrap();
        state.feed.as_ref().map(|f| f.deployment().to_string())
    }

    fn fail(wl: &WatchLoop) {
        let obs = crate::schedule::observation(
            Err(backstop_probes::ProbeError::unhealthy("status 503")),
            Duration::from_millis(1),
            None,
        );
        wl.eval.slots[0]
            .state
            .lock()
            .unwrap()
            .record(obs, Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deployment_returned_to_by_a_rollback_keeps_nothing_of_the_bad_ones_failures() {
        let dir = tempfile::tempdir().unwrap();
        let mut wl = watch_loop_over(Arc::new(Store::open(dir.path()).unwrap())).await;
        wl.observe("v1").await;
        wl.watcher.settle_all().await;
        for _ in 0..3 {
            tick(&mut wl, 5.0).await;
        }
        wl.observe("v2").await;
        wl.watcher.settle_all().await;
        for _ in 0..5 {
            tokio::time::advance(Duration::from_millis(250)).await;
            fail(&wl);
        }
        assert_eq!(
            wl.eval.slots[0].state.lock().unwrap().consecutive_failures,
            5
        );
        // v2 is rolled back and v1 returns: none of v2's failures are v1's.
        wl.observe("v1").await;
        wl.watcher.settle_all().await;
        let state = wl.eval.slots[0].state.lock().unwrap();
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
        let depends = Evaluation::depends(&slots);
        (slots, depends)
    }

    fn check(slot: &ProbeSlot, up: bool) {
        let result = if up {
            Ok(backstop_probes::Report::new().with("latency_ms", 1.0))
        } else {
            Err(backstop_probes::ProbeError::unhealthy("down"))
        };
        let obs = crate::schedule::observation(result, Duration::from_millis(1), None);
        slot.state.lock().unwrap().record(obs, Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dependency_holds_the_rules_while_it_fails_or_until_it_is_checked_again() {
        let (slots, depends) = dependent_slots();
        let dir = tempfile::tempdir().unwrap();
        let wl = watch_loop_over(Arc::new(Store::open(dir.path()).unwrap())).await;
        let wl = WatchLoop {
            eval: Evaluation::new(
                slots.clone(),
                vec![],
                backstop_judge::rules::Settings::default(),
                Duration::from_secs(30),
                None,
            ),
            ..wl
        };
        assert_eq!(wl.eval.depends_of(1), &depends[1][..]);
        let (db, health) = (&slots[0], &slots[1]);
        check(db, true);
        tokio::time::advance(Duration::from_secs(1)).await;
        check(health, true);
        assert_eq!(wl.eval.held_by(1), None, "nothing fails");
        assert_eq!(wl.eval.held_by(0), None, "db depends on nothing");

        // health fails after db's last check: db is asked at once, and the
        // rules wait for its answer.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(1)).await;
            check(health, false);
        }
        let held = wl.eval.held_by(1).expect("held until db is checked");
        assert!(!held.failing);
        assert!(held.why.contains("checking it now"), "{}", held.why);
        // db answers that it fails: an outage, not the deployment.
        tokio::time::advance(Duration::from_millis(10)).await;
        check(db, false);
        let held = wl.eval.held_by(1).expect("db fails");
        assert!(held.failing);
        assert_eq!(held.dependency, "db");

        // db recovers; health's failures still date from db's outage until
        // health is checked again after it.
        tokio::time::advance(Duration::from_millis(100)).await;
        check(db, true);
        let held = wl.eval.held_by(1).expect("health not checked since");
        assert!(!held.failing);
        assert!(
            held.why.contains("waiting for its next one"),
            "{}",
            held.why
        );
        // health still fails with db fine: now it is the deployment.
        tokio::time::advance(Duration::from_secs(1)).await;
        check(health, false);
        assert_eq!(wl.eval.held_by(1), None);

        // db's own probe cannot run (the agent's fault): whether db is
        // behind health's failures is unknown, and the rules wait.
        tokio::time::advance(Duration::from_secs(1)).await;
        let obs = crate::schedule::observation(
            Err(backstop_probes::ProbeError::cannot_run(
                "password authentication failed",
            )),
            Duration::from_millis(1),
            None,
        );
        db.state.lock().unwrap().record(obs, Instant::now());
        let held = wl.eval.held_by(1).expect("db cannot be checked");
        assert!(!held.failing);
        assert!(held.why.contains("cannot be checked"), "{}", held.why);
    }

    #[tokio::test(start_paused = true)]
    async fn the_baseline_covers_the_whole_watch_while_windows_stay_short() {
        use crate::store::WatchState;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut wl = watch_loop_over(store.clone()).await;
        // Checks before the deployment id is read are in the window, and
        // before the warm-up's end, so not in the baseline.
        for _ in 0..3 {
            tick(&mut wl, 1000.0).await;
        }
        wl.observe("v1").await;
        wl.watcher.settle_all().await;
        wl.advance();
        wl.watcher.settle_all().await;
        wl.advance();
        let start = Instant::now();
        assert_eq!(feeding(&wl).as_deref(), Some("v1"));

        let mut longest = 0;
        let mut counted = 0u64;
        let mut values = Vec::new();
        while wl.watcher.state() != Some(WatchState::Stable) {
            let latency = (values.len() % 50) as f64;
            let at = tick(&mut wl, latency).await;
            if at >= start + Duration::from_secs(30) {
                counted += 1;
                values.push(latency);
            }
            longest = longest.max(window_len(&wl));
        }
        let b = wl.eval.baseline.clone().expect("a baseline for v1");
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
        assert_eq!(feeding(&wl), None);

        // A new deployment feeds its own baseline from nothing; v2 is
        // replaced by v3 mid-watch, and v3's baseline holds nothing of v2's.
        wl.observe("v2").await;
        wl.watcher.settle_all().await;
        wl.advance();
        wl.watcher.settle_all().await;
        wl.advance();
        assert_eq!(feeding(&wl).as_deref(), Some("v2"));
        for _ in 0..100 {
            tick(&mut wl, 5000.0).await;
        }
        wl.observe("v3").await;
        wl.watcher.settle_all().await;
        wl.advance();
        wl.watcher.settle_all().await;
        wl.advance();
        assert_eq!(feeding(&wl).as_deref(), Some("v3"));
        watch_to_stable(&mut wl, "v3", 7.0).await;

        // A deployment rolled back mid-watch drops its feed: no baseline of
        // it is kept, and the next one starts from nothing.
        wl.observe("v4").await;
        wl.watcher.settle_all().await;
        wl.advance();
        wl.watcher.settle_all().await;
        wl.advance();
        for _ in 0..100 {
            tick(&mut wl, 9000.0).await;
        }
        assert_eq!(feeding(&wl).as_deref(), Some("v4"));
        let (tx, rx) = tokio::sync::oneshot::channel();
        wl.watcher.manual_rollback("test", tx).await;
        let outcome = rx.await.unwrap().unwrap();
        assert!(matches!(outcome, ManualOutcome::Started), "{outcome:?}");
        wl.watcher.settle_all().await;
        assert_eq!(wl.watcher.state(), Some(WatchState::RolledBack));
        tick(&mut wl, 9000.0).await;
        assert_eq!(feeding(&wl), None);
        assert_eq!(store.baseline("v4").await.unwrap(), None);
        wl.observe("v5").await;
        wl.watcher.settle_all().await;
        wl.advance();
        wl.watcher.settle_all().await;
        wl.advance();
        watch_to_stable(&mut wl, "v5", 8.0).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_registered_deployment_is_watched_at_once_until_the_source_reports_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut wl = watch_loop_over(store.clone()).await;
        let meta = |id: &str| DeploymentMeta {
            id: id.into(),
            commit: Some(format!("commit-{id}")),
            registered_at_ms: 1,
            ..Default::default()
        };
        wl.reported("v1").await;
        wl.watcher.settle_all().await;
        assert_eq!(wl.watcher.deployment(), Some("v1"));

        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(wl.register(meta("v2"), false).await, Registered::Started);
        wl.watcher.settle_all().await;
        assert_eq!(wl.watcher.deployment(), Some("v2"));
        // The source has not seen the switch yet: it still says v1.
        wl.reported("v1").await;
        assert_eq!(wl.watcher.deployment(), Some("v2"));
        assert_eq!(wl.register(meta("v2"), true).await, Registered::Current);
        // Metadata of a deployment seen before changes nothing else.
        assert_eq!(wl.register(meta("v1"), true).await, Registered::Known);
        assert_eq!(wl.watcher.deployment(), Some("v2"));

        // The source reports a new deployment: it wins.
        tokio::time::advance(Duration::from_secs(1)).await;
        wl.reported("v3").await;
        wl.watcher.settle_all().await;
        assert_eq!(wl.watcher.deployment(), Some("v3"));
        assert_eq!(wl.pushed, None);

        let ledger = store.ledger(10).await.unwrap();
        let ids: Vec<&str> = ledger.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["v3", "v2", "v1"]);
        assert_eq!(ledger[1].commit.as_deref(), Some("commit-v2"));
        assert_eq!(ledger[2].commit.as_deref(), Some("commit-v1"));
    }
}
