//! The wire contracts: GPS events in, eligibility events out (schemas in `docs/schemas/`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::fast_json;
use super::timestamp::{self, EpochMs, TimestampError};
use crate::geofence::{GeoPoint, PointError};

/// The only input schema version this build understands; events without one are taken as this version.
pub const GPS_EVENT_SCHEMA_VERSION: u32 = 1;
/// Output events carry this version.
pub const ELIGIBILITY_SCHEMA_VERSION: u32 = 1;
/// Longest accepted user id, in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;

/// A decoded, checked GPS event. Borrows from the message payload where it can.
#[derive(Debug, Clone, PartialEq)]
pub struct GpsEvent<'a> {
    pub user_id: Cow<'a, str>,
    pub point: GeoPoint,
    pub ts: EpochMs,
    pub accuracy_m: Option<f64>,
    pub event_id: Option<Cow<'a, str>>,
}

/// Why an input event cannot be processed. `code()` goes into the dead-letter headers.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is {size} bytes, over the {limit}-byte limit")]
    Oversized { size: usize, limit: usize },
    #[error("payload is empty (a tombstone?)")]
    Empty,
    #[error("payload is not valid JSON: {0}")]
    MalformedJson(#[source] serde_json::Error),
    #[error("event does not match the schema: {0}")]
    Schema(#[source] serde_json::Error),
    #[error(
        "unsupported schema_version {0} (this build reads version {GPS_EVENT_SCHEMA_VERSION})"
    )]
    UnsupportedVersion(u64),
    #[error("user_id is empty")]
    EmptyUserId,
    #[error("user_id is {0} bytes, over the {MAX_USER_ID_BYTES}-byte limit")]
    UserIdTooLong(usize),
    #[error("the message has no key; events must be keyed by user id so each user stays on one partition")]
    MissingKey,
    #[error(
        "message key {key:?} differs from user_id {user_id:?}; events must be keyed by user id"
    )]
    KeyMismatch { key: String, user_id: String },
    #[error("invalid position: {0}")]
    Position(#[from] PointError),
    #[error("invalid ts: {0}")]
    Timestamp(#[from] TimestampError),
    #[error("accuracy_m {0} is not a finite, non-negative number of metres")]
    Accuracy(f64),
}

impl DecodeError {
    /// A stable, machine-readable reason, used in dead-letter headers and metric labels.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Oversized { .. } => "oversized",
            Self::Empty => "empty_payload",
            Self::MalformedJson(_) => "malformed_json",
            Self::Schema(_) => "schema_violation",
            Self::UnsupportedVersion(_) => "unsupported_schema_version",
            Self::EmptyUserId | Self::UserIdTooLong(_) => "invalid_user_id",
            Self::MissingKey => "missing_key",
            Self::KeyMismatch { .. } => "key_mismatch",
            Self::Position(_) => "invalid_position",
            Self::Timestamp(_) => "invalid_timestamp",
            Self::Accuracy(_) => "invalid_accuracy",
        }
    }

    /// Every code `code()` can return, for pre-registering metric labels.
    pub const CODES: [&'static str; 11] = [
        "oversized",
        "empty_payload",
        "malformed_json",
        "schema_violation",
        "unsupported_schema_version",
        "invalid_user_id",
        "missing_key",
        "key_mismatch",
        "invalid_position",
        "invalid_timestamp",
        "invalid_accuracy",
    ];
}

#[derive(Deserialize)]
struct RawGpsEvent<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    lat: f64,
    lon: f64,
    ts: RawTs<'a>,
    #[serde(default)]
    accuracy_m: Option<f64>,
    #[serde(default, borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(default)]
    schema_version: Option<u64>,
}

/// `ts` as sent: a string (RFC 3339) or a number (epoch ms). A hand-written visitor instead of an untagged
/// enum, because untagged enums buffer the value and this sits on the hot path.
enum RawTs<'a> {
    Text(Cow<'a, str>),
    Number(f64),
}

impl<'de: 'a, 'a> Deserialize<'de> for RawTs<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TsVisitor;
        impl<'de> Visitor<'de> for TsVisitor {
            type Value = RawTs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an RFC 3339 string or epoch milliseconds")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawTs::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawTs::Number(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(RawTs::Number(v))
            }
        }
        deserializer.deserialize_any(TsVisitor)
    }
}

/// What some serializers put before JSON text.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Decodes and checks one input payload. `key` is the message key; it must be present and equal the user
/// id so that all of a user's events land in one partition, in order (an unkeyed event would be spread
/// over partitions by the producer and split the user's state).
pub fn decode_gps_event<'a>(
    key: Option<&[u8]>,
    payload: &'a [u8],
    max_bytes: usize,
) -> Result<GpsEvent<'a>, DecodeError> {
    if payload.len() > max_bytes {
        return Err(DecodeError::Oversized {
            size: payload.len(),
            limit: max_bytes,
        });
    }
    // RFC 8259 lets a parser ignore a leading byte order mark, and .NET's `Encoding.UTF8` writes one:
    // an otherwise good event is not dead-lettered for it.
    let payload = payload.strip_prefix(UTF8_BOM).unwrap_or(payload);
    if payload.is_empty() {
        return Err(DecodeError::Empty);
    }
    let raw: RawGpsEvent<'a> = match fast_json::decode(payload) {
        Some(fields) => RawGpsEvent {
            user_id: Cow::Borrowed(fields.user_id),
            lat: fields.lat,
            lon: fields.lon,
            ts: match fields.ts {
                fast_json::Ts::Text(text) => RawTs::Text(Cow::Borrowed(text)),
                fast_json::Ts::Number(number) => RawTs::Number(number),
            },
            accuracy_m: fields.accuracy_m,
            event_id: fields.event_id.map(Cow::Borrowed),
            schema_version: fields.schema_version,
        },
        None => serde_json::from_slice(payload).map_err(|err| match err.classify() {
            serde_json::error::Category::Data => DecodeError::Schema(err),
            _ => DecodeError::MalformedJson(err),
        })?,
    };
    if let Some(version) = raw.schema_version {
        if version != u64::from(GPS_EVENT_SCHEMA_VERSION) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
    }
    if raw.user_id.is_empty() {
        return Err(DecodeError::EmptyUserId);
    }
    if raw.user_id.len() > MAX_USER_ID_BYTES {
        return Err(DecodeError::UserIdTooLong(raw.user_id.len()));
    }
    let Some(key) = key else {
        return Err(DecodeError::MissingKey);
    };
    if key != raw.user_id.as_bytes() {
        return Err(DecodeError::KeyMismatch {
            key: String::from_utf8_lossy(key).into_owned(),
            user_id: raw.user_id.into_owned(),
        });
    }
    let point = GeoPoint::new(raw.lat, raw.lon)?;
    let ts = match raw.ts {
        RawTs::Text(text) => timestamp::parse_rfc3339_ms(&text)?,
        RawTs::Number(number) => timestamp::epoch_ms_from_f64(number)?,
    };
    if let Some(accuracy) = raw.accuracy_m {
        if !accuracy.is_finite() || accuracy < 0.0 {
            return Err(DecodeError::Accuracy(accuracy));
        }
    }
    Ok(GpsEvent {
        user_id: raw.user_id,
        point,
        ts: EpochMs::from_millis(ts),
        accuracy_m: raw.accuracy_m,
        event_id: raw.event_id,
    })
}

/// Entering or leaving eligibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransitionKind {
    Enter,
    Exit,
}

impl TransitionKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enter => "enter",
            Self::Exit => "exit",
        }
    }
}

/// What `promo-eligible` carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EligibilityEvent {
    pub schema_version: u32,
    pub event_id: String,
    pub kind: TransitionKind,
    pub user_id: String,
    pub promotion_id: String,
    pub fence_id: String,
    pub fence_name: String,
    /// For `exit`: whether the point that caused it is still inside the fence (only when the promotion ended).
    pub inside: bool,
    /// Metres to the fence: 0 inside; `null` on an exit when the user is beyond tolerance + hysteresis.
    pub distance_m: Option<f64>,
    pub lat: f64,
    pub lon: f64,
    /// The GPS event's time (RFC 3339, UTC).
    #[serde(with = "timestamp::rfc3339")]
    pub event_ts: EpochMs,
    /// When this service decided (RFC 3339, UTC).
    #[serde(with = "timestamp::rfc3339")]
    pub emitted_at: EpochMs,
    /// The input's `event_id`, when it had one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source_event_id: Option<String>,
}

/// Distances are reported to the decimetre: finer than GPS can tell, and stable across platforms' float
/// printing.
#[must_use]
pub fn reported_distance_m(metres: f64) -> f64 {
    (metres * 10.0).round() / 10.0
}

/// A deterministic id: the same input event and transition always give the same id, so consumers can drop
/// the duplicates at-least-once delivery allows. 128 bits of two independent FNV-1a streams, as hex.
#[must_use]
pub fn eligibility_event_id(
    event: &GpsEvent<'_>,
    promotion_id: &str,
    kind: TransitionKind,
) -> String {
    let mut hasher = Fnv128::default();
    hasher.write(event.user_id.as_bytes());
    match &event.event_id {
        Some(id) => {
            hasher.write(b"\x01id");
            hasher.write(id.as_bytes());
        }
        None => {
            hasher.write(b"\x01pos");
            hasher.write(&event.ts.as_millis().to_le_bytes());
            hasher.write(&event.point.lat().to_bits().to_le_bytes());
            hasher.write(&event.point.lon().to_bits().to_le_bytes());
        }
    }
    hasher.write(b"\x01");
    hasher.write(promotion_id.as_bytes());
    hasher.write(kind.as_str().as_bytes());
    hasher.finish_hex()
}

/// Two FNV-1a 64 hashes with different offset bases. Spelled out here because the ids must never change
/// across versions, which a library's "stable for now" hasher does not promise.
struct Fnv128 {
    low: u64,
    high: u64,
}

impl Default for Fnv128 {
    fn default() -> Self {
        Self {
            low: 0xcbf2_9ce4_8422_2325,
            high: 0x6c62_272e_07bb_0142,
        }
    }
}

impl Fnv128 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn write(&mut self, bytes: &[u8]) {
        // Length first, so that ("ab","c") and ("a","bc") differ.
        for byte in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.low = (self.low ^ u64::from(*byte)).wrapping_mul(Self::PRIME);
            self.high = (self.high ^ u64::from(byte.rotate_left(3))).wrapping_mul(Self::PRIME);
        }
    }

    fn finish_hex(&self) -> String {
        format!("{:016x}{:016x}", self.high, self.low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(payload: &str) -> Result<GpsEvent<'_>, DecodeError> {
        let key: &[u8] = if payload.contains("\"user_id\":\"u1\"") {
            b"u1"
        } else {
            b"u"
        };
        decode_gps_event(Some(key), payload.as_bytes(), 4096)
    }

    #[test]
    fn both_time_forms_decode() {
        let a = decode(r#"{"user_id":"u1","lat":-6.2,"lon":106.8,"ts":"2026-11-22T08:00:00Z"}"#)
            .unwrap();
        let b =
            decode(r#"{"user_id":"u1","lat":-6.2,"lon":106.8,"ts":1795334400000,"accuracy_m":5}"#)
                .unwrap();
        assert_eq!(a.ts, b.ts);
        assert_eq!(b.accuracy_m, Some(5.0));
        assert!(matches!(a.user_id, Cow::Borrowed("u1")));
    }

    #[test]
    fn a_leading_byte_order_mark_is_ignored() {
        let plain = r#"{"user_id":"u1","lat":-6.2,"lon":106.8,"ts":1795334400000}"#;
        let marked = format!("\u{feff}{plain}");
        assert_eq!(marked.as_bytes()[..3], *UTF8_BOM);
        let (a, b) = (decode(plain).unwrap(), decode(&marked).unwrap());
        assert_eq!((a.point, a.ts), (b.point, b.ts));
        assert_eq!(a.user_id, b.user_id);
        assert!(matches!(decode("\u{feff}"), Err(DecodeError::Empty)));
    }

    #[test]
    fn each_kind_of_bad_event_has_its_code() {
        let cases = [
            ("{\"user_id\":", "malformed_json"),
            (
                r#"{"user_id":"u","lat":1,"ts":1795334400000}"#,
                "schema_violation",
            ),
            (
                r#"{"user_id":"u","lat":"NaN","lon":1,"ts":1795334400000}"#,
                "schema_violation",
            ),
            (
                r#"{"user_id":"u","lat":91,"lon":1,"ts":1795334400000}"#,
                "invalid_position",
            ),
            (
                r#"{"user_id":"u","lat":1,"lon":1,"ts":1763798400}"#,
                "invalid_timestamp",
            ),
            (
                r#"{"user_id":"","lat":1,"lon":1,"ts":1795334400000}"#,
                "invalid_user_id",
            ),
            (
                r#"{"user_id":"u","lat":1,"lon":1,"ts":1795334400000,"schema_version":2}"#,
                "unsupported_schema_version",
            ),
            (
                r#"{"user_id":"u","lat":1,"lon":1,"ts":1795334400000,"accuracy_m":-1}"#,
                "invalid_accuracy",
            ),
            ("", "empty_payload"),
        ];
        for (payload, code) in cases {
            let err = decode(payload).expect_err(payload);
            assert_eq!(err.code(), code, "{payload}: {err}");
            assert!(DecodeError::CODES.contains(&code));
        }
        let big = format!(
            r#"{{"user_id":"{}","lat":1,"lon":1,"ts":1795334400000}}"#,
            "x".repeat(5000)
        );
        assert_eq!(decode(&big).unwrap_err().code(), "oversized");
        let mismatch = decode_gps_event(
            Some(b"other"),
            br#"{"user_id":"u","lat":1,"lon":1,"ts":1795334400000}"#,
            4096,
        );
        assert_eq!(mismatch.unwrap_err().code(), "key_mismatch");
        let unkeyed = decode_gps_event(
            None,
            br#"{"user_id":"u","lat":1,"lon":1,"ts":1795334400000}"#,
            4096,
        );
        assert_eq!(unkeyed.unwrap_err().code(), "missing_key");
    }

    #[test]
    fn event_ids_are_deterministic_and_distinct() {
        let a = decode(r#"{"user_id":"u1","lat":-6.2,"lon":106.8,"ts":1795334400000}"#).unwrap();
        let b = decode(r#"{"lon":106.8,"lat":-6.2,"ts":"2026-11-22T08:00:00Z","user_id":"u1"}"#)
            .unwrap();
        let enter = eligibility_event_id(&a, "p", TransitionKind::Enter);
        assert_eq!(enter, eligibility_event_id(&b, "p", TransitionKind::Enter));
        assert_eq!(enter.len(), 32);
        assert_ne!(enter, eligibility_event_id(&a, "p", TransitionKind::Exit));
        assert_ne!(enter, eligibility_event_id(&a, "q", TransitionKind::Enter));
    }
}
