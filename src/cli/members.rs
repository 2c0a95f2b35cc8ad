//! `proconsul members`.

use std::process::ExitCode;

use clap::Args;
use serde::Deserialize;

use super::{ClientArgs, columns};
use std::collections::BTreeMap;

#[derive(Args, Debug)]
pub struct MembersArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Shows the tags of each member
    #[arg(long)]
    pub detailed: bool,
    /// Shows only members whose status matches this regular expression
    #[arg(long, default_value = ".*")]
    pub status: String,
    /// Lists the WAN pool instead of the LAN pool
    #[arg(long)]
    pub wan: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Member {
    name: String,
    addr: String,
    port: u16,
    tags: BTreeMap<String, String>,
    status: u8,
}

fn status_name(code: u8) -> &'static str {
    match code {
        1 => "alive",
        2 => "leaving",
        3 => "left",
        4 => "failed",
        _ => "none",
    }
}

pub async fn run(args: MembersArgs) -> anyhow::Result<ExitCode> {
    let filter = regex::Regex::new(&args.status)
        .map_err(|e| anyhow::anyhow!("invalid -status regular expression: {e}"))?;
    let path = if args.wan {
        "/v1/agent/members?wan=1"
    } else {
        "/v1/agent/members"
    };
    let body = args.client.client()?.get(path).await?;
    let mut members: Vec<Member> = serde_json::from_str(&body)?;
    members.retain(|m| filter.is_match(status_name(m.status)));
    if members.is_empty() {
        // Consul exits 2 when no member matches.
        return Ok(ExitCode::from(2));
    }
    let kind = |m: &Member| match m.tags.get("role").map(String::as_str) {
        Some("consul") => "server",
        Some("node") => "client",
        _ => "unknown",
    };
    members.sort_by(|a, b| (kind(a) != "server", &a.name).cmp(&(kind(b) != "server", &b.name)));
    let address = |m: &Member| {
        if m.addr.contains(':') {
            format!("[{}]:{}", m.addr, m.port)
        } else {
            format!("{}:{}", m.addr, m.port)
        }
    };
    let mut rows = Vec::new();
    if args.detailed {
        rows.push(
            ["Node", "Address", "Status", "Tags"]
                .map(String::from)
                .to_vec(),
        );
        for m in &members {
            let tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            rows.push(vec![
                m.name.clone(),
                address(m),
                status_name(m.status).into(),
                tags.join(","),
            ]);
        }
    } else {
        rows.push(
            [
                "Node", "Address", "Status", "Type", "Build", "Protocol", "DC",
            ]
            .map(String::from)
            .to_vec(),
        );
        for m in &members {
            let build = m
                .tags
                .get("build")
                .map(|b| b.split(':').next().unwrap_or_default().to_owned())
                .unwrap_or_else(|| "< 0.3".into());
            rows.push(vec![
                m.name.clone(),
                address(m),
                status_name(m.status).into(),
                kind(m).into(),
                build,
                m.tags.get("vsn").cloned().unwrap_or_default(),
                m.tags.get("dc").cloned().unwrap_or_default(),
            ]);
        }
    }
    print!("{}", columns(&rows));
    Ok(ExitCode::SUCCESS)
}
