//! The verification state: every key's public half, algorithm, roles and status, held in memory
//! as sharded immutable snapshots that are swapped atomically. Readers on the hot path take no
//! lock and make no database call; writers rebuild only the shards a change touches.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey, VerificationAlgorithm};

use crate::clock::UnixTime;
use crate::error::Result;
use crate::ids::{IssuerId, KeyId, UserId};
use crate::key::{Algorithm, ApiKey, KeyType, PrivateKeyState};
use crate::role::RoleSet;
use crate::secret_key::SecretRing;
use crate::store::ChangeFeed;

/// What verification needs to know about one key.
pub struct VerifyingKey {
    pub id: KeyId,
    pub issuer_id: IssuerId,
    /// The issuer ID as text, compared against the `iss` claim; shared by the issuer's keys.
    pub issuer_text: Arc<str>,
    pub key_type: KeyType,
    pub algorithm: Algorithm,
    /// The raw public key, inline (65 bytes for P-256, 32 for Ed25519): no allocation per key.
    public: [u8; PUBLIC_KEY_MAX],
    public_len: u8,
    pub roles: RoleSet,
    /// An individual key's owner.
    pub user_id: Option<UserId>,
    pub revoked: bool,
    pub expires_at: Option<UnixTime>,
    /// False when the private key was erased unread: nobody can hold it.
    pub usable: bool,
}

/// The longest raw public key (an uncompressed P-256 point).
const PUBLIC_KEY_MAX: usize = 65;

impl VerifyingKey {
    pub fn from_key(key: &ApiKey) -> Self {
        Self::with_issuer_text(key, Arc::from(key.issuer_id.to_string()))
    }

    /// Like [`from_key`](Self::from_key), sharing an issuer text already made.
    fn with_issuer_text(key: &ApiKey, issuer_text: Arc<str>) -> Self {
        let mut public = [0u8; PUBLIC_KEY_MAX];
        let stored = key.public_key.as_slice();
        // A stored key of an impossible length is kept unusable rather than trusted.
        let fits = stored.len() <= PUBLIC_KEY_MAX;
        if let Some(slot) = public.get_mut(..stored.len()).filter(|_| fits) {
            slot.copy_from_slice(stored);
        }
        Self {
            id: key.id,
            issuer_id: key.issuer_id,
            issuer_text,
            key_type: key.key_type,
            algorithm: key.algorithm,
            public,
            public_len: if fits {
                u8::try_from(stored.len()).unwrap_or(0)
            } else {
                0
            },
            roles: key.roles.clone(),
            user_id: key.user_id,
            revoked: key.is_revoked(),
            expires_at: key.expires_at,
            usable: fits && !matches!(key.private_key, PrivateKeyState::Erased(_)),
        }
    }

    fn public_key(&self) -> &[u8] {
        self.public
            .get(..usize::from(self.public_len))
            .unwrap_or(&[])
    }

    /// Whether two entries say exactly the same about a key.
    fn same_state(&self, other: &Self) -> bool {
        self.id == other.id
            && self.issuer_id == other.issuer_id
            && self.key_type == other.key_type
            && self.algorithm == other.algorithm
            && self.roles == other.roles
            && self.user_id == other.user_id
            && self.revoked == other.revoked
            && self.expires_at == other.expires_at
            && self.usable == other.usable
            && self.public_key() == other.public_key()
    }

    /// Checks a raw signature over `message` with the algorithm the key is pinned to.
    pub fn verify_signature(&self, message: &[u8], signature: &[u8]) -> bool {
        let alg: &'static dyn VerificationAlgorithm = match self.algorithm {
            Algorithm::Es256 => &ECDSA_P256_SHA256_FIXED,
            Algorithm::EdDsa => &ED25519,
        };
        UnparsedPublicKey::new(alg, self.public_key())
            .verify(message, signature)
            .is_ok()
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

/// Shards of the key ring. Each is an immutable map swapped atomically, so a change copies one
/// shard (about a thousandth of the keys), not the whole set: a million keys cost ~1 000 entries
/// per change.
pub const RING_SHARDS: usize = 1024;

type Shard = HashMap<KeyId, Arc<VerifyingKey>>;

/// The live verification state of one node: every key's public half, algorithm, roles and
/// status, in [`RING_SHARDS`] snapshots. Readers take no lock: one atomic load of one shard.
/// Writers are serialized by a mutex, build the changed shards anew, and swap them in.
pub struct KeyRing {
    shards: Box<[ArcSwap<Shard>]>,
    /// The change-feed position the ring reflects.
    seq: AtomicI64,
    len: AtomicUsize,
    writer: Mutex<()>,
    /// How many times [`apply`](KeyRing::apply) has run: the feed's reader checks that no write
    /// on this node landed while it read, before it applies what it read.
    writes: AtomicU64,
    /// The secret keys, kept current from the same feed.
    secrets: SecretRing,
    /// One feed reader at a time (the `LISTEN`-woken task, the poll, a reload's catch-up): two
    /// readers in flight could apply an older read after a newer one, and the feed position,
    /// already past the change, would never bring it back.
    reader: tokio::sync::Mutex<()>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("keys", &self.len())
            .field("seq", &self.seq())
            .finish_non_exhaustive()
    }
}

impl Default for KeyRing {
    fn default() -> Self {
        Self {
            shards: (0..RING_SHARDS).map(|_| ArcSwap::default()).collect(),
            seq: AtomicI64::new(0),
            len: AtomicUsize::new(0),
            writer: Mutex::new(()),
            writes: AtomicU64::new(0),
            secrets: SecretRing::default(),
            reader: tokio::sync::Mutex::new(()),
        }
    }
}

/// Key IDs come from the CSPRNG, so a simple hash of their bytes spreads them evenly; an
/// attacker choosing `kid`s only chooses which shard a failed lookup reads.
#[allow(clippy::cast_possible_truncation)] // reduced modulo RING_SHARDS first
fn shard_of(id: &KeyId) -> usize {
    let h = id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % RING_SHARDS as u64) as usize
}

impl KeyRing {
    pub fn new() -> Self {
        Self::default()
    }

    #[allow(clippy::indexing_slicing)] // `shards` has RING_SHARDS entries, built in `default`
    fn shard(&self, i: usize) -> &ArcSwap<Shard> {
        &self.shards[i % RING_SHARDS]
    }

    /// The secret keys this node knows.
    pub fn secrets(&self) -> &SecretRing {
        &self.secrets
    }

    /// The current state of one key; lock-free.
    pub fn get(&self, id: &KeyId) -> Option<Arc<VerifyingKey>> {
        self.shard(shard_of(id)).load().get(id).cloned()
    }

    /// The change-feed position the ring reflects.
    pub fn seq(&self) -> i64 {
        self.seq.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces everything with a full load, as at start-up or after losing the change feed.
    ///
    /// The load may be older than changes this node already applied (a revoke answered here
    /// while the load was running). Keys are never deleted and revocation and erasure are
    /// final, so entries the load lacks are kept, and a key stays revoked or unusable if either
    /// side says so. Changes after `seq` arrive through [`apply`](Self::apply) as usual.
    pub fn replace_all(&self, keys: &[ApiKey], seq: i64) {
        let writing = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        self.merge(&writing, keys, seq);
    }

    /// Applies changed keys (their current stored state), as a write on this node does right
    /// after it commits. `seq` only moves forward, so a late, older batch cannot roll the
    /// position back.
    pub fn apply(&self, changed: &[ApiKey], seq: i64) {
        let writing = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        self.writes.fetch_add(1, Ordering::AcqRel);
        self.merge(&writing, changed, seq);
    }

    /// Applies states read from the feed, unless [`apply`](Self::apply) ran since
    /// `writes_before` (taken before the read): the read may then predate that write (a role
    /// change, say) and would undo it until the next sync. Returns whether it applied.
    fn apply_read(&self, changed: &[ApiKey], seq: i64, writes_before: u64) -> bool {
        let writing = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if self.writes.load(Ordering::Acquire) != writes_before {
            return false;
        }
        self.merge(&writing, changed, seq);
        true
    }

    /// Swaps in the shards that `keys` change; only under the writer lock.
    fn merge(&self, _writing: &MutexGuard<'_, ()>, keys: &[ApiKey], seq: i64) {
        let mut by_shard: HashMap<usize, Vec<&ApiKey>> = HashMap::new();
        for k in keys {
            by_shard.entry(shard_of(&k.id)).or_default().push(k);
        }
        let mut added = 0usize;
        // One issuer-ID text per issuer per batch, shared by its keys.
        let mut issuer_texts: HashMap<IssuerId, Arc<str>> = HashMap::new();
        for (i, batch) in by_shard {
            let slot = self.shard(i);
            let current = slot.load_full();
            // Unchanged keys keep their entries; a shard with nothing new is not copied.
            if batch.iter().all(|k| {
                current.get(&k.id).is_some_and(|o| {
                    o.same_state(&merge_final_states(VerifyingKey::from_key(k), Some(o)))
                })
            }) {
                continue;
            }
            let mut map: Shard = current.as_ref().clone();
            for k in batch {
                let old = map.get(&k.id);
                let text = Arc::clone(
                    issuer_texts
                        .entry(k.issuer_id)
                        .or_insert_with(|| Arc::from(k.issuer_id.to_string())),
                );
                let fresh = merge_final_states(VerifyingKey::with_issuer_text(k, text), old);
                // An unchanged key keeps its entry, so cached verifications of its tokens stay
                // valid across a full reload (the cache trusts an entry only while it is the
                // ring's current one).
                if old.is_some_and(|o| o.same_state(&fresh)) {
                    continue;
                }
                if map.insert(k.id, Arc::new(fresh)).is_none() {
                    added += 1;
                }
            }
            slot.store(Arc::new(map));
        }
        self.len.fetch_add(added, Ordering::Relaxed);
        self.seq.fetch_max(seq, Ordering::AcqRel);
    }
}

/// Keeping a ring current from a store's change feed: what every node does, and what a Rust
/// program verifying in-process against a keygate database does.
impl KeyRing {
    /// Loads every key (start-up, or after losing the feed). Returns how many there are.
    ///
    /// The load does not hold up the feed: readers go on applying changes while it streams
    /// (a revocation stays final whatever the load says). The load's snapshot may be older than
    /// what they applied meanwhile (a role change), so once it is in, everything that changed
    /// after the snapshot's position is read again, as one reader, and applied over it.
    pub async fn reload_from(&self, feed: &dyn ChangeFeed) -> Result<usize> {
        let mut count = 0;
        let seq = feed
            .load_all_keys(&mut |batch| {
                count += batch.len();
                off_the_workers(|| self.replace_all(&batch, 0));
            })
            .await?;
        // Read after the keys' snapshot: at worst newer than `seq`, and the catch-up below
        // re-applies whatever changed in between.
        let secrets = feed.load_all_secret_keys().await?;
        count += secrets.len();
        self.secrets.apply(&secrets);
        let _one_reader = self.reader.lock().await;
        self.read_changes(feed, seq).await?;
        self.seq.fetch_max(seq, Ordering::AcqRel);
        Ok(count)
    }

    /// Applies what changed since the ring's position. Returns how many keys changed.
    pub async fn sync_from(&self, feed: &dyn ChangeFeed) -> Result<usize> {
        let _one_reader = self.reader.lock().await;
        self.read_changes(feed, self.seq()).await
    }

    /// Reads and applies every change after position `from`; only under the reader lock.
    async fn read_changes(&self, feed: &dyn ChangeFeed, from: i64) -> Result<usize> {
        const BATCH: u32 = 1000;
        // Reads overtaken by a write on this node are read again, this many times at most;
        // after that the read is applied and the next sync corrects it.
        const REREADS: u32 = 8;
        let mut applied = 0;
        let mut rereads = 0;
        let mut from = from;
        loop {
            let changes = feed.changes_since(from, BATCH).await?;
            let Some(&(last, _)) = changes.last() else {
                return Ok(applied);
            };
            let mut ids: Vec<KeyId> = changes.iter().map(|(_, id)| *id).collect();
            ids.sort();
            ids.dedup();
            let writes_before = (self.writes.load(Ordering::Acquire), self.secrets.writes());
            let keys = feed.keys_by_id(&ids).await?;
            let secrets = feed.secret_keys_by_id(&ids).await?;
            // Secret keys share the ID space and the feed; apply them first, so when `seq`
            // moves on (with the API keys) both kinds are in.
            let fresh = self.secrets.apply_read(&secrets, writes_before.1)
                && self.apply_read(&keys, last, writes_before.0);
            if !fresh {
                rereads += 1;
                if rereads < REREADS {
                    continue;
                }
                self.secrets.apply(&secrets);
                self.apply(&keys, last);
            }
            applied += keys.len() + secrets.len();
            from = last;
            if changes.len() < BATCH as usize {
                return Ok(applied);
            }
        }
    }
}

/// Runs CPU-heavy ring work (merging a reload's batches: at a million keys, seconds in all)
/// without holding up the async workers that answer `/authz` and `/healthz`: on a
/// multi-threaded runtime the worker hands its other tasks on first.
fn off_the_workers<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::IssuerId;
    use crate::role::RoleCatalog;
    use crate::secret_key::SecretKey;

    fn key(n: usize) -> ApiKey {
        ApiKey {
            id: KeyId::parse(&format!("K{n:09}")).unwrap(),
            issuer_id: IssuerId::generate(),
            name: "k".into(),
            roles: RoleCatalog::default().key_roles(&["DEVELOPER"]).unwrap(),
            key_type: KeyType::Team,
            algorithm: Algorithm::Es256,
            public_key: vec![4; 65],
            private_key: PrivateKeyState::Downloaded(0),
            created_by: "test".into(),
            created_at: 0,
            last_used_at: None,
            request_count: 0,
            revoked_at: None,
            revoke_reason: None,
            expires_at: None,
            user_id: None,
        }
    }

    #[test]
    fn shards_hold_every_key_and_changes_touch_only_theirs() {
        let ring = KeyRing::new();
        let keys: Vec<ApiKey> = (0..5000).map(key).collect();
        ring.replace_all(&keys, 7);
        assert_eq!((ring.len(), ring.seq()), (5000, 7));
        assert!(keys.iter().all(|k| ring.get(&k.id).is_some()));
        let before = ring.get(&keys[1].id).unwrap();
        // An unchanged reload keeps the same entries (the token cache relies on it).
        ring.replace_all(&keys, 6);
        assert!(Arc::ptr_eq(&before, &ring.get(&keys[1].id).unwrap()));
        assert_eq!(ring.seq(), 7, "the position never moves back");
        // A revocation replaces the entry, and a stale reload cannot undo it.
        let mut revoked = keys[1].clone();
        revoked.revoked_at = Some(1);
        ring.apply(&[revoked], 8);
        let after = ring.get(&keys[1].id).unwrap();
        assert!(after.revoked && !Arc::ptr_eq(&before, &after));
        ring.replace_all(&keys, 8);
        assert!(ring.get(&keys[1].id).unwrap().revoked);
        assert_eq!(ring.len(), 5000);
        // Other keys' entries are untouched by a change to one key.
        let other = ring.get(&keys[2].id).unwrap();
        let mut revoked_again = keys[3].clone();
        revoked_again.revoked_at = Some(2);
        ring.apply(&[revoked_again], 9);
        assert!(Arc::ptr_eq(&other, &ring.get(&keys[2].id).unwrap()));
    }

    /// A feed whose first read of key states is overtaken by a write on this node: it returns
    /// the states from before the write, as a read that started before the commit would.
    struct OvertakenFeed {
        ring: Arc<KeyRing>,
        before: (ApiKey, SecretKey),
        after: (ApiKey, SecretKey),
        reads: Mutex<u32>,
    }

    #[async_trait::async_trait]
    impl ChangeFeed for OvertakenFeed {
        async fn load_all_keys(
            &self,
            _each_batch: &mut (dyn FnMut(Vec<ApiKey>) + Send),
        ) -> Result<i64> {
            Ok(0)
        }
        async fn changes_since(&self, seq: i64, _limit: u32) -> Result<Vec<(i64, KeyId)>> {
            Ok(if seq < 2 {
                vec![(1, self.before.0.id), (2, self.before.1.id)]
            } else {
                Vec::new()
            })
        }
        async fn keys_by_id(&self, _ids: &[KeyId]) -> Result<Vec<ApiKey>> {
            let first = {
                let mut reads = self.reads.lock().unwrap();
                *reads += 1;
                *reads == 1
            };
            if first {
                // The write commits and is applied while this read is in flight.
                self.ring
                    .apply(std::slice::from_ref(&self.after.0), i64::MIN);
                self.ring
                    .secrets()
                    .apply(std::slice::from_ref(&self.after.1));
                return Ok(vec![self.before.0.clone()]);
            }
            Ok(vec![self.after.0.clone()])
        }
        async fn load_all_secret_keys(&self) -> Result<Vec<SecretKey>> {
            Ok(Vec::new())
        }
        async fn secret_keys_by_id(&self, _ids: &[KeyId]) -> Result<Vec<SecretKey>> {
            let reads = *self.reads.lock().unwrap();
            Ok(vec![
                if reads == 1 {
                    &self.before.1
                } else {
                    &self.after.1
                }
                .clone(),
            ])
        }
    }

    fn secret_key(id: KeyId, hashes: &[[u8; 32]]) -> SecretKey {
        SecretKey {
            id,
            issuer_id: IssuerId::generate(),
            name: "s".into(),
            roles: RoleCatalog::default().key_roles(&["DEVELOPER"]).unwrap(),
            restrictions: crate::secret_key::Restrictions::default(),
            created_by: "test".into(),
            created_at: 0,
            expires_at: None,
            revoked_at: None,
            revoke_reason: None,
            last_used_at: None,
            request_count: 0,
            versions: hashes
                .iter()
                .map(|h| crate::secret_key::SecretVersion {
                    hash: *h,
                    hint: "kgsk_abcd".into(),
                    created_at: 0,
                    expires_at: None,
                })
                .collect(),
        }
    }

    /// A feed where a role change commits while the first reader's read of key states is in
    /// flight (it returns the state from before), and a second reader (the poll beside the
    /// `LISTEN`-woken task) starts then.
    struct RacingFeed {
        old: ApiKey,
        new: ApiKey,
        entries: Mutex<Vec<(i64, KeyId)>>,
        changed: std::sync::atomic::AtomicBool,
        reads: Mutex<u32>,
        entered: tokio::sync::Notify,
        release: tokio::sync::Notify,
    }

    #[async_trait::async_trait]
    impl ChangeFeed for RacingFeed {
        async fn load_all_keys(
            &self,
            _each_batch: &mut (dyn FnMut(Vec<ApiKey>) + Send),
        ) -> Result<i64> {
            Ok(0)
        }
        async fn changes_since(&self, seq: i64, _limit: u32) -> Result<Vec<(i64, KeyId)>> {
            let entries = self.entries.lock().unwrap();
            Ok(entries.iter().copied().filter(|(p, _)| *p > seq).collect())
        }
        async fn keys_by_id(&self, _ids: &[KeyId]) -> Result<Vec<ApiKey>> {
            let first = {
                let mut reads = self.reads.lock().unwrap();
                *reads += 1;
                *reads == 1
            };
            let state = if self.changed.load(Ordering::Acquire) {
                self.new.clone()
            } else {
                self.old.clone()
            };
            if first {
                self.entered.notify_one();
                self.release.notified().await;
            }
            Ok(vec![state])
        }
        async fn load_all_secret_keys(&self) -> Result<Vec<SecretKey>> {
            Ok(Vec::new())
        }
        async fn secret_keys_by_id(&self, _ids: &[KeyId]) -> Result<Vec<SecretKey>> {
            Ok(Vec::new())
        }
    }

    /// Two feed readers racing: the older read never lands after the newer one. (Without one
    /// reader at a time, the first reader applied the old roles after the second applied the
    /// new ones, and the feed position, past the change, never brought them back.)
    #[test]
    fn racing_readers_never_apply_an_older_read_over_a_newer_one() {
        let old = key(7);
        let mut new = old.clone();
        new.roles = RoleCatalog::default().key_roles(&["ADMIN"]).unwrap();
        let ring = Arc::new(KeyRing::new());
        let feed = Arc::new(RacingFeed {
            old: old.clone(),
            new,
            entries: Mutex::new(vec![(1, old.id)]),
            changed: std::sync::atomic::AtomicBool::new(false),
            reads: Mutex::new(0),
            entered: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let first = tokio::spawn({
                let (ring, feed) = (Arc::clone(&ring), Arc::clone(&feed));
                async move { ring.sync_from(feed.as_ref()).await }
            });
            feed.entered.notified().await;
            // The role change commits while the first read is in flight.
            feed.entries.lock().unwrap().push((2, old.id));
            feed.changed.store(true, Ordering::Release);
            let second = tokio::spawn({
                let (ring, feed) = (Arc::clone(&ring), Arc::clone(&feed));
                async move { ring.sync_from(feed.as_ref()).await }
            });
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            feed.release.notify_one();
            first.await.unwrap().unwrap();
            second.await.unwrap().unwrap();
        });
        assert!(
            ring.get(&old.id).unwrap().roles.contains("ADMIN"),
            "the newer roles stay"
        );
        assert_eq!(ring.seq(), 2);
    }

    #[test]
    fn a_read_overtaken_by_a_local_write_does_not_undo_it() {
        let api_before = key(1);
        let mut api_after = api_before.clone();
        api_after.roles = RoleCatalog::default().key_roles(&["ADMIN"]).unwrap();
        let id = KeyId::parse("S000000001").unwrap();
        let (old_hash, new_hash) = ([1; 32], [2; 32]);
        let ring = Arc::new(KeyRing::new());
        ring.replace_all(std::slice::from_ref(&api_before), 0);
        let feed = OvertakenFeed {
            ring: Arc::clone(&ring),
            before: (api_before, secret_key(id, &[old_hash])),
            // Rolled: the new secret, and the old one without an end yet (enough here).
            after: (api_after.clone(), secret_key(id, &[new_hash, old_hash])),
            reads: Mutex::new(0),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(ring.sync_from(&feed)).unwrap();
        assert_eq!(
            *feed.reads.lock().unwrap(),
            2,
            "the overtaken read was read again"
        );
        assert!(ring.get(&api_after.id).unwrap().roles.contains("ADMIN"));
        assert!(
            ring.secrets().get(&new_hash).is_some(),
            "the roll's secret stays"
        );
        assert_eq!(ring.seq(), 2);
    }
}
