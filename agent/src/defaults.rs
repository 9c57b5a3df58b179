//! The default rule set: the rollback triggers operators already write in
//! deployment plans, made from the probes a configuration has. Immediate:
//! a critical probe failing three times running (health 5xx, a critical smoke
//! test), memory above 95%; the database or cache unreachable only alerts,
//! since a rollback cannot bring it back. Sustained during the
//! watch: error rate above 5%, p95 latency above 2x the baseline, the
//! database's connections above 90%, CPU or memory above 90%, each for 5
//! minutes. A rule written in the file with the same name replaces a default
//! one; `[agent] default_rules = false` turns them all off.

use backstop_probes::ProbeSpec;

use crate::probe_config::ProbeConfig;
use crate::rule_config::{Action, RuleConfig};

fn rule(name: String, probe: &str, when: &str, action: Action) -> RuleConfig {
    RuleConfig {
        name,
        probe: probe.to_string(),
        when: when.to_string(),
        action,
        after_stable: false,
        baseline: None,
        default: true,
        expr: None,
    }
}

/// The default rules for these probes, in probe order.
pub fn rules_for(probes: &[ProbeConfig]) -> Vec<RuleConfig> {
    use Action::{Alert, Rollback};
    let mut out = Vec::new();
    for p in probes {
        let n = &p.name;
        // The agent's own view of an unreachable database or cache is an
        // outage a rollback cannot fix: it alerts, critical or not. A pool
        // that a new deployment saturates is the deployment's fault.
        let dependency = matches!(p.spec, ProbeSpec::Postgres(_) | ProbeSpec::Redis(_));
        if dependency {
            out.push(rule(
                format!("{n} unreachable"),
                n,
                "consecutive_failures >= 3",
                Alert,
            ));
        } else if p.critical {
            out.push(rule(
                format!("{n} failing"),
                n,
                "consecutive_failures >= 3",
                Rollback,
            ));
        }
        match &p.spec {
            ProbeSpec::Postgres(_) => {
                out.push(rule(
                    format!("{n} connections saturated"),
                    n,
                    "pool_utilization > 90% for 5m",
                    Rollback,
                ));
            }
            ProbeSpec::Resources(_) => {
                out.push(rule(
                    format!("{n} memory critical"),
                    n,
                    "memory_percent > 95",
                    Rollback,
                ));
                out.push(rule(
                    format!("{n} memory high"),
                    n,
                    "memory_percent > 90 for 5m",
                    Rollback,
                ));
                out.push(rule(
                    format!("{n} cpu high"),
                    n,
                    "cpu_percent > 90 for 5m",
                    Rollback,
                ));
            }
            ProbeSpec::Scrape(_) => {
                out.push(rule(
                    format!("{n} error rate"),
                    n,
                    "error_rate > 5% for 5m",
                    Rollback,
                ));
                out.push(rule(
                    format!("{n} latency regression"),
                    n,
                    "p95_ms > 2x baseline for 5m",
                    Rollback,
                ));
            }
            ProbeSpec::Http(_) if p.level == 4 => {
                out.push(rule(
                    format!("{n} latency regression"),
                    n,
                    "latency_ms > 2x baseline for 5m",
                    Rollback,
                ));
            }
            _ => {}
        }
    }
    out
}

/// Merges the defaults under the rules written in the file: a written rule
/// replaces the default of the same name.
pub fn merge(written: Vec<RuleConfig>, defaults: Vec<RuleConfig>) -> Vec<RuleConfig> {
    let mut out: Vec<RuleConfig> = defaults
        .into_iter()
        .filter(|d| !written.iter().any(|w| w.name == d.name))
        .collect();
    out.extend(written);
    out
}

/// The written rules with the default rules for `probes` added (a written
/// rule replaces the default of the same name), each default parsed. A
/// default rule over a signal its probe is not set up to yield (a `scrape`
/// probe without `latency`) is left out.
pub fn with_defaults(written: Vec<RuleConfig>, probes: &[ProbeConfig]) -> Vec<RuleConfig> {
    let mut rules = merge(written, rules_for(probes));
    for r in rules.iter_mut().filter(|r| r.expr.is_none() && r.default) {
        r.expr = Some(backstop_judge::rules::parse(&r.when).expect("default rules parse"));
    }
    rules.retain(|r| {
        let (true, Some(expr)) = (r.default, &r.expr) else {
            return true;
        };
        probes.iter().find(|p| p.name == r.probe).is_none_or(|p| {
            let yields = p.rule_signals();
            expr.comparisons().all(|c| yields.contains(&c.signal))
        })
    });
    rules
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn the_default_rules_follow_the_probes() {
        let text = r#"
[service]
name = "web"

[[probe]]
name = "health"
level = 1
type = "http"
url = "http://127.0.0.1:8080/health"
critical = true

[[probe]]
name = "db"
level = 2
type = "postgres"
url = "postgres://app@127.0.0.1/app"

[[probe]]
name = "app"
level = 4
type = "scrape"
url = "http://127.0.0.1:8080/metrics"
requests = "http_requests_total"
latency = "http_request_duration_seconds"

[[rule]]
name = "db unreachable"
probe = "db"
when = "consecutive_failures >= 5"
action = "alert"
"#;
        let config = Config::parse(text, |_| None).unwrap();
        let rules: Vec<(String, String, &str, bool)> = config
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.when.clone(), r.action.as_str(), r.default))
            .collect();
        let want = [
            (
                "health failing",
                "consecutive_failures >= 3",
                "rollback",
                true,
            ),
            (
                "db connections saturated",
                "pool_utilization > 90% for 5m",
                "rollback",
                true,
            ),
            ("app error rate", "error_rate > 5% for 5m", "rollback", true),
            (
                "app latency regression",
                "p95_ms > 2x baseline for 5m",
                "rollback",
                true,
            ),
            (
                "db unreachable",
                "consecutive_failures >= 5",
                "alert",
                false,
            ),
        ];
        assert_eq!(rules.len(), want.len(), "{rules:?}");
        for (got, want) in rules.iter().zip(want) {
            assert_eq!((got.0.as_str(), got.1.as_str(), got.2, got.3), want);
        }
        assert!(config.rules.iter().all(|r| r.expr.is_some()));

        let off = format!("[agent]\ndefault_rules = false\n{text}");
        assert_eq!(Config::parse(&off, |_| None).unwrap().rules.len(), 1);
    }

    #[test]
    fn an_unreachable_database_or_cache_alerts_even_when_critical() {
        let text = r#"
[service]
name = "web"

[[probe]]
name = "db"
level = 2
type = "postgres"
url = "postgres://app@127.0.0.1/app"
critical = true

[[probe]]
name = "cache"
level = 2
type = "redis"
url = "redis://127.0.0.1:6379"
"#;
        let config = Config::parse(text, |_| None).unwrap();
        let rules: Vec<(&str, &str)> = config
            .rules
            .iter()
            .map(|r| (r.name.as_str(), r.action.as_str()))
            .collect();
        assert_eq!(
            rules,
            [
                ("db unreachable", "alert"),
                ("db connections saturated", "rollback"),
                ("cache unreachable", "alert"),
            ]
        );
    }
}
