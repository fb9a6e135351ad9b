//! The verified-token cache. Real clients reuse one token for up to 20 minutes (Apple recommends
//! it), so most requests present a token keygate has already verified. A hit skips the base64,
//! the JSON and the signature check, and costs a hash of the token bytes and two map lookups.
//!
//! Safety rests on three rules:
//! - An entry is found by a hash of the **exact token bytes** and then compared byte for byte,
//!   so a collision can only cost a miss, never return another token's result.
//! - An entry lives only while the token itself would verify: until `exp` plus the leeway, and
//!   never past the key's own expiry.
//! - Every hit checks the key's **current** state in the ring: the cached result is used only if
//!   the ring still holds the very same key entry (any change to the key, a revocation above
//!   all, replaces that entry), and that entry is active. A revoked key's token is therefore
//!   refused on the very next request.
//!
//! The cache is bounded: each of its shards holds at most `capacity / SHARDS` entries, and
//! tokens over [`MAX_CACHED_TOKEN_BYTES`] are never cached, so memory is bounded in bytes. A full
//! shard gives up an expired entry if it finds one among the first few, else an arbitrary one
//! (the map's iteration order is randomized per process), so a flood of distinct tokens cannot
//! grow memory.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, PoisonError, RwLock};

use crate::clock::UnixTime;
use crate::keyset::KeyRing;
use crate::scope::ScopeEntry;
use crate::token::VerifiedToken;

const SHARDS: usize = 64;

/// Tokens longer than this are verified every time, never cached, so the cache's memory is
/// bounded in bytes (entries × this), not just in entries. Real clients' tokens are 300–600
/// bytes.
pub const MAX_CACHED_TOKEN_BYTES: usize = 1024;

/// Tokens whose parsed `scope` holds more strings than this are not cached either: a 1 KiB
/// scope such as `"A /////…"` parses into hundreds of strings, about fourteen times its bytes,
/// which would break the byte bound. Real scopes hold a few entries of a few segments.
pub const MAX_CACHED_SCOPE_PARTS: usize = 64;

struct Entry {
    /// The token itself, to rule out hash collisions. A bearer credential: never in `Debug`,
    /// and wiped when the entry goes.
    token: Box<str>,
    verified: Arc<VerifiedToken>,
    /// The first second at which the entry is no longer valid.
    valid_until: UnixTime,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("token", &"<redacted>")
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut *self.token);
    }
}

/// A bounded map from token bytes to their verification result.
pub struct TokenCache {
    shards: Box<[RwLock<HashMap<u64, Entry>>]>,
    hasher: foldhash::quality::RandomState,
    per_shard: usize,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries: usize = self
            .shards
            .iter()
            .map(|s| s.read().map_or(0, |m| m.len()))
            .sum();
        f.debug_struct("TokenCache")
            .field("entries", &entries)
            .field("per_shard", &self.per_shard)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache of at most `capacity` entries (rounded down to a multiple of the shard count;
    /// 0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: foldhash::quality::RandomState::default(),
            per_shard: capacity / SHARDS,
        }
    }

    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    fn hash(&self, token: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(token.as_bytes());
        h.finish()
    }

    #[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)] // modulo SHARDS
    fn shard(&self, hash: u64) -> &RwLock<HashMap<u64, Entry>> {
        // The low bits pick the map slot too; the high bits pick the shard.
        &self.shards[((hash >> 58) as usize) % SHARDS]
    }

    /// The cached result for `token`, if it is still valid at `now` and its key is unchanged
    /// and active in `ring`.
    pub fn get(&self, token: &str, ring: &KeyRing, now: UnixTime) -> Option<Arc<VerifiedToken>> {
        if self.per_shard == 0 {
            return None;
        }
        let hash = self.hash(token);
        let verified = {
            let shard = self
                .shard(hash)
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let e = shard.get(&hash)?;
            if now >= e.valid_until || *e.token != *token {
                return None;
            }
            Arc::clone(&e.verified)
        };
        let current = ring.get(&verified.key.id)?;
        (Arc::ptr_eq(&current, &verified.key) && !current.revoked && current.usable)
            .then_some(verified)
    }

    /// Remembers a verification result until `valid_until`.
    pub fn insert(
        &self,
        token: &str,
        verified: Arc<VerifiedToken>,
        valid_until: UnixTime,
        now: UnixTime,
    ) {
        let scope_parts: usize = verified.scope.iter().flatten().map(ScopeEntry::parts).sum();
        if self.per_shard == 0
            || valid_until <= now
            || token.len() > MAX_CACHED_TOKEN_BYTES
            || scope_parts > MAX_CACHED_SCOPE_PARTS
        {
            return;
        }
        let hash = self.hash(token);
        let mut shard = self
            .shard(hash)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // A full shard gives up one entry: an expired one if the first few looked at are, else
        // an arbitrary one. Never a scan of the whole shard under the write lock.
        if shard.len() >= self.per_shard && !shard.contains_key(&hash) {
            let victim = shard
                .iter()
                .take(8)
                .find(|(_, e)| e.valid_until <= now)
                .or_else(|| shard.iter().next())
                .map(|(k, _)| *k);
            if let Some(victim) = victim {
                shard.remove(&victim);
            }
        }
        shard.insert(
            hash,
            Entry {
                token: token.into(),
                verified,
                valid_until,
            },
        );
    }

    /// Entries held now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
