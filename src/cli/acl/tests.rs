//! Unit tests of the `acl` verbs: Consul's output blocks, its JSON, identities, ID
//! prefixes and the command lines.

use std::ffi::OsString;

use super::*;
use proconsul::client::{AclLink, AclPolicy, AclRole, AclToken};

fn bootstrap_token() -> AclToken {
    AclToken {
        accessor_id: "4d123dff-f460-73c3-02c4-8dd64d136e01".into(),
        secret_id: "86cddfb9-2760-d947-358d-a2811156bf31".into(),
        description: "Bootstrap Token (Global Management)".into(),
        policies: vec![AclLink {
            id: "00000000-0000-0000-0000-000000000001".into(),
            name: "global-management".into(),
        }],
        create_time: Some("2024-05-01T10:00:00.123456Z".into()),
        create_index: 12,
        modify_index: 13,
        ..AclToken::default()
    }
}

#[test]
fn a_token_prints_as_consuls_block() {
    assert_eq!(
        format::token(&bootstrap_token(), false),
        "\
AccessorID:       4d123dff-f460-73c3-02c4-8dd64d136e01
SecretID:         86cddfb9-2760-d947-358d-a2811156bf31
Description:      Bootstrap Token (Global Management)
Local:            false
Create Time:      2024-05-01 10:00:00.123456 +0000 UTC
Policies:
   00000000-0000-0000-0000-000000000001 - global-management
"
    );
}

#[test]
fn optional_token_lines_appear_only_when_set() {
    let token = AclToken {
        local: true,
        policies: Vec::new(),
        roles: vec![AclLink {
            id: "r1".into(),
            name: "db".into(),
        }],
        service_identities: service_identities(&["web".into(), "db:east,west".into()]).unwrap(),
        node_identities: node_identities(&["n1:dc1".into()]).unwrap(),
        expiration_time: Some("2024-05-01T11:00:00Z".into()),
        hash: Some("AQIDBA==".into()),
        ..bootstrap_token()
    };
    assert_eq!(
        format::token(&token, true),
        "\
AccessorID:       4d123dff-f460-73c3-02c4-8dd64d136e01
SecretID:         86cddfb9-2760-d947-358d-a2811156bf31
Description:      Bootstrap Token (Global Management)
Local:            true
Create Time:      2024-05-01 10:00:00.123456 +0000 UTC
Expiration Time:  2024-05-01 11:00:00 +0000 UTC
Hash:             01020304
Create Index:     12
Modify Index:     13
Roles:
   r1 - db
Service Identities:
   web (Datacenters: all)
   db (Datacenters: east, west)
Node Identities:
   n1 (Datacenter: dc1)
"
    );
    let two = format::token_list(&[bootstrap_token(), bootstrap_token()], false);
    assert_eq!(two.matches("\n\nAccessorID:").count(), 1, "{two}");
}

#[test]
fn policies_print_with_their_rules_last() {
    let policy = AclPolicy {
        id: "e1b2".into(),
        name: "kv-app".into(),
        description: "app keys".into(),
        rules: "key_prefix \"app/\" { policy = \"write\" }".into(),
        datacenters: vec!["dc1".into(), "dc2".into()],
        create_index: 7,
        modify_index: 8,
        ..AclPolicy::default()
    };
    assert_eq!(
        format::policy(&policy, false),
        "\
ID:           e1b2
Name:         kv-app
Description:  app keys
Datacenters:  dc1, dc2
Rules:
key_prefix \"app/\" { policy = \"write\" }"
    );
    assert_eq!(
        format::policy_list(&[policy], true),
        "\
kv-app:
   ID:           e1b2
   Description:  app keys
   Datacenters:  dc1, dc2
   Hash:         
   Create Index: 7
   Modify Index: 8
"
    );
}

#[test]
fn roles_print_their_links_and_lists_indent_them_once_more() {
    let role = AclRole {
        id: "r1".into(),
        name: "db".into(),
        description: "".into(),
        policies: vec![AclLink {
            id: "p1".into(),
            name: "kv-app".into(),
        }],
        ..AclRole::default()
    };
    assert_eq!(
        format::role(&role, false),
        "ID:           r1\nName:         db\nDescription:  \nPolicies:\n   p1 - kv-app\n"
    );
    assert_eq!(
        format::role_list(&[role], false),
        "db:\n   ID:           r1\n   Description:  \n   Policies:\n      p1 - kv-app\n"
    );
}

#[test]
fn json_is_indented_by_four_spaces_in_consuls_field_order() {
    let text = format::json(&bootstrap_token());
    assert!(
        text.starts_with(
            "{\n    \"CreateIndex\": 12,\n    \"ModifyIndex\": 13,\n    \"AccessorID\""
        ),
        "{text}"
    );
    assert!(text.contains("\n    \"Policies\": [\n        {\n            \"ID\""));
    assert!(!text.contains("Roles"), "empty lists are left out");
    assert_eq!(Format::parse("yaml"), Err("Unknown format: yaml".into()));
}

#[test]
fn times_print_as_go_prints_them() {
    assert_eq!(
        format::go_time("2024-05-01T10:00:00.120Z"),
        "2024-05-01 10:00:00.12 +0000 UTC"
    );
    assert_eq!(
        format::go_time("2024-05-01T10:00:00+02:00"),
        "2024-05-01 10:00:00 +0200 +0200"
    );
    assert_eq!(format::go_time(""), "0001-01-01 00:00:00 +0000 UTC");
    assert_eq!(format::go_time("yesterday"), "yesterday");
    assert_eq!(format::go_time("2024-05-01T1"), "2024-05-01T1");
}

#[test]
fn identities_and_prefixes_fail_with_consuls_words() {
    assert_eq!(
        service_identities(&["a:b:c".into()]),
        Err("Malformed -service-identity argument: \"a:b:c\"".into())
    );
    assert_eq!(
        node_identities(&["n1".into()]),
        Err("Malformed -node-identity argument: \"n1\"".into())
    );
    let ids = vec!["abc1".to_owned(), "abd2".to_owned()];
    assert_eq!(unique_prefix("abc", &ids, "token"), Ok("abc1".into()));
    assert_eq!(
        unique_prefix("ab", &ids, "token"),
        Err("Partial token ID is not unique".into())
    );
    assert_eq!(
        unique_prefix("x", &ids, "policy"),
        Err("No such policy ID with prefix: x".into())
    );
    assert_eq!(agent_token_kind("recovery"), Some("agent_recovery"));
    assert_eq!(agent_token_kind("agent_recovery"), None);
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

#[test]
fn acl_command_lines_parse_with_go_flags() {
    use clap::Parser;
    let parse = |args: &[&str]| {
        crate::cli::Cli::try_parse_from(crate::cli::normalize(go_flag_order(os(args))))
    };
    let cli = parse(&[
        "p",
        "acl",
        "token",
        "create",
        "-policy-name",
        "a",
        "-policy-name=b",
        "-local",
        "-service-identity",
        "web:dc1",
        "-format=json",
    ])
    .unwrap();
    let crate::cli::Command::Acl {
        command:
            AclCommand::Token {
                command: token::TokenCommand::Create(args),
            },
    } = cli.command
    else {
        panic!("not token create");
    };
    assert_eq!(args.grants.policy_name, ["a", "b"]);
    assert!(args.local);
    assert_eq!(args.output.format, "json");
    assert!(parse(&["p", "acl", "policy", "create", "-name", "x", "-rules", "-"]).is_ok());
    assert!(parse(&["p", "acl", "token", "read", "-id", "abc", "-meta"]).is_ok());
    assert!(parse(&["p", "acl", "set-agent-token", "default", "-"]).is_ok());
    assert_eq!(
        go_flag_order(os(&[
            "p",
            "acl",
            "set-agent-token",
            "-token",
            "t",
            "agent",
            "-x"
        ])),
        os(&[
            "p",
            "acl",
            "set-agent-token",
            "-token",
            "t",
            "--",
            "agent",
            "-x"
        ])
    );
    assert!(parse(&["p", "acl", "token", "create", "-bogus"]).is_err());
}
