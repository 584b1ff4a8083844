//! One key once in `props`: a repeated attribute key (a record may repeat one, the OTLP
//! data model says keys are unique but SDKs do not all enforce it) keeps its last value,
//! at the place of the last, and a record's own `trace_id`, `span_id` and `body` win over
//! attributes of those names — in both encodings, as the slots keep the last value too.
//!
//! Each member written is noted in [`Props`]: its place in the text and, in an
//! open-addressing table indexed by a seeded hash of the whole key, where to find it. A
//! repeat marks the earlier member dead in O(1); the dead members are cut out once, when
//! the record's attributes are all written ([`Props::compact`]). Writing stops as soon as
//! the text passes the props limit (the record is then rejected as too long), so one
//! record costs O(its attributes + the limit) whatever its keys. The table and lists are
//! the shard's, reused: nothing is allocated per record once they have grown.

use std::hash::BuildHasher;

/// A member written into `props`: its bytes (from its leading comma, if any), where its
/// key's quoted text is, and the key's hash.
#[derive(Debug, Clone, Copy)]
struct Member {
    start: u32,
    key: u32,
    key_end: u32,
    end: u32,
    hash: u64,
    live: bool,
}

/// One record's `props` being written (the text opened with `{`) and the members in it;
/// reused between records and requests.
#[derive(Debug, Default)]
pub struct Props {
    /// The JSON text.
    pub text: String,
    members: Vec<Member>,
    /// Cells of `(generation, member index)`; a cell of another generation is empty.
    table: Vec<(u32, u32)>,
    generation: u32,
    hasher: foldhash::fast::RandomState,
    dead: usize,
    /// Set when the text passed the limit and writing stopped.
    overflow: bool,
    /// Where a compaction builds the text.
    spare: String,
    /// Table cells probed since this buffer was made (for tests: the work is bounded).
    probes: u64,
}

impl Props {
    /// Starts a record's `props`: `{` and no member. The table is sized for a text of
    /// `limit` bytes (every member takes at least 4, `"":0`), once.
    pub fn begin(&mut self, limit: usize) {
        self.text.clear();
        self.text.push('{');
        self.members.clear();
        self.dead = 0;
        self.overflow = false;
        let cells = ((limit / 4 + 2) * 2).next_power_of_two();
        if self.table.len() < cells {
            self.table.clear();
            self.table.resize(cells, (0, 0));
            self.generation = 0;
        }
        self.next_generation();
    }

    /// Empties the table in O(1): cells of an older generation are empty.
    fn next_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.table.fill((0, 0));
            self.generation = 1;
        }
    }

    /// Lets go of text buffers a large record grew past `keep` bytes (the table's size
    /// follows the limit, not the records).
    pub fn trim(&mut self, keep: usize) {
        if self.text.capacity() > keep {
            self.text = String::new();
        }
        if self.spare.capacity() > keep {
            self.spare = String::new();
        }
    }

    /// Whether writing stopped because the text passed the limit.
    pub fn overflow(&self) -> bool {
        self.overflow
    }

    /// Table cells probed since this buffer was made: at most a few per member written.
    pub fn probes(&self) -> u64 {
        self.probes
    }

    /// Writes the member `key` with the value `value` writes, unless writing stopped; an
    /// earlier member of that key dies. Once the text passes `limit` bytes, writing
    /// stops ([`Props::overflow`]). An error of `value` is handed back (the text is then
    /// unfinished).
    pub fn member<E>(
        &mut self,
        key: &str,
        limit: usize,
        value: impl FnOnce(&mut String) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.overflow {
            return Ok(());
        }
        let start = self.text.len();
        // A key alone past the limit is not written (nor its value).
        if start.saturating_add(key.len()) > limit {
            self.overflow = true;
            return Ok(());
        }
        if start > 1 {
            self.text.push(',');
        }
        let key_at = self.text.len();
        super::any::write_str(&mut self.text, key);
        let key_end = self.text.len();
        self.text.push(':');
        value(&mut self.text)?;
        let end = self.text.len();
        let (Ok(start), Ok(key_at), Ok(key_end), Ok(end_u32), Ok(index)) = (
            u32::try_from(start),
            u32::try_from(key_at),
            u32::try_from(key_end),
            u32::try_from(end),
            u32::try_from(self.members.len()),
        ) else {
            self.overflow = true;
            return Ok(());
        };
        // The table stays at most half full (see `begin`); checked all the same.
        if end > limit || (self.members.len() + 1) * 2 > self.table.len() {
            self.overflow = true;
            return Ok(());
        }
        let hash = self.hasher.hash_one(key.as_bytes());
        let (cell, old) = self.find(key, hash);
        if let Some(old) = old {
            self.kill_member(old);
        }
        if let Some(c) = self.table.get_mut(cell) {
            *c = (self.generation, index);
        }
        self.members.push(Member { start, key: key_at, key_end, end: end_u32, hash, live: true });
        Ok(())
    }

    /// The cell for `key`: the one holding its member (and that member's index), or the
    /// empty one where it would go.
    fn find(&mut self, key: &str, hash: u64) -> (usize, Option<u32>) {
        let mask = self.table.len().wrapping_sub(1);
        let mut i = hash as usize & mask;
        for _ in 0..self.table.len() {
            self.probes += 1;
            let Some(&(generation, m)) = self.table.get(i) else { break };
            if generation != self.generation {
                return (i, None);
            }
            if let Some(member) = self.members.get(m as usize) {
                let quoted = self.text.as_bytes().get(member.key as usize + 1..member.key_end as usize - 1);
                if member.hash == hash && quoted.is_some_and(|q| escaped_eq(q, key)) {
                    return (i, Some(m));
                }
            }
            i = (i + 1) & mask;
        }
        (usize::MAX, None)
    }

    fn kill_member(&mut self, m: u32) {
        if let Some(member) = self.members.get_mut(m as usize) {
            if member.live {
                member.live = false;
                self.dead += 1;
            }
        }
    }

    /// Removes the member named `key`, if written (a record's own field of that name
    /// follows); whether one was.
    pub fn remove(&mut self, key: &str) -> bool {
        let hash = self.hasher.hash_one(key.as_bytes());
        match self.find(key, hash) {
            (_, Some(m)) => {
                self.kill_member(m);
                true
            }
            _ => false,
        }
    }

    /// Cuts the dead members out of the text, in one pass; afterwards the text is only
    /// appended to (no member is noted any more).
    pub fn compact(&mut self) {
        if self.dead > 0 {
            self.spare.clear();
            self.spare.push('{');
            for m in self.members.iter().filter(|m| m.live) {
                let bytes = self.text.get(m.start as usize..m.end as usize).unwrap_or("");
                let bytes = bytes.strip_prefix(',').unwrap_or(bytes);
                if self.spare.len() > 1 {
                    self.spare.push(',');
                }
                self.spare.push_str(bytes);
            }
            std::mem::swap(&mut self.text, &mut self.spare);
        }
        self.members.clear();
        self.dead = 0;
        self.next_generation();
    }
}

/// Whether `escaped` (a JSON string's text between its quotes, as `write_str` writes it)
/// is `raw`.
fn escaped_eq(escaped: &[u8], raw: &str) -> bool {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut e = escaped;
    for b in raw.bytes() {
        let mut buf = [b'\\', b'u', b'0', b'0', 0, 0];
        let want: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                buf[4] = HEX[usize::from(b >> 4)];
                buf[5] = HEX[usize::from(b & 15)];
                &buf
            }
            _ => {
                buf[0] = b;
                &buf[..1]
            }
        };
        match e.strip_prefix(want) {
            Some(rest) => e = rest,
            None => return false,
        }
    }
    e.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(members: &[(&str, &str)], remove: &[&str]) -> String {
        let mut p = Props::default();
        p.begin(1024);
        for (k, v) in members {
            p.member(k, 1024, |t| -> Result<(), ()> {
                t.push_str(v);
                Ok(())
            })
            .expect("writes");
        }
        for k in remove {
            p.remove(k);
        }
        p.compact();
        p.text
    }

    #[test]
    fn a_repeat_keeps_the_last_value_at_the_place_of_the_last() {
        assert_eq!(written(&[("a", "1"), ("b\"", "2"), ("a", "3")], &[]), r#"{"b\"":2,"a":3"#);
        assert_eq!(written(&[("a", "1"), ("a", "2"), ("a", "3")], &[]), r#"{"a":3"#);
        assert_eq!(
            written(&[("a", "1"), ("d\n", "2"), ("\u{1}", "3"), ("d\n", "4")], &["a"]),
            r#"{"\u0001":3,"d\n":4"#
        );
        assert_eq!(written(&[("a", "1")], &["a"]), "{");
        assert_eq!(written(&[("a", "1")], &["x", "", "a\":"]), r#"{"a":1"#);
        assert_eq!(written(&[], &["a"]), "{");
    }

    #[test]
    fn writing_stops_past_the_limit() {
        let mut p = Props::default();
        p.begin(64);
        for i in 0..1000 {
            p.member(&format!("k{i}"), 64, |t| -> Result<(), ()> {
                t.push('1');
                Ok(())
            })
            .expect("writes");
        }
        assert!(p.overflow());
        assert!(p.text.len() <= 64 + 8, "{}", p.text);
    }
}
