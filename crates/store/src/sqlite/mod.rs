//! The `SQLite` store: one file, WAL, `secure_delete` on, `synchronous=FULL`.
//!
//! Writes go through a single-connection pool and `BEGIN IMMEDIATE`, so they serialize inside the
//! process without lock-upgrade failures; other processes on the same file (such as
//! `keygate admin bootstrap`) wait on the busy timeout. Reads use a separate pool.

mod rows;
mod secrets;
mod users;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool, Transaction};

use rows::{audit_from_row, db_err, key_from_row};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../../migrations/sqlite/0002_usage.sql")),
    (3, include_str!("../../migrations/sqlite/0003_users.sql")),
    (
        4,
        include_str!("../../migrations/sqlite/0004_secret_keys.sql"),
    ),
    (
        5,
        include_str!("../../migrations/sqlite/0005_password_resets.sql"),
    ),
];

const KEY_COLUMNS: &str = "id, issuer_id, name, roles, key_type, algorithm, public_key, private_key_state, private_key_at, created_by, created_at, last_used_at, request_count, revoked_at, revoke_reason, expires_at, user_id";

/// A keygate store in one `SQLite` file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    path: PathBuf,
    /// Set when a WAL truncation after erasing key material could not complete (a reader was
    /// in the way); the periodic sweep retries it.
    wal_dirty: Arc<AtomicBool>,
    checkpointing: Arc<tokio::sync::Mutex<()>>,
}

impl SqliteStore {
    /// Opens the file, creating it (and its folder, mode 0700) if needed, and migrates it.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        // Owner-only on every start, whatever the folder or the umask: the file holds password
        // hashes and sealed keys. SQLite gives `-wal` and `-shm` the database file's mode.
        restrict_to_owner(path)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            .pragma("secure_delete", "ON");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(db_err)?;
        let store = Self {
            reader: SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy_with(options),
            writer,
            path: path.to_owned(),
            wal_dirty: Arc::new(AtomicBool::new(false)),
            checkpointing: Arc::new(tokio::sync::Mutex::new(())),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL) STRICT")
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
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, unixepoch())",
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

    /// Schedules moving the WAL into the database file and truncating it, so bytes just deleted
    /// (with `secure_delete`) do not linger in old WAL frames. It runs in the background on a
    /// reader connection: a checkpoint waits for readers to move on (up to the busy timeout),
    /// and neither the request that erased the bytes nor the single writer connection should
    /// wait with it. Requests coalesce; one that cannot finish leaves the flag for the sweep.
    fn truncate_wal_soon(&self) {
        self.wal_dirty.store(true, Ordering::SeqCst);
        let this = self.clone();
        tokio::spawn(async move {
            let _one_at_a_time = this.checkpointing.lock().await;
            if !this.wal_dirty.swap(false, Ordering::SeqCst) {
                return;
            }
            // Readers finish in moments; a few quick retries keep the sealed copy's time in the
            // WAL short. If readers stay busy, the sweep tries again.
            let mut pause = std::time::Duration::from_millis(25);
            for _ in 0..6 {
                if this.truncate_wal().await {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            this.wal_dirty.store(true, Ordering::SeqCst);
        });
    }

    /// One `wal_checkpoint(TRUNCATE)`. A reader still using old frames makes `SQLite` report the
    /// checkpoint busy in its result row (not as an error).
    async fn truncate_wal(&self) -> bool {
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.reader)
            .await
        {
            Ok((0, _, _)) => true,
            Ok(_) => {
                tracing::debug!("WAL busy; its truncation will be retried");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed; it will be retried");
                false
            }
        }
    }
}

/// Creates the database file (mode 0600) if it is missing, and sets the file, its `-wal` and
/// its `-shm` to 0600 if they exist with any other mode.
#[cfg(unix)]
fn restrict_to_owner(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let fail = |p: &Path, e: std::io::Error| {
        Error::Unavailable(format!(
            "cannot make {} readable by its owner only: {e}",
            p.display()
        ))
    };
    if !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| fail(path, e))?;
    }
    let mut files = vec![path.to_owned()];
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        files.push(PathBuf::from(name));
    }
    for file in files {
        match std::fs::metadata(&file) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| fail(&file, e))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(&file, e)),
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict_to_owner(_path: &Path) -> Result<()> {
    Ok(())
}

#[cfg(unix)]
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            Error::Unavailable(format!(
                "cannot create the data folder {}: {e}",
                dir.display()
            ))
        })
}

#[cfg(not(unix))]
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::Unavailable(format!(
            "cannot create the data folder {}: {e}",
            dir.display()
        ))
    })
}

async fn append_audit(tx: &mut Transaction<'_, Sqlite>, event: &NewAuditEvent) -> Result<()> {
    let last: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err)?;
    let (seq, prev) = last.map_or((1, Vec::new()), |(s, h)| (s + 1, h));
    let hash = event.chain_hash(seq, &prev);
    sqlx::query(
        "INSERT INTO audit_events (seq, issuer_id, at, actor, action, target, source_ip, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

async fn insert_issuer(
    tx: &mut Transaction<'_, Sqlite>,
    issuer: &Issuer,
    audit: &NewAuditEvent,
) -> Result<()> {
    sqlx::query("INSERT INTO issuers (id, name, created_at) VALUES (?, ?, ?)")
        .bind(issuer.id.to_string())
        .bind(&issuer.name)
        .bind(issuer.created_at)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    append_audit(tx, audit).await
}

async fn record_change(tx: &mut Transaction<'_, Sqlite>, key: KeyId, now: UnixTime) -> Result<()> {
    sqlx::query("INSERT INTO key_changes (key_id, changed_at) VALUES (?, ?)")
        .bind(key.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

async fn fetch_key(
    tx: &mut Transaction<'_, Sqlite>,
    issuer: IssuerId,
    id: KeyId,
) -> Result<Option<ApiKey>> {
    sqlx::query(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ? AND issuer_id = ?"
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

/// The SQL condition for "usable for tokens at `now`" (`?` is bound to now).
const ACTIVE_SQL: &str = "(revoked_at IS NULL AND private_key_state != 'ERASED' AND (expires_at IS NULL OR expires_at > ";

#[async_trait]
impl IssuerStore for SqliteStore {
    async fn ensure_issuer(
        &self,
        candidate: &Issuer,
        audit: &NewAuditEvent,
    ) -> Result<(Issuer, bool)> {
        let mut tx = self.begin().await?;
        let first: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT id, name, created_at FROM issuers ORDER BY created_at, id LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some((id, name, created_at)) = first {
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
        insert_issuer(&mut tx, issuer, audit).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn get_issuer(&self, id: IssuerId) -> Result<Option<Issuer>> {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT name, created_at FROM issuers WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&self.reader)
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
                .fetch_all(&self.reader)
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
impl KeyStore for SqliteStore {
    async fn insert_key(
        &self,
        key: &ApiKey,
        sealed: Option<&SealedPrivateKey>,
        max_active_team_keys: u32,
        audit: &NewAuditEvent,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        if let Some(user) = key.user_id {
            // The owner must still exist with the roles the key was given, in this very
            // transaction: a removal or a role change committed meanwhile wins.
            let roles: Option<String> =
                sqlx::query_scalar("SELECT roles FROM users WHERE id = ? AND issuer_id = ?")
                    .bind(user.to_string())
                    .bind(key.issuer_id.to_string())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?;
            crate::mapping::owner_still_matches(roles.as_deref(), &key.roles)?;
            let held: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM api_keys WHERE user_id = ? AND revoked_at IS NULL AND private_key_state != 'ERASED'",
            )
            .bind(user.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
            if held > 0 {
                return Err(crate::mapping::individual_key_held());
            }
        }
        if key.key_type == KeyType::Team {
            let active: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM api_keys WHERE issuer_id = ? AND key_type = 'TEAM' AND {ACTIVE_SQL}?))"
            ))
            .bind(key.issuer_id.to_string())
            .bind(key.created_at)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
            if active >= i64::from(max_active_team_keys) {
                return Err(Error::Conflict(format!(
                    "This issuer already has {active} active team keys, the most allowed ({max_active_team_keys}). Revoke one first."
                )));
            }
        }
        let (state, state_at) = rows::private_key_state_columns(key.private_key);
        sqlx::query(
            "INSERT INTO api_keys (id, issuer_id, name, roles, key_type, algorithm, public_key, private_key_state, private_key_at, created_by, created_at, last_used_at, revoked_at, revoke_reason, expires_at, user_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            sqlx::query("INSERT INTO pending_private_keys (key_id, sealed) VALUES (?, ?)")
                .bind(key.id.as_str())
                .bind(sealed.as_bytes())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        record_change(&mut tx, key.id, key.created_at).await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn get_key(&self, issuer: IssuerId, id: KeyId) -> Result<Option<ApiKey>> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ? AND issuer_id = ?"
        ))
        .bind(id.as_str())
        .bind(issuer.to_string())
        .fetch_optional(&self.reader)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(key_from_row)
        .transpose()
    }

    async fn list_keys(&self, issuer: IssuerId, query: &KeyQuery) -> Result<Page<ApiKey>> {
        fn filters<'a>(
            qb: &mut QueryBuilder<'a, Sqlite>,
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
            .fetch_one(&self.reader)
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
        let rows = select
            .build()
            .fetch_all(&self.reader)
            .await
            .map_err(db_err)?;
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
        let Some(key) = fetch_key(&mut tx, issuer, id).await? else {
            return Ok(TakePrivateKey::NotFound);
        };
        match key.private_key {
            PrivateKeyState::Pending => {}
            PrivateKeyState::Downloaded(_) => {
                return Ok(TakePrivateKey::Unavailable(
                    PrivateKeyUnavailable::AlreadyDownloaded,
                ));
            }
            PrivateKeyState::Erased(_) => {
                return Ok(TakePrivateKey::Unavailable(PrivateKeyUnavailable::Erased));
            }
            PrivateKeyState::NeverHeld => {
                return Ok(TakePrivateKey::Unavailable(
                    PrivateKeyUnavailable::NeverHeld,
                ));
            }
        }
        let sealed: Option<Vec<u8>> = sqlx::query_scalar(
            "DELETE FROM pending_private_keys WHERE key_id = ? RETURNING sealed",
        )
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let stale = key.created_at <= created_after || key.is_revoked();
        let new_state = if stale { "ERASED" } else { "DOWNLOADED" };
        sqlx::query("UPDATE api_keys SET private_key_state = ?, private_key_at = ? WHERE id = ?")
            .bind(new_state)
            .bind(now)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        record_change(&mut tx, id, now).await?;
        let outcome = match sealed {
            Some(bytes) if !stale => {
                // Opened before the commit: if this fails (wrong master key), dropping the
                // transaction rolls the delete back and the key stays downloadable.
                let pem = open(&SealedPrivateKey::from_stored(bytes))?;
                append_audit(&mut tx, audit).await?;
                TakePrivateKey::Taken(pem)
            }
            Some(_) => {
                let erase = NewAuditEvent::new(
                    issuer,
                    now,
                    &Actor::System("download-window"),
                    AuditAction::PrivateKeyErased,
                    id.to_string(),
                );
                append_audit(&mut tx, &erase).await?;
                TakePrivateKey::Unavailable(PrivateKeyUnavailable::Erased)
            }
            None => {
                return Err(Error::Internal(format!(
                    "key {id} is pending but has no sealed private key"
                )));
            }
        };
        tx.commit().await.map_err(db_err)?;
        self.truncate_wal_soon();
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
        let Some(key) = fetch_key(&mut tx, issuer, id).await? else {
            return Ok(None);
        };
        if key.is_revoked() {
            return Ok(Some(key));
        }
        sqlx::query("UPDATE api_keys SET revoked_at = ?, revoke_reason = ? WHERE id = ?")
            .bind(now)
            .bind(reason)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let erased = sqlx::query("DELETE FROM pending_private_keys WHERE key_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if erased > 0 {
            sqlx::query(
                "UPDATE api_keys SET private_key_state = 'ERASED', private_key_at = ? WHERE id = ?",
            )
            .bind(now)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        // Invitations made with the key end with it.
        sqlx::query("DELETE FROM invitations WHERE created_by = ?")
            .bind(format!("apiKey:{id}"))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        record_change(&mut tx, id, now).await?;
        append_audit(&mut tx, audit).await?;
        let updated = fetch_key(&mut tx, issuer, id).await?;
        tx.commit().await.map_err(db_err)?;
        if erased > 0 {
            self.truncate_wal_soon();
        }
        Ok(updated)
    }

    async fn erase_stale_private_keys(
        &self,
        created_before: UnixTime,
        now: UnixTime,
        actor: &Actor,
    ) -> Result<Vec<ApiKey>> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE private_key_state = 'PENDING' AND created_at <= ?"
        ))
        .bind(created_before)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let mut erased = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut key = key_from_row(row)?;
            sqlx::query("DELETE FROM pending_private_keys WHERE key_id = ?")
                .bind(key.id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            sqlx::query(
                "UPDATE api_keys SET private_key_state = 'ERASED', private_key_at = ? WHERE id = ?",
            )
            .bind(now)
            .bind(key.id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            record_change(&mut tx, key.id, now).await?;
            let event = NewAuditEvent::new(
                key.issuer_id,
                now,
                actor,
                AuditAction::PrivateKeyErased,
                key.id.to_string(),
            );
            append_audit(&mut tx, &event).await?;
            key.private_key = PrivateKeyState::Erased(now);
            erased.push(key);
        }
        tx.commit().await.map_err(db_err)?;
        if !erased.is_empty() || self.wal_dirty.load(Ordering::SeqCst) {
            self.truncate_wal_soon();
        }
        Ok(erased)
    }

    async fn record_usage(&self, usage: &[KeyUsage]) -> Result<()> {
        if usage.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for u in usage {
            sqlx::query(
                "UPDATE api_keys SET request_count = request_count + ?, last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
            )
            .bind(i64::try_from(u.requests).unwrap_or(i64::MAX))
            .bind(u.last_used_at)
            .bind(u.key_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            // The key may be a secret key instead (they share the ID space).
            sqlx::query(
                "UPDATE secret_keys SET request_count = request_count + ?, last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
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
impl ChangeFeed for SqliteStore {
    async fn load_all_keys(&self, each_batch: &mut (dyn FnMut(Vec<ApiKey>) + Send)) -> Result<i64> {
        // One read transaction: the list and the position describe the same snapshot.
        let mut tx = self.reader.begin().await.map_err(db_err)?;
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
            "SELECT seq, key_id FROM key_changes WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(seq)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
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
        self.all_secret_keys().await
    }

    async fn secret_keys_by_id(&self, ids: &[KeyId]) -> Result<Vec<SecretKey>> {
        self.secret_keys_with_ids(ids).await
    }

    async fn keys_by_id(&self, ids: &[KeyId]) -> Result<Vec<ApiKey>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut qb = QueryBuilder::<Sqlite>::new(format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE id IN ("
            ));
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id.as_str());
            }
            qb.push(")");
            let rows = qb.build().fetch_all(&self.reader).await.map_err(db_err)?;
            for row in &rows {
                out.push(key_from_row(row)?);
            }
        }
        Ok(out)
    }
}

impl SqliteStore {
    async fn all_secret_keys(&self) -> Result<Vec<SecretKey>> {
        let mut conn = self.reader.acquire().await.map_err(db_err)?;
        secrets::select_secret_keys(&mut conn, "1 = 1", &[]).await
    }

    async fn secret_keys_with_ids(&self, ids: &[KeyId]) -> Result<Vec<SecretKey>> {
        let mut out = Vec::new();
        let mut conn = self.reader.acquire().await.map_err(db_err)?;
        for chunk in ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let binds: Vec<String> = chunk.iter().map(|id| id.as_str().to_owned()).collect();
            out.extend(
                secrets::select_secret_keys(&mut conn, &format!("id IN ({marks})"), &binds).await?,
            );
        }
        Ok(out)
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn list_audit_events(
        &self,
        issuer: IssuerId,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Page<AuditEvent>> {
        let issuer_text = issuer.to_string();
        let total: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE issuer_id = ?")
                .bind(&issuer_text)
                .fetch_one(&self.reader)
                .await
                .map_err(db_err)?;
        let rows = sqlx::query(
            "SELECT seq, issuer_id, at, actor, action, target, source_ip, detail, hash FROM audit_events WHERE issuer_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
        )
        .bind(&issuer_text)
        .bind(before_seq.unwrap_or(i64::MAX))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
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
            "SELECT seq, issuer_id, at, actor, action, target, source_ip, detail, hash FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        rows.iter().map(audit_from_row).collect()
    }
}

#[async_trait]
impl DeploymentStore for SqliteStore {
    async fn db_now(&self) -> Result<UnixTime> {
        sqlx::query_scalar("SELECT CAST(strftime('%s', 'now') AS INTEGER)")
            .fetch_one(&self.reader)
            .await
            .map_err(db_err)
    }

    async fn master_key_check(&self, candidate: &[u8]) -> Result<Vec<u8>> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT OR IGNORE INTO deployment (id, master_key_check) VALUES (1, ?)")
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
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        let one: i64 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&self.reader)
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
