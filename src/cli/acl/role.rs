//! `acl role create|list|read|update|delete`.

use clap::{Args, Subcommand};

use super::object::{self, Object, chosen, given, id_or_name};
use super::{Format, Output, agent, api_error, format, info, node_identities, service_identities};
use crate::cli::ClientArgs;
use proconsul::client::{AclLink, AclRole, AgentClient};

#[derive(Subcommand, Debug)]
pub enum RoleCommand {
    /// Creates a role
    Create(CreateArgs),
    /// Lists every role
    List(ListArgs),
    /// Reads one role
    Read(ReadArgs),
    /// Changes a role
    Update(UpdateArgs),
    /// Deletes a role
    Delete(DeleteArgs),
}

/// What a role grants (`create`, `update`).
#[derive(Args, Debug)]
pub struct Grants {
    /// ID (or unique ID prefix) of a policy to link; repeatable
    #[arg(long = "policy-id")]
    pub policy_id: Vec<String>,
    /// Name of a policy to link; repeatable
    #[arg(long = "policy-name")]
    pub policy_name: Vec<String>,
    /// A service identity, NAME or NAME:DC1,DC2; repeatable
    #[arg(long = "service-identity")]
    pub service_identity: Vec<String>,
    /// A node identity, NAME:DC; repeatable
    #[arg(long = "node-identity")]
    pub node_identity: Vec<String>,
}

impl Grants {
    fn policies_given(&self) -> bool {
        !self.policy_id.is_empty() || !self.policy_name.is_empty()
    }

    async fn policies(&self, agent: &AgentClient) -> Result<Vec<AclLink>, String> {
        object::links(agent, Object::Policy, &self.policy_name, &self.policy_id).await
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
    /// The new role's name (required)
    #[arg(long, default_value = "")]
    pub name: String,
    /// A description of the role
    #[arg(long, default_value = "")]
    pub description: String,
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
    /// ID (or unique ID prefix) of the role
    #[arg(long)]
    pub id: Option<String>,
    /// Name of the role (instead of -id)
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: Output,
    /// What to grant (each kind given replaces the old)
    #[command(flatten)]
    pub grants: Grants,
    /// ID (or unique ID prefix) of the role
    #[arg(long)]
    pub id: Option<String>,
    /// A new name
    #[arg(long)]
    pub name: Option<String>,
    /// A new description
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// ID (or unique ID prefix) of the role
    #[arg(long)]
    pub id: Option<String>,
    /// Name of the role (instead of -id)
    #[arg(long)]
    pub name: Option<String>,
}

pub async fn run(command: RoleCommand) -> Result<(), String> {
    match command {
        RoleCommand::Create(args) => create(args).await,
        RoleCommand::List(args) => list(args).await,
        RoleCommand::Read(args) => read(args).await,
        RoleCommand::Update(args) => update(args).await,
        RoleCommand::Delete(args) => delete(args).await,
    }
}

fn show(role: &AclRole, output: &Output, format: Format) {
    object::show(role, output, format, format::role);
}

async fn create(args: CreateArgs) -> Result<(), String> {
    let format = args.output.format()?;
    if args.name.is_empty() {
        return Err("Missing required '-name' flag".into());
    }
    let g = &args.grants;
    if !g.policies_given() && g.service_identity.is_empty() && g.node_identity.is_empty() {
        return Err("Cannot create a role without specifying -policy-name, -policy-id, -service-identity, or -node-identity at least once".into());
    }
    let agent = agent(&args.client)?;
    let role = AclRole {
        name: args.name.clone(),
        description: args.description.clone(),
        policies: g.policies(&agent).await?,
        service_identities: service_identities(&g.service_identity)?,
        node_identities: node_identities(&g.node_identity)?,
        ..AclRole::default()
    };
    let created = agent
        .acl_role_create(&role)
        .await
        .map_err(|e| format!("Failed to create new role: {}", api_error(&e)))?;
    show(&created, &args.output, format);
    Ok(())
}

async fn list(args: ListArgs) -> Result<(), String> {
    let format = args.output.format()?;
    let agent = agent(&args.client)?;
    let roles = agent
        .acl_role_list()
        .await
        .map_err(|e| format!("Failed to retrieve the role list: {}", api_error(&e)))?;
    object::show(&roles, &args.output, format, |l, meta| {
        format::role_list(l, meta)
    });
    Ok(())
}

async fn read(args: ReadArgs) -> Result<(), String> {
    let format = args.output.format()?;
    let (id, name) = id_or_name(
        args.id,
        args.name,
        "Must specify either the -id or -name parameters",
    )?;
    let agent = agent(&args.client)?;
    let id = chosen(&agent, Object::Role, id.as_deref(), name.as_deref()).await?;
    let role = agent
        .acl_role_read(&id)
        .await
        .map_err(|e| format!("Error reading role {id:?}: {}", api_error(&e)))?;
    show(&role, &args.output, format);
    Ok(())
}

async fn update(args: UpdateArgs) -> Result<(), String> {
    let format = args.output.format()?;
    let Some(partial) = given(args.id) else {
        return Err("Cannot update a role without specifying the -id parameter".into());
    };
    let agent = agent(&args.client)?;
    let id = chosen(&agent, Object::Role, Some(&partial), None).await?;
    let mut role = agent
        .acl_role_read(&id)
        .await
        .map_err(|e| format!("Error retrieving current role: {}", api_error(&e)))?;
    if let Some(name) = given(args.name) {
        role.name = name;
    }
    if let Some(d) = args.description {
        role.description = d;
    }
    let g = &args.grants;
    if g.policies_given() {
        role.policies = g.policies(&agent).await?;
    }
    if !g.service_identity.is_empty() {
        role.service_identities = service_identities(&g.service_identity)?;
    }
    if !g.node_identity.is_empty() {
        role.node_identities = node_identities(&g.node_identity)?;
    }
    let updated = agent
        .acl_role_update(&role)
        .await
        .map_err(|e| format!("Error updating role {id:?}: {}", api_error(&e)))?;
    show(&updated, &args.output, format);
    Ok(())
}

async fn delete(args: DeleteArgs) -> Result<(), String> {
    let (id, name) = id_or_name(
        args.id,
        args.name,
        "Must specify either the -id or -name parameters",
    )?;
    let agent = agent(&args.client)?;
    let id = chosen(&agent, Object::Role, id.as_deref(), name.as_deref()).await?;
    agent
        .acl_role_delete(&id)
        .await
        .map_err(|e| format!("Error deleting role {id:?}: {}", api_error(&e)))?;
    info(&format!("Role {id:?} deleted successfully"));
    Ok(())
}
