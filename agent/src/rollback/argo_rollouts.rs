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
//! ```toml
//! [rollback]
//! target = "argo_rollouts"
//!   [rollback.argo_rollouts]
//!   rollout = "web"
//!   action = ["abort", "undo"]
//! ```

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::kube::{check_name, ClusterSettings, KubeClient, PatchType};
use super::kubernetes::{undo, Workload};
use super::RollbackError;
use crate::duration::Dur;
use crate::evidence::{RollbackDone, RollbackRequest};
use crate::retry::{retry, Attempt, RetryError, RetryPolicy};

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
    /// `["abort", "undo"]`. Default `"abort"`.
    #[serde(default)]
    pub action: Actions,
    /// The API server. Default `https://kubernetes.default.svc`.
    pub api_url: Option<String>,
    /// The service account's token, read again before every request since
    /// projected tokens rotate. Default
    /// `/var/run/secrets/kubernetes.io/serviceaccount/token`.
    pub token_file: Option<PathBuf>,
    /// The CA that signs the API server's certificate, used for `https` when
    /// the file exists (an explicitly set file must exist). Default
    /// `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`.
    pub ca_file: Option<PathBuf>,
    /// The Rollout's namespace. Default: the pod's own, read from
    /// `/var/run/secrets/kubernetes.io/serviceaccount/namespace`.
    pub namespace: Option<String>,
    /// How long one request may take. Default `10s`.
    pub timeout: Option<Dur>,
}

impl ArgoRolloutsConfig {
    pub fn cluster(&self) -> ClusterSettings {
        ClusterSettings {
            api_url: self.api_url.clone(),
            token_file: self.token_file.clone(),
            ca_file: self.ca_file.clone(),
            namespace: self.namespace.clone(),
            timeout: self.timeout.map(Into::into),
        }
    }
}

/// A Rollout, as `kubectl argo rollouts undo` treats it: the revision in
/// `rollout.argoproj.io/revision`, the hash in `rollouts-pod-template-hash`,
/// only `spec.template` patched, and no check of `spec.paused`.
pub(super) const ROLLOUT: Workload = Workload {
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
    /// Builds the target. Reads the namespace and CA files when it needs
    /// them, never the network; `policy` bounds each rollback call as a
    /// whole, all actions together.
    pub fn new(config: &ArgoRolloutsConfig, policy: RetryPolicy) -> Result<Self, RollbackError> {
        let config_error = |message| RollbackError::Config {
            target: NAME,
            message,
        };
        check_name("rollout", &config.rollout).map_err(config_error)?;
        let client = KubeClient::new(&config.cluster()).map_err(config_error)?;
        Ok(Self {
            client,
            rollout: config.rollout.clone(),
            actions: config.action.0.clone(),
            policy,
        })
    }

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
        for (i, action) in self.actions.iter().enumerate() {
            let policy = RetryPolicy {
                deadline: self.policy.deadline.saturating_sub(start.elapsed()),
                ..self.policy
            };
            let result = match action {
                Action::Abort => self.abort(policy).await.map(|rollout| {
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
                Action::Undo => undo(
                    &self.client,
                    &ROLLOUT,
                    &self.rollout,
                    req.return_to.as_deref(),
                    policy,
                )
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
                Err(e) => {
                    let done: Vec<&str> = self.actions[..i].iter().map(|a| a.as_str()).collect();
                    let e = if done.is_empty() {
                        e
                    } else {
                        after(
                            e,
                            &format!("{} done, then {}", done.join(", "), action.as_str()),
                        )
                    };
                    return Err(RollbackError::from(e).in_target(NAME));
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

    /// What `kubectl argo rollouts abort` does: a merge patch through the
    /// status subresource, then, if that answers 404 (a Rollout CRD without
    /// the subresource), the same patch on the Rollout itself. Aborting
    /// twice is harmless, so no precondition is needed.
    async fn abort(&self, policy: RetryPolicy) -> Result<Value, RetryError> {
        let ns = self.client.namespace();
        let path = ROLLOUT.object_path(ns, &self.rollout);
        let status_path = format!("{path}/status");
        let body = json!({"status": {"abort": true}});
        let (path, status_path, body) = (&path, &status_path, &body);
        let what = format!("PATCH rollout {ns}/{}", self.rollout);
        let what_status = format!("{what}/status");
        let (what, what_status) = (&what, &what_status);
        retry(policy, move |_| async move {
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
fn after(e: RetryError, prefix: &str) -> RetryError {
    match e {
        RetryError::Final { reason, attempts } => RetryError::Final {
            reason: format!("{prefix}: {reason}"),
            attempts,
        },
        RetryError::Exhausted { reason, attempts } => RetryError::Exhausted {
            reason: format!("{prefix}: {reason}"),
            attempts,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
