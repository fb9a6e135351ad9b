//! Minting tokens. A [`TokenMinter`] holds one parsed private key and hands out the same token
//! until it is close to expiring, as Apple recommends: a reused token is also far cheaper for
//! keygate to verify.

use std::path::Path;
use std::sync::{Arc, Mutex};

use keygate_core::clock::{Clock, SystemClock};
use keygate_core::crypto::PrivateKeyPem;
use keygate_core::token::{Signer, sign_jwt};
use serde_json::json;

use crate::management::ClientError;

/// Who the token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A team key: `iss` is the issuer ID.
    Team { issuer_id: String },
    /// An individual key: `sub: "user"` and no `iss`.
    Individual,
}

/// What goes into each token besides the identity.
#[derive(Debug, Clone)]
pub struct MintOptions {
    pub audience: String,
    /// Seconds from issue to expiry (at most 1200 for ordinary tokens).
    pub lifetime: i64,
    /// Optional `scope` entries, `"METHOD /path?query"`.
    pub scope: Vec<String>,
    /// Whether to include `iat` (App Store Connect clients often omit it).
    pub include_iat: bool,
}

impl Default for MintOptions {
    fn default() -> Self {
        Self {
            audience: "keygate-v1".into(),
            lifetime: 1200,
            scope: Vec::new(),
            include_iat: true,
        }
    }
}

/// Signs tokens for one key and caches the current one.
pub struct TokenMinter {
    signer: Signer,
    key_id: String,
    identity: Identity,
    options: MintOptions,
    clock: Arc<dyn Clock>,
    current: Mutex<Option<(String, i64)>>,
}

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the cached token.
        f.debug_struct("TokenMinter")
            .field("key_id", &self.key_id)
            .field("identity", &self.identity)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl TokenMinter {
    pub fn new(
        pem: &PrivateKeyPem,
        key_id: impl Into<String>,
        identity: Identity,
        options: MintOptions,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            signer: Signer::from_pem(pem).map_err(|e| ClientError::Key(e.to_string()))?,
            key_id: key_id.into(),
            identity,
            options,
            clock: Arc::new(SystemClock),
            current: Mutex::new(None),
        })
    }

    /// Reads a `.p8` file.
    pub fn from_file(
        path: &Path,
        key_id: impl Into<String>,
        identity: Identity,
        options: MintOptions,
    ) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClientError::Key(format!("cannot read {}: {e}", path.display())))?;
        Self::new(&PrivateKeyPem::from_pem(text), key_id, identity, options)
    }

    /// Uses another clock (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// A fresh token, never cached.
    pub fn mint(&self) -> Result<String, ClientError> {
        self.mint_at(self.clock.now()).map(|(t, _)| t)
    }

    fn mint_at(&self, now: i64) -> Result<(String, i64), ClientError> {
        let exp = now + self.options.lifetime;
        let mut claims = serde_json::Map::new();
        claims.insert("aud".into(), json!(self.options.audience));
        claims.insert("exp".into(), json!(exp));
        match &self.identity {
            Identity::Team { issuer_id } => claims.insert("iss".into(), json!(issuer_id)),
            Identity::Individual => claims.insert("sub".into(), json!("user")),
        };
        if self.options.include_iat {
            claims.insert("iat".into(), json!(now));
        }
        if !self.options.scope.is_empty() {
            claims.insert("scope".into(), json!(self.options.scope));
        }
        let token = sign_jwt(
            &self.signer,
            &self.key_id,
            &serde_json::Value::Object(claims),
        )
        .map_err(|e| ClientError::Key(e.to_string()))?;
        Ok((token, exp))
    }

    /// The current token, minted anew only when the cached one has less than a tenth of its
    /// lifetime (at least 60 s) left.
    pub fn token(&self) -> Result<String, ClientError> {
        let now = self.clock.now();
        let margin = (self.options.lifetime / 10)
            .max(60)
            .min(self.options.lifetime / 2);
        let mut current = self
            .current
            .lock()
            .map_err(|_| ClientError::Key("token cache poisoned".into()))?;
        if let Some((token, exp)) = current.as_ref()
            && *exp - now > margin
        {
            return Ok(token.clone());
        }
        let (token, exp) = self.mint_at(now)?;
        *current = Some((token.clone(), exp));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use keygate_core::clock::ManualClock;
    use keygate_core::crypto::generate_key_pair;
    use keygate_core::key::Algorithm;

    use super::*;

    #[test]
    fn reuses_a_token_until_close_to_expiry() {
        let pair = generate_key_pair(Algorithm::Es256).unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let minter = TokenMinter::new(
            &pair.private,
            "ABCDEFGHIJ",
            Identity::Team {
                issuer_id: "x".into(),
            },
            MintOptions::default(),
        )
        .unwrap()
        .with_clock(clock.clone());
        let first = minter.token().unwrap();
        clock.advance(1000);
        assert_eq!(minter.token().unwrap(), first, "reused with 200 s left");
        clock.advance(100);
        assert_ne!(minter.token().unwrap(), first, "renewed with 100 s left");
    }
}
