//! `scrape`: reads the service's own Prometheus exposition (its `/metrics`)
//! on every check and reports what changed since the previous check:
//! requests, errors and their rates from a counter, latency quantiles from a
//! histogram. The first check only takes the starting point.
//!
//! The sample lines are read by `exposition.rs`, this crate's own reader
//! of Prometheus text 0.0.4 and OpenMetrics 1.0: it unescapes label values,
//! keeps `,`, `=`, `{` and `}` inside them (`handler="/users/{id}"`), skips
//! exemplars and timestamps, and fails with what it expected where, so
//! garbage is never read as an empty exposition. This file groups a
//! histogram's `_bucket` lines by their labels without `le`.
//!
//! Only the lines of the configured metrics are cut out of the body and
//! parsed: that keeps a large exposition cheap to read, and a quirk in some
//! unrelated family cannot fail the check.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::request::{describe, read_whole, ReadError};
use crate::{redact_url, ConfigProblem, Context, ProbeError, Report, SignalInfo};

/// The signals a `scrape` probe yields: `latency_ms` always, the counts
/// with `requests`, the quantiles with `latency` (see
/// [`ScrapeConfig::signals`]). All but `latency_ms` are about the service's
/// requests between the previous check and this one; the first check only
/// takes the starting point.
const SIGNALS: [SignalInfo; 10] = [
    SignalInfo::fixed(
        "latency_ms",
        "milliseconds reading the exposition took",
    ),
    SignalInfo::fixed(
        "requests",
        "requests the `requests` counter counted since the previous check",
    ),
    SignalInfo::fixed("request_rate", "those requests per second"),
    SignalInfo::fixed(
        "errors",
        "those of them whose `code_label` is in `error_codes`; with a `code_label` on the counter",
    ),
    SignalInfo::fixed(
        "error_rate",
        "`errors` / `requests`, a fraction (rules write `5%`); when there were requests",
    ),
    SignalInfo::fixed(
        "latency_samples",
        "requests the `latency` histogram observed since the previous check",
    ),
    SignalInfo::fixed(
        "p50_ms",
        "median of those requests' durations in milliseconds, from the histogram's buckets; when there were some",
    ),
    SignalInfo::fixed("p90_ms", "their 90th percentile, likewise"),
    SignalInfo::fixed("p95_ms", "their 95th percentile, likewise"),
    SignalInfo::fixed("p99_ms", "their 99th percentile, likewise"),
];

/// The names of the `requests` counter's signals and of the `latency`
/// histogram's.
const FROM_REQUESTS: [&str; 4] = ["requests", "request_rate", "errors", "error_rate"];
const FROM_LATENCY: [&str; 5] = ["latency_samples", "p50_ms", "p90_ms", "p95_ms", "p99_ms"];

pub(crate) fn type_signals() -> Vec<SignalInfo> {
    SIGNALS.to_vec()
}

/// Default cap on the bytes read from the exposition: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 4 << 20;

/// What the probe asks for: Prometheus text first, OpenMetrics if that is
/// all the service speaks.
const ACCEPT: &str =
    "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1";

/// Settings of a `scrape` probe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeConfig {
    /// The service's exposition, like `http://127.0.0.1:8080/metrics`. Required.
    pub url: String,
    /// A counter of requests, like `http_requests_total`. Default none; at
    /// least one of `requests` and `latency` is required.
    #[serde(default)]
    pub requests: Option<String>,
    /// A histogram of request durations, like `http_request_duration_seconds`
    /// (without `_bucket`). Default none.
    #[serde(default)]
    pub latency: Option<String>,
    /// The unit of the `latency` histogram's buckets. Default `seconds`, the
    /// Prometheus convention.
    #[serde(default)]
    pub latency_unit: LatencyUnit,
    /// Values of `code_label` that count as errors: a class like `"5xx"` or
    /// an exact value like `"429"` or `"Unavailable"`. Default `["5xx"]`.
    #[serde(default = "default_error_codes")]
    pub error_codes: Vec<String>,
    /// The label of the `requests` counter that holds the status code.
    /// Default `code`.
    #[serde(default = "default_code_label")]
    pub code_label: String,
    /// Label equality filters applied to both metrics, like
    /// `{ handler = "/api" }`; an empty value matches a missing label, as in
    /// PromQL. Default none: every series counts.
    #[serde(default, rename = "match")]
    pub match_labels: BTreeMap<String, String>,
    /// Extra request headers, e.g. for a protected `/metrics`. Default none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The most bytes read from the exposition. Default 4 MiB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
}

impl crate::ProbeType for ScrapeConfig {
    fn levels() -> &'static [u8] {
        &[4]
    }
}

impl ScrapeConfig {
    /// What a check can yield with the metrics this configuration names.
    pub fn signals(&self) -> Vec<SignalInfo> {
        SIGNALS
            .iter()
            .filter(|s| {
                let name = &*s.name;
                (self.requests.is_some() || !FROM_REQUESTS.contains(&name))
                    && (self.latency.is_some() || !FROM_LATENCY.contains(&name))
            })
            .cloned()
            .collect()
    }
}

/// The unit of a latency histogram's bucket bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyUnit {
    #[default]
    Seconds,
    Milliseconds,
    Microseconds,
}

impl LatencyUnit {
    fn to_ms(self) -> f64 {
        match self {
            Self::Seconds => 1e3,
            Self::Milliseconds => 1.0,
            Self::Microseconds => 1e-3,
        }
    }
}

fn default_error_codes() -> Vec<String> {
    vec!["5xx".into()]
}
fn default_code_label() -> String {
    "code".into()
}
fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

/// One entry of `error_codes`.
#[derive(Debug, Clone, PartialEq)]
enum CodeMatch {
    /// `5xx`: any three-character code starting with the digit.
    Class(char),
    Exact(String),
}

impl CodeMatch {
    fn parse(s: &str) -> Option<Self> {
        let mut chars = s.chars();
        match (chars.next(), chars.as_str()) {
            (Some(d @ '1'..='9'), rest) if rest.eq_ignore_ascii_case("xx") => Some(Self::Class(d)),
            _ if !s.trim().is_empty() => Some(Self::Exact(s.to_string())),
            _ => None,
        }
    }

    fn matches(&self, code: &str) -> bool {
        match self {
            Self::Class(d) => code.len() == 3 && code.starts_with(*d),
            Self::Exact(e) => code == e,
        }
    }
}

/// A configured metric family and the names its lines carry.
#[derive(Debug)]
struct Family {
    /// As configured; also the name its `# HELP` and `# TYPE` lines carry.
    name: String,
    /// The name OpenMetrics describes a counter by: without `_total`.
    openmetrics_name: Option<String>,
    /// Names its sample lines carry.
    sample_names: Vec<String>,
    /// The requests counter, or else the latency histogram.
    is_counter: bool,
}

impl Family {
    fn counter(name: &str) -> Self {
        Self {
            name: name.to_string(),
            openmetrics_name: name.strip_suffix("_total").map(str::to_string),
            sample_names: vec![name.to_string()],
            is_counter: true,
        }
    }

    fn histogram(name: &str) -> Self {
        Self {
            name: name.to_string(),
            openmetrics_name: None,
            sample_names: ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{name}{s}"))
                .collect(),
            is_counter: false,
        }
    }

    fn describes(&self, name: &str, format: Format) -> bool {
        name == self.name
            || (format == Format::OpenMetrics && self.openmetrics_name.as_deref() == Some(name))
    }
}

type Labels = Vec<(String, String)>;

/// The configured metrics as one scrape read them, series by series.
#[derive(Debug, Clone)]
struct Reading {
    at: Instant,
    /// The matching series of the requests counter: its value, and whether
    /// its code marks an error (`None` without a code label).
    requests: HashMap<Labels, (f64, Option<bool>)>,
    /// The matching series of the latency histogram: cumulative counts by
    /// upper bound, sorted by bound.
    latency: HashMap<Labels, Vec<(f64, f64)>>,
}

#[derive(Debug)]
pub struct ScrapeProbe {
    client: reqwest::Client,
    url: reqwest::Url,
    shown_url: String,
    /// The target's `host:port` and the time limit, for error messages.
    addr: String,
    within: String,
    headers: reqwest::header::HeaderMap,
    max_body_bytes: u64,
    requests: Option<Family>,
    latency: Option<Family>,
    unit_ms: f64,
    error_codes: Vec<CodeMatch>,
    code_label: String,
    matchers: Vec<(String, String)>,
    /// The previous successful reading; rates are taken against it.
    last: Mutex<Option<Reading>>,
}

impl ScrapeProbe {
    pub fn new(cfg: &ScrapeConfig, ctx: Context) -> Result<Self, Vec<ConfigProblem>> {
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
        if cfg.requests.is_none() && cfg.latency.is_none() {
            problems.push(ConfigProblem::new(
                "requests",
                "set requests (a counter), latency (a histogram) or both",
            ));
        }
        for (key, name) in [("requests", &cfg.requests), ("latency", &cfg.latency)] {
            if let Some(name) = name {
                if !valid_metric_name(name) {
                    problems.push(ConfigProblem::new(
                        key,
                        format!("{name:?} is not a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"),
                    ));
                }
            }
        }
        if let Some(base) = cfg
            .latency
            .as_deref()
            .and_then(|n| n.strip_suffix("_bucket"))
        {
            problems.push(ConfigProblem::new(
                "latency",
                format!("name the histogram without _bucket: {base:?}"),
            ));
        }
        let mut error_codes = Vec::new();
        if cfg.error_codes.is_empty() {
            problems.push(ConfigProblem::new(
                "error_codes",
                "list at least one code or class, like \"5xx\"",
            ));
        }
        for (i, code) in cfg.error_codes.iter().enumerate() {
            match CodeMatch::parse(code) {
                Some(m) => error_codes.push(m),
                None => problems.push(ConfigProblem::new(
                    format!("error_codes[{i}]"),
                    "must be a class like \"5xx\" or an exact code like \"429\"",
                )),
            }
        }
        if !valid_label_name(&cfg.code_label) {
            problems.push(ConfigProblem::new(
                "code_label",
                format!("{:?} is not a label name", cfg.code_label),
            ));
        }
        for k in cfg.match_labels.keys() {
            if !valid_label_name(k) {
                problems.push(ConfigProblem::new(
                    format!("match.{k}"),
                    format!("{k:?} is not a label name"),
                ));
            }
        }
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::ACCEPT,
            reqwest::header::HeaderValue::from_static(ACCEPT),
        );
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
        if cfg.max_body_bytes == 0 {
            problems.push(ConfigProblem::new("max_body_bytes", "must be at least 1"));
        }
        let client = reqwest::Client::builder()
            .timeout(ctx.timeout)
            .connect_timeout(ctx.timeout)
            .redirect(reqwest::redirect::Policy::none())
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
        match (problems.is_empty(), url, client) {
            (true, Some(url), Some(client)) => Ok(Self {
                shown_url: redact_url(url.as_str()),
                addr: crate::request::authority(&url),
                within: crate::duration::format(ctx.timeout),
                client,
                url,
                headers,
                max_body_bytes: cfg.max_body_bytes,
                requests: cfg.requests.as_deref().map(Family::counter),
                latency: cfg.latency.as_deref().map(Family::histogram),
                unit_ms: cfg.latency_unit.to_ms(),
                error_codes,
                code_label: cfg.code_label.clone(),
                matchers: cfg
                    .match_labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                last: Mutex::new(None),
            }),
            _ => Err(problems),
        }
    }

    pub async fn check(&self) -> Result<Report, ProbeError> {
        let start = Instant::now();
        let resp = self
            .client
            .get(self.url.clone())
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(|e| {
                ProbeError::unhealthy(format!(
                    "scrape of {} failed: {}",
                    self.shown_url,
                    describe(&e, &self.addr, &self.within)
                ))
            })?;
        let status = resp.status();
        let format = match resp.headers().get(reqwest::header::CONTENT_TYPE) {
            Some(v) if v.as_bytes().starts_with(b"application/openmetrics-text") => {
                Format::OpenMetrics
            }
            _ => Format::Prometheus,
        };
        let cap = self.max_body_bytes;
        let body = read_whole(resp, cap, &self.within)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => {
                    format!("exposition larger than max_body_bytes ({cap} bytes)")
                }
                ReadError::Failed(why) => format!("reading exposition: {why}"),
            });
        let at = Instant::now();
        let report = Report::new().with("latency_ms", (at - start).as_secs_f64() * 1e3);
        if !status.is_success() {
            return Err(ProbeError::unhealthy_with(
                format!(
                    "scrape of {} answered {}, expected 2xx",
                    self.shown_url,
                    status.as_u16()
                ),
                report,
            ));
        }
        let body = body.map_err(|msg| ProbeError::unhealthy_with(msg, report.clone()))?;
        self.take(&body, format, at, report)
    }

    /// What a check does with a body it read: parses it as an exposition
    /// (OpenMetrics if `openmetrics`, else Prometheus text) and reports the
    /// change since the previous body, all without the network. Public for
    /// the fuzz targets; a check calls the same code.
    #[doc(hidden)]
    pub fn read_exposition(&self, body: &[u8], openmetrics: bool) -> Result<Report, ProbeError> {
        let format = if openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        };
        self.take(body, format, Instant::now(), Report::new())
    }

    fn take(
        &self,
        body: &[u8],
        format: Format,
        at: Instant,
        report: Report,
    ) -> Result<Report, ProbeError> {
        let text = std::str::from_utf8(body).map_err(|_| {
            ProbeError::unhealthy_with(
                format!("exposition of {} is not UTF-8 text", self.shown_url),
                report.clone(),
            )
        })?;
        let reading = self.read(text, format, at).map_err(|e| match e {
            ProbeError::Unhealthy { message, .. } => {
                ProbeError::unhealthy_with(message, report.clone())
            }
            other => other,
        })?;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let previous = last.replace(reading);
        let Some(previous) = previous else {
            // The first reading is only the starting point of the next delta.
            return Ok(report);
        };
        let current = last.as_ref().expect("just stored");
        let change = change(&previous, current);
        Ok(self.signals(report, &change, current.at - previous.at))
    }

    /// Reads an exposition body as a check does (the same cutting, parsing
    /// and `match` filters, without the request and without the change
    /// since the previous check) and returns how many matching series of
    /// the requests counter and the latency histogram it found. Public so
    /// that the cost of reading a large exposition can be measured alone.
    pub fn count_series(&self, text: &str, openmetrics: bool) -> Result<usize, ProbeError> {
        let format = if openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        };
        self.read(text, format, Instant::now())
            .map(|r| r.requests.len() + r.latency.len())
    }

    /// Cuts the configured metrics out of an exposition and reads their
    /// matching series.
    fn read(&self, text: &str, format: Format, at: Instant) -> Result<Reading, ProbeError> {
        let families: Vec<&Family> = self.requests.iter().chain(&self.latency).collect();
        let (cuts, described) = cut(text, &families, format);
        let mut reading = Reading {
            at,
            requests: HashMap::new(),
            latency: HashMap::new(),
        };
        for (family, cut) in families.iter().zip(&cuts) {
            let is_requests = family.is_counter;
            if cut.lines == 0 {
                return Err(self.absent(family, text, described));
            }
            let declared = cut.declared.as_deref().unwrap_or("untyped");
            if is_requests && !matches!(declared, "counter" | "untyped" | "unknown") {
                return Err(ProbeError::cannot_run(format!(
                    "requests metric {} is a {declared}, not a counter",
                    family.name
                )));
            }
            if !is_requests && declared != "histogram" {
                let hint = if declared == "summary" {
                    ": summaries cannot be added up across series, expose a histogram"
                } else {
                    ""
                };
                return Err(ProbeError::cannot_run(format!(
                    "latency metric {} is a {declared}, not a histogram{hint}",
                    family.name
                )));
            }
            let series = parse_cut(cut, family).map_err(|msg| {
                ProbeError::unhealthy(format!(
                    "cannot parse {} in the exposition of {}: {msg}",
                    family.name, self.shown_url
                ))
            })?;
            for (labels, value) in series {
                if !self.selects(&labels) {
                    continue;
                }
                // A counter or bucket count is never negative: such a series
                // is no reading at all, or one bad series could cancel the
                // requests of the others and inflate the error rate.
                match value {
                    Value::Count(v) if is_requests && v.is_finite() && v >= 0.0 => {
                        let error = labels
                            .iter()
                            .find(|(k, _)| *k == self.code_label)
                            .map(|(_, code)| self.error_codes.iter().any(|m| m.matches(code)));
                        reading.requests.insert(labels, (v, error));
                    }
                    Value::Buckets(b)
                        if !is_requests && b.iter().all(|(_, n)| n.is_finite() && *n >= 0.0) =>
                    {
                        reading.latency.insert(labels, b);
                    }
                    _ => {}
                }
            }
        }
        Ok(reading)
    }

    /// The error for a configured metric with no line in the exposition:
    /// the configuration does not match the service, unless the body is no
    /// exposition at all.
    fn absent(&self, family: &Family, text: &str, described: bool) -> ProbeError {
        if !described && !text.trim().is_empty() {
            if let Err(msg) = parse_whole(text) {
                return ProbeError::unhealthy(format!(
                    "{} did not answer a Prometheus exposition: {msg}",
                    self.shown_url
                ));
            }
        }
        ProbeError::cannot_run(format!(
            "metric {} is not in the exposition of {}",
            family.name, self.shown_url
        ))
    }

    /// Whether a series passes every `match` filter.
    fn selects(&self, labels: &Labels) -> bool {
        self.matchers.iter().all(|(k, want)| {
            let have = labels
                .iter()
                .find(|(n, _)| n == k)
                .map_or("", |(_, v)| v.as_str());
            have == want
        })
    }

    fn signals(&self, mut report: Report, change: &Change, elapsed: Duration) -> Report {
        if self.requests.is_some() {
            report.push("requests", change.requests);
            if !elapsed.is_zero() {
                report.push("request_rate", change.requests / elapsed.as_secs_f64());
            }
            if let Some(errors) = change.errors {
                report.push("errors", errors);
                if change.requests > 0.0 {
                    report.push("error_rate", errors / change.requests);
                }
            }
        }
        if self.latency.is_some() {
            let observed = observations(&change.buckets);
            report.push("latency_samples", observed);
            if observed > 0.0 {
                for (name, q) in [
                    ("p50_ms", 0.5),
                    ("p90_ms", 0.9),
                    ("p95_ms", 0.95),
                    ("p99_ms", 0.99),
                ] {
                    if let Some(v) = quantile(q, &change.buckets) {
                        // A latency is never below zero, whatever bounds
                        // the buckets were given (`le="-0.05"`).
                        report.push(name, (v * self.unit_ms).max(0.0));
                    }
                }
            }
        }
        report
    }
}

/// The text format of a body, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Prometheus,
    OpenMetrics,
}

/// The lines of one configured family, cut out of the body.
#[derive(Debug, Default)]
struct Cut {
    text: String,
    /// The body's line number (from 1) of each line of `text`.
    origin: Vec<usize>,
    /// Lines kept, descriptors included.
    lines: usize,
    /// What its `# TYPE` line declares.
    declared: Option<String>,
}

/// Cuts each family's lines out of `body`, in one pass. Also tells whether
/// the body has any `# HELP` or `# TYPE` line at all.
fn cut(body: &str, families: &[&Family], format: Format) -> (Vec<Cut>, bool) {
    let mut cuts: Vec<Cut> = families.iter().map(|_| Cut::default()).collect();
    let mut described = false;
    for (i, raw) in body.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let (name, descriptor) = if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            match (words.next(), words.next()) {
                (Some(kw @ ("HELP" | "TYPE")), Some(name)) => {
                    described = true;
                    (name, Some((kw, words.next())))
                }
                _ => continue,
            }
        } else {
            let end = line
                .find(|c: char| c == '{' || c.is_ascii_whitespace())
                .unwrap_or(line.len());
            (&line[..end], None)
        };
        for (family, cut) in families.iter().zip(cuts.iter_mut()) {
            let ours = if descriptor.is_some() {
                family.describes(name, format)
            } else {
                family.sample_names.iter().any(|n| n == name)
            };
            if !ours {
                continue;
            }
            if let Some(("TYPE", Some(kind))) = descriptor {
                cut.declared = Some(kind.to_string());
            }
            cut.text.push_str(line);
            cut.text.push('\n');
            cut.origin.push(i + 1);
            cut.lines += 1;
        }
    }
    (cuts, described)
}

/// A series' value, as far as this probe cares.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Count(f64),
    /// Cumulative counts by upper bound, sorted by bound.
    Buckets(Vec<(f64, f64)>),
}

/// Parses one family's lines into its series: a counter's samples as
/// counts, a histogram's `_bucket` samples grouped by their labels without
/// `le` (its `_sum` and `_count` are not needed). A parse error names the
/// line of the body it stopped at.
fn parse_cut(cut: &Cut, family: &Family) -> Result<Vec<(Labels, Value)>, String> {
    let mut out: Vec<(Labels, Value)> = Vec::new();
    let mut histograms: HashMap<Labels, Vec<(f64, f64)>> = HashMap::new();
    let bucket = format!("{}_bucket", family.name);
    for (i, line) in cut.text.lines().enumerate() {
        let Some(sample) = crate::exposition::parse_line(line).map_err(|e| at(i, &e, cut))? else {
            continue;
        };
        let mut labels = sample.labels;
        if family.is_counter {
            labels.sort();
            out.push((labels, Value::Count(sample.value)));
        } else if sample.name == bucket {
            let Some(le) = labels.iter().position(|(k, _)| k == "le") else {
                return Err(at(i, "a histogram bucket without an le label", cut));
            };
            let (_, le) = labels.swap_remove(le);
            let Some(le) = crate::exposition::number(&le).filter(|b| !b.is_nan()) else {
                return Err(at(i, &format!("le={le:?} is not a bucket bound"), cut));
            };
            labels.sort();
            histograms
                .entry(labels)
                .or_default()
                .push((le, sample.value));
        }
    }
    for (labels, mut b) in histograms {
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        out.push((labels, Value::Buckets(b)));
    }
    Ok(out)
}

/// Reads a whole body only to learn whether it is an exposition at all.
fn parse_whole(text: &str) -> Result<(), String> {
    for (i, line) in text.lines().enumerate() {
        crate::exposition::parse_line(line).map_err(|e| {
            let shown: String = line.trim().chars().take(80).collect();
            format!("line {}: {e}: {shown:?}", i + 1)
        })?;
    }
    Ok(())
}

/// An error at the `i`-th line of a cut, named by the body's own line.
fn at(i: usize, what: &str, cut: &Cut) -> String {
    let line = cut.text.lines().nth(i).unwrap_or("");
    let shown: String = line.chars().take(80).collect();
    match cut.origin.get(i) {
        Some(n) => format!("line {n}: {what}: {shown:?}"),
        None => format!("{what}: {shown:?}"),
    }
}

/// What changed between two readings, summed over the matching series.
#[derive(Debug, Default, PartialEq)]
struct Change {
    requests: f64,
    /// `None` when no series of the counter has the code label.
    errors: Option<f64>,
    /// Cumulative observations by upper bound, sorted by bound.
    buckets: Vec<(f64, f64)>,
}

fn change(before: &Reading, now: &Reading) -> Change {
    let mut c = Change::default();
    for (labels, (value, error)) in &now.requests {
        let grew = increase(before.requests.get(labels).map(|(v, _)| *v), *value);
        c.requests += grew;
        if let Some(is_error) = error {
            let errors = c.errors.get_or_insert(0.0);
            if *is_error {
                *errors += grew;
            }
        }
    }
    let mut all: Vec<(f64, f64)> = Vec::new();
    for (labels, buckets) in &now.latency {
        all.extend(bucket_increase(
            before.latency.get(labels).map(Vec::as_slice),
            buckets,
        ));
    }
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    for (le, n) in all {
        match c.buckets.last_mut() {
            Some(last) if last.0 == le => last.1 += n,
            _ => c.buckets.push((le, n)),
        }
    }
    c
}

/// How much a counter grew from `before` to `now`. A lower value means the
/// counter started again from zero (the service restarted), so all of `now`
/// is new, as Prometheus' `increase` reads it; a series not seen before
/// started from zero as well, since client libraries create series on their
/// first event.
fn increase(before: Option<f64>, now: f64) -> f64 {
    match before {
        Some(b) if now >= b => now - b,
        _ => now,
    }
}

/// The growth of one histogram series, bucket by bucket. Any bucket lower
/// than before means the whole histogram started again from zero.
fn bucket_increase(before: Option<&[(f64, f64)]>, now: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let Some(before) = before else {
        return now.to_vec();
    };
    let prev = |le: f64| before.iter().find(|(b, _)| *b == le).map(|(_, n)| *n);
    if now.iter().any(|(le, n)| prev(*le).is_some_and(|p| *n < p)) {
        return now.to_vec();
    }
    now.iter()
        .map(|(le, n)| (*le, n - prev(*le).unwrap_or(0.0)))
        .collect()
}

/// The observations in cumulative buckets: the count of the `+Inf` bucket.
fn observations(buckets: &[(f64, f64)]) -> f64 {
    match buckets.last() {
        Some((le, _)) if *le == f64::INFINITY => {
            buckets.iter().map(|(_, n)| *n).fold(0.0, f64::max)
        }
        _ => 0.0,
    }
}

/// The `q` quantile of cumulative buckets sorted by upper bound, as
/// Prometheus' `histogram_quantile` computes it: find the bucket the rank
/// falls in and interpolate linearly inside it, from the bucket below's
/// bound (or zero) to its own. A rank in the `+Inf` bucket yields the
/// highest finite bound. `None` without observations or a `+Inf` bucket.
fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    if buckets.len() < 2 || buckets.last()?.0 != f64::INFINITY {
        return None;
    }
    // Counts must not fall from one bucket to the next; where they do (a
    // scrape read mid-update), keep the highest seen, as Prometheus does.
    let mut counts = Vec::with_capacity(buckets.len());
    let mut max = 0.0_f64;
    for (_, n) in buckets {
        max = max.max(*n);
        counts.push(max);
    }
    let total = *counts.last()?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let b = counts.iter().position(|c| *c >= rank)?;
    if b == buckets.len() - 1 {
        return Some(buckets[b - 1].0);
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return Some(buckets[0].0);
    }
    let (start, below) = if b == 0 {
        (0.0, 0.0)
    } else {
        (buckets[b - 1].0, counts[b - 1])
    };
    let end = buckets[b].0;
    Some(start + (end - start) * ((rank - below) / (counts[b] - below)))
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    fn ctx() -> Context {
        Context {
            timeout: Duration::from_secs(1),
        }
    }

    fn config(extra: serde_json::Value) -> ScrapeConfig {
        let mut v = serde_json::json!({ "url": "http://127.0.0.1:1/metrics" });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    fn probe(extra: serde_json::Value) -> ScrapeProbe {
        ScrapeProbe::new(&config(extra), ctx()).unwrap()
    }

    #[tokio::test]
    async fn every_signal_a_check_reports_is_declared() {
        let addr = crate::testing::serve(|_, n| {
            let n = n + 1;
            let body = format!(
                "# TYPE http_requests_total counter\n\
                 http_requests_total{{code=\"200\"}} {}\n\
                 http_requests_total{{code=\"500\"}} {n}\n\
                 # TYPE d histogram\n\
                 d_bucket{{le=\"0.1\"}} {}\nd_bucket{{le=\"1\"}} {}\nd_bucket{{le=\"+Inf\"}} {}\n\
                 d_sum 1\nd_count {}\n",
                10 * n,
                5 * n,
                8 * n,
                9 * n,
                9 * n
            );
            crate::testing::response(200, "text/plain; version=0.0.4", &body)
        })
        .await;
        let cfg = config(serde_json::json!({
            "url": format!("http://{addr}/metrics"),
            "requests": "http_requests_total",
            "latency": "d",
        }));
        let p = ScrapeProbe::new(&cfg, ctx()).unwrap();
        let first = p.check().await.unwrap();
        assert_eq!(crate::testing::assert_declared(&first, &cfg.signals()), 1);
        let second = p.check().await.unwrap();
        assert_eq!(
            crate::testing::assert_declared(&second, &cfg.signals()),
            cfg.signals().len(),
            "every declared signal once there were requests: {second:?}"
        );
        assert!(second.get("p90_ms").unwrap() <= second.get("p95_ms").unwrap());
    }

    #[test]
    fn a_negative_count_is_ignored_rather_than_cancelling_other_series() {
        // Found by the `scrape` fuzz target: in an untyped family (the parser
        // refuses negative totals only under `# TYPE ... counter`) a new
        // series at -10 next to one that grew by 9 made requests -1 and the
        // request rate negative.
        let p = probe(serde_json::json!({ "requests": "http_requests_total", "latency": "d" }));
        let hist = "# TYPE d histogram\nd_bucket{le=\"0.1\"} 1\nd_bucket{le=\"+Inf\"} 2\nd_sum 1\nd_count 2\n";
        let first = format!(
            "http_requests_total{{code=\"200\"}} 1\nhttp_requests_total{{code=\"500\"}} 0\n{hist}"
        );
        p.read_exposition(first.as_bytes(), false).unwrap();
        let second = format!(
            "http_requests_total{{code=\"200\"}} 2\nhttp_requests_total{{code=\"500\"}} 10\n\
             http_requests_total{{code=\"201\"}} -100\n{hist}"
        );
        let r = p.read_exposition(second.as_bytes(), false).unwrap();
        assert_eq!(r.get("requests"), Some(11.0));
        assert_eq!(r.get("error_rate"), Some(10.0 / 11.0));
    }

    #[test]
    fn a_bucket_with_a_negative_bound_never_makes_a_negative_latency() {
        // Found by the `scrape` fuzz target: le="-.05" gave p50_ms = -50.
        let p = probe(serde_json::json!({ "latency": "d" }));
        let body = |low: u32, all: u32| {
            format!(
                "# TYPE d histogram\nd_bucket{{le=\"-.05\"}} {low}\nd_bucket{{le=\"0.1\"}} {low}\n\
                 d_bucket{{le=\"+Inf\"}} {all}\n"
            )
        };
        p.read_exposition(body(1, 1).as_bytes(), false).unwrap();
        let r = p.read_exposition(body(100, 101).as_bytes(), false).unwrap();
        assert_eq!(r.get("p50_ms"), Some(0.0));
        assert!(r.get("p99_ms").unwrap() >= 0.0);
    }

    #[test]
    fn reads_an_exposition_without_the_network_as_a_check_does() {
        let p = probe(serde_json::json!({ "requests": "http_requests_total" }));
        let body = |ok: u32, bad: u32| {
            format!(
                "# TYPE http_requests_total counter\nhttp_requests_total{{code=\"200\"}} {ok}\nhttp_requests_total{{code=\"500\"}} {bad}\n"
            )
        };
        let first = p.read_exposition(body(10, 0).as_bytes(), false).unwrap();
        assert_eq!(
            first.get("requests"),
            None,
            "the first reading is the start"
        );
        let second = p.read_exposition(body(20, 10).as_bytes(), false).unwrap();
        assert_eq!(second.get("requests"), Some(20.0));
        assert_eq!(second.get("error_rate"), Some(0.5));
        assert!(p.read_exposition(b"\xff\xfe", false).is_err());
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_like_histogram_quantile() {
        // 100 observations: 50 up to 0.1, 40 in (0.1, 0.5], 10 in (0.5, 1].
        let b = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (INF, 100.0)];
        let cases = [
            (0.5, 0.1),
            (0.25, 0.05),
            (0.7, 0.1 + 0.4 * (20.0 / 40.0)),
            (0.95, 0.5 + 0.5 * (5.0 / 10.0)),
            (0.99, 0.5 + 0.5 * (9.0 / 10.0)),
        ];
        for (q, want) in cases {
            let got = quantile(q, &b).unwrap();
            assert!((got - want).abs() < 1e-12, "q={q}: got {got}, want {want}");
        }
    }

    #[test]
    fn a_rank_in_the_inf_bucket_yields_the_highest_finite_bound() {
        let b = [(0.1, 1.0), (0.5, 2.0), (INF, 10.0)];
        assert_eq!(quantile(0.99, &b), Some(0.5));
    }

    #[test]
    fn quantiles_are_absent_without_observations_or_an_inf_bucket() {
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (INF, 0.0)]), None);
        assert_eq!(quantile(0.5, &[(0.1, 3.0), (1.0, 5.0)]), None);
        assert_eq!(quantile(0.5, &[(INF, 5.0)]), None);
    }

    #[test]
    fn falling_bucket_counts_are_read_as_monotonic() {
        // 0.5 reads lower than 0.1: treated as 50, so the median stays in the first bucket.
        let b = [(0.1, 50.0), (0.5, 40.0), (INF, 100.0)];
        assert_eq!(quantile(0.5, &b), Some(0.1));
    }

    #[test]
    fn a_counter_that_went_down_counts_again_from_zero() {
        assert_eq!(increase(Some(100.0), 130.0), 30.0);
        assert_eq!(increase(Some(100.0), 7.0), 7.0);
        assert_eq!(increase(None, 4.0), 4.0);
        assert_eq!(increase(Some(5.0), 5.0), 0.0);
    }

    #[test]
    fn a_histogram_with_any_lower_bucket_counts_again_from_zero() {
        let before = [(0.1, 10.0), (INF, 20.0)];
        assert_eq!(
            bucket_increase(Some(&before), &[(0.1, 15.0), (INF, 30.0)]),
            vec![(0.1, 5.0), (INF, 10.0)]
        );
        assert_eq!(
            bucket_increase(Some(&before), &[(0.1, 2.0), (INF, 3.0)]),
            vec![(0.1, 2.0), (INF, 3.0)]
        );
    }

    fn reading(
        requests: &[(&str, f64, Option<bool>)],
        latency: &[(&str, &[(f64, f64)])],
    ) -> Reading {
        let l = |h: &str| vec![("handler".to_string(), h.to_string())];
        Reading {
            at: Instant::now(),
            requests: requests.iter().map(|(h, v, e)| (l(h), (*v, *e))).collect(),
            latency: latency.iter().map(|(h, b)| (l(h), b.to_vec())).collect(),
        }
    }

    #[test]
    fn changes_add_up_series_and_handle_a_reset_in_one_of_them() {
        let before = reading(
            &[("a", 100.0, Some(false)), ("b", 50.0, Some(true))],
            &[
                ("a", &[(0.1, 10.0), (INF, 20.0)]),
                ("b", &[(0.1, 5.0), (INF, 5.0)]),
            ],
        );
        let now = reading(
            // b restarted: 3 errors since.
            &[("a", 110.0, Some(false)), ("b", 3.0, Some(true))],
            &[
                ("a", &[(0.1, 12.0), (INF, 24.0)]),
                ("b", &[(0.1, 1.0), (INF, 1.0)]),
            ],
        );
        let c = change(&before, &now);
        assert_eq!(c.requests, 13.0);
        assert_eq!(c.errors, Some(3.0));
        assert_eq!(c.buckets, vec![(0.1, 3.0), (INF, 5.0)]);
    }

    #[test]
    fn errors_are_unknown_when_no_series_has_a_code() {
        let before = reading(&[("a", 1.0, None)], &[]);
        let now = reading(&[("a", 2.0, None)], &[]);
        assert_eq!(change(&before, &now).errors, None);
    }

    #[test]
    fn rates_are_per_second_and_an_idle_interval_has_no_error_rate() {
        let p = probe(serde_json::json!({ "requests": "http_requests_total", "latency": "d" }));
        let busy = Change {
            requests: 20.0,
            errors: Some(5.0),
            buckets: vec![(0.1, 4.0), (INF, 4.0)],
        };
        let r = p.signals(Report::new(), &busy, Duration::from_secs(4));
        assert_eq!(r.get("request_rate"), Some(5.0));
        assert_eq!(r.get("error_rate"), Some(0.25));
        assert_eq!(r.get("latency_samples"), Some(4.0));
        assert_eq!(r.get("p50_ms"), Some(50.0));

        let idle = Change {
            requests: 0.0,
            errors: Some(0.0),
            buckets: vec![(0.1, 0.0), (INF, 0.0)],
        };
        let r = p.signals(Report::new(), &idle, Duration::from_secs(4));
        assert_eq!(r.get("request_rate"), Some(0.0));
        assert_eq!(r.get("errors"), Some(0.0));
        assert_eq!(r.get("error_rate"), None);
        assert_eq!(r.get("p95_ms"), None);
    }

    #[test]
    fn error_codes_match_classes_and_exact_values() {
        let cases = [
            ("5xx", "503", true),
            ("5xx", "500", true),
            ("5xx", "404", false),
            ("5xx", "5000", false),
            ("4XX", "429", true),
            ("429", "429", true),
            ("429", "428", false),
            ("Unavailable", "Unavailable", true),
        ];
        for (pattern, code, want) in cases {
            let m = CodeMatch::parse(pattern).unwrap();
            assert_eq!(m.matches(code), want, "{pattern} vs {code}");
        }
        assert_eq!(CodeMatch::parse(" "), None);
    }

    #[test]
    fn cut_keeps_only_the_configured_families_with_their_line_numbers() {
        let body = "# HELP other x\nother 1\n# TYPE http_requests_total counter\n\
                    http_requests_total{code=\"200\"} 3\nhttp_requests_total_created 5\n\
                    # TYPE d histogram\nd_bucket{le=\"+Inf\"} 1\nd_sum 0.2\nd_count 1\n";
        let req = Family::counter("http_requests_total");
        let lat = Family::histogram("d");
        let (cuts, described) = cut(body, &[&req, &lat], Format::Prometheus);
        assert!(described);
        assert_eq!(cuts[0].origin, vec![3, 4]);
        assert_eq!(cuts[0].declared.as_deref(), Some("counter"));
        assert_eq!(cuts[1].origin, vec![6, 7, 8, 9]);
        assert_eq!(cuts[1].declared.as_deref(), Some("histogram"));
    }

    #[test]
    fn reading_an_exposition_alone_counts_the_matching_series() {
        let p = probe(serde_json::json!({
            "requests": "http_requests_total",
            "latency": "d",
            "match": { "handler": "/api" },
        }));
        let body = "# TYPE http_requests_total counter\n\
                    http_requests_total{handler=\"/api\",code=\"200\"} 3\n\
                    http_requests_total{handler=\"/api\",code=\"500\"} 1\n\
                    http_requests_total{handler=\"/other\",code=\"200\"} 9\n\
                    # TYPE d histogram\nd_bucket{handler=\"/api\",le=\"+Inf\"} 1\n\
                    d_sum{handler=\"/api\"} 0.2\nd_count{handler=\"/api\"} 1\n";
        assert_eq!(p.count_series(body, false).unwrap(), 3);
        assert!(p.count_series("other 1\n", false).is_err());
    }

    #[test]
    fn a_parse_error_names_the_line_of_the_body() {
        let body = "# TYPE other gauge\nother 1\n# TYPE c counter\nc{code=\"200\" 3\n";
        let fam = Family::counter("c");
        let (cuts, _) = cut(body, &[&fam], Format::Prometheus);
        let err = parse_cut(&cuts[0], &fam).unwrap_err();
        assert!(err.starts_with("line 4: "), "{err}");
    }

    #[test]
    fn rejects_a_probe_without_metrics_and_bad_names() {
        let err = ScrapeProbe::new(&config(serde_json::json!({})), ctx()).unwrap_err();
        assert_eq!(err[0].key, "requests");
        let err = ScrapeProbe::new(
            &config(serde_json::json!({
                "latency": "d_bucket", "code_label": "1x", "error_codes": [],
            })),
            ctx(),
        )
        .unwrap_err();
        let keys: Vec<&str> = err.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["latency", "error_codes", "code_label"]);
    }
}
