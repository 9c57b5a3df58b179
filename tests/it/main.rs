//! The integration tests: one binary, real servers on loopback.

mod cli;
mod probe_http;
mod probe_scenario;
