//! RFC 3339 rendering and parsing of [`UnixTime`](crate::clock::UnixTime), the form every API
//! document and error detail uses (`2026-11-26T10:00:00Z`).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::clock::UnixTime;

/// 9999-12-31T23:59:59Z, the latest instant RFC 3339 can write.
const LATEST: UnixTime = 253_402_300_799;

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`. Values outside years 0..=9999 are
/// clamped, since this only renders values that were validated on the way in.
pub fn rfc3339(t: UnixTime) -> String {
    let t = t.clamp(-62_167_219_200, LATEST);
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|dt| dt.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

/// Parses an RFC 3339 timestamp into whole seconds (fractions are truncated).
pub fn parse_rfc3339(s: &str) -> Option<UnixTime> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(rfc3339(1_795_687_200), "2026-11-26T10:00:00Z");
        assert_eq!(parse_rfc3339("2026-11-26T10:00:00Z"), Some(1_795_687_200));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
    }
}
