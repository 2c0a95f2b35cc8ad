//! The expression grammar of Consul's `?filter=` (go-bexpr's), parsed by recursive
//! descent into an [`Expr`]:
//!
//! ```text
//! input      = _? or _? EOF
//! or         = and (_ "or" _ and)*
//! and        = not (_ "and" _ not)*
//! not        = "not" _ not | group
//! group      = "(" _? or _? ")" | match
//! match      = selector _? ("==" | "!=") _? value
//!            | selector _ ("contains" | "not" _ "contains" | "matches" | "not" _ "matches") _ value
//!            | selector _ "is" _ ("empty" | "not" _ "empty")
//!            | value _ ("in" | "not" _ "in") _ selector
//! selector   = ident ("." ident | "[" _? string _? "]")*
//! ident      = [a-zA-Z] [a-zA-Z0-9_]*
//! value      = selector | number | string        (a selector stands for its own text)
//! number     = "-"? ("0" | [1-9][0-9]*) ("." [0-9]+)?   followed by _, ")" or EOF
//! string     = `raw` | "with Go escapes"
//! _          = [ \t\r\n]+
//! ```
//!
//! Keywords are lower-case and need whitespace around them, as in go-bexpr: `a==1 or b==2`
//! parses, `a==1 or(b==2)` does not. Errors name the position as go-bexpr's parser does,
//! `line:column (byte offset)`, and for the errors go-bexpr names, the same rule and text
//! (`1:12 (11): rule "string": Unterminated string literal`).
//!
//! The parser faces the network: the input is bounded by [`MAX_EXPRESSION_BYTES`], nesting
//! (parentheses and `not`) by [`MAX_DEPTH`], and `and`/`or` chains are kept flat, so no
//! input recurses deeper than that bound.

use std::fmt;

/// Longest expression accepted, in bytes. Consul sets none beyond its HTTP limits; an
/// expression is a few dozen bytes in practice, and the bound caps parse and evaluation
/// time per request.
pub(crate) const MAX_EXPRESSION_BYTES: usize = 4096;

/// Deepest nesting of parentheses and `not` accepted. Parsing and evaluation recurse
/// once per level, so this bounds their stack use.
pub(crate) const MAX_DEPTH: usize = 32;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// `not e`
    Not(Box<Expr>),
    /// `e1 and e2 and …` (two or more operands)
    And(Vec<Expr>),
    /// `e1 or e2 or …` (two or more operands)
    Or(Vec<Expr>),
    /// A match of one selector.
    Match(Match),
}

/// `selector op value`, `selector is [not] empty` or `value [not] in selector`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Match {
    /// The selector's parts: `Service.Meta["a b"]` is `["Service", "Meta", "a b"]`.
    pub(crate) selector: Vec<String>,
    pub(crate) op: Op,
    /// The value as written (unquoted); `None` for the emptiness tests.
    pub(crate) value: Option<String>,
}

/// A match operator. `contains` is `In` with the operands the other way round, as in
/// go-bexpr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Equal,
    NotEqual,
    In,
    NotIn,
    IsEmpty,
    IsNotEmpty,
    Matches,
    NotMatches,
}

impl Op {
    /// go-bexpr's name of the operator, used in its error texts.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Equal => "Equal",
            Op::NotEqual => "Not Equal",
            Op::In => "In",
            Op::NotIn => "Not In",
            Op::IsEmpty => "Is Empty",
            Op::IsNotEmpty => "Is Not Empty",
            Op::Matches => "Matches",
            Op::NotMatches => "Not Matches",
        }
    }
}

/// An expression that does not parse: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    line: usize,
    column: usize,
    offset: usize,
    rule: Option<&'static str>,
    message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} ({})", self.line, self.column, self.offset)?;
        if let Some(rule) = self.rule {
            write!(f, ": rule \"{rule}\"")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What go-bexpr says it expected where an expression should start.
const EXPECTED_EXPRESSION: &str =
    r#"no match found, expected: "(", "-", "0", "\"", "`", "not", [ \t\r\n], [1-9] or [a-zA-Z]"#;
/// … after a complete expression.
const EXPECTED_END: &str = r#"no match found, expected: "and", "or", [ \t\r\n] or EOF"#;
/// … after a selector.
const EXPECTED_OPERATOR: &str = r#"no match found, expected: "!=", "==", "contains", "in", "is", "matches", "not" or [ \t\r\n]"#;
/// … after a value that is not a selector.
const EXPECTED_IN: &str = r#"no match found, expected: "in", "not" or [ \t\r\n]"#;
/// … where a value should be.
const EXPECTED_VALUE: &str = r#"no match found, expected: "-", "0", "\"", "`", [1-9] or [a-zA-Z]"#;

/// Parses a filter expression.
pub(crate) fn parse(text: &str) -> Result<Expr, SyntaxError> {
    let mut parser = Parser {
        src: text,
        pos: 0,
        depth: 0,
    };
    if text.len() > MAX_EXPRESSION_BYTES {
        return Err(parser.error(
            None,
            format!(
                "expression of {} bytes is over the limit of {MAX_EXPRESSION_BYTES}",
                text.len()
            ),
        ));
    }
    parser.skip_ws();
    let expr = parser.or()?;
    parser.skip_ws();
    if parser.pos < text.len() {
        return Err(parser.error(None, EXPECTED_END.into()));
    }
    Ok(expr)
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn error(&self, rule: Option<&'static str>, message: String) -> SyntaxError {
        self.error_at(self.pos, rule, message)
    }

    /// An error at byte `offset`; line and column count lines and characters from 1,
    /// as go-bexpr's parser does.
    fn error_at(&self, offset: usize, rule: Option<&'static str>, message: String) -> SyntaxError {
        let before = self.src.get(..offset).unwrap_or(self.src);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
        SyntaxError {
            line,
            column,
            offset,
            rule,
            message,
        }
    }

    /// `_?`: skips whitespace; true if there was some.
    fn skip_ws(&mut self) -> bool {
        let rest = self.rest();
        let trimmed = rest.trim_start_matches([' ', '\t', '\r', '\n']);
        self.pos += rest.len() - trimmed.len();
        rest.len() != trimmed.len()
    }

    /// Consumes `word` if the input continues with it.
    fn eat(&mut self, word: &str) -> bool {
        if self.rest().starts_with(word) {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    /// Consumes the sequence `_ w1 _ w2 … ` (each word preceded by whitespace), with
    /// trailing whitespace when `trailing`; leaves the position unchanged when the input
    /// does not continue so.
    fn eat_words(&mut self, words: &[&str], trailing: bool) -> bool {
        let start = self.pos;
        for word in words {
            if !(self.skip_ws() && self.eat(word)) {
                self.pos = start;
                return false;
            }
        }
        if trailing && !self.skip_ws() {
            self.pos = start;
            return false;
        }
        true
    }

    fn or(&mut self) -> Result<Expr, SyntaxError> {
        let mut terms = vec![self.and()?];
        while self.eat_words(&["or"], true) {
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.swap_remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Expr, SyntaxError> {
        let mut terms = vec![self.not()?];
        while self.eat_words(&["and"], true) {
            terms.push(self.not()?);
        }
        Ok(if terms.len() == 1 {
            terms.swap_remove(0)
        } else {
            Expr::And(terms)
        })
    }

    fn deeper(&mut self) -> Result<(), SyntaxError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(
                None,
                format!("expression nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.depth += 1;
        Ok(())
    }

    fn not(&mut self) -> Result<Expr, SyntaxError> {
        let (start, depth) = (self.pos, self.depth);
        if self.eat("not") && self.skip_ws() {
            self.deeper()?;
            let inner = self.not();
            self.depth -= 1;
            match inner {
                Ok(e) => return Ok(Expr::Not(Box::new(e))),
                Err(not_error) => {
                    // As in a PEG: `not` may also be a selector or a bare value (`not in
                    // Tags`); the error kept is the one that got farther.
                    (self.pos, self.depth) = (start, depth);
                    return self.group().map_err(|e| {
                        if e.offset >= not_error.offset {
                            e
                        } else {
                            not_error
                        }
                    });
                }
            }
        }
        self.pos = start;
        self.group()
    }

    fn group(&mut self) -> Result<Expr, SyntaxError> {
        if !self.eat("(") {
            return self.matching();
        }
        self.deeper()?;
        self.skip_ws();
        let inner = self.or()?;
        self.skip_ws();
        self.depth -= 1;
        if !self.eat(")") {
            return Err(self.error(Some("grouping"), "Unmatched parentheses".into()));
        }
        Ok(inner)
    }

    fn matching(&mut self) -> Result<Expr, SyntaxError> {
        let value = match self.peek() {
            Some(c) if c.is_ascii_alphabetic() => {
                let selector = self.selector()?;
                if let Some(op) = self.selector_op() {
                    let value = match op {
                        Op::IsEmpty | Op::IsNotEmpty => None,
                        _ => Some(self.value()?),
                    };
                    return Ok(Expr::Match(Match {
                        selector,
                        op,
                        value,
                    }));
                }
                if let Some(op) = self.in_op() {
                    return self.in_selector(selector.join("."), op);
                }
                self.skip_ws();
                return Err(self.error(None, EXPECTED_OPERATOR.into()));
            }
            Some('-' | '0'..='9') => self.number()?,
            Some('"' | '`') => self.string()?,
            _ => return Err(self.error(None, EXPECTED_EXPRESSION.into())),
        };
        match self.in_op() {
            Some(op) => self.in_selector(value, op),
            None => {
                self.skip_ws();
                Err(self.error(None, EXPECTED_IN.into()))
            }
        }
    }

    /// The operator after a selector, other than `in`/`not in`.
    fn selector_op(&mut self) -> Option<Op> {
        let start = self.pos;
        self.skip_ws();
        if self.eat("==") {
            self.skip_ws();
            return Some(Op::Equal);
        }
        if self.eat("!=") {
            self.skip_ws();
            return Some(Op::NotEqual);
        }
        self.pos = start;
        let words: [(&[&str], bool, Op); 6] = [
            (&["contains"], true, Op::In),
            (&["not", "contains"], true, Op::NotIn),
            (&["matches"], true, Op::Matches),
            (&["not", "matches"], true, Op::NotMatches),
            (&["is", "empty"], false, Op::IsEmpty),
            (&["is", "not", "empty"], false, Op::IsNotEmpty),
        ];
        words
            .into_iter()
            .find(|(w, trailing, _)| self.eat_words(w, *trailing))
            .map(|(_, _, op)| op)
    }

    fn in_op(&mut self) -> Option<Op> {
        if self.eat_words(&["in"], true) {
            Some(Op::In)
        } else if self.eat_words(&["not", "in"], true) {
            Some(Op::NotIn)
        } else {
            None
        }
    }

    /// The selector after `value in` / `value not in`.
    fn in_selector(&mut self, value: String, op: Op) -> Result<Expr, SyntaxError> {
        if !self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            return Err(self.error(Some("match"), "Invalid selector".into()));
        }
        let selector = self.selector()?;
        Ok(Expr::Match(Match {
            selector,
            op,
            value: Some(value),
        }))
    }

    fn ident(&mut self) -> String {
        let rest = self.rest();
        let len = rest
            .char_indices()
            .find(|&(i, c)| {
                !(c.is_ascii_alphabetic() || (i > 0 && (c.is_ascii_digit() || c == '_')))
            })
            .map_or(rest.len(), |(i, _)| i);
        let ident = rest.get(..len).unwrap_or("").to_owned();
        self.pos += len;
        ident
    }

    fn selector(&mut self) -> Result<Vec<String>, SyntaxError> {
        let mut parts = vec![self.ident()];
        loop {
            let rest = self.rest();
            if rest.starts_with('.')
                && rest
                    .get(1..)
                    .and_then(|r| r.chars().next())
                    .is_some_and(|c| c.is_ascii_alphabetic())
            {
                self.pos += 1;
                parts.push(self.ident());
            } else if rest.starts_with('[') {
                self.pos += 1;
                self.skip_ws();
                if !matches!(self.peek(), Some('"' | '`')) {
                    return Err(self.error(Some("index"), "Invalid index".into()));
                }
                let key = self.string()?;
                self.skip_ws();
                if !self.eat("]") {
                    return Err(self.error(Some("index"), "Unclosed index expression".into()));
                }
                parts.push(key);
            } else {
                return Ok(parts);
            }
        }
    }

    fn value(&mut self) -> Result<String, SyntaxError> {
        match self.peek() {
            Some(c) if c.is_ascii_alphabetic() => Ok(self.selector()?.join(".")),
            Some('-' | '0'..='9') => self.number(),
            Some('"' | '`') => self.string(),
            _ => Err(self.error(None, EXPECTED_VALUE.into())),
        }
    }

    fn number(&mut self) -> Result<String, SyntaxError> {
        let start = self.pos;
        self.eat("-");
        let digits = |s: &str| s.chars().take_while(char::is_ascii_digit).count();
        match self.peek() {
            Some('0') => self.pos += 1,
            Some('1'..='9') => self.pos += digits(self.rest()),
            _ => return Err(self.error(None, EXPECTED_VALUE.into())),
        }
        let rest = self.rest();
        if rest.starts_with('.') {
            let fraction = digits(rest.get(1..).unwrap_or(""));
            if fraction > 0 {
                self.pos += 1 + fraction;
            }
        }
        match self.peek() {
            None | Some(' ' | '\t' | '\r' | '\n' | ')') => {
                Ok(self.src.get(start..self.pos).unwrap_or("").to_owned())
            }
            Some(_) => Err(self.error(Some("number"), "Invalid number literal".into())),
        }
    }

    /// A quoted string at the position (which holds `"` or `` ` ``), unquoted.
    fn string(&mut self) -> Result<String, SyntaxError> {
        let start = self.pos;
        let rest = self.rest();
        let quote = rest.chars().next().unwrap_or('"');
        let body = rest.get(1..).unwrap_or("");
        let Some(end) = body.find(quote) else {
            self.pos = self.src.len();
            return Err(self.error(Some("string"), "Unterminated string literal".into()));
        };
        let content = body.get(..end).unwrap_or("");
        self.pos += end + 2;
        if quote == '`' {
            // Go drops carriage returns from raw strings.
            return Ok(content.replace('\r', ""));
        }
        unquote(content)
            .ok_or_else(|| self.error_at(start, Some("string"), "invalid syntax".into()))
    }
}

/// The content of a Go double-quoted string literal, with its escapes (Go's
/// `strconv.Unquote`); `None` where Go says "invalid syntax".
fn unquote(content: &str) -> Option<String> {
    if content.contains('\n') {
        return None;
    }
    let mut out: Vec<u8> = Vec::with_capacity(content.len());
    let mut chars = content.chars();
    let hex = |chars: &mut std::str::Chars<'_>, n: usize| -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            v = v * 16 + chars.next()?.to_digit(16)?;
        }
        Some(v)
    };
    let push_char = |out: &mut Vec<u8>, c: char| {
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            push_char(&mut out, c);
            continue;
        }
        let escaped = match chars.next()? {
            'a' => '\u{7}',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\u{b}',
            '\\' => '\\',
            '"' => '"',
            'x' => {
                out.push(u8::try_from(hex(&mut chars, 2)?).ok()?);
                continue;
            }
            'u' => char::from_u32(hex(&mut chars, 4)?)?,
            'U' => char::from_u32(hex(&mut chars, 8)?)?,
            d @ '0'..='7' => {
                let mut v = d.to_digit(8)?;
                for _ in 0..2 {
                    v = v * 8 + chars.next()?.to_digit(8)?;
                }
                out.push(u8::try_from(v).ok()?);
                continue;
            }
            _ => return None,
        };
        push_char(&mut out, escaped);
    }
    // Byte escapes may spell invalid UTF-8, which no JSON string equals.
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(selector: &[&str], op: Op, value: Option<&str>) -> Expr {
        Expr::Match(Match {
            selector: selector.iter().map(|s| s.to_string()).collect(),
            op,
            value: value.map(str::to_owned),
        })
    }

    #[test]
    fn matches_of_every_form_parse() {
        let cases = [
            ("foo == 3", m(&["foo"], Op::Equal, Some("3"))),
            ("foo==bar", m(&["foo"], Op::Equal, Some("bar"))),
            ("foo != \"a b\"", m(&["foo"], Op::NotEqual, Some("a b"))),
            ("foo contains `x\\n`", m(&["foo"], Op::In, Some("x\\n"))),
            (
                "foo not contains \"x\\n\"",
                m(&["foo"], Op::NotIn, Some("x\n")),
            ),
            ("\"x\" in foo.bar", m(&["foo", "bar"], Op::In, Some("x"))),
            ("x not in foo", m(&["foo"], Op::NotIn, Some("x"))),
            (
                "foo matches \"^a.*\"",
                m(&["foo"], Op::Matches, Some("^a.*")),
            ),
            ("foo not matches a", m(&["foo"], Op::NotMatches, Some("a"))),
            ("foo is empty", m(&["foo"], Op::IsEmpty, None)),
            ("foo is not empty", m(&["foo"], Op::IsNotEmpty, None)),
            (
                "Meta[\"a b\"].c == -0.5",
                m(&["Meta", "a b", "c"], Op::Equal, Some("-0.5")),
            ),
            ("  ( a == 1 )  ", m(&["a"], Op::Equal, Some("1"))),
            ("Notes == 1", m(&["Notes"], Op::Equal, Some("1"))),
            ("not in Tags", m(&["Tags"], Op::In, Some("not"))),
            ("a == b.c_1", m(&["a"], Op::Equal, Some("b.c_1"))),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn and_binds_tighter_than_or_and_not_tighter_than_and() {
        let got = parse("a == 1 and not b == 2 or c == 3").unwrap();
        let want = Expr::Or(vec![
            Expr::And(vec![
                m(&["a"], Op::Equal, Some("1")),
                Expr::Not(Box::new(m(&["b"], Op::Equal, Some("2")))),
            ]),
            m(&["c"], Op::Equal, Some("3")),
        ]);
        assert_eq!(got, want);
        let grouped = parse("a == 1 and (b == 2 or c == 3)").unwrap();
        assert!(matches!(grouped, Expr::And(ref v) if matches!(v[1], Expr::Or(_))));
    }

    /// go-bexpr's own error cases, with its positions and texts.
    #[test]
    fn errors_name_the_position_as_go_bexpr_does() {
        let cases = [
            (
                "foo == \"12x",
                "1:12 (11): rule \"string\": Unterminated string literal",
            ),
            (
                "foo == `12x",
                "1:12 (11): rule \"string\": Unterminated string literal",
            ),
            (
                "foo == 3x",
                "1:9 (8): rule \"number\": Invalid number literal",
            ),
            ("foo[3] == abc", "1:5 (4): rule \"index\": Invalid index"),
            (
                "x in foo[\"abc\"",
                "1:15 (14): rule \"index\": Unclosed index expression",
            ),
            (
                "foo[\"abc\" == 3",
                "1:11 (10): rule \"index\": Unclosed index expression",
            ),
            ("x in 32", "1:6 (5): rule \"match\": Invalid selector"),
            (
                "32 == 32",
                r#"1:4 (3): no match found, expected: "in", "not" or [ \t\r\n]"#,
            ),
            (
                "x in foo abc",
                r#"1:10 (9): no match found, expected: "and", "or", [ \t\r\n] or EOF"#,
            ),
            (
                "x in foo and ",
                r#"1:14 (13): no match found, expected: "(", "-", "0", "\"", "`", "not", [ \t\r\n], [1-9] or [a-zA-Z]"#,
            ),
            (
                "(foo == 4",
                "1:10 (9): rule \"grouping\": Unmatched parentheses",
            ),
            (
                "a ==\n  \"x",
                "2:5 (9): rule \"string\": Unterminated string literal",
            ),
            ("a == \"\\q\"", "1:6 (5): rule \"string\": invalid syntax"),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).unwrap_err().to_string(), want, "{text}");
        }
    }

    #[test]
    fn depth_and_length_are_bounded() {
        let deep = format!("{}a == 1{}", "(".repeat(40), ")".repeat(40));
        assert!(
            parse(&deep)
                .unwrap_err()
                .to_string()
                .contains("deeper than")
        );
        let nots = format!("{}a == 1", "not ".repeat(40));
        assert!(parse(&nots).is_err());
        let ok = format!("{}a == 1", "not ".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        let long = vec!["a == 1"; 1000].join(" or ");
        assert!(
            parse(&long)
                .unwrap_err()
                .to_string()
                .contains("over the limit")
        );
        let wide = vec!["a == 1"; 400].join(" or ");
        assert!(matches!(parse(&wide), Ok(Expr::Or(v)) if v.len() == 400));
    }

    #[test]
    fn go_string_escapes_are_unquoted() {
        assert_eq!(
            unquote(r"a\tb\x41\101\u00e9\U0001F600\\"),
            Some("a\tbAAé😀\\".into())
        );
        assert_eq!(unquote(r"\'"), None);
        assert_eq!(unquote(r"\x4"), None);
        assert_eq!(unquote(r"\400"), None);
        assert_eq!(unquote("a\nb"), None);
    }
}
