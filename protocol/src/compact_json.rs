//! A parsed JSON value written back as compact text, straight into a `String`.
//!
//! `props` is stored as compact JSON text (the client's key order, no whitespace). It
//! used to be written by simd-json's generator into a byte buffer, checked as UTF-8 and
//! copied into the batch's text; this writes the same bytes into the text directly, as
//! `str` pieces (so no check is needed), and tests that the bytes are simd-json's own.
//!
//! Escapes are simd-json's (`value_trait`'s generator): `\"`, `\\`, `\b`, `\t`, `\n`,
//! `\f`, `\r`, other control characters as `\u00xx` in lowercase hex, everything else
//! as it is (`/` and non-ASCII included). Integers are written as decimal, floats by
//! `ryu`'s shortest form (a parsed float is finite; `null` otherwise, as simd-json).

use simd_json::prelude::*;
use simd_json::tape::Value;
use simd_json::ValueType;

/// Writes `value` as compact JSON text at the end of `out` while `out` holds at most
/// `end` bytes: `false` as soon as it is past (`out` then holds part of the text, and the
/// caller refuses the batch it was written into). A value whose text is refused for its
/// length is not written whole first: numbers grow when written (`1e15` is
/// `1000000000000000.0`), so a body's `props` would take several times its bytes before
/// being refused. What is written past `end` is at most one number, or one string
/// escaped (six bytes a control character). Recursion follows the
/// value's nesting, which the validator bounds (`Limits::max_depth`) before any value is
/// written.
pub fn write_within(value: Value<'_, '_>, out: &mut String, end: usize) -> bool {
    match value.value_type() {
        ValueType::Object => {
            out.push('{');
            if let Some(obj) = value.as_object() {
                for (i, (key, v)) in obj.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    if !write_str_within(key, out, end) {
                        return false;
                    }
                    out.push(':');
                    if !write_within(v, out, end) {
                        return false;
                    }
                }
            }
            out.push('}');
        }
        ValueType::Array => {
            out.push('[');
            if let Some(arr) = value.as_array() {
                for (i, v) in arr.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    if !write_within(v, out, end) {
                        return false;
                    }
                }
            }
            out.push(']');
        }
        ValueType::String => return write_str_within(value.as_str().unwrap_or_default(), out, end),
        ValueType::I64 => out.push_str(itoa::Buffer::new().format(value.as_i64().unwrap_or_default())),
        ValueType::U64 => out.push_str(itoa::Buffer::new().format(value.as_u64().unwrap_or_default())),
        ValueType::F64 => match value.as_f64() {
            Some(f) if f.is_finite() => out.push_str(ryu::Buffer::new().format_finite(f)),
            // No JSON form (a parse never makes one); simd-json writes `null`.
            _ => out.push_str("null"),
        },
        ValueType::Bool if value.as_bool() == Some(true) => out.push_str("true"),
        ValueType::Bool => out.push_str("false"),
        // `null` (the tape holds no other type).
        _ => out.push_str("null"),
    }
    out.len() <= end
}

/// A string, quoted and escaped, unless its bytes alone would end `out` past `end`.
fn write_str_within(s: &str, out: &mut String, end: usize) -> bool {
    if out.len().saturating_add(s.len()) >= end {
        return false;
    }
    write_str(s, out);
    out.len() <= end
}

/// A string, quoted and escaped.
fn write_str(s: &str, out: &mut String) {
    out.push('"');
    let bytes = s.as_bytes();
    match first_to_escape(bytes) {
        None => out.push_str(s),
        Some(at) => write_escaped(s, at, out),
    }
    out.push('"');
}

/// The escaped form of `s`, whose first byte to escape is at `at`.
fn write_escaped(s: &str, at: usize, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate().skip(at) {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0c => "\\f",
            b'\r' => "\\r",
            0..=0x1f => "",
            _ => continue,
        };
        // Every byte escaped is ASCII, so `start..i` lies on character boundaries.
        out.push_str(s.get(start..i).unwrap_or_default());
        if short.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(short);
        }
        start = i + 1;
    }
    out.push_str(s.get(start..).unwrap_or_default());
}

/// The offset of the first byte JSON needs escaped (`"`, `\`, or below 0x20), eight
/// bytes at a time.
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // A byte below 0x20, or equal to `"` or `\` (a zero byte after the XOR), sets its
        // high bit in one of the three terms; bytes of 0x80 and above never do (`!x`).
        let below = x.wrapping_sub(ONES * 0x20);
        let quote = (x ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES);
        let slash = (x ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES);
        if (below | quote | slash) & !x & HIGH != 0 {
            break;
        }
        offset += 8;
    }
    bytes[offset..].iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\').map(|i| offset + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole text.
    fn write(value: Value<'_, '_>, out: &mut String) {
        assert!(write_within(value, out, usize::MAX));
    }

    /// simd-json's compact text of `json` (its generator on the same tape), and this
    /// module's.
    fn both(json: &str) -> (String, String) {
        let mut bytes = json.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut bytes).unwrap_or_else(|e| panic!("{json}: {e}"));
        let mut theirs = Vec::new();
        tape.as_value().write(&mut theirs).expect("writes to a Vec");
        let mut ours = String::new();
        write(tape.as_value(), &mut ours);
        (String::from_utf8(theirs).expect("UTF-8"), ours)
    }

    #[test]
    fn a_value_past_its_bound_stops_being_written() {
        let json = format!(r#"{{"a":[{}1],"b":"{}"}}"#, "1e15,".repeat(10_000), "x".repeat(100));
        let mut bytes = json.into_bytes();
        let tape = simd_json::to_tape(&mut bytes).expect("JSON");
        let mut whole = String::new();
        write(tape.as_value(), &mut whole);
        assert!(whole.len() > 190_000, "{}", whole.len());
        // Within its bound: the same text.
        let mut out = String::from("head");
        assert!(write_within(tape.as_value(), &mut out, 4 + whole.len()));
        assert_eq!(&out[4..], whole);
        // One byte short, or far short: refused, having written little past the bound.
        for end in [4 + whole.len() - 1, 1_000, 4] {
            let mut out = String::from("head");
            assert!(!write_within(tape.as_value(), &mut out, end), "{end}");
            assert!(out.len() <= end + 24, "{end}: {} bytes written", out.len());
        }
        // A string longer than the room left is not copied at all.
        let mut long = br#"{"s":""#.to_vec();
        long.extend(std::iter::repeat_n(b'y', 1 << 20));
        long.extend_from_slice(br#""}"#);
        let tape = simd_json::to_tape(&mut long).expect("JSON");
        let mut out = String::new();
        assert!(!write_within(tape.as_value(), &mut out, 1_000));
        assert!(out.len() < 10, "{}", out.len());
    }

    #[test]
    fn the_same_bytes_as_simd_json() {
        for json in [
            r#"{"level":3,"mode":"ranked","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            r#"{ "a" : [1, -2, 3.5, 1e300, -0.0, 18446744073709551615, -9223372036854775808] , "b":{}}"#,
            r#"{"t":true,"f":false,"n":null,"e":[],"o":{"x":[[],{}]}}"#,
            r#"{"esc":"q\" b\\ s\/ \b\f\n\r\t \u0000\u0001\u001f\u007f é 😀 \u00e9","k\"ey\n":1}"#,
            r#"{"long":"0123456789abcdef0123456789abcdef0123456789abcdef\"0123456789"}"#,
            r#"{"f":0.1,"g":1e22,"h":1.0,"i":-1.5e-7,"j":123456789012345678,"k":5e-324}"#,
            r#"{}"#,
            r#"{"unicode keys ünï":"ü","ascii7":"~\u007e"}"#,
        ] {
            let (theirs, ours) = both(json);
            assert_eq!(ours, theirs, "{json}");
        }
    }

    #[test]
    fn an_integer_past_64_bits_is_written_as_the_double_javascript_reads() {
        // `JSON.stringify(2 ** 64)` and its like: no exponent below 10^21.
        for (json, want) in [
            (r#"{"a":18446744073709552000}"#, r#"{"a":1.8446744073709552e19}"#),
            (r#"{"a":-10000000000000000000}"#, r#"{"a":-1e19}"#),
            (
                r#"{"a":[123456789012345680000,18446744073709551615]}"#,
                r#"{"a":[1.2345678901234568e20,18446744073709551615]}"#,
            ),
        ] {
            let (theirs, ours) = both(json);
            assert_eq!((ours.as_str(), theirs.as_str()), (want, want), "{json}");
        }
    }

    #[test]
    fn every_byte_is_escaped_as_simd_json_escapes_it() {
        // Every ASCII character, at every place of an eight-byte word.
        for pad in 0..9 {
            let mut s = "a".repeat(pad);
            for b in 0u8..0x80 {
                s.push(char::from(b));
            }
            let json = simd_json::to_string(&s).expect("encodes");
            let (theirs, ours) = both(&format!(r#"{{"s":{json}}}"#));
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn finds_the_first_byte_to_escape_in_any_lane() {
        for len in 0..20 {
            for at in 0..len {
                for special in [b'"', b'\\', 0x00, 0x1f] {
                    let mut v = vec![b'z'; len];
                    v[at] = special;
                    assert_eq!(first_to_escape(&v), Some(at), "{len} {at} {special}");
                }
            }
            assert_eq!(first_to_escape(&vec![0xc3; len]), None);
            assert_eq!(first_to_escape(&vec![b' '; len]), None);
        }
    }
}
