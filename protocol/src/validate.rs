//! Request bodies into validated records.
//!
//! A body is a JSON array of objects, or an object `{"events": [...]}`. It is parsed
//! with simd-json in place (the request buffer is the parse buffer), then every record is
//! checked against the envelope of DESIGN §4. The first problem found is reported with the
//! record's index and the field's name; a batch is accepted or refused whole.

use simd_json::prelude::*;
use simd_json::tape::{Array, Node, Object, Tape, Value};

use crate::compact_json;
use crate::country;
use crate::envelope::{Event, EventBatch, Payment, PaymentBatch, PaymentStatus};
use crate::prescan;
use crate::stream::{route_event, StreamKind};
use crate::timestamp::{self, TimestampError};

/// Limits applied to a request body.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most records in one request.
    pub max_records: usize,
    /// Deepest nesting of arrays/objects in the body (the outer array counts as 1).
    pub max_depth: usize,
    /// Longest identifier-like string field, in bytes.
    pub max_field_bytes: usize,
    /// Longest `props` object, as compact JSON text, in bytes.
    pub max_props_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_records: 10_000, max_depth: 16, max_field_bytes: 256, max_props_bytes: 32 * 1024 }
    }
}

/// Largest accepted `amount_cents`: 10^12 minor units (ten billion of a currency with
/// cents). Bounded so that `sum(amount_cents)` over the `UInt64` column cannot wrap for
/// any realistic number of payments (it would take more than 18 million payments at the
/// cap), which one client with 2^64 - 1 could otherwise do alone.
pub const MAX_AMOUNT_CENTS: u64 = 1_000_000_000_000;

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A required field is absent or null.
    Missing,
    /// The field has the wrong JSON type; the expected type is named.
    WrongType(&'static str),
    /// The value has the right type but is not acceptable; says what was expected.
    Invalid(&'static str),
    /// The string is longer than the limit.
    TooLong(usize),
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON (the parser's message).
    Malformed(String),
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Nested deeper than [`Limits::max_depth`].
    TooDeep(usize),
    /// Neither an array nor an object with an `events` array.
    NotABatch,
    /// No records.
    Empty,
    /// More records than [`Limits::max_records`].
    TooManyRecords(usize),
    /// A record at `index` has a bad `field`.
    Field {
        /// Position of the record in the batch.
        index: usize,
        /// The field's name.
        field: &'static str,
        /// What is wrong.
        problem: Problem,
    },
    /// A record's `game_id` is not the game of the credential.
    GameMismatch {
        /// Position of the record in the batch.
        index: usize,
        /// The field as the record named it (`game_id`, or an alias such as `GameID`).
        field: &'static str,
    },
    /// A record the game's filters do not allow, where the filters refuse rather than
    /// drop (client ingest, `docs/sdk.md`).
    NotAllowed {
        /// Position of the record in the batch.
        index: usize,
        /// The field whose value the filters refuse (`event`, or `record` for a payment).
        field: &'static str,
    },
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Malformed(m) => write!(f, "body is not valid JSON: {m}"),
            BodyError::InvalidUtf8 => f.write_str("body is not valid UTF-8"),
            BodyError::TooDeep(max) => write!(f, "body nests deeper than {max} levels"),
            BodyError::NotABatch => f.write_str(r#"body must be a JSON array of objects or {"events":[...]}"#),
            BodyError::Empty => f.write_str("batch holds no records"),
            BodyError::TooManyRecords(max) => write!(f, "batch holds more than {max} records"),
            BodyError::Field { index, field, problem } => match problem {
                Problem::Missing => write!(f, "record {index}: field `{field}` is required"),
                Problem::WrongType(t) => write!(f, "record {index}: field `{field}` must be {t}"),
                Problem::Invalid(what) => write!(f, "record {index}: field `{field}` must be {what}"),
                Problem::TooLong(max) => write!(f, "record {index}: field `{field}` is longer than {max} bytes"),
            },
            BodyError::GameMismatch { index, field } => {
                write!(f, "record {index}: `{field}` differs from the game of the credential")
            }
            BodyError::NotAllowed { index, field } => {
                write!(f, "record {index}: `{field}` is not allowed by the game's filters")
            }
        }
    }
}

impl std::error::Error for BodyError {}

/// Checks the nesting depth of a parsed document on its tape: each array or object
/// node says how many nodes it spans, so one pass that knows where each open container
/// ends gives every node's depth. The innermost container's end is kept apart from the
/// stack of the outer ones' (the test per node is one comparison with a local); `open`
/// is reused scratch holding, per open container, the end of the one around it (so its
/// length is the depth), never more than `max_depth` entries.
fn check_depth(tape: &[Node<'_>], max_depth: usize, open: &mut Vec<usize>) -> Result<(), BodyError> {
    open.clear();
    // The last node of the innermost open container (none open: past every node).
    let mut end = usize::MAX;
    for (i, node) in tape.iter().enumerate() {
        while i > end {
            end = open.pop().unwrap_or(usize::MAX);
        }
        if let Node::Array { count, .. } | Node::Object { count, .. } = node {
            if open.len() == max_depth {
                return Err(BodyError::TooDeep(max_depth));
            }
            open.push(end);
            end = i + count;
        }
    }
    Ok(())
}

/// The buffers simd-json parses into, kept between requests so that parsing allocates
/// nothing once they have grown to the largest body seen. Keep one per shard.
pub struct JsonBuffers {
    buffers: simd_json::Buffers,
    tape: Tape<'static>,
    open: Vec<usize>,
    /// Length of the largest body parsed into `buffers` since they were made.
    parsed_for: usize,
    /// Records of the batch last parsed, once its list was read.
    batch_records: Option<usize>,
}

impl Default for JsonBuffers {
    fn default() -> Self {
        JsonBuffers {
            buffers: simd_json::Buffers::default(),
            tape: Tape(Vec::new()),
            open: Vec::new(),
            parsed_for: 0,
            batch_records: None,
        }
    }
}

impl JsonBuffers {
    /// How many records the batch last parsed held, when the parse read its list (`None`
    /// when it was refused before: too large, not JSON, not a batch) — what a refusal of
    /// one of its records counts as refused.
    pub fn batch_records(&self) -> Option<usize> {
        self.batch_records
    }

    /// About how many bytes the buffers hold on to between requests: the tape, the
    /// depth check's stack, and simd-json's buffers (sized by the largest body parsed since
    /// they were last let go: its copy, its unescaped strings and up to 4 bytes of
    /// structural index per byte).
    pub fn retained_bytes(&self) -> usize {
        self.tape.0.capacity() * std::mem::size_of::<Node<'static>>()
            + self.open.capacity() * std::mem::size_of::<usize>()
            + self.parsed_for.saturating_mul(6)
    }
}

impl std::fmt::Debug for JsonBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonBuffers").field("tape_nodes", &self.tape.0.capacity()).finish()
    }
}

/// Bodies at least this large keep their parse buffers only until the next parse: a
/// typical request (about 30 KB) is far below, so they are reused, and one large request
/// does not pin its buffers for good.
const KEEP_PARSED_BYTES: usize = 1 << 20;
/// Tape nodes kept between requests (a 30 KB batch of 100 events needs about 3 000).
const KEEP_TAPE_NODES: usize = 1 << 16;

impl JsonBuffers {
    /// Lets go of what a large body grew past what typical requests need.
    fn trim(&mut self) {
        if self.parsed_for >= KEEP_PARSED_BYTES {
            self.buffers = simd_json::Buffers::default();
            self.parsed_for = 0;
        }
        if self.tape.0.capacity() > KEEP_TAPE_NODES {
            self.tape = Tape(Vec::new());
        }
    }
}

/// Refuses a batch body with more than `max_records` records before it is parsed (an
/// upper bound, from a scan that costs far less than the parse and runs on large bodies
/// only).
fn count_records(body: &[u8], limits: &Limits) -> Result<(), BodyError> {
    if prescan::records_may_exceed(body, limits.max_records) {
        return Err(BodyError::TooManyRecords(limits.max_records));
    }
    Ok(())
}

/// Refuses lone surrogate escapes, which simd-json would turn into U+0000.
fn check_surrogates(body: &[u8]) -> Result<(), BodyError> {
    match prescan::lone_surrogate(body) {
        None => Ok(()),
        Some(at) => Err(BodyError::Malformed(format!(
            "lone UTF-16 surrogate escape at byte {at} (a \\uD800-\\uDBFF escape must be followed by a \\uDC00-\\uDFFF one)"
        ))),
    }
}

/// The first raw control character (U+0000 to U+001F) inside a JSON string of `body`, and
/// its offset: JSON wants them escaped. Read only when a parse has failed.
fn raw_control_in_string(body: &[u8]) -> Option<(usize, u8)> {
    let (mut in_string, mut escaped) = (false, false);
    for (at, &b) in body.iter().enumerate() {
        if !in_string {
            in_string = b == b'"';
        } else if escaped {
            escaped = false;
        } else if b < 0x20 {
            return Some((at, b));
        } else {
            escaped = b == b'\\';
            in_string = b != b'"';
        }
    }
    None
}

/// Parses `body` in place into the reused tape and hands its root to `f`.
pub(crate) fn with_root<R, E: From<BodyError>>(
    body: &mut [u8],
    limits: &Limits,
    bufs: &mut JsonBuffers,
    f: impl for<'t, 'a> FnOnce(Value<'t, 'a>) -> Result<R, E>,
) -> Result<R, E> {
    check_surrogates(body)?;
    if prescan::nesting_exceeds(body, limits.max_depth) {
        return Err(BodyError::TooDeep(limits.max_depth).into());
    }
    bufs.parsed_for = bufs.parsed_for.max(body.len());
    let parsed = {
        let mut tape = std::mem::replace(&mut bufs.tape, Tape(Vec::new())).reset();
        let res = match simd_json::fill_tape(&mut *body, &mut bufs.buffers, &mut tape) {
            Ok(()) => Ok(match check_depth(&tape.0, limits.max_depth, &mut bufs.open) {
                Ok(()) => f(tape.as_value()),
                Err(e) => Err(e.into()),
            }),
            Err(e) => Err(e),
        };
        bufs.tape = tape.reset();
        res
    };
    bufs.trim();
    parsed.unwrap_or_else(|e| Err(parse_error(&e, body).into()))
}

/// What a failed parse of `body` is answered with.
fn parse_error(e: &simd_json::Error, body: &[u8]) -> BodyError {
    match e.error() {
        simd_json::ErrorType::InvalidUtf8 => BodyError::InvalidUtf8,
        // simd-json's first stage finds a raw control character in a string without
        // saying where ("Syntax at character 0"); it has not changed the body by then
        // (the second stage unescapes strings in place: its errors say where they are).
        simd_json::ErrorType::Syntax if e.index() == 0 => match raw_control_in_string(body) {
            Some((at, c)) => BodyError::Malformed(format!(
                "unescaped control character U+{c:04X} in a string at byte {at} (write it as \\u{c:04x})"
            )),
            None => BodyError::Malformed(e.to_string()),
        },
        // The parser says the same of a malformed number (`01`, `1.`, `-`) and of one no
        // double holds (JSON itself has no bound; an integer past 64 bits is read as a
        // double, as JavaScript reads it).
        simd_json::ErrorType::InvalidNumber | simd_json::ErrorType::InvalidExponent => BodyError::Malformed(format!(
            "a number malformed or out of range near character {} (numbers are taken as 64-bit integers or as doubles up to about 1.8e308; send larger ones as strings)",
            e.index()
        )),
        _ => BodyError::Malformed(e.to_string()),
    }
}

/// [`with_root`] for a batch body: `f` gets its records (refused beyond
/// [`Limits::max_records`], first by a scan of the bytes), whose count is kept in `bufs`
/// ([`JsonBuffers::batch_records`]).
fn with_batch<R>(
    body: &mut [u8],
    limits: &Limits,
    bufs: &mut JsonBuffers,
    f: impl for<'t, 'a> FnOnce(Array<'t, 'a>) -> Result<R, BodyError>,
) -> Result<R, BodyError> {
    bufs.batch_records = None;
    count_records(body, limits)?;
    let mut seen = None;
    let out = with_root(body, limits, bufs, |root| {
        let list = records(root, limits)?;
        seen = Some(list.len());
        f(list)
    });
    bufs.batch_records = seen;
    out
}

fn records<'t, 'a>(root: Value<'t, 'a>, limits: &Limits) -> Result<Array<'t, 'a>, BodyError> {
    let arr = match root.as_array() {
        Some(a) => a,
        None => {
            let o = root.as_object().ok_or(BodyError::NotABatch)?;
            // Given twice, parsers differ on which counts (see `Rec::read`).
            if o.iter().filter(|(k, _)| *k == "events").count() > 1 {
                return Err(BodyError::Malformed("the key `events` is given twice".into()));
            }
            o.get("events").and_then(|v| v.as_array()).ok_or(BodyError::NotABatch)?
        }
    };
    if arr.is_empty() {
        return Err(BodyError::Empty);
    }
    if arr.len() > limits.max_records {
        return Err(BodyError::TooManyRecords(limits.max_records));
    }
    Ok(arr)
}

/// A country code held without allocating: two letters, or empty.
#[derive(Debug, Clone, Copy, Default)]
struct CountryCode {
    code: [u8; 2],
    len: usize,
}

impl std::ops::Deref for CountryCode {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.code[..self.len]
    }
}

/// Every field name a record may have; a record's fields are looked up once, in one pass
/// over its keys, into slots in this order.
const KNOWN_FIELDS: [&str; 21] = [
    "ts",
    "game_id",
    "env",
    "event",
    "user_id",
    "session_id",
    "device_id",
    "channel",
    "platform",
    "country",
    "app_version",
    "event_id",
    "props",
    "order_id",
    "amount_cents",
    "currency",
    "status",
    "region",
    "city",
    "product_id",
    "reason",
];

// A record's fields seen are a bit each in a `u32` (`Rec::read`).
const _: () = assert!(KNOWN_FIELDS.len() <= 32);

/// Slot of each field in [`KNOWN_FIELDS`], so a record's fields are read by index.
mod f {
    /// `ts`
    pub const TS: usize = 0;
    /// `game_id`
    pub const GAME_ID: usize = 1;
    /// `env`
    pub const ENV: usize = 2;
    /// `event`
    pub const EVENT: usize = 3;
    /// `user_id`
    pub const USER_ID: usize = 4;
    /// `session_id`
    pub const SESSION_ID: usize = 5;
    /// `device_id`
    pub const DEVICE_ID: usize = 6;
    /// `channel`
    pub const CHANNEL: usize = 7;
    /// `platform`
    pub const PLATFORM: usize = 8;
    /// `country`
    pub const COUNTRY: usize = 9;
    /// `app_version`
    pub const APP_VERSION: usize = 10;
    /// `event_id`
    pub const EVENT_ID: usize = 11;
    /// `props`
    pub const PROPS: usize = 12;
    /// `order_id`
    pub const ORDER_ID: usize = 13;
    /// `amount_cents`
    pub const AMOUNT_CENTS: usize = 14;
    /// `currency`
    pub const CURRENCY: usize = 15;
    /// `status`
    pub const STATUS: usize = 16;
    /// `region`
    pub const REGION: usize = 17;
    /// `city`
    pub const CITY: usize = 18;
    /// `product_id`
    pub const PRODUCT_ID: usize = 19;
    /// `reason`
    pub const REASON: usize = 20;
}

/// What a record's key names: a field (its slot in [`KNOWN_FIELDS`]), under its own name
/// (`alias` [`OWN_NAME`]) or under one of Croupier's other names for it (`alias` its index
/// in [`ALIASES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Named {
    slot: usize,
    alias: u8,
}

/// [`Named::alias`] of a field given under its own name.
const OWN_NAME: u8 = u8::MAX;

/// What a key names: a `match`, which the compiler turns into a switch on the length and
/// a comparison with the few names of that length (a search of the table compared each
/// name in turn; the aliases are in the same `match`, so they cost a record nothing).
/// `field_slots_match_the_table` checks it against [`KNOWN_FIELDS`] and [`ALIASES`].
fn slot_of(key: &str) -> Option<Named> {
    let own = |slot| Named { slot, alias: OWN_NAME };
    let alias = |slot, alias| Named { slot, alias };
    Some(match key {
        "ts" => own(f::TS),
        "game_id" => own(f::GAME_ID),
        "env" => own(f::ENV),
        "event" => own(f::EVENT),
        "user_id" => own(f::USER_ID),
        "session_id" => own(f::SESSION_ID),
        "device_id" => own(f::DEVICE_ID),
        "channel" => own(f::CHANNEL),
        "platform" => own(f::PLATFORM),
        "country" => own(f::COUNTRY),
        "app_version" => own(f::APP_VERSION),
        "event_id" => own(f::EVENT_ID),
        "props" => own(f::PROPS),
        "order_id" => own(f::ORDER_ID),
        "amount_cents" => own(f::AMOUNT_CENTS),
        "currency" => own(f::CURRENCY),
        "status" => own(f::STATUS),
        "region" => own(f::REGION),
        "city" => own(f::CITY),
        "product_id" => own(f::PRODUCT_ID),
        "reason" => own(f::REASON),
        "attrs" => alias(f::PROPS, 0),
        "properties" => alias(f::PROPS, 1),
        "Properties" => alias(f::PROPS, 2),
        "uid" => alias(f::USER_ID, 3),
        "UserID" => alias(f::USER_ID, 4),
        "EventName" => alias(f::EVENT, 5),
        "GameID" => alias(f::GAME_ID, 6),
        "Environment" => alias(f::ENV, 7),
        "SessionID" => alias(f::SESSION_ID, 8),
        "DeviceID" => alias(f::DEVICE_ID, 9),
        "Platform" => alias(f::PLATFORM, 10),
        "AppVersion" => alias(f::APP_VERSION, 11),
        "Timestamp" => alias(f::TS, 12),
        _ => return None,
    })
}

/// Other names Croupier's client SDKs give record fields, in [`Named::alias`] order, each
/// with the slot it fills: `attrs` (its JS/H5 SDK's documentation), `properties` and `uid`
/// (the superset a compatible server accepts), and the PascalCase fields its Unity SDK's
/// documentation serialises. A field's own name wins over its aliases when it gives a
/// value (`null` and `""` give none: [`absent`]), and an alias earlier in this list over a
/// later one; an alias whose value is not of the field's type
/// (`"uid": 7`, `"attrs": "x"`) is ignored, as any unknown field is: a record that was
/// valid without them stays valid. An alias, as a field, given twice is refused.
const ALIASES: [(&str, usize); 13] = [
    ("attrs", f::PROPS),
    ("properties", f::PROPS),
    ("Properties", f::PROPS),
    ("uid", f::USER_ID),
    ("UserID", f::USER_ID),
    ("EventName", f::EVENT),
    ("GameID", f::GAME_ID),
    ("Environment", f::ENV),
    ("SessionID", f::SESSION_ID),
    ("DeviceID", f::DEVICE_ID),
    ("Platform", f::PLATFORM),
    ("AppVersion", f::APP_VERSION),
    ("Timestamp", f::TS),
];

// The aliases seen in a record are a bit each in a `u16`.
const _: () = assert!(ALIASES.len() <= 16);

/// Whether `v` gives no value: `null`, or `""` (an optional text field's absence).
fn absent(v: &Value<'_, '_>) -> bool {
    v.as_null().is_some() || v.as_str() == Some("")
}

/// Whether `v` is of the type field `slot` takes.
fn fits(slot: usize, v: &Value<'_, '_>) -> bool {
    match slot {
        f::PROPS => v.as_object().is_some(),
        f::TS => v.as_str().is_some() || v.as_f64().is_some() || v.as_u64().is_some() || v.as_i64().is_some(),
        _ => v.as_str().is_some(),
    }
}

/// Field accessor for one record, carrying its index for error reports. Strings borrow
/// the request buffer (`'v`).
///
/// A batch's records are read into one `Rec` in turn ([`Rec::read`]): its slots are some
/// 350 bytes, which a `Rec` returned by value per record would copy twice.
struct Rec<'t, 'v> {
    index: usize,
    fields: [Option<Value<'t, 'v>>; KNOWN_FIELDS.len()],
    /// The slots this record gave under an alias (a bit each), and which alias: errors
    /// name the field as the record did.
    aliased: u32,
    alias: [u8; KNOWN_FIELDS.len()],
    /// Whether the scope's `env` filled a record read into this `Rec` (kept across the
    /// batch's records).
    env_filled: std::cell::Cell<bool>,
    limits: Limits,
}

impl<'t, 'v> Rec<'t, 'v> {
    /// A record holding no fields yet.
    fn empty(limits: &Limits) -> Self {
        Rec {
            index: 0,
            fields: [None; KNOWN_FIELDS.len()],
            aliased: 0,
            alias: [0; KNOWN_FIELDS.len()],
            env_filled: std::cell::Cell::new(false),
            limits: *limits,
        }
    }

    /// One record, read into a new `Rec`.
    fn new(index: usize, value: Value<'t, 'v>, limits: &Limits) -> Result<Self, BodyError> {
        let mut r = Rec::empty(limits);
        r.read(index, value)?;
        Ok(r)
    }

    /// Makes this the record `value`, the `index`th of its batch, in place.
    fn read(&mut self, index: usize, value: Value<'t, 'v>) -> Result<(), BodyError> {
        self.index = index;
        let obj: Object<'t, 'v> = value.as_object().ok_or(BodyError::Field {
            index,
            field: "record",
            problem: Problem::WrongType("an object"),
        })?;
        self.fields = [None; KNOWN_FIELDS.len()];
        self.aliased = 0;
        // Unknown fields are ignored. A known field given twice is refused: parsers differ
        // on which of the two counts (the first, the last), and a proxy or a tool reading
        // the body must not see another game or event than the one stored. Under another
        // of its names it is not refused (see `ALIASES`).
        let (mut seen, mut seen_aliases) = (0u32, 0u16);
        for (k, v) in obj.iter() {
            let Some(Named { slot: i, alias }) = slot_of(k) else { continue };
            if alias == OWN_NAME {
                if seen & (1 << i) != 0 {
                    return Err(BodyError::Field {
                        index,
                        field: KNOWN_FIELDS[i],
                        problem: Problem::Invalid("given once"),
                    });
                }
                seen |= 1 << i;
                if self.aliased & (1 << i) != 0 {
                    // `null` or `""` is an absent field: the alias given before stays.
                    if absent(&v) {
                        continue;
                    }
                    self.aliased &= !(1 << i);
                }
            } else {
                if seen_aliases & (1 << alias) != 0 {
                    let field = ALIASES[alias as usize].0;
                    return Err(BodyError::Field { index, field, problem: Problem::Invalid("given once") });
                }
                seen_aliases |= 1 << alias;
                let earlier = self.aliased & (1 << i) != 0 && self.alias[i] < alias;
                // The field's own name wins when it gave a value (`null` or `""` is none).
                let own =
                    seen & (1 << i) != 0 && self.aliased & (1 << i) == 0 && self.fields[i].is_some_and(|v| !absent(&v));
                if own || earlier || absent(&v) || !fits(i, &v) {
                    continue;
                }
                self.aliased |= 1 << i;
                self.alias[i] = alias;
            }
            self.fields[i] = if v.as_null().is_none() { Some(v) } else { None };
        }
        Ok(())
    }

    /// A refusal of the field in `slot`, named as the record gave it.
    fn err(&self, slot: usize, problem: Problem) -> BodyError {
        BodyError::Field { index: self.index, field: self.name(slot), problem }
    }

    /// The name the record gave the field in `slot` (its own, or the alias it used).
    fn name(&self, slot: usize) -> &'static str {
        match self.aliased & (1 << slot) != 0 {
            true => ALIASES[self.alias[slot] as usize].0,
            false => KNOWN_FIELDS[slot],
        }
    }

    fn get(&self, slot: usize) -> Option<Value<'t, 'v>> {
        self.fields.get(slot).copied().flatten()
    }

    fn opt_str(&self, slot: usize) -> Result<&'v str, BodyError> {
        match self.get(slot) {
            None => Ok(""),
            Some(v) => {
                let s = v.into_string().ok_or_else(|| self.err(slot, Problem::WrongType("a string")))?;
                if s.len() > self.limits.max_field_bytes {
                    return Err(self.err(slot, Problem::TooLong(self.limits.max_field_bytes)));
                }
                Ok(s)
            }
        }
    }

    fn req_str(&self, slot: usize) -> Result<&'v str, BodyError> {
        let s = self.opt_str(slot)?;
        if s.is_empty() {
            return Err(self.err(slot, Problem::Missing));
        }
        Ok(s)
    }

    /// The record's game, which must be `game` when one is given.
    fn game(&self, game: Option<&str>) -> Result<&'v str, BodyError> {
        let g = self.req_str(f::GAME_ID)?;
        if game.is_some_and(|want| g != want) {
            return Err(BodyError::GameMismatch { index: self.index, field: self.name(f::GAME_ID) });
        }
        Ok(g)
    }

    /// The record's game under `scope`: filled from it when absent and filling is on,
    /// else as [`Rec::game`]; with no scope game, the first record's game is the batch's
    /// (`first`), which every later record must have.
    fn scoped_game<'a>(&self, scope: &Scope<'a>, first: &mut Option<&'a str>) -> Result<&'a str, BodyError>
    where
        'v: 'a,
    {
        let want = scope.game.or(*first);
        let g: &'a str = match (self.opt_str(f::GAME_ID)?, want) {
            ("", Some(w)) if scope.fill_game => w,
            _ => self.game(want)?,
        };
        first.get_or_insert(g);
        Ok(g)
    }

    /// The record's `env`, filled from `scope` when absent; and whether it was.
    fn scoped_env<'a>(&self, scope: &Scope<'a>) -> Result<(&'a str, bool), BodyError>
    where
        'v: 'a,
    {
        match (self.opt_str(f::ENV)?, scope.env) {
            // The header's value is held to the record field's bound: it fills every
            // record, so an unbounded one would multiply a small request.
            ("", Some(e)) if e.len() > self.limits.max_field_bytes => {
                Err(self.err(f::ENV, Problem::TooLong(self.limits.max_field_bytes)))
            }
            ("", Some(e)) if !e.is_empty() => {
                self.env_filled.set(true);
                Ok((e, true))
            }
            _ => self.req_str(f::ENV).map(|e| (e, false)),
        }
    }

    fn ts(&self) -> Result<i64, BodyError> {
        let v = self.get(f::TS).ok_or_else(|| self.err(f::TS, Problem::Missing))?;
        let r = if let Some(s) = v.as_str() {
            timestamp::parse_str(s)
        } else if let Some(i) = v.as_i64() {
            timestamp::from_unix_int(i)
        } else if let Some(f) = v.as_f64() {
            timestamp::from_unix_float(f)
        } else if v.as_u64().is_some() {
            // A whole number past `i64`: a number, out of range.
            Err(TimestampError::OutOfRange)
        } else {
            return Err(self.err(f::TS, Problem::WrongType("a string or a number")));
        };
        r.map_err(|e| match e {
            TimestampError::Format => {
                self.err(f::TS, Problem::Invalid("RFC 3339, `YYYY-MM-DD HH:MM:SS` or unix seconds/milliseconds"))
            }
            TimestampError::OutOfRange => self.err(f::TS, Problem::Invalid("a time between 2000 and 2100")),
        })
    }

    /// The upper-case country code, or empty.
    fn country(&self) -> Result<CountryCode, BodyError> {
        let c = self.opt_str(f::COUNTRY)?;
        if c.is_empty() {
            return Ok(CountryCode::default());
        }
        let code =
            country::normalize(c).ok_or_else(|| self.err(f::COUNTRY, Problem::Invalid("an ISO-3166 alpha-2 code")))?;
        Ok(CountryCode { code, len: 2 })
    }
}

/// Validates a body of game events for `game`.
///
/// Events of the standard taxonomy are appended to `events`, the others to `custom`.
/// Events without `event_id` get one from `new_id`. On error the batches hold partial
/// records and must be discarded (a batch is accepted or refused whole).
pub fn parse_events(
    body: &mut [u8],
    game: &str,
    limits: &Limits,
    new_id: &mut dyn FnMut() -> [u8; 16],
    events: &mut EventBatch,
    custom: &mut EventBatch,
) -> Result<(), BodyError> {
    parse_events_in(&mut JsonBuffers::default(), body, game, limits, new_id, events, custom)
}

/// [`parse_events`] with reused parse buffers: no allocation per event once the buffers
/// and batches have grown.
pub fn parse_events_in(
    bufs: &mut JsonBuffers,
    body: &mut [u8],
    game: &str,
    limits: &Limits,
    new_id: &mut dyn FnMut() -> [u8; 16],
    events: &mut EventBatch,
    custom: &mut EventBatch,
) -> Result<(), BodyError> {
    with_batch(body, limits, bufs, |list| {
        let mut r = Rec::empty(limits);
        for (index, v) in list.iter().enumerate() {
            r.read(index, v)?;
            let name = event_name(&r)?;
            let out = match route_event(name) {
                StreamKind::Events => &mut *events,
                _ => &mut *custom,
            };
            event_record(&r, name, Some(game), new_id, out)?;
        }
        Ok(())
    })
}

/// Which game a batch's records belong to, and what fills the fields they leave out
/// (client ingest's `X-Game-ID`/`X-Env`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    /// The credential's game: every record's `game_id` must be it. `None`: the first
    /// record's `game_id` is the batch's game.
    pub game: Option<&'a str>,
    /// A record without `game_id` gets `game` (when there is one).
    pub fill_game: bool,
    /// A record without `env` gets this one.
    pub env: Option<&'a str>,
}

/// What a record looks like to a filter, once it is valid.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'r> {
    /// `game_id`.
    pub game: &'r str,
    /// `env`.
    pub env: &'r str,
    /// `event` (empty for a payment).
    pub event: &'r str,
    /// `user_id`.
    pub user_id: &'r str,
    /// `device_id` (empty for a payment).
    pub device_id: &'r str,
    /// `session_id` (empty for a payment).
    pub session_id: &'r str,
    /// The event id (given or derived; zero for a payment).
    pub event_id: [u8; 16],
}

/// A filter's word on a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Stored.
    Keep,
    /// Left out; the rest of the batch is stored.
    Drop,
    /// The whole batch is refused ([`BodyError::NotAllowed`]).
    Refuse,
}

/// What a scoped parse found besides the records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scoped {
    /// The batch's game, when the scope named none (the first record's).
    pub game: Option<String>,
    /// Valid records the filter dropped.
    pub dropped: usize,
    /// Whether the scope's `env` filled some record (else the same records sent without
    /// it are the same request).
    pub env_filled: bool,
}

/// A filter that keeps every record.
pub fn keep_all(_: &RecordView<'_>) -> Verdict {
    Verdict::Keep
}

/// [`parse_events_in`] under a [`Scope`], each valid record put to `keep` before it is
/// stored (client ingest: the game's filters and sampling). An event without `event_id`
/// gets `new_id(filled)`, `filled` the scope's `env` when it filled the record's: the same
/// body filled with another `env` holds other records, which must not share ids.
#[allow(clippy::too_many_arguments)]
pub fn parse_events_scoped(
    bufs: &mut JsonBuffers,
    body: &mut [u8],
    scope: &Scope<'_>,
    limits: &Limits,
    new_id: &mut dyn FnMut(Option<&str>) -> [u8; 16],
    keep: &mut dyn FnMut(&RecordView<'_>) -> Verdict,
    events: &mut EventBatch,
    custom: &mut EventBatch,
) -> Result<Scoped, BodyError> {
    with_batch(body, limits, bufs, |list| {
        let mut first = None;
        let mut dropped = 0;
        let mut records = 0;
        let mut r = Rec::empty(limits);
        for (index, v) in list.iter().enumerate() {
            // Croupier's route skips `null` elements; errors still count the batch's places.
            if v.as_null().is_some() {
                continue;
            }
            records += 1;
            r.read(index, v)?;
            let name = event_name(&r)?;
            let out = match route_event(name) {
                StreamKind::Events => &mut *events,
                _ => &mut *custom,
            };
            if !event_record_scoped(&r, name, scope, &mut first, new_id, keep, out)? {
                dropped += 1;
            }
        }
        scoped(scope, first, dropped, records, &r)
    })
}

/// What a scoped parse of `records` records (`null` elements left out) found: the batch's
/// game when the scope named none (`first`), the records `dropped`, and whether the
/// scope's env filled one (kept by `r`); a batch of `null`s alone holds no record.
fn scoped(
    scope: &Scope<'_>,
    first: Option<&str>,
    dropped: usize,
    records: usize,
    r: &Rec<'_, '_>,
) -> Result<Scoped, BodyError> {
    if records == 0 {
        return Err(BodyError::Empty);
    }
    Ok(Scoped {
        game: if scope.game.is_none() { first.map(str::to_owned) } else { None },
        dropped,
        env_filled: r.env_filled.get(),
    })
}

/// [`parse_payments_in`] under a [`Scope`], each valid payment put to `keep`.
pub fn parse_payments_scoped(
    bufs: &mut JsonBuffers,
    body: &mut [u8],
    scope: &Scope<'_>,
    limits: &Limits,
    keep: &mut dyn FnMut(&RecordView<'_>) -> Verdict,
    out: &mut PaymentBatch,
) -> Result<Scoped, BodyError> {
    with_batch(body, limits, bufs, |list| {
        let mut first = None;
        let mut dropped = 0;
        let mut records = 0;
        let mut r = Rec::empty(limits);
        for (index, v) in list.iter().enumerate() {
            if v.as_null().is_some() {
                continue;
            }
            records += 1;
            r.read(index, v)?;
            let p = out.next_to_fill();
            payment_fields(&r, scope, &mut first, p)?;
            let view = RecordView {
                game: &p.game_id,
                env: &p.env,
                event: "",
                user_id: &p.user_id,
                device_id: "",
                session_id: "",
                event_id: [0; 16],
            };
            match keep(&view) {
                Verdict::Keep => {}
                Verdict::Drop => {
                    out.drop_last();
                    dropped += 1;
                }
                Verdict::Refuse => return Err(BodyError::NotAllowed { index, field: "record" }),
            }
        }
        scoped(scope, first, dropped, records, &r)
    })
}

/// Validates one event given as a JSON object (a Croupier-format stream entry), of any
/// game. An event without `event_id` gets `fallback_id`.
pub fn parse_event_object(json: &mut [u8], limits: &Limits, fallback_id: [u8; 16]) -> Result<Event, BodyError> {
    with_root(json, limits, &mut JsonBuffers::default(), |root| {
        let r = Rec::new(0, root, limits)?;
        let name = event_name(&r)?;
        let mut one = EventBatch::default();
        event_record(&r, name, None, &mut || fallback_id, &mut one)?;
        Ok(one.get(0))
    })
}

/// Validates one payment given as a JSON object (a Croupier-format stream entry).
pub fn parse_payment_object(json: &mut [u8], limits: &Limits) -> Result<Payment, BodyError> {
    with_root(json, limits, &mut JsonBuffers::default(), |root| {
        let mut p = Payment::default();
        payment_record(&Rec::new(0, root, limits)?, None, &mut p)?;
        Ok(p)
    })
}

fn event_name<'v>(r: &Rec<'v, '_>) -> Result<&'v str, BodyError> {
    let name = r.req_str(f::EVENT)?;
    if name.len() > 128 {
        return Err(r.err(f::EVENT, Problem::TooLong(128)));
    }
    Ok(name)
}

/// Validates the record and appends it to `out`, field by field in storage order.
fn event_record(
    r: &Rec<'_, '_>,
    name: &str,
    game: Option<&str>,
    new_id: &mut dyn FnMut() -> [u8; 16],
    out: &mut EventBatch,
) -> Result<(), BodyError> {
    let scope = Scope { game, fill_game: false, env: None };
    event_record_scoped(r, name, &scope, &mut None, &mut |_| new_id(), &mut keep_all, out).map(|_| ())
}

/// [`event_record`] under `scope`, appended only if `keep` keeps it (whether it did).
#[allow(clippy::too_many_arguments)]
fn event_record_scoped<'a, 'v: 'a>(
    r: &Rec<'_, 'v>,
    name: &str,
    scope: &Scope<'a>,
    first: &mut Option<&'a str>,
    new_id: &mut dyn FnMut(Option<&str>) -> [u8; 16],
    keep: &mut dyn FnMut(&RecordView<'_>) -> Verdict,
    out: &mut EventBatch,
) -> Result<bool, BodyError> {
    let limits = r.limits;
    let ts_ms = r.ts()?;
    let given = match r.opt_str(f::EVENT_ID)? {
        "" => None,
        s => Some(*uuid::Uuid::try_parse(s).map_err(|_| r.err(f::EVENT_ID, Problem::Invalid("a UUID")))?.as_bytes()),
    };
    let game_id = r.scoped_game(scope, first)?;
    let (env, filled) = r.scoped_env(scope)?;
    let event_id = given.unwrap_or_else(|| new_id(filled.then_some(env)));
    let country = r.country()?;
    let props = match r.get(f::PROPS) {
        None => None,
        Some(p) if p.as_object().is_some() => Some(p),
        Some(_) => return Err(r.err(f::PROPS, Problem::WrongType("an object"))),
    };
    let user_id = r.opt_str(f::USER_ID)?;
    let (device_id, session_id) = (r.opt_str(f::DEVICE_ID)?, r.opt_str(f::SESSION_ID)?);
    match keep(&RecordView { game: game_id, env, event: name, user_id, device_id, session_id, event_id }) {
        Verdict::Keep => {}
        Verdict::Drop => return Ok(false),
        Verdict::Refuse => return Err(BodyError::NotAllowed { index: r.index, field: "event" }),
    }
    let mut w = out.writer();
    w.field(game_id);
    w.field(env);
    w.field(name);
    w.field(user_id);
    w.field(r.opt_str(f::SESSION_ID)?);
    w.field(r.opt_str(f::DEVICE_ID)?);
    w.field(r.opt_str(f::CHANNEL)?);
    w.field(r.opt_str(f::PLATFORM)?);
    w.field(std::str::from_utf8(&country).unwrap_or(""));
    w.field(r.opt_str(f::APP_VERSION)?);
    match props {
        None => w.field("{}"),
        Some(p) => {
            // Written as compact text straight into the batch's text; refused as soon
            // as it is too long (the request is refused whole, its batch let go).
            let mut long = false;
            w.field_with(|text| {
                let end = text.len().saturating_add(limits.max_props_bytes);
                long = !compact_json::write_within(p, text, end);
            });
            if long {
                return Err(r.err(f::PROPS, Problem::TooLong(limits.max_props_bytes)));
            }
        }
    }
    // Unreachable within the body limits (the text is at most the body's size), but the
    // offsets are u32 and are checked rather than cut.
    w.finish(ts_ms, event_id).map_err(|_| BodyError::Field {
        index: r.index,
        field: "record",
        problem: Problem::TooLong(u32::MAX as usize),
    })?;
    Ok(true)
}

/// A stable event id for a stream entry written without one (by another producer):
/// derived from the key it was read from (a stream's, or a partition's) and its entry ID,
/// so every redelivery gets the same id.
pub fn derived_event_id(stream: &str, entry_id: &str) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let digest =
        Sha256::new().chain_update(stream.as_bytes()).chain_update(b"/").chain_update(entry_id.as_bytes()).finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id[6] = (id[6] & 0x0f) | 0x80; // version 8: custom
    id[8] = (id[8] & 0x3f) | 0x80; // RFC 4122 variant
    id
}

/// Validates a body of payments for `game`, appending them to `out`.
pub fn parse_payments(body: &mut [u8], game: &str, limits: &Limits, out: &mut Vec<Payment>) -> Result<(), BodyError> {
    let mut batch = PaymentBatch::default();
    parse_payments_in(&mut JsonBuffers::default(), body, game, limits, &mut batch)?;
    out.extend(batch.take());
    Ok(())
}

/// [`parse_payments`] with reused parse buffers and a reused batch: no allocation per
/// payment once they have grown. On error the batch holds partial records and must be
/// discarded.
pub fn parse_payments_in(
    bufs: &mut JsonBuffers,
    body: &mut [u8],
    game: &str,
    limits: &Limits,
    out: &mut PaymentBatch,
) -> Result<(), BodyError> {
    with_batch(body, limits, bufs, |list| {
        let mut r = Rec::empty(limits);
        for (index, v) in list.iter().enumerate() {
            r.read(index, v)?;
            payment_record(&r, Some(game), out.next_to_fill())?;
        }
        Ok(())
    })
}

/// Replaces `to`'s text with `from`, keeping its buffer.
fn set(to: &mut String, from: &str) {
    to.clear();
    to.push_str(from);
}

/// Validates the record into `p`, every field overwritten.
fn payment_record(r: &Rec<'_, '_>, game: Option<&str>, p: &mut Payment) -> Result<(), BodyError> {
    payment_fields(r, &Scope { game, fill_game: false, env: None }, &mut None, p)
}

/// [`payment_record`] under `scope`.
fn payment_fields<'a, 'v: 'a>(
    r: &Rec<'_, 'v>,
    scope: &Scope<'a>,
    first: &mut Option<&'a str>,
    p: &mut Payment,
) -> Result<(), BodyError> {
    let amount = r.get(f::AMOUNT_CENTS).ok_or_else(|| r.err(f::AMOUNT_CENTS, Problem::Missing))?;
    p.amount_cents = match (amount.as_u64(), amount.as_i64()) {
        (Some(a), _) if a > 0 && a <= MAX_AMOUNT_CENTS => a,
        // A whole double too (`1e13`, or an integer past 64 bits, read as one): out of range.
        (Some(_), _) | (None, Some(_)) => {
            return Err(r.err(f::AMOUNT_CENTS, Problem::Invalid("an integer from 1 to 1000000000000 (10^12)")))
        }
        _ if amount.as_f64().is_some_and(|d| d.fract() == 0.0 && d.abs() > MAX_AMOUNT_CENTS as f64) => {
            return Err(r.err(f::AMOUNT_CENTS, Problem::Invalid("an integer from 1 to 1000000000000 (10^12)")))
        }
        _ => return Err(r.err(f::AMOUNT_CENTS, Problem::WrongType("an integer"))),
    };
    let currency = r.req_str(f::CURRENCY)?;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(r.err(f::CURRENCY, Problem::Invalid("three upper-case letters (ISO 4217)")));
    }
    set(&mut p.currency, currency);
    p.status = PaymentStatus::parse(r.req_str(f::STATUS)?)
        .ok_or_else(|| r.err(f::STATUS, Problem::Invalid("one of success, refunded (or refund), failed")))?;
    p.ts_ms = r.ts()?;
    set(&mut p.game_id, r.scoped_game(scope, first)?);
    set(&mut p.env, r.scoped_env(scope)?.0);
    set(&mut p.user_id, r.req_str(f::USER_ID)?);
    set(&mut p.order_id, r.req_str(f::ORDER_ID)?);
    set(&mut p.channel, r.opt_str(f::CHANNEL)?);
    set(&mut p.platform, r.opt_str(f::PLATFORM)?);
    set(&mut p.country, std::str::from_utf8(&r.country()?).unwrap_or(""));
    set(&mut p.region, r.opt_str(f::REGION)?);
    set(&mut p.city, r.opt_str(f::CITY)?);
    set(&mut p.product_id, r.opt_str(f::PRODUCT_ID)?);
    set(&mut p.reason, r.opt_str(f::REASON)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(body: &str) -> Result<(Vec<Event>, Vec<Event>), BodyError> {
        let mut buf = body.as_bytes().to_vec();
        let (mut e, mut c) = (EventBatch::default(), EventBatch::default());
        let mut n = 0u8;
        let mut id = || {
            n += 1;
            [n; 16]
        };
        parse_events(&mut buf, "g1", &Limits::default(), &mut id, &mut e, &mut c)?;
        Ok((e.to_events(), c.to_events()))
    }

    fn field_err(r: Result<(Vec<Event>, Vec<Event>), BodyError>) -> (usize, &'static str, Problem) {
        match r {
            Err(BodyError::Field { index, field, problem }) => (index, field, problem),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn full_event_is_kept_field_by_field() {
        let (e, c) = events(
            r#"[{"ts":"2026-11-25T14:42:29Z","game_id":"g1","env":"prod","event":"login","user_id":"u1",
            "session_id":"s1","device_id":"d1","channel":"appstore","platform":"ios","country":"us",
            "app_version":"1.2.3","event_id":"6f1c2b9e-0d3a-4c1e-9a57-2f4b8e6d1c03","props":{"a":[1,2],"b":"x"}}]"#,
        )
        .expect("valid");
        assert!(c.is_empty());
        let e = &e[0];
        assert_eq!(e.ts_ms, 1_795_617_749_000);
        assert_eq!((e.game_id.as_str(), e.env.as_str(), e.event.as_str()), ("g1", "prod", "login"));
        assert_eq!((e.user_id.as_str(), e.session_id.as_str(), e.device_id.as_str()), ("u1", "s1", "d1"));
        assert_eq!((e.channel.as_str(), e.platform.as_str(), e.country.as_str()), ("appstore", "ios", "US"));
        assert_eq!(e.app_version, "1.2.3");
        assert_eq!(uuid::Uuid::from_bytes(e.event_id).to_string(), "6f1c2b9e-0d3a-4c1e-9a57-2f4b8e6d1c03");
        let mut props_text = e.props.clone().into_bytes();
        let props: simd_json::BorrowedValue = simd_json::to_borrowed_value(&mut props_text).expect("props json");
        assert_eq!(props.get("b").and_then(|v| v.as_str()), Some("x"));
    }

    #[test]
    fn croupier_sdk_field_names_fill_the_same_fields() {
        // The JS/H5 documentation's `attrs`, the superset's `properties` and `uid`.
        let (e, _) = events(
            r#"[{"ts":1795617749000,"game_id":"g1","env":"prod","event":"session.start","uid":"u2","attrs":{"uid":"u1"}},
                {"ts":1795617749000,"game_id":"g1","env":"prod","event":"login","properties":{"a":1}}]"#,
        )
        .expect("valid");
        assert_eq!((e[0].user_id.as_str(), e[0].props.as_str()), ("u2", r#"{"uid":"u1"}"#));
        assert_eq!(e[1].props, r#"{"a":1}"#);
        // The Unity documentation's PascalCase record.
        let (e, _) = events(
            r#"[{"EventName":"level_start","GameID":"g1","Environment":"prod","UserID":"u3","SessionID":"s3",
                "DeviceID":"d3","Platform":"android","AppVersion":"1.0","Timestamp":1795617749000,
                "Properties":{"device_model":"Pixel"}}]"#,
        )
        .expect("valid");
        let e = &e[0];
        assert_eq!((e.game_id.as_str(), e.env.as_str(), e.event.as_str()), ("g1", "prod", "level_start"));
        assert_eq!((e.user_id.as_str(), e.session_id.as_str(), e.device_id.as_str()), ("u3", "s3", "d3"));
        assert_eq!((e.platform.as_str(), e.app_version.as_str(), e.ts_ms), ("android", "1.0", 1_795_617_749_000));
        assert_eq!(e.props, r#"{"device_model":"Pixel"}"#);
        // A field's own name wins over its aliases, an earlier alias over a later one,
        // whatever their order in the record; an alias of the wrong type is ignored, as an
        // unknown field is (a record valid without it stays valid).
        let rec = r#"{"ts":1795617749000,"game_id":"g1","env":"prod","event":"login""#;
        let one = |extra: &str| {
            let (e, _) = events(&format!("[{rec},{extra}}}]")).unwrap_or_else(|e| panic!("{extra}: {e}"));
            (e[0].user_id.clone(), e[0].props.clone())
        };
        let both = |u: &str, p: &str| (u.to_owned(), p.to_owned());
        assert_eq!(one(r#""uid":"a","user_id":"b","attrs":{"x":1},"props":{"y":2}"#), both("b", r#"{"y":2}"#));
        assert_eq!(one(r#""user_id":"b","uid":"a","props":{"y":2},"attrs":{"x":1}"#), both("b", r#"{"y":2}"#));
        assert_eq!(one(r#""UserID":"c","uid":"a","Properties":{"z":3},"attrs":{"x":1}"#), both("a", r#"{"x":1}"#));
        assert_eq!(one(r#""uid":7,"attrs":"x","Platform":3"#), both("", "{}"));
        assert_eq!(one(r#""uid":null,"UserID":"c","attrs":null,"properties":{"p":1}"#), both("c", r#"{"p":1}"#));
        // `null` or `""` under the field's own name is no value: an alias fills it, in
        // either order.
        assert_eq!(one(r#""user_id":null,"uid":"a","props":null,"attrs":{"x":1}"#), both("a", r#"{"x":1}"#));
        assert_eq!(one(r#""uid":"a","user_id":"","attrs":{"x":1},"props":null"#), both("a", r#"{"x":1}"#));
        assert_eq!(one(r#""uid":"","user_id":null"#), both("", "{}"));
        // The same name twice is refused, an alias as a field.
        let (_, field, problem) = field_err(events(&format!(r#"[{rec},"uid":"a","uid":"b"}}]"#)));
        assert_eq!((field, problem), ("uid", Problem::Invalid("given once")));
        let (_, field, problem) = field_err(events(&format!(r#"[{rec},"user_id":"a","user_id":"b"}}]"#)));
        assert_eq!((field, problem), ("user_id", Problem::Invalid("given once")));
        // A refusal of a value names the field as the record gave it; the next record of
        // the batch, which gives it under its own name, is named so.
        let (_, field, _) = field_err(events(&format!(r#"[{rec},"UserID":"{}"}}]"#, "u".repeat(300))));
        assert_eq!(field, "UserID");
        let (_, field, _) = field_err(events(r#"[{"Timestamp":"yesterday","game_id":"g1","env":"prod","event":"x"}]"#));
        assert_eq!(field, "Timestamp");
        let (index, field, _) =
            field_err(events(&format!(r#"[{rec},"UserID":"c"}},{rec},"user_id":"{}"}}]"#, "u".repeat(300))));
        assert_eq!((index, field), (1, "user_id"));
        let (_, field, problem) = field_err(events(r#"[{"ts":1795617749000,"game_id":"g1","env":"prod"}]"#));
        assert_eq!((field, problem), ("event", Problem::Missing));
    }

    #[test]
    fn routes_custom_events_and_assigns_missing_ids() {
        let (e, c) = events(
            r#"{"events":[{"ts":1795617749,"game_id":"g1","env":"prod","event":"boss_killed"},
            {"ts":"1795617749000","game_id":"g1","env":"prod","event":"session.start"}]}"#,
        )
        .expect("valid");
        assert_eq!(c.len(), 1);
        assert_eq!(e.len(), 1);
        assert_eq!(c[0].event_id, [1; 16]);
        assert_eq!(e[0].event_id, [2; 16]);
        assert_eq!(c[0].props, "{}");
    }

    #[test]
    fn reports_index_and_field() {
        let ok = r#"{"ts":1795617749,"game_id":"g1","env":"prod","event":"login"}"#;
        let cases = [
            (r#"{"game_id":"g1","env":"prod","event":"login"}"#, "ts", Problem::Missing),
            (
                r#"{"ts":true,"game_id":"g1","env":"prod","event":"login"}"#,
                "ts",
                Problem::WrongType("a string or a number"),
            ),
            (
                r#"{"ts":9999999999999999999,"game_id":"g1","env":"prod","event":"login"}"#,
                "ts",
                Problem::Invalid("a time between 2000 and 2100"),
            ),
            (r#"{"ts":1795617749,"game_id":"g1","env":"prod"}"#, "event", Problem::Missing),
            (r#"{"ts":1795617749,"game_id":"g1","env":5,"event":"login"}"#, "env", Problem::WrongType("a string")),
            (
                r#"{"ts":1795617749,"game_id":"g1","env":"p","event":"login","country":"XX"}"#,
                "country",
                Problem::Invalid("an ISO-3166 alpha-2 code"),
            ),
            (
                r#"{"ts":1795617749,"game_id":"g1","env":"p","event":"login","event_id":"nope"}"#,
                "event_id",
                Problem::Invalid("a UUID"),
            ),
            (
                r#"{"ts":1795617749,"game_id":"g1","env":"p","event":"login","props":[1]}"#,
                "props",
                Problem::WrongType("an object"),
            ),
        ];
        for (bad, field, problem) in cases {
            let body = format!("[{ok},{bad}]");
            assert_eq!(field_err(events(&body)), (1, field, problem), "{bad}");
        }
    }

    #[test]
    fn refuses_other_games_and_bad_shapes() {
        assert_eq!(
            events(r#"[{"ts":1795617749,"game_id":"g2","env":"prod","event":"login"}]"#),
            Err(BodyError::GameMismatch { index: 0, field: "game_id" })
        );
        assert_eq!(
            events(r#"[{"ts":1795617749,"GameID":"g2","env":"prod","event":"login"}]"#),
            Err(BodyError::GameMismatch { index: 0, field: "GameID" })
        );
        assert_eq!(events("[]"), Err(BodyError::Empty));
        assert_eq!(events(r#"{"x":1}"#), Err(BodyError::NotABatch));
        // A known field given twice is refused, whichever value comes first; an unknown
        // one given twice is ignored as ever.
        for twice in [
            r#"[{"ts":1795617749,"game_id":"g1","env":"prod","event":"login","game_id":"g2"}]"#,
            r#"[{"ts":1795617749,"game_id":"g2","env":"prod","event":"login","game_id":"g1"}]"#,
            r#"[{"ts":1795617749,"game_id":"g1","env":"prod","event":"login","event":null}]"#,
        ] {
            let (_, field, problem) = field_err(events(twice));
            assert_eq!(problem, Problem::Invalid("given once"), "{twice}");
            assert!(field == "game_id" || field == "event", "{twice}");
        }
        assert!(events(r#"[{"ts":1795617749,"game_id":"g1","env":"prod","event":"login","x":1,"x":2}]"#).is_ok());
        let rec = r#"{"ts":1795617749,"game_id":"g1","env":"prod","event":"login"}"#;
        assert!(events(&format!(r#"{{"events":[{rec}]}}"#)).is_ok());
        assert!(matches!(events(&format!(r#"{{"events":[{rec}],"events":[]}}"#)), Err(BodyError::Malformed(_))));
        assert!(matches!(events("[{"), Err(BodyError::Malformed(_))));
        assert_eq!(field_err(events("[1]")).1, "record");
        // A raw control character in a string is named with its offset (simd-json says
        // "character 0"); escaped quotes and backslashes before it do not hide it.
        for (body, at, c) in [
            ("[{\"event\":\"a\u{1}b\"}]", 12, "U+0001"),
            ("  [{\"event\":\"a\\\"\\\\\tb\"}]", 18, "U+0009"),
            ("[{\"ts\":1,\n\"event\":\"x\u{1f}\"}]", 20, "U+001F"),
        ] {
            match events(body) {
                Err(BodyError::Malformed(m)) => {
                    assert!(m.contains(&format!("{c} in a string at byte {at}")), "{body:?}: {m}")
                }
                other => panic!("{body:?}: {other:?}"),
            }
        }
        // A malformed number, or one no double holds, says so, and where.
        // Junk after a long digit run too (simd-json before 0.18 dropped it unseen).
        for n in [
            "1e400",
            "-1e400",
            "123456789012345678901234567890e300",
            "01",
            "1.",
            "-",
            "12345678901234567890x",
            "123456789012345678901x",
            "123456789012345678901234567890abc",
            "-12345678901234567890123n",
            "1234567890123456789.5x",
        ] {
            let body = format!(r#"[{{"ts":1795617749,"game_id":"g1","event":"x","props":{{"v":{n}}}}}]"#);
            match events(&body) {
                Err(BodyError::Malformed(m)) => {
                    assert!(m.starts_with("a number malformed or out of range near character"), "{n}: {m}")
                }
                other => panic!("{n}: {other:?}"),
            }
        }
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        assert_eq!(events(&deep), Err(BodyError::TooDeep(16)));
        // Exactly at the limit passes, one more level does not; brackets inside strings
        // and siblings do not add depth.
        let at = |n: usize| {
            format!("{}{}{}", "[".repeat(n - 2), r#"[{"s":"[[[[[[[[[[[[[[[[[[[[\"[["}, [], {}]"#, "]".repeat(n - 2))
        };
        for (n, want) in [(15, true), (16, true), (17, false)] {
            let mut b = at(n).into_bytes();
            let (mut e, mut c) = (EventBatch::default(), EventBatch::default());
            let got = parse_events(&mut b, "g1", &Limits::default(), &mut || [1; 16], &mut e, &mut c);
            assert_eq!(matches!(got, Err(BodyError::TooDeep(16))), !want, "{n} levels: {got:?}");
        }
    }

    /// The deepest nesting of a JSON text of brackets, strings and numbers, counted on
    /// its bytes (strings hold no brackets here).
    fn depth_of(text: &str) -> usize {
        let (mut depth, mut deepest) = (0usize, 0usize);
        for b in text.bytes() {
            match b {
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth -= 1,
                _ => {}
            }
        }
        deepest
    }

    /// A random JSON value: arrays and objects of up to four members, up to `room` deep.
    fn random_value(seed: &mut u64, room: usize, out: &mut String) {
        let mut next = |n: u64| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (*seed >> 33) % n
        };
        let kind = if room == 0 { 2 } else { next(4) };
        let members = next(5);
        match kind {
            0 => {
                out.push('[');
                for m in 0..members {
                    if m > 0 {
                        out.push(',');
                    }
                    random_value(seed, room - 1, out);
                }
                out.push(']');
            }
            1 => {
                out.push('{');
                for m in 0..members {
                    if m > 0 {
                        out.push(',');
                    }
                    out.push_str(&format!(r#""k{m}":"#));
                    random_value(seed, room - 1, out);
                }
                out.push('}');
            }
            _ if members % 2 == 0 => out.push_str(r#""s""#),
            _ => out.push_str(&members.to_string()),
        }
    }

    #[test]
    fn the_depth_on_the_tape_is_the_depth_of_the_text() {
        let mut seed = 7u64;
        let mut deepest_seen = 0;
        let mut buffers = simd_json::Buffers::default();
        let mut open = Vec::new();
        for _ in 0..4_000 {
            let mut text = String::new();
            random_value(&mut seed, 9, &mut text);
            let depth = depth_of(&text);
            deepest_seen = deepest_seen.max(depth);
            let mut bytes = text.clone().into_bytes();
            let mut tape = Tape(Vec::new());
            simd_json::fill_tape(&mut bytes, &mut buffers, &mut tape).expect("valid JSON");
            // Refused exactly when the limit is below the text's depth, at every limit
            // around it (the scratch reused, as a shard does).
            for max in depth.saturating_sub(2)..=depth + 1 {
                let got = check_depth(&tape.0, max, &mut open);
                assert_eq!(got.is_err(), depth > max, "depth {depth}, limit {max}: {text}");
            }
        }
        assert!(deepest_seen >= 7, "the documents reach deep enough to matter: {deepest_seen}");
        // Members that are one node each: an empty member is a level deeper all the same.
        for (text, depth) in [(r#"["s",{}]"#, 2), (r#"{"a":[],"b":1}"#, 2), (r#"[{"a":1},[2,[]]]"#, 3), ("[1,2]", 1)] {
            let mut bytes = text.as_bytes().to_vec();
            let mut tape = Tape(Vec::new());
            simd_json::fill_tape(&mut bytes, &mut buffers, &mut tape).expect("valid JSON");
            for max in 1..=4 {
                assert_eq!(check_depth(&tape.0, max, &mut open).is_err(), depth > max, "{text} at {max}");
            }
        }
        // Many deep siblings one after another: the depth falls back after each.
        let sibling = format!("{}1{}", "[".repeat(15), "]".repeat(15));
        let mut wide = format!("[{}]", vec![sibling.as_str(); 200].join(",")).into_bytes();
        let mut tape = Tape(Vec::new());
        simd_json::fill_tape(&mut wide, &mut buffers, &mut tape).expect("valid JSON");
        assert_eq!(check_depth(&tape.0, 16, &mut open), Ok(()));
        assert_eq!(check_depth(&tape.0, 15, &mut open), Err(BodyError::TooDeep(15)));
    }

    #[test]
    fn field_slots_match_the_table() {
        for (i, k) in KNOWN_FIELDS.iter().enumerate() {
            assert_eq!(slot_of(k), Some(Named { slot: i, alias: OWN_NAME }), "{k}");
        }
        for (i, (k, slot)) in ALIASES.iter().enumerate() {
            assert_eq!(slot_of(k), Some(Named { slot: *slot, alias: i as u8 }), "{k}");
        }
        let named = [
            (f::TS, "ts"),
            (f::GAME_ID, "game_id"),
            (f::ENV, "env"),
            (f::EVENT, "event"),
            (f::USER_ID, "user_id"),
            (f::SESSION_ID, "session_id"),
            (f::DEVICE_ID, "device_id"),
            (f::CHANNEL, "channel"),
            (f::PLATFORM, "platform"),
            (f::COUNTRY, "country"),
            (f::APP_VERSION, "app_version"),
            (f::EVENT_ID, "event_id"),
            (f::PROPS, "props"),
            (f::ORDER_ID, "order_id"),
            (f::AMOUNT_CENTS, "amount_cents"),
            (f::CURRENCY, "currency"),
            (f::STATUS, "status"),
            (f::REGION, "region"),
            (f::CITY, "city"),
            (f::PRODUCT_ID, "product_id"),
            (f::REASON, "reason"),
        ];
        assert_eq!(named.len(), KNOWN_FIELDS.len());
        for (slot, name) in named {
            assert_eq!(KNOWN_FIELDS[slot], name);
        }
        assert_eq!(slot_of("unknown"), None);
    }

    #[test]
    fn single_objects_of_any_game_and_derived_ids() {
        let mut j = br#"{"ts":"2026-11-25T14:42:29Z","game_id":"other","env":"prod","event":"login"}"#.to_vec();
        let id = derived_event_id("analytics:events", "1-0");
        assert_eq!(id, derived_event_id("analytics:events", "1-0"));
        assert_ne!(id, derived_event_id("analytics:events", "1-1"));
        let e = parse_event_object(&mut j, &Limits::default(), id).expect("valid");
        assert_eq!((e.game_id.as_str(), e.event_id), ("other", id));
        assert_eq!(uuid::Uuid::from_bytes(id).get_version_num(), 8);
        let mut p = br#"{"ts":1795617749,"game_id":"x","env":"p","user_id":"u","order_id":"o","amount_cents":5,"currency":"USD","status":"success"}"#.to_vec();
        assert_eq!(parse_payment_object(&mut p, &Limits::default()).expect("valid").amount_cents, 5);
        assert!(parse_event_object(&mut b"[1]".to_vec(), &Limits::default(), id).is_err());
    }

    #[test]
    fn refuses_invalid_utf8() {
        let mut buf = b"[{\"ts\":1795617749,\"game_id\":\"g1\",\"env\":\"\xff\",\"event\":\"login\"}]".to_vec();
        let r = parse_events(
            &mut buf,
            "g1",
            &Limits::default(),
            &mut || [0; 16],
            &mut EventBatch::default(),
            &mut EventBatch::default(),
        );
        assert_eq!(r, Err(BodyError::InvalidUtf8));
    }

    fn one_event(field_json: &str) -> Result<(Vec<Event>, Vec<Event>), BodyError> {
        events(&format!(r#"[{{"ts":1795617749,"game_id":"g1","env":"prod","event":"login",{field_json}}}]"#))
    }

    #[test]
    fn hostile6_lone_surrogates_are_refused_not_stored_as_nul() {
        for bad in [
            r#""user_id":"u\ud800u""#,
            r#""user_id":"\ud800A""#,
            r#""user_id":"\uDBFF""#,
            r#""user_id":"u\udc00u""#,
            r#""user_id":"\ud800\u0041""#,
            r#""user_id":"\ud800\ud800""#,
            r#""props":{"k":"u\ud800u"}"#,
            r#""props":{"k":["\udfff"]}"#,
            r#""props":{"\ud800":1}"#,
            r#""unknown":"\ud800""#,
        ] {
            match one_event(bad) {
                Err(BodyError::Malformed(m)) => assert!(m.contains("surrogate"), "{bad}: {m}"),
                other => panic!("{bad}: expected a refusal, got {other:?}"),
            }
        }
        // A pair is one character; an escaped backslash before `u` is not an escape.
        let (e, _) =
            one_event(r#""user_id":"\ud83d\ude00","device_id":"\\ud800","props":{"k":"\uD83D\uDE00"}"#).expect("valid");
        assert_eq!(e[0].user_id, "\u{1f600}");
        assert_eq!(e[0].device_id, r"\ud800");
        assert!(e[0].props.contains('\u{1f600}'), "{}", e[0].props);
    }

    #[test]
    fn hostile13_empty_country_is_the_same_as_absent() {
        let (e, _) = one_event(r#""country":"""#).expect("valid");
        assert_eq!(e[0].country, "");
    }

    fn payment_with_amount(amount: &str) -> Result<Vec<Payment>, BodyError> {
        let mut out = Vec::new();
        let mut buf = format!(
            r#"[{{"ts":1795617749,"game_id":"g1","env":"prod","user_id":"u","order_id":"o1","amount_cents":{amount},"currency":"EUR","status":"success"}}]"#
        )
        .into_bytes();
        parse_payments(&mut buf, "g1", &Limits::default(), &mut out).map(|_| out)
    }

    #[test]
    fn amount_cents_is_bounded_so_sums_cannot_wrap() {
        assert_eq!(payment_with_amount("1000000000000").expect("at the cap")[0].amount_cents, MAX_AMOUNT_CENTS);
        for bad in
            ["1000000000001", "9223372036854775808", "18446744073709551615", "18446744073709552000", "-1e19", "1e13"]
        {
            match payment_with_amount(bad) {
                Err(BodyError::Field { field: "amount_cents", problem: Problem::Invalid(_), .. }) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn hostile4_pathological_batches_are_refused_before_the_parse_and_buffers_let_go() {
        let limits = Limits::default();
        let mut bufs = JsonBuffers::default();
        let parse = |body: &mut Vec<u8>, bufs: &mut JsonBuffers| {
            let (mut e, mut c) = (EventBatch::default(), EventBatch::default());
            parse_events_in(bufs, body, "g1", &limits, &mut || [0; 16], &mut e, &mut c)
        };
        // 10 MiB of `[0,0,...]` and `[{},{},...]`: far more records than allowed.
        for element in ["0", "{}"] {
            let n = (10 << 20) / (element.len() + 1);
            let mut body = format!("[{}0]", format!("{element},").repeat(n - 1)).into_bytes();
            assert_eq!(parse(&mut body, &mut bufs), Err(BodyError::TooManyRecords(10_000)), "{element}");
            assert!(bufs.retained_bytes() < 1 << 20, "{element}: {} bytes kept", bufs.retained_bytes());
        }
        // The same inside `{"events":[...]}` (padded: short bodies are not counted first).
        let pad = " ".repeat(crate::prescan::COUNT_FROM_BYTES);
        let mut body = format!(r#"{{"events":[{}0]}}{pad}"#, "0,".repeat(20_000)).into_bytes();
        assert_eq!(parse(&mut body, &mut bufs), Err(BodyError::TooManyRecords(10_000)));
        // Exactly at the limit is counted, not refused (the records themselves are).
        let mut body = format!("[{}0]{pad}", "0,".repeat(9_999)).into_bytes();
        assert!(matches!(parse(&mut body, &mut bufs), Err(BodyError::Field { index: 0, .. })));
        // Commas inside strings and deeper arrays are not records.
        let record = r#"{"ts":1795617749,"game_id":"g1","env":"prod","event":"login","user_id":",[,\",","props":{"a":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}}"#;
        let mut body = format!("[{}{record}]", format!("{record},").repeat(9_999)).into_bytes();
        assert!(body.len() > 1 << 20);
        assert_eq!(parse(&mut body, &mut bufs), Ok(()));
        // A body that passes the count but grows the tape (one record, a huge props
        // array) is parsed, refused, and its buffers are let go afterwards.
        let mut body = format!(
            r#"[{{"ts":1795617749,"game_id":"g1","env":"prod","event":"x","props":{{"a":[{}0]}}}}]"#,
            "0,".repeat(2 << 20)
        )
        .into_bytes();
        assert!(matches!(parse(&mut body, &mut bufs), Err(BodyError::Field { field: "props", .. })));
        assert!(bufs.retained_bytes() < 8 << 20, "{} bytes kept", bufs.retained_bytes());
    }

    #[test]
    fn reused_payments_keep_no_value_of_an_earlier_request() {
        let mut bufs = JsonBuffers::default();
        let mut batch = PaymentBatch::default();
        let mut full =
            br#"[{"ts":1795617749,"game_id":"g1","env":"prod","user_id":"u1","order_id":"o1","amount_cents":5,
            "currency":"EUR","status":"refunded","channel":"c","platform":"p","country":"de","region":"r","city":"x",
            "product_id":"gems","reason":"chargeback"}]"#
                .to_vec();
        parse_payments_in(&mut bufs, &mut full, "g1", &Limits::default(), &mut batch).expect("valid");
        assert_eq!(batch.as_slice()[0].country, "DE");
        batch.clear();
        let mut bare =
            br#"[{"ts":1795617750,"game_id":"g1","env":"dev","user_id":"u2","order_id":"o2","amount_cents":7,
            "currency":"USD","status":"success"}]"#
                .to_vec();
        let mut want = Vec::new();
        parse_payments(&mut bare.clone(), "g1", &Limits::default(), &mut want).expect("valid");
        parse_payments_in(&mut bufs, &mut bare, "g1", &Limits::default(), &mut batch).expect("valid");
        assert_eq!(batch.as_slice(), want.as_slice());
        assert_eq!(batch.as_slice()[0].reason, "");
    }

    #[test]
    fn payments_are_validated() {
        let run = |body: &str| {
            let mut out = Vec::new();
            let mut buf = body.as_bytes().to_vec();
            parse_payments(&mut buf, "g1", &Limits::default(), &mut out).map(|_| out)
        };
        let p = run(r#"[{"ts":"2026-11-25 14:42:29","game_id":"g1","env":"prod","user_id":"u","order_id":"o1",
            "amount_cents":499,"currency":"EUR","status":"refunded","region":"eu","reason":"chargeback"}]"#)
        .expect("valid");
        assert_eq!(p[0].amount_cents, 499);
        assert_eq!(p[0].status, PaymentStatus::Refunded);
        assert_eq!((p[0].region.as_str(), p[0].reason.as_str()), ("eu", "chargeback"));
        // Croupier's other name for a refund.
        let p = run(r#"[{"ts":"2026-11-25 14:42:29","game_id":"g1","env":"prod","user_id":"u","order_id":"o1",
            "amount_cents":499,"currency":"EUR","status":"refund"}]"#)
        .expect("valid");
        assert_eq!((p[0].status, p[0].status.as_str()), (PaymentStatus::Refunded, "refunded"));
        let base = r#""ts":1795617749,"game_id":"g1","env":"prod","user_id":"u","order_id":"o1""#;
        for (tail, field) in [
            (r#""amount_cents":0,"currency":"EUR","status":"success""#, "amount_cents"),
            (r#""amount_cents":-3,"currency":"EUR","status":"success""#, "amount_cents"),
            (r#""amount_cents":1.5,"currency":"EUR","status":"success""#, "amount_cents"),
            (r#""amount_cents":"100","currency":"EUR","status":"success""#, "amount_cents"),
            (r#""amount_cents":100,"currency":"eur","status":"success""#, "currency"),
            (r#""amount_cents":100,"currency":"EURO","status":"success""#, "currency"),
            (r#""amount_cents":100,"currency":"EUR","status":"ok""#, "status"),
        ] {
            match run(&format!("[{{{base},{tail}}}]")) {
                Err(BodyError::Field { field: f, .. }) => assert_eq!(f, field, "{tail}"),
                other => panic!("{tail}: {other:?}"),
            }
        }
    }
}
