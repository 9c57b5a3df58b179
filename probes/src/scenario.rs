//! `scenario`: a critical path as ordered HTTP steps, such as logging in and
//! reading the account with the token the login returned. A step can capture
//! values from its response for later steps to use as `{{name}}`; cookies are
//! kept across the steps of one run and forgotten after it. The first failing
//! step names itself and stops the run, and the whole run is bounded by the
//! probe's timeout. A step can also report numbers from its JSON body as
//! signals, as an `http` probe does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use reqwest::cookie::{CookieStore, Jar};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::{Method, Url};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::duration::{self, Dur};
use crate::request::{
    self, authority, body_signal_infos, default_max_body, default_method, describe, key,
    read_capped, yes, BodyAssertion, BodySignals, Expect, Keep, ReadBody,
};
use crate::{ConfigProblem, Context, ProbeError, Report, SignalInfo};

/// The signals a `scenario` probe yields itself; those its steps' `signals`
/// settings declare come on top.
const SIGNALS: [SignalInfo; 3] = [
    SignalInfo::fixed(
        "latency_ms",
        "milliseconds the whole run took, up to the failing step",
    ),
    SignalInfo::fixed("steps_ok", "how many steps passed, in order"),
    SignalInfo::fixed(
        "step_failed",
        "the number (from 1) of the step that failed; only when one did",
    ),
];

pub(crate) fn type_signals() -> Vec<SignalInfo> {
    SIGNALS.to_vec()
}

/// Settings of a `scenario` probe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioConfig {
    /// The steps, run in order; written `[[probe.step]]`. Required, at least one.
    pub step: Vec<StepConfig>,
    /// Verify the servers' TLS certificates. Default `true`.
    #[serde(default = "yes")]
    pub tls_verify: bool,
    /// The most bytes read from each response body. Default 1 MiB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
}

impl crate::ProbeType for ScenarioConfig {
    fn levels() -> &'static [u8] {
        &[3]
    }
}

impl ScenarioConfig {
    /// What a run of this scenario can yield: its own signals and every
    /// step's declared body signals.
    pub fn signals(&self) -> Vec<SignalInfo> {
        let mut all = type_signals();
        for step in &self.step {
            for info in body_signal_infos(&step.signals) {
                if !all.iter().any(|s| s.name == info.name) {
                    all.push(info);
                }
            }
        }
        all
    }
}

/// One request of a scenario and what its response must look like.
/// `{{name}}` in `url`, header values, `body` and the strings of `json` is
/// replaced by the value an earlier step captured as `name`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// HTTP method. Default `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// The URL to request. Required. It must be absolute, unless it starts
    /// with a placeholder (a captured `Location`, say): then a relative value
    /// is resolved against the previous step's URL.
    pub url: String,
    /// Extra request headers. Default none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A raw request body. Default none; exclusive with `json`.
    #[serde(default)]
    pub body: Option<String>,
    /// A JSON request body, sent with `Content-Type: application/json`. A
    /// string that is exactly one placeholder takes the captured value with
    /// its JSON type (a captured number stays a number). Default none.
    #[serde(default)]
    pub json: Option<Value>,
    /// Statuses that count as healthy. Default: any 2xx.
    #[serde(default)]
    pub expect_status: Vec<u16>,
    /// Assertions on the response body, as in the `http` probe. Default none.
    #[serde(default)]
    pub expect_body: Vec<BodyAssertion>,
    /// Values to keep for later steps: name → a JSON pointer into the body
    /// (`"/token"`) or `"header:Name"` for a response header. Default none.
    #[serde(default)]
    pub capture: BTreeMap<String, String>,
    /// How long this step may take, like `"2s"`. Default: whatever is left
    /// of the probe's timeout, which bounds the whole scenario.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Numbers from this step's JSON response body reported as signals of
    /// the scenario, under these names (no prefix): name → a JSON pointer,
    /// as in the `http` probe. A missing or non-numeric value leaves the
    /// signal missing without failing the step; a name is declared by one
    /// step only and is none of the scenario's own signals. Default none.
    #[serde(default)]
    pub signals: BTreeMap<String, String>,
}

/// Text with `{{name}}` placeholders.
#[derive(Debug, Clone, PartialEq)]
struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Var(String),
}

/// Captured values by name.
type Vars = HashMap<String, Value>;

impl Template {
    fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| "a {{ is never closed with }}".to_string())?;
            let name = after[..close].trim();
            if !valid_name(name) {
                return Err(format!(
                    "{{{{{name}}}}} is not a placeholder: names are letters, digits, '_', '-' or '.'"
                ));
            }
            pieces.push(Piece::Var(name.to_string()));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Self(pieces))
    }

    fn vars(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Var(v) => Some(v.as_str()),
            Piece::Text(_) => None,
        })
    }

    fn starts_with_var(&self) -> bool {
        matches!(self.0.first(), Some(Piece::Var(_)))
    }

    /// The name when the whole text is one placeholder.
    fn sole_var(&self) -> Option<&str> {
        match self.0.as_slice() {
            [Piece::Var(v)] => Some(v),
            _ => None,
        }
    }

    fn render(&self, vars: &Vars) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(v) => out.push_str(&text_of(vars.get(v))),
            }
        }
        out
    }
}

/// A captured value as text: a JSON string as it is, anything else as JSON.
fn text_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Replaces the placeholders in every string of a JSON document.
fn render_json(v: &Value, vars: &Vars) -> Value {
    match v {
        Value::String(s) => match Template::parse(s) {
            Ok(t) => match t.sole_var() {
                Some(name) => vars.get(name).cloned().unwrap_or(Value::Null),
                None => Value::String(t.render(vars)),
            },
            // Checked when the probe was built.
            Err(_) => v.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(|i| render_json(i, vars)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render_json(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Every string of a JSON document, with its key path below `path`.
fn json_strings<'a>(v: &'a Value, path: String, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::String(s) => out.push((path, s)),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                json_strings(item, format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                json_strings(item, format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

#[derive(Debug)]
enum StepBody {
    Raw(Template),
    Json(Value),
}

#[derive(Debug)]
enum Capture {
    Pointer(String),
    Header(HeaderName),
}

#[derive(Debug)]
struct Step {
    /// `GET /api/me`: the method and the path of the URL as written, which
    /// names the step in messages without a host, query or captured value.
    label: String,
    method: Method,
    url: Template,
    headers: Vec<(HeaderName, Template)>,
    body: Option<StepBody>,
    expect: Expect,
    captures: Vec<(String, Capture)>,
    body_signals: BodySignals,
    timeout: Option<Duration>,
}

/// A runtime `scenario` probe. Its client is shared by all runs, so
/// connections are reused; cookies are not.
pub struct ScenarioProbe {
    client: reqwest::Client,
    steps: Vec<Step>,
    max_body_bytes: u64,
    timeout: Duration,
    /// Header and body values of the steps, hidden from every message
    /// should a server echo them back; captured values are added per run.
    secrets: Vec<String>,
}

impl std::fmt::Debug for ScenarioProbe {
    // Steps carry credentials in headers and bodies: only their labels show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScenarioProbe")
            .field(
                "steps",
                &self
                    .steps
                    .iter()
                    .map(|s| s.label.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ScenarioProbe {
    pub fn new(cfg: &ScenarioConfig, ctx: Context) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        if cfg.step.is_empty() {
            problems.push(ConfigProblem::new(
                "step",
                "a scenario needs at least one step: add a [[probe.step]] table",
            ));
        }
        if cfg.max_body_bytes == 0 {
            problems.push(ConfigProblem::new("max_body_bytes", "must be at least 1"));
        }
        let mut captured: HashSet<String> = HashSet::new();
        let mut signalled: HashMap<&str, usize> = HashMap::new();
        let mut steps = Vec::new();
        let mut secrets = Vec::new();
        for (i, s) in cfg.step.iter().enumerate() {
            for name in s.signals.keys() {
                let first = *signalled.entry(name).or_insert(i);
                if first != i {
                    problems.push(ConfigProblem::new(
                        format!("step[{i}].signals.{name}"),
                        format!("{name} is already declared by step[{first}]: a signal comes from one step"),
                    ));
                }
            }
            for (k, v) in &s.headers {
                secrets.extend(crate::redact::header_secrets(k, v));
            }
            if let Some(b) = &s.body {
                secrets.extend(crate::redact::secret_words(b));
            }
            if let Some(j) = &s.json {
                crate::redact::json_secrets(j, &mut secrets);
            }
            if let Some(step) = build_step(s, &format!("step[{i}]"), &captured, ctx, &mut problems)
            {
                steps.push(step);
            }
            captured.extend(s.capture.keys().cloned());
        }
        let client = match request::client(cfg.tls_verify, false) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(ConfigProblem::new("step", e));
                None
            }
        };
        match client {
            Some(client) if problems.is_empty() => {
                if !cfg.tls_verify {
                    tracing::warn!("tls_verify is off: the servers' certificates are not checked");
                }
                Ok(Self {
                    client,
                    steps,
                    max_body_bytes: cfg.max_body_bytes,
                    timeout: ctx.timeout,
                    secrets,
                })
            }
            _ => Err(problems),
        }
    }

    /// Runs the steps in order with a fresh cookie jar. The first step that
    /// fails ends the run as `Unhealthy`, naming the step.
    pub async fn check(&self) -> Result<Report, ProbeError> {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let jar = Jar::default();
        let mut vars = Vars::new();
        let mut previous: Option<Url> = None;
        // The steps' body signals, as they come.
        let mut report = Report::new();
        for (i, step) in self.steps.iter().enumerate() {
            match self
                .run_step(
                    step,
                    &jar,
                    &mut vars,
                    previous.as_ref(),
                    deadline,
                    &mut report,
                )
                .await
            {
                Ok(url) => previous = Some(url),
                Err(msg) => {
                    let report = report
                        .with("latency_ms", start.elapsed().as_secs_f64() * 1e3)
                        .with("steps_ok", i as f64)
                        .with("step_failed", (i + 1) as f64);
                    // What a server answered may repeat what it was sent,
                    // or a token captured earlier in this run.
                    let mut secrets = self.secrets.clone();
                    for v in vars.values() {
                        secrets.extend(crate::redact::secret_words(&text_of(Some(v))));
                    }
                    return Err(ProbeError::unhealthy_with(
                        crate::redact::scrub(
                            &format!("step {} ({}): {msg}", i + 1, step.label),
                            &secrets,
                        ),
                        report,
                    ));
                }
            }
        }
        Ok(report
            .with("latency_ms", start.elapsed().as_secs_f64() * 1e3)
            .with("steps_ok", self.steps.len() as f64))
    }

    /// Runs one step, adding its body signals to `report`; returns the URL
    /// it requested, which a later relative URL is resolved against.
    async fn run_step(
        &self,
        step: &Step,
        jar: &Jar,
        vars: &mut Vars,
        previous: Option<&Url>,
        deadline: Instant,
        report: &mut Report,
    ) -> Result<Url, String> {
        let whole = duration::format(self.timeout);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "not started: the scenario's {whole} timeout was used up"
            ));
        }
        let (limit, within) = match step.timeout {
            Some(t) if t <= left => (t, duration::format(t)),
            _ => (left, format!("the scenario's {whole} timeout")),
        };

        let url = resolve_url(&step.url.render(vars), previous)?;
        let addr = authority(&url);
        let mut headers = HeaderMap::new();
        for (name, value) in &step.headers {
            let mut value = HeaderValue::from_str(&value.render(vars)).map_err(|_| {
                format!("header {name}: the value with its placeholders replaced is not a valid header value")
            })?;
            value.set_sensitive(true);
            headers.append(name.clone(), value);
        }
        if let Some(cookies) = jar.cookies(&url) {
            let value = match headers.get(COOKIE).and_then(|v| v.to_str().ok()) {
                Some(own) => {
                    HeaderValue::from_str(&format!("{own}; {}", cookies.to_str().unwrap_or("")))
                        .unwrap_or(cookies)
                }
                None => cookies,
            };
            headers.insert(COOKIE, value);
        }
        let mut req = self
            .client
            .request(step.method.clone(), url.clone())
            .timeout(limit);
        match &step.body {
            Some(StepBody::Raw(t)) => req = req.body(t.render(vars)),
            Some(StepBody::Json(j)) => {
                headers
                    .entry(CONTENT_TYPE)
                    .or_insert(HeaderValue::from_static("application/json"));
                req = req.body(render_json(j, vars).to_string());
            }
            None => {}
        }
        let resp = req
            .headers(headers)
            .send()
            .await
            .map_err(|e| describe(&e, &addr, &within))?;
        jar.set_cookies(&mut resp.headers().get_all(SET_COOKIE).iter(), &url);
        step.expect.check_status(&resp)?;

        let mut from_headers = Vec::new();
        for (name, capture) in &step.captures {
            if let Capture::Header(h) = capture {
                let value = resp
                    .headers()
                    .get(h)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                from_headers.push((name, h, value));
            }
        }
        let needs_json = step
            .captures
            .iter()
            .any(|(_, c)| matches!(c, Capture::Pointer(_)));
        let keep = Keep::for_use(
            step.expect.reads_body() || needs_json,
            !step.body_signals.is_empty(),
        );
        let body = read_capped(resp, self.max_body_bytes, keep, &within)
            .await?
            .map(ReadBody::new);
        if let Some(body) = &body {
            // Measured whether or not the assertions pass.
            step.body_signals.read(body, report);
            step.expect.check_body(body)?;
        }
        for (name, header, value) in from_headers {
            let value = value.ok_or_else(|| format!("no {header} header to capture as {name}"))?;
            vars.insert(name.clone(), Value::String(value));
        }
        for (name, capture) in &step.captures {
            if let (Capture::Pointer(p), Some(body)) = (capture, &body) {
                vars.insert(name.clone(), capture_pointer(body, p, name)?);
            }
        }
        Ok(url)
    }
}

/// The value at JSON pointer `pointer` of a response body, captured as `name`.
fn capture_pointer(body: &ReadBody, pointer: &str, name: &str) -> Result<Value, String> {
    body.json()?.pointer(pointer).cloned().ok_or_else(|| {
        format!(
            "body has no value at {} to capture as {name}",
            request::at(pointer)
        )
    })
}

/// What a step does with a response body and what a later step does with
/// the value: captures `pointer` out of `body` as `name`, then fills in
/// `template` (text with `{{name}}` placeholders) and `json` (a JSON body
/// template) with it. Public for the fuzz targets; a check calls the same
/// code.
#[doc(hidden)]
pub fn capture_and_render(
    body: &[u8],
    pointer: &str,
    template: &str,
    json: &Value,
) -> Result<(String, Value), String> {
    let body = ReadBody::new(bytes::Bytes::copy_from_slice(body));
    let value = capture_pointer(&body, pointer, "value")?;
    let mut vars = Vars::new();
    vars.insert("value".into(), value);
    let text = Template::parse(template)?.render(&vars);
    Ok((text, render_json(json, &vars)))
}

/// Parses a step's URL once its placeholders are replaced; a relative one
/// (only possible when it starts with a placeholder) is resolved against the
/// previous step's URL. The URL itself is never shown: it may hold a token.
fn resolve_url(text: &str, previous: Option<&Url>) -> Result<Url, String> {
    let url = match (Url::parse(text), previous) {
        (Ok(u), _) => u,
        (Err(url::ParseError::RelativeUrlWithoutBase), Some(base)) => base
            .join(text)
            .map_err(|e| format!("the url with its placeholders replaced is not a URL: {e}"))?,
        (Err(e), _) => {
            return Err(format!(
                "the url with its placeholders replaced is not a URL: {e}"
            ))
        }
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the url with its placeholders replaced has scheme {:?}, not http or https",
            url.scheme()
        ));
    }
    Ok(url)
}

/// `GET /api/me` from a method and a URL as written.
fn label(method: &Method, url: &str) -> String {
    let rest = match url.find("://") {
        Some(i) => {
            let after = &url[i + 3..];
            after.find('/').map_or("/", |j| &after[j..])
        }
        None => url,
    };
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    format!("{method} {}", if path.is_empty() { "/" } else { path })
}

/// Checks the placeholders of one template: each must be captured by an
/// earlier step.
fn check_vars(
    t: &Template,
    key: &str,
    captured: &HashSet<String>,
    problems: &mut Vec<ConfigProblem>,
) {
    for v in t.vars() {
        if !captured.contains(v) {
            problems.push(ConfigProblem::new(
                key,
                format!("{{{{{v}}}}} is not captured by an earlier step"),
            ));
        }
    }
}

fn template(
    text: &str,
    key: &str,
    captured: &HashSet<String>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Template> {
    match Template::parse(text) {
        Ok(t) => {
            check_vars(&t, key, captured, problems);
            Some(t)
        }
        Err(e) => {
            problems.push(ConfigProblem::new(key, e));
            None
        }
    }
}

/// Stands in for every placeholder when a template is checked at build time.
fn sample_vars(t: &Template) -> Vars {
    t.vars()
        .map(|v| (v.to_string(), Value::String("x".into())))
        .collect()
}

fn build_step(
    s: &StepConfig,
    prefix: &str,
    captured: &HashSet<String>,
    ctx: Context,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Step> {
    let before = problems.len();
    let method = request::parse_method(&s.method, &key(prefix, "method"), problems);

    let url_key = key(prefix, "url");
    let url = template(&s.url, &url_key, captured, problems);
    if let Some(t) = url.as_ref().filter(|t| !t.starts_with_var()) {
        request::parse_url(&t.render(&sample_vars(t)), &url_key, problems);
    }

    let mut headers = Vec::new();
    for (k, v) in &s.headers {
        let hkey = key(prefix, &format!("headers.{k}"));
        let name = request::parse_header_name(k, &hkey, problems);
        let value = template(v, &hkey, captured, problems);
        if let Some(t) = &value {
            if HeaderValue::from_str(&t.render(&sample_vars(t))).is_err() {
                problems.push(ConfigProblem::new(
                    &hkey,
                    "header value has characters a header cannot carry",
                ));
            }
        }
        if let (Some(n), Some(t)) = (name, value) {
            headers.push((n, t));
        }
    }

    request::check_one_body(&s.body, &s.json, prefix, problems);
    let body = match (&s.body, &s.json) {
        (Some(b), _) => template(b, &key(prefix, "body"), captured, problems).map(StepBody::Raw),
        (None, Some(j)) => {
            let mut strings = Vec::new();
            json_strings(j, key(prefix, "json"), &mut strings);
            for (k, text) in strings {
                template(text, &k, captured, problems);
            }
            Some(StepBody::Json(j.clone()))
        }
        (None, None) => None,
    };

    let expect = Expect::new(&s.expect_status, &s.expect_body, prefix, problems);

    let mut captures = Vec::new();
    for (name, spec) in &s.capture {
        let ckey = key(prefix, &format!("capture.{name}"));
        if !valid_name(name) {
            problems.push(ConfigProblem::new(
                &ckey,
                format!("{name:?} is not a capture name: use letters, digits, '_', '-' or '.'"),
            ));
            continue;
        }
        if let Some(h) = spec.strip_prefix("header:") {
            if let Some(h) = request::parse_header_name(h.trim(), &ckey, problems) {
                captures.push((name.clone(), Capture::Header(h)));
            }
        } else if request::is_pointer(spec) {
            captures.push((name.clone(), Capture::Pointer(spec.clone())));
        } else {
            problems.push(ConfigProblem::new(
                &ckey,
                format!(
                    "expected a JSON pointer like \"/token\" or a header like \"header:Location\", got {spec:?}"
                ),
            ));
        }
    }

    let body_signals = BodySignals::new(&s.signals, prefix, "scenario", &SIGNALS, problems);

    let timeout = s.timeout.map(|d| d.0);
    if let Some(t) = timeout {
        let tkey = key(prefix, "timeout");
        if t.is_zero() {
            problems.push(ConfigProblem::new(tkey, "must be more than 0s"));
        } else if t > ctx.timeout {
            problems.push(ConfigProblem::new(
                tkey,
                format!(
                    "{} is longer than the probe's timeout {}, which bounds the whole scenario",
                    duration::format(t),
                    duration::format(ctx.timeout)
                ),
            ));
        }
    }

    if problems.len() > before {
        return None;
    }
    let method = method?;
    Some(Step {
        label: label(&method, &s.url),
        method,
        url: url?,
        headers,
        body,
        expect,
        captures,
        body_signals,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Context {
        Context {
            timeout: Duration::from_secs(5),
        }
    }

    fn config(steps: Value) -> ScenarioConfig {
        serde_json::from_value(json!({ "step": steps })).unwrap()
    }

    fn problems(steps: Value) -> Vec<(String, String)> {
        match ScenarioProbe::new(&config(steps), ctx()) {
            Ok(_) => vec![],
            Err(p) => p.into_iter().map(|p| (p.key, p.message)).collect(),
        }
    }

    #[test]
    fn builds_the_login_flow_of_the_spec() {
        let found = problems(json!([
            {
                "method": "POST",
                "url": "http://127.0.0.1:8080/api/login",
                "json": { "username": "smoke", "password": "pw" },
                "expect_status": [200],
                "capture": { "token": "/token" },
            },
            {
                "url": "http://127.0.0.1:8080/api/me",
                "headers": { "Authorization": "Bearer {{token}}" },
                "expect_status": [200],
                "timeout": "2s",
            },
        ]));
        assert_eq!(found, vec![]);
    }

    #[test]
    fn a_placeholder_no_earlier_step_captures_is_a_problem_where_it_is_used() {
        let found = problems(json!([
            { "url": "http://h/a/{{id}}", "capture": { "token": "/token" } },
            {
                "url": "http://h/b",
                "headers": { "Authorization": "Bearer {{token}} {{tokn}}" },
                "json": { "nested": ["{{later}}"] },
                "capture": { "later": "/x" },
            },
        ]));
        assert_eq!(
            found,
            vec![
                (
                    "step[0].url".into(),
                    "{{id}} is not captured by an earlier step".into()
                ),
                (
                    "step[1].headers.Authorization".into(),
                    "{{tokn}} is not captured by an earlier step".into()
                ),
                (
                    "step[1].json.nested[0]".into(),
                    "{{later}} is not captured by an earlier step".into()
                ),
            ]
        );
    }

    #[test]
    fn reports_each_bad_step_setting_under_its_own_key() {
        let cases = [
            (json!({ "url": "/relative" }), "step[0].url", "invalid URL"),
            (
                json!({ "url": "http://h/{{ bad name }}" }),
                "step[0].url",
                "{{bad name}} is not a placeholder",
            ),
            (
                json!({ "url": "http://h/", "body": "{{token" }),
                "step[0].body",
                "a {{ is never closed with }}",
            ),
            (
                json!({ "url": "http://h/", "capture": { "t": "token" } }),
                "step[0].capture.t",
                "expected a JSON pointer",
            ),
            (
                json!({ "url": "http://h/", "capture": { "t": "header:bad name" } }),
                "step[0].capture.t",
                "\"bad name\" is not a valid header name",
            ),
            (
                json!({ "url": "http://h/", "capture": { "a b": "/x" } }),
                "step[0].capture.a b",
                "\"a b\" is not a capture name",
            ),
            (
                json!({ "url": "http://h/", "timeout": "10s" }),
                "step[0].timeout",
                "10s is longer than the probe's timeout 5s",
            ),
            (
                json!({ "url": "http://h/", "timeout": "0s" }),
                "step[0].timeout",
                "must be more than 0s",
            ),
            (
                json!({ "url": "http://h/", "expect_status": [99] }),
                "step[0].expect_status[0]",
                "99 is not an HTTP status",
            ),
            (
                json!({ "url": "http://h/", "body": "a", "json": 1 }),
                "step[0].json",
                "set either body or json",
            ),
        ];
        for (step, key, message) in cases {
            let found = problems(json!([step.clone()]));
            assert_eq!(found.len(), 1, "{step}: {found:?}");
            assert_eq!(found[0].0, key, "{step}");
            assert!(found[0].1.starts_with(message), "{step}: {}", found[0].1);
        }
    }

    #[tokio::test]
    async fn steps_report_numbers_from_their_bodies_and_keep_them_when_a_later_step_fails() {
        let addr = crate::testing::serve(|path, _| match path {
            "/login" => crate::testing::response(
                200,
                "application/json",
                r#"{"token": "t", "queue": {"depth": "12"}, "note": "n/a"}"#,
            ),
            "/stats" => crate::testing::response(200, "application/json", r#"{"db_ms": 3.5}"#),
            "/html" => crate::testing::response(200, "text/html", "<p>3</p>"),
            _ => crate::testing::response(500, "application/json", r#"{"db_ms": 99}"#),
        })
        .await;
        let steps = |last: &str| {
            json!([
                {
                    "url": format!("http://{addr}/login"),
                    "capture": { "token": "/token" },
                    "signals": { "queue_depth": "/queue/depth", "note": "/note", "gone": "/x" },
                },
                { "url": format!("http://{addr}/html"), "signals": { "html": "/p" } },
                { "url": format!("http://{addr}{last}"), "signals": { "db_ms": "/db_ms" } },
            ])
        };
        let cfg = config(steps("/stats"));
        let report = ScenarioProbe::new(&cfg, ctx())
            .unwrap()
            .check()
            .await
            .unwrap();
        assert_eq!(report.get("queue_depth"), Some(12.0));
        assert_eq!(report.get("db_ms"), Some(3.5));
        for missing in ["note", "gone", "html"] {
            assert_eq!(report.get(missing), None, "{missing}");
        }
        assert_eq!(report.get("steps_ok"), Some(3.0));
        assert_eq!(crate::testing::assert_declared(&report, &cfg.signals()), 4);

        // The failing step's status ends it before its body is read; what
        // the steps before it measured stays.
        let cfg = config(steps("/broken"));
        match ScenarioProbe::new(&cfg, ctx()).unwrap().check().await {
            Err(ProbeError::Unhealthy { report, .. }) => {
                assert_eq!(report.get("queue_depth"), Some(12.0));
                assert_eq!(report.get("db_ms"), None);
                assert_eq!(report.get("step_failed"), Some(3.0));
                assert_eq!(crate::testing::assert_declared(&report, &cfg.signals()), 4);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_body_signal_is_declared_by_one_step_with_a_name_of_its_own() {
        let found = problems(json!([
            { "url": "http://h/a", "signals": { "queue": "/q", "steps_ok": "/n" } },
            { "url": "http://h/b", "signals": { "queue": "/q2", "Bad": "/b", "ok": "x" } },
        ]));
        assert_eq!(
            found.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            [
                "step[0].signals.steps_ok",
                "step[1].signals.queue",
                "step[1].signals.Bad",
                "step[1].signals.ok",
            ]
        );
        assert!(found[0]
            .1
            .starts_with("steps_ok is a signal the scenario probe yields itself"));
        assert_eq!(
            found[1].1,
            "queue is already declared by step[0]: a signal comes from one step"
        );
        assert!(found[2].1.starts_with("\"Bad\" is not a signal name"));
        assert!(found[3].1.starts_with("JSON pointer \"x\" must be empty"));
    }

    #[test]
    fn needs_at_least_one_step_and_reads_step_timeouts_as_durations() {
        assert_eq!(problems(json!([]))[0].0, "step");
        let err = serde_json::from_value::<ScenarioConfig>(
            json!({ "step": [{ "url": "http://h/", "timeout": "5" }] }),
        )
        .unwrap_err();
        assert!(err.to_string().contains("invalid duration \"5\""), "{err}");
        let err = serde_json::from_value::<ScenarioConfig>(json!({})).unwrap_err();
        assert!(err.to_string().contains("missing field `step`"), "{err}");
    }

    #[test]
    fn a_url_that_starts_with_a_placeholder_may_be_relative_to_the_previous_step() {
        let found = problems(json!([
            { "url": "http://h/login", "capture": { "next": "header:Location" } },
            { "url": "{{next}}" },
        ]));
        assert_eq!(found, vec![]);
        let base = Url::parse("http://h:81/login?x=1").unwrap();
        assert_eq!(
            resolve_url("/home", Some(&base)).unwrap().as_str(),
            "http://h:81/home"
        );
        assert!(resolve_url("ftp://h/x", Some(&base)).is_err());
        assert!(resolve_url("/home", None).is_err());
    }

    #[test]
    fn names_a_step_by_its_method_and_path_without_host_or_query() {
        let cases = [
            ("http://u:pw@127.0.0.1:8080/api/me?token=x", "GET /api/me"),
            ("https://example.test", "GET /"),
            ("http://h/orders/{{id}}#top", "GET /orders/{{id}}"),
            ("{{next}}", "GET {{next}}"),
        ];
        for (url, want) in cases {
            assert_eq!(label(&Method::GET, url), want, "{url}");
        }
    }

    #[test]
    fn captures_a_pointer_from_a_body_and_fills_it_in() {
        let body = br#"{"user": {"id": 7, "a/b": "x~y"}, "token": "abc"}"#;
        let (text, doc) = capture_and_render(
            body,
            "/user/id",
            "/users/{{value}}",
            &json!({ "id": "{{value}}" }),
        )
        .unwrap();
        assert_eq!((text.as_str(), doc), ("/users/7", json!({ "id": 7 })));
        let (text, _) = capture_and_render(body, "/user/a~1b", "{{value}}", &json!(null)).unwrap();
        assert_eq!(text, "x~y");
        let err = capture_and_render(body, "/nope", "{{value}}", &json!(null)).unwrap_err();
        assert_eq!(err, "body has no value at /nope to capture as value");
        let err = capture_and_render(b"<html>", "/t", "{{value}}", &json!(null)).unwrap_err();
        assert!(err.starts_with("body is not JSON"), "{err}");
    }

    #[test]
    fn replaces_placeholders_in_text_and_keeps_json_types_for_a_sole_placeholder() {
        let vars: Vars = [
            ("token".to_string(), json!("abc")),
            ("id".to_string(), json!(42)),
        ]
        .into();
        let t = Template::parse("Bearer {{token}} for {{ id }}").unwrap();
        assert_eq!(t.render(&vars), "Bearer abc for 42");
        let body = json!({ "id": "{{id}}", "note": "order {{id}}", "list": ["{{token}}"], "n": 1 });
        assert_eq!(
            render_json(&body, &vars),
            json!({ "id": 42, "note": "order 42", "list": ["abc"], "n": 1 })
        );
        assert_eq!(
            Template::parse("no {placeholders} }}")
                .unwrap()
                .vars()
                .count(),
            0
        );
    }
}
