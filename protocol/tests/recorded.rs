//! Server responses recorded from a real clickhouse-server 18.16.1 (revision 54412) by
//! `scripts/record_clickhouse.py`, decoded by the client side of the native protocol.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use croupier_protocol::clickhouse::packet::{decode, ServerPacket};

const REV: u64 = 54412;

fn one(bytes: &[u8], revision: u64) -> ServerPacket {
    let (p, used) = decode(bytes, revision).expect("decodes").expect("complete");
    assert_eq!(used, bytes.len(), "one packet, all bytes used");
    p
}

#[test]
fn hello() {
    let bytes = include_bytes!("data/hello_18_16.bin");
    let ServerPacket::Hello(h) = one(bytes, REV) else { panic!("hello") };
    assert_eq!((h.name.as_str(), h.major, h.minor, h.revision), ("ClickHouse", 18, 16, 54412));
    assert_eq!(h.timezone, "Etc/UTC");
    assert_eq!(h.patch, 1);
    assert_eq!(h.negotiated_revision(), 54412);
    // Every prefix is "incomplete", never an error.
    for n in 0..bytes.len() {
        assert_eq!(decode(&bytes[..n], REV), Ok(None), "prefix {n}");
    }
}

#[test]
fn exception() {
    let ServerPacket::Exception(e) = one(include_bytes!("data/exception_unknown_table.bin"), REV) else {
        panic!("exception")
    };
    assert_eq!(e.code, 60);
    assert_eq!(e.name, "DB::Exception");
    assert!(e.message.contains("Table default.no_such_table doesn't exist"), "{}", e.message);
    assert!(e.nested.is_none());
}

#[test]
fn end_of_stream_and_insert_header() {
    assert_eq!(one(include_bytes!("data/ddl_end_of_stream.bin"), REV), ServerPacket::EndOfStream);
    let ServerPacket::Data(h) = one(include_bytes!("data/insert_header.bin"), REV) else { panic!("data") };
    assert_eq!(h.rows, 0);
    assert_eq!(h.columns, vec![("a".to_owned(), "UInt32".to_owned()), ("b".to_owned(), "String".to_owned())]);
}
