//! `[fleet]`: several replicas of the service, one decision; read and
//! validated here.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::duration::Dur;
use crate::problems::Problems;

/// What an agent does while the coordination store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossPolicy {
    /// No fleet rollback until the store is back; alert loudly.
    #[default]
    Hold,
    /// Decide on this replica's own verdicts, as a lone agent would.
    Local,
}

/// `[fleet]`, validated.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// This agent's name among its peers; unique per service.
    pub replica: String,
    /// The share of live replicas (0 < quorum ≤ 1) whose own verdict must
    /// hold for the fleet to roll back.
    pub quorum: f64,
    /// Coordinate through Redis instead of the PostgreSQL `[store]`.
    pub redis: Option<crate::secret::Secret>,
    /// How often the agent publishes its verdicts and heartbeat.
    pub heartbeat: Duration,
    /// A replica whose heartbeat is older than this is not live.
    pub expiry: Duration,
    /// How long a lease lasts unless renewed; renewed while the call runs.
    pub lease: Duration,
    pub on_coordination_loss: LossPolicy,
    /// Fewest replicas on the deployment to return to whose samples of the
    /// same minutes an `Nx baseline` rule compares with instead of the
    /// stored baseline.
    pub live_baseline_min_peers: usize,
}

/// `[fleet]`: several replicas of the service, one decision. Each agent
/// publishes its own verdicts; the fleet rolls back only when `quorum` of
/// the live replicas agree, and exactly one agent calls the platform.
/// Coordinates through the PostgreSQL `[store]`, or through `redis`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetSection {
    /// This agent's name among its peers, unique per service, e.g. `"${HOSTNAME}"`. Required.
    replica: String,
    /// Share of live replicas whose own verdict must hold, 0 < quorum ≤ 1. Default `0.5`.
    #[serde(default = "default_quorum")]
    quorum: f64,
    /// `redis://…` to coordinate through Redis instead of `[store]`; a secret. Default none.
    #[serde(default)]
    redis: Option<crate::secret::Secret>,
    /// How often the agent publishes its verdicts (and at once when one changes). Default `5s`.
    #[serde(default = "default_heartbeat")]
    heartbeat: Dur,
    /// A replica not heard from for this long is not live; more than `heartbeat`. Default 3 × `heartbeat`.
    #[serde(default)]
    expiry: Option<Dur>,
    /// How long the lease to call the platform lasts unless renewed. Default `30s`.
    #[serde(default = "default_lease")]
    lease: Dur,
    /// `"hold"` (no fleet rollback while the coordination store is unreachable) or `"local"` (decide on this replica's own verdicts). Default `"hold"`.
    #[serde(default)]
    on_coordination_loss: LossPolicy,
    /// Fewest replicas still running the deployment to return to that must report their samples of the same minutes for an `Nx baseline` rule to compare with them (the live baseline) rather than with the stored baseline; at least 1. Default `2`.
    #[serde(default = "default_live_baseline_min_peers")]
    live_baseline_min_peers: usize,
}

fn default_live_baseline_min_peers() -> usize {
    2
}

fn default_quorum() -> f64 {
    0.5
}
fn default_heartbeat() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_lease() -> Dur {
    Dur(Duration::from_secs(30))
}

/// Reads and validates `[fleet]`; `has_store` says whether a PostgreSQL
/// `[store]` can coordinate it.
pub fn read(cx: &mut Problems, value: Value, has_store: bool) -> Option<FleetConfig> {
    let f: FleetSection = cx.section("fleet", value)?;
    let mut ok = true;
    if f.replica.trim().is_empty() {
        cx.report(
            "fleet.replica",
            "must not be empty: name this replica, e.g. \"${HOSTNAME}\"",
        );
        ok = false;
    }
    if !(f.quorum > 0.0 && f.quorum <= 1.0) {
        cx.report(
            "fleet.quorum",
            format!("must be more than 0 and at most 1, got {}", f.quorum),
        );
        ok = false;
    }
    if let Some(url) = &f.redis {
        let raw = url.expose();
        match url::Url::parse(raw) {
            Ok(u) if matches!(u.scheme(), "redis" | "rediss") => {}
            _ => {
                cx.report(
                    "fleet.redis",
                    format!(
                        "expected a redis:// or rediss:// URL, got {:?}",
                        backstop_probes::redact_url(raw)
                    ),
                );
                ok = false;
            }
        }
    }
    if f.heartbeat.0 < Duration::from_millis(100) {
        cx.report("fleet.heartbeat", "must be at least 100ms");
        ok = false;
    }
    let expiry = f.expiry.map(|d| d.0).unwrap_or(f.heartbeat.0 * 3);
    if expiry <= f.heartbeat.0 {
        cx.report(
            "fleet.expiry",
            format!(
                "must be longer than heartbeat {}",
                crate::duration::format(f.heartbeat.0)
            ),
        );
        ok = false;
    }
    if f.lease.0 < Duration::from_millis(300) {
        cx.report("fleet.lease", "must be at least 300ms");
        ok = false;
    }
    if f.live_baseline_min_peers == 0 {
        cx.report(
            "fleet.live_baseline_min_peers",
            "must be at least 1 (the default is 2)",
        );
        ok = false;
    }
    if f.redis.is_none() && !has_store {
        cx.report(
            "fleet",
            "needs a coordination store: a PostgreSQL [store], or redis = \"redis://…\" here",
        );
        ok = false;
    }
    ok.then_some(FleetConfig {
        replica: f.replica.trim().to_string(),
        quorum: f.quorum,
        redis: f.redis,
        heartbeat: f.heartbeat.0,
        expiry,
        lease: f.lease.0,
        on_coordination_loss: f.on_coordination_loss,
        live_baseline_min_peers: f.live_baseline_min_peers,
    })
}
