//! ACLs on a server: who a request's principal is, resolved against this server's copy
//! of the ACL tables, and the settings that decide what no rule does.
//!
//! The server that answers a read checks and filters it; the leader checks a write
//! against the state it will apply to. A forwarded request carries its token, so the
//! server that decides resolves it again.
//!
//! A server of a secondary datacenter resolves a token its own tables do not hold (a
//! global token, when `enable_token_replication` is off) at the primary, through the
//! [`RemoteTokens`] the gateway lends it, and keeps the answer for `token_ttl`. When the
//! primary cannot be asked, `down_policy` decides: `extend-cache` keeps what the primary
//! said last, at any age, and denies tokens it never saw; `allow` and `deny` as named.
//! A token revoked in the primary thus stops working in a secondary within `token_ttl`.
//! With token replication, once the secondary's tables hold the primary's tokens, they
//! are the word on every token, as in Consul: a token they do not hold is unknown, and
//! a revocation takes effect once it is copied. The agent's own work
//! ([`Principal::Agent`]) is not checked on a server; a client agent sends its agent
//! token for it.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use catalog::acl::{ANONYMOUS_ACCESSOR, ANONYMOUS_SECRET, Authorizer, Caller, Rules};
use catalog::{Catalog, Principal};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use crate::agent_tokens::{TokenKind, Tokens};

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

/// The agent's ACL settings (`acl { … }` in its configuration). Its `Debug` form says
/// which tokens are set, never their values.
#[derive(Clone)]
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
    /// `tokens.dns`: what DNS questions act as (else the default token).
    pub dns_token: Option<String>,
    /// `tokens.initial_management`: a management token the leader creates if missing.
    pub initial_management: Option<String>,
    /// `primary_datacenter`, when it is another datacenter: this one is a secondary,
    /// which copies the primary's ACL tables and sends global ACL writes there.
    pub primary_datacenter: Option<String>,
    /// `tokens.replication`: what a secondary presents to read the primary's tables.
    pub replication_token: Option<String>,
    /// `enable_token_replication`: a secondary copies global tokens too.
    pub token_replication: bool,
    /// `enable_token_persistence`: the file that keeps the tokens set through
    /// `PUT /v1/agent/token/:type` across restarts (`<data_dir>/acl-tokens.json`);
    /// `None` keeps them in memory only.
    pub token_persistence: Option<PathBuf>,
    /// `token_min_expiration_ttl`: the shortest life a new token may be given.
    pub token_min_expiration_ttl: Duration,
    /// `token_max_expiration_ttl`: the longest life a new token may be given.
    pub token_max_expiration_ttl: Duration,
}

impl Default for AclConfig {
    fn default() -> Self {
        AclConfig {
            default_allow: false,
            down_policy: DownPolicy::default(),
            key_list: false,
            token_ttl: Duration::ZERO,
            agent_token: None,
            default_token: None,
            dns_token: None,
            initial_management: None,
            primary_datacenter: None,
            replication_token: None,
            token_replication: false,
            token_persistence: None,
            token_min_expiration_ttl: TOKEN_MIN_EXPIRATION_TTL,
            token_max_expiration_ttl: TOKEN_MAX_EXPIRATION_TTL,
        }
    }
}

/// The shortest life a token may be given unless `acl.token_min_expiration_ttl` says
/// otherwise (Consul's server default).
pub const TOKEN_MIN_EXPIRATION_TTL: Duration = Duration::from_secs(60);
/// The longest life a token may be given unless `acl.token_max_expiration_ttl` says
/// otherwise (Consul's server default).
pub const TOKEN_MAX_EXPIRATION_TTL: Duration = Duration::from_secs(24 * 3600);

impl std::fmt::Debug for AclConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |t: &Option<String>| t.as_ref().map(|_| "redacted");
        f.debug_struct("AclConfig")
            .field("default_allow", &self.default_allow)
            .field("down_policy", &self.down_policy)
            .field("key_list", &self.key_list)
            .field("token_ttl", &self.token_ttl)
            .field("agent_token", &shown(&self.agent_token))
            .field("default_token", &shown(&self.default_token))
            .field("dns_token", &shown(&self.dns_token))
            .field("initial_management", &shown(&self.initial_management))
            .field("token_persistence", &self.token_persistence)
            .finish()
    }
}

// Resolution metrics (Consul's names), registered on first use: after the agent
// installed its recorder.
static CACHE_HIT: std::sync::LazyLock<metrics::Counter> =
    std::sync::LazyLock::new(|| metrics::counter!("acl.token.cache_hit"));
static CACHE_MISS: std::sync::LazyLock<metrics::Counter> =
    std::sync::LazyLock::new(|| metrics::counter!("acl.token.cache_miss"));
static RESOLVE: std::sync::LazyLock<metrics::Histogram> =
    std::sync::LazyLock::new(|| metrics::histogram!("acl.ResolveToken"));

/// Nanoseconds since the Unix epoch now, as token expiry counts time.
pub fn now_ns() -> u64 {
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
    /// The agent's own tokens, as they are now.
    tokens: Arc<Tokens>,
    datacenter: String,
    /// Callers resolved since the ACL tables last changed, by secret: resolving merges
    /// every policy of a token, which a request should not pay for each time.
    resolved: Arc<Mutex<HashMap<String, Resolution>>>,
    /// What the primary said of tokens this secondary does not hold.
    remote: Arc<PrimarySaid>,
    /// How to ask the primary (set by the gateway on a server of a secondary).
    resolver: Arc<OnceLock<Arc<dyn RemoteTokens>>>,
}

/// How a server of a secondary datacenter asks the primary what a token may do.
pub trait RemoteTokens: Send + Sync + 'static {
    /// What the primary says `secret` may do (`Ok(None)`: it knows no such token), or
    /// why it could not be asked by `deadline`.
    fn resolve<'a>(
        &'a self,
        secret: &'a str,
        deadline: Instant,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Grant>, String>> + Send + 'a>>;
}

impl std::fmt::Debug for dyn RemoteTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemoteTokens")
    }
}

/// How long a server waits for the primary to resolve a token.
pub const REMOTE_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a decision of `down_policy` stands before the primary is asked again.
const DOWN_RETRY: Duration = Duration::from_secs(5);

/// A caller as resolved at an ACL index, until its token expires.
#[derive(Debug, Clone)]
struct Resolution {
    acl_index: u64,
    expires: Option<u64>,
    caller: Caller,
}

/// The most resolved callers a server keeps (all are dropped when it is full).
const MOST_RESOLVED: usize = 4096;

impl Acl {
    pub(crate) fn new(config: Arc<AclConfig>, tokens: Arc<Tokens>, datacenter: String) -> Acl {
        Acl {
            config,
            tokens,
            datacenter,
            resolved: Arc::default(),
            remote: Arc::default(),
            resolver: Arc::default(),
        }
    }

    /// Lets this server ask the primary about tokens it does not hold. Set once.
    pub(crate) fn set_remote(&self, resolver: Arc<dyn RemoteTokens>) {
        let _ = self.resolver.set(resolver);
    }

    /// Whether `principal`'s token must be asked of the primary: this is a server of a
    /// secondary that can ask, its tables do not hold the token, and they do not hold
    /// the primary's tokens either (by token replication).
    fn asks_primary<'p>(&self, catalog: &Catalog, principal: &'p Principal) -> Option<&'p str> {
        let Principal::Token(secret) = principal else {
            return None;
        };
        self.resolver.get()?;
        let primary = self.config.primary_datacenter.as_deref()?;
        if primary == self.datacenter {
            return None;
        }
        let acl_index = catalog.read(|s| s.indexes().acl);
        let cached = self
            .resolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&**secret)
            .is_some_and(|r| r.acl_index == acl_index);
        if cached {
            return None;
        }
        let held = catalog.read(|s| s.acl().resolve(secret, now_ns(), &self.datacenter));
        (held.is_none() && !self.copies_tokens(catalog)).then_some(&**secret)
    }

    /// Whether this server's tables hold the primary's tokens, copied by token
    /// replication: then a token they do not hold is unknown, whatever the primary said
    /// of it before.
    fn copies_tokens(&self, catalog: &Catalog) -> bool {
        self.config.token_replication && catalog.read(|s| s.acl().holds_global_tokens())
    }

    /// Before a request is checked: on a server of a secondary, a token its tables do
    /// not hold is asked of the primary (unless asked within `token_ttl`), so that the
    /// check that follows finds the answer, or what `down_policy` decided.
    pub(crate) async fn prepare(&self, catalog: &Catalog, principal: &Principal) {
        let Some(secret) = self.asks_primary(catalog, principal) else {
            return;
        };
        if self.remote.get(secret).is_some_and(|(fresh, _)| fresh) {
            return;
        }
        let Some(resolver) = self.resolver.get() else {
            return;
        };
        match resolver
            .resolve(secret, Instant::now() + REMOTE_RESOLVE_TIMEOUT)
            .await
        {
            Ok(grant) => self
                .remote
                .put(secret, Said::Primary(grant), self.config.token_ttl),
            Err(e) => {
                tracing::warn!(error = %e, down_policy = ?self.config.down_policy, "the primary datacenter could not resolve a token; acl.down_policy decides");
                let decided = match self.config.down_policy {
                    DownPolicy::Allow => Said::Down(true),
                    DownPolicy::Deny => Said::Down(false),
                    DownPolicy::ExtendCache | DownPolicy::AsyncCache => {
                        match self.remote.get(secret) {
                            Some((_, Said::Primary(grant))) => Said::Primary(grant),
                            _ => Said::Down(false),
                        }
                    }
                };
                self.remote.put(secret, decided, DOWN_RETRY);
            }
        }
    }

    /// What the primary said of `secret` (or `down_policy` decided), if anything.
    fn remote_caller(&self, secret: &str) -> Option<Result<Caller, NotFound>> {
        self.resolver.get()?;
        let (_, said) = self.remote.get(secret)?;
        Some(match said {
            Said::Primary(Some(grant)) => Ok(grant.caller(&self.config)),
            Said::Primary(None) => Err(NotFound),
            Said::Down(allow) => Ok(down_caller(allow)),
        })
    }

    /// What `principal` may do, as a server tells a client agent; `None` for a token it
    /// does not know. The agent itself is anonymous to another agent.
    pub(crate) fn grant(&self, catalog: &Catalog, principal: &Principal) -> Option<Grant> {
        let secret: &str = match principal {
            Principal::Token(secret) => secret,
            Principal::Anonymous | Principal::Agent => ANONYMOUS_SECRET,
        };
        match catalog.read(|s| s.acl().resolve(secret, now_ns(), &self.datacenter)) {
            Some(r) => Some(Grant {
                accessor_id: r.accessor_id,
                management: r.management,
                rules: (*r.rules).clone(),
            }),
            None if secret == ANONYMOUS_SECRET => Some(Grant {
                accessor_id: ANONYMOUS_ACCESSOR.to_owned(),
                management: false,
                rules: Rules::default(),
            }),
            // On a secondary: what the primary said (a `down_policy` decision to allow
            // is passed on as a management grant; one to deny as an unknown token).
            None if self.copies_tokens(catalog) => None,
            None => match self.resolver.get().and(self.remote.get(secret)) {
                Some((_, Said::Primary(grant))) => grant,
                Some((_, Said::Down(true))) => Some(Grant {
                    accessor_id: ANONYMOUS_ACCESSOR.to_owned(),
                    management: true,
                    rules: Rules::default(),
                }),
                Some((_, Said::Down(false))) | None => None,
            },
        }
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
        let now = now_ns();
        let acl_index = catalog.read(|s| s.indexes().acl);
        {
            let cache = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = cache.get(secret)
                && r.acl_index == acl_index
                && r.expires.is_none_or(|e| now < e)
            {
                CACHE_HIT.increment(1);
                return Ok(Some(r.caller.clone()));
            }
        }
        CACHE_MISS.increment(1);
        let start = std::time::Instant::now();
        let resolved = catalog.read(|s| s.acl().resolve(secret, now, &self.datacenter));
        RESOLVE.record(start.elapsed().as_secs_f64() * 1000.0);
        let expires = resolved.as_ref().and_then(|r| r.expires);
        let default_allow = self.config.default_allow;
        let (accessor_id, authorizer) = match resolved {
            Some(r) if r.management => (r.accessor_id, Authorizer::management()),
            Some(r) => (r.accessor_id, Authorizer::new(r.rules, default_allow)),
            // Before the leader has written the anonymous token: the default policy.
            None if matches!(principal, Principal::Anonymous) => (
                ANONYMOUS_ACCESSOR.to_owned(),
                Authorizer::default_only(default_allow),
            ),
            // Not here: what the primary said of it, on a secondary (not cached here:
            // that answer has its own lifetime).
            None if self.copies_tokens(catalog) => return Err(NotFound),
            None => {
                return self
                    .remote_caller(secret)
                    .unwrap_or(Err(NotFound))
                    .map(Some);
            }
        };
        let caller = Caller {
            accessor_id: accessor_id.into(),
            authorizer,
            key_list: self.config.key_list,
        };
        let mut cache = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MOST_RESOLVED {
            cache.clear();
        }
        cache.insert(
            secret.to_owned(),
            Resolution {
                acl_index,
                expires,
                caller: caller.clone(),
            },
        );
        Ok(Some(caller))
    }

    /// The token this server presents for its own requests to other servers.
    pub(crate) fn agent_token(&self) -> Option<String> {
        self.tokens.agent()
    }
}

/// What a token may do, as a server sends it to a client agent (and the primary to a
/// secondary's server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    accessor_id: String,
    management: bool,
    rules: Rules,
}

impl Grant {
    fn caller(&self, config: &AclConfig) -> Caller {
        Caller {
            accessor_id: self.accessor_id.as_str().into(),
            authorizer: if self.management {
                Authorizer::management()
            } else {
                Authorizer::new(Arc::new(self.rules.clone()), config.default_allow)
            },
            key_list: config.key_list,
        }
    }
}

/// Why an agent could not say what a token may do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is unknown or expired (Consul's text).
    #[error("ACL not found")]
    NotFound,
}

/// What a secondary's server last heard from the primary about a token, or what
/// `down_policy` decided when it could not ask.
#[derive(Debug, Clone)]
enum Said {
    /// The primary's answer (`None`: no such token).
    Primary(Option<Grant>),
    /// `down_policy`'s decision: allow everything, or nothing.
    Down(bool),
}

/// A secondary server's memory of [`Said`], by secret, each until its own expiry (past
/// which it is still consulted by checks that cannot wait for the primary).
#[derive(Debug, Default)]
struct PrimarySaid {
    said: Mutex<HashMap<String, (Instant, Said)>>,
}

impl PrimarySaid {
    /// What was said of `secret`, and whether it is still fresh.
    fn get(&self, secret: &str) -> Option<(bool, Said)> {
        let said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        let (until, s) = said.get(secret)?;
        Some((Instant::now() < *until, s.clone()))
    }

    /// Remembers `s` for `ttl`; the entry closest to expiry goes when full.
    fn put(&self, secret: &str, s: Said, ttl: Duration) {
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        if said.len() >= MOST_REMEMBERED && !said.contains_key(secret) {
            let first = said
                .iter()
                .min_by_key(|(_, (until, _))| *until)
                .map(|(k, _)| k.clone());
            if let Some(k) = first {
                said.remove(&k);
            }
        }
        said.insert(secret.to_owned(), (Instant::now() + ttl, s));
    }
}

/// The most tokens a client agent remembers.
const MOST_REMEMBERED: usize = 4096;

/// A client agent's memory of what its servers said tokens may do, for `token_ttl`
/// (longer when the servers cannot be reached and `down_policy` is `extend-cache`).
#[derive(Debug, Default)]
pub(crate) struct Remembered {
    grants: Mutex<HashMap<Option<String>, Heard>>,
}

/// When a server answered about a token, and what it said (`None`: unknown token).
type Heard = (Instant, Option<Grant>);

impl Remembered {
    /// What the servers last said of `token`, if within `ttl` (or at any age).
    pub(crate) fn get(
        &self,
        token: &Option<String>,
        ttl: Option<Duration>,
    ) -> Option<Option<Grant>> {
        let grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        let (at, grant) = grants.get(token)?;
        ttl.is_none_or(|ttl| at.elapsed() <= ttl)
            .then(|| grant.clone())
    }

    /// Remembers what the servers said of `token`; the oldest entry goes when full.
    pub(crate) fn put(&self, token: Option<String>, grant: Option<Grant>) {
        let mut grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        if grants.len() >= MOST_REMEMBERED && !grants.contains_key(&token) {
            let oldest = grants
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                grants.remove(&k);
            }
        }
        grants.insert(token, (Instant::now(), grant));
    }
}

/// The caller a client agent settles on for `token`: what the servers said (`fresh`),
/// else, when they could not be asked, what `down_policy` says.
pub(crate) fn settle(
    config: &AclConfig,
    fresh: Option<Option<Grant>>,
    remembered: &Remembered,
    token: &Option<String>,
) -> Result<Caller, AuthError> {
    let grant = match fresh {
        Some(grant) => grant,
        None => match config.down_policy {
            DownPolicy::Allow => return Ok(down_caller(true)),
            DownPolicy::Deny => return Ok(down_caller(false)),
            DownPolicy::ExtendCache | DownPolicy::AsyncCache => match remembered.get(token, None) {
                Some(grant) => grant,
                None => return Ok(down_caller(false)),
            },
        },
    };
    grant.map(|g| g.caller(config)).ok_or(AuthError::NotFound)
}

fn down_caller(allow: bool) -> Caller {
    Caller {
        accessor_id: ANONYMOUS_ACCESSOR.into(),
        authorizer: Authorizer::default_only(allow),
        key_list: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::acl::{Access, Resource};

    fn grant(rules: &str) -> Grant {
        Grant {
            accessor_id: "a1".into(),
            management: false,
            rules: Rules::parse(rules).unwrap(),
        }
    }

    #[test]
    fn grants_survive_the_wire() {
        let g = grant(r#"key_prefix "app/" { policy = "write" }"#);
        let back: Grant = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
        assert_eq!(back, g);
        let c = back.caller(&AclConfig::default());
        assert!(c.may(Resource::Key, "app/x", Access::Write));
        assert!(!c.may(Resource::Key, "other", Access::Read), "default deny");
    }

    #[test]
    fn down_policy_decides_when_the_servers_cannot_be_asked() {
        let token = Some("s1".to_owned());
        let remembered = Remembered::default();
        let mut config = AclConfig::default();
        let c = settle(&config, None, &remembered, &token).unwrap();
        assert!(
            !c.may(Resource::Node, "n", Access::Read),
            "extend-cache, nothing remembered"
        );
        remembered.put(
            token.clone(),
            Some(grant(r#"node "n" { policy = "read" }"#)),
        );
        let c = settle(&config, None, &remembered, &token).unwrap();
        assert!(
            c.may(Resource::Node, "n", Access::Read),
            "extend-cache keeps what it knew"
        );
        config.down_policy = DownPolicy::Deny;
        let c = settle(&config, None, &remembered, &token).unwrap();
        assert!(!c.may(Resource::Node, "n", Access::Read));
        config.down_policy = DownPolicy::Allow;
        let c = settle(&config, None, &remembered, &token).unwrap();
        assert!(c.may(Resource::Operator, "", Access::Write));
        assert_eq!(
            settle(&config, Some(None), &remembered, &token).err(),
            Some(AuthError::NotFound),
            "a token the servers do not know"
        );
    }

    #[test]
    fn the_memory_is_bounded() {
        let remembered = Remembered::default();
        for i in 0..MOST_REMEMBERED + 10 {
            remembered.put(Some(format!("t{i}")), None);
        }
        assert_eq!(remembered.grants.lock().unwrap().len(), MOST_REMEMBERED);
    }
}
