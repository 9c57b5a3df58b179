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
use crate::schedule::ProbeSlot;

pub struct App {
    pub config: Config,
    pub slots: Vec<Arc<ProbeSlot>>,
    pub epoch: Instant,
    pub metrics: Option<PrometheusHandle>,
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
            Some(h) => {
                h.run_upkeep();
                h.render()
            }
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
        json!({
            "service": self.config.service,
            "version": env!("CARGO_PKG_VERSION"),
            "probes": probes,
        })
    }

    /// Handles an authorized admin request.
    pub async fn admin(&self, path: &str, _body: &Bytes) -> (StatusCode, Value) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": format!("{path} needs a [rollback] section") }),
        )
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
