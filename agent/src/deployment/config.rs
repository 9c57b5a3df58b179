//! `[deployment]`: how the agent learns which deployment is running, read
//! and validated here.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::duration::Dur;
use crate::problems::Problems;

/// `[deployment]`: how the agent learns which deployment is running.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentSection {
    /// A fixed deployment id for this process. Default empty (use `id_url`, `id_file` or `from_platform`).
    #[serde(default)]
    id: String,
    /// A URL polled for the id; a new value is a new deployment. Default none.
    #[serde(default)]
    id_url: Option<String>,
    /// JSON pointer into the `id_url` body. Default: the whole body, trimmed.
    #[serde(default)]
    id_pointer: Option<String>,
    /// A file whose trimmed content is the id, re-read when polled. Default none.
    #[serde(default)]
    id_file: Option<PathBuf>,
    /// Ask the `[rollback]` target's platform which deployment is live (Railway's deployment, the Deployment's or Rollout's revision, Render's live deploy, Vercel's production deployment, Heroku's current release), so a service that is down entirely is still seen to change; a `webhook` or `exec` target cannot be asked. Default `false`.
    #[serde(default)]
    from_platform: bool,
    /// How often the id is read again: `id_url` or `id_file` are local and cheap, a platform's API with `from_platform` limits its rate. Default `1s` with `id_url` or `id_file`, `10s` with `from_platform`.
    #[serde(default)]
    poll_interval: Option<Dur>,
    /// Time after a new deployment during which rules are not armed. Default `30s`.
    #[serde(default = "default_warmup")]
    warmup: Dur,
    /// Time with armed rules before a deployment becomes stable. Default `15m`.
    #[serde(default = "default_watch")]
    watch: Dur,
}

impl Default for DeploymentSection {
    fn default() -> Self {
        Self {
            id: String::new(),
            id_url: None,
            id_pointer: None,
            id_file: None,
            from_platform: false,
            poll_interval: None,
            warmup: default_warmup(),
            watch: default_watch(),
        }
    }
}

/// How often `id_url` or `id_file` is read when `poll_interval` is not set.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// How often the platform is asked with `from_platform` when
/// `poll_interval` is not set.
pub const DEFAULT_PLATFORM_POLL: Duration = Duration::from_secs(10);

fn default_warmup() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_watch() -> Dur {
    Dur(Duration::from_secs(900))
}

/// `[deployment]`, validated.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub source: DeploymentSource,
    pub poll_interval: Duration,
    pub warmup: Duration,
    pub watch: Duration,
}

/// Where the deployment id comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum DeploymentSource {
    Fixed(String),
    Url {
        url: String,
        pointer: Option<String>,
    },
    File(PathBuf),
    /// What the `[rollback]` target's platform says is live
    /// (`crate::rollback::Target::live_deployment`).
    Platform,
}

/// `rollback` is the `[rollback]` target: `None` when that section has
/// a problem of its own, `Some(None)` when there is no such section.
pub fn read(
    cx: &mut Problems,
    value: Option<Value>,
    rollback: Option<Option<&crate::rollback::TargetConfig>>,
) -> Option<Deployment> {
    let d: DeploymentSection = match value {
        Some(v) => cx.section("deployment", v)?,
        None => DeploymentSection::default(),
    };
    let mut sources = Vec::new();
    if !d.id.is_empty() {
        sources.push(DeploymentSource::Fixed(d.id.clone()));
    }
    if let Some(url) = &d.id_url {
        match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => cx.report(
                "deployment.id_url",
                format!(
                    "expected an http or https URL, got {:?}",
                    backstop_probes::redact_url(url)
                ),
            ),
        }
        sources.push(DeploymentSource::Url {
            url: url.clone(),
            pointer: d.id_pointer.clone(),
        });
    }
    if let Some(p) = &d.id_pointer {
        if d.id_url.is_none() {
            cx.report("deployment.id_pointer", "only applies with id_url");
        } else if !(p.is_empty() || p.starts_with('/')) {
            cx.report(
                "deployment.id_pointer",
                format!("JSON pointer {p:?} must be empty or start with '/'"),
            );
        }
    }
    if let Some(f) = &d.id_file {
        sources.push(DeploymentSource::File(f.clone()));
    }
    if d.from_platform {
        sources.push(DeploymentSource::Platform);
        let platforms = crate::rollback::TARGETS
            .iter()
            .filter(|t| !matches!(**t, "webhook" | "exec"))
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        match rollback {
            Some(None) => cx.report(
                "deployment.from_platform",
                format!(
                    "needs a [rollback] section to ask: set its target to a platform \
                     ({platforms}), or use id_url or id_file"
                ),
            ),
            Some(Some(t)) if !t.can_tell_live() => cx.report(
                "deployment.from_platform",
                format!(
                    "the {} target cannot say which deployment is live: use id_url or id_file, \
                     or a platform target ({platforms})",
                    t.name()
                ),
            ),
            _ => {}
        }
    }
    if sources.len() > 1 {
        cx.report(
            "deployment",
            "set only one of id, id_url, id_file or from_platform",
        );
    }
    let poll_interval = match d.poll_interval {
        Some(p) => {
            if p.0.is_zero() {
                cx.report("deployment.poll_interval", "must be more than 0s");
            }
            p.0
        }
        None if d.from_platform => DEFAULT_PLATFORM_POLL,
        None => DEFAULT_POLL,
    };
    if d.watch.0.is_zero() {
        cx.report("deployment.watch", "must be more than 0s");
    }
    Some(Deployment {
        // No source at all: one unnamed deployment for the life of the process.
        source: sources
            .into_iter()
            .next()
            .unwrap_or(DeploymentSource::Fixed("unknown".into())),
        poll_interval,
        warmup: d.warmup.0,
        watch: d.watch.0,
    })
}
