//! [`UserStore`] on `SQLite`.

use async_trait::async_trait;
use keygate_core::audit::NewAuditEvent;
use keygate_core::clock::UnixTime;
use keygate_core::error::{Error, Result};
use keygate_core::ids::{InvitationId, IssuerId, UserId};
use keygate_core::key::ApiKey;
use keygate_core::role::{Role, RoleSet};
use keygate_core::secret::{PasswordHashText, SecretHash};
use keygate_core::store::UserStore;
use keygate_core::user::{Invitation, Session, User};
use sqlx::{Sqlite, Transaction};

use super::rows::db_err;
use super::{KEY_COLUMNS, SqliteStore, append_audit, record_change};
use crate::mapping::{
    INVITATION_COLUMNS, USER_COLUMNS, email_key, invitation_from_row, key_from_row, user_from_row,
};

/// Sessions are marked used at most this often.
const TOUCH_EVERY: i64 = 60;

async fn insert_user(tx: &mut Transaction<'_, Sqlite>, user: &User) -> Result<()> {
    let taken: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE issuer_id = ? AND email_key = ?")
            .bind(user.issuer_id.to_string())
            .bind(email_key(&user.email))
            .fetch_one(&mut **tx)
            .await
            .map_err(db_err)?;
    if taken > 0 {
        return Err(email_taken(&user.email));
    }
    sqlx::query(
        "INSERT INTO users (id, issuer_id, email, email_key, first_name, last_name, roles, account_holder, password_hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(user.id.to_string())
    .bind(user.issuer_id.to_string())
    .bind(&user.email)
    .bind(email_key(&user.email))
    .bind(&user.first_name)
    .bind(&user.last_name)
    .bind(user.roles.joined())
    .bind(i64::from(user.is_account_holder()))
    .bind(user.password_hash.as_str())
    .bind(user.created_at)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

fn email_taken(email: &str) -> Error {
    Error::Conflict(format!("{email} is already a user of this issuer."))
}

async fn fetch_user(
    tx: &mut Transaction<'_, Sqlite>,
    issuer: IssuerId,
    id: UserId,
) -> Result<Option<User>> {
    sqlx::query(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = ? AND issuer_id = ?"
    ))
    .bind(id.to_string())
    .bind(issuer.to_string())
    .fetch_optional(&mut **tx)
    .await
    .map_err(db_err)?
    .as_ref()
    .map(user_from_row)
    .transpose()
}

fn account_holder_is_fixed() -> Error {
    Error::Conflict("The Account Holder cannot be removed and their role cannot be changed.".into())
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn set_setup_link(
        &self,
        issuer: IssuerId,
        link: &SecretHash,
        now: UnixTime,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE issuer_id = ?")
            .bind(issuer.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        if users > 0 {
            return Ok(false);
        }
        sqlx::query("INSERT OR REPLACE INTO setup_links (issuer_id, link_hash, created_at) VALUES (?, ?, ?)")
            .bind(issuer.to_string())
            .bind(link.as_slice())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn setup_link_issuer(&self, link: &SecretHash) -> Result<Option<IssuerId>> {
        let id: Option<String> =
            sqlx::query_scalar("SELECT issuer_id FROM setup_links WHERE link_hash = ?")
                .bind(link.as_slice())
                .fetch_optional(&self.reader)
                .await
                .map_err(db_err)?;
        id.map(|i| i.parse()).transpose()
    }

    async fn create_account_holder(
        &self,
        link: &SecretHash,
        user: &User,
        audit: &NewAuditEvent,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let spent = sqlx::query("DELETE FROM setup_links WHERE link_hash = ? AND issuer_id = ?")
            .bind(link.as_slice())
            .bind(user.issuer_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if spent == 0 {
            return Err(Error::NotFound(
                "This setup link is not valid any more.".into(),
            ));
        }
        let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE issuer_id = ?")
            .bind(user.issuer_id.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        if users > 0 {
            return Err(Error::Conflict(
                "This issuer already has its Account Holder.".into(),
            ));
        }
        insert_user(&mut tx, user).await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn insert_invitation(
        &self,
        inv: &Invitation,
        link: &SecretHash,
        audit: &NewAuditEvent,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let key = email_key(&inv.email);
        let issuer = inv.issuer_id.to_string();
        let users: i64 =
            sqlx::query_scalar("SELECT count(*) FROM users WHERE issuer_id = ? AND email_key = ?")
                .bind(&issuer)
                .bind(&key)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?;
        if users > 0 {
            return Err(email_taken(&inv.email));
        }
        // An expired invitation for the same address gives way to the new one.
        sqlx::query(
            "DELETE FROM invitations WHERE issuer_id = ? AND email_key = ? AND expires_at <= ?",
        )
        .bind(&issuer)
        .bind(&key)
        .bind(inv.created_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO invitations (id, issuer_id, email, email_key, first_name, last_name, roles, created_by, created_at, expires_at, link_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(inv.id.to_string())
        .bind(&issuer)
        .bind(&inv.email)
        .bind(&key)
        .bind(&inv.first_name)
        .bind(&inv.last_name)
        .bind(inv.roles.joined())
        .bind(&inv.created_by)
        .bind(inv.created_at)
        .bind(inv.expires_at)
        .bind(link.as_slice())
        .execute(&mut *tx)
        .await
        .map_err(|e| match db_err(e) {
            Error::Conflict(_) => Error::Conflict(format!(
                "{} already has a pending invitation; cancel it first.",
                inv.email
            )),
            other => other,
        })?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn invitation_by_link(
        &self,
        link: &SecretHash,
        now: UnixTime,
    ) -> Result<Option<Invitation>> {
        sqlx::query(&format!(
            "SELECT {INVITATION_COLUMNS} FROM invitations WHERE link_hash = ? AND expires_at > ?"
        ))
        .bind(link.as_slice())
        .bind(now)
        .fetch_optional(&self.reader)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(invitation_from_row)
        .transpose()
    }

    async fn list_invitations(&self, issuer: IssuerId, now: UnixTime) -> Result<Vec<Invitation>> {
        sqlx::query(&format!(
            "SELECT {INVITATION_COLUMNS} FROM invitations WHERE issuer_id = ? AND expires_at > ? ORDER BY created_at DESC, id"
        ))
        .bind(issuer.to_string())
        .bind(now)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?
        .iter()
        .map(invitation_from_row)
        .collect()
    }

    async fn delete_invitation(
        &self,
        issuer: IssuerId,
        id: InvitationId,
        audit: &NewAuditEvent,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM invitations WHERE id = ? AND issuer_id = ?")
            .bind(id.to_string())
            .bind(issuer.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        append_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn accept_invitation(
        &self,
        link: &SecretHash,
        now: UnixTime,
        user: &User,
        audit: &NewAuditEvent,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let spent = sqlx::query(
            "DELETE FROM invitations WHERE link_hash = ? AND expires_at > ? AND issuer_id = ?",
        )
        .bind(link.as_slice())
        .bind(now)
        .bind(user.issuer_id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected();
        if spent == 0 {
            return Err(Error::NotFound(
                "This invitation link is not valid any more.".into(),
            ));
        }
        insert_user(&mut tx, user).await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn get_user(&self, issuer: IssuerId, id: UserId) -> Result<Option<User>> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id = ? AND issuer_id = ?"
        ))
        .bind(id.to_string())
        .bind(issuer.to_string())
        .fetch_optional(&self.reader)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn users_by_email(&self, email: &str) -> Result<Vec<User>> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email_key = ? ORDER BY created_at, id LIMIT 10"
        ))
        .bind(email_key(email))
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?
        .iter()
        .map(user_from_row)
        .collect()
    }

    async fn list_users(&self, issuer: IssuerId) -> Result<Vec<User>> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE issuer_id = ? ORDER BY last_name, first_name, id"
        ))
        .bind(issuer.to_string())
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?
        .iter()
        .map(user_from_row)
        .collect()
    }

    async fn set_user_roles(
        &self,
        issuer: IssuerId,
        id: UserId,
        roles: &RoleSet,
        now: UnixTime,
        audit: &NewAuditEvent,
    ) -> Result<Option<(User, Vec<ApiKey>)>> {
        let mut tx = self.begin().await?;
        let Some(mut user) = fetch_user(&mut tx, issuer, id).await? else {
            return Ok(None);
        };
        if user.is_account_holder() || roles.contains(Role::ACCOUNT_HOLDER) {
            return Err(account_holder_is_fixed());
        }
        sqlx::query("UPDATE users SET roles = ? WHERE id = ?")
            .bind(roles.joined())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if !roles.is_admin() {
            // Invitations are an admin's act: they end when the admin role does.
            end_invitations_of_person(&mut tx, id).await?;
        }
        let rows = sqlx::query(&format!(
            "UPDATE api_keys SET roles = ? WHERE user_id = ? AND revoked_at IS NULL RETURNING {KEY_COLUMNS}"
        ))
        .bind(roles.joined())
        .bind(id.to_string())
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let keys: Vec<ApiKey> = rows.iter().map(key_from_row).collect::<Result<_>>()?;
        for k in &keys {
            record_change(&mut tx, k.id, now).await?;
        }
        append_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)?;
        user.roles = roles.clone();
        Ok(Some((user, keys)))
    }

    async fn remove_user(
        &self,
        issuer: IssuerId,
        id: UserId,
        now: UnixTime,
        audit: &NewAuditEvent,
    ) -> Result<Option<Vec<ApiKey>>> {
        let mut tx = self.begin().await?;
        let Some(user) = fetch_user(&mut tx, issuer, id).await? else {
            return Ok(None);
        };
        if user.is_account_holder() {
            return Err(account_holder_is_fixed());
        }
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM api_keys WHERE user_id = ? AND revoked_at IS NULL")
                .bind(id.to_string())
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
        let mut revoked = Vec::with_capacity(ids.len());
        for key_id in ids {
            sqlx::query("DELETE FROM pending_private_keys WHERE key_id = ?")
                .bind(&key_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            let row = sqlx::query(&format!(
                "UPDATE api_keys SET revoked_at = ?, revoke_reason = 'user removed', private_key_state = CASE private_key_state WHEN 'PENDING' THEN 'ERASED' ELSE private_key_state END, private_key_at = CASE private_key_state WHEN 'PENDING' THEN ? ELSE private_key_at END WHERE id = ? RETURNING {KEY_COLUMNS}"
            ))
            .bind(now)
            .bind(now)
            .bind(&key_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
            let key = key_from_row(&row)?;
            record_change(&mut tx, key.id, now).await?;
            revoked.push(key);
        }
        // Their pending invitations go with them, made in person or with any of their keys: a
        // removed admin cannot come back through one.
        end_invitations_of_person(&mut tx, id).await?;
        sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)?;
        if !revoked.is_empty() {
            self.truncate_wal_soon();
        }
        Ok(Some(revoked))
    }

    async fn insert_session(
        &self,
        session: &SecretHash,
        user: &User,
        now: UnixTime,
        audit: &NewAuditEvent,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, created_at, last_seen_at) VALUES (?, ?, ?, ?)",
        )
        .bind(session.as_slice())
        .bind(user.id.to_string())
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn touch_session(
        &self,
        session: &SecretHash,
        idle_since: UnixTime,
        now: UnixTime,
    ) -> Result<Option<Session>> {
        let cols: String = USER_COLUMNS
            .split(", ")
            .map(|c| format!("u.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let row = sqlx::query(&format!(
            "SELECT {cols}, s.created_at AS session_created_at, s.last_seen_at FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = ? AND s.last_seen_at > ?"
        ))
        .bind(session.as_slice())
        .bind(idle_since)
        .fetch_optional(&self.reader)
        .await
        .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let user = user_from_row(&row)?;
        let created_at: i64 = sqlx::Row::try_get(&row, "session_created_at").map_err(db_err)?;
        let last_seen_at: i64 = sqlx::Row::try_get(&row, "last_seen_at").map_err(db_err)?;
        if now - last_seen_at >= TOUCH_EVERY {
            let mut tx = self.begin().await?;
            sqlx::query("UPDATE sessions SET last_seen_at = ? WHERE id_hash = ?")
                .bind(now)
                .bind(session.as_slice())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
        }
        Ok(Some(Session {
            user,
            created_at,
            last_seen_at: now.max(last_seen_at),
        }))
    }

    async fn delete_session(&self, session: &SecretHash, audit: &NewAuditEvent) -> Result<()> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM sessions WHERE id_hash = ?")
            .bind(session.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if n > 0 {
            append_audit(&mut tx, audit).await?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn set_password(
        &self,
        issuer: IssuerId,
        id: UserId,
        hash: &PasswordHashText,
        keep: Option<&SecretHash>,
        audit: &NewAuditEvent,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("UPDATE users SET password_hash = ? WHERE id = ? AND issuer_id = ?")
            .bind(hash.as_str())
            .bind(id.to_string())
            .bind(issuer.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        end_other_sessions(&mut tx, id, keep).await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn end_sessions(
        &self,
        issuer: IssuerId,
        id: UserId,
        keep: Option<&SecretHash>,
        audit: &NewAuditEvent,
    ) -> Result<u64> {
        let mut tx = self.begin().await?;
        if fetch_user(&mut tx, issuer, id).await?.is_none() {
            return Ok(0);
        }
        let n = end_other_sessions(&mut tx, id, keep).await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(n)
    }

    async fn insert_password_reset(
        &self,
        issuer: IssuerId,
        id: UserId,
        link: &SecretHash,
        expires_at: UnixTime,
        audit: &NewAuditEvent,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        if fetch_user(&mut tx, issuer, id).await?.is_none() {
            return Ok(false);
        }
        sqlx::query("DELETE FROM password_resets WHERE user_id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO password_resets (link_hash, user_id, expires_at) VALUES (?, ?, ?)",
        )
        .bind(link.as_slice())
        .bind(id.to_string())
        .bind(expires_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn password_reset_user(&self, link: &SecretHash, now: UnixTime) -> Result<Option<User>> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id = (SELECT user_id FROM password_resets WHERE link_hash = ? AND expires_at > ?)"
        ))
        .bind(link.as_slice())
        .bind(now)
        .fetch_optional(&self.reader)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn reset_password(
        &self,
        link: &SecretHash,
        user: UserId,
        now: UnixTime,
        hash: &PasswordHashText,
        audit: &NewAuditEvent,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let spent = sqlx::query(
            "DELETE FROM password_resets WHERE link_hash = ? AND user_id = ? AND expires_at > ?",
        )
        .bind(link.as_slice())
        .bind(user.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected();
        if spent == 0 {
            return Err(Error::NotFound(
                "This password reset link is spent, expired or unknown.".into(),
            ));
        }
        sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
            .bind(hash.as_str())
            .bind(user.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        end_other_sessions(&mut tx, user, None).await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn sweep_sessions(&self, idle_since: UnixTime, now: UnixTime) -> Result<u64> {
        let mut tx = self.begin().await?;
        let sessions = sqlx::query("DELETE FROM sessions WHERE last_seen_at <= ?")
            .bind(idle_since)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        let invitations = sqlx::query("DELETE FROM invitations WHERE expires_at <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        let resets = sqlx::query("DELETE FROM password_resets WHERE expires_at <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        tx.commit().await.map_err(db_err)?;
        Ok(sessions + invitations + resets)
    }

    async fn append_audit_event(&self, audit: &NewAuditEvent) -> Result<()> {
        let mut tx = self.begin().await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)
    }
}

/// Ends the pending invitations a person made, in person (a session) or with any of their
/// individual keys: an admin's act ends with the admin.
async fn end_invitations_of_person(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: UserId,
) -> Result<()> {
    sqlx::query(
        "DELETE FROM invitations WHERE created_by = ? OR created_by IN (SELECT 'apiKey:' || id FROM api_keys WHERE user_id = ?)",
    )
    .bind(format!("user:{id}"))
    .bind(id.to_string())
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Ends every session of a user but `keep`; how many ended.
async fn end_other_sessions(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: UserId,
    keep: Option<&SecretHash>,
) -> Result<u64> {
    let keep: &[u8] = keep.map_or(&[], SecretHash::as_slice);
    Ok(
        sqlx::query("DELETE FROM sessions WHERE user_id = ? AND id_hash <> ?")
            .bind(id.to_string())
            .bind(keep)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?
            .rows_affected(),
    )
}
