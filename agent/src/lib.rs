//! The backstop agent: reads the configuration, schedules the probes, has
//! what they report judged (`backstop_judge`), acts on the verdicts, and
//! serves `/healthz`, `/status` and `/metrics`.

pub mod app;
pub mod check;
pub mod config;
pub mod defaults;
pub mod demo;
pub mod deployment;
pub mod duration;
pub mod evaluation;
pub mod evidence;
pub mod fleet;
pub mod history;
pub mod ledger;
pub mod notify;
pub mod page;
pub mod probe_config;
pub mod problems;
pub mod retry;
pub mod rollback;
pub mod rule_config;
pub mod run;
pub mod schedule;
pub mod secret;
pub mod server;
pub mod store;
pub mod supervise;
pub mod telemetry;
pub mod utc;
pub mod watch;
