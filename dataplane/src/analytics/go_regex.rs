//! Path filters (`path_re`, `path_not_re`) in Go's `regexp` syntax (RE2), which Croupier's
//! server compiles, run on the `regex` crate (linear time as RE2). The two dialects
//! differ, and a filter must mean here what it means there:
//!
//! - Go's `\w`, `\d`, `\s` and `\b` are ASCII (the crate's are Unicode): written here as
//!   their ASCII sets, inside a bracket class or not;
//! - Go quotes with `\Q…\E`, writes octal `\141` and negated `\p{^Greek}`, and reads an
//!   escaped punctuation mark (`\<`, `\>`: word edges in the crate) and a brace that starts
//!   no repeat count (`a{,5}`) as themselves: written here so;
//! - Go has not the crate's `\u`, `\U` escapes, nor its `x`, `u`, `R` flags: refused;
//! - inside a bracket class Go reads `[` (but `[:name:]`), `&&` and `~~` as themselves
//!   (the crate as a nested class and set operations), and a `-` as a range's operator
//!   only after a single character that is not a range's end (`[--x]`, `[#--x]`,
//!   `[a-b-c]`, `[\w-.]`): written so, the other `-` escaped;
//! - Go refuses a repeat count over 1,000 (also as the product of nested counts) and a
//!   repetition of a repetition (`a**`), which the crate takes: refused here too.
//!
//! Case folding (`(?i)`), Unicode classes (`\pL`, `\p{Greek}`) and the rest are the same
//! in both.

use regex_syntax::ast::{self, Ast, RepetitionKind, RepetitionRange};

/// Go's largest repeat count (`regexp/syntax`'s `maxRepeat`).
const MAX_REPEAT: u32 = 1000;

/// Deepest nesting of groups and classes taken: the crate's default (Go takes 1,000; the
/// crate's compiler recurses, and the control thread's stack is not sized for that).
const NEST_LIMIT: u32 = 250;

/// `pattern`, a Go `regexp` expression, compiled with the same meaning; or why Go (or
/// this server, past `size_limit` bytes of compiled program) refuses it.
pub fn compile(pattern: &str, size_limit: usize) -> Result<regex::Regex, String> {
    let translated = translate(pattern)?;
    let parsed = ast::parse::ParserBuilder::new()
        .nest_limit(NEST_LIMIT)
        .build()
        .parse(&translated)
        .map_err(|e| e.to_string())?;
    check_repetitions(&parsed, 1)?;
    regex::RegexBuilder::new(&translated)
        .size_limit(size_limit)
        .nest_limit(NEST_LIMIT)
        .build()
        .map_err(|e| e.to_string())
}

/// Go's ASCII meaning of the Perl class `c` (`w`, `W`, `d`, `D`, `s`, `S`) outside a
/// bracket class; inside one, the items to put there.
fn perl_class(c: char, in_class: bool) -> Option<&'static str> {
    Some(match (c, in_class) {
        ('w', false) => "[0-9A-Za-z_]",
        ('W', false) => "[^0-9A-Za-z_]",
        ('d', false) => "[0-9]",
        ('D', false) => "[^0-9]",
        ('s', false) => r"[\t\n\x0C\r ]",
        ('S', false) => r"[^\t\n\x0C\r ]",
        ('w', true) => "0-9A-Za-z_",
        ('W', true) => "[^0-9A-Za-z_]",
        ('d', true) => "0-9",
        ('D', true) => "[^0-9]",
        ('s', true) => r"\t\n\x0C\r ",
        ('S', true) => r"[^\t\n\x0C\r ]",
        _ => return None,
    })
}

/// Rewrites a Go expression into the crate's syntax with the same meaning (the list in
/// the module's documentation). Only escapes, groups' flags, braces and bracket classes
/// are read; the rest is copied as it is.
fn translate(pattern: &str) -> Result<String, String> {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars().peekable();
    // Inside a bracket class; whether the next character is its first (where `]` is
    // itself, as in both dialects); whether the last item written there was a class (a
    // `-` after it is itself in Go, where the crate would read a range).
    let (mut in_class, mut class_start) = (false, false);
    // In a bracket class, what the last item written was: a `-` is a range's operator only
    // after a single character, as Go reads it, and written `\-` everywhere else.
    let mut last = Item::Open;
    while let Some(c) = chars.next() {
        let first = std::mem::replace(&mut class_start, false);
        // What this character writes, in a class: a single character unless said.
        let mut item = Item::Char;
        match c {
            '\\' => {
                let Some(e) = chars.next() else { return Err("trailing backslash at end of expression".into()) };
                match e {
                    'Q' => {
                        let mut quoted = String::new();
                        while let Some(q) = chars.next() {
                            if q == '\\' && chars.peek() == Some(&'E') {
                                chars.next();
                                break;
                            }
                            quoted.push(q);
                        }
                        for q in quoted.chars() {
                            out.push_str(&regex_syntax::escape(q.encode_utf8(&mut [0; 4])));
                        }
                    }
                    'b' | 'B' if !in_class => {
                        out.push_str(if e == 'b' { r"(?-u:\b)" } else { r"(?-u:\B)" });
                    }
                    // Octal: `\0` to `\377` (a lone `\1`..`\7` would be a backreference,
                    // which RE2 has not).
                    '0'..='7' => {
                        let mut value = e.to_digit(8).unwrap_or(0);
                        let mut digits = 1;
                        while digits < 3 {
                            match chars.peek().and_then(|d| d.to_digit(8)) {
                                Some(d) => {
                                    value = value * 8 + d;
                                    digits += 1;
                                    chars.next();
                                }
                                None => break,
                            }
                        }
                        if e != '0' && digits == 1 {
                            return Err(format!("invalid escape sequence \\{e} (backreferences are not supported)"));
                        }
                        out.push_str(&format!(r"\x{{{value:X}}}"));
                    }
                    // `\p{^Greek}` is `\P{Greek}`.
                    'p' | 'P' if chars.peek() == Some(&'{') && chars.clone().nth(1) == Some('^') => {
                        chars.next();
                        chars.next();
                        out.push_str(if e == 'p' { r"\P{" } else { r"\p{" });
                        let mut name = String::new();
                        for c in chars.by_ref() {
                            out.push(c);
                            if c == '}' {
                                break;
                            }
                            name.push(c);
                        }
                        unicode_class_name(e, &name)?;
                        item = Item::Set;
                    }
                    // Escapes Go has not (the crate's `\u`, `\U`, `\<`, `\>` among them
                    // are refused or read as the punctuation they escape).
                    'u' | 'U' | 'h' | 'H' | 'V' | 'K' | 'R' | 'X' | 'Z' | 'G' => {
                        return Err(format!("invalid escape sequence \\{e}"));
                    }
                    e if e.is_ascii_punctuation() => out.push_str(&regex_syntax::escape(e.encode_utf8(&mut [0; 4]))),
                    e => match perl_class(e, in_class) {
                        Some(ascii) => {
                            out.push_str(ascii);
                            item = Item::Set;
                        }
                        None => {
                            out.push('\\');
                            out.push(e);
                            // `\p{Greek}`, `\x{263a}`: the braces are the escape's.
                            let braced = chars.peek() == Some(&'{');
                            if matches!(e, 'p' | 'P' | 'x') && braced {
                                let mut name = String::new();
                                for c in chars.by_ref() {
                                    out.push(c);
                                    if c == '}' {
                                        break;
                                    }
                                    if c != '{' {
                                        name.push(c);
                                    }
                                }
                                unicode_class_name(e, &name)?;
                            }
                            if matches!(e, 'p' | 'P') {
                                // `\pL`: the one-letter name is the escape's too.
                                if let Some(l) = chars.next_if(|_| !braced) {
                                    out.push(l);
                                }
                                item = Item::Set;
                            }
                        }
                    },
                }
            }
            // A group's flags: Go's are i, m, s, U (the crate's x, u, R are refused).
            '(' if !in_class && chars.peek() == Some(&'?') => {
                out.push('(');
                let flags: String =
                    chars.clone().skip(1).take_while(|f| f.is_ascii_alphabetic() || *f == '-').take(16).collect();
                if let Some(bad) = flags.chars().find(|f| !matches!(f, 'i' | 'm' | 's' | 'U' | '-')) {
                    if !flags.starts_with('P') {
                        return Err(format!("invalid or unsupported Perl syntax: flag {bad}"));
                    }
                }
            }
            // A brace that does not start a repeat count (`{n}`, `{n,}`, `{n,m}`) is
            // itself in Go.
            '{' if !in_class && !starts_repeat(chars.clone()) => out.push_str(r"\{"),
            '[' if !in_class => {
                out.push('[');
                in_class = true;
                class_start = true;
                if chars.peek() == Some(&'^') {
                    chars.next();
                    out.push('^');
                }
            }
            '[' => {
                // `[:alpha:]` as itself; any other `[` is a literal in Go. (The name is
                // looked for a few characters ahead only.)
                let rest: String = chars.clone().take(12).take_while(|c| *c != ']').collect();
                if rest.len() > 1
                    && rest.starts_with(':')
                    && rest.ends_with(':')
                    && chars.clone().nth(rest.chars().count()) == Some(']')
                {
                    out.push('[');
                    for _ in 0..rest.chars().count() + 1 {
                        if let Some(c) = chars.next() {
                            out.push(c);
                        }
                    }
                    item = Item::Set;
                } else {
                    out.push_str(r"\[");
                }
            }
            ']' if in_class && !first => {
                out.push(']');
                in_class = false;
            }
            ']' if in_class => out.push_str(r"\]"),
            '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            // `-` after a class (`[\w-.]`), or after another `-` (`[#--x]`, a range to `-`
            // in Go, a set difference in the crate): itself.
            '-' if in_class => {
                let operator = last == Item::Char && chars.peek().is_some_and(|n| *n != ']');
                if operator {
                    out.push('-');
                    item = Item::Operator;
                } else {
                    out.push_str(r"\-");
                }
            }
            c => out.push(c),
        }
        if in_class {
            last = match (item, last) {
                _ if class_start => Item::Open,
                // A range's end: a `-` after it is itself.
                (Item::Char, Item::Operator) => Item::Set,
                (item, _) => item,
            };
        }
    }
    Ok(out)
}

/// Refuses a `\p{…}` name Go never takes and the crate does: a property with a value
/// (`Script=Latin`, `sc:Han`), an `Is` prefix (`IsLatin`), a binary property (`Alphabetic`,
/// `Emoji`, `White_Space`, ...).
fn unicode_class_name(escape: char, name: &str) -> Result<(), String> {
    const BINARY: [&str; 12] = [
        "Alphabetic",
        "Emoji",
        "Emoji_Presentation",
        "Lowercase",
        "Uppercase",
        "Math",
        "Ideographic",
        "Hex_Digit",
        "Dash",
        "White_Space",
        "Default_Ignorable_Code_Point",
        "Extended_Pictographic",
    ];
    if escape == 'x' {
        return Ok(());
    }
    if name.contains(['=', ':', ' ']) || name.starts_with("Is") || BINARY.iter().any(|b| b.eq_ignore_ascii_case(name)) {
        return Err(format!("invalid character class range \\{escape}{{{name}}}"));
    }
    Ok(())
}

/// What was last written inside a bracket class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// The class's start.
    Open,
    /// A single character, which a `-` may make a range's start.
    Char,
    /// A range's `-`.
    Operator,
    /// A class (`\w`, `\pL`, `[:alpha:]`) or a range's end: a `-` after it is itself.
    Set,
}

/// Whether what follows a `{` makes a repeat count: digits, then `}`, `,}` or `,` digits `}`.
fn starts_repeat(mut rest: impl Iterator<Item = char>) -> bool {
    let first = rest.next();
    let Some((c, _)) = repeat_number(first, &mut rest) else { return false };
    match c {
        Some('}') => true,
        Some(',') => match rest.next() {
            Some('}') => true,
            next => repeat_number(next, &mut rest).is_some_and(|(c, _)| c == Some('}')),
        },
        _ => false,
    }
}

/// A repeat count's number as Go's `parseRepeat` reads it, from `first` on: digits without
/// a leading zero (`{01}` is text); the character after it, and the number of digits.
fn repeat_number(first: Option<char>, rest: &mut impl Iterator<Item = char>) -> Option<(Option<char>, usize)> {
    let mut digits = String::new();
    let mut c = first;
    while let Some(d) = c.filter(char::is_ascii_digit) {
        digits.push(d);
        c = rest.next();
    }
    let leading_zero = digits.len() > 1 && digits.starts_with('0');
    (!digits.is_empty() && !leading_zero).then_some((c, digits.len()))
}

/// Refuses what Go's parser refuses among repetitions: a repetition of a repetition, and
/// repeat counts whose product over nested repetitions passes [`MAX_REPEAT`]. `outer`:
/// the product of the counts around `ast`.
fn check_repetitions(ast: &Ast, outer: u32) -> Result<(), String> {
    match ast {
        Ast::Repetition(r) => {
            if matches!(*r.ast, Ast::Repetition(_)) {
                return Err(format!("invalid nested repetition operator at {}", r.op.span.start.offset));
            }
            let count = match &r.op.kind {
                RepetitionKind::Range(RepetitionRange::Exactly(n) | RepetitionRange::AtLeast(n)) => Some(*n),
                RepetitionKind::Range(RepetitionRange::Bounded(_, m)) => Some(*m),
                _ => None,
            };
            let outer = match count {
                Some(n) if n > MAX_REPEAT || outer.saturating_mul(n.max(1)) > MAX_REPEAT => {
                    return Err(format!("invalid repeat count at {} (at most {MAX_REPEAT})", r.op.span.start.offset));
                }
                Some(n) => outer * n.max(1),
                None => outer,
            };
            check_repetitions(&r.ast, outer)
        }
        Ast::Group(g) => check_repetitions(&g.ast, outer),
        Ast::Alternation(a) => a.asts.iter().try_for_each(|a| check_repetitions(a, outer)),
        Ast::Concat(c) => c.asts.iter().try_for_each(|a| check_repetitions(a, outer)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, text: &str) -> bool {
        compile(pattern, 1 << 20).unwrap_or_else(|e| panic!("{pattern}: {e}")).is_match(text)
    }

    #[test]
    fn perl_classes_and_word_boundaries_are_ascii_as_in_go() {
        for (p, text, want) in [
            (r"^\w+$", "login", true),
            (r"^\w+$", "登录", false),
            (r"^\w+$", "Émoji", false),
            (r"^\W+$", "登录", true),
            (r"^\d+$", "123", true),
            (r"^\d+$", "١٢٣", false),
            (r"^\s$", "\u{a0}", false),
            (r"^\s$", "\u{b}", false),
            (r"^\S$", "\u{b}", true),
            (r"^[\w-]+$", "level-1_up", true),
            (r"^[\w-]+$", "é", false),
            (r"^[^\d]+$", "abc", true),
            (r"^[\D]+$", "a1", false),
            (r"\bb", "éb", true),
            (r"\bb", "ab", false),
            (r"a\Bb", "ab", true),
        ] {
            assert_eq!(matches(p, text), want, "{p} on {text:?}");
        }
    }

    #[test]
    fn unicode_case_classes_and_quoting_as_in_go() {
        for (p, text, want) in [
            ("(?i)login", "LOGIN>shop", true),
            ("(?i)straße", "STRASSE", false),
            ("(?i)é", "É", true),
            (r"^\pL+$", "登录", true),
            (r"^\p{Greek}+$", "αβγ", true),
            (r"^\PL$", "1", true),
            (r"\Qa.b\E", "a.b", true),
            (r"\Qa.b\E", "axb", false),
            (r"\Qa.b", "a.b", true),
            (r"x\Q[*\E+", "x[*[*", true),
            ("[[:alpha:]]+", "abc", true),
            ("^[a[]$", "[", true),
            ("^[a&&b]$", "&", true),
            ("^[a~~b]$", "~", true),
            ("^[]a]$", "]", true),
            ("^[^]a]$", "]", false),
            ("^[^]a]$", "b", true),
            // Escaped punctuation is itself (the crate reads `\<`, `\>` as word edges).
            (r"^login\>shop$", "login>shop", true),
            (r"\<", "a<b", true),
            (r"\<", "ab", false),
            // A `-` after a class, or after another `-`, in a class.
            (r"^[\w-.]+$", "a-b.c", true),
            (r"^[\w-z]+$", "-", true),
            (r"^[\s-~]$", "a", false),
            (r"^[#--x]+$", "x", true),
            (r"^[#--x]+$", "$", true),
            (r"^[#--x]+$", "a", false),
            // Octal, `\x{…}`, a negated `\p{^…}`.
            (r"^\141\0$", "a\0", true),
            (r"^\x{263a}$", "\u{263a}", true),
            (r"^\p{^L}$", "1", true),
            (r"^\P{^L}$", "a", true),
            // A brace that starts no repeat count is itself.
            ("^a{,5}$", "a{,5}", true),
            ("^a{$", "a{", true),
            ("^a{2}$", "aa", true),
            (r"\b{start}", "a{start}", true),
            ("(?i:LOGIN)|(?U)x+", "login", true),
            // Ranges as Go reads them: a `-` first in a class starts one, a range's end is
            // not another's start, a `-` after a class is itself.
            ("^[--x]$", "a", true),
            ("^[--x]$", "y", false),
            ("^[a-b-c]$", "-", true),
            ("^[a-b-c]$", "c", true),
            (r"^[\p{L}-.]+$", "é-.", true),
            (r"^[\pL-_]+$", "a_", true),
            // A number with a leading zero starts no repeat count: text.
            ("^a{01}$", "a{01}", true),
            ("^a{1,02}$", "a{1,02}", true),
            ("^a{0}b$", "b", true),
        ] {
            assert_eq!(matches(p, text), want, "{p} on {text:?}");
        }
    }

    #[test]
    fn deep_nesting_is_taken_to_the_crate_s_limit() {
        let deep = |n: usize| format!("{}a{}", "(".repeat(n), ")".repeat(n));
        assert!(matches(&deep(240), "a"));
        // Deeper than the crate's compiler is given stack for: refused, not a crash.
        assert!(compile(&deep(1000), 1 << 20).is_err());
        let long = "[".repeat(16 * 1024);
        assert!(compile(&long, 1 << 20).is_err());
    }

    #[test]
    fn what_go_refuses_is_refused() {
        for p in [
            "a{1001}",
            "a{2,1001}",
            "(a{100}){11}",
            "x**",
            "x+*",
            "(",
            r"a\",
            "[a",
            r"\8",
            r"\1",
            "(?x)a b",
            "(?u)a",
            "(?R)a",
            r"\u0041",
            r"\U00000041",
            r"\p{IsLatin}",
            r"\p{Script=Latin}",
            r"\p{sc:Han}",
            r"\p{Alphabetic}",
            r"\P{Emoji}",
            r"\p{^Script=Latin}",
        ] {
            assert!(compile(p, 1 << 20).is_err(), "{p}");
        }
        for p in [
            "a{1000}",
            "(a{10}){100}",
            "(x*)*",
            "x*?",
            "a{2,}",
            "login|logout",
            r"\\Q",
            "(?P<n>a)",
            "(?<n>a)",
            "(?i-s:a)",
        ] {
            assert!(compile(p, 1 << 20).is_ok(), "{p}");
        }
    }
}
