//! The `heroku` target: Heroku's Platform API (version 3).
//!
//! It lists the app's recent releases (`GET /apps/{app}/releases` with
//! `Range: version ..; order=desc, max=20`; while the answer carries a
//! `Next-Range` header, that value is sent back as the next request's
//! `Range`, up to [`PAGES`] pages — the Platform API reference's ranges, as
//! github.com/heroku/heroku-go and the CLI's client follow them), picks the
//! one to return to (see [`super::call::choose`]: `succeeded` and, when the
//! release says so, `eligible_for_rollback`, older than the current
//! release; a deployment id may be the release's id, its version or `v`
//! and its version), and rolls back with `POST /apps/{app}/releases` and
//! `{"release": "<id>"}`, which creates a new release from that one.
//!
//! The live release is the current one from the same list: the release
//! with `current: true`, else the newest whose `status` is `succeeded`,
//! known as `v` and its version. Heroku's Platform API schema (the
//! `release` definition of `v6/schema.json` in github.com/heroku/heroku-go,
//! generated from `GET https://api.heroku.com/schema`) gives a release
//! `current` ("indicates this release as being the current one for the
//! app"), `eligible_for_rollback` ("indicates if this release is eligible
//! for rollback"; a release marked `false` is never chosen), `status` (`failed`, `pending`, `succeeded`, `expired`) and
//! `version`; a release whose release phase is still running (`pending`)
//! or failed (`failed`) never became current, while one whose dynos crash
//! stays current.

use serde::Deserialize;
use serde_json::{json, Value};

use super::call::{
    endpoint, find_in, find_then_act, http_client, json_body, live_policy, segment, send,
    send_with_headers, settled, then, with_retries, BuildContext, Listed, RollbackError,
};
use super::problem::{check_present, check_timeout, check_url, default_attempt_timeout, Problem};
use crate::duration::Dur;
use crate::evidence::{Reconciled, RollbackDone, RollbackRequest};
use crate::retry::{Attempt, RetryPolicy};
use crate::secret::Secret;

const NAME: &str = "heroku";

/// The Platform API's version header.
pub const ACCEPT: &str = "application/vnd.heroku+json; version=3";

/// The first page of releases: the 20 newest.
const RANGE: &str = "version ..; order=desc, max=20";

/// The most pages of releases read for a rollback (the live release is on
/// the first).
pub const PAGES: usize = 5;

/// `[rollback.heroku]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HerokuConfig {
    /// A Heroku API key or OAuth token, sent as `Authorization: Bearer`. Required.
    pub api_key: Secret,
    /// The app's name or id. Required.
    pub app: String,
    /// The API's base URL. Default `https://api.heroku.com`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// How long one request may take. Default `30s`.
    #[serde(default = "default_attempt_timeout")]
    pub timeout: Dur,
}

fn default_api_url() -> String {
    "https://api.heroku.com".into()
}

impl HerokuConfig {
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        check_present(&mut p, "api_key", self.api_key.expose());
        check_present(&mut p, "app", &self.app);
        check_url(&mut p, "api_url", &self.api_url, false);
        check_timeout(&mut p, "timeout", self.timeout.0);
        p
    }

    pub fn build(&self, cx: &BuildContext) -> Result<Heroku, RollbackError> {
        Ok(Heroku {
            client: http_client(NAME, self.timeout.0)?,
            policy: cx.policy,
            config: self.clone(),
        })
    }
}

/// The Heroku target, built.
#[derive(Debug)]
pub struct Heroku {
    client: reqwest::Client,
    policy: RetryPolicy,
    config: HerokuConfig,
}

impl Heroku {
    pub async fn rollback(&self, req: &RollbackRequest) -> Result<RollbackDone, RollbackError> {
        find_then_act(
            NAME,
            self.policy,
            || find_in(self.list(), req),
            |id| self.roll_back_to(id),
        )
        .await
    }

    fn releases_url(&self) -> String {
        endpoint(
            &self.config.api_url,
            &format!("/apps/{}/releases", segment(&self.config.app)),
        )
    }

    /// After an interrupted call: lists the releases and says where the bad
    /// one stands (see [`super::call::settled`]; a rollback is a new release).
    pub async fn reconcile(&self, req: &RollbackRequest) -> Result<Reconciled, RollbackError> {
        let list = with_retries(NAME, self.policy, |_| self.list()).await?;
        Ok(settled(NAME, &list, &req.deployment))
    }

    /// The app's current release, as `v` and its version (its id when it
    /// has no version). Reads only.
    pub async fn live_deployment(&self) -> Result<String, RollbackError> {
        with_retries(NAME, live_policy(self.policy), |_| async {
            then(self.releases(1).await, |items| match current(&items) {
                Some(id) => Attempt::Done(id),
                None => Attempt::Fail(format!(
                    "none of the {} newest releases is current or succeeded",
                    items.len()
                )),
            })
        })
        .await
    }

    /// The app's recent releases, newest first.
    async fn list(&self) -> Attempt<Vec<Listed>> {
        then(self.releases(PAGES).await, |items| {
            Attempt::Done(items.iter().filter_map(listed).collect())
        })
    }

    /// The app's recent releases as Heroku gives them, newest first: up to
    /// `pages` pages, each asked for with the `Next-Range` of the one
    /// before.
    async fn releases(&self, pages: usize) -> Attempt<Vec<Value>> {
        let key = self.config.api_key.expose();
        let what = "listing releases";
        let mut items: Vec<Value> = Vec::new();
        let mut range = RANGE.to_string();
        for _ in 0..pages {
            let r = self
                .client
                .get(self.releases_url())
                .bearer_auth(key)
                .header("accept", ACCEPT)
                .header("range", &range);
            let (headers, body) = match send_with_headers(r, what, &[key]).await {
                Attempt::Done(v) => v,
                Attempt::Retry { reason, after } => return Attempt::Retry { reason, after },
                Attempt::Fail(r) => return Attempt::Fail(r),
            };
            let page: Vec<Value> = match json_body(&body, what) {
                Attempt::Done(v) => v,
                Attempt::Retry { reason, after } => return Attempt::Retry { reason, after },
                Attempt::Fail(r) => return Attempt::Fail(r),
            };
            let empty = page.is_empty();
            items.extend(page);
            let next = headers
                .get("next-range")
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.trim().is_empty());
            match next {
                Some(next) if !empty => range = next.to_string(),
                _ => break,
            }
        }
        items.sort_by_key(|r| std::cmp::Reverse(r.get("version").and_then(Value::as_u64)));
        Attempt::Done(items)
    }

    async fn roll_back_to(&self, id: String) -> Attempt<RollbackDone> {
        let key = self.config.api_key.expose();
        let r = self
            .client
            .post(self.releases_url())
            .bearer_auth(key)
            .header("accept", ACCEPT)
            .json(&json!({ "release": id }));
        match send(r, "the rollback call", &[key]).await {
            Attempt::Done(body) => {
                let version = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("version").and_then(Value::as_u64));
                let detail = match version {
                    Some(v) => format!("heroku created release v{v} from release {id}"),
                    None => format!("heroku is rolling back to release {id}"),
                };
                Attempt::Done(RollbackDone {
                    returned_to: Some(id),
                    detail,
                })
            }
            Attempt::Retry { reason, after } => Attempt::Retry { reason, after },
            Attempt::Fail(r) => Attempt::Fail(r),
        }
    }
}

/// The current release of a newest-first list: the one marked `current`,
/// else the newest `succeeded` one.
fn current(items: &[Value]) -> Option<String> {
    let release = items
        .iter()
        .find(|r| r.get("current").and_then(Value::as_bool) == Some(true))
        .or_else(|| {
            items
                .iter()
                .find(|r| r.get("status").and_then(Value::as_str) == Some("succeeded"))
        })?;
    match release.get("version").and_then(Value::as_u64) {
        Some(v) => Some(format!("v{v}")),
        None => release
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

fn listed(r: &Value) -> Option<Listed> {
    let id = r.get("id")?.as_str()?.to_string();
    let aliases = match r.get("version").and_then(Value::as_u64) {
        Some(v) => vec![v.to_string(), format!("v{v}")],
        None => vec![],
    };
    let status = r
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    // Absent says nothing; `false` rules the release out.
    let eligible = r.get("eligible_for_rollback").and_then(Value::as_bool) != Some(false);
    Some(Listed {
        id,
        aliases,
        active: r.get("current").and_then(Value::as_bool) == Some(true),
        eligible: status == "succeeded" && eligible,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_is_known_by_its_id_its_version_and_v_version() {
        let l =
            listed(&json!({"id": "r-1", "version": 41, "status": "succeeded", "current": false}))
                .unwrap();
        assert_eq!(l.aliases, ["41", "v41"]);
        assert!(l.eligible && !l.active);
        let held = |e: Value| {
            listed(&json!({"id": "r-1", "version": 1, "status": "succeeded", "eligible_for_rollback": e}))
                .unwrap()
                .eligible
        };
        assert!(held(json!(true)) && held(Value::Null) && !held(json!(false)));
    }

    #[test]
    fn the_current_release_is_the_one_marked_current_else_the_newest_succeeded() {
        let r = |v: u64, status: &str, current: Option<bool>| {
            let mut r = json!({"id": format!("r-{v}"), "version": v, "status": status});
            if let Some(c) = current {
                r["current"] = json!(c);
            }
            r
        };
        let marked = [
            r(43, "pending", Some(false)),
            r(42, "failed", Some(false)),
            r(41, "succeeded", Some(true)),
        ];
        assert_eq!(current(&marked).as_deref(), Some("v41"));
        let unmarked = [r(43, "pending", None), r(42, "succeeded", None)];
        assert_eq!(current(&unmarked).as_deref(), Some("v42"));
        assert_eq!(current(&[r(1, "failed", Some(false))]), None);
        assert_eq!(
            current(&[json!({"id": "r-x", "current": true})]).as_deref(),
            Some("r-x")
        );
    }
}
