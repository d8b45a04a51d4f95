//! Text from outside, checked at the edge before it reaches a `text` column, a page or a
//! terminal. Each check names the field it refuses, so the 400 says what to fix.
//!
//! - Every text: no NUL, which PostgreSQL's `text` cannot hold (it would fail the query).
//! - Labels (names of accounts, hosts and teams, shown on the leaderboards): one line, no
//!   control characters, and none of the invisible characters that hide or reorder text,
//!   which would let one name pass for another, or run the rest of a page backwards.
//! - Paragraphs (descriptions): lines and tabs, but no other control characters.

use crate::http::error::{ApiError, ApiResult};

/// Characters that reorder the text around them (bidirectional embeddings, overrides,
/// isolates and marks), take no space or show nothing (zero-width spaces and joiners, word
/// joiners, the byte-order mark, invisible operators, the soft hyphen, the combining
/// grapheme joiner, Hangul and Khmer fillers, tag characters), or break a line outside the
/// control characters (the line and paragraph separators). Variation selectors stay: emoji
/// need them.
fn hides_or_reorders(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

/// Refuses text that PostgreSQL cannot store.
pub fn storable(field: &str, value: &str) -> ApiResult<()> {
    if value.contains('\0') {
        return Err(ApiError::bad_request(format!("{field} must not contain NUL characters")));
    }
    Ok(())
}

/// A label: trimmed, not empty, at most `max_chars` characters, without control characters
/// or characters that hide or reorder text.
pub fn label(field: &str, value: &str, max_chars: usize) -> ApiResult<String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::bad_request(format!("{field} must not be empty")));
    }
    if value.chars().count() > max_chars {
        return Err(ApiError::bad_request(format!("{field} is longer than {max_chars} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!("{field} must not contain control characters")));
    }
    if value.chars().any(hides_or_reorders) {
        return Err(ApiError::bad_request(format!(
            "{field} must not contain invisible characters or ones that reorder text"
        )));
    }
    Ok(value.to_owned())
}

/// A paragraph: trimmed, at most `max_chars` characters, possibly empty, with line breaks
/// and tabs but no other control characters, and no characters that reorder text.
pub fn paragraph(field: &str, value: &str, max_chars: usize) -> ApiResult<String> {
    let value = value.trim();
    if value.chars().count() > max_chars {
        return Err(ApiError::bad_request(format!("{field} is longer than {max_chars} characters")));
    }
    if value.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err(ApiError::bad_request(format!("{field} must not contain control characters")));
    }
    if value.chars().any(hides_or_reorders) {
        return Err(ApiError::bad_request(format!(
            "{field} must not contain invisible characters or ones that reorder text"
        )));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(result: ApiResult<impl std::fmt::Debug>) -> String {
        match result {
            Err(ApiError::BadRequest(message)) => message,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn nul_is_never_storable() {
        assert!(storable("args[0]", "plain").is_ok());
        assert_eq!(refused(storable("args[0]", "a\0b")), "args[0] must not contain NUL characters");
    }

    #[test]
    fn labels_are_single_visible_lines() {
        assert_eq!(label("name", "  Ada Lovelace ", 100).unwrap(), "Ada Lovelace");
        assert_eq!(label("name", "Émile 🚀 中文", 100).unwrap(), "Émile 🚀 中文");
        assert!(label("name", "I \u{2764}\u{FE0F} Wasm", 100).is_ok(), "emoji keep their variation selectors");
        for bad in [
            "",
            "   ",
            "a\0b",
            "a\nb",
            "a\u{7f}b",
            "admin\u{202E}nimda",
            "ad\u{200B}min",
            "\u{FEFF}x",
            "a\u{2028}b",
            "\u{3164}",
            "x\u{E0041}",
        ] {
            let message = refused(label("team name", bad, 100));
            assert!(message.starts_with("team name "), "{message}");
        }
        assert!(refused(label("name", &"x".repeat(101), 100)).contains("longer than 100"));
    }

    #[test]
    fn paragraphs_keep_their_lines() {
        assert_eq!(paragraph("description", "two\nlines\tand a tab\n", 100).unwrap(), "two\nlines\tand a tab");
        assert_eq!(paragraph("description", "", 100).unwrap(), "");
        assert!(refused(paragraph("description", "a\0b", 100)).starts_with("description "));
        assert!(refused(paragraph("description", "a\u{1b}[2J", 100)).starts_with("description "));
        assert!(refused(paragraph("description", "\u{2067}x", 100)).starts_with("description "));
    }
}
