//! `http`: one request to an HTTP endpoint, its status, latency and body
//! checked against expectations. The body read is capped so a huge or endless
//! response cannot exhaust memory.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Deserialize;

use crate::{redact_url, ConfigProblem, Context, ProbeError, Report};

/// Default cap on the bytes read from a response body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;

/// Settings of an `http` probe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The URL to request. Required.
    pub url: String,
    /// HTTP method. Default `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra request headers. Default none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A raw request body. Default none; exclusive with `json`.
    #[serde(default)]
    pub body: Option<String>,
    /// A JSON request body, sent with `Content-Type: application/json`.
    #[serde(default)]
    pub json: Option<serde_json::Value>,
    /// Statuses that count as healthy. Default: any 2xx.
    #[serde(default)]
    pub expect_status: Vec<u16>,
    /// Assertions on the response body. Default none.
    #[serde(default)]
    pub expect_body: Vec<BodyAssertion>,
    /// Verify the server's TLS certificate. Default `true`; turning it off is
    /// an explicit, logged choice.
    #[serde(default = "yes")]
    pub tls_verify: bool,
    /// Follow redirects (up to 10). Default `false`: a redirect is reported
    /// as its own status, as a health endpoint should not redirect.
    #[serde(default)]
    pub follow_redirects: bool,
    /// The most bytes read from a body. Default 1 MiB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
}

/// One check of a response body. Exactly one of `pointer` or `regex` is set;
/// with `pointer`, `equals` compares the value and without it the value must
/// merely exist.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyAssertion {
    /// A JSON pointer (RFC 6901) into the body, like `/status`.
    #[serde(default)]
    pub pointer: Option<String>,
    /// The value the pointer must hold. Default: it must only exist.
    #[serde(default)]
    pub equals: Option<serde_json::Value>,
    /// A regular expression the body must match.
    #[serde(default)]
    pub regex: Option<String>,
}

fn default_method() -> String {
    "GET".into()
}
fn yes() -> bool {
    true
}
fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

#[derive(Debug)]
enum Check {
    Pointer {
        pointer: String,
        equals: Option<serde_json::Value>,
    },
    Regex(regex::Regex),
}

#[derive(Debug)]
pub struct HttpProbe {
    client: reqwest::Client,
    method: reqwest::Method,
    url: reqwest::Url,
    shown_url: String,
    headers: reqwest::header::HeaderMap,
    body: Option<bytes::Bytes>,
    expect_status: Vec<u16>,
    checks: Vec<Check>,
    max_body_bytes: u64,
}

impl HttpProbe {
    pub fn new(cfg: &HttpConfig, ctx: Context) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let url = match reqwest::Url::parse(&cfg.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
            Ok(u) => {
                problems.push(ConfigProblem::new(
                    "url",
                    format!("scheme {:?} is not http or https", u.scheme()),
                ));
                None
            }
            Err(e) => {
                problems.push(ConfigProblem::new(
                    "url",
                    format!("invalid URL {:?}: {e}", redact_url(&cfg.url)),
                ));
                None
            }
        };
        let method = match reqwest::Method::from_bytes(cfg.method.to_ascii_uppercase().as_bytes()) {
            Ok(m) => Some(m),
            Err(_) => {
                problems.push(ConfigProblem::new(
                    "method",
                    format!("invalid HTTP method {:?}", cfg.method),
                ));
                None
            }
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &cfg.headers {
            match (
                reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                reqwest::header::HeaderValue::from_str(v),
            ) {
                (Ok(name), Ok(mut value)) => {
                    value.set_sensitive(true);
                    headers.insert(name, value);
                }
                _ => problems.push(ConfigProblem::new(
                    format!("headers.{k}"),
                    "invalid header name or value",
                )),
            }
        }
        let body = match (&cfg.body, &cfg.json) {
            (Some(_), Some(_)) => {
                problems.push(ConfigProblem::new(
                    "json",
                    "set either body or json, not both",
                ));
                None
            }
            (Some(b), None) => Some(bytes::Bytes::from(b.clone())),
            (None, Some(j)) => {
                headers.entry(reqwest::header::CONTENT_TYPE).or_insert(
                    reqwest::header::HeaderValue::from_static("application/json"),
                );
                Some(bytes::Bytes::from(
                    serde_json::to_vec(j).unwrap_or_default(),
                ))
            }
            (None, None) => None,
        };
        for (i, s) in cfg.expect_status.iter().enumerate() {
            if !(100..=599).contains(s) {
                problems.push(ConfigProblem::new(
                    format!("expect_status[{i}]"),
                    format!("{s} is not an HTTP status (100-599)"),
                ));
            }
        }
        let mut checks = Vec::new();
        for (i, a) in cfg.expect_body.iter().enumerate() {
            let key = format!("expect_body[{i}]");
            match (&a.pointer, &a.regex) {
                (Some(p), None) => {
                    if !(p.is_empty() || p.starts_with('/')) {
                        problems.push(ConfigProblem::new(
                            format!("{key}.pointer"),
                            format!("JSON pointer {p:?} must be empty or start with '/'"),
                        ));
                    }
                    checks.push(Check::Pointer {
                        pointer: p.clone(),
                        equals: a.equals.clone(),
                    });
                }
                (None, Some(r)) if a.equals.is_none() => match regex::Regex::new(r) {
                    Ok(re) => checks.push(Check::Regex(re)),
                    Err(e) => problems.push(ConfigProblem::new(
                        format!("{key}.regex"),
                        format!("invalid regular expression: {e}"),
                    )),
                },
                _ => problems.push(ConfigProblem::new(
                    key,
                    "set exactly one of pointer (with optional equals) or regex",
                )),
            }
        }
        if cfg.max_body_bytes == 0 {
            problems.push(ConfigProblem::new("max_body_bytes", "must be at least 1"));
        }
        let client = reqwest::Client::builder()
            .timeout(ctx.timeout)
            .connect_timeout(ctx.timeout)
            .danger_accept_invalid_certs(!cfg.tls_verify)
            .redirect(if cfg.follow_redirects {
                reqwest::redirect::Policy::limited(10)
            } else {
                reqwest::redirect::Policy::none()
            })
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1)
            .user_agent(concat!("backstop/", env!("CARGO_PKG_VERSION")))
            .build();
        let client = match client {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(ConfigProblem::new(
                    "url",
                    format!("cannot build client: {e}"),
                ));
                None
            }
        };
        match (problems.is_empty(), url, method, client) {
            (true, Some(url), Some(method), Some(client)) => Ok(Self {
                shown_url: redact_url(url.as_str()),
                client,
                method,
                url,
                headers,
                body,
                expect_status: cfg.expect_status.clone(),
                checks,
                max_body_bytes: cfg.max_body_bytes,
            }),
            _ => Err(problems),
        }
    }

    pub async fn check(&self) -> Result<Report, ProbeError> {
        let start = Instant::now();
        let mut req = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone());
        if let Some(b) = &self.body {
            req = req.body(b.clone());
        }
        let resp = req.send().await.map_err(|e| {
            ProbeError::unhealthy(format!(
                "request to {} failed: {}",
                self.shown_url,
                describe(&e.without_url())
            ))
        })?;
        let status = resp.status().as_u16();
        let mut report = Report::new().with("status", status as f64);
        let status_ok = if self.expect_status.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expect_status.contains(&status)
        };
        let body = if self.checks.is_empty() {
            // Nothing to assert: read (and discard) the body up to the cap so
            // the connection can be reused, but never more.
            read_capped(resp, self.max_body_bytes, false).await
        } else {
            read_capped(resp, self.max_body_bytes, true).await
        };
        report.push("latency_ms", start.elapsed().as_secs_f64() * 1e3);
        let body = match body {
            Ok(b) => b,
            Err(msg) => return Err(ProbeError::unhealthy_with(msg, report)),
        };
        if !status_ok {
            let want = if self.expect_status.is_empty() {
                "2xx".to_string()
            } else {
                format!("{:?}", self.expect_status)
            };
            return Err(ProbeError::unhealthy_with(
                format!("status {status}, expected {want}"),
                report,
            ));
        }
        if let Some(body) = body {
            if let Err(msg) = self.assert_body(&body) {
                return Err(ProbeError::unhealthy_with(msg, report));
            }
        }
        Ok(report)
    }

    fn assert_body(&self, body: &[u8]) -> Result<(), String> {
        let mut json: Option<serde_json::Value> = None;
        for check in &self.checks {
            match check {
                Check::Regex(re) => {
                    let text = String::from_utf8_lossy(body);
                    if !re.is_match(&text) {
                        return Err(format!("body does not match /{}/", re.as_str()));
                    }
                }
                Check::Pointer { pointer, equals } => {
                    if json.is_none() {
                        json = Some(
                            serde_json::from_slice(body)
                                .map_err(|e| format!("body is not JSON: {e}"))?,
                        );
                    }
                    let doc = json.as_ref().expect("parsed above");
                    match (doc.pointer(pointer), equals) {
                        (None, _) => return Err(format!("body has no value at {pointer}")),
                        (Some(got), Some(want)) if got != want => {
                            return Err(format!("body at {pointer} is {got}, expected {want}"))
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads a body up to `cap` bytes. Past the cap, a kept body is an error
/// (assertions on a truncated document would mislead) and a discarded one
/// simply stops being read.
async fn read_capped(
    resp: reqwest::Response,
    cap: u64,
    keep: bool,
) -> Result<Option<Vec<u8>>, String> {
    let mut stream = resp.bytes_stream();
    let mut kept = Vec::new();
    let mut seen: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("reading body: {}", describe(&e.without_url())))?;
        seen += chunk.len() as u64;
        if seen > cap {
            if keep {
                return Err(format!("body larger than max_body_bytes ({cap} bytes)"));
            }
            return Ok(None);
        }
        if keep {
            kept.extend_from_slice(&chunk);
        }
    }
    Ok(keep.then_some(kept))
}

/// A reqwest error with its sources, as one line.
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        e.to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}
