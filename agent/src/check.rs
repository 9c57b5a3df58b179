//! `backstop check`: every probe (or one level's) once, printed as a table or
//! as one JSON document, each with the signals its check yielded.

use serde_json::json;

use crate::config::Config;
use crate::schedule::check_once;
use backstop_judge::observe::{Observation, Outcome};

/// One probe's result, as printed.
pub struct CheckResult {
    pub name: String,
    pub level: u8,
    pub kind: &'static str,
    pub critical: bool,
    pub observation: Observation,
}

/// Runs the selected probes once, all at the same time.
pub async fn run_checks(config: &Config, level: Option<u8>) -> Vec<CheckResult> {
    let selected = config
        .probes
        .iter()
        .filter(|p| level.is_none_or(|l| p.level == l));
    let futures = selected.map(|cfg| async move {
        let observation = match cfg.build() {
            Ok(probe) => check_once(&probe, cfg).await,
            Err(problems) => crate::schedule::observation(
                Err(backstop_probes::ProbeError::cannot_run(
                    problems
                        .iter()
                        .map(|p| format!("{}: {}", p.key, p.message))
                        .collect::<Vec<_>>()
                        .join("; "),
                )),
                Default::default(),
                None,
            ),
        };
        CheckResult {
            name: cfg.name.clone(),
            level: cfg.level,
            kind: cfg.type_name(),
            critical: cfg.critical,
            observation,
        }
    });
    futures_util::future::join_all(futures).await
}

/// Exit code per SPEC: 1 when a critical probe failed, else 0.
pub fn exit_code(results: &[CheckResult]) -> u8 {
    let critical_failed = results
        .iter()
        .any(|r| r.critical && r.observation.outcome == Outcome::Failed);
    u8::from(critical_failed)
}

pub fn to_json(results: &[CheckResult]) -> serde_json::Value {
    json!({
        "probes": results.iter().map(|r| json!({
            "name": r.name,
            "level": r.level,
            "type": r.kind,
            "outcome": r.observation.outcome.as_str(),
            "latency_ms": (r.observation.latency.as_secs_f64() * 1e6).round() / 1e3,
            "error": r.observation.error,
            "critical": r.critical,
            "signals": r.observation.signals.iter()
                .map(|(name, v)| (name.to_string(), json!(v)))
                .collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>()
    })
}

/// A number as the table shows it: one decimal from 1 up, three significant
/// digits below, no trailing zeros (`12.3`, `200`, `0.0123`).
fn short(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        return v.to_string();
    }
    let magnitude = v.abs();
    let text = if magnitude >= 1.0 {
        format!("{v:.1}")
    } else {
        let decimals = (-magnitude.log10().floor()) as usize + 2;
        format!("{v:.decimals$}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// The signals of a check as the table shows them: `latency_ms=12.3 status=200`.
fn signals_cell(o: &Observation) -> String {
    o.signals
        .iter()
        .map(|(name, v)| format!("{name}={}", short(*v)))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn to_table(results: &[CheckResult]) -> String {
    let mut rows = vec![[
        "PROBE".to_string(),
        "LEVEL".into(),
        "TYPE".into(),
        "OUTCOME".into(),
        "LATENCY".into(),
        "SIGNALS".into(),
        "DETAIL".into(),
    ]];
    for r in results {
        let o = &r.observation;
        rows.push([
            format!("{}{}", r.name, if r.critical { " *" } else { "" }),
            r.level.to_string(),
            r.kind.to_string(),
            o.outcome.as_str().to_string(),
            format!("{:.1}ms", o.latency.as_secs_f64() * 1e3),
            signals_cell(o),
            o.error.clone().unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 6 {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if results.iter().any(|r| r.critical) {
        out.push_str("* critical\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_the_table_are_short() {
        let cases = [
            (12.345, "12.3"),
            (200.0, "200"),
            (1048576.0, "1048576"),
            (0.25, "0.25"),
            (0.0123456, "0.0123"),
            (0.999, "0.999"),
            (0.0, "0"),
            (-0.0, "0"),
            (-3.25, "-3.2"),
            (1.05, "1.1"),
            (f64::NAN, "NaN"),
        ];
        for (v, want) in cases {
            assert_eq!(short(v), want, "{v}");
        }
    }

    fn result(signals: Vec<(&'static str, f64)>, error: Option<&str>) -> CheckResult {
        CheckResult {
            name: "health".into(),
            level: 1,
            kind: "http",
            critical: true,
            observation: Observation {
                at: std::time::SystemTime::now(),
                outcome: if error.is_some() {
                    Outcome::Failed
                } else {
                    Outcome::Ok
                },
                latency: std::time::Duration::from_micros(12_345),
                signals,
                error: error.map(str::to_string),
            },
        }
    }

    #[test]
    fn the_table_and_the_json_show_every_signal() {
        let results = [
            result(
                vec![
                    ("status", 200.0),
                    ("latency_ms", 12.345),
                    ("memory_mb", 512.0),
                ],
                None,
            ),
            result(vec![], Some("connect to 127.0.0.1:1: connection refused")),
        ];
        let table = to_table(&results);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].contains("SIGNALS") && lines[0].ends_with("DETAIL"),
            "{table}"
        );
        assert!(
            lines[1].contains("status=200 latency_ms=12.3 memory_mb=512"),
            "{table}"
        );
        assert!(lines[2].ends_with("connection refused"), "{table}");
        let doc = to_json(&results);
        assert_eq!(
            doc["probes"][0]["signals"],
            json!({ "status": 200.0, "latency_ms": 12.345, "memory_mb": 512.0 })
        );
        assert_eq!(doc["probes"][1]["signals"], json!({}));
    }
}
