//! The ACL tables of the replicated state: applying [`AclWrite`]s, reading, and
//! resolving a secret to the rules it carries.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::rules::{Level, Resource, Rules};
use super::{
    ANONYMOUS_ACCESSOR, AclWrite, Link, MANAGEMENT_POLICY_ID, MANAGEMENT_POLICY_NAME, NodeIdentity,
    Policy, Role, ServiceIdentity, Token, valid_name,
};
use crate::state::{ApplyError, State};

/// The longest policy name (Consul's).
const POLICY_NAME_MAX: usize = 128;
/// The longest role name (Consul's).
const ROLE_NAME_MAX: usize = 256;

/// Tokens, policies and roles, with the indexes that find them.
#[derive(Debug, Clone, Default)]
pub struct AclTables {
    tokens: BTreeMap<String, Token>,
    /// SecretID → AccessorID.
    by_secret: HashMap<String, String>,
    policies: BTreeMap<String, Policy>,
    /// Policy ID → its rules, parsed when it was written.
    parsed: HashMap<String, Arc<Rules>>,
    roles: BTreeMap<String, Role>,
    /// The index the last bootstrap was made at.
    bootstrapped: Option<u64>,
    /// Last change to any token, policy or role.
    pub(crate) tokens_index: u64,
    pub(crate) policies_index: u64,
    pub(crate) roles_index: u64,
}

/// The ACL tables as snapshots carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclSnapshot {
    #[serde(default)]
    tokens: Vec<Token>,
    #[serde(default)]
    policies: Vec<Policy>,
    #[serde(default)]
    roles: Vec<Role>,
    #[serde(default)]
    bootstrapped: Option<u64>,
    #[serde(default)]
    indexes: (u64, u64, u64),
}

/// A read of the ACL tables.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AclRead {
    /// One token by AccessorID.
    Token(String),
    /// One token by SecretID.
    TokenBySecret(String),
    /// Tokens, optionally only those linking a policy, a role, or a service identity.
    Tokens {
        /// Only tokens with this policy ID.
        policy: Option<String>,
        /// Only tokens with this role ID.
        role: Option<String>,
        /// Only tokens with a service identity for this service.
        service_name: Option<String>,
    },
    /// One policy by ID.
    Policy(String),
    /// One policy by name.
    PolicyByName(String),
    /// Every policy.
    Policies,
    /// One role by ID.
    Role(String),
    /// One role by name.
    RoleByName(String),
    /// Every role.
    Roles,
}

/// What an [`AclRead`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AclAnswer {
    /// Tokens (none, one, or a list).
    Tokens(Vec<Token>),
    /// Policies.
    Policies(Vec<Policy>),
    /// Roles.
    Roles(Vec<Role>),
}

/// What a secret resolved to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The token's AccessorID (for permission errors).
    pub accessor_id: String,
    /// It holds the management policy.
    pub management: bool,
    /// The merged rules of its policies, roles and identities that apply here.
    pub rules: Arc<Rules>,
    /// When the token expires (ns since the Unix epoch).
    pub expires: Option<u64>,
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl AclTables {
    /// What `secret` grants in `datacenter` at `now` (ns since the Unix epoch); `None`
    /// when no token has it or the token has expired (Consul: "ACL not found").
    pub fn resolve(&self, secret: &str, now: u64, datacenter: &str) -> Option<Resolved> {
        let accessor = self.by_secret.get(secret)?;
        let token = self.tokens.get(accessor)?;
        if !same_secret(&token.secret_id, secret) || token.expired(now) {
            return None;
        }
        let mut rules = Rules::default();
        let mut management = false;
        let mut policy_ids: Vec<&str> = token.policies.iter().map(|l| l.id.as_str()).collect();
        let mut services: Vec<&ServiceIdentity> = token.service_identities.iter().collect();
        let mut nodes: Vec<&NodeIdentity> = token.node_identities.iter().collect();
        for link in &token.roles {
            if let Some(role) = self.roles.get(&link.id) {
                policy_ids.extend(role.policies.iter().map(|l| l.id.as_str()));
                services.extend(&role.service_identities);
                nodes.extend(&role.node_identities);
            }
        }
        for id in policy_ids {
            let Some(policy) = self.policies.get(id) else {
                continue;
            };
            if !policy.datacenters.is_empty() && !policy.datacenters.iter().any(|d| d == datacenter)
            {
                continue;
            }
            if id == MANAGEMENT_POLICY_ID {
                management = true;
            } else if let Some(parsed) = self.parsed.get(id) {
                rules.merge(parsed);
            }
        }
        for s in services {
            if s.datacenters.is_empty() || s.datacenters.iter().any(|d| d == datacenter) {
                rules.add(Resource::Service, &s.service_name, false, Level::Write);
                let sidecar = format!("{}-sidecar-proxy", s.service_name);
                rules.add(Resource::Service, &sidecar, false, Level::Write);
                rules.add(Resource::Service, "", true, Level::Read);
                rules.add(Resource::Node, "", true, Level::Read);
            }
        }
        for n in nodes {
            if n.datacenter == datacenter {
                rules.add(Resource::Node, &n.node_name, false, Level::Write);
                rules.add(Resource::Service, "", true, Level::Read);
            }
        }
        Some(Resolved {
            accessor_id: token.accessor_id.clone(),
            management,
            rules: Arc::new(rules),
            expires: token.expiration_time,
        })
    }

    /// The policy with this ID.
    pub fn policy(&self, id: &str) -> Option<&Policy> {
        self.policies.get(id)
    }

    /// The token with this AccessorID.
    pub fn token(&self, accessor_id: &str) -> Option<&Token> {
        self.tokens.get(accessor_id)
    }

    /// The AccessorIDs of up to `limit` tokens that expired by `now` (ns since the Unix
    /// epoch), only local ones if `local_only`, and when the next of the others
    /// expires. A scan of every token: the leader calls it once per round, not per
    /// request.
    pub fn expired_tokens(
        &self,
        now: u64,
        local_only: bool,
        limit: usize,
    ) -> (Vec<String>, Option<u64>) {
        let mut expired = Vec::new();
        let mut next: Option<u64> = None;
        for token in self.tokens.values().filter(|t| t.local || !local_only) {
            let Some(at) = token.expiration_time else {
                continue;
            };
            if at > now {
                next = Some(next.map_or(at, |n| n.min(at)));
            } else if expired.len() < limit {
                expired.push(token.accessor_id.clone());
            }
        }
        (expired, next)
    }

    /// Whether a global token other than the anonymous one is held. A secondary gets
    /// those only by token replication (a global token made through it is made in the
    /// primary), so there this says replication has copied the primary's tokens. Stops at
    /// the first such token.
    pub fn holds_global_tokens(&self) -> bool {
        self.tokens
            .values()
            .any(|t| !t.local && t.accessor_id != ANONYMOUS_ACCESSOR)
    }

    /// Whether a token holds this SecretID.
    pub fn has_secret(&self, secret: &str) -> bool {
        self.by_secret.contains_key(secret)
    }

    /// The index a bootstrap was made at, if one was.
    pub fn bootstrapped(&self) -> Option<u64> {
        self.bootstrapped
    }

    /// The newest index of the three tables.
    pub fn index(&self) -> u64 {
        self.tokens_index
            .max(self.policies_index)
            .max(self.roles_index)
    }

    /// Answers a read, with the index of the table it read (never below 1).
    pub fn query(&self, read: &AclRead) -> (AclAnswer, u64) {
        let (answer, index) = match read {
            AclRead::Token(accessor) => (
                AclAnswer::Tokens(
                    self.tokens
                        .get(accessor)
                        .map(|t| self.named(t))
                        .into_iter()
                        .collect(),
                ),
                self.tokens_index,
            ),
            AclRead::TokenBySecret(secret) => {
                let found = self
                    .by_secret
                    .get(secret)
                    .and_then(|a| self.tokens.get(a))
                    .filter(|t| same_secret(&t.secret_id, secret));
                (
                    AclAnswer::Tokens(found.map(|t| self.named(t)).into_iter().collect()),
                    self.tokens_index,
                )
            }
            AclRead::Tokens {
                policy,
                role,
                service_name,
            } => {
                let list = self
                    .tokens
                    .values()
                    .filter(|t| {
                        policy
                            .as_ref()
                            .is_none_or(|p| t.policies.iter().any(|l| &l.id == p))
                    })
                    .filter(|t| {
                        role.as_ref()
                            .is_none_or(|r| t.roles.iter().any(|l| &l.id == r))
                    })
                    .filter(|t| {
                        service_name.as_ref().is_none_or(|s| {
                            t.service_identities.iter().any(|i| &i.service_name == s)
                        })
                    })
                    .map(|t| self.named(t))
                    .collect();
                (AclAnswer::Tokens(list), self.tokens_index)
            }
            AclRead::Policy(id) => (
                AclAnswer::Policies(self.policies.get(id).cloned().into_iter().collect()),
                self.policies_index,
            ),
            AclRead::PolicyByName(name) => (
                AclAnswer::Policies(
                    self.policies
                        .values()
                        .filter(|p| &p.name == name)
                        .cloned()
                        .collect(),
                ),
                self.policies_index,
            ),
            AclRead::Policies => (
                AclAnswer::Policies(self.policies.values().cloned().collect()),
                self.policies_index,
            ),
            AclRead::Role(id) => (
                AclAnswer::Roles(
                    self.roles
                        .get(id)
                        .map(|r| self.named_role(r))
                        .into_iter()
                        .collect(),
                ),
                self.roles_index,
            ),
            AclRead::RoleByName(name) => (
                AclAnswer::Roles(
                    self.roles
                        .values()
                        .filter(|r| &r.name == name)
                        .map(|r| self.named_role(r))
                        .collect(),
                ),
                self.roles_index,
            ),
            AclRead::Roles => (
                AclAnswer::Roles(self.roles.values().map(|r| self.named_role(r)).collect()),
                self.roles_index,
            ),
        };
        (answer, index.max(1))
    }

    /// `links` with current names, those to deleted policies left out.
    fn policy_links(&self, links: &[Link]) -> Vec<Link> {
        links
            .iter()
            .filter_map(|l| {
                self.policies.get(&l.id).map(|p| Link {
                    id: p.id.clone(),
                    name: p.name.clone(),
                })
            })
            .collect()
    }

    fn named(&self, token: &Token) -> Token {
        let mut t = token.clone();
        t.policies = self.policy_links(&token.policies);
        t.roles = token
            .roles
            .iter()
            .filter_map(|l| {
                self.roles.get(&l.id).map(|r| Link {
                    id: r.id.clone(),
                    name: r.name.clone(),
                })
            })
            .collect();
        t
    }

    fn named_role(&self, role: &Role) -> Role {
        let mut r = role.clone();
        r.policies = self.policy_links(&role.policies);
        r
    }

    /// The tables as a snapshot carries them.
    pub fn to_snapshot(&self) -> AclSnapshot {
        AclSnapshot {
            tokens: self.tokens.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
            roles: self.roles.values().cloned().collect(),
            bootstrapped: self.bootstrapped,
            indexes: (self.tokens_index, self.policies_index, self.roles_index),
        }
    }

    /// Rebuilds the tables from a snapshot. Rules that no longer parse (written by a
    /// newer version) grant nothing rather than failing the whole restore.
    pub fn from_snapshot(snapshot: AclSnapshot) -> AclTables {
        let mut t = AclTables {
            bootstrapped: snapshot.bootstrapped,
            tokens_index: snapshot.indexes.0,
            policies_index: snapshot.indexes.1,
            roles_index: snapshot.indexes.2,
            ..AclTables::default()
        };
        for token in snapshot.tokens {
            t.by_secret
                .insert(token.secret_id.clone(), token.accessor_id.clone());
            t.tokens.insert(token.accessor_id.clone(), token);
        }
        for policy in snapshot.policies {
            let parsed = Rules::parse(&policy.rules).unwrap_or_default();
            t.parsed.insert(policy.id.clone(), Arc::new(parsed));
            t.policies.insert(policy.id.clone(), policy);
        }
        for role in snapshot.roles {
            t.roles.insert(role.id.clone(), role);
        }
        t
    }

    /// Every index moved to `index` (a restore).
    pub(crate) fn touch_all(&mut self, index: u64) {
        self.tokens_index = index;
        self.policies_index = index;
        self.roles_index = index;
    }

    fn check_links(&self, policies: &[Link], roles: &[Link]) -> Result<(), ApplyError> {
        if let Some(l) = policies.iter().find(|l| !self.policies.contains_key(&l.id)) {
            return Err(ApplyError::Acl(format!(
                "No such ACL policy with ID {:?}",
                l.id
            )));
        }
        if let Some(l) = roles.iter().find(|l| !self.roles.contains_key(&l.id)) {
            return Err(ApplyError::Acl(format!(
                "No such ACL role with ID {:?}",
                l.id
            )));
        }
        Ok(())
    }

    fn set_token(&mut self, index: u64, token: &Token) -> Result<(), ApplyError> {
        if token.accessor_id.is_empty() || token.secret_id.is_empty() {
            return Err(ApplyError::Acl(
                "A token needs an AccessorID and a SecretID".into(),
            ));
        }
        if let Some(owner) = self.by_secret.get(&token.secret_id)
            && *owner != token.accessor_id
        {
            return Err(ApplyError::Acl(
                "Invalid Token: SecretID is already in use".into(),
            ));
        }
        let existing = self.tokens.get(&token.accessor_id);
        if let Some(e) = existing {
            if e.secret_id != token.secret_id {
                return Err(ApplyError::Acl(
                    "Changing a token's SecretID is not permitted".into(),
                ));
            }
            if e.local != token.local {
                return Err(ApplyError::Acl(format!(
                    "Cannot toggle local mode of {}",
                    token.accessor_id
                )));
            }
        }
        self.check_links(&token.policies, &token.roles)?;
        let mut stored = self.named(token);
        stored.create_index = existing.map_or(index, |e| e.create_index);
        stored.create_time = existing.map_or(token.create_time, |e| e.create_time);
        stored.modify_index = index;
        self.by_secret
            .insert(stored.secret_id.clone(), stored.accessor_id.clone());
        self.tokens.insert(stored.accessor_id.clone(), stored);
        self.tokens_index = index;
        Ok(())
    }

    fn set_policy(&mut self, index: u64, policy: &Policy) -> Result<(), ApplyError> {
        if !valid_name(&policy.name, POLICY_NAME_MAX) {
            return Err(ApplyError::Acl(
                "Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed"
                    .into(),
            ));
        }
        if let Some(other) = self
            .policies
            .values()
            .find(|p| p.name == policy.name && p.id != policy.id)
        {
            return Err(ApplyError::Acl(format!(
                "Invalid Policy: A Policy with Name {:?} already exists",
                other.name
            )));
        }
        let existing = self.policies.get(&policy.id);
        if policy.id == MANAGEMENT_POLICY_ID
            && let Some(e) = existing
            && (e.rules != policy.rules || e.name != policy.name || !policy.datacenters.is_empty())
        {
            return Err(ApplyError::Acl(format!(
                "Changing the Rules, Name or Datacenters of the builtin {MANAGEMENT_POLICY_NAME} policy is not permitted"
            )));
        }
        let parsed = Rules::parse(&policy.rules).map_err(|e| ApplyError::Acl(e.to_string()))?;
        let mut stored = policy.clone();
        stored.create_index = existing.map_or(index, |e| e.create_index);
        stored.modify_index = index;
        self.parsed.insert(stored.id.clone(), Arc::new(parsed));
        self.policies.insert(stored.id.clone(), stored);
        self.policies_index = index;
        Ok(())
    }

    fn set_role(&mut self, index: u64, role: &Role) -> Result<(), ApplyError> {
        if !valid_name(&role.name, ROLE_NAME_MAX) {
            return Err(ApplyError::Acl(
                "Invalid Role: invalid Name. Only alphanumeric characters, '-' and '_' are allowed"
                    .into(),
            ));
        }
        if let Some(other) = self
            .roles
            .values()
            .find(|r| r.name == role.name && r.id != role.id)
        {
            return Err(ApplyError::Acl(format!(
                "Invalid Role: A Role with Name {:?} already exists",
                other.name
            )));
        }
        self.check_links(&role.policies, &[])?;
        let existing = self.roles.get(&role.id);
        let mut stored = self.named_role(role);
        stored.create_index = existing.map_or(index, |e| e.create_index);
        stored.modify_index = index;
        self.roles.insert(stored.id.clone(), stored);
        self.roles_index = index;
        Ok(())
    }

    fn management_policy(&mut self, index: u64) {
        if !self.policies.contains_key(MANAGEMENT_POLICY_ID) {
            let policy = Policy {
                id: MANAGEMENT_POLICY_ID.into(),
                name: MANAGEMENT_POLICY_NAME.into(),
                description: "Builtin Policy that grants unlimited access".into(),
                rules: String::new(),
                datacenters: Vec::new(),
                create_index: index,
                modify_index: index,
            };
            self.parsed
                .insert(policy.id.clone(), Arc::new(Rules::default()));
            self.policies.insert(policy.id.clone(), policy);
            self.policies_index = index;
        }
    }

    fn apply(&mut self, index: u64, write: &AclWrite) -> Result<(), ApplyError> {
        match write {
            AclWrite::Bootstrap { token, reset_index } => {
                if let Some(at) = self.bootstrapped
                    && *reset_index != Some(at)
                {
                    return Err(ApplyError::AclBootstrap(at));
                }
                self.management_policy(index);
                let mut token = token.clone();
                if !token.policies.iter().any(|l| l.id == MANAGEMENT_POLICY_ID) {
                    token.policies.push(Link {
                        id: MANAGEMENT_POLICY_ID.into(),
                        name: MANAGEMENT_POLICY_NAME.into(),
                    });
                }
                self.set_token(index, &token)?;
                self.bootstrapped = Some(index);
            }
            AclWrite::TokenSet(token) => self.set_token(index, token)?,
            AclWrite::TokenDelete { accessor_id } => {
                if accessor_id == ANONYMOUS_ACCESSOR {
                    return Err(ApplyError::Acl(
                        "Deletion of the builtin anonymous token is not permitted".into(),
                    ));
                }
                if let Some(t) = self.tokens.remove(accessor_id) {
                    self.by_secret.remove(&t.secret_id);
                    self.tokens_index = index;
                }
            }
            AclWrite::PolicySet(policy) => self.set_policy(index, policy)?,
            AclWrite::PolicyDelete { id } => {
                if id == MANAGEMENT_POLICY_ID {
                    return Err(ApplyError::Acl(format!(
                        "Deletion of the builtin {MANAGEMENT_POLICY_NAME} policy is not permitted"
                    )));
                }
                if self.policies.remove(id).is_some() {
                    self.parsed.remove(id);
                    self.policies_index = index;
                }
            }
            AclWrite::RoleSet(role) => self.set_role(index, role)?,
            AclWrite::RoleDelete { id } => {
                if self.roles.remove(id).is_some() {
                    self.roles_index = index;
                }
            }
            AclWrite::Replicate {
                policies,
                roles,
                tokens,
                delete_policies,
                delete_roles,
                delete_tokens,
            } => self.replicate(
                index,
                policies,
                roles,
                tokens,
                delete_policies,
                delete_roles,
                delete_tokens,
            )?,
        }
        Ok(())
    }

    /// Applies what replication copied, whole or not at all (checked first).
    #[allow(clippy::too_many_arguments)]
    fn replicate(
        &mut self,
        index: u64,
        policies: &[Policy],
        roles: &[Role],
        tokens: &[Token],
        delete_policies: &[String],
        delete_roles: &[String],
        delete_tokens: &[String],
    ) -> Result<(), ApplyError> {
        let mut parsed = Vec::with_capacity(policies.len());
        for p in policies {
            let rules = Rules::parse(&p.rules)
                .map_err(|e| ApplyError::Acl(format!("replicated policy {:?}: {e}", p.name)))?;
            parsed.push(Arc::new(rules));
        }
        if let Some(t) = tokens.iter().find(|t| t.local || t.secret_id.is_empty()) {
            return Err(ApplyError::Acl(format!(
                "replication copies global tokens with their secrets only ({})",
                t.accessor_id
            )));
        }
        if let Some(t) = tokens.iter().find(|t| {
            self.by_secret
                .get(&t.secret_id)
                .is_some_and(|a| *a != t.accessor_id && self.tokens.get(a).is_some_and(|o| o.local))
        }) {
            return Err(ApplyError::Acl(format!(
                "replicated token {} has the secret of a local token",
                t.accessor_id
            )));
        }
        for id in delete_policies {
            if id != MANAGEMENT_POLICY_ID && self.policies.remove(id).is_some() {
                self.parsed.remove(id);
                self.policies_index = index;
            }
        }
        for id in delete_roles {
            if self.roles.remove(id).is_some() {
                self.roles_index = index;
            }
        }
        for accessor in delete_tokens {
            if self.tokens.get(accessor).is_some_and(|t| !t.local)
                && let Some(t) = self.tokens.remove(accessor)
            {
                self.by_secret.remove(&t.secret_id);
                self.tokens_index = index;
            }
        }
        for (p, rules) in policies.iter().zip(parsed) {
            // A name the primary moved to another policy is freed here first.
            let clashing: Vec<String> = self
                .policies
                .iter()
                .filter(|(id, other)| **id != p.id && other.name == p.name)
                .map(|(id, _)| id.clone())
                .collect();
            for id in clashing {
                self.policies.remove(&id);
                self.parsed.remove(&id);
            }
            self.parsed.insert(p.id.clone(), rules);
            let mut stored = p.clone();
            stored.create_index = self.policies.get(&p.id).map_or(index, |e| e.create_index);
            stored.modify_index = index;
            self.policies.insert(p.id.clone(), stored);
            self.policies_index = index;
        }
        for r in roles {
            self.roles
                .retain(|id, other| *id == r.id || other.name != r.name);
            let mut stored = r.clone();
            stored.create_index = self.roles.get(&r.id).map_or(index, |e| e.create_index);
            stored.modify_index = index;
            self.roles.insert(r.id.clone(), stored);
            self.roles_index = index;
        }
        for t in tokens {
            if let Some(old) = self.tokens.get(&t.accessor_id) {
                self.by_secret.remove(&old.secret_id.clone());
            }
            // Another global token with this secret (made here before replication
            // started) gives way to the primary's.
            if let Some(other) = self.by_secret.remove(&t.secret_id)
                && other != t.accessor_id
            {
                self.tokens.remove(&other);
            }
            let mut stored = t.clone();
            stored.create_index = self
                .tokens
                .get(&t.accessor_id)
                .map_or(index, |e| e.create_index);
            stored.modify_index = index;
            self.by_secret
                .insert(stored.secret_id.clone(), stored.accessor_id.clone());
            self.tokens.insert(stored.accessor_id.clone(), stored);
            self.tokens_index = index;
        }
        Ok(())
    }
}

impl State {
    /// Applies an ACL write at `index`. A refused write changes nothing.
    pub(crate) fn apply_acl(&mut self, index: u64, write: &AclWrite) -> Result<(), ApplyError> {
        self.acl.apply(index, write)
    }

    /// The ACL tables.
    pub fn acl(&self) -> &AclTables {
        &self.acl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{Access, Authorizer};

    const NOW: u64 = 1_700_000_000_000_000_000;

    fn token(accessor: &str, secret: &str, policies: &[&str]) -> Token {
        Token {
            accessor_id: accessor.into(),
            secret_id: secret.into(),
            description: String::new(),
            policies: policies
                .iter()
                .map(|id| Link {
                    id: (*id).into(),
                    name: String::new(),
                })
                .collect(),
            roles: Vec::new(),
            service_identities: Vec::new(),
            node_identities: Vec::new(),
            local: false,
            create_time: NOW,
            expiration_time: None,
            create_index: 0,
            modify_index: 0,
        }
    }

    fn policy(id: &str, name: &str, rules: &str) -> Policy {
        Policy {
            id: id.into(),
            name: name.into(),
            description: String::new(),
            rules: rules.into(),
            datacenters: Vec::new(),
            create_index: 0,
            modify_index: 0,
        }
    }

    fn allows(
        t: &AclTables,
        secret: &str,
        resource: Resource,
        label: &str,
        access: Access,
    ) -> bool {
        let r = t.resolve(secret, NOW, "dc1").expect("resolves");
        let a = if r.management {
            Authorizer::management()
        } else {
            Authorizer::new(r.rules, false)
        };
        a.allows(resource, label, access)
    }

    #[test]
    fn bootstrap_happens_once_unless_reset_at_its_index() {
        let mut t = AclTables::default();
        let first = AclWrite::Bootstrap {
            token: token("a1", "s1", &[]),
            reset_index: None,
        };
        t.apply(5, &first).unwrap();
        assert_eq!(t.bootstrapped(), Some(5));
        assert!(t.resolve("s1", NOW, "dc1").unwrap().management);
        let again = AclWrite::Bootstrap {
            token: token("a2", "s2", &[]),
            reset_index: None,
        };
        assert_eq!(t.apply(6, &again), Err(ApplyError::AclBootstrap(5)));
        let wrong = AclWrite::Bootstrap {
            token: token("a2", "s2", &[]),
            reset_index: Some(4),
        };
        assert_eq!(t.apply(6, &wrong), Err(ApplyError::AclBootstrap(5)));
        let reset = AclWrite::Bootstrap {
            token: token("a2", "s2", &[]),
            reset_index: Some(5),
        };
        t.apply(7, &reset).unwrap();
        assert_eq!(t.bootstrapped(), Some(7));
        assert!(t.resolve("s2", NOW, "dc1").unwrap().management);
    }

    #[test]
    fn a_token_carries_its_policies_roles_and_identities() {
        let mut t = AclTables::default();
        t.apply(
            1,
            &AclWrite::PolicySet(policy(
                "p1",
                "kv",
                r#"key_prefix "app/" { policy = "write" }"#,
            )),
        )
        .unwrap();
        t.apply(
            2,
            &AclWrite::PolicySet(policy("p2", "ops", r#"operator = "read""#)),
        )
        .unwrap();
        t.apply(
            3,
            &AclWrite::RoleSet(Role {
                id: "r1".into(),
                name: "operators".into(),
                description: String::new(),
                policies: vec![Link {
                    id: "p2".into(),
                    name: String::new(),
                }],
                service_identities: Vec::new(),
                node_identities: vec![NodeIdentity {
                    node_name: "n1".into(),
                    datacenter: "dc1".into(),
                }],
                create_index: 0,
                modify_index: 0,
            }),
        )
        .unwrap();
        let mut tok = token("a1", "s1", &["p1"]);
        tok.roles.push(Link {
            id: "r1".into(),
            name: String::new(),
        });
        tok.service_identities.push(ServiceIdentity {
            service_name: "web".into(),
            datacenters: vec!["dc2".into()],
        });
        t.apply(4, &AclWrite::TokenSet(tok)).unwrap();
        assert!(allows(&t, "s1", Resource::Key, "app/x", Access::Write));
        assert!(!allows(&t, "s1", Resource::Key, "other", Access::Read));
        assert!(allows(&t, "s1", Resource::Operator, "", Access::Read));
        assert!(
            allows(&t, "s1", Resource::Node, "n1", Access::Write),
            "node identity in dc1"
        );
        assert!(
            !allows(&t, "s1", Resource::Service, "web", Access::Write),
            "web's identity is for dc2"
        );
        let (answer, index) = t.query(&AclRead::Token("a1".into()));
        assert_eq!(index, 4);
        let AclAnswer::Tokens(found) = answer else {
            panic!("tokens")
        };
        assert_eq!(found[0].policies[0].name, "kv", "links carry names");
        assert_eq!(found[0].roles[0].name, "operators");
    }

    #[test]
    fn unknown_expired_and_wrong_datacenter_grant_nothing() {
        let mut t = AclTables::default();
        let mut scoped = policy("p1", "dc2-only", r#"operator = "write""#);
        scoped.datacenters = vec!["dc2".into()];
        t.apply(1, &AclWrite::PolicySet(scoped)).unwrap();
        let mut expiring = token("a1", "s1", &["p1"]);
        expiring.expiration_time = Some(NOW + 1);
        t.apply(2, &AclWrite::TokenSet(expiring)).unwrap();
        assert!(t.resolve("nope", NOW, "dc1").is_none());
        assert!(
            !allows(&t, "s1", Resource::Operator, "", Access::Read),
            "policy is for dc2"
        );
        assert!(t.resolve("s1", NOW, "dc2").is_some());
        assert!(t.resolve("s1", NOW + 1, "dc2").is_none(), "expired");
    }

    #[test]
    fn expired_tokens_are_listed_for_the_leader_to_delete() {
        let mut t = AclTables::default();
        for (i, (at, local)) in [(Some(NOW), false), (Some(NOW + 5), true), (None, false)]
            .into_iter()
            .enumerate()
        {
            let mut tok = token(&format!("a{i}"), &format!("s{i}"), &[]);
            tok.expiration_time = at;
            tok.local = local;
            t.apply(i as u64 + 1, &AclWrite::TokenSet(tok)).unwrap();
        }
        assert_eq!(
            t.expired_tokens(NOW, false, 10),
            (vec!["a0".into()], Some(NOW + 5))
        );
        assert_eq!(t.expired_tokens(NOW, true, 10), (vec![], Some(NOW + 5)));
        assert_eq!(
            t.expired_tokens(NOW + 5, true, 10),
            (vec!["a1".into()], None)
        );
        assert_eq!(t.expired_tokens(NOW + 5, false, 1).0.len(), 1, "bounded");
    }

    #[test]
    fn refused_writes_change_nothing() {
        let mut t = AclTables::default();
        t.apply(1, &AclWrite::PolicySet(policy("p1", "one", "")))
            .unwrap();
        t.apply(2, &AclWrite::TokenSet(token("a1", "s1", &["p1"])))
            .unwrap();
        let before = t.to_snapshot();
        let refused = [
            AclWrite::PolicySet(policy("p2", "one", "")),
            AclWrite::PolicySet(policy("p2", "bad name", "")),
            AclWrite::PolicySet(policy("p2", "two", "key \"a\" { policy = \"all\" }")),
            AclWrite::TokenSet(token("a2", "s1", &[])),
            AclWrite::TokenSet(token("a1", "s-other", &[])),
            AclWrite::TokenSet(token("a3", "s3", &["missing"])),
            AclWrite::TokenDelete {
                accessor_id: ANONYMOUS_ACCESSOR.into(),
            },
        ];
        for write in refused {
            assert!(t.apply(3, &write).is_err(), "{write:?}");
        }
        let mut local = token("a1", "s1", &["p1"]);
        local.local = true;
        assert!(t.apply(3, &AclWrite::TokenSet(local)).is_err());
        assert_eq!(t.to_snapshot(), before);
    }

    #[test]
    fn the_management_policy_cannot_be_changed_or_deleted() {
        let mut t = AclTables::default();
        t.apply(
            1,
            &AclWrite::Bootstrap {
                token: token("a1", "s1", &[]),
                reset_index: None,
            },
        )
        .unwrap();
        let mut changed = t.policies[MANAGEMENT_POLICY_ID].clone();
        changed.rules = r#"operator = "read""#.into();
        assert!(t.apply(2, &AclWrite::PolicySet(changed)).is_err());
        let delete = AclWrite::PolicyDelete {
            id: MANAGEMENT_POLICY_ID.into(),
        };
        assert!(t.apply(2, &delete).is_err());
        let mut described = t.policies[MANAGEMENT_POLICY_ID].clone();
        described.description = "ours".into();
        t.apply(2, &AclWrite::PolicySet(described)).unwrap();
    }

    #[test]
    fn deleted_policies_drop_out_of_links_and_grants() {
        let mut t = AclTables::default();
        t.apply(
            1,
            &AclWrite::PolicySet(policy("p1", "ops", r#"operator = "write""#)),
        )
        .unwrap();
        t.apply(2, &AclWrite::TokenSet(token("a1", "s1", &["p1"])))
            .unwrap();
        t.apply(3, &AclWrite::PolicyDelete { id: "p1".into() })
            .unwrap();
        assert!(!allows(&t, "s1", Resource::Operator, "", Access::Read));
        let AclAnswer::Tokens(found) = t.query(&AclRead::Token("a1".into())).0 else {
            panic!("tokens")
        };
        assert!(found[0].policies.is_empty());
    }

    #[test]
    fn snapshots_keep_everything_and_its_parsed_rules() {
        let mut t = AclTables::default();
        t.apply(
            1,
            &AclWrite::PolicySet(policy("p1", "kv", r#"key "k" { policy = "read" }"#)),
        )
        .unwrap();
        t.apply(2, &AclWrite::TokenSet(token("a1", "s1", &["p1"])))
            .unwrap();
        let back = AclTables::from_snapshot(t.to_snapshot());
        assert_eq!(back.to_snapshot(), t.to_snapshot());
        assert!(allows(&back, "s1", Resource::Key, "k", Access::Read));
        let json = serde_json::to_string(&t.to_snapshot()).unwrap();
        let parsed: AclSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, t.to_snapshot());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
