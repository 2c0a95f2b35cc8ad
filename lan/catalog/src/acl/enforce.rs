//! What each catalog read and write needs, and what a caller may see of an answer.
//!
//! Consul's rules, by request (its `vet*WithACL` and `filterACL` helpers):
//!
//! | request | needs | filtered by |
//! |---|---|---|
//! | nodes, services, checks, sessions, address | — | `node:read`, `service:read`, `session:read` |
//! | one service's instances or health | `service:read` on it | `node:read` |
//! | one key | `key:read` | — |
//! | a key tree or key list | `key:list` on the prefix, with `enable_key_list_policy` | `key:read` |
//! | register | `node:write` when the node changes; `service:write` for the service and service checks; `node:write` for node checks | |
//! | deregister | `node:write` for a node or node check; `service:write` for a service or its check | |
//! | KV writes | `key:write`; a tree delete, write over the whole tree | |
//! | sessions | `session:write` on the session's node | |
//! | prepared queries | `query:write` on the name | `query:read`; the stored token shown to `acl:write` |
//! | executing a prepared query | — | `service:read`, `node:read`, as its stored token or else the caller |
//! | ACL tables | `acl:read` / `acl:write` | |
//! | snapshots, restores, replication | management | |

use serde::{Deserialize, Serialize};

use super::authorizer::{Access, Authorizer};
use super::rules::Resource;
use crate::kv::{KvAnswer, KvChanges, KvRead, KvWrite};
use crate::query::{Answer, Query};
use crate::sessions::SessionWrite;
use crate::state::{Command, State, fold};
use crate::txn::{TxnOp, TxnOutcome, TxnVerb};
use crate::types::{Check, Node};

/// What a token's SecretID reads as to a caller that may not write ACLs (Consul's).
pub const HIDDEN_SECRET: &str = "<hidden>";

/// A permission a request lacks (Consul 1.11+'s text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("Permission denied: token with AccessorID '{accessor_id}' lacks permission '{resource}:{access}'{on}", access = access.as_str(), on = on(label))]
pub struct Denied {
    /// The caller's token.
    pub accessor_id: String,
    /// What it lacks permission on.
    pub resource: Resource,
    /// The access it lacks.
    pub access: Access,
    /// The node, service, key… (none for unlabelled resources).
    pub label: Option<String>,
}

fn on(label: &Option<String>) -> String {
    label
        .as_ref()
        .map(|l| format!(" on {l:?}"))
        .unwrap_or_default()
}

/// Who asks: their token's AccessorID and what it may do. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The AccessorID, for errors.
    pub accessor_id: std::sync::Arc<str>,
    /// What the token may do.
    pub authorizer: Authorizer,
    /// `acl.enable_key_list_policy`: tree and key-list reads need `key:list`.
    pub key_list: bool,
}

impl Caller {
    /// Whether the caller may have `access` to `label` of `resource`.
    pub fn may(&self, resource: Resource, label: &str, access: Access) -> bool {
        self.authorizer.allows(resource, label, access)
    }

    /// `Ok` when the caller may, else the error naming what it lacks.
    pub fn need(&self, resource: Resource, label: &str, access: Access) -> Result<(), Denied> {
        if self.may(resource, label, access) {
            Ok(())
        } else {
            Err(self.denied(resource, label, access))
        }
    }

    fn denied(&self, resource: Resource, label: &str, access: Access) -> Denied {
        Denied {
            accessor_id: self.accessor_id.to_string(),
            resource,
            access,
            label: resource.labelled().then(|| label.to_owned()),
        }
    }

    fn management(&self) -> Result<(), Denied> {
        if self.authorizer.is_management() {
            Ok(())
        } else {
            Err(self.denied(Resource::Acl, "", Access::Write))
        }
    }

    fn key_tree_write(&self, prefix: &str) -> Result<(), Denied> {
        if self.authorizer.allows_key_tree_write(prefix) {
            Ok(())
        } else {
            Err(self.denied(Resource::Key, prefix, Access::Write))
        }
    }

    /// What a write needs, checked against the state it will apply to.
    pub fn check_write(&self, state: &State, command: &Command) -> Result<(), Denied> {
        match command {
            Command::Register(r) => {
                let node_key = fold(&r.node.name);
                let stored = state.nodes.get(&node_key);
                if !r.skip_node_update && stored.is_none_or(|s| changes_node(s, &r.node)) {
                    self.need(Resource::Node, &r.node.name, Access::Write)?;
                }
                if let Some(service) = &r.service {
                    self.need(Resource::Service, &service.name, Access::Write)?;
                    let id = if service.id.is_empty() {
                        &service.name
                    } else {
                        &service.id
                    };
                    if let Some(old) = state.services.get(&(node_key.clone(), fold(id))) {
                        self.need(Resource::Service, &old.name, Access::Write)?;
                    }
                }
                for check in &r.checks {
                    self.check_on(state, &node_key, &r.node.name, check, r.service.as_ref())?;
                }
                Ok(())
            }
            Command::Deregister(d) => {
                let node_key = fold(&d.node);
                if let Some(id) = &d.service_id {
                    return match state.services.get(&(node_key, fold(id))) {
                        Some(s) => self.need(Resource::Service, &s.name, Access::Write),
                        None => self.need(Resource::Node, &d.node, Access::Write),
                    };
                }
                if let Some(id) = &d.check_id {
                    return match state.checks.get(&(node_key.clone(), fold(id))) {
                        Some(c) => self.check_on(state, &node_key, &d.node, c, None),
                        None => self.need(Resource::Node, &d.node, Access::Write),
                    };
                }
                self.need(Resource::Node, &d.node, Access::Write)
            }
            Command::SetQuery { query, .. } => {
                if let Some(stored) = state.queries.get(&query.id) {
                    self.need(Resource::Query, &stored.name, Access::Write)?;
                }
                self.need(Resource::Query, &query.name, Access::Write)
            }
            Command::DeleteQuery { id } => match state.queries.get(id) {
                Some(q) => self.need(Resource::Query, &q.name, Access::Write),
                None => Ok(()),
            },
            Command::Kv(write) => match write {
                KvWrite::Set { key, .. }
                | KvWrite::Delete { key, .. }
                | KvWrite::Acquire { key, .. }
                | KvWrite::Release { key, .. } => self.need(Resource::Key, key, Access::Write),
                KvWrite::DeleteTree { prefix } => self.key_tree_write(prefix),
                KvWrite::Reap { .. } => self.management(),
            },
            Command::Txn(ops) => ops.iter().try_for_each(|op| self.check_txn_op(op)),
            Command::Session(write) => {
                let node = match write {
                    SessionWrite::Create(s) => Some(s.node.clone()),
                    SessionWrite::Destroy { id } | SessionWrite::Renew { id } => {
                        state.sessions.by_id.get(id).map(|s| s.node.clone())
                    }
                };
                match node {
                    Some(node) => self.need(Resource::Session, &node, Access::Write),
                    // Unknown: the write changes nothing (or says "not found"), and
                    // reveals nothing a read would not.
                    None => Ok(()),
                }
            }
            Command::Acl(_) => self.need(Resource::Acl, "", Access::Write),
            Command::Autopilot { .. } => self.need(Resource::Operator, "", Access::Write),
            // Consul's snapshot permission is `acl:write` (a snapshot holds every secret).
            Command::Restore(_) | Command::RestorePart(_) => {
                self.need(Resource::Acl, "", Access::Write)
            }
            Command::KvReplicate(_) => self.management(),
        }
    }

    /// A check on node `node_key`: a node check needs `node:write`, a service check
    /// `service:write` on its service (`registering` or the one stored).
    fn check_on(
        &self,
        state: &State,
        node_key: &str,
        node: &str,
        check: &Check,
        registering: Option<&crate::types::Service>,
    ) -> Result<(), Denied> {
        if check.service_id.is_empty() {
            return self.need(Resource::Node, node, Access::Write);
        }
        let named = registering
            .filter(|s| {
                let id = if s.id.is_empty() { &s.name } else { &s.id };
                id.eq_ignore_ascii_case(&check.service_id)
            })
            .map(|s| s.name.clone())
            .or_else(|| {
                state
                    .services
                    .get(&(node_key.to_owned(), fold(&check.service_id)))
                    .map(|s| s.name.clone())
            });
        match named {
            Some(name) => self.need(Resource::Service, &name, Access::Write),
            None => self.need(Resource::Node, node, Access::Write),
        }
    }

    /// What one operation of a transaction needs.
    pub fn check_txn_op(&self, op: &TxnOp) -> Result<(), Denied> {
        match op.verb {
            TxnVerb::Set
            | TxnVerb::Cas
            | TxnVerb::Lock
            | TxnVerb::Unlock
            | TxnVerb::Delete
            | TxnVerb::DeleteCas => self.need(Resource::Key, &op.key, Access::Write),
            TxnVerb::DeleteTree => self.key_tree_write(&op.key),
            // What a check's outcome says about a key needs the right to read it.
            TxnVerb::CheckIndex | TxnVerb::CheckSession | TxnVerb::CheckNotExists => {
                self.need(Resource::Key, &op.key, Access::Read)
            }
            // Reads are left out of the results instead ([`Caller::filter_txn`]), as
            // Consul does.
            TxnVerb::Get | TxnVerb::GetTree => Ok(()),
        }
    }

    /// Leaves out of a transaction's results the entries this caller may not read;
    /// returns whether any was left out.
    pub fn filter_txn(&self, outcome: &mut TxnOutcome) -> bool {
        match outcome {
            TxnOutcome::Done(entries) => {
                retain(entries, |e| self.may(Resource::Key, &e.key, Access::Read))
            }
            TxnOutcome::Failed(_) => false,
        }
    }

    fn list(&self, prefix: &str) -> Result<(), Denied> {
        if self.key_list {
            self.need(Resource::Key, prefix, Access::List)
        } else {
            Ok(())
        }
    }

    /// What a read needs before it runs. Reads of lists need nothing: their answers are
    /// filtered instead ([`Caller::filter`]).
    pub fn check_read(&self, query: &Query) -> Result<(), Denied> {
        match query {
            Query::ServiceNodes { service, .. } | Query::ServiceHealth { service, .. } => {
                self.need(Resource::Service, service, Access::Read)
            }
            Query::Kv {
                key,
                read: KvRead::Entry,
            } => self.need(Resource::Key, key, Access::Read),
            Query::Kv { key, .. } => self.list(key),
            Query::Txn(ops) => ops.iter().try_for_each(|op| self.check_txn_op(op)),
            Query::Acl(_) => self.need(Resource::Acl, "", Access::Read),
            Query::Autopilot => self.need(Resource::Operator, "", Access::Read),
            Query::Snapshot => self.need(Resource::Acl, "", Access::Write),
            Query::Nodes { .. }
            | Query::Services { .. }
            | Query::NodeServices { .. }
            | Query::Node { .. }
            | Query::NodeChecks { .. }
            | Query::ServiceChecks { .. }
            | Query::ChecksInState { .. }
            | Query::Address { .. }
            | Query::PreparedQueries { .. }
            | Query::QueryToRun { .. }
            | Query::RunServiceQuery { .. }
            | Query::ServiceInstances { .. }
            | Query::NodeDump { .. }
            | Query::Sessions(_) => Ok(()),
        }
    }

    /// Removes from `answer` what the caller may not read; whether anything was removed.
    pub fn filter(&self, answer: &mut Answer) -> bool {
        let node = |n: &Node| self.may(Resource::Node, &n.name, Access::Read);
        let service = |name: &str| self.may(Resource::Service, name, Access::Read);
        let check = |c: &Check| {
            if c.service_id.is_empty() {
                self.may(Resource::Node, &c.node, Access::Read)
            } else {
                service(&c.service_name)
            }
        };
        let key = |k: &str| self.may(Resource::Key, k, Access::Read);
        match answer {
            Answer::Nodes(nodes) => retain(nodes, |n| node(n)),
            Answer::Services(names) => {
                let before = names.len();
                names.retain(|name, _| service(name));
                names.len() != before
            }
            Answer::ServiceNodes(list) => retain(list, |e| node(&e.node)),
            // What `/v1/catalog/services` lists: by service name only, as Consul's.
            Answer::ServiceInstances(list) => retain(list, |e| service(&e.service.name)),
            // `service:read` is checked before a health read; an executed prepared
            // query's selection is filtered by it instead.
            Answer::ServiceHealth(list) => {
                retain(list, |e| node(&e.node) && service(&e.service.name))
            }
            Answer::NodeServices(found) => {
                let Some(ns) = found else { return false };
                if !node(&ns.node) {
                    *found = None;
                    return true;
                }
                retain(&mut ns.services, |s| service(&s.name))
            }
            Answer::Node(found) => {
                let hidden = found.as_ref().is_some_and(|n| !node(n));
                if hidden {
                    *found = None;
                }
                hidden
            }
            Answer::Checks(checks) => retain(checks, |c| check(c)),
            Answer::NodeDump(list) => {
                let mut filtered = retain(list, |i| node(&i.node));
                for info in list.iter_mut() {
                    filtered |= retain(&mut info.services, |s| service(&s.name));
                    filtered |= retain(&mut info.checks, |c| check(c));
                }
                filtered
            }
            Answer::Address(nodes, services) => {
                let a = retain(nodes, |n| node(n));
                let b = retain(services, |s| service(&s.name));
                a || b
            }
            Answer::PreparedQueries(queries) => {
                let filtered = retain(queries, |q| {
                    self.may(Resource::Query, &q.name, Access::Read)
                });
                // A stored token is shown to those who may write ACLs (Consul's rule);
                // the others see that there is one.
                if !self.may(Resource::Acl, "", Access::Write) {
                    for q in queries.iter_mut().filter(|q| !q.token.is_empty()) {
                        q.token = HIDDEN_SECRET.to_owned();
                    }
                }
                filtered
            }
            Answer::Sessions(sessions) => retain(sessions, |s| {
                self.may(Resource::Session, &s.node, Access::Read)
            }),
            Answer::Kv(KvAnswer::Entries(entries)) => retain(entries, |e| key(&e.key)),
            Answer::Kv(KvAnswer::Keys(keys)) => retain(keys, |k| key(k)),
            Answer::Kv(KvAnswer::Changes(KvChanges::Listed { changes, .. })) => {
                retain(changes, |c| key(c.key()))
            }
            Answer::Kv(KvAnswer::Changes(KvChanges::Whole { entries, .. })) => {
                retain(entries, |e| key(&e.key))
            }
            Answer::Kv(KvAnswer::Changes(KvChanges::Unlisted(_))) => false,
            Answer::Txn(TxnOutcome::Done(entries)) => retain(entries, |e| key(&e.key)),
            // Secrets are shown to those who may write ACLs (Consul's rule); the tokens
            // themselves to those who may read them (checked before the read).
            Answer::Acl(crate::acl::AclAnswer::Tokens(tokens)) => {
                if self.may(Resource::Acl, "", Access::Write) {
                    return false;
                }
                for t in tokens.iter_mut() {
                    t.secret_id = HIDDEN_SECRET.to_owned();
                }
                false
            }
            Answer::Txn(TxnOutcome::Failed(_))
            | Answer::Snapshot(_)
            | Answer::Acl(_)
            | Answer::Autopilot(_)
            | Answer::QueryToRun(_) => false,
        }
    }
}

/// The answer `query` would have if nothing were visible: what a lookup the caller may
/// not make shows where refusing is not an option (DNS answers NXDOMAIN, as Consul's).
pub fn nothing_for(query: &Query) -> Answer {
    match query {
        Query::Nodes { .. } => Answer::Nodes(Vec::new()),
        Query::Services { .. } => Answer::Services(Default::default()),
        Query::ServiceNodes { .. } => Answer::ServiceNodes(Vec::new()),
        Query::NodeServices { .. } => Answer::NodeServices(None),
        Query::Node { .. } => Answer::Node(None),
        Query::ServiceHealth { .. } => Answer::ServiceHealth(Vec::new()),
        Query::NodeChecks { .. } | Query::ServiceChecks { .. } | Query::ChecksInState { .. } => {
            Answer::Checks(Vec::new())
        }
        Query::Address { .. } => Answer::Address(Vec::new(), Vec::new()),
        Query::Snapshot => Answer::Snapshot(crate::PackedSnapshot::new(crate::Snapshot::default())),
        Query::PreparedQueries { .. } => Answer::PreparedQueries(Vec::new()),
        Query::Sessions(_) => Answer::Sessions(Vec::new()),
        Query::Txn(_) => Answer::Txn(TxnOutcome::Done(Vec::new())),
        Query::Kv {
            read: KvRead::Keys { .. },
            ..
        } => Answer::Kv(KvAnswer::Keys(Vec::new())),
        // No entry or change shown, and no later index promised.
        Query::Kv {
            read: KvRead::Changes { since },
            ..
        } => Answer::Kv(KvAnswer::Changes(match since {
            None => KvChanges::Whole {
                entries: Vec::new(),
                kv_index: 0,
            },
            Some(since) => KvChanges::Listed {
                changes: Vec::new(),
                kv_index: *since,
            },
        })),
        Query::Kv { .. } => Answer::Kv(KvAnswer::Entries(Vec::new())),
        Query::Acl(_) => Answer::Acl(crate::acl::AclAnswer::Tokens(Vec::new())),
        Query::Autopilot => Answer::Autopilot(Default::default()),
        Query::NodeDump { .. } => Answer::NodeDump(Vec::new()),
        Query::QueryToRun { .. } => Answer::QueryToRun(None),
        Query::ServiceInstances { .. } => Answer::ServiceInstances(Vec::new()),
        Query::RunServiceQuery { .. } => Answer::ServiceHealth(Vec::new()),
    }
}

/// Whether a registration's node differs from the stored one in what a registration
/// sets (so that re-posting the same node needs no `node:write`, as in Consul).
fn changes_node(stored: &Node, new: &Node) -> bool {
    (!new.id.is_empty() && !new.id.eq_ignore_ascii_case(&stored.id))
        || new.address != stored.address
        || new.tagged_addresses != stored.tagged_addresses
        || new.meta != stored.meta
}

fn retain<T>(list: &mut Vec<T>, keep: impl Fn(&T) -> bool) -> bool {
    let before = list.len();
    list.retain(|x| keep(x));
    list.len() != before
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::acl::Rules;
    use crate::state::{Deregistration, Registration};
    use crate::types::Service;

    fn caller(rules: &str, default_allow: bool) -> Caller {
        Caller {
            accessor_id: "acc-1".into(),
            authorizer: Authorizer::new(Arc::new(Rules::parse(rules).unwrap()), default_allow),
            key_list: false,
        }
    }

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            address: "10.0.0.1".into(),
            ..Node::default()
        }
    }

    fn register(node_name: &str, service: Option<&str>, checks: Vec<Check>) -> Command {
        Command::Register(Registration {
            node: node(node_name),
            skip_node_update: false,
            service: service.map(|s| Service {
                id: s.into(),
                name: s.into(),
                ..Service::default()
            }),
            checks,
        })
    }

    fn check(node: &str, id: &str, service_id: &str) -> Check {
        Check {
            node: node.into(),
            check_id: id.into(),
            name: id.into(),
            service_id: service_id.into(),
            service_name: service_id.into(),
            ..Check::default()
        }
    }

    #[test]
    fn denials_read_as_consul_writes_them() {
        let c = caller("", false);
        let e = c.need(Resource::Service, "web", Access::Write).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Permission denied: token with AccessorID 'acc-1' lacks permission 'service:write' on \"web\""
        );
        let e = c.need(Resource::Operator, "", Access::Read).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Permission denied: token with AccessorID 'acc-1' lacks permission 'operator:read'"
        );
    }

    #[test]
    fn registering_needs_the_node_only_when_it_changes() {
        let mut state = State::new();
        state.apply(1, &register("n1", None, vec![])).unwrap();
        let services_only = caller(r#"service "web" { policy = "write" }"#, false);
        assert!(
            services_only
                .check_write(&state, &register("n1", Some("web"), vec![]))
                .is_ok()
        );
        assert!(
            services_only
                .check_write(&state, &register("n2", Some("web"), vec![]))
                .is_err(),
            "a new node"
        );
        assert!(
            services_only
                .check_write(&state, &register("n1", Some("db"), vec![]))
                .is_err()
        );
        let with_check = register("n1", Some("web"), vec![check("n1", "c1", "web")]);
        assert!(
            services_only.check_write(&state, &with_check).is_ok(),
            "a service check"
        );
        let node_check = register("n1", Some("web"), vec![check("n1", "c2", "")]);
        assert!(
            services_only.check_write(&state, &node_check).is_err(),
            "a node check"
        );
    }

    #[test]
    fn deregistering_needs_what_is_removed() {
        let mut state = State::new();
        state
            .apply(
                1,
                &register(
                    "n1",
                    Some("web"),
                    vec![check("n1", "c1", "web"), check("n1", "c2", "")],
                ),
            )
            .unwrap();
        let web = caller(r#"service "web" { policy = "write" }"#, false);
        let dereg = |service_id: Option<&str>, check_id: Option<&str>| {
            Command::Deregister(Deregistration {
                node: "n1".into(),
                service_id: service_id.map(Into::into),
                check_id: check_id.map(Into::into),
            })
        };
        assert!(web.check_write(&state, &dereg(Some("web"), None)).is_ok());
        assert!(web.check_write(&state, &dereg(None, Some("c1"))).is_ok());
        assert!(web.check_write(&state, &dereg(None, Some("c2"))).is_err());
        assert!(web.check_write(&state, &dereg(None, None)).is_err());
    }

    #[test]
    fn kv_writes_need_write_and_tree_deletes_the_whole_tree() {
        let state = State::new();
        let c = caller(
            "key_prefix \"app/\" { policy = \"write\" }\nkey \"app/frozen\" { policy = \"read\" }",
            false,
        );
        let set = |key: &str| {
            Command::Kv(KvWrite::Set {
                key: key.into(),
                value: vec![],
                flags: 0,
                cas: None,
            })
        };
        assert!(c.check_write(&state, &set("app/x")).is_ok());
        assert!(c.check_write(&state, &set("app/frozen")).is_err());
        assert!(c.check_write(&state, &set("other")).is_err());
        let tree = |prefix: &str| {
            Command::Kv(KvWrite::DeleteTree {
                prefix: prefix.into(),
            })
        };
        assert!(c.check_write(&state, &tree("app/web/")).is_ok());
        assert!(c.check_write(&state, &tree("app/")).is_err());
        assert!(
            c.check_write(&state, &Command::Kv(KvWrite::Reap { up_to: 1 }))
                .is_err()
        );
    }

    #[test]
    fn lists_are_filtered_and_single_reads_refused() {
        let c = caller(
            "node_prefix \"web-\" { policy = \"read\" }\nservice \"web\" { policy = \"read\" }\nkey_prefix \"pub/\" { policy = \"read\" }",
            false,
        );
        let mut nodes = Answer::Nodes(vec![node("web-1").into(), node("db-1").into()]);
        assert!(c.filter(&mut nodes));
        assert!(matches!(&nodes, Answer::Nodes(n) if n.len() == 1 && n[0].name == "web-1"));
        let mut keys = Answer::Kv(KvAnswer::Keys(vec!["pub/a".into(), "priv/b".into()]));
        assert!(c.filter(&mut keys));
        let mut untouched = Answer::Kv(KvAnswer::Keys(vec!["pub/a".into()]));
        assert!(!c.filter(&mut untouched), "nothing removed, nothing said");
        // Changes show neither the entries nor the deletions of keys the caller may not read.
        let mut changes = Answer::Kv(KvAnswer::Changes(KvChanges::Listed {
            changes: vec![
                crate::KvChange::Deleted {
                    key: "priv/a".into(),
                    index: 2,
                },
                crate::KvChange::Deleted {
                    key: "pub/b".into(),
                    index: 3,
                },
            ],
            kv_index: 3,
        }));
        assert!(c.filter(&mut changes));
        assert!(
            matches!(&changes, Answer::Kv(KvAnswer::Changes(KvChanges::Listed { changes, .. }))
            if changes.len() == 1 && changes[0].key() == "pub/b")
        );
        let health = |s: &str| Query::ServiceHealth {
            service: s.into(),
            tags: vec![],
            passing_only: false,
            node_meta: vec![],
        };
        assert!(c.check_read(&health("web")).is_ok());
        assert!(c.check_read(&health("db")).is_err());
        let key = |k: &str| Query::Kv {
            key: k.into(),
            read: KvRead::Entry,
        };
        assert!(c.check_read(&key("pub/a")).is_ok());
        assert!(c.check_read(&key("priv/a")).is_err());
        assert!(c.check_read(&Query::Snapshot).is_err());
        let mut tokens = Answer::Acl(crate::acl::AclAnswer::Tokens(vec![crate::acl::Token {
            accessor_id: "a".into(),
            secret_id: "s".into(),
            description: String::new(),
            policies: vec![],
            roles: vec![],
            service_identities: vec![],
            node_identities: vec![],
            local: false,
            create_time: 0,
            expiration_time: None,
            create_index: 0,
            modify_index: 0,
        }]));
        c.filter(&mut tokens);
        assert!(
            matches!(&tokens, Answer::Acl(crate::acl::AclAnswer::Tokens(t)) if t[0].secret_id == HIDDEN_SECRET),
            "a reader without acl:write sees no secret"
        );
        let mut listing = c.clone();
        listing.key_list = true;
        let tree = Query::Kv {
            key: "pub/".into(),
            read: KvRead::Tree,
        };
        assert!(c.check_read(&tree).is_ok());
        assert!(
            listing.check_read(&tree).is_err(),
            "list is enforced when asked for"
        );
    }

    #[test]
    fn a_node_dump_keeps_only_readable_nodes_services_and_checks() {
        let c = caller(
            "node_prefix \"web-\" { policy = \"read\" }\nservice \"web\" { policy = \"read\" }",
            false,
        );
        let info = |name: &str, services: &[&str]| crate::types::NodeInfo {
            node: node(name).into(),
            services: services
                .iter()
                .map(|s| {
                    Service {
                        id: (*s).into(),
                        name: (*s).into(),
                        ..Service::default()
                    }
                    .into()
                })
                .collect(),
            checks: std::iter::once(check(name, "serfHealth", ""))
                .chain(
                    services
                        .iter()
                        .map(|s| check(name, &format!("{s}-check"), s)),
                )
                .map(Into::into)
                .collect(),
        };
        let mut dump = Answer::NodeDump(vec![info("web-1", &["web", "db"]), info("db-1", &["db"])]);
        assert!(c.filter(&mut dump));
        let Answer::NodeDump(list) = dump else {
            panic!()
        };
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].node.name, "web-1");
        let services: Vec<&str> = list[0].services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(services, ["web"]);
        let checks: Vec<&str> = list[0].checks.iter().map(|c| c.check_id.as_str()).collect();
        assert_eq!(checks, ["serfHealth", "web-check"]);
    }

    #[test]
    fn a_node_alone_is_hidden_without_node_read() {
        let c = caller("node_prefix \"web-\" { policy = \"read\" }", false);
        let mut readable = Answer::Node(Some(node("web-1").into()));
        assert!(!c.filter(&mut readable));
        assert_eq!(readable, Answer::Node(Some(node("web-1").into())));
        let mut hidden = Answer::Node(Some(node("db-1").into()));
        assert!(c.filter(&mut hidden));
        assert_eq!(hidden, Answer::Node(None));
        let mut unknown = Answer::Node(None);
        assert!(!c.filter(&mut unknown));
        assert_eq!(
            nothing_for(&Query::Node { node: "x".into() }),
            Answer::Node(None)
        );
    }

    #[test]
    fn management_may_do_everything() {
        let c = Caller {
            accessor_id: "root".into(),
            authorizer: Authorizer::management(),
            key_list: true,
        };
        let state = State::new();
        assert!(c.check_read(&Query::Snapshot).is_ok());
        assert!(
            c.check_write(&state, &Command::Kv(KvWrite::Reap { up_to: 1 }))
                .is_ok()
        );
        let mut nodes = Answer::Nodes(vec![node("a").into()]);
        assert!(!c.filter(&mut nodes));
    }

    #[test]
    fn transaction_reads_are_filtered_and_checks_refused() {
        let c = caller(r#"key_prefix "pub/" { policy = "read" }"#, false);
        let op = |verb: TxnVerb, key: &str| TxnOp {
            verb,
            key: key.into(),
            value: vec![],
            flags: 0,
            index: 0,
            session: None,
        };
        assert!(c.check_txn_op(&op(TxnVerb::Get, "secret/a")).is_ok());
        assert!(c.check_txn_op(&op(TxnVerb::GetTree, "secret/")).is_ok());
        assert!(
            c.check_txn_op(&op(TxnVerb::CheckIndex, "secret/a"))
                .is_err()
        );
        assert!(c.check_txn_op(&op(TxnVerb::Set, "pub/a")).is_err());
        let entry = |key: &str| crate::kv::KvEntry {
            key: key.into(),
            value: b"v".to_vec(),
            flags: 0,
            session: None,
            lock_index: 0,
            create_index: 1,
            modify_index: 1,
        };
        let mut outcome = TxnOutcome::Done(vec![entry("pub/a"), entry("secret/a")]);
        assert!(c.filter_txn(&mut outcome));
        assert_eq!(outcome, TxnOutcome::Done(vec![entry("pub/a")]));
        let mut failed = TxnOutcome::Failed(vec![]);
        assert!(!c.filter_txn(&mut failed));
    }
}
