//! A kubeconfig file, for an agent outside the cluster: the context's
//! cluster (server, CA), its user's credentials (a bearer token, a token
//! file, or a client certificate and key for mutual TLS) and its namespace.
//!
//! The shapes and rules are client-go's (`tools/clientcmd/api/v1/types.go`
//! for the field names; `tools/clientcmd/loader.go` `ResolveLocalPaths`:
//! a relative path is relative to the kubeconfig's directory; `*-data`
//! fields are base64 and take precedence over the files; `tokenFile` over
//! `token`). What needs a program run or a provider's login (`exec`,
//! `auth-provider`), and what would weaken or change the connection
//! (`insecure-skip-tls-verify`, `tls-server-name`, `proxy-url`,
//! impersonation, basic auth) is refused, with what would work instead.
//!
//! Only the file the `kubeconfig` key names is read, never `KUBECONFIG` or
//! `~/.kube/config`: what the agent rolls back stays what its configuration
//! file says, whatever the environment it is started in (and `KUBECONFIG`
//! may list several files that kubectl merges, which this reader does not).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::problem::{check_url, Problem};
use crate::secret::Secret;

/// How a request proves who sends it.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A bearer token read again before every request (token files rotate).
    TokenFile(PathBuf),
    /// A bearer token given inline.
    Token(Secret),
    /// No bearer token: the client certificate alone.
    None,
}

/// What a kubeconfig's context comes to.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub server: String,
    /// The cluster's CA, to be trusted alone; `None` for the system's roots.
    pub ca: Option<Vec<reqwest::Certificate>>,
    pub auth: Auth,
    /// The client certificate and key, for mutual TLS.
    pub identity: Option<reqwest::Identity>,
    /// The context's namespace.
    pub namespace: Option<String>,
}

#[derive(Deserialize)]
struct File {
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
    #[serde(default)]
    clusters: Option<Vec<Named<ClusterEntry>>>,
    #[serde(default)]
    contexts: Option<Vec<NamedContext>>,
    #[serde(default)]
    users: Option<Vec<NamedUser>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    cluster: T,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: ContextEntry,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    user: UserEntry,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct ClusterEntry {
    server: Option<String>,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
    proxy_url: Option<String>,
}

#[derive(Deserialize, Default)]
struct ContextEntry {
    cluster: Option<String>,
    user: Option<String>,
    namespace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct UserEntry {
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    token: Option<Secret>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    #[serde(rename = "as")]
    impersonate: Option<String>,
    as_groups: Option<Vec<String>>,
    username: Option<String>,
    password: Option<Secret>,
    auth_provider: Option<serde_norway::Value>,
    exec: Option<serde_norway::Value>,
}

/// Reads `path` and resolves `context` (default: its `current-context`).
/// Problems are keyed `kubeconfig` (or `context`) and never show a
/// credential.
pub fn load(path: &Path, context: Option<&str>) -> Result<Resolved, Vec<Problem>> {
    let one = |key: &str, m: String| vec![Problem::new(key, m)];
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| one("kubeconfig", format!("cannot read {shown} ({e})")))?;
    let file: File = serde_norway::from_str(&text).map_err(|e| {
        one(
            "kubeconfig",
            format!("{shown} is not a kubeconfig file ({e})"),
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let (context_key, name) = match context {
        Some(c) => ("context", c.to_string()),
        None => match file.current_context.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => ("kubeconfig", c.to_string()),
            None => {
                return Err(one(
                    "kubeconfig",
                    format!("{shown} has no current-context; set `context` to one of its contexts"),
                ))
            }
        },
    };
    let contexts = file.contexts.unwrap_or_default();
    let Some(ctx) = contexts.into_iter().find(|c| c.name == name) else {
        return Err(one(context_key, format!("{shown} has no context {name:?}")));
    };
    let ctx = ctx.context;
    let mut problems = Vec::new();
    let p = |m: String| Problem::new("kubeconfig", format!("{shown}, context {name:?}: {m}"));

    let cluster_name = ctx.cluster.unwrap_or_default();
    let cluster = file
        .clusters
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == cluster_name)
        .map(|c| c.cluster);
    let Some(cluster) = cluster else {
        return Err(vec![p(format!(
            "names cluster {cluster_name:?}, which is not in clusters"
        ))]);
    };
    let server = cluster.server.clone().unwrap_or_default();
    let mut url_problems = Vec::new();
    check_url(&mut url_problems, "server", &server, false);
    problems.extend(url_problems.into_iter().map(|q| p(q.to_string())));
    if cluster.insecure_skip_tls_verify {
        problems.push(p(
            "the cluster has insecure-skip-tls-verify: true, which would send the credentials to \
             whoever answers; refused: give the cluster's certificate-authority or \
             certificate-authority-data instead"
                .into(),
        ));
    }
    if cluster.tls_server_name.is_some() {
        problems.push(p("tls-server-name is not supported: use a server URL whose host is in the API server's certificate".into()));
    }
    if cluster.proxy_url.is_some() {
        problems.push(p("proxy-url is not supported: reach the API server directly, or set HTTPS_PROXY in the agent's environment".into()));
    }
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => decode(data, "certificate-authority-data")
            .and_then(|pem| parse_ca(&pem, "certificate-authority-data"))
            .map(Some),
        (None, Some(file)) => {
            let file = resolve(base, file);
            std::fs::read(&file)
                .map_err(|e| format!("cannot read certificate-authority {} ({e})", file.display()))
                .and_then(|pem| parse_ca(&pem, &file.display().to_string()))
                .map(Some)
        }
        (None, None) => Ok(None),
    };
    let ca = ca.unwrap_or_else(|m| {
        problems.push(p(m));
        None
    });

    let user_name = ctx.user.unwrap_or_default();
    let user = if user_name.is_empty() {
        UserEntry::default()
    } else {
        match file
            .users
            .unwrap_or_default()
            .into_iter()
            .find(|u| u.name == user_name)
        {
            Some(u) => u.user,
            None => {
                problems.push(p(format!(
                    "names user {user_name:?}, which is not in users"
                )));
                UserEntry::default()
            }
        }
    };
    let works =
        "what works: a token, a tokenFile, or client-certificate(-data) with client-key(-data)";
    if user.exec.is_some() {
        problems.push(p(format!(
            "user {user_name:?} gets its credentials from an exec plugin, which the agent does not run; {works} (for example a service account token: kubectl create token)"
        )));
    }
    if user.auth_provider.is_some() {
        problems.push(p(format!(
            "user {user_name:?} uses an auth-provider, which the agent does not support; {works}"
        )));
    }
    if user.username.is_some() || user.password.is_some() {
        problems.push(p(format!(
            "user {user_name:?} has a username and password (basic auth), which the API server no longer accepts; {works}"
        )));
    }
    if user.impersonate.is_some() || user.as_groups.is_some() {
        problems.push(p(format!(
            "user {user_name:?} impersonates (as, as-groups), which the agent does not do; give the impersonated identity's own credentials"
        )));
    }
    let auth = match (&user.token_file, &user.token) {
        (Some(f), _) => Auth::TokenFile(resolve(base, f)),
        (None, Some(t)) if !t.is_empty() => Auth::Token(t.clone()),
        _ => Auth::None,
    };
    let cert = match (&user.client_certificate_data, &user.client_certificate) {
        (Some(d), _) => Some(decode(d, "client-certificate-data")),
        (None, Some(f)) => Some(read_file(base, f, "client-certificate")),
        (None, None) => None,
    };
    let key = match (&user.client_key_data, &user.client_key) {
        (Some(d), _) => Some(decode(d, "client-key-data")),
        (None, Some(f)) => Some(read_file(base, f, "client-key")),
        (None, None) => None,
    };
    let identity = match (cert, key) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            problems.push(p(format!(
                "user {user_name:?} has a client certificate or a client key but not both; give client-certificate(-data) and client-key(-data) together"
            )));
            None
        }
        (Some(cert), Some(key)) => match (cert, key) {
            (Ok(cert), Ok(key)) => {
                let mut pem = cert;
                pem.push(b'\n');
                pem.extend_from_slice(&key);
                match reqwest::Identity::from_pem(&pem) {
                    Ok(id) => Some(id),
                    Err(_) => {
                        problems.push(p(format!(
                            "user {user_name:?}: the client certificate and key are not a PEM certificate and a PEM private key (PKCS#8, PKCS#1 or SEC1)"
                        )));
                        None
                    }
                }
            }
            (Err(m), _) | (_, Err(m)) => {
                problems.push(p(m));
                None
            }
        },
    };
    if matches!(auth, Auth::None)
        && identity.is_none()
        && user.exec.is_none()
        && user.auth_provider.is_none()
    {
        problems.push(p(format!("user {user_name:?} has no credentials; {works}")));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Resolved {
        server: server.trim_end_matches('/').to_string(),
        ca,
        auth,
        identity,
        namespace: ctx.namespace.filter(|n| !n.is_empty()),
    })
}

/// A path as written in the kubeconfig, relative to its directory.
fn resolve(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn read_file(base: &Path, path: &str, field: &str) -> Result<Vec<u8>, String> {
    let path = resolve(base, path);
    std::fs::read(&path).map_err(|e| format!("cannot read {field} {} ({e})", path.display()))
}

fn decode(data: &str, field: &str) -> Result<Vec<u8>, String> {
    let compact: String = data.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| format!("{field} is not base64"))
}

/// The certificates of a PEM bundle; `what` names it in the message.
pub fn parse_ca(pem: &[u8], what: &str) -> Result<Vec<reqwest::Certificate>, String> {
    match reqwest::Certificate::from_pem_bundle(pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(format!("{what} holds no PEM certificate")),
        Err(e) => Err(format!("{what} is not a PEM certificate ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEM block: what is read here is the PEM framing; the certificate
    /// itself is checked by the TLS handshake (tests/it/rollback_kubernetes.rs).
    const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBeTCCAR+gAwIBAgIUBRSFBsNKGjd/j6EQJNnTpPQ7KycwCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHdGVzdC1jYTAeFw0yNDAxMDEwMDAwMDBaFw0zNDAxMDEwMDAw
MDBaMBIxEDAOBgNVBAMMB3Rlc3QtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AAT7mnRm8E0Y0Fv3Yf1fF6eK8l3QTq8yZb3oGd4m2q4m2m3qZ0vX6mQ0bS5aQkq3
mJ0uS8b5Q8oXv0c8mC1rG5uKo1MwUTAdBgNVHQ4EFgQUAAAAAAAAAAAAAAAAAAAA
AAAAAAAwHwYDVR0jBBgwFoAUAAAAAAAAAAAAAAAAAAAAAAAAAAAwDwYDVR0TAQH/
BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAACIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
-----END CERTIFICATE-----
";

    fn write(dir: &Path, user: &str, cluster_extra: &str) -> PathBuf {
        let path = dir.join("config");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1
kind: Config
current-context: ci
clusters:
- name: staging
  cluster:
    server: https://203.0.113.10:6443
{cluster_extra}contexts:
- name: ci
  context:
    cluster: staging
    user: deployer
    namespace: payments
- name: other
  context:
    cluster: staging
    user: deployer
users:
- name: deployer
  user:
{user}"
            ),
        )
        .unwrap();
        path
    }

    fn messages(r: Result<Resolved, Vec<Problem>>) -> String {
        r.err()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn resolves_the_current_context_with_relative_paths_and_data() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t0k3n\n").unwrap();
        std::fs::write(dir.path().join("ca.crt"), CA).unwrap();
        let path = write(
            dir.path(),
            "    tokenFile: token\n    token: inline\n",
            "    certificate-authority: ca.crt\n",
        );
        let r = load(&path, None).unwrap();
        assert_eq!(r.server, "https://203.0.113.10:6443");
        assert_eq!(r.namespace.as_deref(), Some("payments"));
        assert_eq!(r.ca.map(|c| c.len()), Some(1));
        // tokenFile over token, as client-go; relative to the file.
        assert!(matches!(&r.auth, Auth::TokenFile(f) if *f == dir.path().join("token")));
        let r = load(&path, Some("other")).unwrap();
        assert_eq!(r.namespace, None);

        let data = base64::engine::general_purpose::STANDARD.encode(CA);
        let path = write(
            dir.path(),
            "    token: inline\n",
            &format!(
                "    certificate-authority: missing.crt\n    certificate-authority-data: {data}\n"
            ),
        );
        let r = load(&path, None).unwrap();
        assert!(matches!(&r.auth, Auth::Token(t) if t.expose() == "inline"));
        assert!(r.ca.is_some(), "the data wins over the file");
    }

    #[test]
    fn refuses_what_the_agent_cannot_or_should_not_do_and_says_what_works() {
        let dir = tempfile::tempdir().unwrap();
        let exec = "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: aws\n      args: [eks, get-token]\n";
        let err = messages(load(&write(dir.path(), exec, ""), None));
        assert!(err.starts_with("kubeconfig: "), "{err}");
        assert!(
            err.contains("exec plugin")
                && err.contains("what works: a token, a tokenFile, or client-certificate"),
            "{err}"
        );
        let provider = "    auth-provider:\n      name: oidc\n      config: {}\n";
        let err = messages(load(&write(dir.path(), provider, ""), None));
        assert!(err.contains("auth-provider"), "{err}");
        let err = messages(load(
            &write(
                dir.path(),
                "    token: secret-value\n",
                "    insecure-skip-tls-verify: true\n",
            ),
            None,
        ));
        assert!(
            err.contains("insecure-skip-tls-verify: true") && err.contains("refused"),
            "{err}"
        );
        assert!(!err.contains("secret-value"), "{err}");
        let err = messages(load(
            &write(dir.path(), "    username: a\n    password: hunter2\n", ""),
            None,
        ));
        assert!(
            err.contains("basic auth") && !err.contains("hunter2"),
            "{err}"
        );
        let err = messages(load(
            &write(dir.path(), "    client-certificate: c.crt\n", ""),
            None,
        ));
        assert!(err.contains("not both"), "{err}");
        let err = messages(load(&write(dir.path(), "    {}\n", ""), None));
        assert!(err.contains("has no credentials"), "{err}");
        let err = messages(load(&write(dir.path(), "    token: x\n", ""), Some("prod")));
        assert!(
            err.starts_with("context: ") && err.contains("no context \"prod\""),
            "{err}"
        );
        let err = messages(load(&dir.path().join("absent"), None));
        assert!(err.starts_with("kubeconfig: cannot read"), "{err}");
        std::fs::write(dir.path().join("bad"), "clusters: 3\n").unwrap();
        let err = messages(load(&dir.path().join("bad"), None));
        assert!(err.contains("is not a kubeconfig file"), "{err}");
    }
}
