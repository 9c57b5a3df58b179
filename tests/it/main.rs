//! The integration tests: one binary, real servers on loopback.

mod agent;
mod cli;
mod daemon;
mod docs;
mod e2e;
mod e2e_l4;
mod faults;
mod fleet;
mod fleet_postgres;
mod fleet_redis;
mod manifests;
mod notify;
mod packaging;
mod probe_http;
mod probe_postgres;
mod probe_promql;
mod probe_redis;
mod probe_resources;
mod probe_scenario;
mod probe_scrape;
mod prometheus;
mod reload;
mod rollback_kubernetes;
mod rollback_targets;
mod secrets;
mod store_postgres;
