//! Rows of one insert grouped into blocks so that no block spans more than a set number
//! of partitions.
//!
//! `analytics.events` and `analytics.payments` are partitioned by `toYYYYMM` of their
//! time column, and that time is the device's: a batch whose events are spread over many
//! months makes a block with many partitions. ClickHouse 19 and later refuse a block with
//! more than `max_partitions_per_insert_block` (100) partitions (code 252), and retrying
//! the same block would stall the stream for good. So rows are grouped by month into as
//! few blocks as the limit allows: each month goes to the block that already holds it, or
//! to the newest block while that has room, or to a new block. Every partition then gets
//! exactly one part per insert (the fewest possible), and typical batches (one or two
//! months) stay one block.
//!
//! Months are computed in UTC. `toYYYYMM` uses the server's time zone, which shifts a time
//! near a month's boundary into the neighbouring month; unless the server runs in UTC a
//! month therefore reserves its two neighbours as well (a block then holds at least a
//! third of the limit in months, and contiguous months nearly the limit).

use std::collections::HashMap;

use super::rows::{Table, TableRows};

/// ClickHouse's default `max_partitions_per_insert_block`.
pub const DEFAULT_LIMIT: usize = 100;

/// Months since 1970-01 (UTC) of a Unix time in seconds, and the seconds where that
/// month starts and the next one starts.
pub fn utc_month(secs: u32) -> (u32, u32, u32) {
    let days = secs / 86_400;
    // Howard Hinnant's civil_from_days, on days since 1970-01-01 (unsigned: all `u32`
    // seconds lie after the epoch).
    let z = u64::from(days) + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5; // 0-based day of the month
    let month0 = if mp < 10 { mp + 2 } else { mp - 10 }; // 0 = January
    let year = yoe + era * 400 + u64::from(month0 < 2);
    let index = (year - 1970) * 12 + month0;
    let start = (u64::from(days) - day) * 86_400;
    let len_days = match month0 {
        1 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        1 => 28,
        3 | 5 | 8 | 10 => 30,
        _ => 31,
    };
    // The month after the last one of the `u32` range starts past it: saturate, which
    // only makes that month's range one second short.
    let end = (start + len_days * 86_400).min(u64::from(u32::MAX));
    (index as u32, start as u32, end as u32)
}

/// Rows of table `T` for one insert, in blocks of at most `limit` partitions each.
pub struct PartitionedRows<T> {
    /// Blocks; the first `used` are in use, the rest kept for their allocations.
    blocks: Vec<TableRows<T>>,
    used: usize,
    /// Per block in use: the server months it may hold.
    reserved: Vec<Vec<u32>>,
    /// UTC month → block.
    assigned: HashMap<u32, usize>,
    /// The last row's month: `[start, end)` in seconds and its block.
    last: Option<(u32, u32, usize)>,
    limit: usize,
    neighbours: bool,
}

impl<T: Table> PartitionedRows<T> {
    /// No rows; blocks of at most `limit` partitions, reserving each month's neighbours
    /// when `neighbours` (a server not in UTC).
    pub fn new(limit: usize, neighbours: bool) -> Self {
        PartitionedRows {
            blocks: Vec::new(),
            used: 0,
            reserved: Vec::new(),
            assigned: HashMap::new(),
            last: None,
            limit: limit.max(1),
            neighbours,
        }
    }

    /// The partitions a block may span.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Sets the partitions a block may span (at least 1) and whether months reserve their
    /// neighbours; takes effect from the next [`PartitionedRows::clear`].
    pub fn set_limit(&mut self, limit: usize, neighbours: bool) {
        self.limit = limit.max(1);
        self.neighbours = neighbours;
    }

    /// The block a row at `secs` (Unix seconds, as written to the `DateTime` column)
    /// goes to.
    pub fn block(&mut self, secs: u32) -> &mut TableRows<T> {
        let index = match self.last {
            Some((start, end, b)) if (start..end).contains(&secs) => b,
            _ => {
                let (month, start, end) = utc_month(secs);
                let b = self.assign(month);
                self.last = Some((start, end, b));
                b
            }
        };
        &mut self.blocks[index]
    }

    fn assign(&mut self, month: u32) -> usize {
        if let Some(&b) = self.assigned.get(&month) {
            return b;
        }
        let wanted: &[u32] =
            if self.neighbours { &[month.saturating_sub(1), month, month.saturating_add(1)] } else { &[month] };
        let fits = |r: &Vec<u32>| r.len() + wanted.iter().filter(|m| !r.contains(m)).count() <= self.limit;
        let b = match self.used.checked_sub(1) {
            Some(newest) if fits(&self.reserved[newest]) => newest,
            _ => self.open(),
        };
        for m in wanted {
            if !self.reserved[b].contains(m) {
                self.reserved[b].push(*m);
            }
        }
        self.assigned.insert(month, b);
        b
    }

    fn open(&mut self) -> usize {
        if self.used == self.blocks.len() {
            self.blocks.push(TableRows::new());
            self.reserved.push(Vec::new());
        }
        self.used += 1;
        self.used - 1
    }

    /// The blocks in use (some may have been sent and be empty).
    pub fn blocks_mut(&mut self) -> &mut [TableRows<T>] {
        &mut self.blocks[..self.used]
    }

    /// Rows not sent yet.
    pub fn rows(&self) -> usize {
        self.blocks[..self.used].iter().map(|b| b.rows).sum()
    }

    /// Starts a new insert: no rows, no months; allocations kept.
    pub fn clear(&mut self) {
        for b in &mut self.blocks[..self.used] {
            b.clear();
        }
        for r in &mut self.reserved[..self.used] {
            r.clear();
        }
        self.used = 0;
        self.assigned.clear();
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::rows::{EventRows, Events};
    use croupier_protocol::envelope::Event;

    fn month_start(year: u32, month0: u32) -> u32 {
        let t = time::Date::from_calendar_date(year as i32, time::Month::try_from(month0 as u8 + 1).unwrap(), 1)
            .unwrap()
            .midnight()
            .assume_utc()
            .unix_timestamp();
        t as u32
    }

    #[test]
    fn months_match_the_calendar() {
        for year in [1970u32, 1999, 2000, 2024, 2026, 2100, 2105] {
            for m in 0..12 {
                let start = month_start(year, m);
                let next = if m == 11 { month_start(year + 1, 0) } else { month_start(year, m + 1) };
                let want = (year - 1970) * 12 + m;
                assert_eq!(utc_month(start), (want, start, next), "{year}-{m}");
                assert_eq!(utc_month(next - 1), (want, start, next), "{year}-{m} last second");
                assert_eq!(utc_month(start + 15 * 86_400 + 7).0, want);
            }
        }
        assert_eq!(utc_month(u32::MAX).0, (2106 - 1970) * 12 + 1, "2106-02");
        assert_eq!(utc_month(u32::MAX).2, u32::MAX);
    }

    fn event(secs: u32) -> Event {
        Event { ts_ms: i64::from(secs) * 1000, game_id: "g".into(), env: "prod".into(), ..Event::default() }
    }

    /// Server months a block's rows fall in, for a server at `offset` seconds from UTC.
    fn server_months(rows: &EventRows, offset: i64) -> std::collections::BTreeSet<u32> {
        let croupier_protocol::clickhouse::block::ColumnData::Fixed { bytes, .. } = &rows.columns[0].data else {
            panic!("event_time is fixed-width")
        };
        bytes
            .chunks(4)
            .map(|b| {
                let secs = i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                utc_month((secs + offset) as u32).0
            })
            .collect()
    }

    #[test]
    fn c3_no_block_spans_more_partitions_than_the_limit() {
        // 150 events in 150 different months, from 2001 on, in a shuffled order.
        let mut secs: Vec<u32> =
            (0..150u32).map(|i| month_start(2001 + i / 12, i % 12) + (i % 28) * 86_400 + 3600).collect();
        secs.sort_by_key(|s| s.wrapping_mul(2_654_435_761));
        let mut p: PartitionedRows<Events> = PartitionedRows::new(DEFAULT_LIMIT, false);
        for &s in &secs {
            p.block(s).push(&event(s), 0);
        }
        assert_eq!(p.rows(), 150, "every row kept");
        let blocks = p.blocks_mut();
        assert_eq!(blocks.len(), 2, "150 months in two blocks of at most 100");
        let mut seen = std::collections::BTreeSet::new();
        for b in blocks.iter() {
            let months = server_months(b, 0);
            assert!(months.len() <= DEFAULT_LIMIT, "{} partitions in one block", months.len());
            assert!(months.is_disjoint(&seen), "a month in two blocks makes two parts");
            seen.extend(months);
        }
        assert_eq!(seen.len(), 150);
    }

    #[test]
    fn c3_outside_utc_neighbouring_months_are_reserved() {
        // Rows on the first and last hours of 150 months: in any time zone within ±14 h
        // they fall in other months than in UTC.
        let mut p: PartitionedRows<Events> = PartitionedRows::new(10, true);
        for i in 0..150u32 {
            let start = month_start(2001 + i / 12, i % 12);
            for s in [start + 60, start + 20 * 86_400, utc_month(start).2 - 60] {
                p.block(s).push(&event(s), 0);
            }
        }
        assert_eq!(p.rows(), 450);
        for offset in [-14 * 3600, -5 * 3600, 0, 3600, 9 * 3600, 14 * 3600] {
            for b in p.blocks_mut().iter() {
                let months = server_months(b, offset);
                assert!(months.len() <= 10, "{} partitions at offset {offset}", months.len());
            }
        }
    }

    #[test]
    fn typical_batches_stay_one_block_and_blocks_are_reused() {
        let mut p: PartitionedRows<Events> = PartitionedRows::new(DEFAULT_LIMIT, true);
        let now = month_start(2026, 10) + 86_400 * 12;
        for i in 0..1000 {
            let s = now + i * 60;
            p.block(s).push(&event(s), 0);
        }
        // Late events from last month and early ones of the next.
        let late = month_start(2026, 9) + 3600;
        p.block(late).push(&event(late), 0);
        let early = month_start(2026, 11) + 3600;
        p.block(early).push(&event(early), 0);
        assert_eq!(p.blocks_mut().len(), 1);
        assert_eq!(p.rows(), 1002);
        p.clear();
        assert_eq!((p.rows(), p.blocks_mut().len()), (0, 0));
        let s = month_start(2001, 0);
        p.block(s).push(&event(s), 0);
        assert_eq!(p.blocks_mut().len(), 1);
    }

    #[test]
    fn a_limit_of_one_gives_a_block_per_month() {
        let mut p: PartitionedRows<Events> = PartitionedRows::new(1, true);
        for i in 0..5u32 {
            let s = month_start(2010, i) + 86_400;
            p.block(s).push(&event(s), 0);
            p.block(s + 1).push(&event(s + 1), 0);
        }
        assert_eq!(p.blocks_mut().len(), 5);
        assert!(p.blocks_mut().iter().all(|b| b.rows == 2));
    }
}
