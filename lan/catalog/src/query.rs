//! Read queries over the catalog, each answering with the index a blocking query waits on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::acl::{AclAnswer, AclRead};
use super::kv::{KvAnswer, KvRead};
use super::sessions::{Session, SessionRead};
use super::state::{State, fold, on_node};
use super::txn::{TxnOp, TxnOutcome};
use super::types::{
    Check, Health, Node, NodeInfo, NodeServices, PreparedQuery, Service, ServiceHealth,
    ServiceNode, StoredQuery,
};
use super::wake::Topic;

/// A read of the catalog. Queries are plain data so they can travel to another server
/// or datacenter and be answered there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Query {
    /// All nodes (`/v1/catalog/nodes`).
    Nodes {
        /// Keep only nodes whose meta has every pair.
        node_meta: Vec<(String, String)>,
    },
    /// Service names with the union of their tags (`/v1/catalog/services`).
    Services {
        /// Keep only services on nodes whose meta has every pair.
        node_meta: Vec<(String, String)>,
    },
    /// Instances of a service with their nodes (`/v1/catalog/service/:name`).
    ServiceNodes {
        /// Service name (case-insensitive).
        service: String,
        /// Keep only instances carrying every tag (case-insensitive).
        tags: Vec<String>,
        /// Keep only instances on nodes whose meta has every pair.
        node_meta: Vec<(String, String)>,
    },
    /// One node and its instances (`/v1/catalog/node/:node`).
    NodeServices {
        /// Node name (case-insensitive).
        node: String,
    },
    /// One node alone, without its instances (DNS node lookups, which answer with the
    /// node's address and meta: copying its instances would be wasted).
    Node {
        /// Node name (case-insensitive).
        node: String,
    },
    /// Instances of a service with their nodes and checks (`/v1/health/service/:name`).
    ServiceHealth {
        /// Service name (case-insensitive).
        service: String,
        /// Keep only instances carrying every tag (case-insensitive).
        tags: Vec<String>,
        /// Keep only instances whose every check passes.
        passing_only: bool,
        /// Keep only instances on nodes whose meta has every pair.
        node_meta: Vec<(String, String)>,
    },
    /// Checks of one node (`/v1/health/node/:node`).
    NodeChecks {
        /// Node name (case-insensitive).
        node: String,
    },
    /// Checks of every instance of a service (`/v1/health/checks/:service`).
    ServiceChecks {
        /// Service name (case-insensitive).
        service: String,
    },
    /// Checks in a state; `None` means any (`/v1/health/state/:state`).
    ChecksInState {
        /// The state to match.
        state: Option<Health>,
    },
    /// Nodes and instances with this exact address (reverse DNS).
    Address {
        /// The address as text, as stored.
        address: String,
    },
    /// The whole catalog, for `/v1/snapshot`.
    Snapshot,
    /// Prepared queries: all of them, or the one with this ID or name (`/v1/query`).
    PreparedQueries {
        /// An ID or a name.
        key: Option<String>,
    },
    /// Sessions (`/v1/session/{info,node,list}`).
    Sessions(SessionRead),
    /// A transaction that only reads (`/v1/txn`).
    Txn(Vec<TxnOp>),
    /// ACL tokens, policies and roles (`/v1/acl/*`).
    Acl(AclRead),
    /// Keys and values (`/v1/kv/:key`).
    Kv {
        /// The key, or the prefix of a tree or key list.
        key: String,
        /// What to read.
        read: KvRead,
    },
    /// Autopilot's settings (the defaults until first written).
    Autopilot,
    /// Nodes with their instances and checks: every node, or the one named
    /// (`/v1/internal/ui/nodes`, `/v1/internal/ui/node/:node`, `/v1/internal/ui/services`).
    NodeDump {
        /// One node's name (case-insensitive); `None` for all of them.
        node: Option<String>,
    },
    /// The prepared query with this ID or name, for the agent that executes it, without
    /// its token: that stays on the servers, which read as it (see
    /// [`Query::RunServiceQuery`]). Executing needs no right on the query itself
    /// (Consul's rule), so this read is neither checked nor filtered; no HTTP answer
    /// shows it.
    QueryToRun {
        /// An ID or a name.
        key: String,
    },
    /// Every service instance with its node (`/v1/catalog/services?filter=`, whose
    /// expression selects instances before their names and tags are gathered).
    ServiceInstances {
        /// Keep only instances on nodes whose meta has every pair.
        node_meta: Vec<(String, String)>,
    },
    /// The healthy instances a prepared query's service selection picks, as the reading
    /// token may see them: the instances of services or on nodes it may not read are
    /// left out (never a refusal), with Consul's `service:read` and `node:read`.
    RunServiceQuery {
        /// The selection, as the executing agent has it.
        selection: Box<super::types::ServiceQuery>,
        /// The prepared query executed. A server of its datacenter runs the stored
        /// selection instead, as the stored token when it has one (see
        /// [`State::run_stored`](crate::State::run_stored)); any other server reads
        /// `selection` as the caller.
        stored: Option<StoredQuery>,
    },
}

/// The answer to a [`Query`], variant for variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// For [`Query::Nodes`].
    Nodes(Vec<Arc<Node>>),
    /// For [`Query::Services`]: name → sorted distinct tags.
    Services(BTreeMap<String, Vec<String>>),
    /// For [`Query::ServiceNodes`].
    ServiceNodes(Vec<ServiceNode>),
    /// For [`Query::NodeServices`]; `None` when the node is unknown.
    NodeServices(Option<NodeServices>),
    /// For [`Query::Node`]; `None` when the node is unknown.
    Node(Option<Arc<Node>>),
    /// For [`Query::ServiceHealth`].
    ServiceHealth(Vec<ServiceHealth>),
    /// For the three check queries.
    Checks(Vec<Arc<Check>>),
    /// For [`Query::Address`]: nodes with the address, then instances with it.
    Address(Vec<Arc<Node>>, Vec<Arc<Service>>),
    /// For [`Query::Snapshot`]; packed when large, as a restore's (an answer forwarded
    /// from the leader travels in one server-port frame).
    Snapshot(super::packed::PackedSnapshot),
    /// For [`Query::PreparedQueries`].
    PreparedQueries(Vec<super::types::PreparedQuery>),
    /// For [`Query::Kv`].
    Kv(KvAnswer),
    /// For [`Query::Sessions`].
    Sessions(Vec<Session>),
    /// For [`Query::Txn`].
    Txn(TxnOutcome),
    /// For [`Query::Acl`].
    Acl(AclAnswer),
    /// For [`Query::Autopilot`].
    Autopilot(super::autopilot::AutopilotConfig),
    /// For [`Query::NodeDump`]: empty when the named node is unknown.
    NodeDump(Vec<NodeInfo>),
    /// For [`Query::ServiceInstances`].
    ServiceInstances(Vec<ServiceNode>),
    /// For [`Query::QueryToRun`]: `None` when there is no such query; its `token` is
    /// always empty. (A [`Query::RunServiceQuery`] answers [`Answer::ServiceHealth`].)
    QueryToRun(Option<Box<super::types::PreparedQuery>>),
}

/// What a blocking read of a query waits on before it reads again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WaitsOn {
    /// One key, one prefix or one service: only changes to it wake the reader.
    Topic(Topic),
    /// Nodes, services, checks or prepared queries: not the KV store or sessions.
    Catalog,
    /// Any change at all.
    Everything,
}

impl Query {
    /// What a blocking read of this query waits on. Every change that can move the index
    /// the query answers with wakes it; other changes do not.
    pub(crate) fn waits_on(&self) -> WaitsOn {
        match self {
            Query::Kv {
                key,
                read: KvRead::Entry,
            } => WaitsOn::Topic(Topic::Key(key.clone())),
            Query::Kv { key, .. } => WaitsOn::Topic(Topic::Prefix(key.clone())),
            Query::ServiceNodes { service, .. }
            | Query::ServiceHealth { service, .. }
            | Query::ServiceChecks { service } => WaitsOn::Topic(Topic::Service(fold(service))),
            Query::RunServiceQuery { selection, .. } => {
                WaitsOn::Topic(Topic::Service(fold(&selection.service)))
            }
            Query::Nodes { .. }
            | Query::Services { .. }
            | Query::NodeServices { .. }
            | Query::Node { .. }
            | Query::NodeChecks { .. }
            | Query::ChecksInState { .. }
            | Query::Address { .. }
            | Query::PreparedQueries { .. }
            | Query::QueryToRun { .. }
            | Query::ServiceInstances { .. }
            | Query::NodeDump { .. } => WaitsOn::Catalog,
            Query::Snapshot
            | Query::Sessions(_)
            | Query::Txn(_)
            | Query::Acl(_)
            | Query::Autopilot => WaitsOn::Everything,
        }
    }
}

fn meta_matches(node: &Node, filter: &[(String, String)]) -> bool {
    filter
        .iter()
        .all(|(k, v)| node.meta.get(k).is_some_and(|have| have == v))
}

fn tags_match(service: &Service, tags: &[String]) -> bool {
    tags.iter()
        .all(|want| service.tags.iter().any(|t| t.eq_ignore_ascii_case(want)))
}

impl State {
    /// Answers a query, with the index of the tables it read (never below 1, as Consul's).
    pub fn query(&self, query: &Query) -> (Answer, u64) {
        let ix = self.indexes;
        let (answer, index) = match query {
            Query::Nodes { node_meta } => (
                Answer::Nodes(
                    self.nodes_with(node_meta)
                        .map(|(_, n)| Arc::clone(n))
                        .collect(),
                ),
                ix.nodes,
            ),
            Query::Services { node_meta } => {
                let out = if node_meta.is_empty() {
                    self.names.list()
                } else {
                    self.services_on_nodes_with(node_meta)
                };
                (Answer::Services(out), ix.services)
            }
            Query::ServiceNodes {
                service,
                tags,
                node_meta,
            } => {
                let list = self
                    .instances(service, tags, node_meta)
                    .map(|(_, node, service)| ServiceNode {
                        node: Arc::clone(node),
                        service: Arc::clone(service),
                    })
                    .collect();
                (Answer::ServiceNodes(list), self.service_index(service))
            }
            Query::NodeServices { node } => {
                let key = fold(node);
                let found = self.nodes.get(&key).map(|n| NodeServices {
                    node: Arc::clone(n),
                    services: on_node(&self.services, &key)
                        .map(|(_, s)| Arc::clone(s))
                        .collect(),
                });
                (Answer::NodeServices(found), ix.nodes.max(ix.services))
            }
            Query::Node { node } => (Answer::Node(self.nodes.get(&fold(node)).cloned()), ix.nodes),
            Query::ServiceHealth {
                service,
                tags,
                passing_only,
                node_meta,
            } => {
                let list = self
                    .instances(service, tags, node_meta)
                    .map(|(node_key, node, service)| ServiceHealth {
                        node: Arc::clone(node),
                        service: Arc::clone(service),
                        checks: self.checks_covering(node_key, &service.id),
                    })
                    .filter(|e| !passing_only || e.aggregate() == Health::Passing)
                    .collect();
                (Answer::ServiceHealth(list), self.service_index(service))
            }
            Query::NodeChecks { node } => {
                let key = fold(node);
                let list = on_node(&self.checks, &key)
                    .map(|(_, c)| Arc::clone(c))
                    .collect();
                (Answer::Checks(list), ix.checks)
            }
            Query::ServiceChecks { service } => {
                let name = fold(service);
                let mut list = Vec::new();
                if let Some(keys) = self.by_name.get(&name) {
                    for (node_key, id_key) in keys {
                        list.extend(
                            on_node(&self.checks, node_key)
                                .filter(|(_, c)| c.service_id.eq_ignore_ascii_case(id_key))
                                .map(|(_, c)| Arc::clone(c)),
                        );
                    }
                }
                (Answer::Checks(list), self.service_index(service))
            }
            Query::ChecksInState { state } => {
                let list = match state.and_then(|s| self.checks_failing(s)) {
                    Some(failing) => failing.cloned().collect(),
                    None => self
                        .checks
                        .values()
                        .filter(|c| state.is_none_or(|s| c.status == s))
                        .cloned()
                        .collect(),
                };
                (Answer::Checks(list), ix.checks)
            }
            Query::Address { address } => {
                let (nodes, services) = self.at_address(address);
                (Answer::Address(nodes, services), ix.nodes.max(ix.services))
            }
            Query::Snapshot => (
                Answer::Snapshot(super::packed::PackedSnapshot::new(self.to_snapshot())),
                ix.max(),
            ),
            Query::PreparedQueries { key: None } => (
                Answer::PreparedQueries(self.queries.values().cloned().collect()),
                ix.queries,
            ),
            Query::PreparedQueries { key: Some(key) } => (
                Answer::PreparedQueries(self.find_query(key).cloned().into_iter().collect()),
                ix.queries,
            ),
            Query::ServiceInstances { node_meta } => {
                let list = self
                    .nodes_with(node_meta)
                    .flat_map(|(key, node)| {
                        on_node(&self.services, key).map(move |(_, service)| ServiceNode {
                            node: Arc::clone(node),
                            service: Arc::clone(service),
                        })
                    })
                    .collect();
                (Answer::ServiceInstances(list), ix.services)
            }
            Query::QueryToRun { key } => {
                let without_token = |q: &PreparedQuery| PreparedQuery {
                    token: String::new(),
                    ..q.clone()
                };
                let found = self.find_query(key).map(without_token).map(Box::new);
                (Answer::QueryToRun(found), ix.queries)
            }
            Query::RunServiceQuery { selection, .. } => match self.query(&selection.read()) {
                (Answer::ServiceHealth(list), index) => {
                    (Answer::ServiceHealth(selection.select(list)), index)
                }
                (_, index) => (Answer::ServiceHealth(Vec::new()), index),
            },
            Query::Kv { key, read } => {
                let (answer, index) = self.query_kv(key, read);
                (Answer::Kv(answer), index)
            }
            Query::Sessions(read) => {
                let (list, index) = self.query_sessions(read);
                (Answer::Sessions(list), index)
            }
            Query::Txn(ops) => (Answer::Txn(self.read_txn(ops)), self.indexes.kv),
            Query::Acl(read) => {
                let (answer, index) = self.acl.query(read);
                (Answer::Acl(answer), index)
            }
            Query::Autopilot => {
                let config = self.autopilot.clone().unwrap_or_default();
                let index = config.modify_index;
                (Answer::Autopilot(config), index)
            }
            Query::NodeDump { node } => {
                let info = |(key, n): (&String, &Arc<Node>)| NodeInfo {
                    node: Arc::clone(n),
                    services: on_node(&self.services, key)
                        .map(|(_, s)| Arc::clone(s))
                        .collect(),
                    checks: on_node(&self.checks, key)
                        .map(|(_, c)| Arc::clone(c))
                        .collect(),
                };
                let list = match node {
                    Some(name) => self
                        .nodes
                        .get_key_value(&fold(name))
                        .map(info)
                        .into_iter()
                        .collect(),
                    None => self.nodes.iter().map(info).collect(),
                };
                (
                    Answer::NodeDump(list),
                    ix.nodes.max(ix.services).max(ix.checks),
                )
            }
        };
        (answer, index.max(1))
    }

    /// Names (as the checks spell them) of the nodes that have a check with exactly this
    /// ID, without copying any check: one lookup per node, however many instances the
    /// nodes hold.
    pub fn nodes_with_check(&self, check_id: &str) -> Vec<String> {
        let id = fold(check_id);
        self.nodes
            .keys()
            .filter_map(|key| self.checks.get(&(key.clone(), id.clone())))
            .filter(|c| c.check_id == check_id)
            .map(|c| c.node.clone())
            .collect()
    }

    /// Service names with the union of their tags, over the instances on nodes whose meta
    /// has every pair of `node_meta`.
    pub(super) fn services_on_nodes_with(
        &self,
        node_meta: &[(String, String)],
    ) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (key, _) in self.nodes_with(node_meta) {
            for (_, s) in on_node(&self.services, key) {
                out.entry(s.name.clone())
                    .or_default()
                    .extend(s.tags.iter().cloned());
            }
        }
        out.into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect()
    }

    /// The nodes (with their keys) whose meta has every pair of `node_meta`, in key
    /// order: with a filter, those the meta index holds for its first pair, checked for
    /// the others; without, every node.
    pub(super) fn nodes_with<'a>(
        &'a self,
        node_meta: &'a [(String, String)],
    ) -> Box<dyn Iterator<Item = (&'a String, &'a Arc<Node>)> + 'a> {
        let Some(((key, value), rest)) = node_meta.split_first() else {
            return Box::new(self.nodes.iter());
        };
        let from = (key.clone(), value.clone(), String::new());
        Box::new(
            self.node_meta
                .range(from..)
                .take_while(move |(k, v, _)| k == key && v == value)
                .filter_map(move |(_, _, node_key)| self.nodes.get_key_value(node_key))
                .filter(move |(_, n)| meta_matches(n, rest)),
        )
    }

    /// Instances of a service (by name, case-insensitive) with their nodes, filtered.
    fn instances<'a>(
        &'a self,
        service: &str,
        tags: &'a [String],
        node_meta: &'a [(String, String)],
    ) -> impl Iterator<Item = (&'a str, &'a Arc<Node>, &'a Arc<Service>)> + 'a {
        self.by_name
            .get(&fold(service))
            .into_iter()
            .flatten()
            .filter_map(move |key| {
                let svc = self.services.get(key)?;
                let node = self.nodes.get(&key.0)?;
                (tags_match(svc, tags) && meta_matches(node, node_meta)).then_some((
                    key.0.as_str(),
                    node,
                    svc,
                ))
            })
    }

    /// Node-level checks of the node whose key is `node_key`, followed by the checks of
    /// its service instance `service_id`: one walk of the node's checks.
    fn checks_covering(&self, node_key: &str, service_id: &str) -> Vec<Arc<Check>> {
        let mut out = Vec::new();
        let mut node_level = 0;
        for (_, c) in on_node(&self.checks, node_key) {
            if c.service_id.is_empty() {
                out.insert(node_level, c.clone());
                node_level += 1;
            } else if c.service_id.eq_ignore_ascii_case(service_id) {
                // Compared in place: folding each check's service ID would allocate once
                // per check of the node for every instance answered.
                out.push(c.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Registration};

    fn setup() -> State {
        let mut s = State::new();
        let mut index = 1;
        let mut add = |node: &str, id: &str, tags: &[&str], statuses: &[Health]| {
            let checks = statuses
                .iter()
                .enumerate()
                .map(|(i, st)| Check {
                    check_id: format!("{id}-c{i}"),
                    service_id: id.into(),
                    status: *st,
                    ..Check::default()
                })
                .collect();
            s.apply(
                index,
                &Command::Register(Registration {
                    node: Node {
                        name: node.into(),
                        address: format!("10.0.0.{index}"),
                        meta: [("rack".to_string(), node.to_string())].into(),
                        ..Node::default()
                    },
                    skip_node_update: false,
                    service: Some(Service {
                        id: id.into(),
                        name: "web".into(),
                        tags: tags.iter().map(|t| t.to_string()).collect(),
                        port: 80,
                        ..Service::default()
                    }),
                    checks,
                }),
            )
            .unwrap();
            index += 1;
        };
        add("n1", "web1", &["Primary", "v1"], &[Health::Passing]);
        add("n2", "web2", &["v1"], &[Health::Warning]);
        add("n3", "web3", &[], &[Health::Passing, Health::Critical]);
        s
    }

    fn health(s: &State, tags: &[&str], passing_only: bool) -> Vec<String> {
        let q = Query::ServiceHealth {
            service: "WEB".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            passing_only,
            node_meta: vec![],
        };
        match s.query(&q).0 {
            Answer::ServiceHealth(list) => list.into_iter().map(|e| e.service.id.clone()).collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn service_health_filters_by_tag_and_passing() {
        let s = setup();
        assert_eq!(health(&s, &[], false), ["web1", "web2", "web3"]);
        assert_eq!(health(&s, &[], true), ["web1"]);
        assert_eq!(health(&s, &["v1"], false), ["web1", "web2"]);
        assert_eq!(health(&s, &["primary", "v1"], false), ["web1"]);
        assert!(health(&s, &["nope"], false).is_empty());
    }

    #[test]
    fn a_health_entry_lists_node_checks_then_its_own() {
        let mut s = State::new();
        let check = |id: &str, service_id: &str| Check {
            check_id: id.into(),
            service_id: service_id.into(),
            ..Check::default()
        };
        for (index, id) in [(1, "api"), (2, "web")] {
            let checks = if id == "web" {
                // In key order the instances' checks come before and between the node's.
                vec![
                    check("a-web", "WEB"),
                    check("b-node", ""),
                    check("c-api", "api"),
                    check("d-web", "web"),
                    check("serfHealth", ""),
                ]
            } else {
                vec![]
            };
            s.apply(
                index,
                &Command::Register(Registration {
                    node: Node {
                        name: "N1".into(),
                        address: "10.0.0.1".into(),
                        ..Node::default()
                    },
                    skip_node_update: false,
                    service: Some(Service {
                        id: id.into(),
                        name: id.into(),
                        ..Service::default()
                    }),
                    checks,
                }),
            )
            .unwrap();
        }
        let q = Query::ServiceHealth {
            service: "web".into(),
            tags: vec![],
            passing_only: false,
            node_meta: vec![],
        };
        let Answer::ServiceHealth(list) = s.query(&q).0 else {
            panic!()
        };
        let ids: Vec<&str> = list[0].checks.iter().map(|c| c.check_id.as_str()).collect();
        assert_eq!(ids, ["b-node", "serfHealth", "a-web", "d-web"]);
    }

    #[test]
    fn services_lists_distinct_tags() {
        let s = setup();
        let (Answer::Services(map), index) = s.query(&Query::Services { node_meta: vec![] }) else {
            panic!()
        };
        assert_eq!(map["web"], ["Primary", "v1"]);
        assert_eq!(index, 3);
    }

    #[test]
    fn node_meta_filter_applies() {
        let s = setup();
        let (Answer::Nodes(nodes), _) = s.query(&Query::Nodes {
            node_meta: vec![("rack".into(), "n2".into())],
        }) else {
            panic!()
        };
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].name, "n2");
    }

    #[test]
    fn a_service_query_index_moves_only_with_that_service() {
        let mut s = setup();
        let q = |name: &str| Query::ServiceHealth {
            service: name.into(),
            tags: vec![],
            passing_only: false,
            node_meta: vec![],
        };
        let (_, web_before) = s.query(&q("web"));
        let other = Registration {
            node: Node {
                name: "other".into(),
                address: "10.9.9.9".into(),
                ..Node::default()
            },
            skip_node_update: false,
            service: Some(Service {
                id: "db1".into(),
                name: "db".into(),
                ..Service::default()
            }),
            checks: vec![],
        };
        s.apply(10, &Command::Register(other)).unwrap();
        assert_eq!(
            s.query(&q("web")).1,
            web_before,
            "a change to db leaves web alone"
        );
        assert_eq!(s.query(&q("db")).1, 10);
        // A node-level check on a web node moves web's index.
        let node_check = Registration {
            node: Node {
                name: "n2".into(),
                address: "10.0.0.2".into(),
                meta: [("rack".to_string(), "n2".to_string())].into(),
                ..Node::default()
            },
            skip_node_update: true,
            service: None,
            checks: vec![Check {
                check_id: "mem".into(),
                ..Check::default()
            }],
        };
        s.apply(11, &Command::Register(node_check)).unwrap();
        assert_eq!(s.query(&q("web")).1, 11);
        // Removing the last db instance still moves db's index forward.
        s.apply(
            12,
            &Command::Deregister(crate::Deregistration {
                node: "other".into(),
                service_id: Some("db1".into()),
                check_id: None,
            }),
        )
        .unwrap();
        assert_eq!(s.query(&q("db")).1, 12);
    }

    #[test]
    fn nodes_with_a_check_are_those_holding_that_exact_id() {
        let s = setup();
        assert_eq!(s.nodes_with_check("web3-c1"), ["n3"]);
        assert_eq!(s.nodes_with_check("web1-c0"), ["n1"]);
        assert!(
            s.nodes_with_check("WEB1-C0").is_empty(),
            "the ID as written"
        );
        assert!(s.nodes_with_check("nope").is_empty());
    }

    #[test]
    fn empty_catalog_answers_with_index_one() {
        let s = State::new();
        let (answer, index) = s.query(&Query::Nodes { node_meta: vec![] });
        assert_eq!(answer, Answer::Nodes(vec![]));
        assert_eq!(index, 1);
    }

    #[test]
    fn unknown_node_is_none() {
        let s = setup();
        let (answer, _) = s.query(&Query::NodeServices { node: "zz".into() });
        assert_eq!(answer, Answer::NodeServices(None));
        let (Answer::NodeServices(Some(ns)), _) =
            s.query(&Query::NodeServices { node: "N1".into() })
        else {
            panic!()
        };
        assert_eq!(ns.services.len(), 1);
        let (answer, _) = s.query(&Query::Node { node: "zz".into() });
        assert_eq!(answer, Answer::Node(None));
        let (Answer::Node(Some(node)), _) = s.query(&Query::Node { node: "N1".into() }) else {
            panic!()
        };
        assert_eq!(
            node, ns.node,
            "the node alone, as the node with its instances has it"
        );
    }

    #[test]
    fn a_node_dump_has_every_node_with_its_instances_and_checks() {
        let s = setup();
        let (Answer::NodeDump(all), index) = s.query(&Query::NodeDump { node: None }) else {
            panic!()
        };
        assert_eq!(index, 3);
        let names: Vec<&str> = all.iter().map(|i| i.node.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3"]);
        assert_eq!(all[2].services[0].id, "web3");
        assert_eq!(all[2].checks.len(), 2);
        let (Answer::NodeDump(one), _) = s.query(&Query::NodeDump {
            node: Some("N2".into()),
        }) else {
            panic!()
        };
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].checks[0].status, Health::Warning);
        let (answer, _) = s.query(&Query::NodeDump {
            node: Some("zz".into()),
        });
        assert_eq!(answer, Answer::NodeDump(Vec::new()));
    }
}
