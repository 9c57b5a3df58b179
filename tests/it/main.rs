//! The integration tests: one binary, real servers on loopback.

mod cli;
mod probe_postgres;
mod probe_redis;
mod probe_resources;
