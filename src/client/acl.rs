//! The ACL endpoints (`/v1/acl/*`) and the agent's own tokens (`/v1/agent/token/:type`),
//! typed. The types keep the field order and the omitted-when-empty fields of Consul's
//! Go client, so that `serde_json` renders them as `consul acl … -format=json` does.

use hyper::Method;
use serde::{Deserialize, Serialize};

use super::{AgentClient, ClientError, decode, encode_segment};

/// A policy or role a token (or a role) links to, by ID or by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AclLink {
    /// The policy's or role's ID (empty in a request that names it).
    #[serde(rename = "ID", default)]
    pub id: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
}

impl AclLink {
    /// A link by ID.
    pub fn by_id(id: impl Into<String>) -> AclLink {
        AclLink {
            id: id.into(),
            name: String::new(),
        }
    }

    /// A link by name; the server finds the ID.
    pub fn by_name(name: impl Into<String>) -> AclLink {
        AclLink {
            id: String::new(),
            name: name.into(),
        }
    }
}

/// A service identity: `service:write` on one service, in some datacenters (all when
/// empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AclServiceIdentity {
    /// The service.
    pub service_name: String,
    /// Where the identity holds; empty for everywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
}

/// A node identity: `node:write` on one node of one datacenter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AclNodeIdentity {
    /// The node.
    pub node_name: String,
    /// Its datacenter.
    pub datacenter: String,
}

/// An ACL token, as the agent sends it and as a create or update sends it back. Its
/// `Debug` form leaves the SecretID out.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AclToken {
    /// Raft index of creation.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index of the last change.
    #[serde(default)]
    pub modify_index: u64,
    /// The token's public ID (empty in a create: the server picks one).
    #[serde(rename = "AccessorID", default)]
    pub accessor_id: String,
    /// The bearer secret (empty in a create: the server picks one).
    #[serde(rename = "SecretID", default)]
    pub secret_id: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Linked policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<AclLink>,
    /// Linked roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<AclLink>,
    /// Service identities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_identities: Vec<AclServiceIdentity>,
    /// Node identities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_identities: Vec<AclNodeIdentity>,
    /// Whether the token stays in its datacenter.
    #[serde(default)]
    pub local: bool,
    /// The auth method that made it (none in proconsul).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth_method: String,
    /// In a create: how long the token lives (`"1h"`).
    #[serde(
        rename = "ExpirationTTL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub expiration_ttl: Option<String>,
    /// When the token stops working (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<String>,
    /// When it was made (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    /// Content hash (base64), when the agent sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

impl std::fmt::Debug for AclToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclToken")
            .field("accessor_id", &self.accessor_id)
            .field("secret_id", &"redacted")
            .field("description", &self.description)
            .field("policies", &self.policies)
            .field("roles", &self.roles)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// An ACL policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AclPolicy {
    /// Its ID (empty in a create).
    #[serde(rename = "ID", default)]
    pub id: String,
    /// Its unique name.
    #[serde(default)]
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The rules, HCL or JSON (lists leave them out).
    #[serde(default)]
    pub rules: String,
    /// Where the policy holds; empty for everywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
    /// Content hash (base64), when the agent sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Raft index of creation.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index of the last change.
    #[serde(default)]
    pub modify_index: u64,
}

/// An ACL role: policies and identities under one name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AclRole {
    /// Its ID (empty in a create).
    #[serde(rename = "ID", default)]
    pub id: String,
    /// Its unique name.
    #[serde(default)]
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Linked policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<AclLink>,
    /// Service identities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_identities: Vec<AclServiceIdentity>,
    /// Node identities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_identities: Vec<AclNodeIdentity>,
    /// Content hash (base64), when the agent sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Raft index of creation.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index of the last change.
    #[serde(default)]
    pub modify_index: u64,
}

/// What the objects are called in URLs (`/v1/acl/<kind>/…`, `/v1/acl/<kind>s`).
const TOKEN: &str = "token";
const POLICY: &str = "policy";
const ROLE: &str = "role";

impl AgentClient {
    /// Makes the first management token (`PUT /v1/acl/bootstrap`), with `secret` as its
    /// SecretID when given (a UUID); a second bootstrap is refused with 403.
    pub async fn acl_bootstrap(&self, secret: Option<&str>) -> Result<AclToken, ClientError> {
        let body = secret.map(|s| serde_json::json!({ "BootstrapSecret": s }).to_string());
        self.acl_put("/v1/acl/bootstrap", body).await
    }

    /// Creates a token (`PUT /v1/acl/token`) and returns it as stored.
    pub async fn acl_token_create(&self, token: &AclToken) -> Result<AclToken, ClientError> {
        self.acl_put("/v1/acl/token", Some(to_body(token))).await
    }

    /// Replaces the token `token.accessor_id` (`PUT /v1/acl/token/:accessor`).
    pub async fn acl_token_update(&self, token: &AclToken) -> Result<AclToken, ClientError> {
        let path = object_path(TOKEN, &token.accessor_id);
        self.acl_put(&path, Some(to_body(token))).await
    }

    /// A copy of a token with new secrets (`PUT /v1/acl/token/:accessor/clone`).
    pub async fn acl_token_clone(
        &self,
        accessor: &str,
        description: &str,
    ) -> Result<AclToken, ClientError> {
        let path = format!("{}/clone", object_path(TOKEN, accessor));
        let body = serde_json::json!({ "Description": description }).to_string();
        self.acl_put(&path, Some(body)).await
    }

    /// One token by accessor ID (`GET /v1/acl/token/:accessor`).
    pub async fn acl_token_read(&self, accessor: &str) -> Result<AclToken, ClientError> {
        self.acl_get(&object_path(TOKEN, accessor)).await
    }

    /// The token this client presents (`GET /v1/acl/token/self`).
    pub async fn acl_token_self(&self) -> Result<AclToken, ClientError> {
        self.acl_get("/v1/acl/token/self").await
    }

    /// Every token (`GET /v1/acl/tokens`).
    pub async fn acl_token_list(&self) -> Result<Vec<AclToken>, ClientError> {
        self.acl_get("/v1/acl/tokens").await
    }

    /// Deletes a token (`DELETE /v1/acl/token/:accessor`).
    pub async fn acl_token_delete(&self, accessor: &str) -> Result<(), ClientError> {
        self.acl_delete(&object_path(TOKEN, accessor)).await
    }

    /// Creates a policy (`PUT /v1/acl/policy`).
    pub async fn acl_policy_create(&self, policy: &AclPolicy) -> Result<AclPolicy, ClientError> {
        self.acl_put("/v1/acl/policy", Some(to_body(policy))).await
    }

    /// Replaces the policy `policy.id` (`PUT /v1/acl/policy/:id`).
    pub async fn acl_policy_update(&self, policy: &AclPolicy) -> Result<AclPolicy, ClientError> {
        let path = object_path(POLICY, &policy.id);
        self.acl_put(&path, Some(to_body(policy))).await
    }

    /// One policy by ID (`GET /v1/acl/policy/:id`).
    pub async fn acl_policy_read(&self, id: &str) -> Result<AclPolicy, ClientError> {
        self.acl_get(&object_path(POLICY, id)).await
    }

    /// One policy by name (`GET /v1/acl/policy/name/:name`).
    pub async fn acl_policy_read_by_name(&self, name: &str) -> Result<AclPolicy, ClientError> {
        self.acl_get(&object_path(
            POLICY,
            &format!("name/{}", encode_segment(name)),
        ))
        .await
    }

    /// Every policy, rules left out (`GET /v1/acl/policies`).
    pub async fn acl_policy_list(&self) -> Result<Vec<AclPolicy>, ClientError> {
        self.acl_get("/v1/acl/policies").await
    }

    /// Deletes a policy (`DELETE /v1/acl/policy/:id`).
    pub async fn acl_policy_delete(&self, id: &str) -> Result<(), ClientError> {
        self.acl_delete(&object_path(POLICY, id)).await
    }

    /// Creates a role (`PUT /v1/acl/role`).
    pub async fn acl_role_create(&self, role: &AclRole) -> Result<AclRole, ClientError> {
        self.acl_put("/v1/acl/role", Some(to_body(role))).await
    }

    /// Replaces the role `role.id` (`PUT /v1/acl/role/:id`).
    pub async fn acl_role_update(&self, role: &AclRole) -> Result<AclRole, ClientError> {
        let path = object_path(ROLE, &role.id);
        self.acl_put(&path, Some(to_body(role))).await
    }

    /// One role by ID (`GET /v1/acl/role/:id`).
    pub async fn acl_role_read(&self, id: &str) -> Result<AclRole, ClientError> {
        self.acl_get(&object_path(ROLE, id)).await
    }

    /// One role by name (`GET /v1/acl/role/name/:name`).
    pub async fn acl_role_read_by_name(&self, name: &str) -> Result<AclRole, ClientError> {
        self.acl_get(&object_path(
            ROLE,
            &format!("name/{}", encode_segment(name)),
        ))
        .await
    }

    /// Every role (`GET /v1/acl/roles`).
    pub async fn acl_role_list(&self) -> Result<Vec<AclRole>, ClientError> {
        self.acl_get("/v1/acl/roles").await
    }

    /// Deletes a role (`DELETE /v1/acl/role/:id`).
    pub async fn acl_role_delete(&self, id: &str) -> Result<(), ClientError> {
        self.acl_delete(&object_path(ROLE, id)).await
    }

    /// Replaces one of the agent's own tokens while it runs
    /// (`PUT /v1/agent/token/:kind`; `kind` as the URL names it: `default`, `agent`,
    /// `agent_recovery`, `replication`, `config_file_service_registration`, `dns`).
    pub async fn agent_token_set(&self, kind: &str, token: &str) -> Result<(), ClientError> {
        let path = format!("/v1/agent/token/{}", encode_segment(kind));
        let body = serde_json::json!({ "Token": token }).to_string();
        self.send(Method::PUT, &path, Some(body)).await?;
        Ok(())
    }

    async fn acl_get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let r = self.send(Method::GET, path, None).await?;
        decode(path, &r.body)
    }

    async fn acl_put<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Option<String>,
    ) -> Result<T, ClientError> {
        let r = self.send(Method::PUT, path, body).await?;
        decode(path, &r.body)
    }

    async fn acl_delete(&self, path: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, path, None).await?;
        Ok(())
    }
}

/// `/v1/acl/<kind>/<id>`; `id` is percent-encoded unless it is a `name/…` path.
fn object_path(kind: &str, id: &str) -> String {
    if id.starts_with("name/") {
        format!("/v1/acl/{kind}/{id}")
    } else {
        format!("/v1/acl/{kind}/{}", encode_segment(id))
    }
}

fn to_body(value: &impl Serialize) -> String {
    // Structs of strings, numbers, booleans and lists of them always serialise.
    serde_json::to_string(value).expect("an ACL object serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_leaves_out_what_the_server_fills_in() {
        let token = AclToken {
            description: "web".into(),
            policies: vec![AclLink::by_name("kv-app")],
            expiration_ttl: Some("1h".into()),
            ..AclToken::default()
        };
        assert_eq!(
            to_body(&token),
            r#"{"CreateIndex":0,"ModifyIndex":0,"AccessorID":"","SecretID":"","Description":"web","Policies":[{"ID":"","Name":"kv-app"}],"Local":false,"ExpirationTTL":"1h"}"#
        );
        assert!(!format!("{token:?}").contains("SecretID"));
    }

    #[test]
    fn tokens_decode_from_the_agents_json() {
        let t: AclToken = serde_json::from_str(
            r#"{"AccessorID":"a","SecretID":"s","Description":"d","Policies":[{"ID":"p","Name":"n"}],
                "Local":false,"CreateTime":"2024-05-01T10:00:00.123456Z","CreateIndex":5,"ModifyIndex":6}"#,
        )
        .unwrap();
        assert_eq!(
            t.policies,
            vec![AclLink {
                id: "p".into(),
                name: "n".into()
            }]
        );
        assert_eq!(
            t.create_time.as_deref(),
            Some("2024-05-01T10:00:00.123456Z")
        );
        assert!(!format!("{t:?}").contains("\"s\""));
        assert_eq!(object_path(POLICY, "name/a b"), "/v1/acl/policy/name/a b");
        assert_eq!(object_path(TOKEN, "x/y"), "/v1/acl/token/x%2Fy");
    }
}
