//! `acl policy create|list|read|update|delete`.

use clap::{Args, Subcommand};

use super::object::{self, Object, chosen, id_or_name};
use super::{Format, Output, agent, api_error, format, info, load_data};
use crate::cli::ClientArgs;
use proconsul::client::AclPolicy;

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
    object::show(policy, output, format, format::policy);
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
    object::show(&policies, &args.output, format, |l, meta| {
        format::policy_list(l, meta)
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
    let id = chosen(&agent, Object::Policy, id.as_deref(), name.as_deref()).await?;
    let policy = agent
        .acl_policy_read(&id)
        .await
        .map_err(|e| format!("Error reading policy {id:?}: {}", api_error(&e)))?;
    show(&policy, &args.output, format);
    Ok(())
}

async fn update(args: UpdateArgs) -> Result<(), String> {
    let format = args.output.format()?;
    let (id, name) = id_or_name(
        args.id,
        args.name,
        "Cannot update a policy without specifying the -id or -name parameter",
    )?;
    let agent = agent(&args.client)?;
    let policy_id = chosen(&agent, Object::Policy, id.as_deref(), name.as_deref()).await?;
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
    let (id, name) = id_or_name(
        args.id,
        args.name,
        "Must specify either the -id or -name parameters",
    )?;
    let agent = agent(&args.client)?;
    let id = chosen(&agent, Object::Policy, id.as_deref(), name.as_deref()).await?;
    agent
        .acl_policy_delete(&id)
        .await
        .map_err(|e| format!("Error deleting policy {id:?}: {}", api_error(&e)))?;
    info(&format!("Policy {id:?} deleted successfully"));
    Ok(())
}
