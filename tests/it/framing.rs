//! HTTP framing under hostile input: chunk sizes, chunk lines, bodies where none is
//! expected, header syntax. Each test is named after the finding it pins down.

use croupier_control::config::Driver;

use crate::fixture::{both_drivers, Fixture};

both_drivers!(c1_chunk_size_near_u64_max_is_refused_not_a_panic);

/// Connections opened per check: enough that every shard of the fixture gets some
/// (the kernel spreads connections over the SO_REUSEPORT group by hash).
const SPREAD: usize = 16;

/// Every shard still answers `/healthz` on new connections.
fn every_shard_answers(f: &Fixture) {
    for _ in 0..SPREAD {
        let r = f.client().request("GET", "/healthz", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

fn c1_chunk_size_near_u64_max_is_refused_not_a_panic(driver: Driver) {
    let f = Fixture::start(driver, |_| {});
    // The 80 bytes of the finding: no credentials, a route that does not exist.
    let poison: &[u8] =
        b"POST /anything HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nFFFFFFFFFFFFFFFE\r\n";
    for _ in 0..SPREAD {
        let mut c = f.client();
        c.send_raw(poison);
        let r = c.try_read_reply().expect("an answer, not a dead shard");
        assert!((400..500).contains(&r.status), "{} {}", r.status, r.text());
    }
    every_shard_answers(&f);
}
