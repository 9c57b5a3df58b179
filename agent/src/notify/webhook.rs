//! A generic webhook: the event as one JSON POST,
//! `{"event","service","deployment","rule","summary","evidence","return_to"}`,
//! where `event` is the kind's name (`rollback` for a performed rollback, as
//! in the rollback webhook). Any 2xx is success.

use std::collections::BTreeMap;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::json;

use super::message::Outgoing;
use super::url::check_url;
use crate::evidence::Event;
use crate::secret::Secret;

/// `type = "webhook"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookNotifyConfig {
    /// Where the event is posted. A secret, since such URLs often carry a
    /// token. Required.
    pub url: Secret,
    /// Extra request headers, such as `Authorization`; their values are
    /// secrets. Default none.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
}

impl WebhookNotifyConfig {
    pub(super) fn problems(&self) -> Vec<(String, String)> {
        let mut out = check_url("url", self.url.expose());
        for (name, value) in &self.headers {
            let key = format!("headers.{name}");
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                out.push((key, "is not a valid header name".into()));
            } else if HeaderValue::from_str(value.expose()).is_err() {
                out.push((key, "value has characters a header cannot carry".into()));
            }
        }
        out
    }

    pub(super) fn request(&self, event: &Event) -> Outgoing {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            // Validated with the configuration.
            if let (Ok(n), Ok(mut v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value.expose()),
            ) {
                v.set_sensitive(true);
                headers.insert(n, v);
            }
        }
        Outgoing {
            url: self.url.expose().to_string(),
            headers,
            body: json!({
                "event": event.kind.as_str(),
                "service": event.service,
                "deployment": event.deployment,
                "rule": event.rule,
                "summary": event.summary,
                "evidence": event.evidence,
                "return_to": event.return_to,
            }),
        }
    }
}
