//! The integration tests: one binary, real servers on loopback.

mod cli;
mod rollback_kubernetes;
