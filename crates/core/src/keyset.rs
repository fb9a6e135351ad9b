//! The verification state: every key's public half, algorithm, roles and status, held in memory
//! as an immutable snapshot that is swapped atomically. Readers on the hot path take no lock and
//! make no database call; writers build a new snapshot from the change feed and swap it in.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey, VerificationAlgorithm};

use crate::clock::UnixTime;
use crate::error::Result;
use crate::ids::{IssuerId, KeyId};
use crate::key::{Algorithm, ApiKey, KeyType, PrivateKeyState};
use crate::role::RoleSet;
use crate::store::ChangeFeed;

/// What verification needs to know about one key.
pub struct VerifyingKey {
    pub id: KeyId,
    pub issuer_id: IssuerId,
    /// The issuer ID as text, compared against the `iss` claim.
    pub issuer_text: String,
    pub key_type: KeyType,
    pub algorithm: Algorithm,
    public: UnparsedPublicKey<Vec<u8>>,
    pub roles: RoleSet,
    pub revoked: bool,
    pub expires_at: Option<UnixTime>,
    /// False when the private key was erased unread: nobody can hold it.
    pub usable: bool,
}

impl VerifyingKey {
    pub fn from_key(key: &ApiKey) -> Self {
        let alg: &'static dyn VerificationAlgorithm = match key.algorithm {
            Algorithm::Es256 => &ECDSA_P256_SHA256_FIXED,
            Algorithm::EdDsa => &ED25519,
        };
        Self {
            id: key.id,
            issuer_id: key.issuer_id,
            issuer_text: key.issuer_id.to_string(),
            key_type: key.key_type,
            algorithm: key.algorithm,
            public: UnparsedPublicKey::new(alg, key.public_key.clone()),
            roles: key.roles.clone(),
            revoked: key.is_revoked(),
            expires_at: key.expires_at,
            usable: !matches!(key.private_key, PrivateKeyState::Erased(_)),
        }
    }

    /// Checks a raw signature over `message`.
    pub fn verify_signature(&self, message: &[u8], signature: &[u8]) -> bool {
        self.public.verify(message, signature).is_ok()
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("id", &self.id)
            .field("issuer_id", &self.issuer_id)
            .field("key_type", &self.key_type)
            .field("algorithm", &self.algorithm)
            .field("roles", &self.roles)
            .field("revoked", &self.revoked)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// One immutable snapshot of the verification state.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: HashMap<KeyId, Arc<VerifyingKey>>,
    /// The change-feed position this snapshot reflects.
    pub seq: i64,
}

impl KeySet {
    pub fn get(&self, id: &KeyId) -> Option<&Arc<VerifyingKey>> {
        self.keys.get(id)
    }
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The live, swappable verification state of one node.
#[derive(Debug, Default)]
pub struct KeyRing {
    current: ArcSwap<KeySet>,
}

impl KeyRing {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current snapshot; cheap, lock-free, and consistent for as long as it is held.
    pub fn snapshot(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    /// Replaces everything with a full load, as at start-up or after losing the change feed.
    ///
    /// The load may be older than changes this node already applied (a revoke answered here
    /// while the load was running). Keys are never deleted and revocation and erasure are
    /// final, so entries of the current snapshot that the load lacks are kept, and a key stays
    /// revoked or unusable if either side says so. Changes after `seq` arrive through
    /// [`apply`](Self::apply) as usual.
    pub fn replace_all(&self, keys: &[ApiKey], seq: i64) {
        self.current.rcu(|cur| {
            let mut map: HashMap<KeyId, Arc<VerifyingKey>> = cur.keys.clone();
            for k in keys {
                let fresh = merge_final_states(VerifyingKey::from_key(k), map.get(&k.id));
                map.insert(k.id, Arc::new(fresh));
            }
            KeySet { keys: map, seq }
        });
    }

    /// Applies changed keys (their current stored state) on top of the snapshot. `seq` only moves
    /// forward, so a late, older batch cannot roll the position back.
    pub fn apply(&self, changed: &[ApiKey], seq: i64) {
        self.current.rcu(|cur| {
            let mut keys = cur.keys.clone();
            for k in changed {
                let fresh = merge_final_states(VerifyingKey::from_key(k), keys.get(&k.id));
                keys.insert(k.id, Arc::new(fresh));
            }
            KeySet {
                keys,
                seq: seq.max(cur.seq),
            }
        });
    }
}

/// Keeping a ring current from a store's change feed: what every node does, and what a Rust
/// program verifying in-process against a keygate database does.
impl KeyRing {
    /// Loads every key (start-up, or after losing the feed). Returns how many there are.
    pub async fn reload_from(&self, feed: &dyn ChangeFeed) -> Result<usize> {
        let (seq, keys) = feed.load_all_keys().await?;
        self.replace_all(&keys, seq);
        Ok(keys.len())
    }

    /// Applies what changed since the snapshot's position. Returns how many keys changed.
    pub async fn sync_from(&self, feed: &dyn ChangeFeed) -> Result<usize> {
        const BATCH: u32 = 1000;
        let mut applied = 0;
        loop {
            let from = self.snapshot().seq;
            let changes = feed.changes_since(from, BATCH).await?;
            let Some(&(last, _)) = changes.last() else {
                return Ok(applied);
            };
            let mut ids: Vec<KeyId> = changes.iter().map(|(_, id)| *id).collect();
            ids.sort();
            ids.dedup();
            let keys = feed.keys_by_id(&ids).await?;
            self.apply(&keys, last);
            applied += keys.len();
            if changes.len() < BATCH as usize {
                return Ok(applied);
            }
        }
    }
}

/// Revocation and erasure are irreversible: an update read before them (a stale row) must not
/// undo them.
fn merge_final_states(fresh: VerifyingKey, old: Option<&Arc<VerifyingKey>>) -> VerifyingKey {
    match old {
        Some(old) => VerifyingKey {
            revoked: fresh.revoked || old.revoked,
            usable: fresh.usable && old.usable,
            ..fresh
        },
        None => fresh,
    }
}
