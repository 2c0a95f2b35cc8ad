//! `proconsul tls ca create` and `proconsul tls cert create`: the federation's CA and
//! its certificates, written in the current directory under Consul's file names.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use wan::tls::{self, CertKind, CertRequest, Pem};

#[derive(Subcommand, Debug)]
pub enum TlsCommand {
    /// Certificate authority operations
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Certificate operations
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Creates a new CA (consul-agent-ca.pem and consul-agent-ca-key.pem)
    Create(CaArgs),
}

#[derive(Args, Debug)]
pub struct CaArgs {
    /// Days the CA is valid
    #[arg(long, default_value_t = tls::CA_DAYS)]
    pub days: u32,
    /// Domain of the agents
    #[arg(long, default_value = "consul")]
    pub domain: String,
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Creates a certificate signed by the CA
    Create(CertArgs),
}

#[derive(Args, Debug)]
pub struct CertArgs {
    /// A server certificate (server.<dc>.<domain>)
    #[arg(long)]
    pub server: bool,
    /// A client agent certificate (client.<dc>.<domain>)
    #[arg(long)]
    pub client: bool,
    /// A CLI certificate (cli.<dc>.<domain>)
    #[arg(long)]
    pub cli: bool,
    /// Datacenter
    #[arg(long, default_value = "dc1")]
    pub dc: String,
    /// Domain of the agents
    #[arg(long, default_value = "consul")]
    pub domain: String,
    /// Node name, adding <node>.server.<dc>.<domain> (servers only)
    #[arg(long)]
    pub node: Option<String>,
    /// Days the certificate is valid
    #[arg(long, default_value_t = tls::CERT_DAYS)]
    pub days: u32,
    /// More DNS names (repeatable)
    #[arg(long = "additional-dnsname")]
    pub additional_dnsname: Vec<String>,
    /// More IP addresses (repeatable)
    #[arg(long = "additional-ipaddress")]
    pub additional_ipaddress: Vec<IpAddr>,
    /// The CA certificate (default <domain>-agent-ca.pem)
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The CA key (default <domain>-agent-ca-key.pem)
    #[arg(long)]
    pub key: Option<PathBuf>,
}

pub fn run(command: TlsCommand) -> ExitCode {
    let result = match command {
        TlsCommand::Ca {
            command: CaCommand::Create(args),
        } => create_ca(&args),
        TlsCommand::Cert {
            command: CertCommand::Create(args),
        } => create_cert(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("==> {e}");
            ExitCode::from(1)
        }
    }
}

fn create_ca(args: &CaArgs) -> anyhow::Result<()> {
    let (cert_name, key_name) = tls::ca_file_names(&args.domain);
    for name in [&cert_name, &key_name] {
        if Path::new(name).exists() {
            anyhow::bail!("{name} already exists");
        }
    }
    let ca = tls::create_ca(&args.domain, args.days)?;
    tls::write_new(Path::new(&cert_name), &ca.cert, false)?;
    println!("==> Saved {cert_name}");
    tls::write_new(Path::new(&key_name), &ca.key, true)?;
    println!("==> Saved {key_name}");
    Ok(())
}

fn create_cert(args: &CertArgs) -> anyhow::Result<()> {
    let kind = match (args.server, args.client, args.cli) {
        (true, false, false) => CertKind::Server,
        (false, true, false) => CertKind::Client,
        (false, false, true) => CertKind::Cli,
        _ => anyhow::bail!("Please provide exactly one of -server, -client or -cli"),
    };
    if args.node.is_some() && kind != CertKind::Server {
        anyhow::bail!("-node requires -server");
    }
    let (default_ca, default_key) = tls::ca_file_names(&args.domain);
    let ca_path = args.ca.clone().unwrap_or_else(|| default_ca.into());
    let key_path = args.key.clone().unwrap_or_else(|| default_key.into());
    let read =
        |p: &Path| std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()));
    let ca = Pem {
        cert: read(&ca_path)?,
        key: read(&key_path)?,
    };
    let request = CertRequest {
        kind,
        datacenter: args.dc.clone(),
        domain: args.domain.clone(),
        node: args.node.clone(),
        days: args.days,
        extra_dns: args.additional_dnsname.clone(),
        extra_ips: args.additional_ipaddress.clone(),
    };
    if kind == CertKind::Server {
        println!(
            "==> WARNING: Server Certificates grants authority to become a\n    server and access all state in the cluster including root keys\n    and all ACL tokens. Do not distribute them to production hosts\n    that are not server nodes. Store them as securely as CA keys."
        );
    }
    let pem = tls::create_cert(&ca, &request)?;
    let (cert_file, key_file) = tls::cert_file_names(Path::new("."), &request);
    tls::write_new(&cert_file, &pem.cert, false)?;
    println!("==> Saved {}", file_name(&cert_file));
    tls::write_new(&key_file, &pem.key, true)?;
    println!("==> Saved {}", file_name(&key_file));
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
