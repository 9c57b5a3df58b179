//! Durations as written in the configuration: `"250ms"`, `"5s"`, `"15m"`,
//! `"1h30m"`. The grammar lives in `backstop-judge`, because the rule
//! language speaks it too (`for 5m`); every duration setting of a probe reads
//! and prints durations through it.

pub use backstop_judge::duration::{format, parse, Dur};
