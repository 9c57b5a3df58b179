//! The `aws_ecs` target: an ECS service, returned to its last stable task
//! definition.
//!
//! ECS speaks JSON 1.1 (`POST /`, `X-Amz-Target:
//! AmazonEC2ContainerServiceV20141113.<Operation>`, `Content-Type:
//! application/x-amz-json-1.1`). The live deployment is the service's task
//! definition ARN: `DescribeServices` (`{"cluster", "services": [name]}`),
//! the `taskDefinition` of the deployment whose `status` is `PRIMARY`, else
//! the service's own `taskDefinition`.
//!
//! A rollback first asks for the service's deployment in progress
//! (`ListServiceDeployments` with `"status": ["IN_PROGRESS"]`): when there
//! is one, it is stopped with `StopServiceDeployment` and `"stopType":
//! "ROLLBACK"`, and ECS returns the service to the revision it was
//! deploying from. Otherwise (the deployment finished, or the API has no
//! `ListServiceDeployments`) the service is updated with `UpdateService`
//! and `"taskDefinition": <return_to>`, the last stable task definition.
//! Shapes: the Amazon ECS API reference, as botocore's model has it
//! (`botocore/data/ecs/2014-11-13/service-2.json`: `DescribeServices`,
//! `Service`, `Deployment`, `UpdateService`, `ListServiceDeployments`,
//! `ServiceDeploymentBrief`, `StopServiceDeployment`).

use serde::Deserialize;
use serde_json::{json, Value};

use super::aws::{api_base, check_region, settled_live, AwsEnv, Signer};
use super::call::{http_client, live_policy, then, with_retries, BuildContext, RollbackError};
use super::problem::{check_present, check_timeout, check_url, default_attempt_timeout, Problem};
use crate::duration::Dur;
use crate::evidence::{Reconciled, RollbackDone, RollbackRequest};
use crate::retry::{Attempt, RetryPolicy};

pub const NAME: &str = "aws_ecs";

/// The JSON 1.1 target prefix of the ECS API.
pub const PREFIX: &str = "AmazonEC2ContainerServiceV20141113";

/// `[rollback.aws_ecs]`: a service deployment in progress is stopped with
/// `ROLLBACK`; otherwise the service is updated to the last stable task
/// definition. With `from_platform`, the deployment id is the PRIMARY
/// deployment's task definition ARN. Credentials come from the AWS
/// credential chain (SECURITY.md), never from this table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsEcsConfig {
    /// The cluster's name or ARN. Required.
    pub cluster: String,
    /// The service's name or ARN. Required.
    pub service: String,
    /// The AWS region, such as `us-east-1`. Required.
    pub region: String,
    /// The ECS API's base URL. Default `https://ecs.{region}.amazonaws.com`.
    #[serde(default)]
    pub api_url: Option<String>,
    /// How long one request may take. Default `30s`.
    #[serde(default = "default_attempt_timeout")]
    pub timeout: Dur,
}

impl AwsEcsConfig {
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        check_present(&mut p, "cluster", &self.cluster);
        check_present(&mut p, "service", &self.service);
        check_region(&mut p, "region", &self.region);
        if let Some(u) = &self.api_url {
            check_url(&mut p, "api_url", u, false);
        }
        check_timeout(&mut p, "timeout", self.timeout.0);
        p
    }

    pub fn build(&self, cx: &BuildContext) -> Result<AwsEcs, RollbackError> {
        self.build_with(cx, AwsEnv::process())
    }

    /// [`Self::build`], with the credential chain reading `env`.
    pub fn build_with(&self, cx: &BuildContext, env: AwsEnv) -> Result<AwsEcs, RollbackError> {
        let client = http_client(NAME, self.timeout.0)?;
        Ok(AwsEcs {
            signer: Signer::new(NAME, "ecs", &self.region, client, env)?,
            base: api_base(&self.api_url, "ecs", &self.region),
            policy: cx.policy,
            config: self.clone(),
        })
    }
}

/// The ECS target, built.
#[derive(Debug)]
pub struct AwsEcs {
    signer: Signer,
    base: String,
    policy: RetryPolicy,
    config: AwsEcsConfig,
}

/// What a rollback does.
enum Plan {
    Stop(String),
    Update(String),
}

impl AwsEcs {
    async fn call(&self, op: &str, body: Value, what: &str) -> Attempt<Value> {
        self.signer
            .json11(&self.base, &format!("{PREFIX}.{op}"), &body, what)
            .await
    }

    /// The task definition of the service's PRIMARY deployment.
    async fn primary(&self) -> Attempt<String> {
        let what = "reading the service (DescribeServices)";
        let body = json!({"cluster": self.config.cluster, "services": [self.config.service]});
        then(
            self.call("DescribeServices", body, what).await,
            |v| match primary_task_definition(&v) {
                Ok(td) => Attempt::Done(td),
                Err(e) => Attempt::Fail(format!("{what}: {e}")),
            },
        )
    }

    /// The ARN of the service deployment in progress, if any; `None` too
    /// when the API does not know `ListServiceDeployments`.
    async fn in_progress(&self) -> Attempt<Option<String>> {
        let what = "listing service deployments (ListServiceDeployments)";
        let body = json!({
            "cluster": self.config.cluster,
            "service": self.config.service,
            "status": ["IN_PROGRESS"],
        });
        match self.call("ListServiceDeployments", body, what).await {
            Attempt::Done(v) => Attempt::Done(
                v.get("serviceDeployments")
                    .and_then(Value::as_array)
                    .and_then(|l| {
                        l.iter()
                            .filter(|d| {
                                d.get("status")
                                    .and_then(Value::as_str)
                                    .is_none_or(|s| s == "IN_PROGRESS")
                            })
                            .find_map(|d| d.get("serviceDeploymentArn")?.as_str())
                    })
                    .map(str::to_string),
            ),
            // An endpoint without the operation, or a region without the
            // feature: there is no service deployment to stop.
            Attempt::Fail(r)
                if r.contains("UnknownOperationException")
                    || r.contains("UnsupportedFeatureException") =>
            {
                Attempt::Done(None)
            }
            Attempt::Retry { reason, after } => Attempt::Retry { reason, after },
            Attempt::Fail(r) => Attempt::Fail(r),
        }
    }

    pub async fn rollback(&self, req: &RollbackRequest) -> Result<RollbackDone, RollbackError> {
        let plan = std::sync::Mutex::new(None::<String>);
        let plan = &plan;
        with_retries(NAME, self.policy, |_| async move {
            let cached = plan.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let chosen = match cached {
                Some(arn) => Plan::Stop(arn),
                None => match self.in_progress().await {
                    Attempt::Done(Some(arn)) => {
                        *plan.lock().unwrap_or_else(|e| e.into_inner()) = Some(arn.clone());
                        Plan::Stop(arn)
                    }
                    Attempt::Done(None) => {
                        match req.return_to.as_deref().filter(|t| !t.is_empty()) {
                            Some(td) if td == req.deployment => {
                                return Attempt::Fail(format!(
                                    "the task definition to return to, {td}, is the current one"
                                ))
                            }
                            Some(td) => Plan::Update(td.to_string()),
                            None => return Attempt::Fail(
                                "no service deployment is in progress to stop, and no last stable \
task definition is known to return to"
                                    .into(),
                            ),
                        }
                    }
                    Attempt::Retry { reason, after } => return Attempt::Retry { reason, after },
                    Attempt::Fail(r) => return Attempt::Fail(r),
                },
            };
            match chosen {
                Plan::Stop(arn) => self.stop(&arn).await,
                Plan::Update(td) => self.update(&td).await,
            }
        })
        .await
    }

    async fn stop(&self, arn: &str) -> Attempt<RollbackDone> {
        let what = "the rollback call (StopServiceDeployment)";
        let body = json!({"serviceDeploymentArn": arn, "stopType": "ROLLBACK"});
        then(self.call("StopServiceDeployment", body, what).await, |_| {
            Attempt::Done(RollbackDone {
                returned_to: None,
                detail: format!(
                    "ecs is rolling back service deployment {arn} of {}: the service returns to the revision it was deploying from",
                    self.config.service
                ),
            })
        })
    }

    async fn update(&self, td: &str) -> Attempt<RollbackDone> {
        let what = "the rollback call (UpdateService)";
        let body = json!({
            "cluster": self.config.cluster,
            "service": self.config.service,
            "taskDefinition": td,
        });
        then(self.call("UpdateService", body, what).await, |_| {
            Attempt::Done(RollbackDone {
                returned_to: Some(td.to_string()),
                detail: format!(
                    "ecs service {} is deploying task definition {td} again",
                    self.config.service
                ),
            })
        })
    }

    /// After an interrupted call: done when the PRIMARY deployment's task
    /// definition is no longer the bad one.
    pub async fn reconcile(&self, req: &RollbackRequest) -> Result<Reconciled, RollbackError> {
        let td = with_retries(NAME, self.policy, |_| self.primary()).await?;
        Ok(settled_live(NAME, &td, req))
    }

    /// The task definition ARN of the PRIMARY deployment. Reads only.
    pub async fn live_deployment(&self) -> Result<String, RollbackError> {
        with_retries(NAME, live_policy(self.policy), |_| self.primary()).await
    }
}

/// The PRIMARY deployment's task definition in a `DescribeServices` answer.
fn primary_task_definition(v: &Value) -> Result<String, String> {
    let service = v.pointer("/services/0");
    let Some(service) = service else {
        let reason = v
            .pointer("/failures/0/reason")
            .and_then(Value::as_str)
            .unwrap_or("not listed");
        return Err(format!("the service is not found ({reason})"));
    };
    service
        .get("deployments")
        .and_then(Value::as_array)
        .and_then(|d| {
            d.iter()
                .find(|d| d.get("status").and_then(Value::as_str) == Some("PRIMARY"))
        })
        .and_then(|d| d.get("taskDefinition"))
        .or_else(|| service.get("taskDefinition"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| "the service has no task definition".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primary_deployment_gives_the_task_definition() {
        let v = json!({"services": [{"taskDefinition": "arn:td/web:8", "deployments": [
            {"status": "ACTIVE", "taskDefinition": "arn:td/web:7"},
            {"status": "PRIMARY", "taskDefinition": "arn:td/web:8"}]}], "failures": []});
        assert_eq!(primary_task_definition(&v).unwrap(), "arn:td/web:8");
        let missing = json!({"services": [], "failures": [{"arn": "x", "reason": "MISSING"}]});
        assert!(primary_task_definition(&missing)
            .unwrap_err()
            .contains("MISSING"));
    }
}
