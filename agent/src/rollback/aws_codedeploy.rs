//! The `aws_codedeploy` target: a CodeDeploy deployment group whose
//! deployment in progress is stopped, and rolled back by CodeDeploy.
//!
//! CodeDeploy speaks JSON 1.1 (`POST /`, `X-Amz-Target:
//! CodeDeploy_20141006.<Operation>`). A rollback lists the group's
//! unfinished deployments (`ListDeployments` with `applicationName`,
//! `deploymentGroupName` and `includeOnlyStatuses` `Created`, `Queued`,
//! `InProgress` and `Ready`) and stops the bad one (or, when its id is not
//! listed, the first listed) with `StopDeployment` and
//! `{"deploymentId", "autoRollbackEnabled": true}`: CodeDeploy then
//! redeploys the group's last successful revision. A deployment that has
//! already finished cannot be stopped, and that is a final error.
//!
//! The live deployment is read with `GetDeploymentGroup`: the group's
//! `lastAttemptedDeployment` while it is unfinished (the deployment on its
//! way in is the one to judge), else its `lastSuccessfulDeployment`. After
//! an interrupted call, `GetDeployment` says whether the bad deployment was
//! stopped or failed (done) or is still unfinished (not done).
//! Shapes: the CodeDeploy API reference, as botocore's model has it
//! (`botocore/data/codedeploy/2014-10-06/service-2.json`:
//! `GetDeploymentGroup`, `DeploymentGroupInfo`, `LastDeploymentInfo`,
//! `ListDeployments`, `StopDeployment`, `GetDeployment`, `DeploymentInfo`).

use serde::Deserialize;
use serde_json::{json, Value};

use super::aws::{api_base, check_region, AwsEnv, Signer};
use super::call::{
    find_then_act, http_client, live_policy, then, with_retries, BuildContext, RollbackError,
};
use super::problem::{check_present, check_timeout, check_url, default_attempt_timeout, Problem};
use crate::duration::Dur;
use crate::evidence::{Reconciled, RollbackDone, RollbackRequest};
use crate::retry::{Attempt, RetryPolicy};

pub const NAME: &str = "aws_codedeploy";

/// The JSON 1.1 target prefix of the CodeDeploy API.
pub const PREFIX: &str = "CodeDeploy_20141006";

/// The statuses of a deployment that has not finished (`DeploymentStatus`).
pub const UNFINISHED: &[&str] = &["Created", "Queued", "InProgress", "Ready"];

/// `[rollback.aws_codedeploy]`: the group's unfinished deployment is
/// stopped with `autoRollbackEnabled`, and CodeDeploy redeploys its last
/// successful revision. With `from_platform`, the deployment id is the
/// unfinished deployment's, else the last successful one's. Credentials
/// come from the AWS credential chain (SECURITY.md), never from this table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsCodeDeployConfig {
    /// The CodeDeploy application's name. Required.
    pub application: String,
    /// The deployment group's name. Required.
    pub deployment_group: String,
    /// The AWS region, such as `us-east-1`. Required.
    pub region: String,
    /// The CodeDeploy API's base URL. Default `https://codedeploy.{region}.amazonaws.com`.
    #[serde(default)]
    pub api_url: Option<String>,
    /// How long one request may take. Default `30s`.
    #[serde(default = "default_attempt_timeout")]
    pub timeout: Dur,
}

impl AwsCodeDeployConfig {
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        check_present(&mut p, "application", &self.application);
        check_present(&mut p, "deployment_group", &self.deployment_group);
        check_region(&mut p, "region", &self.region);
        if let Some(u) = &self.api_url {
            check_url(&mut p, "api_url", u, false);
        }
        check_timeout(&mut p, "timeout", self.timeout.0);
        p
    }

    pub fn build(&self, cx: &BuildContext) -> Result<AwsCodeDeploy, RollbackError> {
        self.build_with(cx, AwsEnv::process())
    }

    /// [`Self::build`], with the credential chain reading `env`.
    pub fn build_with(
        &self,
        cx: &BuildContext,
        env: AwsEnv,
    ) -> Result<AwsCodeDeploy, RollbackError> {
        let client = http_client(NAME, self.timeout.0)?;
        Ok(AwsCodeDeploy {
            signer: Signer::new(NAME, "codedeploy", &self.region, client, env)?,
            base: api_base(&self.api_url, "codedeploy", &self.region),
            policy: cx.policy,
            config: self.clone(),
        })
    }
}

/// The CodeDeploy target, built.
#[derive(Debug)]
pub struct AwsCodeDeploy {
    signer: Signer,
    base: String,
    policy: RetryPolicy,
    config: AwsCodeDeployConfig,
}

impl AwsCodeDeploy {
    async fn call(&self, op: &str, body: Value, what: &str) -> Attempt<Value> {
        self.signer
            .json11(&self.base, &format!("{PREFIX}.{op}"), &body, what)
            .await
    }

    /// The group's unfinished deployments.
    async fn unfinished(&self) -> Attempt<Vec<String>> {
        let what = "listing deployments (ListDeployments)";
        let body = json!({
            "applicationName": self.config.application,
            "deploymentGroupName": self.config.deployment_group,
            "includeOnlyStatuses": UNFINISHED,
        });
        then(self.call("ListDeployments", body, what).await, |v| {
            Attempt::Done(
                v.get("deployments")
                    .and_then(Value::as_array)
                    .map(|l| {
                        l.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        })
    }

    pub async fn rollback(&self, req: &RollbackRequest) -> Result<RollbackDone, RollbackError> {
        find_then_act(
            NAME,
            self.policy,
            || async {
                then(self.unfinished().await, |list| {
                    match list.iter().find(|d| **d == req.deployment).or(list.first()) {
                        Some(d) => Attempt::Done(d.clone()),
                        None => Attempt::Fail(format!(
                            "no unfinished deployment of group {} to stop: CodeDeploy rolls back \
only a deployment it is still making",
                            self.config.deployment_group
                        )),
                    }
                })
            },
            |id| self.stop(id),
        )
        .await
    }

    async fn stop(&self, id: String) -> Attempt<RollbackDone> {
        let what = "the rollback call (StopDeployment)";
        let body = json!({"deploymentId": id, "autoRollbackEnabled": true});
        then(self.call("StopDeployment", body, what).await, |v| {
            let status = v.get("status").and_then(Value::as_str).unwrap_or("Pending");
            Attempt::Done(RollbackDone {
                returned_to: None,
                detail: format!(
                    "codedeploy is stopping deployment {id} with rollback (status {status}): \
the group's last successful revision is deployed again"
                ),
            })
        })
    }

    /// After an interrupted call: `GetDeployment` of the bad deployment.
    pub async fn reconcile(&self, req: &RollbackRequest) -> Result<Reconciled, RollbackError> {
        let what = "reading the deployment (GetDeployment)";
        let v = with_retries(NAME, self.policy, |_| {
            self.call(
                "GetDeployment",
                json!({"deploymentId": req.deployment}),
                what,
            )
        })
        .await?;
        let status = v
            .pointer("/deploymentInfo/status")
            .and_then(Value::as_str)
            .unwrap_or("");
        let id = &req.deployment;
        Ok(match status {
            "Stopped" | "Failed" => Reconciled::Done(RollbackDone {
                returned_to: None,
                detail: format!("codedeploy deployment {id} is {status}"),
            }),
            s if UNFINISHED.contains(&s) || s == "Baking" => {
                Reconciled::NotDone(format!("codedeploy deployment {id} is still {s}"))
            }
            s => Reconciled::Unknown(format!("codedeploy deployment {id} is {s:?}")),
        })
    }

    /// The group's unfinished last attempted deployment, else its last
    /// successful one. Reads only.
    pub async fn live_deployment(&self) -> Result<String, RollbackError> {
        let what = "reading the deployment group (GetDeploymentGroup)";
        with_retries(NAME, live_policy(self.policy), |_| async {
            let body = json!({
                "applicationName": self.config.application,
                "deploymentGroupName": self.config.deployment_group,
            });
            then(
                self.call("GetDeploymentGroup", body, what).await,
                |v| match live_of(&v) {
                    Some(id) => Attempt::Done(id),
                    None => Attempt::Fail(format!(
                        "{what}: the group has no deployment in progress and none that succeeded"
                    )),
                },
            )
        })
        .await
    }
}

/// The live deployment of a `GetDeploymentGroup` answer.
fn live_of(v: &Value) -> Option<String> {
    let info = v.get("deploymentGroupInfo")?;
    let id = |d: &Value| {
        d.get("deploymentId")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    info.get("lastAttemptedDeployment")
        .filter(|d| {
            d.get("status")
                .and_then(Value::as_str)
                .is_some_and(|s| UNFINISHED.contains(&s))
        })
        .and_then(id)
        .or_else(|| info.get("lastSuccessfulDeployment").and_then(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_deployment_is_the_unfinished_attempt_else_the_last_success() {
        let group = |attempt: &str| {
            json!({"deploymentGroupInfo": {
                "lastAttemptedDeployment": {"deploymentId": "d-NEW", "status": attempt},
                "lastSuccessfulDeployment": {"deploymentId": "d-OLD", "status": "Succeeded"}}})
        };
        assert_eq!(live_of(&group("InProgress")).as_deref(), Some("d-NEW"));
        assert_eq!(live_of(&group("Failed")).as_deref(), Some("d-OLD"));
        assert_eq!(live_of(&json!({"deploymentGroupInfo": {}})), None);
    }
}
