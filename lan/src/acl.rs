//! ACLs on a server: who a request's principal is, resolved against this server's copy
//! of the ACL tables, and the settings that decide what no rule does.
//!
//! The server that answers a read checks and filters it; the leader checks a write
//! against the state it will apply to. A forwarded request carries its token, so the
//! server that decides resolves it again. The agent's own work
//! ([`Principal::Agent`]) is not checked on a server; a client agent sends its agent
//! token for it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use catalog::acl::{ANONYMOUS_ACCESSOR, ANONYMOUS_SECRET, Authorizer, Caller};
use catalog::{Catalog, Principal};

/// What a datacenter does when it cannot resolve a token (Consul's `acl.down_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DownPolicy {
    /// Allow everything.
    Allow,
    /// Deny everything.
    Deny,
    /// Keep using what was resolved before, past its TTL; deny the rest.
    #[default]
    ExtendCache,
    /// Serve what was resolved before and refresh in the background.
    AsyncCache,
}

/// The agent's ACL settings (`acl { … }` in its configuration).
#[derive(Debug, Clone, Default)]
pub struct AclConfig {
    /// `default_policy = "allow"` (else deny).
    pub default_allow: bool,
    /// `down_policy`.
    pub down_policy: DownPolicy,
    /// `enable_key_list_policy`: tree and key-list reads need `key:list`.
    pub key_list: bool,
    /// How long a client agent keeps a resolved token (`token_ttl`).
    pub token_ttl: Duration,
    /// `tokens.agent`: what the agent's own requests (anti-entropy) present.
    pub agent_token: Option<String>,
    /// `tokens.default`: what requests that present no token act as.
    pub default_token: Option<String>,
    /// `tokens.initial_management`: a management token the leader creates if missing.
    pub initial_management: Option<String>,
}

/// Nanoseconds since the Unix epoch now, as token expiry counts time.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A token that resolves to nothing: unknown or expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotFound;

/// Resolves principals against one server's tables.
#[derive(Debug, Clone)]
pub(crate) struct Acl {
    config: Arc<AclConfig>,
    datacenter: String,
}

impl Acl {
    pub(crate) fn new(config: Arc<AclConfig>, datacenter: String) -> Acl {
        Acl { config, datacenter }
    }

    /// Who `principal` is here; `Ok(None)` when nothing is checked (the agent itself).
    pub(crate) fn caller(
        &self,
        catalog: &Catalog,
        principal: &Principal,
    ) -> Result<Option<Caller>, NotFound> {
        let secret: &str = match principal {
            Principal::Agent => return Ok(None),
            Principal::Token(secret) => secret,
            Principal::Anonymous => ANONYMOUS_SECRET,
        };
        let resolved = catalog.read(|s| s.acl().resolve(secret, now_ns(), &self.datacenter));
        let default_allow = self.config.default_allow;
        let (accessor_id, authorizer) = match resolved {
            Some(r) if r.management => (r.accessor_id, Authorizer::management()),
            Some(r) => (r.accessor_id, Authorizer::new(r.rules, default_allow)),
            // Before the leader has written the anonymous token: the default policy.
            None if matches!(principal, Principal::Anonymous) => (
                ANONYMOUS_ACCESSOR.to_owned(),
                Authorizer::default_only(default_allow),
            ),
            None => return Err(NotFound),
        };
        Ok(Some(Caller {
            accessor_id,
            authorizer,
            key_list: self.config.key_list,
        }))
    }

    /// The settings.
    pub(crate) fn config(&self) -> &AclConfig {
        &self.config
    }
}
