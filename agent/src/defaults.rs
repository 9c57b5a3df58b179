//! The default rule set: the rollback triggers operators already write in
//! deployment plans, made from the probes a configuration has. Immediate:
//! a critical probe failing three times running (health 5xx, a critical smoke
//! test), the database unreachable, memory above 95%. Sustained during the
//! watch: error rate above 5%, p95 latency above 2x the baseline, the
//! database's connections above 90%, CPU or memory above 90%, each for 5
//! minutes. A rule written in the file with the same name replaces a default
//! one; `[agent] default_rules = false` turns them all off.

use backstop_probes::ProbeSpec;

use crate::config::{Action, ProbeConfig, RuleConfig};

fn rule(name: String, probe: &str, when: &str, action: Action) -> RuleConfig {
    RuleConfig {
        name,
        probe: probe.to_string(),
        when: when.to_string(),
        action,
        after_stable: false,
        default: true,
    }
}

/// The default rules for these probes, in probe order.
pub fn rules_for(probes: &[ProbeConfig]) -> Vec<RuleConfig> {
    use Action::{Alert, Rollback};
    let mut out = Vec::new();
    for p in probes {
        let n = &p.name;
        if p.critical {
            out.push(rule(
                format!("{n} failing"),
                n,
                "consecutive_failures >= 3",
                Rollback,
            ));
        }
        match &p.spec {
            ProbeSpec::Postgres(_) => {
                if !p.critical {
                    out.push(rule(
                        format!("{n} unreachable"),
                        n,
                        "consecutive_failures >= 3",
                        Rollback,
                    ));
                }
                out.push(rule(
                    format!("{n} connections saturated"),
                    n,
                    "pool_utilization > 90% for 5m",
                    Rollback,
                ));
            }
            ProbeSpec::Redis(_) if !p.critical => {
                out.push(rule(
                    format!("{n} unreachable"),
                    n,
                    "consecutive_failures >= 3",
                    Alert,
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
