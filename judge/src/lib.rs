//! The judgement of backstop, and nothing else: the rule language of a
//! rule's `when` ([`rules`]), the statistics behind `Nx baseline`
//! ([`stats`]), a stable deployment's [`baseline`], the samples and windows a
//! probe's checks leave behind ([`observe`]), the [`evidence`] a rule that
//! holds gives, and the [`duration`] grammar both the rules and the
//! configuration speak.
//!
//! It is pure: it takes plain values (a probe's window, a baseline, a rule's
//! name) and returns verdicts and numbers. It does no I/O, reads no files,
//! environment or configuration, keeps no state but the process-wide table
//! of signal names, and installs no metrics recorder. So it must never
//! depend on a database or Redis client (tokio-postgres, deadpool-postgres,
//! fred, redb), an HTTP client or server (reqwest, hyper), `metrics`,
//! `toml_edit`, `clap`, `sysinfo`, the probe library (which brings most of
//! these), or the agent's configuration: the agent's configuration uses this
//! crate, never the other way round. Of tokio it takes the clock alone.

pub mod baseline;
pub mod duration;
pub mod evidence;
pub mod live;
pub mod observe;
pub mod rules;
pub mod stats;
