//! `[agent]` and `[service]`: the agent process's own settings, read and
//! validated here.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::problems::Problems;
use crate::store::Retention;

/// `[agent]`: the agent's own listener and storage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentSection {
    /// Address of `/healthz`, `/status`, `/metrics` and `/v1/*`. Default `0.0.0.0:9469`.
    #[serde(default = "default_listen")]
    listen: String,
    /// Directory of the embedded store; unused with `[store]`. Default `/var/lib/backstop`.
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    /// Bearer token for the `POST /v1/*` endpoints; empty disables them. Default empty.
    #[serde(default)]
    admin_token: String,
    /// Add the default rule set (see `defaults.rs`) for the probes. Default `true`.
    #[serde(default = "yes")]
    default_rules: bool,
    /// How long the deployment ledger (`/v1/deployments`, `backstop history`) keeps a deployment after it was first seen; at least `1h`. Default `90d`.
    #[serde(default = "default_history_retention")]
    history_retention: crate::duration::Dur,
    /// The most deployments the ledger keeps, the newest; at least `2`. The current deployment and the one to return to are always kept. Default `1000`.
    #[serde(default = "default_history_max")]
    history_max: usize,
}

fn default_history_retention() -> crate::duration::Dur {
    crate::duration::Dur(Retention::default().max_age)
}
fn default_history_max() -> usize {
    Retention::default().max_count
}

fn yes() -> bool {
    true
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            state_dir: default_state_dir(),
            admin_token: String::new(),
            default_rules: true,
            history_retention: default_history_retention(),
            history_max: default_history_max(),
        }
    }
}

fn default_listen() -> String {
    "0.0.0.0:9469".into()
}
fn default_state_dir() -> PathBuf {
    "/var/lib/backstop".into()
}

/// `[service]`: which service this agent watches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSection {
    /// The service's name, shared by all its replicas. Required.
    name: String,
}

/// `[agent]`, validated.
#[derive(Debug, Clone)]
pub struct Agent {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// `None` when empty: the admin endpoints are then absent.
    pub admin_token: Option<String>,
    /// How much of the deployment ledger the store keeps.
    pub retention: Retention,
}

/// `[agent]`, validated, and whether to add the default rules
/// (`default_rules`, read even when the rest has problems).
pub fn read_agent(cx: &mut Problems, value: Option<Value>) -> (Option<Agent>, bool) {
    let a: Option<AgentSection> = match value {
        Some(v) => cx.section("agent", v),
        None => Some(AgentSection::default()),
    };
    let default_rules = a.as_ref().is_none_or(|a| a.default_rules);
    (a.and_then(|a| validate(cx, a)), default_rules)
}

/// `[service]`, validated: the service's name.
pub fn read_service(cx: &mut Problems, value: Option<Value>) -> Option<String> {
    let s: ServiceSection = match value {
        Some(v) => cx.section("service", v)?,
        None => {
            cx.report("service.name", "required key is missing");
            return None;
        }
    };
    if s.name.trim().is_empty() {
        cx.report("service.name", "must not be empty");
        None
    } else {
        Some(s.name)
    }
}

fn validate(cx: &mut Problems, a: AgentSection) -> Option<Agent> {
    let listen = match a.listen.parse::<SocketAddr>() {
        Ok(l) => Some(l),
        Err(_) => {
            cx.report(
                "agent.listen",
                format!("expected ip:port like 0.0.0.0:9469, got {:?}", a.listen),
            );
            None
        }
    };
    let token = (!a.admin_token.is_empty()).then_some(a.admin_token);
    if token.as_ref().is_some_and(|t| t.len() < 16) {
        cx.report(
            "agent.admin_token",
            "must be at least 16 characters (or empty to disable the admin endpoints)",
        );
    }
    let mut ok = true;
    if a.history_retention.0 < std::time::Duration::from_secs(3600) {
        cx.report(
            "agent.history_retention",
            format!(
                "must be at least 1h (got {}); the default is 90d",
                crate::duration::format(a.history_retention.0)
            ),
        );
        ok = false;
    }
    if a.history_max < 2 {
        cx.report(
            "agent.history_max",
            format!(
                "must be at least 2 (got {}); the default is 1000",
                a.history_max
            ),
        );
        ok = false;
    }
    let agent = Agent {
        listen: listen?,
        state_dir: a.state_dir,
        admin_token: token,
        retention: Retention {
            max_age: a.history_retention.0,
            max_count: a.history_max,
        },
    };
    ok.then_some(agent)
}
