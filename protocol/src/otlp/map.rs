//! The mapping of one OTLP record onto the envelope (the table in `docs/otlp.md`).
//!
//! Attributes are looked up once per record into slots ([`Slot`]): the resource's first,
//! then the record's, which win; two names for one slot (`deployment.environment.name`
//! and `deployment.environment`) are ranked. Every other attribute of the record, with
//! its trace and span ids and its body, is written into `props`. Nothing is allocated:
//! values are slices of the request, and `props` and the batches are reused buffers.

use crate::country;
use crate::envelope::PaymentStatus;
use crate::stream::{route_event, StreamKind};
use crate::timestamp::{MAX_MS, MIN_MS};
use crate::validate::{Limits, MAX_AMOUNT_CENTS};

use super::any::{write_hex, write_str, AnyRef, Attrs};
use super::{DecodeError, Signal, Sink, Summary};

/// Croupier's event types (span names that are events without configuration).
pub const CROUPIER_EVENT_TYPES: [&str; 25] = [
    "session.start",
    "session.end",
    "user.register",
    "user.login",
    "progression.start",
    "progression.complete",
    "progression.fail",
    "match.start",
    "match.end",
    "economy.earn",
    "economy.spend",
    "monetization.purchase_attempt",
    "monetization.purchase_success",
    "monetization.purchase_fail",
    "ad.impression",
    "ad.click",
    "ad.reward",
    "gacha.pull",
    "error.crash",
    "error.anr",
    "td.tower.build",
    "td.tower.upgrade",
    "session.heartbeat",
    "social.share",
    "user.logout",
];

/// Dotted names and the taxonomy names they become.
pub const TAXONOMY_NAMES: [(&str, &str); 14] = [
    ("session.start", "session_start"),
    ("session.end", "session_end"),
    ("session.heartbeat", "heartbeat"),
    ("user.login", "login"),
    ("user.register", "register"),
    ("progression.start", "level_start"),
    ("progression.complete", "level_complete"),
    ("progression.fail", "level_fail"),
    ("economy.earn", "economy_earn"),
    ("economy.spend", "economy_spend"),
    ("ad.impression", "ad_impression"),
    ("social.share", "social_share"),
    ("error.crash", "error"),
    ("error.anr", "error"),
];

/// Span names that are events besides [`CROUPIER_EVENT_TYPES`]: exact names, or
/// prefixes written with a trailing `*` (`[otlp] span_events`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanEvents<'c> {
    /// The patterns.
    pub patterns: &'c [String],
}

impl SpanEvents<'_> {
    /// Whether a span named `name` is an event.
    pub fn matches(&self, name: &str) -> bool {
        CROUPIER_EVENT_TYPES.contains(&name)
            || self.patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => p == name,
            })
    }
}

/// What the mapping needs besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Context<'c> {
    /// The game of the request's credential: records of another game are rejected.
    pub game: &'c str,
    /// Field, props and record limits (as for JSON ingest; `max_depth` bounds nested
    /// `AnyValue`s).
    pub limits: &'c Limits,
    /// Which spans are events.
    pub spans: SpanEvents<'c>,
}

/// A slot of the attributes the envelope takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Slot {
    /// `game.id`.
    GameId,
    /// `deployment.environment.name`, `deployment.environment`.
    Env,
    /// `game.app_version`, `service.version`.
    AppVersion,
    /// `game.user_id`, `user.id`.
    UserId,
    /// `game.session_id`, `session.id`.
    SessionId,
    /// `game.device_id`, `device.id`.
    DeviceId,
    /// `game.platform`.
    Platform,
    /// `game.channel`.
    Channel,
    /// `game.country`.
    Country,
    /// `game.region`.
    Region,
    /// `game.city`.
    City,
    /// `event.name`, `event_type` (a log record's event name).
    EventName,
    /// `monetization.order_id`.
    OrderId,
    /// `monetization.price_usd`.
    PriceUsd,
    /// `monetization.amount_cents`, `amount_cents`.
    AmountCents,
    /// `monetization.currency`, `currency`.
    Currency,
    /// `monetization.sku_id`.
    ProductId,
    /// `monetization.reason`.
    Reason,
}

const SLOTS: usize = 18;

/// The slot an attribute fills, its rank among the names of that slot, and the name
/// (the key is one of these ASCII names).
#[inline]
pub fn slot_of(key: &[u8]) -> Option<(Slot, u8, &'static str)> {
    // Every name is 5 to 27 bytes and starts with one of these letters: most other keys
    // are told apart without a comparison.
    if !(5..=27).contains(&key.len()) || !matches!(key[0], b'g' | b'd' | b's' | b'u' | b'e' | b'm' | b'a' | b'c') {
        return None;
    }
    Some(match key {
        b"game.id" => (Slot::GameId, 1, "game.id"),
        b"deployment.environment.name" => (Slot::Env, 2, "deployment.environment.name"),
        b"deployment.environment" => (Slot::Env, 1, "deployment.environment"),
        b"game.app_version" => (Slot::AppVersion, 2, "game.app_version"),
        b"service.version" => (Slot::AppVersion, 1, "service.version"),
        b"game.user_id" => (Slot::UserId, 2, "game.user_id"),
        b"user.id" => (Slot::UserId, 1, "user.id"),
        b"game.session_id" => (Slot::SessionId, 2, "game.session_id"),
        b"session.id" => (Slot::SessionId, 1, "session.id"),
        b"game.device_id" => (Slot::DeviceId, 2, "game.device_id"),
        b"device.id" => (Slot::DeviceId, 1, "device.id"),
        b"game.platform" => (Slot::Platform, 1, "game.platform"),
        b"game.channel" => (Slot::Channel, 1, "game.channel"),
        b"game.country" => (Slot::Country, 1, "game.country"),
        b"game.region" => (Slot::Region, 1, "game.region"),
        b"game.city" => (Slot::City, 1, "game.city"),
        b"event.name" => (Slot::EventName, 2, "event.name"),
        b"event_type" => (Slot::EventName, 1, "event_type"),
        b"monetization.order_id" => (Slot::OrderId, 1, "monetization.order_id"),
        b"monetization.price_usd" => (Slot::PriceUsd, 1, "monetization.price_usd"),
        b"monetization.amount_cents" => (Slot::AmountCents, 2, "monetization.amount_cents"),
        b"amount_cents" => (Slot::AmountCents, 1, "amount_cents"),
        b"monetization.currency" => (Slot::Currency, 2, "monetization.currency"),
        b"currency" => (Slot::Currency, 1, "currency"),
        b"monetization.sku_id" => (Slot::ProductId, 1, "monetization.sku_id"),
        b"monetization.reason" => (Slot::Reason, 1, "monetization.reason"),
        _ => return None,
    })
}

/// Slots an event stores in its columns (their attributes are not repeated in `props`).
fn event_column(slot: Slot) -> bool {
    matches!(
        slot,
        Slot::GameId
            | Slot::Env
            | Slot::AppVersion
            | Slot::UserId
            | Slot::SessionId
            | Slot::DeviceId
            | Slot::Platform
            | Slot::Channel
            | Slot::Country
            | Slot::EventName
    )
}

/// A record's attribute slots: each holds a value, its rank (record over resource) and
/// the attribute's name (for a rejection's message).
#[derive(Clone, Copy)]
pub struct Slots<'t, 'a>([Option<(AnyRef<'t, 'a>, u8, &'static str)>; SLOTS]);

impl<'t, 'a> Slots<'t, 'a> {
    /// No attribute.
    pub fn empty() -> Self {
        Slots([None; SLOTS])
    }

    /// Fills the slots from `attrs`; `level` 0 for a resource, 1 for a record.
    pub fn fill(&mut self, attrs: &Attrs<'t, 'a>, level: u8) -> Result<(), DecodeError> {
        attrs.each(|_, slot, v| {
            if let Some(slot) = slot {
                self.put(slot, v, level);
            }
            Ok(())
        })
    }

    /// Puts `v` in its slot unless a value of a higher rank is there.
    #[inline]
    fn put(&mut self, (slot, rank, name): (Slot, u8, &'static str), v: AnyRef<'t, 'a>, level: u8) {
        let rank = rank + level * 10;
        let cell = &mut self.0[slot as usize];
        if cell.is_none_or(|(_, r, _)| r <= rank) {
            *cell = Some((v, rank, name));
        }
    }

    fn get(&self, slot: Slot) -> AnyRef<'t, 'a> {
        self.named(slot).0
    }

    /// The slot's value and the name of the attribute it came from.
    fn named(&self, slot: Slot) -> (AnyRef<'t, 'a>, &'static str) {
        self.0[slot as usize].map_or((AnyRef::Empty, ""), |(v, _, name)| (v, name))
    }
}

/// A trace or span id: bytes (protobuf) or hex text (OTLP/JSON).
#[derive(Debug, Clone, Copy)]
pub enum Id<'a> {
    /// Raw bytes.
    Raw(&'a [u8]),
    /// Hex text.
    Hex(&'a str),
}

impl Id<'_> {
    /// The id's `N` bytes if it is a valid id as OTLP defines one: exactly `N` bytes
    /// (`2N` hex digits in OTLP/JSON, either case) and not all zeros. Anything else —
    /// absent, all zeros, another length, not hex — is no id at all, in both encodings.
    fn valid<const N: usize>(&self) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        match *self {
            Id::Raw(b) if b.len() == N => out.copy_from_slice(b),
            // Decoded as bytes: a string that is not ASCII hex is no id, never a panic.
            Id::Hex(s) if s.len() == 2 * N => hex::decode_to_slice(s.as_bytes(), &mut out).ok()?,
            _ => return None,
        }
        out.iter().any(|&b| b != 0).then_some(out)
    }
}

/// One log record or span, as the walkers hand it over.
#[derive(Clone, Copy)]
pub struct RecordIn<'t, 'a> {
    /// The log record's `event_name`, or the span's name.
    pub name: &'a str,
    /// `time_unix_nano` (a span's start), 0 when unset.
    pub time_ns: u64,
    /// `observed_time_unix_nano`, taken when `time_ns` is 0.
    pub fallback_ns: u64,
    /// Trace id.
    pub trace_id: Id<'a>,
    /// Span id.
    pub span_id: Id<'a>,
    /// The record's attributes.
    pub attrs: Attrs<'t, 'a>,
    /// A log record's body.
    pub body: AnyRef<'t, 'a>,
    /// What a protobuf log record's event id is derived from.
    pub content: Option<Content<'a>>,
}

/// A protobuf log record's bytes and where it comes from: its event id is derived from
/// both, so that a retried record keeps its id while equal records from different
/// resources or scopes stay distinct events.
#[derive(Debug, Clone, Copy)]
pub struct Content<'a> {
    /// The `LogRecord` message.
    pub record: &'a [u8],
    /// Digests of its `Resource` and `InstrumentationScope` messages.
    pub origin: [u8; 32],
}

/// Why a record was not mapped.
enum Fail {
    /// The record is rejected (partial success), for this reason.
    Reject(&'static str),
    /// The record is rejected for this reason about this mapped attribute.
    Attr(&'static str, &'static str),
    /// The request cannot be decoded.
    Fatal(DecodeError),
}

impl From<DecodeError> for Fail {
    fn from(e: DecodeError) -> Self {
        Fail::Fatal(e)
    }
}

/// A short text value, borrowed or an integer formatted in place.
enum Text<'a> {
    Str(&'a str),
    Num(Digits),
}

impl Text<'_> {
    #[inline]
    fn as_str(&self) -> &str {
        match self {
            Text::Str(s) => s,
            Text::Num(d) => std::str::from_utf8(d.0.get(..usize::from(d.0[23])).unwrap_or(&[])).unwrap_or(""),
        }
    }
}

/// An integer's decimal digits (their count in the last byte), aligned so that a [`Text`]
/// moves as whole words.
#[derive(Clone, Copy)]
#[repr(align(8))]
struct Digits([u8; 24]);

fn int_text(i: i64) -> Text<'static> {
    let mut buf = [0u8; 20];
    let mut n = i.unsigned_abs();
    let mut pos = buf.len();
    loop {
        pos -= 1;
        buf[pos] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if i < 0 {
        pos -= 1;
        buf[pos] = b'-';
    }
    buf.copy_within(pos.., 0);
    let mut d = Digits([0; 24]);
    d.0[..20 - pos].copy_from_slice(&buf[..20 - pos]);
    d.0[23] = (20 - pos) as u8;
    Text::Num(d)
}

/// The name a record's event gets, and whether it is a payment (with its status).
fn taxonomy_name(name: &str) -> (&str, Option<PaymentStatus>) {
    match name {
        "monetization.purchase_success" => (name, Some(PaymentStatus::Success)),
        "monetization.purchase_fail" => (name, Some(PaymentStatus::Failed)),
        _ => (TAXONOMY_NAMES.iter().find(|(d, _)| *d == name).map_or(name, |(_, t)| *t), None),
    }
}

/// A 128-bit id from `bytes` (UUID version 8).
fn content_id(bytes: &[u8]) -> [u8; 16] {
    let mut id = cityhash_rs::cityhash_102_128(bytes).to_le_bytes();
    id[6] = (id[6] & 0x0f) | 0x80;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// Maps records into a [`Sink`], counting them.
pub struct Mapper<'m, 'o> {
    ctx: &'m Context<'m>,
    new_id: &'m mut dyn FnMut() -> [u8; 16],
    out: &'m mut Sink<'o>,
    summary: Summary,
}

impl<'m, 'o> Mapper<'m, 'o> {
    /// A mapper into `out`; `new_id` gives ids to records that carry nothing to derive
    /// one from.
    pub fn new(ctx: &'m Context<'m>, new_id: &'m mut dyn FnMut() -> [u8; 16], out: &'m mut Sink<'o>) -> Self {
        Mapper { ctx, new_id, out, summary: Summary::default() }
    }

    /// The counts so far.
    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        self.ctx.limits
    }

    /// Maps one record under its resource's slots.
    pub fn record<'t, 'a>(
        &mut self,
        signal: Signal,
        resource: &Slots<'t, 'a>,
        rec: &RecordIn<'t, 'a>,
    ) -> Result<(), DecodeError> {
        let index = self.summary.records;
        self.summary.records += 1;
        match self.map(signal, resource, rec) {
            Ok(true) => self.summary.accepted += 1,
            Ok(false) => self.summary.skipped += 1,
            Err(Fail::Reject(reason)) => self.reject(index, reason, ""),
            Err(Fail::Attr(attribute, reason)) => self.reject(index, reason, attribute),
            Err(Fail::Fatal(e)) => return Err(e),
        }
        // The limit is on events: records that are not events (a Collector's batch of
        // ordinary logs) cost only their decoding, which the body size bounds.
        if self.summary.accepted + self.summary.rejected > self.ctx.limits.max_records {
            return Err(DecodeError::TooManyRecords(self.ctx.limits.max_records));
        }
        Ok(())
    }

    /// Counts a rejected record; the first one's reason (and attribute, if one) is kept.
    fn reject(&mut self, index: usize, reason: &'static str, attribute: &'static str) {
        self.summary.rejected += 1;
        if self.summary.first_rejection.is_none() {
            self.summary.first_rejection = Some((index, reason));
            self.summary.first_attribute = attribute;
        }
    }

    #[inline]
    fn text<'a>(&self, (v, name): (AnyRef<'_, 'a>, &'static str)) -> Result<Option<Text<'a>>, Fail> {
        match v {
            AnyRef::Empty => Ok(None),
            AnyRef::Str("") => Ok(None),
            AnyRef::Str(s) if s.len() > self.ctx.limits.max_field_bytes => {
                Err(Fail::Attr(name, "a mapped attribute is longer than 256 bytes"))
            }
            AnyRef::Str(s) => Ok(Some(Text::Str(s))),
            AnyRef::Int(i) => Ok(Some(int_text(i))),
            _ => Err(Fail::Attr(name, "a mapped attribute must be a string or an integer")),
        }
    }

    #[inline]
    fn opt<'a>(&self, slots: &Slots<'_, 'a>, slot: Slot) -> Result<Text<'a>, Fail> {
        Ok(self.text(slots.named(slot))?.unwrap_or(Text::Str("")))
    }

    /// `Ok(true)`: stored; `Ok(false)`: not an event.
    fn map<'t, 'a>(&mut self, signal: Signal, resource: &Slots<'t, 'a>, rec: &RecordIn<'t, 'a>) -> Result<bool, Fail> {
        if signal == Signal::Traces && !self.ctx.spans.matches(rec.name) {
            return Ok(false);
        }
        // One walk of the record's attributes: the slots, and `props` for the others when
        // the record is known to be an event that stores them (its name is the span's,
        // the log record's `event_name` or the resource's `event.name`, and no payment).
        // Otherwise the walk fills the slots only, and `props` is written by a second walk
        // once the record turns out to need it: records that are no event (exempt from
        // `max_records` as cheap) and payments do not pay for `props`. An error in
        // writing `props` counts only where `props` is needed, as if written then.
        let mut slots = *resource;
        let known = match (rec.name, resource.get(Slot::EventName)) {
            ("", AnyRef::Str(n)) => n,
            (n, _) => n,
        };
        let early = !known.is_empty() && taxonomy_name(known).1.is_none();
        let mut props_error = self.scan(&mut slots, &rec.attrs, early)?;
        // The `event.name` / `event_type` attribute is read only when it names the event:
        // with the record's own name (a span's, a log record's `event_name`), it is
        // neither checked nor stored (an event column).
        let name = match rec.name {
            "" => match self.text(slots.named(Slot::EventName))? {
                None => return Ok(false),
                Some(Text::Str(s)) => s,
                Some(Text::Num(..)) => return Err(Fail::Reject("event.name must be a string")),
            },
            n => n,
        };
        if name.len() > 128 {
            return Err(Fail::Reject("the event name is longer than 128 bytes"));
        }
        let ns = if rec.time_ns != 0 { rec.time_ns } else { rec.fallback_ns };
        let ts_ms = (ns / 1_000_000) as i64;
        if !(MIN_MS..MAX_MS).contains(&ts_ms) {
            return Err(Fail::Reject(match signal {
                Signal::Traces => "start_time_unix_nano must be nanoseconds between 2000 and 2100",
                Signal::Logs => "time_unix_nano must be nanoseconds between 2000 and 2100",
            }));
        }
        let game = self.opt(&slots, Slot::GameId)?;
        if !game.as_str().is_empty() && game.as_str() != self.ctx.game {
            return Err(Fail::Reject("game.id differs from the game of the token"));
        }
        let env = self.opt(&slots, Slot::Env)?;
        if env.as_str().is_empty() {
            return Err(Fail::Reject("deployment.environment.name is required"));
        }
        let country = match self.opt(&slots, Slot::Country)?.as_str() {
            "" => None,
            c => Some(country::normalize(c).ok_or(Fail::Reject("game.country must be an ISO-3166 alpha-2 code"))?),
        };
        let country = country.as_ref().map_or("", |c| std::str::from_utf8(c).unwrap_or(""));
        let (mapped, payment) = taxonomy_name(name);
        if let Some(status) = payment {
            self.payment(&slots, ts_ms, env.as_str(), country, status)?;
            return Ok(true);
        }
        if !early {
            let mut again = slots;
            props_error = self.scan(&mut again, &rec.attrs, true)?;
        }
        self.props(rec, props_error, name != mapped, name)?;
        let event_id = self.event_id(signal, rec);
        let texts = [
            self.opt(&slots, Slot::UserId)?,
            self.opt(&slots, Slot::SessionId)?,
            self.opt(&slots, Slot::DeviceId)?,
            self.opt(&slots, Slot::Channel)?,
            self.opt(&slots, Slot::Platform)?,
        ];
        let app_version = self.opt(&slots, Slot::AppVersion)?;
        let out = match route_event(mapped) {
            StreamKind::Events => &mut *self.out.events,
            _ => &mut *self.out.custom,
        };
        let mut w = out.writer();
        w.field(self.ctx.game);
        w.field(env.as_str());
        w.field(mapped);
        for t in &texts {
            w.field(t.as_str());
        }
        w.field(country);
        w.field(app_version.as_str());
        w.field(self.out.props.text.as_str());
        w.finish(ts_ms, event_id).map_err(|_| Fail::Reject("the request's events exceed 4 GiB of text"))?;
        Ok(true)
    }

    /// A span's id from its trace and span ids, a log record's from its bytes, else a
    /// new one.
    fn event_id(&mut self, signal: Signal, rec: &RecordIn<'_, '_>) -> [u8; 16] {
        let mut ids = [0u8; 24];
        match (signal, rec.content) {
            // Both ids valid (a span with an invalid one would share its id with every
            // other such span, and ClickHouse would keep one of them).
            (Signal::Traces, _) => match (rec.trace_id.valid::<16>(), rec.span_id.valid::<8>()) {
                (Some(trace), Some(span)) => {
                    ids[..16].copy_from_slice(&trace);
                    ids[16..].copy_from_slice(&span);
                    content_id(&ids)
                }
                _ => (self.new_id)(),
            },
            (Signal::Logs, Some(c)) => {
                let mut key = [0u8; 48];
                key[..32].copy_from_slice(&c.origin);
                let digest = cityhash_rs::cityhash_102_128(c.record);
                key[32..].copy_from_slice(&digest.to_le_bytes());
                // The k-th repeat of the same bytes under the same resource and scope in
                // this request: a distinct event, with an id a retry reproduces.
                let mut origin = [0u8; 16];
                origin.copy_from_slice(&cityhash_rs::cityhash_102_128(&key).to_le_bytes());
                match self.out.seen.next(u128::from_le_bytes(origin)) {
                    0 => content_id(&key),
                    k => {
                        let mut repeat = [0u8; 52];
                        repeat[..48].copy_from_slice(&key);
                        repeat[48..].copy_from_slice(&k.to_le_bytes());
                        content_id(&repeat)
                    }
                }
            }
            _ => (self.new_id)(),
        }
    }

    /// Walks a record's attributes once: each that fills a slot goes into `slots`, and,
    /// with `write_props`, each that is not an event column is written into `props` (the
    /// sink's buffer, opened with `{`; a repeated key keeps its last value, and writing
    /// stops once past the props limit, `props.rs`).
    /// An attribute that cannot be read refuses the request at once, as before anything
    /// else of the record; a value that cannot be written as JSON (nested too deep, or
    /// malformed inside) is handed back, for [`Mapper::props`].
    fn scan<'t, 'a>(
        &mut self,
        slots: &mut Slots<'t, 'a>,
        attrs: &Attrs<'t, 'a>,
        write_props: bool,
    ) -> Result<Option<DecodeError>, DecodeError> {
        let max_depth = self.ctx.limits.max_depth;
        let limit = self.ctx.limits.max_props_bytes;
        let props = &mut *self.out.props;
        props.begin(limit);
        let mut failed = None;
        attrs.each(|k, slot, v| {
            if let Some(slot) = slot {
                slots.put(slot, v, 1);
            }
            if !write_props || failed.is_some() || slot.is_some_and(|(s, _, _)| event_column(s)) {
                return Ok(());
            }
            if let Err(e) = props.member(k, limit, |t| v.write_json(t, 1, max_depth, limit)) {
                failed = Some(e);
            }
            Ok(())
        })?;
        Ok(failed)
    }

    /// Completes the record's `props` in the sink's buffer (its attributes are there,
    /// from [`Mapper::scan`], unless writing them failed with `error`).
    fn props(
        &mut self,
        rec: &RecordIn<'_, '_>,
        error: Option<DecodeError>,
        renamed: bool,
        name: &str,
    ) -> Result<(), Fail> {
        if let Some(e) = error {
            return Err(Fail::Fatal(e));
        }
        let too_long = Fail::Reject("props (the other attributes and the body) are longer than 32 KiB");
        let max_depth = self.ctx.limits.max_depth;
        let props = &mut *self.out.props;
        if props.overflow() {
            return Err(too_long);
        }
        let trace = rec.trace_id.valid::<16>();
        let span = rec.span_id.valid::<8>();
        let body = !matches!(rec.body, AnyRef::Empty);
        for (own, key) in [(trace.is_some(), "trace_id"), (span.is_some(), "span_id"), (body, "body")] {
            if own {
                props.remove(key);
            }
        }
        props.compact();
        let props = &mut props.text;
        let sep = |props: &mut String| {
            if props.len() > 1 {
                props.push(',');
            }
        };
        if renamed {
            sep(props);
            props.push_str("\"event.name\":");
            write_str(props, name);
        }
        if let Some(trace) = trace {
            sep(props);
            props.push_str("\"trace_id\":");
            write_hex(props, &trace);
        }
        if let Some(span) = span {
            sep(props);
            props.push_str("\"span_id\":");
            write_hex(props, &span);
        }
        if body {
            sep(props);
            props.push_str("\"body\":");
            rec.body.write_json(props, 1, max_depth, self.ctx.limits.max_props_bytes)?;
        }
        props.push('}');
        if props.len() > self.ctx.limits.max_props_bytes {
            return Err(too_long);
        }
        Ok(())
    }

    fn payment(
        &mut self,
        slots: &Slots<'_, '_>,
        ts_ms: i64,
        env: &str,
        country: &str,
        status: PaymentStatus,
    ) -> Result<(), Fail> {
        let user = self.opt(slots, Slot::UserId)?;
        if user.as_str().is_empty() {
            return Err(Fail::Reject("a payment needs game.user_id"));
        }
        let order = self.opt(slots, Slot::OrderId)?;
        if order.as_str().is_empty() {
            return Err(Fail::Reject("a payment needs monetization.order_id"));
        }
        let bad_amount = Fail::Reject("a payment needs monetization.price_usd, or amount_cents and currency");
        let (cents, currency) = match (slots.get(Slot::AmountCents), slots.get(Slot::PriceUsd)) {
            (AnyRef::Int(c), _) => {
                let cur = self.opt(slots, Slot::Currency)?;
                let cur = cur.as_str();
                if cur.is_empty() {
                    return Err(Fail::Reject(
                        "a payment with amount_cents needs a currency (monetization.currency or currency)",
                    ));
                }
                if cur.len() != 3 || !cur.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(Fail::Reject("currency must be three upper-case letters (ISO 4217)"));
                }
                let mut code = [0u8; 3];
                code.copy_from_slice(cur.as_bytes());
                (c, code)
            }
            // A double as its shortest decimal form (what the sender wrote: 1.005, not the
            // binary 1.00499999…), rounded as a decimal.
            (AnyRef::Empty, AnyRef::Double(usd)) => {
                (usd_cents(&format!("{usd}")).ok_or(Fail::Reject(AMOUNT_RANGE))?, *b"USD")
            }
            (AnyRef::Empty, AnyRef::Int(usd)) => (usd.saturating_mul(100), *b"USD"),
            (AnyRef::Empty, AnyRef::Str(s)) => (usd_cents(s.trim()).ok_or(bad_amount)?, *b"USD"),
            (AnyRef::Empty, _) => return Err(bad_amount),
            _ => return Err(Fail::Reject("amount_cents must be an integer (intValue)")),
        };
        let cents = u64::try_from(cents).unwrap_or(0);
        if cents == 0 || cents > MAX_AMOUNT_CENTS {
            return Err(Fail::Reject(AMOUNT_RANGE));
        }
        let texts = [
            self.opt(slots, Slot::Channel)?,
            self.opt(slots, Slot::Platform)?,
            self.opt(slots, Slot::Region)?,
            self.opt(slots, Slot::City)?,
            self.opt(slots, Slot::ProductId)?,
            self.opt(slots, Slot::Reason)?,
        ];
        let p = self.out.payments.next_to_fill();
        p.ts_ms = ts_ms;
        p.amount_cents = cents;
        p.status = status;
        set(&mut p.game_id, self.ctx.game);
        set(&mut p.env, env);
        set(&mut p.user_id, user.as_str());
        set(&mut p.order_id, order.as_str());
        set(&mut p.currency, std::str::from_utf8(&currency).unwrap_or("USD"));
        set(&mut p.country, country);
        let [channel, platform, region, city, product, reason] = &texts;
        set(&mut p.channel, channel.as_str());
        set(&mut p.platform, platform.as_str());
        set(&mut p.region, region.as_str());
        set(&mut p.city, city.as_str());
        set(&mut p.product_id, product.as_str());
        set(&mut p.reason, reason.as_str());
        Ok(())
    }
}

/// Replaces `to`'s text with `from`, keeping its buffer.
fn set(to: &mut String, from: &str) {
    to.clear();
    to.push_str(from);
}

/// Why a payment's amount is refused when it is out of range.
const AMOUNT_RANGE: &str = "a payment's amount must be from 1 cent to 10^12 cents";

/// Cents of a decimal amount of dollars (`19.99`, `-1`, `0.005`: digits, at most one
/// point, no exponent), rounded half away from zero as a decimal — not through a binary
/// float, which would round `1.005` down; saturated far past any amount accepted.
pub(crate) fn usd_cents(s: &str) -> Option<i64> {
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty() || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut cents: i64 = 0;
    for b in whole.bytes() {
        cents = cents.saturating_mul(10).saturating_add(i64::from(b - b'0'));
    }
    let mut frac = fraction.bytes().map(|b| i64::from(b - b'0'));
    cents = cents.saturating_mul(100).saturating_add(frac.next().unwrap_or(0) * 10 + frac.next().unwrap_or(0));
    if frac.next().is_some_and(|d| d >= 5) {
        cents = cents.saturating_add(1);
    }
    Some(if negative { -cents } else { cents })
}
