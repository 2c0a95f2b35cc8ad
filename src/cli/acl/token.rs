//! `acl token create|list|read|update|delete|clone`.

use clap::{ArgAction, Args, Subcommand};

use super::object::{self, Object, chosen, given};
use super::{Format, Output, agent, api_error, format, info, node_identities, service_identities};
use crate::cli::ClientArgs;
use proconsul::client::{AclLink, AclToken, AgentClient};

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Creates a token
    Create(CreateArgs),
    /// Lists every token
    List(ListArgs),
    /// Reads one token
    Read(ReadArgs),
    /// Changes a token
    Update(UpdateArgs),
    /// Deletes a token
    Delete(DeleteArgs),
    /// Copies a token under new secrets
    Clone(CloneArgs),
}

/// The links and identities a token is given (`create`, `update`).
#[derive(Args, Debug)]
pub struct Grants {
    /// ID (or unique ID prefix) of a policy to link; repeatable
    #[arg(long = "policy-id")]
    pub policy_id: Vec<String>,
    /// Name of a policy to link; repeatable
    #[arg(long = "policy-name")]
    pub policy_name: Vec<String>,
    /// ID (or unique ID prefix) of a role to link; repeatable
    #[arg(long = "role-id")]
    pub role_id: Vec<String>,
    /// Name of a role to link; repeatable
    #[arg(long = "role-name")]
    pub role_name: Vec<String>,
    /// A service identity, NAME or NAME:DC1,DC2; repeatable
    #[arg(long = "service-identity")]
    pub service_identity: Vec<String>,
    /// A node identity, NAME:DC; repeatable
    #[arg(long = "node-identity")]
    pub node_identity: Vec<String>,
}

impl Grants {
    fn is_empty(&self) -> bool {
        self.policy_id.is_empty()
            && self.policy_name.is_empty()
            && self.role_id.is_empty()
            && self.role_name.is_empty()
            && self.service_identity.is_empty()
            && self.node_identity.is_empty()
    }

    /// The policy links: names as given, IDs completed from their prefixes.
    async fn policies(&self, agent: &AgentClient) -> Result<Vec<AclLink>, String> {
        object::links(agent, Object::Policy, &self.policy_name, &self.policy_id).await
    }

    /// The role links: names as given, IDs completed from their prefixes.
    async fn roles(&self, agent: &AgentClient) -> Result<Vec<AclLink>, String> {
        object::links(agent, Object::Role, &self.role_name, &self.role_id).await
    }
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub grants: Grants,
    /// A description of the token
    #[arg(long, default_value = "")]
    pub description: String,
    /// Makes the token local to this datacenter
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub local: bool,
    /// How long the token is valid (a Go duration, e.g. 1h)
    #[arg(long = "expires-ttl")]
    pub expires_ttl: Option<String>,
    /// The token's Accessor ID (a UUID; default: one is made)
    #[arg(long)]
    pub accessor: Option<String>,
    /// The token's Secret ID (a UUID; default: one is made)
    #[arg(long)]
    pub secret: Option<String>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct ReadArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: Output,
    /// Accessor ID (or unique prefix) of the token
    #[arg(long = "accessor-id", alias = "id")]
    pub id: Option<String>,
    /// Reads the token this command presents instead of -id
    #[arg(long = "self", action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub own: bool,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: Output,
    /// The links and identities to give the token (each kind given replaces the old)
    #[command(flatten)]
    pub grants: Grants,
    /// Accessor ID (or unique prefix) of the token
    #[arg(long = "accessor-id", alias = "id")]
    pub id: Option<String>,
    /// A new description
    #[arg(long)]
    pub description: Option<String>,
    /// ID (or unique prefix) of a policy to add to those linked; repeatable
    #[arg(long = "append-policy-id")]
    pub append_policy_id: Vec<String>,
    /// Name of a policy to add to those linked; repeatable
    #[arg(long = "append-policy-name")]
    pub append_policy_name: Vec<String>,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Accessor ID (or unique prefix) of the token
    #[arg(long = "accessor-id", alias = "id")]
    pub id: Option<String>,
}

#[derive(Args, Debug)]
pub struct CloneArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: Output,
    /// Accessor ID (or unique prefix) of the token
    #[arg(long = "accessor-id", alias = "id")]
    pub id: Option<String>,
    /// The description of the copy
    #[arg(long, default_value = "")]
    pub description: String,
}

pub async fn run(command: TokenCommand) -> Result<(), String> {
    match command {
        TokenCommand::Create(args) => create(args).await,
        TokenCommand::List(args) => list(args).await,
        TokenCommand::Read(args) => read(args).await,
        TokenCommand::Update(args) => update(args).await,
        TokenCommand::Delete(args) => delete(args).await,
        TokenCommand::Clone(args) => clone(args).await,
    }
}

fn show(token: &AclToken, output: &Output, format: Format) {
    object::show(token, output, format, format::token);
}

/// The accessor ID a whole ID or a unique prefix names.
async fn token_id(agent: &AgentClient, partial: &str) -> Result<String, String> {
    chosen(agent, Object::Token, Some(partial), None).await
}

async fn create(args: CreateArgs) -> Result<(), String> {
    let format = args.output.format()?;
    if args.grants.is_empty() {
        return Err("Cannot create a token without specifying -policy-name, -policy-id, -role-name, -role-id, -service-identity, or -node-identity at least once".into());
    }
    let agent = agent(&args.client)?;
    let token = AclToken {
        accessor_id: args.accessor.unwrap_or_default(),
        secret_id: args.secret.unwrap_or_default(),
        description: args.description,
        local: args.local,
        expiration_ttl: args
            .expires_ttl
            .filter(|t| !t.is_empty() && t != "0s" && t != "0"),
        service_identities: service_identities(&args.grants.service_identity)?,
        node_identities: node_identities(&args.grants.node_identity)?,
        policies: args.grants.policies(&agent).await?,
        roles: args.grants.roles(&agent).await?,
        ..AclToken::default()
    };
    let created = agent
        .acl_token_create(&token)
        .await
        .map_err(|e| format!("Failed to create new token: {}", api_error(&e)))?;
    show(&created, &args.output, format);
    Ok(())
}

async fn list(args: ListArgs) -> Result<(), String> {
    let format = args.output.format()?;
    let agent = agent(&args.client)?;
    let tokens = agent
        .acl_token_list()
        .await
        .map_err(|e| format!("Failed to retrieve the token list: {}", api_error(&e)))?;
    object::show(&tokens, &args.output, format, |l, meta| {
        format::token_list(l, meta)
    });
    Ok(())
}

async fn read(args: ReadArgs) -> Result<(), String> {
    let format = args.output.format()?;
    let id = given(args.id);
    if id.is_none() && !args.own {
        return Err("Must specify the -accessor-id parameter".into());
    }
    let agent = agent(&args.client)?;
    let token = match id {
        Some(partial) if !args.own => {
            let id = token_id(&agent, &partial).await?;
            agent
                .acl_token_read(&id)
                .await
                .map_err(|e| format!("Error reading token {id:?}: {}", api_error(&e)))?
        }
        _ => agent
            .acl_token_self()
            .await
            .map_err(|e| format!("Error reading token: {}", api_error(&e)))?,
    };
    show(&token, &args.output, format);
    Ok(())
}

async fn update(args: UpdateArgs) -> Result<(), String> {
    let format = args.output.format()?;
    let Some(partial) = given(args.id) else {
        return Err("Cannot update a token without specifying the -accessor-id parameter".into());
    };
    let agent = agent(&args.client)?;
    let id = token_id(&agent, &partial).await?;
    let mut token = agent
        .acl_token_read(&id)
        .await
        .map_err(|e| format!("Error when retrieving current token: {}", api_error(&e)))?;
    if let Some(d) = args.description {
        token.description = d;
    }
    let g = &args.grants;
    if !g.policy_id.is_empty() || !g.policy_name.is_empty() {
        token.policies = g.policies(&agent).await?;
    }
    if !g.role_id.is_empty() || !g.role_name.is_empty() {
        token.roles = g.roles(&agent).await?;
    }
    if !g.service_identity.is_empty() {
        token.service_identities = service_identities(&g.service_identity)?;
    }
    if !g.node_identity.is_empty() {
        token.node_identities = node_identities(&g.node_identity)?;
    }
    let append = object::links(
        &agent,
        Object::Policy,
        &args.append_policy_name,
        &args.append_policy_id,
    )
    .await?;
    for link in append {
        let known = token.policies.iter().any(|l| {
            (!link.id.is_empty() && l.id == link.id)
                || (!link.name.is_empty() && l.name == link.name)
        });
        if !known {
            token.policies.push(link);
        }
    }
    let updated = agent
        .acl_token_update(&token)
        .await
        .map_err(|e| format!("Failed to update token {id}: {}", api_error(&e)))?;
    show(&updated, &args.output, format);
    Ok(())
}

async fn delete(args: DeleteArgs) -> Result<(), String> {
    let Some(partial) = given(args.id) else {
        return Err("Must specify the -accessor-id parameter".into());
    };
    let agent = agent(&args.client)?;
    let id = token_id(&agent, &partial).await?;
    agent
        .acl_token_delete(&id)
        .await
        .map_err(|e| format!("Error deleting token {id:?}: {}", api_error(&e)))?;
    info(&format!("Token {id:?} deleted successfully"));
    Ok(())
}

async fn clone(args: CloneArgs) -> Result<(), String> {
    let format = args.output.format()?;
    let Some(partial) = given(args.id) else {
        return Err("Cannot update a token without specifying the -accessor-id parameter".into());
    };
    let agent = agent(&args.client)?;
    let id = token_id(&agent, &partial).await?;
    // Consul prints a clone without -meta.
    let output = Output {
        meta: false,
        ..args.output
    };
    let cloned = agent
        .acl_token_clone(&id, &args.description)
        .await
        .map_err(|e| format!("Error cloning token: {}", api_error(&e)))?;
    show(&cloned, &output, format);
    Ok(())
}
