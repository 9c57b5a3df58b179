//! Rollback targets: the one call that returns a service to its last good
//! deployment, made through the platform's own API, a webhook or a command.
//!
//! `[rollback]` is read into a [`RollbackConfig`]; [`RollbackConfig::build`]
//! turns it into a [`Target`] without touching the network, and
//! [`Target::rollback`] makes the call, retried within `deadline` by the
//! shared policy of `crate::retry`. Whether to call at all (dry run, pause,
//! cooldown, hourly cap, one call per deployment) is decided by the caller;
//! a target only knows how to call.
//!
//! # The shape of a target
//!
//! Each target lives in its own file and offers the same three things:
//!
//! - `XConfig`: its `[rollback.x]` subtable, `Deserialize` with
//!   `deny_unknown_fields`, every field documenting its default, tokens as
//!   `Secret`s, and an `api_url` (or equivalent) defaulting to the real API;
//!   `fn validate(&self) -> Vec<Problem>` for what serde cannot check, with
//!   keys relative to the subtable; and
//!   `fn build(&self, cx: &BuildContext) -> Result<X, RollbackError>`, which
//!   builds its one `reqwest::Client` (see [`http_client`]) and sends nothing.
//! - `X`, the runtime, with
//!   `async fn rollback(&self, req: &RollbackRequest) -> Result<RollbackDone, RollbackError>`,
//!   which runs its attempts through [`with_retries`] so network errors, 5xx
//!   and 429 (honouring `Retry-After`) are retried until the deadline and
//!   other 4xx are final.
//! - Error messages that name the target and the HTTP status, and never a
//!   token or a secret URL ([`send`] scrubs what a platform echoes back).
//!
//! The `kubernetes` and `argo_rollouts` targets follow this shape too, over
//! the small API-server client of `kube.rs`. Their `validate` and `build`
//! read local files (the service account's namespace when `namespace` is not
//! set, the cluster's CA), never the network.
//!
//! Besides calling, a platform target can be asked, reading only, which
//! deployment is live ([`Target::live_deployment`]): `[deployment]
//! from_platform` takes the deployment id from there, so a service that is
//! down entirely is still seen to change. A webhook or a command cannot be
//! asked ([`TargetConfig::can_tell_live`]).

pub mod argo_rollouts;
pub mod aws;
pub mod aws_codedeploy;
pub mod aws_ecs;
pub mod aws_lambda;
pub mod call;
pub mod config;
pub mod exec;
pub mod heroku;
pub mod kube;
pub mod kubeconfig;
pub mod kubernetes;
pub mod problem;
pub mod railway;
pub mod render;
pub mod vercel;
pub mod webhook;

pub use self::call::*;
pub use self::config::{RollbackConfig, TargetConfig, TARGETS};
pub use self::problem::{
    check_present, check_timeout, check_url, Problem, DEFAULT_ATTEMPT_TIMEOUT,
};
use crate::evidence::{Reconciled, RollbackDone, RollbackRequest};
use crate::retry::RetryPolicy;

impl RollbackConfig {
    /// The retry policy of every call: the shared backoff, this deadline.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            deadline: self.deadline,
            ..RetryPolicy::default()
        }
    }

    /// Builds the target: HTTP clients, templates, the command. Sends nothing.
    pub fn build(&self) -> Result<Target, RollbackError> {
        let cx = BuildContext {
            policy: self.policy(),
        };
        Ok(match &self.target {
            TargetConfig::Webhook(c) => Target::Webhook(c.build(&cx)?),
            TargetConfig::Exec(c) => Target::Exec(c.build(&cx)?),
            TargetConfig::Railway(c) => Target::Railway(c.build(&cx)?),
            TargetConfig::Render(c) => Target::Render(c.build(&cx)?),
            TargetConfig::Vercel(c) => Target::Vercel(c.build(&cx)?),
            TargetConfig::Heroku(c) => Target::Heroku(c.build(&cx)?),
            TargetConfig::Kubernetes(c) => Target::Kubernetes(c.build(&cx)?),
            TargetConfig::ArgoRollouts(c) => Target::ArgoRollouts(c.build(&cx)?),
            TargetConfig::AwsLambda(c) => Target::AwsLambda(c.build(&cx)?),
            TargetConfig::AwsEcs(c) => Target::AwsEcs(c.build(&cx)?),
            TargetConfig::AwsCodeDeploy(c) => Target::AwsCodeDeploy(c.build(&cx)?),
        })
    }
}

/// A rollback target, ready to call.
#[derive(Debug)]
pub enum Target {
    Webhook(webhook::Webhook),
    Exec(exec::Exec),
    Railway(railway::Railway),
    Render(render::Render),
    Vercel(vercel::Vercel),
    Heroku(heroku::Heroku),
    Kubernetes(kubernetes::Kubernetes),
    ArgoRollouts(argo_rollouts::ArgoRollouts),
    AwsLambda(aws_lambda::AwsLambda),
    AwsEcs(aws_ecs::AwsEcs),
    AwsCodeDeploy(aws_codedeploy::AwsCodeDeploy),
}

impl Target {
    /// The label of `backstop_rollbacks_total{target}`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Webhook(_) => "webhook",
            Self::Exec(_) => "exec",
            Self::Railway(_) => "railway",
            Self::Render(_) => "render",
            Self::Vercel(_) => "vercel",
            Self::Heroku(_) => "heroku",
            Self::Kubernetes(_) => kubernetes::NAME,
            Self::ArgoRollouts(_) => argo_rollouts::NAME,
            Self::AwsLambda(_) => aws_lambda::NAME,
            Self::AwsEcs(_) => aws_ecs::NAME,
            Self::AwsCodeDeploy(_) => aws_codedeploy::NAME,
        }
    }

    /// Asks the platform to return to the last good deployment, retrying
    /// within the deadline. One call of this is one rollback: the caller
    /// makes sure it happens once per bad deployment.
    pub async fn rollback(&self, req: &RollbackRequest) -> Result<RollbackDone, RollbackError> {
        match self {
            Self::Webhook(t) => t.rollback(req).await,
            Self::Exec(t) => t.rollback(req).await,
            Self::Railway(t) => t.rollback(req).await,
            Self::Render(t) => t.rollback(req).await,
            Self::Vercel(t) => t.rollback(req).await,
            Self::Heroku(t) => t.rollback(req).await,
            Self::Kubernetes(t) => t.rollback(req).await,
            Self::ArgoRollouts(t) => t.rollback(req).await,
            Self::AwsLambda(t) => t.rollback(req).await,
            Self::AwsEcs(t) => t.rollback(req).await,
            Self::AwsCodeDeploy(t) => t.rollback(req).await,
        }
    }

    /// After a restart, for a rollback whose call the agent's stop
    /// interrupted: asks the platform whether it took effect, with the
    /// same retries as a call. Reads only; never rolls anything back.
    pub async fn reconcile(&self, req: &RollbackRequest) -> Reconciled {
        let found = match self {
            Self::Webhook(t) => Ok(t.reconcile()),
            Self::Exec(t) => Ok(t.reconcile()),
            Self::Railway(t) => t.reconcile(req).await,
            Self::Render(t) => t.reconcile(req).await,
            Self::Vercel(t) => t.reconcile(req).await,
            Self::Heroku(t) => t.reconcile(req).await,
            Self::Kubernetes(t) => t.reconcile(req).await,
            Self::ArgoRollouts(t) => t.reconcile(req).await,
            Self::AwsLambda(t) => t.reconcile(req).await,
            Self::AwsEcs(t) => t.reconcile(req).await,
            Self::AwsCodeDeploy(t) => t.reconcile(req).await,
        };
        found.unwrap_or_else(|e| Reconciled::Unknown(format!("asking failed: {e}")))
    }

    /// The platform's id of the deployment live now, reading only, with the
    /// calls' retries within [`LIVE_DEADLINE`]: Railway's latest deployment
    /// that serves (a crashing one included), the Deployment's or Rollout's
    /// revision, Render's live deploy, Vercel's production deployment,
    /// Heroku's current release (`v` and its version), the Lambda alias's
    /// version, the ECS service's PRIMARY task definition, the CodeDeploy
    /// group's unfinished or last successful deployment. A webhook or a
    /// command cannot be asked: that is a `Setup` error, and the
    /// configuration refuses `from_platform` with them.
    pub async fn live_deployment(&self) -> Result<String, RollbackError> {
        match self {
            Self::Webhook(_) | Self::Exec(_) => Err(RollbackError::Setup {
                target: self.name(),
                reason: "cannot tell which deployment is live; only a platform can".into(),
            }),
            Self::Railway(t) => t.live_deployment().await,
            Self::Render(t) => t.live_deployment().await,
            Self::Vercel(t) => t.live_deployment().await,
            Self::Heroku(t) => t.live_deployment().await,
            Self::Kubernetes(t) => t.live_deployment().await,
            Self::ArgoRollouts(t) => t.live_deployment().await,
            Self::AwsLambda(t) => t.live_deployment().await,
            Self::AwsEcs(t) => t.live_deployment().await,
            Self::AwsCodeDeploy(t) => t.live_deployment().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn listed(id: &str, active: bool, eligible: bool) -> Listed {
        Listed {
            id: id.into(),
            aliases: vec![],
            active,
            eligible,
            status: if eligible { "ok" } else { "failed" }.into(),
        }
    }

    #[test]
    fn an_interrupted_call_is_settled_by_what_the_platform_lists_after_the_bad_deployment() {
        let untouched = [listed("d3", true, true), listed("d2", false, true)];
        assert!(matches!(
            settled("railway", &untouched, "d3"),
            Reconciled::NotDone(_)
        ));
        let rolled = [
            listed("d4", false, false),
            listed("d3", true, true),
            listed("d2", false, true),
        ];
        match settled("railway", &rolled, "d3") {
            Reconciled::Done(d) => {
                assert!(d.detail.contains("1 deployment(s) after d3, the newest d4"))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(settled("railway", &rolled, "v3"), Reconciled::Unknown(m) if m.contains("not among the 3"))
        );
        assert!(matches!(
            settled("railway", &[], "d3"),
            Reconciled::Unknown(_)
        ));
    }

    #[test]
    fn chooses_the_newest_eligible_deployment_older_than_the_current_one() {
        let list = [
            listed("d4", false, true),
            listed("d3", true, true),
            listed("d2", false, false),
            listed("d1", false, true),
        ];
        assert_eq!(choose(&list, "d3", None).unwrap().id, "d1");
    }

    #[test]
    fn prefers_return_to_when_it_is_listed_and_eligible() {
        let list = [
            listed("d3", true, true),
            listed("d2", false, true),
            listed("d1", false, true),
        ];
        assert_eq!(choose(&list, "d3", Some("d1")).unwrap().id, "d1");
        // An id from another id space falls back to the newest older one.
        assert_eq!(choose(&list, "d3", Some("git-abc")).unwrap().id, "d2");
    }

    #[test]
    fn refuses_a_return_to_that_cannot_be_rolled_back_to() {
        let list = [listed("d3", true, true), listed("d2", false, false)];
        let err = choose(&list, "d3", Some("d2")).unwrap_err();
        assert!(err.contains("cannot be rolled back to"), "{err}");
    }

    #[test]
    fn falls_back_to_the_active_deployment_when_the_current_id_is_unknown() {
        let list = [
            listed("d3", false, false),
            listed("d2", true, true),
            listed("d1", false, true),
        ];
        assert_eq!(choose(&list, "sha-123", None).unwrap().id, "d1");
        let none = [listed("d3", false, true)];
        assert!(choose(&none, "sha-123", None).is_err());
    }

    #[test]
    fn says_so_when_there_is_nothing_to_return_to() {
        let list = [listed("d2", true, true), listed("d1", false, false)];
        let err = choose(&list, "d2", None).unwrap_err();
        assert!(err.starts_with("no earlier deployment"), "{err}");
    }

    #[test]
    fn scrubs_secrets_from_platform_messages() {
        let body = br#"{"error":{"message":"token tok-123456 is revoked"}}"#;
        let got = with_detail("call answered 401".into(), body, &["tok-123456"]);
        assert_eq!(got, "call answered 401: token *** is revoked");
        assert_eq!(with_detail("x".into(), b"<html>", &[]), "x");
    }

    fn parse(rollback: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
        let text = format!("[service]\nname = \"web\"\n\n{rollback}");
        crate::config::Config::parse(&text, |k| (k == "TOKEN").then(|| "tok-from-env".into()))
    }

    #[test]
    fn reads_the_chosen_target_and_the_documented_defaults() {
        let c = parse(
            "[rollback]\ntarget = \"railway\"\n[rollback.railway]\ntoken = \"${TOKEN}\"\nproject_id = \"p\"\nservice_id = \"s\"\nenvironment_id = \"e\"\n",
        )
        .unwrap();
        let r = c.rollback.unwrap();
        assert!(!r.dry_run);
        assert_eq!(r.cooldown, Duration::from_secs(600));
        assert_eq!(r.max_per_hour, 3);
        assert_eq!(r.verify, Duration::from_secs(300));
        assert_eq!(r.deadline, Duration::from_secs(300));
        let TargetConfig::Railway(rw) = &r.target else {
            panic!("not railway: {:?}", r.target)
        };
        assert_eq!(rw.token.expose(), "tok-from-env");
        assert_eq!(rw.api_url, "https://backboard.railway.com/graphql/v2");
        assert!(!format!("{r:?}").contains("tok-from-env"));
        assert_eq!(r.build().unwrap().name(), "railway");
        assert!(parse("").unwrap().rollback.is_none());
    }

    #[test]
    fn reports_problems_with_their_key_paths_and_lines() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "missing subtable",
                "[rollback]\ntarget = \"render\"\n",
                "rollback.render: target = \"render\" needs a [rollback.render] table (line 4)",
                "",
            ),
            (
                "wrong subtable",
                "[rollback]\ntarget = \"webhook\"\n[rollback.webhook]\nurl = \"https://h.example/x\"\n[rollback.heroku]\napp = \"a\"\n",
                "rollback.heroku: target is \"webhook\", so only [rollback.webhook] applies: remove [rollback.heroku] (line 8)",
                "",
            ),
            (
                "bad api URL",
                "[rollback]\ntarget = \"render\"\n[rollback.render]\napi_key = \"k-123\"\nservice_id = \"srv-1\"\napi_url = \"ftp://x\"\n",
                "rollback.render.api_url: expected an http or https URL, got \"ftp://x/\" (line 9)",
                "",
            ),
            (
                "bad secret URL",
                "[rollback]\ntarget = \"webhook\"\n[rollback.webhook]\nurl = \"hooks.example/T0/very-secret\"\n",
                "rollback.webhook.url: invalid URL (relative URL without a base) (line 7)",
                "very-secret",
            ),
            (
                "unknown key in a target",
                "[rollback]\ntarget = \"heroku\"\n[rollback.heroku]\napi_key = \"k-123\"\napp = \"a\"\napikey = \"x\"\n",
                "rollback.heroku.apikey: unknown key, expected one of api_key, app, api_url, timeout (line 9)",
                "",
            ),
            (
                "unknown key in [rollback]",
                "[rollback]\ntarget = \"exec\"\nretries = 3\n[rollback.exec]\ncommand = [\"true\"]\n",
                "rollback.retries: unknown key, expected one of target, dry_run, cooldown, max_per_hour, verify, deadline, or a target's table: railway, kubernetes, argo_rollouts, render, vercel, heroku, aws_lambda, aws_ecs, aws_codedeploy, webhook, exec (line 6)",
                "",
            ),
            (
                "unknown target",
                "[rollback]\ntarget = \"aws\"\n",
                "rollback.target: unknown value \"aws\", expected one of railway, kubernetes, argo_rollouts, render, vercel, heroku, aws_lambda, aws_ecs, aws_codedeploy, webhook, exec (line 5)",
                "",
            ),
            (
                "missing target",
                "[rollback]\ndry_run = true\n",
                "rollback.target: required key is missing, expected one of railway, kubernetes, argo_rollouts, render, vercel, heroku, aws_lambda, aws_ecs, aws_codedeploy, webhook, exec (line 4)",
                "",
            ),
            (
                "bad duration",
                "[rollback]\ntarget = \"exec\"\ncooldown = \"10x\"\n[rollback.exec]\ncommand = [\"true\"]\n",
                "rollback.cooldown: invalid duration \"10x\" (use a number and a unit: 250ms, 5s, 15m, 1h) (line 6)",
                "",
            ),
            (
                "unset token variable",
                "[rollback]\ntarget = \"vercel\"\n[rollback.vercel]\ntoken = \"${VERCEL_TOKEN}\"\nproject_id = \"prj\"\n",
                "rollback.vercel.token: environment variable VERCEL_TOKEN is not set (write ${VERCEL_TOKEN:-default} to allow that) (line 7)",
                "",
            ),
            (
                "empty exec command",
                "[rollback]\ntarget = \"exec\"\n[rollback.exec]\ncommand = []\n",
                "rollback.exec.command: must name a program, e.g. [\"/usr/local/bin/rollback\", \"--now\"] (line 7)",
                "",
            ),
            (
                "aws region",
                "[rollback]\ntarget = \"aws_lambda\"\n[rollback.aws_lambda]\nfunction = \"f\"\nalias = \"live\"\nregion = \"useast1\"\n",
                "rollback.aws_lambda.region: expected an AWS region such as \"us-east-1\", got \"useast1\" (line 9)",
                "",
            ),
            (
                "aws missing key",
                "[rollback]\ntarget = \"aws_ecs\"\n[rollback.aws_ecs]\nservice = \"web\"\nregion = \"eu-west-1\"\n",
                "rollback.aws_ecs.cluster: required key is missing (line 6)",
                "",
            ),
            (
                "aws api URL",
                "[rollback]\ntarget = \"aws_codedeploy\"\n[rollback.aws_codedeploy]\napplication = \"a\"\ndeployment_group = \"g\"\nregion = \"us-east-1\"\napi_url = \"codedeploy\"\n",
                "rollback.aws_codedeploy.api_url: invalid URL (relative URL without a base), got \"codedeploy\" (line 10)",
                "",
            ),
            (
                "aws credentials in the table",
                "[rollback]\ntarget = \"aws_lambda\"\n[rollback.aws_lambda]\nfunction = \"f\"\nalias = \"live\"\nregion = \"us-east-1\"\nsecret_access_key = \"wJalr-SECRET\"\n",
                "rollback.aws_lambda.secret_access_key: unknown key, expected one of function, alias, region, api_url, timeout (line 10)",
                "wJalr-SECRET",
            ),
        ];
        for (name, text, want, hidden) in cases {
            let errors = parse(text).expect_err(name);
            let shown: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
            assert!(shown.iter().any(|e| e == want), "{name}: got {shown:#?}");
            if !hidden.is_empty() {
                assert!(!errors.to_string().contains(hidden), "{name}: {errors}");
            }
        }
    }

    #[test]
    fn accepts_and_validates_the_kubernetes_targets() {
        // `namespace` is always set, so no case depends on the machine
        // being a pod (see `kubernetes::tests` for the namespace file).
        let ok: &[(&str, &str, &str)] = &[
            (
                "a deployment",
                "[rollback]\ntarget = \"kubernetes\"\n[rollback.kubernetes]\ndeployment = \"web\"\nnamespace = \"prod\"\n",
                "kubernetes",
            ),
            (
                "a rollout, aborted then undone",
                "[rollback]\ntarget = \"argo_rollouts\"\n[rollback.argo_rollouts]\nrollout = \"web\"\nnamespace = \"prod\"\naction = [\"abort\", \"undo\"]\napi_url = \"http://127.0.0.1:6443\"\ntimeout = \"3s\"\n",
                "argo_rollouts",
            ),
        ];
        for (name, text, target) in ok {
            let r = parse(text)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .rollback
                .unwrap();
            assert_eq!(r.target.name(), *target, "{name}");
            assert_eq!(r.build().expect(name).name(), *target, "{name}");
        }
        let k8s = |body: &str| {
            format!("[rollback]\ntarget = \"kubernetes\"\n[rollback.kubernetes]\n{body}\n")
        };
        let argo = |body: &str| {
            format!("[rollback]\ntarget = \"argo_rollouts\"\n[rollback.argo_rollouts]\nrollout = \"web\"\nnamespace = \"prod\"\n{body}\n")
        };
        let bad: &[(&str, String, &str)] = &[
            (
                "missing subtable",
                "[rollback]\ntarget = \"kubernetes\"\n".into(),
                "rollback.kubernetes: target = \"kubernetes\" needs a [rollback.kubernetes] table (line 4)",
            ),
            (
                "missing deployment",
                k8s("namespace = \"prod\""),
                "rollback.kubernetes.deployment: required key is missing (line 6)",
            ),
            (
                "bad deployment name",
                k8s("deployment = \"Web_1\"\nnamespace = \"prod\""),
                "rollback.kubernetes.deployment: \"Web_1\" is not a valid object name (lowercase letters, digits, '-' and '.') (line 7)",
            ),
            (
                "bad namespace",
                k8s("deployment = \"web\"\nnamespace = \"Prod\""),
                "rollback.kubernetes.namespace: \"Prod\" is not a valid name (lowercase letters, digits and '-', at most 63) (line 8)",
            ),
            (
                "bad api URL",
                k8s("deployment = \"web\"\nnamespace = \"prod\"\napi_url = \"ftp://x\""),
                "rollback.kubernetes.api_url: expected an http or https URL, got \"ftp://x/\" (line 9)",
            ),
            (
                "missing CA file",
                k8s("deployment = \"web\"\nnamespace = \"prod\"\nca_file = \"/nonexistent/ca.crt\""),
                "rollback.kubernetes.ca_file: cannot read /nonexistent/ca.crt (No such file or directory (os error 2)) (line 9)",
            ),
            (
                "unknown action",
                argo("action = \"rewind\""),
                "rollback.argo_rollouts.action: unknown action \"rewind\", expected \"abort\" or \"undo\" (line 9)",
            ),
            (
                "zero timeout",
                argo("timeout = \"0s\""),
                "rollback.argo_rollouts.timeout: must be more than 0s (line 9)",
            ),
            (
                "unknown key",
                argo("actions = \"undo\""),
                "rollback.argo_rollouts.actions: unknown key, expected one of rollout, action, api_url, token_file, ca_file, namespace, timeout, kubeconfig, context (line 9)",
            ),
        ];
        for (name, text, want) in bad {
            let errors = parse(text).expect_err(name);
            let shown: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
            assert_eq!(shown, [*want], "{name}");
        }
    }

    #[test]
    fn reports_every_rollback_problem_at_once_and_each_only_once() {
        let errors = parse(
            "[rollback]\ntarget = \"vercel\"\ncooldown = \"1x\"\n[rollback.vercel]\ntoken = \"${UNSET}\"\nproject_id = \"\"\n[rollback.exec]\ncommand = [\"x\"]\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "rollback.cooldown",
                "rollback.vercel.token",
                "rollback.vercel.project_id",
                "rollback.exec"
            ],
            "{errors}"
        );
    }

    #[test]
    fn escapes_ids_put_into_paths() {
        assert_eq!(segment("srv-1"), "srv-1");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        assert_eq!(endpoint("http://h/v1/", "/x"), "http://h/v1/x");
    }
}
