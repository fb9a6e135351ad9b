//! Secrets people and browsers hold: session IDs, invitation and setup links, and passwords.
//!
//! keygate stores only a one-way form of each: SHA-256 for the 256-bit random bearer values
//! (a lookup by hash, so no comparison of secrets happens at all), argon2id for passwords.
//! Every type here redacts its `Debug` and zeroizes on drop.

use std::fmt;

use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};

/// A 256-bit random bearer value from the OS CSPRNG, written as 43 base64url characters: a
/// session ID, an invitation link or the first-run setup link.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct BearerSecret(String);

/// The stored form of a [`BearerSecret`].
pub type SecretHash = [u8; 32];

impl BearerSecret {
    const LEN: usize = 43;

    pub fn generate() -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| Error::Internal("OS random number generator failed".into()))?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes.as_ref())))
    }

    /// Accepts only the exact shape keygate hands out; anything else cannot match a stored hash.
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == Self::LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| Self(text.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256: what storage keeps and looks up by.
    pub fn hash(&self) -> SecretHash {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }

    /// A value derived from this one for another purpose (the CSRF token of a session): HMAC
    /// under the secret, so it reveals nothing about the secret itself.
    pub fn derive(&self, label: &str) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.0.as_bytes());
        URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, label.as_bytes()).as_ref())
    }
}

impl fmt::Debug for BearerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerSecret(<redacted>)")
    }
}

/// Compares two public-length strings in constant time (CSRF tokens).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A password as typed, for as long as it takes to hash or check it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Password(String);

impl Password {
    /// Shortest and longest accepted passwords (NIST SP 800-63B: at least 8; long passphrases welcome).
    pub const MIN_CHARS: usize = 10;
    pub const MAX_CHARS: usize = 256;

    pub fn new(text: String) -> Self {
        Self(text)
    }

    /// Checks a new password against the rules, with a message fit for a form.
    pub fn validate_new(&self) -> Result<()> {
        let n = self.0.chars().count();
        if n < Self::MIN_CHARS {
            return Err(Error::attribute(
                "password",
                format!(
                    "The password must have at least {} characters.",
                    Self::MIN_CHARS
                ),
            ));
        }
        if n > Self::MAX_CHARS {
            return Err(Error::attribute(
                "password",
                format!(
                    "The password must have at most {} characters.",
                    Self::MAX_CHARS
                ),
            ));
        }
        Ok(())
    }

    /// Hashes with argon2id at OWASP's parameters (19 MiB, 2 passes, 1 lane) and a random salt,
    /// as a PHC string. Takes tens of milliseconds: call it off the async workers.
    pub fn hash(&self) -> Result<PasswordHashText> {
        self.hash_with(&mut HashingMemory::new())
    }

    /// [`hash`](Self::hash) in `memory`, which the caller reuses: hashing then costs no
    /// allocation of its 19 MiB, so the memory of password hashing stays what the pool holds,
    /// whatever the allocator keeps of freed blocks.
    pub fn hash_with(&self, memory: &mut HashingMemory) -> Result<PasswordHashText> {
        let mut salt = [0u8; 16];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| Error::Internal("OS random number generator failed".into()))?;
        let salt_text = SaltString::encode_b64(&salt)
            .map_err(|e| Error::Internal(format!("password salt: {e}")))?;
        let params = params()?;
        let mut out = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password_into_with_memory(self.0.as_bytes(), &salt, out.as_mut(), memory.blocks())
            .map_err(|e| Error::Internal(format!("password hashing failed: {e}")))?;
        let phc = PasswordHash {
            algorithm: argon2::ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params: (&params)
                .try_into()
                .map_err(|e| Error::Internal(format!("argon2 parameters: {e}")))?,
            salt: Some(salt_text.as_salt()),
            hash: Some(
                Output::new(out.as_ref())
                    .map_err(|e| Error::Internal(format!("password hash: {e}")))?,
            ),
        };
        Ok(PasswordHashText(phc.to_string()))
    }

    /// Checks against a stored hash, in constant time. A corrupt stored hash never matches.
    pub fn matches(&self, stored: &PasswordHashText) -> bool {
        self.matches_with(stored, &mut HashingMemory::new())
    }

    /// [`matches`](Self::matches) in reused `memory` (a stored hash with more memory than
    /// it holds is checked in a fresh allocation).
    pub fn matches_with(&self, stored: &PasswordHashText, memory: &mut HashingMemory) -> bool {
        let Ok(parsed) = PasswordHash::new(&stored.0) else {
            return false;
        };
        let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) = (
            Algorithm::try_from(parsed.algorithm),
            Params::try_from(&parsed),
            parsed.salt,
            parsed.hash,
        ) else {
            return false;
        };
        let version = match parsed.version.map(Version::try_from) {
            None => Version::V0x13,
            Some(Ok(v)) => v,
            Some(Err(_)) => return false,
        };
        let mut salt_buf = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
            return false;
        };
        let mut out = Zeroizing::new(vec![0u8; expected.len()]);
        let argon = Argon2::new(algorithm, version, params.clone());
        let hashed = if params.block_count() <= memory.0.len() {
            argon.hash_password_into_with_memory(self.0.as_bytes(), salt, &mut out, memory.blocks())
        } else {
            argon.hash_password_into(self.0.as_bytes(), salt, &mut out)
        };
        // `Output`'s equality is constant-time.
        hashed.is_ok() && Output::new(&out).is_ok_and(|got| got == expected)
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// argon2id at OWASP's parameters: 19 MiB, 2 passes, 1 lane.
const MEMORY_KIB: u32 = 19 * 1024;

fn params() -> Result<Params> {
    Params::new(MEMORY_KIB, 2, 1, None)
        .map_err(|e| Error::Internal(format!("argon2 parameters: {e}")))
}

/// The working memory of one argon2 hash (19 MiB), kept and reused by whoever hashes: a fixed
/// pool of these bounds password hashing's memory.
pub struct HashingMemory(Vec<argon2::Block>);

impl HashingMemory {
    pub fn new() -> Self {
        Self(vec![argon2::Block::default(); MEMORY_KIB as usize])
    }

    fn blocks(&mut self) -> &mut [argon2::Block] {
        &mut self.0
    }
}

impl Default for HashingMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for HashingMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashingMemory({} KiB)", self.0.len())
    }
}

/// An argon2id PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`), as stored.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct PasswordHashText(String);

impl PasswordHashText {
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHashText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHashText(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_secrets_are_random_hashed_and_redacted() {
        let a = BearerSecret::generate().unwrap();
        let b = BearerSecret::generate().unwrap();
        assert_eq!(a.expose().len(), 43);
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.hash(), b.hash());
        assert_eq!(BearerSecret::parse(a.expose()).unwrap().hash(), a.hash());
        assert!(!format!("{a:?}").contains(a.expose()));
        assert_ne!(a.derive("csrf"), a.derive("other"));
        assert!(!a.derive("csrf").contains(a.expose()));
        for bad in [
            "",
            "short",
            &"a".repeat(44),
            &format!("{}=", &a.expose()[..42]),
        ] {
            assert!(BearerSecret::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn passwords_hash_with_argon2id_and_check() {
        let pw = Password::new("correct horse battery".into());
        let stored = pw.hash().unwrap();
        assert!(
            stored
                .as_str()
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
        assert!(pw.matches(&stored));
        assert!(!Password::new("correct horse battery!".into()).matches(&stored));
        assert!(!pw.matches(&PasswordHashText::from_stored("garbage".into())));
        assert!(!format!("{pw:?} {stored:?}").contains("horse"));
        assert!(Password::new("short".into()).validate_new().is_err());
        assert!(constant_time_eq("abc", "abc") && !constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }

    /// Hashing in reused memory is the same PHC format argon2's own hasher writes, both ways:
    /// hashes stored by earlier versions still verify, and ours verify with argon2's verifier;
    /// one buffer serves hash after hash; other parameters are read from the stored string.
    #[test]
    fn pooled_memory_hashes_are_standard_phc() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let mut memory = HashingMemory::new();
        let pw = Password::new("correct horse battery".into());
        let ours = pw.hash_with(&mut memory).unwrap();
        let parsed = PasswordHash::new(ours.as_str()).unwrap();
        assert!(
            Argon2::default()
                .verify_password(pw.0.as_bytes(), &parsed)
                .is_ok()
        );
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params().unwrap())
            .hash_password(pw.0.as_bytes(), &salt)
            .unwrap()
            .to_string();
        let theirs = PasswordHashText::from_stored(theirs);
        for _ in 0..3 {
            assert!(pw.matches_with(&theirs, &mut memory));
            assert!(pw.matches_with(&ours, &mut memory));
            assert!(!Password::new("wrong".into()).matches_with(&ours, &mut memory));
        }
        // Cheaper parameters (an older deployment's) and argon2i still verify.
        let light = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        )
        .hash_password(pw.0.as_bytes(), &salt)
        .unwrap()
        .to_string();
        assert!(pw.matches_with(&PasswordHashText::from_stored(light), &mut memory));
    }
}

/// Every type that holds key material, a secret, a password or a session ID redacts its
/// `Debug` and is zeroized on drop (SPEC §9).
#[cfg(test)]
mod hygiene {
    use zeroize::ZeroizeOnDrop;

    use crate::crypto::{MasterKey, PrivateKeyPem, SealedPrivateKey, generate_key_pair};
    use crate::key::Algorithm;
    use crate::secret::{BearerSecret, Password, PasswordHashText};
    use crate::secret_key::SecretKeyText;

    fn zeroized_on_drop<T: ZeroizeOnDrop>() {}

    #[test]
    fn secret_types_redact_debug_and_zeroize_on_drop() {
        zeroized_on_drop::<PrivateKeyPem>();
        zeroized_on_drop::<MasterKey>();
        zeroized_on_drop::<SealedPrivateKey>();
        zeroized_on_drop::<BearerSecret>();
        zeroized_on_drop::<Password>();
        zeroized_on_drop::<PasswordHashText>();
        zeroized_on_drop::<SecretKeyText>();

        let pem = generate_key_pair(Algorithm::Es256).unwrap().private;
        let master = MasterKey::generate().unwrap();
        let sealed = master.seal(b"ctx", &pem).unwrap();
        let bearer = BearerSecret::generate().unwrap();
        let password = Password::new("hunter2 hunter2".into());
        let hash = password.hash().unwrap();
        let secret = SecretKeyText::generate().unwrap();
        let signer = crate::token::Signer::from_pem(&pem).unwrap();
        // (Debug output, what must not be in it)
        let cases: Vec<(String, String)> = vec![
            (
                format!("{pem:?}"),
                pem.expose().lines().nth(1).unwrap_or("").to_owned(),
            ),
            (format!("{master:?}"), master.to_base64().to_string()),
            (format!("{sealed:?}"), format!("{:?}", sealed.as_bytes())),
            (format!("{bearer:?}"), bearer.expose().to_owned()),
            (format!("{password:?}"), "hunter2".to_owned()),
            (format!("{hash:?}"), hash.as_str().to_owned()),
            (format!("{secret:?}"), secret.expose().to_owned()),
            (
                format!("{signer:?}"),
                pem.expose().lines().nth(1).unwrap_or("").to_owned(),
            ),
        ];
        for (debug, secret) in cases {
            assert!(!secret.is_empty());
            assert!(!debug.contains(&secret), "{debug}");
            assert!(
                debug.contains("redacted") || debug.ends_with(" bytes)"),
                "{debug}"
            );
        }
    }
}
