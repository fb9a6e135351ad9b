//! Rows to domain types, the same for every backend: the schemas store the same columns with
//! the same meaning (times as Unix seconds, IDs and roles as text, keys as bytes, audit detail as
//! JSON text), so only the SQL dialect and error codes differ per backend (`sqlite::rows`,
//! `postgres::rows`).

use keygate_core::audit::{AuditAction, AuditEvent, NewAuditEvent};
use keygate_core::clock::UnixTime;
use keygate_core::error::Error;
use keygate_core::ids::{InvitationId, KeyId, UserId};
use keygate_core::key::{Algorithm, ApiKey, KeyType, PrivateKeyState};
use keygate_core::role::RoleSet;
use keygate_core::secret::PasswordHashText;
use keygate_core::secret_key::{Restrictions, SecretKey, SecretVersion};
use keygate_core::user::{Invitation, User};
use sqlx::{ColumnIndex, Decode, Row, Type};

pub(crate) fn corrupt(what: &str) -> Error {
    Error::Internal(format!("stored {what} is corrupt"))
}

pub fn private_key_state_columns(state: PrivateKeyState) -> (&'static str, Option<UnixTime>) {
    let at = match state {
        PrivateKeyState::Downloaded(t) | PrivateKeyState::Erased(t) => Some(t),
        PrivateKeyState::Pending | PrivateKeyState::NeverHeld => None,
    };
    (state.as_str(), at)
}

/// A stored key, from a row of `api_keys` (the backend's `KEY_COLUMNS`).
pub fn key_from_row<'r, R>(row: &'r R) -> Result<ApiKey, Error>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let get_str = |col: &str| row.try_get::<String, _>(col).map_err(|_| corrupt(col));
    let state_at: Option<i64> = row
        .try_get("private_key_at")
        .map_err(|_| corrupt("private_key_at"))?;
    let private_key = match (get_str("private_key_state")?.as_str(), state_at) {
        ("PENDING", _) => PrivateKeyState::Pending,
        ("DOWNLOADED", Some(t)) => PrivateKeyState::Downloaded(t),
        ("ERASED", Some(t)) => PrivateKeyState::Erased(t),
        ("NEVER_HELD", _) => PrivateKeyState::NeverHeld,
        _ => return Err(corrupt("private_key_state")),
    };
    Ok(ApiKey {
        id: KeyId::parse(&get_str("id")?).ok_or_else(|| corrupt("key ID"))?,
        issuer_id: get_str("issuer_id")?
            .parse()
            .map_err(|_| corrupt("issuer ID"))?,
        name: get_str("name")?,
        roles: RoleSet::from_stored(&get_str("roles")?)?,
        key_type: KeyType::parse(&get_str("key_type")?).ok_or_else(|| corrupt("key type"))?,
        algorithm: Algorithm::parse(&get_str("algorithm")?).ok_or_else(|| corrupt("algorithm"))?,
        public_key: row
            .try_get("public_key")
            .map_err(|_| corrupt("public key"))?,
        private_key,
        created_by: get_str("created_by")?,
        created_at: row
            .try_get("created_at")
            .map_err(|_| corrupt("created_at"))?,
        last_used_at: row
            .try_get("last_used_at")
            .map_err(|_| corrupt("last_used_at"))?,
        request_count: row
            .try_get::<i64, _>("request_count")
            .ok()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| corrupt("request_count"))?,
        revoked_at: row
            .try_get("revoked_at")
            .map_err(|_| corrupt("revoked_at"))?,
        revoke_reason: row
            .try_get("revoke_reason")
            .map_err(|_| corrupt("revoke_reason"))?,
        expires_at: row
            .try_get("expires_at")
            .map_err(|_| corrupt("expires_at"))?,
        user_id: match row
            .try_get::<Option<String>, _>("user_id")
            .map_err(|_| corrupt("user_id"))?
        {
            Some(u) => Some(UserId::parse(&u).ok_or_else(|| corrupt("user ID"))?),
            None => None,
        },
    })
}

/// A stored audit event, from a row of `audit_events`.
pub fn audit_from_row<'r, R>(row: &'r R) -> Result<AuditEvent, Error>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let seq: i64 = row.try_get("seq").map_err(|_| corrupt("audit seq"))?;
    // A column that no longer reads (tampered with, say) names its event, so `audit verify`
    // can say which link broke.
    let corrupt = |what: &str| corrupt(&format!("{what} of audit event #{seq}"));
    let get_str = |col: &str| row.try_get::<String, _>(col).map_err(|_| corrupt(col));
    let action = AuditAction::parse(&get_str("action")?).ok_or_else(|| corrupt("action"))?;
    let source_ip: Option<String> = row.try_get("source_ip").map_err(|_| corrupt("source_ip"))?;
    Ok(AuditEvent {
        seq,
        event: NewAuditEvent {
            issuer_id: get_str("issuer_id")?
                .parse()
                .map_err(|_| corrupt("issuer ID"))?,
            at: row.try_get("at").map_err(|_| corrupt("at"))?,
            actor: get_str("actor")?,
            action,
            target: get_str("target")?,
            source_ip: source_ip.and_then(|s| s.parse().ok()),
            detail: serde_json::from_str(&get_str("detail")?).map_err(|_| corrupt("detail"))?,
        },
        hash: row.try_get("hash").map_err(|_| corrupt("hash"))?,
    })
}

/// The columns [`user_from_row`] reads.
pub const USER_COLUMNS: &str =
    "id, issuer_id, email, first_name, last_name, roles, password_hash, created_at";

/// A stored user, from a row of `users` ([`USER_COLUMNS`]).
pub fn user_from_row<'r, R>(row: &'r R) -> Result<User, Error>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let get_str = |col: &str| row.try_get::<String, _>(col).map_err(|_| corrupt(col));
    Ok(User {
        id: UserId::parse(&get_str("id")?).ok_or_else(|| corrupt("user ID"))?,
        issuer_id: get_str("issuer_id")?
            .parse()
            .map_err(|_| corrupt("issuer ID"))?,
        email: get_str("email")?,
        first_name: get_str("first_name")?,
        last_name: get_str("last_name")?,
        roles: RoleSet::from_stored(&get_str("roles")?)?,
        password_hash: PasswordHashText::from_stored(get_str("password_hash")?),
        created_at: row
            .try_get("created_at")
            .map_err(|_| corrupt("created_at"))?,
    })
}

/// The columns [`invitation_from_row`] reads.
pub const INVITATION_COLUMNS: &str =
    "id, issuer_id, email, first_name, last_name, roles, created_by, created_at, expires_at";

/// A stored invitation, from a row of `invitations` ([`INVITATION_COLUMNS`]).
pub fn invitation_from_row<'r, R>(row: &'r R) -> Result<Invitation, Error>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let get_str = |col: &str| row.try_get::<String, _>(col).map_err(|_| corrupt(col));
    let get_i64 = |col: &str| row.try_get::<i64, _>(col).map_err(|_| corrupt(col));
    Ok(Invitation {
        id: InvitationId::parse(&get_str("id")?).ok_or_else(|| corrupt("invitation ID"))?,
        issuer_id: get_str("issuer_id")?
            .parse()
            .map_err(|_| corrupt("issuer ID"))?,
        email: get_str("email")?,
        first_name: get_str("first_name")?,
        last_name: get_str("last_name")?,
        roles: RoleSet::from_stored(&get_str("roles")?)?,
        created_by: get_str("created_by")?,
        created_at: get_i64("created_at")?,
        expires_at: get_i64("expires_at")?,
    })
}

/// The lookup form of an email: unique per issuer, case-insensitive.
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Refusal of a second active individual key for one user.
pub fn individual_key_held() -> Error {
    Error::Conflict(
        "You already have an active individual key; revoke it before generating a new one.".into(),
    )
}

/// The columns [`secret_key_from_row`] reads.
pub const SECRET_KEY_COLUMNS: &str = "id, issuer_id, name, roles, restrictions, created_by, created_at, expires_at, revoked_at, revoke_reason, last_used_at, request_count";

/// A stored secret key without its versions, from a row of `secret_keys`.
pub fn secret_key_from_row<'r, R>(row: &'r R) -> Result<SecretKey, Error>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let get_str = |col: &str| row.try_get::<String, _>(col).map_err(|_| corrupt(col));
    let get_opt = |col: &str| row.try_get::<Option<i64>, _>(col).map_err(|_| corrupt(col));
    let restrictions: serde_json::Value =
        serde_json::from_str(&get_str("restrictions")?).map_err(|_| corrupt("restrictions"))?;
    Ok(SecretKey {
        id: KeyId::parse(&get_str("id")?).ok_or_else(|| corrupt("secret key ID"))?,
        issuer_id: get_str("issuer_id")?
            .parse()
            .map_err(|_| corrupt("issuer ID"))?,
        name: get_str("name")?,
        roles: RoleSet::from_stored(&get_str("roles")?)?,
        restrictions: Restrictions::from_json(&restrictions)
            .map_err(|_| corrupt("restrictions"))?,
        created_by: get_str("created_by")?,
        created_at: row
            .try_get("created_at")
            .map_err(|_| corrupt("created_at"))?,
        expires_at: get_opt("expires_at")?,
        revoked_at: get_opt("revoked_at")?,
        revoke_reason: row
            .try_get("revoke_reason")
            .map_err(|_| corrupt("revoke_reason"))?,
        last_used_at: get_opt("last_used_at")?,
        request_count: row
            .try_get::<i64, _>("request_count")
            .ok()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| corrupt("request_count"))?,
        versions: Vec::new(),
    })
}

/// One row of `secret_key_versions` (`key_id, hash, hint, created_at, expires_at`).
pub fn secret_version_from_row<'r, R>(row: &'r R) -> Result<(KeyId, SecretVersion), Error>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("key_id").map_err(|_| corrupt("key_id"))?;
    let hash: Vec<u8> = row.try_get("hash").map_err(|_| corrupt("hash"))?;
    Ok((
        KeyId::parse(&id).ok_or_else(|| corrupt("secret key ID"))?,
        SecretVersion {
            hash: hash.try_into().map_err(|_| corrupt("secret hash"))?,
            hint: row.try_get("hint").map_err(|_| corrupt("hint"))?,
            created_at: row
                .try_get("created_at")
                .map_err(|_| corrupt("created_at"))?,
            expires_at: row
                .try_get("expires_at")
                .map_err(|_| corrupt("expires_at"))?,
        },
    ))
}

/// Attaches versions (newest first) to their keys.
pub fn attach_versions(keys: &mut [SecretKey], versions: Vec<(KeyId, SecretVersion)>) {
    let index: std::collections::HashMap<KeyId, usize> =
        keys.iter().enumerate().map(|(i, k)| (k.id, i)).collect();
    for (id, v) in versions {
        if let Some(k) = index.get(&id).and_then(|&i| keys.get_mut(i)) {
            k.versions.push(v);
        }
    }
    for k in keys {
        k.versions
            .sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.hash.cmp(&a.hash)));
    }
}

/// An individual key may be inserted only while its owner exists with the roles it was given.
pub fn owner_still_matches(stored_roles: Option<&str>, key_roles: &RoleSet) -> Result<(), Error> {
    match stored_roles {
        None => Err(Error::NotFound("The key's user no longer exists.".into())),
        Some(r) if RoleSet::from_stored(r).ok().as_ref() == Some(key_roles) => Ok(()),
        Some(_) => Err(Error::Conflict(
            "The user's roles changed while the key was being created; try again.".into(),
        )),
    }
}
