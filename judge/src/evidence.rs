//! Why the agent acts: the account of a rule that fired, condition by
//! condition, which the rules build (`rules::evidence`) and the agent sends
//! to `/status`, the log, every notification and every rollback call.

use serde::{Deserialize, Serialize};

/// One condition that held, with its numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The rule's name.
    pub rule: String,
    /// The probe whose signals the rule read.
    pub probe: String,
    /// The rule's `when` expression as written.
    pub expression: String,
    /// The signal compared, e.g. `error_rate`.
    pub signal: Option<String>,
    /// The value seen (over the window, when there is one).
    pub observed: Option<f64>,
    /// The value it was compared against.
    pub threshold: Option<f64>,
    /// The `for` window, as written (`5m`).
    pub window: Option<String>,
    /// The baseline's value, for `Nx baseline` comparisons.
    pub baseline: Option<f64>,
    /// `observed / baseline`, for `Nx baseline` comparisons. Absent from
    /// records written before it was kept.
    #[serde(default)]
    pub ratio: Option<f64>,
    /// The one-sided p-value of a baseline comparison (see [`crate::stats`]).
    #[serde(default)]
    pub p_value: Option<f64>,
    /// Which baseline judged an `Nx baseline` comparison, with the samples
    /// on each side. Absent from records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judged_by: Option<JudgedBy>,
    /// One sentence a person can read at 3 a.m.
    pub summary: String,
}

/// The baseline an `Nx baseline` comparison was judged against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgedBy {
    /// `stored` (the last stable deployment's, kept in the store) or `live`
    /// (the replicas still running it, over the same minutes).
    pub source: String,
    /// The deployment the baseline is of.
    pub deployment: String,
    /// For a live baseline, how many replicas' samples were pooled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
    /// Samples of the new deployment judged.
    pub samples: usize,
    /// Samples of the baseline compared with (none for a comparison of
    /// request counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_samples: Option<usize>,
    /// Requests on each side, for a comparison of counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_requests: Option<f64>,
}
