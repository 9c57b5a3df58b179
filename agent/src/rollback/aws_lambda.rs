//! The `aws_lambda` target: a Lambda function's alias, pointed back at the
//! last stable version.
//!
//! The live deployment is the version the alias serves, read with
//! `GetAlias` (`GET /2015-03-31/functions/{FunctionName}/aliases/{Name}`,
//! answering `FunctionVersion`, `RevisionId` and `RoutingConfig`): its
//! `FunctionVersion`, except while the alias sends part of the traffic to
//! another version (`RoutingConfig.AdditionalVersionWeights`, a canary or
//! linear shift), when it is that other version, the one on its way in.
//!
//! A rollback reads the alias, then `UpdateAlias`
//! (`PUT /2015-03-31/functions/{FunctionName}/aliases/{Name}`) with
//! `{"FunctionVersion": <the version to return to>, "RoutingConfig":
//! {"AdditionalVersionWeights": {}}, "RevisionId": <the one just read>}`:
//! a change made in between is refused by Lambda
//! (`PreconditionFailedException`, 412) rather than overwritten, and that
//! refusal is final. The version to return to is the rollback's
//! `return_to` (a version number, as `[deployment] from_platform = true`
//! gives); without one, an alias in the middle of a weighted shift returns
//! wholly to its `FunctionVersion`, and otherwise there is nothing known to
//! return to. Shapes: the Lambda API reference, as botocore's model has it
//! (`botocore/data/lambda/2015-03-31/service-2.json`: `GetAlias`,
//! `UpdateAlias`, `AliasConfiguration`, `AliasRoutingConfiguration`).

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::aws::{api_base, check_region, settled_live, AwsEnv, Request, Signer};
use super::call::{
    http_client, live_policy, segment, then, with_retries, BuildContext, RollbackError,
};
use super::problem::{check_present, check_timeout, check_url, default_attempt_timeout, Problem};
use crate::duration::Dur;
use crate::evidence::{Reconciled, RollbackDone, RollbackRequest};
use crate::retry::{Attempt, RetryPolicy};

pub const NAME: &str = "aws_lambda";

/// `[rollback.aws_lambda]`: the alias is pointed back at the last stable
/// version (`UpdateAlias`, refused by Lambda if the alias changed since it
/// was read); with `from_platform`, the deployment id is the version the
/// alias serves. Credentials come from the AWS credential chain
/// (SECURITY.md), never from this table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsLambdaConfig {
    /// The function's name or ARN. Required.
    pub function: String,
    /// The alias that serves the function (such as `live`). Required.
    pub alias: String,
    /// The AWS region, such as `us-east-1`. Required.
    pub region: String,
    /// The Lambda API's base URL. Default `https://lambda.{region}.amazonaws.com`.
    #[serde(default)]
    pub api_url: Option<String>,
    /// How long one request may take. Default `30s`.
    #[serde(default = "default_attempt_timeout")]
    pub timeout: Dur,
}

impl AwsLambdaConfig {
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        check_present(&mut p, "function", &self.function);
        check_present(&mut p, "alias", &self.alias);
        check_region(&mut p, "region", &self.region);
        if let Some(u) = &self.api_url {
            check_url(&mut p, "api_url", u, false);
        }
        check_timeout(&mut p, "timeout", self.timeout.0);
        p
    }

    pub fn build(&self, cx: &BuildContext) -> Result<AwsLambda, RollbackError> {
        self.build_with(cx, AwsEnv::process())
    }

    /// [`Self::build`], with the credential chain reading `env`.
    pub fn build_with(&self, cx: &BuildContext, env: AwsEnv) -> Result<AwsLambda, RollbackError> {
        let client = http_client(NAME, self.timeout.0)?;
        Ok(AwsLambda {
            signer: Signer::new(NAME, "lambda", &self.region, client, env)?,
            base: api_base(&self.api_url, "lambda", &self.region),
            policy: cx.policy,
            config: self.clone(),
        })
    }
}

/// The alias as `GetAlias` gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Alias {
    pub version: String,
    pub revision: Option<String>,
    /// Versions given part of the traffic, with their weights.
    pub weights: Vec<(String, f64)>,
}

impl Alias {
    fn from_json(v: &Value) -> Option<Self> {
        let version = v.get("FunctionVersion")?.as_str()?.to_string();
        let weights = v
            .pointer("/RoutingConfig/AdditionalVersionWeights")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, w)| Some((k.clone(), w.as_f64()?)))
                    .filter(|(_, w)| *w > 0.0)
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            version,
            revision: v
                .get("RevisionId")
                .and_then(Value::as_str)
                .map(str::to_string),
            weights,
        })
    }

    /// The version on its way in during a weighted shift, else the one served.
    pub fn live(&self) -> &str {
        self.weights
            .iter()
            .map(|(v, _)| v.as_str())
            .find(|v| *v != self.version)
            .unwrap_or(&self.version)
    }
}

/// The Lambda target, built.
#[derive(Debug)]
pub struct AwsLambda {
    signer: Signer,
    base: String,
    policy: RetryPolicy,
    config: AwsLambdaConfig,
}

impl AwsLambda {
    fn alias_url(&self) -> String {
        format!(
            "{}/2015-03-31/functions/{}/aliases/{}",
            self.base,
            segment(&self.config.function),
            segment(&self.config.alias)
        )
    }

    async fn get_alias(&self) -> Attempt<Alias> {
        let req = Request {
            method: reqwest::Method::GET,
            url: self.alias_url(),
            headers: vec![("accept", "application/json".into())],
            body: vec![],
            what: "reading the alias (GetAlias)",
        };
        then(
            self.signer.send(&req).await,
            |body| match serde_json::from_slice::<Value>(&body)
                .ok()
                .as_ref()
                .and_then(Alias::from_json)
            {
                Some(a) => Attempt::Done(a),
                None => Attempt::Retry {
                    reason: "reading the alias (GetAlias): unexpected answer (no FunctionVersion)"
                        .into(),
                    after: None,
                },
            },
        )
    }

    pub async fn rollback(&self, req: &RollbackRequest) -> Result<RollbackDone, RollbackError> {
        with_retries(NAME, self.policy, |n| async move {
            let alias = match self.get_alias().await {
                Attempt::Done(a) => a,
                Attempt::Retry { reason, after } => return Attempt::Retry { reason, after },
                Attempt::Fail(r) => return Attempt::Fail(r),
            };
            // An earlier attempt's update may have been made though its
            // answer was lost.
            if let Some(to) = req.return_to.as_deref() {
                if n > 1 && alias.version == to && alias.weights.is_empty() {
                    return Attempt::Done(RollbackDone {
                        returned_to: Some(to.to_string()),
                        detail: format!(
                            "lambda alias {} of {} serves version {to}",
                            self.config.alias, self.config.function
                        ),
                    });
                }
            }
            let to = match target_version(&alias, req) {
                Ok(v) => v,
                Err(e) => return Attempt::Fail(e),
            };
            self.update_alias(&alias, &to).await
        })
        .await
    }

    /// `UpdateAlias` to `to`, no weighted routing, conditional on the
    /// revision read.
    async fn update_alias(&self, alias: &Alias, to: &str) -> Attempt<RollbackDone> {
        let mut body = json!({
            "FunctionVersion": to,
            "RoutingConfig": {"AdditionalVersionWeights": Map::new()},
        });
        if let Some(rev) = &alias.revision {
            body["RevisionId"] = json!(rev);
        }
        let req = Request {
            method: reqwest::Method::PUT,
            url: self.alias_url(),
            headers: vec![
                ("content-type", "application/json".into()),
                ("accept", "application/json".into()),
            ],
            body: body.to_string().into_bytes(),
            what: "the rollback call (UpdateAlias)",
        };
        then(self.signer.send(&req).await, |_| {
            Attempt::Done(RollbackDone {
                returned_to: Some(to.to_string()),
                detail: format!(
                    "lambda alias {} of {} now serves version {to} (was {})",
                    self.config.alias,
                    self.config.function,
                    alias.live()
                ),
            })
        })
    }

    /// After an interrupted call: reads the alias; done when it no longer
    /// serves the bad version.
    pub async fn reconcile(&self, req: &RollbackRequest) -> Result<Reconciled, RollbackError> {
        let alias = with_retries(NAME, self.policy, |_| self.get_alias()).await?;
        Ok(settled_live(NAME, alias.live(), req))
    }

    /// The version the alias serves (the one coming in during a weighted
    /// shift). Reads only.
    pub async fn live_deployment(&self) -> Result<String, RollbackError> {
        let alias = with_retries(NAME, live_policy(self.policy), |_| self.get_alias()).await?;
        Ok(alias.live().to_string())
    }
}

/// The version to return to: `return_to` (a version number), else, during
/// a weighted shift, the alias's main version.
fn target_version(alias: &Alias, req: &RollbackRequest) -> Result<String, String> {
    match req.return_to.as_deref().filter(|v| !v.is_empty()) {
        Some(v) if !is_version(v) => Err(format!(
            "the deployment to return to, {v:?}, is not a version of the function: \
with [deployment] from_platform = true the ids are the alias's versions"
        )),
        Some(v) if v == alias.version && alias.weights.is_empty() => Err(format!(
            "the alias already serves version {v}, the one to return to, with no other"
        )),
        Some(v) => Ok(v.to_string()),
        None if !alias.weights.is_empty() => Ok(alias.version.clone()),
        None => Err(format!(
            "no version to return to is known (the alias serves only version {}): \
the agent has seen no stable deployment before this one",
            alias.version
        )),
    }
}

/// A published version number, or `$LATEST`.
fn is_version(v: &str) -> bool {
    v == "$LATEST" || (!v.is_empty() && v.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(return_to: Option<&str>) -> RollbackRequest {
        RollbackRequest {
            service: "web".into(),
            deployment: "8".into(),
            return_to: return_to.map(str::to_string),
            rule: "r".into(),
            reason: "r".into(),
            evidence: vec![],
            fencing_token: None,
        }
    }

    #[test]
    fn the_live_version_is_the_one_coming_in_during_a_weighted_shift() {
        let a = Alias::from_json(&json!({"FunctionVersion": "7", "RevisionId": "r1",
            "RoutingConfig": {"AdditionalVersionWeights": {"8": 0.1}}}))
        .unwrap();
        assert_eq!(a.live(), "8");
        assert_eq!(target_version(&a, &req(None)).unwrap(), "7");
        let plain = Alias::from_json(&json!({"FunctionVersion": "8"})).unwrap();
        assert_eq!(plain.live(), "8");
        assert_eq!(target_version(&plain, &req(Some("7"))).unwrap(), "7");
        assert!(target_version(&plain, &req(None)).is_err());
        assert!(target_version(&plain, &req(Some("git-abc")))
            .unwrap_err()
            .contains("not a version"));
        let back = Alias::from_json(&json!({"FunctionVersion": "7"})).unwrap();
        assert!(target_version(&back, &req(Some("7")))
            .unwrap_err()
            .contains("already serves"));
    }
}
