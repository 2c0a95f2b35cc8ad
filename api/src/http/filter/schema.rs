//! The selectors each endpoint accepts, with their types: the fields of the Consul
//! structure the endpoint filters, as Consul's filtering documentation lists them (its
//! Go field names, which are also the JSON keys proconsul renders). Raft indexes are not
//! selectable, as in Consul. Fields of Consul's structures that proconsul does not keep
//! (`Proxy`, `Connect`, `Partition`, `PeerName`, …) are not listed, so they are unknown
//! selectors here.

/// The type of a selectable field, which decides the operators it takes (go-bexpr's
/// rules): strings take `==`, `!=`, `in`/`contains`, `matches`; numbers and booleans
/// `==`, `!=`; lists of strings and maps `in`/`contains` and `is empty`; lists of
/// structures `is empty`; structures nothing but their fields.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Str,
    Int,
    Bool,
    StrList,
    /// A map with string keys; any key selects a value of this kind.
    Map(&'static Kind),
    Struct(&'static [Field]),
    /// A list of structures: a selector through it matches when any element does.
    List(&'static [Field]),
}

/// A named field of a structure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
}

const fn f(name: &'static str, kind: Kind) -> Field {
    Field { name, kind }
}

use Kind::{Bool, Int, List, Map, Str, StrList, Struct};

/// The fields a filter selects from, starting at the filtered item.
pub(crate) type Schema = &'static [Field];

const STR_MAP: Kind = Map(&Str);

/// `ServiceAddress`: the values of a service's `TaggedAddresses`.
const SERVICE_ADDRESS: &[Field] = &[f("Address", Str), f("Port", Int)];

const WEIGHTS: &[Field] = &[f("Passing", Int), f("Warning", Int)];

/// `structs.Node`: `/v1/catalog/nodes`, and `Node` of `/v1/health/service/:name`.
pub(crate) const NODE: Schema = &[
    f("ID", Str),
    f("Node", Str),
    f("Address", Str),
    f("Datacenter", Str),
    f("TaggedAddresses", STR_MAP),
    f("Meta", STR_MAP),
];

/// `structs.ServiceNode`: `/v1/catalog/service/:name`.
pub(crate) const SERVICE_NODE: Schema = &[
    f("ID", Str),
    f("Node", Str),
    f("Address", Str),
    f("Datacenter", Str),
    f("TaggedAddresses", STR_MAP),
    f("NodeMeta", STR_MAP),
    f("ServiceKind", Str),
    f("ServiceID", Str),
    f("ServiceName", Str),
    f("ServiceTags", StrList),
    f("ServiceAddress", Str),
    f("ServiceTaggedAddresses", Map(&Struct(SERVICE_ADDRESS))),
    f("ServiceWeights", Struct(WEIGHTS)),
    f("ServiceMeta", STR_MAP),
    f("ServicePort", Int),
    f("ServiceSocketPath", Str),
    f("ServiceEnableTagOverride", Bool),
];

/// `structs.NodeService`: `Service` of `/v1/health/service/:name`, the services of
/// `/v1/catalog/node/:node` and `/v1/catalog/node-services/:node`.
pub(crate) const NODE_SERVICE: Schema = &[
    f("Kind", Str),
    f("ID", Str),
    f("Service", Str),
    f("Tags", StrList),
    f("Address", Str),
    f("TaggedAddresses", Map(&Struct(SERVICE_ADDRESS))),
    f("Meta", STR_MAP),
    f("Port", Int),
    f("SocketPath", Str),
    f("Weights", Struct(WEIGHTS)),
    f("EnableTagOverride", Bool),
];

/// `api.AgentService`: `/v1/agent/services`.
pub(crate) const AGENT_SERVICE: Schema = &[
    f("Kind", Str),
    f("ID", Str),
    f("Service", Str),
    f("Tags", StrList),
    f("Address", Str),
    f("TaggedAddresses", Map(&Struct(SERVICE_ADDRESS))),
    f("Meta", STR_MAP),
    f("Port", Int),
    f("SocketPath", Str),
    f("Weights", Struct(WEIGHTS)),
    f("EnableTagOverride", Bool),
    f("Datacenter", Str),
];

/// `serf.Member`: `/v1/agent/members`. `Addr` (a Go `net.IP`, a byte list to the
/// filter) is left out; `Status` is the number the answer shows (1 alive, 2 leaving,
/// 3 left, 4 failed).
pub(crate) const MEMBER: Schema = &[
    f("Name", Str),
    f("Port", Int),
    f("Tags", STR_MAP),
    f("Status", Int),
    f("ProtocolMin", Int),
    f("ProtocolMax", Int),
    f("ProtocolCur", Int),
    f("DelegateMin", Int),
    f("DelegateMax", Int),
    f("DelegateCur", Int),
];

/// `structs.HealthCheck`: `/v1/agent/checks`, `/v1/health/node/:node`,
/// `/v1/health/checks/:service`, `/v1/health/state/:state`, and `Checks` of
/// `/v1/health/service/:name`.
pub(crate) const HEALTH_CHECK: Schema = &[
    f("Node", Str),
    f("CheckID", Str),
    f("Name", Str),
    f("Status", Str),
    f("Notes", Str),
    f("Output", Str),
    f("ServiceID", Str),
    f("ServiceName", Str),
    f("ServiceTags", StrList),
    f("Type", Str),
    f("Interval", Str),
    f("Timeout", Str),
    f("ExposedPort", Int),
];

/// `structs.CheckServiceNode`: `/v1/health/service/:name`.
pub(crate) const CHECK_SERVICE_NODE: Schema = &[
    f("Node", Struct(NODE)),
    f("Service", Struct(NODE_SERVICE)),
    f("Checks", List(HEALTH_CHECK)),
];
