//! Learns which deployment is running: a fixed id, a URL polled for it (with
//! a JSON pointer into the body), a file re-read when polled, or the
//! rollback target's platform asked which deployment is live. A failed read
//! is the agent's problem, not the service's: the last known id stays.

pub mod config;

use std::sync::Arc;
use std::time::Duration;

pub use self::config::{Deployment, DeploymentSource};

use crate::rollback::{RollbackError, Target};

/// The largest response body read from `id_url`.
const MAX_ID_BODY: usize = 64 * 1024;

pub struct IdSource {
    source: DeploymentSource,
    client: Option<reqwest::Client>,
    /// The rollback target, asked with `from_platform`.
    platform: Option<Arc<Target>>,
}

impl IdSource {
    /// The id source of `[deployment]`. `platform` is the built rollback
    /// target, which `from_platform` asks (the configuration makes sure
    /// there is one that can be asked); other sources ignore it.
    pub fn new(source: DeploymentSource, platform: Option<Arc<Target>>) -> Result<Self, String> {
        let client = matches!(source, DeploymentSource::Url { .. }).then(|| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .user_agent(concat!("backstop/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("a client with a timeout builds")
        });
        let platform =
            match source {
                DeploymentSource::Platform => match platform {
                    Some(t) => Some(t),
                    None => return Err(
                        "from_platform needs a [rollback] target to ask which deployment is live"
                            .into(),
                    ),
                },
                _ => None,
            };
        Ok(Self {
            source,
            client,
            platform,
        })
    }

    /// Whether the id can change while the agent runs.
    pub fn is_polled(&self) -> bool {
        !matches!(self.source, DeploymentSource::Fixed(_))
    }

    /// Reads the current id. Errors are one line without secrets.
    pub async fn current(&self) -> Result<String, String> {
        let id = match &self.source {
            DeploymentSource::Fixed(id) => id.clone(),
            DeploymentSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("cannot read id_file {}: {e}", path.display()))?,
            DeploymentSource::Platform => {
                let target = self.platform.as_ref().expect("built with a target");
                target
                    .live_deployment()
                    .await
                    .map_err(|e| asking_failed(&e))?
            }
            DeploymentSource::Url { url, pointer } => {
                let shown = backstop_probes::redact_url(url);
                let client = self.client.as_ref().expect("built for a URL source");
                let resp = client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| format!("GET {shown}: {}", e.without_url()))?;
                if !resp.status().is_success() {
                    return Err(format!("GET {shown}: status {}", resp.status()));
                }
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| format!("GET {shown}: {}", e.without_url()))?;
                if body.len() > MAX_ID_BODY {
                    return Err(format!("GET {shown}: body larger than {MAX_ID_BODY} bytes"));
                }
                match pointer {
                    None => String::from_utf8_lossy(&body).into_owned(),
                    Some(p) => {
                        let doc: serde_json::Value = serde_json::from_slice(&body)
                            .map_err(|e| format!("GET {shown}: body is not JSON: {e}"))?;
                        match doc.pointer(p) {
                            Some(serde_json::Value::String(s)) => s.clone(),
                            Some(serde_json::Value::Number(n)) => n.to_string(),
                            Some(other) => {
                                return Err(format!(
                                    "GET {shown}: value at {p} is not a string or number: {other}"
                                ))
                            }
                            None => return Err(format!("GET {shown}: no value at {p}")),
                        }
                    }
                }
            }
        };
        let id = id.trim().to_string();
        if id.is_empty() {
            return Err("the deployment id is empty".into());
        }
        if id.len() > 256 || id.chars().any(char::is_control) {
            return Err(
                "the deployment id is longer than 256 characters or has control characters".into(),
            );
        }
        Ok(id)
    }
}

/// One line saying why the platform could not tell: the target, what
/// failed (already scrubbed of the target's secrets) and, when retries ran
/// out, how many attempts were made.
fn asking_failed(e: &RollbackError) -> String {
    let reason = e.reason().split_whitespace().collect::<Vec<_>>().join(" ");
    let reason = match e {
        RollbackError::Exhausted { attempts, .. } => {
            format!("{reason} (gave up after {attempts} attempts)")
        }
        _ => reason,
    };
    format!("asking {} which deployment is live: {reason}", e.target())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_platform_needs_a_target() {
        assert!(IdSource::new(DeploymentSource::Platform, None).is_err());
        let fixed = IdSource::new(DeploymentSource::Fixed("v1".into()), None).unwrap();
        assert!(!fixed.is_polled());
        let file = IdSource::new(DeploymentSource::File("/x".into()), None).unwrap();
        assert!(file.is_polled());
    }

    #[tokio::test]
    async fn a_target_that_cannot_tell_says_so_on_one_line() {
        let config = crate::config::Config::parse(
            "[service]\nname = \"web\"\n[rollback]\ntarget = \"exec\"\n[rollback.exec]\ncommand = [\"true\"]\n",
            |_| None,
        )
        .unwrap();
        let target = Arc::new(config.rollback.unwrap().build().unwrap());
        let ids = IdSource::new(DeploymentSource::Platform, Some(target)).unwrap();
        assert!(ids.is_polled());
        let err = ids.current().await.unwrap_err();
        assert_eq!(
            err,
            "asking exec which deployment is live: cannot tell which deployment is live; only a platform can"
        );
    }

    #[test]
    fn errors_of_the_platform_stay_on_one_line() {
        let e = RollbackError::Exhausted {
            target: "railway",
            reason: "listing deployments answered 503\nService Unavailable".into(),
            attempts: 3,
        };
        assert_eq!(
            asking_failed(&e),
            "asking railway which deployment is live: listing deployments answered 503 Service Unavailable (gave up after 3 attempts)"
        );
    }
}
