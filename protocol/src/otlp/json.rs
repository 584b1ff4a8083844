//! OTLP/JSON requests (the protobuf JSON mapping with lowerCamelCase names, hex trace and
//! span ids, 64-bit integers as strings or numbers), parsed in place on simd-json's
//! tape with the shard's reused buffers, then walked like protobuf.

use simd_json::prelude::*;
use simd_json::tape::{Object, Value};

use super::any::{json_any, json_object, json_u64, AnyRef, Attrs};
use super::map::{Id, Mapper, RecordIn, Slots};
use super::{DecodeError, Signal};
use crate::validate::{self, JsonBuffers, Limits};

/// JSON nesting above the attribute values (`{resourceLogs:[{scopeLogs:[{logRecords:[{
/// attributes:[{value:{`) plus four levels per nested `AnyValue` (a `kvlistValue` takes
/// four, `{kvlistValue:{values:[{value:`; an `arrayValue` three): the parser's bound
/// never refuses what protobuf accepts, and the `AnyValue` depth is checked as in
/// protobuf when values are written.
fn json_depth(limits: &Limits) -> usize {
    10 + 4 * limits.max_depth + 2
}

fn array_of<'t, 'a>(o: &Object<'t, 'a>, key: &str) -> Result<Option<simd_json::tape::Array<'t, 'a>>, DecodeError> {
    match o.get(key) {
        None => Ok(None),
        Some(v) if v.as_null().is_some() => Ok(None),
        Some(v) => v.as_array().map(Some).ok_or(DecodeError::Json("a repeated field must be an array")),
    }
}

fn object<'t, 'a>(v: Value<'t, 'a>) -> Result<Object<'t, 'a>, DecodeError> {
    json_object(v, "a message must be an object")
}

/// A field's value unless absent or null (proto3 JSON: null is the default value).
fn field<'t, 'a>(o: &Object<'t, 'a>, key: &str) -> Option<Value<'t, 'a>> {
    o.get(key).filter(|v| v.as_null().is_none())
}

fn str_of<'a>(o: &Object<'_, 'a>, key: &str) -> Result<&'a str, DecodeError> {
    match field(o, key) {
        None => Ok(""),
        Some(v) => v.into_string().ok_or(DecodeError::Json("a string field must be a string")),
    }
}

fn time_of(o: &Object<'_, '_>, key: &str) -> Result<u64, DecodeError> {
    match field(o, key) {
        None => Ok(0),
        Some(v) => json_u64(v).ok_or(DecodeError::Json("a time must be an unsigned integer or a string of digits")),
    }
}

fn attrs_of<'t, 'a>(o: &Object<'t, 'a>) -> Result<Attrs<'t, 'a>, DecodeError> {
    Ok(array_of(o, "attributes")?.map_or(Attrs::None, Attrs::Json))
}

/// Parses a request body and hands each record to `mapper`.
pub fn walk(
    signal: Signal,
    body: &mut [u8],
    limits: &Limits,
    bufs: &mut JsonBuffers,
    mapper: &mut Mapper<'_, '_>,
) -> Result<(), DecodeError> {
    let json_limits = Limits { max_depth: json_depth(limits), ..*limits };
    let (resources, scopes, records) = match signal {
        Signal::Logs => ("resourceLogs", "scopeLogs", "logRecords"),
        Signal::Traces => ("resourceSpans", "scopeSpans", "spans"),
    };
    let parsed = validate::with_root(body, &json_limits, bufs, |root| -> Result<(), DecodeError> {
        let root = json_object(root, "the body must be an object")?;
        for r in array_of(&root, resources)?.iter().flat_map(|a| a.iter()) {
            let r = object(r)?;
            let mut slots = Slots::empty();
            if let Some(res) = field(&r, "resource") {
                slots.fill(&attrs_of(&object(res)?)?, 0)?;
            }
            for s in array_of(&r, scopes)?.iter().flat_map(|a| a.iter()) {
                for rec in array_of(&object(s)?, records)?.iter().flat_map(|a| a.iter()) {
                    let o = object(rec)?;
                    let rec = match signal {
                        Signal::Logs => RecordIn {
                            name: str_of(&o, "eventName")?,
                            time_ns: time_of(&o, "timeUnixNano")?,
                            fallback_ns: time_of(&o, "observedTimeUnixNano")?,
                            trace_id: Id::Hex(str_of(&o, "traceId")?),
                            span_id: Id::Hex(str_of(&o, "spanId")?),
                            attrs: attrs_of(&o)?,
                            body: match field(&o, "body") {
                                Some(b) => json_any(b)?,
                                None => AnyRef::Empty,
                            },
                            content: None,
                        },
                        Signal::Traces => RecordIn {
                            name: str_of(&o, "name")?,
                            time_ns: time_of(&o, "startTimeUnixNano")?,
                            fallback_ns: 0,
                            trace_id: Id::Hex(str_of(&o, "traceId")?),
                            span_id: Id::Hex(str_of(&o, "spanId")?),
                            attrs: attrs_of(&o)?,
                            body: AnyRef::Empty,
                            content: None,
                        },
                    };
                    mapper.record(signal, &slots, &rec)?;
                }
            }
        }
        Ok(())
    });
    // JSON nested past the parser's bound is refused as such: the bound holds any
    // `AnyValue` protobuf takes, but applies to the whole document (simd-json's tape is
    // built before anything is read), also to fields not read, where protobuf skips them.
    match parsed {
        Err(DecodeError::TooDeep(n)) if n == json_limits.max_depth => Err(DecodeError::JsonTooDeep(n)),
        r => r,
    }
}
