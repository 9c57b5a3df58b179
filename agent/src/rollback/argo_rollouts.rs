//! The `argo_rollouts` rollback target: what `kubectl argo rollouts abort`
//! and `kubectl argo rollouts undo` do to one Rollout.
//!
//! `abort` stops the rollout in progress and sends every replica and all
//! traffic back to the stable ReplicaSet, but leaves `spec.template` on the
//! new version; `undo` puts `spec.template` back to the previous revision so
//! the Rollout is healthy again rather than aborted. `["abort", "undo"]`
//! does both, in that order: traffic leaves the bad version at once, then
//! the spec follows.
//!
//! A Rollout with `spec.workloadRef` takes its pod template from another
//! workload (a Deployment) and has no `spec.template` of its own, so undo
//! cannot apply to it: with `abort` among the actions the undo is skipped
//! and the outcome says why; with `undo` alone the rollback is refused,
//! nothing changed, and the error says to set `action = "abort"`.
//!
//! ```toml
//! [rollback]
//! target = "argo_rollouts"
//!   [rollback.argo_rollouts]
//!   rollout = "web"
//!   action = ["abort", "undo"]
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::call::{with_retries, BuildContext, RollbackError};
use super::kube::{Cluster, ClusterSettings, KubeClient, PatchType, DEFAULT_NAMESPACE_FILE};
use super::kubernetes::{
    check_cluster, marked, read, revision, undo, workload_ref_refusal, Workload,
    WORKLOAD_REF_REFUSAL,
};
use super::problem::Problem;
use crate::duration::Dur;
use crate::evidence::{Reconciled, RollbackDone, RollbackRequest};
use crate::retry::{Attempt, RetryPolicy};

/// The target's name in `[rollback] target` and in metrics.
pub const NAME: &str = "argo_rollouts";

/// One thing done to the Rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Merge-patches `{"status":{"abort":true}}` through the status
    /// subresource.
    Abort,
    /// Patches `spec.template` back to the previous revision's.
    Undo,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Abort => "abort",
            Self::Undo => "undo",
        }
    }
}

/// `action`: one action or a list of distinct actions, done in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actions(pub Vec<Action>);

impl Default for Actions {
    fn default() -> Self {
        Self(vec![Action::Abort])
    }
}

impl<'de> Deserialize<'de> for Actions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        fn one<E: de::Error>(s: &str) -> Result<Action, E> {
            match s {
                "abort" => Ok(Action::Abort),
                "undo" => Ok(Action::Undo),
                _ => Err(E::custom(format!(
                    "unknown action {s:?}, expected \"abort\" or \"undo\""
                ))),
            }
        }
        impl<'de> Visitor<'de> for V {
            type Value = Actions;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"abort\", \"undo\" or a list of them such as [\"abort\", \"undo\"]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Actions, E> {
                one(v).map(|a| Actions(vec![a]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Actions, A::Error> {
                let mut actions = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    let a = one(&s)?;
                    if actions.contains(&a) {
                        return Err(de::Error::custom(format!("action {s:?} is listed twice")));
                    }
                    actions.push(a);
                }
                if actions.is_empty() {
                    return Err(de::Error::custom("the list of actions is empty"));
                }
                Ok(Actions(actions))
            }
        }
        d.deserialize_any(V)
    }
}

/// `[rollback.argo_rollouts]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgoRolloutsConfig {
    /// The Rollout to roll back, in `namespace`. Required.
    pub rollout: String,
    /// `"abort"`, `"undo"`, or both in the order given, such as
    /// `["abort", "undo"]`. A Rollout with `spec.workloadRef` (its pod
    /// template in a Deployment) cannot be undone: with `"abort"` listed
    /// too the undo is skipped, and `"undo"` alone is refused. Default
    /// `"abort"`.
    #[serde(default)]
    pub action: Actions,
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
    /// The Rollout's namespace. Default: the kubeconfig context's, else the
    /// pod's own, read from
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

impl ArgoRolloutsConfig {
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

    /// Builds the target; reads local files as
    /// [`ArgoRolloutsConfig::validate`] does, sends nothing. The deadline of
    /// `cx.policy` bounds each rollback call as a whole, all actions
    /// together.
    pub fn build(&self, cx: &BuildContext) -> Result<ArgoRollouts, RollbackError> {
        self.build_with(cx, Path::new(DEFAULT_NAMESPACE_FILE))
    }

    fn build_with(
        &self,
        cx: &BuildContext,
        namespace_file: &Path,
    ) -> Result<ArgoRollouts, RollbackError> {
        let cluster = self
            .check(namespace_file)
            .map_err(|problems| RollbackError::setup(NAME, &problems))?;
        Ok(ArgoRollouts {
            client: KubeClient::new(NAME, cluster)?,
            rollout: self.rollout.clone(),
            actions: self.action.0.clone(),
            policy: cx.policy,
        })
    }

    fn check(&self, namespace_file: &Path) -> Result<Cluster, Vec<Problem>> {
        check_cluster("rollout", &self.rollout, &self.cluster(), namespace_file)
    }
}

/// A Rollout, as `kubectl argo rollouts undo` treats it: the revision in
/// `rollout.argoproj.io/revision`, the hash in `rollouts-pod-template-hash`,
/// only `spec.template` patched, and no check of `spec.paused`.
pub(super) const ROLLOUT: Workload = Workload {
    target: NAME,
    noun: "rollout",
    api: "/apis/argoproj.io/v1alpha1",
    resource: "rollouts",
    revision_annotation: "rollout.argoproj.io/revision",
    hash_label: "rollouts-pod-template-hash",
    copy_annotations: false,
    refuse_paused: false,
};

/// Aborts and/or undoes one Argo Rollout.
#[derive(Debug)]
pub struct ArgoRollouts {
    client: KubeClient,
    rollout: String,
    actions: Vec<Action>,
    policy: RetryPolicy,
}

impl ArgoRollouts {
    pub fn name(&self) -> &'static str {
        NAME
    }

    /// Does the configured actions in order; the first that fails stops the
    /// rest, and its error says which actions were done before it.
    pub async fn rollback(&self, req: &RollbackRequest) -> Result<RollbackDone, RollbackError> {
        let start = Instant::now();
        let ns = self.client.namespace();
        let mut details = Vec::new();
        let mut returned_to = None;
        // What the abort's answer (the Rollout) says of spec.workloadRef.
        let mut workload_ref: Option<Value> = None;
        let aborts = self.actions.contains(&Action::Abort);
        for (i, action) in self.actions.iter().enumerate() {
            let policy = RetryPolicy {
                deadline: self.policy.deadline.saturating_sub(start.elapsed()),
                ..self.policy
            };
            if let (Action::Undo, Some(r)) = (action, &workload_ref) {
                details.push(format!(
                    "undo skipped: {}",
                    workload_ref_refusal(ns, &self.rollout, r)
                ));
                continue;
            }
            let result = match action {
                Action::Abort => self.abort(policy).await.map(|rollout| {
                    workload_ref = rollout.pointer("/spec/workloadRef").cloned();
                    let stable = rollout
                        .pointer("/status/stableRS")
                        .and_then(Value::as_str)
                        .map(|hash| format!("{}-{hash}", self.rollout));
                    let mut detail = format!("rollout {ns}/{} aborted", self.rollout);
                    if let Some(stable) = &stable {
                        detail.push_str(&format!("; the stable ReplicaSet {stable} takes over"));
                    }
                    (stable, detail)
                }),
                Action::Undo => undo(&self.client, &ROLLOUT, &self.rollout, req, policy)
                    .await
                    .map(|undone| {
                        (
                            Some(undone.returned_to()),
                            undone.describe(&ROLLOUT, ns, &self.rollout),
                        )
                    }),
            };
            match result {
                Ok((to, detail)) => {
                    returned_to = to.or(returned_to);
                    details.push(detail);
                }
                // Undo first, abort after it: the undo is skipped as above.
                Err(e) if aborts && e.reason().contains(WORKLOAD_REF_REFUSAL) => {
                    details.push(format!("undo skipped: {}", e.reason()));
                }
                Err(e) => {
                    let done: Vec<&str> = self.actions[..i].iter().map(|a| a.as_str()).collect();
                    return Err(if done.is_empty() {
                        e
                    } else {
                        after(
                            e,
                            &format!("{} done, then {}", done.join(", "), action.as_str()),
                        )
                    });
                }
            }
        }
        tracing::info!(
            target_name = NAME,
            rollout = %self.rollout,
            actions = ?self.actions,
            "rollback done"
        );
        Ok(RollbackDone {
            returned_to,
            detail: details.join("; "),
        })
    }

    /// The Rollout's revision (`rollout.argoproj.io/revision`, which the
    /// Argo Rollouts controller raises when a new pod template starts to
    /// roll out, canary steps included). Reads only.
    pub async fn live_deployment(&self) -> Result<String, RollbackError> {
        revision(
            &self.client,
            &ROLLOUT,
            &self.rollout,
            super::call::live_policy(self.policy),
        )
        .await
    }

    /// After an interrupted call. With `undo` among the actions: whether the
    /// Rollout carries this rollback's mark, which only the undo's patch puts
    /// there (an abort done before it is harmless to do again). With `abort`
    /// alone, or a Rollout with `spec.workloadRef` (never undone): whether
    /// the Rollout is aborted.
    pub async fn reconcile(&self, req: &RollbackRequest) -> Result<Reconciled, RollbackError> {
        let obj = read(&self.client, &ROLLOUT, &self.rollout, self.policy).await?;
        let ns = self.client.namespace();
        // A Rollout with a workloadRef is never undone, so never marked.
        if self.actions.contains(&Action::Undo) && obj.pointer("/spec/workloadRef").is_none() {
            return Ok(marked(&ROLLOUT, ns, &self.rollout, &obj, req));
        }
        Ok(
            if obj.pointer("/status/abort").and_then(Value::as_bool) == Some(true) {
                Reconciled::Done(RollbackDone {
                    returned_to: None,
                    detail: format!("rollout {ns}/{} is aborted", self.rollout),
                })
            } else {
                Reconciled::NotDone(format!("rollout {ns}/{} is not aborted", self.rollout))
            },
        )
    }

    /// What `kubectl argo rollouts abort` does: a merge patch through the
    /// status subresource, then, if that answers 404 (a Rollout CRD without
    /// the subresource), the same patch on the Rollout itself. Aborting
    /// twice is harmless, so no precondition is needed.
    async fn abort(&self, policy: RetryPolicy) -> Result<Value, RollbackError> {
        let ns = self.client.namespace();
        let path = ROLLOUT.object_path(ns, &self.rollout);
        let status_path = format!("{path}/status");
        let body = json!({"status": {"abort": true}});
        let (path, status_path, body) = (&path, &status_path, &body);
        let what = format!("PATCH rollout {ns}/{}", self.rollout);
        let what_status = format!("{what}/status");
        let (what, what_status) = (&what, &what_status);
        with_retries(NAME, policy, move |_| async move {
            let first = self
                .client
                .patch(status_path, PatchType::Merge, body, what_status)
                .await;
            let result = match first {
                Err(e) if e.is_not_found() => {
                    self.client.patch(path, PatchType::Merge, body, what).await
                }
                other => other,
            };
            match result {
                Ok(rollout) => Attempt::Done(rollout),
                Err(e) => Attempt::<Value>::from(e),
            }
        })
        .await
    }
}

/// Prefixes an error's reason with what was done before it.
fn after(e: RollbackError, prefix: &str) -> RollbackError {
    match e {
        RollbackError::Final {
            target,
            reason,
            attempts,
        } => RollbackError::Final {
            target,
            reason: format!("{prefix}: {reason}"),
            attempts,
        },
        RollbackError::Exhausted {
            target,
            reason,
            attempts,
        } => RollbackError::Exhausted {
            target,
            reason: format!("{prefix}: {reason}"),
            attempts,
        },
        RollbackError::Setup { target, reason } => RollbackError::Setup {
            target,
            reason: format!("{prefix}: {reason}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn building_names_the_key_path_of_the_rollout() {
        let cx = BuildContext {
            policy: RetryPolicy::default(),
        };
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("namespace");
        let parse = |text: &str| toml_edit::de::from_str::<ArgoRolloutsConfig>(text).unwrap();
        let built = parse("rollout = \"web\"\nnamespace = \"prod\"")
            .build_with(&cx, &missing)
            .unwrap();
        assert_eq!(built.name(), NAME);
        let err = parse("rollout = \"web\"")
            .build_with(&cx, &missing)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "argo_rollouts rollback cannot start: rollback.argo_rollouts.namespace: not set"
            ),
            "{err}"
        );
        let err = parse("rollout = \"web/x\"\nnamespace = \"prod\"").validate();
        assert_eq!(err.len(), 1, "{err:?}");
        assert_eq!(err[0].key, "rollout");
    }

    #[test]
    fn action_is_one_name_or_a_list_done_in_order() {
        let parse = |text: &str| toml_edit::de::from_str::<ArgoRolloutsConfig>(text);
        let c = parse("rollout = \"web\"").unwrap();
        assert_eq!(c.action.0, vec![Action::Abort]);
        let c = parse("rollout = \"web\"\naction = \"undo\"").unwrap();
        assert_eq!(c.action.0, vec![Action::Undo]);
        let c = parse("rollout = \"web\"\naction = [\"abort\", \"undo\"]").unwrap();
        assert_eq!(c.action.0, vec![Action::Abort, Action::Undo]);
        for (bad, want) in [
            ("action = \"rewind\"", "unknown action \"rewind\""),
            ("action = []", "the list of actions is empty"),
            (
                "action = [\"undo\", \"undo\"]",
                "action \"undo\" is listed twice",
            ),
            ("actions = \"undo\"", "unknown field `actions`"),
        ] {
            let err = parse(&format!("rollout = \"web\"\n{bad}")).unwrap_err();
            assert!(err.to_string().contains(want), "{bad}: {err}");
        }
    }
}
