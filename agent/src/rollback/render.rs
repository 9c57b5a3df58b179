//! The `render` target: Render's REST API.
//!
//! It lists the service's recent deploys (`GET /services/{serviceId}/deploys`,
//! newest first, each item `{"deploy": {...}, "cursor": ...}`), picks the
//! one to return to (see [`super::call::choose`]: a deploy that was live, now
//! `live` or `deactivated`), and calls `POST /services/{serviceId}/rollback`
//! with `{"deployId": ...}`, which starts a new deploy from that deploy's
//! build.
//!
//! The live deploy is the newest one whose status is `live`
//! (`GET /services/{serviceId}/deploys?status=live&limit=1`). Render's
//! OpenAPI spec, as its generated client in the Render CLI has it
//! (`DeployStatus` and `ListDeploysParams` in `pkg/client/types_gen.go`,
//! github.com/render-oss/cli), lists the statuses `created`, `queued`,
//! `build_in_progress`, `update_in_progress`, `pre_deploy_in_progress`,
//! `live`, `deactivated`, `build_failed`, `update_failed`,
//! `pre_deploy_failed` and `canceled`: only `live` serves. A deploy that
//! fails (its build, its pre-deploy command or its health check while
//! updating) never goes live, and the one before it stays `live`; a deploy
//! that went live and crashes afterwards stays `live` while Render restarts
//! it.
//!
//! A rollback leaves the service's auto-deploy as it was: when it is on,
//! the next push to the branch deploys the bad commit again, and the
//! outcome says so. With `disable_autodeploy = true`, after a rollback
//! Render accepted, the service's auto-deploy is turned off with
//! `PATCH /services/{serviceId}` and `{"autoDeploy": "no"}` (the spec's
//! `ServicePATCH.autoDeploy`, `AutoDeploy` being `yes` or `no`, in the same
//! generated client), and the outcome says that it was.

use std::time::Instant;

use serde::Deserialize;
use serde_json::{json, Value};

use super::call::{
    endpoint, find_in, find_then_act, http_client, live_policy, segment, send, send_json, settled,
    then, with_retries, BuildContext, Listed, RollbackError,
};
use super::problem::{check_present, check_timeout, check_url, default_attempt_timeout, Problem};
use crate::duration::Dur;
use crate::evidence::{Reconciled, RollbackDone, RollbackRequest};
use crate::retry::{Attempt, RetryPolicy};
use crate::secret::Secret;

const NAME: &str = "render";

/// How many recent deploys are searched for the one to return to.
const HISTORY: u32 = 20;

/// `[rollback.render]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderConfig {
    /// A Render API key, sent as `Authorization: Bearer`. Required.
    pub api_key: Secret,
    /// The service's id (`srv-...`). Required.
    pub service_id: String,
    /// The API's base URL. Default `https://api.render.com/v1`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// How long one request may take. Default `30s`.
    #[serde(default = "default_attempt_timeout")]
    pub timeout: Dur,
    /// After a rollback, turn the service's auto-deploy off, so that the
    /// next push does not deploy the bad commit again. Default false.
    #[serde(default)]
    pub disable_autodeploy: bool,
}

/// What the outcome says when auto-deploy is left alone.
const STILL_ON: &str = "a rollback leaves the service's auto-deploy as it was: \
if it is on, the next push deploys the bad commit again";

fn default_api_url() -> String {
    "https://api.render.com/v1".into()
}

impl RenderConfig {
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        check_present(&mut p, "api_key", self.api_key.expose());
        check_present(&mut p, "service_id", &self.service_id);
        check_url(&mut p, "api_url", &self.api_url, false);
        check_timeout(&mut p, "timeout", self.timeout.0);
        p
    }

    pub fn build(&self, cx: &BuildContext) -> Result<Render, RollbackError> {
        Ok(Render {
            client: http_client(NAME, self.timeout.0)?,
            policy: cx.policy,
            config: self.clone(),
        })
    }
}

/// The Render target, built.
#[derive(Debug)]
pub struct Render {
    client: reqwest::Client,
    policy: RetryPolicy,
    config: RenderConfig,
}

impl Render {
    pub async fn rollback(&self, req: &RollbackRequest) -> Result<RollbackDone, RollbackError> {
        let start = Instant::now();
        let done = find_then_act(
            NAME,
            self.policy,
            || find_in(self.list(), req),
            |id| self.roll_back_to(id),
        )
        .await?;
        if !self.config.disable_autodeploy {
            return Ok(RollbackDone {
                detail: format!("{}; {STILL_ON}", done.detail),
                returned_to: done.returned_to,
            });
        }
        // The rollback stands whatever happens next: within the rest of
        // the deadline, auto-deploy is turned off, and the outcome says
        // whether it was.
        let policy = RetryPolicy {
            deadline: self.policy.deadline.saturating_sub(start.elapsed()),
            ..self.policy
        };
        let off = match with_retries(NAME, policy, |_| self.autodeploy_off()).await {
            Ok(()) => "render's auto-deploy for the service is now off (disable_autodeploy): \
a push no longer deploys until it is turned back on"
                .to_string(),
            Err(e) => format!(
                "turning the service's auto-deploy off failed ({}): if it is on, \
the next push deploys the bad commit again",
                e.reason()
            ),
        };
        Ok(RollbackDone {
            detail: format!("{}; {off}", done.detail),
            returned_to: done.returned_to,
        })
    }

    /// `PATCH /services/{serviceId}` with `{"autoDeploy": "no"}`.
    async fn autodeploy_off(&self) -> Attempt<()> {
        let key = self.config.api_key.expose();
        let r = self
            .client
            .patch(self.url(""))
            .bearer_auth(key)
            .header("accept", "application/json")
            .json(&json!({ "autoDeploy": "no" }));
        then(send(r, "turning auto-deploy off", &[key]).await, |_| {
            Attempt::Done(())
        })
    }

    fn url(&self, tail: &str) -> String {
        endpoint(
            &self.config.api_url,
            &format!("/services/{}{tail}", segment(&self.config.service_id)),
        )
    }

    /// After an interrupted call: lists the deploys and says where the bad
    /// one stands (see [`super::call::settled`]; a rollback is a new deploy).
    pub async fn reconcile(&self, req: &RollbackRequest) -> Result<Reconciled, RollbackError> {
        let list = with_retries(NAME, self.policy, |_| self.list()).await?;
        Ok(settled(NAME, &list, &req.deployment))
    }

    /// The service's live deploy: the newest whose status is `live`.
    /// Reads only.
    pub async fn live_deployment(&self) -> Result<String, RollbackError> {
        with_retries(NAME, live_policy(self.policy), |_| async {
            then(self.live_list().await, |items| {
                let live = items
                    .iter()
                    .map(|i| i.get("deploy").unwrap_or(i))
                    .filter_map(listed)
                    .find(|d| d.active);
                match live {
                    Some(d) => Attempt::Done(d.id),
                    None => Attempt::Fail("render lists no live deploy of the service".into()),
                }
            })
        })
        .await
    }

    async fn live_list(&self) -> Attempt<Vec<Value>> {
        let key = self.config.api_key.expose();
        let r = self
            .client
            .get(self.url("/deploys"))
            .query(&[("status", "live"), ("limit", "1")])
            .bearer_auth(key)
            .header("accept", "application/json");
        send_json(r, "reading the live deploy", &[key]).await
    }

    /// The service's recent deploys, newest first.
    async fn list(&self) -> Attempt<Vec<Listed>> {
        let key = self.config.api_key.expose();
        let r = self
            .client
            .get(self.url("/deploys"))
            .query(&[("limit", HISTORY)])
            .bearer_auth(key)
            .header("accept", "application/json");
        let what = "listing deploys";
        let items: Vec<Value> = match send_json(r, what, &[key]).await {
            Attempt::Done(v) => v,
            Attempt::Retry { reason, after } => return Attempt::Retry { reason, after },
            Attempt::Fail(r) => return Attempt::Fail(r),
        };
        Attempt::Done(
            items
                .iter()
                // Items are `{"deploy": {...}, "cursor": ...}`; a bare deploy is accepted too.
                .map(|i| i.get("deploy").unwrap_or(i))
                .filter_map(listed)
                .collect(),
        )
    }

    async fn roll_back_to(&self, id: String) -> Attempt<RollbackDone> {
        let key = self.config.api_key.expose();
        let r = self
            .client
            .post(self.url("/rollback"))
            .bearer_auth(key)
            .header("accept", "application/json")
            .json(&json!({ "deployId": id }));
        match send(r, "the rollback call", &[key]).await {
            Attempt::Done(body) => {
                let new = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string));
                let detail = match new {
                    Some(new) => format!("render started deploy {new} from deploy {id}"),
                    None => format!("render is rolling back to deploy {id}"),
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

fn listed(deploy: &Value) -> Option<Listed> {
    let id = deploy.get("id")?.as_str()?.to_string();
    let status = deploy
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Some(Listed {
        id,
        aliases: vec![],
        active: status == "live",
        eligible: matches!(status.as_str(), "live" | "deactivated"),
        status,
    })
}
