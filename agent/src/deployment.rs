//! Learns which deployment is running: a fixed id, a URL polled for it (with
//! a JSON pointer into the body), or a file re-read when polled. A failed
//! poll is the agent's problem, not the service's: the last known id stays.

use std::time::Duration;

use crate::config::DeploymentSource;

/// The largest response body read from `id_url`.
const MAX_ID_BODY: usize = 64 * 1024;

pub struct IdSource {
    source: DeploymentSource,
    client: Option<reqwest::Client>,
}

impl IdSource {
    pub fn new(source: DeploymentSource) -> Self {
        let client = matches!(source, DeploymentSource::Url { .. }).then(|| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .user_agent(concat!("backstop/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("a client with a timeout builds")
        });
        Self { source, client }
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
