//! The rule language of SPEC's `when` expressions, and how a rule is judged
//! over one probe's recent samples and the baseline deployment's.
//!
//! # Language
//!
//! `SIGNAL OP VALUE [for DURATION]`, combined with `and` / `or` (`and` binds
//! tighter) and parentheses. `OP` is one of `> >= < <= == !=`. A value is a
//! number (`95`), a percentage read as a fraction (`5%` is 0.05), `Nx
//! baseline` (N times the baseline's signal) or `baseline + N%` (the
//! baseline's signal raised by N percent). [`parse`] reads it; `Display`
//! prints the canonical form, which parses back to the same [`Expr`].
//!
//! # Verdicts
//!
//! Every comparison, and the rule as a whole, is [`Verdict::Holds`],
//! [`Verdict::Clear`] or [`Verdict::Inconclusive`] with a reason. `and` is
//! Clear when any side is Clear, Holds when all Hold, and Inconclusive
//! otherwise; `or` is Holds when any side Holds, Clear when all are Clear,
//! and Inconclusive otherwise. Only `Holds` may ever act.
//!
//! # What a comparison is judged on
//!
//! Samples whose outcome is `error` (the probe's own fault) are ignored
//! entirely: they never satisfy and never break a condition, and they never
//! count toward `consecutive_failures`.
//!
//! - **Without `for`**, a comparison with a number is judged on the latest
//!   sample that carries the signal; none is Inconclusive ("no data").
//!   `consecutive_failures` is read from the probe's state.
//! - **With `for D`**, every sample of the window `[now - D, now]` that
//!   carries the signal must satisfy the comparison. One that does not makes
//!   it Clear. Otherwise it Holds only if the window is covered: the probe's
//!   samples, whichever signals they carry, reach back at least `D -
//!   interval` (one probe interval of tolerance, given by the caller), else
//!   it is Inconclusive ("window not yet covered"); and at least two of them
//!   carry the signal, else it is Inconclusive ("too few samples"). A sample
//!   without the signal is no gap in the window: a scrape with no request
//!   since the previous one has no `error_rate` or `p95_ms`, but the service
//!   was watched all the same. The value reported is the least satisfying one: the
//!   minimum over the window for `>`/`>=`, the maximum for `<`/`<=`, and for
//!   `==`/`!=` the first breaking sample or else the latest. For
//!   `consecutive_failures` the count after each sample is reconstructed from
//!   the outcomes in the window; samples before the first success in the
//!   window, whose count is unknown, carry no value.
//! - **Rate signals** (names ending in `_rate`, such as `error_rate`) are
//!   per-request ratios: when the samples carry a `requests` signal, a
//!   comparison with a number Holds only when the window (or, without `for`,
//!   the latest sample) saw at least [`Settings::min_requests`] requests, so
//!   two errors in three requests never roll back. Samples without any
//!   `requests` signal (a PromQL source) skip that minimum.
//! - **`Nx baseline` and `baseline + N%`** compare the current samples of the
//!   signal — the `for` window, which must be covered, or without `for` the
//!   last [`Settings::baseline_window`] — with the baseline's samples of the
//!   same signal and probe, through [`crate::stats`]. It Holds only when both
//!   the effect is beyond the threshold on the median (current median > N ×
//!   baseline median, or > baseline median × (1 + N%)) and a one-sided
//!   Mann-Whitney U test finds the current samples significantly larger at
//!   [`Settings::alpha`]. `<` and `<=` mirror this: significantly smaller and
//!   below the threshold. Only the direction the operator names counts, so a
//!   faster deployment is never a latency regression. Fewer than
//!   [`Settings::min_samples`] on either side, or no baseline for the probe
//!   and signal, is Inconclusive.
//!   For `error_rate`, when both the current samples and the baseline carry
//!   request counts (`requests`, and `errors` or the rate itself), the counts
//!   are compared instead: the pooled error rate of the window against the
//!   baseline's, with a one-sided Fisher exact test (a two-proportion test
//!   that stays exact at small counts), and both sides need
//!   [`Settings::min_requests`] requests.
//! - **Percentiles of latency** (`p50_ms`, `p90_ms`, `p95_ms`, `p99_ms`) on
//!   a probe that yields `latency_ms` but not these itself
//!   ([`Input::latency_percentiles`]): the percentile of the `latency_ms`
//!   samples of the `for` window, which must be covered (without `for`, of
//!   the last [`Settings::baseline_window`], at least two samples). `Nx
//!   baseline` compares it with the same percentile of the baseline's
//!   latency samples through [`crate::stats::quantile_shift`]: larger than
//!   N *and* significant, as every baseline rule.

mod eval;
mod parse;

use std::time::Duration;

pub use eval::{evaluate, evidence, Finding, Input, Judgement, RuleRef, Settings, Verdict};
pub use parse::parse;

/// The numbers behind a rule's verdict, as `/status` shows them under
/// `detail`: kept as numbers, and written as JSON only when asked for.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Detail {
    pub when: String,
    pub default: bool,
    pub findings: Vec<Finding>,
}

/// The signal read from a probe's state rather than from its samples.
pub const CONSECUTIVE_FAILURES: &str = "consecutive_failures";

/// A parsed `when` expression. `All` and `Any` always have two parts or
/// more and never directly contain their own kind, so that each expression
/// has one canonical form.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Cmp(Comparison),
    /// `a and b and …`
    All(Vec<Expr>),
    /// `a or b or …`
    Any(Vec<Expr>),
}

impl Expr {
    /// `self and other`, flattened.
    pub fn and(self, other: Expr) -> Expr {
        let mut parts = match self {
            Expr::All(p) => p,
            e => vec![e],
        };
        match other {
            Expr::All(p) => parts.extend(p),
            e => parts.push(e),
        }
        Expr::All(parts)
    }

    /// `self or other`, flattened.
    pub fn or(self, other: Expr) -> Expr {
        let mut parts = match self {
            Expr::Any(p) => p,
            e => vec![e],
        };
        match other {
            Expr::Any(p) => parts.extend(p),
            e => parts.push(e),
        }
        Expr::Any(parts)
    }

    /// The comparisons, left to right.
    pub fn comparisons(&self) -> Box<dyn Iterator<Item = &Comparison> + '_> {
        match self {
            Expr::Cmp(c) => Box::new(std::iter::once(c)),
            Expr::All(p) | Expr::Any(p) => Box::new(p.iter().flat_map(Expr::comparisons)),
        }
    }

    /// How far back the probe's window must reach for this expression to be
    /// judged; size `ProbeState::span` at least this plus one interval.
    pub fn span_needed(&self, settings: &Settings) -> Duration {
        self.comparisons()
            .map(|c| match (c.window, c.value.is_baseline()) {
                (Some(w), _) => w,
                (None, true) => settings.baseline_window,
                // A percentile without `for` is over the baseline window.
                (None, false) if percentile_of(&c.signal).is_some() => settings.baseline_window,
                (None, false) => Duration::ZERO,
            })
            .max()
            .unwrap_or_default()
    }

    /// Whether any comparison needs a baseline.
    pub fn uses_baseline(&self) -> bool {
        self.comparisons().any(|c| c.value.is_baseline())
    }
}

/// `SIGNAL OP VALUE [for DURATION]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub signal: String,
    pub op: Op,
    pub value: Value,
    /// The `for` window.
    pub window: Option<Duration>,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    /// `lhs OP rhs`.
    pub fn apply(self, lhs: f64, rhs: f64) -> bool {
        match self {
            Op::Gt => lhs > rhs,
            Op::Ge => lhs >= rhs,
            Op::Lt => lhs < rhs,
            Op::Le => lhs <= rhs,
            Op::Eq => lhs == rhs,
            Op::Ne => lhs != rhs,
        }
    }
}

/// The right-hand side of a comparison. Numbers are kept as written, so
/// `Percent(5.0)` is `5%`, which compares as 0.05.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Number(f64),
    Percent(f64),
    /// `Nx baseline`
    TimesBaseline(f64),
    /// `baseline + N%`
    BaselinePlus(f64),
}

impl Value {
    /// The threshold of an absolute comparison; `None` for baseline ones.
    pub fn as_fraction(self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(n),
            Value::Percent(n) => Some(n / 100.0),
            Value::TimesBaseline(_) | Value::BaselinePlus(_) => None,
        }
    }

    pub fn is_baseline(self) -> bool {
        matches!(self, Value::TimesBaseline(_) | Value::BaselinePlus(_))
    }

    /// The factor the baseline is multiplied by.
    pub fn baseline_factor(self) -> Option<f64> {
        match self {
            Value::TimesBaseline(n) => Some(n),
            Value::BaselinePlus(p) => Some(1.0 + p / 100.0),
            _ => None,
        }
    }
}

/// A `when` expression that does not parse: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based character column in the expression.
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at column {}", self.message, self.column)
    }
}

impl std::error::Error for ParseError {}

/// The percentiles of `latency_ms` that every probe yielding it also has,
/// with their quantile: over a rule's `for` window (or the last
/// [`Settings::baseline_window`] without one), and of the baseline's
/// latency for `Nx baseline`.
pub const PERCENTILES: [(&str, f64); 4] = [
    ("p50_ms", 0.5),
    ("p90_ms", 0.9),
    ("p95_ms", 0.95),
    ("p99_ms", 0.99),
];

/// The signal the percentiles are computed from.
pub const LATENCY: &str = "latency_ms";

/// The quantile of a percentile signal (`p95_ms` → 0.95).
pub fn percentile_of(signal: &str) -> Option<f64> {
    PERCENTILES
        .iter()
        .find(|(name, _)| *name == signal)
        .map(|(_, q)| *q)
}

/// Whether a signal is a per-request ratio, which needs enough requests
/// behind it before it can decide anything.
pub fn is_rate_signal(signal: &str) -> bool {
    signal.ends_with("_rate")
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod safety_props;
