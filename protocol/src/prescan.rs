//! Checks on a JSON request body that run before it is parsed, on the raw bytes.
//!
//! Parsing costs memory and time in proportion to the number of JSON values: a 10 MiB
//! `[0,0,...]` is five million tape nodes (about 1 s and 300+ MB), although the batch is
//! refused for its record count anyway. [`records_may_exceed`] counts the top-level
//! elements without building anything. [`lone_surrogate`] finds the `\uD800`-style
//! escapes that simd-json would turn into U+0000 instead of refusing.

/// Bodies shorter than this are not counted: a parse of them costs little in any case,
/// and a typical request (about 30 KB) skips the scan.
pub const COUNT_FROM_BYTES: usize = 256 << 10;

/// Whether `body` may hold more than `max` records: more than `max` elements in an array
/// at the top level or one level below (where `{"events":[...]}` keeps them). Commas in
/// strings and in deeper values (a record's fields, `props`) are not counted. An array
/// one level below the top of an array body is not a record list, and counting it too
/// can only refuse a body whose records are not objects, which is refused anyway.
///
/// A body shorter than [`COUNT_FROM_BYTES`] or with at most `max` commas in all is not
/// scanned element by element. The scan stops at the first element past `max`.
pub fn records_may_exceed(body: &[u8], max: usize) -> bool {
    body.len() >= COUNT_FROM_BYTES && records_may_exceed_any_size(body, max)
}

/// [`records_may_exceed`] for a body of any size: for limits far below the parser's
/// (a public write key's burst), where even a short body's parse is worth sparing.
pub fn records_may_exceed_any_size(body: &[u8], max: usize) -> bool {
    // Every element after an array's first follows a comma, and each element is a byte
    // at least.
    if body.len() / 2 < max {
        return false;
    }
    // Every element after an array's first follows a comma: more than `max` elements
    // need at least `max` commas.
    if memchr::memchr_iter(b',', body).nth(max.saturating_sub(1)).is_none() {
        return false;
    }
    // Elements of each open container at depth 1 and 2 (index = depth); `is_array`
    // says whether it counts.
    let mut elements = [0usize; 3];
    let mut is_array = [false; 3];
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        match b {
            b'"' => match string_end(body, i) {
                Some(end) => i = end,
                // Unterminated: the parser will say so.
                None => return false,
            },
            b'[' | b'{' => {
                depth += 1;
                if let (Some(e), Some(a)) = (elements.get_mut(depth), is_array.get_mut(depth)) {
                    *e = 1;
                    *a = b == b'[';
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' => {
                if let (Some(e), Some(true)) = (elements.get_mut(depth), is_array.get(depth)) {
                    *e += 1;
                    if *e > max {
                        return true;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// The offset of the quote that closes the string opened at `open`, past escapes
/// (`None` when it is not closed).
fn string_end(body: &[u8], open: usize) -> Option<usize> {
    let mut j = open + 1;
    loop {
        let k = memchr::memchr2(b'"', b'\\', body.get(j..)?)?;
        if body.get(j + k) == Some(&b'\\') {
            j += k + 2;
        } else {
            return Some(j + k);
        }
    }
}

/// Whether `body` nests arrays and objects deeper than `max_depth` anywhere outside
/// strings. A parse of `[[[[...` builds a tape node and a stack level per bracket: a 10 MiB
/// body of brackets costs the parse a second and hundreds of MB, although the validator
/// refuses it for its depth anyway. Bodies shorter than [`COUNT_FROM_BYTES`] are not
/// scanned (their parse is cheap; the validator checks their depth on the tape).
/// The scan stops at the first level past `max_depth`.
pub fn nesting_exceeds(body: &[u8], max_depth: usize) -> bool {
    if body.len() < COUNT_FROM_BYTES {
        return false;
    }
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(k) = memchr::memchr3(b'"', b'[', b'{', body.get(i..).unwrap_or_default()) {
        let at = i + k;
        // Closing brackets between `i` and `at` lower the depth.
        let closed = body.get(i..at).unwrap_or_default().iter().filter(|&&b| b == b']' || b == b'}').count();
        depth = depth.saturating_sub(closed);
        if body.get(at) == Some(&b'"') {
            match string_end(body, at) {
                Some(end) => i = end + 1,
                // Unterminated: the parser will say so.
                None => return false,
            }
        } else {
            depth += 1;
            if depth > max_depth {
                return true;
            }
            i = at + 1;
        }
    }
    false
}

fn hex4(b: Option<&[u8]>) -> Option<u16> {
    let s = std::str::from_utf8(b?).ok()?;
    if !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(s, 16).ok()
}

/// The offset of the first `\u` escape of a lone UTF-16 surrogate in `body`: a high
/// surrogate (`\uD800`-`\uDBFF`) not followed by an escaped low one (`\uDC00`-`\uDFFF`),
/// or a low one on its own. Every backslash of a valid JSON text starts an escape inside
/// a string, so the bytes need no parsing: from each backslash, the escape is read and
/// skipped. A body without backslashes costs one `memchr` pass.
pub fn lone_surrogate(body: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(k) = memchr::memchr(b'\\', body.get(i..).unwrap_or_default()) {
        let at = i + k;
        if body.get(at + 1) != Some(&b'u') {
            i = at + 2;
            continue;
        }
        match hex4(body.get(at + 2..at + 6)) {
            Some(0xD800..=0xDBFF) => {
                let low = body.get(at + 6..at + 8) == Some(b"\\u".as_slice())
                    && matches!(hex4(body.get(at + 8..at + 12)), Some(0xDC00..=0xDFFF));
                if !low {
                    return Some(at);
                }
                i = at + 12;
            }
            Some(0xDC00..=0xDFFF) => return Some(at),
            // Any other escape, or a malformed one (the parser refuses it).
            _ => i = at + 2,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_top_level_elements_only() {
        let pad = " ".repeat(COUNT_FROM_BYTES);
        let body = |inner: &str| format!("{inner}{pad}").into_bytes();
        assert!(!records_may_exceed(&body("[0,0,0]"), 3));
        assert!(records_may_exceed(&body("[0,0,0,0]"), 3));
        assert!(records_may_exceed(&body(r#"{"events":[0,0,0,0]}"#), 3));
        assert!(!records_may_exceed(&body(r#"[{"a":[0,0,0,0,0]},{"b":",,,,"}]"#), 3));
        assert!(!records_may_exceed(&body(r#"["\",,,,\\",0]"#), 3));
        assert!(!records_may_exceed(&body(r#"{"a":1,"b":2,"c":3,"d":4,"e":5}"#), 3));
        // Short bodies are not scanned.
        assert!(!records_may_exceed(b"[0,0,0,0]", 3));
    }

    #[test]
    fn attack_deep_nesting_of_a_large_body_is_found_before_the_parse() {
        let pad = " ".repeat(COUNT_FROM_BYTES);
        let body = |inner: &str| format!("{inner}{pad}").into_bytes();
        // Found by a black-box run: 10 MiB of `[` cost the parse up to 1.7 s and ~700 MB.
        assert!(nesting_exceeds(&"[".repeat(COUNT_FROM_BYTES + 1).into_bytes(), 16));
        assert!(nesting_exceeds(&body(&format!("{}{}", "[".repeat(17), "]".repeat(17))), 16));
        assert!(!nesting_exceeds(&body(&format!("{}{}", "[".repeat(16), "]".repeat(16))), 16));
        // Siblings do not add up; brackets in strings do not count.
        let siblings = format!("[{}0]", r#"{"a":{"b":[1]}},"#.repeat(1000));
        assert!(!nesting_exceeds(&body(&siblings), 4));
        assert!(nesting_exceeds(&body(&siblings), 3));
        assert!(!nesting_exceeds(&body(r#"["[[[[[[", "\"{{{{{{{{"]"#), 2));
        // Short bodies are left to the validator.
        assert!(!nesting_exceeds(&"[".repeat(100).into_bytes(), 16));
    }

    #[test]
    fn finds_lone_surrogates_only() {
        assert_eq!(lone_surrogate(br#"["a\ud800b"]"#), Some(3));
        assert_eq!(lone_surrogate(br#"["\udc00"]"#), Some(2));
        assert_eq!(lone_surrogate(br#"["\uD800\u0041"]"#), Some(2));
        assert_eq!(lone_surrogate(br#"["\ud800"#), Some(2));
        assert_eq!(lone_surrogate(br#"["\ud83d\ude00 \u00e9 \n \\ud800 \\\ud83d\ude00"]"#), None);
        assert_eq!(lone_surrogate(br#"["\\\ud800"]"#), Some(4));
        assert_eq!(lone_surrogate(b"[]"), None);
    }
}
