//! `[store]`: the PostgreSQL store shared by the agents of a service, read
//! and validated here.

use std::str::FromStr;
use std::time::Duration;

use backstop_probes::redact_url;
use serde::Deserialize;
use serde_json::Value;

use crate::duration::Dur;
use crate::problems::Problems;

/// `[store]`: a PostgreSQL store shared by the agents of a service, instead
/// of the embedded one in `state_dir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    /// `postgres://user:password@host:port/database`; a secret. Required.
    url: crate::secret::Secret,
    /// The schema of backstop's tables, created when missing. Default `public`.
    #[serde(default = "default_schema")]
    schema: String,
    /// Connections kept open to the server. Default `4`.
    #[serde(default = "default_pool_size")]
    pool_size: i64,
    /// Time one store operation may take, connecting included. Default `5s`.
    #[serde(default = "default_store_timeout")]
    timeout: Dur,
}

fn default_schema() -> String {
    "public".into()
}
fn default_pool_size() -> i64 {
    4
}
fn default_store_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

/// `[store]`, validated: where the PostgreSQL store is.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// The connection URL; shown only through `redact_url`.
    pub url: crate::secret::Secret,
    /// A valid, unquoted identifier.
    pub schema: String,
    pub pool_size: usize,
    pub timeout: Duration,
}

/// Reads and validates `[store]`, reporting every problem to `cx`.
pub fn read(cx: &mut Problems, value: Value) -> Option<StoreConfig> {
    let s: StoreSection = cx.section("store", value)?;
    let mut ok = true;
    if let Err(message) = check_url(s.url.expose()) {
        cx.report("store.url", message);
        ok = false;
    }
    if !valid_identifier(&s.schema) {
        cx.report(
            "store.schema",
            format!(
                "{:?} is not a schema name: use lowercase letters, digits and underscores \
                 (at most 63, not starting with a digit)",
                s.schema
            ),
        );
        ok = false;
    }
    if !(1..=64).contains(&s.pool_size) {
        cx.report("store.pool_size", "must be between 1 and 64");
        ok = false;
    }
    if s.timeout.0 < Duration::from_millis(100) {
        cx.report("store.timeout", "must be at least 100ms");
        ok = false;
    }
    ok.then_some(StoreConfig {
        url: s.url,
        schema: s.schema,
        pool_size: s.pool_size as usize,
        timeout: s.timeout.0,
    })
}

/// Checks a `[store] url`: a postgres URL with a host and a user, without a
/// TLS mode the store cannot honour. Messages never hold the password.
pub fn check_url(raw: &str) -> Result<tokio_postgres::Config, String> {
    let parsed =
        url::Url::parse(raw).map_err(|e| format!("invalid URL {:?}: {e}", redact_url(raw)))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "scheme {:?} is not postgres or postgresql",
            parsed.scheme()
        ));
    }
    if let Some((_, mode)) = parsed.query_pairs().find(|(k, _)| k == "sslmode") {
        if matches!(&*mode, "require" | "verify-ca" | "verify-full") {
            return Err(format!(
                "sslmode={mode} is not supported: the store connects without TLS; \
                 use sslmode=disable or sslmode=prefer, or reach the server over a trusted network"
            ));
        }
    }
    let pg = tokio_postgres::Config::from_str(raw).map_err(|e| {
        let msg = format!("invalid URL {:?}: {e}", redact_url(raw));
        match parsed.password() {
            Some(p) if !p.is_empty() => msg.replace(p, "***"),
            _ => msg,
        }
    })?;
    if pg.get_hosts().is_empty() {
        return Err("the URL names no host".into());
    }
    if pg.get_user().is_none() {
        return Err("the URL names no user (postgres://user:password@host/db)".into());
    }
    Ok(pg)
}

/// A lowercase SQL identifier that needs no escaping once quoted.
pub fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_checked_without_echoing_the_password() {
        let cases = [
            ("postgres://app:hunter2@db:5432/app", true),
            ("postgresql://app:hunter2@db/app?sslmode=prefer", true),
            ("mysql://app:hunter2@db/app", false),
            ("postgres://app:hunter2@db/app?sslmode=require", false),
            ("postgres://app:hunter2@db:notaport/app", false),
            ("postgres://hunter2@/app", false),
            ("not a url", false),
        ];
        for (url, ok) in cases {
            match check_url(url) {
                Ok(_) => assert!(ok, "{url} accepted"),
                Err(e) => {
                    assert!(!ok, "{url}: {e}");
                    assert!(!e.contains("hunter2"), "{url}: {e}");
                }
            }
        }
    }

    #[test]
    fn schema_names_are_plain_lowercase_identifiers() {
        for (name, ok) in [
            ("public", true),
            ("backstop_2", true),
            ("_x", true),
            ("", false),
            ("2x", false),
            ("Public", false),
            ("a-b", false),
            ("a\"; drop", false),
            (&"x".repeat(64), false),
        ] {
            assert_eq!(valid_identifier(name), ok, "{name:?}");
        }
    }
}
