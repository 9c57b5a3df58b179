//! `http`: one request to an HTTP endpoint, its status, latency and body
//! checked against expectations, and numbers read from a JSON body reported
//! as signals. The body read is capped so a huge or endless response cannot
//! exhaust memory.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use serde::Deserialize;
use tokio::time::Instant;

use crate::request::{
    self, authority, body_signal_infos, default_max_body, default_method, describe, read_capped,
    yes, BodySignals, ClientKind, Clients, Expect, Keep, ReadBody,
};
pub use crate::request::{BodyAssertion, DEFAULT_MAX_BODY_BYTES};
use crate::{duration, redact_url, ConfigProblem, Context, ProbeError, Report, SignalInfo};

/// The signals an `http` probe yields itself; those its `signals` setting
/// declares come on top.
const SIGNALS: [SignalInfo; 2] = [
    SignalInfo::fixed(
        "latency_ms",
        "milliseconds from sending the request to the end of the body (to the response head when the status fails)",
    ),
    SignalInfo::fixed("status", "the response's HTTP status code"),
];

pub(crate) fn type_signals() -> Vec<SignalInfo> {
    SIGNALS.to_vec()
}

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
    /// Default none; exclusive with `body`.
    #[serde(default)]
    pub json: Option<serde_json::Value>,
    /// Statuses that count as healthy. Default: any 2xx.
    #[serde(default)]
    pub expect_status: Vec<u16>,
    /// Assertions on the response body. Default none.
    #[serde(default)]
    pub expect_body: Vec<BodyAssertion>,
    /// Verify the server's TLS certificate. Default `true`; turning it off is
    /// an explicit choice, logged as a warning when the probe is built.
    #[serde(default = "yes")]
    pub tls_verify: bool,
    /// Follow redirects (up to 10). Default `false`: a redirect is reported
    /// as its own status, as a health endpoint should not redirect.
    #[serde(default)]
    pub follow_redirects: bool,
    /// The most bytes read from a body. Default 1 MiB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Numbers from a JSON response body reported as signals: name → a JSON
    /// pointer, like `{ memory_mb = "/memory_mb" }`. A JSON number or a
    /// string holding one counts; a missing or non-numeric value, or a body
    /// that is not JSON or larger than `max_body_bytes`, leaves the signal
    /// missing without failing the check. Read when the status is as expected.
    /// Names are 1-64 of `a-z`, `0-9` and `_`, starting with a letter, and
    /// none of the probe's own signals. Default none.
    #[serde(default)]
    pub signals: BTreeMap<String, String>,
}

impl crate::ProbeType for HttpConfig {
    fn levels() -> &'static [u8] {
        &[1, 2, 3, 4]
    }
}

impl HttpConfig {
    /// What a check of this probe can yield: its own signals and the
    /// declared body signals.
    pub fn signals(&self) -> Vec<SignalInfo> {
        let mut all = type_signals();
        all.extend(body_signal_infos(&self.signals));
        all
    }
}

/// A runtime `http` probe. It keeps its client (shared with probes of the same
/// client settings when built through [`crate::Clients`]), so checks reuse a
/// connection.
pub struct HttpProbe {
    client: reqwest::Client,
    method: reqwest::Method,
    url: reqwest::Url,
    /// `host:port` of the target, for messages.
    addr: String,
    headers: HeaderMap,
    body: Option<bytes::Bytes>,
    expect: Expect,
    body_signals: BodySignals,
    max_body_bytes: u64,
    timeout: Duration,
    /// The timeout as messages show it (`1s`).
    within: String,
    /// Header and body values hidden from every message, should the target
    /// echo them back.
    secrets: Vec<String>,
}

impl std::fmt::Debug for HttpProbe {
    // Headers and the body may carry credentials: only their presence shows.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProbe")
            .field("method", &self.method)
            .field("url", &redact_url(self.url.as_str()))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body", &self.body.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpProbe {
    /// A probe with a client of its own.
    pub fn new(cfg: &HttpConfig, ctx: Context) -> Result<Self, Vec<ConfigProblem>> {
        Self::with_clients(cfg, ctx, &Clients::default())
    }

    /// A probe whose client is shared with the other probes built with
    /// `clients` that need the same client settings.
    pub fn with_clients(
        cfg: &HttpConfig,
        ctx: Context,
        clients: &Clients,
    ) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let url = request::parse_url(&cfg.url, "url", &mut problems);
        let method = request::parse_method(&cfg.method, "method", &mut problems);
        let mut headers = HeaderMap::new();
        let mut secrets = Vec::new();
        for (k, v) in &cfg.headers {
            secrets.extend(crate::redact::header_secrets(k, v));
            let key = format!("headers.{k}");
            let name = request::parse_header_name(k, &key, &mut problems);
            match HeaderValue::from_str(v) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    if let Some(name) = name {
                        headers.append(name, value);
                    }
                }
                Err(_) => problems.push(ConfigProblem::new(
                    key,
                    "header value has characters a header cannot carry",
                )),
            }
        }
        request::check_one_body(&cfg.body, &cfg.json, "", &mut problems);
        if let Some(b) = &cfg.body {
            secrets.extend(crate::redact::secret_words(b));
        }
        if let Some(j) = &cfg.json {
            crate::redact::json_secrets(j, &mut secrets);
        }
        let body = match (&cfg.body, &cfg.json) {
            (Some(b), _) => Some(bytes::Bytes::from(b.clone())),
            (None, Some(j)) => {
                headers
                    .entry(CONTENT_TYPE)
                    .or_insert(HeaderValue::from_static("application/json"));
                Some(bytes::Bytes::from(j.to_string()))
            }
            (None, None) => None,
        };
        let expect = Expect::new(&cfg.expect_status, &cfg.expect_body, "", &mut problems);
        let body_signals = BodySignals::new(&cfg.signals, "", "http", &SIGNALS, &mut problems);
        if cfg.max_body_bytes == 0 {
            problems.push(ConfigProblem::new("max_body_bytes", "must be at least 1"));
        }
        // A plain-HTTP probe that follows no redirect never speaks TLS: its
        // client goes without the TLS stack reqwest would build for it.
        let plain = !cfg.follow_redirects && url.as_ref().is_some_and(|u| u.scheme() == "http");
        let kind = if plain {
            ClientKind::Plain
        } else {
            ClientKind::Tls {
                verify: cfg.tls_verify,
                follow_redirects: cfg.follow_redirects,
            }
        };
        let client = match clients.get(kind) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(ConfigProblem::new("url", e));
                None
            }
        };
        match (problems.is_empty(), url, method, client) {
            (true, Some(url), Some(method), Some(client)) => {
                if !cfg.tls_verify && url.scheme() == "https" {
                    tracing::warn!(
                        url = %redact_url(url.as_str()),
                        "tls_verify is off: the server's certificate is not checked"
                    );
                }
                Ok(Self {
                    addr: authority(&url),
                    client,
                    method,
                    url,
                    headers,
                    body,
                    expect,
                    body_signals,
                    max_body_bytes: cfg.max_body_bytes,
                    timeout: ctx.timeout,
                    within: duration::format(ctx.timeout),
                    secrets,
                })
            }
            _ => Err(problems),
        }
    }

    /// Sends the request and checks the response. Every way the target can
    /// answer badly, or not at all within the timeout, is `Unhealthy`; what
    /// it says never repeats a header or body value the probe sent.
    pub async fn check(&self) -> Result<Report, ProbeError> {
        self.check_unscrubbed().await.map_err(|e| match e {
            ProbeError::Unhealthy { message, report } => ProbeError::Unhealthy {
                message: crate::redact::scrub(&message, &self.secrets),
                report,
            },
            ProbeError::CannotRun(message) => {
                ProbeError::CannotRun(crate::redact::scrub(&message, &self.secrets))
            }
        })
    }

    async fn check_unscrubbed(&self) -> Result<Report, ProbeError> {
        let start = Instant::now();
        let elapsed_ms = || start.elapsed().as_secs_f64() * 1e3;
        let mut req = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .timeout(self.timeout);
        if let Some(b) = &self.body {
            req = req.body(b.clone());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Err(ProbeError::unhealthy_with(
                    describe(&e, &self.addr, &self.within),
                    Report::new().with("latency_ms", elapsed_ms()),
                ))
            }
        };
        let mut report = Report::new().with("status", f64::from(resp.status().as_u16()));
        if let Err(msg) = self.expect.check_status(&resp) {
            report.push("latency_ms", elapsed_ms());
            return Err(ProbeError::unhealthy_with(msg, report));
        }
        let keep = Keep::for_use(self.expect.reads_body(), !self.body_signals.is_empty());
        let body = read_capped(resp, self.max_body_bytes, keep, &self.within).await;
        report.push("latency_ms", elapsed_ms());
        let checked = body.and_then(|body| match body {
            Some(bytes) => {
                let body = ReadBody::new(bytes);
                // Measured whether or not the assertions pass.
                self.body_signals.read(&body, &mut report);
                self.expect.check_body(&body)
            }
            None => Ok(()),
        });
        match checked {
            Ok(()) => Ok(report),
            Err(msg) => Err(ProbeError::unhealthy_with(msg, report)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            timeout: Duration::from_secs(1),
        }
    }

    fn config(extra: serde_json::Value) -> HttpConfig {
        let mut doc = serde_json::json!({ "url": "http://127.0.0.1:8080/health" });
        doc.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(doc).unwrap()
    }

    fn problems(extra: serde_json::Value) -> Vec<(String, String)> {
        match HttpProbe::new(&config(extra), ctx()) {
            Ok(_) => vec![],
            Err(p) => p.into_iter().map(|p| (p.key, p.message)).collect(),
        }
    }

    #[test]
    fn defaults_to_get_any_2xx_tls_verified_no_redirects_and_a_1_mib_cap() {
        let cfg = config(serde_json::json!({}));
        assert_eq!(cfg.method, "GET");
        assert!(cfg.expect_status.is_empty());
        assert!(cfg.tls_verify);
        assert!(!cfg.follow_redirects);
        assert_eq!(cfg.max_body_bytes, 1 << 20);
        assert!(HttpProbe::new(&cfg, ctx()).is_ok());
    }

    #[test]
    fn reports_each_bad_setting_under_its_own_key() {
        let cases = [
            (
                serde_json::json!({ "url": "ftp://h/x" }),
                "url",
                "scheme \"ftp\" is not http or https",
            ),
            (
                serde_json::json!({ "method": "G T" }),
                "method",
                "invalid HTTP method \"G T\"",
            ),
            (
                serde_json::json!({ "headers": { "bad name": "v" } }),
                "headers.bad name",
                "\"bad name\" is not a valid header name",
            ),
            (
                serde_json::json!({ "body": "x", "json": {} }),
                "json",
                "set either body or json, not both",
            ),
            (
                serde_json::json!({ "expect_status": [200, 700] }),
                "expect_status[1]",
                "700 is not an HTTP status (100-599)",
            ),
            (
                serde_json::json!({ "expect_body": [{ "pointer": "status" }] }),
                "expect_body[0].pointer",
                "JSON pointer \"status\" must be empty or start with '/'",
            ),
            (
                serde_json::json!({ "expect_body": [{ "regex": "(" }] }),
                "expect_body[0].regex",
                "",
            ),
            (
                serde_json::json!({ "expect_body": [{ "regex": "a", "equals": 1 }] }),
                "expect_body[0]",
                "set exactly one of pointer (with optional equals) or regex",
            ),
            (
                serde_json::json!({ "max_body_bytes": 0 }),
                "max_body_bytes",
                "must be at least 1",
            ),
        ];
        for (extra, key, message) in cases {
            let found = problems(extra.clone());
            assert_eq!(found.len(), 1, "{extra}: {found:?}");
            assert_eq!(found[0].0, key, "{extra}");
            assert!(found[0].1.starts_with(message), "{extra}: {}", found[0].1);
        }
    }

    #[tokio::test]
    async fn a_plain_http_probe_checks_its_target_without_a_tls_stack() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request).await.unwrap();
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
        });
        let cfg = config(serde_json::json!({ "url": format!("http://{addr}/health") }));
        let report = HttpProbe::new(&cfg, ctx()).unwrap().check().await.unwrap();
        assert_eq!(report.get("status"), Some(200.0));
    }

    #[tokio::test]
    async fn probes_built_with_shared_clients_share_a_connection_per_target() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    // One response per request, the connection kept open.
                    let mut request = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut request).await {
                        if n == 0 {
                            break;
                        }
                        if conn
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        let clients = Clients::default();
        let probe = |path: &str, extra: serde_json::Value| {
            let mut doc = serde_json::json!({ "url": format!("http://{addr}/{path}") });
            doc.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            HttpProbe::with_clients(&config(doc), ctx(), &clients).unwrap()
        };
        let a = probe("a", serde_json::json!({}));
        let b = probe("b", serde_json::json!({ "headers": { "x-probe": "b" } }));
        assert_eq!(clients.len(), 1, "same client settings, one client");
        for _ in 0..3 {
            assert_eq!(a.check().await.unwrap().get("status"), Some(200.0));
            assert_eq!(b.check().await.unwrap().get("status"), Some(200.0));
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "checks one after another reuse one connection"
        );
        // Other client settings get a client of their own.
        probe("c", serde_json::json!({ "follow_redirects": true }));
        probe(
            "d",
            serde_json::json!({ "follow_redirects": true, "tls_verify": false }),
        );
        probe("e", serde_json::json!({ "follow_redirects": true }));
        assert_eq!(clients.len(), 3);
    }

    /// A probe of `body` (served as `content_type`) with `signals`.
    async fn body_signals(
        content_type: &'static str,
        body: &'static str,
        signals: serde_json::Value,
        extra: serde_json::Value,
    ) -> (Result<Report, ProbeError>, HttpConfig) {
        let addr =
            crate::testing::serve(move |_, _| crate::testing::response(200, content_type, body))
                .await;
        let mut settings = serde_json::json!({
            "url": format!("http://{addr}/health"),
            "signals": signals,
        });
        settings
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let cfg: HttpConfig = serde_json::from_value(settings).unwrap();
        let result = HttpProbe::new(&cfg, ctx()).unwrap().check().await;
        (result, cfg)
    }

    #[tokio::test]
    async fn reads_numbers_from_the_body_as_signals_and_leaves_the_rest_missing() {
        let body = r#"{"memory_mb": 512, "uptime": "3600.5", "version": "1.2.3",
            "checks": {"database": {"latency": 4.25, "ok": true}}, "list": [7, "x"],
            "nothing": null, "huge": "1e400", "spaced": " 42 "}"#;
        let signals = serde_json::json!({
            "memory_mb": "/memory_mb",
            "uptime_s": "/uptime",
            "version": "/version",
            "db_latency_ms": "/checks/database/latency",
            "db_ok": "/checks/database/ok",
            "first": "/list/0",
            "second": "/list/1",
            "gone": "/checks/cache/latency",
            "nothing": "/nothing",
            "huge": "/huge",
            "spaced": "/spaced",
            "whole": "",
        });
        let (result, cfg) =
            body_signals("application/json", body, signals, serde_json::json!({})).await;
        let report = result.unwrap();
        assert_eq!(report.get("memory_mb"), Some(512.0));
        assert_eq!(report.get("uptime_s"), Some(3600.5), "a numeric string");
        assert_eq!(report.get("db_latency_ms"), Some(4.25), "a nested pointer");
        assert_eq!(report.get("first"), Some(7.0));
        assert_eq!(report.get("spaced"), Some(42.0));
        for missing in [
            "version", "db_ok", "second", "gone", "nothing", "huge", "whole",
        ] {
            assert_eq!(report.get(missing), None, "{missing}");
        }
        assert_eq!(report.get("status"), Some(200.0));
        assert!(report.get("latency_ms").is_some());
        assert_eq!(crate::testing::assert_declared(&report, &cfg.signals()), 7);
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_or_too_large_only_leaves_the_signals_missing() {
        let signals = serde_json::json!({ "memory_mb": "/memory_mb" });
        let (result, _) = body_signals(
            "text/html",
            "<html>memory_mb: 5</html>",
            signals.clone(),
            serde_json::json!({}),
        )
        .await;
        let report = result.unwrap();
        assert_eq!(report.get("memory_mb"), None);
        assert_eq!(report.get("status"), Some(200.0));

        let (result, _) = body_signals(
            "application/json",
            r#"{"memory_mb": 512, "padding": "xxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            signals,
            serde_json::json!({ "max_body_bytes": 16 }),
        )
        .await;
        assert_eq!(result.unwrap().get("memory_mb"), None);
    }

    #[tokio::test]
    async fn body_signals_are_kept_when_an_assertion_fails() {
        let (result, cfg) = body_signals(
            "application/json",
            r#"{"status": "degraded", "memory_mb": 900}"#,
            serde_json::json!({ "memory_mb": "/memory_mb" }),
            serde_json::json!({ "expect_body": [{ "pointer": "/status", "equals": "up" }] }),
        )
        .await;
        match result {
            Err(ProbeError::Unhealthy { message, report }) => {
                assert!(message.starts_with("body at /status"), "{message}");
                assert_eq!(report.get("memory_mb"), Some(900.0));
                crate::testing::assert_declared(&report, &cfg.signals());
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn every_signal_a_check_reports_is_declared() {
        let addr = crate::testing::serve(|path, _| match path {
            "/ok" => crate::testing::response(200, "application/json", r#"{"queue": 3}"#),
            _ => crate::testing::response(503, "text/plain", "down"),
        })
        .await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        for url in [
            format!("http://{addr}/ok"),
            format!("http://{addr}/down"),
            format!("http://{closed}/"),
        ] {
            let cfg = config(serde_json::json!({ "url": url, "signals": { "queue": "/queue" } }));
            let report = match HttpProbe::new(&cfg, ctx()).unwrap().check().await {
                Ok(r) | Err(ProbeError::Unhealthy { report: r, .. }) => r,
                Err(e) => panic!("{url}: {e}"),
            };
            assert!(crate::testing::assert_declared(&report, &cfg.signals()) > 0);
        }
    }

    #[test]
    fn reports_each_bad_body_signal_under_its_own_key() {
        let cases = [
            ("Memory", "/m", "\"Memory\" is not a signal name"),
            ("1st", "/m", "\"1st\" is not a signal name"),
            ("mem-mb", "/m", "\"mem-mb\" is not a signal name"),
            ("", "/m", "\"\" is not a signal name"),
            (
                "latency_ms",
                "/m",
                "latency_ms is a signal the http probe yields itself",
            ),
            (
                "status",
                "/m",
                "status is a signal the http probe yields itself",
            ),
            (
                "consecutive_failures",
                "/m",
                "consecutive_failures is the agent's count",
            ),
            ("p95_ms", "/m", "p95_ms is a percentile the agent computes"),
            ("p50_ms", "/m", "p50_ms is a percentile the agent computes"),
            (
                "memory_mb",
                "memory_mb",
                "JSON pointer \"memory_mb\" must be empty or start with '/'",
            ),
        ];
        for (name, pointer, message) in cases {
            let found = problems(serde_json::json!({ "signals": { name: pointer } }));
            assert_eq!(found.len(), 1, "{name}: {found:?}");
            assert_eq!(found[0].0, format!("signals.{name}"), "{name}");
            assert!(found[0].1.starts_with(message), "{name}: {}", found[0].1);
        }
        let long = "m".repeat(65);
        assert_eq!(
            problems(serde_json::json!({ "signals": { long.clone(): "/m" } }))[0].0,
            format!("signals.{long}")
        );
        let longest = "m".repeat(64);
        assert_eq!(
            problems(serde_json::json!({ "signals": { longest: "/m", "x_1": "" } })),
            vec![]
        );
    }

    #[test]
    fn an_invalid_url_is_reported_without_its_password() {
        let found = problems(serde_json::json!({ "url": "http://u:hunter2@[bad/x" }));
        assert_eq!(found[0].0, "url");
        assert!(!found[0].1.contains("hunter2"), "{}", found[0].1);
    }

    #[test]
    fn rejects_unknown_keys() {
        let err = serde_json::from_value::<HttpConfig>(
            serde_json::json!({ "url": "http://h/", "expect_code": [200] }),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `expect_code`"),
            "{err}"
        );
    }
}
