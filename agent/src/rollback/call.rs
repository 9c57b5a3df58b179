//! What every target's calls share: the errors a call ends with, the
//! retries (`with_retries`), the HTTP client, reading a platform's answer
//! without leaking a secret, and choosing the deployment to return to
//! among those a platform lists (`choose`, `settled`).

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::problem::Problem;
use crate::evidence::{Reconciled, RollbackDone, RollbackRequest};
use crate::retry::{classify_error, classify_status, retry, Attempt, RetryError, RetryPolicy};

/// The longest a read of the live deployment is retried (less when the
/// `[rollback] deadline` is shorter): the id is read again at the next
/// poll anyway, and the watch waits for the read.
pub const LIVE_DEADLINE: Duration = Duration::from_secs(10);

/// What every target is built with.
#[derive(Debug, Clone, Copy)]
pub struct BuildContext {
    /// Backoff and deadline of the target's calls.
    pub policy: RetryPolicy,
}

/// The retries of a read of the live deployment: the target's, within
/// [`LIVE_DEADLINE`].
pub fn live_policy(policy: RetryPolicy) -> RetryPolicy {
    RetryPolicy {
        deadline: policy.deadline.min(LIVE_DEADLINE),
        ..policy
    }
}

/// Goes on with what an attempt found; a retry or a failure stays one.
pub fn then<T, U>(attempt: Attempt<T>, f: impl FnOnce(T) -> Attempt<U>) -> Attempt<U> {
    match attempt {
        Attempt::Done(t) => f(t),
        Attempt::Retry { reason, after } => Attempt::Retry { reason, after },
        Attempt::Fail(reason) => Attempt::Fail(reason),
    }
}

/// Where `deployment` stands in a platform's newest-first list after an
/// interrupted call. Each of these platforms makes a rollback a new entry
/// (Railway and Render a new deployment, Heroku a new release), so anything
/// listed after the bad deployment means the call took effect, or someone
/// deployed since; either way a call now would be one too many. The bad
/// deployment still the newest means the call never took effect.
pub fn settled(platform: &str, list: &[Listed], deployment: &str) -> Reconciled {
    match list.iter().position(|d| d.is(deployment)) {
        Some(0) => Reconciled::NotDone(format!(
            "{platform} lists {deployment} as its newest deployment, nothing after it"
        )),
        Some(after) => {
            let newest = &list[0];
            Reconciled::Done(RollbackDone {
                returned_to: None,
                detail: format!(
                    "{platform} lists {after} deployment(s) after {deployment}, the newest {} ({})",
                    newest.id, newest.status
                ),
            })
        }
        None => Reconciled::Unknown(format!(
            "{deployment} is not among the {} deployments {platform} lists",
            list.len()
        )),
    }
}

/// Why a rollback did not happen. Messages name the target and, for HTTP,
/// the status; they never carry a token or a secret URL.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RollbackError {
    /// Failed in a way another try would not fix: refused (401, 403, 404,
    /// 409, 422), nothing to return to, a command that failed.
    #[error("{target} rollback failed: {reason}")]
    Final {
        target: &'static str,
        reason: String,
        attempts: u32,
    },
    /// Every attempt failed in a way worth retrying, until the deadline.
    #[error("{target} rollback gave up after {attempts} attempts: {reason}")]
    Exhausted {
        target: &'static str,
        reason: String,
        attempts: u32,
    },
    /// The target could not be built; nothing was sent.
    #[error("{target} rollback cannot start: {reason}")]
    Setup {
        target: &'static str,
        reason: String,
    },
}

impl RollbackError {
    pub fn target(&self) -> &'static str {
        match self {
            Self::Final { target, .. }
            | Self::Exhausted { target, .. }
            | Self::Setup { target, .. } => target,
        }
    }

    /// What went wrong, without the target's name.
    pub fn reason(&self) -> &str {
        match self {
            Self::Final { reason, .. }
            | Self::Exhausted { reason, .. }
            | Self::Setup { reason, .. } => reason,
        }
    }

    /// How many calls were made (0 when the target could not be built).
    pub fn attempts(&self) -> u32 {
        match self {
            Self::Final { attempts, .. } | Self::Exhausted { attempts, .. } => *attempts,
            Self::Setup { .. } => 0,
        }
    }

    /// A target that cannot be built because of `problems` in its
    /// `[rollback.<target>]` subtable; each is named by its key path.
    pub fn setup(target: &'static str, problems: &[Problem]) -> Self {
        let reason = problems
            .iter()
            .map(|p| format!("rollback.{target}.{p}"))
            .collect::<Vec<_>>()
            .join("; ");
        Self::Setup { target, reason }
    }

    fn from_retry(target: &'static str, err: RetryError) -> Self {
        match err {
            RetryError::Final { reason, attempts } => Self::Final {
                target,
                reason,
                attempts,
            },
            RetryError::Exhausted { reason, attempts } => Self::Exhausted {
                target,
                reason,
                attempts,
            },
        }
    }
}

/// Runs `f` under the shared retry policy and names the target in the error.
pub async fn with_retries<T, F, Fut>(
    target: &'static str,
    policy: RetryPolicy,
    f: F,
) -> Result<T, RollbackError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    retry(policy, f)
        .await
        .map_err(|e| RollbackError::from_retry(target, e))
}

/// Finds the deployment to return to, then asks for the rollback, both
/// within one retry budget. Once found, the deployment is not looked up
/// again, so a retried call always asks for the same one.
pub async fn find_then_act<FF, FFut, AF, AFut>(
    target: &'static str,
    policy: RetryPolicy,
    find: FF,
    act: AF,
) -> Result<RollbackDone, RollbackError>
where
    FF: Fn() -> FFut,
    FFut: Future<Output = Attempt<String>>,
    AF: Fn(String) -> AFut,
    AFut: Future<Output = Attempt<RollbackDone>>,
{
    let found = std::sync::Mutex::new(None::<String>);
    let (found, find, act) = (&found, &find, &act);
    with_retries(target, policy, move |_| async move {
        let cached = found.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let id = match cached {
            Some(id) => id,
            None => match find().await {
                Attempt::Done(id) => {
                    *found.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.clone());
                    id
                }
                Attempt::Retry { reason, after } => return Attempt::Retry { reason, after },
                Attempt::Fail(reason) => return Attempt::Fail(reason),
            },
        };
        act(id).await
    })
    .await
}

/// Picks the deployment to return to (see [`choose`]) among those `list`
/// gives: the `find` of [`find_then_act`] for targets that list deployments.
pub async fn find_in(
    list: impl Future<Output = Attempt<Vec<Listed>>>,
    req: &RollbackRequest,
) -> Attempt<String> {
    match list.await {
        Attempt::Done(list) => match choose(&list, &req.deployment, req.return_to.as_deref()) {
            Ok(d) => Attempt::Done(d.id.clone()),
            Err(e) => Attempt::Fail(e),
        },
        Attempt::Retry { reason, after } => Attempt::Retry { reason, after },
        Attempt::Fail(r) => Attempt::Fail(r),
    }
}

/// The one HTTP client of a target: a per-attempt timeout, no redirects (a
/// rollback call is never replayed to another address), no cookies.
pub fn http_client(
    target: &'static str,
    timeout: Duration,
) -> Result<reqwest::Client, RollbackError> {
    http_client_with(target, timeout, |b| b)
}

/// Like [`http_client`], with more settings (such as a target's own CA)
/// added by `configure`.
pub fn http_client_with(
    target: &'static str,
    timeout: Duration,
    configure: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> Result<reqwest::Client, RollbackError> {
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("backstop/", env!("CARGO_PKG_VERSION")));
    configure(builder)
        .build()
        .map_err(|e| RollbackError::Setup {
            target,
            reason: format!("cannot build the HTTP client: {}", e.without_url()),
        })
}

/// Sends one request and classifies the answer: the body of a 2xx; a retry
/// for network errors, 429 and 5xx; a final failure for other statuses.
/// The message names `what` and the status, adds the platform's own error
/// message when it gives one, and hides every value in `secrets`.
pub async fn send(
    req: reqwest::RequestBuilder,
    what: &str,
    secrets: &[&str],
) -> Attempt<bytes::Bytes> {
    then(send_with_headers(req, what, secrets).await, |(_, body)| {
        Attempt::Done(body)
    })
}

/// [`send`], with the answer's headers as well as its body.
pub async fn send_with_headers(
    req: reqwest::RequestBuilder,
    what: &str,
    secrets: &[&str],
) -> Attempt<(reqwest::header::HeaderMap, bytes::Bytes)> {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return classify_error(e, what),
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    // A 2xx whose body cannot be read still means the platform accepted.
    let body = resp.bytes().await.unwrap_or_default();
    match classify_status(status, &headers, what) {
        Attempt::Done(()) => Attempt::Done((headers, body)),
        Attempt::Retry { reason, after } => Attempt::Retry {
            reason: with_detail(reason, &body, secrets),
            after,
        },
        Attempt::Fail(reason) => Attempt::Fail(with_detail(reason, &body, secrets)),
    }
}

/// [`send`], then [`json_body`]: the parsed answer of a 2xx.
pub async fn send_json<T: DeserializeOwned>(
    req: reqwest::RequestBuilder,
    what: &str,
    secrets: &[&str],
) -> Attempt<T> {
    match send(req, what, secrets).await {
        Attempt::Done(body) => json_body(&body, what),
        Attempt::Retry { reason, after } => Attempt::Retry { reason, after },
        Attempt::Fail(r) => Attempt::Fail(r),
    }
}

/// Parses a 2xx body as JSON; an unreadable answer is worth another try.
pub fn json_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Attempt<T> {
    match serde_json::from_slice(body) {
        Ok(v) => Attempt::Done(v),
        Err(e) => Attempt::Retry {
            reason: format!(
                "{what}: unexpected answer ({})",
                first_words(&e.to_string())
            ),
            after: None,
        },
    }
}

fn first_words(s: &str) -> String {
    truncate(s.lines().next().unwrap_or(""), 120)
}

/// `reason: <the platform's message>` when the body is JSON with one (a
/// Kubernetes `Status` object's `message` too).
pub(crate) fn with_detail(reason: String, body: &[u8], secrets: &[&str]) -> String {
    match platform_message(body) {
        Some(m) => scrub(&format!("{reason}: {m}"), secrets),
        None => reason,
    }
}

/// The error message in the common JSON error shapes: `message`,
/// `error.message`, `error` as a string, `errors[0].message`.
fn platform_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let m = v
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| v.pointer("/error/message").and_then(Value::as_str))
        .or_else(|| v.get("error").and_then(Value::as_str))
        .or_else(|| v.pointer("/errors/0/message").and_then(Value::as_str))?;
    let m = m.split_whitespace().collect::<Vec<_>>().join(" ");
    (!m.is_empty()).then(|| truncate(&m, 200))
}

/// Replaces every secret value in `text` with `***`.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(*s, "***");
    }
    out
}

/// At most `max` characters, with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// One deployment as a platform lists it, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub id: String,
    /// Other names of the same deployment (Heroku's `v42` and `42`).
    pub aliases: Vec<String>,
    /// Serving now (Railway `SUCCESS`, Render `live`, Heroku `current`).
    pub active: bool,
    /// The platform can return to it.
    pub eligible: bool,
    /// Its status as the platform says it, for messages.
    pub status: String,
}

impl Listed {
    fn is(&self, id: &str) -> bool {
        self.id == id || self.aliases.iter().any(|a| a == id)
    }
}

/// Picks the deployment to return to from a newest-first list:
///
/// - `return_to`, when it names a listed deployment; it must be eligible
///   (the agent knows it was stable, so nothing else will do);
/// - otherwise the newest eligible deployment older than `current`; when
///   `current` is not listed (its id comes from elsewhere), older than the
///   newest active one.
pub fn choose<'a>(
    list: &'a [Listed],
    current: &str,
    return_to: Option<&str>,
) -> Result<&'a Listed, String> {
    if let Some(want) = return_to.filter(|w| !w.is_empty()) {
        if let Some(d) = list.iter().find(|d| d.is(want)) {
            if d.is(current) {
                return Err(format!(
                    "the deployment to return to, {want}, is the current one"
                ));
            }
            if !d.eligible {
                return Err(format!(
                    "the deployment to return to, {want}, cannot be rolled back to (status {})",
                    d.status
                ));
            }
            return Ok(d);
        }
    }
    let start = match list.iter().position(|d| d.is(current)) {
        Some(i) => i + 1,
        None => match list.iter().position(|d| d.active) {
            Some(i) => i + 1,
            None => {
                return Err(format!(
                "neither deployment {current} nor an active one is among the last {} deployments",
                list.len()
            ))
            }
        },
    };
    list[start.min(list.len())..]
        .iter()
        .find(|d| d.eligible)
        .ok_or_else(|| {
            format!(
                "no earlier deployment to return to among the last {} deployments",
                list.len()
            )
        })
}

/// `base` without a trailing `/`, followed by `path`.
pub fn endpoint(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// Escapes one path segment (ids are put into URL paths).
pub fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
