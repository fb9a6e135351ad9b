//! The secret keys a node knows, by the SHA-256 of each live secret: what the data plane looks a
//! presented secret key up in. Kept current with the API keys' ring, from the same change feed.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::SecretKey;
use crate::clock::UnixTime;
use crate::ids::KeyId;

/// A presented secret's key, and when that particular secret stops working (after a roll).
#[derive(Debug, Clone)]
pub struct SecretMatch {
    pub key: Arc<SecretKey>,
    pub version_expires_at: Option<UnixTime>,
}

type ByHash = HashMap<[u8; 32], SecretMatch>;

/// One immutable map swapped atomically: readers take no lock. A change copies the map, which
/// suits secret keys (an issuer holds a handful; the million-key case is the API keys' ring).
#[derive(Default)]
pub struct SecretRing {
    by_hash: ArcSwap<ByHash>,
    writer: Mutex<()>,
}

impl fmt::Debug for SecretRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretRing")
            .field("secrets", &self.by_hash.load().len())
            .finish_non_exhaustive()
    }
}

impl SecretRing {
    /// The key a secret's hash opens, if any (whatever its state: the caller says why not).
    pub fn get(&self, hash: &[u8; 32]) -> Option<SecretMatch> {
        self.by_hash.load().get(hash).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_hash.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts in the current state of each key, replacing its earlier versions. Revocation is
    /// final: a stale read that still shows a revoked key active does not bring it back.
    pub fn apply(&self, keys: &[SecretKey]) {
        if keys.is_empty() {
            return;
        }
        let _one_writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut map: ByHash = self.by_hash.load().as_ref().clone();
        let ids: std::collections::HashSet<KeyId> = keys.iter().map(|k| k.id).collect();
        let mut revoked: HashMap<KeyId, (UnixTime, Option<String>)> = HashMap::new();
        map.retain(|_, m| {
            if !ids.contains(&m.key.id) {
                return true;
            }
            if let Some(at) = m.key.revoked_at {
                revoked.insert(m.key.id, (at, m.key.revoke_reason.clone()));
            }
            false
        });
        for key in keys {
            let mut key = key.clone();
            if key.revoked_at.is_none()
                && let Some((at, reason)) = revoked.remove(&key.id)
            {
                key.revoked_at = Some(at);
                key.revoke_reason = reason;
            }
            let key = Arc::new(key);
            for v in &key.versions {
                map.insert(
                    v.hash,
                    SecretMatch {
                        key: Arc::clone(&key),
                        version_expires_at: v.expires_at,
                    },
                );
            }
        }
        self.by_hash.store(Arc::new(map));
    }
}
