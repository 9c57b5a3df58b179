//! `promql`: one instant query against a Prometheus server's HTTP API, its
//! single value reported under a chosen signal name. Whatever goes wrong on
//! the Prometheus side (unreachable, an error answer, no data, several
//! series) is the probe's own trouble, never the service's: missing data must
//! not roll anything back.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::request::{describe, read_whole, ReadError};
use crate::{redact_url, ConfigProblem, Context, ProbeError, Report, SignalInfo};

/// The names a query's value may be reported under: a fixed set, the
/// names rules already know. `latency_ms` is absent: it is the query's own
/// duration.
pub const SIGNALS: &[&str] = &[
    "value",
    "error_rate",
    "request_rate",
    "requests",
    "errors",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "pool_utilization",
    "memory_percent",
    "cpu_percent",
    "saturation",
];

/// The query's own duration, which every check yields.
const LATENCY: SignalInfo =
    SignalInfo::fixed("latency_ms", "milliseconds the query took, answer read");

/// Every signal a `promql` probe can yield: `latency_ms`, and the query's
/// value under whichever of [`SIGNALS`] `signal` names.
pub(crate) fn type_signals() -> Vec<SignalInfo> {
    std::iter::once(LATENCY)
        .chain(SIGNALS.iter().map(|name| value_signal(name)))
        .collect()
}

/// The query's value reported as `name`.
fn value_signal(name: &'static str) -> SignalInfo {
    SignalInfo {
        name: name.into(),
        about: format!("the query's value, with `signal = \"{name}\"`").into(),
    }
}

impl PromqlConfig {
    /// What a check can yield: the query's value under the chosen signal
    /// (none when `signal` is not one of [`SIGNALS`]) and `latency_ms`.
    pub fn signals(&self) -> Vec<SignalInfo> {
        SIGNALS
            .iter()
            .find(|s| **s == self.signal)
            .map(|name| value_signal(name))
            .into_iter()
            .chain(std::iter::once(LATENCY))
            .collect()
    }
}

/// The most bytes read from an answer: one sample is a few hundred bytes,
/// and a larger answer holds more series than the probe can use.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// Settings of a `promql` probe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromqlConfig {
    /// The Prometheus server's base URL, like `http://prometheus:9090`; a
    /// path prefix is kept. Required.
    pub url: String,
    /// An instant query that yields one value, like
    /// `sum(rate(http_requests_total{code=~"5.."}[5m])) / sum(rate(http_requests_total[5m]))`.
    /// Required.
    pub query: String,
    /// The signal the value is reported under, one of [`SIGNALS`]. Default `value`.
    #[serde(default = "default_signal")]
    pub signal: String,
    /// Extra request headers, e.g. `Authorization`. Default none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl crate::ProbeType for PromqlConfig {
    fn levels() -> &'static [u8] {
        &[4]
    }
}

fn default_signal() -> String {
    "value".into()
}

#[derive(Debug)]
pub struct PromqlProbe {
    client: reqwest::Client,
    /// `{url}/api/v1/query` with the query in its parameters.
    endpoint: reqwest::Url,
    shown_url: String,
    /// Prometheus' `host:port` and the time limit, for error messages.
    addr: String,
    within: String,
    headers: reqwest::header::HeaderMap,
    signal: &'static str,
}

impl PromqlProbe {
    pub fn new(cfg: &PromqlConfig, ctx: Context) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let base = match reqwest::Url::parse(&cfg.url) {
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
        if cfg.query.trim().is_empty() {
            problems.push(ConfigProblem::new("query", "must not be empty"));
        }
        let signal = SIGNALS.iter().copied().find(|s| *s == cfg.signal);
        if signal.is_none() {
            let message = if cfg.signal == "latency_ms" {
                "latency_ms is the query's own duration; report a latency as p50_ms, p95_ms, p99_ms or value".to_string()
            } else {
                format!(
                    "unknown signal {:?}, expected one of {}",
                    cfg.signal,
                    SIGNALS.join(", ")
                )
            };
            problems.push(ConfigProblem::new("signal", message));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::ACCEPT,
            reqwest::header::HeaderValue::from_static("application/json"),
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
        let client = reqwest::Client::builder()
            .timeout(ctx.timeout)
            .connect_timeout(ctx.timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
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
        match (problems.is_empty(), base, signal, client) {
            (true, Some(base), Some(signal), Some(client)) => {
                let shown_url = redact_url(base.as_str());
                let mut endpoint = base;
                let path = format!("{}/api/v1/query", endpoint.path().trim_end_matches('/'));
                endpoint.set_path(&path);
                // Prometheus stops evaluating when the probe stops waiting.
                endpoint
                    .query_pairs_mut()
                    .append_pair("query", &cfg.query)
                    .append_pair("timeout", &format!("{}ms", ctx.timeout.as_millis()));
                Ok(Self {
                    addr: crate::request::authority(&endpoint),
                    within: crate::duration::format(ctx.timeout),
                    client,
                    endpoint,
                    shown_url,
                    headers,
                    signal,
                })
            }
            _ => Err(problems),
        }
    }

    pub async fn check(&self) -> Result<Report, ProbeError> {
        let start = Instant::now();
        let resp = self
            .client
            .get(self.endpoint.clone())
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(|e| {
                ProbeError::cannot_run(format!(
                    "prometheus at {} unreachable: {}",
                    self.shown_url,
                    describe(&e, &self.addr, &self.within)
                ))
            })?;
        let status = resp.status();
        let body = read_whole(resp, MAX_ANSWER_BYTES, &self.within)
            .await
            .map_err(|e| {
                ProbeError::cannot_run(match e {
                    ReadError::TooLarge => format!(
                        "prometheus' answer is larger than {MAX_ANSWER_BYTES} bytes; aggregate the query to one series"
                    ),
                    ReadError::Failed(why) => format!("reading prometheus' answer: {why}"),
                })
            })?;
        let latency_ms = start.elapsed().as_secs_f64() * 1e3;
        let answer: Option<Answer> = serde_json::from_slice(&body).ok();
        let data = match answer {
            Some(a) if a.status == "error" => {
                return Err(ProbeError::cannot_run(format!(
                    "prometheus at {} rejected the query: {}: {}",
                    self.shown_url,
                    a.error_type.as_deref().unwrap_or("error"),
                    a.error.as_deref().unwrap_or("no reason given")
                )))
            }
            _ if !status.is_success() => {
                return Err(ProbeError::cannot_run(format!(
                    "prometheus at {} answered {}, expected 2xx",
                    self.shown_url,
                    status.as_u16()
                )))
            }
            Some(Answer {
                data: Some(data), ..
            }) => data,
            _ => {
                return Err(ProbeError::cannot_run(format!(
                    "prometheus at {} did not answer with its query API's JSON",
                    self.shown_url
                )))
            }
        };
        let value = single_value(&data).map_err(ProbeError::cannot_run)?;
        Ok(Report::new()
            .with(self.signal, value)
            .with("latency_ms", latency_ms))
    }
}

/// The envelope of every answer of Prometheus' HTTP API.
#[derive(Debug, Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

/// The one finite value of a query's result, or why there is none.
fn single_value(data: &Data) -> Result<f64, String> {
    let sample = match data.result_type.as_str() {
        "scalar" => &data.result,
        "vector" => {
            let series = data
                .result
                .as_array()
                .ok_or("vector result is not a list")?;
            match series.as_slice() {
                [] => {
                    return Err("query returned no data (an empty vector): nothing to judge".into())
                }
                [one] => &one["value"],
                many => {
                    let shown: Vec<String> = many
                        .iter()
                        .take(3)
                        .map(|s| s["metric"].to_string())
                        .collect();
                    let more = if many.len() > 3 { ", ..." } else { "" };
                    return Err(format!(
                        "query returned {} series ({}{more}); aggregate it to one, \
                         e.g. with sum(...) or max(...)",
                        many.len(),
                        shown.join(", ")
                    ));
                }
            }
        }
        other => {
            return Err(format!(
                "query returned a {other}, expected an instant vector or a scalar"
            ))
        }
    };
    // A sample is `[unix_time, "value"]`, the value a string as Go formats floats.
    let text = sample
        .get(1)
        .and_then(|v| v.as_str())
        .ok_or("sample is not [time, \"value\"]")?;
    let value = match text {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        t => t
            .parse::<f64>()
            .map_err(|_| format!("sample value {t:?} is not a number"))?,
    };
    if !value.is_finite() {
        // NaN is how PromQL says "no data" (0/0 of idle rates); an infinity
        // is a division by zero just the same.
        return Err(format!("query returned {text}: no data to judge"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            timeout: Duration::from_secs(2),
        }
    }

    fn config(url: &str, signal: &str) -> PromqlConfig {
        PromqlConfig {
            url: url.into(),
            query: "up".into(),
            signal: signal.into(),
            headers: BTreeMap::new(),
        }
    }

    fn data(result_type: &str, result: serde_json::Value) -> Data {
        Data {
            result_type: result_type.into(),
            result,
        }
    }

    #[tokio::test]
    async fn every_signal_a_check_reports_is_declared() {
        let addr = crate::testing::serve(|_, _| {
            crate::testing::response(
                200,
                "application/json",
                r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"0.25"]}}"#,
            )
        })
        .await;
        for signal in SIGNALS {
            let cfg = config(&format!("http://{addr}"), signal);
            let report = PromqlProbe::new(&cfg, ctx())
                .unwrap()
                .check()
                .await
                .unwrap();
            assert_eq!(report.get(signal), Some(0.25));
            assert_eq!(crate::testing::assert_declared(&report, &cfg.signals()), 2);
            assert_eq!(cfg.signals().len(), 2);
        }
        assert_eq!(type_signals().len(), SIGNALS.len() + 1);
    }

    #[test]
    fn the_endpoint_keeps_a_path_prefix_and_carries_the_query() {
        let p = PromqlProbe::new(&config("http://prom:9090/prometheus/", "value"), ctx()).unwrap();
        assert_eq!(p.endpoint.path(), "/prometheus/api/v1/query");
        let pairs: Vec<(String, String)> = p.endpoint.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            [
                ("query".to_string(), "up".to_string()),
                ("timeout".to_string(), "2000ms".to_string())
            ]
        );
    }

    #[test]
    fn only_known_signals_are_accepted_and_latency_ms_is_explained() {
        let p = PromqlProbe::new(&config("http://prom:9090", "p95_ms"), ctx()).unwrap();
        assert_eq!(p.signal, "p95_ms");
        let err = PromqlProbe::new(&config("http://prom:9090", "latency_ms"), ctx()).unwrap_err();
        assert_eq!(err[0].key, "signal");
        assert!(err[0].message.contains("query's own duration"));
        let err = PromqlProbe::new(&config("ftp://prom", "nope"), ctx()).unwrap_err();
        let keys: Vec<&str> = err.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["url", "signal"]);
    }

    #[test]
    fn a_single_value_is_read_from_a_scalar_or_a_one_series_vector() {
        let cases = [
            (data("scalar", serde_json::json!([1.7e9, "0.25"])), Ok(0.25)),
            (
                data(
                    "vector",
                    serde_json::json!([{ "metric": {}, "value": [1.7e9, "3"] }]),
                ),
                Ok(3.0),
            ),
            (
                data("scalar", serde_json::json!([1.7e9, "NaN"])),
                Err("NaN"),
            ),
            (
                data("scalar", serde_json::json!([1.7e9, "+Inf"])),
                Err("+Inf"),
            ),
            (data("vector", serde_json::json!([])), Err("no data")),
            (data("matrix", serde_json::json!([])), Err("matrix")),
        ];
        for (d, want) in cases {
            match (single_value(&d), want) {
                (Ok(v), Ok(w)) => assert_eq!(v, w),
                (Err(e), Err(w)) => assert!(e.contains(w), "{e:?} lacks {w:?}"),
                (got, want) => panic!("{d:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
