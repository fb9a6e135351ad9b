//! Signing: the other half of verification, used by the client library, `keygate token` and tests.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};

use crate::crypto::PrivateKeyPem;
use crate::key::Algorithm;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the private key is not a PEM PKCS#8 P-256 or Ed25519 key")]
    BadKey,
    #[error("signing failed")]
    Failed,
}

/// A parsed private key, ready to sign many tokens.
pub struct Signer {
    key: SignerKey,
    rng: SystemRandom,
}

enum SignerKey {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({}, <redacted>)", self.algorithm())
    }
}

impl Signer {
    /// Reads a `.p8` file's text: a P-256 key (App Store Connect's kind) or an Ed25519 key.
    pub fn from_pem(pem: &PrivateKeyPem) -> Result<Self, SignError> {
        let der = pem.der().map_err(|_| SignError::BadKey)?;
        let rng = SystemRandom::new();
        let key =
            if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng) {
                SignerKey::Es256(k)
            } else if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
                SignerKey::EdDsa(k)
            } else {
                return Err(SignError::BadKey);
            };
        Ok(Self { key, rng })
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.key {
            SignerKey::Es256(_) => Algorithm::Es256,
            SignerKey::EdDsa(_) => Algorithm::EdDsa,
        }
    }

    /// The raw public half (a 65-byte uncompressed P-256 point or a 32-byte Ed25519 key), as
    /// keygate stores it.
    pub fn public_key(&self) -> Vec<u8> {
        use ring::signature::KeyPair as _;
        match &self.key {
            SignerKey::Es256(k) => k.public_key().as_ref().to_vec(),
            SignerKey::EdDsa(k) => k.public_key().as_ref().to_vec(),
        }
    }

    /// Signs a JWT with the given header and claims objects as they are (the caller chooses the
    /// members, which lets tests build hostile tokens too).
    pub fn sign_raw(&self, header_json: &[u8], claims_json: &[u8]) -> Result<String, SignError> {
        let mut out = URL_SAFE_NO_PAD.encode(header_json);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(claims_json, &mut out);
        let sig = match &self.key {
            SignerKey::Es256(k) => k
                .sign(&self.rng, out.as_bytes())
                .map_err(|_| SignError::Failed)?
                .as_ref()
                .to_vec(),
            SignerKey::EdDsa(k) => k.sign(out.as_bytes()).as_ref().to_vec(),
        };
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(sig, &mut out);
        Ok(out)
    }
}

/// Signs a token for key `kid` with the standard header (`alg`, `kid`, `typ: JWT`).
pub fn sign_jwt(
    signer: &Signer,
    kid: &str,
    claims: &serde_json::Value,
) -> Result<String, SignError> {
    let header = serde_json::json!({"alg": signer.algorithm().as_str(), "kid": kid, "typ": "JWT"});
    signer.sign_raw(header.to_string().as_bytes(), claims.to_string().as_bytes())
}
