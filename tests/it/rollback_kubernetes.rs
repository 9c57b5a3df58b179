//! The `kubernetes` and `argo_rollouts` rollback targets against a stand-in
//! of the Kubernetes API on loopback, answering with the objects and the
//! `Status` errors a real API server sends.
//!
//! The shapes follow the Kubernetes API reference (apps/v1 `Deployment` and
//! `ReplicaSet`, `meta/v1` `Status`), the revision annotation the
//! Deployment controller writes (`RevisionAnnotation`,
//! `deployment.kubernetes.io/revision`, in
//! `pkg/controller/deployment/util/deployment_util.go` of
//! github.com/kubernetes/kubernetes), kubectl's `rollout undo`
//! (`staging/src/k8s.io/kubectl/pkg/polymorphichelpers/rollback.go`), and
//! Argo Rollouts' `Rollout` with its `rollout.argoproj.io/revision`
//! annotation (`RevisionAnnotation` and `SetRolloutRevision` in
//! `utils/annotations/annotations.go` of github.com/argoproj/argo-rollouts).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backstop::evidence::{Reconciled, RollbackDone, RollbackRequest};
use backstop::retry::RetryPolicy;
use backstop::rollback::argo_rollouts::{ArgoRollouts, ArgoRolloutsConfig};
use backstop::rollback::kubernetes::{Kubernetes, KubernetesConfig};
use backstop::rollback::{BuildContext, RollbackError};
use backstop_tests::{closed_port, HttpServer, Recorded, Reply};

use crate::daemon::{run_cli, Daemon};
use serde_json::{json, Value};

pub(crate) const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.c2VjcmV0LXRva2VuLW9uZQ.sig";
pub(crate) const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/prod/deployments/web";
pub(crate) const REPLICA_SETS: &str = "/apis/apps/v1/namespaces/prod/replicasets";
const ROLLOUT: &str = "/apis/argoproj.io/v1alpha1/namespaces/prod/rollouts/web";
const ROLLOUT_STATUS: &str = "/apis/argoproj.io/v1alpha1/namespaces/prod/rollouts/web/status";
pub(crate) const DEPLOYMENT_UID: &str = "5f0c1e2a-8d4b-4c1e-9f3a-2b7d6e8c9a01";
const OTHER_UID: &str = "0b1d2c3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e";
const ROLLOUT_UID: &str = "7e6d5c4b-3a29-4180-b7c6-d5e4f3a2b1c0";

// The objects the stand-in answers with.

fn pod_template(image: &str, hash: Option<(&str, &str)>) -> Value {
    let mut labels = json!({"app": "web"});
    if let Some((key, value)) = hash {
        labels[key] = json!(value);
    }
    json!({
        "metadata": {"creationTimestamp": null, "labels": labels},
        "spec": {
            "containers": [{
                "name": "web",
                "image": image,
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "securityContext": {},
            "schedulerName": "default-scheduler"
        }
    })
}

pub(crate) fn deployment(revision: u32, image: &str, resource_version: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "prod",
            "uid": DEPLOYMENT_UID,
            "resourceVersion": resource_version,
            "generation": revision + 3,
            "creationTimestamp": "2024-05-02T09:14:03Z",
            "labels": {"app": "web"},
            "annotations": {
                "deployment.kubernetes.io/revision": revision.to_string(),
                "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\"}\n"
            }
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": pod_template(image, None),
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600
        },
        "status": {
            "observedGeneration": revision + 3,
            "replicas": 3,
            "updatedReplicas": 3,
            "readyReplicas": 1,
            "availableReplicas": 1,
            "unavailableReplicas": 2,
            "conditions": [{
                "type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                "lastUpdateTime": "2024-05-02T10:01:12Z", "lastTransitionTime": "2024-05-02T09:14:03Z",
                "message": "ReplicaSet \"web-7c9d5f6b8\" has successfully progressed."
            }]
        }
    })
}

fn paused(mut d: Value) -> Value {
    d["spec"]["paused"] = json!(true);
    d
}

/// A ReplicaSet `owner` controls: a Deployment's, or a Rollout's when the
/// uid is `ROLLOUT_UID`.
pub(crate) fn replica_set(name: &str, revision: u32, image: &str, owner: &str) -> Value {
    let hash = name.rsplit('-').next().unwrap();
    let (hash_label, revision_key, owner_ref) = if owner == ROLLOUT_UID {
        (
            "rollouts-pod-template-hash",
            "rollout.argoproj.io/revision",
            json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "web",
                   "uid": owner, "controller": true, "blockOwnerDeletion": true}),
        )
    } else {
        (
            "pod-template-hash",
            "deployment.kubernetes.io/revision",
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "name": if owner == DEPLOYMENT_UID { "web" } else { "web-canary" },
                   "uid": owner, "controller": true, "blockOwnerDeletion": true}),
        )
    };
    json!({
        "metadata": {
            "name": name,
            "namespace": "prod",
            "uid": format!("rs-{name}"),
            "resourceVersion": format!("{}", 40000 + revision),
            "generation": 2,
            "labels": {"app": "web", hash_label: hash},
            "annotations": {
                "deployment.kubernetes.io/desired-replicas": "3",
                "deployment.kubernetes.io/max-replicas": "4",
                revision_key: revision.to_string(),
                "kubernetes.io/change-cause": format!("kubectl set image deployment/web web={image}")
            },
            "ownerReferences": [owner_ref]
        },
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web", hash_label: hash}},
            "template": pod_template(image, Some((hash_label, hash)))
        },
        "status": {"replicas": 0, "observedGeneration": 2}
    })
}

pub(crate) fn replica_set_list(items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSetList",
        "metadata": {"resourceVersion": "48220"},
        "items": items
    })
}

fn rollout(revision: u32, image: &str) -> Value {
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {
            "name": "web",
            "namespace": "prod",
            "uid": ROLLOUT_UID,
            "resourceVersion": "9931",
            "generation": 5,
            "annotations": {"rollout.argoproj.io/revision": revision.to_string()}
        },
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "template": pod_template(image, None),
            "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}]}}
        },
        "status": {
            "abort": false,
            "currentPodHash": "7c9d5f6b8",
            "stableRS": "5d8f7c9b6",
            "currentStepIndex": 1,
            "phase": "Paused",
            "pauseConditions": [{"reason": "CanaryPauseStep", "startTime": "2024-05-02T10:03:00Z"}]
        }
    })
}

fn aborted(mut r: Value) -> Value {
    r["status"]["abort"] = json!(true);
    r["status"]["phase"] = json!("Degraded");
    r
}

/// The API server's error object.
fn status_error(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"name": "web", "group": "apps", "kind": "deployments"},
        "code": code
    })
}

// The stand-in: each route answers with its replies in turn, repeating the
// last; anything else is a 404 `Status`.

type Answer = Box<dyn Fn() -> Reply + Send + Sync>;

fn ok(v: Value) -> Answer {
    Box::new(move || Reply::json(200, v.clone()))
}

fn fails(code: u16, reason: &'static str, message: &str) -> Answer {
    let body = status_error(code, reason, message);
    Box::new(move || Reply::json(code, body.clone()))
}

fn throttled(retry_after: &'static str) -> Answer {
    let body = status_error(
        429,
        "TooManyRequests",
        "Too many requests, please try again later.",
    );
    Box::new(move || Reply::json(429, body.clone()).header("retry-after", retry_after))
}

async fn stand_in(routes: Vec<(&'static str, &'static str, Vec<Answer>)>) -> HttpServer {
    HttpServer::start(router(routes)).await
}

/// The stand-in's handler: the routes' answers in turn, else a 404.
fn router(
    routes: Vec<(&'static str, &'static str, Vec<Answer>)>,
) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    let routes: Vec<_> = routes
        .into_iter()
        .map(|(method, path, answers)| (method, path, answers, AtomicUsize::new(0)))
        .collect();
    move |r: &Recorded| {
        for (method, path, answers, seen) in &routes {
            if *method == r.method && *path == r.path {
                let n = seen.fetch_add(1, Ordering::SeqCst).min(answers.len() - 1);
                return answers[n]();
            }
        }
        Reply::json(
            404,
            status_error(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        )
    }
}

fn calls(server: &HttpServer, method: &str, path: &str) -> Vec<Recorded> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.method == method && r.path == path)
        .collect()
}

// The targets under test.

fn quick() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        deadline: Duration::from_secs(5),
    }
}

struct Token {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn token() -> Token {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    Token { _dir: dir, path }
}

fn kubernetes(api_url: &str, token_file: &Path, policy: RetryPolicy) -> Kubernetes {
    let config: KubernetesConfig = serde_json::from_value(json!({
        "deployment": "web",
        "namespace": "prod",
        "api_url": api_url,
        "token_file": token_file,
        "timeout": "2s"
    }))
    .unwrap();
    config.build(&BuildContext { policy }).unwrap()
}

fn argo(server: &HttpServer, token_file: &Path, action: Value) -> ArgoRollouts {
    let config: ArgoRolloutsConfig = serde_json::from_value(json!({
        "rollout": "web",
        "namespace": "prod",
        "api_url": server.url(""),
        "token_file": token_file,
        "timeout": "2s",
        "action": action
    }))
    .unwrap();
    config.build(&BuildContext { policy: quick() }).unwrap()
}

fn request(return_to: Option<&str>) -> RollbackRequest {
    RollbackRequest {
        service: "web".into(),
        deployment: "web:4".into(),
        return_to: return_to.map(str::to_string),
        rule: "health failing".into(),
        reason: "health failed 3 times in a row".into(),
        evidence: vec![],
        fencing_token: None,
    }
}

/// The usual history: revision 4 is current, 2 the one before (3 is a
/// ReplicaSet of another Deployment that matches the same labels).
fn history() -> Value {
    replica_set_list(vec![
        replica_set("web-7c9d5f6b8", 4, "registry.example/web:4", DEPLOYMENT_UID),
        replica_set(
            "web-canary-58c6d7f9b",
            3,
            "registry.example/web:canary",
            OTHER_UID,
        ),
        replica_set("web-5d8f7c9b6", 2, "registry.example/web:2", DEPLOYMENT_UID),
        replica_set("web-6b7f8d9c4", 1, "registry.example/web:1", DEPLOYMENT_UID),
    ])
}

#[tokio::test]
async fn undo_patches_the_deployment_back_to_its_previous_revision() {
    let server = stand_in(vec![
        (
            "GET",
            DEPLOYMENT,
            vec![ok(deployment(4, "registry.example/web:4", "48213"))],
        ),
        ("GET", REPLICA_SETS, vec![ok(history())]),
        (
            "PATCH",
            DEPLOYMENT,
            vec![ok(deployment(5, "registry.example/web:2", "48230"))],
        ),
    ])
    .await;
    let token = token();
    let done = kubernetes(&server.url(""), &token.path, quick())
        .rollback(&request(None))
        .await
        .unwrap();

    assert_eq!(
        done.returned_to.as_deref(),
        Some("revision 2 (web-5d8f7c9b6)")
    );
    assert!(
        done.detail
            .contains("rolled back from revision 4 to revision 2"),
        "{}",
        done.detail
    );
    let list = &calls(&server, "GET", REPLICA_SETS)[0];
    assert_eq!(list.query.as_deref(), Some("labelSelector=app%3Dweb"));
    let patches = calls(&server, "PATCH", DEPLOYMENT);
    assert_eq!(patches.len(), 1);
    let patch = &patches[0];
    assert_eq!(
        patch.header("content-type"),
        Some("application/json-patch+json")
    );
    assert_eq!(
        patch.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(patch.query.as_deref(), Some("fieldManager=backstop"));
    assert_eq!(
        patch.json(),
        json!([
            {"op": "replace", "path": "/metadata/resourceVersion", "value": "48213"},
            {"op": "replace", "path": "/spec/template",
             "value": pod_template("registry.example/web:2", None)},
            {"op": "replace", "path": "/metadata/annotations", "value": {
                "deployment.kubernetes.io/revision": "4",
                "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\"}\n",
                "kubernetes.io/change-cause": "kubectl set image deployment/web web=registry.example/web:2",
                "backstop/rollback-key": "web:web%3A4"
            }}
        ])
    );
}

#[tokio::test]
async fn undo_returns_to_the_revision_the_agent_names() {
    let server = stand_in(vec![
        (
            "GET",
            DEPLOYMENT,
            vec![ok(deployment(4, "registry.example/web:4", "48213"))],
        ),
        ("GET", REPLICA_SETS, vec![ok(history())]),
        (
            "PATCH",
            DEPLOYMENT,
            vec![ok(deployment(5, "registry.example/web:1", "48230"))],
        ),
    ])
    .await;
    let token = token();
    let done = kubernetes(&server.url(""), &token.path, quick())
        .rollback(&request(Some("6b7f8d9c4")))
        .await
        .unwrap();
    assert_eq!(
        done.returned_to.as_deref(),
        Some("revision 1 (web-6b7f8d9c4)")
    );
    let patch = &calls(&server, "PATCH", DEPLOYMENT)[0];
    assert_eq!(
        patch.json()[1]["value"]["spec"]["containers"][0]["image"],
        "registry.example/web:1"
    );
}

#[tokio::test]
async fn undo_succeeds_without_a_patch_when_the_deployment_already_has_that_template() {
    let server = stand_in(vec![
        (
            "GET",
            DEPLOYMENT,
            vec![ok(deployment(4, "registry.example/web:2", "48213"))],
        ),
        ("GET", REPLICA_SETS, vec![ok(history())]),
    ])
    .await;
    let token = token();
    let done = kubernetes(&server.url(""), &token.path, quick())
        .rollback(&request(None))
        .await
        .unwrap();
    assert!(
        done.detail.contains("already at that template"),
        "{}",
        done.detail
    );
    assert_eq!(
        done.returned_to.as_deref(),
        Some("revision 2 (web-5d8f7c9b6)")
    );
    assert!(calls(&server, "PATCH", DEPLOYMENT).is_empty());
}

#[tokio::test]
async fn undo_refuses_a_paused_deployment_and_sends_no_patch() {
    let server = stand_in(vec![
        (
            "GET",
            DEPLOYMENT,
            vec![ok(paused(deployment(4, "registry.example/web:4", "48213")))],
        ),
        ("GET", REPLICA_SETS, vec![ok(history())]),
    ])
    .await;
    let token = token();
    let err = kubernetes(&server.url(""), &token.path, quick())
        .rollback(&request(None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RollbackError::Final {
                target: "kubernetes",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("deployment is paused; resume it first"),
        "{err}"
    );
    assert!(calls(&server, "PATCH", DEPLOYMENT).is_empty());
}

#[tokio::test]
async fn undo_without_a_previous_revision_fails_for_good() {
    let only_current = replica_set_list(vec![
        replica_set("web-7c9d5f6b8", 4, "registry.example/web:4", DEPLOYMENT_UID),
        replica_set(
            "web-canary-58c6d7f9b",
            3,
            "registry.example/web:canary",
            OTHER_UID,
        ),
    ]);
    let server = stand_in(vec![
        (
            "GET",
            DEPLOYMENT,
            vec![ok(deployment(4, "registry.example/web:4", "48213"))],
        ),
        ("GET", REPLICA_SETS, vec![ok(only_current)]),
    ])
    .await;
    let token = token();
    let err = kubernetes(&server.url(""), &token.path, quick())
        .rollback(&request(None))
        .await
        .unwrap_err();
    assert!(matches!(err, RollbackError::Final { .. }), "{err}");
    assert!(err.to_string().contains("no previous revision"), "{err}");
    assert_eq!(calls(&server, "GET", DEPLOYMENT).len(), 1);
    assert!(calls(&server, "PATCH", DEPLOYMENT).is_empty());
}

#[tokio::test]
async fn the_token_file_is_read_again_for_every_request() {
    let server = stand_in(vec![
        (
            "GET",
            DEPLOYMENT,
            vec![ok(deployment(4, "registry.example/web:2", "48213"))],
        ),
        ("GET", REPLICA_SETS, vec![ok(history())]),
    ])
    .await;
    let token = token();
    let target = kubernetes(&server.url(""), &token.path, quick());
    target.rollback(&request(None)).await.unwrap();
    std::fs::write(&token.path, "rotated-token-two").unwrap();
    target.rollback(&request(None)).await.unwrap();

    let seen: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or("").to_string())
        .collect();
    assert_eq!(seen.len(), 4);
    assert_eq!(
        seen[..2],
        [format!("Bearer {TOKEN}"), format!("Bearer {TOKEN}")]
    );
    assert_eq!(
        seen[2..],
        ["Bearer rotated-token-two", "Bearer rotated-token-two"]
    );
}

#[tokio::test]
async fn api_refusals_are_final_and_never_show_the_token() {
    let forbidden = "deployments.apps \"web\" is forbidden: User \"system:serviceaccount:prod:backstop\" \
                     cannot get resource \"deployments\" in API group \"apps\" in the namespace \"prod\"";
    let invalid = "Deployment.apps \"web\" is invalid: spec.template.spec.containers[0].image: Required value";
    let echoed = format!("token {TOKEN} is not valid for this audience");
    let cases: Vec<(&str, &str, u16, &str, String, &str)> = vec![
        (
            "GET",
            DEPLOYMENT,
            401,
            "Unauthorized",
            "Unauthorized".into(),
            "401 Unauthorized: Unauthorized",
        ),
        (
            "GET",
            DEPLOYMENT,
            403,
            "Forbidden",
            forbidden.into(),
            "cannot get resource \"deployments\"",
        ),
        (
            "GET",
            DEPLOYMENT,
            403,
            "Forbidden",
            echoed,
            "token *** is not valid",
        ),
        (
            "GET",
            DEPLOYMENT,
            404,
            "NotFound",
            "deployments.apps \"web\" not found".into(),
            "404 Not Found: deployments.apps \"web\" not found",
        ),
        (
            "PATCH",
            DEPLOYMENT,
            422,
            "Invalid",
            invalid.into(),
            "422 Unprocessable Entity: Deployment.apps \"web\" is invalid",
        ),
    ];
    let token = token();
    for (method, path, code, reason, message, want) in cases {
        let mut routes = vec![
            (
                "GET",
                DEPLOYMENT,
                vec![ok(deployment(4, "registry.example/web:4", "48213"))],
            ),
            ("GET", REPLICA_SETS, vec![ok(history())]),
            (
                "PATCH",
                DEPLOYMENT,
                vec![ok(deployment(5, "registry.example/web:2", "48230"))],
            ),
        ];
        for route in &mut routes {
            if route.0 == method && route.1 == path {
                route.2 = vec![fails(code, reason, &message)];
            }
        }
        let server = stand_in(routes).await;
        let err = kubernetes(&server.url(""), &token.path, quick())
            .rollback(&request(None))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RollbackError::Final { .. }), "{code}: {text}");
        assert!(text.contains(want), "{code}: {text}");
        assert!(
            !text.contains(TOKEN) && !format!("{err:?}").contains(TOKEN),
            "{code}: {text}"
        );
        assert_eq!(
            calls(&server, method, path).len(),
            1,
            "{code} is not retried"
        );
    }
}

#[tokio::test]
async fn a_conflict_on_the_patch_is_retried_once_after_reading_again() {
    let server = stand_in(vec![
        (
            "GET",
            DEPLOYMENT,
            vec![
                ok(deployment(4, "registry.example/web:4", "48213")),
                // Only the status moved (the controller counted ready pods).
                ok(deployment(4, "registry.example/web:4", "48215")),
            ],
        ),
        ("GET", REPLICA_SETS, vec![ok(history())]),
        (
            "PATCH",
            DEPLOYMENT,
            vec![
                fails(409, "Conflict", "Operation cannot be fulfilled on deployments.apps \"web\": the object has been modified; please apply your changes to the latest version and try again"),
                ok(deployment(5, "registry.example/web:2", "48230")),
            ],
        ),
    ])
    .await;
    let token = token();
    let done = kubernetes(&server.url(""), &token.path, quick())
        .rollback(&request(None))
        .await
        .unwrap();
    assert_eq!(
        done.returned_to.as_deref(),
        Some("revision 2 (web-5d8f7c9b6)")
    );
    let patches = calls(&server, "PATCH", DEPLOYMENT);
    assert_eq!(patches.len(), 2);
    assert_eq!(
        patches[1].json()[0]["value"],
        "48215",
        "the second patch carries the new resourceVersion"
    );
    assert_eq!(
        patches[0].json()[1],
        patches[1].json()[1],
        "and the same template"
    );
    assert_eq!(
        calls(&server, "GET", REPLICA_SETS).len(),
        1,
        "the revision chosen first is kept"
    );
}

#[tokio::test]
async fn a_second_conflict_is_final() {
    let server = stand_in(vec![
        (
            "GET",
            DEPLOYMENT,
            vec![ok(deployment(4, "registry.example/web:4", "48213"))],
        ),
        ("GET", REPLICA_SETS, vec![ok(history())]),
        (
            "PATCH",
            DEPLOYMENT,
            vec![fails(409, "Conflict", "the object has been modified")],
        ),
    ])
    .await;
    let token = token();
    let err = kubernetes(&server.url(""), &token.path, quick())
        .rollback(&request(None))
        .await
        .unwrap_err();
    assert!(matches!(err, RollbackError::Final { .. }), "{err}");
    assert!(err.to_string().contains("409 Conflict"), "{err}");
    assert_eq!(calls(&server, "PATCH", DEPLOYMENT).len(), 2);
}

#[tokio::test]
async fn a_new_rollout_seen_after_a_conflict_is_not_undone() {
    let server = stand_in(vec![
        (
            "GET",
            DEPLOYMENT,
            vec![
                ok(deployment(4, "registry.example/web:4", "48213")),
                // Someone deployed revision 5 between the read and the patch.
                ok(deployment(5, "registry.example/web:5", "48240")),
            ],
        ),
        ("GET", REPLICA_SETS, vec![ok(history())]),
        (
            "PATCH",
            DEPLOYMENT,
            vec![fails(409, "Conflict", "the object has been modified")],
        ),
    ])
    .await;
    let token = token();
    let err = kubernetes(&server.url(""), &token.path, quick())
        .rollback(&request(None))
        .await
        .unwrap_err();
    assert!(matches!(err, RollbackError::Final { .. }), "{err}");
    assert!(
        err.to_string().contains("moved from revision 4 to 5"),
        "{err}"
    );
    assert_eq!(calls(&server, "PATCH", DEPLOYMENT).len(), 1);
}

#[tokio::test]
async fn too_many_requests_is_retried_after_the_retry_after_delay() {
    let server = stand_in(vec![
        (
            "GET",
            DEPLOYMENT,
            vec![
                throttled("1"),
                ok(deployment(4, "registry.example/web:4", "48213")),
            ],
        ),
        ("GET", REPLICA_SETS, vec![ok(history())]),
        (
            "PATCH",
            DEPLOYMENT,
            vec![ok(deployment(5, "registry.example/web:2", "48230"))],
        ),
    ])
    .await;
    let token = token();
    let start = Instant::now();
    kubernetes(&server.url(""), &token.path, quick())
        .rollback(&request(None))
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(calls(&server, "GET", DEPLOYMENT).len(), 2);
    assert_eq!(calls(&server, "PATCH", DEPLOYMENT).len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_until_the_api_answers() {
    let server = stand_in(vec![
        ("GET", DEPLOYMENT, vec![ok(deployment(4, "registry.example/web:4", "48213"))]),
        (
            "GET",
            REPLICA_SETS,
            vec![
                fails(503, "ServiceUnavailable", "the server is currently unable to handle the request"),
                fails(500, "InternalError", "an error on the server (\"etcdserver: leader changed\") has prevented the request from succeeding"),
                ok(history()),
            ],
        ),
        ("PATCH", DEPLOYMENT, vec![ok(deployment(5, "registry.example/web:2", "48230"))]),
    ])
    .await;
    let token = token();
    let done = kubernetes(&server.url(""), &token.path, quick())
        .rollback(&request(None))
        .await
        .unwrap();
    assert_eq!(
        done.returned_to.as_deref(),
        Some("revision 2 (web-5d8f7c9b6)")
    );
    assert_eq!(calls(&server, "GET", REPLICA_SETS).len(), 3);
    assert_eq!(calls(&server, "PATCH", DEPLOYMENT).len(), 1);
}

#[tokio::test]
async fn gives_up_at_the_deadline_when_the_api_keeps_failing() {
    let server = stand_in(vec![(
        "GET",
        DEPLOYMENT,
        vec![fails(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        )],
    )])
    .await;
    let token = token();
    let policy = RetryPolicy {
        deadline: Duration::from_millis(800),
        ..quick()
    };
    let start = Instant::now();
    let err = kubernetes(&server.url(""), &token.path, policy)
        .rollback(&request(None))
        .await
        .unwrap_err();
    match &err {
        RollbackError::Exhausted {
            attempts, reason, ..
        } => {
            assert!(*attempts >= 2, "{err}");
            assert!(reason.contains("503 Service Unavailable"), "{err}");
        }
        other => panic!("expected exhaustion, got {other}"),
    }
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn an_unreachable_api_server_is_retried_then_given_up() {
    let token = token();
    let policy = RetryPolicy {
        deadline: Duration::from_millis(300),
        ..quick()
    };
    let err = kubernetes(
        &format!("http://127.0.0.1:{}", closed_port()),
        &token.path,
        policy,
    )
    .rollback(&request(None))
    .await
    .unwrap_err();
    assert!(matches!(err, RollbackError::Exhausted { .. }), "{err}");
    assert!(err.to_string().contains("connection failed"), "{err}");
}

#[tokio::test]
async fn argo_abort_merge_patches_the_status_subresource() {
    let server = stand_in(vec![(
        "PATCH",
        ROLLOUT_STATUS,
        vec![ok(aborted(rollout(4, "registry.example/web:4")))],
    )])
    .await;
    let token = token();
    let target = argo(&server, &token.path, json!("abort"));
    assert_eq!(target.name(), "argo_rollouts");
    let done = target.rollback(&request(None)).await.unwrap();

    assert_eq!(done.returned_to.as_deref(), Some("web-5d8f7c9b6"));
    assert!(
        done.detail.contains("rollout prod/web aborted"),
        "{}",
        done.detail
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        (requests[0].method.as_str(), requests[0].path.as_str()),
        ("PATCH", ROLLOUT_STATUS)
    );
    assert_eq!(
        requests[0].header("content-type"),
        Some("application/merge-patch+json")
    );
    assert_eq!(requests[0].json(), json!({"status": {"abort": true}}));
}

#[tokio::test]
async fn argo_abort_patches_the_rollout_itself_when_there_is_no_status_subresource() {
    let server = stand_in(vec![(
        "PATCH",
        ROLLOUT,
        vec![ok(aborted(rollout(4, "registry.example/web:4")))],
    )])
    .await;
    let token = token();
    argo(&server, &token.path, json!("abort"))
        .rollback(&request(None))
        .await
        .unwrap();
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, [ROLLOUT_STATUS, ROLLOUT]);
}

fn rollout_history() -> Value {
    replica_set_list(vec![
        replica_set("web-7c9d5f6b8", 4, "registry.example/web:4", ROLLOUT_UID),
        replica_set(
            "web-canary-58c6d7f9b",
            3,
            "registry.example/web:canary",
            OTHER_UID,
        ),
        replica_set("web-5d8f7c9b6", 2, "registry.example/web:2", ROLLOUT_UID),
    ])
}

#[tokio::test]
async fn argo_undo_patches_the_rollout_template_back() {
    let server = stand_in(vec![
        (
            "GET",
            ROLLOUT,
            vec![ok(rollout(4, "registry.example/web:4"))],
        ),
        ("GET", REPLICA_SETS, vec![ok(rollout_history())]),
        (
            "PATCH",
            ROLLOUT,
            vec![ok(rollout(5, "registry.example/web:2"))],
        ),
    ])
    .await;
    let token = token();
    let done = argo(&server, &token.path, json!("undo"))
        .rollback(&request(None))
        .await
        .unwrap();
    assert_eq!(
        done.returned_to.as_deref(),
        Some("revision 2 (web-5d8f7c9b6)")
    );
    let patch = &calls(&server, "PATCH", ROLLOUT)[0];
    assert_eq!(
        patch.header("content-type"),
        Some("application/json-patch+json")
    );
    assert_eq!(
        patch.json(),
        json!([
            {"op": "replace", "path": "/metadata/resourceVersion", "value": "9931"},
            {"op": "replace", "path": "/spec/template",
             "value": pod_template("registry.example/web:2", None)},
            {"op": "add", "path": "/metadata/annotations/backstop~1rollback-key", "value": "web:web%3A4"}
        ])
    );
}

#[tokio::test]
async fn argo_abort_then_undo_does_both_in_order() {
    let server = stand_in(vec![
        (
            "PATCH",
            ROLLOUT_STATUS,
            vec![ok(aborted(rollout(4, "registry.example/web:4")))],
        ),
        (
            "GET",
            ROLLOUT,
            vec![ok(aborted(rollout(4, "registry.example/web:4")))],
        ),
        ("GET", REPLICA_SETS, vec![ok(rollout_history())]),
        (
            "PATCH",
            ROLLOUT,
            vec![ok(rollout(5, "registry.example/web:2"))],
        ),
    ])
    .await;
    let token = token();
    let RollbackDone {
        returned_to,
        detail,
    } = argo(&server, &token.path, json!(["abort", "undo"]))
        .rollback(&request(None))
        .await
        .unwrap();
    assert_eq!(returned_to.as_deref(), Some("revision 2 (web-5d8f7c9b6)"));
    assert!(
        detail.contains("aborted") && detail.contains("rolled back from revision 4"),
        "{detail}"
    );
    let order: Vec<(String, String)> = server
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    let want = [
        ("PATCH", ROLLOUT_STATUS),
        ("GET", ROLLOUT),
        ("GET", REPLICA_SETS),
        ("PATCH", ROLLOUT),
    ];
    assert_eq!(order.len(), want.len());
    for ((method, path), (want_method, want_path)) in order.iter().zip(want) {
        assert_eq!((method.as_str(), path.as_str()), (want_method, want_path));
    }
}

#[tokio::test]
async fn argo_undo_failing_after_an_abort_says_the_abort_was_done() {
    let server = stand_in(vec![
        ("PATCH", ROLLOUT_STATUS, vec![ok(aborted(rollout(4, "registry.example/web:4")))]),
        ("GET", ROLLOUT, vec![ok(aborted(rollout(4, "registry.example/web:4")))]),
        (
            "GET",
            REPLICA_SETS,
            vec![fails(403, "Forbidden", "replicasets.apps is forbidden: User \"system:serviceaccount:prod:backstop\" cannot list resource \"replicasets\"")],
        ),
    ])
    .await;
    let token = token();
    let err = argo(&server, &token.path, json!(["abort", "undo"]))
        .rollback(&request(None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RollbackError::Final {
                target: "argo_rollouts",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("abort done, then undo: LIST replicasets"),
        "{err}"
    );
}

/// The Deployment as the undo's patch leaves it: its annotations carry the
/// rollback's mark.
fn marked(mut d: Value, key: &str) -> Value {
    d["metadata"]["annotations"]["backstop/rollback-key"] = json!(key);
    d
}

#[tokio::test]
async fn after_a_restart_the_mark_of_the_undo_tells_whether_it_landed() {
    let token = token();
    for (answer, landed) in [
        (deployment(4, "registry.example/web:4", "48213"), false),
        (
            marked(
                deployment(4, "registry.example/web:4", "48213"),
                "web:web%3A3",
            ),
            false,
        ),
        (
            marked(
                deployment(5, "registry.example/web:2", "48290"),
                "web:web%3A4",
            ),
            true,
        ),
    ] {
        let server = stand_in(vec![("GET", DEPLOYMENT, vec![ok(answer)])]).await;
        let found = kubernetes(&server.url(""), &token.path, quick())
            .reconcile(&request(None))
            .await
            .unwrap();
        match (&found, landed) {
            (Reconciled::Done(d), true) => assert!(d.detail.contains("revision 5"), "{d:?}"),
            (Reconciled::NotDone(_), false) => {}
            _ => panic!("landed {landed}: {found:?}"),
        }
        assert!(
            calls(&server, "PATCH", DEPLOYMENT).is_empty(),
            "asking is not patching"
        );
    }
}

#[tokio::test]
async fn after_a_restart_argo_abort_alone_is_done_once_the_rollout_is_aborted() {
    let token = token();
    for (answer, done) in [
        (rollout(5, "registry.example/web:3"), false),
        (aborted(rollout(5, "registry.example/web:3")), true),
    ] {
        let server = stand_in(vec![("GET", ROLLOUT, vec![ok(answer)])]).await;
        let found = argo(&server, &token.path, json!("abort"))
            .reconcile(&request(None))
            .await
            .unwrap();
        assert_eq!(matches!(found, Reconciled::Done(_)), done, "{found:?}");
        assert!(calls(&server, "PATCH", ROLLOUT_STATUS).is_empty());
    }
}

// Which revision is live: what `[deployment] from_platform` asks.

#[tokio::test]
async fn the_live_deployment_is_the_revision_the_workload_carries() {
    let token = token();
    let server = stand_in(vec![
        (
            "GET",
            DEPLOYMENT,
            vec![
                ok(deployment(4, "registry.example/web:4", "48213")),
                ok(deployment(5, "registry.example/web:5", "48290")),
            ],
        ),
        (
            "GET",
            ROLLOUT,
            vec![ok(rollout(7, "registry.example/web:7"))],
        ),
    ])
    .await;
    let k8s = kubernetes(&server.url(""), &token.path, quick());
    assert_eq!(k8s.live_deployment().await.unwrap(), "4");
    // A new rollout raised the revision.
    assert_eq!(k8s.live_deployment().await.unwrap(), "5");
    let argo = argo(&server, &token.path, json!("abort"));
    assert_eq!(argo.live_deployment().await.unwrap(), "7");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(r.method, "GET", "reading only: {r:?}");
        assert_eq!(r.header("authorization"), Some(&*format!("Bearer {TOKEN}")));
        assert_eq!(r.header("accept"), Some("application/json"));
    }
}

#[tokio::test]
async fn a_workload_never_rolled_out_has_no_live_revision() {
    let token = token();
    let mut fresh = deployment(1, "registry.example/web:1", "100");
    fresh["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("deployment.kubernetes.io/revision");
    let server = stand_in(vec![("GET", DEPLOYMENT, vec![ok(fresh)])]).await;
    let err = kubernetes(&server.url(""), &token.path, quick())
        .live_deployment()
        .await
        .unwrap_err();
    assert!(
        matches!(err, RollbackError::Final { attempts: 1, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.reason(),
        "deployment prod/web has no deployment.kubernetes.io/revision annotation yet"
    );
}

#[tokio::test]
async fn a_live_read_is_retried_after_retry_after_and_server_errors() {
    let token = token();
    let server = stand_in(vec![
        (
            "GET",
            DEPLOYMENT,
            vec![
                throttled("1"),
                fails(503, "ServiceUnavailable", "the server is currently unable to handle the request"),
                ok(deployment(4, "registry.example/web:4", "48213")),
            ],
        ),
        (
            "GET",
            ROLLOUT,
            vec![
                fails(500, "InternalError", "an error on the server (\"etcdserver: leader changed\") has prevented the request from succeeding"),
                ok(rollout(6, "registry.example/web:6")),
            ],
        ),
    ])
    .await;
    let start = Instant::now();
    let live = kubernetes(&server.url(""), &token.path, quick())
        .live_deployment()
        .await
        .unwrap();
    assert_eq!(live, "4");
    // Not before the API server said it may be asked again.
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(calls(&server, "GET", DEPLOYMENT).len(), 3);
    let live = argo(&server, &token.path, json!("undo"))
        .live_deployment()
        .await
        .unwrap();
    assert_eq!(live, "6");
    assert_eq!(calls(&server, "GET", ROLLOUT).len(), 2);
}

#[tokio::test]
async fn a_refused_live_read_is_final_and_never_shows_the_token() {
    let token = token();
    let echoed = format!("token {TOKEN} is not valid for this audience");
    for (code, reason, message, want) in [
        (401, "Unauthorized", "Unauthorized".to_string(), "401 Unauthorized: Unauthorized"),
        (403, "Forbidden", echoed.clone(), "403 Forbidden: token *** is not valid"),
        (
            403,
            "Forbidden",
            "rollouts.argoproj.io \"web\" is forbidden: User \"system:serviceaccount:prod:backstop\" cannot get resource \"rollouts\"".to_string(),
            "cannot get resource \"rollouts\"",
        ),
    ] {
        let server = stand_in(vec![
            ("GET", DEPLOYMENT, vec![fails(code, reason, &message)]),
            ("GET", ROLLOUT, vec![fails(code, reason, &message)]),
        ])
        .await;
        let errors = [
            kubernetes(&server.url(""), &token.path, quick())
                .live_deployment()
                .await
                .unwrap_err(),
            argo(&server, &token.path, json!("abort"))
                .live_deployment()
                .await
                .unwrap_err(),
        ];
        for err in &errors {
            assert!(matches!(err, RollbackError::Final { attempts: 1, .. }), "{code}: {err:?}");
            let text = format!("{err} {err:?}");
            assert!(text.contains(&code.to_string()), "{code}: {text}");
            assert!(!text.contains(TOKEN), "{code}: {text}");
        }
        assert!(errors.iter().any(|e| e.reason().contains(want)), "{code}: {errors:?}");
        assert_eq!(calls(&server, "GET", DEPLOYMENT).len(), 1, "{code} is not retried");
        assert_eq!(calls(&server, "GET", ROLLOUT).len(), 1, "{code} is not retried");
    }
}

#[tokio::test]
async fn a_live_read_gives_up_at_the_deadline() {
    let token = token();
    let server = stand_in(vec![(
        "GET",
        DEPLOYMENT,
        vec![fails(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        )],
    )])
    .await;
    let policy = RetryPolicy {
        deadline: Duration::from_millis(800),
        ..quick()
    };
    let err = kubernetes(&server.url(""), &token.path, policy)
        .live_deployment()
        .await
        .unwrap_err();
    match &err {
        RollbackError::Exhausted {
            attempts, reason, ..
        } => {
            assert!(*attempts >= 2, "{err}");
            assert!(reason.contains("503 Service Unavailable"), "{err}");
            assert_eq!(*attempts as usize, calls(&server, "GET", DEPLOYMENT).len());
        }
        other => panic!("expected exhaustion, got {other}"),
    }
}

// Outside the cluster: a kubeconfig file, over TLS with the cluster's own
// CA. The kubeconfig's shape is client-go's `clientcmd/api/v1` `Config`
// (`tools/clientcmd/api/v1/types.go` of github.com/kubernetes/client-go:
// `clusters[].cluster.server`, `certificate-authority(-data)`,
// `users[].user.token`, `tokenFile`, `client-certificate(-data)`,
// `client-key(-data)`, `contexts[].context.namespace`, `current-context`).
// An API server authenticates a client certificate signed by its client CA
// (`--client-ca-file`) and rejects the handshake of any other.

/// A cluster's certificates, made when the test runs: a CA, the API
/// server's certificate for 127.0.0.1 signed by it, a client certificate
/// signed by it, and a client certificate of another CA.
struct Pki {
    ca_pem: String,
    ca_der: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    server_der: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    server_key_der: Vec<u8>,
    client_pem: String,
    client_key_pem: String,
    stranger_pem: String,
    stranger_key_pem: String,
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap(), key)
}

fn client_cert(issuer: &rcgen::Certificate, issuer_key: &rcgen::KeyPair) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    // The API server takes the user from the CN and the groups from O.
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "backstop");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "deployers");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer, issuer_key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let (ca_cert, ca_key) = ca("kubernetes-ca");
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver");
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = params.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
    let (client_pem, client_key_pem) = client_cert(&ca_cert, &ca_key);
    let (other, other_key) = ca("someone-else");
    let (stranger_pem, stranger_key_pem) = client_cert(&other, &other_key);
    Pki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().clone(),
        server_der: server.der().clone(),
        server_key_der: server_key.serialize_der(),
        client_pem,
        client_key_pem,
        stranger_pem,
        stranger_key_pem,
    }
}

/// The stand-in over TLS; with `client_ca`, it requires a client
/// certificate signed by the cluster's CA, as `--client-ca-file` does.
async fn tls_stand_in(
    pki: &Pki,
    client_ca: bool,
    routes: Vec<(&'static str, &'static str, Vec<Answer>)>,
) -> HttpServer {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if client_ca {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        pki.server_key_der.clone(),
    ));
    let config = builder
        .with_single_cert(vec![pki.server_der.clone()], key)
        .unwrap();
    HttpServer::start_tls(Arc::new(config), router(routes)).await
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Writes `dir/kubeconfig`: one cluster at `server` with the CA inline,
/// the context `ci` (current, namespace `prod`) and the user `deployer`
/// whose fields are `user` (already indented).
fn write_kubeconfig(dir: &Path, server: &str, ca_pem: &str, user: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
preferences: {{}}
clusters:
- name: staging
  cluster:
    server: {server}
    certificate-authority-data: {ca}
contexts:
- name: ci
  context:
    cluster: staging
    user: deployer
    namespace: prod
current-context: ci
users:
- name: deployer
  user:
{user}",
            ca = b64(ca_pem),
        ),
    )
    .unwrap();
    path
}

fn from_kubeconfig(path: &Path, policy: RetryPolicy) -> Kubernetes {
    let config: KubernetesConfig = serde_json::from_value(json!({
        "deployment": "web",
        "kubeconfig": path,
        "timeout": "2s"
    }))
    .unwrap();
    config.build(&BuildContext { policy }).unwrap()
}

#[tokio::test]
async fn a_kubeconfig_with_a_token_reaches_the_api_server_over_tls_in_its_namespace() {
    let pki = pki();
    let server = tls_stand_in(
        &pki,
        false,
        vec![
            (
                "GET",
                DEPLOYMENT,
                vec![ok(deployment(4, "registry.example/web:4", "48213"))],
            ),
            ("GET", REPLICA_SETS, vec![ok(history())]),
            (
                "PATCH",
                DEPLOYMENT,
                vec![ok(deployment(5, "registry.example/web:2", "48230"))],
            ),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_kubeconfig(
        dir.path(),
        &server.url(""),
        &pki.ca_pem,
        &format!("    token: {TOKEN}\n"),
    );
    // No api_url, token_file, ca_file nor namespace: all from the context.
    let target = from_kubeconfig(&path, quick());
    assert_eq!(target.live_deployment().await.unwrap(), "4");
    let done = target.rollback(&request(None)).await.unwrap();
    assert_eq!(
        done.returned_to.as_deref(),
        Some("revision 2 (web-5d8f7c9b6)")
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 4, "{requests:?}");
    for r in &requests {
        assert_eq!(r.header("authorization"), Some(&*format!("Bearer {TOKEN}")));
    }

    // A kubeconfig whose CA is not the cluster's: the handshake fails, and
    // the token never leaves.
    let other = self::pki();
    let path = write_kubeconfig(
        dir.path(),
        &server.url(""),
        &other.ca_pem,
        &format!("    token: {TOKEN}\n"),
    );
    let policy = RetryPolicy {
        deadline: Duration::from_millis(300),
        ..quick()
    };
    let err = from_kubeconfig(&path, policy)
        .live_deployment()
        .await
        .unwrap_err();
    assert!(!format!("{err} {err:?}").contains(TOKEN), "{err}");
    assert_eq!(server.requests().len(), 4, "nothing more was received");
}

#[tokio::test]
async fn a_kubeconfig_with_a_client_certificate_authenticates_by_mutual_tls() {
    let pki = pki();
    let server = tls_stand_in(
        &pki,
        true,
        vec![(
            "GET",
            DEPLOYMENT,
            vec![ok(deployment(4, "registry.example/web:4", "48213"))],
        )],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // The certificate as a file beside the kubeconfig (a relative path),
    // the key inline.
    std::fs::write(dir.path().join("client.crt"), &pki.client_pem).unwrap();
    let path = write_kubeconfig(
        dir.path(),
        &server.url(""),
        &pki.ca_pem,
        &format!(
            "    client-certificate: client.crt\n    client-key-data: {}\n",
            b64(&pki.client_key_pem)
        ),
    );
    assert_eq!(
        from_kubeconfig(&path, quick())
            .live_deployment()
            .await
            .unwrap(),
        "4"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("authorization"),
        None,
        "the certificate alone authenticates"
    );

    // A certificate of another CA: the API server ends the handshake.
    let path = write_kubeconfig(
        dir.path(),
        &server.url(""),
        &pki.ca_pem,
        &format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&pki.stranger_pem),
            b64(&pki.stranger_key_pem)
        ),
    );
    let policy = RetryPolicy {
        deadline: Duration::from_millis(300),
        ..quick()
    };
    let err = from_kubeconfig(&path, policy)
        .live_deployment()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RollbackError::Exhausted { .. } | RollbackError::Final { .. }
        ),
        "{err:?}"
    );
    // Without any certificate (a token file instead), likewise.
    let token = token();
    let path = write_kubeconfig(
        dir.path(),
        &server.url(""),
        &pki.ca_pem,
        &format!("    tokenFile: {}\n", token.path.display()),
    );
    let err = from_kubeconfig(&path, policy)
        .live_deployment()
        .await
        .unwrap_err();
    assert!(!format!("{err} {err:?}").contains(TOKEN), "{err}");
    assert_eq!(server.requests().len(), 1, "no other request got through");
}

#[test]
fn validate_refuses_a_kubeconfig_whose_user_runs_an_exec_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(
        dir.path(),
        "https://203.0.113.10:6443",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: aws\n      args: [eks, get-token, --cluster-name, prod]\n",
    );
    let config = Daemon::write_config(
        dir.path(),
        &format!(
            r#"[service]
name = "shop"

[[probe]]
name = "health"
level = 1
type = "http"
url = "http://127.0.0.1:9/health"

[rollback]
target = "kubernetes"
  [rollback.kubernetes]
  deployment = "web"
  kubeconfig = "{}"
  token_file = "/var/run/token"
"#,
            kubeconfig.display()
        ),
    );
    let (code, out) = run_cli(&["validate", "--config", config.to_str().unwrap()], &[]);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("rollback.kubernetes.kubeconfig:") && out.contains("exec plugin"),
        "{out}"
    );
    assert!(
        out.contains("what works: a token, a tokenFile, or client-certificate"),
        "{out}"
    );
    assert!(
        out.contains("rollback.kubernetes.token_file: cannot be set with `kubeconfig`"),
        "{out}"
    );
}

// In the cluster: the API server's address from the environment the
// kubelet gives every container, as client-go's `rest.InClusterConfig`
// reads it. The real binary runs with the variables set (setting them in
// this multi-threaded test process would race other tests).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_cluster_the_address_comes_from_kubernetes_service_host_and_port() {
    let pki = pki();
    let api = tls_stand_in(
        &pki,
        false,
        vec![(
            "GET",
            DEPLOYMENT,
            vec![ok(deployment(4, "registry.example/web:4", "48213"))],
        )],
    )
    .await;
    let health = HttpServer::start(|_| Reply::text(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let port = closed_port();
    let path = Daemon::write_config(
        dir.path(),
        &format!(
            r#"[agent]
listen = "127.0.0.1:{port}"
state_dir = "{state}"

[service]
name = "shop"

[deployment]
from_platform = true
poll_interval = "200ms"

[[probe]]
name = "health"
level = 1
type = "http"
url = "{health}"
interval = "300ms"

[rollback]
target = "kubernetes"
  [rollback.kubernetes]
  deployment = "web"
  namespace = "prod"
  token_file = "{token}"
  ca_file = "{ca}"
"#,
            state = dir.path().join("state").display(),
            health = health.url("/health"),
            token = token.path.display(),
            ca = ca_file.display(),
        ),
    );
    let api_port = api.addr.port().to_string();
    let agent = Daemon::start(
        &path,
        port,
        "json",
        &[
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &api_port),
        ],
    );
    agent
        .until("revision 4 read from the API server", |s| {
            s["deployment"]["id"] == "4"
        })
        .await;
    let reads = calls(&api, "GET", DEPLOYMENT);
    assert!(!reads.is_empty());
    assert_eq!(
        reads[0].header("authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );
}

// A Rollout that takes its pod template from a Deployment
// (`spec.workloadRef`, `ObjectRef` in `pkg/apis/rollouts/v1alpha1/types.go`
// of github.com/argoproj/argo-rollouts; its `spec.template` stays empty, as
// `pkg/apis/rollouts/validation` requires). Abort is the same merge patch
// as for any Rollout (`abortPatch` in
// `pkg/kubectl-argo-rollouts/cmd/abort/abort.go`); undo cannot apply.

fn rollout_with_ref(revision: u32) -> Value {
    let mut r = rollout(revision, "unused");
    let spec = r["spec"].as_object_mut().unwrap();
    spec.remove("template");
    spec.insert(
        "workloadRef".into(),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web-app", "scaleDown": "onsuccess"}),
    );
    r["status"]["workloadObservedGeneration"] = json!("3");
    r
}

#[tokio::test]
async fn argo_undo_alone_is_refused_on_a_rollout_with_a_workload_ref() {
    let server = stand_in(vec![("GET", ROLLOUT, vec![ok(rollout_with_ref(4))])]).await;
    let token = token();
    let err = argo(&server, &token.path, json!("undo"))
        .rollback(&request(None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RollbackError::Final { attempts: 1, .. }),
        "{err:?}"
    );
    let reason = err.reason();
    assert!(
        reason.contains("rollout prod/web takes its pod template from Deployment prod/web-app (spec.workloadRef), so undo cannot apply"),
        "{reason}"
    );
    assert!(
        reason.contains("set action = \"abort\" in [rollback.argo_rollouts]"),
        "{reason}"
    );
    let methods: Vec<String> = server.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["GET"], "nothing listed, nothing patched");
}

#[tokio::test]
async fn argo_abort_then_undo_aborts_and_skips_the_undo_of_a_workload_ref_rollout() {
    let server = stand_in(vec![(
        "PATCH",
        ROLLOUT_STATUS,
        vec![ok(aborted(rollout_with_ref(4)))],
    )])
    .await;
    let token = token();
    let done = argo(&server, &token.path, json!(["abort", "undo"]))
        .rollback(&request(None))
        .await
        .unwrap();
    assert_eq!(done.returned_to.as_deref(), Some("web-5d8f7c9b6"));
    assert!(
        done.detail.contains("rollout prod/web aborted")
            && done.detail.contains("undo skipped: rollout prod/web takes its pod template from Deployment prod/web-app")
            && done.detail.contains("set action = \"abort\""),
        "{}",
        done.detail
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "the abort only: {requests:?}");
    assert_eq!(requests[0].json(), json!({"status": {"abort": true}}));

    // Undo listed first: its read sees the workloadRef, then the abort.
    let server = stand_in(vec![
        ("GET", ROLLOUT, vec![ok(rollout_with_ref(4))]),
        (
            "PATCH",
            ROLLOUT_STATUS,
            vec![ok(aborted(rollout_with_ref(4)))],
        ),
    ])
    .await;
    let done = argo(&server, &token.path, json!(["undo", "abort"]))
        .rollback(&request(None))
        .await
        .unwrap();
    assert!(
        done.detail.starts_with("undo skipped: ") && done.detail.contains("aborted"),
        "{}",
        done.detail
    );
    let order: Vec<(String, String)> = server
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    assert_eq!(
        order,
        [
            ("GET".to_string(), ROLLOUT.to_string()),
            ("PATCH".to_string(), ROLLOUT_STATUS.to_string())
        ]
    );

    // After a restart, such a Rollout is done once aborted: it never
    // carries the undo's mark.
    let server = stand_in(vec![(
        "GET",
        ROLLOUT,
        vec![ok(aborted(rollout_with_ref(4)))],
    )])
    .await;
    let found = argo(&server, &token.path, json!(["abort", "undo"]))
        .reconcile(&request(None))
        .await
        .unwrap();
    assert!(matches!(found, Reconciled::Done(_)), "{found:?}");
}
