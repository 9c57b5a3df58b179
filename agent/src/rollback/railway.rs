//! The `railway` target: Railway's public GraphQL API.
//!
//! It lists the service's recent deployments in the environment
//! (`deployments(input: {projectId, serviceId, environmentId}, first: 20)`),
//! picks the one to return to (see [`super::call::choose`]: `SUCCESS`, or
//! `REMOVED` with `canRollback: true`), and calls
//! `mutation deploymentRollback(id: String!): Boolean!`. An HTTP 200 with
//! `errors[]` is a failure: "not authorized" is final, a rate limit is
//! retried, anything else is final.
//!
//! The live deployment is read from the same list: the newest deployment
//! whose status is `SUCCESS`, `SLEEPING` or `CRASHED` (see [`LIVE`]).

use serde::Deserialize;
use serde_json::{json, Value};

use super::call::{
    find_in, find_then_act, http_client, live_policy, send_json, settled, then, with_retries,
    BuildContext, Listed, RollbackError,
};
use super::problem::{check_present, check_timeout, check_url, default_attempt_timeout, Problem};
use crate::duration::Dur;
use crate::evidence::{Reconciled, RollbackDone, RollbackRequest};
use crate::retry::{Attempt, RetryPolicy};
use crate::secret::Secret;

const NAME: &str = "railway";

/// How many recent deployments are searched for the one to return to.
const HISTORY: u32 = 20;

/// `deployments(input: DeploymentListInput!, first: Int)`, as Railway's
/// public GraphQL schema has it (`src/gql/schema.json` of the railway CLI,
/// github.com/railwayapp/cli), newest first.
const LIST_QUERY: &str = "query backstopDeployments($projectId: String!, $serviceId: String!, $environmentId: String!, $first: Int) { deployments(input: {projectId: $projectId, serviceId: $serviceId, environmentId: $environmentId}, first: $first) { edges { node { id status createdAt canRollback } } } }";

const ROLLBACK_MUTATION: &str =
    "mutation backstopRollback($id: String!) { deploymentRollback(id: $id) }";

/// The statuses of a deployment that is live, or was the last one live.
///
/// Railway's public GraphQL schema (`enum DeploymentStatus` in
/// `src/gql/schema.json` of the railway CLI, github.com/railwayapp/cli) has
/// BUILDING, CRASHED, DEPLOYING, FAILED, INITIALIZING, NEEDS_APPROVAL,
/// QUEUED, REMOVED, REMOVING, SKIPPED, SLEEPING, SUCCESS and WAITING; the
/// CLI itself counts SUCCESS, CRASHED and SLEEPING as a deployment that
/// took over (`is_stable_status` in `src/commands/output/service_summary.rs`).
/// A crash-looping deployment is CRASHED, and it is the live one: the one
/// before it was removed when it took over. One still on its way
/// (QUEUED, WAITING, INITIALIZING, BUILDING, DEPLOYING, NEEDS_APPROVAL) or
/// one that never took over (FAILED, SKIPPED) leaves the one before it
/// serving, and REMOVING and REMOVED are on their way out or gone.
pub const LIVE: &[&str] = &["SUCCESS", "SLEEPING", "CRASHED"];

/// `[rollback.railway]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RailwayConfig {
    /// An account, team or project token. Required.
    pub token: Secret,
    /// `account` or `team` (sent as `Authorization: Bearer`), or `project`
    /// (sent as `Project-Access-Token`). Default `account`.
    #[serde(default)]
    pub token_kind: TokenKind,
    /// Required.
    pub project_id: String,
    /// Required.
    pub service_id: String,
    /// Required.
    pub environment_id: String,
    /// The GraphQL endpoint. Default `https://backboard.railway.com/graphql/v2`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// How long one request may take. Default `30s`.
    #[serde(default = "default_attempt_timeout")]
    pub timeout: Dur,
}

/// Which kind of Railway token `token` is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    #[default]
    Account,
    Team,
    Project,
}

fn default_api_url() -> String {
    "https://backboard.railway.com/graphql/v2".into()
}

impl RailwayConfig {
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        check_present(&mut p, "token", self.token.expose());
        check_present(&mut p, "project_id", &self.project_id);
        check_present(&mut p, "service_id", &self.service_id);
        check_present(&mut p, "environment_id", &self.environment_id);
        check_url(&mut p, "api_url", &self.api_url, false);
        check_timeout(&mut p, "timeout", self.timeout.0);
        p
    }

    pub fn build(&self, cx: &BuildContext) -> Result<Railway, RollbackError> {
        Ok(Railway {
            client: http_client(NAME, self.timeout.0)?,
            policy: cx.policy,
            config: self.clone(),
        })
    }
}

/// The Railway target, built.
#[derive(Debug)]
pub struct Railway {
    client: reqwest::Client,
    policy: RetryPolicy,
    config: RailwayConfig,
}

impl Railway {
    pub async fn rollback(&self, req: &RollbackRequest) -> Result<RollbackDone, RollbackError> {
        find_then_act(
            NAME,
            self.policy,
            || find_in(self.list(), req),
            |id| self.roll_back_to(id),
        )
        .await
    }

    /// After an interrupted call: lists the deployments and says where the
    /// bad one stands (see [`super::call::settled`]).
    pub async fn reconcile(&self, req: &RollbackRequest) -> Result<Reconciled, RollbackError> {
        let list = with_retries(NAME, self.policy, |_| self.list()).await?;
        Ok(settled(NAME, &list, &req.deployment))
    }

    /// The newest of the service's deployments in the environment that is
    /// live, or crashed while live (see [`LIVE`]). Reads only.
    pub async fn live_deployment(&self) -> Result<String, RollbackError> {
        with_retries(NAME, live_policy(self.policy), |_| async {
            then(self.list().await, |list| {
                match list.iter().find(|d| LIVE.contains(&d.status.as_str())) {
                    Some(d) => Attempt::Done(d.id.clone()),
                    None => Attempt::Fail(format!(
                        "none of the {} newest deployments is live ({})",
                        list.len(),
                        LIVE.join(", ")
                    )),
                }
            })
        })
        .await
    }

    /// The service's recent deployments, newest first.
    async fn list(&self) -> Attempt<Vec<Listed>> {
        let c = &self.config;
        let vars = json!({
            "projectId": c.project_id,
            "serviceId": c.service_id,
            "environmentId": c.environment_id,
            "first": HISTORY,
        });
        let data = match self.graphql(LIST_QUERY, vars, "listing deployments").await {
            Attempt::Done(d) => d,
            Attempt::Retry { reason, after } => return Attempt::Retry { reason, after },
            Attempt::Fail(r) => return Attempt::Fail(r),
        };
        let Some(edges) = data.pointer("/deployments/edges").and_then(Value::as_array) else {
            return Attempt::Retry {
                reason: "listing deployments: unexpected answer (no deployments.edges)".into(),
                after: None,
            };
        };
        Attempt::Done(
            edges
                .iter()
                .filter_map(|e| e.get("node"))
                .filter_map(listed)
                .collect(),
        )
    }

    async fn roll_back_to(&self, id: String) -> Attempt<RollbackDone> {
        let data = match self
            .graphql(ROLLBACK_MUTATION, json!({ "id": id }), "the rollback call")
            .await
        {
            Attempt::Done(d) => d,
            Attempt::Retry { reason, after } => return Attempt::Retry { reason, after },
            Attempt::Fail(r) => return Attempt::Fail(r),
        };
        match data.get("deploymentRollback").and_then(Value::as_bool) {
            Some(true) => Attempt::Done(RollbackDone {
                returned_to: Some(id.clone()),
                detail: format!("railway is rolling back to deployment {id}"),
            }),
            Some(false) => {
                Attempt::Fail(format!("railway refused to roll back to deployment {id}"))
            }
            None => {
                Attempt::Fail("the rollback call: unexpected answer (no deploymentRollback)".into())
            }
        }
    }

    /// One GraphQL request; `data` when it worked.
    async fn graphql(&self, query: &str, variables: Value, what: &str) -> Attempt<Value> {
        let c = &self.config;
        let token = c.token.expose();
        let mut r = self
            .client
            .post(&c.api_url)
            .json(&json!({ "query": query, "variables": variables }));
        r = match c.token_kind {
            TokenKind::Account | TokenKind::Team => r.bearer_auth(token),
            TokenKind::Project => r.header("Project-Access-Token", token),
        };
        let doc: Value = match send_json(r, what, &[token]).await {
            Attempt::Done(v) => v,
            Attempt::Retry { reason, after } => return Attempt::Retry { reason, after },
            Attempt::Fail(r) => return Attempt::Fail(r),
        };
        if let Some(first) = doc
            .get("errors")
            .and_then(Value::as_array)
            .and_then(|e| e.first())
        {
            let message = first
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            let message = super::call::scrub(&super::call::truncate(message, 200), &[token]);
            let lower = message.to_ascii_lowercase();
            let reason = format!("{what}: GraphQL error: {message}");
            return if lower.contains("rate limit") || lower.contains("too many requests") {
                Attempt::Retry {
                    reason,
                    after: None,
                }
            } else {
                // "Not Authorized" and everything else: another try would
                // get the same answer.
                Attempt::Fail(reason)
            };
        }
        match doc.get("data") {
            Some(d) if d.is_object() => Attempt::Done(d.clone()),
            _ => Attempt::Retry {
                reason: format!("{what}: unexpected answer (no data)"),
                after: None,
            },
        }
    }
}

fn listed(node: &Value) -> Option<Listed> {
    let id = node.get("id")?.as_str()?.to_string();
    let status = node
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let can_rollback = node.get("canRollback").and_then(Value::as_bool);
    let active = matches!(status.as_str(), "SUCCESS" | "SLEEPING");
    let eligible = match status.as_str() {
        "SUCCESS" | "SLEEPING" => can_rollback != Some(false),
        "REMOVED" => can_rollback == Some(true),
        _ => false,
    };
    Some(Listed {
        id,
        aliases: vec![],
        active,
        eligible,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_deployment_is_eligible_only_when_railway_says_it_can_roll_back() {
        let node =
            |status: &str, can: bool| json!({"id": "d", "status": status, "canRollback": can});
        assert!(listed(&node("REMOVED", true)).unwrap().eligible);
        assert!(!listed(&node("REMOVED", false)).unwrap().eligible);
        assert!(listed(&node("SUCCESS", true)).unwrap().eligible);
        assert!(!listed(&node("FAILED", true)).unwrap().eligible);
        assert!(!listed(&node("CRASHED", true)).unwrap().eligible);
    }
}
