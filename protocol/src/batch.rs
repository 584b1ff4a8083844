//! Stream batch entries: many validated records in one rkyv archive.
//!
//! An ingest shard writes one stream entry per batch with the fields
//! `fmt` = [`FORMAT`], `n` = number of records, `m` = the [`Mark`] of the request's append,
//! `batch` = the archive. A worker reads the
//! archive in place ([`access`]) without deserialising it; the archive is validated
//! (bytecheck) first, so a corrupt entry is an error, never undefined behaviour.

use rkyv::rancor;
pub use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::envelope::{EventBatch, Payment};

/// Value of the `fmt` field of a batch entry.
pub const FORMAT: &str = "rkyv1";
/// Field holding [`FORMAT`].
pub const FIELD_FORMAT: &str = "fmt";
/// Field holding the number of records, in decimal.
pub const FIELD_COUNT: &str = "n";
/// Field holding the archive.
pub const FIELD_BATCH: &str = "batch";
/// Field holding the [`Mark`] of the append that wrote the entry.
pub const FIELD_MARK: &str = "m";

/// What an ingest shard writes in every entry of one request's append (field
/// [`FIELD_MARK`]): 32 hexadecimal digits, a 64-bit number the shard drew at random (from
/// the operating system's randomness) when it started, then a count of its appends. Two
/// appends share one only if two shards drew the same number (odds of 2⁻⁶⁴ per pair), so
/// the ingest script takes back an entry only when it carries the mark of a request it
/// refused (`crate::resp::INGEST_SCRIPT`), never one at a place an `XADD` that failed has
/// shifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark([u8; 32]);

impl Mark {
    /// The mark's digits.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A shard's source of [`Mark`]s.
#[derive(Debug)]
pub struct Marks {
    /// The digits of the shard's random number.
    prefix: [u8; 16],
    /// Appends marked so far.
    next: std::cell::Cell<u64>,
}

impl Marks {
    /// Marks starting with the random number `random`.
    pub fn new(random: u64) -> Marks {
        Marks { prefix: hex16(random), next: std::cell::Cell::new(0) }
    }

    /// The next append's mark.
    pub fn next(&self) -> Mark {
        let n = self.next.get();
        self.next.set(n.wrapping_add(1));
        let mut m = [0; 32];
        m[..16].copy_from_slice(&self.prefix);
        m[16..].copy_from_slice(&hex16(n));
        Mark(m)
    }
}

/// `n` as 16 lowercase hexadecimal digits.
fn hex16(n: u64) -> [u8; 16] {
    let mut out = [b'0'; 16];
    // 8 bytes always fill 16 digits: the only error (a length mismatch) cannot occur.
    let _ = hex::encode_to_slice(n.to_be_bytes(), &mut out);
    out
}
/// Field of a Croupier-format entry (one event's JSON per entry).
pub const FIELD_CROUPIER_DATA: &str = "data";

/// The records of one batch: all of one kind.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Records {
    /// Game events (`analytics:events` or `analytics:custom`).
    Events(EventBatch),
    /// Payments (`analytics:payments`).
    Payments(Vec<Payment>),
}

impl Records {
    /// Number of records.
    pub fn len(&self) -> usize {
        match self {
            Records::Events(v) => v.len(),
            Records::Payments(v) => v.len(),
        }
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One batch entry.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Batch {
    /// When ingest accepted the batch, milliseconds since the epoch (for freshness).
    pub accepted_at_ms: i64,
    /// The records.
    pub records: Records,
}

/// A batch archive could not be written or read.
#[derive(Debug)]
pub struct BatchError(String);

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch archive: {}", self.0)
    }
}

impl std::error::Error for BatchError {}

/// Serialises `batch` into `out` (cleared first), reusing its allocation.
pub fn encode_into(batch: &Batch, out: AlignedVec) -> Result<AlignedVec, BatchError> {
    let mut out = out;
    out.clear();
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(batch, out).map_err(|e| BatchError(e.to_string()))
}

/// Serialises `batch` into a new buffer.
pub fn encode(batch: &Batch) -> Result<AlignedVec, BatchError> {
    encode_into(batch, AlignedVec::new())
}

/// Validates and accesses an archive in place. `bytes` must be 16-byte aligned, as an
/// [`AlignedVec`] is; use [`BatchBuf`] for bytes straight off the wire.
pub fn access(bytes: &[u8]) -> Result<&ArchivedBatch, BatchError> {
    // `BoxedError` keeps what the check found (`rancor::Error` keeps nothing in a release
    // build); it is made only when the check fails.
    rkyv::access::<ArchivedBatch, rancor::BoxedError>(bytes).map_err(|e| BatchError(e.to_string()))
}

/// Aligned storage for an archive read from a stream entry, when its bytes are not
/// aligned where they are.
#[derive(Debug, Default)]
pub struct BatchBuf(AlignedVec);

impl BatchBuf {
    /// The archive in `bytes`, validated: read where they are when they start 16-byte
    /// aligned (a reply's value in its own allocation usually does), else copied into
    /// this buffer's aligned storage first (its allocation reused). The copy was a
    /// fortieth of a worker's CPU (perf/CHANGES.md).
    pub fn load<'a>(&'a mut self, bytes: &'a [u8]) -> Result<&'a ArchivedBatch, BatchError> {
        if (bytes.as_ptr() as usize).is_multiple_of(ARCHIVE_ALIGN) {
            return access(bytes);
        }
        self.0.clear();
        self.0.extend_from_slice(bytes);
        access(&self.0)
    }
}

/// The alignment [`access`] needs of an archive's first byte ([`AlignedVec`]'s).
const ARCHIVE_ALIGN: usize = AlignedVec::<16>::ALIGNMENT;

/// Deserialises an archived batch into owned values.
pub fn to_owned(archived: &ArchivedBatch) -> Result<Batch, BatchError> {
    rkyv::deserialize::<Batch, rancor::Error>(archived).map_err(|e| BatchError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::PaymentStatus;

    fn sample_events() -> Batch {
        let e = crate::envelope::Event {
            ts_ms: 1_795_617_749_000,
            game_id: "g1".into(),
            env: "prod".into(),
            event: "login".into(),
            user_id: "u1".into(),
            country: "US".into(),
            event_id: [7; 16],
            props: r#"{"k":1}"#.into(),
            ..crate::envelope::Event::default()
        };
        let mut b = EventBatch::default();
        b.push(&e).expect("fits");
        b.push(&crate::envelope::Event { event: "logout".into(), props: String::new(), ..e }).expect("fits");
        Batch { accepted_at_ms: 1, records: Records::Events(b) }
    }

    #[test]
    fn marks_are_the_random_number_then_a_count_in_hex() {
        let marks = Marks::new(0x0123_4567_89ab_cdef);
        assert_eq!(marks.next().as_bytes(), b"0123456789abcdef0000000000000000");
        assert_eq!(marks.next().as_bytes(), b"0123456789abcdef0000000000000001");
        for _ in 0..253 {
            marks.next();
        }
        assert_eq!(marks.next().as_bytes(), b"0123456789abcdef00000000000000ff");
        assert_ne!(Marks::new(1).next(), Marks::new(2).next());
    }

    #[test]
    fn events_round_trip_in_place_and_owned() {
        let b = sample_events();
        let bytes = encode(&b).expect("encode");
        let a = access(&bytes).expect("access");
        match &a.records {
            ArchivedRecords::Events(v) => {
                assert_eq!(v.len(), 2);
                assert_eq!(v.field(0, crate::envelope::text::EVENT), "login");
                assert_eq!(v.field(1, crate::envelope::text::EVENT), "logout");
                assert_eq!(v.ts_ms(0), 1_795_617_749_000);
                assert_eq!(v.field(0, crate::envelope::text::PROPS), r#"{"k":1}"#);
                assert_eq!(v.field(1, crate::envelope::text::PROPS), "");
                assert_eq!(v.field(1, crate::envelope::text::GAME_ID), "g1");
                assert_eq!(v.event_id(1), [7; 16]);
                // All of an event's fields at once are its fields one by one.
                for i in 0..2 {
                    assert_eq!(v.fields(i), std::array::from_fn(|f| v.field(i, f)), "event {i}");
                }
                assert_eq!(v.fields(0)[crate::envelope::text::COUNTRY], "US");
                assert_eq!(v.fields(2), [""; 11], "past the batch");
            }
            ArchivedRecords::Payments(_) => panic!("wrong kind"),
        }
        assert_eq!(to_owned(a).expect("owned"), b);
    }

    #[test]
    fn payments_round_trip_from_unaligned_bytes() {
        let p = Payment {
            ts_ms: 5,
            order_id: "o-1".into(),
            amount_cents: 999,
            currency: "USD".into(),
            status: PaymentStatus::Refunded,
            ..Payment::default()
        };
        let b = Batch { accepted_at_ms: 9, records: Records::Payments(vec![p]) };
        let bytes = encode(&b).expect("encode");
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        let mut buf = BatchBuf::default();
        let a = buf.load(&shifted[1..]).expect("load");
        assert_eq!(to_owned(a).expect("owned"), b);
    }

    #[test]
    fn an_aligned_archive_is_read_where_it_is_and_a_shifted_one_from_a_copy() {
        let b = sample_events();
        let bytes = encode(&b).expect("encode");
        let mut buf = BatchBuf::default();
        let a = buf.load(&bytes).expect("aligned");
        assert!(std::ptr::eq(
            a as *const ArchivedBatch as *const u8,
            bytes[bytes.len() - size_of::<ArchivedBatch>()..].as_ptr()
        ));
        assert_eq!(to_owned(a).expect("owned"), b);
        // Shifted by 1 to 15 bytes: a copy, the same batch; the copy was made in the buffer.
        for shift in 1..ARCHIVE_ALIGN {
            let mut shifted = vec![0u8; shift];
            shifted.extend_from_slice(&bytes);
            let start = (shifted.as_ptr() as usize + shift) % ARCHIVE_ALIGN;
            let a = buf.load(&shifted[shift..]).expect("shifted");
            assert_eq!(to_owned(a).expect("owned"), b, "shift {shift}");
            if start != 0 {
                assert_eq!(buf.0.as_slice(), bytes.as_slice(), "shift {shift}");
            }
        }
    }

    #[test]
    fn corrupt_archives_are_errors() {
        let bytes = encode(&sample_events()).expect("encode");
        let mut buf = BatchBuf::default();
        assert!(buf.load(&bytes[..bytes.len() / 2]).is_err());
        assert!(buf.load(b"").is_err());
        assert!(buf.load(&[0xff; 64]).is_err());
        // The error says what the check found (a dead letter's reason carries it).
        let e = buf.load(&[0xff; 64]).expect_err("corrupt").to_string();
        assert!(e.starts_with("batch archive: ") && !e.contains("without error information"), "{e}");
    }
}
