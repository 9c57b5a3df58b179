//! The integration tests: one binary, real servers on loopback.

mod agent;
mod cli;
mod daemon;
mod e2e;
mod faults;
mod notify;
mod packaging;
mod probe_http;
mod probe_postgres;
mod probe_promql;
mod probe_redis;
mod probe_resources;
mod probe_scenario;
mod probe_scrape;
mod reload;
mod rollback_kubernetes;
mod rollback_targets;
mod secrets;
