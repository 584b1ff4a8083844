//! Attribute values (`AnyValue`) and attribute lists (`repeated KeyValue`) of both
//! encodings, read in place, and written as JSON into `props`.
//!
//! A scalar is read into [`AnyRef`] at once; an array or a key-value list stays a view of
//! its bytes (protobuf) or tape (OTLP/JSON) until it is written out, nesting checked
//! against the limit on the way (deeper is a refusal of the request, not a stack overflow).

use simd_json::prelude::*;
use simd_json::tape::{Array, Object, Value as JsonValue};

use super::map::{slot_of, Slot};
use super::wire::{Fields, WireError};
use super::DecodeError;

/// One attribute value.
#[derive(Clone, Copy)]
pub enum AnyRef<'t, 'a> {
    /// No value set.
    Empty,
    /// `string_value`.
    Str(&'a str),
    /// `bool_value`.
    Bool(bool),
    /// `int64_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// `bytes_value` (protobuf: the bytes).
    Bytes(&'a [u8]),
    /// `bytesValue` (OTLP/JSON: already base64 text).
    Base64(&'a str),
    /// `array_value`, protobuf bytes of an `ArrayValue`.
    PbArray(&'a [u8]),
    /// `kvlist_value`, protobuf bytes of a `KeyValueList`.
    PbKvlist(&'a [u8]),
    /// `arrayValue.values`, OTLP/JSON.
    JsonArray(Option<Array<'t, 'a>>),
    /// `kvlistValue.values`, OTLP/JSON.
    JsonKvlist(Option<Array<'t, 'a>>),
}

/// An attribute list, read again each time it is walked (nothing is collected).
#[derive(Clone, Copy)]
pub enum Attrs<'t, 'a> {
    /// None.
    None,
    /// Field `field` (a repeated `KeyValue`) of the protobuf message `msg`.
    Pb {
        /// The message holding the list.
        msg: &'a [u8],
        /// The list's field number.
        field: u32,
    },
    /// An OTLP/JSON array of `{"key":..,"value":{..}}`.
    Json(Array<'t, 'a>),
}

impl<'t, 'a> Attrs<'t, 'a> {
    /// Calls `f` with each key, the envelope slot it fills (if any, [`slot_of`]) and
    /// value, in order.
    #[inline]
    pub fn each<F>(&self, mut f: F) -> Result<(), DecodeError>
    where
        F: FnMut(&'a str, SlotOf, AnyRef<'t, 'a>) -> Result<(), DecodeError>,
    {
        match *self {
            Attrs::None => Ok(()),
            Attrs::Pb { msg, field } => {
                for r in Fields::new(msg) {
                    let (n, v) = r?;
                    if n == field {
                        let (k, slot, v) = pb_key_value(v.bytes(n)?)?;
                        f(k, slot, v)?;
                    }
                }
                Ok(())
            }
            Attrs::Json(arr) => {
                for kv in arr.iter() {
                    let (k, v) = json_key_value(kv)?;
                    f(k, slot_of(k.as_bytes()), v)?;
                }
                Ok(())
            }
        }
    }
}

/// A protobuf `KeyValue`: its key, the slot the key names, and its value. A key that
/// names a slot is one of those ASCII names (no UTF-8 check to make); any other key is
/// checked when it is read, as every `string` field is.
#[inline(always)]
fn pb_key_value<'t, 'a>(msg: &'a [u8]) -> Result<(&'a str, SlotOf, AnyRef<'t, 'a>), DecodeError> {
    // As SDKs write it: the key, then the value, each with a one-byte length. Read
    // as the loop below reads it, in the same order, without the general walk.
    if let [0x0a, klen, rest @ ..] = msg {
        if let Some((k, [0x12, vlen, v @ ..])) = rest.split_at_checked(usize::from(*klen)) {
            if *klen < 0x80 && *vlen < 0x80 && v.len() == usize::from(*vlen) {
                let (key, slot) = key_slot(k)?;
                return Ok((key, slot, pb_any(v)?));
            }
        }
    }
    let (mut key, mut slot, mut value) = ("", None, AnyRef::Empty);
    for r in Fields::new(msg) {
        match r? {
            (1, v) => (key, slot) = key_slot(v.bytes(1)?)?,
            (2, v) => value = pb_any(v.bytes(2)?)?,
            _ => {}
        }
    }
    Ok((key, slot, value))
}

/// The slot a key names, its rank and the name ([`slot_of`]), if any.
pub type SlotOf = Option<(Slot, u8, &'static str)>;

/// A key and the slot it names.
#[inline(always)]
fn key_slot(b: &[u8]) -> Result<(&str, SlotOf), WireError> {
    Ok(match slot_of(b) {
        Some((s, rank, name)) => (name, Some((s, rank, name))),
        None => (std::str::from_utf8(b).map_err(|_| WireError::InvalidUtf8)?, None),
    })
}

/// A protobuf `KeyValue` without its slot (values nested in a `kvlist_value`).
fn pb_nested_key_value<'t, 'a>(msg: &'a [u8]) -> Result<(&'a str, AnyRef<'t, 'a>), DecodeError> {
    let (mut key, mut value) = ("", AnyRef::Empty);
    for r in Fields::new(msg) {
        match r? {
            (1, v) => key = v.str(1)?,
            (2, v) => value = pb_any(v.bytes(2)?)?,
            _ => {}
        }
    }
    Ok((key, value))
}

/// A protobuf `AnyValue` (the last member of the `oneof` wins, as protobuf says).
#[inline(always)]
pub fn pb_any<'t, 'a>(msg: &'a [u8]) -> Result<AnyRef<'t, 'a>, DecodeError> {
    // One field, as SDKs write it: a string with a one-byte length, or an integer.
    match msg {
        [0x0a, len, s @ ..] if *len < 0x80 && s.len() == usize::from(*len) => {
            return Ok(AnyRef::Str(std::str::from_utf8(s).map_err(|_| WireError::InvalidUtf8)?));
        }
        [0x18, b] if *b < 0x80 => return Ok(AnyRef::Int(i64::from(*b))),
        _ => {}
    }
    let mut out = AnyRef::Empty;
    for r in Fields::new(msg) {
        let (n, v) = r?;
        out = match n {
            1 => AnyRef::Str(v.str(n)?),
            2 => AnyRef::Bool(v.varint(n)? != 0),
            3 => AnyRef::Int(v.varint(n)? as i64),
            4 => AnyRef::Double(f64::from_bits(v.fixed64(n)?)),
            5 => AnyRef::PbArray(v.bytes(n)?),
            6 => AnyRef::PbKvlist(v.bytes(n)?),
            7 => AnyRef::Bytes(v.bytes(n)?),
            _ => out,
        };
    }
    Ok(out)
}

/// `v` as an OTLP/JSON message (`what` says which, when it is not an object). A field
/// given twice in one object is refused, as Go's `protojson` refuses it (and JSON ingest
/// does): parsers differ on which of the two counts, and protobuf keeps the last where this
/// reader would see the first.
pub(crate) fn json_object<'t, 'a>(v: JsonValue<'t, 'a>, what: &'static str) -> Result<Object<'t, 'a>, DecodeError> {
    let o = v.as_object().ok_or(DecodeError::Json(what))?;
    let twice = DecodeError::Json("a field is given twice in one object");
    // A message has a few fields: compared pairwise, nothing allocated; an object of many
    // (a crafted one) through a set, so that the check stays linear.
    if o.len() <= 16 {
        for (i, (k, _)) in o.iter().enumerate() {
            if o.iter().skip(i + 1).any(|(other, _)| other == k) {
                return Err(twice);
            }
        }
    } else {
        let mut seen = std::collections::HashSet::with_capacity(o.len());
        if !o.iter().all(|(k, _)| seen.insert(k)) {
            return Err(twice);
        }
    }
    Ok(o)
}

/// An OTLP/JSON `{"key":..,"value":{..}}`.
fn json_key_value<'t, 'a>(v: JsonValue<'t, 'a>) -> Result<(&'a str, AnyRef<'t, 'a>), DecodeError> {
    let o = json_object(v, "an attribute must be an object")?;
    // Absent or null: the empty key, as proto3 JSON reads a missing string.
    let key = match o.get("key") {
        Some(k) if k.as_null().is_none() => {
            k.into_string().ok_or(DecodeError::Json("an attribute's key must be a string"))?
        }
        _ => "",
    };
    let value = match o.get("value") {
        Some(v) if v.as_null().is_none() => json_any(v)?,
        _ => AnyRef::Empty,
    };
    Ok((key, value))
}

/// An OTLP/JSON integer: a number, or a string holding one (how int64 travels in JSON),
/// read as proto3 JSON reads it (Go's `protojson`): a JSON number whose value is whole —
/// an exponent or a fraction of zeros allowed (`1.7e18`, `"3.0"`), no `+`, no spaces.
pub fn json_int(v: JsonValue<'_, '_>) -> Option<i64> {
    json_whole(v).and_then(|n| i64::try_from(n).ok())
}

/// An OTLP/JSON unsigned 64-bit integer (`fixed64` times), read as [`json_int`] reads one.
pub fn json_u64(v: JsonValue<'_, '_>) -> Option<u64> {
    json_whole(v).and_then(|n| u64::try_from(n).ok())
}

/// A whole number given as a JSON number or a string holding one. A number the parser
/// read as a double (an exponent or a fraction) is taken when whole: exact up to 2^53,
/// the nearest double's value past it (a string keeps every digit).
fn json_whole(v: JsonValue<'_, '_>) -> Option<i128> {
    if let Some(i) = v.as_i64() {
        return Some(i128::from(i));
    }
    if let Some(u) = v.as_u64() {
        return Some(i128::from(u));
    }
    if let Some(s) = v.as_str() {
        return whole_number_text(s);
    }
    let d = v.as_f64()?;
    // 2^64: a double at or past it holds no u64. An integer the parser read as a double
    // did not fit an i64 (or a u64): -2^63 as a double is the rounding of -2^63 - 1 down
    // to -2^63 - 1024, which no i64 holds, and is refused with everything below it.
    (d.fract() == 0.0 && d < 18_446_744_073_709_551_616.0 && d > -9_223_372_036_854_775_808.0).then_some(d as i128)
}

/// The value of a JSON number's text when it is whole (`"1.7e18"`, `"100.0"`, `"-5"`),
/// exactly; `None` for any other text, a fraction that is not zeros, or past 39 digits.
fn whole_number_text(s: &str) -> Option<i128> {
    if !is_json_number(s) {
        return None;
    }
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i64>().ok()?),
        None => (s, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // Read in place (every timestamp of a record comes this way: no allocation).
    let digits = int.bytes().chain(frac.bytes()).map(|b| b - b'0');
    let total = int.len() + frac.len();
    let scale = exponent.checked_sub(i64::try_from(frac.len()).ok()?)?;
    // Digits past the point must be zeros.
    let past = if scale < 0 { usize::try_from(scale.unsigned_abs()).unwrap_or(usize::MAX).min(total) } else { 0 };
    if digits.clone().skip(total - past).any(|d| d != 0) {
        return None;
    }
    let mut n: i128 = 0;
    for d in digits.take(total - past) {
        n = n.checked_mul(10)?.checked_add(i128::from(d))?;
    }
    let mut scale = scale.saturating_add(i64::try_from(past).ok()?).max(0);
    while n != 0 && scale > 0 {
        n = n.checked_mul(10)?;
        scale -= 1;
    }
    Some(if negative { -n } else { n })
}

/// An OTLP/JSON double: a number, or as proto3 JSON allows a string, `"NaN"`,
/// `"Infinity"`, `"-Infinity"` or a number's text (`"1.5"`; not Rust's `"inf"`).
pub fn json_double(v: JsonValue<'_, '_>) -> Option<f64> {
    if let Some(d) = v.as_f64().or_else(|| v.as_i64().map(|i| i as f64)).or_else(|| v.as_u64().map(|u| u as f64)) {
        return Some(d);
    }
    match v.as_str()? {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        // A JSON number's text, as proto3 JSON reads it (no spaces, `+`, `.5` or `1.`).
        s if !is_json_number(s) => None,
        s => s.parse::<f64>().ok().filter(|d| d.is_finite()),
    }
}

/// The members of an `AnyValue`'s `value` oneof, as OTLP/JSON names them.
const ONE_OF: [&str; 7] =
    ["stringValue", "boolValue", "intValue", "doubleValue", "bytesValue", "arrayValue", "kvlistValue"];

/// Whether `s` is a number as JSON writes it: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(s: &str) -> bool {
    let digits = |b: &[u8]| b.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut b = s.strip_prefix('-').unwrap_or(s).as_bytes();
    match digits(b) {
        0 => return false,
        n if n > 1 && b[0] == b'0' => return false,
        n => b = &b[n..],
    }
    if let Some(rest) = b.strip_prefix(b".") {
        let n = digits(rest);
        if n == 0 {
            return false;
        }
        b = &rest[n..];
    }
    if let Some(rest) = b.strip_prefix(b"e").or_else(|| b.strip_prefix(b"E")) {
        let rest = rest.strip_prefix(b"+").or_else(|| rest.strip_prefix(b"-")).unwrap_or(rest);
        let n = digits(rest);
        if n == 0 {
            return false;
        }
        b = &rest[n..];
    }
    b.is_empty()
}

/// Base64 as proto3 JSON reads `bytes`: the standard or the URL-safe alphabet (one of
/// them), padded correctly or not at all.
fn base64_bytes(s: &str) -> Option<Vec<u8>> {
    use base64::alphabet;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine;
    // Padded, the padding must be whole (`QQ==`, not `QQ=`: the `Indifferent` mode
    // would take both).
    const PADDED: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true);
    const UNPADDED: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true);
    let config = if s.ends_with('=') { PADDED } else { UNPADDED };
    let standard = GeneralPurpose::new(&alphabet::STANDARD, config);
    let url_safe = GeneralPurpose::new(&alphabet::URL_SAFE, config);
    standard.decode(s).or_else(|_| url_safe.decode(s)).ok()
}

/// An OTLP/JSON `AnyValue` object.
pub fn json_any<'t, 'a>(v: JsonValue<'t, 'a>) -> Result<AnyRef<'t, 'a>, DecodeError> {
    let o = json_object(v, "an AnyValue must be an object")?;
    let mut out = AnyRef::Empty;
    for (k, v) in o.iter() {
        // proto3 JSON: a null field is the field's default, here the value not set.
        if v.as_null().is_some() {
            continue;
        }
        // The value is a `oneof`: a second member is refused, as proto3 JSON parsers do.
        if !matches!(out, AnyRef::Empty) && ONE_OF.contains(&k) {
            return Err(DecodeError::Json("an AnyValue holds one value (two of stringValue, intValue, … were set)"));
        }
        out = match k {
            "stringValue" => AnyRef::Str(v.into_string().ok_or(DecodeError::Json("stringValue must be a string"))?),
            "boolValue" => AnyRef::Bool(v.as_bool().ok_or(DecodeError::Json("boolValue must be a boolean"))?),
            "intValue" => AnyRef::Int(json_int(v).ok_or(DecodeError::Json("intValue must be an integer"))?),
            "doubleValue" => AnyRef::Double(json_double(v).ok_or(DecodeError::Json("doubleValue must be a number"))?),
            "bytesValue" => AnyRef::Base64(
                v.into_string()
                    .filter(|b| base64_bytes(b).is_some())
                    .ok_or(DecodeError::Json("bytesValue must be a base64 string"))?,
            ),
            "arrayValue" => AnyRef::JsonArray(values(v)?),
            "kvlistValue" => AnyRef::JsonKvlist(values(v)?),
            _ => out,
        };
    }
    Ok(out)
}

/// The `values` array of an `arrayValue` or `kvlistValue` (`None`: absent or null, empty).
fn values<'t, 'a>(v: JsonValue<'t, 'a>) -> Result<Option<Array<'t, 'a>>, DecodeError> {
    let o = json_object(v, "arrayValue and kvlistValue must be objects")?;
    match o.get("values") {
        None => Ok(None),
        // proto3 JSON: null is the default, no values.
        Some(vals) if vals.as_null().is_some() => Ok(None),
        Some(vals) => vals.as_array().map(Some).ok_or(DecodeError::Json("values must be an array")),
    }
}

/// Writes `s` as a JSON string literal.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Writes lower-case hex of `bytes` as a JSON string.
pub fn write_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    // Trace and span ids (16 and 8 bytes) through a buffer on the stack.
    for chunk in bytes.chunks(32) {
        let mut buf = [0u8; 64];
        for (pair, b) in buf.chunks_exact_mut(2).zip(chunk) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 15)];
        }
        out.push_str(std::str::from_utf8(&buf[..chunk.len() * 2]).unwrap_or(""));
    }
    out.push('"');
}

/// Whether `len` more bytes would take `out` past `stop_at`: if so, `out` is filled to one
/// byte past it (a text only too long, which the caller refuses unread) and nothing of
/// them is written.
fn passes(out: &mut String, stop_at: usize, len: usize) -> bool {
    if out.len().saturating_add(len) <= stop_at {
        return false;
    }
    let fill = stop_at.saturating_add(1).saturating_sub(out.len());
    out.extend(std::iter::repeat_n(' ', fill));
    true
}

/// Writes a finite double as JSON, in the shortest text that reads back the same: plain
/// digits from 10^-6 up to 10^21, an exponent outside (as JavaScript writes numbers), so
/// that no double takes more than 24 bytes (`5e-324` would be 326 digits written plainly).
fn write_double(out: &mut String, d: f64) {
    use std::fmt::Write;
    let a = d.abs();
    let _ = if a == 0.0 || (1e-6..1e21).contains(&a) { write!(out, "{d}") } else { write!(out, "{d:e}") };
}

impl AnyRef<'_, '_> {
    /// Writes the value as JSON; `depth` is its nesting level (1 for an attribute's
    /// value), at most `max_depth`. Writing stops once `out` would pass `stop_at` bytes
    /// (it is then longer than that, and refused by the caller): an attribute of a small
    /// request costs at most its limit's worth of text, not its whole value's.
    pub fn write_json(
        &self,
        out: &mut String,
        depth: usize,
        max_depth: usize,
        stop_at: usize,
    ) -> Result<(), DecodeError> {
        use std::fmt::Write;
        if depth > max_depth {
            return Err(DecodeError::TooDeep(max_depth));
        }
        match *self {
            AnyRef::Empty => out.push_str("null"),
            // Escapes only lengthen a string: at least its bytes and quotes are written.
            AnyRef::Str(s) if passes(out, stop_at, s.len().saturating_add(2)) => {}
            AnyRef::Str(s) => write_str(out, s),
            AnyRef::Bool(b) => out.push_str(if b { "true" } else { "false" }),
            AnyRef::Int(i) => {
                let _ = write!(out, "{i}");
            }
            AnyRef::Double(d) if d.is_finite() => write_double(out, d),
            AnyRef::Double(_) => out.push_str("null"),
            AnyRef::Bytes(b) if passes(out, stop_at, b.len().div_ceil(3).saturating_mul(4)) => {}
            AnyRef::Bytes(b) => {
                use base64::Engine;
                out.push('"');
                base64::engine::general_purpose::STANDARD.encode_string(b, out);
                out.push('"');
            }
            // Written as protobuf's bytes are (standard alphabet, padded): the same bytes
            // give the same `props` whichever the encoding sent.
            AnyRef::Base64(s) if passes(out, stop_at, s.len()) => {}
            AnyRef::Base64(s) => {
                use base64::Engine;
                out.push('"');
                base64::engine::general_purpose::STANDARD.encode_string(base64_bytes(s).unwrap_or_default(), out);
                out.push('"');
            }
            AnyRef::PbArray(msg) => {
                out.push('[');
                let mut first = true;
                for r in Fields::new(msg) {
                    if let (1, v) = r? {
                        if out.len() > stop_at {
                            return Ok(());
                        }
                        if !std::mem::take(&mut first) {
                            out.push(',');
                        }
                        pb_any(v.bytes(1)?)?.write_json(out, depth + 1, max_depth, stop_at)?;
                    }
                }
                out.push(']');
            }
            AnyRef::PbKvlist(msg) => {
                out.push('{');
                let mut first = true;
                for r in Fields::new(msg) {
                    if let (1, v) = r? {
                        if out.len() > stop_at {
                            return Ok(());
                        }
                        if !std::mem::take(&mut first) {
                            out.push(',');
                        }
                        let (k, v) = pb_nested_key_value(v.bytes(1)?)?;
                        if passes(out, stop_at, k.len().saturating_add(3)) {
                            return Ok(());
                        }
                        write_str(out, k);
                        out.push(':');
                        v.write_json(out, depth + 1, max_depth, stop_at)?;
                    }
                }
                out.push('}');
            }
            AnyRef::JsonArray(arr) => {
                out.push('[');
                for (i, v) in arr.iter().flat_map(|a| a.iter()).enumerate() {
                    if out.len() > stop_at {
                        return Ok(());
                    }
                    if i > 0 {
                        out.push(',');
                    }
                    json_any(v)?.write_json(out, depth + 1, max_depth, stop_at)?;
                }
                out.push(']');
            }
            AnyRef::JsonKvlist(arr) => {
                out.push('{');
                for (i, kv) in arr.iter().flat_map(|a| a.iter()).enumerate() {
                    if out.len() > stop_at {
                        return Ok(());
                    }
                    if i > 0 {
                        out.push(',');
                    }
                    let (k, v) = json_key_value(kv)?;
                    if passes(out, stop_at, k.len().saturating_add(3)) {
                        return Ok(());
                    }
                    write_str(out, k);
                    out.push(':');
                    v.write_json(out, depth + 1, max_depth, stop_at)?;
                }
                out.push('}');
            }
        }
        Ok(())
    }
}
