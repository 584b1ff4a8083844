//! Column blocks for `analytics.events` and `analytics.payments`, filled row by row
//! straight from archived batch records (no deserialisation) or owned records.

use croupier_protocol::clickhouse::block::{uuid_bytes, BlockHeader, Column, ColumnData, LowCardinality};
use croupier_protocol::envelope::{
    ArchivedEventBatch, ArchivedPayment, ArchivedPaymentStatus, Event, Payment, PaymentStatus,
};

fn lc() -> ColumnData {
    ColumnData::LowCardinality(LowCardinality::default())
}

fn s() -> ColumnData {
    ColumnData::String(Default::default())
}

fn country(c: &str) -> [u8; 2] {
    let b = c.as_bytes();
    if b.len() == 2 {
        [b[0], b[1]]
    } else {
        [0, 0]
    }
}

/// Unix seconds of a time in milliseconds as a `DateTime` column holds them (clamped to
/// its `u32` range).
pub fn unix_seconds(ms: i64) -> u32 {
    ms.div_euclid(1000).clamp(0, i64::from(u32::MAX)) as u32
}

fn seconds(ms: i64) -> [u8; 4] {
    unix_seconds(ms).to_le_bytes()
}

/// Read access to an event, owned or archived.
pub trait EventFields {
    /// Milliseconds since the epoch.
    fn ts_ms(&self) -> i64;
    /// Text fields in [`croupier_protocol::envelope::EVENT_TEXT_FIELDS`] order.
    fn text(&self) -> [&str; 11];
    /// Dedup key.
    fn event_id(&self) -> [u8; 16];
}

impl EventFields for Event {
    fn ts_ms(&self) -> i64 {
        self.ts_ms
    }
    fn text(&self) -> [&str; 11] {
        Event::text(self)
    }
    fn event_id(&self) -> [u8; 16] {
        self.event_id
    }
}

/// Event `i` of an archived batch, read in place.
#[derive(Clone, Copy)]
pub struct ArchivedEventRef<'a> {
    /// The batch.
    pub batch: &'a ArchivedEventBatch,
    /// Index in it.
    pub index: usize,
}

impl<'a> ArchivedEventRef<'a> {
    /// The event's fields, each read once: for a caller that uses them more than once (the
    /// worker's sink fills the row, `user_days` and the sketches from the same event).
    pub fn read(&self) -> ReadEvent<'a> {
        ReadEvent {
            ts_ms: self.batch.ts_ms(self.index),
            text: self.batch.fields(self.index),
            event_id: self.batch.event_id(self.index),
        }
    }
}

impl EventFields for ArchivedEventRef<'_> {
    fn ts_ms(&self) -> i64 {
        self.batch.ts_ms(self.index)
    }
    fn text(&self) -> [&str; 11] {
        self.batch.fields(self.index)
    }
    fn event_id(&self) -> [u8; 16] {
        self.batch.event_id(self.index)
    }
}

/// An archived event's fields, read out of its batch ([`ArchivedEventRef::read`]).
#[derive(Clone, Copy)]
pub struct ReadEvent<'a> {
    /// Milliseconds since the epoch.
    pub ts_ms: i64,
    /// Text fields in [`croupier_protocol::envelope::EVENT_TEXT_FIELDS`] order.
    pub text: [&'a str; 11],
    /// Dedup key.
    pub event_id: [u8; 16],
}

impl EventFields for ReadEvent<'_> {
    fn ts_ms(&self) -> i64 {
        self.ts_ms
    }
    fn text(&self) -> [&str; 11] {
        self.text
    }
    fn event_id(&self) -> [u8; 16] {
        self.event_id
    }
}

/// A table the worker fills: its INSERT statement and its columns, in that order.
pub trait Table {
    /// Its name, `analytics.<table>`.
    const NAME: &'static str;
    /// The insert statement matching [`Table::columns`].
    const INSERT: &'static str;
    /// The table's sort key (`ORDER BY`), by column name: blocks are sent in its order so
    /// that the server need not sort them (`croupier_protocol::clickhouse::order`). Empty:
    /// sent as pushed.
    const ORDER_BY: &'static [&'static str] = &[];
    /// Empty columns, in insert order.
    fn columns() -> Vec<Column>;
}

/// A block of rows of table `T` being filled.
pub struct TableRows<T> {
    /// The columns, in [`Table::INSERT`] order.
    pub columns: Vec<Column>,
    /// Rows so far.
    pub rows: usize,
    table: std::marker::PhantomData<T>,
}

impl<T: Table> Default for TableRows<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Table> TableRows<T> {
    /// The insert statement matching the columns.
    pub const INSERT: &'static str = T::INSERT;

    /// An empty block.
    pub fn new() -> Self {
        TableRows { columns: T::columns(), rows: 0, table: std::marker::PhantomData }
    }

    /// Empties the block, keeping allocations.
    pub fn clear(&mut self) {
        for c in &mut self.columns {
            c.data.clear();
        }
        self.rows = 0;
    }

    /// Approximate encoded size.
    pub fn byte_len(&self) -> usize {
        self.columns.iter().map(|c| c.data.byte_len()).sum()
    }
}

/// A type as compared between the table and what is written: `DateTime('Zone')` is a
/// `DateTime` (the same four bytes on the wire).
pub(crate) fn comparable_type(ty: &str) -> &str {
    if ty.starts_with("DateTime(") {
        "DateTime"
    } else {
        ty
    }
}

/// Checks the header an INSERT got from the server (the table's columns, by the names
/// the statement lists) against the columns this client writes: a different name or type
/// means the table was changed under the worker. Says which column, what the table has and
/// what is written.
pub fn check_header(table: &str, header: &BlockHeader, columns: &[Column]) -> Result<(), String> {
    let fix = "inserts wait until the table matches again (ALTER TABLE it back: croupier migrate prints the \
               statement); nothing is dead-lettered";
    if header.columns.len() != columns.len() {
        return Err(format!(
            "{table} has {} of the {} columns croupier writes; {fix}",
            header.columns.len(),
            columns.len()
        ));
    }
    for ((name, ty), c) in header.columns.iter().zip(columns) {
        if *name != c.name || comparable_type(ty) != comparable_type(&c.ty) {
            return Err(format!(
                "{table}.{} is {name} {ty} on the server but croupier writes {} {}; {fix}",
                c.name, c.name, c.ty
            ));
        }
    }
    Ok(())
}

/// `analytics.events`.
pub struct Events;

impl Table for Events {
    const NAME: &'static str = "analytics.events";
    const INSERT: &'static str = "INSERT INTO analytics.events (event_time, game_id, env, user_id, session_id, \
        event, channel, platform, country, app_version, event_id, props_json, device_id, ingested_at) VALUES";
    const ORDER_BY: &'static [&'static str] = &["game_id", "env", "event_time", "event", "event_id"];

    fn columns() -> Vec<Column> {
        vec![
            Column::new("event_time", "DateTime", ColumnData::fixed(4)),
            Column::new("game_id", "LowCardinality(String)", lc()),
            Column::new("env", "LowCardinality(String)", lc()),
            Column::new("user_id", "String", s()),
            Column::new("session_id", "String", s()),
            Column::new("event", "LowCardinality(String)", lc()),
            Column::new("channel", "LowCardinality(String)", lc()),
            Column::new("platform", "LowCardinality(String)", lc()),
            Column::new("country", "FixedString(2)", ColumnData::fixed(2)),
            Column::new("app_version", "String", s()),
            Column::new("event_id", "UUID", ColumnData::fixed(16)),
            Column::new("props_json", "String", s()),
            Column::new("device_id", "String", s()),
            Column::new("ingested_at", "DateTime", ColumnData::fixed(4)),
        ]
    }
}

/// A block of `analytics.events` rows being filled.
pub type EventRows = TableRows<Events>;

impl TableRows<Events> {
    /// Appends one event accepted at `accepted_at_ms`.
    pub fn push(&mut self, e: &impl EventFields, accepted_at_ms: i64) {
        let [game, env, event, user, session, device, channel, platform, ctry, app, props] = e.text();
        let c = &mut self.columns;
        c[0].data.push_fixed(&seconds(e.ts_ms()));
        c[1].data.push_str(game.as_bytes());
        c[2].data.push_str(env.as_bytes());
        c[3].data.push_str(user.as_bytes());
        c[4].data.push_str(session.as_bytes());
        c[5].data.push_str(event.as_bytes());
        c[6].data.push_str(channel.as_bytes());
        c[7].data.push_str(platform.as_bytes());
        c[8].data.push_fixed(&country(ctry));
        c[9].data.push_str(app.as_bytes());
        c[10].data.push_fixed(&uuid_bytes(&e.event_id()));
        c[11].data.push_str(props.as_bytes());
        c[12].data.push_str(device.as_bytes());
        c[13].data.push_fixed(&seconds(accepted_at_ms));
        self.rows += 1;
    }
}

/// Read access to a payment, owned or archived.
pub trait PaymentFields {
    /// Milliseconds since the epoch.
    fn ts_ms(&self) -> i64;
    /// Amount in minor units.
    fn amount_cents(&self) -> u64;
    /// Status name.
    fn status(&self) -> &'static str;
    /// Text fields: game_id, env, user_id, order_id, currency, channel, platform,
    /// country, region, city, product_id, reason.
    fn text(&self) -> [&str; 12];
}

impl PaymentFields for Payment {
    fn ts_ms(&self) -> i64 {
        self.ts_ms
    }
    fn amount_cents(&self) -> u64 {
        self.amount_cents
    }
    fn status(&self) -> &'static str {
        self.status.as_str()
    }
    fn text(&self) -> [&str; 12] {
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
    }
}

impl PaymentFields for ArchivedPayment {
    fn ts_ms(&self) -> i64 {
        self.ts_ms.to_native()
    }
    fn amount_cents(&self) -> u64 {
        self.amount_cents.to_native()
    }
    fn status(&self) -> &'static str {
        match self.status {
            ArchivedPaymentStatus::Success => PaymentStatus::Success.as_str(),
            ArchivedPaymentStatus::Refunded => PaymentStatus::Refunded.as_str(),
            ArchivedPaymentStatus::Failed => PaymentStatus::Failed.as_str(),
        }
    }
    fn text(&self) -> [&str; 12] {
        [
            self.game_id.as_str(),
            self.env.as_str(),
            self.user_id.as_str(),
            self.order_id.as_str(),
            self.currency.as_str(),
            self.channel.as_str(),
            self.platform.as_str(),
            self.country.as_str(),
            self.region.as_str(),
            self.city.as_str(),
            self.product_id.as_str(),
            self.reason.as_str(),
        ]
    }
}

/// `analytics.payments`.
pub struct Payments;

impl Table for Payments {
    const NAME: &'static str = "analytics.payments";
    const INSERT: &'static str = "INSERT INTO analytics.payments (time, game_id, env, user_id, order_id, \
        amount_cents, currency, status, channel, platform, country, region, city, product_id, reason, ingested_at) VALUES";
    const ORDER_BY: &'static [&'static str] = &["game_id", "env", "order_id", "status"];

    fn columns() -> Vec<Column> {
        vec![
            Column::new("time", "DateTime", ColumnData::fixed(4)),
            Column::new("game_id", "LowCardinality(String)", lc()),
            Column::new("env", "LowCardinality(String)", lc()),
            Column::new("user_id", "String", s()),
            Column::new("order_id", "String", s()),
            Column::new("amount_cents", "UInt64", ColumnData::fixed(8)),
            Column::new("currency", "String", s()),
            Column::new("status", "LowCardinality(String)", lc()),
            Column::new("channel", "LowCardinality(String)", lc()),
            Column::new("platform", "LowCardinality(String)", lc()),
            Column::new("country", "FixedString(2)", ColumnData::fixed(2)),
            Column::new("region", "String", s()),
            Column::new("city", "String", s()),
            Column::new("product_id", "String", s()),
            Column::new("reason", "String", s()),
            Column::new("ingested_at", "DateTime", ColumnData::fixed(4)),
        ]
    }
}

/// A block of `analytics.payments` rows being filled.
pub type PaymentRows = TableRows<Payments>;

impl TableRows<Payments> {
    /// Appends one payment accepted at `accepted_at_ms`.
    pub fn push(&mut self, p: &impl PaymentFields, accepted_at_ms: i64) {
        let [game, env, user, order, currency, channel, platform, ctry, region, city, product, reason] = p.text();
        let c = &mut self.columns;
        c[0].data.push_fixed(&seconds(p.ts_ms()));
        c[1].data.push_str(game.as_bytes());
        c[2].data.push_str(env.as_bytes());
        c[3].data.push_str(user.as_bytes());
        c[4].data.push_str(order.as_bytes());
        c[5].data.push_fixed(&p.amount_cents().to_le_bytes());
        c[6].data.push_str(currency.as_bytes());
        c[7].data.push_str(p.status().as_bytes());
        c[8].data.push_str(channel.as_bytes());
        c[9].data.push_str(platform.as_bytes());
        c[10].data.push_fixed(&country(ctry));
        c[11].data.push_str(region.as_bytes());
        c[12].data.push_str(city.as_bytes());
        c[13].data.push_str(product.as_bytes());
        c[14].data.push_str(reason.as_bytes());
        c[15].data.push_fixed(&seconds(accepted_at_ms));
        self.rows += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(columns: &[Column]) -> BlockHeader {
        BlockHeader { columns: columns.iter().map(|c| (c.name.clone(), c.ty.clone())).collect(), rows: 0 }
    }

    #[test]
    fn m4_a_table_that_drifted_from_what_is_written_is_named() {
        let ours = Events::columns();
        assert_eq!(check_header(Events::NAME, &header(&ours), &ours), Ok(()));
        // A DateTime with a zone is the same column on the wire.
        let mut zoned = header(&ours);
        zoned.columns[0].1 = "DateTime('Europe/Berlin')".into();
        assert_eq!(check_header(Events::NAME, &zoned, &ours), Ok(()));
        let mut drifted = header(&ours);
        drifted.columns[3].1 = "UInt64".into();
        let e = check_header(Events::NAME, &drifted, &ours).expect_err("user_id changed type");
        assert!(e.contains("analytics.events.user_id") && e.contains("UInt64") && e.contains("String"), "{e}");
        let mut fewer = header(&ours);
        fewer.columns.pop();
        assert!(check_header(Events::NAME, &fewer, &ours).is_err());
        let payments = Payments::columns();
        let mut renamed = header(&payments);
        renamed.columns[5].0 = "amount".into();
        assert!(check_header(Payments::NAME, &renamed, &payments).is_err());
    }
}
