//! Checks one thing once. Each probe type lives in its own module with its
//! configuration, its runtime and its tests; this crate keeps no global state,
//! reads no files or environment of its own accord and installs no metrics
//! recorder. A probe reports what it saw; the agent judges.

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
    /// Named numbers the check produced (`latency_ms`, `status`, ...).
    pub signals: Vec<(&'static str, f64)>,
}

impl Report {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a signal and returns the report, for building in one expression.
    pub fn with(mut self, name: &'static str, value: f64) -> Self {
        self.push(name, value);
        self
    }

    pub fn push(&mut self, name: &'static str, value: f64) {
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

/// What every probe is given besides its own settings.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// How long one check may take; the agent also enforces it from outside.
    pub timeout: Duration,
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
