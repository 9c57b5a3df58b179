//! Judging a parsed expression over one probe's state; see the module
//! documentation of [`crate::rules`] for the semantics.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::{
    is_rate_signal, percentile_of, Comparison, Expr, Op, Value, CONSECUTIVE_FAILURES, LATENCY,
};
use crate::baseline::{self, Baseline, ERROR_RATE};
use crate::evidence::{Evidence, JudgedBy};
use crate::live::{Choice, Live};
use crate::observe::{Outcome, ProbeState, Sample, SignalId};
use crate::stats::{self, Counts, Worse};

/// The knobs of judgement; the defaults are what SPEC promises.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Significance level of a baseline comparison. Default
    /// [`stats::DEFAULT_ALPHA`] (0.01).
    pub alpha: f64,
    /// Fewest samples per side of a U test. Default 20.
    pub min_samples: usize,
    /// Fewest requests behind a rate signal (per side, for a baseline
    /// comparison of counts). Default 200.
    pub min_requests: f64,
    /// The current samples of a baseline comparison without `for`. Default 5m.
    pub baseline_window: Duration,
    /// Fewest live peers whose samples of the same minutes an `Nx
    /// baseline` comparison uses instead of the stored baseline. Default 2.
    pub live_min_peers: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            alpha: stats::DEFAULT_ALPHA,
            min_samples: stats::DEFAULT_MIN_SAMPLES,
            min_requests: 200.0,
            baseline_window: Duration::from_secs(300),
            live_min_peers: 2,
        }
    }
}

/// What a rule is judged on.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The probe's name, to find its part of the baseline.
    pub probe: &'a str,
    pub state: &'a ProbeState,
    /// The last stable deployment's baseline, when there is one.
    pub baseline: Option<&'a Baseline>,
    /// The replicas still running the deployment to return to, with their
    /// samples of the last minutes, when a fleet reports them.
    pub live: Option<&'a Live>,
    /// Which of the two the rule's `Nx baseline` comparisons judge against.
    pub choice: Choice,
    /// The probe's interval: how much short of a `for` window the oldest
    /// sample may be.
    pub interval: Duration,
    pub now: Instant,
    /// Whether `p50_ms` … `p99_ms` are percentiles of the probe's
    /// `latency_ms` samples: true for every probe that yields `latency_ms`
    /// but not these signals itself (a `scrape` probe reads its own from
    /// the service's histogram).
    pub latency_percentiles: bool,
}

/// Three-valued: only `Holds` may act.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    Holds,
    Clear,
    /// Not enough to say, and why.
    Inconclusive(String),
}

impl Verdict {
    pub fn holds(&self) -> bool {
        matches!(self, Verdict::Holds)
    }
}

/// One comparison's verdict and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// The comparison in canonical form.
    pub condition: String,
    pub signal: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The value judged: the latest value; over a `for` window the least
    /// satisfying one (the minimum for `>`); the current median (or pooled
    /// rate) for a baseline comparison.
    pub observed: Option<f64>,
    /// What `observed` was compared with (for a baseline comparison, the
    /// factor times the baseline).
    pub threshold: Option<f64>,
    /// The baseline's median (or pooled rate).
    pub baseline: Option<f64>,
    /// `observed / baseline`.
    pub ratio: Option<f64>,
    /// The one-sided p-value of a baseline comparison.
    pub p_value: Option<f64>,
    /// The test behind `p_value`: `mann_whitney`, `fisher`, or `quantile`
    /// (a percentile: the quantile and U tests together).
    pub test: Option<&'static str>,
    /// Current samples judged.
    pub samples: usize,
    /// Baseline samples compared with.
    pub baseline_samples: Option<usize>,
    /// Requests behind the current samples, when they count them.
    pub requests: Option<f64>,
    /// Requests behind the baseline, for a comparison of counts.
    pub baseline_requests: Option<f64>,
    /// Which baseline judged a baseline comparison: `stored` or `live`.
    pub baseline_source: Option<&'static str>,
    /// The deployment the baseline is of.
    pub baseline_deployment: Option<String>,
    /// For a live baseline, how many replicas' samples it pooled.
    pub baseline_replicas: Option<usize>,
    #[serde(skip)]
    pub comparison: Comparison,
}

/// A whole rule's verdict, with one finding per comparison, left to right.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgement {
    #[serde(flatten)]
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
}

/// Judges `expr` over `input`. Every comparison is judged (no short cut), so
/// `/status` can show all their numbers.
pub fn evaluate(expr: &Expr, input: &Input<'_>, settings: &Settings) -> Judgement {
    let mut findings = Vec::new();
    let verdict = node(expr, input, settings, &mut findings);
    Judgement { verdict, findings }
}

fn node(expr: &Expr, input: &Input<'_>, settings: &Settings, out: &mut Vec<Finding>) -> Verdict {
    match expr {
        Expr::Cmp(c) => {
            let f = comparison(c, input, settings);
            let v = match &f.verdict {
                Verdict::Inconclusive(why) => Verdict::Inconclusive(format!("{c}: {why}")),
                v => v.clone(),
            };
            out.push(f);
            v
        }
        Expr::All(parts) => {
            let vs: Vec<Verdict> = parts
                .iter()
                .map(|p| node(p, input, settings, out))
                .collect();
            if vs.contains(&Verdict::Clear) {
                Verdict::Clear
            } else {
                first_inconclusive(vs).unwrap_or(Verdict::Holds)
            }
        }
        Expr::Any(parts) => {
            let vs: Vec<Verdict> = parts
                .iter()
                .map(|p| node(p, input, settings, out))
                .collect();
            if vs.contains(&Verdict::Holds) {
                Verdict::Holds
            } else {
                first_inconclusive(vs).unwrap_or(Verdict::Clear)
            }
        }
    }
}

fn first_inconclusive(vs: Vec<Verdict>) -> Option<Verdict> {
    vs.into_iter()
        .find(|v| matches!(v, Verdict::Inconclusive(_)))
}

/// One value of a signal, from one sample.
#[derive(Debug, Clone, Copy)]
struct Point {
    at: Instant,
    value: f64,
    counts: Option<Counts>,
}

/// The signal's values in the window, oldest first, without `error` samples.
fn points(state: &ProbeState, signal: &str) -> Vec<Point> {
    let judged = state
        .window
        .iter()
        .filter(|s| s.outcome() != Outcome::Error);
    if signal != CONSECUTIVE_FAILURES {
        // A name never interned is in no sample.
        let Some(id) = SignalId::find(signal) else {
            return Vec::new();
        };
        return judged.filter_map(|s| point_of(s, id)).collect();
    }
    // The count after each sample, replayed from the outcomes. Before the
    // window's first success the count is only known when there is no
    // success at all: then it is the current count less the failures since.
    let samples: Vec<_> = judged.collect();
    let any_up = samples.iter().any(|s| s.outcome().is_up());
    let failures = samples
        .iter()
        .filter(|s| s.outcome() == Outcome::Failed)
        .count() as u32;
    let mut count = (!any_up).then(|| state.consecutive_failures.saturating_sub(failures));
    let mut out = Vec::new();
    for s in samples {
        count = if s.outcome().is_up() {
            Some(0)
        } else {
            count.map(|c| c + 1)
        };
        if let Some(c) = count {
            out.push(Point {
                at: s.at(),
                value: c as f64,
                counts: None,
            });
        }
    }
    out
}

/// The signal's latest value in the window: the last of [`points`], for a
/// signal other than `consecutive_failures`, found from the end.
fn latest_point(state: &ProbeState, signal: &str) -> Option<Point> {
    let id = SignalId::find(signal)?;
    state
        .window
        .iter()
        .rev()
        .filter(|s| s.outcome() != Outcome::Error)
        .find_map(|s| point_of(s, id))
}

/// One sample's value of `signal` (not `consecutive_failures`), if it has one.
fn point_of(s: &Sample, signal: SignalId) -> Option<Point> {
    let value = s
        .values()
        .find(|(n, v)| *n == signal && !v.is_nan())
        .map(|(_, v)| v)?;
    Some(Point {
        at: s.at(),
        value,
        counts: baseline::sample_counts(s),
    })
}

fn since(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_sub(d)
}

fn in_window(pts: Vec<Point>, now: Instant, d: Duration) -> Vec<Point> {
    match since(now, d) {
        Some(from) => pts
            .into_iter()
            .filter(|p| p.at >= from && p.at <= now)
            .collect(),
        None => pts.into_iter().filter(|p| p.at <= now).collect(),
    }
}

/// `None` when the window is covered, else why not. The window is covered
/// when the probe watched all of it — its judged samples, whichever signals
/// they carry, reach back at least `d - tolerance` — and at least two of
/// them carry the signal. A sample without the signal is no gap: a scrape
/// with no request since the previous one has no `error_rate` or `p95_ms`,
/// yet the service was watched all the same.
fn uncovered(
    state: &ProbeState,
    pts: &[Point],
    signal: &str,
    now: Instant,
    d: Duration,
    tolerance: Duration,
) -> Option<String> {
    let from = since(now, d);
    let watched: Vec<Instant> = state
        .window
        .iter()
        .filter(|s| s.outcome() != Outcome::Error)
        .map(|s| s.at())
        .filter(|at| from.is_none_or(|f| *at >= f) && *at <= now)
        .collect();
    let reach = watched
        .first()
        .map(|at| now.saturating_duration_since(*at))
        .unwrap_or_default();
    let plural = |n: usize| if n == 1 { "sample" } else { "samples" };
    if watched.len() < 2 || reach < d.saturating_sub(tolerance) {
        return Some(format!(
            "window not yet covered: {} {} reaching back {} of {}",
            watched.len(),
            plural(watched.len()),
            crate::duration::format(Duration::from_secs(reach.as_secs())),
            crate::duration::format(d)
        ));
    }
    (pts.len() < 2).then(|| {
        format!(
            "too few samples: {} of {} in {} {} {signal}, need 2",
            pts.len(),
            watched.len(),
            crate::duration::format(d),
            if pts.len() == 1 { "carries" } else { "carry" },
        )
    })
}

fn sum_counts(pts: &[Point]) -> Option<Counts> {
    pts.iter().filter_map(|p| p.counts).reduce(|a, b| Counts {
        requests: a.requests + b.requests,
        errors: a.errors + b.errors,
    })
}

fn comparison(c: &Comparison, input: &Input<'_>, settings: &Settings) -> Finding {
    let mut f = Finding {
        condition: c.to_string(),
        signal: c.signal.clone(),
        verdict: Verdict::Clear,
        observed: None,
        threshold: None,
        baseline: None,
        ratio: None,
        p_value: None,
        test: None,
        samples: 0,
        baseline_samples: None,
        requests: None,
        baseline_requests: None,
        baseline_source: None,
        baseline_deployment: None,
        baseline_replicas: None,
        comparison: c.clone(),
    };
    let percentile = percentile_of(&c.signal).filter(|_| input.latency_percentiles);
    f.verdict = match (c.value.as_fraction(), percentile) {
        (Some(threshold), None) => {
            f.threshold = Some(threshold);
            absolute(c, threshold, input, settings, &mut f)
        }
        (None, None) => against_baseline(c, input, settings, &mut f),
        (Some(threshold), Some(q)) => {
            f.threshold = Some(threshold);
            absolute_percentile(c, q, threshold, input, settings, &mut f)
        }
        (None, Some(q)) => percentile_against_baseline(c, q, input, settings, &mut f),
    };
    f
}

/// `p95_ms > 500 for 5m`: the percentile of the latency samples of the
/// window (or of the last `baseline_window` without `for`).
fn absolute_percentile(
    c: &Comparison,
    q: f64,
    threshold: f64,
    input: &Input<'_>,
    settings: &Settings,
    f: &mut Finding,
) -> Verdict {
    let span = c.window.unwrap_or(settings.baseline_window);
    let pts = in_window(points(input.state, LATENCY), input.now, span);
    f.samples = pts.len();
    let values: Vec<f64> = pts.iter().map(|p| p.value).collect();
    let Some(observed) = crate::stats::quantile(&values, q) else {
        return inconclusive(format!(
            "no {LATENCY} in the last {}",
            crate::duration::format(span)
        ));
    };
    f.observed = Some(observed);
    if !c.op.apply(observed, threshold) {
        return Verdict::Clear;
    }
    let uncovered = match c.window {
        Some(window) => uncovered(
            input.state,
            &pts,
            LATENCY,
            input.now,
            window,
            input.interval,
        ),
        None => (pts.len() < 2).then(|| {
            format!(
                "too few samples: 1 {LATENCY} in the last {}, need 2",
                crate::duration::format(span)
            )
        }),
    };
    match uncovered {
        Some(why) => inconclusive(why),
        None => Verdict::Holds,
    }
}

/// `p95_ms > 2x baseline for 5m`: the percentile of the window's latency
/// samples against the same percentile of the baseline's.
fn percentile_against_baseline(
    c: &Comparison,
    q: f64,
    input: &Input<'_>,
    settings: &Settings,
    f: &mut Finding,
) -> Verdict {
    let factor = c.value.baseline_factor().expect("a baseline comparison");
    let Some((worse, inclusive)) = direction(c.op) else {
        return inconclusive("== and != cannot compare with the baseline");
    };
    let span = c.window.unwrap_or(settings.baseline_window);
    let pts = in_window(points(input.state, LATENCY), input.now, span);
    f.samples = pts.len();
    let against = match reference(input, settings, LATENCY, span, f) {
        Ok(a) => a,
        Err(why) => return inconclusive(why),
    };
    if let Some(window) = c.window {
        if let Some(why) = uncovered(
            input.state,
            &pts,
            LATENCY,
            input.now,
            window,
            input.interval,
        ) {
            return inconclusive(why);
        }
    }
    let before: &[f64] = match &against {
        Against::Live(pooled) => &pooled.values,
        Against::Stored(base) => {
            match base.probe(input.probe).and_then(|p| p.signals.get(LATENCY)) {
                Some(b) => &b.samples,
                None => {
                    return inconclusive(format!(
                        "the baseline ({}) has no {LATENCY} for probe {}",
                        base.deployment, input.probe
                    ))
                }
            }
        }
    };
    f.test = Some("quantile");
    f.baseline_samples = Some(before.len());
    let now: Vec<f64> = pts.iter().map(|p| p.value).collect();
    let result = stats::quantile_shift(
        &now,
        before,
        q,
        factor,
        worse,
        inclusive,
        settings.alpha,
        settings.min_samples,
    );
    shifted(result, f)
}

/// What a baseline comparison judges against.
enum Against<'a> {
    /// The last stable deployment's baseline, kept in the store.
    Stored(&'a Baseline),
    /// The live peers' samples of the same minutes.
    Live(crate::live::Pooled),
}

/// The baseline a comparison of `signal` over the last `span` judges
/// against, noted in `f`, or why there is none: the live peers' samples of
/// the same minutes when at least `live_min_peers` replicas gave some
/// (unless the rule chose `stored`); otherwise the stored baseline (unless
/// it chose `live`).
fn reference<'a>(
    input: &Input<'a>,
    settings: &Settings,
    signal: &str,
    span: Duration,
    f: &mut Finding,
) -> Result<Against<'a>, String> {
    let need = settings.live_min_peers.max(1);
    if input.choice != Choice::Stored {
        let why = match input.live {
            Some(live) if live.peers.is_empty() => format!(
                "live baseline: no replica reports samples of {}, need {need}",
                live.deployment
            ),
            Some(live) => {
                let pooled = live.pooled(input.probe, signal, since(input.now, span), input.now);
                if pooled.replicas >= need {
                    f.baseline_source = Some("live");
                    f.baseline_deployment = Some(live.deployment.clone());
                    f.baseline_replicas = Some(pooled.replicas);
                    return Ok(Against::Live(pooled));
                }
                format!(
                    "live baseline: {} of {} replicas on {} gave {signal} in the last {}, need {need}",
                    pooled.replicas,
                    live.peers.len(),
                    live.deployment,
                    crate::duration::format(span),
                )
            }
            None => format!(
                "live baseline: no replica reports the deployment to return to, need {need}"
            ),
        };
        if input.choice == Choice::Live {
            return Err(why);
        }
    }
    let Some(base) = input.baseline else {
        return Err("no baseline yet".into());
    };
    f.baseline_source = Some("stored");
    f.baseline_deployment = Some(base.deployment.clone());
    Ok(Against::Stored(base))
}

/// Which way is worse for a baseline comparison, and whether the threshold
/// itself counts; `None` for `==` and `!=`, which the parser refuses.
fn direction(op: Op) -> Option<(Worse, bool)> {
    match op {
        Op::Gt => Some((Worse::Larger, false)),
        Op::Ge => Some((Worse::Larger, true)),
        Op::Lt => Some((Worse::Smaller, false)),
        Op::Le => Some((Worse::Smaller, true)),
        Op::Eq | Op::Ne => None,
    }
}

/// The verdict of a baseline comparison, its numbers noted in `f`.
fn shifted(result: Result<stats::Shift, String>, f: &mut Finding) -> Verdict {
    match result {
        Err(why) => inconclusive(why),
        Ok(s) => {
            f.observed = Some(s.current);
            f.threshold = Some(s.threshold);
            f.baseline = Some(s.baseline);
            f.ratio = s.ratio;
            f.p_value = Some(s.p_value);
            if s.regressed() {
                Verdict::Holds
            } else {
                Verdict::Clear
            }
        }
    }
}

fn inconclusive(why: impl Into<String>) -> Verdict {
    Verdict::Inconclusive(why.into())
}

fn absolute(
    c: &Comparison,
    threshold: f64,
    input: &Input<'_>,
    settings: &Settings,
    f: &mut Finding,
) -> Verdict {
    let Some(window) = c.window else {
        // The latest observation: read from the end of the window (or the
        // count kept with the state), without replaying the window.
        let latest = if c.signal == CONSECUTIVE_FAILURES {
            input.state.last.as_ref().map(|_| Point {
                at: input.now,
                value: input.state.consecutive_failures as f64,
                counts: None,
            })
        } else {
            latest_point(input.state, &c.signal)
        };
        let Some(p) = latest else {
            return inconclusive("no data");
        };
        f.observed = Some(p.value);
        f.samples = 1;
        f.requests = p.counts.map(|c| c.requests);
        if !c.op.apply(p.value, threshold) {
            return Verdict::Clear;
        }
        return match (is_rate_signal(&c.signal), p.counts) {
            (true, Some(n)) if n.requests < settings.min_requests => inconclusive(format!(
                "too few requests: {} in the latest sample, need {}",
                num(n.requests),
                num(settings.min_requests)
            )),
            _ => Verdict::Holds,
        };
    };
    let pts = in_window(points(input.state, &c.signal), input.now, window);
    f.samples = pts.len();
    let counts = sum_counts(&pts);
    f.requests = counts.map(|c| c.requests);
    let breaking = pts.iter().find(|p| !c.op.apply(p.value, threshold));
    let values = pts.iter().map(|p| p.value);
    f.observed = match c.op {
        Op::Gt | Op::Ge => values.reduce(f64::min),
        Op::Lt | Op::Le => values.reduce(f64::max),
        Op::Eq | Op::Ne => breaking.or(pts.last()).map(|p| p.value),
    };
    if breaking.is_some() {
        return Verdict::Clear;
    }
    if let Some(why) = uncovered(
        input.state,
        &pts,
        &c.signal,
        input.now,
        window,
        input.interval,
    ) {
        return inconclusive(why);
    }
    match (is_rate_signal(&c.signal), counts) {
        (true, Some(n)) if n.requests < settings.min_requests => inconclusive(format!(
            "too few requests: {} in {}, need {}",
            num(n.requests),
            crate::duration::format(window),
            num(settings.min_requests)
        )),
        _ => Verdict::Holds,
    }
}

fn against_baseline(
    c: &Comparison,
    input: &Input<'_>,
    settings: &Settings,
    f: &mut Finding,
) -> Verdict {
    let factor = c.value.baseline_factor().expect("a baseline comparison");
    let Some((worse, inclusive)) = direction(c.op) else {
        return inconclusive("== and != cannot compare with the baseline");
    };
    let span = c.window.unwrap_or(settings.baseline_window);
    let pts = in_window(points(input.state, &c.signal), input.now, span);
    f.samples = pts.len();
    let counts = sum_counts(&pts);
    f.requests = counts.map(|c| c.requests);
    let against = match reference(input, settings, &c.signal, span, f) {
        Ok(a) => a,
        Err(why) => return inconclusive(why),
    };
    if let Some(window) = c.window {
        if let Some(why) = uncovered(
            input.state,
            &pts,
            &c.signal,
            input.now,
            window,
            input.interval,
        ) {
            return inconclusive(why);
        }
    }
    let (traffic, before): (Option<Counts>, &[f64]) = match &against {
        Against::Live(pooled) => (pooled.counts, &pooled.values),
        Against::Stored(base) => {
            let probe = base.probe(input.probe);
            let samples = probe.and_then(|p| p.signals.get(&c.signal));
            (
                probe.and_then(|p| p.traffic),
                samples.map(|s| s.samples.as_slice()).unwrap_or_default(),
            )
        }
    };
    let result = match (c.signal == ERROR_RATE, counts, traffic) {
        (true, Some(now), Some(before)) => {
            f.test = Some("fisher");
            f.baseline_requests = Some(before.requests);
            stats::rate_shift(
                now,
                before,
                factor,
                worse,
                inclusive,
                settings.alpha,
                settings.min_requests,
            )
        }
        _ => {
            if let Against::Stored(base) = &against {
                let probe = base.probe(input.probe);
                if probe.and_then(|p| p.signals.get(&c.signal)).is_none() {
                    return inconclusive(format!(
                        "the baseline ({}) has no {} for probe {}",
                        base.deployment, c.signal, input.probe
                    ));
                }
            }
            f.test = Some("mann_whitney");
            f.baseline_samples = Some(before.len());
            let now: Vec<f64> = pts.iter().map(|p| p.value).collect();
            stats::shift(
                &now,
                before,
                factor,
                worse,
                inclusive,
                settings.alpha,
                settings.min_samples,
            )
        }
    };
    shifted(result, f)
}

impl Finding {
    /// One line a person can read at 3 a.m., e.g. `error_rate 7.9% > 5% for
    /// 5m on probe app (412 requests)`.
    pub fn summary(&self, probe: &str) -> String {
        let c = &self.comparison;
        let pct = matches!(c.value, Value::Percent(_)) || c.signal == ERROR_RATE;
        let show = |x: Option<f64>| match x {
            Some(x) if pct => format!("{}%", num(x * 100.0)),
            Some(x) => num(x),
            None => "?".into(),
        };
        let window = c
            .window
            .map(|w| format!(" for {}", crate::duration::format(w)))
            .unwrap_or_default();
        let mut line = format!("{} {} {} ", c.signal, show(self.observed), c.op.as_str());
        if c.value.is_baseline() {
            line.push_str(&format!("{} {}", c.value, show(self.baseline)));
        } else {
            line.push_str(&c.value.to_string());
        }
        line.push_str(&format!("{window} on probe {probe}"));
        let mut notes = Vec::new();
        if c.value.is_baseline() {
            if let Some(r) = self.ratio {
                notes.push(format!("{}x", num(r)));
            }
            if let Some(p) = self.p_value {
                notes.push(if p < 1e-4 {
                    "p<0.0001".into()
                } else {
                    format!("p={}", num_sig(p))
                });
            }
            match (self.baseline_requests, self.requests, self.baseline_samples) {
                (Some(b), Some(n), _) => notes.push(format!("{} vs {} requests", num(n), num(b))),
                (_, _, Some(b)) => notes.push(format!("{} vs {} samples", self.samples, b)),
                _ => {}
            }
            match (self.baseline_source, self.baseline_replicas) {
                (Some("live"), Some(r)) => notes.push(format!(
                    "live baseline: {r} {} on {}",
                    if r == 1 { "replica" } else { "replicas" },
                    self.baseline_deployment.as_deref().unwrap_or("?")
                )),
                (Some(source), _) => notes.push(format!(
                    "{source} baseline {}",
                    self.baseline_deployment.as_deref().unwrap_or("?")
                )),
                _ => {}
            }
        } else if let Some(n) = self.requests {
            notes.push(format!("{} requests", num(n)));
        }
        if !notes.is_empty() {
            line.push_str(&format!(" ({})", notes.join(", ")));
        }
        line
    }

    /// Which baseline judged this comparison, if it is a baseline
    /// comparison that got as far as choosing one.
    pub fn judged_by(&self) -> Option<JudgedBy> {
        Some(JudgedBy {
            source: self.baseline_source?.to_string(),
            deployment: self.baseline_deployment.clone().unwrap_or_default(),
            replicas: self.baseline_replicas,
            samples: self.samples,
            baseline_samples: self.baseline_samples,
            requests: self.baseline_requests.and(self.requests),
            baseline_requests: self.baseline_requests,
        })
    }

    /// The window as written, e.g. `5m`.
    pub fn window(&self) -> Option<String> {
        self.comparison.window.map(crate::duration::format)
    }
}

impl Judgement {
    /// One line for the whole rule: what held, why it is inconclusive, or
    /// `clear`.
    pub fn summary(&self, probe: &str) -> String {
        match &self.verdict {
            Verdict::Holds => self
                .findings
                .iter()
                .filter(|f| f.verdict.holds())
                .map(|f| f.summary(probe))
                .collect::<Vec<_>>()
                .join("; "),
            Verdict::Clear => "clear".into(),
            Verdict::Inconclusive(why) => format!("inconclusive: {why}"),
        }
    }
}

/// The rule a judgement is of, as the configuration names it: what its
/// evidence is labelled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleRef<'a> {
    /// The rule's name.
    pub name: &'a str,
    /// The probe whose signals the rule reads.
    pub probe: &'a str,
    /// The rule's `when` expression as written.
    pub when: &'a str,
}

/// The evidence of a rule that Holds: one entry per comparison that held.
/// Empty when the rule does not hold, so nothing can act on it.
pub fn evidence(rule: RuleRef<'_>, judgement: &Judgement) -> Vec<Evidence> {
    if !judgement.verdict.holds() {
        return Vec::new();
    }
    judgement
        .findings
        .iter()
        .filter(|f| f.verdict.holds())
        .map(|f| Evidence {
            rule: rule.name.to_owned(),
            probe: rule.probe.to_owned(),
            expression: rule.when.to_owned(),
            signal: Some(f.signal.clone()),
            observed: f.observed,
            threshold: f.threshold,
            window: f.window(),
            baseline: f.baseline,
            ratio: f.ratio,
            p_value: f.p_value,
            judged_by: f.judged_by(),
            summary: f.summary(rule.probe),
        })
        .collect()
}

/// A number for people: whole numbers as such, others to about three
/// significant digits.
fn num(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x == x.trunc() && x.abs() < 1e15 {
        return format!("{x:.0}");
    }
    let decimals = match x.abs() {
        a if a >= 100.0 => 0,
        a if a >= 10.0 => 1,
        a if a >= 1.0 => 2,
        _ => return num_sig(x),
    };
    trim(format!("{x:.decimals$}"))
}

/// Three significant digits, for numbers below 1.
fn num_sig(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let digits = (2 - x.abs().log10().floor() as i32).clamp(0, 12) as usize;
    trim(format!("{x:.digits$}"))
}

fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod live_tests;
