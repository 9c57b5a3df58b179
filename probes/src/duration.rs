//! Durations as the configuration writes them (`"250ms"`, `"2s"`, `"1m30s"`),
//! for the settings a probe reads itself, such as a scenario step's `timeout`.
//! The grammar is the agent's: units `ms`, `s`, `m`, `h`, `d`, and a unit is
//! always required.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer};

/// Parses `"250ms"`, `"5s"`, `"1m30s"`, `"2h"`, `"1d"`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (use a number and a unit: 250ms, 5s, 15m, 1h)");
    let s = text.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        // Whole milliseconds only: a finer part could not be written back
        // (`format`) and no timer here is that precise.
        let ms = number * seconds * 1e3;
        let whole = ms.round();
        if !(0.0..=1e15).contains(&whole) || (ms - whole).abs() > 1e-6 * whole.max(1.0) {
            return Err(format!(
                "invalid duration {text:?} (whole milliseconds only, like 250ms or 1.5s)"
            ));
        }
        total = total
            .checked_add(Duration::from_millis(whole as u64))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

/// Formats a duration the way the configuration writes it, for messages.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 && !d.is_zero() {
        return format!("{}us", d.as_micros());
    }
    if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A duration setting, deserialized from a string such as `"2s"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string like \"2s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse(v).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_agent_parses() {
        let cases = [
            ("250ms", Duration::from_millis(250)),
            ("2s", Duration::from_secs(2)),
            ("15m", Duration::from_secs(900)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5s", Duration::from_millis(1500)),
            ("1d", Duration::from_secs(86_400)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_a_number_without_a_unit_and_other_non_durations() {
        for text in ["", "10x", "5", "s", "-1s", "1h 30m", "ms5"] {
            assert!(parse(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn formats_the_way_the_configuration_writes() {
        for text in ["250ms", "2s", "15m", "2h"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }
}
