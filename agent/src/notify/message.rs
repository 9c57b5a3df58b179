//! What a notifier sends, and the text that goes in it: the request, the
//! evidence as one line, numbers as people read them, and no secret.

use reqwest::header::HeaderMap;
use serde_json::Value;

/// One HTTP request a notifier makes: always a POST of a JSON body.
pub(super) struct Outgoing {
    pub url: String,
    pub headers: HeaderMap,
    pub body: Value,
}

/// What a notifier delivers for one event: an HTTP request, or an email.
pub(super) enum Delivery {
    Http(Outgoing),
    Email(Box<lettre::Message>),
}

/// Hides every secret value in `text`.
pub(super) fn redact(mut text: String, secrets: &[String]) -> String {
    for s in secrets {
        if text.contains(s.as_str()) {
            text = text.replace(s.as_str(), "***");
        }
    }
    text
}

/// At most `max` characters, the last one `…` when cut.
pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A number as people write it: `480`, `0.052`, `1.5`.
pub(super) fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "0" || s == "-0" {
        format!("{v:e}")
    } else {
        s.to_string()
    }
}

/// One line per piece of evidence: which rule, what it compared, and the
/// numbers, e.g. ``latency (app) `p95_ms > 2x baseline for 5m`: p95_ms 480
/// vs threshold 400, over 5m, baseline 200``.
pub(super) fn evidence_line(e: &backstop_judge::evidence::Evidence) -> String {
    let mut line = format!("{} ({}) `{}`", e.rule, e.probe, e.expression);
    match (e.observed, e.threshold) {
        (Some(v), t) => {
            let signal = e.signal.as_deref().unwrap_or("observed");
            line.push_str(&format!(": {signal} {}", number(v)));
            if let Some(t) = t {
                line.push_str(&format!(" vs threshold {}", number(t)));
            }
        }
        (None, Some(t)) => line.push_str(&format!(": threshold {}", number(t))),
        (None, None) => {}
    }
    if let Some(w) = &e.window {
        line.push_str(&format!(", over {w}"));
    }
    if let Some(b) = e.baseline {
        line.push_str(&format!(", baseline {}", number(b)));
    }
    if !e.summary.is_empty() {
        line.push_str(&format!(" — {}", e.summary));
    }
    line
}
