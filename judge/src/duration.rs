//! Durations as written in the configuration: `"250ms"`, `"5s"`, `"15m"`,
//! `"1h30m"`. The one grammar for every duration setting: the agent's and
//! the ones a probe reads itself, such as a scenario step's `timeout`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer};

/// Parses `"250ms"`, `"5s"`, `"1m30s"`, `"2h"`, `"1d"`. Units: `ms`, `s`,
/// `m`, `h`, `d`; a number without a unit is rejected so `5` is never read
/// as five milliseconds by one reader and five seconds by another.
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

/// Formats a duration the way the configuration writes it.
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

/// A configuration duration, deserialized from a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string like \"5s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse(v).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl From<Dur> for Duration {
    fn from(d: Dur) -> Self {
        d.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_the_configuration_uses() {
        let cases = [
            ("250ms", Duration::from_millis(250)),
            ("5s", Duration::from_secs(5)),
            ("15m", Duration::from_secs(900)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5s", Duration::from_millis(1500)),
            ("2d", Duration::from_secs(172_800)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for text in ["", "10x", "5", "s", "-1s", "1h 30m", "ms5"] {
            assert!(parse(text).is_err(), "{text:?} should be rejected");
        }
        assert_eq!(
            parse("10x").unwrap_err(),
            "invalid duration \"10x\" (use a number and a unit: 250ms, 5s, 15m, 1h)"
        );
    }

    #[test]
    fn formats_round_trip() {
        for text in ["250ms", "5s", "15m", "2h"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }

    #[test]
    fn a_part_finer_than_a_millisecond_is_rejected_so_every_duration_prints_back() {
        // Found by fuzzing the rule parser: "for 248.0005s" printed as "for 248s".
        for text in ["248.0005s", "0.5ms", "1.0001ms", "0.0000001h"] {
            let err = parse(text).unwrap_err();
            assert!(err.contains("whole milliseconds"), "{text}: {err}");
        }
        for text in [
            "0.001s",
            "0.007s",
            "1.5s",
            "0.25m",
            "1.1s",
            "2.5h1.25m0.001s",
        ] {
            let d = parse(text).unwrap();
            assert_eq!(d.subsec_nanos() % 1_000_000, 0, "{text}");
            assert_eq!(parse(&format(d)), Ok(d), "{text}");
        }
        assert!(parse("99999999999999999999d").is_err());
    }
}
