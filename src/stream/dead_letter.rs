//! Dead letters: the original input, with why it was refused and where it came from in headers. A dead
//! letter is always deliverable: an original too large for a record is cut to fit, and the headers say so.

use rdkafka::message::{Header, OwnedHeaders};

use crate::promo::DecodeError;

/// Room kept in a dead-letter record for the key, headers and the record overhead.
const DEAD_LETTER_OVERHEAD: usize = 8 * 1024;
/// Longest key kept whole in a dead letter; longer keys are cut like payloads.
const DEAD_LETTER_MAX_KEY: usize = 1024;

/// The key and payload a dead letter carries: the original's, or their first bytes when the original
/// would not fit in a record.
pub struct DeadLetter<'a> {
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub truncated: bool,
    original_key: Option<&'a [u8]>,
    original_payload: Option<&'a [u8]>,
}

impl<'a> DeadLetter<'a> {
    /// `limit`: the largest record the producer may send.
    #[must_use]
    pub fn new(key: Option<&'a [u8]>, payload: Option<&'a [u8]>, limit: usize) -> Self {
        let key_len = key.map_or(0, <[u8]>::len);
        let payload_len = payload.map_or(0, <[u8]>::len);
        let room = limit.saturating_sub(DEAD_LETTER_OVERHEAD);
        if key_len + payload_len <= room {
            return Self {
                key,
                payload,
                truncated: false,
                original_key: key,
                original_payload: payload,
            };
        }
        let key_room = DEAD_LETTER_MAX_KEY.min(room);
        let cut_key = key.map(|k| &k[..k.len().min(key_room)]);
        let payload_room = room.saturating_sub(cut_key.map_or(0, <[u8]>::len));
        Self {
            key: cut_key,
            payload: payload.map(|p| &p[..p.len().min(payload_room)]),
            truncated: true,
            original_key: key,
            original_payload: payload,
        }
    }

    #[must_use]
    pub fn truncation_headers(&self) -> Vec<(&'static str, String)> {
        if !self.truncated {
            return Vec::new();
        }
        let sha256 = |bytes: Option<&[u8]>| {
            let digest = ring::digest::digest(&ring::digest::SHA256, bytes.unwrap_or_default());
            digest
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        vec![
            ("dlq.truncated", "true".to_owned()),
            (
                "dlq.original.size",
                self.original_payload.map_or(0, <[u8]>::len).to_string(),
            ),
            ("dlq.original.sha256", sha256(self.original_payload)),
            (
                "dlq.original.key.size",
                self.original_key.map_or(0, <[u8]>::len).to_string(),
            ),
            ("dlq.original.key.sha256", sha256(self.original_key)),
        ]
    }
}

/// Where a dead letter's original was read.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// The headers of a dead letter: the reason (code and words), the origin, and the truncation details.
#[must_use]
pub fn dead_letter_headers(
    error: &DecodeError,
    origin: Origin<'_>,
    letter: &DeadLetter<'_>,
) -> OwnedHeaders {
    let mut headers = vec![
        ("dlq.reason", error.code().to_owned()),
        ("dlq.error", error.to_string()),
        ("dlq.source.topic", origin.topic.to_owned()),
        ("dlq.source.partition", origin.partition.to_string()),
        ("dlq.source.offset", origin.offset.to_string()),
    ];
    headers.extend(letter.truncation_headers());
    headers
        .iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value.as_str()),
            })
        })
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;

    fn header(headers: &OwnedHeaders, key: &str) -> Option<String> {
        headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn an_original_that_fits_is_kept_whole() {
        let letter = DeadLetter::new(Some(b"u1"), Some(b"{}"), 1_000_000);
        assert!(!letter.truncated);
        assert_eq!(
            (letter.key, letter.payload),
            (Some(&b"u1"[..]), Some(&b"{}"[..]))
        );
        assert!(letter.truncation_headers().is_empty());
    }

    #[test]
    fn an_oversized_original_is_cut_to_fit_and_the_headers_say_what_it_was() {
        let payload = vec![b'x'; 1_500_000];
        let key = vec![b'k'; 5000];
        let limit = 1_000_000;
        let letter = DeadLetter::new(Some(&key), Some(&payload), limit);
        assert!(letter.truncated);
        let kept = letter.key.unwrap().len() + letter.payload.unwrap().len();
        assert!(kept + DEAD_LETTER_OVERHEAD <= limit, "{kept}");
        assert_eq!(letter.key.unwrap().len(), DEAD_LETTER_MAX_KEY);
        let error = DecodeError::Oversized {
            size: payload.len(),
            limit: 65_536,
        };
        let origin = Origin {
            topic: "gps-events",
            partition: 3,
            offset: 77,
        };
        let headers = dead_letter_headers(&error, origin, &letter);
        assert_eq!(header(&headers, "dlq.reason").as_deref(), Some("oversized"));
        assert_eq!(
            header(&headers, "dlq.source.partition").as_deref(),
            Some("3")
        );
        assert_eq!(header(&headers, "dlq.source.offset").as_deref(), Some("77"));
        assert_eq!(header(&headers, "dlq.truncated").as_deref(), Some("true"));
        assert_eq!(
            header(&headers, "dlq.original.size").as_deref(),
            Some("1500000")
        );
        let digest = header(&headers, "dlq.original.sha256").unwrap();
        assert_eq!(digest.len(), 64);
        assert_ne!(digest, header(&headers, "dlq.original.key.sha256").unwrap());
    }
}
