//! PagerDuty, through the Events API v2. An alert, a held, failed or
//! ineffective rollback, or an unhealthy deployment triggers an alert
//! (`POST /v2/enqueue`, `event_action = "trigger"`) whose `dedup_key` is
//! made of the service, the deployment and the rule alone, so any replica,
//! before or after a restart, names the same incident. `resolved` (and the
//! internal `closed`) resolves it with the same `dedup_key` and no payload:
//! when the rule no longer holds, or the deployment was rolled back,
//! replaced or became stable. A PagerDuty notifier is told these whatever
//! its `events`, as long as it is told of something that triggers: an
//! incident the agent opened, the agent resolves. Resolving an alert that
//! is not open is accepted and changes nothing, so a resolve sent by every
//! replica of a fleet, or after a restart for what may have been opened
//! before it, is harmless. A performed rollback is a change event (`POST
//! /v2/change/enqueue`), shown beside the service's incidents without
//! paging anyone. PagerDuty answers 202 with
//! `{"status":"success","message":"Event processed","dedup_key":...}`;
//! 400 (an invalid event) is final, 429 and 5xx are retried.
//!
//! Severity, our mapping: `rollback_failed` and `rollback_not_effective` are
//! `critical` (the bad deployment is still serving), `alert` is `error`,
//! `rollback_held` is `warning` (the agent chose to wait; a person decides).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::json;

use super::message::{truncate, Outgoing};
use super::url::check_url;
use crate::evidence::{Event, EventKind};
use crate::secret::Secret;

/// PagerDuty's limits on `summary` and `dedup_key`.
const SUMMARY_MAX: usize = 1024;
const DEDUP_KEY_MAX: usize = 255;

/// Through PagerDuty's Events API v2. An alert, a held, failed or
/// ineffective rollback, or an unhealthy deployment opens an incident (a
/// `trigger`) whose `dedup_key` is `backstop/<service>/<deployment>/<rule>`;
/// a performed rollback is a change event, which pages no one. The
/// incident is resolved, with the same key, when its rule no longer holds,
/// or when its deployment is rolled back, replaced by another deployment, or
/// becomes stable with the rule no longer holding. A PagerDuty notifier is
/// told what resolves an incident even when its `events` leave out
/// `resolved`, as long as it is told of something that opens one. An agent
/// that restarted resolves what it may have opened before it stopped, once
/// the rule is judged clear or the deployment has ended (PagerDuty accepts
/// the resolve of an incident that is not open, and changes nothing). In a
/// fleet, every replica names an incident with the same key, so any
/// replica's resolve closes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// The integration key of an Events API v2 integration on the service
    /// (32 characters). A secret. Required.
    pub routing_key: Secret,
    /// The Events API's base URL; `/v2/enqueue` and `/v2/change/enqueue`
    /// are appended. Default `https://events.pagerduty.com`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
}

fn default_api_url() -> String {
    "https://events.pagerduty.com".into()
}

impl PagerDutyConfig {
    pub(super) fn problems(&self) -> Vec<(String, String)> {
        let mut out = check_url("api_url", &self.api_url);
        if self.routing_key.expose().trim().is_empty() {
            out.push(("routing_key".into(), "must not be empty".into()));
        }
        out
    }

    pub(super) fn request(&self, event: &Event, now: SystemTime) -> Outgoing {
        let base = self.api_url.trim_end_matches('/');
        let key = self.routing_key.expose();
        let details = json!({
            "deployment": event.deployment,
            "rule": event.rule,
            "return_to": event.return_to,
            "evidence": event.evidence,
        });
        let summary = truncate(&event.summary, SUMMARY_MAX);
        let (path, body) = match severity(event.kind) {
            None if event.kind == EventKind::RollbackPerformed => (
                "/v2/change/enqueue",
                json!({
                    "routing_key": key,
                    "payload": {
                        "summary": summary,
                        "source": event.service,
                        "timestamp": rfc3339(now),
                        "custom_details": details,
                    },
                }),
            ),
            None => (
                "/v2/enqueue",
                json!({
                    "routing_key": key,
                    "event_action": "resolve",
                    "dedup_key": dedup_key(event),
                }),
            ),
            Some(severity) => {
                let mut payload = json!({
                    "summary": summary,
                    "source": event.service,
                    "severity": severity,
                    "timestamp": rfc3339(now),
                    "group": event.deployment,
                    "class": event.kind.as_str(),
                    "custom_details": details,
                });
                if let Some(e) = event.evidence.first() {
                    payload["component"] = json!(e.probe);
                }
                (
                    "/v2/enqueue",
                    json!({
                        "routing_key": key,
                        "event_action": "trigger",
                        "dedup_key": dedup_key(event),
                        "client": "backstop",
                        "payload": payload,
                    }),
                )
            }
        };
        Outgoing {
            url: format!("{base}{path}"),
            headers: HeaderMap::new(),
            body,
        }
    }
}

/// The severity of a triggering event; `None` for those that trigger
/// nothing (`resolved` and `closed`, sent as a resolve, and a performed
/// rollback, sent as a change event).
fn severity(kind: EventKind) -> Option<&'static str> {
    match kind {
        EventKind::RollbackFailed | EventKind::RollbackNotEffective | EventKind::Unhealthy => {
            Some("critical")
        }
        EventKind::Alert => Some("error"),
        EventKind::RollbackHeld => Some("warning"),
        EventKind::RollbackPerformed | EventKind::Resolved | EventKind::Closed => None,
    }
}

/// One alert per service, deployment and rule: a later trigger for the same
/// rule updates it, `resolved` closes it. Nothing else goes in (no replica,
/// no time), so that whoever resolves it, whenever, names the same alert.
fn dedup_key(event: &Event) -> String {
    let mut key = format!("backstop/{}/{}", event.service, event.deployment);
    if let Some(rule) = &event.rule {
        key.push('/');
        key.push_str(rule);
    }
    key.chars().take(DEDUP_KEY_MAX).collect()
}

/// `2024-05-01T12:00:00.000Z`.
fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    crate::utc::rfc3339(since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_timestamps_in_rfc3339() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (784_111_777_250, "1994-11-06T08:49:37.250Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_735_689_599_999, "2024-12-31T23:59:59.999Z"),
        ];
        for (ms, want) in cases {
            assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(ms)), want);
        }
    }

    fn config() -> PagerDutyConfig {
        PagerDutyConfig {
            routing_key: Secret::new("R0UT1NGKEY0123456789abcdef012345"),
            api_url: "https://events.pagerduty.com/".into(),
        }
    }

    fn event(kind: EventKind, rule: &str) -> Event {
        Event {
            kind,
            service: "web".into(),
            deployment: "v2".into(),
            rule: Some(rule.into()),
            summary: "v2 was rolled back".into(),
            evidence: vec![],
            return_to: Some("v1".into()),
        }
    }

    #[test]
    fn whatever_opened_an_incident_a_resolve_or_close_of_its_rule_names_the_same_one() {
        let triggers = [
            EventKind::Alert,
            EventKind::RollbackHeld,
            EventKind::RollbackFailed,
            EventKind::RollbackNotEffective,
            EventKind::Unhealthy,
        ];
        for kind in triggers {
            assert!(kind.opens_incident(), "{kind:?}");
            let t = config().request(&event(kind, "health failing"), UNIX_EPOCH);
            assert_eq!(t.url, "https://events.pagerduty.com/v2/enqueue");
            assert_eq!(t.body["event_action"], "trigger", "{kind:?}");
            assert_eq!(t.body["dedup_key"], "backstop/web/v2/health failing");
            for over in [EventKind::Resolved, EventKind::Closed] {
                let r = config().request(&event(over, "health failing"), UNIX_EPOCH);
                assert_eq!(r.url, t.url);
                assert_eq!(
                    r.body["dedup_key"], t.body["dedup_key"],
                    "{kind:?} {over:?}"
                );
            }
        }
        // Another rule, or another deployment, is another incident.
        let other = config().request(&event(EventKind::Resolved, "errors up"), UNIX_EPOCH);
        assert_eq!(other.body["dedup_key"], "backstop/web/v2/errors up");
    }

    #[test]
    fn a_resolve_carries_the_routing_key_the_action_and_the_dedup_key_only() {
        for kind in [EventKind::Resolved, EventKind::Closed] {
            assert!(!kind.opens_incident());
            let r = config().request(&event(kind, "health failing"), UNIX_EPOCH);
            assert_eq!(
                r.body,
                json!({
                    "routing_key": "R0UT1NGKEY0123456789abcdef012345",
                    "event_action": "resolve",
                    "dedup_key": "backstop/web/v2/health failing",
                }),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_dedup_key_never_exceeds_pagerdutys_limit() {
        let event = Event {
            kind: EventKind::Alert,
            service: "web".into(),
            deployment: "d".repeat(300),
            rule: Some("r".into()),
            summary: String::new(),
            evidence: vec![],
            return_to: None,
        };
        assert_eq!(dedup_key(&event).chars().count(), DEDUP_KEY_MAX);
    }
}
