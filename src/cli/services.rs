//! `proconsul services register|deregister`: services of the local agent, from
//! definition files (JSON or HCL, as config files write them) or from flags, as Consul's
//! `consul services`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use proconsul::client::encode_segment;
use proconsul::config::{self, Format};
use serde_json::{Map, Value, json};

use super::ClientArgs;

#[derive(Subcommand, Debug)]
pub enum ServicesCommand {
    /// Registers services with the local agent, from files or flags
    Register(RegisterArgs),
    /// Deregisters services from the local agent, by file or -id
    Deregister(DeregisterArgs),
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// ID of the service to register (defaults to -name)
    #[arg(long, default_value = "")]
    pub id: String,
    /// Name of the service to register
    #[arg(long, default_value = "")]
    pub name: String,
    /// Address of the service
    #[arg(long, default_value = "")]
    pub address: String,
    /// Port of the service
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Metadata as key=value; may be given more than once
    #[arg(long)]
    pub meta: Vec<String>,
    /// Tag to add; may be given more than once
    #[arg(long)]
    pub tag: Vec<String>,
    /// Tagged address as key=address[:port]; may be given more than once
    #[arg(long = "tagged-address")]
    pub tagged_address: Vec<String>,
    /// Service definition files (JSON or HCL)
    pub files: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DeregisterArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// ID to deregister; not with files
    #[arg(long, default_value = "")]
    pub id: String,
    /// Service definition files whose services to deregister
    pub files: Vec<PathBuf>,
}

/// A service to send: the name for messages, its ID (empty: the name) and the
/// registration body.
struct Definition {
    name: String,
    id: String,
    body: Value,
}

/// `key=value` pairs of a repeated flag.
fn pairs(flag: &str, values: &[String]) -> Result<BTreeMap<String, String>, String> {
    values
        .iter()
        .map(|v| match v.split_once('=') {
            Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
            None => Err(format!(
                "invalid value {v:?} for flag -{flag}: missing \"=\" in argument"
            )),
        })
        .collect()
}

/// A tagged address `address[:port]` in the API's shape.
fn service_address(text: &str) -> Result<Value, String> {
    match text.rsplit_once(':') {
        // An IPv6 literal without a port has colons but no brackets.
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
            let port: u16 = port
                .parse()
                .map_err(|_| format!("invalid port {port:?} in {text:?}"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Ok(json!({"Address": host, "Port": port}))
        }
        _ => Ok(json!({"Address": text, "Port": 0})),
    }
}

/// The service the flags describe, with only what was given (Consul's client leaves
/// empty fields out).
fn from_flags(args: &RegisterArgs) -> Result<Definition, String> {
    let meta = pairs("meta", &args.meta)?;
    let tagged = pairs("tagged-address", &args.tagged_address)?;
    let mut body = Map::new();
    let mut put = |key: &str, value: Value, given: bool| {
        if given {
            body.insert(key.to_owned(), value);
        }
    };
    put("ID", json!(args.id), !args.id.is_empty());
    put("Name", json!(args.name), true);
    put("Address", json!(args.address), !args.address.is_empty());
    put("Port", json!(args.port), args.port != 0);
    put("Tags", json!(args.tag), !args.tag.is_empty());
    put("Meta", json!(meta), !meta.is_empty());
    if !tagged.is_empty() {
        let mut addresses = Map::new();
        for (k, v) in &tagged {
            let address = service_address(v).map_err(|e| format!("Invalid Tagged Address: {e}"))?;
            addresses.insert(k.clone(), address);
        }
        body.insert("TaggedAddresses".into(), Value::Object(addresses));
    }
    Ok(Definition {
        name: args.name.clone(),
        id: args.id.clone(),
        body: Value::Object(body),
    })
}

/// The services defined in `files` (`service` and `services` blocks), each checked as
/// the agent checks a config file's.
fn from_files(files: &[PathBuf]) -> Result<Vec<Definition>, String> {
    let mut out = Vec::new();
    for file in files {
        let format = Format::of(file, None).ok_or_else(|| {
            format!(
                "{}: the file's format is not known; name it *.json or *.hcl",
                file.display()
            )
        })?;
        let layer = config::read_file(file, format).map_err(|p| p.to_string())?;
        let raw = layer.raw;
        let single = raw.service.into_iter().map(|v| ("service".to_owned(), v));
        let listed = raw
            .services
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, v)| (format!("services[{i}]"), v));
        for (field, value) in single.chain(listed) {
            out.push(checked(file, &field, value)?);
        }
    }
    Ok(out)
}

fn checked(file: &Path, field: &str, value: Value) -> Result<Definition, String> {
    let (service, _) = api::definition::service(&value, api::definition::Style::Config, field)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(Definition {
        name: service.name,
        id: service.id,
        body: value,
    })
}

/// `services register [flags] [FILE...]`.
pub async fn register(args: RegisterArgs) -> anyhow::Result<ExitCode> {
    if args.files.is_empty() && args.name.is_empty() {
        eprintln!("Service registration requires at least one argument or flags.");
        return Ok(ExitCode::from(1));
    }
    if !args.files.is_empty() && !args.name.is_empty() {
        eprintln!("Service registration requires arguments or -id, not both.");
        return Ok(ExitCode::from(1));
    }
    let services = if args.files.is_empty() {
        from_flags(&args).map(|d| vec![d])
    } else {
        from_files(&args.files)
    };
    let services = match services {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let client = args.client.client()?;
    for service in services {
        let body = service.body.to_string();
        if let Err(e) = client.put("/v1/agent/service/register", Some(body)).await {
            eprintln!("Error registering service {:?}: {e}", service.name);
            return Ok(ExitCode::from(1));
        }
        println!("Registered service: {}", service.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// `services deregister [-id ID | FILE...]`.
pub async fn deregister(args: DeregisterArgs) -> anyhow::Result<ExitCode> {
    if args.files.is_empty() && args.id.is_empty() {
        eprintln!("Service deregistration requires at least one argument or -id.");
        return Ok(ExitCode::from(1));
    }
    if !args.files.is_empty() && !args.id.is_empty() {
        eprintln!("Service deregistration requires arguments or -id, not both.");
        return Ok(ExitCode::from(1));
    }
    let services = if args.files.is_empty() {
        Ok(vec![Definition {
            name: String::new(),
            id: args.id.clone(),
            body: Value::Null,
        }])
    } else {
        from_files(&args.files)
    };
    let services = match services {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let client = args.client.client()?;
    for service in services {
        let id = if service.id.is_empty() {
            &service.name
        } else {
            &service.id
        };
        if id.is_empty() {
            continue;
        }
        let path = format!("/v1/agent/service/deregister/{}", encode_segment(id));
        if let Err(e) = client.put(&path, None).await {
            eprintln!("Error deregistering service {:?}: {e}", service.name);
            return Ok(ExitCode::from(1));
        }
        println!("Deregistered service: {id}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a `services` verb.
pub async fn run(command: ServicesCommand) -> anyhow::Result<ExitCode> {
    match command {
        ServicesCommand::Register(args) => register(args).await,
        ServicesCommand::Deregister(args) => deregister(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_addresses_take_an_optional_port() {
        assert_eq!(
            service_address("10.0.0.1:80").unwrap(),
            json!({"Address": "10.0.0.1", "Port": 80})
        );
        assert_eq!(
            service_address("[::1]:80").unwrap(),
            json!({"Address": "::1", "Port": 80})
        );
        assert_eq!(
            service_address("::1").unwrap(),
            json!({"Address": "::1", "Port": 0})
        );
        assert!(service_address("h:port").is_err());
        assert!(pairs("meta", &["novalue".into()]).is_err());
    }

    #[test]
    fn files_give_every_service_block_checked() {
        let dir = tempfile::tempdir().unwrap();
        let json_file = dir.path().join("web.json");
        std::fs::write(
            &json_file,
            r#"{"service": {"name": "web", "port": 80}, "services": [{"id": "db-1", "name": "db"}]}"#,
        )
        .unwrap();
        let hcl_file = dir.path().join("api.hcl");
        std::fs::write(&hcl_file, "service {\n  name = \"api\"\n  port = 81\n}\n").unwrap();
        let defs = from_files(&[json_file, hcl_file]).unwrap();
        let names: Vec<(&str, &str)> = defs
            .iter()
            .map(|d| (d.name.as_str(), d.id.as_str()))
            .collect();
        assert_eq!(names, [("web", "web"), ("db", "db-1"), ("api", "api")]);
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"service": {"name": "x", "port": "eighty"}}"#).unwrap();
        let e = from_files(&[bad]).err().unwrap();
        assert!(e.contains("bad.json"), "{e}");
    }
}
