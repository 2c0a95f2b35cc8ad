//! ACL rules: Consul's policy language, in HCL or JSON, parsed into [`Rules`].
//!
//! ```text
//!   operator = "read"                          {"operator": "read",
//!   key_prefix "app/" { policy = "write" }      "key_prefix": {"app/": {"policy": "write"}},
//!   service "web" { policy = "read" }           "service": {"web": [{"policy": "read"}]}}
//! ```
//!
//! Five resources take one level (`acl`, `keyring`, `operator`, `mesh`, `peering`); seven
//! take rules by label, exact (`key`) or by prefix (`key_prefix`): `agent`, `event`, `key`,
//! `node`, `query`, `service`, `session`. Levels are `read`, `write` and `deny`, and `list`
//! for keys. A label given twice in one policy keeps the stronger level, as when several
//! policies are merged: deny over write over list over read.
//!
//! JSON is parsed by the same HCL parser (a JSON object is an HCL expression), so that a
//! mistake in either format is reported at its line and column. Unlike Consul, unknown
//! resources and unknown keys in a rule are refused rather than ignored: a misspelt
//! `servce` would otherwise grant nothing, silently.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;

use hcl::edit::Span;
use hcl::edit::expr::{Expression, Object, ObjectKey};
use hcl::edit::structure::{Body, Structure};
use serde::{Deserialize, Serialize};

/// What a rule grants. Ordered by precedence when rules for one label are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    /// Reads.
    Read,
    /// Listing keys (only for `key` rules, and only enforced with
    /// `acl.enable_key_list_policy`).
    List,
    /// Reads and writes.
    Write,
    /// Nothing; beats every other level.
    Deny,
}

impl Level {
    fn parse(text: &str, list_allowed: bool) -> Option<Level> {
        match text {
            "read" => Some(Level::Read),
            "write" => Some(Level::Write),
            "deny" => Some(Level::Deny),
            "list" if list_allowed => Some(Level::List),
            _ => None,
        }
    }

    /// The level as written in rules and in permission errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Read => "read",
            Level::List => "list",
            Level::Write => "write",
            Level::Deny => "deny",
        }
    }
}

/// What ACL rules govern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Resource {
    /// The ACL system itself (tokens, policies, roles; snapshots).
    Acl,
    /// The gossip keyring.
    Keyring,
    /// `/v1/operator/*`.
    Operator,
    /// Service mesh configuration (defaults to `operator`'s level in Consul).
    Mesh,
    /// Cluster peering (defaults to `operator`'s level in Consul).
    Peering,
    /// Agent utility endpoints, by node name.
    Agent,
    /// User events, by event name.
    Event,
    /// Keys of the KV store.
    Key,
    /// Nodes, by name.
    Node,
    /// Prepared queries, by name.
    Query,
    /// Services, by name.
    Service,
    /// Sessions, by the node they are on.
    Session,
}

impl Resource {
    /// Every resource.
    pub const ALL: [Resource; 12] = [
        Resource::Acl,
        Resource::Keyring,
        Resource::Operator,
        Resource::Mesh,
        Resource::Peering,
        Resource::Agent,
        Resource::Event,
        Resource::Key,
        Resource::Node,
        Resource::Query,
        Resource::Service,
        Resource::Session,
    ];

    /// The name rules and permission errors use.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Acl => "acl",
            Resource::Keyring => "keyring",
            Resource::Operator => "operator",
            Resource::Mesh => "mesh",
            Resource::Peering => "peering",
            Resource::Agent => "agent",
            Resource::Event => "event",
            Resource::Key => "key",
            Resource::Node => "node",
            Resource::Query => "query",
            Resource::Service => "service",
            Resource::Session => "session",
        }
    }

    /// Whether rules for it name a label (`key "a" { … }`) rather than a level.
    pub fn labelled(self) -> bool {
        !matches!(
            self,
            Resource::Acl
                | Resource::Keyring
                | Resource::Operator
                | Resource::Mesh
                | Resource::Peering
        )
    }

    /// The resource a top-level rule name means, and whether it is the `_prefix` form.
    fn named(name: &str) -> Option<(Resource, bool)> {
        let (base, prefix) = match name.strip_suffix("_prefix") {
            Some(base) => (base, true),
            None => (name, false),
        };
        let resource = Resource::ALL.into_iter().find(|r| r.as_str() == base)?;
        (!prefix || resource.labelled()).then_some((resource, prefix))
    }
}

/// FNV-1a, for the exact-label maps. Their keys are written by whoever writes
/// policies, never by callers (who only look labels up, at the cost of one comparison
/// per entry of a bucket at worst), so hash flooding does not apply; and these lookups,
/// one per entry of a filtered list, are the hot part of enforcement.
#[derive(Debug, Clone, Copy, Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type ExactLabels = HashMap<String, Level, std::hash::BuildHasherDefault<Fnv>>;

/// The rules of one labelled resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Labelled {
    exact: ExactLabels,
    /// Longest prefix first, so that the first match is the one that governs.
    prefixes: Vec<(String, Level)>,
}

impl Labelled {
    fn add(&mut self, label: &str, prefix: bool, level: Level) {
        if prefix {
            match self.prefixes.iter_mut().find(|(p, _)| p == label) {
                Some((_, have)) => *have = (*have).max(level),
                None => {
                    self.prefixes.push((label.to_owned(), level));
                    self.prefixes
                        .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
                }
            }
        } else {
            let have = self.exact.entry(label.to_owned()).or_insert(level);
            *have = (*have).max(level);
        }
    }

    /// The level that governs `label`: its exact rule, else its longest prefix rule.
    fn governing(&self, label: &str) -> Option<Level> {
        self.exact
            .get(label)
            .copied()
            .or_else(|| self.longest_prefix(label))
    }

    fn longest_prefix(&self, label: &str) -> Option<Level> {
        self.prefixes
            .iter()
            .find(|(p, _)| label.starts_with(p.as_str()))
            .map(|(_, level)| *level)
    }

    /// Every rule whose label starts with `prefix` (exact and prefix rules alike).
    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = Level> + 'a {
        let exact = self
            .exact
            .iter()
            .filter(move |(l, _)| l.starts_with(prefix))
            .map(|(_, level)| *level);
        let prefixes = self
            .prefixes
            .iter()
            .filter(move |(l, _)| l.starts_with(prefix))
            .map(|(_, level)| *level);
        exact.chain(prefixes)
    }
}

/// Parsed ACL rules: one policy's, or several merged. They travel (a server resolves a
/// token for a client agent) in serde's form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    single: BTreeMap<Resource, Level>,
    labelled: BTreeMap<Resource, Labelled>,
}

/// Rules that do not parse: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Failed to parse ACL rules: At {line}:{column}: {message}")]
pub struct RulesError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl Rules {
    /// Parses rules written in HCL or JSON. Empty text is no rules.
    pub fn parse(text: &str) -> Result<Rules, RulesError> {
        let parser = Parser::new(text);
        let mut rules = Rules::default();
        if text.trim().is_empty() {
            return Ok(rules);
        }
        if text.trim_start().starts_with('{') {
            let expr = hcl::edit::parser::parse_expr(text).map_err(|e| parser.syntax(&e))?;
            let Expression::Object(object) = &expr else {
                return Err(parser.at(expr.span(), "rules must be an object"));
            };
            for (key, value) in object.iter() {
                let name = parser.key(key)?;
                parser.top(&mut rules, name, key.span(), Item::Expr(value.expr()))?;
            }
        } else {
            let body = hcl::edit::parser::parse_body(text).map_err(|e| parser.syntax(&e))?;
            for structure in body.iter() {
                match structure {
                    Structure::Attribute(a) => {
                        parser.top(&mut rules, a.key.as_str(), a.span(), Item::Expr(&a.value))?
                    }
                    Structure::Block(b) => {
                        let labels: Vec<&str> = b.labels.iter().map(|l| l.as_str()).collect();
                        parser.top(
                            &mut rules,
                            b.ident.as_str(),
                            b.span(),
                            Item::Block(&labels, &b.body, b.span()),
                        )?
                    }
                }
            }
        }
        Ok(rules)
    }

    /// These rules and `other`'s together, the stronger level winning for each label.
    pub fn merge(&mut self, other: &Rules) {
        for (resource, level) in &other.single {
            let have = self.single.entry(*resource).or_insert(*level);
            *have = (*have).max(*level);
        }
        for (resource, theirs) in &other.labelled {
            let ours = self.labelled.entry(*resource).or_default();
            for (label, level) in &theirs.exact {
                ours.add(label, false, *level);
            }
            for (label, level) in &theirs.prefixes {
                ours.add(label, true, *level);
            }
        }
    }

    /// Adds one rule (identities expand to rules this way).
    pub fn add(&mut self, resource: Resource, label: &str, prefix: bool, level: Level) {
        if resource.labelled() {
            self.labelled
                .entry(resource)
                .or_default()
                .add(label, prefix, level);
        } else {
            let have = self.single.entry(resource).or_insert(level);
            *have = (*have).max(level);
        }
    }

    /// The level that governs `label` of `resource`, if any rule does. For the five
    /// unlabelled resources the label is ignored. `mesh` and `peering` fall back to
    /// `operator`'s level, as in Consul.
    pub fn governing(&self, resource: Resource, label: &str) -> Option<Level> {
        if !resource.labelled() {
            let own = self.single.get(&resource).copied();
            return match resource {
                Resource::Mesh | Resource::Peering => {
                    own.or_else(|| self.single.get(&Resource::Operator).copied())
                }
                _ => own,
            };
        }
        self.labelled.get(&resource)?.governing(label)
    }

    /// The level of the longest prefix rule of `resource` covering `label` (exact rules
    /// left out), and the levels of every rule under `label`.
    pub(super) fn prefix_and_under(
        &self,
        resource: Resource,
        label: &str,
    ) -> (Option<Level>, Vec<Level>) {
        match self.labelled.get(&resource) {
            Some(l) => (l.longest_prefix(label), l.under(label).collect()),
            None => (None, Vec::new()),
        }
    }

    /// Whether there are no rules at all.
    pub fn is_empty(&self) -> bool {
        self.single.is_empty() && self.labelled.is_empty()
    }
}

/// One top-level occurrence of a rule name.
enum Item<'a> {
    /// `name = …` (HCL) or `"name": …` (JSON).
    Expr(&'a Expression),
    /// `name "label" { … }`.
    Block(&'a [&'a str], &'a Body, Option<Range<usize>>),
}

/// Positions and errors over one text.
struct Parser<'t> {
    text: &'t str,
}

impl<'t> Parser<'t> {
    fn new(text: &'t str) -> Parser<'t> {
        Parser { text }
    }

    fn syntax(&self, e: &hcl::edit::parser::Error) -> RulesError {
        RulesError {
            line: e.location().line(),
            column: e.location().column(),
            message: e.message().to_owned(),
        }
    }

    fn at(&self, span: Option<Range<usize>>, message: impl Into<String>) -> RulesError {
        let offset = span.map_or(0, |s| s.start).min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        RulesError {
            line,
            column: before[line_start..].chars().count() + 1,
            message: message.into(),
        }
    }

    fn key<'a>(&self, key: &'a ObjectKey) -> Result<&'a str, RulesError> {
        match key {
            ObjectKey::Ident(id) => Ok(id.as_str()),
            ObjectKey::Expression(Expression::String(s)) => Ok(s.as_str()),
            ObjectKey::Expression(other) => {
                Err(self.at(other.span(), "a key must be a name or a quoted string"))
            }
        }
    }

    fn string<'a>(&self, expr: &'a Expression, what: &str) -> Result<&'a str, RulesError> {
        match expr {
            Expression::String(s) => Ok(s.as_str()),
            other => Err(self.at(other.span(), format!("{what} must be a quoted string"))),
        }
    }

    fn top(
        &self,
        rules: &mut Rules,
        name: &str,
        span: Option<Range<usize>>,
        item: Item<'_>,
    ) -> Result<(), RulesError> {
        let Some((resource, prefix)) = Resource::named(name) else {
            return Err(self.at(span, format!("unknown rule {name:?}")));
        };
        if !resource.labelled() {
            let Item::Expr(expr) = item else {
                return Err(self.at(span, format!("{name} takes a level: {name} = \"read\"")));
            };
            let text = self.string(expr, name)?;
            let level = Level::parse(text, false)
                .ok_or_else(|| self.at(expr.span(), format!("Invalid {name} policy: {text:?}")))?;
            rules.add(resource, "", false, level);
            return Ok(());
        }
        let mut add = |label: &str, level: Level| rules.add(resource, label, prefix, level);
        match item {
            Item::Block(labels, body, span) => {
                let [label] = labels else {
                    return Err(self.at(
                        span,
                        format!("{name} takes one label: {name} \"label\" {{ policy = \"read\" }}"),
                    ));
                };
                let level = self.body(name, label, body)?;
                add(label, level);
            }
            Item::Expr(Expression::Object(object)) => {
                for (level, label) in self.labels(name, object)? {
                    add(&label, level);
                }
            }
            // JSON as Consul's HCL 1 decoder also read it: a list of label objects.
            Item::Expr(Expression::Array(array)) => {
                for element in array.iter() {
                    let Expression::Object(object) = element else {
                        return Err(self.at(element.span(), format!("{name} takes objects")));
                    };
                    for (level, label) in self.labels(name, object)? {
                        add(&label, level);
                    }
                }
            }
            Item::Expr(other) => {
                return Err(self.at(
                    other.span(),
                    format!(
                        "{name} takes labelled rules: {name} \"label\" {{ policy = \"read\" }}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The rules of an object of labels: `{"app/": {"policy": "write"}}`, each value an
    /// object or a list of objects.
    fn labels(&self, name: &str, object: &Object) -> Result<Vec<(Level, String)>, RulesError> {
        let mut out = Vec::new();
        for (key, value) in object.iter() {
            let label = self.key(key)?;
            let bodies: Vec<&Object> = match value.expr() {
                Expression::Object(o) => vec![o],
                Expression::Array(a) => a
                    .iter()
                    .map(|e| match e {
                        Expression::Object(o) => Ok(o),
                        other => Err(self.at(other.span(), "a rule must be an object")),
                    })
                    .collect::<Result<_, _>>()?,
                other => return Err(self.at(other.span(), "a rule must be an object")),
            };
            for body in bodies {
                let mut fields = Vec::new();
                for (k, v) in body.iter() {
                    fields.push((self.key(k)?, k.span(), v.expr()));
                }
                out.push((
                    self.rule(name, label, body.span(), fields)?,
                    label.to_owned(),
                ));
            }
        }
        Ok(out)
    }

    fn body(&self, name: &str, label: &str, body: &Body) -> Result<Level, RulesError> {
        let mut fields = Vec::new();
        for structure in body.iter() {
            match structure {
                Structure::Attribute(a) => fields.push((a.key.as_str(), a.span(), &a.value)),
                Structure::Block(b) => {
                    return Err(self.at(
                        b.span(),
                        format!("unknown block {:?} in a rule", b.ident.as_str()),
                    ));
                }
            }
        }
        self.rule(name, label, body.span(), fields)
    }

    /// One rule's fields: `policy` (required) and, for services, `intentions`.
    fn rule(
        &self,
        name: &str,
        label: &str,
        span: Option<Range<usize>>,
        fields: Vec<(&str, Option<Range<usize>>, &Expression)>,
    ) -> Result<Level, RulesError> {
        let mut level = None;
        let service = name.starts_with("service");
        for (key, key_span, value) in fields {
            match key {
                "policy" => {
                    let text = self.string(value, "policy")?;
                    let parsed = Level::parse(text, name.starts_with("key"));
                    level = Some(parsed.ok_or_else(|| {
                        self.at(
                            value.span(),
                            format!("Invalid {name} policy: {label:?} {{ policy = {text:?} }}"),
                        )
                    })?);
                }
                "intentions" if service => {
                    let text = self.string(value, "intentions")?;
                    if Level::parse(text, false).is_none() {
                        return Err(self.at(
                            value.span(),
                            format!("Invalid {name} intentions policy: {label:?} {{ intentions = {text:?} }}"),
                        ));
                    }
                }
                other => {
                    return Err(
                        self.at(key_span, format!("unknown key {other:?} in a {name} rule"))
                    );
                }
            }
        }
        level.ok_or_else(|| {
            self.at(
                span,
                format!("Invalid {name} policy: {label:?} has no policy"),
            )
        })
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HCL: &str = r#"
# Vault's storage backend, as Consul's guide writes it.
key_prefix "vault/" {
  policy = "write"
}
service "vault" { policy = "write" }
agent_prefix "" { policy = "read" }
session_prefix "" { policy = "write" }
key "vault/core/lock" { policy = "deny" }
operator = "read"
service "web" {
  policy = "read"
  intentions = "deny"
}
"#;

    #[test]
    fn hcl_rules_parse_into_exact_and_prefix_rules() {
        let r = Rules::parse(HCL).unwrap();
        assert_eq!(r.governing(Resource::Key, "vault/x"), Some(Level::Write));
        assert_eq!(
            r.governing(Resource::Key, "vault/core/lock"),
            Some(Level::Deny)
        );
        assert_eq!(
            r.governing(Resource::Key, "vault"),
            None,
            "a prefix, not a folder"
        );
        assert_eq!(r.governing(Resource::Service, "vault"), Some(Level::Write));
        assert_eq!(
            r.governing(Resource::Service, "vault2"),
            None,
            "exact is exact"
        );
        assert_eq!(r.governing(Resource::Agent, "any"), Some(Level::Read));
        assert_eq!(r.governing(Resource::Operator, ""), Some(Level::Read));
        assert_eq!(
            r.governing(Resource::Mesh, ""),
            Some(Level::Read),
            "mesh follows operator"
        );
        assert_eq!(r.governing(Resource::Acl, ""), None);
    }

    #[test]
    fn json_rules_mean_the_same_in_every_shape_consul_reads() {
        let plain = r#"{"key_prefix": {"vault/": {"policy": "write"}}, "operator": "read"}"#;
        let wrapped = r#"{"key_prefix": {"vault/": [{"policy": "write"}]}, "operator": "read"}"#;
        let listed = r#"{"key_prefix": [{"vault/": {"policy": "write"}}], "operator": "read"}"#;
        let hcl = "key_prefix \"vault/\" { policy = \"write\" }\noperator = \"read\"";
        let want = Rules::parse(hcl).unwrap();
        for text in [plain, wrapped, listed] {
            assert_eq!(Rules::parse(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn the_longest_prefix_governs_and_an_exact_rule_beats_every_prefix() {
        let r = Rules::parse(
            r#"
key_prefix "" { policy = "read" }
key_prefix "a/" { policy = "write" }
key_prefix "a/b/" { policy = "deny" }
key "a/b/c" { policy = "write" }
"#,
        )
        .unwrap();
        assert_eq!(r.governing(Resource::Key, "z"), Some(Level::Read));
        assert_eq!(r.governing(Resource::Key, "a/x"), Some(Level::Write));
        assert_eq!(r.governing(Resource::Key, "a/b/x"), Some(Level::Deny));
        assert_eq!(r.governing(Resource::Key, "a/b/c"), Some(Level::Write));
    }

    #[test]
    fn the_same_label_twice_keeps_the_stronger_level() {
        let mut r = Rules::parse(r#"node "n" { policy = "read" }"#).unwrap();
        r.merge(&Rules::parse(r#"node "n" { policy = "write" }"#).unwrap());
        assert_eq!(r.governing(Resource::Node, "n"), Some(Level::Write));
        r.merge(&Rules::parse(r#"node "n" { policy = "deny" }"#).unwrap());
        assert_eq!(r.governing(Resource::Node, "n"), Some(Level::Deny));
        let twice =
            Rules::parse("key \"k\" { policy = \"list\" }\nkey \"k\" { policy = \"read\" }");
        assert_eq!(
            twice.unwrap().governing(Resource::Key, "k"),
            Some(Level::List)
        );
    }

    fn error(text: &str) -> RulesError {
        Rules::parse(text).expect_err(text)
    }

    #[test]
    fn mistakes_name_their_line_and_column() {
        let e = error("operator = \"read\"\nkey_prefix \"a/\" {\n  policy = \"wirte\"\n}");
        assert_eq!((e.line, e.column), (3, 12), "{e}");
        assert!(
            e.to_string()
                .starts_with("Failed to parse ACL rules: At 3:12: Invalid key_prefix policy"),
            "{e}"
        );
        let e = error("servce \"web\" { policy = \"read\" }");
        assert_eq!((e.line, e.column), (1, 1));
        assert!(e.message.contains("unknown rule \"servce\""), "{e}");
        let e = error("key \"a\" {\n  policy = \"read\"\n  polcy = \"write\"\n}");
        assert_eq!((e.line, e.column), (3, 3), "{e}");
        let e = error("{\"key\": {\"a\": {\"policy\": \"read\"}},\n \"node\": {\"n\": {}}}");
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("has no policy"), "{e}");
        let e = error("key \"a\" {");
        assert_eq!(e.line, 1, "a syntax error: {e}");
    }

    #[test]
    fn levels_are_checked_for_each_resource() {
        assert!(Rules::parse(r#"key "a" { policy = "list" }"#).is_ok());
        assert!(Rules::parse(r#"key_prefix "a" { policy = "list" }"#).is_ok());
        for bad in [
            r#"node "a" { policy = "list" }"#,
            r#"operator = "list""#,
            r#"acl = "admin""#,
            r#"service "a" { policy = "read" intentions = "all" }"#,
            r#"node "a" { policy = "read" intentions = "read" }"#,
            r#"operator "x" { policy = "read" }"#,
            r#"acl_prefix "" { policy = "read" }"#,
            r#"key = "read""#,
            r#"key "a" "b" { policy = "read" }"#,
            r#"key "a" { policy = read }"#,
            "[1, 2]",
        ] {
            assert!(Rules::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_rules_are_no_rules() {
        assert!(Rules::parse("").unwrap().is_empty());
        assert!(Rules::parse("  \n# nothing\n").unwrap().is_empty());
        assert!(Rules::parse("{}").unwrap().is_empty());
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(text in "\\PC{0,200}") {
            let _ = Rules::parse(&text);
        }
    }
}
