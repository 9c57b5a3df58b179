//! `backstop check`: every probe (or one level's) once, printed as a table or
//! as one JSON document.

use serde_json::json;

use crate::config::Config;
use crate::observe::{Observation, Outcome};
use crate::schedule::check_once;

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
            Err(problems) => Observation::from_result(
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
        })).collect::<Vec<_>>()
    })
}

pub fn to_table(results: &[CheckResult]) -> String {
    let mut rows = vec![[
        "PROBE".to_string(),
        "LEVEL".into(),
        "TYPE".into(),
        "OUTCOME".into(),
        "LATENCY".into(),
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
            o.error.clone().unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 5 {
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
