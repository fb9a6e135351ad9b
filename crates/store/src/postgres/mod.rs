//! The `PostgreSQL` store: one database shared by any number of keygate nodes.
//!
//! It behaves exactly as the `SQLite` store does. Where that store relies on its single writer,
//! this one locks explicitly, in `READ COMMITTED` transactions:
//!
//! - row locks (`FOR UPDATE`) on a key being taken, revoked or erased, and on the issuer whose
//!   team-key cap is being checked;
//! - a transaction-scoped advisory lock around issuer creation, so "create only if there is no
//!   issuer at all" is atomic;
//! - one deployment-wide advisory lock, the *feed lock*, held from just before the first insert
//!   into `key_changes` or `audit_events` until the commit (see `FeedLock`).
//!
//! Locks are taken in that order (rows, then issuers, then the feed lock), and a transaction
//! holding the feed lock only inserts into those two tables and reads rows it has already
//! locked, so these transactions cannot deadlock one another. Keys are always row-locked in
//! ascending ID order when a transaction locks more than one.

mod rows;
mod secrets;
mod users;

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt as _;
use keygate_core::audit::AuditAction;
use keygate_core::audit::{AuditEvent, NewAuditEvent};
use keygate_core::clock::UnixTime;
use keygate_core::crypto::SealedPrivateKey;
use keygate_core::error::{Error, PrivateKeyUnavailable, Result};
use keygate_core::ids::{Actor, IssuerId, KeyId};
use keygate_core::key::{ApiKey, KeyQuery, KeyType, Page, PrivateKeyState, StatusFilter};
use keygate_core::meter::KeyUsage;
use keygate_core::secret_key::SecretKey;
use keygate_core::store::{
    AuditStore, ChangeFeed, DeploymentStore, Issuer, IssuerStore, KeyStore, LOAD_BATCH, OpenSealed,
    Store, TakePrivateKey,
};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder, Transaction};

use rows::{audit_from_row, db_err, key_from_row};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (2, include_str!("../../migrations/postgres/0002_users.sql")),
    (
        3,
        include_str!("../../migrations/postgres/0003_secret_keys.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_password_resets.sql"),
    ),
];

const KEY_COLUMNS: &str = "id, issuer_id, name, roles, key_type, algorithm, public_key, private_key_state, private_key_at, created_by, created_at, last_used_at, request_count, revoked_at, revoke_reason, expires_at, user_id";

/// The channel every change-feed entry is announced on (payload: its position, as text), when
/// the transaction that wrote it commits. See [`listen_changes`].
pub const CHANGES_CHANNEL: &str = "keygate_key_changes";

// Advisory lock keys: "keygate" in ASCII, then a number. Any other user of advisory locks in the
// same database would have to pick these very values to collide.
/// Held while migrating, so nodes starting at once migrate once.
const MIGRATION_LOCK: i64 = 0x6B65_7967_6174_6501;
/// Held while creating an issuer (see [`IssuerStore::ensure_issuer`]).
const ISSUER_LOCK: i64 = 0x6B65_7967_6174_6502;
/// The feed lock (see [`FeedLock`]).
const FEED_LOCK: i64 = 0x6B65_7967_6174_6503;

/// A keygate store in a `PostgreSQL` database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects (failing if the server cannot be reached) and migrates the database.
    pub async fn open(url: &str) -> Result<Self> {
        let options = connect_options(url)?;
        // Idle connections are few seconds old at most: after a silent cut (the network, a
        // failover) a pooled connection may be dead without knowing it, and each one costs a
        // full acquire timeout to find out.
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(db_err)?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Begins a `READ COMMITTED` transaction whatever the server's default: the locking above
    /// relies on each statement seeing what committed before it started, in particular what
    /// the previous holder of a lock committed.
    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(db_err)
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.begin().await?;
        advisory_lock(&mut tx, MIGRATION_LOCK).await?;
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(db_err)?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, extract(epoch FROM now())::bigint)",
            )
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        if let Some(newest) = applied.iter().max()
            && MIGRATIONS.iter().all(|(v, _)| v < newest)
        {
            return Err(Error::Unavailable(format!(
                "the database schema (version {newest}) is newer than this keygate; upgrade keygate"
            )));
        }
        tx.commit().await.map_err(db_err)
    }
}

/// Connection options for every connection keygate makes. The error names what is wrong with
/// the URL, never the URL (it may hold a password).
fn connect_options(url: &str) -> Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)
        .map_err(|e| Error::body(format!("invalid PostgreSQL URL: {e}")))?
        // A node that stalls (or is cut off) inside a transaction must not hold the feed lock,
        // and so every node's writes, for the hours TCP keepalive would take by default: waits
        // for a lock, statements, and idle transactions are bounded, and a timed-out write
        // answers 503 (see `rows::BUSY_STATES`). The server probes each connection after 10 s
        // of silence, so it drops a vanished node's session (and its locks) within ~25 s; this
        // side bounds every call with timeouts instead (the client cannot set keepalive here).
        .options([
            ("lock_timeout", "5s"),
            ("statement_timeout", "30s"),
            ("idle_in_transaction_session_timeout", "15s"),
            ("tcp_keepalives_idle", "10"),
            ("tcp_keepalives_interval", "5"),
            ("tcp_keepalives_count", "3"),
        ]))
}

/// Connects a listener for [`CHANGES_CHANNEL`], for a node to learn of changes as they commit
/// instead of waiting for its next poll.
///
/// Notifications are a hint, never the record: the node still reads
/// [`ChangeFeed::changes_since`]. A notification sent while the listener's connection was down
/// is lost; `PgListener::try_recv` answers `Ok(None)` when that happens (and reconnects), and
/// the node should then read the feed.
pub async fn listen_changes(url: &str) -> Result<PgListener> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(connect_options(url)?);
    let mut listener = PgListener::connect_with(&pool).await.map_err(db_err)?;
    listener.listen(CHANGES_CHANNEL).await.map_err(db_err)?;
    Ok(listener)
}

async fn advisory_lock(tx: &mut Transaction<'_, Postgres>, key: i64) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(key)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Proof that the transaction holds the feed lock, which [`record_change`] and [`append_audit`]
/// require.
///
/// The audit chain needs it: an event's sequence number is the previous one plus one and its
/// hash covers the previous hash, so appends must be serialized across all nodes.
///
/// The change feed needs it too. `key_changes.seq` comes from a sequence, and sequence values
/// are handed out when rows are inserted, not when they commit: without a lock, position 8
/// could become visible before position 7, and a node that read up to 8 would never see 7.
/// Inserting only under a lock held until commit makes positions visible in order, so "every
/// change after position N" is a prefix that only ever grows. (Every transaction that records
/// a change also appends an audit event, so one lock costs nothing extra.) Rolled-back
/// transactions leave gaps in the positions; readers never assume there are none.
struct FeedLock(());

async fn lock_feed(tx: &mut Transaction<'_, Postgres>) -> Result<FeedLock> {
    advisory_lock(tx, FEED_LOCK).await?;
    Ok(FeedLock(()))
}

async fn append_audit(
    tx: &mut Transaction<'_, Postgres>,
    _locked: &FeedLock,
    event: &NewAuditEvent,
) -> Result<()> {
    let last: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err)?;
    let (seq, prev) = last.map_or((1, Vec::new()), |(s, h)| (s + 1, h));
    let hash = event.chain_hash(seq, &prev);
    sqlx::query(
        "INSERT INTO audit_events (seq, issuer_id, at, actor, action, target, source_ip, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(seq)
    .bind(event.issuer_id.to_string())
    .bind(event.at)
    .bind(&event.actor)
    .bind(event.action.as_str())
    .bind(&event.target)
    .bind(event.source_ip.map(|ip: IpAddr| ip.to_string()))
    .bind(event.detail.to_string())
    .bind(prev)
    .bind(hash)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Inserts an issuer and its audit event; the caller holds [`ISSUER_LOCK`].
async fn insert_issuer(
    tx: &mut Transaction<'_, Postgres>,
    issuer: &Issuer,
    audit: &NewAuditEvent,
) -> Result<()> {
    sqlx::query("INSERT INTO issuers (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(issuer.id.to_string())
        .bind(&issuer.name)
        .bind(issuer.created_at)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    let locked = lock_feed(tx).await?;
    append_audit(tx, &locked, audit).await
}

async fn record_change(
    tx: &mut Transaction<'_, Postgres>,
    _locked: &FeedLock,
    key: KeyId,
    now: UnixTime,
) -> Result<()> {
    sqlx::query("INSERT INTO key_changes (key_id, changed_at) VALUES ($1, $2)")
        .bind(key.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Reads a key and locks its row until the transaction ends.
async fn lock_key(
    tx: &mut Transaction<'_, Postgres>,
    issuer: IssuerId,
    id: KeyId,
) -> Result<Option<ApiKey>> {
    sqlx::query(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND issuer_id = $2 FOR UPDATE"
    ))
    .bind(id.as_str())
    .bind(issuer.to_string())
    .fetch_optional(&mut **tx)
    .await
    .map_err(db_err)?
    .as_ref()
    .map(key_from_row)
    .transpose()
}

/// Ends a transaction that changed nothing, releasing its locks now rather than when the
/// connection goes back to the pool.
async fn finish(tx: Transaction<'_, Postgres>) -> Result<()> {
    tx.rollback().await.map_err(db_err)
}

/// The SQL condition for "usable for tokens at `now`" (the placeholder that follows is bound
/// to now).
const ACTIVE_SQL: &str = "(revoked_at IS NULL AND private_key_state != 'ERASED' AND (expires_at IS NULL OR expires_at > ";

#[async_trait]
impl IssuerStore for PostgresStore {
    async fn ensure_issuer(
        &self,
        candidate: &Issuer,
        audit: &NewAuditEvent,
    ) -> Result<(Issuer, bool)> {
        let mut tx = self.begin().await?;
        // Taken before looking, so a concurrent creation is either seen or waits for this one.
        advisory_lock(&mut tx, ISSUER_LOCK).await?;
        let first: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT id, name, created_at FROM issuers ORDER BY created_at, id LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some((id, name, created_at)) = first {
            finish(tx).await?;
            let id = id
                .parse()
                .map_err(|_| Error::Internal("stored issuer ID is corrupt".into()))?;
            return Ok((
                Issuer {
                    id,
                    name,
                    created_at,
                },
                false,
            ));
        }
        insert_issuer(&mut tx, candidate, audit).await?;
        tx.commit().await.map_err(db_err)?;
        Ok((candidate.clone(), true))
    }

    async fn create_issuer(&self, issuer: &Issuer, audit: &NewAuditEvent) -> Result<()> {
        let mut tx = self.begin().await?;
        // Also taken here: an `ensure_issuer` that found no issuer must not race this insert.
        advisory_lock(&mut tx, ISSUER_LOCK).await?;
        insert_issuer(&mut tx, issuer, audit).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn get_issuer(&self, id: IssuerId) -> Result<Option<Issuer>> {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT name, created_at FROM issuers WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
        Ok(row.map(|(name, created_at)| Issuer {
            id,
            name,
            created_at,
        }))
    }

    async fn list_issuers(&self) -> Result<Vec<Issuer>> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT id, name, created_at FROM issuers ORDER BY created_at, id")
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        rows.into_iter()
            .map(|(id, name, created_at)| {
                let id = id
                    .parse()
                    .map_err(|_| Error::Internal("stored issuer ID is corrupt".into()))?;
                Ok(Issuer {
                    id,
                    name,
                    created_at,
                })
            })
            .collect()
    }
}

#[async_trait]
impl KeyStore for PostgresStore {
    async fn insert_key(
        &self,
        key: &ApiKey,
        sealed: Option<&SealedPrivateKey>,
        max_active_team_keys: u32,
        audit: &NewAuditEvent,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        if let Some(user) = key.user_id {
            // Serializes the user's key creations (the unique index is the backstop) and holds
            // off a concurrent removal or role change: the owner must still exist with the
            // roles the key was given.
            let roles: Option<String> = sqlx::query_scalar(
                "SELECT roles FROM users WHERE id = $1 AND issuer_id = $2 FOR NO KEY UPDATE",
            )
            .bind(user.to_string())
            .bind(key.issuer_id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            if let Err(e) = crate::mapping::owner_still_matches(roles.as_deref(), &key.roles) {
                finish(tx).await?;
                return Err(e);
            }
            let held: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL AND private_key_state <> 'ERASED'",
            )
            .bind(user.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
            if held > 0 {
                finish(tx).await?;
                return Err(crate::mapping::individual_key_held());
            }
        }
        if key.key_type == KeyType::Team {
            // Serializes team-key creation per issuer, so the count below cannot be overtaken
            // by a concurrent creation. NO KEY UPDATE conflicts with itself but not with the
            // KEY SHARE lock other inserts take on the issuer for their foreign key.
            sqlx::query("SELECT 1 FROM issuers WHERE id = $1 FOR NO KEY UPDATE")
                .bind(key.issuer_id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            let active: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM api_keys WHERE issuer_id = $1 AND key_type = 'TEAM' AND {ACTIVE_SQL}$2))"
            ))
            .bind(key.issuer_id.to_string())
            .bind(key.created_at)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
            if active >= i64::from(max_active_team_keys) {
                finish(tx).await?;
                return Err(Error::Conflict(format!(
                    "This issuer already has {active} active team keys, the most allowed ({max_active_team_keys}). Revoke one first."
                )));
            }
        }
        let (state, state_at) = rows::private_key_state_columns(key.private_key);
        sqlx::query(
            "INSERT INTO api_keys (id, issuer_id, name, roles, key_type, algorithm, public_key, private_key_state, private_key_at, created_by, created_at, last_used_at, revoked_at, revoke_reason, expires_at, user_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(key.id.as_str())
        .bind(key.issuer_id.to_string())
        .bind(&key.name)
        .bind(key.roles.joined())
        .bind(key.key_type.as_str())
        .bind(key.algorithm.as_str())
        .bind(&key.public_key)
        .bind(state)
        .bind(state_at)
        .bind(&key.created_by)
        .bind(key.created_at)
        .bind(key.last_used_at)
        .bind(key.revoked_at)
        .bind(&key.revoke_reason)
        .bind(key.expires_at)
        .bind(key.user_id.map(|u| u.to_string()))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some(sealed) = sealed {
            sqlx::query("INSERT INTO pending_private_keys (key_id, sealed) VALUES ($1, $2)")
                .bind(key.id.as_str())
                .bind(sealed.as_bytes())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        let locked = lock_feed(&mut tx).await?;
        record_change(&mut tx, &locked, key.id, key.created_at).await?;
        append_audit(&mut tx, &locked, audit).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn get_key(&self, issuer: IssuerId, id: KeyId) -> Result<Option<ApiKey>> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND issuer_id = $2"
        ))
        .bind(id.as_str())
        .bind(issuer.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(key_from_row)
        .transpose()
    }

    async fn list_keys(&self, issuer: IssuerId, query: &KeyQuery) -> Result<Page<ApiKey>> {
        fn filters<'a>(
            qb: &mut QueryBuilder<'a, Postgres>,
            issuer: &'a str,
            query: &'a KeyQuery,
            owner: Option<&'a String>,
        ) {
            qb.push(" WHERE issuer_id = ").push_bind(issuer);
            match query.status {
                Some(StatusFilter::Active) => {
                    qb.push(" AND ")
                        .push(ACTIVE_SQL)
                        .push_bind(query.now)
                        .push("))");
                }
                Some(StatusFilter::Revoked) => {
                    qb.push(" AND NOT ")
                        .push(ACTIVE_SQL)
                        .push_bind(query.now)
                        .push("))");
                }
                None => {}
            }
            if let Some(t) = query.key_type {
                qb.push(" AND key_type = ").push_bind(t.as_str());
            }
            if let Some(owner) = owner {
                qb.push(" AND user_id = ").push_bind(owner.as_str());
            }
        }
        let issuer_text = issuer.to_string();
        let owner = query.owner.map(|u| u.to_string());
        let mut count = QueryBuilder::new("SELECT count(*) FROM api_keys");
        filters(&mut count, &issuer_text, query, owner.as_ref());
        let total: i64 = count
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;

        let mut select = QueryBuilder::new(format!("SELECT {KEY_COLUMNS} FROM api_keys"));
        filters(&mut select, &issuer_text, query, owner.as_ref());
        if let Some(after) = &query.after {
            select
                .push(" AND (created_at, id) < (")
                .push_bind(after.created_at)
                .push(", ")
                .push_bind(after.id.as_str())
                .push(")");
        }
        select
            .push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(query.limit) + 1);
        let rows = select.build().fetch_all(&self.pool).await.map_err(db_err)?;
        let mut items: Vec<ApiKey> = rows.iter().map(key_from_row).collect::<Result<_>>()?;
        let next = if items.len() > query.limit as usize {
            items.truncate(query.limit as usize);
            items.last().map(|k| {
                keygate_core::key::KeyCursor {
                    created_at: k.created_at,
                    id: k.id,
                }
                .encode()
            })
        } else {
            None
        };
        Ok(Page {
            items,
            total: u64::try_from(total).unwrap_or(0),
            next,
        })
    }

    async fn take_private_key(
        &self,
        issuer: IssuerId,
        id: KeyId,
        created_after: UnixTime,
        now: UnixTime,
        audit: &NewAuditEvent,
        open: OpenSealed<'_>,
    ) -> Result<TakePrivateKey> {
        let mut tx = self.begin().await?;
        // The row lock is what makes "exactly one caller gets it": concurrent callers wait
        // here, then read the row as the winner left it (no longer pending).
        let Some(key) = lock_key(&mut tx, issuer, id).await? else {
            finish(tx).await?;
            return Ok(TakePrivateKey::NotFound);
        };
        let unavailable = match key.private_key {
            PrivateKeyState::Pending => None,
            PrivateKeyState::Downloaded(_) => Some(PrivateKeyUnavailable::AlreadyDownloaded),
            PrivateKeyState::Erased(_) => Some(PrivateKeyUnavailable::Erased),
            PrivateKeyState::NeverHeld => Some(PrivateKeyUnavailable::NeverHeld),
        };
        if let Some(why) = unavailable {
            finish(tx).await?;
            return Ok(TakePrivateKey::Unavailable(why));
        }
        let sealed: Option<Vec<u8>> = sqlx::query_scalar(
            "DELETE FROM pending_private_keys WHERE key_id = $1 RETURNING sealed",
        )
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let stale = key.created_at <= created_after || key.is_revoked();
        let new_state = if stale { "ERASED" } else { "DOWNLOADED" };
        sqlx::query(
            "UPDATE api_keys SET private_key_state = $1, private_key_at = $2 WHERE id = $3",
        )
        .bind(new_state)
        .bind(now)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let (outcome, erase_event) = match sealed {
            Some(bytes) if !stale => {
                // Opened before the commit (and before taking the feed lock, which other nodes
                // wait on): if this fails (wrong master key), the rollback undoes the delete
                // and the key stays downloadable.
                match open(&SealedPrivateKey::from_stored(bytes)) {
                    Ok(pem) => (TakePrivateKey::Taken(pem), None),
                    Err(e) => {
                        if let Err(rollback) = tx.rollback().await {
                            tracing::warn!(error = %rollback, "rollback after a failed open failed");
                        }
                        return Err(e);
                    }
                }
            }
            Some(_) => (
                TakePrivateKey::Unavailable(PrivateKeyUnavailable::Erased),
                Some(NewAuditEvent::new(
                    issuer,
                    now,
                    &Actor::System("download-window"),
                    AuditAction::PrivateKeyErased,
                    id.to_string(),
                )),
            ),
            None => {
                return Err(Error::Internal(format!(
                    "key {id} is pending but has no sealed private key"
                )));
            }
        };
        let locked = lock_feed(&mut tx).await?;
        record_change(&mut tx, &locked, id, now).await?;
        append_audit(&mut tx, &locked, erase_event.as_ref().unwrap_or(audit)).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(outcome)
    }

    async fn revoke_key(
        &self,
        issuer: IssuerId,
        id: KeyId,
        reason: Option<&str>,
        now: UnixTime,
        audit: &NewAuditEvent,
    ) -> Result<Option<ApiKey>> {
        let mut tx = self.begin().await?;
        let Some(key) = lock_key(&mut tx, issuer, id).await? else {
            finish(tx).await?;
            return Ok(None);
        };
        if key.is_revoked() {
            finish(tx).await?;
            return Ok(Some(key));
        }
        sqlx::query("UPDATE api_keys SET revoked_at = $1, revoke_reason = $2 WHERE id = $3")
            .bind(now)
            .bind(reason)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let erased = sqlx::query("DELETE FROM pending_private_keys WHERE key_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if erased > 0 {
            sqlx::query(
                "UPDATE api_keys SET private_key_state = 'ERASED', private_key_at = $1 WHERE id = $2",
            )
            .bind(now)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        // Invitations made with the key end with it.
        sqlx::query("DELETE FROM invitations WHERE created_by = $1")
            .bind(format!("apiKey:{id}"))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let locked = lock_feed(&mut tx).await?;
        record_change(&mut tx, &locked, id, now).await?;
        append_audit(&mut tx, &locked, audit).await?;
        let updated = lock_key(&mut tx, issuer, id).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(updated)
    }

    async fn erase_stale_private_keys(
        &self,
        created_before: UnixTime,
        now: UnixTime,
        actor: &Actor,
    ) -> Result<Vec<ApiKey>> {
        let mut tx = self.begin().await?;
        // Locks every row up front, in ID order (as `record_usage` does), so the feed lock can
        // be taken before the loop without this transaction then waiting on a row. A key taken
        // or revoked meanwhile is re-checked once its lock is free and no longer matches.
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE private_key_state = 'PENDING' AND created_at <= $1 ORDER BY id FOR UPDATE"
        ))
        .bind(created_before)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        if rows.is_empty() {
            finish(tx).await?;
            return Ok(Vec::new());
        }
        let locked = lock_feed(&mut tx).await?;
        let mut erased = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut key = key_from_row(row)?;
            sqlx::query("DELETE FROM pending_private_keys WHERE key_id = $1")
                .bind(key.id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            sqlx::query(
                "UPDATE api_keys SET private_key_state = 'ERASED', private_key_at = $1 WHERE id = $2",
            )
            .bind(now)
            .bind(key.id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            record_change(&mut tx, &locked, key.id, now).await?;
            let event = NewAuditEvent::new(
                key.issuer_id,
                now,
                actor,
                AuditAction::PrivateKeyErased,
                key.id.to_string(),
            );
            append_audit(&mut tx, &locked, &event).await?;
            key.private_key = PrivateKeyState::Erased(now);
            erased.push(key);
        }
        tx.commit().await.map_err(db_err)?;
        Ok(erased)
    }

    async fn record_usage(&self, usage: &[KeyUsage]) -> Result<()> {
        if usage.is_empty() {
            return Ok(());
        }
        // In ID order: two nodes flushing overlapping batches at once then lock rows in the same
        // order and cannot deadlock.
        let mut sorted: Vec<&KeyUsage> = usage.iter().collect();
        sorted.sort_by_key(|u| u.key_id);
        let mut tx = self.begin().await?;
        for u in sorted {
            sqlx::query(
                "UPDATE api_keys SET request_count = request_count + $1, last_used_at = GREATEST(COALESCE(last_used_at, 0), $2) WHERE id = $3",
            )
            .bind(i64::try_from(u.requests).unwrap_or(i64::MAX))
            .bind(u.last_used_at)
            .bind(u.key_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            // The key may be a secret key instead (they share the ID space).
            sqlx::query(
                "UPDATE secret_keys SET request_count = request_count + $1, last_used_at = GREATEST(COALESCE(last_used_at, 0), $2) WHERE id = $3",
            )
            .bind(i64::try_from(u.requests).unwrap_or(i64::MAX))
            .bind(u.last_used_at)
            .bind(u.key_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }
}

#[async_trait]
impl ChangeFeed for PostgresStore {
    async fn load_all_keys(&self, each_batch: &mut (dyn FnMut(Vec<ApiKey>) + Send)) -> Result<i64> {
        // One snapshot for both reads (READ COMMITTED would take one per statement): the list
        // and the position describe the same moment. Feed positions become visible in order
        // (see `FeedLock`), so every change up to the position is in the list.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(db_err)?;
        let seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM key_changes")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        // Rows are turned into keys as they stream in and handed over in batches: memory
        // holds one batch, not the whole table twice.
        let select = format!("SELECT {KEY_COLUMNS} FROM api_keys");
        {
            let mut rows = sqlx::query(&select).fetch(&mut *tx);
            let mut batch = Vec::with_capacity(LOAD_BATCH);
            while let Some(row) = rows.try_next().await.map_err(db_err)? {
                batch.push(key_from_row(&row)?);
                if batch.len() == LOAD_BATCH {
                    each_batch(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(LOAD_BATCH),
                    ));
                }
            }
            if !batch.is_empty() {
                each_batch(batch);
            }
        }
        tx.commit().await.map_err(db_err)?;
        Ok(seq)
    }

    async fn changes_since(&self, seq: i64, limit: u32) -> Result<Vec<(i64, KeyId)>> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT seq, key_id FROM key_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.into_iter()
            .map(|(s, id)| {
                KeyId::parse(&id)
                    .map(|k| (s, k))
                    .ok_or_else(|| Error::Internal("corrupt key ID in the change feed".into()))
            })
            .collect()
    }

    async fn load_all_secret_keys(&self) -> Result<Vec<SecretKey>> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        secrets::select_secret_keys(&mut conn, "1 = 1", &[]).await
    }

    async fn secret_keys_by_id(&self, ids: &[KeyId]) -> Result<Vec<SecretKey>> {
        let mut out = Vec::new();
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        for chunk in ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let binds: Vec<String> = chunk.iter().map(|id| id.as_str().to_owned()).collect();
            out.extend(
                secrets::select_secret_keys(&mut conn, &format!("id IN ({marks})"), &binds).await?,
            );
        }
        Ok(out)
    }

    async fn keys_by_id(&self, ids: &[KeyId]) -> Result<Vec<ApiKey>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One array parameter: no bind-count limit to chunk around.
        let ids: Vec<&str> = ids.iter().map(KeyId::as_str).collect();
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(key_from_row).collect()
    }
}

#[async_trait]
impl AuditStore for PostgresStore {
    async fn list_audit_events(
        &self,
        issuer: IssuerId,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Page<AuditEvent>> {
        let issuer_text = issuer.to_string();
        let total: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE issuer_id = $1")
                .bind(&issuer_text)
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)?;
        let rows = sqlx::query(
            "SELECT seq, issuer_id, at, actor, action, target, source_ip, detail, hash FROM audit_events WHERE issuer_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
        )
        .bind(&issuer_text)
        .bind(before_seq.unwrap_or(i64::MAX))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let mut items: Vec<AuditEvent> = rows.iter().map(audit_from_row).collect::<Result<_>>()?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|e| e.seq.to_string())
        } else {
            None
        };
        Ok(Page {
            items,
            total: u64::try_from(total).unwrap_or(0),
            next,
        })
    }

    async fn audit_chain(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>> {
        let rows = sqlx::query(
            "SELECT seq, issuer_id, at, actor, action, target, source_ip, detail, hash FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(audit_from_row).collect()
    }
}

#[async_trait]
impl DeploymentStore for PostgresStore {
    async fn db_now(&self) -> Result<UnixTime> {
        sqlx::query_scalar("SELECT CAST(floor(extract(epoch FROM clock_timestamp())) AS BIGINT)")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn master_key_check(&self, candidate: &[u8]) -> Result<Vec<u8>> {
        let mut tx = self.begin().await?;
        // A concurrent first insert makes this one wait for its commit, then do nothing; the
        // read that follows (a new statement) sees the winner's value.
        sqlx::query(
            "INSERT INTO deployment (id, master_key_check) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        )
        .bind(candidate)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let stored: Vec<u8> =
            sqlx::query_scalar("SELECT master_key_check FROM deployment WHERE id = 1")
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(stored)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> Result<()> {
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        if one == 1 {
            Ok(())
        } else {
            Err(Error::Unavailable(
                "the database gave a wrong answer".into(),
            ))
        }
    }
}
