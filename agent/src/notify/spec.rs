//! What a notifier of each type needs, a closed set dispatched with
//! `match`: its problems, the request it makes of an event, its secrets.

use super::email::EmailConfig;
use super::message::Delivery;
use super::pagerduty::PagerDutyConfig;
use super::slack::SlackConfig;
use super::url::url_secrets;
use super::webhook::WebhookNotifyConfig;
use crate::evidence::Event;

/// What a notifier of each type needs; a closed set, dispatched with `match`.
#[derive(Debug, Clone)]
pub enum NotifySpec {
    Slack(SlackConfig),
    Pagerduty(PagerDutyConfig),
    Webhook(WebhookNotifyConfig),
    Email(EmailConfig),
}

impl NotifySpec {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Slack(_) => "slack",
            Self::Pagerduty(_) => "pagerduty",
            Self::Webhook(_) => "webhook",
            Self::Email(_) => "email",
        }
    }

    /// Problems serde cannot see, as (key, message); the key is relative to
    /// the `[[notify]]` table.
    pub(super) fn problems(&self) -> Vec<(String, String)> {
        match self {
            Self::Slack(c) => c.problems(),
            Self::Pagerduty(c) => c.problems(),
            Self::Webhook(c) => c.problems(),
            Self::Email(c) => c.problems(),
        }
    }

    /// The request or message that tells this service about `event`.
    pub(super) fn request(&self, event: &Event) -> Result<Delivery, String> {
        Ok(match self {
            Self::Slack(c) => Delivery::Http(c.request(event)),
            Self::Pagerduty(c) => Delivery::Http(c.request(event, std::time::SystemTime::now())),
            Self::Webhook(c) => Delivery::Http(c.request(event)),
            Self::Email(c) => Delivery::Email(Box::new(c.message(event)?)),
        })
    }

    /// Every secret value, so that no message from a server that echoes
    /// its request can carry one into a log line.
    pub(super) fn secrets(&self) -> Vec<String> {
        let mut out = match self {
            Self::Slack(c) => url_secrets(&c.url),
            Self::Pagerduty(c) => vec![c.routing_key.expose().to_string()],
            Self::Webhook(c) => {
                let mut s = url_secrets(&c.url);
                s.extend(c.headers.values().map(|v| v.expose().to_string()));
                s
            }
            Self::Email(c) => url_secrets(&c.url),
        };
        out.retain(|s| !s.is_empty());
        // Longest first, so a whole URL is hidden before its parts are.
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        out
    }
}
