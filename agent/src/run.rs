//! `backstop run`: the daemon. Builds every probe, starts their loops and the
//! listener, and stops cleanly on SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::app::App;
use crate::config::Config;
use crate::schedule::{run_probe, ProbeSlot};
use crate::telemetry::{self, ProbeMetrics};

/// How far back each probe's window reaches.
pub const WINDOW_SPAN: Duration = Duration::from_secs(30 * 60);

/// Starts the agent and runs it until `stop` turns true. Returns the bound
/// address through `bound` as soon as the listener is up.
pub async fn run(
    config: Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    stop: watch::Receiver<bool>,
    bound: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.agent.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.agent.listen))?;
    let addr = listener.local_addr()?;
    telemetry::build_info();
    let epoch = Instant::now();
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
        tasks.spawn(run_probe(slot.clone(), probe, m, epoch, stop.clone()));
        slots.push(slot);
    }
    let app = Arc::new(App {
        config,
        slots,
        epoch,
        metrics,
    });
    tracing::info!(
        listen = %addr,
        service = %app.config.service,
        probes = app.slots.len(),
        "backstop running"
    );
    if let Some(tx) = bound {
        let _ = tx.send(addr);
    }
    tasks.spawn(crate::server::serve(listener, app.clone(), stop.clone()));
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            if e.is_panic() {
                tracing::error!(error = %e, "an agent task panicked");
            }
        }
    }
    tracing::info!("backstop stopped");
    Ok(())
}

/// Turns SIGTERM and Ctrl-C into a stop signal.
pub fn stop_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received, stopping"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        let _ = tx.send(true);
    });
    rx
}
