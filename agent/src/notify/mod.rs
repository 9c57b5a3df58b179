//! Notifiers tell people what the agent saw and did, with the evidence:
//! Slack, PagerDuty, a generic webhook or email, one file each. Delivery never
//! blocks the caller: each notifier has its own queue and worker task, so a
//! slow or failing notifier delays neither a rollback nor the other
//! notifiers, and one notifier's messages arrive in the order they were sent
//! (a PagerDuty resolve never overtakes its trigger).

mod email;
mod message;
mod pagerduty;
mod slack;
mod spec;
mod url;
mod webhook;

pub mod config;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{describe_counter, Counter};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::duration;
use crate::evidence::{Event, EventKind};
use crate::retry::{classify_error, classify_status, retry, Attempt, RetryPolicy};

pub use self::config::{EventName, NotifyCommon, NotifyConfig, NOTIFY_COMMON_KEYS, NOTIFY_TYPES};
use self::message::{redact, truncate, Delivery, Outgoing};
pub use self::spec::NotifySpec;
pub use email::EmailConfig;
pub use pagerduty::PagerDutyConfig;
pub use slack::SlackConfig;
pub use webhook::WebhookNotifyConfig;

/// Counter of notifications by notifier and outcome (`sent`, `failed`).
pub const NOTIFICATIONS_TOTAL: &str = "backstop_notifications_total";

/// Notifications one notifier may have waiting; more are dropped and counted
/// as failed, so a notifier that never answers cannot grow without bound.
const QUEUE_LEN: usize = 64;

/// HELP text of the notifier metrics. [`Notifiers::build`] calls it; the
/// exporter's own `describe` may too.
pub fn describe() {
    describe_counter!(
        NOTIFICATIONS_TOTAL,
        "Notifications by notifier and outcome: sent, or failed after its retries (or dropped)."
    );
}

/// The configured notifiers, ready to send. Cloning shares the queues.
#[derive(Clone)]
pub struct Notifiers {
    notifiers: Arc<[Notifier]>,
}

impl std::fmt::Debug for Notifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.notifiers
                    .iter()
                    .map(|n| format!("{} ({})", n.target.label, n.target.spec.type_name())),
            )
            .finish()
    }
}

struct Notifier {
    target: Arc<Target>,
    /// Made on the first send, inside the runtime that runs the worker.
    queue: OnceLock<mpsc::Sender<Job>>,
}

/// What a worker needs to deliver. Holds no queue, so dropping
/// [`Notifiers`] ends the workers once their queues are empty.
struct Target {
    label: String,
    events: Vec<EventKind>,
    timeout: Duration,
    deadline: Duration,
    spec: NotifySpec,
    secrets: Vec<String>,
    client: reqwest::Client,
    /// The SMTP client of an email notifier.
    mailer: Option<email::Mailer>,
    sent: Counter,
    failed: Counter,
}

struct Job {
    event: Arc<Event>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Notifications handed to the workers by one [`Notifiers::send`]. Dropping
/// it does not cancel them.
pub struct Deliveries {
    pending: Vec<oneshot::Receiver<Result<(), String>>>,
}

impl Deliveries {
    /// How many notifiers were told.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Waits for every delivery to end: sent, or failed after its retries
    /// (each within its notifier's deadline, plus the time spent waiting
    /// behind earlier notifications to the same notifier).
    pub async fn wait(self) -> Vec<Result<(), String>> {
        let mut out = Vec::with_capacity(self.pending.len());
        for rx in self.pending {
            out.push(
                rx.await
                    .unwrap_or_else(|_| Err("delivery abandoned: the runtime stopped".into())),
            );
        }
        out
    }
}

impl Notifiers {
    /// Builds the notifiers. Touches no network: connections are made on
    /// the first send.
    pub fn build(configs: &[NotifyConfig]) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        describe();
        let client = reqwest::Client::builder()
            .user_agent(concat!("backstop/", env!("CARGO_PKG_VERSION")))
            // A redirect would resend the body, routing key included, to
            // wherever the first server pointed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the notifiers' HTTP client")?;
        let notifiers = configs
            .iter()
            .map(|c| -> anyhow::Result<Notifier> {
                let counter = |outcome: &'static str| {
                    metrics::counter!(NOTIFICATIONS_TOTAL, "notifier" => c.name.clone(), "outcome" => outcome)
                };
                let mailer = match &c.spec {
                    NotifySpec::Email(e) => Some(
                        e.mailer(c.timeout)
                            .map_err(|why| anyhow::anyhow!("notifier {}: {why}", c.name))?,
                    ),
                    _ => None,
                };
                Ok(Notifier {
                    target: Arc::new(Target {
                        label: c.name.clone(),
                        events: c.events.clone(),
                        timeout: c.timeout,
                        deadline: c.deadline,
                        secrets: c.spec.secrets(),
                        spec: c.spec.clone(),
                        client: client.clone(),
                        mailer,
                        sent: counter("sent"),
                        failed: counter("failed"),
                    }),
                    queue: OnceLock::new(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { notifiers })
    }

    /// How many notifiers are configured.
    pub fn len(&self) -> usize {
        self.notifiers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.notifiers.is_empty()
    }

    /// Hands `event` to every notifier that wants it and returns at once;
    /// the deliveries run on their notifiers' workers. Each failure (after
    /// its retries) is logged and counted in `backstop_notifications_total`.
    /// Must be called within a Tokio runtime; outside one, every delivery
    /// fails at once.
    pub fn send(&self, event: Event) -> Deliveries {
        let event = Arc::new(event);
        let mut pending = Vec::new();
        for n in self.notifiers.iter().filter(|n| n.target.wants(event.kind)) {
            let (done, rx) = oneshot::channel();
            let job = Job {
                event: event.clone(),
                done,
            };
            let refused = match n.queue() {
                Some(q) => match q.try_send(job) {
                    Ok(()) => None,
                    Err(mpsc::error::TrySendError::Full(job)) => Some((
                        job,
                        format!("dropped: {QUEUE_LEN} notifications already waiting"),
                    )),
                    Err(mpsc::error::TrySendError::Closed(job)) => {
                        Some((job, "dropped: the notifier's worker stopped".to_string()))
                    }
                },
                None => Some((job, "dropped: no Tokio runtime to deliver on".to_string())),
            };
            if let Some((job, why)) = refused {
                let result = Err(why);
                n.target.record(&job.event, &result);
                let _ = job.done.send(result);
            }
            pending.push(rx);
        }
        Deliveries { pending }
    }

    /// Sends `event` and waits for every delivery to end; for tests and the
    /// demo. One result per notifier told, in configuration order.
    pub async fn send_and_wait(&self, event: Event) -> Vec<Result<(), String>> {
        self.send(event).wait().await
    }
}

impl Notifier {
    /// The notifier's queue, starting its worker on first use; `None`
    /// outside a Tokio runtime.
    fn queue(&self) -> Option<&mpsc::Sender<Job>> {
        if let Some(q) = self.queue.get() {
            return Some(q);
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        Some(self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE_LEN);
            handle.spawn(work(self.target.clone(), rx));
            tx
        }))
    }
}

/// A notifier's worker: delivers its queue in order, one at a time.
async fn work(target: Arc<Target>, mut rx: mpsc::Receiver<Job>) {
    while let Some(job) = rx.recv().await {
        let result = target.deliver(&job.event).await;
        target.record(&job.event, &result);
        let _ = job.done.send(result);
    }
}

impl Target {
    /// Whether this notifier is told of `kind`: the events it asks for; and
    /// a PagerDuty notifier told of anything that opens an incident is also
    /// told what resolves it (`resolved`, and `closed`, never a name in
    /// `events`), so that no incident the agent opened stays open.
    fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(&kind)
            || (matches!(self.spec, NotifySpec::Pagerduty(_))
                && matches!(kind, EventKind::Resolved | EventKind::Closed)
                && self.events.iter().any(|k| k.opens_incident()))
    }

    /// Delivers one event with retries, all within the deadline.
    async fn deliver(&self, event: &Event) -> Result<(), String> {
        let out = self
            .spec
            .request(event)
            .map_err(|e| redact(e, &self.secrets))?;
        let policy = RetryPolicy {
            deadline: self.deadline,
            ..RetryPolicy::default()
        };
        let attempts = retry(policy, |_| self.attempt(&out));
        let result = match tokio::time::timeout(self.deadline, attempts).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "{} did not answer within the {} deadline",
                self.label,
                duration::format(self.deadline)
            )),
        };
        result.map_err(|e| redact(e, &self.secrets))
    }

    /// One attempt: a POST, or an email through SMTP.
    async fn attempt(&self, out: &Delivery) -> Attempt<()> {
        match (out, &self.mailer) {
            (Delivery::Http(out), _) => self.post(out).await,
            (Delivery::Email(m), Some(mailer)) => {
                let sent = tokio::time::timeout(self.timeout, email::send(mailer, m, &self.label));
                match sent.await {
                    Ok(Attempt::Done(())) => Attempt::Done(()),
                    Ok(Attempt::Retry { reason, after }) => Attempt::Retry {
                        reason: redact(reason, &self.secrets),
                        after,
                    },
                    Ok(Attempt::Fail(reason)) => Attempt::Fail(redact(reason, &self.secrets)),
                    Err(_) => Attempt::Retry {
                        reason: format!(
                            "{}: SMTP server did not answer within {}",
                            self.label,
                            duration::format(self.timeout)
                        ),
                        after: None,
                    },
                }
            }
            (Delivery::Email(_), None) => Attempt::Fail(format!("{}: no SMTP client", self.label)),
        }
    }

    /// One POST, classified for the retry policy; a refusal carries what
    /// the server said, shortened.
    async fn post(&self, out: &Outgoing) -> Attempt<()> {
        let sent = self
            .client
            .post(&out.url)
            .headers(out.headers.clone())
            .timeout(self.timeout)
            .json(&out.body)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return classify_error(e, &self.label),
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let said = said(resp).await;
        let with = |reason: String| {
            let reason = if said.is_empty() {
                reason
            } else {
                format!("{reason}: {said}")
            };
            redact(reason, &self.secrets)
        };
        match classify_status(status, &headers, &self.label) {
            Attempt::Done(()) => Attempt::Done(()),
            Attempt::Retry { reason, after } => Attempt::Retry {
                reason: with(reason),
                after,
            },
            Attempt::Fail(reason) => Attempt::Fail(with(reason)),
        }
    }

    fn record(&self, event: &Event, result: &Result<(), String>) {
        match result {
            Ok(()) => {
                self.sent.increment(1);
                tracing::debug!(
                    notifier = %self.label,
                    r#type = self.spec.type_name(),
                    event = event.kind.as_str(),
                    service = %event.service,
                    deployment = %event.deployment,
                    "notification sent"
                );
            }
            Err(e) => {
                self.failed.increment(1);
                tracing::warn!(
                    notifier = %self.label,
                    r#type = self.spec.type_name(),
                    event = event.kind.as_str(),
                    service = %event.service,
                    deployment = %event.deployment,
                    error = %e,
                    "notification failed"
                );
            }
        }
    }
}

/// The start of a response body in one short line: a JSON error's
/// `message` (and `errors`), or the text itself (Slack answers
/// `invalid_token`). Reading stops after 4 KiB.
async fn said(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= 4096 {
            break;
        }
    }
    if resp.status().is_success() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&body);
    let line = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(o)) => {
            let mut parts: Vec<String> = ["status", "message"]
                .iter()
                .filter_map(|k| o.get(*k).and_then(Value::as_str).map(str::to_string))
                .collect();
            if let Some(Value::Array(errors)) = o.get("errors") {
                parts.extend(errors.iter().filter_map(Value::as_str).map(str::to_string));
            }
            parts.join("; ")
        }
        _ => text.lines().next().unwrap_or("").to_string(),
    };
    let line: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate(line.trim(), 200)
}

#[cfg(test)]
mod tests {
    use super::message::number;
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn shortens_text_and_writes_numbers_as_people_do() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        let cases = [
            (480.0, "480"),
            (0.052, "0.052"),
            (1.5, "1.5"),
            (2.0 / 3.0, "0.667"),
        ];
        for (v, want) in cases {
            assert_eq!(number(v), want, "{v}");
        }
    }

    /// How many of the notifiers configured as `toml` are told of `kind`.
    /// Outside a runtime every delivery fails at once; only the count is
    /// read.
    fn told(toml: &str, kind: EventKind) -> usize {
        let text = format!("[service]\nname = \"web\"\n\n{toml}");
        let config = crate::config::Config::parse(&text, |_| None).unwrap();
        let n = Notifiers::build(&config.notify).unwrap();
        let event = crate::evidence::Event {
            kind,
            service: "web".into(),
            deployment: "v2".into(),
            rule: Some("r".into()),
            summary: String::new(),
            evidence: vec![],
            return_to: None,
        };
        n.send(event).len()
    }

    #[test]
    fn pagerduty_is_told_what_resolves_an_incident_whatever_its_events_and_others_only_if_asked() {
        let pd = |events: &str| {
            format!("[[notify]]\ntype = \"pagerduty\"\nrouting_key = \"k\"\n{events}\n")
        };
        let slack = |events: &str| {
            format!("[[notify]]\ntype = \"slack\"\nurl = \"https://hooks.slack.com/services/T/B/X\"\n{events}\n")
        };
        let cases = [
            // PagerDuty told of a trigger is told what resolves it.
            (pd(""), EventKind::Resolved, 1),
            (pd(""), EventKind::Closed, 1),
            (pd("events = [\"rollback_held\"]"), EventKind::Resolved, 1),
            (pd("events = [\"unhealthy\"]"), EventKind::Closed, 1),
            (pd("events = [\"rollback_held\"]"), EventKind::Alert, 0),
            // One that opens nothing has nothing to resolve.
            (pd("events = [\"rollback\"]"), EventKind::Resolved, 0),
            (pd("events = [\"rollback\"]"), EventKind::Closed, 0),
            // Other notifiers: what they ask for; `closed` never.
            (slack(""), EventKind::Resolved, 1),
            (slack(""), EventKind::Closed, 0),
            (slack("events = [\"alert\"]"), EventKind::Resolved, 0),
        ];
        for (toml, kind, want) in cases {
            assert_eq!(told(&toml, kind), want, "{kind:?}\n{toml}");
        }
    }

    #[test]
    fn closed_is_not_a_name_in_events() {
        let text = "[service]\nname = \"web\"\n\n[[notify]]\ntype = \"pagerduty\"\nrouting_key = \"k\"\nevents = [\"closed\"]\n";
        let err = crate::config::Config::parse(text, |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown event \"closed\""), "{err}");
    }

    #[test]
    fn hides_every_part_of_a_secret_url() {
        let url = Secret::new("https://hooks.slack.com/services/T000/B000/abcdefghijkl");
        let secrets = NotifySpec::Slack(SlackConfig { url }).secrets();
        let said = "no_service for /services/T000/B000/abcdefghijkl and abcdefghijkl".to_string();
        assert_eq!(redact(said, &secrets), "no_service for *** and ***");
    }
}
