//! Durations as written in the configuration (`"250ms"`, `"5s"`, `"15m"`):
//! one grammar, kept in the probe library so probes and agent agree.

pub use backstop_judge::duration::{format, parse, Dur};
