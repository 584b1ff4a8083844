//! One key once in `props`: a repeated attribute key (a record may repeat one, the OTLP
//! data model says keys are unique but SDKs do not all enforce it) keeps its last value,
//! at the place of the last, and a record's own `trace_id`, `span_id` and `body` win over
//! attributes of those names — in both encodings, as the slots keep the last value too.
//!
//! Nothing is allocated: the keys written so far are a 64-bit filter ([`Keys`]); only a
//! key the filter may have seen makes [`remove_member`] scan the object written so far
//! (our own output: well-formed, compact, strings escaped by `write_str`) for it.

/// The keys written into one record's `props` so far, as a bit per hash of the key: a
/// clear bit means the key is new; a set bit means it may be a repeat.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keys(u64);

impl Keys {
    /// The key's bit: its length and first and last bytes, mixed without a multiply
    /// (a false hit costs a scan of the `props` written so far, a miss is impossible).
    #[inline]
    fn bit(key: &str) -> u64 {
        let b = key.as_bytes();
        let (first, last) = match b {
            [] => (0, 0),
            [f, .., l] => (*f, *l),
            [f] => (*f, *f),
        };
        let h = (b.len() as u32) ^ (u32::from(first) << 1) ^ (u32::from(last) << 3);
        1 << (h & 63)
    }

    /// Notes `key` as written; whether it may have been written before.
    #[inline]
    pub fn add(&mut self, key: &str) -> bool {
        let bit = Keys::bit(key);
        let seen = self.0 & bit != 0;
        self.0 |= bit;
        seen
    }

    /// Whether `key` may have been written (without noting it).
    #[inline]
    pub fn may_have(&self, key: &str) -> bool {
        self.0 & Keys::bit(key) != 0
    }
}

/// The end (exclusive) of the JSON string starting at `b[at]` (a `"`), or `b.len()`.
fn string_end(b: &[u8], at: usize) -> usize {
    let mut i = at + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// The end (exclusive) of the JSON value starting at `b[at]`: the next `,` outside
/// strings and nested values, or `b.len()`.
fn value_end(b: &[u8], at: usize) -> usize {
    let mut depth = 0usize;
    let mut i = at;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = string_end(b, i);
                continue;
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    b.len()
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

/// Removes the member named `key` from the JSON object being written in `props` (its
/// `{` and members so far, without the closing `}`), with its comma; whether one was.
pub fn remove_member(props: &mut String, key: &str) -> bool {
    let b = props.as_bytes();
    let mut at = 1;
    while at < b.len() && b[at] == b'"' {
        let key_end = string_end(b, at);
        let end = value_end(b, key_end + 1);
        if escaped_eq(&b[at + 1..key_end.saturating_sub(1).max(at + 1)], key) {
            // With the comma after it, or before it when it is the last member.
            let range = if end < b.len() {
                at..end + 1
            } else if at > 1 {
                at - 1..end
            } else {
                at..end
            };
            props.replace_range(range, "");
            return true;
        }
        at = end + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_found_by_key_and_removed_with_their_comma() {
        let body = r#"{"a":1,"b\"":{"a":[1,"x,\"a\":"]},"c":"\u0001,","d\n":null"#;
        for (key, want) in [
            ("a", r#"{"b\"":{"a":[1,"x,\"a\":"]},"c":"\u0001,","d\n":null"#),
            ("b\"", r#"{"a":1,"c":"\u0001,","d\n":null"#),
            ("c", r#"{"a":1,"b\"":{"a":[1,"x,\"a\":"]},"d\n":null"#),
            ("d\n", r#"{"a":1,"b\"":{"a":[1,"x,\"a\":"]},"c":"\u0001,""#),
        ] {
            let mut props = body.to_owned();
            assert!(remove_member(&mut props, key), "{key:?}");
            assert_eq!(props, want, "{key:?}");
        }
        for key in ["x", "", "\u{1}", "a\":"] {
            let mut props = body.to_owned();
            assert!(!remove_member(&mut props, key), "{key:?}");
            assert_eq!(props, body);
        }
        let mut one = r#"{"a":"x""#.to_owned();
        assert!(remove_member(&mut one, "a"));
        assert_eq!(one, "{");
        let mut empty = "{".to_owned();
        assert!(!remove_member(&mut empty, "a"));
    }

    #[test]
    fn the_filter_has_no_false_negatives() {
        let mut keys = Keys::default();
        let names = ["a", "game.region", "k", "", "trace_id", "x.y.z", "€"];
        for (i, n) in names.iter().enumerate() {
            assert!(!keys.add(n) || names[..i].iter().any(|m| Keys::bit(m) == Keys::bit(n)));
        }
        assert!(names.iter().all(|n| keys.may_have(n) && keys.add(n)));
    }
}
