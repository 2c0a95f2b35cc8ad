//! `proconsul maint`: node or service maintenance mode, as Consul's `consul maint`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;
use proconsul::client::{encode, encode_segment};
use serde::Deserialize;

use super::ClientArgs;

#[derive(Args, Debug)]
pub struct MaintArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Enable maintenance mode
    #[arg(long)]
    pub enable: bool,
    /// Disable maintenance mode
    #[arg(long)]
    pub disable: bool,
    /// Text describing the maintenance reason
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Control maintenance mode for a specific service ID
    #[arg(long, default_value = "")]
    pub service: String,
}

/// The fields of `/v1/agent/checks` entries this verb reads.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Check {
    #[serde(rename = "CheckID")]
    check_id: String,
    #[serde(rename = "ServiceID", default)]
    service_id: String,
    #[serde(default)]
    notes: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SelfConfig {
    node_name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentSelf {
    config: SelfConfig,
}

/// Consul's refusals of flag combinations, checked before anything is sent.
fn refusal(args: &MaintArgs) -> Option<&'static str> {
    if args.enable && args.disable {
        Some("Only one of -enable or -disable may be provided")
    } else if !args.enable && !args.reason.is_empty() {
        Some("Reason may only be provided with -enable")
    } else if !args.enable && !args.disable && !args.service.is_empty() {
        Some("Service requires either -enable or -disable")
    } else {
        None
    }
}

/// The listing of bare `maint`: the node, then each service, in maintenance, each block
/// followed by a blank line; nothing when nothing is in maintenance.
fn listing(node_name: &str, checks: &BTreeMap<String, Check>) -> String {
    let mut out = String::new();
    for check in checks.values() {
        if check.check_id == lan::NODE_MAINTENANCE_CHECK {
            out.push_str(&format!(
                "Node:\n  Name:   {node_name}\n  Reason: {}\n\n",
                check.notes
            ));
        } else if check.check_id.starts_with(lan::SERVICE_MAINTENANCE_PREFIX) {
            out.push_str(&format!(
                "Service:\n  ID:     {}\n  Reason: {}\n\n",
                check.service_id, check.notes
            ));
        }
    }
    out
}

/// `maint [-enable|-disable] [-service ID] [-reason TEXT]`.
pub async fn run(args: MaintArgs) -> anyhow::Result<ExitCode> {
    if let Some(text) = refusal(&args) {
        eprintln!("{text}");
        return Ok(ExitCode::from(1));
    }
    let client = args.client.client()?;
    if !args.enable && !args.disable {
        let node_name = match client.get("/v1/agent/self").await {
            Ok(body) => serde_json::from_str::<AgentSelf>(&body)
                .map(|s| s.config.node_name)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let node_name = match node_name {
            Ok(name) => name,
            Err(e) => {
                eprintln!("Error querying Consul agent: {e}");
                return Ok(ExitCode::from(1));
            }
        };
        let checks = match client.get("/v1/agent/checks").await {
            Ok(body) => {
                serde_json::from_str::<BTreeMap<String, Check>>(&body).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match checks {
            Ok(checks) => print!("{}", listing(&node_name, &checks)),
            Err(e) => {
                eprintln!("Error getting checks: {e}");
                return Ok(ExitCode::from(1));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (doing, done, flag) = if args.enable {
        ("enabling", "enabled", "true")
    } else {
        ("disabling", "disabled", "false")
    };
    let mut path = if args.service.is_empty() {
        format!("/v1/agent/maintenance?enable={flag}")
    } else {
        format!(
            "/v1/agent/service/maintenance/{}?enable={flag}",
            encode_segment(&args.service)
        )
    };
    if args.enable {
        path.push_str(&format!("&reason={}", encode(&args.reason)));
    }
    let what = if args.service.is_empty() {
        "node"
    } else {
        "service"
    };
    if let Err(e) = client.put(&path, None).await {
        eprintln!("Error {doing} {what} maintenance: {e}");
        return Ok(ExitCode::from(1));
    }
    if args.service.is_empty() {
        println!("Node maintenance is now {done}");
    } else {
        println!("Service maintenance is now {done} for {:?}", args.service);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(enable: bool, disable: bool, reason: &str, service: &str) -> MaintArgs {
        MaintArgs {
            client: ClientArgs {
                http_addr: String::new(),
                ca_file: None,
                ca_path: None,
                client_cert: None,
                client_key: None,
                tls_server_name: None,
                token: None,
                token_file: None,
            },
            enable,
            disable,
            reason: reason.into(),
            service: service.into(),
        }
    }

    #[test]
    fn flag_combinations_are_refused_as_consul_does() {
        assert_eq!(
            refusal(&args(true, true, "", "")),
            Some("Only one of -enable or -disable may be provided")
        );
        assert_eq!(
            refusal(&args(false, true, "why", "")),
            Some("Reason may only be provided with -enable")
        );
        assert_eq!(
            refusal(&args(false, false, "", "web")),
            Some("Service requires either -enable or -disable")
        );
        assert_eq!(refusal(&args(false, false, "", "")), None);
        assert_eq!(refusal(&args(true, false, "why", "web")), None);
    }

    #[test]
    fn the_listing_shows_the_node_then_services() {
        let checks: BTreeMap<String, Check> = serde_json::from_str(
            r#"{
                "_service_maintenance:web": {"CheckID": "_service_maintenance:web", "ServiceID": "web", "Notes": "deploy"},
                "_node_maintenance": {"CheckID": "_node_maintenance", "ServiceID": "", "Notes": "rack"},
                "mem": {"CheckID": "mem", "Notes": ""}
            }"#,
        )
        .unwrap();
        assert_eq!(
            listing("n1", &checks),
            "Node:\n  Name:   n1\n  Reason: rack\n\nService:\n  ID:     web\n  Reason: deploy\n\n"
        );
        assert_eq!(listing("n1", &BTreeMap::new()), "");
    }
}
