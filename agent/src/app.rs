//! The running agent as the HTTP endpoints see it: its probes' state, its
//! metrics, and the controls of the admin API.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use hyper::StatusCode;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::config::Config;
use crate::run::Command;
use crate::schedule::ProbeSlot;
use crate::watch::{ManualOutcome, WatchView};

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

    /// The `/status` document.
    pub fn status(&self) -> Value {
        let probes: Vec<Value> = self
            .slots
            .iter()
            .map(|slot| {
                let state = slot.snapshot();
                let last = state.last.as_ref().map(|o| {
                    json!({
                        "outcome": o.outcome.as_str(),
                        "latency_ms": round3(o.latency.as_secs_f64() * 1e3),
                        "error": o.error,
                        "at": o.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                        "signals": o.signals.iter().map(|(k, v)| (k.to_string(), json!(round3(*v)))).collect::<serde_json::Map<_, _>>(),
                    })
                });
                json!({
                    "name": slot.cfg.name,
                    "level": slot.cfg.level,
                    "type": slot.cfg.type_name(),
                    "critical": slot.cfg.critical,
                    "consecutive_failures": state.consecutive_failures,
                    "samples": state.window.len(),
                    "last": last,
                })
            })
            .collect();
        let view = self
            .view
            .as_ref()
            .map(|v| crate::run::read(v))
            .unwrap_or_default();
        let deployment = view.deployment.as_ref().map(|d| {
            json!({
                "id": d.id,
                "state": d.state.as_str(),
                "first_seen": d.first_seen_ms / 1000,
                "stable_at": d.stable_at_ms.map(|ms| ms / 1000),
                "warmup_s": self.config.deployment.warmup.as_secs_f64(),
                "watch_s": self.config.deployment.watch.as_secs_f64(),
            })
        });
        json!({
            "service": self.config.service,
            "version": env!("CARGO_PKG_VERSION"),
            "deployment": deployment,
            "last_stable": view.last_stable,
            "baseline": view.last_stable.as_ref().map(|d| json!({ "deployment": d })),
            "paused": view.paused,
            "held": view.held,
            "probes": probes,
            "rules": view.rules,
            "last_rollback": view.last_rollback,
            "fleet": view.fleet,
        })
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
                        json!({ "rollback": self.status()["last_rollback"] }),
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

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
