//! Consul's HCL, read into the JSON shape the same file would have, so that both formats
//! go through one typed path ([`RawConfig`](super::raw::RawConfig) and the service and
//! check decoders).
//!
//! Consul decodes HCL (version 1) into a generic map and then into its config structs.
//! Its rules, which this module reproduces:
//!
//! - A block (`ports { http = 8500 }`) and an object value (`ports = { http = 8500 }`)
//!   are the same thing: an object.
//! - A key given several times as a block or object adds up to a list
//!   (`services { … } services { … }`). Where Consul's key takes a list (`services`,
//!   `checks`, a service's `checks`), one block is a list of one; anywhere else the key
//!   takes exactly one object, and a second block is an error naming both lines.
//! - An attribute given twice is an error (HCL 1 kept the last value, or for lists added
//!   them up; HCL 2, and a JSON file here, refuse it).
//! - Strings are literal: `${…}` and `%{…}` are kept as written (HCL 1 has no templates);
//!   a heredoc (`<<EOF`, `<<-EOF` with its indentation stripped) is a string.
//! - Values are literals. Variables, function calls and operators are refused.
//!
//! The parser is HCL 2's (hcl-rs, `hcl::edit`); the few forms only HCL 1 accepts (a comma
//! after a top-level item, commas between a block's attributes) are parse errors that
//! name their line. Every key the conversion writes has its line recorded in
//! [`Lines`], so later problems with a key can name the line too.

use std::collections::BTreeMap;

use ::hcl::edit::Span;
use ::hcl::edit::expr::{Array, Expression, Object, ObjectKey};
use ::hcl::edit::structure::{Block, Body, Structure};
use ::hcl::edit::template::{Element, Template};
use serde_json::{Map, Number, Value};

use api::definition::fold_key;

/// Keys whose value is a list of objects (folded, list indices left out): there one
/// block is a list of one. Everything else that takes an object takes exactly one.
const LISTS_OF_OBJECTS: &[&[&str]] = &[
    &["services"],
    &["checks"],
    &["watches"],
    &["services", "checks"],
    &["service", "checks"],
];

/// The line (1-based) where each key of a source was written, by key path
/// (`ports.http`, `services[1].checks[0].interval`). Empty for JSON sources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines(BTreeMap<String, usize>);

impl Lines {
    /// The line of `key`, or of the nearest enclosing key that has one.
    pub fn find(&self, key: &str) -> Option<usize> {
        let mut key = key;
        loop {
            if let Some(line) = self.0.get(key) {
                return Some(*line);
            }
            key = &key[..key.rfind(['.', '['])?];
        }
    }
}

/// A problem with an HCL source: what, at which key (empty for the file as a whole) and
/// line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The key path, as in [`Lines`].
    pub key: String,
    /// The line, when known.
    pub line: Option<usize>,
    /// What to fix.
    pub message: String,
}

/// Parses HCL text into the JSON value of the equivalent JSON config file.
pub fn to_json(text: &str) -> Result<(Value, Lines), Error> {
    let body = ::hcl::edit::parser::parse_body(text).map_err(|e| Error {
        key: String::new(),
        line: Some(e.location().line()),
        message: format!(
            "HCL syntax error at column {}: {}",
            e.location().column(),
            e.message()
        ),
    })?;
    let mut reader = Reader {
        text,
        newlines: text.match_indices('\n').map(|(i, _)| i).collect(),
        lines: BTreeMap::new(),
    };
    let root = reader.body(&body, &Place::root())?;
    Ok((Value::Object(root), Lines(reader.lines)))
}

/// Where a value sits: its key path as shown to users, and the folded keys that decide
/// the list rule.
#[derive(Clone)]
struct Place {
    path: String,
    keys: Vec<String>,
}

impl Place {
    fn root() -> Place {
        Place {
            path: String::new(),
            keys: Vec::new(),
        }
    }

    fn key(&self, key: &str) -> Place {
        let mut keys = self.keys.clone();
        keys.push(fold_key(key));
        Place {
            path: if self.path.is_empty() {
                key.to_owned()
            } else {
                format!("{}.{key}", self.path)
            },
            keys,
        }
    }

    fn index(&self, i: usize) -> Place {
        Place {
            path: format!("{}[{i}]", self.path),
            keys: self.keys.clone(),
        }
    }

    fn takes_list(&self) -> bool {
        LISTS_OF_OBJECTS
            .iter()
            .any(|l| l.iter().copied().eq(self.keys.iter().map(String::as_str)))
    }
}

/// One occurrence of a key: an object (a block, or an object value), or any other value.
enum Item<'a> {
    Object(Source<'a>),
    Expr(&'a Expression),
}

/// Where an object is written.
enum Source<'a> {
    Block(&'a Block),
    Value(&'a Object),
}

impl<'a> Item<'a> {
    fn of(expr: &'a Expression) -> Item<'a> {
        match expr {
            Expression::Object(object) => Item::Object(Source::Value(object)),
            other => Item::Expr(other),
        }
    }
}

/// What a key holds so far.
enum Slot {
    /// An object (one block), for a key that takes one; `line` is where it starts.
    Object {
        line: usize,
        value: Map<String, Value>,
    },
    /// A list: list values and, for a key that takes a list, blocks.
    List(Vec<Value>),
    /// A plain value.
    Scalar(Value),
}

struct Reader<'t> {
    text: &'t str,
    /// Byte offsets of the text's newlines.
    newlines: Vec<usize>,
    lines: BTreeMap<String, usize>,
}

impl Reader<'_> {
    fn line(&self, span: Option<std::ops::Range<usize>>) -> usize {
        let offset = span.map_or(0, |s| s.start);
        self.newlines.partition_point(|&nl| nl < offset) + 1
    }

    fn error(&self, place: &Place, line: usize, message: impl Into<String>) -> Error {
        Error {
            key: place.path.clone(),
            line: Some(line),
            message: message.into(),
        }
    }

    fn body(&mut self, body: &Body, place: &Place) -> Result<Map<String, Value>, Error> {
        let items = body.iter().map(|s| match s {
            Structure::Attribute(a) => (a.key.as_str(), Item::of(&a.value), a.span()),
            Structure::Block(b) => (b.ident.as_str(), Item::Object(Source::Block(b)), b.span()),
        });
        self.entries(items, place)
    }

    fn object(&mut self, object: &Object, place: &Place) -> Result<Map<String, Value>, Error> {
        let mut items = Vec::new();
        for (key, value) in object.iter() {
            let name = match key {
                ObjectKey::Ident(id) => id.as_str(),
                ObjectKey::Expression(Expression::String(s)) => s.as_str(),
                ObjectKey::Expression(other) => {
                    return Err(self.error(
                        place,
                        self.line(other.span()),
                        "an object key must be a name or a quoted string",
                    ));
                }
            };
            items.push((name, Item::of(value.expr()), key.span()));
        }
        self.entries(items, place)
    }

    /// Gathers the items of a body or object, key by key, by the rules in the module doc.
    fn entries<'a>(
        &mut self,
        items: impl IntoIterator<Item = (&'a str, Item<'a>, Option<std::ops::Range<usize>>)>,
        place: &Place,
    ) -> Result<Map<String, Value>, Error> {
        let mut slots: BTreeMap<String, Slot> = BTreeMap::new();
        for (key, item, span) in items {
            let line = self.line(span);
            let here = place.key(key);
            self.lines.entry(here.path.clone()).or_insert(line);
            let slot = slots.remove(key);
            let next = match item {
                Item::Object(source) if here.takes_list() => {
                    let mut list = match slot {
                        None => Vec::new(),
                        Some(Slot::List(list)) => list,
                        Some(_) => return Err(self.error(&here, line, mixed(key))),
                    };
                    let element = here.index(list.len());
                    self.lines.insert(element.path.clone(), line);
                    list.push(Value::Object(self.object_of(&source, &element)?));
                    Slot::List(list)
                }
                Item::Object(source) => {
                    match slot {
                        None => {}
                        Some(Slot::Object { line: first, .. }) => {
                            return Err(self.error(&here, line, once(key, first)));
                        }
                        Some(_) => return Err(self.error(&here, line, mixed(key))),
                    }
                    self.lines.insert(here.path.clone(), line);
                    let value = self.object_of(&source, &here)?;
                    Slot::Object { line, value }
                }
                Item::Expr(expr) => match (expr, slot) {
                    (Expression::Array(array), None) => Slot::List(self.array(array, &here, 0)?),
                    (Expression::Array(array), Some(Slot::List(mut list))) => {
                        let more = self.array(array, &here, list.len())?;
                        list.extend(more);
                        Slot::List(list)
                    }
                    (_, None | Some(Slot::Scalar(_))) => {
                        self.lines.insert(here.path.clone(), line);
                        Slot::Scalar(self.value(expr, &here)?)
                    }
                    (_, Some(_)) => return Err(self.error(&here, line, mixed(key))),
                },
            };
            slots.insert(key.to_owned(), next);
        }
        Ok(slots
            .into_iter()
            .map(|(key, slot)| {
                let value = match slot {
                    Slot::Object { value, .. } => Value::Object(value),
                    Slot::List(list) => Value::Array(list),
                    Slot::Scalar(value) => value,
                };
                (key, value)
            })
            .collect())
    }

    /// The object of a block (its labels nest, as in HCL 1: `a "b" { … }` is
    /// `a { b { … } }`) or of an object value.
    fn object_of(
        &mut self,
        source: &Source<'_>,
        place: &Place,
    ) -> Result<Map<String, Value>, Error> {
        let block = match source {
            Source::Value(object) => return self.object(object, place),
            Source::Block(block) => block,
        };
        let mut inner = place.clone();
        for label in &block.labels {
            inner = inner.key(label.as_str());
            let line = self.line(label.span());
            self.lines.entry(inner.path.clone()).or_insert(line);
        }
        let mut map = self.body(&block.body, &inner)?;
        for label in block.labels.iter().rev() {
            let mut outer = Map::new();
            outer.insert(label.as_str().to_owned(), Value::Object(map));
            map = outer;
        }
        Ok(map)
    }

    /// The elements of a list value; `start` is the index of the first in the key's list.
    fn array(&mut self, array: &Array, place: &Place, start: usize) -> Result<Vec<Value>, Error> {
        let mut out = Vec::new();
        for (i, element) in array.iter().enumerate() {
            let here = place.index(start + i);
            self.lines
                .insert(here.path.clone(), self.line(element.span()));
            out.push(self.value(element, &here)?);
        }
        Ok(out)
    }

    fn value(&mut self, expr: &Expression, place: &Place) -> Result<Value, Error> {
        Ok(match expr {
            Expression::Null(_) => Value::Null,
            Expression::Bool(b) => Value::Bool(*b.value()),
            Expression::Number(n) => {
                let n = n.value();
                let number = match (n.as_u64(), n.as_i64()) {
                    (Some(u), _) => Some(Number::from(u)),
                    (None, Some(i)) => Some(Number::from(i)),
                    _ => n.as_f64().and_then(Number::from_f64),
                };
                match number {
                    Some(number) => Value::Number(number),
                    None => {
                        return Err(self.error(place, self.line(expr.span()), "not a number"));
                    }
                }
            }
            Expression::String(s) => Value::String(s.value().clone()),
            Expression::StringTemplate(t) => Value::String(self.literal(t, place)?),
            Expression::HeredocTemplate(h) => Value::String(self.literal(&h.template, place)?),
            Expression::Array(array) => Value::Array(self.array(array, place, 0)?),
            Expression::Object(object) => Value::Object(self.object(object, place)?),
            other => {
                let source = other
                    .span()
                    .and_then(|s| self.text.get(s))
                    .unwrap_or("this");
                return Err(self.error(
                    place,
                    self.line(other.span()),
                    format!(
                        "`{source}` is an expression; Consul's HCL takes literal values only (quote it to make it a string)"
                    ),
                ));
            }
        })
    }

    /// A template as HCL 1 reads it: literally, `${…}` and `%{…}` included.
    fn literal(&self, template: &Template, place: &Place) -> Result<String, Error> {
        let mut out = String::new();
        for element in template.iter() {
            match element {
                Element::Literal(text) => out.push_str(text.value()),
                other => match other.span().and_then(|s| self.text.get(s)) {
                    Some(source) => out.push_str(source),
                    None => {
                        return Err(self.error(
                            place,
                            self.line(template.span()),
                            "a template this reader cannot keep literally",
                        ));
                    }
                },
            }
        }
        Ok(out)
    }
}

fn mixed(key: &str) -> String {
    format!("`{key}` is given both as a list or block and as a single value")
}

/// The error for a second block of a key that takes one.
fn once(key: &str, first: usize) -> String {
    let hint = match key {
        "service" => "; for several services, repeat `services { … }` blocks instead",
        "check" => "; for several checks, repeat `checks { … }` blocks instead",
        _ => "",
    };
    format!("given a second time (first on line {first}), but it takes one block{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json(text: &str) -> Value {
        match to_json(text) {
            Ok((value, _)) => value,
            Err(e) => panic!("{text}: {e:?}"),
        }
    }

    #[test]
    fn blocks_and_object_values_are_objects() {
        assert_eq!(
            json("ports { http = 8500 }\nnode_meta = { rack = \"r1\", \"a-b\" = \"c\" }"),
            json!({"ports": {"http": 8500}, "node_meta": {"rack": "r1", "a-b": "c"}})
        );
    }

    #[test]
    fn repeated_blocks_of_a_list_key_add_up_and_one_is_a_list_of_one() {
        let v = json(
            "services { name = \"a\" }\nservices {\n  name = \"b\"\n  checks { ttl = \"1s\" }\n}\nchecks = [{ name = \"c\" }]\nchecks { name = \"d\" }",
        );
        assert_eq!(
            v,
            json!({
                "services": [{"name": "a"}, {"name": "b", "checks": [{"ttl": "1s"}]}],
                "checks": [{"name": "c"}, {"name": "d"}],
            })
        );
    }

    #[test]
    fn a_second_block_of_a_single_key_is_an_error_naming_both_lines() {
        let e = to_json("service { name = \"a\" }\n\nservice { name = \"b\" }").unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("service", Some(3)));
        assert!(e.message.contains("first on line 1"), "{}", e.message);
        assert!(e.message.contains("services"), "{}", e.message);
        let e = to_json("ports { http = 1 }\nports = { dns = 2 }").unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("ports", Some(2)));
    }

    #[test]
    fn an_attribute_given_twice_is_an_error_naming_its_line() {
        let e =
            to_json("retry_join = [\"a\"]\ndatacenter = \"x\"\nretry_join = [\"b\"]").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("redefined attribute"), "{}", e.message);
        let e = to_json("ports = 1\nports { http = 1 }").unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("ports", Some(2)));
    }

    #[test]
    fn strings_are_literal_and_heredocs_are_strings() {
        assert_eq!(
            json(
                "a = \"sh -c 'echo ${HOME}'\"\nb = <<-EOF\n    one\n      two\n    EOF\nc = -1\nd = 1.5"
            ),
            json!({"a": "sh -c 'echo ${HOME}'", "b": "one\n  two\n", "c": -1, "d": 1.5})
        );
    }

    #[test]
    fn expressions_are_refused_with_their_line() {
        let e = to_json("datacenter = \"a\"\nport = 8000 + 1").unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("port", Some(2)));
        assert!(
            e.message.contains("`8000 + 1` is an expression"),
            "{}",
            e.message
        );
        let e = to_json("x = { (y) = 1 }").unwrap_err();
        assert!(e.message.contains("object key"), "{}", e.message);
    }

    #[test]
    fn block_labels_nest() {
        assert_eq!(
            json("service \"web\" { port = 80 }"),
            json!({"service": {"web": {"port": 80}}})
        );
    }

    #[test]
    fn syntax_errors_name_the_line_and_column() {
        let e = to_json("datacenter = \"a\"\nports {\n  http = \n}").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(
            e.message.starts_with("HCL syntax error at column"),
            "{}",
            e.message
        );
    }

    #[test]
    fn every_key_has_a_line() {
        let (_, lines) = to_json(
            "datacenter = \"a\"\nservices {\n  name = \"w\"\n  checks = [\n    { ttl = \"1s\" },\n  ]\n}\n",
        )
        .unwrap();
        assert_eq!(lines.find("datacenter"), Some(1));
        assert_eq!(lines.find("services[0]"), Some(2));
        assert_eq!(lines.find("services[0].name"), Some(3));
        assert_eq!(lines.find("services[0].checks[0]"), Some(5));
        assert_eq!(lines.find("services[0].checks[0].ttl"), Some(5));
        assert_eq!(lines.find("services[0].port"), Some(2), "the enclosing key");
        assert_eq!(lines.find("nope"), None);
    }
}
