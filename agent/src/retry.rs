//! Retries of calls to remote APIs (rollback targets, notifiers): exponential
//! backoff with full jitter, `Retry-After` honoured, all within a deadline.
//! Network errors, 5xx and 429 are retried; other 4xx are final.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// How a call is retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The first backoff's upper bound. Default 500ms.
    pub initial: Duration,
    /// The largest backoff. Default 30s.
    pub max_delay: Duration,
    /// No attempt starts after this much time from the first. Default 5m.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            deadline: Duration::from_secs(300),
        }
    }
}

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt<T> {
    Done(T),
    /// Worth another try, after `after` if the server said so.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Not worth another try (auth failure, bad request, not found).
    Fail(String),
}

/// Why a call with retries did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetryError {
    #[error("{reason} (not retried)")]
    Final { reason: String, attempts: u32 },
    #[error("gave up after {attempts} attempts: {reason}")]
    Exhausted { reason: String, attempts: u32 },
}

impl RetryError {
    pub fn attempts(&self) -> u32 {
        match self {
            Self::Final { attempts, .. } | Self::Exhausted { attempts, .. } => *attempts,
        }
    }
}

/// Calls `f` (given the attempt number, from 1) until it is done, fails
/// for good, or the deadline would pass before the next attempt.
pub async fn retry<T, F, Fut>(policy: RetryPolicy, mut f: F) -> Result<T, RetryError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let start = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let (reason, after) = match f(attempt).await {
            Attempt::Done(t) => return Ok(t),
            Attempt::Fail(reason) => {
                return Err(RetryError::Final {
                    reason,
                    attempts: attempt,
                })
            }
            Attempt::Retry { reason, after } => (reason, after),
        };
        let delay = after.unwrap_or_else(|| backoff(policy, attempt));
        if start.elapsed() + delay > policy.deadline {
            return Err(RetryError::Exhausted {
                reason,
                attempts: attempt,
            });
        }
        tracing::debug!(attempt, delay_ms = delay.as_millis() as u64, reason = %reason, "retrying");
        tokio::time::sleep(delay).await;
    }
}

/// Full-jitter backoff: a random delay up to `initial * 2^(attempt-1)`,
/// capped at `max_delay`.
pub fn backoff(policy: RetryPolicy, attempt: u32) -> Duration {
    let exp = policy
        .initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(policy.max_delay);
    rand::thread_rng().gen_range(Duration::ZERO..=cap)
}

/// Reads `Retry-After` as seconds or as an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Classifies an HTTP response status: 2xx done, 429 and 5xx retried
/// (honouring `Retry-After`), anything else final.
pub fn classify_status(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    what: &str,
) -> Attempt<()> {
    if status.is_success() {
        Attempt::Done(())
    } else if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Attempt::Retry {
            reason: format!("{what} answered {status}"),
            after: retry_after(headers),
        }
    } else {
        Attempt::Fail(format!("{what} answered {status}"))
    }
}

/// Classifies a transport error: always worth another try. The message
/// never includes the URL, which may carry a secret.
pub fn classify_error<T>(err: reqwest::Error, what: &str) -> Attempt<T> {
    let err = err.without_url();
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    Attempt::Retry {
        reason: format!("{what}: {kind}"),
        after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retries_until_done_and_honours_retry_after() {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let got = retry(RetryPolicy::default(), |n| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    Attempt::Retry {
                        reason: "429".into(),
                        after: Some(Duration::from_secs(7)),
                    }
                } else {
                    Attempt::Done(n)
                }
            }
        })
        .await;
        assert_eq!(got, Ok(3));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(start.elapsed(), Duration::from_secs(14));
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_failure_is_not_retried() {
        let got: Result<(), _> = retry(RetryPolicy::default(), |_| async {
            Attempt::Fail("401".into())
        })
        .await;
        assert_eq!(got.unwrap_err().attempts(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline() {
        let policy = RetryPolicy {
            deadline: Duration::from_secs(60),
            ..RetryPolicy::default()
        };
        let start = Instant::now();
        let got: Result<(), _> = retry(policy, |_| async {
            Attempt::Retry {
                reason: "503".into(),
                after: None,
            }
        })
        .await;
        assert!(matches!(got, Err(RetryError::Exhausted { .. })));
        assert!(start.elapsed() <= Duration::from_secs(60));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        for attempt in 1..40 {
            let cap = p
                .initial
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(p.max_delay);
            assert!(backoff(p, attempt) <= cap);
        }
    }

    #[test]
    fn reads_retry_after_in_both_forms() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "12".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(12)));
        h.insert(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        // A date two minutes ahead: about two minutes (HTTP dates have
        // whole seconds).
        let ahead = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert(
            "retry-after",
            httpdate::fmt_http_date(ahead).parse().unwrap(),
        );
        let wait = retry_after(&h).unwrap();
        assert!(
            wait > Duration::from_secs(110) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        h.insert("retry-after", "not a date".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
