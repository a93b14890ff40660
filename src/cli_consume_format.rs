//! How `ringlog consume --format` prints one record (README.md#consume-output-formats).
//!
//! - `text` (default): `offset<TAB>value` per line. Valid UTF-8 is printed as UTF-8; ASCII
//!   bytes are escaped exactly as before `--format` existed (`\t`, `\n`, `\r`, `\\`, `\'`,
//!   `\"`, other control bytes as `\xNN`), non-ASCII control and invisible direction/line
//!   characters as `\u{N}`, and bytes that are not UTF-8 as `\xNN`. One record is always one
//!   line.
//! - `raw`: the value bytes exactly as stored, then one `\n` (no offset, no escaping): the
//!   inverse of `produce --stdin` for values without a newline.
//! - `json`: one JSON object per line: `partition`, `offset`, `timestamp_ms` (the batch's
//!   producer timestamp), `value`, `value_encoding` — `"utf8"` when the value is valid UTF-8
//!   (`value` is that string), `"base64"` otherwise (`value` is standard, padded base64).
//!   Records have no key.

#![forbid(unsafe_code)]

use std::io::Write;

use base64::Engine as _;
use clap::ValueEnum;
use ringlog_net::client::FetchedRecord;
use ringlog_net::PartitionId;

/// `consume --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ConsumeFormat {
    /// `offset<TAB>value`: UTF-8 as UTF-8, control characters and non-UTF-8 bytes escaped.
    #[default]
    Text,
    /// The value bytes exactly, each record followed by a newline.
    Raw,
    /// One JSON object per record and line (non-UTF-8 values as base64).
    Json,
}

/// Writes `record` in `format`, newline included.
pub fn write_record(
    out: &mut impl Write,
    format: ConsumeFormat,
    partition: PartitionId,
    record: &FetchedRecord,
) -> std::io::Result<()> {
    match format {
        ConsumeFormat::Text => writeln!(out, "{}\t{}", record.offset.0, escape_text(&record.value)),
        ConsumeFormat::Raw => {
            out.write_all(&record.value)?;
            out.write_all(b"\n")
        }
        ConsumeFormat::Json => writeln!(out, "{}", record_json(partition, record)),
    }
}

/// The `json` object of one record.
pub fn record_json(partition: PartitionId, record: &FetchedRecord) -> serde_json::Value {
    let (value, encoding) = match std::str::from_utf8(&record.value) {
        Ok(text) => (text.to_string(), "utf8"),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(&record.value), "base64"),
    };
    serde_json::json!({
        "partition": partition.0,
        "offset": record.offset.0,
        "timestamp_ms": record.timestamp_ms,
        "value": value,
        "value_encoding": encoding,
    })
}

/// `value` as one line of text (module doc: what is escaped and how).
pub fn escape_text(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for chunk in value.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_ascii() {
                out.extend((c as u8).escape_ascii().map(char::from));
            } else if is_invisible_control(c) {
                out.extend(c.escape_unicode());
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            out.extend(byte.escape_ascii().map(char::from));
        }
    }
    out
}

/// Non-ASCII characters that would break a line or reorder a terminal's text: C1 controls,
/// the line and paragraph separators, bidirectional controls and the byte-order mark.
fn is_invisible_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{061c}'
                | '\u{feff}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ringlog_net::Offset;

    fn record(value: &[u8]) -> FetchedRecord {
        FetchedRecord {
            offset: Offset(7),
            value: Bytes::copy_from_slice(value),
            timestamp_ms: 1_700_000_000_123,
        }
    }

    fn printed(format: ConsumeFormat, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_record(&mut out, format, PartitionId(3), &record(value)).unwrap();
        out
    }

    #[test]
    fn text_prints_utf8_as_utf8_and_escapes_ascii_as_before() {
        assert_eq!(
            printed(ConsumeFormat::Text, "héllo ✓ 日本".as_bytes()),
            "7\théllo ✓ 日本\n".as_bytes()
        );
        // ASCII is escaped exactly as `escape_ascii` did before --format existed.
        let ascii = b"a\tb\nc\\d'e\"\x01\x7f";
        let before = format!("7\t{}\n", ascii.escape_ascii());
        assert_eq!(printed(ConsumeFormat::Text, ascii), before.as_bytes());
        assert_eq!(printed(ConsumeFormat::Text, b""), b"7\t\n");
    }

    #[test]
    fn text_escapes_bytes_that_are_not_utf8_and_invisible_controls() {
        assert_eq!(escape_text(b"ok\xff\xc3"), "ok\\xff\\xc3");
        assert_eq!(
            escape_text("é\u{85}\u{2028}\u{202e}x".as_bytes()),
            "é\\u{85}\\u{2028}\\u{202e}x"
        );
        // A truncated multi-byte sequence between valid text keeps the text around it.
        assert_eq!(escape_text(b"\xe6\x97a\xc3\xa9"), "\\xe6\\x97aé");
    }

    #[test]
    fn raw_prints_the_value_bytes_exactly_then_a_newline() {
        assert_eq!(printed(ConsumeFormat::Raw, b"\x00\xff\tx"), b"\x00\xff\tx\n");
        assert_eq!(printed(ConsumeFormat::Raw, b""), b"\n");
    }

    #[test]
    fn json_gives_utf8_values_as_strings_and_other_values_as_base64() {
        let line = printed(ConsumeFormat::Json, "héllo\n".as_bytes());
        assert_eq!(line.last(), Some(&b'\n'));
        let parsed: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"partition": 3, "offset": 7, "timestamp_ms": 1_700_000_000_123i64,
                               "value": "héllo\n", "value_encoding": "utf8"})
        );
        let parsed: serde_json::Value =
            serde_json::from_slice(&printed(ConsumeFormat::Json, b"\x00\xff\xfe")).unwrap();
        assert_eq!(parsed["value"], "AP/+");
        assert_eq!(parsed["value_encoding"], "base64");
        let parsed: serde_json::Value =
            serde_json::from_slice(&printed(ConsumeFormat::Json, b"")).unwrap();
        assert_eq!(
            (parsed["value"].as_str(), parsed["value_encoding"].as_str()),
            (Some(""), Some("utf8"))
        );
    }
}
