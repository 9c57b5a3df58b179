//! What the watch and its parts share, and what the rest of the agent
//! hands it: the platform and the notifier it calls, a rule's judgement, the
//! guard rails, the clock, and the answer to a manual rollback. A leaf:
//! it imports nothing of the watch.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::evidence::{Event, Reconciled, RollbackDone, RollbackRequest};
use crate::rule_config::Action;
use crate::store::{DeploymentRecord, RollbackRecord};
use backstop_judge::evidence::Evidence;
use backstop_judge::rules::Verdict;

/// What a [`Rollbacker`] returns: a future it may borrow from.
pub type Call<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A platform that can roll a deployment back (see `rollback`).
pub trait Rollbacker: Send + Sync {
    /// The target's name, the `target` label of `backstop_rollbacks_total`.
    fn name(&self) -> &'static str;
    /// Calls the platform, with its retries; the error is one line, no secrets.
    fn rollback<'a>(&'a self, req: &'a RollbackRequest) -> Call<'a, Result<RollbackDone, String>>;
    /// After a restart, for a call the agent's stop interrupted: whether
    /// the platform shows that it took effect. Reads only.
    fn reconcile<'a>(&'a self, req: &'a RollbackRequest) -> Call<'a, Reconciled>;
}

/// Tells people; never blocks the caller (see `notify`).
pub trait Notifier: Send + Sync {
    fn notify(&self, event: Event);
}

/// A verdict as `/status`, the log and the fleet name it.
pub fn verdict_name(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Holds => "holds",
        Verdict::Clear => "clear",
        Verdict::Inconclusive(_) => "inconclusive",
    }
}

/// One rule's judgement, as the rules module produced it.
#[derive(Debug, Clone)]
pub struct RuleStatus {
    pub name: String,
    pub probe: String,
    pub action: Action,
    /// Whether a rollback rule still rolls back once the deployment is stable.
    pub after_stable: bool,
    pub verdict: Verdict,
    /// One entry per condition that holds; empty unless the rule holds.
    pub evidence: Vec<Evidence>,
    /// The numbers behind the verdict, for `/status`.
    pub detail: backstop_judge::rules::Detail,
    /// A probe of the rule's probe's `depends_on` that fails, or may have
    /// caused what the rule saw: a rollback rule that holds is then held,
    /// never acted on.
    pub held_by: Option<Held>,
}

/// Why a dependency holds a rule's rollback.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// The `depends_on` probe.
    pub dependency: String,
    /// Whether it fails now: an outage, told once per deployment and
    /// dependency. Otherwise it is not yet known whether it caused what
    /// the rule saw (`why`), which is settled within a check or two.
    pub failing: bool,
    pub why: String,
}

impl Held {
    pub fn failing(dependency: String) -> Self {
        let why = format!(
            "{dependency} (depends_on) is failing: an outage of a dependency, which a rollback cannot fix"
        );
        Self {
            dependency,
            failing: true,
            why,
        }
    }

    pub fn unknown(dependency: String, what: &str) -> Self {
        let why = format!("{dependency} (depends_on) {what}");
        Self {
            dependency,
            failing: false,
            why,
        }
    }
}

impl RuleStatus {
    /// Whether the rule holds and nothing it depends on is failing.
    pub(super) fn acts(&self) -> bool {
        self.verdict == Verdict::Holds && self.held_by.is_none()
    }

    /// The verdict as `/status`, the fleet and the page name it: `held`
    /// when it holds while a dependency fails.
    pub(super) fn verdict_str(&self) -> &'static str {
        if self.verdict == Verdict::Holds && self.held_by.is_some() {
            "held"
        } else {
            verdict_name(&self.verdict)
        }
    }
}

/// The guard rails of `[rollback]`.
#[derive(Debug, Clone)]
pub struct Guard {
    pub dry_run: bool,
    pub cooldown: Duration,
    pub max_per_hour: u32,
    /// How long after an accepted call the deployment must have changed.
    /// `None` when the id cannot change in this process (a fixed id).
    pub verify: Option<Duration>,
}

/// Wall-clock milliseconds that advance with tokio's clock, so paused-time
/// tests can move them, and a wall-clock jump cannot.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor: Instant,
    anchor_ms: u64,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            anchor: Instant::now(),
            anchor_ms: crate::store::now_ms(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.anchor_ms + self.anchor.elapsed().as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The answer to a manual rollback request.
#[derive(Debug, Clone, PartialEq)]
pub enum ManualOutcome {
    Started,
    AlreadyRecorded(String),
    Refused(String),
}

/// One line for all the conditions of a rule that hold.
pub(super) fn summarize(rule: &str, evidence: &[Evidence]) -> String {
    if evidence.is_empty() {
        format!("rule {rule} holds")
    } else {
        evidence
            .iter()
            .map(|e| e.summary.as_str())
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

pub(super) fn to_text(return_to: &Option<String>) -> String {
    match return_to {
        Some(r) => format!(" to {r}"),
        None => String::new(),
    }
}

/// What the watch shows in `/status`, refreshed on every step.
#[derive(Debug, Clone, Default)]
pub struct WatchView {
    pub deployment: Option<DeploymentRecord>,
    pub last_stable: Option<String>,
    pub paused: bool,
    pub rules: Vec<RuleView>,
    pub last_rollback: Option<RollbackRecord>,
    pub held: Option<String>,
    pub notes: Vec<String>,
    /// The fleet as this replica sees it; `None` without `[fleet]`.
    pub fleet: Option<Value>,
    /// The figures of the baseline rules compare with, which the page
    /// (`page.rs`) draws behind each probe's series; set by the watch loop
    /// when the baseline changes.
    pub baseline: Option<std::sync::Arc<BaselineView>>,
}

/// A baseline's figures without its samples: per probe, each signal's
/// summary and the pooled error rate of the watch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BaselineView {
    /// Which baseline of the watch loop's it shows (see
    /// `Evaluation::baseline_generation`).
    pub generation: u64,
    pub deployment: String,
    pub probes: std::collections::BTreeMap<String, ProbeBands>,
}

/// One probe's part of a [`BaselineView`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeBands {
    pub signals: std::collections::BTreeMap<String, backstop_judge::baseline::Summary>,
    pub error_rate: Option<f64>,
}

impl BaselineView {
    pub fn new(generation: u64, baseline: &backstop_judge::baseline::Baseline) -> Self {
        Self {
            generation,
            deployment: baseline.deployment.clone(),
            probes: baseline
                .probes
                .iter()
                .map(|(name, p)| {
                    let bands = ProbeBands {
                        signals: p
                            .signals
                            .iter()
                            .map(|(s, b)| (s.clone(), b.summary))
                            .collect(),
                        error_rate: p.error_rate(),
                    };
                    (name.clone(), bands)
                })
                .collect(),
        }
    }
}

/// One rule as `/status` shows it: kept as it is and written as JSON only
/// when `/status` is asked for (a JSON value per rule, rebuilt on every
/// judgement, cost kilobytes per rule).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleView {
    pub name: String,
    pub probe: String,
    pub action: &'static str,
    pub armed: bool,
    pub verdict: &'static str,
    pub reason: Option<String>,
    pub summary: Option<String>,
    pub detail: backstop_judge::rules::Detail,
}
