//! The `webhook` target: one HTTP request to a URL of the user's, with SPEC's
//! JSON document or a body of their own. The document also has
//! `idempotency_key`, the same for every call about one deployment of the
//! service, and sent as the `Idempotency-Key` header with any body. With
//! `[fleet]`, the document also has `fencing_token`: the lease's token,
//! which grows with every lease, so a receiver may refuse one lower than
//! the highest it has seen.
//!
//! Templates (`body` and header values) may use `{{service}}`,
//! `{{deployment}}`, `{{return_to}}` (empty when unknown), `{{reason}}` and
//! `{{rule}}`. The body is JSON unless a `Content-Type` header without
//! `json` in it is configured; in a JSON body every value is inserted
//! JSON-escaped *without* quotes, so the template writes them:
//! `{"text": "rolled back {{deployment}}: {{reason}}"}`. Other bodies get
//! the values as they are. Header values never get line breaks.

use std::collections::BTreeMap;
use std::fmt;

use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::Method;
use serde::Deserialize;

use super::call::{http_client, send, with_retries, BuildContext, RollbackError};
use super::problem::{check_timeout, check_url, default_attempt_timeout, Problem};
use crate::duration::Dur;
use crate::evidence::{Reconciled, RollbackDone, RollbackRequest};
use crate::retry::{Attempt, RetryPolicy};
use crate::secret::Secret;

const NAME: &str = "webhook";

/// `[rollback.webhook]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTargetConfig {
    /// Where to send the request; a secret, since webhook URLs carry tokens. Required.
    pub url: Secret,
    /// `POST`, `PUT` or `PATCH`. Default `POST`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra headers; values are templates and are kept secret. Default none.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// The body template. Default: SPEC's JSON document
    /// `{"event":"rollback","service","deployment","return_to","reason","rule","evidence"}`,
    /// with `idempotency_key` (and `fencing_token` with `[fleet]`).
    #[serde(default)]
    pub body: Option<Secret>,
    /// How long one attempt may take. Default `30s`.
    #[serde(default = "default_attempt_timeout")]
    pub timeout: Dur,
    /// The receiver treats requests with the same `Idempotency-Key` header
    /// (also `idempotency_key` in the default body) as one. Then a call
    /// interrupted by the agent's stop is sent again, with the same key,
    /// when the agent starts again; otherwise it is reported and not sent
    /// again, since backstop cannot ask a webhook whether it arrived.
    /// Default `false`.
    #[serde(default)]
    pub idempotent: bool,
}

fn default_method() -> String {
    "POST".into()
}

impl WebhookTargetConfig {
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        check_url(&mut p, "url", self.url.expose(), true);
        if parse_method(&self.method).is_none() {
            p.push(Problem::new(
                "method",
                format!("expected POST, PUT or PATCH, got {:?}", self.method),
            ));
        }
        for (name, value) in &self.headers {
            let key = format!("headers.{name}");
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.push(Problem::new(&key, "is not a valid header name"));
            }
            if let Err(e) = Template::parse(value.expose()) {
                p.push(Problem::new(&key, e));
            }
        }
        if let Some(body) = &self.body {
            match Template::parse(body.expose()) {
                Err(e) => p.push(Problem::new("body", e)),
                Ok(t) if self.json_body() => {
                    let sample = t.render(&sample_request(), Escape::Json);
                    if let Err(e) = serde_json::from_str::<serde_json::Value>(&sample) {
                        p.push(Problem::new(
                            "body",
                            format!(
                                "is not JSON once filled in ({e}); set a Content-Type header for other bodies"
                            ),
                        ));
                    }
                }
                Ok(_) => {}
            }
        }
        check_timeout(&mut p, "timeout", self.timeout.0);
        p
    }

    /// Whether the body is JSON: unless a non-JSON `Content-Type` is set.
    fn json_body(&self) -> bool {
        self.content_type()
            .is_none_or(|ct| ct.to_ascii_lowercase().contains("json"))
    }

    fn content_type(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.expose())
    }

    pub fn build(&self, cx: &BuildContext) -> Result<Webhook, RollbackError> {
        let setup = |reason: String| RollbackError::Setup {
            target: NAME,
            reason,
        };
        let method = parse_method(&self.method)
            .ok_or_else(|| setup(format!("unsupported method {:?}", self.method)))?;
        let mut headers = Vec::new();
        for (name, value) in &self.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| setup(format!("invalid header name {name:?}")))?;
            headers.push((header, Template::parse(value.expose()).map_err(setup)?));
        }
        let body = match &self.body {
            Some(b) => Some(Template::parse(b.expose()).map_err(setup)?),
            None => None,
        };
        let mut secrets = vec![self.url.clone()];
        secrets.extend(url_parts(self.url.expose()));
        secrets.extend(self.headers.values().cloned());
        Ok(Webhook {
            client: http_client(NAME, self.timeout.0)?,
            policy: cx.policy,
            url: self.url.clone(),
            method,
            headers,
            body,
            json: self.json_body(),
            has_content_type: self.content_type().is_some(),
            secrets,
            idempotent: self.idempotent,
        })
    }
}

/// The parts of a webhook URL that may be its secret, should a receiver
/// echo one back: credentials, longer path segments, query values.
fn url_parts(raw: &str) -> Vec<Secret> {
    let Ok(u) = url::Url::parse(raw) else {
        return vec![];
    };
    let mut parts: Vec<String> = u
        .path_segments()
        .into_iter()
        .flatten()
        .filter(|s| s.len() >= 6)
        .map(str::to_string)
        .collect();
    parts.extend(u.query_pairs().map(|(_, v)| v.into_owned()));
    parts.extend(u.password().map(str::to_string));
    if !u.username().is_empty() {
        parts.push(u.username().to_string());
    }
    parts.into_iter().map(Secret::new).collect()
}

fn parse_method(m: &str) -> Option<Method> {
    match m.to_ascii_uppercase().as_str() {
        "POST" => Some(Method::POST),
        "PUT" => Some(Method::PUT),
        "PATCH" => Some(Method::PATCH),
        _ => None,
    }
}

/// The webhook target, built.
pub struct Webhook {
    client: reqwest::Client,
    policy: RetryPolicy,
    url: Secret,
    method: Method,
    headers: Vec<(HeaderName, Template)>,
    body: Option<Template>,
    json: bool,
    has_content_type: bool,
    secrets: Vec<Secret>,
    idempotent: bool,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("method", &self.method)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("custom_body", &self.body.is_some())
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// After an interrupted call: a webhook cannot be asked whether it got
    /// it, so it is sent again only to a receiver configured `idempotent`.
    pub fn reconcile(&self) -> Reconciled {
        if self.idempotent {
            Reconciled::NotDone(
                "the webhook is idempotent: the call is sent again with the same Idempotency-Key"
                    .into(),
            )
        } else {
            Reconciled::Unknown(
                "a webhook cannot be asked whether the call arrived (set rollback.webhook.idempotent = true when its receiver treats a repeated Idempotency-Key as one)"
                    .into(),
            )
        }
    }

    pub async fn rollback(&self, req: &RollbackRequest) -> Result<RollbackDone, RollbackError> {
        let body = match &self.body {
            Some(t) => t.render(
                req,
                if self.json {
                    Escape::Json
                } else {
                    Escape::None
                },
            ),
            None => default_body(req),
        };
        let secrets: Vec<&str> = self.secrets.iter().map(Secret::expose).collect();
        with_retries(NAME, self.policy, |_| {
            let mut r = self
                .client
                .request(self.method.clone(), self.url.expose())
                .body(body.clone());
            if !self.has_content_type {
                r = r.header(CONTENT_TYPE, "application/json");
            }
            if !self
                .headers
                .iter()
                .any(|(k, _)| k.as_str() == "idempotency-key")
            {
                // Lets a receiver recognise a retry of the same rollback,
                // from this agent, after its restart or from another replica.
                if let Ok(v) = HeaderValue::from_str(&req.idempotency_key()) {
                    r = r.header("idempotency-key", v);
                }
            }
            for (name, t) in &self.headers {
                r = r.header(name.clone(), t.render(req, Escape::Header));
            }
            let secrets = &secrets;
            async move {
                match send(r, "the webhook", secrets).await {
                    Attempt::Done(_) => Attempt::Done(RollbackDone {
                        returned_to: req.return_to.clone(),
                        detail: "the webhook accepted the rollback".into(),
                    }),
                    Attempt::Retry { reason, after } => Attempt::Retry { reason, after },
                    Attempt::Fail(reason) => Attempt::Fail(reason),
                }
            }
        })
        .await
    }
}

/// SPEC's JSON document.
fn default_body(req: &RollbackRequest) -> String {
    let mut body = serde_json::json!({
        "event": "rollback",
        "service": req.service,
        "deployment": req.deployment,
        "return_to": req.return_to,
        "reason": req.reason,
        "rule": req.rule,
        "evidence": req.evidence,
        "idempotency_key": req.idempotency_key(),
    });
    // Only when a fleet decided: the lease's fencing token.
    if let Some(token) = req.fencing_token {
        body["fencing_token"] = serde_json::json!(token);
    }
    body.to_string()
}

/// How values are put into a template.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Escape {
    /// As the inside of a JSON string.
    Json,
    /// On one line.
    Header,
    /// As they are.
    None,
}

#[derive(Clone, Copy, PartialEq)]
enum Var {
    Service,
    Deployment,
    ReturnTo,
    Reason,
    Rule,
}

const VARS: &str = "service, deployment, return_to, reason, rule";

#[derive(Clone, PartialEq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// A parsed template: text and `{{name}}` placeholders.
#[derive(Clone, PartialEq)]
struct Template(Vec<Piece>);

impl Template {
    fn parse(s: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| "unterminated {{ in template".to_string())?;
            let name = after[..end].trim();
            let var = match name {
                "service" => Var::Service,
                "deployment" => Var::Deployment,
                "return_to" => Var::ReturnTo,
                "reason" => Var::Reason,
                "rule" => Var::Rule,
                other => {
                    return Err(format!(
                        "unknown placeholder {{{{{other}}}}}, expected one of {VARS}"
                    ))
                }
            };
            pieces.push(Piece::Var(var));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Self(pieces))
    }

    fn render(&self, req: &RollbackRequest, escape: Escape) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(v) => {
                    let value = match v {
                        Var::Service => req.service.as_str(),
                        Var::Deployment => req.deployment.as_str(),
                        Var::ReturnTo => req.return_to.as_deref().unwrap_or(""),
                        Var::Reason => req.reason.as_str(),
                        Var::Rule => req.rule.as_str(),
                    };
                    match escape {
                        Escape::Json => {
                            let quoted = serde_json::Value::from(value).to_string();
                            out.push_str(&quoted[1..quoted.len() - 1]);
                        }
                        Escape::Header => out.push_str(&header_safe(value)),
                        Escape::None => out.push_str(value),
                    }
                }
            }
        }
        out
    }
}

/// Control characters (line breaks above all) become spaces.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn sample_request() -> RollbackRequest {
    RollbackRequest {
        service: "web".into(),
        deployment: "d2".into(),
        return_to: Some("d1".into()),
        rule: "health \"failing\"".into(),
        reason: "a\nb \\ c".into(),
        evidence: vec![],
        fencing_token: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_values_inside_the_quotes_the_template_writes() {
        let t = Template::parse(r#"{"text": "{{service}}: {{ reason }} ({{rule}})"}"#).unwrap();
        let out = t.render(&sample_request(), Escape::Json);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["text"], "web: a\nb \\ c (health \"failing\")");
    }

    #[test]
    fn header_values_stay_on_one_line() {
        let t = Template::parse("{{reason}}").unwrap();
        assert_eq!(t.render(&sample_request(), Escape::Header), "a b \\ c");
    }

    #[test]
    fn rejects_unknown_and_unterminated_placeholders() {
        assert_eq!(
            Template::parse("{{token}}").err().unwrap(),
            format!("unknown placeholder {{{{token}}}}, expected one of {VARS}")
        );
        assert!(Template::parse("{{service").is_err());
    }

    #[test]
    fn a_body_that_is_not_json_needs_a_content_type() {
        let config = |headers: &[(&str, &str)]| WebhookTargetConfig {
            url: Secret::new("https://hooks.example/T0/secret"),
            method: "POST".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), Secret::new(*v)))
                .collect(),
            body: Some(Secret::new("rollback {{service}}")),
            timeout: default_attempt_timeout(),
            idempotent: false,
        };
        let problems = config(&[]).validate();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "body");
        assert!(config(&[("Content-Type", "text/plain")])
            .validate()
            .is_empty());
    }

    #[test]
    fn the_default_body_is_specs_document() {
        let v: serde_json::Value = serde_json::from_str(&default_body(&sample_request())).unwrap();
        assert_eq!(v["event"], "rollback");
        assert_eq!(v["service"], "web");
        assert_eq!(v["deployment"], "d2");
        assert_eq!(v["return_to"], "d1");
        assert!(v["evidence"].is_array());
    }
}
