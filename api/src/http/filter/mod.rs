//! `?filter=`: Consul's filter expressions (the go-bexpr language Consul uses, in the
//! typed form Consul runs it: selectors checked against the filtered structure before
//! anything is read).
//!
//! ```text
//!  ?filter=Service.Tags contains "v2" and Checks.Status == passing
//!     │
//!     ▼ parse::parse ──▶ Expr ──▶ Filter::new(expr, schema) ──▶ Filter
//!                      (syntax)        (selectors, operators,      │
//!                                       values, regexes checked)   ▼
//!   answer ─▶ rendered in Consul's JSON ─▶ Filter::matches(item) keeps or drops each item
//! ```
//!
//! A handler builds its [`Filter`] before it reads, so a bad expression is a 400 at once
//! (Consul's text: `Failed to create boolean expression evaluator: …`), and applies it to
//! each item of the answer as it renders it: after ACL filtering (which happens where
//! the answer is read), after `?near` sorting, and without touching the answer's index,
//! so blocking queries wait on the catalog as before.
//!
//! Semantics, as go-bexpr's typed evaluation defines them:
//! - selectors are case-sensitive field names; a map takes any key (`Meta.env`,
//!   `Meta["a b"]`); a selector through a list of structures (`Checks.Status`) matches
//!   when any element matches (so `Checks.Status != passing` means "some check is not
//!   passing", and an empty list matches nothing);
//! - `==`/`!=` compare a string exactly, a number or boolean after converting the value
//!   (`Port == 8080`, `Port == "8080"`); `in`/`contains` is substring on a string,
//!   element on a list of strings, key on a map; `matches` is an unanchored regular
//!   expression search; `is empty` takes lists and maps;
//! - a map key that is absent: `==`, `in`, `matches` and `is not empty` are false, their
//!   negations true.
//!
//! Matching walks each item's rendered JSON, whose keys are Consul's field names.

mod parse;
pub(crate) mod schema;

use regex::Regex;
use serde::Serialize;
use serde_json::Value;

use parse::{Expr, Op};
pub(crate) use schema::Schema;
use schema::{Field, Kind};

/// Largest compiled size of a `matches` regular expression, in bytes: bounds the memory
/// and time a hostile pattern costs (the `regex` crate runs in linear time otherwise).
const MAX_REGEX_BYTES: usize = 256 * 1024;

/// Why an expression was refused. Its text is go-bexpr's, after Consul's prefix
/// `Failed to create boolean expression evaluator: `; the caller answers 400 with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Failed to create boolean expression evaluator: {0}")]
pub(crate) struct FilterError(String);

/// A checked filter expression for one endpoint's items.
#[derive(Debug)]
pub(crate) struct Filter {
    root: Node,
    schema: Schema,
}

#[derive(Debug)]
enum Node {
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
    Test(Test),
}

/// One match, with its selector resolved against the schema and its value converted.
#[derive(Debug)]
struct Test {
    selector: Vec<String>,
    op: Op,
    operand: Operand,
}

#[derive(Debug)]
enum Operand {
    None,
    Str(String),
    Int(i64),
    Bool(bool),
    Regex(Regex),
}

impl Filter {
    /// Parses `text` and checks it against `schema`, the fields of the filtered items.
    pub(crate) fn new(text: &str, schema: Schema) -> Result<Filter, FilterError> {
        let expr = parse::parse(text).map_err(|e| FilterError(e.to_string()))?;
        Ok(Filter {
            root: compile(expr, schema)?,
            schema,
        })
    }

    /// Whether `item` (an item rendered in Consul's JSON) passes the filter.
    pub(crate) fn matches(&self, item: &Value) -> bool {
        eval(&self.root, self.schema, item)
    }

    /// Whether `item` passes, once rendered as JSON.
    pub(crate) fn keeps<T: Serialize>(&self, item: &T) -> bool {
        serde_json::to_value(item).is_ok_and(|v| self.matches(&v))
    }
}

/// Keeps the items `filter` passes (all of them without a filter).
pub(crate) fn retain<T: Serialize>(
    items: impl IntoIterator<Item = T>,
    filter: Option<&Filter>,
) -> Vec<T> {
    items
        .into_iter()
        .filter(|item| filter.is_none_or(|f| f.keeps(item)))
        .collect()
}

fn compile(expr: Expr, schema: Schema) -> Result<Node, FilterError> {
    Ok(match expr {
        Expr::Not(e) => Node::Not(Box::new(compile(*e, schema)?)),
        Expr::And(v) => Node::And(compile_all(v, schema)?),
        Expr::Or(v) => Node::Or(compile_all(v, schema)?),
        Expr::Match(m) => Node::Test(test(m, schema)?),
    })
}

fn compile_all(exprs: Vec<Expr>, schema: Schema) -> Result<Vec<Node>, FilterError> {
    exprs.into_iter().map(|e| compile(e, schema)).collect()
}

fn find(fields: &[Field], name: &str) -> Option<Kind> {
    fields.iter().find(|f| f.name == name).map(|f| f.kind)
}

/// The kind a selector reaches, or go-bexpr's error naming the first part that is not
/// a field.
fn resolve(selector: &[String], schema: Schema) -> Result<Kind, FilterError> {
    let mut kind = Kind::Struct(schema);
    for (i, part) in selector.iter().enumerate() {
        let next = match kind {
            Kind::Struct(fields) | Kind::List(fields) => find(fields, part),
            Kind::Map(inner) => Some(*inner),
            Kind::Str | Kind::Int | Kind::Bool | Kind::StrList => None,
        };
        kind = next.ok_or_else(|| {
            let prefix = selector.get(..=i).unwrap_or(selector).join(".");
            FilterError(format!("Selector {prefix:?} is not valid"))
        })?;
    }
    Ok(kind)
}

fn supported(kind: Kind) -> &'static [Op] {
    use Op::*;
    match kind {
        Kind::Str => &[Equal, NotEqual, In, NotIn, Matches, NotMatches],
        Kind::Int | Kind::Bool => &[Equal, NotEqual],
        Kind::StrList => &[In, NotIn, IsEmpty, IsNotEmpty],
        Kind::Map(_) => &[IsEmpty, IsNotEmpty, In, NotIn],
        Kind::List(_) => &[IsEmpty, IsNotEmpty],
        Kind::Struct(_) => &[],
    }
}

fn test(m: parse::Match, schema: Schema) -> Result<Test, FilterError> {
    let name = m.selector.join(".");
    let kind = resolve(&m.selector, schema)?;
    if !supported(kind).contains(&m.op) {
        return Err(FilterError(format!(
            "Invalid match operator {:?} for selector {name:?}",
            m.op.name()
        )));
    }
    let coerce_error = |raw: &str, why: String| {
        FilterError(format!(
            "Failed to coerce value {raw:?} for selector {name:?}: {why}"
        ))
    };
    let operand = match (m.value, kind) {
        (None, _) => Operand::None,
        (Some(raw), _) if matches!(m.op, Op::Matches | Op::NotMatches) => {
            let re = regex::RegexBuilder::new(&raw)
                .size_limit(MAX_REGEX_BYTES)
                .build()
                .map_err(|e| {
                    FilterError(format!("Failed to compile regular expression {raw:?}: {e}"))
                })?;
            Operand::Regex(re)
        }
        (Some(raw), Kind::Int) => Operand::Int(go_parse_int(&raw).map_err(|why| {
            coerce_error(&raw, format!("strconv.ParseInt: parsing {raw:?}: {why}"))
        })?),
        (Some(raw), Kind::Bool) => Operand::Bool(go_parse_bool(&raw).ok_or_else(|| {
            coerce_error(
                &raw,
                format!("strconv.ParseBool: parsing {raw:?}: invalid syntax"),
            )
        })?),
        (Some(raw), _) => Operand::Str(raw),
    };
    Ok(Test {
        selector: m.selector,
        op: m.op,
        operand,
    })
}

/// Go's `strconv.ParseBool`.
fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: a sign, then decimal, `0x` hex, `0o` or leading-`0`
/// octal, or `0b` binary; the error is Go's reason.
fn go_parse_int(s: &str) -> Result<i64, &'static str> {
    const SYNTAX: &str = "invalid syntax";
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, s.get(1..).unwrap_or("")),
        Some(b'+') => (false, s.get(1..).unwrap_or("")),
        _ => (false, s),
    };
    let lower = body.get(..2).map(str::to_ascii_lowercase);
    let (radix, digits) = match lower.as_deref() {
        Some("0x") => (16, body.get(2..).unwrap_or("")),
        Some("0o") => (8, body.get(2..).unwrap_or("")),
        Some("0b") => (2, body.get(2..).unwrap_or("")),
        _ if body.len() > 1 && body.starts_with('0') => (8, body.get(1..).unwrap_or("")),
        _ => (10, body),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(SYNTAX);
    }
    let magnitude = u64::from_str_radix(digits, radix).map_err(|_| "value out of range")?;
    if negative {
        0i64.checked_sub_unsigned(magnitude)
            .ok_or("value out of range")
    } else {
        i64::try_from(magnitude).map_err(|_| "value out of range")
    }
}

fn eval(node: &Node, schema: Schema, item: &Value) -> bool {
    match node {
        Node::Not(inner) => !eval(inner, schema, item),
        Node::And(all) => all.iter().all(|n| eval(n, schema, item)),
        Node::Or(any) => any.iter().any(|n| eval(n, schema, item)),
        Node::Test(t) => t.walk(0, Kind::Struct(schema), item),
    }
}

impl Test {
    /// Walks the item along the selector from part `depth`, where the value has `kind`.
    /// The selector was resolved against the schema, so each part names a field; a
    /// field the JSON lacks reads as empty (`""`, `0`, `false`, no elements).
    fn walk(&self, depth: usize, kind: Kind, value: &Value) -> bool {
        let Some(part) = self.selector.get(depth) else {
            return self.leaf(kind, value);
        };
        match kind {
            Kind::Struct(fields) => find(fields, part).is_some_and(|next| {
                self.walk(depth + 1, next, value.get(part).unwrap_or(&Value::Null))
            }),
            Kind::List(fields) => value.as_array().is_some_and(|items| {
                items
                    .iter()
                    .any(|v| self.walk(depth, Kind::Struct(fields), v))
            }),
            Kind::Map(inner) => match value.get(part) {
                Some(v) if !v.is_null() => self.walk(depth + 1, *inner, v),
                // go-bexpr: nothing equals, contains or matches an absent key.
                _ => matches!(
                    self.op,
                    Op::NotEqual | Op::NotIn | Op::IsEmpty | Op::NotMatches
                ),
            },
            Kind::Str | Kind::Int | Kind::Bool | Kind::StrList => false,
        }
    }

    fn leaf(&self, kind: Kind, value: &Value) -> bool {
        let positive = match self.op {
            Op::Equal | Op::In | Op::IsEmpty | Op::Matches => true,
            Op::NotEqual | Op::NotIn | Op::IsNotEmpty | Op::NotMatches => false,
        };
        let found = match (&self.operand, kind) {
            (Operand::Regex(re), _) => re.is_match(value.as_str().unwrap_or("")),
            (Operand::Int(n), _) => value.as_i64() == Some(*n),
            (Operand::Bool(b), _) => value.as_bool().unwrap_or(false) == *b,
            (Operand::Str(s), Kind::Str) => {
                let text = value.as_str().unwrap_or("");
                if matches!(self.op, Op::In | Op::NotIn) {
                    text.contains(s.as_str())
                } else {
                    text == s
                }
            }
            (Operand::Str(s), Kind::StrList) => value
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(s.as_str()))),
            (Operand::Str(s), Kind::Map(_)) => value.get(s.as_str()).is_some(),
            (Operand::None, _) => match value {
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                Value::Null => true,
                _ => false,
            },
            (Operand::Str(_), _) => false,
        };
        found == positive
    }
}

#[cfg(test)]
mod tests;
