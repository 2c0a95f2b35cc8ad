//! The tokens an agent uses for itself (Consul's `acl.tokens.*`), changeable while it
//! runs through `PUT /v1/agent/token/:type`.
//!
//! They start as the configuration says. With `acl.enable_token_persistence`, the ones
//! set through the API are also written to `<data_dir>/acl-tokens.json` (mode 0600,
//! written whole under a temporary name and renamed) and read back at the next start,
//! where they win over the configuration's, as Consul's do; a token unset through the
//! API leaves the file, so the configuration's comes back after a restart. Without
//! persistence they live in memory only. The file's keys are Consul's, so an agent's
//! data directory reads the same to an operator who knows Consul's.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::acl::AclConfig;

/// The file's name in the data dir (Consul's).
pub const TOKEN_FILE: &str = "acl-tokens.json";

/// One of the tokens an agent keeps for itself (Consul's `acl.tokens.*` and the types of
/// `PUT /v1/agent/token/:type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `default`: what requests that present no token act as.
    Default,
    /// `agent`: what the agent's own requests present (else the default token).
    Agent,
    /// `agent_recovery`: kept, not used (proconsul has no offline agent access).
    AgentRecovery,
    /// `replication`: what a secondary's servers present to read the primary's ACL
    /// tables (read at start).
    Replication,
    /// `config_file_service_registration`: kept, not used by this agent.
    ConfigFileServiceRegistration,
    /// `dns`: what DNS questions act as (else the default token).
    Dns,
}

impl TokenKind {
    const ALL: [TokenKind; 6] = [
        TokenKind::Default,
        TokenKind::Agent,
        TokenKind::AgentRecovery,
        TokenKind::Replication,
        TokenKind::ConfigFileServiceRegistration,
        TokenKind::Dns,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Its name in Consul's configuration and in the token file.
    pub fn name(self) -> &'static str {
        match self {
            TokenKind::Default => "default",
            TokenKind::Agent => "agent",
            TokenKind::AgentRecovery => "agent_recovery",
            TokenKind::Replication => "replication",
            TokenKind::ConfigFileServiceRegistration => "config_file_service_registration",
            TokenKind::Dns => "dns",
        }
    }
}

/// A token held, and whether it came through the API (only those are persisted).
#[derive(Clone)]
struct Held {
    secret: String,
    from_api: bool,
}

/// The tokens this agent uses for itself. Its `Debug` form shows which are set, never
/// their values.
#[derive(Default)]
pub struct Tokens {
    slots: RwLock<[Option<Held>; 6]>,
    /// Where API-set tokens are kept, with persistence on.
    file: Option<PathBuf>,
    /// Held while the file is written, so that two changes cannot interleave their
    /// writes and the file always holds the last change.
    writing: Mutex<()>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        let mut d = f.debug_struct("Tokens");
        for kind in TokenKind::ALL {
            let shown = slots[kind.index()].as_ref().map(|_| "redacted");
            d.field(kind.name(), &shown);
        }
        d.field("file", &self.file).finish()
    }
}

/// The token file's shape (Consul's `persistedTokens`); its own type, so that the
/// in-memory one may change freely. Unknown keys are ignored, as Consul does.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replication: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent_recovery: Option<String>,
    /// The name before Consul 1.11, still read.
    #[serde(default, skip_serializing)]
    agent_master: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config_file_service_registration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dns: Option<String>,
}

impl Persisted {
    fn slot(&mut self, kind: TokenKind) -> &mut Option<String> {
        match kind {
            TokenKind::Default => &mut self.default,
            TokenKind::Agent => &mut self.agent,
            TokenKind::AgentRecovery => &mut self.agent_recovery,
            TokenKind::Replication => &mut self.replication,
            TokenKind::ConfigFileServiceRegistration => &mut self.config_file_service_registration,
            TokenKind::Dns => &mut self.dns,
        }
    }
}

impl Tokens {
    /// The tokens the configuration gives (none when ACLs are off), with those a
    /// previous run set through the API in their place when persistence is on. A token
    /// file that cannot be read is reported in the log and the configuration's tokens
    /// are used, as Consul does.
    pub fn new(config: Option<&AclConfig>) -> Tokens {
        let Some(c) = config else {
            return Tokens::default();
        };
        let mut tokens = Tokens {
            file: c.token_persistence.clone(),
            ..Tokens::default()
        };
        let configured = [
            (TokenKind::Default, &c.default_token),
            (TokenKind::Agent, &c.agent_token),
            (TokenKind::Replication, &c.replication_token),
            (TokenKind::Dns, &c.dns_token),
        ];
        {
            let slots = tokens.slots.get_mut().unwrap_or_else(|e| e.into_inner());
            for (kind, token) in configured {
                slots[kind.index()] = token.clone().filter(|t| !t.is_empty()).map(|secret| Held {
                    secret,
                    from_api: false,
                });
            }
        }
        let Some(path) = &tokens.file else {
            return tokens;
        };
        let mut persisted = match load(path) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unable to load persisted tokens");
                return tokens;
            }
        };
        if persisted.agent_recovery.is_none() {
            persisted.agent_recovery = persisted.agent_master.take();
        }
        let slots = tokens.slots.get_mut().unwrap_or_else(|e| e.into_inner());
        for kind in TokenKind::ALL {
            let Some(secret) = persisted.slot(kind).take().filter(|t| !t.is_empty()) else {
                continue;
            };
            if slots[kind.index()].is_some() {
                tracing::warn!(
                    token = kind.name(),
                    "token present in both the configuration and the persisted token store, using the persisted token"
                );
            }
            slots[kind.index()] = Some(Held {
                secret,
                from_api: true,
            });
        }
        tokens
    }

    /// Replaces one token, as `PUT /v1/agent/token/:type` does; an empty one unsets it,
    /// as Consul's store does. With persistence on, the file is written first, so a
    /// failed write changes nothing; this then blocks on the disk, so call it off the
    /// async runtime.
    pub fn set(&self, kind: TokenKind, token: Option<String>) -> std::io::Result<()> {
        let held = token.filter(|t| !t.is_empty()).map(|secret| Held {
            secret,
            from_api: true,
        });
        let Some(path) = &self.file else {
            self.slots.write().unwrap_or_else(|e| e.into_inner())[kind.index()] = held;
            return Ok(());
        };
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = self.slots.read().unwrap_or_else(|e| e.into_inner()).clone();
        next[kind.index()] = held;
        let mut persisted = Persisted::default();
        for k in TokenKind::ALL {
            if let Some(h) = next[k.index()].as_ref().filter(|h| h.from_api) {
                *persisted.slot(k) = Some(h.secret.clone());
            }
        }
        save(path, &persisted)?;
        *self.slots.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    /// One token as set.
    pub fn get(&self, kind: TokenKind) -> Option<String> {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        slots[kind.index()].as_ref().map(|h| h.secret.clone())
    }

    /// What the agent's own requests present: the agent token, else the default one
    /// (Consul's fallback).
    pub fn agent(&self) -> Option<String> {
        self.get(TokenKind::Agent)
            .or_else(|| self.get(TokenKind::Default))
    }

    /// What requests that present no token act as.
    pub fn default_token(&self) -> Option<String> {
        self.get(TokenKind::Default)
    }

    /// What DNS questions act as: the DNS token, else the default one.
    pub fn dns(&self) -> Option<String> {
        self.get(TokenKind::Dns)
            .or_else(|| self.get(TokenKind::Default))
    }
}

/// The token file's contents; a missing file holds nothing.
fn load(path: &Path) -> std::io::Result<Persisted> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Persisted::default()),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// Writes the token file (mode 0600), replacing the previous one atomically.
fn save(path: &Path, persisted: &Persisted) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = serde_json::to_vec(persisted).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_tokens_change_at_runtime_and_fall_back_to_the_default() {
        let config = AclConfig {
            agent_token: Some("a".into()),
            ..AclConfig::default()
        };
        let tokens = Tokens::new(Some(&config));
        assert_eq!(tokens.agent().as_deref(), Some("a"));
        assert_eq!(tokens.default_token(), None);
        tokens.set(TokenKind::Default, Some("d".into())).unwrap();
        assert_eq!(
            tokens.dns().as_deref(),
            Some("d"),
            "dns falls back to default"
        );
        tokens.set(TokenKind::Agent, Some(String::new())).unwrap();
        assert_eq!(
            tokens.agent().as_deref(),
            Some("d"),
            "agent falls back to default"
        );
        tokens.set(TokenKind::Dns, Some("n".into())).unwrap();
        assert_eq!(tokens.dns().as_deref(), Some("n"));
        let shown = format!("{tokens:?}");
        assert!(
            !shown.contains("\"d\"") && !shown.contains("\"n\""),
            "{shown}"
        );
    }

    fn persisting(dir: &Path, agent: Option<&str>) -> AclConfig {
        AclConfig {
            agent_token: agent.map(str::to_owned),
            default_token: Some("config-default".into()),
            token_persistence: Some(dir.join(TOKEN_FILE)),
            ..AclConfig::default()
        }
    }

    #[test]
    fn api_set_tokens_outlive_a_restart_and_win_over_the_configuration() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = persisting(dir.path(), Some("config-agent"));
        let first = Tokens::new(Some(&config));
        first
            .set(TokenKind::Agent, Some("api-agent".into()))
            .unwrap();
        first.set(TokenKind::Dns, Some("api-dns".into())).unwrap();

        let path = dir.path().join(TOKEN_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("config-default"),
            "only API-set tokens are kept: {text}"
        );

        let second = Tokens::new(Some(&config));
        assert_eq!(second.agent().as_deref(), Some("api-agent"));
        assert_eq!(second.dns().as_deref(), Some("api-dns"));
        assert_eq!(second.default_token().as_deref(), Some("config-default"));

        // Unset through the API: the configuration's returns after the next start.
        second.set(TokenKind::Agent, None).unwrap();
        assert_eq!(second.agent().as_deref(), Some("config-default"));
        let third = Tokens::new(Some(&config));
        assert_eq!(third.get(TokenKind::Agent).as_deref(), Some("config-agent"));
    }

    #[test]
    fn without_persistence_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let config = AclConfig {
            token_persistence: None,
            ..persisting(dir.path(), None)
        };
        Tokens::new(Some(&config))
            .set(TokenKind::Agent, Some("api-agent".into()))
            .unwrap();
        assert!(!dir.path().join(TOKEN_FILE).exists());
        assert_eq!(Tokens::new(Some(&config)).get(TokenKind::Agent), None);
    }

    #[test]
    fn a_damaged_file_falls_back_to_the_configuration_and_a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKEN_FILE), "{\"agent\": 3").unwrap();
        let config = persisting(dir.path(), Some("config-agent"));
        let tokens = Tokens::new(Some(&config));
        assert_eq!(tokens.agent().as_deref(), Some("config-agent"));

        // Consul's older key is read too.
        std::fs::write(
            dir.path().join(TOKEN_FILE),
            r#"{"agent_master":"old","unknown":"x"}"#,
        )
        .unwrap();
        let tokens = Tokens::new(Some(&config));
        assert_eq!(tokens.get(TokenKind::AgentRecovery).as_deref(), Some("old"));

        let blocked = AclConfig {
            // A path under a regular file cannot be written.
            token_persistence: Some(dir.path().join(TOKEN_FILE).join("x")),
            ..config
        };
        let tokens = Tokens::new(Some(&blocked));
        assert!(tokens.set(TokenKind::Agent, Some("new".into())).is_err());
        assert_eq!(tokens.agent().as_deref(), Some("config-agent"));
    }
}
