//! `[[probe]]`: the settings every probe has, read and validated here; each
//! type's own settings (and the levels it may have) are the probes crate's
//! `ProbeSpec`.

use std::collections::HashSet;
use std::time::Duration;

use backstop_probes::{Context, ProbeSpec, PROBE_TYPES};
use serde::Deserialize;
use serde_json::Value;

use crate::duration::Dur;
use crate::problems::Problems;

/// The settings every probe has, whatever its type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeCommon {
    /// Unique name; used in metrics and rules. Required.
    name: String,
    /// 1 to 4, see SPEC's levels. Required.
    level: u8,
    /// The probe type. Required.
    #[serde(rename = "type")]
    #[allow(dead_code)] // read before the rest, to pick the type's own settings
    kind: String,
    /// Time between checks. Default `10s`.
    #[serde(default = "default_interval")]
    interval: Dur,
    /// Time one check may take. Default `5s`, and never more than `interval`.
    #[serde(default)]
    timeout: Option<Dur>,
    /// A check that works but takes longer is `degraded`. Default none.
    #[serde(default)]
    max_latency: Option<Dur>,
    /// A failure makes `backstop check` exit 1, and the default rules act on it. Default `false`.
    #[serde(default)]
    critical: bool,
    /// Probes of what this one depends on (a database, a cache): while one of them fails, this probe's rollback rules are held, never acted on. Default none.
    #[serde(default)]
    depends_on: Vec<String>,
}

const PROBE_COMMON_KEYS: &[&str] = &[
    "name",
    "level",
    "type",
    "interval",
    "timeout",
    "max_latency",
    "critical",
    "depends_on",
];

fn default_interval() -> Dur {
    Dur(Duration::from_secs(10))
}

/// One `[[probe]]`, validated.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub name: String,
    pub level: u8,
    pub spec: ProbeSpec,
    pub interval: Duration,
    pub timeout: Duration,
    pub max_latency: Option<Duration>,
    pub critical: bool,
    /// The probes this one depends on, by name: while one of them fails,
    /// this probe's rollback rules are held.
    pub depends_on: Vec<String>,
}

impl ProbeConfig {
    pub fn type_name(&self) -> &'static str {
        self.spec.type_name()
    }

    /// Whether `p50_ms` … `p99_ms` are percentiles of this probe's
    /// `latency_ms` rather than signals it yields itself (a `scrape`
    /// probe's, from the service's histogram).
    /// A type that can yield percentiles of its own (`scrape`, from the
    /// service's histogram; `promql`, a chosen signal) never has them
    /// computed from its own duration.
    pub fn latency_percentiles(&self) -> bool {
        let own_kind = backstop_probes::type_signals(self.type_name()).unwrap_or_default();
        self.spec
            .signals()
            .iter()
            .any(|s| s.name == backstop_judge::rules::LATENCY)
            && !own_kind
                .iter()
                .any(|s| backstop_judge::rules::percentile_of(&s.name).is_some())
    }

    /// Every signal a rule on this probe may read: what it yields, the
    /// percentiles of its latency, and `consecutive_failures`.
    pub fn rule_signals(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .spec
            .signals()
            .into_iter()
            .map(|s| s.name.into_owned())
            .collect();
        if self.latency_percentiles() {
            names.extend(
                backstop_judge::rules::PERCENTILES
                    .iter()
                    .map(|(n, _)| n.to_string()),
            );
        }
        names.push(backstop_judge::rules::CONSECUTIVE_FAILURES.to_string());
        names
    }

    /// Builds the runtime probe; the configuration was validated, so this
    /// only fails if the environment changed in between.
    pub fn build(&self) -> Result<backstop_probes::Probe, Vec<backstop_probes::ConfigProblem>> {
        self.build_shared(&backstop_probes::Clients::default())
    }

    /// Like [`ProbeConfig::build`], sharing `http` clients with the other
    /// probes built with `clients`.
    pub fn build_shared(
        &self,
        clients: &backstop_probes::Clients,
    ) -> Result<backstop_probes::Probe, Vec<backstop_probes::ConfigProblem>> {
        self.spec.build_shared(
            Context {
                timeout: self.timeout,
            },
            clients,
        )
    }
}

/// Reads every `[[probe]]`: the probes without problems, and the names of
/// all written, problems or not (a rule or a dependency naming a probe with
/// problems of its own is not reported a second time).
pub fn read(
    cx: &mut Problems,
    value: Option<Value>,
    clients: &backstop_probes::Clients,
) -> (Vec<ProbeConfig>, HashSet<String>) {
    let mut written = HashSet::new();
    let probes = match value {
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| {
                if let Some(name) = v.get("name").and_then(Value::as_str) {
                    written.insert(name.to_string());
                }
                read_one(cx, i, v, clients)
            })
            .collect(),
        Some(_) => {
            cx.report("probe", "must be an array of tables: write [[probe]]");
            vec![]
        }
        None => vec![],
    };
    (probes, written)
}

fn read_one(
    cx: &mut Problems,
    i: usize,
    v: Value,
    clients: &backstop_probes::Clients,
) -> Option<ProbeConfig> {
    let path = format!("probe[{i}]");
    let Value::Object(map) = v else {
        cx.report(path, "must be a table");
        return None;
    };
    let (common, specific): (serde_json::Map<_, _>, serde_json::Map<_, _>) = map
        .into_iter()
        .partition(|(k, _)| PROBE_COMMON_KEYS.contains(&k.as_str()));
    let kind = common
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_string);
    let common: Option<ProbeCommon> = cx.section(&path, Value::Object(common));
    let kind = kind?;
    let spec = spec(cx, &path, &kind, Value::Object(specific));
    let common = common?;
    let mut ok = spec.is_some();
    if !(1..=4).contains(&common.level) {
        cx.report(format!("{path}.level"), "must be 1, 2, 3 or 4");
        ok = false;
    } else if let Some(levels) = spec
        .as_ref()
        .map(ProbeSpec::levels)
        .or_else(|| ProbeSpec::type_levels(&kind))
        .filter(|levels| !levels.contains(&common.level))
    {
        cx.report(
            format!("{path}.level"),
            format!(
                "a {kind} probe belongs to level {}",
                levels
                    .iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        );
        ok = false;
    }
    if !valid_name(&common.name) {
        cx.report(
            format!("{path}.name"),
            format!(
                "{:?} must be 1-64 characters of letters, digits, '_', '-' or '.'",
                common.name
            ),
        );
        ok = false;
    }
    let interval = common.interval.0;
    if interval < Duration::from_millis(100) {
        cx.report(format!("{path}.interval"), "must be at least 100ms");
        ok = false;
    }
    let timeout = common
        .timeout
        .map(|d| d.0)
        .unwrap_or_else(|| Duration::from_secs(5).min(interval));
    if timeout.is_zero() {
        cx.report(format!("{path}.timeout"), "must be more than 0s");
        ok = false;
    } else if timeout > interval {
        cx.report(
            format!("{path}.timeout"),
            format!(
                "{} is longer than interval {}",
                crate::duration::format(timeout),
                crate::duration::format(interval)
            ),
        );
        ok = false;
    }
    let spec = spec?;
    if let Err(problems) = spec.build_shared(Context { timeout }, clients) {
        for p in problems {
            cx.report(format!("{path}.{}", p.key), p.message);
        }
        ok = false;
    }
    ok.then(|| ProbeConfig {
        name: common.name,
        level: common.level,
        spec,
        interval,
        timeout,
        max_latency: common.max_latency.map(|d| d.0),
        critical: common.critical,
        depends_on: common.depends_on,
    })
}

fn spec(cx: &mut Problems, path: &str, kind: &str, v: Value) -> Option<ProbeSpec> {
    match cx.deserialize(path, v, |de| ProbeSpec::deserialize_typed(kind, de))? {
        Some(spec) => Some(spec),
        None => {
            cx.report(
                format!("{path}.type"),
                format!(
                    "unknown probe type {kind:?}, expected one of {}",
                    PROBE_TYPES.join(", ")
                ),
            );
            None
        }
    }
}

/// Checks the probes against each other: unique names, and `depends_on`
/// naming another probe that was written (one with problems of its own
/// included, so it is not reported twice).
pub fn check(cx: &mut Problems, probes: &[ProbeConfig], written: &HashSet<String>) {
    let mut seen = HashSet::new();
    for (i, p) in probes.iter().enumerate() {
        if !seen.insert(p.name.as_str()) {
            cx.report(
                format!("probe[{i}].name"),
                format!("duplicate probe name {:?}", p.name),
            );
        }
    }
    for (i, p) in probes.iter().enumerate() {
        for (j, dep) in p.depends_on.iter().enumerate() {
            let key = format!("probe[{i}].depends_on[{j}]");
            if *dep == p.name {
                cx.report(key, format!("probe {:?} cannot depend on itself", p.name));
            } else if !written.contains(dep) {
                let others: Vec<&str> = probes
                    .iter()
                    .map(|q| q.name.as_str())
                    .filter(|n| *n != p.name)
                    .collect();
                cx.report(
                    key,
                    format!(
                        "no probe named {dep:?}; name one of the other probes: {}",
                        if others.is_empty() {
                            "(there is none)".to_string()
                        } else {
                            others.join(", ")
                        }
                    ),
                );
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
}
