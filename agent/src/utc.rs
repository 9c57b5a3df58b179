//! Times in UTC as people and APIs read them, from Unix milliseconds,
//! through the `time` crate.

use time::OffsetDateTime;

fn at(ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `2026-12-06 12:47:28 UTC`, for people.
pub fn text(ms: u64) -> String {
    let t = at(ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `2024-05-01T12:00:00.000Z` (RFC 3339), for APIs.
pub fn rfc3339(ms: u64) -> String {
    let t = at(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(text(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(text(1_735_689_600_000), "2025-01-01 00:00:00 UTC");
        // A leap day, and the end of a day.
        assert_eq!(text(1_709_251_199_000), "2024-02-29 23:59:59 UTC");
        assert_eq!(rfc3339(1_714_564_800_123), "2024-05-01T12:00:00.123Z");
    }
}
