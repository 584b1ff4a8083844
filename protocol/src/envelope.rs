//! The records carried through the streams: game events and payments.
//!
//! Optional text fields are stored as empty strings, which is also how the ClickHouse
//! tables keep them (`String DEFAULT ''`). In stream batches, events travel as an
//! [`EventBatch`] (one text buffer, fixed-size slots); [`Event`] is the owned form of one.

use rkyv::{Archive, Deserialize, Serialize};

/// One game analytics event (`analytics:events` / `analytics:custom`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Event {
    /// Event time, milliseconds since the Unix epoch (UTC).
    pub ts_ms: i64,
    /// Tenant; always equal to the game of the request's credential.
    pub game_id: String,
    /// Environment (`prod`, `staging`, ...).
    pub env: String,
    /// Event name.
    pub event: String,
    /// Player id, or empty.
    pub user_id: String,
    /// Session id, or empty.
    pub session_id: String,
    /// Device id, or empty.
    pub device_id: String,
    /// Distribution channel, or empty.
    pub channel: String,
    /// Platform (`ios`, `android`, `web`, ...), or empty.
    pub platform: String,
    /// ISO-3166 alpha-2 country code in upper case, or empty.
    pub country: String,
    /// Client application version, or empty.
    pub app_version: String,
    /// Deduplication key: the client's UUID, or one assigned at ingest.
    pub event_id: [u8; 16],
    /// Free-form properties, as compact JSON object text (`{}` when absent).
    pub props: String,
}

/// Text fields of an event in a batch, in storage order.
pub const EVENT_TEXT_FIELDS: [&str; 11] = [
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
    "props",
];

/// Position of each text field in [`EVENT_TEXT_FIELDS`].
pub mod text {
    /// `game_id`
    pub const GAME_ID: usize = 0;
    /// `env`
    pub const ENV: usize = 1;
    /// `event`
    pub const EVENT: usize = 2;
    /// `user_id`
    pub const USER_ID: usize = 3;
    /// `session_id`
    pub const SESSION_ID: usize = 4;
    /// `device_id`
    pub const DEVICE_ID: usize = 5;
    /// `channel`
    pub const CHANNEL: usize = 6;
    /// `platform`
    pub const PLATFORM: usize = 7;
    /// `country`
    pub const COUNTRY: usize = 8;
    /// `app_version`
    pub const APP_VERSION: usize = 9;
    /// `props`
    pub const PROPS: usize = 10;
}

/// One event of an [`EventBatch`]: its fixed-size fields and where its text fields end
/// in the batch's text.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct EventSlot {
    /// Event time, milliseconds since the epoch.
    pub ts_ms: i64,
    /// Dedup key.
    pub event_id: [u8; 16],
    /// End offset of each text field in the batch text, in [`EVENT_TEXT_FIELDS`] order;
    /// a field starts where the previous one ends (the first at the previous event's end).
    pub ends: [u32; 11],
}

/// Many events stored without one allocation per field: every text field of every event
/// back to back in one string, and one fixed-size [`EventSlot`] per event. Building it
/// allocates only as its two buffers grow; archiving it is two copies.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct EventBatch {
    /// All text fields of all events.
    pub text: String,
    /// One slot per event.
    pub slots: Vec<EventSlot>,
}

/// The batch text would grow past what its `u32` offsets can address (4 GiB); the
/// event was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTooLong;

impl std::fmt::Display for TextTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("event batch text over 4 GiB")
    }
}

impl std::error::Error for TextTooLong {}

/// Appends one event's text fields to an [`EventBatch`], in order.
#[derive(Debug)]
pub struct EventWriter<'b> {
    batch: &'b mut EventBatch,
    ends: [u32; 11],
    next: usize,
    /// Where the event's text starts (to take it back if it does not fit).
    start: usize,
    /// Longest text the batch may reach.
    limit: usize,
    /// A field ended past `limit`.
    overflow: bool,
}

impl EventWriter<'_> {
    /// Appends the next text field.
    pub fn field(&mut self, s: &str) {
        self.batch.text.push_str(s);
        self.close();
    }

    /// Appends the next text field by writing into the text.
    pub fn field_with(&mut self, write: impl FnOnce(&mut String)) {
        write(&mut self.batch.text);
        self.close();
    }

    fn close(&mut self) {
        let len = self.batch.text.len();
        match (self.ends.get_mut(self.next), u32::try_from(len)) {
            (Some(e), Ok(end)) if len <= self.limit => *e = end,
            _ => self.overflow = true,
        }
        self.next += 1;
    }

    /// Completes the event (fields not written are empty), or takes its text back if the
    /// batch text grew past what the offsets can address.
    pub fn finish(mut self, ts_ms: i64, event_id: [u8; 16]) -> Result<(), TextTooLong> {
        while self.next < self.ends.len() {
            self.close();
        }
        if self.overflow {
            self.batch.text.truncate(self.start);
            return Err(TextTooLong);
        }
        self.batch.slots.push(EventSlot { ts_ms, event_id, ends: self.ends });
        Ok(())
    }
}

fn slice(text: &str, start: usize, end: usize) -> &str {
    text.get(start..end).unwrap_or("")
}

impl EventBatch {
    /// An empty batch with room for `events` events of about `bytes` bytes of text each.
    pub fn with_capacity(events: usize, bytes: usize) -> Self {
        EventBatch { text: String::with_capacity(events * bytes), slots: Vec::with_capacity(events) }
    }

    /// Starts the next event.
    pub fn writer(&mut self) -> EventWriter<'_> {
        self.writer_with_limit(u32::MAX as usize)
    }

    /// Starts the next event, whose text may end at `limit` bytes at most.
    fn writer_with_limit(&mut self, limit: usize) -> EventWriter<'_> {
        let start = self.text.len();
        EventWriter { batch: self, ends: [0; 11], next: 0, start, limit, overflow: false }
    }

    /// Appends an owned event.
    pub fn push(&mut self, e: &Event) -> Result<(), TextTooLong> {
        let mut w = self.writer();
        for f in e.text() {
            w.field(f);
        }
        w.finish(e.ts_ms, e.event_id)
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.text.clear();
        self.slots.clear();
    }

    /// Text field `f` of event `i`.
    pub fn field(&self, i: usize, f: usize) -> &str {
        let end = self.slots[i].ends[f] as usize;
        let start = if f > 0 {
            self.slots[i].ends[f - 1] as usize
        } else if i > 0 {
            self.slots[i - 1].ends[10] as usize
        } else {
            0
        };
        slice(&self.text, start, end)
    }

    /// Event `i` as an owned value.
    pub fn get(&self, i: usize) -> Event {
        let f = |k| self.field(i, k).to_owned();
        Event {
            ts_ms: self.slots[i].ts_ms,
            game_id: f(text::GAME_ID),
            env: f(text::ENV),
            event: f(text::EVENT),
            user_id: f(text::USER_ID),
            session_id: f(text::SESSION_ID),
            device_id: f(text::DEVICE_ID),
            channel: f(text::CHANNEL),
            platform: f(text::PLATFORM),
            country: f(text::COUNTRY),
            app_version: f(text::APP_VERSION),
            event_id: self.slots[i].event_id,
            props: f(text::PROPS),
        }
    }

    /// Every event as an owned value.
    pub fn to_events(&self) -> Vec<Event> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }
}

impl ArchivedEventBatch {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Text field `f` of event `i`, read in place.
    pub fn field(&self, i: usize, f: usize) -> &str {
        let end = self.slots[i].ends[f].to_native() as usize;
        let start = if f > 0 {
            self.slots[i].ends[f - 1].to_native() as usize
        } else if i > 0 {
            self.slots[i - 1].ends[10].to_native() as usize
        } else {
            0
        };
        slice(self.text.as_str(), start, end)
    }

    /// The text fields of event `i`, in [`EVENT_TEXT_FIELDS`] order, read in place: one
    /// pass over its ends instead of one look-up per field (all empty for an event past
    /// the batch).
    pub fn fields(&self, i: usize) -> [&str; 11] {
        let Some(slot) = self.slots.get(i) else { return [""; 11] };
        let text = self.text.as_str();
        let mut start = match i.checked_sub(1).and_then(|p| self.slots.get(p)) {
            Some(previous) => previous.ends[10].to_native() as usize,
            None => 0,
        };
        std::array::from_fn(|f| {
            let end = slot.ends[f].to_native() as usize;
            let field = slice(text, start, end);
            start = end;
            field
        })
    }

    /// Event time of event `i`.
    pub fn ts_ms(&self, i: usize) -> i64 {
        self.slots[i].ts_ms.to_native()
    }

    /// Dedup key of event `i`.
    pub fn event_id(&self, i: usize) -> [u8; 16] {
        self.slots[i].event_id
    }
}

impl Event {
    /// Text fields in [`EVENT_TEXT_FIELDS`] order.
    pub fn text(&self) -> [&str; 11] {
        [
            &self.game_id,
            &self.env,
            &self.event,
            &self.user_id,
            &self.session_id,
            &self.device_id,
            &self.channel,
            &self.platform,
            &self.country,
            &self.app_version,
            &self.props,
        ]
    }
}

/// Outcome of a payment.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum PaymentStatus {
    /// The payment went through.
    #[default]
    Success,
    /// The payment was refunded.
    Refunded,
    /// The payment failed.
    Failed,
}

impl PaymentStatus {
    /// The wire name (`success`, `refunded`, `failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Success => "success",
            PaymentStatus::Refunded => "refunded",
            PaymentStatus::Failed => "failed",
        }
    }

    /// Parses the wire name; `refund`, which Croupier's SDKs also send, is `refunded`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "success" => Some(PaymentStatus::Success),
            "refunded" | "refund" => Some(PaymentStatus::Refunded),
            "failed" => Some(PaymentStatus::Failed),
            _ => None,
        }
    }
}

/// One payment (`analytics:payments`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Payment {
    /// Payment time, milliseconds since the Unix epoch (UTC).
    pub ts_ms: i64,
    /// Tenant; always equal to the game of the request's credential.
    pub game_id: String,
    /// Environment.
    pub env: String,
    /// Paying player.
    pub user_id: String,
    /// Deduplication key.
    pub order_id: String,
    /// Amount in the currency's minor unit; always > 0.
    pub amount_cents: u64,
    /// ISO-4217 code, three upper-case letters.
    pub currency: String,
    /// Outcome.
    pub status: PaymentStatus,
    /// Distribution channel, or empty.
    pub channel: String,
    /// Platform, or empty.
    pub platform: String,
    /// ISO-3166 alpha-2 country code in upper case, or empty.
    pub country: String,
    /// Region, or empty.
    pub region: String,
    /// City, or empty.
    pub city: String,
    /// Product bought, or empty.
    pub product_id: String,
    /// Failure or refund reason, or empty.
    pub reason: String,
}

/// The payments of one request, kept between requests with their strings: a request
/// refills payments a previous one left (clearing and refilling their strings) instead of
/// allocating about a dozen strings per payment. Archived as the `Vec<Payment>` it holds.
#[derive(Debug, Default)]
pub struct PaymentBatch {
    /// The request's payments, in order.
    live: Vec<Payment>,
    /// Payments of earlier requests, kept for their strings' buffers.
    spare: Vec<Payment>,
}

impl PaymentBatch {
    /// Empties the batch, keeping every payment's buffers for the next ones.
    pub fn clear(&mut self) {
        self.spare.append(&mut self.live);
    }

    /// Number of payments.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The next payment, to be filled in: a kept one (its fields hold old values) or a
    /// new one.
    pub fn next_to_fill(&mut self) -> &mut Payment {
        let p = self.spare.pop().unwrap_or_default();
        self.live.push(p);
        let last = self.live.len() - 1;
        &mut self.live[last]
    }

    /// Takes back the last payment handed out by [`PaymentBatch::next_to_fill`] (a filter
    /// left it out), keeping its buffers.
    pub fn drop_last(&mut self) {
        if let Some(p) = self.live.pop() {
            self.spare.push(p);
        }
    }

    /// The payments, to archive them (put them back with [`PaymentBatch::put_back`]).
    pub fn take(&mut self) -> Vec<Payment> {
        std::mem::take(&mut self.live)
    }

    /// Puts back what [`PaymentBatch::take`] took.
    pub fn put_back(&mut self, live: Vec<Payment>) {
        self.live = live;
    }

    /// The payments.
    pub fn as_slice(&self) -> &[Payment] {
        &self.live
    }

    /// About how many bytes the batch holds on to: the payments and their strings.
    pub fn retained_bytes(&self) -> usize {
        let payments = self.live.capacity() + self.spare.capacity();
        payments * std::mem::size_of::<Payment>()
            + self.live.iter().chain(&self.spare).map(Payment::text_capacity).sum::<usize>()
    }
}

impl Payment {
    /// Bytes reserved by its strings.
    fn text_capacity(&self) -> usize {
        [
            &self.game_id,
            &self.env,
            &self.user_id,
            &self.order_id,
            &self.currency,
            &self.channel,
            &self.platform,
            &self.country,
            &self.region,
            &self.city,
            &self.product_id,
            &self.reason,
        ]
        .iter()
        .map(|s| s.capacity())
        .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_text_offsets_past_u32_are_an_error_not_truncated() {
        let mut b = EventBatch::default();
        let mut w = b.writer_with_limit(10);
        w.field("12345");
        w.field("67890");
        assert_eq!(w.finish(1, [1; 16]), Ok(()));
        let mut w = b.writer_with_limit(10);
        w.field("x");
        assert_eq!(w.finish(2, [2; 16]), Err(TextTooLong));
        // The refused event left nothing behind.
        assert_eq!((b.len(), b.text.as_str()), (1, "1234567890"));
        assert_eq!(b.field(0, 1), "67890");
    }
}
