//! `[[notify]]`: the settings every notifier has, read and validated here,
//! and the table of notifier types, each with how its own settings (in its
//! own file) are read.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::email::EmailConfig;
use super::pagerduty::PagerDutyConfig;
use super::slack::SlackConfig;
use super::spec::NotifySpec;
use super::webhook::WebhookNotifyConfig;
use crate::duration::{self, Dur};
use crate::evidence::EventKind;
use crate::problems::{join, Problems};

/// The notifier types, as written in `type`.
pub const NOTIFY_TYPES: &[&str] = &["slack", "pagerduty", "webhook", "email"];

/// The keys every `[[notify]]` table may have, whatever its type; the rest
/// belong to the type's own settings.
pub const NOTIFY_COMMON_KEYS: &[&str] = &["type", "name", "events", "timeout", "deadline"];

/// Every event kind, in the order people read them.
const ALL_EVENTS: &[EventKind] = &[
    EventKind::Alert,
    EventKind::RollbackHeld,
    EventKind::RollbackPerformed,
    EventKind::RollbackFailed,
    EventKind::RollbackNotEffective,
    EventKind::Unhealthy,
    EventKind::Resolved,
];

/// The settings every `[[notify]]` has, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyCommon {
    /// `slack`, `pagerduty`, `webhook` or `email`. Required.
    #[serde(rename = "type")]
    pub kind: String,
    /// The notifier's name in metrics and logs. Default: its type.
    #[serde(default)]
    pub name: Option<String>,
    /// The events it is told about, by name (`alert`, `rollback_held`,
    /// `rollback`, `rollback_failed`, `rollback_not_effective`, `unhealthy`,
    /// `resolved`). `resolved` says that what an earlier event reported is
    /// over: its rule no longer holds, or its deployment was rolled back,
    /// replaced or became stable. A `pagerduty` notifier told of any event
    /// that opens an incident is told `resolved` too.
    /// Default: all of them.
    #[serde(default)]
    pub events: Option<Vec<EventName>>,
    /// Time one attempt may take. Default `10s`.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Time all attempts at one notification may take, retries included.
    /// Default `60s`.
    #[serde(default = "default_deadline")]
    pub deadline: Dur,
}

fn default_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_deadline() -> Dur {
    Dur(Duration::from_secs(60))
}

/// An event kind as named in `events`: the names of [`EventKind::as_str`],
/// so `rollback` is the performed rollback, as in the webhook body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventName(pub EventKind);

impl<'de> Deserialize<'de> for EventName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        ALL_EVENTS
            .iter()
            .find(|k| k.as_str() == name)
            .map(|k| EventName(*k))
            .ok_or_else(|| {
                let names: Vec<&str> = ALL_EVENTS.iter().map(|k| k.as_str()).collect();
                serde::de::Error::custom(format!(
                    "unknown event {name:?}, expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// One `[[notify]]`, validated.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// `name`, or the type when none is written.
    pub name: String,
    /// The events this notifier is told about.
    pub events: Vec<EventKind>,
    pub timeout: Duration,
    pub deadline: Duration,
    pub spec: NotifySpec,
}

impl NotifyConfig {
    /// Validates one notifier's settings, reporting every problem as (key,
    /// message) with the key relative to its `[[notify]]` table.
    pub fn validate(common: NotifyCommon, spec: NotifySpec) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let name = common.name.unwrap_or_else(|| spec.type_name().to_string());
        if !valid_name(&name) {
            problems.push((
                "name".into(),
                format!("{name:?} must be 1-64 characters of letters, digits, '_', '-' or '.'"),
            ));
        }
        let events = match common.events {
            None => ALL_EVENTS.to_vec(),
            Some(names) if names.is_empty() => {
                problems.push((
                    "events".into(),
                    "must name at least one event (leave it out for all)".into(),
                ));
                vec![]
            }
            Some(names) => {
                let mut kinds = Vec::new();
                for EventName(k) in names {
                    if !kinds.contains(&k) {
                        kinds.push(k);
                    }
                }
                kinds
            }
        };
        let (timeout, deadline) = (common.timeout.0, common.deadline.0);
        if timeout.is_zero() {
            problems.push(("timeout".into(), "must be more than 0s".into()));
        }
        if deadline < timeout {
            problems.push((
                "deadline".into(),
                format!(
                    "{} is shorter than timeout {}",
                    duration::format(deadline),
                    duration::format(timeout)
                ),
            ));
        }
        problems.extend(spec.problems());
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            name,
            events,
            timeout,
            deadline,
            spec,
        })
    }

    pub fn type_name(&self) -> &'static str {
        self.spec.type_name()
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Reads one type's own settings into its [`NotifySpec`].
type ReadSpec = fn(&mut Problems, &str, Value) -> Option<NotifySpec>;

/// Every notifier type: its `type` value, and how its own settings are read.
const KINDS: &[(&str, ReadSpec)] = &[
    ("slack", |cx, path, v| {
        cx.section::<SlackConfig>(path, v).map(NotifySpec::Slack)
    }),
    ("pagerduty", |cx, path, v| {
        cx.section::<PagerDutyConfig>(path, v)
            .map(NotifySpec::Pagerduty)
    }),
    ("webhook", |cx, path, v| {
        cx.section::<WebhookNotifyConfig>(path, v)
            .map(NotifySpec::Webhook)
    }),
    ("email", |cx, path, v| {
        cx.section::<EmailConfig>(path, v).map(NotifySpec::Email)
    }),
];

/// Reads every `[[notify]]`: those without problems, and every problem
/// (a name used twice among them too).
pub fn read(cx: &mut Problems, value: Option<Value>) -> Vec<NotifyConfig> {
    let notify = match value {
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| read_one(cx, i, v).map(|n| (i, n)))
            .collect::<Vec<_>>(),
        Some(_) => {
            cx.report("notify", "must be an array of tables: write [[notify]]");
            vec![]
        }
        None => vec![],
    };
    let mut names = HashSet::new();
    for (i, n) in &notify {
        if !names.insert(n.name.as_str()) {
            cx.report(
                format!("notify[{i}].name"),
                format!("duplicate notifier name {:?}: give each a name", n.name),
            );
        }
    }
    notify.into_iter().map(|(_, n)| n).collect()
}

/// One `[[notify]]`: `type` first, then that type's own settings, so
/// errors keep their key path and line.
fn read_one(cx: &mut Problems, i: usize, v: Value) -> Option<NotifyConfig> {
    let path = format!("notify[{i}]");
    let Value::Object(map) = v else {
        cx.report(path, "must be a table");
        return None;
    };
    let (common, specific): (serde_json::Map<_, _>, serde_json::Map<_, _>) = map
        .into_iter()
        .partition(|(k, _)| NOTIFY_COMMON_KEYS.contains(&k.as_str()));
    let kind = common
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_string);
    let common: Option<NotifyCommon> = cx.section(&path, Value::Object(common));
    let kind = kind?;
    let spec = match KINDS.iter().find(|(name, _)| *name == kind) {
        Some((_, read_spec)) => read_spec(cx, &path, Value::Object(specific)),
        None => {
            let msg = format!(
                "unknown notifier type {kind:?}, expected one of {}",
                NOTIFY_TYPES.join(", ")
            );
            cx.report(format!("{path}.type"), msg);
            None
        }
    };
    match NotifyConfig::validate(common?, spec?) {
        Ok(n) => Some(n),
        Err(problems) => {
            for (key, message) in problems {
                cx.report(join(&path, &key), message);
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_notifier_type_is_in_the_table() {
        let kinds: Vec<&str> = KINDS.iter().map(|(name, _)| *name).collect();
        assert_eq!(kinds, NOTIFY_TYPES);
    }
}
