//! Safe SQL for ClickHouse 18.16, which has no query parameters: every value that comes
//! from a request is written into a query by [`quote`] (the one escaping function) or is
//! a number the API parsed itself; identifiers (dimensions, prop keys) come from an
//! allow-list ([`dimension`]) or a strict pattern ([`prop_key`]).

use super::error::ApiError;

/// A string literal for ClickHouse: `'...'` with backslash, quote, and every control
/// character escaped (ClickHouse reads `\xHH` in literals on every version), so nothing
/// inside can end the literal or the statement.
pub fn quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `(a, b, c)`, each quoted: the right side of `IN`.
pub fn quote_list<S: AsRef<str>>(vs: &[S]) -> String {
    let items: Vec<String> = vs.iter().map(|v| quote(v.as_ref())).collect();
    format!("({})", items.join(", "))
}

/// A key of `props` (`[A-Za-z0-9_]`, 1 to 64 characters), as Croupier allows.
pub fn prop_key(field: &'static str, k: &str) -> Result<String, ApiError> {
    if k.is_empty() || k.len() > 64 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(ApiError::param(field, "expected 1 to 64 of A-Z a-z 0-9 _"));
    }
    Ok(k.to_owned())
}

/// The value of `props.<key>` as a string, on every ClickHouse version (18.16 has no
/// JSON functions but the `visitParam` ones): a JSON string is its value, unescaped
/// (`visitParamExtractString`), as `JSON_VALUE` reads it; anything else its text
/// (`visitParamExtractRaw`). The first `"<key>":` of the text, nested ones included
/// (docs/analytics-api.md). `key` must come from [`prop_key`] or a constant.
pub fn prop(key: &str) -> String {
    let k = quote(key);
    format!(
        "if(startsWith(visitParamExtractRaw(props_json, {k}), '\"'), visitParamExtractString(props_json, {k}), \
         visitParamExtractRaw(props_json, {k}))"
    )
}

/// A dimension column of `table` from its allow-list: `Some(column)` or `None`.
pub fn dimension(allowed: &[&'static str], name: &str) -> Option<&'static str> {
    allowed.iter().copied().find(|d| *d == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_what_could_end_a_literal() {
        assert_eq!(quote("a"), "'a'");
        assert_eq!(quote("it's"), r"'it\'s'");
        assert_eq!(quote(r"a\"), r"'a\\'");
        assert_eq!(quote(r"\'"), r"'\\\''");
        assert_eq!(quote("x\n\0y"), r"'x\x0A\x00y'");
        assert_eq!(quote_list(&["a", "b'"]), r"('a', 'b\'')");
    }

    #[test]
    fn identifiers_come_from_a_pattern_or_a_list() {
        assert!(prop_key("prop_key", "level_1").is_ok());
        for bad in ["", "a b", "a'", "a.b", "a)--", &"x".repeat(65)] {
            assert!(prop_key("prop_key", bad).is_err(), "{bad}");
        }
        assert_eq!(dimension(&["channel", "platform"], "platform"), Some("platform"));
        assert_eq!(dimension(&["channel"], "channel; DROP TABLE x"), None);
    }
}
