//! Rollback targets: the platform APIs the agent calls to return a service
//! to its last good deployment.
//!
//! PROVISIONAL: this file only declares the Kubernetes targets and a
//! stand-in for the shared error type, so that they build on their own. It
//! is to be merged with the real `rollback/mod.rs` (`RollbackConfig`, the
//! `Target` enum, `RollbackError`), which replaces everything below except
//! the three `pub mod` lines.

pub mod argo_rollouts;
pub mod kube;
pub mod kubernetes;

use crate::retry::RetryError;

/// Why a rollback call did not succeed (provisional stand-in).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RollbackError {
    /// The target cannot be built from its configuration.
    #[error("{target}: {message}")]
    Config {
        target: &'static str,
        message: String,
    },
    /// Not worth another try: refused, unauthorized, not found, invalid.
    #[error("{target}: {message} (not retried)")]
    Final {
        target: &'static str,
        message: String,
    },
    /// Every attempt failed for a reason worth retrying, until the deadline.
    #[error("{target}: gave up after {attempts} attempts: {message}")]
    Exhausted {
        target: &'static str,
        message: String,
        attempts: u32,
    },
}

impl RollbackError {
    /// The same error, attributed to `target`.
    pub fn in_target(self, target: &'static str) -> Self {
        match self {
            Self::Config { message, .. } => Self::Config { target, message },
            Self::Final { message, .. } => Self::Final { target, message },
            Self::Exhausted {
                message, attempts, ..
            } => Self::Exhausted {
                target,
                message,
                attempts,
            },
        }
    }

    /// The message without the target's name.
    pub fn message(&self) -> &str {
        match self {
            Self::Config { message, .. }
            | Self::Final { message, .. }
            | Self::Exhausted { message, .. } => message,
        }
    }
}

/// A retry error belongs to no target yet: attribute it with
/// [`RollbackError::in_target`].
impl From<RetryError> for RollbackError {
    fn from(e: RetryError) -> Self {
        match e {
            RetryError::Final { reason, .. } => Self::Final {
                target: "rollback",
                message: reason,
            },
            RetryError::Exhausted { reason, attempts } => Self::Exhausted {
                target: "rollback",
                message: reason,
                attempts,
            },
        }
    }
}
