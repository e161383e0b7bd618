//! Event times: RFC 3339 strings or epoch milliseconds in, epoch milliseconds inside, RFC 3339 out.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::fast_json::non_digit_bytes;

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
    #[error("ts {0} is beyond the year 9999 (epoch microseconds or nanoseconds sent by mistake?)")]
    TooLarge(f64),
}

/// Epoch milliseconds from an RFC 3339 string (any UTC offset, any fraction of a second).
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, TimestampError> {
    if let Some(ms) = fast_rfc3339_ms(text) {
        return check_epoch_ms(ms);
    }
    let parsed = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|err| TimestampError::NotRfc3339(text.to_owned(), err.to_string()))?;
    let ms = (parsed.unix_timestamp_nanos() / 1_000_000) as i64;
    check_epoch_ms(ms)
}

/// The common form, `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, without the general parser (a third of
/// a decode's time). `None` for anything else, or anything out of range, which the `time` crate then
/// parses or refuses with its reason; leap seconds (`:60`) go that way too.
fn fast_rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let mut value = 0i64;
        for &c in b.get(range)? {
            if !c.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i64::from(c - b'0');
        }
        Some(value)
    };
    if b.len() < 20 || b[10] != b'T' {
        return None;
    }
    // `YYYY-MM-` and `HH:MM:SS` as two words checked and read at once (`DD` between them on its own):
    // the byte-at-a-time version was most of this function.
    let date = word_at(b, 0);
    let time = word_at(b, 11);
    if !matches_layout(date, DATE_DIGITS, DATE_SEPARATORS)
        || !matches_layout(time, TIME_DIGITS, TIME_SEPARATORS)
    {
        return None;
    }
    let year = digit(date, 0) * 1000 + digit(date, 1) * 100 + digit(date, 2) * 10 + digit(date, 3);
    let month = digit(date, 5) * 10 + digit(date, 6);
    let day = digits(8..10)?;
    let (hour, minute, second) = (
        digit(time, 0) * 10 + digit(time, 1),
        digit(time, 3) * 10 + digit(time, 4),
        digit(time, 6) * 10 + digit(time, 7),
    );
    if !(1..=12).contains(&month)
        || day < 1
        || (day > 28 && day > days_in_month(year, month))
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0i64;
    if b[at] == b'.' {
        let start = at + 1;
        let mut end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start || end - start > 9 {
            return None;
        }
        nanos = digits(start..end)? * NANOS_PER_FRACTION_UNIT[end - start];
        at = end;
    }
    let offset_s = match b.get(at..)? {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |x: u8, y: u8| -> Option<i64> {
                (x.is_ascii_digit() && y.is_ascii_digit())
                    .then(|| i64::from(x - b'0') * 10 + i64::from(y - b'0'))
            };
            let (h, m) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let seconds = h * 3600 + m * 60;
            if *sign == b'-' {
                -seconds
            } else {
                seconds
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm), proleptic Gregorian, 1970-01-01 = 0.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    // As the general path does: whole nanoseconds since the epoch, divided (truncating toward zero) to
    // milliseconds; without the 128-bit division, which cost as much as the rest of this function.
    let ms_of_nanos = if seconds >= 0 {
        nanos / 1_000_000
    } else {
        (nanos + 999_999) / 1_000_000
    };
    Some(seconds * 1000 + ms_of_nanos)
}

/// Nanoseconds in one unit of the last digit of a fraction with `n` digits (`n` in 1..=9).
const NANOS_PER_FRACTION_UNIT: [i64; 10] = [
    0,
    100_000_000,
    10_000_000,
    1_000_000,
    100_000,
    10_000,
    1_000,
    100,
    10,
    1,
];

/// Bytes `at..at + 8` of `bytes` (which must hold them) as a little-endian word: byte `at` lowest.
fn word_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// `YYYY-MM-`: 0xFF where a digit must be, and the separators' bytes where they must be.
const DATE_DIGITS: u64 = 0x00FF_FF00_FFFF_FFFF;
const DATE_SEPARATORS: u64 = u64::from_le_bytes(*b"\0\0\0\0-\0\0-");
/// `HH:MM:SS`.
const TIME_DIGITS: u64 = 0xFFFF_00FF_FF00_FFFF;
const TIME_SEPARATORS: u64 = u64::from_le_bytes(*b"\0\0:\0\0:\0\0");

/// Whether `word` has an ASCII digit in every byte `digits` marks and exactly `separators` elsewhere
/// (a byte flagged wrongly by [`non_digit_bytes`] follows one that is not a digit or not the separator,
/// so it can only turn a refusal into a refusal).
fn matches_layout(word: u64, digits: u64, separators: u64) -> bool {
    ((non_digit_bytes(word) & digits) == 0) & ((word & !digits) == separators)
}

/// The digit in byte `index` of a word [`matches_layout`] accepted.
fn digit(word: u64, index: u32) -> i64 {
    ((word >> (8 * index)) & 0xF) as i64
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Accepts a JSON number as epoch milliseconds.
pub fn epoch_ms_from_f64(value: f64) -> Result<i64, TimestampError> {
    if !value.is_finite() || value.fract() != 0.0 {
        return Err(TimestampError::NotInteger(value));
    }
    if value > LARGEST_EPOCH_MS as f64 {
        return Err(TimestampError::TooLarge(value));
    }
    // Below `i64::MIN` the cast saturates, which is still too small.
    check_epoch_ms(value as i64)
}

pub fn check_epoch_ms(ms: i64) -> Result<i64, TimestampError> {
    if ms < SMALLEST_PLAUSIBLE_EPOCH_MS {
        Err(TimestampError::LooksLikeSeconds(ms))
    } else if ms > LARGEST_EPOCH_MS {
        Err(TimestampError::TooLarge(ms as f64))
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

    /// The general parser, for comparison with the fast path.
    fn by_time_crate(text: &str) -> Option<i64> {
        OffsetDateTime::parse(text, &Rfc3339)
            .ok()
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 3000, ..Default::default() })]

        /// Whatever the fast path reads, the `time` crate reads the same; the common forms take it.
        #[test]
        fn fast_rfc3339_agrees_with_the_time_crate(
            seconds in -62_135_510_400i64..253_402_214_400,
            nanos in 0u32..1_000_000_000,
            fraction_digits in 0usize..10,
            offset_minutes in -1439i32..1440,
            zulu in proptest::bool::ANY,
            mangle in 0usize..40,
        ) {
            let utc = OffsetDateTime::from_unix_timestamp(seconds).unwrap();
            let offset = time::UtcOffset::from_whole_seconds(if zulu { 0 } else { offset_minutes * 60 }).unwrap();
            let local = utc.to_offset(offset);
            let fraction = if fraction_digits == 0 {
                String::new()
            } else {
                format!(".{:09}", nanos)[..=fraction_digits].to_owned()
            };
            let zone = if zulu {
                "Z".to_owned()
            } else {
                let m = offset.whole_minutes();
                format!("{}{:02}:{:02}", if m < 0 { '-' } else { '+' }, m.abs() / 60, m.abs() % 60)
            };
            let mut text = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{fraction}{zone}",
                local.year(), local.month() as u8, local.day(), local.hour(), local.minute(), local.second()
            );
            proptest::prop_assume!(local.year() >= 0);
            let fast = fast_rfc3339_ms(&text);
            proptest::prop_assert!(fast.is_some(), "declined {}", text);
            proptest::prop_assert_eq!(fast, by_time_crate(&text), "{}", text);
            // One byte changed: the fast path declines, or agrees with the general parser.
            if mangle < text.len() {
                let mut bytes = text.into_bytes();
                bytes[mangle] = b"0953:-T.Zx+"[mangle % 11];
                text = String::from_utf8(bytes).unwrap();
                if let Some(ms) = fast_rfc3339_ms(&text) {
                    proptest::prop_assert_eq!(Some(ms), by_time_crate(&text), "{}", text);
                }
            }
        }
    }

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
        // Microseconds are an integer too: the message says what they probably are.
        let micros = epoch_ms_from_f64(1_796_496_032_077_515.0).unwrap_err();
        assert_eq!(
            micros.to_string(),
            "ts 1796496032077515 is beyond the year 9999 (epoch microseconds or nanoseconds sent by mistake?)"
        );
        assert!(matches!(
            epoch_ms_from_f64(-1e300),
            Err(TimestampError::LooksLikeSeconds(_))
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
