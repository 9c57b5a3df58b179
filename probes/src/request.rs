//! What the `http` and `scenario` probes share: the HTTP client they build,
//! the checks of a response (status and body assertions), reading a body
//! under a cap, and turning a transport error into one clear line that never
//! carries a URL.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderName, LOCATION};
use reqwest::{Method, Url};
use serde::Deserialize;
use serde_json::Value;

use crate::{redact_url, ConfigProblem, Report, SignalInfo, RESERVED_SIGNALS};

/// Default cap on the bytes read from a response body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;

/// One check of a response body. Exactly one of `pointer` or `regex` is set;
/// with `pointer`, `equals` compares the value and without it the value must
/// merely exist.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyAssertion {
    /// A JSON pointer (RFC 6901) into the body, like `/status`. Default none.
    #[serde(default)]
    pub pointer: Option<String>,
    /// The value the pointer must hold. Default: it must only exist.
    #[serde(default)]
    pub equals: Option<Value>,
    /// A regular expression the body must match. Default none.
    #[serde(default)]
    pub regex: Option<String>,
}

pub(crate) fn default_method() -> String {
    "GET".into()
}
pub(crate) fn yes() -> bool {
    true
}
pub(crate) fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

/// Joins a key prefix (`step[1]`, or empty for the probe's own table) and a key.
pub(crate) fn key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Parses an http or https URL, recording a problem under `key` otherwise.
pub(crate) fn parse_url(raw: &str, key: &str, problems: &mut Vec<ConfigProblem>) -> Option<Url> {
    match Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
        Ok(u) => {
            problems.push(ConfigProblem::new(
                key,
                format!("scheme {:?} is not http or https", u.scheme()),
            ));
            None
        }
        Err(e) => {
            problems.push(ConfigProblem::new(
                key,
                format!("invalid URL {:?}: {e}", redact_url(raw)),
            ));
            None
        }
    }
}

pub(crate) fn parse_method(
    raw: &str,
    key: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Method> {
    match Method::from_bytes(raw.to_ascii_uppercase().as_bytes()) {
        Ok(m) => Some(m),
        Err(_) => {
            problems.push(ConfigProblem::new(
                key,
                format!("invalid HTTP method {raw:?}"),
            ));
            None
        }
    }
}

pub(crate) fn parse_header_name(
    raw: &str,
    key: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<HeaderName> {
    match HeaderName::from_bytes(raw.as_bytes()) {
        Ok(n) => Some(n),
        Err(_) => {
            problems.push(ConfigProblem::new(
                key,
                format!("{raw:?} is not a valid header name"),
            ));
            None
        }
    }
}

/// Records a problem when both `body` and `json` are set.
pub(crate) fn check_one_body(
    body: &Option<String>,
    json: &Option<Value>,
    prefix: &str,
    problems: &mut Vec<ConfigProblem>,
) {
    if body.is_some() && json.is_some() {
        problems.push(ConfigProblem::new(
            key(prefix, "json"),
            "set either body or json, not both",
        ));
    }
}

/// The client both probes use: no proxy from the environment (the library
/// reads none), no cookie store of its own, one idle connection kept per host
/// so checks reuse it, and a per-request timeout set by the caller.
pub(crate) fn client(tls_verify: bool, follow_redirects: bool) -> Result<reqwest::Client, String> {
    builder(follow_redirects, 1)
        .danger_accept_invalid_certs(!tls_verify)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", one_line(&e)))
}

/// The client of a probe that can only ever speak plain HTTP: an `http://`
/// URL and no redirect followed. The same as [`client`], except that it
/// carries an empty TLS configuration instead of the one reqwest builds for
/// every client, the webpki roots and a 256-entry session cache (about 22
/// KiB), which it could never use.
fn plain_http_client(idle_per_host: usize) -> Result<reqwest::Client, String> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    tls.resumption = rustls::client::Resumption::disabled();
    builder(false, idle_per_host)
        .use_preconfigured_tls(tls)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", one_line(&e)))
}

fn builder(follow_redirects: bool, idle_per_host: usize) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(if follow_redirects {
            reqwest::redirect::Policy::limited(10)
        } else {
            reqwest::redirect::Policy::none()
        })
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(idle_per_host)
        .user_agent(concat!("backstop/", env!("CARGO_PKG_VERSION")))
}

/// Idle connections a shared client keeps per host: enough for the checks
/// of many probes of one target that overlap, few enough to stay small.
const SHARED_IDLE_PER_HOST: usize = 16;

/// The settings that make two `http` probes' clients differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ClientKind {
    /// An `http://` URL and no redirect followed: no TLS stack at all.
    Plain,
    Tls {
        verify: bool,
        follow_redirects: bool,
    },
}

/// HTTP clients shared by the `http` probes built with it: one client (one
/// connection pool, one TLS configuration and root store) per distinct
/// [`ClientKind`] instead of one per probe. Probes of the same target then
/// reuse each other's idle connections, so an agent with many probes keeps
/// a few connections per target rather than one per probe. Every request
/// still carries its probe's own timeout, headers and body. Cloning shares
/// the clients; [`Clients::default`] starts with none.
#[derive(Debug, Clone, Default)]
pub struct Clients(std::sync::Arc<std::sync::Mutex<HashMap<ClientKind, reqwest::Client>>>);

impl Clients {
    /// The client for `kind`, built on first use.
    pub(crate) fn get(&self, kind: ClientKind) -> Result<reqwest::Client, String> {
        let mut clients = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&kind) {
            return Ok(c.clone());
        }
        let c = match kind {
            ClientKind::Plain => plain_http_client(SHARED_IDLE_PER_HOST)?,
            ClientKind::Tls {
                verify,
                follow_redirects,
            } => builder(follow_redirects, SHARED_IDLE_PER_HOST)
                .danger_accept_invalid_certs(!verify)
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {}", one_line(&e)))?,
        };
        clients.insert(kind, c.clone());
        Ok(c)
    }

    /// How many distinct clients were built.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `host:port` of a URL, for messages: never the userinfo, path or query.
pub(crate) fn authority(url: &Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => "the target".into(),
    }
}

#[derive(Debug)]
enum Check {
    Pointer {
        pointer: String,
        equals: Option<Value>,
    },
    Regex(regex::Regex),
}

/// What a response must look like: its status and its body.
#[derive(Debug)]
pub(crate) struct Expect {
    status: Vec<u16>,
    checks: Vec<Check>,
}

impl Expect {
    /// Validates `expect_status` and `expect_body`, recording problems under
    /// keys that start with `prefix`.
    pub(crate) fn new(
        status: &[u16],
        body: &[BodyAssertion],
        prefix: &str,
        problems: &mut Vec<ConfigProblem>,
    ) -> Self {
        for (i, s) in status.iter().enumerate() {
            if !(100..=599).contains(s) {
                problems.push(ConfigProblem::new(
                    key(prefix, &format!("expect_status[{i}]")),
                    format!("{s} is not an HTTP status (100-599)"),
                ));
            }
        }
        let mut checks = Vec::new();
        for (i, a) in body.iter().enumerate() {
            let k = key(prefix, &format!("expect_body[{i}]"));
            match (&a.pointer, &a.regex) {
                (Some(p), None) => {
                    if is_pointer(p) {
                        checks.push(Check::Pointer {
                            pointer: p.clone(),
                            equals: a.equals.clone(),
                        });
                    } else {
                        problems.push(ConfigProblem::new(
                            format!("{k}.pointer"),
                            format!("JSON pointer {p:?} must be empty or start with '/'"),
                        ));
                    }
                }
                (None, Some(r)) if a.equals.is_none() => match regex::Regex::new(r) {
                    Ok(re) => checks.push(Check::Regex(re)),
                    Err(e) => problems.push(ConfigProblem::new(
                        format!("{k}.regex"),
                        format!("invalid regular expression: {}", one_line(&e)),
                    )),
                },
                _ => problems.push(ConfigProblem::new(
                    k,
                    "set exactly one of pointer (with optional equals) or regex",
                )),
            }
        }
        Self {
            status: status.to_vec(),
            checks,
        }
    }

    /// Whether the body must be kept to check it.
    pub(crate) fn reads_body(&self) -> bool {
        !self.checks.is_empty()
    }

    /// `Err` names the status and what was expected, and where a redirect
    /// points (redacted), since that is usually the explanation.
    pub(crate) fn check_status(&self, resp: &reqwest::Response) -> Result<(), String> {
        let status = resp.status().as_u16();
        let ok = if self.status.is_empty() {
            (200..300).contains(&status)
        } else {
            self.status.contains(&status)
        };
        if ok {
            return Ok(());
        }
        let want = if self.status.is_empty() {
            "2xx".to_string()
        } else {
            format!("{:?}", self.status)
        };
        let redirect = resp
            .status()
            .is_redirection()
            .then(|| resp.headers().get(LOCATION))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|loc| resp.url().join(loc).ok())
            .map(|to| format!(" (redirect to {})", redact_url(to.as_str())))
            .unwrap_or_default();
        Err(format!("status {status}{redirect}, expected {want}"))
    }

    pub(crate) fn check_body(&self, body: &ReadBody) -> Result<(), String> {
        for check in &self.checks {
            match check {
                Check::Regex(re) => {
                    if !re.is_match(&String::from_utf8_lossy(&body.bytes)) {
                        return Err(format!("body does not match /{}/", re.as_str()));
                    }
                }
                Check::Pointer { pointer, equals } => {
                    let doc = body.json()?;
                    match (doc.pointer(pointer), equals) {
                        (None, _) => return Err(format!("body has no value at {}", at(pointer))),
                        (Some(got), Some(want)) if got != want => {
                            return Err(format!(
                                "body at {} is {}, expected {}",
                                at(pointer),
                                short(got),
                                short(want)
                            ))
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `p` is a JSON pointer: empty (the whole document) or `/...`.
pub(crate) fn is_pointer(p: &str) -> bool {
    p.is_empty() || p.starts_with('/')
}

/// A pointer as messages show it; the empty pointer is the whole document.
pub(crate) fn at(pointer: &str) -> &str {
    if pointer.is_empty() {
        "\"\" (the whole document)"
    } else {
        pointer
    }
}

/// A JSON value for a message, cut short so a large document (or a secret
/// that happens to sit in it) does not fill the line.
fn short(v: &Value) -> String {
    const MAX: usize = 60;
    let text = v.to_string();
    if text.chars().count() <= MAX {
        text
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}...")
    }
}

/// A body that was read, with its JSON parsed at most once, on demand.
pub(crate) struct ReadBody {
    pub(crate) bytes: Bytes,
    json: OnceCell<Result<Value, String>>,
}

impl ReadBody {
    pub(crate) fn new(bytes: Bytes) -> Self {
        Self {
            bytes,
            json: OnceCell::new(),
        }
    }

    pub(crate) fn json(&self) -> Result<&Value, String> {
        self.json
            .get_or_init(|| {
                serde_json::from_slice(&self.bytes).map_err(|e| format!("body is not JSON: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// What a check needs of a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Nothing: it is read and dropped up to the cap, so the connection can
    /// be reused, and reading simply stops there.
    Nothing,
    /// Its numbers, for body signals only: one larger than the cap is not
    /// kept, which leaves those signals missing, never fails the check.
    IfItFits,
    /// All of it, for assertions or captures: one larger than the cap is an
    /// error, since assertions on a truncated document would mislead.
    Whole,
}

impl Keep {
    /// What a response must be kept for: `checked` when assertions or
    /// captures read it, `signals` when body signals do.
    pub(crate) fn for_use(checked: bool, signals: bool) -> Self {
        match (checked, signals) {
            (true, _) => Self::Whole,
            (false, true) => Self::IfItFits,
            (false, false) => Self::Nothing,
        }
    }
}

/// Reads a body up to `cap` bytes and returns it when `keep` asks for it
/// (see [`Keep`] for a body larger than the cap). `within` describes the
/// time limit for a timeout message.
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    cap: u64,
    keep: Keep,
    within: &str,
) -> Result<Option<Bytes>, String> {
    let too_large =
        || format!("body is larger than max_body_bytes ({cap} bytes), so it cannot be checked");
    let mut keep = keep;
    if resp.content_length().is_some_and(|n| n > cap) {
        match keep {
            Keep::Whole => return Err(too_large()),
            // Known not to fit: read only to be dropped.
            Keep::IfItFits => keep = Keep::Nothing,
            Keep::Nothing => {}
        }
    }
    let mut kept = Vec::new();
    let mut seen: u64 = 0;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err(describe_body(&e, within)),
        };
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > cap {
            return match keep {
                Keep::Whole => Err(too_large()),
                Keep::IfItFits | Keep::Nothing => Ok(None),
            };
        }
        if keep != Keep::Nothing {
            kept.extend_from_slice(&chunk);
        }
    }
    Ok((keep != Keep::Nothing).then(|| Bytes::from(kept)))
}

/// Signals read from a JSON response body: a name the configuration gives
/// and a JSON pointer to a number. A value that is missing or not a number,
/// or a body that is not JSON, leaves the signal missing; it never fails
/// the check.
#[derive(Debug, Default)]
pub(crate) struct BodySignals(Vec<(String, String)>);

/// The longest name a body signal may have.
const MAX_SIGNAL_NAME: usize = 64;

impl BodySignals {
    /// Validates the `signals` table of a probe or step, recording problems
    /// under `signals.<name>` below `prefix`. `own` are the names the probe
    /// type yields itself, which a body signal may not take.
    pub(crate) fn new(
        declared: &BTreeMap<String, String>,
        prefix: &str,
        kind: &str,
        own: &[SignalInfo],
        problems: &mut Vec<ConfigProblem>,
    ) -> Self {
        let mut signals = Vec::new();
        for (name, pointer) in declared {
            let k = key(prefix, &format!("signals.{name}"));
            let before = problems.len();
            if !valid_signal_name(name) {
                problems.push(ConfigProblem::new(
                    &k,
                    format!(
                        "{name:?} is not a signal name: use 1-{MAX_SIGNAL_NAME} lowercase letters, \
                         digits and '_', starting with a letter"
                    ),
                ));
            } else if own.iter().any(|s| s.name == name.as_str()) {
                problems.push(ConfigProblem::new(
                    &k,
                    format!(
                        "{name} is a signal the {kind} probe yields itself: choose another name"
                    ),
                ));
            } else if name == "consecutive_failures" {
                problems.push(ConfigProblem::new(
                    &k,
                    "consecutive_failures is the agent's count of failed checks: choose another name",
                ));
            } else if RESERVED_SIGNALS.contains(&name.as_str()) {
                problems.push(ConfigProblem::new(
                    &k,
                    format!(
                        "{name} is a percentile the agent computes from latency_ms: choose another name"
                    ),
                ));
            }
            if !is_pointer(pointer) {
                problems.push(ConfigProblem::new(
                    &k,
                    format!("JSON pointer {pointer:?} must be empty or start with '/'"),
                ));
            }
            if problems.len() == before {
                signals.push((name.clone(), pointer.clone()));
            }
        }
        Self(signals)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds every declared signal the body holds a number for to `report`.
    pub(crate) fn read(&self, body: &ReadBody, report: &mut Report) {
        let Ok(doc) = body.json() else {
            return;
        };
        for (name, pointer) in &self.0 {
            if let Some(v) = doc.pointer(pointer).and_then(number) {
                report.push(name.clone(), v);
            }
        }
    }
}

/// Whether `name` may name a signal: 1-64 of `[a-z0-9_]`, starting with a
/// letter, as the rule language reads them.
fn valid_signal_name(name: &str) -> bool {
    name.len() <= MAX_SIGNAL_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A JSON value as a signal: a number, or a string that parses as a finite
/// number.
fn number(v: &Value) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

/// The declared body signals of a probe or step, for [`crate::ProbeSpec::signals`].
pub(crate) fn body_signal_infos(
    declared: &BTreeMap<String, String>,
) -> impl Iterator<Item = SignalInfo> + '_ {
    declared.iter().map(|(name, pointer)| SignalInfo {
        name: Cow::Owned(name.clone()),
        about: Cow::Owned(format!(
            "the number at {} of the response body (a JSON number, or a string holding one)",
            if pointer.is_empty() {
                "the top".to_string()
            } else {
                format!("`{pointer}`")
            }
        )),
    })
}

/// Why [`read_whole`] stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The body is larger than the cap.
    TooLarge,
    /// Reading it failed: one line, as [`describe_body`] says it.
    Failed(String),
}

/// Reads a whole body of at most `cap` bytes, for a probe that must parse
/// all of it (a truncated exposition or answer would mislead).
pub(crate) async fn read_whole(
    mut resp: reqwest::Response,
    cap: u64,
    within: &str,
) -> Result<Bytes, ReadError> {
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err(ReadError::TooLarge);
    }
    let mut kept = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) if (kept.len() + c.len()) as u64 > cap => return Err(ReadError::TooLarge),
            Ok(Some(c)) => kept.extend_from_slice(&c),
            Ok(None) => return Ok(Bytes::from(kept)),
            Err(e) => return Err(ReadError::Failed(describe_body(&e, within))),
        }
    }
}

/// An error of sending a request and waiting for its response head, as one
/// line: `connect to 127.0.0.1:8080: connection refused`,
/// `tls handshake with 127.0.0.1:8443: certificate problem: ...`,
/// `no response within 1s`, `malformed response: invalid HTTP version parsed`.
/// `addr` is the target's `host:port`; `within` describes the time limit.
///
/// Only the error's sources and kind are read: the outer error's own text
/// carries the URL, and is never shown.
pub(crate) fn describe(e: &reqwest::Error, addr: &str, within: &str) -> String {
    let parts = Parts::of(e);
    if let Some(tls) = parts.tls {
        return format!("tls handshake with {addr}: {}", tls_text(tls));
    }
    if e.is_timeout() {
        return if e.is_connect() {
            format!("connect to {addr}: no connection within {within}")
        } else {
            format!("no response within {within}")
        };
    }
    if e.is_connect() {
        let why = parts
            .io
            .map(io_text)
            .unwrap_or_else(|| parts.deepest.clone());
        return if parts.dns {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            format!("resolve {host}: {why}")
        } else {
            format!("connect to {addr}: {why}")
        };
    }
    if e.is_redirect() {
        return format!("redirects: {}", parts.deepest);
    }
    if let Some(h) = parts.hyper {
        if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
            return format!("malformed response: {}", lower_first(&h.to_string()));
        }
        if h.is_incomplete_message() {
            return "connection closed before a complete response".into();
        }
    }
    match parts.io {
        Some(io) => io_text(io),
        None => parts.deepest,
    }
}

/// An error while reading a response body, as one line.
pub(crate) fn describe_body(e: &reqwest::Error, within: &str) -> String {
    if e.is_timeout() {
        return format!("body not complete within {within}");
    }
    let parts = Parts::of(e);
    let eof = parts
        .io
        .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof);
    if eof || parts.hyper.is_some_and(|h| h.is_incomplete_message()) {
        return "connection closed before the body was complete".into();
    }
    if let Some(h) = parts.hyper.filter(|h| h.is_parse()) {
        return format!("malformed body: {}", lower_first(&h.to_string()));
    }
    let why = parts.io.map(io_text).unwrap_or(parts.deepest);
    format!("reading body: {why}")
}

/// The interesting links of an error's cause chain.
struct Parts<'a> {
    io: Option<&'a std::io::Error>,
    hyper: Option<&'a hyper::Error>,
    tls: Option<&'a rustls::Error>,
    /// A `dns error` link: the host name did not resolve.
    dns: bool,
    /// The innermost message, lowercased, for anything not recognised.
    deepest: String,
}

impl<'a> Parts<'a> {
    fn of(e: &'a reqwest::Error) -> Self {
        let mut parts = Parts {
            io: None,
            hyper: None,
            tls: None,
            dns: false,
            deepest: String::new(),
        };
        let mut link: Option<&'a (dyn StdError + 'static)> = e.source();
        while let Some(err) = link {
            let text = err.to_string();
            if text == "dns error" {
                parts.dns = true;
            }
            if !text.is_empty() {
                parts.deepest = lower_first(&text);
            }
            if let Some(h) = err.downcast_ref::<hyper::Error>() {
                parts.hyper.get_or_insert(h);
            }
            if let Some(tls) = err.downcast_ref::<rustls::Error>() {
                parts.tls.get_or_insert(tls);
            }
            link = match err.downcast_ref::<std::io::Error>() {
                Some(io) => {
                    // The innermost I/O error says the most.
                    parts.io = Some(io);
                    // An `io::Error` hides the error it wraps from `source()`
                    // (it returns that error's own source): step into it.
                    match io.get_ref() {
                        Some(inner) => Some(inner as &(dyn StdError + 'static)),
                        None => None,
                    }
                }
                None => err.source(),
            };
        }
        if parts.deepest.is_empty() {
            parts.deepest = "request failed".into();
        }
        parts
    }
}

fn io_text(io: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match io.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset by peer".into(),
        K::ConnectionAborted => "connection aborted".into(),
        K::TimedOut => "timed out".into(),
        K::UnexpectedEof => "connection closed unexpectedly".into(),
        _ => {
            let text = match io.get_ref() {
                Some(inner) => inner.to_string(),
                None => io.to_string(),
            };
            let text = match text.find(" (os error ") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            lower_first(&text)
        }
    }
}

fn tls_text(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => {
            let what = match c {
                C::UnknownIssuer => {
                    "not trusted (unknown issuer: self-signed or signed by an unknown CA)".into()
                }
                C::Expired | C::ExpiredContext { .. } => "expired".into(),
                C::NotValidYet | C::NotValidYetContext { .. } => "not valid yet".into(),
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    "not valid for this host name".into()
                }
                C::Revoked => "revoked".into(),
                C::BadSignature => "bad signature".into(),
                C::BadEncoding => "badly encoded".into(),
                other => lower_first(&format!("{other:?}")),
            };
            format!("certificate problem: {what}")
        }
        rustls::Error::NoCertificatesPresented => "certificate problem: none presented".into(),
        other => lower_first(&other.to_string()),
    }
}

/// Lowercases the first letter unless the first word is an acronym (`TLS`).
pub(crate) fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(a), Some(b)) if a.is_uppercase() && !b.is_uppercase() => {
            a.to_lowercase().chain(s[a.len_utf8()..].chars()).collect()
        }
        (Some(a), None) => a.to_lowercase().collect(),
        _ => s.to_string(),
    }
}

/// An error and its sources on one line, each cause once.
pub(crate) fn one_line(e: &dyn StdError) -> String {
    let mut s = lower_first(&e.to_string());
    let mut src = e.source();
    while let Some(inner) = src {
        let text = lower_first(&inner.to_string());
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lowercases_a_message_but_not_an_acronym() {
        let cases = [
            ("Connection refused", "connection refused"),
            ("TLS handshake failed", "TLS handshake failed"),
            ("x", "x"),
            ("", ""),
        ];
        for (text, want) in cases {
            assert_eq!(lower_first(text), want, "{text}");
        }
    }

    #[test]
    fn a_long_value_in_a_message_is_cut_short() {
        assert_eq!(short(&json!("up")), "\"up\"");
        let long = short(&json!("t".repeat(500)));
        assert!(long.len() < 80 && long.ends_with("..."), "{long}");
    }

    fn expect(body: Value) -> Expect {
        let assertions: Vec<BodyAssertion> = serde_json::from_value(body).unwrap();
        let mut problems = vec![];
        let e = Expect::new(&[], &assertions, "", &mut problems);
        assert_eq!(problems, vec![]);
        e
    }

    #[test]
    fn the_empty_pointer_asserts_on_the_whole_document() {
        let body = ReadBody::new(Bytes::from_static(b"[1, 2]"));
        assert_eq!(
            expect(json!([{ "pointer": "", "equals": [1, 2] }])).check_body(&body),
            Ok(())
        );
        assert_eq!(
            expect(json!([{ "pointer": "", "equals": [] }])).check_body(&body),
            Err("body at \"\" (the whole document) is [1,2], expected []".into())
        );
    }
}
