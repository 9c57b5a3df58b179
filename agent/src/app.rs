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
use crate::store::{DeploymentMeta, RollbackRecord, StateAt, Store};
use crate::watch::{ManualOutcome, RuleView, WatchView};

/// What the admin API asks of the watch loop.
pub enum Command {
    Rollback {
        reason: String,
        reply: tokio::sync::oneshot::Sender<anyhow::Result<ManualOutcome>>,
    },
    Pause(bool, tokio::sync::oneshot::Sender<anyhow::Result<()>>),
    /// A pipeline registered a deployment (`POST /v1/deployments`);
    /// `seen`: the store knows it already.
    Register {
        meta: Box<DeploymentMeta>,
        seen: bool,
        reply: tokio::sync::oneshot::Sender<Registered>,
    },
}

/// What a registration did to the watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A new id: its watch started at once.
    Started,
    /// The deployment being watched.
    Current,
    /// A deployment seen before: only its metadata is kept.
    Known,
}

/// The metadata of the deployment `/status` shows, and when it was read.
type SeenMeta = Option<(String, Option<DeploymentMeta>, Instant)>;

/// How long `/status` trusts the metadata it read of its deployment.
const META_FRESH: std::time::Duration = std::time::Duration::from_secs(10);

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
    /// The store, for the ledger's reads (`/v1/deployments`). Weak: a
    /// connection still open after a stop (a reload) must not keep the
    /// embedded store's lock from the next run.
    pub store: Option<std::sync::Weak<Store>>,
    /// What a pipeline registered of the deployment `/status` shows.
    pub current_meta: std::sync::Mutex<SeenMeta>,
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

    /// The metadata known of deployment `id`, as last read or registered.
    pub fn meta_of(&self, id: &str) -> Option<DeploymentMeta> {
        match &*self.current_meta.lock().expect("meta lock") {
            Some((seen, meta, _)) if seen == id => meta.clone(),
            _ => None,
        }
    }

    /// A registration made through this agent, shown at once.
    pub fn remember_meta(&self, meta: &DeploymentMeta) {
        *self.current_meta.lock().expect("meta lock") =
            Some((meta.id.clone(), Some(meta.clone()), Instant::now()));
    }

    /// Reads what a pipeline registered of the current deployment (maybe
    /// through another replica) when it is not known or no longer fresh;
    /// a store that does not answer within half a second leaves it as it
    /// was.
    pub async fn refresh_meta(&self) {
        let Some(id) = self.view.as_ref().and_then(|v| {
            let view = v.lock().expect("view lock");
            view.deployment.as_ref().map(|d| d.id.clone())
        }) else {
            return;
        };
        let fresh = matches!(&*self.current_meta.lock().expect("meta lock"),
            Some((seen, _, at)) if *seen == id && at.elapsed() < META_FRESH);
        let Some(store) = self
            .store
            .as_ref()
            .filter(|_| !fresh)
            .and_then(|s| s.upgrade())
        else {
            return;
        };
        let read = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            store.ledger_entry(&id),
        )
        .await;
        let mut cached = self.current_meta.lock().expect("meta lock");
        match read {
            Ok(Ok(entry)) => *cached = Some((id, entry.and_then(|e| e.meta()), Instant::now())),
            // Kept as it was, tried again once no longer fresh.
            _ => {
                let kept = match cached.take() {
                    Some((seen, meta, _)) if seen == id => meta,
                    _ => None,
                };
                *cached = Some((id, kept, Instant::now()));
            }
        }
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
        let meta = view
            .deployment
            .as_ref()
            .and_then(|d| self.meta_of(&d.id))
            .unwrap_or_default();
        let deployment = view.deployment.as_ref().map(|d| DeploymentStatus {
            annotations: &meta.annotations,
            commit: meta.commit.as_deref(),
            environment: meta.environment.as_deref(),
            first_seen: d.first_seen_ms / 1000,
            id: &d.id,
            stable_at: d.stable_at_ms.map(|ms| ms / 1000),
            state: d.state.as_str(),
            states: d.history(None),
            triggered_by: meta.triggered_by.as_deref(),
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
    /// What a pipeline registered of it (`POST /v1/deployments`).
    annotations: &'a std::collections::BTreeMap<String, String>,
    commit: Option<&'a str>,
    environment: Option<&'a str>,
    first_seen: u64,
    id: &'a str,
    stable_at: Option<u64>,
    state: &'static str,
    /// Each state it entered, with its time in Unix milliseconds.
    states: Vec<StateAt>,
    triggered_by: Option<&'a str>,
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
