//! The `vercel` target: Vercel's Instant Rollback through its REST API.
//!
//! It lists the project's recent production deployments
//! (`GET /v6/deployments?projectId=…&target=production`), picks the one to
//! return to (see [`super::call::choose`]: `READY` and, when the list says
//! so, `isRollbackCandidate`; one marked `isRollbackCandidate: false` is never
//! chosen; when the current id is not listed, the newest `READY` one counts
//! as current), and calls `POST /v1/projects/{projectId}/rollback/{deploymentId}`
//! with the reason as `description` and the body `{}` (the official CLI,
//! github.com/vercel/vercel `packages/cli/src/commands/rollback/
//! request-rollback.ts`, sends `body: {}`, marked required). `teamId` is
//! added to every request when configured.
//!
//! A `201` only queues the rollback: the production domains move in an
//! alias job. As the CLI does (`commands/rollback/status.ts`), the project
//! is read again (`GET /v9/projects/{idOrName}`) until its
//! `lastAliasRequest` for the deployment (`toDeploymentId`) has the
//! `jobStatus` `succeeded` (or `skipped`), or `failed`, within the
//! `[rollback] deadline`; `pending` and `in-progress` are waited out. The
//! SDK has the same shape (`GetProjectLastAliasRequest` under
//! `src/models/`: `fromDeploymentId`, `toDeploymentId`, `jobStatus`,
//! `requestedAt`, `type`). After an Instant Rollback Vercel turns off the
//! automatic assignment of production domains: new production deployments
//! do not go live until one is promoted. The outcome says so.
//!
//! The live deployment is the project's production deployment
//! (`GET /v9/projects/{idOrName}`, `targets.production.id`): the one its
//! production domains point at, moved by a promotion or an Instant
//! Rollback. Checked against Vercel's OpenAPI spec as its generated SDK has
//! it (github.com/vercel/sdk: `src/funcs/projectsGetProject.ts` for the
//! path and `teamId`, `GetProjectResponseBody.targets` and
//! `GetProjectTargets.id` under `src/models/`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};

use super::call::{
    endpoint, find_in, find_then_act, http_client, live_policy, segment, send, send_json, then,
    truncate, with_retries, BuildContext, Listed, RollbackError,
};
use super::problem::{check_present, check_timeout, check_url, default_attempt_timeout, Problem};
use crate::duration::Dur;
use crate::evidence::{Reconciled, RollbackDone, RollbackRequest};
use crate::retry::{Attempt, RetryPolicy};
use crate::secret::Secret;

const NAME: &str = "vercel";

/// How many recent production deployments are searched.
const HISTORY: u32 = 20;

/// How often the alias job of a queued rollback is read.
const POLL: Duration = Duration::from_millis(250);

/// How much older than the call an alias request may look and still be
/// its own (clocks differ); the CLI counts the last 3 minutes as recent.
const RECENT_MS: u64 = 3 * 60 * 1000;

/// What the outcome of every rollback adds: production stays put.
const HELD: &str = "vercel turned off the automatic assignment of production domains: \
new production deployments do not go live until one is promoted";

/// `[rollback.vercel]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VercelConfig {
    /// A Vercel access token, sent as `Authorization: Bearer`. Required.
    pub token: Secret,
    /// The project's id or name. Required.
    pub project_id: String,
    /// The team that owns the project, sent as `teamId`. Default none.
    #[serde(default)]
    pub team_id: Option<String>,
    /// The API's base URL. Default `https://api.vercel.com`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// How long one request may take. Default `30s`.
    #[serde(default = "default_attempt_timeout")]
    pub timeout: Dur,
}

fn default_api_url() -> String {
    "https://api.vercel.com".into()
}

impl VercelConfig {
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        check_present(&mut p, "token", self.token.expose());
        check_present(&mut p, "project_id", &self.project_id);
        if let Some(team) = &self.team_id {
            check_present(&mut p, "team_id", team);
        }
        check_url(&mut p, "api_url", &self.api_url, false);
        check_timeout(&mut p, "timeout", self.timeout.0);
        p
    }

    pub fn build(&self, cx: &BuildContext) -> Result<Vercel, RollbackError> {
        Ok(Vercel {
            client: http_client(NAME, self.timeout.0)?,
            policy: cx.policy,
            config: self.clone(),
        })
    }
}

/// The Vercel target, built.
#[derive(Debug)]
pub struct Vercel {
    client: reqwest::Client,
    policy: RetryPolicy,
    config: VercelConfig,
}

impl Vercel {
    pub async fn rollback(&self, req: &RollbackRequest) -> Result<RollbackDone, RollbackError> {
        let start = Instant::now();
        let asked_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let done = find_then_act(
            NAME,
            self.policy,
            || find_in(self.list(), req),
            |id| self.roll_back_to(id, req),
        )
        .await?;
        let Some(id) = done.returned_to.clone() else {
            return Ok(done);
        };
        // The rest of the deadline, read every `POLL`.
        let policy = RetryPolicy {
            deadline: self.policy.deadline.saturating_sub(start.elapsed()),
            ..self.policy
        };
        let status = with_retries(NAME, policy, |_| self.alias_job(&id, asked_ms)).await?;
        Ok(RollbackDone {
            detail: format!("{} ({status}); {HELD}", done.detail),
            returned_to: done.returned_to,
        })
    }

    /// The alias job of the rollback to `id`, read once: done when it
    /// `succeeded` (or was `skipped`), failed for good when it `failed`,
    /// read again while `pending` or `in-progress` or not yet shown. An
    /// alias request to `id` from well before the call (`requestedAt`, in
    /// milliseconds) is an earlier one, not this one.
    async fn alias_job(&self, id: &str, asked_ms: u64) -> Attempt<String> {
        then(self.project().await, |doc| {
            let job = doc.get("lastAliasRequest").filter(|j| {
                let recent = j
                    .get("requestedAt")
                    .and_then(Value::as_u64)
                    .is_none_or(|at| at + RECENT_MS >= asked_ms);
                j.get("toDeploymentId").and_then(Value::as_str) == Some(id) && recent
            });
            let status = job
                .and_then(|j| j.get("jobStatus"))
                .and_then(Value::as_str)
                .unwrap_or("");
            match status {
                "succeeded" | "skipped" => Attempt::Done(format!("alias job {status}")),
                "failed" => Attempt::Fail(format!(
                    "vercel's alias job for the rollback to {id} failed (lastAliasRequest.jobStatus)"
                )),
                "" => Attempt::Retry {
                    reason: format!("vercel shows no alias job for the rollback to {id} yet"),
                    after: Some(POLL),
                },
                other => Attempt::Retry {
                    reason: format!("vercel's alias job for the rollback to {id} is {other}"),
                    after: Some(POLL),
                },
            }
        })
    }

    fn team(&self) -> Vec<(&'static str, String)> {
        self.config
            .team_id
            .iter()
            .map(|t| ("teamId", t.clone()))
            .collect()
    }

    /// After an interrupted call: whether the project's production is still
    /// the bad deployment (`GET /v9/projects/{id}`, `targets.production.id`).
    /// An Instant Rollback makes no new deployment, so the list alone cannot
    /// tell; it only shows that the bad deployment is one of Vercel's.
    pub async fn reconcile(&self, req: &RollbackRequest) -> Result<Reconciled, RollbackError> {
        let list = with_retries(NAME, self.policy, |_| self.list()).await?;
        let dep = &req.deployment;
        if !list.iter().any(|d| &d.id == dep) {
            return Ok(Reconciled::Unknown(format!(
                "{dep} is not among the {} production deployments vercel lists",
                list.len()
            )));
        }
        let serving = with_retries(NAME, self.policy, |_| self.production()).await?;
        Ok(match serving {
            Some(id) if &id == dep => {
                Reconciled::NotDone(format!("vercel's production is still deployment {id}"))
            }
            Some(id) => Reconciled::Done(RollbackDone {
                detail: format!("vercel's production is now deployment {id}, not {dep}"),
                returned_to: Some(id),
            }),
            None => Reconciled::Unknown(
                "vercel's project shows no production deployment (targets.production.id)".into(),
            ),
        })
    }

    /// The deployment the project's production domains point at. Reads only.
    pub async fn live_deployment(&self) -> Result<String, RollbackError> {
        with_retries(NAME, live_policy(self.policy), |_| async {
            then(self.production().await, |id| match id {
                Some(id) => Attempt::Done(id),
                None => Attempt::Fail(
                    "vercel's project shows no production deployment (targets.production.id)"
                        .into(),
                ),
            })
        })
        .await
    }

    /// The project's recent production deployments, newest first.
    async fn list(&self) -> Attempt<Vec<Listed>> {
        let token = self.config.token.expose();
        let r = self
            .client
            .get(endpoint(&self.config.api_url, "/v6/deployments"))
            .query(&[
                ("projectId", self.config.project_id.clone()),
                ("target", "production".into()),
                ("limit", HISTORY.to_string()),
            ])
            .query(&self.team())
            .bearer_auth(token);
        let what = "listing deployments";
        let doc: Value = match send_json(r, what, &[token]).await {
            Attempt::Done(v) => v,
            Attempt::Retry { reason, after } => return Attempt::Retry { reason, after },
            Attempt::Fail(r) => return Attempt::Fail(r),
        };
        let Some(items) = doc.get("deployments").and_then(Value::as_array) else {
            return Attempt::Retry {
                reason: format!("{what}: unexpected answer (no deployments)"),
                after: None,
            };
        };
        let mut items: Vec<&Value> = items.iter().collect();
        // Newest first, by creation time in milliseconds.
        items.sort_by_key(|d| std::cmp::Reverse(d.get("created").and_then(Value::as_u64)));
        Attempt::Done(items.into_iter().filter_map(listed).collect())
    }

    /// The deployment the project's production domains point at.
    async fn production(&self) -> Attempt<Option<String>> {
        then(self.project().await, |doc| {
            Attempt::Done(
                doc.pointer("/targets/production/id")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            )
        })
    }

    /// The project (`GET /v9/projects/{idOrName}`).
    async fn project(&self) -> Attempt<Value> {
        let token = self.config.token.expose();
        let path = format!("/v9/projects/{}", segment(&self.config.project_id));
        let r = self
            .client
            .get(endpoint(&self.config.api_url, &path))
            .query(&self.team())
            .bearer_auth(token);
        send_json(r, "reading the project", &[token]).await
    }

    async fn roll_back_to(&self, id: String, req: &RollbackRequest) -> Attempt<RollbackDone> {
        let token = self.config.token.expose();
        let path = format!(
            "/v1/projects/{}/rollback/{}",
            segment(&self.config.project_id),
            segment(&id)
        );
        let r = self
            .client
            .post(endpoint(&self.config.api_url, &path))
            .query(&[("description", truncate(&req.reason, 200))])
            .query(&self.team())
            .bearer_auth(token)
            .json(&json!({}));
        match send(r, "the rollback call", &[token]).await {
            Attempt::Done(_) => Attempt::Done(RollbackDone {
                detail: format!("vercel points production at deployment {id}"),
                returned_to: Some(id),
            }),
            Attempt::Retry { reason, after } => Attempt::Retry { reason, after },
            Attempt::Fail(r) => Attempt::Fail(r),
        }
    }
}

fn listed(d: &Value) -> Option<Listed> {
    let id = d
        .get("uid")
        .or_else(|| d.get("id"))
        .and_then(Value::as_str)?
        .to_string();
    let status = d
        .get("readyState")
        .or_else(|| d.get("state"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ready = status == "READY";
    // Absent (or null) says nothing; `false` rules the deployment out.
    let candidate = d.get("isRollbackCandidate").and_then(Value::as_bool) != Some(false);
    Some(Listed {
        id,
        aliases: vec![],
        active: ready,
        eligible: ready && candidate,
        status,
    })
}
