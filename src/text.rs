//! Rules for the short texts people and clients give us: ids, names, labels. Pure and shared by the
//! fence, promotion and auth boundaries, so PostgreSQL and SQLite see the same strings (PostgreSQL
//! cannot store NUL; no id or name needs any control character).

/// Why a text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("{field} contains the control character U+{code:04X} at character {position}")]
    ControlCharacter {
        field: &'static str,
        code: u32,
        position: usize,
    },
}

/// Refuses `value` when it holds a control character (C0, DEL or C1), naming the field and where.
pub fn check_printable(field: &'static str, value: &str) -> Result<(), TextError> {
    match value.chars().enumerate().find(|(_, c)| c.is_control()) {
        Some((position, c)) => Err(TextError::ControlCharacter {
            field,
            code: u32::from(c),
            position,
        }),
        None => Ok(()),
    }
}

/// Appends `text` as a JSON string: as is when nothing in it needs an escape (ids nearly always: JSON
/// escapes only quotes, backslashes and control characters), else as serde_json escapes it. The same
/// bytes as `serde_json::to_writer` either way, without its per-character work on the common case.
pub fn write_json_string(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused_with_their_place() {
        assert_eq!(check_printable("name", "Jakarta Selatan — 雅加达"), Ok(()));
        let error = check_printable("id", "ja\u{0}karta").unwrap_err();
        assert_eq!(
            error.to_string(),
            "id contains the control character U+0000 at character 2"
        );
        assert!(check_printable("label", "tab\there").is_err());
        assert!(check_printable("label", "del\u{7f}").is_err());
        assert!(check_printable("label", "c1\u{85}").is_err());
    }
}
