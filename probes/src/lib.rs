//! Checks one thing once. Each probe type lives in its own module with its
//! configuration, its runtime and its tests; this crate keeps no global state,
//! reads no files or environment of its own accord and installs no metrics
//! recorder. A probe reports what it saw; the agent judges.

use std::borrow::Cow;
use std::time::Duration;

pub mod duration;
pub mod exposition;
pub mod http;
pub mod postgres;
pub mod promql;
pub mod redact;
pub mod redis;
mod request;
pub mod resources;
pub mod scenario;
pub mod scrape;
pub mod tcp;

pub use redact::redact_url;
pub use request::Clients;

/// What one check of a probe saw, before the agent applies `max_latency`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Named numbers the check produced (`latency_ms`, `status`, ...). A
    /// probe's own names are borrowed literals, which cost no allocation;
    /// names the configuration declares (an `http` probe's body signals)
    /// are owned.
    pub signals: Vec<(Cow<'static, str>, f64)>,
}

impl Report {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a signal and returns the report, for building in one expression.
    pub fn with(mut self, name: impl Into<Cow<'static, str>>, value: f64) -> Self {
        self.push(name, value);
        self
    }

    /// Adds a signal, or replaces the value of one of the same name.
    pub fn push(&mut self, name: impl Into<Cow<'static, str>>, value: f64) {
        let name = name.into();
        if let Some(slot) = self.signals.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
        } else {
            self.signals.push((name, value));
        }
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.signals
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

/// Why a check did not succeed. Only [`ProbeError::Unhealthy`] may ever count
/// toward a rollback: [`ProbeError::CannotRun`] is the probe's own fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProbeError {
    /// The target answered badly or not at all: the service is unhealthy.
    /// The report keeps whatever signals were measured before the failure.
    #[error("{message}")]
    Unhealthy { message: String, report: Report },
    /// The probe itself could not run (bad configuration, agent fault).
    #[error("{0}")]
    CannotRun(String),
}

impl ProbeError {
    pub fn unhealthy(message: impl Into<String>) -> Self {
        Self::Unhealthy {
            message: message.into(),
            report: Report::default(),
        }
    }

    pub fn unhealthy_with(message: impl Into<String>, report: Report) -> Self {
        Self::Unhealthy {
            message: message.into(),
            report,
        }
    }

    pub fn cannot_run(message: impl Into<String>) -> Self {
        Self::CannotRun(message.into())
    }
}

/// A problem in one probe's type-specific settings, found while building it.
/// `key` is relative to the probe's table (`url`, `step[1].capture`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl ConfigProblem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// One signal a probe yields, for validation and the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalInfo {
    pub name: Cow<'static, str>,
    pub about: Cow<'static, str>,
}

impl SignalInfo {
    /// A signal whose name and description are literals, as a probe's own
    /// signals are.
    pub const fn fixed(name: &'static str, about: &'static str) -> Self {
        Self {
            name: Cow::Borrowed(name),
            about: Cow::Borrowed(about),
        }
    }
}

/// Names no probe may report from a body: the agent's own count, and the
/// percentiles the agent computes from `latency_ms` over a rule's window.
pub const RESERVED_SIGNALS: &[&str] = &[
    "consecutive_failures",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
];

/// The signals a probe type can yield whatever its configuration, for the
/// reference (`None` for an unknown type). Signals whose names the
/// configuration chooses (an `http` probe's `signals`) are not among them.
pub fn type_signals(kind: &str) -> Option<Vec<SignalInfo>> {
    Some(match kind {
        "http" => http::type_signals(),
        "tcp" => tcp::type_signals(),
        "postgres" => postgres::type_signals(),
        "redis" => redis::type_signals(),
        "resources" => resources::type_signals(),
        "scenario" => scenario::type_signals(),
        "scrape" => scrape::type_signals(),
        "promql" => promql::type_signals(),
        _ => return None,
    })
}

/// What every probe is given besides its own settings.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// How long one check may take; the agent also enforces it from outside.
    pub timeout: Duration,
}

/// What every probe type's configuration states about the type itself.
/// Each type implements it, so no type is left to a fallback.
pub trait ProbeType {
    /// The levels SPEC assigns to the type (1 to 4): the `level` a probe of
    /// this type may have.
    fn levels() -> &'static [u8];
}

/// The closed set of probe types, by their configuration.
#[derive(Debug, Clone)]
pub enum ProbeSpec {
    Http(http::HttpConfig),
    Tcp(tcp::TcpConfig),
    Postgres(postgres::PostgresConfig),
    Redis(redis::RedisConfig),
    Resources(resources::ResourcesConfig),
    Scenario(scenario::ScenarioConfig),
    Scrape(scrape::ScrapeConfig),
    Promql(promql::PromqlConfig),
}

/// The type names as written in `type = "..."`.
pub const PROBE_TYPES: &[&str] = &[
    "http",
    "tcp",
    "postgres",
    "redis",
    "resources",
    "scenario",
    "scrape",
    "promql",
];

impl ProbeSpec {
    /// Deserializes the type-specific settings of a probe whose `type` is
    /// already known. Unknown keys are errors.
    pub fn deserialize_typed<'de, D>(kind: &str, de: D) -> Result<Option<Self>, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        use serde::Deserialize;
        Ok(Some(match kind {
            "http" => Self::Http(http::HttpConfig::deserialize(de)?),
            "tcp" => Self::Tcp(tcp::TcpConfig::deserialize(de)?),
            "postgres" => Self::Postgres(postgres::PostgresConfig::deserialize(de)?),
            "redis" => Self::Redis(redis::RedisConfig::deserialize(de)?),
            "resources" => Self::Resources(resources::ResourcesConfig::deserialize(de)?),
            "scenario" => Self::Scenario(scenario::ScenarioConfig::deserialize(de)?),
            "scrape" => Self::Scrape(scrape::ScrapeConfig::deserialize(de)?),
            "promql" => Self::Promql(promql::PromqlConfig::deserialize(de)?),
            _ => return Ok(None),
        }))
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Http(_) => "http",
            Self::Tcp(_) => "tcp",
            Self::Postgres(_) => "postgres",
            Self::Redis(_) => "redis",
            Self::Resources(_) => "resources",
            Self::Scenario(_) => "scenario",
            Self::Scrape(_) => "scrape",
            Self::Promql(_) => "promql",
        }
    }

    /// The levels a probe of this type may have ([`ProbeType::levels`]).
    pub fn levels(&self) -> &'static [u8] {
        match self {
            Self::Http(_) => http::HttpConfig::levels(),
            Self::Tcp(_) => tcp::TcpConfig::levels(),
            Self::Postgres(_) => postgres::PostgresConfig::levels(),
            Self::Redis(_) => redis::RedisConfig::levels(),
            Self::Resources(_) => resources::ResourcesConfig::levels(),
            Self::Scenario(_) => scenario::ScenarioConfig::levels(),
            Self::Scrape(_) => scrape::ScrapeConfig::levels(),
            Self::Promql(_) => promql::PromqlConfig::levels(),
        }
    }

    /// The levels of the type named `kind`; `None` for an unknown type.
    pub fn type_levels(kind: &str) -> Option<&'static [u8]> {
        Some(match kind {
            "http" => http::HttpConfig::levels(),
            "tcp" => tcp::TcpConfig::levels(),
            "postgres" => postgres::PostgresConfig::levels(),
            "redis" => redis::RedisConfig::levels(),
            "resources" => resources::ResourcesConfig::levels(),
            "scenario" => scenario::ScenarioConfig::levels(),
            "scrape" => scrape::ScrapeConfig::levels(),
            "promql" => promql::PromqlConfig::levels(),
            _ => return None,
        })
    }

    /// Every signal a check of this probe can yield, given its configuration
    /// (a `postgres` probe in `write_read` mode yields `write_ms` and `read_ms`;
    /// a `promql` probe its chosen signal; an `http` probe its declared body signals).
    pub fn signals(&self) -> Vec<SignalInfo> {
        match self {
            Self::Http(c) => c.signals(),
            Self::Tcp(c) => c.signals(),
            Self::Postgres(c) => c.signals(),
            Self::Redis(c) => c.signals(),
            Self::Resources(c) => c.signals(),
            Self::Scenario(c) => c.signals(),
            Self::Scrape(c) => c.signals(),
            Self::Promql(c) => c.signals(),
        }
    }

    /// Builds the runtime probe. Never touches the network: connections are
    /// made on the first check, so `validate` can build every probe.
    pub fn build(&self, ctx: Context) -> Result<Probe, Vec<ConfigProblem>> {
        self.build_shared(ctx, &Clients::default())
    }

    /// Like [`ProbeSpec::build`], with the `http` probe's client taken from
    /// (or added to) `clients`, which the probes built with it share.
    pub fn build_shared(
        &self,
        ctx: Context,
        clients: &Clients,
    ) -> Result<Probe, Vec<ConfigProblem>> {
        Ok(match self {
            Self::Http(c) => Probe::Http(Box::new(http::HttpProbe::with_clients(c, ctx, clients)?)),
            Self::Tcp(c) => Probe::Tcp(tcp::TcpProbe::new(c, ctx)?),
            Self::Postgres(c) => Probe::Postgres(postgres::PostgresProbe::new(c, ctx)?),
            Self::Redis(c) => Probe::Redis(redis::RedisProbe::new(c, ctx)?),
            Self::Resources(c) => Probe::Resources(resources::ResourcesProbe::new(c, ctx)?),
            Self::Scenario(c) => Probe::Scenario(Box::new(scenario::ScenarioProbe::new(c, ctx)?)),
            Self::Scrape(c) => Probe::Scrape(Box::new(scrape::ScrapeProbe::new(c, ctx)?)),
            Self::Promql(c) => Probe::Promql(Box::new(promql::PromqlProbe::new(c, ctx)?)),
        })
    }
}

/// A runtime probe, ready to check its target.
#[derive(Debug)]
pub enum Probe {
    Http(Box<http::HttpProbe>),
    Tcp(tcp::TcpProbe),
    Postgres(postgres::PostgresProbe),
    Redis(redis::RedisProbe),
    Resources(resources::ResourcesProbe),
    Scenario(Box<scenario::ScenarioProbe>),
    Scrape(Box<scrape::ScrapeProbe>),
    Promql(Box<promql::PromqlProbe>),
}

impl Probe {
    /// Runs one check. Callers bound it with the probe's timeout and must not
    /// run two checks of one probe at once.
    pub async fn check(&self) -> Result<Report, ProbeError> {
        match self {
            Self::Http(p) => p.check().await,
            Self::Tcp(p) => p.check().await,
            Self::Postgres(p) => p.check().await,
            Self::Redis(p) => p.check().await,
            Self::Resources(p) => p.check().await,
            Self::Scenario(p) => p.check().await,
            Self::Scrape(p) => p.check().await,
            Self::Promql(p) => p.check().await,
        }
    }
}

/// What the probes' tests share: a check that a report carries only
/// declared signals, and a small HTTP server to check against.
#[cfg(test)]
pub(crate) mod testing {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::{Report, SignalInfo};

    /// Asserts that every signal `report` carries is one of `declared`, and
    /// returns how many it carries.
    pub(crate) fn assert_declared(report: &Report, declared: &[SignalInfo]) -> usize {
        for (name, _) in &report.signals {
            assert!(
                declared.iter().any(|s| s.name == *name),
                "{name} is reported but not declared; declared: {:?}",
                declared.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
        }
        report.signals.len()
    }

    /// A response with a status, a content type and a body.
    pub(crate) fn response(status: u16, content_type: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// An HTTP server on loopback that answers each request with what
    /// `answer` makes of its path and its number (from 0), then closes the
    /// connection. It runs until the test's runtime ends.
    pub(crate) async fn serve(
        answer: impl Fn(&str, usize) -> String + Send + Sync + 'static,
    ) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = std::sync::Arc::new(answer);
        tokio::spawn(async move {
            for n in 0.. {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    // The head, then as much body as it announces.
                    let end = loop {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => seen.extend_from_slice(&buf[..k]),
                        }
                        if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while seen.len() < end + length {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => seen.extend_from_slice(&buf[..k]),
                        }
                    }
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let _ = conn.write_all(answer(&path, n).as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The string literals a probe file's code (its tests left out) passes
    /// as a signal name to `Report::with` or `Report::push`.
    fn pushed_names(source: &str) -> Vec<&str> {
        let code = source.split("#[cfg(test)]").next().unwrap_or(source);
        let mut names = Vec::new();
        for call in [".with(\"", ".push(\""] {
            for (at, _) in code.match_indices(call) {
                let rest = &code[at + call.len()..];
                if let Some(end) = rest.find('"') {
                    names.push(&rest[..end]);
                }
            }
        }
        names
    }

    #[test]
    fn every_probe_type_states_its_levels() {
        for kind in PROBE_TYPES {
            let levels =
                ProbeSpec::type_levels(kind).unwrap_or_else(|| panic!("{kind}: no levels"));
            assert!(!levels.is_empty(), "{kind}");
            assert!(
                levels.iter().all(|l| (1..=4).contains(l)),
                "{kind}: {levels:?}"
            );
        }
        assert_eq!(ProbeSpec::type_levels("smtp"), None);
    }

    #[test]
    fn every_name_a_probe_file_reports_is_among_its_types_signals() {
        let files = [
            ("http", include_str!("http.rs")),
            ("tcp", include_str!("tcp.rs")),
            ("postgres", include_str!("postgres.rs")),
            ("redis", include_str!("redis.rs")),
            ("resources", include_str!("resources.rs")),
            ("scenario", include_str!("scenario.rs")),
            ("scrape", include_str!("scrape.rs")),
            ("promql", include_str!("promql.rs")),
        ];
        assert_eq!(files.len(), PROBE_TYPES.len());
        for (kind, source) in files {
            let declared = type_signals(kind).unwrap();
            let names = pushed_names(source);
            assert!(!names.is_empty(), "{kind}: no signal found in its file");
            for name in names {
                assert!(
                    declared.iter().any(|s| s.name == name),
                    "{kind} reports {name:?} but does not declare it"
                );
            }
        }
    }

    #[test]
    fn every_type_declares_its_signals_once_with_a_description() {
        for kind in PROBE_TYPES {
            let declared = type_signals(kind).unwrap();
            assert!(
                declared.iter().any(|s| s.name == "latency_ms"),
                "{kind}: no latency_ms"
            );
            for (i, s) in declared.iter().enumerate() {
                assert!(!s.about.is_empty(), "{kind}.{}: no description", s.name);
                assert!(
                    declared[..i].iter().all(|t| t.name != s.name),
                    "{kind}.{}: declared twice",
                    s.name
                );
            }
        }
        assert_eq!(type_signals("smtp"), None);
    }

    #[test]
    fn a_report_borrows_its_own_names_and_replaces_a_repeated_one() {
        let mut report = Report::new().with("latency_ms", 1.0);
        report.push(String::from("memory_mb"), 2.0);
        report.push("latency_ms", 3.0);
        assert_eq!(report.signals.len(), 2);
        assert!(matches!(report.signals[0].0, Cow::Borrowed("latency_ms")));
        assert_eq!(report.get("latency_ms"), Some(3.0));
        assert_eq!(report.get("memory_mb"), Some(2.0));
    }

    #[test]
    fn a_specs_signals_follow_its_configuration() {
        let names = |kind: &str, settings: serde_json::Value| -> Vec<String> {
            ProbeSpec::deserialize_typed(kind, settings)
                .unwrap()
                .unwrap()
                .signals()
                .into_iter()
                .map(|s| s.name.into_owned())
                .collect()
        };
        let pg = serde_json::json!({ "url": "postgres://a@h/d" });
        assert!(!names("postgres", pg.clone()).contains(&"write_ms".to_string()));
        let mut write_read = pg;
        write_read["mode"] = "write_read".into();
        let all = names("postgres", write_read);
        assert!(all.contains(&"write_ms".to_string()) && all.contains(&"read_ms".to_string()));

        assert_eq!(
            names(
                "promql",
                serde_json::json!({ "url": "http://p:9090", "query": "up", "signal": "error_rate" })
            ),
            ["error_rate", "latency_ms"]
        );
        assert_eq!(
            names(
                "http",
                serde_json::json!({ "url": "http://h/", "signals": { "memory_mb": "/memory_mb" } })
            ),
            ["latency_ms", "status", "memory_mb"]
        );
        assert_eq!(
            names(
                "scenario",
                serde_json::json!({ "step": [
                    { "url": "http://h/a", "signals": { "queue": "/q" } },
                    { "url": "http://h/b", "signals": { "db_ms": "/db/ms" } },
                ] })
            ),
            ["latency_ms", "steps_ok", "step_failed", "queue", "db_ms"]
        );
        assert_eq!(
            names(
                "scrape",
                serde_json::json!({ "url": "http://h/metrics", "requests": "http_requests_total" })
            ),
            [
                "latency_ms",
                "requests",
                "request_rate",
                "errors",
                "error_rate"
            ]
        );
        assert!(!names("resources", serde_json::json!({})).contains(&"process_running".into()));
        assert!(names("resources", serde_json::json!({ "pid": 1 }))
            .contains(&"process_rss_bytes".into()));
    }
}
