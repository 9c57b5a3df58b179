//! The deployment ledger as the HTTP API and the command line show it:
//! `GET /v1/deployments` (newest first, `?limit=N`), `GET
//! /v1/deployments/{id}`, a pipeline's `POST /v1/deployments` (checked
//! here, applied by the watch loop), `backstop history`'s table and
//! `backstop verdict`'s reading of one deployment. What the store keeps is
//! `store::records`' `LedgerEntry`; the deployment being watched is shown
//! as the watch knows it now, ahead of the store's write-behind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::{App, Command, Registered};
use crate::store::{now_ms, DeploymentMeta, LedgerEntry, Store, WatchState};

/// How many deployments `GET /v1/deployments` and `backstop history`
/// list without `limit`, and the most they list.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;

/// The bounds of a registration: each text field, the annotations.
pub const MAX_ID: usize = 256;
pub const MAX_FIELD: usize = 256;
pub const MAX_ANNOTATIONS: usize = 32;
pub const MAX_ANNOTATION_KEY: usize = 64;
pub const MAX_ANNOTATION_VALUE: usize = 1024;

/// How long the API waits for the store before answering 503.
const STORE_WAIT: Duration = Duration::from_secs(3);

/// A pipeline's `POST /v1/deployments` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    id: Option<String>,
    commit: Option<String>,
    triggered_by: Option<String>,
    environment: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Reads and checks a registration; the error says what is wrong and what
/// would do.
pub fn parse_registration(body: &[u8], now_ms: u64) -> Result<DeploymentMeta, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(
            "give the deployment as JSON: {\"id\": \"...\", \"commit\": \"...\", \
             \"triggered_by\": \"...\", \"environment\": \"...\", \"annotations\": {}}"
                .into(),
        );
    }
    let r: Registration = serde_json::from_slice(body).map_err(|e| {
        format!("body is not a registration: {e} (expected id, commit, triggered_by, environment, annotations)")
    })?;
    let id = r.id.map(|s| s.trim().to_string()).unwrap_or_default();
    if id.is_empty() {
        return Err(
            "id: required, the deployment's id as the agent's [deployment] source reports it"
                .into(),
        );
    }
    check_text("id", &id, MAX_ID)?;
    for (key, value) in [
        ("commit", &r.commit),
        ("triggered_by", &r.triggered_by),
        ("environment", &r.environment),
    ] {
        if let Some(v) = value {
            check_text(key, v, MAX_FIELD)?;
        }
    }
    if r.annotations.len() > MAX_ANNOTATIONS {
        return Err(format!(
            "annotations: at most {MAX_ANNOTATIONS} entries (got {})",
            r.annotations.len()
        ));
    }
    for (k, v) in &r.annotations {
        if k.trim().is_empty() {
            return Err("annotations: a key is empty".into());
        }
        check_text("annotations key", k, MAX_ANNOTATION_KEY)?;
        check_text(&format!("annotations.{k}"), v, MAX_ANNOTATION_VALUE)?;
    }
    let blank = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    Ok(DeploymentMeta {
        id,
        commit: blank(r.commit),
        triggered_by: blank(r.triggered_by),
        environment: blank(r.environment),
        annotations: r.annotations,
        registered_at_ms: now_ms,
    })
}

fn check_text(key: &str, value: &str, max: usize) -> Result<(), String> {
    if value.chars().count() > max {
        return Err(format!(
            "{key}: at most {max} characters (got {})",
            value.chars().count()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{key}: must not hold control characters"));
    }
    Ok(())
}

/// `?limit=N` of a query string: the default without it, an error for
/// what is not a number from 1 to [`MAX_LIMIT`].
pub fn parse_limit(query: Option<&str>) -> Result<usize, String> {
    let Some(value) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|p| p.strip_prefix("limit="))
    else {
        return Ok(DEFAULT_LIMIT);
    };
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!(
            "limit: a number from 1 to {MAX_LIMIT} (got {value:?}; default {DEFAULT_LIMIT})"
        )),
    }
}

/// Shows the deployment being watched as the watch knows it now (its
/// record may still be on its way to the store), and its rollback.
fn overlay(app: &App, entries: &mut Vec<LedgerEntry>, only: Option<&str>, limit: usize) {
    // Only what it needs of the view: not its rules.
    let Some((cur, rollback)) = app.view.as_ref().and_then(|v| {
        let view = v.lock().expect("view lock");
        let cur = view.deployment.clone()?;
        let rollback = view
            .last_rollback
            .clone()
            .filter(|r| r.deployment == cur.id);
        Some((cur, rollback))
    }) else {
        return;
    };
    if only.is_some_and(|id| id != cur.id) {
        return;
    }
    match entries.iter_mut().find(|e| e.id == cur.id) {
        Some(e) => {
            e.first_seen_ms = Some(cur.first_seen_ms);
            e.state = Some(cur.state);
            e.states = cur.history(rollback.as_ref());
            e.stable_at_ms = cur.stable_at_ms;
            if e.rollback.is_none() {
                e.rollback = rollback;
            }
        }
        None => {
            let meta = app.meta_of(&cur.id);
            entries.extend(LedgerEntry::join(Some(cur), meta, rollback));
            entries.sort_by(|a, b| b.at_ms().cmp(&a.at_ms()).then_with(|| a.id.cmp(&b.id)));
            entries.truncate(limit);
        }
    }
}

/// The ledger document: `{"service", "deployments": [...]}`.
pub fn document(service: &str, entries: &[LedgerEntry]) -> Value {
    json!({ "service": service, "deployments": entries })
}

fn store_of(app: &App) -> Result<Arc<Store>, (StatusCode, Value)> {
    app.store.as_ref().and_then(|s| s.upgrade()).ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "error": "the store is not open" }),
    ))
}

async fn within<T>(
    what: &str,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Result<T, (StatusCode, Value)> {
    match tokio::time::timeout(STORE_WAIT, f).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": format!("{what}: the store failed: {e:#}") }),
        )),
        Err(_) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": format!("{what}: the store did not answer within {}", crate::duration::format(STORE_WAIT)) }),
        )),
    }
}

/// `GET /v1/deployments?limit=N`.
pub async fn list(app: &App, query: Option<&str>) -> (StatusCode, Value) {
    let limit = match parse_limit(query) {
        Ok(n) => n,
        Err(e) => return (StatusCode::BAD_REQUEST, json!({ "error": e })),
    };
    let store = match store_of(app) {
        Ok(s) => s,
        Err(e) => return e,
    };
    match within("reading the ledger", store.ledger(limit)).await {
        Ok(mut entries) => {
            overlay(app, &mut entries, None, limit);
            (StatusCode::OK, document(&app.config.service, &entries))
        }
        Err(e) => e,
    }
}

/// The newest `limit` deployments for the page at `/`, waiting at most
/// `wait` for the store: the page is drawn without them, saying why, when
/// the store does not answer.
pub async fn recent(app: &App, limit: usize, wait: Duration) -> Result<Vec<LedgerEntry>, String> {
    let store =
        store_of(app).map_err(|(_, v)| v["error"].as_str().unwrap_or_default().to_string())?;
    match tokio::time::timeout(wait, store.ledger(limit)).await {
        Ok(Ok(mut entries)) => {
            overlay(app, &mut entries, None, limit);
            Ok(entries)
        }
        Ok(Err(e)) => Err(format!("the store failed: {e:#}")),
        Err(_) => Err(format!(
            "the store did not answer within {}",
            crate::duration::format(wait)
        )),
    }
}

/// `GET /v1/deployments/{id}`.
pub async fn one(app: &App, id: &str) -> (StatusCode, Value) {
    let store = match store_of(app) {
        Ok(s) => s,
        Err(e) => return e,
    };
    match within("reading the ledger", store.ledger_entry(id)).await {
        Ok(found) => {
            let mut entries: Vec<LedgerEntry> = found.into_iter().collect();
            overlay(app, &mut entries, Some(id), 1);
            match entries.into_iter().next() {
                Some(e) => (StatusCode::OK, json!(e)),
                None => (
                    StatusCode::NOT_FOUND,
                    json!({ "error": format!("deployment {id:?} is not in the ledger") }),
                ),
            }
        }
        Err(e) => e,
    }
}

/// `POST /v1/deployments` (authorized): checks the registration, reads
/// whether the id was seen before, and hands it to the watch loop, which
/// stores it and, for an id never seen that is not the current one,
/// starts its watch at once.
pub async fn register(app: &App, body: &[u8]) -> (StatusCode, Value) {
    let meta = match parse_registration(body, now_ms()) {
        Ok(m) => m,
        Err(e) => return (StatusCode::BAD_REQUEST, json!({ "error": e })),
    };
    let Some(commands) = &app.commands else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "the watch is not running" }),
        );
    };
    let store = match store_of(app) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let seen = match within("reading the deployment", store.deployment(&meta.id)).await {
        Ok(found) => found.is_some(),
        Err(e) => return e,
    };
    app.remember_meta(&meta);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let id = meta.id.clone();
    let gone = (
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "error": "the watch loop is not answering" }),
    );
    if commands
        .send(Command::Register {
            meta: Box::new(meta),
            seen,
            reply: tx,
        })
        .await
        .is_err()
    {
        return gone;
    }
    let Ok(registered) = rx.await else {
        return gone;
    };
    let (status, watch) = match registered {
        Registered::Started => (StatusCode::CREATED, "started"),
        Registered::Current => (StatusCode::OK, "current"),
        Registered::Known => (StatusCode::OK, "known"),
    };
    (status, json!({ "id": id, "watch": watch }))
}

/// What `backstop verdict` makes of a deployment's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Stable: exit 0.
    Stable(String),
    /// Rolled back or unhealthy: exit 1.
    Bad(String),
    /// Still warming or watching, or not seen yet: no verdict yet.
    Pending(String),
}

impl Verdict {
    /// `backstop verdict`'s exit code: 0 stable, 1 rolled back or
    /// unhealthy, 2 no verdict (still watching, a time-out, an error).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Stable(_) => 0,
            Self::Bad(_) => 1,
            Self::Pending(_) => 2,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Stable(m) | Self::Bad(m) | Self::Pending(m) => m,
        }
    }
}

/// The verdict on one ledger entry, with the rule and reason of its
/// rollback when it has one.
pub fn verdict(e: &LedgerEntry) -> Verdict {
    let since = e
        .states
        .last()
        .map(|s| format!(" since {}", utc(s.at_ms)))
        .unwrap_or_default();
    let why = e
        .rollback
        .as_ref()
        .map(|r| {
            format!(
                ": rule {:?}: {} (rollback {})",
                r.rule,
                r.reason,
                r.status.as_str()
            )
        })
        .unwrap_or_default();
    match e.state {
        Some(WatchState::Stable) => Verdict::Stable(format!("{}: stable{since}", e.id)),
        Some(WatchState::RolledBack) => Verdict::Bad(format!("{}: rolled back{since}{why}", e.id)),
        Some(WatchState::Unhealthy) => Verdict::Bad(format!(
            "{}: unhealthy{since}: a rollback rule held when its watch ended{why}",
            e.id
        )),
        Some(s) => Verdict::Pending(format!("{}: still {}{since}", e.id, s.as_str())),
        None => Verdict::Pending(format!("{}: registered, not seen by the agent yet", e.id)),
    }
}

/// `backstop history`'s table.
pub fn table(entries: &[LedgerEntry]) -> String {
    let mut rows = vec![[
        "DEPLOYMENT".to_string(),
        "FIRST SEEN".into(),
        "STATE".into(),
        "SINCE".into(),
        "COMMIT".into(),
        "BY".into(),
        "RULE".into(),
        "REASON".into(),
    ]];
    for e in entries {
        let dash = || "-".to_string();
        rows.push([
            e.id.clone(),
            e.first_seen_ms.map(utc).unwrap_or_else(dash),
            e.state.map_or("registered", WatchState::as_str).to_string(),
            e.states.last().map(|s| utc(s.at_ms)).unwrap_or_else(dash),
            e.commit.clone().unwrap_or_else(dash),
            e.triggered_by.clone().unwrap_or_else(dash),
            e.rollback
                .as_ref()
                .map(|r| r.rule.clone())
                .unwrap_or_else(dash),
            e.rollback
                .as_ref()
                .map(|r| r.reason.clone())
                .unwrap_or_else(dash),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if entries.is_empty() {
        out.push_str("(no deployment recorded yet)\n");
    }
    out
}

/// `2026-05-01 12:00:00 UTC`, from Unix milliseconds.
pub fn utc(ms: u64) -> String {
    crate::utc::text(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RollbackRecord, RollbackStatus, StateAt};

    #[test]
    fn a_registration_is_read_with_its_metadata() {
        let m = parse_registration(
            br#"{"id":" v7 ","commit":"abc123","triggered_by":"alice","environment":"prod",
                 "annotations":{"pr":"42"}}"#,
            9,
        )
        .unwrap();
        assert_eq!(m.id, "v7");
        assert_eq!(m.commit.as_deref(), Some("abc123"));
        assert_eq!(m.triggered_by.as_deref(), Some("alice"));
        assert_eq!(m.environment.as_deref(), Some("prod"));
        assert_eq!(m.annotations["pr"], "42");
        assert_eq!(m.registered_at_ms, 9);
        let bare = parse_registration(br#"{"id":"v8","commit":""}"#, 1).unwrap();
        assert_eq!(bare.commit, None);
    }

    #[test]
    fn a_bad_registration_is_refused_with_what_is_wrong() {
        let many: BTreeMap<String, String> = (0..40)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "give the deployment as JSON"),
            (b"not json".to_vec(), "body is not a registration"),
            (br#"{"commit":"abc"}"#.to_vec(), "id: required"),
            (br#"{"id":"   "}"#.to_vec(), "id: required"),
            (
                br#"{"id":"v1","colour":"red"}"#.to_vec(),
                "unknown field `colour`",
            ),
            (br#"{"id":"v1","commit":5}"#.to_vec(), "invalid type"),
            (
                format!(r#"{{"id":"{}"}}"#, "x".repeat(300)).into_bytes(),
                "id: at most 256 characters",
            ),
            (
                br#"{"id":"v1\n2"}"#.to_vec(),
                "id: must not hold control characters",
            ),
            (
                serde_json::to_vec(&json!({"id": "v1", "annotations": many})).unwrap(),
                "annotations: at most 32 entries",
            ),
            (
                br#"{"id":"v1","annotations":{"":"x"}}"#.to_vec(),
                "annotations: a key is empty",
            ),
            (
                serde_json::to_vec(&json!({"id": "v1", "annotations": {"k": "v".repeat(2000)}}))
                    .unwrap(),
                "annotations.k: at most 1024 characters",
            ),
        ];
        for (body, want) in cases {
            let err = parse_registration(&body, 1).expect_err(want);
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    #[test]
    fn the_limit_is_a_bounded_number() {
        assert_eq!(parse_limit(None), Ok(DEFAULT_LIMIT));
        assert_eq!(parse_limit(Some("x=1")), Ok(DEFAULT_LIMIT));
        assert_eq!(parse_limit(Some("limit=5")), Ok(5));
        assert_eq!(parse_limit(Some("a=b&limit=1000")), Ok(1000));
        for bad in ["limit=0", "limit=1001", "limit=ten", "limit="] {
            assert!(
                parse_limit(Some(bad)).unwrap_err().contains("limit"),
                "{bad}"
            );
        }
    }

    fn entry(state: Option<WatchState>, rolled_back: bool) -> LedgerEntry {
        LedgerEntry {
            id: "v2".into(),
            first_seen_ms: state.map(|_| 0),
            state,
            states: state
                .map(|s| {
                    vec![StateAt {
                        state: s,
                        at_ms: 86_400_000 + 3_723_000,
                    }]
                })
                .unwrap_or_default(),
            stable_at_ms: None,
            commit: Some("abc123".into()),
            triggered_by: Some("alice".into()),
            environment: None,
            annotations: BTreeMap::new(),
            registered_at_ms: Some(0),
            rollback: rolled_back.then(|| RollbackRecord {
                deployment: "v2".into(),
                return_to: Some("v1".into()),
                rule: "health failing".into(),
                reason: "consecutive_failures 3 >= 3".into(),
                evidence: vec![],
                target: "webhook".into(),
                status: RollbackStatus::Succeeded,
                intent_at_ms: 1,
                finished_at_ms: Some(2),
                detail: String::new(),
                returned_to: Some("v1".into()),
                not_effective: false,
                by: None,
            }),
        }
    }

    #[test]
    fn a_verdict_says_stable_rolled_back_unhealthy_or_not_yet() {
        let v = verdict(&entry(Some(WatchState::Stable), false));
        assert_eq!(v.exit_code(), 0);
        assert_eq!(v.message(), "v2: stable since 1970-01-02 01:02:03 UTC");
        let v = verdict(&entry(Some(WatchState::RolledBack), true));
        assert_eq!(v.exit_code(), 1);
        assert!(
            v.message()
                .contains(r#"rule "health failing": consecutive_failures 3 >= 3"#),
            "{}",
            v.message()
        );
        assert_eq!(
            verdict(&entry(Some(WatchState::Unhealthy), false)).exit_code(),
            1
        );
        let v = verdict(&entry(Some(WatchState::Watching), false));
        assert_eq!(v.exit_code(), 2);
        assert!(v.message().contains("still watching"), "{}", v.message());
        assert_eq!(
            verdict(&entry(Some(WatchState::Warming), false)).exit_code(),
            2
        );
        assert_eq!(verdict(&entry(None, false)).exit_code(), 2);
    }

    #[test]
    fn the_table_shows_state_commit_author_and_the_rollbacks_rule_and_reason() {
        let t = table(&[
            entry(Some(WatchState::RolledBack), true),
            entry(None, false),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("DEPLOYMENT  FIRST SEEN"), "{t}");
        assert!(lines[1].contains("rolled_back"), "{t}");
        assert!(
            lines[1].contains("abc123") && lines[1].contains("alice"),
            "{t}"
        );
        assert!(
            lines[1].contains("health failing  consecutive_failures 3 >= 3"),
            "{t}"
        );
        assert!(lines[2].contains("registered"), "{t}");
        assert!(table(&[]).contains("no deployment recorded yet"));
    }

    #[test]
    fn times_are_written_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_709_251_199_999), "2024-02-29 23:59:59 UTC");
        assert_eq!(utc(1_735_689_600_000), "2025-01-01 00:00:00 UTC");
    }
}
