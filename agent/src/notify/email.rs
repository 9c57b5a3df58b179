//! Email, over SMTP: one plain-text message per event, its subject naming
//! the service, the event and the deployment, its body the rule, the
//! summary, the deployment to return to and one line per piece of evidence.
//! `smtp://` uses STARTTLS when the server offers it (or insists on it with
//! `require_tls`), `smtps://` implicit TLS. A 4xx reply, a refused or timed
//! out connection are retried; a 5xx reply (a refused recipient) is final.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;

use super::message::evidence_line;
use crate::evidence::{Event, EventKind};
use crate::retry::Attempt;
use crate::secret::Secret;

/// An SMTP client for one notifier; connects on each send.
pub(super) type Mailer = AsyncSmtpTransport<Tokio1Executor>;

/// `type = "email"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server, `smtp://user:pass@host:587` (STARTTLS when the
    /// server offers it, plain otherwise) or `smtps://user:pass@host:465`
    /// (implicit TLS); without a port, 587 and 465. The user and password,
    /// percent-encoded, are optional. A secret: it carries the password.
    /// Required.
    pub url: Secret,
    /// The sender's address, `backstop@example.com` or
    /// `Backstop <backstop@example.com>`. Required.
    pub from: String,
    /// The recipients' addresses, at least one. Required.
    pub to: Vec<String>,
    /// With `smtp://`, refuse to send unless the server offers STARTTLS.
    /// Default `false`.
    #[serde(default)]
    pub require_tls: bool,
}

impl EmailConfig {
    pub(super) fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Err(p) = parse_url(self.url.expose()) {
            out.push(("url".to_string(), p.to_string()));
        }
        if let Err(e) = self.from.parse::<Mailbox>() {
            out.push((
                "from".into(),
                format!("{:?} is not an email address: {e}", self.from),
            ));
        }
        if self.to.is_empty() {
            out.push(("to".into(), "must name at least one address".into()));
        }
        for (i, to) in self.to.iter().enumerate() {
            if let Err(e) = to.parse::<Mailbox>() {
                out.push((
                    format!("to[{i}]"),
                    format!("{to:?} is not an email address: {e}"),
                ));
            }
        }
        out
    }

    /// The SMTP client; touches no network. Its errors never repeat the URL.
    pub(super) fn mailer(&self, timeout: Duration) -> Result<Mailer, String> {
        let u = parse_url(self.url.expose()).map_err(str::to_string)?;
        let host = u.host_str().unwrap_or_default().to_string();
        let tls = |host: &str| {
            TlsParameters::new(host.to_string()).map_err(|e| format!("TLS settings: {e}"))
        };
        let (port, tls) = match u.scheme() {
            "smtps" => (465, Tls::Wrapper(tls(&host)?)),
            _ if self.require_tls => (587, Tls::Required(tls(&host)?)),
            _ => (587, Tls::Opportunistic(tls(&host)?)),
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(u.port().unwrap_or(port))
            .tls(tls)
            .timeout(Some(timeout));
        if !u.username().is_empty() {
            let decode = |s: &str| {
                percent_encoding_decode(s)
                    .ok_or_else(|| "url: user or password is not UTF-8".to_string())
            };
            let user = decode(u.username())?;
            let pass = decode(u.password().unwrap_or_default())?;
            b = b.credentials(Credentials::new(user, pass));
        }
        Ok(b.build())
    }

    /// The message that tells the recipients about `event`.
    pub(super) fn message(&self, event: &Event) -> Result<Message, String> {
        let addr = |s: &str| s.parse::<Mailbox>().map_err(|e| format!("{s:?}: {e}"));
        let mut m = Message::builder()
            .from(addr(&self.from)?)
            .subject(subject(event))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            m = m.to(addr(to)?);
        }
        m.body(body(event))
            .map_err(|e| format!("building the message: {e}"))
    }
}

/// A URL of scheme `smtp` or `smtps` with a host; the problem never
/// repeats the URL.
fn parse_url(raw: &str) -> Result<url::Url, &'static str> {
    if raw.is_empty() {
        return Err("must not be empty");
    }
    match url::Url::parse(raw) {
        Ok(u)
            if matches!(u.scheme(), "smtp" | "smtps")
                && u.host_str().is_some_and(|h| !h.is_empty()) =>
        {
            Ok(u)
        }
        _ => Err("expected smtp://[user:pass@]host[:port] or smtps://[user:pass@]host[:port]"),
    }
}

/// A user or password as the URL spells it, percent-decoded.
fn percent_encoding_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Sends one message, classified for the retry policy: a 5xx reply, a
/// client or TLS error are final; a 4xx reply, a refused, broken or timed
/// out connection are retried.
pub(super) async fn send(mailer: &Mailer, message: &Message, label: &str) -> Attempt<()> {
    match mailer.send(message.clone()).await {
        Ok(_) => Attempt::Done(()),
        Err(e) => {
            let reason = format!("{label}: SMTP {e}");
            if e.is_permanent() || e.is_client() || e.is_tls() {
                Attempt::Fail(reason)
            } else {
                Attempt::Retry {
                    reason,
                    after: None,
                }
            }
        }
    }
}

/// `[backstop] shop: rollback performed for v2`.
fn subject(event: &Event) -> String {
    let what = match event.kind {
        EventKind::Alert => "alert",
        EventKind::RollbackHeld => "rollback held",
        EventKind::RollbackPerformed => "rollback performed",
        EventKind::RollbackFailed => "rollback failed",
        EventKind::RollbackNotEffective => "rollback not effective",
        EventKind::Unhealthy => "unhealthy",
        EventKind::Resolved | EventKind::Closed => "resolved",
    };
    one_line(&format!(
        "[backstop] {}: {what} for {}",
        event.service, event.deployment
    ))
}

fn body(event: &Event) -> String {
    let mut out = format!(
        "{}\n\nService: {}\nDeployment: {}\n",
        event.summary, event.service, event.deployment
    );
    if let Some(rule) = &event.rule {
        out.push_str(&format!("Rule: {rule}\n"));
    }
    if let Some(to) = &event.return_to {
        let label = if event.kind == EventKind::RollbackPerformed {
            "Returned to"
        } else {
            "Last stable"
        };
        out.push_str(&format!("{label}: {to}\n"));
    }
    if !event.evidence.is_empty() {
        out.push_str("\nEvidence:\n");
        for e in &event.evidence {
            out.push_str(&format!("- {}\n", evidence_line(e)));
        }
    }
    out.push_str(&format!("\n-- \nbackstop · {}\n", event.kind.as_str()));
    out
}

/// A header carries one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_judge::evidence::Evidence;

    fn config(url: &str, to: &[&str]) -> EmailConfig {
        EmailConfig {
            url: Secret::new(url),
            from: "backstop@example.com".into(),
            to: to.iter().map(|s| s.to_string()).collect(),
            require_tls: false,
        }
    }

    #[test]
    fn subject_and_body_name_the_service_event_deployment_rule_and_evidence() {
        let event = Event {
            kind: EventKind::RollbackPerformed,
            service: "shop".into(),
            deployment: "v2".into(),
            rule: Some("latency".into()),
            summary: "p95 latency doubled".into(),
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
            return_to: Some("v1".into()),
        };
        assert_eq!(
            subject(&event),
            "[backstop] shop: rollback performed for v2"
        );
        let b = body(&event);
        for want in [
            "p95 latency doubled",
            "Rule: latency",
            "Returned to: v1",
            "- latency (app) `p95_ms > 2x baseline for 5m`: p95_ms 480 vs threshold 400, over 5m, baseline 200",
        ] {
            assert!(b.contains(want), "{want:?} in {b}");
        }
        let c = config("smtp://u:hunter2@mail.example:587", &["ops@example.com"]);
        let m = String::from_utf8(c.message(&event).unwrap().formatted()).unwrap();
        assert!(
            m.contains("Subject: [backstop] shop: rollback performed for v2"),
            "{m}"
        );
        assert!(!m.contains("hunter2"), "{m}");
    }

    #[test]
    fn bad_settings_are_named_by_key_without_repeating_the_url() {
        let c = config(
            "http://u:hunter2@mail.example",
            &["ops@example.com", "not an address"],
        );
        let problems = c.problems();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["url", "to[1]"], "{problems:?}");
        assert!(!format!("{problems:?}").contains("hunter2"));
        let c = config("smtps://mail.example", &[]);
        let keys: Vec<String> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["to"]);
    }

    #[test]
    fn percent_encoded_credentials_are_decoded() {
        assert_eq!(
            percent_encoding_decode("p%40ss%2F1").as_deref(),
            Some("p@ss/1")
        );
        assert_eq!(percent_encoding_decode("100%").as_deref(), Some("100%"));
    }
}
