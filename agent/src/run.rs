//! `backstop run`: the daemon. Opens the store, builds every probe, starts
//! their loops, the watch loop and the listener, and stops cleanly on
//! SIGTERM or Ctrl-C.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::{Instant, MissedTickBehavior};

use crate::app::App;
use crate::config::Config;
use crate::deployment::IdSource;
use crate::schedule::{run_probe, ProbeSlot};
use crate::store::Store;
use crate::telemetry::{self, ProbeMetrics};
use crate::watch::{Clock, ManualOutcome, Notifier, Rollbacker, RuleStatus, Watcher};

/// How far back each probe's window reaches at least.
pub const WINDOW_SPAN: Duration = Duration::from_secs(30 * 60);

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
    config: Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    stop: watch::Receiver<bool>,
    bound: Option<oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<()> {
    let store = Arc::new(Store::open(&config.agent.state_dir).map_err(UnusableStore)?);
    let listener = TcpListener::bind(config.agent.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.agent.listen))?;
    let addr = listener.local_addr()?;
    telemetry::build_info();
    let epoch = Instant::now();
    let wake = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    let mut slots = Vec::new();
    for cfg in &config.probes {
        let probe = cfg.build().map_err(|problems| {
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
        let slot = Arc::new(ProbeSlot::new(cfg.clone(), WINDOW_SPAN));
        let m = ProbeMetrics::new(&cfg.name, cfg.level, cfg.type_name());
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

    let target: Option<Arc<dyn Rollbacker>> = None;
    let notifier: Arc<dyn Notifier> = Arc::new(crate::notify::Notifiers::build(&config.notify)?);
    let watcher = Watcher::new(
        config.service.clone(),
        None,
        store.clone(),
        target,
        notifier,
        crate::watch::Guard {
            dry_run: false,
            cooldown: Duration::from_secs(600),
            max_per_hour: 3,
            verify: None,
        },
        config.deployment.warmup,
        config.deployment.watch,
        Clock::new(),
    )?;
    let view = watcher.view.clone();
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let ids = IdSource::new(config.deployment.source.clone());
    tasks.spawn(watch_loop(
        watcher,
        ids,
        config.deployment.poll_interval,
        slots.clone(),
        wake,
        cmd_rx,
        stop.clone(),
    ));

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
        store = %store.path().display(),
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

/// How long in-flight checks and calls get to finish after a stop signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(4000);

impl Notifier for crate::notify::Notifiers {
    fn notify(&self, event: crate::evidence::Event) {
        // Deliveries go on in the background; a failing notifier is logged
        // and counted there, and never holds up the watch.
        drop(self.send(event));
    }
}

/// The rules' verdicts now, for the watch to act on.
fn evaluate(_slots: &[Arc<ProbeSlot>]) -> Vec<RuleStatus> {
    Vec::new()
}

/// Polls the deployment id, moves the watch along, judges the rules after
/// every observation (and at least once a second), and serves the admin
/// commands. A failure of its own (the store, the id source) is logged and
/// never acted on.
async fn watch_loop(
    mut watcher: Watcher,
    ids: IdSource,
    poll_interval: Duration,
    slots: Vec<Arc<ProbeSlot>>,
    wake: Arc<Notify>,
    mut commands: mpsc::Receiver<Command>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_poll = Instant::now();
    let mut id_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = wake.notified() => {}
            Some(cmd) = commands.recv() => {
                match cmd {
                    Command::Rollback { reason, reply } => {
                        let _ = reply.send(watcher.manual_rollback(&reason).await);
                    }
                    Command::Pause(paused, reply) => {
                        let _ = reply.send(watcher.set_paused(paused));
                    }
                }
                continue;
            }
            _ = stop.changed() => return,
        }
        if Instant::now() >= next_poll || watcher.deployment().is_none() {
            next_poll = Instant::now() + poll_interval;
            match ids.current().await {
                Ok(id) => {
                    if id_error.take().is_some() {
                        tracing::info!("deployment id readable again");
                    }
                    if let Err(e) = watcher.observe_deployment(&id) {
                        tracing::error!(error = %format!("{e:#}"), "store failed; no rollback until it works again");
                        continue;
                    }
                }
                Err(e) => {
                    if id_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(error = %e, "cannot read the deployment id; keeping the last one");
                        id_error = Some(e);
                    }
                }
            }
        }
        if let Err(e) = watcher.advance() {
            tracing::error!(error = %format!("{e:#}"), "store failed; no rollback until it works again");
            continue;
        }
        let statuses = evaluate(&slots);
        if let Err(e) = watcher.judge(&statuses).await {
            tracing::error!(error = %format!("{e:#}"), "store failed; no rollback until it works again");
        }
    }
}

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
        let mut running = tokio::spawn(run(config.clone(), metrics.clone(), stop_rx, None));
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
