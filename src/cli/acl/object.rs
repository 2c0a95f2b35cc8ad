//! What the `policy`, `role` and `token` verbs share about the objects they act on:
//! naming one by a unique ID prefix or by name, linking policies and roles by either,
//! and printing one or a list as `-format` asks.

use serde::Serialize;

use super::{Format, Output, api_error, info, unique_prefix};
use proconsul::client::{AclLink, AgentClient, ClientError};

/// A kind of ACL object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Object {
    Policy,
    Role,
    Token,
}

impl Object {
    /// Its name in Consul's messages.
    fn word(self) -> &'static str {
        match self {
            Object::Policy => "policy",
            Object::Role => "role",
            Object::Token => "token",
        }
    }

    /// How Consul's messages name its ID.
    fn id_words(self) -> &'static str {
        match self {
            Object::Policy => "policy ID",
            Object::Role => "role ID",
            Object::Token => "token Accessor ID",
        }
    }

    /// Every ID of this kind.
    async fn ids(self, agent: &AgentClient) -> Result<Vec<String>, ClientError> {
        Ok(match self {
            Object::Policy => agent
                .acl_policy_list()
                .await?
                .into_iter()
                .map(|p| p.id)
                .collect(),
            Object::Role => agent
                .acl_role_list()
                .await?
                .into_iter()
                .map(|r| r.id)
                .collect(),
            Object::Token => {
                let tokens = agent.acl_token_list().await?;
                tokens.into_iter().map(|t| t.accessor_id).collect()
            }
        })
    }

    /// The ID of the one named `name` (tokens have no names: `None`).
    async fn id_by_name(
        self,
        agent: &AgentClient,
        name: &str,
    ) -> Option<Result<String, ClientError>> {
        Some(match self {
            Object::Policy => agent.acl_policy_read_by_name(name).await.map(|p| p.id),
            Object::Role => agent.acl_role_read_by_name(name).await.map(|r| r.id),
            Object::Token => return None,
        })
    }
}

/// The ID a whole ID or a unique prefix of one names.
pub(super) async fn complete_id(
    agent: &AgentClient,
    object: Object,
    partial: &str,
) -> Result<String, String> {
    if partial.len() == 36 {
        return Ok(partial.to_owned());
    }
    let ids = object.ids(agent).await.map_err(|e| api_error(&e))?;
    unique_prefix(partial, &ids, object.word())
}

/// The object `-id` (a prefix) or else `-name` names, with Consul's errors.
pub(super) async fn chosen(
    agent: &AgentClient,
    object: Object,
    id: Option<&str>,
    name: Option<&str>,
) -> Result<String, String> {
    let found = match (id, name) {
        (Some(id), _) => complete_id(agent, object, id).await,
        (None, Some(name)) => match object.id_by_name(agent, name).await {
            Some(Ok(id)) => Ok(id),
            Some(Err(ClientError::Http { status: 404, .. })) => {
                Err(format!("No such {} with name {name}", object.word()))
            }
            Some(Err(other)) => Err(api_error(&other)),
            None => Err("No name specified".into()),
        },
        (None, None) => Err("No name specified".into()),
    };
    found.map_err(|e| format!("Error determining {}: {e}", object.id_words()))
}

/// `-id` and `-name` as given (empty is not given); `missing` when neither is.
pub(super) fn id_or_name(
    id: Option<String>,
    name: Option<String>,
    missing: &str,
) -> Result<(Option<String>, Option<String>), String> {
    let (id, name) = (given(id), given(name));
    if id.is_none() && name.is_none() {
        return Err(missing.into());
    }
    Ok((id, name))
}

/// A flag's value, unless it is empty.
pub(super) fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// Links to objects given by name (as given) and by ID prefix (completed).
pub(super) async fn links(
    agent: &AgentClient,
    object: Object,
    names: &[String],
    ids: &[String],
) -> Result<Vec<AclLink>, String> {
    let mut links: Vec<AclLink> = names.iter().map(AclLink::by_name).collect();
    for partial in ids {
        let id = complete_id(agent, object, partial)
            .await
            .map_err(|e| format!("Error resolving {} ID {partial}: {e}", object.word()))?;
        links.push(AclLink::by_id(id));
    }
    Ok(links)
}

/// Prints `value` as `-format` asks: `pretty` gives Consul's block (with `-meta`).
pub(super) fn show<T: Serialize>(
    value: &T,
    output: &Output,
    format: Format,
    pretty: fn(&T, bool) -> String,
) {
    info(&match format {
        Format::Pretty => pretty(value, output.meta),
        Format::Json => super::format::json(value),
    });
}
