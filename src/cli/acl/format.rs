//! The text `consul acl` prints: the pretty blocks of tokens, policies and roles, and
//! `-format=json` (Go's `json.MarshalIndent` with four spaces).
//!
//! Pretty blocks pad their labels to one column (18 wide for tokens, 14 for policies
//! and roles), print optional lines only when set, and indent list items by three
//! spaces; times print as Go's `time.Time` does (`2024-05-01 10:00:00.123456 +0000 UTC`).

use std::fmt::Write;

use base64::Engine;
use serde::Serialize;

use proconsul::client::{
    AclLink, AclNodeIdentity, AclPolicy, AclRole, AclServiceIdentity, AclToken,
};

/// `-format`: how objects are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pretty,
    Json,
}

impl Format {
    /// `pretty` or `json`; anything else is Consul's `Unknown format: X`.
    pub fn parse(text: &str) -> Result<Format, String> {
        match text {
            "pretty" => Ok(Format::Pretty),
            "json" => Ok(Format::Json),
            other => Err(format!("Unknown format: {other}")),
        }
    }
}

/// `value` as Go's `json.MarshalIndent(value, "", "    ")` writes it.
pub fn json(value: &impl Serialize) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    // Our ACL types are plain structs of strings, numbers, booleans and lists.
    value.serialize(&mut ser).expect("an ACL object serialises");
    String::from_utf8(out).unwrap_or_default()
}

/// A token as `acl token read` (and create, update, clone, bootstrap) prints it.
pub fn token(t: &AclToken, meta: bool) -> String {
    let mut out = String::new();
    line(&mut out, "AccessorID:", 18, &t.accessor_id);
    line(&mut out, "SecretID:", 18, &t.secret_id);
    line(&mut out, "Description:", 18, &t.description);
    line(&mut out, "Local:", 18, &t.local.to_string());
    if !t.auth_method.is_empty() {
        line(&mut out, "Auth Method:", 18, &t.auth_method);
    }
    line(
        &mut out,
        "Create Time:",
        18,
        &go_time(t.create_time.as_deref().unwrap_or("")),
    );
    if let Some(at) = t.expiration_time.as_deref().filter(|s| !s.is_empty()) {
        line(&mut out, "Expiration Time:", 18, &go_time(at));
    }
    if meta {
        line(&mut out, "Hash:", 18, &hash_hex(t.hash.as_deref()));
        line(&mut out, "Create Index:", 18, &t.create_index.to_string());
        line(&mut out, "Modify Index:", 18, &t.modify_index.to_string());
    }
    links(&mut out, "", "Policies:", &t.policies);
    links(&mut out, "", "Roles:", &t.roles);
    service_identities(&mut out, "", &t.service_identities);
    node_identities(&mut out, "", &t.node_identities);
    out
}

/// `acl token list`: the token blocks, a blank line between two.
pub fn token_list(tokens: &[AclToken], meta: bool) -> String {
    tokens
        .iter()
        .map(|t| token(t, meta))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A policy as `acl policy read` prints it: its rules last, as written.
pub fn policy(p: &AclPolicy, meta: bool) -> String {
    let mut out = String::new();
    line(&mut out, "ID:", 14, &p.id);
    line(&mut out, "Name:", 14, &p.name);
    line(&mut out, "Description:", 14, &p.description);
    line(&mut out, "Datacenters:", 14, &p.datacenters.join(", "));
    if meta {
        index_lines(
            &mut out,
            "",
            p.hash.as_deref(),
            p.create_index,
            p.modify_index,
        );
    }
    out.push_str("Rules:\n");
    out.push_str(&p.rules);
    out
}

/// `acl policy list`: each policy under its name, without rules.
pub fn policy_list(policies: &[AclPolicy], meta: bool) -> String {
    let mut out = String::new();
    for p in policies {
        let _ = writeln!(out, "{}:", p.name);
        line(&mut out, "   ID:", 17, &p.id);
        line(&mut out, "   Description:", 17, &p.description);
        line(&mut out, "   Datacenters:", 17, &p.datacenters.join(", "));
        if meta {
            index_lines(
                &mut out,
                "   ",
                p.hash.as_deref(),
                p.create_index,
                p.modify_index,
            );
        }
    }
    out
}

/// A role as `acl role read` prints it.
pub fn role(r: &AclRole, meta: bool) -> String {
    let mut out = String::new();
    line(&mut out, "ID:", 14, &r.id);
    line(&mut out, "Name:", 14, &r.name);
    line(&mut out, "Description:", 14, &r.description);
    if meta {
        index_lines(
            &mut out,
            "",
            r.hash.as_deref(),
            r.create_index,
            r.modify_index,
        );
    }
    links(&mut out, "", "Policies:", &r.policies);
    service_identities(&mut out, "", &r.service_identities);
    node_identities(&mut out, "", &r.node_identities);
    out
}

/// `acl role list`: each role under its name, its lists indented once more.
pub fn role_list(roles: &[AclRole], meta: bool) -> String {
    let mut out = String::new();
    for r in roles {
        let _ = writeln!(out, "{}:", r.name);
        line(&mut out, "   ID:", 17, &r.id);
        line(&mut out, "   Description:", 17, &r.description);
        if meta {
            index_lines(
                &mut out,
                "   ",
                r.hash.as_deref(),
                r.create_index,
                r.modify_index,
            );
        }
        links(&mut out, "   ", "Policies:", &r.policies);
        service_identities(&mut out, "   ", &r.service_identities);
        node_identities(&mut out, "   ", &r.node_identities);
    }
    out
}

/// `label` padded to `width`, then `value`.
fn line(out: &mut String, label: &str, width: usize, value: &str) {
    let _ = writeln!(out, "{label:<width$}{value}");
}

/// `Hash:`, `Create Index:` and `Modify Index:` of a policy or role (`-meta`).
fn index_lines(out: &mut String, indent: &str, hash: Option<&str>, create: u64, modify: u64) {
    let width = indent.len() + 14;
    line(out, &format!("{indent}Hash:"), width, &hash_hex(hash));
    line(
        out,
        &format!("{indent}Create Index:"),
        width,
        &create.to_string(),
    );
    line(
        out,
        &format!("{indent}Modify Index:"),
        width,
        &modify.to_string(),
    );
}

fn links(out: &mut String, indent: &str, title: &str, links: &[AclLink]) {
    if links.is_empty() {
        return;
    }
    let _ = writeln!(out, "{indent}{title}");
    for l in links {
        let _ = writeln!(out, "{indent}   {} - {}", l.id, l.name);
    }
}

fn service_identities(out: &mut String, indent: &str, list: &[AclServiceIdentity]) {
    if list.is_empty() {
        return;
    }
    let _ = writeln!(out, "{indent}Service Identities:");
    for s in list {
        let dcs = if s.datacenters.is_empty() {
            "all".to_owned()
        } else {
            s.datacenters.join(", ")
        };
        let _ = writeln!(out, "{indent}   {} (Datacenters: {dcs})", s.service_name);
    }
}

fn node_identities(out: &mut String, indent: &str, list: &[AclNodeIdentity]) {
    if list.is_empty() {
        return;
    }
    let _ = writeln!(out, "{indent}Node Identities:");
    for n in list {
        let _ = writeln!(
            out,
            "{indent}   {} (Datacenter: {})",
            n.node_name, n.datacenter
        );
    }
}

/// The hash as Go's `%x` prints its bytes (the agent sends them base64-encoded).
fn hash_hex(hash: Option<&str>) -> String {
    let bytes = hash
        .and_then(|h| base64::engine::general_purpose::STANDARD.decode(h).ok())
        .unwrap_or_default();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An RFC 3339 time as Go's `time.Time` prints itself: `2024-05-01 10:00:00.123456 +0000
/// UTC` (fraction without trailing zeros; an offset zone is named by its offset). Text
/// that is not such a time is shown as it is; no time at all is Go's zero time.
pub fn go_time(text: &str) -> String {
    if text.is_empty() {
        return "0001-01-01 00:00:00 +0000 UTC".into();
    }
    let parsed = (|| {
        let (date, rest) = text.split_once('T')?;
        let clock_end = rest.find(['Z', 'z', '+', '-'])?;
        let (clock, zone) = rest.split_at(clock_end);
        let (hms, frac) = match clock.split_once('.') {
            Some((hms, frac)) => (hms, frac.trim_end_matches('0')),
            None => (clock, ""),
        };
        if date.len() != 10 || hms.len() != 8 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let zone = match zone {
            "Z" | "z" => "+0000 UTC".to_owned(),
            offset => {
                let digits = offset.get(1..)?.replace(':', "");
                if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let sign = &offset[..1];
                if digits == "0000" {
                    "+0000 +0000".to_owned()
                } else {
                    format!("{sign}{digits} {sign}{digits}")
                }
            }
        };
        let frac = if frac.is_empty() {
            String::new()
        } else {
            format!(".{frac}")
        };
        Some(format!("{date} {hms}{frac} {zone}"))
    })();
    parsed.unwrap_or_else(|| text.to_owned())
}
