//! `[[rule]]`: the rules as written, read and validated here; the rule
//! language itself (`when`) is the rules module's.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;

use crate::probe_config::ProbeConfig;
use crate::problems::Problems;

/// `[[rule]]` as written; its `when` expression is parsed by the rules module.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique name; used in metrics, logs and notifications. Required.
    pub name: String,
    /// The probe whose signals the rule reads. Required.
    pub probe: String,
    /// The condition, in SPEC's rule language. Required.
    pub when: String,
    /// `rollback` or `alert`. Default `alert`.
    #[serde(default)]
    pub action: Action,
    /// Whether a rollback rule still rolls back once the deployment is
    /// stable; otherwise it alerts then. Default `false`.
    #[serde(default)]
    pub after_stable: bool,
    /// What its `Nx baseline` comparisons judge against: `"auto"` (the live replicas still running the deployment to return to, over the same minutes, when `[fleet] live_baseline_min_peers` of them report; else the stored baseline), `"live"` (those replicas only; inconclusive without them; needs `[fleet]`) or `"stored"` (the last stable deployment's, kept in the store). Only on a rule with an `Nx baseline` comparison. Default `"auto"`.
    #[serde(default)]
    pub baseline: Option<backstop_judge::live::Choice>,
    /// Whether this rule comes from the default rule set.
    #[serde(skip)]
    pub default: bool,
    /// `when`, parsed; always `Some` in a validated [`Config`].
    #[serde(skip)]
    pub expr: Option<backstop_judge::rules::Expr>,
}

/// What a rule does when it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Rollback,
    #[default]
    Alert,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rollback => "rollback",
            Self::Alert => "alert",
        }
    }
}

/// Reads every `[[rule]]`, parsing each `when`; a rule whose `when` does not
/// parse is kept without its expression (and reported).
pub fn read(cx: &mut Problems, value: Option<Value>) -> Vec<RuleConfig> {
    let mut rules: Vec<RuleConfig> = match value {
        Some(v) => cx.section("rule", v).unwrap_or_default(),
        None => vec![],
    };
    for (i, r) in rules.iter_mut().enumerate() {
        match backstop_judge::rules::parse(&r.when) {
            Ok(e) => r.expr = Some(e),
            Err(e) => cx.report(format!("rule[{i}].when"), format!("{e}: {}", r.when)),
        }
    }
    rules
}

/// Checks the rules against each other and against the probes: unique
/// names, a probe that was written (`written`), and signals it yields.
/// `fleet` says whether `[fleet]` was written.
pub fn check(
    cx: &mut Problems,
    rules: &[RuleConfig],
    probes: &[ProbeConfig],
    written: &HashSet<String>,
    fleet: bool,
) {
    use backstop_judge::live::Choice;
    let mut rule_names = HashSet::new();
    for (i, r) in rules.iter().enumerate() {
        if let (Some(choice), Some(expr)) = (r.baseline, &r.expr) {
            if !expr.uses_baseline() {
                cx.report(
                    format!("rule[{i}].baseline"),
                    format!(
                        "{:?} applies only to a rule with an `Nx baseline` comparison, and {:?} has none: remove it",
                        choice.as_str(),
                        r.when
                    ),
                );
            } else if choice == Choice::Live && !fleet {
                cx.report(
                    format!("rule[{i}].baseline"),
                    "\"live\" compares with the other replicas' agents, which needs [fleet]; \
                     without it use \"auto\" or \"stored\"",
                );
            }
        }
        if !rule_names.insert(r.name.as_str()) {
            cx.report(
                format!("rule[{i}].name"),
                format!("duplicate rule name {:?}", r.name),
            );
        }
        // A probe that was written but has errors of its own is not
        // reported a second time through the rules that name it.
        if !written.contains(&r.probe) {
            cx.report(
                format!("rule[{i}].probe"),
                format!("no probe named {:?}", r.probe),
            );
        }
        // A rule over a signal its probe never yields can never hold.
        let (Some(expr), Some(p)) = (&r.expr, probes.iter().find(|p| p.name == r.probe)) else {
            continue;
        };
        let yields = p.rule_signals();
        let mut unknown: Vec<&str> = expr
            .comparisons()
            .map(|c| c.signal.as_str())
            .filter(|s| !yields.iter().any(|y| y == s))
            .collect();
        unknown.dedup();
        for signal in unknown {
            cx.report(
                format!("rule[{i}].when"),
                format!(
                    "probe {:?} ({}) never yields {signal:?}, so this rule could never hold; \
                     its signals are {}",
                    p.name,
                    p.type_name(),
                    yields.join(", ")
                ),
            );
        }
    }
}
/// A rule's `when` is parsed by the rule language (`backstop_judge::rules`);
/// its errors are the configuration's, on the rule's key.
#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn a_bad_when_is_a_configuration_error_on_its_key() {
        let text = r#"
[service]
name = "web"

[[probe]]
name = "app"
level = 1
type = "tcp"
address = "127.0.0.1:8080"

[[rule]]
name = "ok"
probe = "app"
when = "consecutive_failures >= 3"

[[rule]]
name = "typo"
probe = "app"
when = "error_rate > x% for 5m"

[[rule]]
name = "another"
probe = "app"
when = "latency_ms > 200 or"
"#;
        let errors = Config::parse(text, |_| None).unwrap_err();
        let lines: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                "rule[1].when: expected a number after \">\", found \"x%\" at column 14: error_rate > x% for 5m (line 19)",
                "rule[2].when: expected a signal name, found the end at column 20: latency_ms > 200 or (line 24)",
            ]
        );
        // Fixed, and over a signal a tcp probe yields.
        let good = text
            .replace("error_rate > x%", "latency_ms > 250")
            .replace(" or\"", "\"");
        let config = Config::parse(&good, |_| None).unwrap();
        assert_eq!(
            config.rules[1]
                .expr
                .as_ref()
                .map(|e| e.to_string())
                .as_deref(),
            Some("latency_ms > 250 for 5m")
        );
        assert!(config.rules.iter().all(|r| r.expr.is_some()));
    }
}
