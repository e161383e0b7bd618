//! Event times: RFC 3339 strings or epoch milliseconds in, epoch milliseconds inside, RFC 3339 out.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Epoch milliseconds below this are almost certainly epoch *seconds* sent by mistake (it is March 1973).
const SMALLEST_PLAUSIBLE_EPOCH_MS: i64 = 100_000_000_000;
/// Year 9999: anything later is not a GPS fix.
const LARGEST_EPOCH_MS: i64 = 253_402_300_799_999;

/// Why an event time was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimestampError {
    #[error("ts {0:?} is not an RFC 3339 date-time ({1})")]
    NotRfc3339(String, String),
    #[error("ts {0} is not an integer number of epoch milliseconds")]
    NotInteger(f64),
    #[error("ts {0} is too small for epoch milliseconds (epoch seconds sent by mistake?)")]
    LooksLikeSeconds(i64),
    #[error("ts {0} is beyond the year 9999")]
    TooLarge(i64),
}

/// Epoch milliseconds from an RFC 3339 string (any UTC offset, any fraction of a second).
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, TimestampError> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|err| TimestampError::NotRfc3339(text.to_owned(), err.to_string()))?;
    let ms = (parsed.unix_timestamp_nanos() / 1_000_000) as i64;
    check_epoch_ms(ms)
}

/// Accepts a JSON number as epoch milliseconds.
pub fn epoch_ms_from_f64(value: f64) -> Result<i64, TimestampError> {
    if !value.is_finite() || value.fract() != 0.0 || value.abs() > LARGEST_EPOCH_MS as f64 * 2.0 {
        return Err(TimestampError::NotInteger(value));
    }
    check_epoch_ms(value as i64)
}

pub fn check_epoch_ms(ms: i64) -> Result<i64, TimestampError> {
    if ms < SMALLEST_PLAUSIBLE_EPOCH_MS {
        Err(TimestampError::LooksLikeSeconds(ms))
    } else if ms > LARGEST_EPOCH_MS {
        Err(TimestampError::TooLarge(ms))
    } else {
        Ok(ms)
    }
}

/// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-22T08:15:00.250Z`.
#[must_use]
pub fn format_rfc3339_ms(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let Ok(at) = OffsetDateTime::from_unix_timestamp_nanos(nanos) else {
        return ms.to_string();
    };
    let (year, month, day) = (at.year(), at.month() as u8, at.day());
    let (hour, minute, second, milli) = (at.hour(), at.minute(), at.second(), at.millisecond());
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// Wall-clock time in epoch milliseconds; only the adapters call it, the core gets time passed in.
#[must_use]
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    since.as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_fractions_are_honoured() {
        let utc = parse_rfc3339_ms("2026-11-22T08:00:00Z").unwrap();
        assert_eq!(parse_rfc3339_ms("2026-11-22T15:00:00+07:00").unwrap(), utc);
        assert_eq!(
            parse_rfc3339_ms("2026-11-22T08:00:00.25Z").unwrap(),
            utc + 250
        );
        assert_eq!(format_rfc3339_ms(utc + 250), "2026-11-22T08:00:00.250Z");
    }

    #[test]
    fn implausible_times_are_refused() {
        assert!(matches!(
            epoch_ms_from_f64(1_763_800_000.0),
            Err(TimestampError::LooksLikeSeconds(_))
        ));
        assert!(matches!(
            epoch_ms_from_f64(1.5e12 + 0.5),
            Err(TimestampError::NotInteger(_))
        ));
        assert!(matches!(
            parse_rfc3339_ms("yesterday"),
            Err(TimestampError::NotRfc3339(..))
        ));
        assert_eq!(
            epoch_ms_from_f64(1_763_800_000_000.0).unwrap(),
            1_763_800_000_000
        );
    }
}
