//! Deciding a request: a token's merged rules, then the agent's default policy.
//!
//! Consul's evaluation, which this follows: the rule that governs a label is its exact
//! rule, else its longest prefix rule; `write` grants every access, `list` grants list and
//! read, `read` grants read, `deny` nothing. With no governing rule, the default policy
//! decides, except for `acl` itself, which only a rule or the management policy grants.

use std::sync::Arc;

use super::rules::{Level, Resource, Rules};

/// The access a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Access {
    /// Reading.
    Read,
    /// Listing keys (`?recurse`, `?keys`) where `acl.enable_key_list_policy` asks for it.
    List,
    /// Writing.
    Write,
}

impl Access {
    /// As permission errors name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::List => "list",
            Access::Write => "write",
        }
    }

    fn granted_by(self, level: Level) -> bool {
        match level {
            Level::Write => true,
            Level::List => matches!(self, Access::Read | Access::List),
            Level::Read => self == Access::Read,
            Level::Deny => false,
        }
    }
}

/// What a token may do.
#[derive(Debug, Clone)]
pub struct Authorizer {
    grant: Grant,
    /// `acl.default_policy = "allow"`.
    default_allow: bool,
}

#[derive(Debug, Clone)]
enum Grant {
    /// The built-in management policy: everything.
    Everything,
    /// The merged rules of the token's policies, roles and identities.
    Rules(Arc<Rules>),
}

impl Authorizer {
    /// A token holding the global-management policy.
    pub fn management() -> Authorizer {
        Authorizer {
            grant: Grant::Everything,
            default_allow: true,
        }
    }

    /// A token whose merged rules are `rules`, on an agent whose default policy allows
    /// (`default_allow`) or denies what no rule governs.
    pub fn new(rules: Arc<Rules>, default_allow: bool) -> Authorizer {
        Authorizer {
            grant: Grant::Rules(rules),
            default_allow,
        }
    }

    /// The default policy alone: what a request may do when ACLs are on and nothing else
    /// is known (`down_policy` `allow` or `deny`).
    pub fn default_only(default_allow: bool) -> Authorizer {
        Authorizer::new(Arc::new(Rules::default()), default_allow)
    }

    /// Whether this token manages everything.
    pub fn is_management(&self) -> bool {
        matches!(self.grant, Grant::Everything)
    }

    /// Whether `access` to `label` of `resource` is allowed.
    pub fn allows(&self, resource: Resource, label: &str, access: Access) -> bool {
        let rules = match &self.grant {
            Grant::Everything => return true,
            Grant::Rules(rules) => rules,
        };
        match rules.governing(resource, label) {
            Some(level) => access.granted_by(level),
            None => self.default_for(resource),
        }
    }

    /// Whether the token may delete every key under `prefix` (a recursive delete): the
    /// longest prefix rule covering it must grant write and no rule under it may grant
    /// less; with neither, the default policy decides.
    pub fn allows_key_tree_write(&self, prefix: &str) -> bool {
        let rules = match &self.grant {
            Grant::Everything => return true,
            Grant::Rules(rules) => rules,
        };
        let (covering, under) = rules.prefix_and_under(Resource::Key, prefix);
        if under.iter().any(|l| *l != Level::Write) {
            return false;
        }
        match covering {
            Some(level) => level == Level::Write,
            None => self.default_for(Resource::Key),
        }
    }

    fn default_for(&self, resource: Resource) -> bool {
        // The default policy never grants the ACL system itself.
        self.default_allow && resource != Resource::Acl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(rules: &str, default_allow: bool) -> Authorizer {
        Authorizer::new(Arc::new(Rules::parse(rules).unwrap()), default_allow)
    }

    #[test]
    fn levels_grant_what_consul_grants() {
        let a = token(
            r#"
key "w" { policy = "write" }
key "l" { policy = "list" }
key "r" { policy = "read" }
key "d" { policy = "deny" }
"#,
            true,
        );
        let table = [
            ("w", [true, true, true]),
            ("l", [true, true, false]),
            ("r", [true, false, false]),
            ("d", [false, false, false]),
            ("none", [true, true, true]),
        ];
        for (key, want) in table {
            let got = [Access::Read, Access::List, Access::Write]
                .map(|access| a.allows(Resource::Key, key, access));
            assert_eq!(got, want, "{key}");
        }
    }

    #[test]
    fn the_default_policy_decides_what_no_rule_governs_except_acl() {
        let allow = token(r#"service "web" { policy = "read" }"#, true);
        let deny = token(r#"service "web" { policy = "read" }"#, false);
        assert!(allow.allows(Resource::Node, "n1", Access::Write));
        assert!(!deny.allows(Resource::Node, "n1", Access::Read));
        assert!(
            !allow.allows(Resource::Service, "web", Access::Write),
            "a rule beats the default"
        );
        assert!(!allow.allows(Resource::Acl, "", Access::Read));
        assert!(token(r#"acl = "read""#, false).allows(Resource::Acl, "", Access::Read));
        assert!(Authorizer::management().allows(Resource::Acl, "", Access::Write));
        assert!(!Authorizer::default_only(false).allows(Resource::Operator, "", Access::Read));
    }

    #[test]
    fn a_tree_delete_needs_write_over_the_whole_tree() {
        let a = token(
            r#"
key_prefix "" { policy = "read" }
key_prefix "app/" { policy = "write" }
key "app/locked/one" { policy = "read" }
"#,
            false,
        );
        assert!(a.allows_key_tree_write("app/web/"));
        assert!(
            !a.allows_key_tree_write("app/locked/"),
            "a read rule beneath"
        );
        assert!(
            !a.allows_key_tree_write("app/"),
            "which is also beneath app/"
        );
        assert!(!a.allows_key_tree_write("other/"), "read governs other/");
        assert!(
            !a.allows_key_tree_write(""),
            "everything holds non-write rules"
        );
        let open = token(r#"node "n" { policy = "read" }"#, true);
        assert!(
            open.allows_key_tree_write("x/"),
            "no key rules: the default"
        );
    }
}
