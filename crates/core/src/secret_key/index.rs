//! The secret keys a node knows, by the SHA-256 of each live secret: what the data plane looks a
//! presented secret key up in. Kept current with the API keys' ring, from the same change feed.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
    /// How many times [`apply`](SecretRing::apply) has run: the feed's reader checks that no
    /// write on this node landed while it read, before it applies what it read.
    writes: AtomicU64,
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
        let one_writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.writes.fetch_add(1, Ordering::AcqRel);
        self.put(&one_writer, keys);
    }

    /// How many writes this node has applied; taken before reading states from the feed.
    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Ordering::Acquire)
    }

    /// Applies states read from the feed, unless a write was applied here since `writes_before`
    /// (taken before the read): the read may then predate that write (a roll, say) and would
    /// undo it until the next sync. Returns whether it applied.
    pub(crate) fn apply_read(&self, keys: &[SecretKey], writes_before: u64) -> bool {
        let one_writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.writes.load(Ordering::Acquire) != writes_before {
            return false;
        }
        self.put(&one_writer, keys);
        true
    }

    /// Swaps in a map with `keys`' states; only under the writer lock.
    fn put(&self, _one_writer: &MutexGuard<'_, ()>, keys: &[SecretKey]) {
        if keys.is_empty() {
            return;
        }
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
