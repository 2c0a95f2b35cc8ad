//! The data a watch hands over: JSON whose object members keep the order the agent sent
//! them in, written back as Go's `encoding/json` writes it (what Consul's watches print
//! and pipe to handlers).

use std::fmt::Write as _;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// A JSON value; objects keep their members in order. Two values are equal when they
/// are the same in the same order (an agent writes a value the same way every time).
#[derive(Debug, Clone, PartialEq)]
pub enum Doc {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as read.
    Number(Number),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Doc>),
    /// An object, its members in order.
    Object(Vec<(String, Doc)>),
}

impl Doc {
    /// Parses JSON text.
    pub fn parse(text: &str) -> Result<Doc, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The member `name` of an object.
    pub fn get(&self, name: &str) -> Option<&Doc> {
        match self {
            Doc::Object(members) => members.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Doc::String(s) => Some(s),
            _ => None,
        }
    }

    /// One line, as Go's `json.Encoder` writes it (without its trailing newline).
    pub fn to_go_json(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, None, 0);
        out
    }

    /// Go's `json.MarshalIndent(v, "", "    ")`: what `consul watch` prints.
    pub fn to_go_json_indented(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, Some("    "), 0);
        out
    }

    fn write(&self, out: &mut String, indent: Option<&str>, depth: usize) {
        let newline = |out: &mut String, depth: usize| {
            if let Some(unit) = indent {
                out.push('\n');
                for _ in 0..depth {
                    out.push_str(unit);
                }
            }
        };
        match self {
            Doc::Null => out.push_str("null"),
            Doc::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Doc::Number(n) => {
                let _ = write!(out, "{n}");
            }
            Doc::String(s) => out.push_str(&go_json_string(s)),
            Doc::Array(items) if items.is_empty() => out.push_str("[]"),
            Doc::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, depth + 1);
                    item.write(out, indent, depth + 1);
                }
                newline(out, depth);
                out.push(']');
            }
            Doc::Object(members) if members.is_empty() => out.push_str("{}"),
            Doc::Object(members) => {
                out.push('{');
                for (i, (name, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, depth + 1);
                    out.push_str(&go_json_string(name));
                    out.push(':');
                    if indent.is_some() {
                        out.push(' ');
                    }
                    value.write(out, indent, depth + 1);
                }
                newline(out, depth);
                out.push('}');
            }
        }
    }
}

/// A JSON string as Go's `encoding/json` writes it: `<`, `>`, `&`, U+2028 and U+2029
/// escaped as `\u…` too.
pub fn go_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Doc, D::Error> {
        deserializer.deserialize_any(DocVisitor)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Doc, E> {
        Ok(Doc::Null)
    }

    fn visit_none<E>(self) -> Result<Doc, E> {
        Ok(Doc::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Doc, D::Error> {
        Doc::deserialize(d)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Doc, E> {
        Ok(Doc::Bool(b))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Doc, E> {
        Ok(Doc::Number(n.into()))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Doc, E> {
        Ok(Doc::Number(n.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Doc, E> {
        Number::from_f64(n)
            .map(Doc::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_str<E>(self, s: &str) -> Result<Doc, E> {
        Ok(Doc::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Doc, E> {
        Ok(Doc::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Doc::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
        let mut members = Vec::new();
        while let Some((name, value)) = map.next_entry::<String, Doc>()? {
            members.push((name, value));
        }
        Ok(Doc::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_their_order_and_print_as_go_does() {
        let doc = Doc::parse(
            r#"{"Zeta": 1, "Alpha": [true, null, -2, 1.5], "Empty": {}, "None": [],
                "Nested": {"B": "x<y>&z", "A": "\u0001\n"}}"#,
        )
        .unwrap();
        assert_eq!(
            doc.to_go_json(),
            r#"{"Zeta":1,"Alpha":[true,null,-2,1.5],"Empty":{},"None":[],"Nested":{"B":"x\u003cy\u003e\u0026z","A":"\u0001\n"}}"#
        );
        assert_eq!(
            doc.to_go_json_indented(),
            "{\n    \"Zeta\": 1,\n    \"Alpha\": [\n        true,\n        null,\n        -2,\n        1.5\n    ],\n    \
             \"Empty\": {},\n    \"None\": [],\n    \"Nested\": {\n        \"B\": \"x\\u003cy\\u003e\\u0026z\",\n        \
             \"A\": \"\\u0001\\n\"\n    }\n}"
        );
        assert_eq!(Doc::Null.to_go_json_indented(), "null");
        assert_eq!(doc.get("Zeta"), Some(&Doc::Number(1.into())));
        assert_eq!(
            doc.get("Nested")
                .and_then(|n| n.get("B"))
                .and_then(Doc::as_str),
            Some("x<y>&z")
        );
    }

    #[test]
    fn equality_is_deep_and_ordered() {
        let a = Doc::parse(r#"[{"K": "a", "V": [1, 2]}]"#).unwrap();
        assert_eq!(a, Doc::parse(r#"[ {"K":"a","V":[1,2]} ]"#).unwrap());
        assert_ne!(a, Doc::parse(r#"[{"K": "a", "V": [1, 3]}]"#).unwrap());
        assert!(Doc::parse("{").is_err());
        assert_eq!(go_json_string("\u{8}\u{c}\u{2028}é"), "\"\\b\\f\\u2028é\"");
    }
}
