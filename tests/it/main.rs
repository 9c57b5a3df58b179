//! The integration tests: one binary, real servers on loopback.

mod agent;
mod cli;
mod notify;
mod packaging;
