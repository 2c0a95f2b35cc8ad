//! Access control: tokens, policies and roles as Consul 1.4+ keeps them, the rules
//! language, and the decision a request's token gets.
//!
//! ```text
//!   secret ──AclTables::resolve──▶ Resolved { accessor, rules } ──Authorizer──▶ allow?
//!              tokens ─▶ policies + roles ─▶ their policies + identities ─▶ merged Rules
//! ```
//!
//! The tables live in the replicated state (written through Raft as [`AclWrite`]s, kept
//! in snapshots); rules are parsed when a policy is written, and kept parsed beside it.
//! Whether ACLs are enforced, the default policy and who asks are the agent's business
//! (crates `proconsul-lan` and `proconsul-api`).

mod authorizer;
mod enforce;
mod rules;
mod tables;

use serde::{Deserialize, Serialize};

pub use authorizer::{Access, Authorizer};
pub use enforce::{Caller, Denied, HIDDEN_SECRET, nothing_for};
pub use rules::{Level, Resource, Rules, RulesError};
pub use tables::{AclAnswer, AclRead, AclSnapshot, AclTables, Resolved};

/// The ID of the built-in policy that grants everything.
pub const MANAGEMENT_POLICY_ID: &str = "00000000-0000-0000-0000-000000000001";
/// Its name.
pub const MANAGEMENT_POLICY_NAME: &str = "global-management";
/// The AccessorID of the anonymous token, used by requests that present none.
pub const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";
/// The SecretID of the anonymous token.
pub const ANONYMOUS_SECRET: &str = "anonymous";
/// IDs that start with this are reserved for built-ins.
pub const RESERVED_ID_PREFIX: &str = "00000000-0000-0000-0000-0000000000";

/// A service identity: `service:write` on the service (and its sidecar), read on every
/// service and node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceIdentity {
    /// The service.
    pub service_name: String,
    /// Where it applies; empty means everywhere.
    #[serde(default)]
    pub datacenters: Vec<String>,
}

/// A node identity: `node:write` on the node, read on every service, in one datacenter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The node.
    pub node_name: String,
    /// The only datacenter where it applies.
    pub datacenter: String,
}

/// A link from a token or role to a policy or role: its ID, and its name as of the read
/// (names are looked up when read, so a renamed policy shows its new name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Link {
    /// The ID linked to.
    pub id: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
}

/// A token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Its public ID.
    pub accessor_id: String,
    /// The bearer secret.
    pub secret_id: String,
    /// For people.
    #[serde(default)]
    pub description: String,
    /// Its policies.
    #[serde(default)]
    pub policies: Vec<Link>,
    /// Its roles.
    #[serde(default)]
    pub roles: Vec<Link>,
    /// Its service identities.
    #[serde(default)]
    pub service_identities: Vec<ServiceIdentity>,
    /// Its node identities.
    #[serde(default)]
    pub node_identities: Vec<NodeIdentity>,
    /// Kept in its own datacenter only (never replicated).
    #[serde(default)]
    pub local: bool,
    /// When it was created, in nanoseconds since the Unix epoch (set by the server that
    /// proposed it, so that every server stores the same).
    pub create_time: u64,
    /// When it stops working, in nanoseconds since the Unix epoch.
    #[serde(default)]
    pub expiration_time: Option<u64>,
    /// Raft index of its creation.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index of its last change.
    #[serde(default)]
    pub modify_index: u64,
}

impl Token {
    /// Whether it has expired at `now` (nanoseconds since the Unix epoch).
    pub fn expired(&self, now: u64) -> bool {
        self.expiration_time.is_some_and(|t| t <= now)
    }
}

/// A policy: named rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Its ID (a UUID).
    pub id: String,
    /// Its unique name.
    pub name: String,
    /// For people.
    #[serde(default)]
    pub description: String,
    /// The rules as written (HCL or JSON).
    #[serde(default)]
    pub rules: String,
    /// Where it applies; empty means everywhere.
    #[serde(default)]
    pub datacenters: Vec<String>,
    /// Raft index of its creation.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index of its last change.
    #[serde(default)]
    pub modify_index: u64,
}

/// A role: policies and identities under one name, for tokens to share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Its ID (a UUID).
    pub id: String,
    /// Its unique name.
    pub name: String,
    /// For people.
    #[serde(default)]
    pub description: String,
    /// Its policies.
    #[serde(default)]
    pub policies: Vec<Link>,
    /// Its service identities.
    #[serde(default)]
    pub service_identities: Vec<ServiceIdentity>,
    /// Its node identities.
    #[serde(default)]
    pub node_identities: Vec<NodeIdentity>,
    /// Raft index of its creation.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index of its last change.
    #[serde(default)]
    pub modify_index: u64,
}

/// A write to the ACL tables, as it travels in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AclWrite {
    /// The first management token (`/v1/acl/bootstrap`): refused once bootstrapped,
    /// unless `reset_index` names the index the last bootstrap was made at.
    Bootstrap {
        /// The token, holding the management policy.
        token: Token,
        /// The reset index an operator wrote on the leader, if any.
        reset_index: Option<u64>,
    },
    /// Creates or updates a token (by AccessorID).
    TokenSet(Token),
    /// Deletes a token; an unknown one is no change.
    TokenDelete {
        /// Its AccessorID.
        accessor_id: String,
    },
    /// Creates or updates a policy (by ID).
    PolicySet(Policy),
    /// Deletes a policy; an unknown one is no change.
    PolicyDelete {
        /// Its ID.
        id: String,
    },
    /// Creates or updates a role (by ID).
    RoleSet(Role),
    /// Deletes a role; an unknown one is no change.
    RoleDelete {
        /// Its ID.
        id: String,
    },
    /// What a secondary datacenter copies from the primary (ACL replication): these
    /// deletions, then these objects as the primary holds them. Local tokens are never
    /// touched, and links are not checked (a token may name a policy copied later).
    Replicate {
        /// Policies to create or replace.
        policies: Vec<Policy>,
        /// Roles to create or replace.
        roles: Vec<Role>,
        /// Global tokens to create or replace.
        tokens: Vec<Token>,
        /// IDs of policies to delete.
        delete_policies: Vec<String>,
        /// IDs of roles to delete.
        delete_roles: Vec<String>,
        /// AccessorIDs of global tokens to delete.
        delete_tokens: Vec<String>,
    },
}

/// Whether `name` is a valid policy or role name (Consul's: letters, digits, `-` and
/// `_`, 1 to 256 characters for roles, 128 for policies).
pub fn valid_name(name: &str, longest: usize) -> bool {
    !name.is_empty()
        && name.len() <= longest
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
