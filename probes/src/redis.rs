//! `redis`: placeholder until the real probe lands.

use serde::Deserialize;

use crate::{ConfigProblem, Context, ProbeError, Report};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug)]
pub struct RedisProbe;

impl RedisProbe {
    pub fn new(_cfg: &RedisConfig, _ctx: Context) -> Result<Self, Vec<ConfigProblem>> {
        Ok(Self)
    }

    pub async fn check(&self) -> Result<Report, ProbeError> {
        Err(ProbeError::cannot_run("not implemented"))
    }
}
