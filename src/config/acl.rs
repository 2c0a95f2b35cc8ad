//! `acl`: whether ACLs are on, what no rule decides, what happens when tokens cannot be
//! resolved, and the agent's own tokens (Consul's keys, old names included).

use std::sync::Arc;
use std::time::Duration;

use lan::{AclConfig, DownPolicy};

use super::problem::{Problem, problem};
use super::raw::{RawAcl, RawConfig};

/// The ACL settings, checked; `None` when ACLs are off.
pub(super) fn settings(
    m: &RawConfig,
    dev: bool,
    problems: &mut Vec<Problem>,
) -> Option<Arc<AclConfig>> {
    let acl = m.acl.as_ref()?;
    let before = problems.len();
    let mut fail = |key: &str, what: String| {
        problems.push(problem(None, &format!("acl.{key}"), &what));
    };
    let default_allow = match acl.default_policy.as_deref() {
        None | Some("allow") => true,
        Some("deny") => false,
        Some(other) => {
            fail(
                "default_policy",
                format!("must be \"allow\" or \"deny\", not {other:?}"),
            );
            true
        }
    };
    let down_policy = match acl.down_policy.as_deref() {
        None | Some("extend-cache") => DownPolicy::ExtendCache,
        Some("async-cache") => DownPolicy::AsyncCache,
        Some("allow") => DownPolicy::Allow,
        Some("deny") => DownPolicy::Deny,
        Some(other) => {
            fail(
                "down_policy",
                format!(
                    "must be \"allow\", \"deny\", \"extend-cache\" or \"async-cache\", not {other:?}"
                ),
            );
            DownPolicy::ExtendCache
        }
    };
    let token_ttl = match &acl.token_ttl {
        None => Duration::from_secs(30),
        Some(text) => match catalog::duration::parse(text) {
            Ok(d) => d,
            Err(_) => {
                fail("token_ttl", format!("{text:?} is not a duration"));
                Duration::from_secs(30)
            }
        },
    };
    let mut duration = |key: &str, text: &Option<String>, default: Duration| match text {
        None => default,
        Some(text) => match catalog::duration::parse(text) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                fail(key, format!("{text:?} is not a positive duration"));
                default
            }
        },
    };
    let token_min_expiration_ttl = duration(
        "token_min_expiration_ttl",
        &acl.token_min_expiration_ttl,
        lan::acl::TOKEN_MIN_EXPIRATION_TTL,
    );
    let token_max_expiration_ttl = duration(
        "token_max_expiration_ttl",
        &acl.token_max_expiration_ttl,
        lan::acl::TOKEN_MAX_EXPIRATION_TTL,
    );
    if token_min_expiration_ttl > token_max_expiration_ttl {
        fail(
            "token_min_expiration_ttl",
            "must not be more than token_max_expiration_ttl".into(),
        );
    }
    // `-dev` keeps nothing on disk, tokens included (as for maintenance and Raft).
    let data_dir = m.data_dir.as_deref().filter(|d| !d.is_empty() && !dev);
    let token_persistence = match (acl.enable_token_persistence, data_dir) {
        (Some(true), Some(dir)) => Some(std::path::Path::new(dir).join(lan::TOKEN_FILE)),
        (Some(true), None) if !dev => {
            fail(
                "enable_token_persistence",
                "needs data_dir, where the tokens are kept".into(),
            );
            None
        }
        _ => None,
    };
    let tokens = acl.tokens.clone().unwrap_or_default();
    let initial_management = tokens
        .initial_management
        .or(tokens.master)
        .filter(|t| !t.is_empty());
    if let Some(t) = &initial_management
        && !catalog::uuid::is_uuid(t)
    {
        fail(
            "tokens.initial_management",
            "must be a UUID (it becomes the SecretID of a management token)".into(),
        );
    }
    if acl.enabled != Some(true) {
        return None;
    }
    if problems.len() > before {
        return None;
    }
    let own = m
        .datacenter
        .as_deref()
        .unwrap_or("dc1")
        .to_ascii_lowercase();
    let primary_datacenter = m
        .primary_datacenter
        .as_deref()
        .map(str::to_ascii_lowercase)
        .filter(|p| !p.is_empty() && *p != own);
    Some(Arc::new(AclConfig {
        default_allow,
        down_policy,
        key_list: acl.enable_key_list_policy.unwrap_or(false),
        token_ttl,
        agent_token: tokens.agent.filter(|t| !t.is_empty()),
        default_token: tokens.default.filter(|t| !t.is_empty()),
        dns_token: tokens.dns.filter(|t| !t.is_empty()),
        initial_management,
        primary_datacenter,
        replication_token: tokens.replication.filter(|t| !t.is_empty()),
        token_replication: acl.enable_token_replication.unwrap_or(false),
        token_persistence,
        token_min_expiration_ttl,
        token_max_expiration_ttl,
    }))
}

/// Merges `later` into `acl`: keys it sets win, `tokens` key by key.
pub(super) fn merge(acl: &mut Option<RawAcl>, later: Option<RawAcl>) {
    let Some(l) = later else {
        return;
    };
    let a = acl.get_or_insert_with(RawAcl::default);
    macro_rules! take {
        ($($field:ident),*) => { $( if l.$field.is_some() { a.$field = l.$field; } )* };
    }
    take!(
        enabled,
        default_policy,
        down_policy,
        enable_key_list_policy,
        enable_token_persistence,
        enable_token_replication,
        token_ttl,
        policy_ttl,
        role_ttl,
        token_min_expiration_ttl,
        token_max_expiration_ttl
    );
    if let Some(t) = l.tokens {
        let tokens = a.tokens.get_or_insert_with(Default::default);
        macro_rules! token {
            ($($field:ident),*) => { $( if t.$field.is_some() { tokens.$field = t.$field; } )* };
        }
        token!(
            initial_management,
            master,
            agent,
            agent_recovery,
            agent_master,
            default,
            replication,
            dns,
            config_file_service_registration
        );
    }
}
