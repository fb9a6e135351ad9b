//! [`SecretKeyStore`] and the secret-key half of the change feed, on `SQLite`.

use async_trait::async_trait;
use keygate_core::audit::NewAuditEvent;
use keygate_core::clock::UnixTime;
use keygate_core::error::{Error, Result};
use keygate_core::ids::{IssuerId, KeyId};
use keygate_core::secret_key::{SecretKey, SecretVersion};
use keygate_core::store::SecretKeyStore;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, Transaction};

use super::rows::db_err;
use super::{SqliteStore, append_audit, record_change};
use crate::mapping::{
    SECRET_KEY_COLUMNS, attach_versions, secret_key_from_row, secret_version_from_row,
};

const VERSION_COLUMNS: &str = "key_id, hash, hint, created_at, expires_at";

/// Keys selected by `WHERE {condition}` (binding `binds` in order), with their versions.
pub(super) async fn select_secret_keys(
    conn: &mut SqliteConnection,
    condition: &str,
    binds: &[String],
) -> Result<Vec<SecretKey>> {
    let mut q = QueryBuilder::<Sqlite>::new(format!(
        "SELECT {SECRET_KEY_COLUMNS} FROM secret_keys WHERE "
    ));
    push_condition(&mut q, condition, binds);
    q.push(" ORDER BY created_at DESC, id DESC");
    let rows = q.build().fetch_all(&mut *conn).await.map_err(db_err)?;
    let mut keys: Vec<SecretKey> = rows
        .iter()
        .map(secret_key_from_row)
        .collect::<Result<_>>()?;
    if keys.is_empty() {
        return Ok(keys);
    }
    let mut versions = Vec::new();
    for chunk in keys.chunks(500) {
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {VERSION_COLUMNS} FROM secret_key_versions WHERE key_id IN ("
        ));
        let mut sep = q.separated(", ");
        for k in chunk {
            sep.push_bind(k.id.as_str().to_owned());
        }
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await.map_err(db_err)? {
            versions.push(secret_version_from_row(&row)?);
        }
    }
    attach_versions(&mut keys, versions);
    Ok(keys)
}

/// Pushes `condition`, replacing each `?` with the next bind.
fn push_condition(q: &mut QueryBuilder<'_, Sqlite>, condition: &str, binds: &[String]) {
    let mut parts = condition.split('?');
    if let Some(first) = parts.next() {
        q.push(first.to_owned());
    }
    for (part, bind) in parts.zip(binds) {
        q.push_bind(bind.clone());
        q.push(part.to_owned());
    }
}

async fn one(
    tx: &mut Transaction<'_, Sqlite>,
    issuer: IssuerId,
    id: KeyId,
) -> Result<Option<SecretKey>> {
    Ok(select_secret_keys(
        tx,
        "id = ? AND issuer_id = ?",
        &[id.as_str().to_owned(), issuer.to_string()],
    )
    .await?
    .pop())
}

async fn insert_version(
    tx: &mut Transaction<'_, Sqlite>,
    id: KeyId,
    v: &SecretVersion,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO secret_key_versions (hash, key_id, hint, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(v.hash.as_slice())
    .bind(id.as_str())
    .bind(&v.hint)
    .bind(v.created_at)
    .bind(v.expires_at)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

#[async_trait]
impl SecretKeyStore for SqliteStore {
    async fn insert_secret_key(&self, key: &SecretKey, audit: &NewAuditEvent) -> Result<()> {
        let mut tx = self.begin().await?;
        let clash: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE id = ?")
            .bind(key.id.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        if clash > 0 {
            return Err(Error::Conflict(
                "an object with this ID already exists".into(),
            ));
        }
        sqlx::query(
            "INSERT INTO secret_keys (id, issuer_id, name, roles, restrictions, created_by, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(key.id.as_str())
        .bind(key.issuer_id.to_string())
        .bind(&key.name)
        .bind(key.roles.joined())
        .bind(key.restrictions.to_json().to_string())
        .bind(&key.created_by)
        .bind(key.created_at)
        .bind(key.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        for v in &key.versions {
            insert_version(&mut tx, key.id, v).await?;
        }
        record_change(&mut tx, key.id, key.created_at).await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn get_secret_key(&self, issuer: IssuerId, id: KeyId) -> Result<Option<SecretKey>> {
        let mut conn = self.reader.acquire().await.map_err(db_err)?;
        Ok(select_secret_keys(
            &mut conn,
            "id = ? AND issuer_id = ?",
            &[id.as_str().to_owned(), issuer.to_string()],
        )
        .await?
        .pop())
    }

    async fn list_secret_keys(&self, issuer: IssuerId) -> Result<Vec<SecretKey>> {
        let mut conn = self.reader.acquire().await.map_err(db_err)?;
        select_secret_keys(&mut conn, "issuer_id = ?", &[issuer.to_string()]).await
    }

    async fn revoke_secret_key(
        &self,
        issuer: IssuerId,
        id: KeyId,
        reason: Option<&str>,
        now: UnixTime,
        audit: &NewAuditEvent,
    ) -> Result<Option<SecretKey>> {
        let mut tx = self.begin().await?;
        let Some(key) = one(&mut tx, issuer, id).await? else {
            return Ok(None);
        };
        if key.is_revoked() {
            return Ok(Some(key));
        }
        sqlx::query("UPDATE secret_keys SET revoked_at = ?, revoke_reason = ? WHERE id = ?")
            .bind(now)
            .bind(reason)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        record_change(&mut tx, id, now).await?;
        append_audit(&mut tx, audit).await?;
        let updated = one(&mut tx, issuer, id).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(updated)
    }

    async fn roll_secret_key(
        &self,
        issuer: IssuerId,
        id: KeyId,
        version: &SecretVersion,
        old_expires_at: UnixTime,
        audit: &NewAuditEvent,
    ) -> Result<Option<SecretKey>> {
        let mut tx = self.begin().await?;
        let Some(key) = one(&mut tx, issuer, id).await? else {
            return Ok(None);
        };
        if key.is_revoked() {
            return Err(Error::Conflict(
                "A revoked secret key cannot be rolled; create a new one.".into(),
            ));
        }
        sqlx::query(
            "UPDATE secret_key_versions SET expires_at = ? WHERE key_id = ? AND (expires_at IS NULL OR expires_at > ?)",
        )
        .bind(old_expires_at)
        .bind(id.as_str())
        .bind(old_expires_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        insert_version(&mut tx, id, version).await?;
        record_change(&mut tx, id, version.created_at).await?;
        append_audit(&mut tx, audit).await?;
        let updated = one(&mut tx, issuer, id).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(updated)
    }

    async fn secret_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<SecretKey>> {
        let id: Option<String> =
            sqlx::query_scalar("SELECT key_id FROM secret_key_versions WHERE hash = ?")
                .bind(hash.as_slice())
                .fetch_optional(&self.reader)
                .await
                .map_err(db_err)?;
        match id {
            Some(id) => {
                let mut conn = self.reader.acquire().await.map_err(db_err)?;
                Ok(select_secret_keys(&mut conn, "id = ?", &[id]).await?.pop())
            }
            None => Ok(None),
        }
    }
}
