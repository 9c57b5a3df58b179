//! Fleet coordination through redis. Placeholder: every call fails until the
//! back end is written, so nothing can mistake it for a working store.

use std::time::Duration;

use anyhow::bail;

use super::{Lease, Report};
use crate::store::RollbackRecord;

pub struct RedisFleet {
    shown: String,
}

impl RedisFleet {
    pub async fn connect(_url: &crate::secret::Secret, _timeout: Duration) -> anyhow::Result<Self> {
        bail!("fleet coordination through redis is not written yet")
    }

    pub fn describe(&self) -> String {
        self.shown.clone()
    }

    pub async fn publish(
        &self,
        _service: &str,
        _report: &Report,
        _expiry: Duration,
    ) -> anyhow::Result<()> {
        bail!("fleet coordination through redis is not written yet")
    }

    pub async fn live(&self, _service: &str, _deployment: &str) -> anyhow::Result<Vec<Report>> {
        bail!("fleet coordination through redis is not written yet")
    }

    pub async fn leave(&self, _service: &str, _replica: &str) -> anyhow::Result<()> {
        bail!("fleet coordination through redis is not written yet")
    }

    pub async fn acquire(
        &self,
        _service: &str,
        _deployment: &str,
        _holder: &str,
        _ttl: Duration,
    ) -> anyhow::Result<Option<Lease>> {
        bail!("fleet coordination through redis is not written yet")
    }

    pub async fn renew(
        &self,
        _service: &str,
        _lease: &mut Lease,
        _ttl: Duration,
    ) -> anyhow::Result<bool> {
        bail!("fleet coordination through redis is not written yet")
    }

    pub async fn release(&self, _service: &str, _lease: &Lease) -> anyhow::Result<()> {
        bail!("fleet coordination through redis is not written yet")
    }

    pub async fn record(
        &self,
        _service: &str,
        _lease: &Lease,
        _rec: &RollbackRecord,
    ) -> anyhow::Result<bool> {
        bail!("fleet coordination through redis is not written yet")
    }

    pub async fn outcome(
        &self,
        _service: &str,
        _deployment: &str,
    ) -> anyhow::Result<Option<RollbackRecord>> {
        bail!("fleet coordination through redis is not written yet")
    }
}
