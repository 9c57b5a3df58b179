//! Slack, through an incoming webhook: one message per event, a `text`
//! fallback for notifications plus Block Kit `blocks` — a header with the
//! summary, the service and deployments as fields, one line per piece of
//! evidence. Slack answers `ok` with 200; `invalid_payload` (400),
//! `invalid_token` or `action_prohibited` (403), `no_service` or
//! `channel_not_found` (404) and `channel_is_archived` (410) are final.

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{json, Value};

use super::message::{evidence_line, truncate, Outgoing};
use super::url::check_url;
use crate::evidence::{Event, EventKind};
use crate::secret::Secret;

/// Block Kit's limits: a header's text, a section's text, a field's text.
const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;
const FIELD_MAX: usize = 2000;

/// `type = "slack"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The incoming-webhook URL, `https://hooks.slack.com/services/...`
    /// (`http` is accepted for a local stand-in). A secret: it is the only
    /// credential. Required.
    pub url: Secret,
}

impl SlackConfig {
    pub(super) fn problems(&self) -> Vec<(String, String)> {
        check_url("url", self.url.expose())
    }

    pub(super) fn request(&self, event: &Event) -> Outgoing {
        Outgoing {
            url: self.url.expose().to_string(),
            headers: HeaderMap::new(),
            body: message(event),
        }
    }
}

/// The message for one event.
fn message(event: &Event) -> Value {
    let mut fields = vec![
        field("Service", &escape(&event.service)),
        field("Deployment", &code(&event.deployment)),
    ];
    if let Some(rule) = &event.rule {
        fields.push(field("Rule", &escape(rule)));
    }
    if let Some(to) = &event.return_to {
        let label = if event.kind == EventKind::RollbackPerformed {
            "Returned to"
        } else {
            "Last stable"
        };
        fields.push(field(label, &code(to)));
    }
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": truncate(&format!("{} {}", icon(event.kind), event.summary), HEADER_MAX),
                "emoji": true,
            },
        }),
        json!({ "type": "section", "fields": fields }),
    ];
    if !event.evidence.is_empty() {
        let lines: Vec<String> = event
            .evidence
            .iter()
            .map(|e| format!("• {}", escape(&evidence_line(e))))
            .collect();
        blocks.push(json!({
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": truncate(&format!("*Evidence*\n{}", lines.join("\n")), SECTION_MAX),
            },
        }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{ "type": "mrkdwn", "text": format!("backstop · {}", event.kind.as_str()) }],
    }));
    json!({
        "text": escape(&format!(
            "{} ({}, deployment {})",
            event.summary, event.service, event.deployment
        )),
        "blocks": blocks,
    })
}

fn field(label: &str, value: &str) -> Value {
    json!({ "type": "mrkdwn", "text": truncate(&format!("*{label}*\n{value}"), FIELD_MAX) })
}

fn code(s: &str) -> String {
    format!("`{}`", escape(&s.replace('`', "'")))
}

/// Slack's mrkdwn treats `&`, `<` and `>` as markup; these are its escapes.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn icon(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Alert => ":warning:",
        EventKind::RollbackHeld => ":double_vertical_bar:",
        EventKind::RollbackPerformed => ":rewind:",
        EventKind::RollbackFailed | EventKind::RollbackNotEffective | EventKind::Unhealthy => {
            ":rotating_light:"
        }
        EventKind::Resolved | EventKind::Closed => ":white_check_mark:",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_judge::evidence::Evidence;

    #[test]
    fn escapes_markup_in_the_evidence_and_caps_the_header() {
        let event = Event {
            kind: EventKind::Alert,
            service: "web".into(),
            deployment: "d2".into(),
            rule: Some("latency".into()),
            summary: "x".repeat(400),
            evidence: vec![Evidence {
                rule: "latency".into(),
                probe: "app".into(),
                expression: "p95_ms > 2x baseline for 5m".into(),
                signal: Some("p95_ms".into()),
                observed: Some(480.0),
                threshold: Some(400.0),
                window: Some("5m".into()),
                baseline: Some(200.0),
                ratio: None,
                p_value: None,
                judged_by: None,
                summary: String::new(),
            }],
            return_to: None,
        };
        let m = message(&event);
        let header = m["blocks"][0]["text"]["text"].as_str().unwrap();
        assert_eq!(header.chars().count(), HEADER_MAX);
        let evidence = m["blocks"][2]["text"]["text"].as_str().unwrap();
        assert!(
            evidence.contains("`p95_ms &gt; 2x baseline for 5m`: p95_ms 480 vs threshold 400"),
            "{evidence}"
        );
    }
}
