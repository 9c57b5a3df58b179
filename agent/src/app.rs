//! The running agent as the HTTP endpoints see it: its probes' state, its
//! metrics, and the controls of the admin API.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use hyper::StatusCode;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::config::Config;
use crate::schedule::ProbeSlot;
use crate::store::RollbackRecord;
use crate::watch::{ManualOutcome, RuleView, WatchView};

/// What the admin API asks of the watch loop.
pub enum Command {
    Rollback {
        reason: String,
        reply: tokio::sync::oneshot::Sender<anyhow::Result<ManualOutcome>>,
    },
    Pause(bool, tokio::sync::oneshot::Sender<anyhow::Result<()>>),
}

/// A lock helper for views shared with the HTTP server.
pub fn read<T: Clone>(m: &std::sync::Mutex<T>) -> T {
    m.lock().expect("view lock").clone()
}

pub struct App {
    pub config: Config,
    pub slots: Vec<Arc<ProbeSlot>>,
    pub epoch: Instant,
    pub metrics: Option<PrometheusHandle>,
    pub view: Option<Arc<std::sync::Mutex<WatchView>>>,
    pub commands: Option<tokio::sync::mpsc::Sender<Command>>,
}

impl App {
    pub fn admin_token(&self) -> Option<&str> {
        self.config.agent.admin_token.as_deref()
    }

    /// Whether every probe loop has shown life within its schedule.
    pub fn alive(&self) -> bool {
        let now = Instant::now();
        self.slots.iter().all(|s| s.alive(self.epoch, now))
    }

    pub fn render_metrics(&self) -> String {
        match &self.metrics {
            Some(h) => crate::telemetry::render(h),
            None => String::new(),
        }
    }

    /// The `/status` document, written straight to JSON: no JSON value is
    /// built per probe or rule (at 1,000 probes those values were a peak of
    /// memory of their own). Keys in alphabetical order, as before.
    pub fn status_json(&self) -> Vec<u8> {
        let probes: Vec<ProbeStatus> = self
            .slots
            .iter()
            .map(|slot| {
                let state = slot.state.lock().expect("probe state lock");
                ProbeStatus {
                    consecutive_failures: state.consecutive_failures,
                    critical: slot.cfg.critical,
                    last: state.last.as_ref().map(|o| LastStatus {
                        at: o
                            .at
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0),
                        error: o.error.clone(),
                        latency_ms: round3(o.latency.as_secs_f64() * 1e3),
                        outcome: o.outcome.as_str(),
                        signals: o.signals.iter().map(|(k, v)| (*k, round3(*v))).collect(),
                    }),
                    level: slot.cfg.level,
                    name: &slot.cfg.name,
                    samples: state.window.len(),
                    r#type: slot.cfg.type_name(),
                }
            })
            .collect();
        let view = self.view.as_ref().map(|v| read(v)).unwrap_or_default();
        let deployment = view.deployment.as_ref().map(|d| DeploymentStatus {
            first_seen: d.first_seen_ms / 1000,
            id: &d.id,
            stable_at: d.stable_at_ms.map(|ms| ms / 1000),
            state: d.state.as_str(),
            warmup_s: self.config.deployment.warmup.as_secs_f64(),
            watch_s: self.config.deployment.watch.as_secs_f64(),
        });
        let doc = Status {
            baseline: view
                .last_stable
                .as_deref()
                .map(|deployment| BaselineStatus { deployment }),
            deployment,
            fleet: view.fleet.as_ref(),
            held: view.held.as_deref(),
            last_rollback: view.last_rollback.as_ref(),
            last_stable: view.last_stable.as_deref(),
            paused: view.paused,
            probes,
            rules: &view.rules,
            service: &self.config.service,
            version: env!("CARGO_PKG_VERSION"),
        };
        let mut body = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        body.push(b'\n');
        body
    }

    /// Handles an authorized admin request.
    pub async fn admin(&self, path: &str, body: &Bytes) -> (StatusCode, Value) {
        let Some(commands) = &self.commands else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": "the watch is not running" }),
            );
        };
        let gone = || {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": "the watch loop is not answering" }),
            )
        };
        match path {
            "/v1/rollback" => {
                let reason = if body.is_empty() {
                    None
                } else {
                    match serde_json::from_slice::<Value>(body) {
                        Ok(v) => v["reason"].as_str().map(str::to_string),
                        Err(e) => {
                            return (
                                StatusCode::BAD_REQUEST,
                                json!({ "error": format!("body is not JSON: {e}") }),
                            )
                        }
                    }
                };
                let Some(reason) = reason.filter(|r| !r.trim().is_empty()) else {
                    return (
                        StatusCode::BAD_REQUEST,
                        json!({ "error": "give a reason: {\"reason\": \"...\"}" }),
                    );
                };
                let (tx, rx) = tokio::sync::oneshot::channel();
                if commands
                    .send(Command::Rollback { reason, reply: tx })
                    .await
                    .is_err()
                {
                    return gone();
                }
                match rx.await {
                    Ok(Ok(ManualOutcome::Started)) => (
                        StatusCode::ACCEPTED,
                        json!({ "rollback": self.view.as_ref().map(|v| read(v).last_rollback) }),
                    ),
                    Ok(Ok(ManualOutcome::AlreadyRecorded(why))) => {
                        (StatusCode::CONFLICT, json!({ "error": why }))
                    }
                    Ok(Ok(ManualOutcome::Refused(why))) => {
                        (StatusCode::CONFLICT, json!({ "error": why }))
                    }
                    Ok(Err(e)) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({ "error": format!("{e:#}") }),
                    ),
                    Err(_) => gone(),
                }
            }
            "/v1/pause" | "/v1/resume" => {
                let paused = path == "/v1/pause";
                let (tx, rx) = tokio::sync::oneshot::channel();
                if commands.send(Command::Pause(paused, tx)).await.is_err() {
                    return gone();
                }
                match rx.await {
                    Ok(Ok(())) => (StatusCode::OK, json!({ "paused": paused })),
                    Ok(Err(e)) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({ "error": format!("{e:#}") }),
                    ),
                    Err(_) => gone(),
                }
            }
            _ => (StatusCode::NOT_FOUND, json!({ "error": "not found" })),
        }
    }
}

/// The `/status` document; fields in alphabetical order.
#[derive(Serialize)]
struct Status<'a> {
    baseline: Option<BaselineStatus<'a>>,
    deployment: Option<DeploymentStatus<'a>>,
    fleet: Option<&'a Value>,
    held: Option<&'a str>,
    last_rollback: Option<&'a RollbackRecord>,
    last_stable: Option<&'a str>,
    paused: bool,
    probes: Vec<ProbeStatus<'a>>,
    rules: &'a [RuleView],
    service: &'a str,
    version: &'static str,
}

#[derive(Serialize)]
struct BaselineStatus<'a> {
    deployment: &'a str,
}

#[derive(Serialize)]
struct DeploymentStatus<'a> {
    first_seen: u64,
    id: &'a str,
    stable_at: Option<u64>,
    state: &'static str,
    warmup_s: f64,
    watch_s: f64,
}

#[derive(Serialize)]
struct ProbeStatus<'a> {
    consecutive_failures: u32,
    critical: bool,
    last: Option<LastStatus>,
    level: u8,
    name: &'a str,
    samples: usize,
    r#type: &'static str,
}

#[derive(Serialize)]
struct LastStatus {
    at: u64,
    error: Option<String>,
    latency_ms: f64,
    outcome: &'static str,
    signals: std::collections::BTreeMap<&'static str, f64>,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
