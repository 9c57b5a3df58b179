//! The AWS targets (`aws_lambda`, `aws_ecs`, `aws_codedeploy`) against
//! stand-ins of their APIs on loopback that verify every request's SigV4
//! signature (`aws_standin.rs`) and refuse a wrongly signed one as AWS
//! does; and the credential chain against stand-ins of EC2 instance
//! metadata (IMDSv2) and the ECS container credentials endpoint.
//!
//! The stand-ins' shapes follow botocore's models of the services' API
//! references (github.com/boto/botocore, `botocore/data/<service>/<version>/
//! service-2.json`): Lambda `2015-03-31` (`GetAlias` and `UpdateAlias` on
//! `/2015-03-31/functions/{FunctionName}/aliases/{Name}`,
//! `AliasConfiguration` with `FunctionVersion`, `RevisionId` and
//! `RoutingConfig.AdditionalVersionWeights`; `PreconditionFailedException`
//! 412, `TooManyRequestsException` 429); ECS `2014-11-13`
//! (`DescribeServices` with `services` and `failures`, a `Deployment`'s
//! `status` `PRIMARY`/`ACTIVE` and `taskDefinition`; `UpdateService`;
//! `ListServiceDeployments` with `status`, answering `serviceDeployments`
//! of `ServiceDeploymentBrief`; `StopServiceDeployment` with
//! `serviceDeploymentArn` and `stopType` `ROLLBACK`); CodeDeploy
//! `2014-10-06` (`ListDeployments` with `includeOnlyStatuses`, answering
//! `deployments`; `StopDeployment` with `deploymentId` and
//! `autoRollbackEnabled`, answering `status` `Pending`/`Succeeded`;
//! `GetDeploymentGroup`'s `deploymentGroupInfo` with
//! `lastAttemptedDeployment` and `lastSuccessfulDeployment`); the throttling
//! of JSON 1.1 services as `400` with `__type` `ThrottlingException`. The
//! credential endpoints follow the EC2 User Guide ("Use the Instance
//! Metadata Service to access instance metadata", IMDSv2: `PUT
//! /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`, then
//! `X-aws-ec2-metadata-token` on `GET
//! /latest/meta-data/iam/security-credentials/[role]`, answering `Code`,
//! `AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration`) and the ECS
//! Developer Guide ("Amazon ECS task IAM role": the container endpoint's
//! `AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration`, `RoleArn`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use backstop::config::Config;
use backstop::evidence::{Reconciled, RollbackRequest};
use backstop::rollback::aws::AwsEnv;
use backstop::rollback::{BuildContext, RollbackError, Target, TargetConfig};
use backstop_tests::{HttpServer, Recorded, Reply};
use serde_json::{json, Value};

use crate::aws_standin::{aws_error, AwsServer, Key, ACCESS_KEY, SECRET_KEY};

pub(crate) const REGION: &str = "eu-west-1";

/// An environment with only the given variables.
fn env(vars: &[(&str, &str)]) -> AwsEnv {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    AwsEnv::from_fn(move |k| map.get(k).cloned())
}

/// The example key pair in the environment.
fn key_env(secret: &str) -> AwsEnv {
    env(&[
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", secret),
    ])
}

/// Builds the target of a `[rollback]` section as the agent does, its
/// credential chain reading `env` instead of the process environment.
fn target(rollback: &str, env: AwsEnv) -> Target {
    let text = format!("[service]\nname = \"web\"\n\n{rollback}");
    let config = Config::parse(&text, |_| None).unwrap_or_else(|e| panic!("{e}"));
    let r = config.rollback.expect("[rollback]");
    let cx = BuildContext { policy: r.policy() };
    match &r.target {
        TargetConfig::AwsLambda(c) => Target::AwsLambda(c.build_with(&cx, env).unwrap()),
        TargetConfig::AwsEcs(c) => Target::AwsEcs(c.build_with(&cx, env).unwrap()),
        TargetConfig::AwsCodeDeploy(c) => Target::AwsCodeDeploy(c.build_with(&cx, env).unwrap()),
        other => panic!("not an AWS target: {other:?}"),
    }
}

fn lambda_config(url: &str) -> String {
    format!(
        "[rollback]\ntarget = \"aws_lambda\"\ndeadline = \"20s\"\n[rollback.aws_lambda]\nfunction = \"web-fn\"\nalias = \"live\"\nregion = \"{REGION}\"\napi_url = \"{url}\"\n"
    )
}

fn ecs_config(url: &str) -> String {
    format!(
        "[rollback]\ntarget = \"aws_ecs\"\ndeadline = \"20s\"\n[rollback.aws_ecs]\ncluster = \"prod\"\nservice = \"web\"\nregion = \"{REGION}\"\napi_url = \"{url}\"\n"
    )
}

fn codedeploy_config(url: &str) -> String {
    format!(
        "[rollback]\ntarget = \"aws_codedeploy\"\ndeadline = \"20s\"\n[rollback.aws_codedeploy]\napplication = \"web-app\"\ndeployment_group = \"prod\"\nregion = \"{REGION}\"\napi_url = \"{url}\"\n"
    )
}

fn request(deployment: &str, return_to: Option<&str>) -> RollbackRequest {
    RollbackRequest {
        service: "web".into(),
        deployment: deployment.into(),
        return_to: return_to.map(str::to_string),
        rule: "health failing".into(),
        reason: "health: 3 consecutive failures".into(),
        evidence: vec![],
        fencing_token: None,
    }
}

/// A Lambda alias: the version it serves, its revision, its weights.
#[derive(Debug, Clone)]
pub(crate) struct Alias {
    pub(crate) version: String,
    pub(crate) revision: u32,
    pub(crate) weights: Value,
}

impl Alias {
    fn json(&self) -> Value {
        json!({
            "AliasArn": format!("arn:aws:lambda:{REGION}:123456789012:function:web-fn:live"),
            "Name": "live",
            "FunctionVersion": self.version,
            "Description": "",
            "RevisionId": format!("rev-{}", self.revision),
            "RoutingConfig": {"AdditionalVersionWeights": self.weights},
        })
    }
}

const ALIAS_PATH: &str = "/2015-03-31/functions/web-fn/aliases/live";

/// The Lambda API's alias endpoint: `GetAlias` and a conditional
/// `UpdateAlias`, as Lambda makes them.
pub(crate) fn lambda_answer(r: &Recorded, alias: &Mutex<Alias>) -> Reply {
    if r.path != ALIAS_PATH {
        return aws_error(404, "ResourceNotFoundException", "Function not found");
    }
    let mut a = alias.lock().unwrap();
    match r.method.as_str() {
        "GET" => Reply::json(200, a.json()),
        "PUT" => {
            let body = r.json();
            if body.get("RevisionId").and_then(Value::as_str)
                != Some(&format!("rev-{}", a.revision))
            {
                return aws_error(
                    412,
                    "PreconditionFailedException",
                    "The Revision Id provided does not match the latest Revision Id. Call the GetAlias API to retrieve the latest Revision Id",
                );
            }
            a.version = body["FunctionVersion"].as_str().unwrap().to_string();
            a.weights = body
                .pointer("/RoutingConfig/AdditionalVersionWeights")
                .cloned()
                .unwrap_or(json!({}));
            a.revision += 1;
            Reply::json(200, a.json())
        }
        _ => aws_error(405, "MethodNotAllowed", "no"),
    }
}

async fn lambda_server(keys: Vec<Key>, alias: Arc<Mutex<Alias>>) -> AwsServer {
    AwsServer::start("lambda", REGION, keys, move |r| lambda_answer(r, &alias)).await
}

pub(crate) fn alias(version: &str) -> Arc<Mutex<Alias>> {
    Arc::new(Mutex::new(Alias {
        version: version.into(),
        revision: 1,
        weights: json!({}),
    }))
}

#[tokio::test]
async fn lambda_alias_returns_to_the_last_stable_version_once_with_a_verified_signature() {
    let state = alias("8");
    let aws = lambda_server(vec![Key::example()], state.clone()).await;
    let t = target(&lambda_config(&aws.url()), key_env(SECRET_KEY));
    assert_eq!(t.name(), "aws_lambda");
    // from_platform: the live id is the version the alias serves.
    assert_eq!(t.live_deployment().await.unwrap(), "8");

    let done = t.rollback(&request("8", Some("7"))).await.unwrap();
    assert_eq!(done.returned_to.as_deref(), Some("7"));
    assert!(
        done.detail.contains("now serves version 7"),
        "{}",
        done.detail
    );
    assert_eq!(state.lock().unwrap().version, "7");
    assert!(aws.refused().is_empty(), "{:?}", aws.refused());

    let reqs = aws.requests();
    let puts: Vec<&Recorded> = reqs.iter().filter(|r| r.method == "PUT").collect();
    assert_eq!(puts.len(), 1, "one UpdateAlias");
    assert_eq!(
        puts[0].json(),
        json!({"FunctionVersion": "7", "RoutingConfig": {"AdditionalVersionWeights": {}}, "RevisionId": "rev-1"})
    );
    let auth = puts[0].header("authorization").unwrap();
    assert!(
        auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")),
        "{auth}"
    );
    assert!(
        auth.contains(&format!("/{REGION}/lambda/aws4_request")),
        "{auth}"
    );
    assert!(!reqs.iter().any(|r| format!("{r:?}").contains(SECRET_KEY)));

    // After an interrupted call, the alias says the rollback took effect.
    match t.reconcile(&request("8", Some("7"))).await {
        Reconciled::Done(d) => assert_eq!(d.returned_to.as_deref(), Some("7")),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.live_deployment().await.unwrap(), "7");
    // Reading sent no other update.
    assert_eq!(
        aws.requests().iter().filter(|r| r.method == "PUT").count(),
        1
    );
}

#[tokio::test]
async fn a_wrongly_signed_request_is_refused_with_a_clear_final_error() {
    let state = alias("8");
    let aws = lambda_server(vec![Key::example()], state.clone()).await;
    let wrong = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYWRONGKEY";
    let t = target(&lambda_config(&aws.url()), key_env(wrong));
    let err = t.rollback(&request("8", Some("7"))).await.unwrap_err();
    assert!(matches!(err, RollbackError::Final { .. }), "{err:?}");
    assert_eq!(err.attempts(), 1);
    let msg = err.to_string();
    for part in [
        "aws_lambda",
        "403 Forbidden",
        "InvalidSignatureException",
        "GetAlias",
    ] {
        assert!(msg.contains(part), "{part} missing from {msg}");
    }
    assert!(!msg.contains(wrong) && !msg.contains(SECRET_KEY), "{msg}");
    assert_eq!(aws.refused(), ["InvalidSignatureException"]);
    assert_eq!(state.lock().unwrap().version, "8", "nothing changed");

    // An access key AWS does not know.
    let t = target(
        &lambda_config(&aws.url()),
        env(&[
            ("AWS_ACCESS_KEY_ID", "AKIDUNKNOWN"),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ]),
    );
    let err = t.live_deployment().await.unwrap_err();
    assert!(
        err.to_string().contains("UnrecognizedClientException"),
        "{err}"
    );
}

#[tokio::test]
async fn a_concurrent_alias_change_is_refused_not_overwritten() {
    let state = alias("8");
    let s = state.clone();
    let gets = Arc::new(AtomicUsize::new(0));
    let g = gets.clone();
    // Someone else updates the alias between the agent's read and its write.
    let aws = AwsServer::start("lambda", REGION, vec![Key::example()], move |r| {
        let reply = lambda_answer(r, &s);
        if r.method == "GET" && g.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut a = s.lock().unwrap();
            a.version = "9".into();
            a.revision += 1;
        }
        reply
    })
    .await;
    let t = target(&lambda_config(&aws.url()), key_env(SECRET_KEY));
    let err = t.rollback(&request("8", Some("7"))).await.unwrap_err();
    assert!(matches!(err, RollbackError::Final { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("412 Precondition Failed, PreconditionFailedException"),
        "{err}"
    );
    assert!(err.to_string().contains("nothing was overwritten"), "{err}");
    assert_eq!(state.lock().unwrap().version, "9");
}

#[tokio::test]
async fn lambda_throttling_is_retried_after_retry_after() {
    let state = alias("8");
    let s = state.clone();
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    let aws = AwsServer::start("lambda", REGION, vec![Key::example()], move |r| {
        if r.method == "PUT" && c.fetch_add(1, Ordering::SeqCst) == 0 {
            return aws_error(429, "TooManyRequestsException", "Rate exceeded")
                .header("Retry-After", "1");
        }
        lambda_answer(r, &s)
    })
    .await;
    let t = target(&lambda_config(&aws.url()), key_env(SECRET_KEY));
    let done = t.rollback(&request("8", Some("7"))).await.unwrap();
    assert_eq!(done.returned_to.as_deref(), Some("7"));
    assert_eq!(n.load(Ordering::SeqCst), 2, "one refused, one made");
    assert_eq!(state.lock().unwrap().version, "7");
}

/// An ECS service: its PRIMARY task definition, and its service deployment
/// in progress, if any.
#[derive(Debug)]
struct Service {
    primary: String,
    in_progress: Option<String>,
    stopped: Vec<Value>,
    throttle: usize,
}

const TD: &str = "arn:aws:ecs:eu-west-1:123456789012:task-definition/web";

fn ecs_answer(r: &Recorded, svc: &Mutex<Service>) -> Reply {
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/");
    assert_eq!(r.header("content-type"), Some("application/x-amz-json-1.1"));
    let op = r
        .header("x-amz-target")
        .and_then(|t| t.strip_prefix("AmazonEC2ContainerServiceV20141113."))
        .unwrap_or("")
        .to_string();
    let body = r.json();
    let mut s = svc.lock().unwrap();
    if s.throttle > 0 {
        s.throttle -= 1;
        return aws_error(400, "ThrottlingException", "Rate exceeded");
    }
    match op.as_str() {
        "DescribeServices" => {
            assert_eq!(body, json!({"cluster": "prod", "services": ["web"]}));
            Reply::json(
                200,
                json!({"services": [{
                    "serviceArn": "arn:aws:ecs:eu-west-1:123456789012:service/prod/web",
                    "serviceName": "web",
                    "clusterArn": "arn:aws:ecs:eu-west-1:123456789012:cluster/prod",
                    "status": "ACTIVE",
                    "taskDefinition": s.primary,
                    "deployments": [
                        {"id": "ecs-svc/2", "status": "PRIMARY", "taskDefinition": s.primary, "rolloutState": "IN_PROGRESS"},
                        {"id": "ecs-svc/1", "status": "ACTIVE", "taskDefinition": format!("{TD}:7"), "rolloutState": "COMPLETED"}
                    ]
                }], "failures": []}),
            )
        }
        "ListServiceDeployments" => {
            assert_eq!(
                body,
                json!({"cluster": "prod", "service": "web", "status": ["IN_PROGRESS"]})
            );
            let list: Vec<Value> = s
                .in_progress
                .iter()
                .map(|arn| json!({"serviceDeploymentArn": arn, "serviceArn": "arn:aws:ecs:eu-west-1:123456789012:service/prod/web", "clusterArn": "arn:aws:ecs:eu-west-1:123456789012:cluster/prod", "status": "IN_PROGRESS", "targetServiceRevisionArn": "arn:aws:ecs:eu-west-1:123456789012:service-revision/prod/web/2"}))
                .collect();
            Reply::json(200, json!({"serviceDeployments": list}))
        }
        "UpdateService" => {
            s.primary = body["taskDefinition"].as_str().unwrap().to_string();
            Reply::json(
                200,
                json!({"service": {"serviceName": "web", "taskDefinition": s.primary}}),
            )
        }
        "StopServiceDeployment" => {
            s.stopped.push(body.clone());
            s.primary = format!("{TD}:7");
            Reply::json(
                200,
                json!({"serviceDeploymentArn": body["serviceDeploymentArn"]}),
            )
        }
        other => aws_error(
            400,
            "UnknownOperationException",
            &format!("unknown {other}"),
        ),
    }
}

fn ecs_service(in_progress: Option<&str>, throttle: usize) -> Arc<Mutex<Service>> {
    Arc::new(Mutex::new(Service {
        primary: format!("{TD}:8"),
        in_progress: in_progress.map(str::to_string),
        stopped: vec![],
        throttle,
    }))
}

async fn ecs_server(svc: Arc<Mutex<Service>>) -> AwsServer {
    AwsServer::start("ecs", REGION, vec![Key::example()], move |r| {
        ecs_answer(r, &svc)
    })
    .await
}

#[tokio::test]
async fn ecs_service_returns_to_its_last_stable_task_definition_once() {
    let svc = ecs_service(None, 0);
    let aws = ecs_server(svc.clone()).await;
    let t = target(&ecs_config(&aws.url()), key_env(SECRET_KEY));
    let bad = format!("{TD}:8");
    let good = format!("{TD}:7");
    assert_eq!(t.live_deployment().await.unwrap(), bad);
    let done = t.rollback(&request(&bad, Some(&good))).await.unwrap();
    assert_eq!(done.returned_to.as_deref(), Some(good.as_str()));
    assert_eq!(
        aws.operations(),
        [
            "DescribeServices",
            "ListServiceDeployments",
            "UpdateService"
        ]
    );
    let update = &aws.requests()[2];
    assert_eq!(
        update.json(),
        json!({"cluster": "prod", "service": "web", "taskDefinition": good})
    );
    assert!(aws.refused().is_empty());
    assert!(matches!(
        t.reconcile(&request(&bad, Some(&good))).await,
        Reconciled::Done(_)
    ));
    assert_eq!(t.live_deployment().await.unwrap(), good);
}

#[tokio::test]
async fn ecs_stops_a_service_deployment_in_progress_with_rollback() {
    let arn = "arn:aws:ecs:eu-west-1:123456789012:service-deployment/prod/web/abc123";
    let svc = ecs_service(Some(arn), 0);
    let aws = ecs_server(svc.clone()).await;
    let t = target(&ecs_config(&aws.url()), key_env(SECRET_KEY));
    let bad = format!("{TD}:8");
    assert!(matches!(
        t.reconcile(&request(&bad, None)).await,
        Reconciled::NotDone(_)
    ));
    let done = t
        .rollback(&request(&bad, Some(&format!("{TD}:7"))))
        .await
        .unwrap();
    assert!(
        done.detail.contains("rolling back service deployment"),
        "{}",
        done.detail
    );
    assert_eq!(
        svc.lock().unwrap().stopped,
        [json!({"serviceDeploymentArn": arn, "stopType": "ROLLBACK"})]
    );
    assert_eq!(
        aws.operations(),
        [
            "DescribeServices",
            "ListServiceDeployments",
            "StopServiceDeployment"
        ]
    );
}

#[tokio::test]
async fn ecs_throttling_exceptions_are_retried() {
    let svc = ecs_service(None, 2);
    let aws = ecs_server(svc.clone()).await;
    let t = target(&ecs_config(&aws.url()), key_env(SECRET_KEY));
    let done = t
        .rollback(&request(&format!("{TD}:8"), Some(&format!("{TD}:7"))))
        .await
        .unwrap();
    assert_eq!(done.returned_to, Some(format!("{TD}:7")));
    // Two throttled ListServiceDeployments, then the list and the update.
    assert_eq!(
        aws.operations(),
        [
            "ListServiceDeployments",
            "ListServiceDeployments",
            "ListServiceDeployments",
            "UpdateService"
        ]
    );
}

/// A CodeDeploy deployment group: its unfinished deployment and what was
/// stopped.
struct Group {
    active: Option<String>,
    stopped: Vec<Value>,
}

fn codedeploy_answer(r: &Recorded, g: &Mutex<Group>) -> Reply {
    assert_eq!(r.header("content-type"), Some("application/x-amz-json-1.1"));
    let op = r
        .header("x-amz-target")
        .and_then(|t| t.strip_prefix("CodeDeploy_20141006."))
        .unwrap_or("")
        .to_string();
    let body = r.json();
    let mut g = g.lock().unwrap();
    match op.as_str() {
        "ListDeployments" => {
            assert_eq!(
                body,
                json!({"applicationName": "web-app", "deploymentGroupName": "prod",
                    "includeOnlyStatuses": ["Created", "Queued", "InProgress", "Ready"]})
            );
            Reply::json(
                200,
                json!({"deployments": g.active.iter().collect::<Vec<_>>()}),
            )
        }
        "StopDeployment" => {
            if g.active.as_deref() != body["deploymentId"].as_str() {
                return aws_error(
                    400,
                    "DeploymentAlreadyCompletedException",
                    "The deployment is already completed",
                );
            }
            g.stopped.push(body);
            g.active = None;
            Reply::json(
                200,
                json!({"status": "Pending", "statusMessage": "Stop requested"}),
            )
        }
        "GetDeploymentGroup" => {
            assert_eq!(
                body,
                json!({"applicationName": "web-app", "deploymentGroupName": "prod"})
            );
            let attempted = match &g.active {
                Some(id) => {
                    json!({"deploymentId": id, "status": "InProgress", "createTime": 1.7e9})
                }
                None => json!({"deploymentId": "d-BAD", "status": "Stopped", "createTime": 1.7e9}),
            };
            Reply::json(
                200,
                json!({"deploymentGroupInfo": {
                    "applicationName": "web-app", "deploymentGroupName": "prod",
                    "lastAttemptedDeployment": attempted,
                    "lastSuccessfulDeployment": {"deploymentId": "d-GOOD", "status": "Succeeded", "createTime": 1.6e9}
                }}),
            )
        }
        "GetDeployment" => {
            let status = if g.active.is_some() {
                "InProgress"
            } else {
                "Stopped"
            };
            Reply::json(
                200,
                json!({"deploymentInfo": {"deploymentId": body["deploymentId"], "status": status}}),
            )
        }
        other => aws_error(
            400,
            "UnknownOperationException",
            &format!("unknown {other}"),
        ),
    }
}

#[tokio::test]
async fn codedeploy_stops_the_deployment_with_rollback_once() {
    let g = Arc::new(Mutex::new(Group {
        active: Some("d-BAD".into()),
        stopped: vec![],
    }));
    let gg = g.clone();
    let aws = AwsServer::start("codedeploy", REGION, vec![Key::example()], move |r| {
        codedeploy_answer(r, &gg)
    })
    .await;
    let t = target(&codedeploy_config(&aws.url()), key_env(SECRET_KEY));
    // from_platform: the deployment on its way in.
    assert_eq!(t.live_deployment().await.unwrap(), "d-BAD");
    assert!(matches!(
        t.reconcile(&request("d-BAD", None)).await,
        Reconciled::NotDone(_)
    ));
    let done = t.rollback(&request("d-BAD", Some("d-GOOD"))).await.unwrap();
    assert!(
        done.detail
            .contains("stopping deployment d-BAD with rollback"),
        "{}",
        done.detail
    );
    assert_eq!(
        g.lock().unwrap().stopped,
        [json!({"deploymentId": "d-BAD", "autoRollbackEnabled": true})]
    );
    assert!(matches!(
        t.reconcile(&request("d-BAD", None)).await,
        Reconciled::Done(_)
    ));
    // Finished: the live id is the last successful deployment.
    assert_eq!(t.live_deployment().await.unwrap(), "d-GOOD");
    // Nothing unfinished to stop any more: final, and no second stop.
    let err = t.rollback(&request("d-BAD", None)).await.unwrap_err();
    assert!(
        err.to_string().contains("no unfinished deployment"),
        "{err}"
    );
    assert_eq!(g.lock().unwrap().stopped.len(), 1);
    assert!(aws.refused().is_empty());
}

/// A stand-in of EC2 instance metadata (IMDSv2): a token first, then the
/// role and its credentials, each set of credentials with its own key.
struct Imds {
    server: HttpServer,
    fetched: Arc<AtomicUsize>,
}

fn temp_key(n: usize) -> Key {
    Key {
        access: format!("ASIATEMP{n}"),
        secret: format!("temp-secret-{n}"),
        token: Some(format!("session-token-{n}")),
    }
}

fn expiration(after: Duration) -> String {
    let secs = (SystemTime::now() + after)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Days to a civil date (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let t = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

impl Imds {
    async fn start() -> Self {
        let fetched = Arc::new(AtomicUsize::new(0));
        let f = fetched.clone();
        let server = HttpServer::start(move |r| {
            const TOKEN: &str = "imds-session-AQAEXAMPLE";
            match (r.method.as_str(), r.path.as_str()) {
                ("PUT", "/latest/api/token") => {
                    assert!(r.header("x-aws-ec2-metadata-token-ttl-seconds").is_some());
                    Reply::text(200, TOKEN)
                }
                _ if r.header("x-aws-ec2-metadata-token") != Some(TOKEN) => Reply::status(401),
                ("GET", "/latest/meta-data/iam/security-credentials/") => {
                    Reply::text(200, "backstop-role")
                }
                ("GET", "/latest/meta-data/iam/security-credentials/backstop-role") => {
                    let n = f.fetch_add(1, Ordering::SeqCst) + 1;
                    let k = temp_key(n);
                    Reply::json(
                        200,
                        json!({"Code": "Success", "LastUpdated": expiration(Duration::ZERO), "Type": "AWS-HMAC",
                            "AccessKeyId": k.access, "SecretAccessKey": k.secret, "Token": k.token,
                            "Expiration": expiration(Duration::from_secs(6 * 3600))}),
                    )
                }
                _ => Reply::status(404),
            }
        })
        .await;
        Self { server, fetched }
    }
}

#[tokio::test]
async fn credentials_from_instance_metadata_are_cached_and_fetched_again_when_expired() {
    let imds = Imds::start().await;
    let state = alias("8");
    let s = state.clone();
    // The first temporary key is taken to have expired once used twice.
    let uses = Arc::new(AtomicUsize::new(0));
    let u = uses.clone();
    let aws = AwsServer::start("lambda", REGION, vec![temp_key(1), temp_key(2)], move |r| {
        if r.header("x-amz-security-token") == Some("session-token-1")
            && u.fetch_add(1, Ordering::SeqCst) >= 2
        {
            return aws_error(
                403,
                "ExpiredTokenException",
                "The security token included in the request is expired",
            );
        }
        lambda_answer(r, &s)
    })
    .await;
    let t = target(
        &lambda_config(&aws.url()),
        env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.server.url(""))]),
    );
    assert_eq!(t.live_deployment().await.unwrap(), "8");
    assert_eq!(t.live_deployment().await.unwrap(), "8");
    assert_eq!(imds.fetched.load(Ordering::SeqCst), 1, "cached");
    // The third use is refused as expired: fresh credentials, one more try.
    let done = t.rollback(&request("8", Some("7"))).await.unwrap();
    assert_eq!(done.returned_to.as_deref(), Some("7"));
    assert_eq!(imds.fetched.load(Ordering::SeqCst), 2);
    assert!(aws.refused().is_empty(), "{:?}", aws.refused());
    let tokens: Vec<String> = aws
        .requests()
        .iter()
        .filter_map(|r| r.header("x-amz-security-token").map(str::to_string))
        .collect();
    assert_eq!(
        tokens,
        [
            "session-token-1",
            "session-token-1",
            "session-token-1",
            "session-token-2",
            "session-token-2"
        ]
    );

    // Instance metadata disabled, and nothing else: a clear final error.
    let t = target(
        &lambda_config(&aws.url()),
        env(&[("AWS_EC2_METADATA_DISABLED", "true")]),
    );
    let err = t.live_deployment().await.unwrap_err();
    assert!(matches!(err, RollbackError::Final { .. }), "{err:?}");
    assert!(err.to_string().contains("no AWS credentials"), "{err}");
}

#[tokio::test]
async fn container_credentials_are_read_with_their_authorization_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "container-auth-SECRET\n").unwrap();
    let creds = HttpServer::start(|r| {
        if r.header("authorization") != Some("container-auth-SECRET") {
            return Reply::json(401, json!({"message": "unauthorized"}));
        }
        let k = temp_key(1);
        Reply::json(
            200,
            json!({"AccessKeyId": k.access, "SecretAccessKey": k.secret, "Token": k.token,
                "Expiration": expiration(Duration::from_secs(3600)),
                "RoleArn": "arn:aws:iam::123456789012:role/backstop"}),
        )
    })
    .await;
    let svc = ecs_service(None, 0);
    let s = svc.clone();
    let aws = AwsServer::start("ecs", REGION, vec![temp_key(1)], move |r| ecs_answer(r, &s)).await;
    let t = target(
        &ecs_config(&aws.url()),
        env(&[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                &creds.url("/v2/credentials/abc"),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token_file.to_str().unwrap(),
            ),
        ]),
    );
    assert_eq!(t.live_deployment().await.unwrap(), format!("{TD}:8"));
    assert_eq!(creds.requests().len(), 1);
    assert!(aws.refused().is_empty());

    // A wrong authorization token: the endpoint's refusal, named, final.
    let t = target(
        &ecs_config(&aws.url()),
        env(&[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                &creds.url("/v2/credentials/abc"),
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "wrong-auth-value"),
        ]),
    );
    let err = t.live_deployment().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("container credentials endpoint answered 401"),
        "{msg}"
    );
    assert!(!msg.contains("wrong-auth-value"), "{msg}");
}

/// STS `AssumeRoleWithWebIdentity` as the query protocol answers it (the
/// STS API reference, botocore's `botocore/data/sts/2011-06-15/
/// service-2.json`: `AssumeRoleWithWebIdentityResponse` with `Credentials`
/// — `AccessKeyId`, `SecretAccessKey`, `SessionToken`, `Expiration` —,
/// `SubjectFromWebIdentityToken`, `AssumedRoleUser`, `Audience`; an error as
/// `<ErrorResponse><Error><Type>`, `<Code>`, `<Message>`).
fn sts_answer(r: &Recorded, token: &str) -> Reply {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&r.body).into_owned().collect();
    assert_eq!(r.method, "POST");
    assert_eq!(form["Action"], "AssumeRoleWithWebIdentity");
    assert_eq!(form["Version"], "2011-06-15");
    assert_eq!(form["RoleArn"], "arn:aws:iam::123456789012:role/backstop");
    assert_eq!(form["RoleSessionName"], "backstop");
    if form["WebIdentityToken"] != token {
        let mut reply = Reply::text(
            400,
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Couldn't retrieve verification key from your identity provider</Message></Error><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>",
        );
        reply.headers = vec![("content-type".into(), "text/xml".into())];
        return reply;
    }
    let k = temp_key(1);
    let mut reply = Reply::text(
        200,
        &format!(
            "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:prod:backstop</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/backstop/backstop</Arn>
      <AssumedRoleId>AROACLKWSDQRAOEXAMPLE:backstop</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>{}</SessionToken>
      <SecretAccessKey>{}</SecretAccessKey>
      <Expiration>{}</Expiration>
      <AccessKeyId>{}</AccessKeyId>
    </Credentials>
    <Provider>oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>ad4156e9-bce1-11e2-82e6-6b6efEXAMPLE</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>",
            k.token.unwrap(),
            k.secret,
            expiration(Duration::from_secs(3600)),
            k.access
        ),
    );
    reply.headers = vec![("content-type".into(), "text/xml".into())];
    reply
}

#[tokio::test]
async fn a_web_identity_token_is_exchanged_with_sts_for_temporary_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token = "eyJhbGciOiJSUzI1NiJ9.web-identity-SECRET.sig";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let sts = HttpServer::start(move |r| sts_answer(r, token)).await;
    let g = Arc::new(Mutex::new(Group {
        active: Some("d-BAD".into()),
        stopped: vec![],
    }));
    let gg = g.clone();
    let aws = AwsServer::start("codedeploy", REGION, vec![temp_key(1)], move |r| {
        codedeploy_answer(r, &gg)
    })
    .await;
    let web_identity = |file: &str| {
        env(&[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", file),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/backstop"),
            ("AWS_ENDPOINT_URL_STS", &sts.url("")),
        ])
    };
    let t = target(
        &codedeploy_config(&aws.url()),
        web_identity(token_file.to_str().unwrap()),
    );
    assert_eq!(t.live_deployment().await.unwrap(), "d-BAD");
    t.rollback(&request("d-BAD", None)).await.unwrap();
    assert_eq!(sts.requests().len(), 1, "the credentials are kept");
    assert!(aws.refused().is_empty(), "{:?}", aws.refused());

    // A token the identity provider does not vouch for: STS's refusal,
    // named and final, without the token.
    let other = dir.path().join("other");
    std::fs::write(&other, "eyJ-another-token-SECRET").unwrap();
    let t = target(
        &codedeploy_config(&aws.url()),
        web_identity(other.to_str().unwrap()),
    );
    let err = t.live_deployment().await.unwrap_err();
    assert!(matches!(err, RollbackError::Final { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(
            "STS AssumeRoleWithWebIdentity answered 400 Bad Request, InvalidIdentityToken"
        ),
        "{msg}"
    );
    assert!(!msg.contains("SECRET"), "{msg}");
}
