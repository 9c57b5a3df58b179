//! `[rollback]`: the common keys and the chosen target, read and validated
//! here; each target's own settings, and their checks, are in its file.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::problem::Problem;
use super::{
    argo_rollouts, aws_codedeploy, aws_ecs, aws_lambda, exec, heroku, kubernetes, railway, render,
    vercel, webhook,
};
use crate::duration::Dur;
use crate::problems::Problems;

/// Every value `target` accepts, in SPEC's order.
pub const TARGETS: &[&str] = &[
    "railway",
    "kubernetes",
    "argo_rollouts",
    "render",
    "vercel",
    "heroku",
    "aws_lambda",
    "aws_ecs",
    "aws_codedeploy",
    "webhook",
    "exec",
];

/// The keys of `[rollback]` besides the target subtables.
const COMMON_KEYS: &[&str] = &[
    "target",
    "dry_run",
    "cooldown",
    "max_per_hour",
    "verify",
    "deadline",
];

/// A validated `[rollback]` section.
#[derive(Debug, Clone)]
pub struct RollbackConfig {
    /// Record what would be done instead of calling. Default `false`.
    /// Enforced by the caller, which also labels the metric `dry_run`.
    pub dry_run: bool,
    /// No automatic rollback within this long after the previous one. Default `10m`.
    pub cooldown: Duration,
    /// At most this many rollback calls in any hour. Default 3.
    pub max_per_hour: u32,
    /// How long after an accepted call the deployment must have changed
    /// before the rollback counts as effective. Default `5m`.
    pub verify: Duration,
    /// Retries stop when the next attempt would start later than this after
    /// the first. Default `5m`.
    pub deadline: Duration,
    /// The chosen target with its own settings.
    pub target: TargetConfig,
}

/// The chosen target's subtable.
#[derive(Debug, Clone)]
pub enum TargetConfig {
    Webhook(webhook::WebhookTargetConfig),
    Exec(exec::ExecConfig),
    Railway(railway::RailwayConfig),
    Render(render::RenderConfig),
    Vercel(vercel::VercelConfig),
    Heroku(heroku::HerokuConfig),
    Kubernetes(kubernetes::KubernetesConfig),
    ArgoRollouts(argo_rollouts::ArgoRolloutsConfig),
    AwsLambda(aws_lambda::AwsLambdaConfig),
    AwsEcs(aws_ecs::AwsEcsConfig),
    AwsCodeDeploy(aws_codedeploy::AwsCodeDeployConfig),
}

impl TargetConfig {
    /// The `target` value, also the `target` label of `backstop_rollbacks_total`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Webhook(_) => "webhook",
            Self::Exec(_) => "exec",
            Self::Railway(_) => "railway",
            Self::Render(_) => "render",
            Self::Vercel(_) => "vercel",
            Self::Heroku(_) => "heroku",
            Self::Kubernetes(_) => kubernetes::NAME,
            Self::ArgoRollouts(_) => argo_rollouts::NAME,
            Self::AwsLambda(_) => aws_lambda::NAME,
            Self::AwsEcs(_) => aws_ecs::NAME,
            Self::AwsCodeDeploy(_) => aws_codedeploy::NAME,
        }
    }

    /// Whether the target's platform can say which deployment is live
    /// ([`Target::live_deployment`]): every platform can; a webhook or a
    /// command cannot.
    pub fn can_tell_live(&self) -> bool {
        !matches!(self, Self::Webhook(_) | Self::Exec(_))
    }

    fn validate(&self) -> Vec<Problem> {
        match self {
            Self::Webhook(c) => c.validate(),
            Self::Exec(c) => c.validate(),
            Self::Railway(c) => c.validate(),
            Self::Render(c) => c.validate(),
            Self::Vercel(c) => c.validate(),
            Self::Heroku(c) => c.validate(),
            Self::Kubernetes(c) => c.validate(),
            Self::ArgoRollouts(c) => c.validate(),
            Self::AwsLambda(c) => c.validate(),
            Self::AwsEcs(c) => c.validate(),
            Self::AwsCodeDeploy(c) => c.validate(),
        }
    }
}

/// `[rollback]` as written, without the target subtables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommonSection {
    /// The platform to call, configured in the subtable of the same name:
    /// `railway`, `kubernetes`, `argo_rollouts`, `render`, `vercel`, `heroku`,
    /// `aws_lambda`, `aws_ecs`, `aws_codedeploy`, `webhook` or `exec` (see [`TARGETS`]). Required.
    target: TargetKind,
    /// Record what would be done instead of calling. Default `false`.
    #[serde(default)]
    dry_run: bool,
    /// No automatic rollback within this long after the previous one. Default `10m`.
    #[serde(default = "default_cooldown")]
    cooldown: Dur,
    /// At most this many rollback calls in any hour. Default 3.
    #[serde(default = "default_max_per_hour")]
    max_per_hour: u32,
    /// How long after an accepted call the deployment must have changed
    /// before the rollback counts as effective. Default `5m`.
    #[serde(default = "default_five_minutes")]
    verify: Dur,
    /// Retries stop when the next attempt would start later than this after
    /// the first. Default `5m`.
    #[serde(default = "default_five_minutes")]
    deadline: Dur,
}

fn default_cooldown() -> Dur {
    Dur(Duration::from_secs(600))
}
fn default_max_per_hour() -> u32 {
    3
}
fn default_five_minutes() -> Dur {
    Dur(Duration::from_secs(300))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TargetKind {
    Railway,
    Kubernetes,
    ArgoRollouts,
    Render,
    Vercel,
    Heroku,
    AwsLambda,
    AwsEcs,
    #[serde(rename = "aws_codedeploy")]
    AwsCodeDeploy,
    Webhook,
    Exec,
}

impl TargetKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Railway => "railway",
            Self::Kubernetes => "kubernetes",
            Self::ArgoRollouts => "argo_rollouts",
            Self::Render => "render",
            Self::Vercel => "vercel",
            Self::Heroku => "heroku",
            Self::AwsLambda => "aws_lambda",
            Self::AwsEcs => "aws_ecs",
            Self::AwsCodeDeploy => "aws_codedeploy",
            Self::Webhook => "webhook",
            Self::Exec => "exec",
        }
    }
}

/// Reads and validates `[rollback]`: the common keys first, then only the
/// chosen target's subtable, deserialized on its own so errors keep their
/// key paths and lines.
pub fn read(cx: &mut Problems, value: Value) -> Option<RollbackConfig> {
    let Value::Object(map) = value else {
        cx.report("rollback", "must be a table: write [rollback]");
        return None;
    };
    let mut common = serde_json::Map::new();
    let mut subtables = Vec::new();
    let mut ok = true;
    for (k, v) in map {
        if TARGETS.contains(&k.as_str()) {
            subtables.push((k, v));
        } else if COMMON_KEYS.contains(&k.as_str()) {
            common.insert(k, v);
        } else {
            cx.report(
                format!("rollback.{k}"),
                format!(
                    "unknown key, expected one of {}, or a target's table: {}",
                    COMMON_KEYS.join(", "),
                    TARGETS.join(", ")
                ),
            );
            ok = false;
        }
    }
    if !common.contains_key("target") {
        cx.report(
            "rollback.target",
            format!(
                "required key is missing, expected one of {}",
                TARGETS.join(", ")
            ),
        );
        return None;
    }
    // The target is read on its own too, so its subtable is checked even
    // when another common key is wrong.
    let kind = common
        .get("target")
        .cloned()
        .and_then(|v| serde_json::from_value::<TargetKind>(v).ok());
    let common: Option<CommonSection> = cx.section("rollback", Value::Object(common));
    let kind = common.as_ref().map(|c| c.target).or(kind)?;
    let chosen = kind.as_str();
    let mut chosen_table = None;
    for (k, v) in subtables {
        if k == chosen {
            chosen_table = Some(v);
        } else {
            cx.report(
                format!("rollback.{k}"),
                format!("target is {chosen:?}, so only [rollback.{chosen}] applies: remove [rollback.{k}]"),
            );
            ok = false;
        }
    }
    let path = format!("rollback.{chosen}");
    let target = match (kind, chosen_table) {
        (_, None) => {
            cx.report(
                path.clone(),
                format!("target = {chosen:?} needs a [rollback.{chosen}] table"),
            );
            None
        }
        (kind, Some(v)) => match kind {
            TargetKind::Webhook => cx.section(&path, v).map(TargetConfig::Webhook),
            TargetKind::Exec => cx.section(&path, v).map(TargetConfig::Exec),
            TargetKind::Railway => cx.section(&path, v).map(TargetConfig::Railway),
            TargetKind::Render => cx.section(&path, v).map(TargetConfig::Render),
            TargetKind::Vercel => cx.section(&path, v).map(TargetConfig::Vercel),
            TargetKind::Heroku => cx.section(&path, v).map(TargetConfig::Heroku),
            TargetKind::Kubernetes => cx.section(&path, v).map(TargetConfig::Kubernetes),
            TargetKind::ArgoRollouts => cx.section(&path, v).map(TargetConfig::ArgoRollouts),
            TargetKind::AwsLambda => cx.section(&path, v).map(TargetConfig::AwsLambda),
            TargetKind::AwsEcs => cx.section(&path, v).map(TargetConfig::AwsEcs),
            TargetKind::AwsCodeDeploy => cx.section(&path, v).map(TargetConfig::AwsCodeDeploy),
        },
    };
    if let Some(t) = &target {
        for p in t.validate() {
            let key = format!("{path}.{}", p.key);
            // A value already reported (an unset variable) is not reported twice.
            if !cx.has_problem(&key) {
                cx.report(key, p.message);
            }
            ok = false;
        }
    }
    let common = common?;
    if common.deadline.0.is_zero() {
        cx.report("rollback.deadline", "must be more than 0s");
        ok = false;
    }
    if common.verify.0.is_zero() {
        cx.report("rollback.verify", "must be more than 0s");
        ok = false;
    }
    if common.max_per_hour == 0 {
        cx.report(
            "rollback.max_per_hour",
            "must be at least 1 (set dry_run = true to never call)",
        );
        ok = false;
    }
    let target = target?;
    ok.then_some(RollbackConfig {
        dry_run: common.dry_run,
        cooldown: common.cooldown.0,
        max_per_hour: common.max_per_hour,
        verify: common.verify.0,
        deadline: common.deadline.0,
        target,
    })
}
