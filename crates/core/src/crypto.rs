//! Key material: generating key pairs, the `.p8` (PEM PKCS#8) format, caller-supplied SPKI
//! public keys, and sealing pending private keys under the master key (AES-256-GCM).
//!
//! Every type here that holds secret bytes redacts its `Debug` and zeroizes on drop.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::key::Algorithm;

/// The deployment's 32-byte master key, which seals private keys until their one download.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A new random master key.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| Error::Internal("OS random number generator failed".into()))?;
        Ok(Self(bytes))
    }

    /// Decodes the base64 form used by `KEYGATE_MASTER_KEY` and the `master.key` file.
    pub fn from_base64(text: &str) -> Result<Self> {
        let decoded = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| Error::body("the master key is not valid base64"))?,
        );
        let bytes: [u8; 32] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| Error::body("the master key must be exactly 32 bytes"))?;
        Ok(Self(bytes))
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0))
    }

    fn aead(&self) -> Result<LessSafeKey> {
        UnboundKey::new(&AES_256_GCM, &self.0)
            .map(LessSafeKey::new)
            .map_err(|_| Error::Internal("cannot build the AES-256-GCM key".into()))
    }

    /// Encrypts a pending private key. `context` (the key ID) is bound as associated data, so a
    /// sealed blob cannot be moved to another key's row.
    pub fn seal(&self, context: &[u8], plaintext: &PrivateKeyPem) -> Result<SealedPrivateKey> {
        self.seal_bytes(context, plaintext.0.as_bytes())
            .map(SealedPrivateKey)
    }

    /// Decrypts what [`seal`](Self::seal) produced for the same `context`.
    pub fn open(&self, context: &[u8], sealed: &SealedPrivateKey) -> Result<PrivateKeyPem> {
        let plain = self.open_bytes(context, &sealed.0)?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| Error::Internal("sealed private key is not PEM".into()))?;
        Ok(PrivateKeyPem(text.to_owned()))
    }

    /// AES-256-GCM with a random nonce: `nonce || ciphertext || tag`.
    pub fn seal_bytes(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::Internal("OS random number generator failed".into()))?;
        let mut buf = Zeroizing::new(plaintext.to_vec());
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut *buf,
            )
            .map_err(|_| Error::Internal("sealing failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// The inverse of [`seal_bytes`](Self::seal_bytes); fails under another key or context.
    pub fn open_bytes(&self, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let (nonce, ciphertext) = sealed
            .split_at_checked(NONCE_LEN)
            .ok_or_else(|| Error::Internal("sealed data is truncated".into()))?;
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| Error::Internal("bad nonce".into()))?;
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .aead()?
            .open_in_place(nonce, Aad::from(context), &mut buf)
            .map_err(|_| {
                Error::Internal(
                    "sealed data does not open under this master key (wrong KEYGATE_MASTER_KEY?)"
                        .into(),
                )
            })?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// An AES-256-GCM sealed private key (`nonce || ciphertext || tag`), as stored until download.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SealedPrivateKey(Vec<u8>);

impl SealedPrivateKey {
    pub fn from_stored(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SealedPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedPrivateKey({} bytes)", self.0.len())
    }
}

/// The first line of a `.p8` file, built from parts so that no source file holds the literal
/// marker that secret scanners look for.
pub const PKCS8_PEM_BEGIN: &str = concat!("-----BEGIN ", "PRIVATE", " KEY-----");

/// A private key in the `.p8` format: PEM-armoured PKCS#8 (a `PRIVATE KEY` block).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKeyPem(String);

impl PrivateKeyPem {
    pub fn from_pem(text: String) -> Self {
        Self(text)
    }
    /// The PEM text. Call sites are the download response and the `.p8` writer, nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The PKCS#8 DER inside the armour.
    pub fn der(&self) -> Result<Zeroizing<Vec<u8>>> {
        pem_decode(&self.0, "PRIVATE KEY")
            .map(Zeroizing::new)
            .ok_or_else(|| Error::body("not a PEM PKCS#8 private key (a PRIVATE KEY block)"))
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

/// A freshly generated key pair: the private half for the one download, and the public half
/// keygate keeps (raw: the 65-byte uncompressed P-256 point, or the 32-byte Ed25519 key).
#[derive(Debug)]
pub struct GeneratedKeyPair {
    pub private: PrivateKeyPem,
    pub public: Vec<u8>,
}

/// Generates a key pair for `alg` with the OS CSPRNG.
pub fn generate_key_pair(alg: Algorithm) -> Result<GeneratedKeyPair> {
    let rng = SystemRandom::new();
    let internal = |what: &str| Error::Internal(format!("key generation failed: {what}"));
    let (pkcs8, public) = match alg {
        Algorithm::Es256 => {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| internal("generate"))?;
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng)
                    .map_err(|_| internal("reparse"))?;
            (
                Zeroizing::new(doc.as_ref().to_vec()),
                pair.public_key().as_ref().to_vec(),
            )
        }
        Algorithm::EdDsa => {
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| internal("generate"))?;
            let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| internal("reparse"))?;
            (
                Zeroizing::new(doc.as_ref().to_vec()),
                pair.public_key().as_ref().to_vec(),
            )
        }
    };
    Ok(GeneratedKeyPair {
        private: PrivateKeyPem(pem_encode("PRIVATE KEY", &pkcs8)),
        public,
    })
}

/// DER prefix of a P-256 `SubjectPublicKeyInfo` holding an uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// DER prefix of an Ed25519 `SubjectPublicKeyInfo`.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Parses a caller-supplied public key (`-----BEGIN PUBLIC KEY-----`, SPKI) for `alg` into the
/// raw form keygate stores. Only the exact DER encodings are accepted.
pub fn parse_public_key_pem(pem: &str, alg: Algorithm) -> Result<Vec<u8>> {
    let bad = |detail: &str| Error::attribute("publicKey", detail.to_owned());
    let der = pem_decode(pem, "PUBLIC KEY").ok_or_else(|| {
        bad("publicKey must be a PEM SubjectPublicKeyInfo (-----BEGIN PUBLIC KEY-----)")
    })?;
    let raw = match alg {
        Algorithm::Es256 => der
            .strip_prefix(&P256_SPKI_PREFIX[..])
            .filter(|p| p.len() == 65 && p.first() == Some(&0x04))
            .ok_or_else(|| {
                bad("publicKey is not an uncompressed P-256 (prime256v1) key, as ES256 needs")
            })?,
        Algorithm::EdDsa => der
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .filter(|p| p.len() == 32)
            .ok_or_else(|| bad("publicKey is not an Ed25519 key, as EdDSA needs"))?,
    };
    Ok(raw.to_vec())
}

/// The SPKI PEM of a raw public key, for showing or exporting public halves.
pub fn public_key_pem(raw: &[u8], alg: Algorithm) -> String {
    let prefix: &[u8] = match alg {
        Algorithm::Es256 => &P256_SPKI_PREFIX,
        Algorithm::EdDsa => &ED25519_SPKI_PREFIX,
    };
    let mut der = prefix.to_vec();
    der.extend_from_slice(raw);
    pem_encode("PUBLIC KEY", &der)
}

/// PEM armour with 64-character lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// The DER inside the first PEM block with `label`; `None` if there is none or it is not base64.
pub fn pem_decode(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let rest = text.get(start..)?;
    let stop = rest.find(&end)?;
    let body: String = rest
        .get(..stop)?
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let body = Zeroizing::new(body);
    STANDARD.decode(body.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_binds_context() {
        let mk = MasterKey::generate().unwrap();
        let pair = generate_key_pair(Algorithm::Es256).unwrap();
        let sealed = mk.seal(b"ABCDEFGHIJ", &pair.private).unwrap();
        assert!(
            !sealed.as_bytes().windows(20).any(|w| pair
                .private
                .expose()
                .as_bytes()
                .windows(20)
                .any(|p| p == w))
        );
        assert_eq!(
            mk.open(b"ABCDEFGHIJ", &sealed).unwrap().expose(),
            pair.private.expose()
        );
        assert!(mk.open(b"OTHERKEYID", &sealed).is_err());
        assert!(
            MasterKey::generate()
                .unwrap()
                .open(b"ABCDEFGHIJ", &sealed)
                .is_err()
        );
    }

    #[test]
    fn generated_keys_are_pkcs8_pem_and_their_public_halves_round_trip() {
        for alg in [Algorithm::Es256, Algorithm::EdDsa] {
            let pair = generate_key_pair(alg).unwrap();
            assert!(
                pair.private
                    .expose()
                    .starts_with(&format!("{PKCS8_PEM_BEGIN}\n"))
            );
            assert!(!pair.private.der().unwrap().is_empty());
            let pem = public_key_pem(&pair.public, alg);
            assert_eq!(parse_public_key_pem(&pem, alg).unwrap(), pair.public);
        }
        let p256 = generate_key_pair(Algorithm::Es256).unwrap();
        assert!(
            parse_public_key_pem(
                &public_key_pem(&p256.public, Algorithm::Es256),
                Algorithm::EdDsa
            )
            .is_err()
        );
        assert!(parse_public_key_pem("not pem", Algorithm::Es256).is_err());
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let pair = generate_key_pair(Algorithm::Es256).unwrap();
        assert_eq!(format!("{:?}", pair.private), "PrivateKeyPem(<redacted>)");
        assert!(!format!("{pair:?}").contains("BEGIN"));
        assert_eq!(
            format!("{:?}", MasterKey::generate().unwrap()),
            "MasterKey(<redacted>)"
        );
    }
}
