//! A typed client of keygate's management API.

use std::sync::Arc;

use keygate_core::crypto::PrivateKeyPem;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::minter::TokenMinter;

/// What went wrong talking to keygate.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// keygate answered with an error document.
    #[error("{status} {code}{}: {detail}", reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Api {
        status: u16,
        code: String,
        reason: Option<String>,
        detail: String,
    },
    #[error("cannot reach keygate: {0}")]
    Transport(String),
    #[error("private key: {0}")]
    Key(String),
    #[error("unexpected response: {0}")]
    Protocol(String),
}

/// An API key as the management API describes it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyInfo {
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
    pub key_type: String,
    pub algorithm: String,
    pub issuer_id: String,
    pub is_active: bool,
    pub can_download: bool,
    pub created_date: String,
    pub last_used_date: Option<String>,
    #[serde(default)]
    pub request_count: u64,
    pub revoked_date: Option<String>,
    pub created_by: String,
}

impl ApiKeyInfo {
    fn from_resource(v: &Value) -> Result<Self, ClientError> {
        from_resource(v)
    }
}

/// A user as the management API describes it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    pub id: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub roles: Vec<String>,
    pub created_date: String,
}

/// A secret key as the management API describes it; `secret` only right after create or roll.
/// `Debug` never shows the secret.
#[derive(Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyInfo {
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
    pub restrictions: Value,
    pub is_active: bool,
    pub created_date: String,
    pub expires_at: Option<String>,
    pub revoked_date: Option<String>,
    pub last_used_date: Option<String>,
    #[serde(default)]
    pub request_count: u64,
    /// The live secrets' hints and ends.
    pub secrets: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// A new invitation and its one-time accept link (an absolute URL on the server). The link is a
/// bearer secret: `Debug` never shows it.
#[derive(Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Invited {
    pub id: String,
    pub email: String,
    pub roles: Vec<String>,
    pub expiration_date: String,
    pub accept_url: String,
}

impl std::fmt::Debug for SecretKeyInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKeyInfo")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("roles", &self.roles)
            .field("is_active", &self.is_active)
            .field("secrets", &self.secrets)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Invited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invited")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("roles", &self.roles)
            .field("expiration_date", &self.expiration_date)
            .field("accept_url", &"<redacted>")
            .finish()
    }
}

fn from_resource<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, ClientError> {
    let mut attrs = v
        .get("attributes")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| ClientError::Protocol("resource without attributes".into()))?;
    attrs.insert("id".into(), v.get("id").cloned().unwrap_or(Value::Null));
    serde_json::from_value(Value::Object(attrs)).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Calls `/v1` on one keygate server with tokens from a [`TokenMinter`].
#[derive(Debug, Clone)]
pub struct ManagementClient {
    http: reqwest::Client,
    base: String,
    minter: Arc<TokenMinter>,
}

impl ManagementClient {
    pub fn new(base_url: &str, minter: Arc<TokenMinter>) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            minter,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let token = self.minter.token()?;
        let resp = req
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let err = body.pointer("/errors/0").cloned().unwrap_or(Value::Null);
        let s = |k: &str| err.get(k).and_then(Value::as_str).map(str::to_owned);
        Err(ClientError::Api {
            status,
            code: s("code").unwrap_or_else(|| "UNKNOWN".into()),
            reason: err
                .pointer("/meta/reason")
                .and_then(Value::as_str)
                .map(str::to_owned),
            detail: s("detail").unwrap_or_default(),
        })
    }

    async fn json(&self, req: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        self.send(req)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Every resource of a collection, following `links.next` from `first` to the last page.
    async fn all_pages(&self, first: String) -> Result<Vec<Value>, ClientError> {
        let mut out = Vec::new();
        let mut next = Some(first);
        while let Some(path) = next.take() {
            let mut doc = self
                .json(self.http.get(format!("{}{path}", self.base)))
                .await?;
            next = doc
                .pointer("/links/next")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if let Some(Value::Array(items)) = doc.get_mut("data").map(Value::take) {
                out.extend(items);
            }
        }
        Ok(out)
    }

    /// Every key of the caller's issuer (all pages), newest first.
    pub async fn list_keys(&self, status: Option<&str>) -> Result<Vec<ApiKeyInfo>, ClientError> {
        let first = match status {
            Some(s) => format!("/v1/apiKeys?filter[status]={s}&limit=200"),
            None => "/v1/apiKeys?limit=200".to_owned(),
        };
        self.all_pages(first)
            .await?
            .iter()
            .map(ApiKeyInfo::from_resource)
            .collect()
    }

    pub async fn create_key(
        &self,
        name: &str,
        roles: &[String],
        algorithm: Option<&str>,
    ) -> Result<ApiKeyInfo, ClientError> {
        let mut attrs = serde_json::Map::new();
        attrs.insert("name".into(), json!(name));
        attrs.insert("roles".into(), json!(roles));
        if let Some(a) = algorithm {
            attrs.insert("algorithm".into(), json!(a));
        }
        let body = json!({"data": {"type": "apiKeys", "attributes": attrs}});
        let doc = self
            .json(
                self.http
                    .post(format!("{}/v1/apiKeys", self.base))
                    .json(&body),
            )
            .await?;
        ApiKeyInfo::from_resource(doc.get("data").unwrap_or(&Value::Null))
    }

    /// The one-time download of a key's `.p8`.
    pub async fn download_private_key(&self, key_id: &str) -> Result<PrivateKeyPem, ClientError> {
        let resp = self
            .send(
                self.http
                    .get(format!("{}/v1/apiKeys/{key_id}/privateKey", self.base)),
            )
            .await?;
        let text = resp
            .text()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(PrivateKeyPem::from_pem(text))
    }

    pub async fn revoke_key(
        &self,
        key_id: &str,
        reason: Option<&str>,
    ) -> Result<ApiKeyInfo, ClientError> {
        from_resource(&self.revoke("apiKeys", key_id, reason).await?)
    }

    /// `PATCH /v1/{kind}/{id}` with `isActive: false`: the revoked resource.
    async fn revoke(
        &self,
        kind: &str,
        id: &str,
        reason: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut attrs = serde_json::Map::new();
        attrs.insert("isActive".into(), json!(false));
        if let Some(r) = reason {
            attrs.insert("revokeReason".into(), json!(r));
        }
        let body = json!({"data": {"type": kind, "id": id, "attributes": attrs}});
        let mut doc = self
            .json(
                self.http
                    .patch(format!("{}/v1/{kind}/{id}", self.base))
                    .json(&body),
            )
            .await?;
        Ok(doc.get_mut("data").map_or(Value::Null, Value::take))
    }

    /// The issuer's users.
    pub async fn list_users(&self) -> Result<Vec<UserInfo>, ClientError> {
        self.all_pages("/v1/users?limit=200".to_owned())
            .await?
            .iter()
            .map(from_resource)
            .collect()
    }

    /// Invites a person; the answer holds the one-time accept link, shown only now.
    pub async fn invite_user(
        &self,
        email: &str,
        first_name: &str,
        last_name: &str,
        roles: &[String],
    ) -> Result<Invited, ClientError> {
        let body = json!({"data": {"type": "userInvitations", "attributes": {
            "email": email, "firstName": first_name, "lastName": last_name, "roles": roles,
        }}});
        let doc = self
            .json(
                self.http
                    .post(format!("{}/v1/userInvitations", self.base))
                    .json(&body),
            )
            .await?;
        let data = doc.get("data").unwrap_or(&Value::Null);
        let text = |p: &str| {
            data.pointer(p)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| ClientError::Protocol(format!("invitation without {p}")))
        };
        let accept = doc
            .pointer("/links/accept")
            .and_then(Value::as_str)
            .ok_or_else(|| ClientError::Protocol("invitation without links.accept".into()))?;
        Ok(Invited {
            id: text("/id")?,
            email: text("/attributes/email")?,
            roles: data
                .pointer("/attributes/roles")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            expiration_date: text("/attributes/expirationDate")?,
            accept_url: format!("{}{accept}", self.base),
        })
    }

    /// Removes a user; their individual key is revoked at once.
    pub async fn remove_user(&self, user_id: &str) -> Result<(), ClientError> {
        self.send(
            self.http
                .delete(format!("{}/v1/users/{user_id}", self.base)),
        )
        .await
        .map(drop)
    }

    /// Every secret key of the issuer (hints only).
    pub async fn list_secret_keys(&self) -> Result<Vec<SecretKeyInfo>, ClientError> {
        self.all_pages("/v1/secretKeys?limit=200".to_owned())
            .await?
            .iter()
            .map(from_resource)
            .collect()
    }

    /// Creates a secret key; the answer's `secret` is shown this once.
    pub async fn create_secret_key(
        &self,
        name: &str,
        roles: &[String],
        restrictions: Value,
        expires_at: Option<&str>,
    ) -> Result<SecretKeyInfo, ClientError> {
        let mut attrs = serde_json::Map::new();
        attrs.insert("name".into(), json!(name));
        attrs.insert("roles".into(), json!(roles));
        attrs.insert("restrictions".into(), restrictions);
        if let Some(e) = expires_at {
            attrs.insert("expiresAt".into(), json!(e));
        }
        let body = json!({"data": {"type": "secretKeys", "attributes": attrs}});
        let doc = self
            .json(
                self.http
                    .post(format!("{}/v1/secretKeys", self.base))
                    .json(&body),
            )
            .await?;
        from_resource(doc.get("data").unwrap_or(&Value::Null))
    }

    /// Rolls a secret key: a new secret (shown this once); the old one works until
    /// `old_expires_at` (RFC 3339), or stops now.
    pub async fn roll_secret_key(
        &self,
        id: &str,
        old_expires_at: Option<&str>,
    ) -> Result<SecretKeyInfo, ClientError> {
        let mut attrs = serde_json::Map::new();
        if let Some(t) = old_expires_at {
            attrs.insert("oldKeyExpiresAt".into(), json!(t));
        }
        let body = json!({"data": {"type": "secretKeys", "id": id, "attributes": attrs}});
        let doc = self
            .json(
                self.http
                    .post(format!("{}/v1/secretKeys/{id}/roll", self.base))
                    .json(&body),
            )
            .await?;
        from_resource(doc.get("data").unwrap_or(&Value::Null))
    }

    pub async fn revoke_secret_key(
        &self,
        id: &str,
        reason: Option<&str>,
    ) -> Result<SecretKeyInfo, ClientError> {
        from_resource(&self.revoke("secretKeys", id, reason).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_secret_or_a_link() {
        let secret = format!("kgsk_{}_abcdef", "A".repeat(43));
        let info = SecretKeyInfo {
            id: "S000000001".into(),
            name: "maps".into(),
            roles: vec!["DEVELOPER".into()],
            restrictions: Value::Null,
            is_active: true,
            created_date: "2026-11-26T00:00:00Z".into(),
            expires_at: None,
            revoked_date: None,
            last_used_date: None,
            request_count: 0,
            secrets: Vec::new(),
            secret: Some(secret.clone()),
        };
        let invited = Invited {
            id: "i".into(),
            email: "a@example.com".into(),
            roles: vec!["DEVELOPER".into()],
            expiration_date: "2026-11-29T00:00:00Z".into(),
            accept_url: "http://127.0.0.1:8080/invitations/very-secret-link".into(),
        };
        let shown = format!("{info:?} {invited:?}");
        assert!(!shown.contains(&secret), "{shown}");
        assert!(!shown.contains("very-secret-link"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
