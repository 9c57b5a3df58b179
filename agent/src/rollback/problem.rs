//! A problem with a target's settings, by key, and the checks every
//! target's `validate` shares; the per-attempt timeout a target has unless
//! it says otherwise.

use std::time::Duration;

use crate::duration::Dur;

/// How long one HTTP attempt may take unless a target says otherwise.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// One problem in a target's subtable; `key` is relative to the subtable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Checks an `http`/`https` URL. A secret URL is never echoed.
pub fn check_url(problems: &mut Vec<Problem>, key: &str, raw: &str, secret: bool) {
    let shown = || {
        if secret {
            String::new()
        } else {
            format!(", got {:?}", backstop_probes::redact_url(raw))
        }
    };
    if raw.trim().is_empty() {
        problems.push(Problem::new(key, "must not be empty"));
        return;
    }
    match url::Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        Ok(_) => problems.push(Problem::new(
            key,
            format!("expected an http or https URL{}", shown()),
        )),
        Err(e) => problems.push(Problem::new(key, format!("invalid URL ({e}){}", shown()))),
    }
}

/// Checks a required identifier or token is not empty.
pub fn check_present(problems: &mut Vec<Problem>, key: &str, value: &str) {
    if value.trim().is_empty() {
        problems.push(Problem::new(key, "must not be empty"));
    }
}

/// Checks a per-attempt timeout.
pub fn check_timeout(problems: &mut Vec<Problem>, key: &str, d: Duration) {
    if d.is_zero() {
        problems.push(Problem::new(key, "must be more than 0s"));
    }
}

pub(crate) fn default_attempt_timeout() -> Dur {
    Dur(DEFAULT_ATTEMPT_TIMEOUT)
}
