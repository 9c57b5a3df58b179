//! The `kubernetes` rollback target: `kubectl rollout undo` of one
//! Deployment, done the way kubectl's `DeploymentRollbacker` does it. The
//! undo itself (find the ReplicaSets the workload controls, pick a revision,
//! patch its pod template back) is shared with the Argo Rollouts target.
//!
//! ```toml
//! [rollback]
//! target = "kubernetes"
//!   [rollback.kubernetes]
//!   deployment = "web"
//! ```

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::call::{with_retries, BuildContext, RollbackError};
use super::kube::{
    annotation, check_name, controlled_by, label, label_selector, meta, CallError, Cluster,
    ClusterSettings, KubeClient, PatchType, DEFAULT_NAMESPACE_FILE,
};
use super::problem::Problem;
use crate::duration::Dur;
use crate::evidence::{Reconciled, RollbackDone, RollbackRequest};
use crate::retry::{Attempt, RetryPolicy};

/// The target's name in `[rollback] target` and in metrics.
pub const NAME: &str = "kubernetes";

/// The annotation an undo's patch puts on the workload, holding the
/// request's idempotency key: after a restart, the mark tells whether the
/// interrupted call's patch landed.
pub const ROLLBACK_KEY: &str = "backstop/rollback-key";

/// `[rollback.kubernetes]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The Deployment to roll back, in `namespace`. Required.
    pub deployment: String,
    /// The API server. Default
    /// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT` when both
    /// variables are set (an IPv6 host in brackets, as client-go's
    /// `rest.InClusterConfig` does), else `https://kubernetes.default.svc`.
    pub api_url: Option<String>,
    /// The service account's token, read again before every request since
    /// projected tokens rotate. Default
    /// `/var/run/secrets/kubernetes.io/serviceaccount/token`.
    pub token_file: Option<PathBuf>,
    /// The CA that signs the API server's certificate, used for `https` when
    /// the file exists (an explicitly set file must exist). Default
    /// `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`.
    pub ca_file: Option<PathBuf>,
    /// The Deployment's namespace. Default: the kubeconfig context's, else
    /// the pod's own, read from
    /// `/var/run/secrets/kubernetes.io/serviceaccount/namespace`.
    pub namespace: Option<String>,
    /// How long one request may take. Default `10s`.
    pub timeout: Option<Dur>,
    /// A kubeconfig file, for an agent outside the cluster: its context's
    /// server, CA, credentials (a token, a token file, or a client
    /// certificate and key) and namespace. Not with `api_url`, `token_file`
    /// or `ca_file`; `namespace` overrides the context's (default
    /// `default`). Users with `exec` or `auth-provider`, and clusters with
    /// `insecure-skip-tls-verify`, are refused. The `KUBECONFIG` variable
    /// is not read. Default: none, the in-cluster settings.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context. Default its `current-context`.
    pub context: Option<String>,
}

impl KubernetesConfig {
    pub fn cluster(&self) -> ClusterSettings {
        ClusterSettings {
            api_url: self.api_url.clone(),
            token_file: self.token_file.clone(),
            ca_file: self.ca_file.clone(),
            namespace: self.namespace.clone(),
            timeout: self.timeout.map(Into::into),
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
        }
    }

    /// Everything wrong with the subtable, keys relative to it. Reads the
    /// pod's namespace file when `namespace` is not set, and the CA file.
    pub fn validate(&self) -> Vec<Problem> {
        self.check(Path::new(DEFAULT_NAMESPACE_FILE))
            .err()
            .unwrap_or_default()
    }

    /// Builds the target; reads local files as [`KubernetesConfig::validate`]
    /// does, sends nothing.
    pub fn build(&self, cx: &BuildContext) -> Result<Kubernetes, RollbackError> {
        self.build_with(cx, Path::new(DEFAULT_NAMESPACE_FILE))
    }

    fn build_with(
        &self,
        cx: &BuildContext,
        namespace_file: &Path,
    ) -> Result<Kubernetes, RollbackError> {
        let cluster = self
            .check(namespace_file)
            .map_err(|problems| RollbackError::setup(NAME, &problems))?;
        Ok(Kubernetes {
            client: KubeClient::new(NAME, cluster)?,
            deployment: self.deployment.clone(),
            policy: cx.policy,
        })
    }

    fn check(&self, namespace_file: &Path) -> Result<Cluster, Vec<Problem>> {
        check_cluster(
            "deployment",
            &self.deployment,
            &self.cluster(),
            namespace_file,
        )
    }
}

/// Checks the workload's name (under `key`) and the cluster settings, all
/// problems at once.
pub(super) fn check_cluster(
    key: &str,
    name: &str,
    cluster: &ClusterSettings,
    namespace_file: &Path,
) -> Result<Cluster, Vec<Problem>> {
    let name = check_name(key, name);
    match (name, cluster.check(namespace_file)) {
        (Ok(()), Ok(cluster)) => Ok(cluster),
        (Ok(()), Err(problems)) => Err(problems),
        (Err(p), Ok(_)) => Err(vec![p]),
        (Err(p), Err(problems)) => Err([vec![p], problems].concat()),
    }
}

/// Rolls one Deployment back to an earlier revision.
#[derive(Debug)]
pub struct Kubernetes {
    client: KubeClient,
    deployment: String,
    policy: RetryPolicy,
}

impl Kubernetes {
    pub fn name(&self) -> &'static str {
        NAME
    }

    /// Patches the Deployment's pod template back to the previous revision
    /// (or the one `req.return_to` names); succeeds without a patch when the
    /// Deployment already has that template.
    pub async fn rollback(&self, req: &RollbackRequest) -> Result<RollbackDone, RollbackError> {
        let undone = undo(
            &self.client,
            &DEPLOYMENT,
            &self.deployment,
            req,
            self.policy,
        )
        .await?;
        let detail = undone.describe(&DEPLOYMENT, self.client.namespace(), &self.deployment);
        tracing::info!(
            target_name = NAME,
            deployment = %self.deployment,
            revision = undone.to,
            replica_set = %undone.replica_set,
            skipped = undone.skipped,
            "rollback done"
        );
        Ok(RollbackDone {
            returned_to: Some(undone.returned_to()),
            detail,
        })
    }
}

impl Kubernetes {
    /// The Deployment's revision (`deployment.kubernetes.io/revision`, which
    /// the Deployment controller raises when a rollout starts, an undo
    /// included). Reads only.
    pub async fn live_deployment(&self) -> Result<String, RollbackError> {
        revision(
            &self.client,
            &DEPLOYMENT,
            &self.deployment,
            super::call::live_policy(self.policy),
        )
        .await
    }

    /// After an interrupted call: whether the Deployment carries this
    /// rollback's mark ([`ROLLBACK_KEY`]), which only the undo's patch puts
    /// there.
    pub async fn reconcile(&self, req: &RollbackRequest) -> Result<Reconciled, RollbackError> {
        let obj = read(&self.client, &DEPLOYMENT, &self.deployment, self.policy).await?;
        Ok(marked(
            &DEPLOYMENT,
            self.client.namespace(),
            &self.deployment,
            &obj,
            req,
        ))
    }
}

/// Reads the workload, with the call's retries.
pub(super) async fn read(
    client: &KubeClient,
    w: &Workload,
    name: &str,
    policy: RetryPolicy,
) -> Result<Value, RollbackError> {
    let ns = client.namespace();
    let path = w.object_path(ns, name);
    let what = format!("GET {} {ns}/{name}", w.noun);
    let (path, what) = (&path, &what);
    with_retries(w.target, policy, move |_| async move {
        match client.get(path, what).await {
            Ok(obj) => Attempt::Done(obj),
            Err(e) => Attempt::<Value>::from(e),
        }
    })
    .await
}

/// Reads the workload's revision annotation, with the call's retries; a
/// workload without one (never rolled out) is an error.
pub(super) async fn revision(
    client: &KubeClient,
    w: &Workload,
    name: &str,
    policy: RetryPolicy,
) -> Result<String, RollbackError> {
    let ns = client.namespace();
    let path = w.object_path(ns, name);
    let what = format!("GET {} {ns}/{name}", w.noun);
    let (path, what) = (&path, &what);
    with_retries(w.target, policy, move |_| async move {
        match client.get(path, what).await {
            Ok(obj) => match annotation(&obj, w.revision_annotation) {
                Some(rev) if !rev.trim().is_empty() => Attempt::Done(rev.trim().to_string()),
                _ => Attempt::Fail(format!(
                    "{} {ns}/{name} has no {} annotation yet",
                    w.noun, w.revision_annotation
                )),
            },
            Err(e) => Attempt::<String>::from(e),
        }
    })
    .await
}

/// Whether `obj` carries the mark of `req`'s rollback.
pub(super) fn marked(
    w: &Workload,
    ns: &str,
    name: &str,
    obj: &Value,
    req: &RollbackRequest,
) -> Reconciled {
    let revision = annotation(obj, w.revision_annotation).unwrap_or("?");
    if annotation(obj, ROLLBACK_KEY) == Some(req.idempotency_key().as_str()) {
        Reconciled::Done(RollbackDone {
            returned_to: Some(format!("revision {revision}")),
            detail: format!(
                "{} {ns}/{name} carries this rollback's mark ({ROLLBACK_KEY}), at revision {revision}",
                w.noun
            ),
        })
    } else {
        Reconciled::NotDone(format!(
            "{} {ns}/{name} has no mark of this rollback ({ROLLBACK_KEY}), at revision {revision}",
            w.noun
        ))
    }
}

/// What differs between undoing a Deployment and undoing an Argo Rollout.
#[derive(Debug)]
pub(super) struct Workload {
    /// The rollback target that works on it, named in its errors.
    pub target: &'static str,
    /// How messages call it: `deployment`, `rollout`.
    pub noun: &'static str,
    /// The API group's path and the resource: `/apis/apps/v1`, `deployments`.
    pub api: &'static str,
    pub resource: &'static str,
    /// The annotation holding the revision, on the workload and its
    /// ReplicaSets.
    pub revision_annotation: &'static str,
    /// The label the controller adds to a ReplicaSet's template.
    pub hash_label: &'static str,
    /// kubectl copies the ReplicaSet's annotations onto a Deployment; the
    /// Argo plugin leaves a Rollout's alone.
    pub copy_annotations: bool,
    /// kubectl refuses a paused Deployment; the Argo plugin does not check.
    pub refuse_paused: bool,
}

impl Workload {
    pub fn object_path(&self, namespace: &str, name: &str) -> String {
        format!(
            "{}/namespaces/{namespace}/{}/{name}",
            self.api, self.resource
        )
    }
}

pub(super) const DEPLOYMENT: Workload = Workload {
    target: NAME,
    noun: "deployment",
    api: "/apis/apps/v1",
    resource: "deployments",
    revision_annotation: "deployment.kubernetes.io/revision",
    hash_label: "pod-template-hash",
    copy_annotations: true,
    refuse_paused: true,
};

/// The annotations kubectl keeps from the Deployment rather than copying
/// them from the ReplicaSet (`annotationsToSkip` in kubectl's rollback.go).
const ANNOTATIONS_TO_SKIP: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

/// What an undo came to.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Undone {
    /// The workload's revision before, when it had one.
    pub from: Option<i64>,
    /// The revision whose template it now has.
    pub to: i64,
    /// That revision's ReplicaSet.
    pub replica_set: String,
    /// No patch was needed: the workload already had that template.
    pub skipped: bool,
    /// Why the revision is not the one `return_to` asked for.
    pub note: Option<String>,
}

impl Undone {
    pub fn returned_to(&self) -> String {
        format!("revision {} ({})", self.to, self.replica_set)
    }

    pub fn describe(&self, w: &Workload, namespace: &str, name: &str) -> String {
        let mut s = if self.skipped {
            format!(
                "{} {namespace}/{name} already at that template: {}; nothing to patch",
                w.noun,
                self.returned_to()
            )
        } else {
            match self.from {
                Some(from) => format!(
                    "{} {namespace}/{name} rolled back from revision {from} to {}",
                    w.noun,
                    self.returned_to()
                ),
                None => format!(
                    "{} {namespace}/{name} rolled back to {}",
                    w.noun,
                    self.returned_to()
                ),
            }
        };
        if let Some(note) = &self.note {
            s.push_str("; ");
            s.push_str(note);
        }
        s
    }
}

/// The revision chosen on the first read, kept across attempts so that a
/// later attempt never picks a different one.
#[derive(Debug, Clone)]
struct Plan {
    /// The workload's revision annotation as first read.
    seen: Option<i64>,
    /// Its revision: the annotation, else the newest ReplicaSet's.
    from: Option<i64>,
    to: i64,
    replica_set: String,
    /// The ReplicaSet's template without the hash label.
    template: Value,
    /// The ReplicaSet's annotations.
    annotations: Map<String, Value>,
    note: Option<String>,
}

impl Plan {
    fn undone(&self, skipped: bool) -> Undone {
        Undone {
            from: self.from,
            to: self.to,
            replica_set: self.replica_set.clone(),
            skipped,
            note: self.note.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Progress {
    plan: Option<Plan>,
    conflicts: u32,
}

/// Undoes a workload's last rollout within `policy`: reads the workload,
/// lists the ReplicaSets it controls, picks a revision and patches the
/// workload's template back to it.
///
/// Each attempt reads the workload again. The patch carries the
/// `resourceVersion` it was computed from, so it never overwrites a change
/// it did not see: the API server answers 409 instead. A 409 is retried
/// once, after reading again; a second one is final. Whatever attempt it
/// is, the revision chosen first is kept, and if the workload has moved to
/// another revision in between (a new rollout, or someone else's undo) the
/// call stops rather than undo a deployment that was never judged; if the
/// workload already has the chosen template (an earlier attempt's patch
/// landed though its answer was lost), it succeeds without patching again.
pub(super) async fn undo(
    client: &KubeClient,
    w: &Workload,
    name: &str,
    req: &RollbackRequest,
    policy: RetryPolicy,
) -> Result<Undone, RollbackError> {
    let progress = Mutex::new(Progress::default());
    let progress = &progress;
    let key = req.idempotency_key();
    let (return_to, key) = (req.return_to.as_deref(), key.as_str());
    with_retries(w.target, policy, move |_| async move {
        match attempt(client, w, name, return_to, key, progress).await {
            Ok(undone) => Attempt::Done(undone),
            Err(e) => e.into(),
        }
    })
    .await
}

async fn attempt(
    client: &KubeClient,
    w: &Workload,
    name: &str,
    return_to: Option<&str>,
    key: &str,
    progress: &Mutex<Progress>,
) -> Result<Undone, CallError> {
    let ns = client.namespace();
    let path = w.object_path(ns, name);
    let obj = client
        .get(&path, &format!("GET {} {ns}/{name}", w.noun))
        .await?;
    if w.refuse_paused && obj.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
        return Err(CallError::refuse(format!(
            "{} is paused; resume it first",
            w.noun
        )));
    }
    if let Some(r) = obj.pointer("/spec/workloadRef") {
        return Err(CallError::refuse(workload_ref_refusal(ns, name, r)));
    }
    let Some(current_template) = obj.pointer("/spec/template") else {
        return Err(CallError::refuse(format!(
            "{} {ns}/{name} has no spec.template to roll back",
            w.noun
        )));
    };
    let revision = annotation(&obj, w.revision_annotation).and_then(|v| v.parse::<i64>().ok());
    let planned = progress.lock().unwrap().plan.clone();
    let plan = match planned {
        Some(plan) => {
            if same_template(current_template, &plan.template, w.hash_label) {
                return Ok(plan.undone(true));
            }
            if revision != plan.seen {
                return Err(CallError::refuse(format!(
                    "{} {ns}/{name} moved from revision {} to {} while rolling back; not rolled back",
                    w.noun,
                    show(plan.seen),
                    show(revision)
                )));
            }
            plan
        }
        None => {
            let uid = meta(&obj, "uid").ok_or_else(|| {
                CallError::refuse(format!("{} {ns}/{name} has no metadata.uid", w.noun))
            })?;
            let selector = match obj.pointer("/spec/selector") {
                Some(s) => label_selector(s).map_err(CallError::refuse)?,
                None => None,
            };
            let list = client
                .list(
                    &format!("/apis/apps/v1/namespaces/{ns}/replicasets"),
                    selector.as_deref(),
                    &format!("LIST replicasets in {ns}"),
                )
                .await?;
            let plan =
                choose(w, name, &list, uid, revision, return_to).map_err(CallError::refuse)?;
            progress.lock().unwrap().plan = Some(plan.clone());
            if same_template(current_template, &plan.template, w.hash_label) {
                return Ok(plan.undone(true));
            }
            plan
        }
    };
    let patch = patch_ops(w, &obj, &plan, key);
    let what = format!("PATCH {} {ns}/{name}", w.noun);
    match client.patch(&path, PatchType::Json, &patch, &what).await {
        Ok(_) => Ok(plan.undone(false)),
        Err(e) if e.is_conflict() => {
            let mut p = progress.lock().unwrap();
            p.conflicts += 1;
            if p.conflicts == 1 {
                Err(CallError::Retry {
                    reason: format!("{}; reading it again", e.reason()),
                    after: Some(Duration::ZERO),
                })
            } else {
                Err(CallError::refuse(format!(
                    "{}; changed again after a second read, not rolled back",
                    e.reason()
                )))
            }
        }
        Err(e) => Err(e),
    }
}

/// What every refusal of an undo on a Rollout with `spec.workloadRef`
/// says: the target recognises it by these words.
pub(super) const WORKLOAD_REF_REFUSAL: &str = "(spec.workloadRef), so undo cannot apply";

/// Why an undo cannot apply to a Rollout whose pod template lives in the
/// workload `spec.workloadRef` names (`WorkloadRef *ObjectRef` of
/// `RolloutSpec` in `pkg/apis/rollouts/v1alpha1/types.go` of
/// github.com/argoproj/argo-rollouts: `apiVersion`, `kind`, `name`,
/// `scaleDown`): its own `spec.template` must stay empty ("template must be
/// empty for workload reference rollout", `pkg/apis/rollouts/validation`).
/// The Argo plugin's `undo` patches the referenced workload instead
/// (`undoWorkloadRef` in `pkg/kubectl-argo-rollouts/cmd/undo/undo.go`);
/// this target changes no object but the Rollout it is configured for, so
/// it says what to set instead.
pub(super) fn workload_ref_refusal(ns: &str, name: &str, r: &Value) -> String {
    let field = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("?");
    format!(
        "rollout {ns}/{name} takes its pod template from {} {ns}/{} {WORKLOAD_REF_REFUSAL}: \
         undo copies an earlier ReplicaSet's template into the Rollout's own spec.template, \
         which a Rollout with a workloadRef does not have; set action = \"abort\" in \
         [rollback.argo_rollouts] (abort sends every replica and all traffic back to the \
         stable ReplicaSet), and put the {}'s template back where it is kept",
        field("kind"),
        field("name"),
        field("kind"),
    )
}

fn show(revision: Option<i64>) -> String {
    revision.map_or_else(|| "none".into(), |r| r.to_string())
}

/// Picks the ReplicaSet to return to among those `list` holds that the
/// workload (`uid`) controls: the one `return_to` names (by revision,
/// hash label or name), else the highest revision below the current one.
fn choose(
    w: &Workload,
    name: &str,
    list: &Value,
    uid: &str,
    current: Option<i64>,
    return_to: Option<&str>,
) -> Result<Plan, String> {
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .ok_or("the ReplicaSet list has no items")?;
    // A ReplicaSet without a readable revision cannot be placed in the
    // history, so it is never a candidate.
    let owned: Vec<(i64, &Value)> = items
        .iter()
        .filter(|rs| controlled_by(rs, uid))
        .filter_map(|rs| Some((annotation(rs, w.revision_annotation)?.parse().ok()?, rs)))
        .collect();
    let seen = current;
    let current = current.or_else(|| owned.iter().map(|(rev, _)| *rev).max());
    let mut note = None;
    let named = return_to.and_then(|want| {
        let found = owned.iter().find(|(rev, rs)| {
            rev.to_string() == want
                || meta(rs, "name") == Some(want)
                || label(rs, w.hash_label) == Some(want)
                || rs
                    .pointer("/spec/template/metadata/labels")
                    .and_then(|l| l.get(w.hash_label))
                    .and_then(Value::as_str)
                    == Some(want)
        });
        if found.is_none() {
            note = Some(format!(
                "{want:?} names no revision of the {}, so the previous revision was taken",
                w.noun
            ));
        }
        found
    });
    let previous = || {
        owned
            .iter()
            .filter(|(rev, _)| current.is_some_and(|c| *rev < c))
            .max_by_key(|(rev, _)| *rev)
    };
    let Some((to, rs)) = named.or_else(previous) else {
        return Err(format!(
            "no previous revision of {} {name} to roll back to",
            w.noun
        ));
    };
    let mut template = rs
        .pointer("/spec/template")
        .cloned()
        .ok_or_else(|| format!("ReplicaSet of revision {to} has no spec.template"))?;
    if let Some(labels) = template
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(w.hash_label);
    }
    Ok(Plan {
        seen,
        from: current,
        to: *to,
        replica_set: meta(rs, "name").unwrap_or("?").to_string(),
        template,
        annotations: rs
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        note,
    })
}

/// The JSON patch: the `resourceVersion` read (a precondition: a stale one
/// makes the API server answer 409), the template, for a Deployment the
/// annotations as kubectl computes them (the Deployment's own for the keys
/// in `ANNOTATIONS_TO_SKIP`, the ReplicaSet's for the others), and in the
/// same patch the rollback's mark, [`ROLLBACK_KEY`] set to `key`.
fn patch_ops(w: &Workload, obj: &Value, plan: &Plan, key: &str) -> Value {
    let mut ops = Vec::new();
    if let Some(rv) = meta(obj, "resourceVersion") {
        ops.push(json!({"op": "replace", "path": "/metadata/resourceVersion", "value": rv}));
    }
    ops.push(json!({"op": "replace", "path": "/spec/template", "value": plan.template}));
    if w.copy_annotations {
        let current = obj
            .pointer("/metadata/annotations")
            .and_then(Value::as_object);
        let mut annotations = Map::new();
        for key in ANNOTATIONS_TO_SKIP {
            if let Some(v) = current.and_then(|c| c.get(*key)) {
                annotations.insert((*key).to_string(), v.clone());
            }
        }
        for (k, v) in &plan.annotations {
            if !ANNOTATIONS_TO_SKIP.contains(&k.as_str()) {
                annotations.insert(k.clone(), v.clone());
            }
        }
        annotations.insert(ROLLBACK_KEY.to_string(), Value::String(key.to_string()));
        // JSON patch cannot replace what is absent; `add` sets it either way.
        let op = if current.is_some() { "replace" } else { "add" };
        ops.push(json!({"op": op, "path": "/metadata/annotations", "value": annotations}));
    } else if obj
        .pointer("/metadata/annotations")
        .is_some_and(Value::is_object)
    {
        // `add` of a member replaces it when present. `/` in a key is `~1`.
        let path = format!("/metadata/annotations/{}", ROLLBACK_KEY.replace('/', "~1"));
        ops.push(json!({"op": "add", "path": path, "value": key}));
    } else {
        ops.push(
            json!({"op": "add", "path": "/metadata/annotations", "value": {ROLLBACK_KEY: key}}),
        );
    }
    Value::Array(ops)
}

/// Whether two pod templates are the same but for the hash label, counting
/// `null`, `{}` and `[]` as absent (as the API machinery's semantic
/// equality counts nil and empty alike).
fn same_template(a: &Value, b: &Value, hash_label: &str) -> bool {
    let strip = |t: &Value| {
        let mut t = t.clone();
        if let Some(labels) = t
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            labels.remove(hash_label);
        }
        normalized(&t)
    };
    strip(a) == strip(b)
}

fn normalized(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(m) => {
            let m: Map<String, Value> = m
                .iter()
                .filter_map(|(k, v)| normalized(v).map(|v| (k.clone(), v)))
                .collect();
            (!m.is_empty()).then_some(Value::Object(m))
        }
        Value::Array(a) => (!a.is_empty()).then(|| {
            Value::Array(
                a.iter()
                    .map(|x| normalized(x).unwrap_or(Value::Null))
                    .collect(),
            )
        }),
        other => Some(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(name: &str, owner: &str, revision: &str, image: &str) -> Value {
        json!({
            "metadata": {
                "name": name,
                "labels": {"app": "web", "pod-template-hash": name.rsplit('-').next().unwrap()},
                "annotations": {"deployment.kubernetes.io/revision": revision},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                    "name": "web", "uid": owner, "controller": true}]
            },
            "spec": {"template": {
                "metadata": {"labels": {"app": "web", "pod-template-hash": name.rsplit('-').next().unwrap()}},
                "spec": {"containers": [{"name": "web", "image": image}]}
            }}
        })
    }

    #[test]
    fn reads_the_configuration_and_rejects_unknown_keys() {
        let text = r#"
            deployment = "web"
            namespace = "prod"
            api_url = "https://10.0.0.1:6443"
            timeout = "3s"
        "#;
        let c: KubernetesConfig = toml_edit::de::from_str(text).unwrap();
        assert_eq!(c.deployment, "web");
        assert_eq!(c.cluster().timeout, Some(Duration::from_secs(3)));
        assert_eq!(c.token_file, None);
        let err = toml_edit::de::from_str::<KubernetesConfig>("deployment = \"web\"\ndeploy = 1")
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `deploy`"), "{err}");
        assert!(toml_edit::de::from_str::<KubernetesConfig>("namespace = \"x\"").is_err());
    }

    #[test]
    fn building_outside_a_cluster_needs_the_namespace_and_names_its_key_path() {
        let cx = BuildContext {
            policy: RetryPolicy::default(),
        };
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("namespace");
        let config = |namespace: Option<&str>| KubernetesConfig {
            deployment: "web".into(),
            api_url: None,
            token_file: None,
            ca_file: None,
            namespace: namespace.map(str::to_string),
            timeout: None,
            kubeconfig: None,
            context: None,
        };
        // Set explicitly, no service-account file is needed to build.
        let built = config(Some("prod")).build_with(&cx, &missing).unwrap();
        assert_eq!(built.client.namespace(), "prod");
        assert_eq!(config(Some("prod")).check(&missing).err(), None);

        let err = config(None).build_with(&cx, &missing).unwrap_err();
        assert!(
            matches!(err, RollbackError::Setup { target: NAME, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(&format!(
                "kubernetes rollback cannot start: rollback.kubernetes.namespace: not set, and {} cannot be read",
                missing.display()
            )),
            "{err}"
        );
        std::fs::write(&missing, "payments\n").unwrap();
        let built = config(None).build_with(&cx, &missing).unwrap();
        assert_eq!(built.client.namespace(), "payments");

        let mut bad = config(Some("prod"));
        bad.deployment = "Web".into();
        bad.timeout = Some(Dur(Duration::ZERO));
        let err = bad.build_with(&cx, &missing).unwrap_err().to_string();
        assert!(
            err.contains("rollback.kubernetes.deployment: \"Web\" is not a valid object name")
                && err.contains("; rollback.kubernetes.timeout: must be more than 0s"),
            "{err}"
        );
    }

    #[test]
    fn picks_the_highest_revision_below_the_current_one_among_its_own() {
        let list = json!({"items": [
            rs("web-aaa", "me", "1", "web:1"),
            rs("web-ccc", "me", "3", "web:3"),
            rs("web-bbb", "me", "2", "web:2"),
            rs("other-ddd", "someone-else", "2", "other:9"),
            rs("web-eee", "me", "not-a-number", "web:?"),
        ]});
        let plan = choose(&DEPLOYMENT, "web", &list, "me", Some(3), None).unwrap();
        assert_eq!((plan.to, plan.replica_set.as_str()), (2, "web-bbb"));
        assert_eq!(plan.from, Some(3));
        assert_eq!(
            plan.template.pointer("/metadata/labels"),
            Some(&json!({"app": "web"}))
        );
        // Without the Deployment's own annotation, the newest ReplicaSet is current.
        let plan = choose(&DEPLOYMENT, "web", &list, "me", None, None).unwrap();
        assert_eq!(plan.to, 2);
    }

    #[test]
    fn return_to_names_a_revision_by_number_hash_or_name() {
        let list = json!({"items": [
            rs("web-aaa", "me", "1", "web:1"),
            rs("web-bbb", "me", "2", "web:2"),
            rs("web-ccc", "me", "3", "web:3"),
        ]});
        for want in ["1", "aaa", "web-aaa"] {
            let plan = choose(&DEPLOYMENT, "web", &list, "me", Some(3), Some(want)).unwrap();
            assert_eq!(plan.to, 1, "{want}");
            assert_eq!(plan.note, None);
        }
        let plan = choose(&DEPLOYMENT, "web", &list, "me", Some(3), Some("v1.4.2")).unwrap();
        assert_eq!(plan.to, 2);
        assert!(plan.note.unwrap().contains("\"v1.4.2\" names no revision"));
    }

    #[test]
    fn without_an_older_revision_there_is_nothing_to_choose() {
        let list = json!({"items": [rs("web-ccc", "me", "3", "web:3")]});
        let err = choose(&DEPLOYMENT, "web", &list, "me", Some(3), None).unwrap_err();
        assert!(err.starts_with("no previous revision"), "{err}");
    }

    #[test]
    fn templates_compare_without_the_hash_label_and_empty_fields() {
        let a = json!({"metadata": {"labels": {"app": "web", "pod-template-hash": "x"},
            "creationTimestamp": null}, "spec": {"containers": [{"name": "web", "image": "web:1"}],
            "volumes": []}});
        let b = json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "web:1"}]}});
        let c = json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "web:2"}]}});
        assert!(same_template(&a, &b, "pod-template-hash"));
        assert!(!same_template(&a, &c, "pod-template-hash"));
    }

    #[test]
    fn the_patch_keeps_the_deployments_own_annotations_and_copies_the_others() {
        let deployment = json!({"metadata": {"resourceVersion": "812", "annotations": {
            "deployment.kubernetes.io/revision": "3",
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
            "kubernetes.io/change-cause": "set image web:3"
        }}});
        let plan = Plan {
            seen: Some(3),
            from: Some(3),
            to: 2,
            replica_set: "web-bbb".into(),
            template: json!({"spec": {}}),
            annotations: json!({
                "deployment.kubernetes.io/revision": "2",
                "deployment.kubernetes.io/desired-replicas": "3",
                "kubernetes.io/change-cause": "set image web:2"
            })
            .as_object()
            .unwrap()
            .clone(),
            note: None,
        };
        let ops = patch_ops(&DEPLOYMENT, &deployment, &plan, "web:v3");
        assert_eq!(
            ops,
            json!([
                {"op": "replace", "path": "/metadata/resourceVersion", "value": "812"},
                {"op": "replace", "path": "/spec/template", "value": {"spec": {}}},
                {"op": "replace", "path": "/metadata/annotations", "value": {
                    "deployment.kubernetes.io/revision": "3",
                    "kubectl.kubernetes.io/last-applied-configuration": "{}",
                    "kubernetes.io/change-cause": "set image web:2",
                    "backstop/rollback-key": "web:v3"
                }}
            ])
        );
        // A Rollout keeps its annotations and gets the mark added.
        let ops = patch_ops(
            &super::super::argo_rollouts::ROLLOUT,
            &deployment,
            &plan,
            "web:v3",
        );
        assert_eq!(
            ops[2],
            json!({"op": "add", "path": "/metadata/annotations/backstop~1rollback-key", "value": "web:v3"})
        );
        let bare = json!({"metadata": {"resourceVersion": "812"}});
        let ops = patch_ops(
            &super::super::argo_rollouts::ROLLOUT,
            &bare,
            &plan,
            "web:v3",
        );
        assert_eq!(
            ops[2],
            json!({"op": "add", "path": "/metadata/annotations", "value": {"backstop/rollback-key": "web:v3"}})
        );
    }

    #[test]
    fn the_mark_of_the_rollback_tells_whether_its_patch_landed() {
        let req = RollbackRequest {
            service: "web".into(),
            deployment: "v3".into(),
            return_to: None,
            rule: "r".into(),
            reason: "x".into(),
            evidence: vec![],
            fencing_token: None,
        };
        let with = |key: &str| {
            json!({"metadata": {"annotations": {
                "deployment.kubernetes.io/revision": "4", ROLLBACK_KEY: key
            }}})
        };
        assert!(matches!(
            marked(&DEPLOYMENT, "ns", "web", &with("web:v3"), &req),
            Reconciled::Done(d) if d.detail.contains("revision 4")
        ));
        assert!(matches!(
            marked(&DEPLOYMENT, "ns", "web", &with("web:v2"), &req),
            Reconciled::NotDone(_)
        ));
        assert!(matches!(
            marked(&DEPLOYMENT, "ns", "web", &json!({"metadata": {}}), &req),
            Reconciled::NotDone(_)
        ));
    }
}
