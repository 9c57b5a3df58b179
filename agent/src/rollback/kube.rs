//! A minimal client of the Kubernetes API for the rollback targets: the
//! in-cluster configuration (service-account token, cluster CA, namespace)
//! or a kubeconfig file's context (`super::kubeconfig`), checked by
//! [`ClusterSettings::check`] without touching the network, and
//! single GET, LIST and PATCH calls, each classified for `crate::retry`.
//! The token is read again before every call, because projected tokens
//! rotate, and it never appears in an error or a log line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::call::{http_client_with, with_detail, RollbackError};
use super::kubeconfig::{self, Auth};
use super::problem::{check_timeout, check_url, Problem};
use crate::retry::{classify_error, classify_status, Attempt};
use crate::secret::Secret;

/// The API server inside a cluster, when the environment does not say
/// (see [`in_cluster_api_url`]).
pub const DEFAULT_API_URL: &str = "https://kubernetes.default.svc";
/// Where the kubelet mounts the service account's (projected) token.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Where the kubelet mounts the cluster's CA bundle.
pub const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// Where the kubelet mounts the pod's namespace.
pub const DEFAULT_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// How long one request may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The in-cluster keys the Kubernetes targets share, as written; `None`
/// takes the default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterSettings {
    /// Default [`in_cluster_api_url`].
    pub api_url: Option<String>,
    /// Default [`DEFAULT_TOKEN_FILE`].
    pub token_file: Option<PathBuf>,
    /// Default [`DEFAULT_CA_FILE`]; used for `https` when the file exists.
    pub ca_file: Option<PathBuf>,
    /// Default: the content of [`DEFAULT_NAMESPACE_FILE`].
    pub namespace: Option<String>,
    /// Default [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
    /// A kubeconfig file, instead of the in-cluster settings.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context; default its `current-context`.
    pub context: Option<String>,
}

/// The API server's address as client-go's `rest.InClusterConfig` makes it
/// (`rest/config.go` of github.com/kubernetes/client-go):
/// `"https://" + net.JoinHostPort(host, port)` from `KUBERNETES_SERVICE_HOST`
/// and `KUBERNETES_SERVICE_PORT`, which the kubelet sets in every container;
/// `JoinHostPort` brackets a host with a colon (IPv6). Where client-go
/// refuses to go on without both (`ErrNotInCluster`), this falls back to
/// [`DEFAULT_API_URL`], the cluster DNS name. `env` looks a variable up.
pub fn in_cluster_api_url(env: &dyn Fn(&str) -> Option<String>) -> String {
    let host = env("KUBERNETES_SERVICE_HOST").filter(|h| !h.is_empty());
    let port = env("KUBERNETES_SERVICE_PORT").filter(|p| !p.is_empty());
    match (host, port) {
        (Some(host), Some(port)) if host.contains(':') => format!("https://[{host}]:{port}"),
        (Some(host), Some(port)) => format!("https://{host}:{port}"),
        _ => DEFAULT_API_URL.to_string(),
    }
}

/// The process's environment, for [`in_cluster_api_url`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// How a PATCH body is to be read by the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// RFC 6902 JSON patch: a list of operations.
    Json,
    /// RFC 7386 JSON merge patch: a partial object.
    Merge,
}

impl PatchType {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json-patch+json",
            Self::Merge => "application/merge-patch+json",
        }
    }
}

/// Why one call did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// Worth another try (network error, 429, 5xx), after `after` if the
    /// server said so.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Not worth another try as it is; `status` is the HTTP status when the
    /// API server answered.
    Final { status: Option<u16>, reason: String },
}

impl CallError {
    /// A final error that is not an HTTP answer (a refusal, a bad object).
    pub fn refuse(reason: impl Into<String>) -> Self {
        Self::Final {
            status: None,
            reason: reason.into(),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Final { status, .. } => *status,
            Self::Retry { .. } => None,
        }
    }

    /// 409: the object changed since it was read (`resourceVersion`).
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::Retry { reason, .. } | Self::Final { reason, .. } => reason,
        }
    }
}

impl<T> From<CallError> for Attempt<T> {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Retry { reason, after } => Attempt::Retry { reason, after },
            CallError::Final { reason, .. } => Attempt::Fail(reason),
        }
    }
}

/// [`ClusterSettings`] checked: what a [`KubeClient`] is built from.
#[derive(Clone)]
pub struct Cluster {
    base: String,
    namespace: String,
    timeout: Duration,
    auth: Auth,
    /// The cluster's CA, to be trusted alone; `None` for the system's roots.
    ca: Option<Vec<reqwest::Certificate>>,
    /// A client certificate and key (mutual TLS), from a kubeconfig.
    identity: Option<reqwest::Identity>,
}

impl ClusterSettings {
    /// Checks every key and reads what the client will need: the namespace
    /// file when `namespace` is not set, the CA file for `https`, or the
    /// kubeconfig. Never touches the network; problems are keyed relative
    /// to the subtable. The API server's address without `api_url` comes
    /// from the process's environment ([`in_cluster_api_url`]).
    pub fn check(&self, namespace_file: &Path) -> Result<Cluster, Vec<Problem>> {
        self.check_with(namespace_file, &process_env)
    }

    /// [`ClusterSettings::check`] with the environment looked up by `env`.
    pub fn check_with(
        &self,
        namespace_file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Cluster, Vec<Problem>> {
        if let Some(path) = &self.kubeconfig {
            return self.check_kubeconfig(path);
        }
        let mut problems = Vec::new();
        if self.context.is_some() {
            problems.push(Problem::new(
                "context",
                "names a context of a kubeconfig file, but `kubeconfig` is not set: set it, or remove `context`",
            ));
        }
        let api_url = self
            .api_url
            .clone()
            .unwrap_or_else(|| in_cluster_api_url(env));
        check_base(&mut problems, "api_url", &api_url);
        let url = url::Url::parse(&api_url).ok();
        let namespace = match resolve_namespace(self.namespace.as_deref(), namespace_file) {
            Ok(ns) => Some(ns),
            Err(p) => {
                problems.push(p);
                None
            }
        };
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        check_timeout(&mut problems, "timeout", timeout);
        let ca = match url {
            Some(u) if u.scheme() == "https" => {
                read_ca(self.ca_file.as_deref()).unwrap_or_else(|p| {
                    problems.push(p);
                    None
                })
            }
            _ => None,
        };
        match namespace {
            Some(namespace) if problems.is_empty() => Ok(Cluster {
                base: api_url.trim_end_matches('/').to_string(),
                namespace,
                timeout,
                auth: Auth::TokenFile(
                    self.token_file
                        .clone()
                        .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILE)),
                ),
                ca,
                identity: None,
            }),
            _ => Err(problems),
        }
    }

    /// The settings with a kubeconfig: its context gives the server, the
    /// CA and the credentials, so `api_url`, `token_file` and `ca_file`
    /// would contradict it; `namespace` overrides the context's, which
    /// defaults to `default` as for kubectl.
    fn check_kubeconfig(&self, path: &Path) -> Result<Cluster, Vec<Problem>> {
        let mut problems = Vec::new();
        for (key, set) in [
            ("api_url", self.api_url.is_some()),
            ("token_file", self.token_file.is_some()),
            ("ca_file", self.ca_file.is_some()),
        ] {
            if set {
                problems.push(Problem::new(
                    key,
                    "cannot be set with `kubeconfig`, whose context gives the server, its CA and the credentials: remove one of them",
                ));
            }
        }
        let namespace = match &self.namespace {
            Some(ns) => check_label("namespace", ns).map(|()| Some(ns.clone())),
            None => Ok(None),
        }
        .unwrap_or_else(|p| {
            problems.push(p);
            None
        });
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        check_timeout(&mut problems, "timeout", timeout);
        let resolved = match kubeconfig::load(path, self.context.as_deref()) {
            Ok(r) => Some(r),
            Err(more) => {
                problems.extend(more);
                None
            }
        };
        if let Some(r) = &resolved {
            check_base(&mut problems, "kubeconfig", &r.server);
            if self.namespace.is_none() {
                if let Some(ns) = &r.namespace {
                    if let Err(p) = check_label("kubeconfig", ns) {
                        problems.push(Problem::new(
                            "kubeconfig",
                            format!("the context's namespace: {}", p.message),
                        ));
                    }
                }
            }
        }
        match resolved {
            Some(r) if problems.is_empty() => Ok(Cluster {
                base: r.server,
                namespace: namespace
                    .or(r.namespace)
                    .unwrap_or_else(|| "default".to_string()),
                timeout,
                auth: r.auth,
                ca: r.ca,
                identity: r.identity,
            }),
            _ => Err(problems),
        }
    }
}

/// Checks the API server's base URL: http(s), no query, no fragment.
fn check_base(problems: &mut Vec<Problem>, key: &str, raw: &str) {
    check_url(problems, key, raw, false);
    if url::Url::parse(raw)
        .ok()
        .is_some_and(|u| u.query().is_some() || u.fragment().is_some())
    {
        problems.push(Problem::new(key, "must not have a query or a fragment"));
    }
}

/// The CA bundle of `ca_file`; without the key, that of
/// [`DEFAULT_CA_FILE`] when it exists, else `None`.
fn read_ca(ca_file: Option<&Path>) -> Result<Option<Vec<reqwest::Certificate>>, Problem> {
    let (path, explicit) = match ca_file {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_CA_FILE), false),
    };
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) if explicit => {
            return Err(Problem::new(
                "ca_file",
                format!("cannot read {} ({e})", path.display()),
            ))
        }
        // Outside a cluster, without a CA file: the system's roots.
        Err(_) => return Ok(None),
    };
    kubeconfig::parse_ca(&pem, &path.display().to_string())
        .map(Some)
        .map_err(|m| Problem::new("ca_file", m))
}

/// A client of one namespace of the API server.
#[derive(Debug, Clone)]
pub struct KubeClient {
    http: reqwest::Client,
    base: String,
    auth: Auth,
    namespace: String,
}

impl KubeClient {
    /// Builds the client of `target` (for its errors); sends nothing.
    pub fn new(target: &'static str, cluster: Cluster) -> Result<Self, RollbackError> {
        let Cluster {
            base,
            namespace,
            timeout,
            auth,
            ca,
            identity,
        } = cluster;
        // The API server never redirects; the shared client follows no
        // redirect, so the token is never carried elsewhere.
        let http = http_client_with(target, timeout, |mut builder| {
            if let Some(certs) = ca {
                // Like client-go in a cluster: trust the cluster's CA only.
                builder = builder.tls_built_in_root_certs(false);
                for cert in certs {
                    builder = builder.add_root_certificate(cert);
                }
            }
            if let Some(identity) = identity {
                builder = builder.identity(identity);
            }
            builder
        })?;
        Ok(Self {
            http,
            base,
            auth,
            namespace,
        })
    }

    /// The namespace every path of the targets lives in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// GET one object; `path` starts with `/api` or `/apis`.
    pub async fn get(&self, path: &str, what: &str) -> Result<Value, CallError> {
        let req = self.http.get(self.url(path));
        self.send(req, what).await
    }

    /// LIST a collection, narrowed by a label selector when there is one.
    pub async fn list(
        &self,
        path: &str,
        label_selector: Option<&str>,
        what: &str,
    ) -> Result<Value, CallError> {
        let mut req = self.http.get(self.url(path));
        if let Some(sel) = label_selector {
            req = req.query(&[("labelSelector", sel)]);
        }
        self.send(req, what).await
    }

    /// PATCH one object (or a subresource of it) with `body`.
    pub async fn patch(
        &self,
        path: &str,
        kind: PatchType,
        body: &Value,
        what: &str,
    ) -> Result<Value, CallError> {
        let req = self
            .http
            .patch(self.url(path))
            .query(&[("fieldManager", "backstop")])
            .header(reqwest::header::CONTENT_TYPE, kind.content_type())
            .body(body.to_string());
        self.send(req, what).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The bearer token, if any; a token file is read again every time:
    /// the kubelet rotates projected tokens.
    async fn token(&self) -> Result<Option<Secret>, CallError> {
        let file = match &self.auth {
            Auth::TokenFile(file) => file,
            Auth::Token(token) => return Ok(Some(token.clone())),
            Auth::None => return Ok(None),
        };
        let text = tokio::fs::read_to_string(file).await.map_err(|e| {
            CallError::refuse(format!(
                "cannot read token_file {} ({})",
                file.display(),
                e.kind()
            ))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(CallError::refuse(format!(
                "token_file {} is empty",
                file.display()
            )));
        }
        Ok(Some(Secret::new(token)))
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Value, CallError> {
        let token = self.token().await?;
        let secrets: Vec<&str> = token.iter().map(Secret::expose).collect();
        let req = match &token {
            Some(t) => req.bearer_auth(t.expose()),
            None => req,
        };
        let resp = req
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return Err(retry_of(classify_error(e, what))),
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(retry_of(classify_error(e, what))),
        };
        match classify_status(status, &headers, what) {
            Attempt::Done(()) => serde_json::from_slice(&body).map_err(|_| {
                CallError::refuse(format!(
                    "{what} answered {status} with a body that is not JSON"
                ))
            }),
            Attempt::Retry { reason, after } => Err(CallError::Retry {
                reason: with_detail(reason, &body, &secrets),
                after,
            }),
            Attempt::Fail(reason) => Err(CallError::Final {
                status: Some(status.as_u16()),
                reason: with_detail(reason, &body, &secrets),
            }),
        }
    }
}

fn retry_of(a: Attempt<()>) -> CallError {
    match a {
        Attempt::Retry { reason, after } => CallError::Retry { reason, after },
        Attempt::Fail(reason) => CallError::refuse(reason),
        Attempt::Done(()) => CallError::refuse("unexpected success"),
    }
}

/// The namespace as configured, or as the kubelet mounted it.
pub fn resolve_namespace(configured: Option<&str>, file: &Path) -> Result<String, Problem> {
    let ns = match configured {
        Some(ns) => ns.to_string(),
        None => std::fs::read_to_string(file)
            .map_err(|e| {
                Problem::new(
                    "namespace",
                    format!(
                        "not set, and {} cannot be read ({e}); set it",
                        file.display()
                    ),
                )
            })?
            .trim()
            .to_string(),
    };
    check_label("namespace", &ns)?;
    Ok(ns)
}

/// Checks an RFC 1123 label (a namespace).
pub fn check_label(key: &str, name: &str) -> Result<(), Problem> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            key,
            format!("{name:?} is not a valid name (lowercase letters, digits and '-', at most 63)"),
        ))
    }
}

/// Checks an RFC 1123 subdomain (a Deployment's or a Rollout's name).
pub fn check_name(key: &str, name: &str) -> Result<(), Problem> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| check_label(key, part).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            key,
            format!("{name:?} is not a valid object name (lowercase letters, digits, '-' and '.')"),
        ))
    }
}

/// Renders a `metav1.LabelSelector` as the `labelSelector` query parameter,
/// the way `LabelSelectorAsSelector` does; `None` for an empty selector.
pub fn label_selector(selector: &Value) -> Result<Option<String>, String> {
    let mut parts = Vec::new();
    if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in labels {
            let v = v
                .as_str()
                .ok_or_else(|| format!("selector label {k} is not a string"))?;
            parts.push(format!("{k}={v}"));
        }
    }
    if let Some(exprs) = selector.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let key = e
                .get("key")
                .and_then(Value::as_str)
                .ok_or("selector expression without a key")?;
            let mut values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|vs| vs.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            values.sort_unstable();
            let values = values.join(",");
            match e.get("operator").and_then(Value::as_str) {
                Some("In") => parts.push(format!("{key} in ({values})")),
                Some("NotIn") => parts.push(format!("{key} notin ({values})")),
                Some("Exists") => parts.push(key.to_string()),
                Some("DoesNotExist") => parts.push(format!("!{key}")),
                other => return Err(format!("selector operator {other:?} is not supported")),
            }
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join(",")))
}

/// Whether `obj` names the object with `uid` as its controller
/// (`metav1.IsControlledBy`).
pub fn controlled_by(obj: &Value, uid: &str) -> bool {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter().any(|r| {
                r.get("controller").and_then(Value::as_bool) == Some(true)
                    && r.get("uid").and_then(Value::as_str) == Some(uid)
            })
        })
}

/// One annotation of an object.
pub fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

/// One label of an object.
pub fn label<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/labels")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

/// A string field of `metadata`.
pub fn meta<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_label_selectors_like_the_api_machinery() {
        let cases = [
            (json!({"matchLabels": {"app": "web"}}), Some("app=web")),
            (
                json!({"matchLabels": {"tier": "front", "app": "web"}}),
                Some("app=web,tier=front"),
            ),
            (
                json!({"matchLabels": {"app": "web"}, "matchExpressions": [
                    {"key": "track", "operator": "In", "values": ["stable", "canary"]},
                    {"key": "legacy", "operator": "DoesNotExist"},
                    {"key": "team", "operator": "Exists"},
                    {"key": "env", "operator": "NotIn", "values": ["dev"]}
                ]}),
                Some("app=web,track in (canary,stable),!legacy,team,env notin (dev)"),
            ),
            (json!({}), None),
        ];
        for (selector, want) in cases {
            assert_eq!(
                label_selector(&selector).unwrap().as_deref(),
                want,
                "{selector}"
            );
        }
        assert!(label_selector(&json!({"matchExpressions": [
            {"key": "a", "operator": "Gt", "values": ["1"]}
        ]}))
        .is_err());
    }

    #[test]
    fn only_a_controller_reference_with_the_uid_counts_as_owner() {
        let rs = |controller: bool, uid: &str| {
            json!({"metadata": {"ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                 "uid": uid, "controller": controller, "blockOwnerDeletion": true}
            ]}})
        };
        assert!(controlled_by(&rs(true, "u1"), "u1"));
        assert!(!controlled_by(&rs(false, "u1"), "u1"));
        assert!(!controlled_by(&rs(true, "u2"), "u1"));
        assert!(!controlled_by(&json!({"metadata": {}}), "u1"));
    }

    #[test]
    fn reads_the_namespace_file_unless_the_namespace_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("namespace");
        std::fs::write(&file, "payments\n").unwrap();
        assert_eq!(resolve_namespace(None, &file).unwrap(), "payments");
        assert_eq!(resolve_namespace(Some("web"), &file).unwrap(), "web");
        let missing = dir.path().join("missing");
        let err = resolve_namespace(None, &missing).unwrap_err();
        assert!(err.to_string().starts_with("namespace: not set"), "{err}");
        assert!(resolve_namespace(Some("Bad_NS"), &file).is_err());
    }

    #[test]
    fn checks_object_names() {
        assert!(check_name("deployment", "web-api.v2").is_ok());
        for bad in ["", "Web", "web/../x", "-web", "web?x=1"] {
            assert!(check_name("deployment", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn checking_the_settings_names_every_key_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        let ns = dir.path().join("namespace");
        std::fs::write(&ns, "default").unwrap();
        let keys = |settings: &ClusterSettings, ns: &Path| -> Vec<String> {
            match settings.check(ns) {
                Ok(_) => vec![],
                Err(problems) => problems.iter().map(ToString::to_string).collect(),
            }
        };
        let bad_url = ClusterSettings {
            api_url: Some("not a url".into()),
            ..Default::default()
        };
        let err = keys(&bad_url, &ns);
        assert!(err.len() == 1 && err[0].starts_with("api_url:"), "{err:?}");
        let missing_ca = ClusterSettings {
            api_url: Some("https://10.0.0.1".into()),
            ca_file: Some(dir.path().join("ca.crt")),
            ..Default::default()
        };
        let err = keys(&missing_ca, &ns);
        assert!(err.len() == 1 && err[0].starts_with("ca_file:"), "{err:?}");
        let not_pem = dir.path().join("not-pem.crt");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let err = keys(
            &ClusterSettings {
                ca_file: Some(not_pem),
                ..missing_ca.clone()
            },
            &ns,
        );
        assert!(
            err.len() == 1 && err[0].contains("holds no PEM certificate"),
            "{err:?}"
        );
        // Every problem at once, not only the first.
        let all_wrong = ClusterSettings {
            api_url: Some("https://10.0.0.1/?watch=1".into()),
            ca_file: Some(dir.path().join("ca.crt")),
            timeout: Some(Duration::ZERO),
            ..Default::default()
        };
        let err = keys(&all_wrong, &dir.path().join("missing"));
        let keys_only: Vec<&str> = err.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            keys_only,
            ["api_url", "namespace", "timeout", "ca_file"],
            "{err:?}"
        );
        let ok = ClusterSettings {
            api_url: Some("http://127.0.0.1:6443/".into()),
            ..Default::default()
        };
        let client = KubeClient::new("kubernetes", ok.check(&ns).unwrap()).unwrap();
        assert_eq!(client.namespace(), "default");
        assert_eq!(client.url("/api"), "http://127.0.0.1:6443/api");
    }

    #[test]
    fn the_api_server_address_comes_from_the_environment_as_in_client_go() {
        let env = |host: Option<&'static str>, port: Option<&'static str>| {
            move |name: &str| match name {
                "KUBERNETES_SERVICE_HOST" => host.map(str::to_string),
                "KUBERNETES_SERVICE_PORT" => port.map(str::to_string),
                _ => None,
            }
        };
        let cases = [
            (Some("10.96.0.1"), Some("443"), "https://10.96.0.1:443"),
            (
                Some("fd00:10:96::1"),
                Some("443"),
                "https://[fd00:10:96::1]:443",
            ),
            (Some("10.96.0.1"), None, DEFAULT_API_URL),
            (None, Some("443"), DEFAULT_API_URL),
            (Some(""), Some("443"), DEFAULT_API_URL),
            (None, None, DEFAULT_API_URL),
        ];
        for (host, port, want) in cases {
            assert_eq!(
                in_cluster_api_url(&env(host, port)),
                want,
                "{host:?} {port:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let ns = dir.path().join("namespace");
        std::fs::write(&ns, "default").unwrap();
        let unset = ClusterSettings::default();
        let cluster = unset
            .check_with(&ns, &env(Some("fd00:10:96::1"), Some("6443")))
            .unwrap();
        assert_eq!(cluster.base, "https://[fd00:10:96::1]:6443");
        // api_url still wins.
        let set = ClusterSettings {
            api_url: Some("http://127.0.0.1:8001".into()),
            ..Default::default()
        };
        let cluster = set
            .check_with(&ns, &env(Some("10.96.0.1"), Some("443")))
            .unwrap();
        assert_eq!(cluster.base, "http://127.0.0.1:8001");
    }

    #[test]
    fn a_kubeconfig_excludes_the_in_cluster_keys_and_context_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("config");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\ncurrent-context: ci\n\
             clusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:6443\n\
             contexts:\n- name: ci\n  context:\n    cluster: c\n    user: u\n\
             users:\n- name: u\n  user:\n    token: abc\n",
        )
        .unwrap();
        let missing = dir.path().join("namespace");
        let with = ClusterSettings {
            kubeconfig: Some(kubeconfig.clone()),
            api_url: Some("https://10.0.0.1".into()),
            token_file: Some("/t".into()),
            ca_file: Some("/ca".into()),
            ..Default::default()
        };
        let err = with.check(&missing).err().unwrap();
        let keys: Vec<&str> = err.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["api_url", "token_file", "ca_file"], "{err:?}");
        assert!(err[0].message.contains("cannot be set with `kubeconfig`"));
        // No namespace file is needed: the context's, else `default`.
        let ok = ClusterSettings {
            kubeconfig: Some(kubeconfig),
            ..Default::default()
        };
        let cluster = ok.check(&missing).unwrap();
        assert_eq!(
            (cluster.base.as_str(), cluster.namespace.as_str()),
            ("http://127.0.0.1:6443", "default")
        );
        let stray = ClusterSettings {
            context: Some("ci".into()),
            namespace: Some("prod".into()),
            api_url: Some("http://127.0.0.1:1".into()),
            ..Default::default()
        };
        let err = stray.check(&missing).err().unwrap();
        assert_eq!(err.len(), 1, "{err:?}");
        assert_eq!(err[0].key, "context");
    }

    #[test]
    fn keeps_the_message_of_a_status_object() {
        let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "deployments.apps \"web\" not found",
            "reason": "NotFound", "details": {"name": "web", "group": "apps", "kind": "deployments"},
            "code": 404});
        assert_eq!(
            with_detail(
                "GET x answered 404 Not Found".into(),
                body.to_string().as_bytes(),
                &[]
            ),
            "GET x answered 404 Not Found: deployments.apps \"web\" not found"
        );
        assert_eq!(with_detail("r".into(), b"<html>", &[]), "r");
    }
}
