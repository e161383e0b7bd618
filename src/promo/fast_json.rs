//! The fast path of input decoding: the GPS event as devices send it, a flat JSON object of numbers and
//! escape-free strings, scanned in one pass without serde's machinery (about a third of the time).
//!
//! It answers only when the answer is certain to be what serde_json would give, and returns `None`
//! otherwise, so that the caller decodes with serde_json, which also words every error: anything unusual
//! (escapes, unknown or repeated keys, `true`/`false`, exponents, integers of more than 19 digits, a
//! missing field, trailing bytes) takes that path. Numbers agree to the bit because both paths round
//! correctly: serde_json with its `float_roundtrip` feature (enabled in Cargo.toml, so that tests, where a
//! dev-dependency turns it on anyway, and the release build parse alike), and here either one exact
//! division (when both operands are exact doubles) or `str::parse` (longer numbers, as phone SDKs write
//! full-precision doubles, `0.0026222750406521477` among them: 20 digits with the leading zeros). Up to
//! 19 digits the mantissa fits a `u64` for integer fields.

/// A number that passed JSON's grammar (without an exponent), as its digits read as an integer and the
/// count of fraction digits: `-12.345` is mantissa 12345, 3 fraction digits, negative.
struct Number<'a> {
    /// The number as written, for the correctly rounded parse of long ones.
    text: &'a str,
    integer: bool,
    mantissa: u64,
    fraction_digits: usize,
    negative: bool,
}

const POWERS_OF_TEN: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// Mantissas below this are exact doubles.
const EXACT_MANTISSA_LIMIT: u64 = 1 << 53;

impl Number<'_> {
    /// Correctly rounded, as serde_json's (see the module).
    fn to_f64(&self) -> f64 {
        // Clinger's fast path: an exact mantissa divided by an exact power of ten rounds correctly.
        if self.mantissa >= EXACT_MANTISSA_LIMIT || self.fraction_digits >= POWERS_OF_TEN.len() {
            // The text passed JSON's number grammar without an exponent, which `str::parse` accepts.
            return self.text.parse().unwrap_or(f64::NAN);
        }
        let magnitude = self.mantissa as f64 / POWERS_OF_TEN[self.fraction_digits];
        if self.negative {
            -magnitude
        } else {
            magnitude
        }
    }
}

/// The value of one field, as far as the fast path understands values.
enum Value<'a> {
    Str(&'a str),
    Num(Number<'a>),
    Null,
}

/// The fields of a GPS event, as serde would deserialize them (see `RawGpsEvent`).
pub(super) struct Fields<'a> {
    pub user_id: &'a str,
    pub lat: f64,
    pub lon: f64,
    pub ts: Ts<'a>,
    pub accuracy_m: Option<f64>,
    pub event_id: Option<&'a str>,
    pub schema_version: Option<u64>,
}

pub(super) enum Ts<'a> {
    Text(&'a str),
    Number(f64),
}

/// Bytes that end an escape-free string's contents: the closing quote, a backslash, control characters.
const ENDS_PLAIN_STRING: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Where the first byte that ends a plain string (`"`, `\\` or a control character) is in `rest`. Eight
/// bytes at a time: for each byte kind, the classic "has a zero byte" test on the word XOR that byte
/// flags the first match exactly (a false flag can only appear above a true one, where the subtraction
/// borrowed), so the lowest flag of the three is the answer. Bytes of 0x80 and above never flag: UTF-8
/// in strings is plain text here (the payload was validated once).
fn plain_string_len(rest: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut chunks = rest.chunks_exact(8);
    let mut offset = 0;
    for chunk in chunks.by_ref() {
        let word = u64::from_le_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]);
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let flags = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | word.wrapping_sub(ONES * 0x20) & !word)
            & HIGHS;
        if flags != 0 {
            return Some(offset + (flags.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| ENDS_PLAIN_STRING[usize::from(b)])
        .map(|at| offset + at)
}

/// '0' in every byte of a word.
const ASCII_ZEROS: u64 = 0x3030_3030_3030_3030;

/// The bytes of `word` that are not ASCII digits, as the nonzero bytes of the result: a digit's high
/// nibble is 3, and still 3 after adding 6 (0x3A..=0x3F reach 4). Adding 6 to a byte above 0xF9 carries
/// into the next byte, which may then be flagged wrongly, but only after a byte flagged rightly: the
/// first flagged byte is exact, and a word with no flag is all digits.
pub(super) fn non_digit_bytes(word: u64) -> u64 {
    const HIGH_NIBBLES: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const SIXES: u64 = 0x0606_0606_0606_0606;
    ((word & HIGH_NIBBLES) ^ ASCII_ZEROS)
        | ((word.wrapping_add(SIXES) & HIGH_NIBBLES) ^ ASCII_ZEROS)
}

/// The length of the run of ASCII digits that starts `bytes`, and `mantissa` with those digits appended
/// (wrapping: callers refuse runs too long for it). Eight bytes at a time, so that a number costs no
/// loop exit per digit.
#[inline(always)]
fn digit_run(bytes: &[u8], mut mantissa: u64) -> (usize, u64) {
    let mut len = 0;
    while let Some(chunk) = bytes.get(len..len + 8) {
        let word = u64::from_le_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]);
        let not_digit = non_digit_bytes(word);
        let run = if not_digit == 0 {
            8
        } else {
            (not_digit.trailing_zeros() / 8) as usize
        };
        if run == 0 {
            return (len, mantissa);
        }
        // The run's digits as the top bytes of a word of digit values, zeros (leading digits) below.
        let digits = word.wrapping_sub(ASCII_ZEROS) << (8 * (8 - run));
        mantissa = mantissa
            .wrapping_mul(POWERS_OF_TEN_U64[run])
            .wrapping_add(eight_digits_value(digits));
        len += run;
        if run < 8 {
            return (len, mantissa);
        }
    }
    for &byte in &bytes[len..] {
        if !byte.is_ascii_digit() {
            break;
        }
        mantissa = mantissa
            .wrapping_mul(10)
            .wrapping_add(u64::from(byte - b'0'));
        len += 1;
    }
    (len, mantissa)
}

const POWERS_OF_TEN_U64: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// The number written by eight digit values (0..=9) in a word's bytes, the first (lowest) byte the
/// most significant digit: pairs, then fours, then the eight, each step one multiply.
fn eight_digits_value(digits: u64) -> u64 {
    let pairs = (digits * 10 + (digits >> 8)) & 0x00FF_00FF_00FF_00FF;
    let fours = (pairs * 100 + (pairs >> 16)) & 0x0000_FFFF_0000_FFFF;
    (fours * 10_000 + (fours >> 32)) & 0xFFFF_FFFF
}

/// The fields the fast path knows; any other key declines.
#[derive(Clone, Copy)]
enum Field {
    UserId,
    Lat,
    Lon,
    Ts,
    AccuracyM,
    EventId,
    SchemaVersion,
}

struct Scanner<'a> {
    /// The whole payload, validated as UTF-8 once: every slice between ASCII delimiters is then a `str`
    /// without validating each string on its own.
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn skip_whitespace(&mut self) {
        // Devices send compact JSON: one comparison answers nearly every call.
        while let Some(&byte) = self.bytes.get(self.at) {
            if byte > b' ' || !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
                return;
            }
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            return Some(());
        }
        self.skip_whitespace();
        (self.bytes.get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let rest = &self.bytes[start..];
        let len = plain_string_len(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        self.text.get(start..start + len)
    }

    /// A key that is exactly one of the known field names, compared with the name and its closing
    /// quote in place: no scan for the string's end (a key differing in any byte, an escape included,
    /// declines, as an unknown key always did).
    fn field_name(&mut self) -> Option<Field> {
        self.eat(b'"')?;
        let rest = &self.bytes[self.at..];
        // Each call sees its name's length as a constant, so the comparison compiles to a few word
        // compares rather than a call to `memcmp`.
        let known =
            |name: &'static [u8], field| rest.starts_with(name).then_some((field, name.len()));
        let (field, len) = match *rest.first()? {
            b'u' => known(b"user_id\"", Field::UserId),
            b'l' => known(b"lat\"", Field::Lat).or_else(|| known(b"lon\"", Field::Lon)),
            b't' => known(b"ts\"", Field::Ts),
            b'a' => known(b"accuracy_m\"", Field::AccuracyM),
            b'e' => known(b"event_id\"", Field::EventId),
            b's' => known(b"schema_version\"", Field::SchemaVersion),
            _ => None,
        }?;
        self.at += len;
        Some(field)
    }

    /// A JSON number without exponent: an integer of at most 19 digits, or a fraction.
    fn number(&mut self) -> Option<Number<'a>> {
        let b = self.bytes;
        let start = self.at;
        let mut i = start;
        let negative = b.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        let int_start = i;
        let (int_digits, mut mantissa) = digit_run(&b[i..], 0);
        i += int_digits;
        // JSON: at least one digit, and no leading zero before another digit.
        if int_digits == 0 || (int_digits > 1 && b[int_start] == b'0') {
            return None;
        }
        let mut frac_digits = 0;
        let integer = b.get(i) != Some(&b'.');
        if !integer {
            i += 1;
            (frac_digits, mantissa) = digit_run(&b[i..], mantissa);
            i += frac_digits;
            if frac_digits == 0 {
                return None;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            return None;
        }
        if int_digits + frac_digits > 19 {
            if integer {
                return None;
            }
            // The digits wrapped the mantissa: a value no exact division takes, so the text is parsed.
            mantissa = u64::MAX;
        }
        self.at = i;
        // Nineteen digits stay below u64::MAX, so the wrapping arithmetic did not wrap; longer fractions
        // had their wrapped mantissa replaced above.
        Some(Number {
            text: self.text.get(start..i)?,
            integer,
            mantissa,
            fraction_digits: frac_digits,
            negative,
        })
    }

    fn value(&mut self) -> Option<Value<'a>> {
        self.skip_whitespace();
        match self.bytes.get(self.at)? {
            b'"' => self.string().map(Value::Str),
            b'-' | b'0'..=b'9' => self.number().map(Value::Num),
            b'n' if self.bytes[self.at..].starts_with(b"null") => {
                self.at += 4;
                Some(Value::Null)
            }
            _ => None,
        }
    }
}

fn float(value: Value<'_>) -> Option<f64> {
    match value {
        Value::Num(n) => Some(n.to_f64()),
        _ => None,
    }
}

/// Decodes the common shape, or `None` for the caller's full decoder to handle.
pub(super) fn decode(payload: &[u8]) -> Option<Fields<'_>> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut s = Scanner {
        text,
        bytes: payload,
        at: 0,
    };
    s.eat(b'{')?;
    let (mut user_id, mut lat, mut lon, mut ts) = (None, None, None, None);
    let (mut accuracy_m, mut event_id, mut schema_version) = (None, None, None);
    let mut seen = 0u8;
    let mut first = true;
    loop {
        if s.eat(b'}').is_some() {
            break;
        }
        if !first {
            s.eat(b',')?;
        }
        first = false;
        let field = s.field_name()?;
        s.eat(b':')?;
        let value = s.value()?;
        let bit = match field {
            Field::UserId => {
                let Value::Str(text) = value else { return None };
                user_id = Some(text);
                1
            }
            Field::Lat => {
                lat = Some(float(value)?);
                2
            }
            Field::Lon => {
                lon = Some(float(value)?);
                4
            }
            Field::Ts => {
                ts = Some(match value {
                    Value::Str(text) => Ts::Text(text),
                    // serde_json hands integers over as i64/u64 and the visitor converts with `as`.
                    Value::Num(n) if n.integer => {
                        let magnitude = n.mantissa as f64;
                        Ts::Number(if n.negative { -magnitude } else { magnitude })
                    }
                    Value::Num(n) => Ts::Number(n.to_f64()),
                    Value::Null => return None,
                });
                8
            }
            Field::AccuracyM => {
                accuracy_m = match value {
                    Value::Null => None,
                    other => Some(float(other)?),
                };
                16
            }
            Field::EventId => {
                event_id = match value {
                    Value::Null => None,
                    Value::Str(text) => Some(text),
                    Value::Num(_) => return None,
                };
                32
            }
            Field::SchemaVersion => {
                schema_version = match value {
                    Value::Null => None,
                    Value::Num(n) if n.integer && !n.negative => Some(n.mantissa),
                    _ => return None,
                };
                64
            }
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
    }
    s.skip_whitespace();
    if s.at != payload.len() {
        return None;
    }
    Some(Fields {
        user_id: user_id?,
        lat: lat?,
        lon: lon?,
        ts: ts?,
        accuracy_m,
        event_id,
        schema_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The fields as serde derives them from the same payload, for comparison.
    #[derive(serde::Deserialize)]
    struct Reference {
        user_id: String,
        lat: f64,
        lon: f64,
        ts: serde_json::Value,
        #[serde(default)]
        accuracy_m: Option<f64>,
        #[serde(default)]
        event_id: Option<String>,
        #[serde(default)]
        schema_version: Option<u64>,
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("user_id"),
            Just("lat"),
            Just("lon"),
            Just("ts"),
            Just("accuracy_m"),
            Just("event_id"),
            Just("schema_version"),
            Just("extra"),
            Just("u\\u0073er_id"),
            // Prefixes and extensions of known names, which the in-place comparison must decline.
            Just(""),
            Just("l"),
            Just("la"),
            Just("lat_"),
            Just("lonx"),
            Just("t"),
            Just("event_i"),
            Just("user_id\\n"),
        ]
        .prop_map(str::to_owned)
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            // Numbers, valid and not.
            (-180.0f64..180.0).prop_map(|v| format!("{v:.6}")),
            (-180.0f64..180.0).prop_map(|v| format!("{v}")),
            (1_000_000_000_000i64..2_000_000_000_000).prop_map(|v| v.to_string()),
            prop_oneof![
                Just("0"),
                Just("-0"),
                Just("01"),
                Just("1."),
                Just("-"),
                Just(".5"),
                Just("1e5"),
                Just("1.5E-3"),
                Just("12345678901234567"),
                Just("-1234567890.123456789"),
                Just("9999999999999999999"),
                Just("-9999999999999999999"),
                Just("12345678901234567890"),
                Just("0.1234567890123456789"),
                Just("1234567890.12345"),
                Just("null"),
                Just("true"),
                Just("nul"),
                Just("[1]"),
                Just("{}"),
                Just("1764000000000.5"),
            ]
            .prop_map(str::to_owned),
            // Strings, plain and not.
            "[a-z0-9-]{0,12}".prop_map(|s| format!("\"{s}\"")),
            prop_oneof![
                Just("\"2026-11-22T08:15:00.250Z\""),
                Just("\"caf\u{e9}\""),
                Just("\"a\\\"b\""),
                Just("\"tab\there\""),
                Just("\"unterminated"),
                Just("\"\\u00e9\""),
            ]
            .prop_map(str::to_owned),
        ]
    }

    fn whitespace() -> impl Strategy<Value = String> {
        prop_oneof![Just(""), Just(""), Just(" "), Just("\n\t "), Just("\r")]
            .prop_map(str::to_owned)
    }

    fn payload() -> impl Strategy<Value = String> {
        (
            prop::collection::vec((key(), value(), whitespace()), 0..9),
            whitespace(),
            prop_oneof![
                Just(""),
                Just(""),
                Just(""),
                Just("x"),
                Just("}"),
                Just(",")
            ],
        )
            .prop_map(|(fields, ws, trailer)| {
                let body: Vec<String> = fields
                    .iter()
                    .map(|(k, v, w)| format!("{w}\"{k}\"{w}:{w}{v}{w}"))
                    .collect();
                format!("{ws}{{{}}}{ws}{trailer}", body.join(","))
            })
    }

    proptest! {
        /// Eight bytes at a time, the run and its value are those a byte at a time gives, whatever
        /// follows the digits (bytes next to '0'..='9', and those whose +6 carries out of their byte).
        #[test]
        fn digit_runs_match_a_byte_loop(
            bytes in prop::collection::vec(prop_oneof![
                4 => b'0'..=b'9',
                1 => prop::sample::select(vec![b'/', b':', b';', b'?', b'.', b'"', 0xF9, 0xFA, 0xFF, 0x39 + 0x80]),
            ], 0..40),
            start in 0u64..1000,
        ) {
            let len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
            let value = bytes[..len]
                .iter()
                .fold(start, |m, &b| m.wrapping_mul(10).wrapping_add(u64::from(b - b'0')));
            prop_assert_eq!(digit_run(&bytes, start), (len, value));
        }
    }

    /// A typical device payload, with the fields in a random order: the fast path must take these.
    fn typical() -> impl Strategy<Value = String> {
        (
            -85.0f64..85.0,
            -180.0f64..180.0,
            1_700_000_000_000i64..1_800_000_000_000,
            0.0f64..100.0,
            any::<bool>(),
            any::<bool>(),
            Just(()).prop_perturb(|_, mut rng| {
                let mut order: Vec<usize> = (0..6).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.random_range(0..=i));
                }
                order
            }),
        )
            .prop_map(|(lat, lon, ts, accuracy, rfc3339, full_precision, order)| {
                let ts = if rfc3339 {
                    format!("\"{}\"", crate::promo::timestamp::format_rfc3339_ms(ts))
                } else {
                    ts.to_string()
                };
                let fields = [
                    "\"user_id\":\"user-0000042\"".to_owned(),
                    // Six decimals as the simulator writes them, or every digit of the double (the
                    // shortest text that reads back the same, 15 to 17 digits) as phone SDKs do.
                    if full_precision {
                        format!("\"lat\":{lat}")
                    } else {
                        format!("\"lat\":{lat:.6}")
                    },
                    if full_precision {
                        format!("\"lon\":{lon}")
                    } else {
                        format!("\"lon\":{lon:.6}")
                    },
                    format!("\"ts\":{ts}"),
                    format!("\"accuracy_m\":{accuracy:.1}"),
                    "\"event_id\":\"user-0000042-17\"".to_owned(),
                ];
                let ordered: Vec<&str> = order.iter().map(|&i| fields[i].as_str()).collect();
                format!("{{{}}}", ordered.join(","))
            })
    }

    fn same_as_serde(payload: &str) -> Result<bool, TestCaseError> {
        let Some(fast) = decode(payload.as_bytes()) else {
            return Ok(false);
        };
        let reference: Reference = serde_json::from_str(payload).map_err(|err| {
            TestCaseError::fail(format!(
                "fast path accepted what serde refuses: {payload}: {err}"
            ))
        })?;
        prop_assert_eq!(fast.user_id, reference.user_id.as_str());
        prop_assert_eq!(fast.lat.to_bits(), reference.lat.to_bits(), "{}", payload);
        prop_assert_eq!(fast.lon.to_bits(), reference.lon.to_bits(), "{}", payload);
        match (&fast.ts, &reference.ts) {
            (Ts::Text(text), serde_json::Value::String(expected)) => {
                prop_assert_eq!(*text, expected)
            }
            (Ts::Number(n), serde_json::Value::Number(expected)) => {
                prop_assert_eq!(
                    n.to_bits(),
                    expected.as_f64().unwrap().to_bits(),
                    "{}",
                    payload
                );
            }
            _ => prop_assert!(false, "ts differs: {}", payload),
        }
        prop_assert_eq!(
            fast.accuracy_m.map(f64::to_bits),
            reference.accuracy_m.map(f64::to_bits)
        );
        prop_assert_eq!(fast.event_id, reference.event_id.as_deref());
        prop_assert_eq!(fast.schema_version, reference.schema_version);
        Ok(true)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Whatever the fast path accepts, serde accepts with the same values to the bit.
        #[test]
        fn agrees_with_serde_or_declines(payload in payload()) {
            same_as_serde(&payload)?;
        }

        #[test]
        fn the_word_scan_stops_where_the_byte_scan_does(
            bytes in proptest::collection::vec(
                prop_oneof![
                    4 => 0x20u8..0x7f,
                    1 => Just(b'"'),
                    1 => Just(b'\\'),
                    1 => 0u8..0x20,
                    1 => 0x80u8..=0xff,
                ],
                0..40,
            )
        ) {
            let expected = bytes.iter().position(|&b| ENDS_PLAIN_STRING[usize::from(b)]);
            prop_assert_eq!(plain_string_len(&bytes), expected);
        }

        #[test]
        fn takes_the_payloads_devices_send(payload in typical()) {
            prop_assert!(same_as_serde(&payload)?, "declined {}", payload);
        }
    }

    /// Fractions longer than a `u64` mantissa holds: a small coordinate in full precision has leading
    /// zeros on top of its 17 significant digits.
    #[test]
    fn takes_fractions_of_more_than_nineteen_digits() {
        for payload in [
            r#"{"user_id":"u","lat":0.0026222750406521477,"lon":2,"ts":1764000000000}"#,
            r#"{"user_id":"u","lat":-1.2345678901234567890123,"lon":0.000000000000000000001,"ts":1}"#,
        ] {
            assert!(matches!(same_as_serde(payload), Ok(true)), "{payload}");
        }
    }

    #[test]
    fn declines_what_serde_must_word() {
        for payload in [
            r#"{"user_id":"u","lat":1,"lon":2,"ts":1764000000000,"lat":3}"#,
            r#"{"user_id":"u","lat":1,"lon":2}"#,
            r#"{"user_id":"u","lat":1e1,"lon":2,"ts":1764000000000}"#,
            r#"{"user_id":"u\n","lat":1,"lon":2,"ts":1764000000000}"#,
            r#"{"user_id":"u","lat":1,"lon":2,"ts":1764000000000} x"#,
            r#"{"user_id":"u","lat":1,"lon":2,"ts":1764000000000,}"#,
            r#"{"user_id":"u","lat":"1","lon":2,"ts":1764000000000}"#,
            r#"{"user_id":"u","lat":1,"lon":2,"ts":12345678901234567890}"#,
        ] {
            assert!(decode(payload.as_bytes()).is_none(), "{payload}");
        }
    }

    /// A byte that is not UTF-8 anywhere declines, so that serde words the error; valid multi-byte text in
    /// a string is taken.
    #[test]
    fn declines_bytes_that_are_not_utf8_wherever_they_are() {
        let good = r#"{"user_id":"Zürich-東京","lat":1,"lon":2,"ts":1764000000000,"event_id":"e"}"#;
        assert_eq!(
            decode(good.as_bytes()).map(|f| f.user_id),
            Some("Zürich-東京")
        );
        // A byte that is never valid UTF-8 where it stands: in each string value, in a key, between
        // tokens, inside a number.
        for (after, byte) in [
            (r#"{"user_id":"Z"#, 0xFC),
            (
                r#"{"user_id":"Zürich-東京","lat":1,"lon":2,"ts":1764000000000,"event_id":"e"#,
                0xC3,
            ),
            (r#"{"user_id":"Zürich-東京","l"#, 0xE1),
            (r#"{"user_id":"Zürich-東京","lat":1,"#, 0xA0),
            (r#"{"user_id":"Zürich-東京","lat":1,"lon":2,"ts":17"#, 0xB9),
        ] {
            let mut payload = after.as_bytes().to_vec();
            payload.push(byte);
            payload.extend_from_slice(&good.as_bytes()[after.len()..]);
            assert!(std::str::from_utf8(&payload).is_err());
            assert!(
                decode(&payload).is_none(),
                "{}",
                String::from_utf8_lossy(&payload)
            );
        }
    }
}
