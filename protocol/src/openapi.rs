//! Schemas of the types whose serde is written by hand: each says what their `Serialize`
//! writes, so that the generated document describes the bytes on the wire.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

/// A string of `min_length..=max_length` characters that matches `pattern`.
pub fn text_schema(description: &str, pattern: &str, min_length: usize, max_length: usize) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(Some(pattern))
        .min_length(Some(min_length))
        .max_length(Some(max_length))
        .into()
}

/// Characters that `text::label` and `text::paragraph` on the server trim from either end:
/// Rust's `char::is_whitespace`, the Unicode White_Space property.
const TRIMMED: &str = r"\t\n\u000B\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";
/// Control characters (Unicode category Cc), which no label holds.
const CONTROL: &str = r"\u0000-\u001F\u007F-\u009F";
/// What the server refuses as hiding or reordering text (its `text::hides_or_reorders`),
/// less the tag characters past U+FFFF, which a pattern without the `u` flag cannot name.
const HIDDEN: &str = r"\u00AD\u034F\u061C\u115F\u1160\u17B4\u17B5\u180E\u200B-\u200F\u2028-\u202E\u2060-\u2064\u2066-\u2069\u3164\uFEFF\uFFA0";

/// The pattern of a label of at most `max_chars` characters once trimmed; `optional` lets
/// it be empty (or only white space, which trims to empty).
fn label_pattern(max_chars: usize, optional: bool) -> String {
    let first_and_last = format!("[^{TRIMMED}{CONTROL}{HIDDEN}]");
    let inner = format!("[^{CONTROL}{HIDDEN}]");
    let body = format!("{first_and_last}(?:{inner}{{0,{}}}{first_and_last})?", max_chars - 2);
    let body = if optional { format!("(?:{body})?") } else { body };
    format!("^[{TRIMMED}]*{body}[{TRIMMED}]*$")
}

fn label_schema(description: &str, max_chars: usize, optional: bool) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(Some(label_pattern(max_chars, optional)))
        .build()
        .into()
}

/// A name shown on the leaderboards (an account's, a host's) or a host's own description of
/// itself, as the server's `text::label` takes it.
pub fn label() -> Schema {
    label_schema(
        "One line of at most 100 characters once white space is trimmed from its ends, not empty, without \
         control characters or characters that hide or reorder text.",
        100,
        false,
    )
}

/// A batch's name: a label of at most 200 characters, or nothing.
pub fn batch_name() -> Schema {
    label_schema(
        "Empty, or one line of at most 200 characters once white space is trimmed from its ends, without \
         control characters or characters that hide or reorder text.",
        200,
        true,
    )
}

/// An app's description, as the server's `text::paragraph` takes it.
pub fn paragraph() -> Schema {
    let first_and_last = format!("[^{TRIMMED}{CONTROL}{HIDDEN}]");
    let inner = format!(r"[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F{HIDDEN}]");
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "At most 4000 characters once white space is trimmed from its ends, with line breaks and tabs but no \
             other control characters, and no characters that hide or reorder text.",
        ))
        .pattern(Some(format!("^[{TRIMMED}]*(?:{first_and_last}(?:{inner}{{0,3998}}{first_and_last})?)?[{TRIMMED}]*$")))
        .build()
        .into()
}

/// A work unit's or an input file's name, as `publish::name_problem` takes it: a plain
/// name that is a valid file name on any operating system.
pub fn file_name() -> Schema {
    let forbidden = format!(r#"{CONTROL}/\\:*?"<>|"#);
    let reserved =
        r"(?:[Cc][Oo][Nn]|[Pp][Rr][Nn]|[Aa][Uu][Xx]|[Nn][Uu][Ll]|(?:[Cc][Oo][Mm]|[Ll][Pp][Tt])[0-9])(?:\.|$)";
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "At most 200 bytes of UTF-8, without control characters or any of / \\ : * ? \" < > |, not starting \
             with '.', not ending with '.' or a space, not only white space, and not a reserved device name \
             (CON, PRN, AUX, NUL, COM1..., LPT1..., with or without an extension).",
        ))
        .pattern(Some(format!(r"^(?!{reserved})(?!\.)(?=.*[^{TRIMMED}])[^{forbidden}]{{0,199}}[^{forbidden}. ]$")))
        .max_length(Some(crate::publish::MAX_NAME_BYTES))
        .build()
        .into()
}

/// A work unit's arguments: they reach the module as C strings, which cannot hold NUL.
pub fn arguments() -> Schema {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::String).pattern(Some(r"^[^\u0000]*$")))
        .build()
        .into()
}
