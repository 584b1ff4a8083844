//! OTLP logs and traces into the event and payment envelopes (`docs/otlp.md`).
//!
//! An `ExportLogsServiceRequest` or `ExportTraceServiceRequest`, in protobuf ([`pb`], a
//! reader in place over the request bytes) or OTLP/JSON ([`json`], on simd-json's tape),
//! is walked record by record; each record is mapped ([`map`]) onto an [`Event`] of the
//! taxonomy or a custom one, a [`Payment`], or is no event at all and skipped. A record
//! that fails validation is rejected alone (OTLP's partial success); bytes that cannot be
//! decoded refuse the whole request. Responses are encoded by [`response`].
//!
//! [`Event`]: crate::envelope::Event
//! [`Payment`]: crate::envelope::Payment

pub mod any;
pub mod grpc;
pub mod json;
pub mod map;
pub mod occurrence;
pub mod pb;
pub mod props;
pub mod response;
pub mod wire;

use crate::envelope::{EventBatch, PaymentBatch};
use crate::validate::{BodyError, JsonBuffers};

pub use map::{Context, SpanEvents};

/// Which OTLP signal a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `/v1/logs`, `LogsService/Export`.
    Logs,
    /// `/v1/traces`, `TraceService/Export`.
    Traces,
}

/// How a request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json` (OTLP/JSON).
    Json,
}

impl Format {
    /// The format named by a `Content-Type` value (parameters ignored), if supported.
    pub fn from_content_type(ct: &str) -> Option<Format> {
        let media = ct.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/x-protobuf") || media.eq_ignore_ascii_case("application/protobuf") {
            Some(Format::Protobuf)
        } else if media.eq_ignore_ascii_case("application/json") {
            Some(Format::Json)
        } else {
            None
        }
    }

    /// The `Content-Type` of responses in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }
}

/// Why a request body could not be decoded at all (the whole request is refused, 400 /
/// `INVALID_ARGUMENT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Bad protobuf.
    Wire(wire::WireError),
    /// The JSON body could not be parsed.
    Body(BodyError),
    /// Well-formed JSON that is not OTLP/JSON.
    Json(&'static str),
    /// `AnyValue`s nested deeper than the limit.
    TooDeep(usize),
    /// An OTLP/JSON body nested deeper than its parser's bound (JSON levels, wherever
    /// they are: also in fields that are not read).
    JsonTooDeep(usize),
    /// More records than [`Limits::max_records`](crate::validate::Limits::max_records).
    TooManyRecords(usize),
}

impl From<wire::WireError> for DecodeError {
    fn from(e: wire::WireError) -> Self {
        DecodeError::Wire(e)
    }
}

impl From<BodyError> for DecodeError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooDeep(n) => DecodeError::TooDeep(n),
            e => DecodeError::Body(e),
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Wire(e) => e.fmt(f),
            DecodeError::Body(e) => e.fmt(f),
            DecodeError::Json(m) => write!(f, "not OTLP/JSON: {m}"),
            DecodeError::TooDeep(n) => write!(f, "values nest deeper than {n} levels"),
            DecodeError::JsonTooDeep(n) => write!(
                f,
                "the JSON body nests deeper than {n} levels, anywhere in it (also in fields not read; \
                 AnyValues nested 16 levels fit)"
            ),
            DecodeError::TooManyRecords(n) => write!(f, "request holds more than {n} records"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Where mapped records go: the request's batches, reused between requests.
#[derive(Debug)]
pub struct Sink<'o> {
    /// Events of the standard taxonomy.
    pub events: &'o mut EventBatch,
    /// Other events.
    pub custom: &'o mut EventBatch,
    /// Payments.
    pub payments: &'o mut PaymentBatch,
    /// A reused buffer for one record's `props`.
    pub props: &'o mut props::Props,
    /// A reused table of the request's log records, to number identical ones.
    pub seen: &'o mut occurrence::Occurrences,
}

/// What a request held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records (log records or spans) in the request.
    pub records: usize,
    /// Records that became events or payments.
    pub accepted: usize,
    /// Records refused by validation (OTLP's `rejected_log_records` / `rejected_spans`).
    pub rejected: usize,
    /// Records that are no analytics event (accepted by OTLP, not stored).
    pub skipped: usize,
    /// The first rejection: the record's position in the request and why.
    pub first_rejection: Option<(usize, &'static str)>,
    /// The mapped attribute the first rejection is about (`game.user_id`, ...), or "".
    pub first_attribute: &'static str,
}

/// Decodes a request of `signal` in `format` and maps its records into `out`. On error
/// the batches hold partial records and must be discarded.
pub fn decode(
    signal: Signal,
    format: Format,
    body: &mut [u8],
    ctx: &Context<'_>,
    json: &mut JsonBuffers,
    new_id: &mut dyn FnMut() -> [u8; 16],
    out: &mut Sink<'_>,
) -> Result<Summary, DecodeError> {
    out.seen.begin();
    let mut mapper = map::Mapper::new(ctx, new_id, out);
    match format {
        Format::Protobuf => pb::walk(signal, body, &mut mapper)?,
        Format::Json => json::walk(signal, body, ctx.limits, json, &mut mapper)?,
    }
    Ok(mapper.summary())
}

#[cfg(test)]
mod tests;
