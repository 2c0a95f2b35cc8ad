//! `acl policy create|list|read|update|delete`.

use clap::{Args, Subcommand};

use super::{Format, Output, agent, api_error, format, info, load_data, unique_prefix};
use crate::cli::ClientArgs;
use proconsul::client::{AclPolicy, AgentClient};

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Creates a policy
    Create(CreateArgs),
    /// Lists every policy
    List(ListArgs),
    /// Reads one policy
    Read(ReadArgs),
    /// Changes a policy
    Update(UpdateArgs),
    /// Deletes a policy
    Delete(DeleteArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: Output,
    /// The new policy's name (required)
    #[arg(long, default_value = "")]
    pub name: String,
    /// A description of the policy
    #[arg(long, default_value = "")]
    pub description: String,
    /// A datacenter the policy holds in (default: all); repeatable
    #[arg(long = "valid-datacenter")]
    pub valid_datacenter: Vec<String>,
    /// The rules: the text itself, @FILE, or - for stdin
    #[arg(long, default_value = "")]
    pub rules: String,
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
    /// ID (or unique ID prefix) of the policy
    #[arg(long)]
    pub id: Option<String>,
    /// Name of the policy (instead of -id)
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: Output,
    /// ID (or unique ID prefix) of the policy
    #[arg(long)]
    pub id: Option<String>,
    /// Name of the policy to update (without -id), or its new name (with -id)
    #[arg(long)]
    pub name: Option<String>,
    /// A new description
    #[arg(long)]
    pub description: Option<String>,
    /// The datacenters the policy holds in (replacing the old list); repeatable
    #[arg(long = "valid-datacenter")]
    pub valid_datacenter: Vec<String>,
    /// New rules: the text itself, @FILE, or - for stdin
    #[arg(long)]
    pub rules: Option<String>,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// ID (or unique ID prefix) of the policy
    #[arg(long)]
    pub id: Option<String>,
    /// Name of the policy (instead of -id)
    #[arg(long)]
    pub name: Option<String>,
}

pub async fn run(command: PolicyCommand) -> Result<(), String> {
    match command {
        PolicyCommand::Create(args) => create(args).await,
        PolicyCommand::List(args) => list(args).await,
        PolicyCommand::Read(args) => read(args).await,
        PolicyCommand::Update(args) => update(args).await,
        PolicyCommand::Delete(args) => delete(args).await,
    }
}

fn show(policy: &AclPolicy, output: &Output, format: Format) {
    info(&match format {
        Format::Pretty => format::policy(policy, output.meta),
        Format::Json => format::json(policy),
    });
}

/// The policy ID a whole ID or a unique prefix names.
pub(super) async fn policy_id(agent: &AgentClient, partial: &str) -> Result<String, String> {
    if partial.len() == 36 {
        return Ok(partial.to_owned());
    }
    let policies = agent.acl_policy_list().await.map_err(|e| api_error(&e))?;
    let ids: Vec<String> = policies.into_iter().map(|p| p.id).collect();
    unique_prefix(partial, &ids, "policy")
}

/// The policy `-id` (a prefix) or else `-name` names.
async fn chosen(
    agent: &AgentClient,
    id: Option<&str>,
    name: Option<&str>,
) -> Result<String, String> {
    let found = match (id, name) {
        (Some(id), _) => policy_id(agent, id).await,
        (None, Some(name)) => agent
            .acl_policy_read_by_name(name)
            .await
            .map(|p| p.id)
            .map_err(|e| match e {
                proconsul::client::ClientError::Http { status: 404, .. } => {
                    format!("No such policy with name {name}")
                }
                other => api_error(&other),
            }),
        (None, None) => Err("No name specified".into()),
    };
    found.map_err(|e| format!("Error determining policy ID: {e}"))
}

fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

async fn create(args: CreateArgs) -> Result<(), String> {
    let format = args.output.format()?;
    if args.name.is_empty() {
        return Err("Missing require '-name' flag".into());
    }
    let agent = agent(&args.client)?;
    let rules = load_data(&args.rules).map_err(|e| format!("Error loading rules: {e}"))?;
    let policy = AclPolicy {
        name: args.name,
        description: args.description,
        datacenters: args.valid_datacenter,
        rules,
        ..AclPolicy::default()
    };
    let created = agent
        .acl_policy_create(&policy)
        .await
        .map_err(|e| format!("Failed to create new policy: {}", api_error(&e)))?;
    show(&created, &args.output, format);
    Ok(())
}

async fn list(args: ListArgs) -> Result<(), String> {
    let format = args.output.format()?;
    let agent = agent(&args.client)?;
    let policies = agent
        .acl_policy_list()
        .await
        .map_err(|e| format!("Failed to retrieve the policy list: {}", api_error(&e)))?;
    info(&match format {
        Format::Pretty => format::policy_list(&policies, args.output.meta),
        Format::Json => format::json(&policies),
    });
    Ok(())
}

async fn read(args: ReadArgs) -> Result<(), String> {
    let format = args.output.format()?;
    let (id, name) = (given(args.id), given(args.name));
    if id.is_none() && name.is_none() {
        return Err("Must specify either the -id or -name parameters".into());
    }
    let agent = agent(&args.client)?;
    let id = chosen(&agent, id.as_deref(), name.as_deref()).await?;
    let policy = agent
        .acl_policy_read(&id)
        .await
        .map_err(|e| format!("Error reading policy {id:?}: {}", api_error(&e)))?;
    show(&policy, &args.output, format);
    Ok(())
}

async fn update(args: UpdateArgs) -> Result<(), String> {
    let format = args.output.format()?;
    let (id, name) = (given(args.id), given(args.name));
    if id.is_none() && name.is_none() {
        return Err("Cannot update a policy without specifying the -id or -name parameter".into());
    }
    let agent = agent(&args.client)?;
    let policy_id = chosen(&agent, id.as_deref(), name.as_deref()).await?;
    let rules = match &args.rules {
        Some(r) => Some(load_data(r).map_err(|e| format!("Error loading rules: {e}"))?),
        None => None,
    };
    let mut policy = agent
        .acl_policy_read(&policy_id)
        .await
        .map_err(|e| format!("Error retrieving current policy: {}", api_error(&e)))?;
    if id.is_some()
        && let Some(new_name) = name
    {
        policy.name = new_name;
    }
    if let Some(d) = args.description {
        policy.description = d;
    }
    if let Some(r) = rules {
        policy.rules = r;
    }
    if !args.valid_datacenter.is_empty() {
        policy.datacenters = args.valid_datacenter;
    }
    let updated = agent
        .acl_policy_update(&policy)
        .await
        .map_err(|e| format!("Error updating policy {policy_id:?}: {}", api_error(&e)))?;
    show(&updated, &args.output, format);
    Ok(())
}

async fn delete(args: DeleteArgs) -> Result<(), String> {
    let (id, name) = (given(args.id), given(args.name));
    if id.is_none() && name.is_none() {
        return Err("Must specify either the -id or -name parameters".into());
    }
    let agent = agent(&args.client)?;
    let id = chosen(&agent, id.as_deref(), name.as_deref()).await?;
    agent
        .acl_policy_delete(&id)
        .await
        .map_err(|e| format!("Error deleting policy {id:?}: {}", api_error(&e)))?;
    info(&format!("Policy {id:?} deleted successfully"));
    Ok(())
}
