//! Protobuf `ExportLogsServiceRequest` / `ExportTraceServiceRequest`, walked in place.
//!
//! The field numbers, from `opentelemetry/proto/{collector,logs,trace,resource}/v1`:
//! a request holds `resource_logs` / `resource_spans` (1); each of those a `resource` (1,
//! its `attributes` are field 1) and `scope_logs` / `scope_spans` (2); each scope its
//! `log_records` / `spans` (2). A `LogRecord`: `time_unix_nano` (1, fixed64), `body`
//! (5), `attributes` (6), `trace_id` (9), `span_id` (10), `observed_time_unix_nano` (11,
//! fixed64), `event_name` (12). A `Span`: `trace_id` (1), `span_id` (2), `name` (5),
//! `start_time_unix_nano` (7, fixed64), `attributes` (9). Unknown fields are skipped (but
//! must be well-formed).

use super::any::{pb_any, AnyRef, Attrs};
use super::map::{Content, Id, Mapper, RecordIn, Slots};
use super::wire::Fields;
use super::{DecodeError, Signal};

/// Walks a request body, handing each record to `mapper`.
pub fn walk(signal: Signal, body: &[u8], mapper: &mut Mapper<'_, '_>) -> Result<(), DecodeError> {
    for r in Fields::new(body) {
        let (n, v) = r?;
        if n != 1 {
            continue;
        }
        let resource_records = v.bytes(n)?;
        // The resource may come after its records: read it first.
        let mut slots = Slots::empty();
        let mut resource: &[u8] = &[];
        for r in Fields::new(resource_records) {
            if let (1, v) = r? {
                resource = v.bytes(1)?;
                slots.fill(&Attrs::Pb { msg: resource, field: 1 }, 0)?;
            }
        }
        // Hashed once per resource (at its first log record), not once per scope: a large
        // resource followed by many scopes would otherwise cost their product.
        let mut resource_digest = None;
        for r in Fields::new(resource_records) {
            let (n, v) = r?;
            if n != 2 {
                continue;
            }
            let scope_records = v.bytes(n)?;
            // Where the records come from (resource and scope): two log records with the
            // same bytes from two resources are two events, not one. Worked out at the
            // scope's first log record: a scope without any costs no hashing.
            let mut scope: &[u8] = &[];
            for r in Fields::new(scope_records) {
                if let (1, v) = r? {
                    scope = v.bytes(1)?;
                }
            }
            let mut origin = None;
            for r in Fields::new(scope_records) {
                let (n, v) = r?;
                if n != 2 {
                    continue;
                }
                let rec = match signal {
                    Signal::Logs => log_record(
                        v.bytes(n)?,
                        *origin.get_or_insert_with(|| {
                            origin_of(*resource_digest.get_or_insert_with(|| digest(resource)), scope)
                        }),
                    )?,
                    Signal::Traces => span(v.bytes(n)?)?,
                };
                mapper.record(signal, &slots, &rec)?;
            }
        }
    }
    Ok(())
}

/// A message's digest, as it goes into [`origin_of`].
fn digest(msg: &[u8]) -> [u8; 16] {
    cityhash_rs::cityhash_102_128(msg).to_le_bytes()
}

/// Where a scope's log records come from, mixed into their ids: the digest of their
/// resource message ([`digest`]) and that of their scope message.
fn origin_of(resource: [u8; 16], scope: &[u8]) -> [u8; 32] {
    let mut origin = [0u8; 32];
    origin[..16].copy_from_slice(&resource);
    origin[16..].copy_from_slice(&digest(scope));
    origin
}

fn log_record<'t, 'a>(msg: &'a [u8], origin: [u8; 32]) -> Result<RecordIn<'t, 'a>, DecodeError> {
    let mut rec = RecordIn {
        name: "",
        time_ns: 0,
        fallback_ns: 0,
        trace_id: Id::Raw(&[]),
        span_id: Id::Raw(&[]),
        attrs: Attrs::Pb { msg, field: 6 },
        body: AnyRef::Empty,
        content: Some(Content { record: msg, origin }),
    };
    let mut attrs = Span::default();
    let mut fields = Fields::new(msg);
    loop {
        let at = msg.len() - fields.remaining();
        let Some(r) = fields.next() else { break };
        let (n, v) = r?;
        match n {
            1 => rec.time_ns = v.fixed64(n)?,
            5 => rec.body = pb_any(v.bytes(n)?)?,
            6 => attrs.add(at, msg.len() - fields.remaining()),
            9 => rec.trace_id = Id::Raw(v.bytes(n)?),
            10 => rec.span_id = Id::Raw(v.bytes(n)?),
            11 => rec.fallback_ns = v.fixed64(n)?,
            12 => rec.name = v.str(n)?,
            _ => {}
        }
    }
    rec.attrs = attrs.attrs(msg, 6);
    Ok(rec)
}

fn span<'t, 'a>(msg: &'a [u8]) -> Result<RecordIn<'t, 'a>, DecodeError> {
    let mut rec = RecordIn {
        name: "",
        time_ns: 0,
        fallback_ns: 0,
        trace_id: Id::Raw(&[]),
        span_id: Id::Raw(&[]),
        attrs: Attrs::Pb { msg, field: 9 },
        body: AnyRef::Empty,
        content: None,
    };
    let mut attrs = Span::default();
    let mut fields = Fields::new(msg);
    loop {
        let at = msg.len() - fields.remaining();
        let Some(r) = fields.next() else { break };
        let (n, v) = r?;
        match n {
            1 => rec.trace_id = Id::Raw(v.bytes(n)?),
            2 => rec.span_id = Id::Raw(v.bytes(n)?),
            5 => rec.name = v.str(n)?,
            7 => rec.time_ns = v.fixed64(n)?,
            9 => attrs.add(at, msg.len() - fields.remaining()),
            _ => {}
        }
    }
    rec.attrs = attrs.attrs(msg, 9);
    Ok(rec)
}

/// Where a record's attributes are: from the first one's tag to the end of the last
/// (SDKs write them together; other fields between them are skipped when the list is
/// walked, as in the whole message), so that the walk of the attributes does not read
/// the record's other fields again.
#[derive(Default)]
struct Span {
    range: Option<(usize, usize)>,
}

impl Span {
    fn add(&mut self, start: usize, end: usize) {
        self.range = Some(self.range.map_or((start, end), |(s, _)| (s, end)));
    }

    fn attrs<'t, 'a>(&self, msg: &'a [u8], field: u32) -> Attrs<'t, 'a> {
        match self.range.and_then(|(s, e)| msg.get(s..e)) {
            Some(msg) => Attrs::Pb { msg, field },
            None => Attrs::None,
        }
    }
}
