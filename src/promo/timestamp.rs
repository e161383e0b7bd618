//! Event times: RFC 3339 strings or epoch milliseconds in, epoch milliseconds inside, RFC 3339 out.

use serde::{Deserialize, Serialize};
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

/// A point in time as epoch milliseconds (UTC). Times stay in this form through the core and become text
/// only when an event is serialised ([`rfc3339`]). Serialises as the plain number where a compact form is
/// wanted (the state changelog).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct EpochMs(i64);

impl EpochMs {
    /// A time already known to be epoch milliseconds (a clock reading, a stored value).
    #[must_use]
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// A time from outside: refused when it cannot be epoch milliseconds.
    pub fn parse_millis(ms: i64) -> Result<Self, TimestampError> {
        check_epoch_ms(ms).map(Self)
    }

    /// A time from an RFC 3339 string.
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimestampError> {
        parse_rfc3339_ms(text).map(Self)
    }

    /// The wall clock. Only the adapters read it; the core gets time passed in.
    #[must_use]
    pub fn now() -> Self {
        Self(now_ms())
    }

    #[must_use]
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// `ms` later (or earlier, when negative), saturating at the ends of `i64`.
    #[must_use]
    pub const fn plus_ms(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// RFC 3339 in UTC with millisecond precision.
    #[must_use]
    pub fn to_rfc3339(self) -> String {
        format_rfc3339_ms(self.0)
    }
}

/// Where the core gets "now" when it needs it (the time an output is decided). The adapters pass the
/// [`SystemClock`]; tests pass a [`FixedClock`].
pub trait Clock {
    fn now(&self) -> EpochMs;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> EpochMs {
        EpochMs::now()
    }
}

/// Always the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedClock(pub EpochMs);

impl Clock for FixedClock {
    fn now(&self) -> EpochMs {
        self.0
    }
}

impl std::fmt::Display for EpochMs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// `#[serde(with = "rfc3339")]`: an [`EpochMs`] as an RFC 3339 string on the wire (read back from either
/// an RFC 3339 string or epoch milliseconds).
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{epoch_ms_from_f64, EpochMs};

    pub fn serialize<S: Serializer>(at: &EpochMs, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&at.to_rfc3339())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<EpochMs, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(f64),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Text(text) => EpochMs::parse_rfc3339(&text).map_err(serde::de::Error::custom),
            Raw::Number(n) => epoch_ms_from_f64(n)
                .map(EpochMs::from_millis)
                .map_err(serde::de::Error::custom),
        }
    }
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
    fn epoch_ms_is_a_number_in_state_and_text_on_the_wire() {
        #[derive(Serialize, Deserialize)]
        struct Wire {
            #[serde(with = "rfc3339")]
            at: EpochMs,
        }
        let at = EpochMs::parse_rfc3339("2026-11-22T08:00:00.250Z").unwrap();
        assert_eq!(
            serde_json::to_string(&at).unwrap(),
            at.as_millis().to_string()
        );
        let wire = serde_json::to_string(&Wire { at }).unwrap();
        assert_eq!(wire, r#"{"at":"2026-11-22T08:00:00.250Z"}"#);
        let back: Wire = serde_json::from_str(&wire).unwrap();
        assert_eq!(back.at, at);
        assert_eq!(at.plus_ms(750).to_string(), "2026-11-22T08:00:01.000Z");
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
