//! The store contract: one suite of behaviours every backend must show, run against each backend
//! by the `backend!` macro at the bottom. A new backend adds one line there.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::needless_pass_by_value
)] // test code: a failed expectation should panic; scenarios read top to bottom

use std::sync::Arc;

use keygate_core::audit::{AuditAction, NewAuditEvent};
use keygate_core::crypto::{MasterKey, PrivateKeyPem, SealedPrivateKey, generate_key_pair};
use keygate_core::error::{Error, PrivateKeyUnavailable};
use keygate_core::ids::{Actor, IssuerId, KeyId};
use keygate_core::ids::{InvitationId, UserId};
use keygate_core::key::{
    Algorithm, ApiKey, KeyCursor, KeyQuery, KeyType, PrivateKeyState, StatusFilter,
};
use keygate_core::meter::KeyUsage;
use keygate_core::role::RoleCatalog;
use keygate_core::role::RoleSet;
use keygate_core::secret::{BearerSecret, PasswordHashText, SecretHash};
use keygate_core::secret_key::{Restrictions, SecretKey, SecretKeyText, SecretVersion};
use keygate_core::store::{Issuer, Store, TakePrivateKey};
use keygate_core::user::{Invitation, User};

const T0: i64 = 1_795_687_200;

fn event(issuer: IssuerId, action: AuditAction, target: &str) -> NewAuditEvent {
    NewAuditEvent::new(issuer, T0, &Actor::System("test"), action, target)
}

async fn issuer(store: &Arc<dyn Store>) -> IssuerId {
    let id = IssuerId::generate();
    let issuer = Issuer {
        id,
        name: "test".into(),
        created_at: T0,
    };
    store
        .create_issuer(
            &issuer,
            &event(id, AuditAction::IssuerCreated, &id.to_string()),
        )
        .await
        .unwrap();
    id
}

fn key(issuer: IssuerId, created_at: i64, state: PrivateKeyState) -> ApiKey {
    ApiKey {
        id: KeyId::generate().unwrap(),
        issuer_id: issuer,
        name: "contract key".into(),
        roles: RoleCatalog::default()
            .key_roles(&["DEVELOPER", "FINANCE"])
            .unwrap(),
        key_type: KeyType::Team,
        algorithm: Algorithm::Es256,
        public_key: generate_key_pair(Algorithm::Es256).unwrap().public,
        private_key: state,
        created_by: "apiKey:ABCDEFGHIJ".into(),
        created_at,
        last_used_at: None,
        request_count: 0,
        revoked_at: None,
        revoke_reason: None,
        expires_at: None,
        user_id: None,
    }
}

/// Every key and the feed position, collected from the batches.
async fn load_all(store: &Arc<dyn Store>) -> (i64, Vec<ApiKey>) {
    let mut all = Vec::new();
    let seq = store
        .load_all_keys(&mut |batch| all.extend(batch))
        .await
        .unwrap();
    (seq, all)
}

/// The master key every pending key in this suite is sealed under.
fn master() -> &'static MasterKey {
    static MASTER: std::sync::OnceLock<MasterKey> = std::sync::OnceLock::new();
    MASTER.get_or_init(|| MasterKey::generate().unwrap())
}

/// Opens a sealed key the way the service does (the key ID is the associated data).
fn opener(
    id: KeyId,
) -> impl Fn(&SealedPrivateKey) -> keygate_core::error::Result<PrivateKeyPem> + Send + Sync {
    move |sealed| master().open(id.as_str().as_bytes(), sealed)
}

/// Inserts a pending key with a sealed private half.
async fn pending_key(store: &Arc<dyn Store>, issuer: IssuerId, created_at: i64) -> ApiKey {
    let k = key(issuer, created_at, PrivateKeyState::Pending);
    let pair = generate_key_pair(Algorithm::Es256).unwrap();
    let sealed = master()
        .seal(k.id.as_str().as_bytes(), &pair.private)
        .unwrap();
    store
        .insert_key(
            &k,
            Some(&sealed),
            1000,
            &event(issuer, AuditAction::KeyCreated, k.id.as_str()),
        )
        .await
        .unwrap();
    k
}

async fn issuers_round_trip(store: Arc<dyn Store>) {
    let a = issuer(&store).await;
    let b = issuer(&store).await;
    assert_eq!(store.get_issuer(a).await.unwrap().unwrap().id, a);
    assert!(
        store
            .get_issuer(IssuerId::generate())
            .await
            .unwrap()
            .is_none()
    );
    let all: Vec<IssuerId> = store
        .list_issuers()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert!(all.contains(&a) && all.contains(&b));
}

async fn keys_round_trip_exactly(store: Arc<dyn Store>) {
    let iss = issuer(&store).await;
    let mut k = key(iss, T0, PrivateKeyState::NeverHeld);
    k.expires_at = Some(T0 + 100);
    store
        .insert_key(
            &k,
            None,
            10,
            &event(iss, AuditAction::KeyCreated, k.id.as_str()),
        )
        .await
        .unwrap();
    assert_eq!(store.get_key(iss, k.id).await.unwrap().unwrap(), k);
    assert!(
        store
            .get_key(IssuerId::generate(), k.id)
            .await
            .unwrap()
            .is_none(),
        "keys are scoped to their issuer"
    );
    let err = store
        .insert_key(
            &k,
            None,
            10,
            &event(iss, AuditAction::KeyCreated, k.id.as_str()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict(_)),
        "a duplicate ID is a conflict: {err:?}"
    );
}

async fn the_active_key_cap_holds_under_concurrency(store: Arc<dyn Store>) {
    let iss = issuer(&store).await;
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let k = key(iss, T0, PrivateKeyState::NeverHeld);
                store
                    .insert_key(
                        &k,
                        None,
                        5,
                        &event(iss, AuditAction::KeyCreated, k.id.as_str()),
                    )
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => created += 1,
            Err(Error::Conflict(_)) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(created, 5);
    // Revoked keys do not count.
    let page = store
        .list_keys(
            iss,
            &KeyQuery {
                status: None,
                key_type: None,
                owner: None,
                after: None,
                limit: 1,
                now: T0,
            },
        )
        .await
        .unwrap();
    let victim = page.items[0].id;
    store
        .revoke_key(
            iss,
            victim,
            None,
            T0,
            &event(iss, AuditAction::KeyRevoked, victim.as_str()),
        )
        .await
        .unwrap();
    let k = key(iss, T0, PrivateKeyState::NeverHeld);
    store
        .insert_key(
            &k,
            None,
            5,
            &event(iss, AuditAction::KeyCreated, k.id.as_str()),
        )
        .await
        .unwrap();
}

async fn a_private_key_is_taken_exactly_once(store: Arc<dyn Store>) {
    let iss = issuer(&store).await;
    let k = pending_key(&store, iss, T0).await;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .take_private_key(
                        iss,
                        k.id,
                        T0 - 3600,
                        T0 + 1,
                        &event(iss, AuditAction::PrivateKeyDownloaded, k.id.as_str()),
                        &opener(k.id),
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut taken = 0;
    let mut already = 0;
    for t in tasks {
        match t.await.unwrap() {
            TakePrivateKey::Taken(_) => taken += 1,
            TakePrivateKey::Unavailable(PrivateKeyUnavailable::AlreadyDownloaded) => already += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((taken, already), (1, 31));
    assert_eq!(
        store.get_key(iss, k.id).await.unwrap().unwrap().private_key,
        PrivateKeyState::Downloaded(T0 + 1)
    );

    // Another issuer cannot take it; unknown keys are not found.
    let other = issuer(&store).await;
    let k2 = pending_key(&store, iss, T0).await;
    assert!(matches!(
        store
            .take_private_key(
                other,
                k2.id,
                T0 - 3600,
                T0,
                &event(other, AuditAction::PrivateKeyDownloaded, "x"),
                &opener(k2.id)
            )
            .await
            .unwrap(),
        TakePrivateKey::NotFound
    ));
    // Past the window: erased, not handed out.
    assert!(matches!(
        store
            .take_private_key(
                iss,
                k2.id,
                T0,
                T0 + 10,
                &event(iss, AuditAction::PrivateKeyDownloaded, "x"),
                &opener(k2.id)
            )
            .await
            .unwrap(),
        TakePrivateKey::Unavailable(PrivateKeyUnavailable::Erased)
    ));
    assert_eq!(
        store
            .get_key(iss, k2.id)
            .await
            .unwrap()
            .unwrap()
            .private_key,
        PrivateKeyState::Erased(T0 + 10)
    );
    // Supplied public keys have nothing to take.
    let k3 = key(iss, T0, PrivateKeyState::NeverHeld);
    store
        .insert_key(&k3, None, 100, &event(iss, AuditAction::KeyCreated, "x"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .take_private_key(
                iss,
                k3.id,
                T0 - 10,
                T0,
                &event(iss, AuditAction::PrivateKeyDownloaded, "x"),
                &opener(k3.id)
            )
            .await
            .unwrap(),
        TakePrivateKey::Unavailable(PrivateKeyUnavailable::NeverHeld)
    ));
}

async fn a_key_that_cannot_be_opened_stays_pending(store: Arc<dyn Store>) {
    let iss = issuer(&store).await;
    let k = pending_key(&store, iss, T0).await;
    let wrong = MasterKey::generate().unwrap();
    let wrong_open = move |sealed: &SealedPrivateKey| wrong.open(k.id.as_str().as_bytes(), sealed);
    let err = store
        .take_private_key(
            iss,
            k.id,
            T0 - 10,
            T0,
            &event(iss, AuditAction::PrivateKeyDownloaded, k.id.as_str()),
            &wrong_open,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Internal(_)), "{err:?}");
    assert_eq!(
        store.get_key(iss, k.id).await.unwrap().unwrap().private_key,
        PrivateKeyState::Pending
    );
    let taken = store
        .take_private_key(
            iss,
            k.id,
            T0 - 10,
            T0,
            &event(iss, AuditAction::PrivateKeyDownloaded, k.id.as_str()),
            &opener(k.id),
        )
        .await
        .unwrap();
    assert!(
        matches!(taken, TakePrivateKey::Taken(pem) if pem.expose().starts_with(keygate_core::crypto::PKCS8_PEM_BEGIN))
    );
}

async fn the_master_key_check_is_set_once(store: Arc<dyn Store>) {
    let first = store.master_key_check(b"first").await.unwrap();
    assert_eq!(first, b"first");
    assert_eq!(store.master_key_check(b"second").await.unwrap(), b"first");
}

async fn ensure_issuer_creates_at_most_one(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let id = IssuerId::generate();
                let candidate = Issuer {
                    id,
                    name: "x".into(),
                    created_at: T0,
                };
                store
                    .ensure_issuer(&candidate, &event(id, AuditAction::IssuerCreated, "x"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
    assert!(results.windows(2).all(|w| w[0].0.id == w[1].0.id));
    assert_eq!(store.list_issuers().await.unwrap().len(), 1);
}

async fn revocation_is_final(store: Arc<dyn Store>) {
    let iss = issuer(&store).await;
    let k = pending_key(&store, iss, T0).await;
    let revoked = store
        .revoke_key(
            iss,
            k.id,
            Some("leaked"),
            T0 + 5,
            &event(iss, AuditAction::KeyRevoked, k.id.as_str()),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(T0 + 5));
    assert_eq!(revoked.revoke_reason.as_deref(), Some("leaked"));
    assert_eq!(
        revoked.private_key,
        PrivateKeyState::Erased(T0 + 5),
        "revoking erases a pending private key"
    );
    let again = store
        .revoke_key(
            iss,
            k.id,
            Some("other"),
            T0 + 9,
            &event(iss, AuditAction::KeyRevoked, k.id.as_str()),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, revoked, "revoking again changes nothing");
    assert!(
        store
            .revoke_key(
                IssuerId::generate(),
                k.id,
                None,
                T0,
                &event(iss, AuditAction::KeyRevoked, "x")
            )
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        store
            .take_private_key(
                iss,
                k.id,
                T0 - 10,
                T0 + 10,
                &event(iss, AuditAction::PrivateKeyDownloaded, "x"),
                &opener(k.id)
            )
            .await
            .unwrap(),
        TakePrivateKey::Unavailable(PrivateKeyUnavailable::Erased)
    ));
}

async fn stale_private_keys_are_erased(store: Arc<dyn Store>) {
    let iss = issuer(&store).await;
    let old = pending_key(&store, iss, T0 - 100_000).await;
    let fresh = pending_key(&store, iss, T0).await;
    let erased = store
        .erase_stale_private_keys(T0 - 86_400, T0, &Actor::System("test"))
        .await
        .unwrap();
    let ids: Vec<KeyId> = erased.iter().map(|k| k.id).collect();
    assert!(ids.contains(&old.id) && !ids.contains(&fresh.id));
    assert_eq!(
        store
            .get_key(iss, old.id)
            .await
            .unwrap()
            .unwrap()
            .private_key,
        PrivateKeyState::Erased(T0)
    );
    assert_eq!(
        store
            .get_key(iss, fresh.id)
            .await
            .unwrap()
            .unwrap()
            .private_key,
        PrivateKeyState::Pending
    );
}

async fn lists_filter_and_page(store: Arc<dyn Store>) {
    let iss = issuer(&store).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let k = key(iss, T0 + i / 2, PrivateKeyState::NeverHeld);
        store
            .insert_key(
                &k,
                None,
                100,
                &event(iss, AuditAction::KeyCreated, k.id.as_str()),
            )
            .await
            .unwrap();
        ids.push(k.id);
    }
    store
        .revoke_key(
            iss,
            ids[0],
            None,
            T0,
            &event(iss, AuditAction::KeyRevoked, "x"),
        )
        .await
        .unwrap();
    let mut expiring = key(iss, T0, PrivateKeyState::NeverHeld);
    expiring.expires_at = Some(T0 + 50);
    store
        .insert_key(
            &expiring,
            None,
            100,
            &event(iss, AuditAction::KeyCreated, "x"),
        )
        .await
        .unwrap();

    let q = |status, after, limit, now| KeyQuery {
        status,
        key_type: None,
        owner: None,
        after,
        limit,
        now,
    };
    // (status filter, "now", expected total); a key past its expiry counts as not active.
    for (status, now, total) in [
        (None, T0, 8),
        (Some(StatusFilter::Active), T0, 7),
        (Some(StatusFilter::Revoked), T0, 1),
        (Some(StatusFilter::Revoked), T0 + 60, 2),
    ] {
        let got = store
            .list_keys(iss, &q(status, None, 100, now))
            .await
            .unwrap();
        assert_eq!(got.total, total, "{status:?} at {now}");
    }
    let individual = KeyQuery {
        key_type: Some(KeyType::Individual),
        ..q(None, None, 100, T0)
    };
    assert_eq!(store.list_keys(iss, &individual).await.unwrap().total, 0);

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_keys(iss, &q(None, after.clone(), 3, T0))
            .await
            .unwrap();
        let mut prev: Option<(i64, KeyId)> = seen.last().map(|k: &ApiKey| (k.created_at, k.id));
        for k in &page.items {
            if let Some(p) = prev {
                assert!((k.created_at, k.id) < p, "newest first, strictly ordered");
            }
            prev = Some((k.created_at, k.id));
        }
        seen.extend(page.items);
        match page.next {
            Some(c) => after = Some(KeyCursor::decode(&c).unwrap()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 8);
}

async fn the_change_feed_sees_every_change(store: Arc<dyn Store>) {
    let (start, _) = load_all(&store).await;
    let iss = issuer(&store).await;
    let a = pending_key(&store, iss, T0).await;
    let b = pending_key(&store, iss, T0).await;
    store
        .revoke_key(
            iss,
            a.id,
            None,
            T0,
            &event(iss, AuditAction::KeyRevoked, "x"),
        )
        .await
        .unwrap();
    store
        .take_private_key(
            iss,
            b.id,
            T0 - 10,
            T0,
            &event(iss, AuditAction::PrivateKeyDownloaded, "x"),
            &opener(b.id),
        )
        .await
        .unwrap();
    let changes = store.changes_since(start, 100).await.unwrap();
    let order: Vec<KeyId> = changes.iter().map(|(_, k)| *k).collect();
    assert_eq!(order, [a.id, b.id, a.id, b.id]);
    assert!(
        changes.windows(2).all(|w| w[0].0 < w[1].0),
        "positions increase"
    );
    let (seq, all) = load_all(&store).await;
    assert_eq!(seq, changes.last().unwrap().0);
    assert!(all.iter().any(|k| k.id == a.id && k.revoked_at.is_some()));
    assert!(store.changes_since(seq, 100).await.unwrap().is_empty());
    let got = store
        .keys_by_id(&[a.id, b.id, KeyId::generate().unwrap()])
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(
        store.changes_since(start, 2).await.unwrap().len(),
        2,
        "the limit is honoured"
    );
}

async fn the_audit_log_is_chained(store: Arc<dyn Store>) {
    let iss = issuer(&store).await;
    let k = pending_key(&store, iss, T0).await;
    store
        .take_private_key(
            iss,
            k.id,
            T0 - 10,
            T0,
            &event(iss, AuditAction::PrivateKeyDownloaded, k.id.as_str())
                .from_ip(Some("127.0.0.1".parse().unwrap())),
            &opener(k.id),
        )
        .await
        .unwrap();
    store
        .revoke_key(
            iss,
            k.id,
            None,
            T0,
            &event(iss, AuditAction::KeyRevoked, k.id.as_str()),
        )
        .await
        .unwrap();
    let page = store.list_audit_events(iss, None, 10).await.unwrap();
    let actions: Vec<AuditAction> = page.items.iter().map(|e| e.event.action).collect();
    assert_eq!(
        actions,
        [
            AuditAction::KeyRevoked,
            AuditAction::PrivateKeyDownloaded,
            AuditAction::KeyCreated,
            AuditAction::IssuerCreated
        ]
    );
    assert_eq!(
        page.items[1].event.source_ip,
        Some("127.0.0.1".parse().unwrap())
    );
    assert!(page.items.windows(2).all(|w| w[0].seq > w[1].seq));
    let older = store
        .list_audit_events(iss, Some(page.items[1].seq), 10)
        .await
        .unwrap();
    assert_eq!(older.items.len(), 2);
    // Each test has its own store, so this issuer's events are the whole chain: each hash
    // covers its event and the hash before it, back to the first event's empty predecessor.
    for w in page.items.windows(2) {
        assert_eq!(w[0].seq, w[1].seq + 1);
        assert_eq!(w[0].event.chain_hash(w[0].seq, &w[1].hash), w[0].hash);
    }
    let first = page.items.last().unwrap();
    assert_eq!(first.event.chain_hash(first.seq, &[]), first.hash);
    // The deployment-wide chain, in order and in pages, verifies end to end.
    let whole = store.audit_chain(0, 100).await.unwrap();
    assert_eq!(whole.len(), 4);
    assert!(whole.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    let mut verifier = keygate_core::audit::ChainVerifier::new();
    for e in &whole {
        verifier.push(e).unwrap();
    }
    let next = store.audit_chain(whole[1].seq, 1).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].seq, whole[2].seq);
    assert!(
        store
            .audit_chain(whole[3].seq, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Concurrent writers (creations and revocations from many tasks at once) while a follower
/// reads the feed as a node does: the follower ends up with every committed change and never
/// skips a position that commits late, and the audit chain stays gap-free and intact.
async fn concurrent_writers_keep_the_feed_and_the_chain_in_order(store: Arc<dyn Store>) {
    let iss = issuer(&store).await;
    let (start, _) = load_all(&store).await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut from = start;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let changes = store.changes_since(from, 50).await.unwrap();
                if let Some(&(last, _)) = changes.last() {
                    from = last;
                }
                seen.extend(changes);
                if finished && store.changes_since(from, 1).await.unwrap().is_empty() {
                    return seen;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    };
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..5 {
                    let k = key(iss, T0, PrivateKeyState::NeverHeld);
                    store
                        .insert_key(&k, None, 10_000, &event(iss, AuditAction::KeyCreated, "x"))
                        .await
                        .unwrap();
                    store
                        .revoke_key(
                            iss,
                            k.id,
                            None,
                            T0,
                            &event(iss, AuditAction::KeyRevoked, "x"),
                        )
                        .await
                        .unwrap();
                    ids.push(k.id);
                }
                ids
            })
        })
        .collect();
    let mut created = Vec::new();
    for w in writers {
        created.extend(w.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = follower.await.unwrap();
    // Every change, each position once, in increasing order: nothing committed late was skipped.
    assert_eq!(seen.len(), 80, "two changes per key");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    let (_, all) = load_all(&store).await;
    assert_eq!(seen.len(), all_changes(&store, start).await);
    for id in &created {
        assert_eq!(seen.iter().filter(|(_, k)| k == id).count(), 2, "{id}");
    }
    assert!(
        all.iter()
            .filter(|k| created.contains(&k.id))
            .all(|k| k.revoked_at.is_some())
    );
    // The audit chain: gap-free positions, each hash covering the one before.
    let mut events = Vec::new();
    let mut before = None;
    loop {
        let page = store.list_audit_events(iss, before, 200).await.unwrap();
        let Some(last) = page.items.last() else { break };
        before = Some(last.seq);
        events.extend(page.items);
    }
    assert_eq!(
        events.len(),
        1 + 80,
        "issuer creation plus two events per key"
    );
    for w in events.windows(2) {
        assert_eq!(w[0].seq, w[1].seq + 1);
        assert_eq!(w[0].event.chain_hash(w[0].seq, &w[1].hash), w[0].hash);
    }
}

/// How many changes the feed holds after `from`.
async fn all_changes(store: &Arc<dyn Store>, from: i64) -> usize {
    store.changes_since(from, 10_000).await.unwrap().len()
}

async fn usage_adds_up_and_keeps_the_newest_time(store: Arc<dyn Store>) {
    let issuer = issuer(&store).await;
    let k = pending_key(&store, issuer, 1_000).await;
    let (seq_before, _) = load_all(&store).await;
    let usage = |at, requests| KeyUsage {
        key_id: k.id,
        last_used_at: at,
        requests,
    };
    store.record_usage(&[usage(2_000, 3)]).await.unwrap();
    // An older batch (another node's, flushed late) adds its count but not its time.
    store
        .record_usage(&[
            usage(1_500, 2),
            KeyUsage {
                key_id: KeyId::generate().unwrap(),
                last_used_at: 9_999,
                requests: 1,
            },
        ])
        .await
        .unwrap();
    store.record_usage(&[]).await.unwrap();
    let got = store.get_key(issuer, k.id).await.unwrap().unwrap();
    assert_eq!((got.request_count, got.last_used_at), (5, Some(2_000)));
    // Usage is not a verification change: the feed does not move.
    let (seq_after, _) = load_all(&store).await;
    assert_eq!(seq_before, seq_after);
}

// ---- people ----------------------------------------------------------------------------------

fn user(issuer: IssuerId, email: &str, roles: &str) -> User {
    User {
        id: UserId::generate(),
        issuer_id: issuer,
        email: email.into(),
        first_name: "Test".into(),
        last_name: "Person".into(),
        roles: RoleSet::from_stored(roles).unwrap(),
        password_hash: PasswordHashText::from_stored(
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        ),
        created_at: T0,
    }
}

fn invitation(issuer: IssuerId, email: &str, expires_at: i64) -> Invitation {
    Invitation {
        id: InvitationId::generate(),
        issuer_id: issuer,
        email: email.into(),
        first_name: "Invited".into(),
        last_name: "Person".into(),
        roles: RoleSet::from_stored("DEVELOPER").unwrap(),
        created_by: "apiKey:ABCDEFGHIJ".into(),
        created_at: T0,
        expires_at,
    }
}

fn link() -> SecretHash {
    BearerSecret::generate().unwrap().hash()
}

async fn setup_and_invitation_links_work_once(store: Arc<dyn Store>) {
    let iss = issuer(&store).await;
    let first = link();
    assert!(store.set_setup_link(iss, &first, T0).await.unwrap());
    let second = link();
    assert!(
        store.set_setup_link(iss, &second, T0).await.unwrap(),
        "a new link replaces the old"
    );
    assert_eq!(store.setup_link_issuer(&first).await.unwrap(), None);
    assert_eq!(store.setup_link_issuer(&second).await.unwrap(), Some(iss));
    let holder = user(iss, "Holder@Example.com", "ACCOUNT_HOLDER");
    let audit = event(iss, AuditAction::AccountHolderCreated, "x");
    assert!(matches!(
        store.create_account_holder(&first, &holder, &audit).await,
        Err(Error::NotFound(_))
    ));
    store
        .create_account_holder(&second, &holder, &audit)
        .await
        .unwrap();
    let again = user(iss, "other@example.com", "ACCOUNT_HOLDER");
    assert!(
        matches!(
            store.create_account_holder(&second, &again, &audit).await,
            Err(Error::NotFound(_))
        ),
        "the link is spent"
    );
    assert!(
        !store.set_setup_link(iss, &link(), T0).await.unwrap(),
        "no link once a user exists"
    );
    // Emails are unique per issuer regardless of case, and sign-in finds them so.
    let found = store.users_by_email("holder@EXAMPLE.com").await.unwrap();
    assert_eq!(found, vec![holder.clone()]);
    assert_eq!(
        store.get_user(iss, holder.id).await.unwrap(),
        Some(holder.clone())
    );
    assert_eq!(
        store
            .get_user(issuer(&store).await, holder.id)
            .await
            .unwrap(),
        None,
        "not across issuers"
    );

    // Invitations: one per address, not for a user's address, accepted once, never when expired.
    let inv = invitation(iss, "dev@example.com", T0 + 100);
    let inv_link = link();
    let ev = event(iss, AuditAction::UserInvited, "i");
    store.insert_invitation(&inv, &inv_link, &ev).await.unwrap();
    assert!(matches!(
        store
            .insert_invitation(&invitation(iss, "DEV@example.com", T0 + 100), &link(), &ev)
            .await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        store
            .insert_invitation(
                &invitation(iss, "holder@example.com", T0 + 100),
                &link(),
                &ev
            )
            .await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(
        store.invitation_by_link(&inv_link, T0).await.unwrap(),
        Some(inv.clone())
    );
    assert_eq!(
        store.invitation_by_link(&inv_link, T0 + 100).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(
        store.list_invitations(iss, T0).await.unwrap(),
        vec![inv.clone()]
    );
    let dev = User {
        email: inv.email.clone(),
        ..user(iss, "", "DEVELOPER")
    };
    let accepted = event(iss, AuditAction::InvitationAccepted, "i");
    assert!(
        matches!(
            store
                .accept_invitation(&inv_link, T0 + 100, &dev, &accepted)
                .await,
            Err(Error::NotFound(_))
        ),
        "expired links are refused"
    );
    // Two people racing with the same link: exactly one user.
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            let dev = User {
                id: UserId::generate(),
                ..dev.clone()
            };
            let accepted = accepted.clone();
            tokio::spawn(async move {
                store
                    .accept_invitation(&inv_link, T0 + 1, &dev, &accepted)
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for r in racers {
        if r.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(store.list_users(iss).await.unwrap().len(), 2);
    assert!(store.list_invitations(iss, T0).await.unwrap().is_empty());
    let gone = invitation(iss, "gone@example.com", T0 + 100);
    store.insert_invitation(&gone, &link(), &ev).await.unwrap();
    let cancel = event(iss, AuditAction::InvitationCancelled, "i");
    assert!(
        store
            .delete_invitation(iss, gone.id, &cancel)
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_invitation(iss, gone.id, &cancel)
            .await
            .unwrap()
    );
}

async fn roles_follow_users_to_their_individual_keys(store: Arc<dyn Store>) {
    let iss = issuer(&store).await;
    let holder = user(iss, "holder@example.com", "ACCOUNT_HOLDER");
    let setup = link();
    store.set_setup_link(iss, &setup, T0).await.unwrap();
    store
        .create_account_holder(
            &setup,
            &holder,
            &event(iss, AuditAction::AccountHolderCreated, "h"),
        )
        .await
        .unwrap();
    let dev = user(iss, "dev@example.com", "DEVELOPER");
    let inv = invitation(iss, &dev.email, T0 + 100);
    let inv_link = link();
    store
        .insert_invitation(&inv, &inv_link, &event(iss, AuditAction::UserInvited, "i"))
        .await
        .unwrap();
    store
        .accept_invitation(
            &inv_link,
            T0,
            &dev,
            &event(iss, AuditAction::InvitationAccepted, "i"),
        )
        .await
        .unwrap();

    // The Account Holder is neither removed nor changed.
    let ev = event(iss, AuditAction::UserRolesChanged, "u");
    let admin_roles = RoleSet::from_stored("ADMIN").unwrap();
    assert!(matches!(
        store
            .set_user_roles(iss, holder.id, &admin_roles, T0, &ev)
            .await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        store.remove_user(iss, holder.id, T0, &ev).await,
        Err(Error::Conflict(_))
    ));
    let holder_roles = RoleSet::from_stored("ACCOUNT_HOLDER").unwrap();
    assert!(matches!(
        store
            .set_user_roles(iss, dev.id, &holder_roles, T0, &ev)
            .await,
        Err(Error::Conflict(_))
    ));

    // An individual key is inserted only while its owner exists with the key's roles.
    let mut stale = key(iss, T0, PrivateKeyState::NeverHeld);
    stale.key_type = KeyType::Individual;
    stale.roles = RoleSet::from_stored("ADMIN").unwrap();
    stale.user_id = Some(dev.id);
    let ev_created = event(iss, AuditAction::KeyCreated, stale.id.as_str());
    assert!(matches!(
        store.insert_key(&stale, None, 0, &ev_created).await,
        Err(Error::Conflict(_))
    ));
    stale.user_id = Some(UserId::generate());
    assert!(matches!(
        store.insert_key(&stale, None, 0, &ev_created).await,
        Err(Error::NotFound(_))
    ));

    // One active individual key per user.
    let mut k = key(iss, T0, PrivateKeyState::NeverHeld);
    k.key_type = KeyType::Individual;
    k.roles = dev.roles.clone();
    k.user_id = Some(dev.id);
    let created = event(iss, AuditAction::KeyCreated, k.id.as_str());
    store.insert_key(&k, None, 0, &created).await.unwrap();
    let second = ApiKey {
        id: KeyId::generate().unwrap(),
        ..k.clone()
    };
    assert!(matches!(
        store.insert_key(&second, None, 0, &created).await,
        Err(Error::Conflict(_))
    ));
    let mine = KeyQuery {
        status: None,
        key_type: None,
        owner: Some(dev.id),
        after: None,
        limit: 10,
        now: T0,
    };
    assert_eq!(
        store.list_keys(iss, &mine).await.unwrap().items,
        vec![k.clone()]
    );
    let theirs = KeyQuery {
        owner: Some(holder.id),
        ..mine.clone()
    };
    assert!(
        store
            .list_keys(iss, &theirs)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // A role change reaches the key, through the change feed.
    let (seq, _) = load_all(&store).await;
    let finance = RoleSet::from_stored("FINANCE").unwrap();
    let (changed, keys) = store
        .set_user_roles(iss, dev.id, &finance, T0, &ev)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.roles, finance);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].roles, finance);
    let feed = store.changes_since(seq, 100).await.unwrap();
    assert_eq!(
        feed.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
        vec![k.id]
    );
    assert_eq!(store.keys_by_id(&[k.id]).await.unwrap()[0].roles, finance);

    // Removal revokes the key and ends the sessions, in one go.
    let session = link();
    store
        .insert_session(
            &session,
            &changed,
            T0,
            &event(iss, AuditAction::SignedIn, "s"),
        )
        .await
        .unwrap();
    let (seq, _) = load_all(&store).await;
    let revoked = store
        .remove_user(
            iss,
            dev.id,
            T0 + 5,
            &event(iss, AuditAction::UserRemoved, "u"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].revoked_at, Some(T0 + 5));
    assert_eq!(store.changes_since(seq, 100).await.unwrap().len(), 1);
    assert_eq!(store.get_user(iss, dev.id).await.unwrap(), None);
    assert_eq!(
        store.touch_session(&session, T0 - 1, T0 + 6).await.unwrap(),
        None
    );
    assert!(
        store
            .remove_user(iss, dev.id, T0, &ev)
            .await
            .unwrap()
            .is_none()
    );
    let listed = store.get_key(iss, k.id).await.unwrap().unwrap();
    assert!(
        listed.is_revoked(),
        "a removed user's key stays listed, revoked"
    );
}

async fn sessions_live_while_used(store: Arc<dyn Store>) {
    let iss = issuer(&store).await;
    let holder = user(iss, "holder@example.com", "ACCOUNT_HOLDER");
    let setup = link();
    store.set_setup_link(iss, &setup, T0).await.unwrap();
    store
        .create_account_holder(
            &setup,
            &holder,
            &event(iss, AuditAction::AccountHolderCreated, "h"),
        )
        .await
        .unwrap();
    let id = link();
    store
        .insert_session(&id, &holder, T0, &event(iss, AuditAction::SignedIn, "s"))
        .await
        .unwrap();
    let idle = 1800;
    let s = store
        .touch_session(&id, T0 + 10 - idle, T0 + 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.user, holder);
    assert_eq!(s.last_seen_at, T0 + 10);
    // Used again after a minute: the idle clock restarts from then.
    store
        .touch_session(&id, T0 + 100 - idle, T0 + 100)
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .touch_session(&id, T0 + 100 + idle - 1 - idle, T0 + 100 + idle - 1)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .touch_session(&id, T0 + 100 + 2 * idle - idle, T0 + 100 + 2 * idle)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store.touch_session(&link(), 0, T0).await.unwrap().is_none(),
        "unknown IDs find nothing"
    );
    // Sign-out and the sweep.
    let other = link();
    store
        .insert_session(&other, &holder, T0, &event(iss, AuditAction::SignedIn, "s"))
        .await
        .unwrap();
    store
        .delete_session(&other, &event(iss, AuditAction::SignedOut, "s"))
        .await
        .unwrap();
    assert!(store.touch_session(&other, 0, T0).await.unwrap().is_none());
    // `id` was last used at T0 + 100 + idle - 1; a sweep of sessions idle since after that
    // deletes it.
    let cutoff = T0 + 100 + idle;
    assert_eq!(store.sweep_sessions(cutoff, cutoff).await.unwrap(), 1);
    assert!(
        store
            .touch_session(&id, 0, cutoff + 1)
            .await
            .unwrap()
            .is_none()
    );
}

async fn secret_keys_store_hashes_roll_and_revoke(store: Arc<dyn Store>) {
    let iss = issuer(&store).await;
    let secret = SecretKeyText::generate().unwrap();
    let key = SecretKey {
        id: KeyId::generate().unwrap(),
        issuer_id: iss,
        name: "maps".into(),
        roles: RoleSet::from_stored("DEVELOPER").unwrap(),
        restrictions: Restrictions::from_json(&serde_json::json!({
            "referrers": ["https://*.example.com/*"], "ipRanges": ["192.0.2.0/24"], "apis": ["GET /v1/maps/**"],
        }))
        .unwrap(),
        created_by: "apiKey:ABCDEFGHIJ".into(),
        created_at: T0,
        expires_at: Some(T0 + 1000),
        revoked_at: None,
        revoke_reason: None,
        last_used_at: None,
        request_count: 0,
        versions: vec![SecretVersion { hash: secret.hash(), hint: secret.hint(), created_at: T0, expires_at: None }],
    };
    let (seq, _) = load_all(&store).await;
    store
        .insert_secret_key(&key, &event(iss, AuditAction::SecretKeyCreated, "s"))
        .await
        .unwrap();
    assert_eq!(
        store.get_secret_key(iss, key.id).await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(
        store
            .get_secret_key(issuer(&store).await, key.id)
            .await
            .unwrap(),
        None,
        "not across issuers"
    );
    assert_eq!(
        store.list_secret_keys(iss).await.unwrap(),
        vec![key.clone()]
    );
    assert_eq!(
        store.secret_key_by_hash(&secret.hash()).await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(store.secret_key_by_hash(&[7; 32]).await.unwrap(), None);
    let feed = store.changes_since(seq, 100).await.unwrap();
    assert_eq!(
        feed.last().map(|(_, id)| *id),
        Some(key.id),
        "secret keys share the change feed"
    );
    assert_eq!(
        store.secret_keys_by_id(&[key.id]).await.unwrap(),
        vec![key.clone()]
    );
    assert!(store.keys_by_id(&[key.id]).await.unwrap().is_empty());
    assert_eq!(
        store.load_all_secret_keys().await.unwrap(),
        vec![key.clone()]
    );

    // Usage counts reach secret keys as they reach API keys.
    store
        .record_usage(&[KeyUsage {
            key_id: key.id,
            requests: 3,
            last_used_at: T0 + 5,
        }])
        .await
        .unwrap();
    let used = store.get_secret_key(iss, key.id).await.unwrap().unwrap();
    assert_eq!((used.request_count, used.last_used_at), (3, Some(T0 + 5)));

    // A roll adds a version and ends the old one; a second roll keeps the earlier end.
    let second = SecretKeyText::generate().unwrap();
    let v2 = SecretVersion {
        hash: second.hash(),
        hint: second.hint(),
        created_at: T0 + 10,
        expires_at: None,
    };
    let rolled = store
        .roll_secret_key(
            iss,
            key.id,
            &v2,
            T0 + 100,
            &event(iss, AuditAction::SecretKeyRolled, "s"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rolled.versions.len(), 2);
    assert_eq!(rolled.versions[0], v2, "newest first");
    assert_eq!(rolled.versions[1].expires_at, Some(T0 + 100));
    let third = SecretKeyText::generate().unwrap();
    let v3 = SecretVersion {
        hash: third.hash(),
        hint: third.hint(),
        created_at: T0 + 20,
        expires_at: None,
    };
    let rolled = store
        .roll_secret_key(
            iss,
            key.id,
            &v3,
            T0 + 500,
            &event(iss, AuditAction::SecretKeyRolled, "s"),
        )
        .await
        .unwrap()
        .unwrap();
    let ends: Vec<Option<i64>> = rolled.versions.iter().map(|v| v.expires_at).collect();
    assert_eq!(ends, vec![None, Some(T0 + 500), Some(T0 + 100)]);
    assert_eq!(rolled.live_versions(T0 + 200).count(), 2);

    // Revocation is final, and a revoked key cannot be rolled.
    let ev = event(iss, AuditAction::SecretKeyRevoked, "s");
    let revoked = store
        .revoke_secret_key(iss, key.id, Some("leaked"), T0 + 30, &ev)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(T0 + 30));
    let again = store
        .revoke_secret_key(iss, key.id, None, T0 + 40, &ev)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.revoked_at, again.revoke_reason.as_deref()),
        (Some(T0 + 30), Some("leaked"))
    );
    let fourth = SecretKeyText::generate().unwrap();
    let v4 = SecretVersion {
        hash: fourth.hash(),
        hint: fourth.hint(),
        created_at: T0 + 50,
        expires_at: None,
    };
    assert!(matches!(
        store.roll_secret_key(iss, key.id, &v4, T0 + 50, &ev).await,
        Err(Error::Conflict(_))
    ));
    assert!(
        store
            .revoke_secret_key(iss, KeyId::generate().unwrap(), None, T0, &ev)
            .await
            .unwrap()
            .is_none()
    );
}

/// An invitation ends with what made it: removing a person ends those made in person and with
/// their individual keys; taking ADMIN away does the same; revoking a key ends those made with
/// it. Others stay.
async fn invitations_end_with_their_maker(store: Arc<dyn Store>) {
    let iss = issuer(&store).await;
    let person = async |email: &str| {
        let u = user(iss, email, "ADMIN");
        let inv_link = link();
        store
            .insert_invitation(
                &invitation(iss, email, T0 + 1000),
                &inv_link,
                &event(iss, AuditAction::UserInvited, "i"),
            )
            .await
            .unwrap();
        store
            .accept_invitation(
                &inv_link,
                T0,
                &u,
                &event(iss, AuditAction::InvitationAccepted, "i"),
            )
            .await
            .unwrap();
        let mut k = key(iss, T0, PrivateKeyState::NeverHeld);
        k.key_type = KeyType::Individual;
        k.roles = u.roles.clone();
        k.user_id = Some(u.id);
        store
            .insert_key(
                &k,
                None,
                0,
                &event(iss, AuditAction::KeyCreated, k.id.as_str()),
            )
            .await
            .unwrap();
        (u, k)
    };
    let made_by = async |created_by: String, email: &str| {
        let inv = Invitation {
            created_by,
            ..invitation(iss, email, T0 + 1000)
        };
        store
            .insert_invitation(&inv, &link(), &event(iss, AuditAction::UserInvited, "i"))
            .await
            .unwrap();
    };
    let pending = async || -> Vec<String> {
        let mut emails: Vec<String> = store
            .list_invitations(iss, T0)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.email)
            .collect();
        emails.sort();
        emails
    };
    let ev = event(iss, AuditAction::UserRemoved, "u");

    let (removed, removed_key) = person("removed@example.com").await;
    made_by(format!("user:{}", removed.id), "a@example.com").await;
    made_by(format!("apiKey:{}", removed_key.id), "b@example.com").await;
    let (demoted, demoted_key) = person("demoted@example.com").await;
    made_by(format!("apiKey:{}", demoted_key.id), "c@example.com").await;
    let team = key(iss, T0, PrivateKeyState::NeverHeld);
    store
        .insert_key(
            &team,
            None,
            50,
            &event(iss, AuditAction::KeyCreated, team.id.as_str()),
        )
        .await
        .unwrap();
    made_by(format!("apiKey:{}", team.id), "d@example.com").await;
    made_by("apiKey:ABCDEFGHIJ".into(), "kept@example.com").await;

    store.remove_user(iss, removed.id, T0, &ev).await.unwrap();
    assert_eq!(
        pending().await,
        ["c@example.com", "d@example.com", "kept@example.com"]
    );
    store
        .set_user_roles(
            iss,
            demoted.id,
            &RoleSet::from_stored("DEVELOPER").unwrap(),
            T0,
            &ev,
        )
        .await
        .unwrap();
    assert_eq!(pending().await, ["d@example.com", "kept@example.com"]);
    store.revoke_key(iss, team.id, None, T0, &ev).await.unwrap();
    assert_eq!(pending().await, ["kept@example.com"]);
}

/// A password change ends every other session of the person and keeps the one that made it;
/// signing out everywhere ends them all; a reset link works once, before it expires, for its own
/// person only, and ends every session.
async fn passwords_change_and_end_other_sessions(store: Arc<dyn Store>) {
    let iss = issuer(&store).await;
    let holder = user(iss, "holder@example.com", "ACCOUNT_HOLDER");
    let setup = link();
    store.set_setup_link(iss, &setup, T0).await.unwrap();
    store
        .create_account_holder(
            &setup,
            &holder,
            &event(iss, AuditAction::AccountHolderCreated, "h"),
        )
        .await
        .unwrap();
    let sessions: Vec<SecretHash> = (0..3).map(|_| link()).collect();
    for s in &sessions {
        store
            .insert_session(s, &holder, T0, &event(iss, AuditAction::SignedIn, "s"))
            .await
            .unwrap();
    }
    let alive = async |s: &SecretHash| store.touch_session(s, 0, T0 + 1).await.unwrap().is_some();
    let new_hash = PasswordHashText::from_stored("$argon2id$v=19$m=19456,t=2,p=1$bmV3$bmV3".into());
    let ev = event(iss, AuditAction::PasswordChanged, "u");
    assert!(
        store
            .set_password(iss, holder.id, &new_hash, Some(&sessions[0]), &ev)
            .await
            .unwrap()
    );
    assert!(
        alive(&sessions[0]).await,
        "the session that changed it stays"
    );
    assert!(!alive(&sessions[1]).await && !alive(&sessions[2]).await);
    assert_eq!(
        store
            .get_user(iss, holder.id)
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        new_hash
    );
    assert!(
        !store
            .set_password(issuer(&store).await, holder.id, &new_hash, None, &ev)
            .await
            .unwrap(),
        "not across issuers"
    );
    // Sign out everywhere.
    let ended = store
        .end_sessions(
            iss,
            holder.id,
            None,
            &event(iss, AuditAction::SessionsEnded, "u"),
        )
        .await
        .unwrap();
    assert_eq!(ended, 1);
    assert!(!alive(&sessions[0]).await);

    // A reset link: once, in time, and a second one replaces the first.
    let again = link();
    store
        .insert_session(&again, &holder, T0, &event(iss, AuditAction::SignedIn, "s"))
        .await
        .unwrap();
    let ev = event(iss, AuditAction::PasswordResetLinkCreated, "u");
    let first = link();
    assert!(
        store
            .insert_password_reset(iss, holder.id, &first, T0 + 100, &ev)
            .await
            .unwrap()
    );
    let second = link();
    assert!(
        store
            .insert_password_reset(iss, holder.id, &second, T0 + 100, &ev)
            .await
            .unwrap()
    );
    assert_eq!(store.password_reset_user(&first, T0).await.unwrap(), None);
    assert_eq!(
        store.password_reset_user(&second, T0 + 100).await.unwrap(),
        None,
        "expired"
    );
    let found = store
        .password_reset_user(&second, T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, holder.id);
    let reset_hash =
        PasswordHashText::from_stored("$argon2id$v=19$m=19456,t=2,p=1$cmVz$cmVz".into());
    let ev = event(iss, AuditAction::PasswordReset, "u");
    assert!(matches!(
        store
            .reset_password(&second, UserId::generate(), T0, &reset_hash, &ev)
            .await,
        Err(Error::NotFound(_))
    ));
    store
        .reset_password(&second, holder.id, T0, &reset_hash, &ev)
        .await
        .unwrap();
    assert!(!alive(&again).await, "a reset ends every session");
    assert!(matches!(
        store
            .reset_password(&second, holder.id, T0, &reset_hash, &ev)
            .await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        store
            .get_user(iss, holder.id)
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        reset_hash
    );
}

macro_rules! backend {
    ($module:ident, $open:expr) => {
        mod $module {
            use super::*;
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let (_guard, store) = $open.await;
                        super::$name(store).await;
                    }
                };
            }
            case!(issuers_round_trip);
            case!(keys_round_trip_exactly);
            case!(the_active_key_cap_holds_under_concurrency);
            case!(a_private_key_is_taken_exactly_once);
            case!(revocation_is_final);
            case!(a_key_that_cannot_be_opened_stays_pending);
            case!(the_master_key_check_is_set_once);
            case!(ensure_issuer_creates_at_most_one);
            case!(stale_private_keys_are_erased);
            case!(lists_filter_and_page);
            case!(the_change_feed_sees_every_change);
            case!(the_audit_log_is_chained);
            case!(usage_adds_up_and_keeps_the_newest_time);
            case!(concurrent_writers_keep_the_feed_and_the_chain_in_order);
            case!(setup_and_invitation_links_work_once);
            case!(roles_follow_users_to_their_individual_keys);
            case!(sessions_live_while_used);
            case!(secret_keys_store_hashes_roll_and_revoke);
            case!(invitations_end_with_their_maker);
            case!(passwords_change_and_end_other_sessions);
        }
    };
}

async fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = keygate_store::open(&format!("sqlite://{}/contract.db", dir.path().display()))
        .await
        .unwrap();
    (dir, store)
}

backend!(sqlite_backend, sqlite());

/// The `PostgreSQL` server the `postgres_backend` cases run against, as a URL whose user may
/// `CREATE DATABASE`. Each case gets a fresh database there, dropped when it ends.
/// A store in a new, empty `PostgreSQL` database (see `keygate_testkit`).
async fn postgres() -> (keygate_testkit::PgDatabase, Arc<dyn Store>) {
    let db = keygate_testkit::PgDatabase::create().await;
    let store = keygate_store::open(db.url()).await.unwrap();
    (db, store)
}

backend!(postgres_backend, postgres());
