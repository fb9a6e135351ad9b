//! People operations: first-run setup of the Account Holder, invitations, users and their roles,
//! sign-in with throttling, and web sessions. Like [`crate::service::KeyService`], each write is
//! one store call that also records its audit event (and change-feed entries, when a role change
//! or removal touches an individual key).

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use serde_json::json;

use crate::audit::{AuditAction, NewAuditEvent};
use crate::authz::{IssuerAdmin, Principal};
use crate::clock::{Clock, UnixTime};
use crate::error::{Error, Result};
use crate::ids::{Actor, InvitationId, IssuerId, UserId};
use crate::keyset::KeyRing;
use crate::role::{Role, RoleCatalog, RoleSet};
use crate::secret::{BearerSecret, HashingMemory, Password, PasswordHashText};
use crate::store::Store;
use crate::throttle::{SignInThrottle, ThrottleLimits};
use crate::user::{INVITATION_LIFETIME, Invitation, Person, Session, User, grantable_roles};

/// Session settings.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// A session unused this long ends (default 30 minutes).
    pub idle_timeout: i64,
    /// A session ends this long after sign-in however much it is used (default 12 hours).
    pub absolute_lifetime: i64,
    pub throttle: ThrottleLimits,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            idle_timeout: 30 * 60,
            absolute_lifetime: 12 * 3600,
            throttle: ThrottleLimits::default(),
        }
    }
}

/// Password hashing off the async workers, at most a few at once, each in one of a fixed set of
/// reused 19 MiB buffers. The permit and the buffer move into the blocking job, so a client
/// that goes away frees neither while its hash still runs; and since no hash allocates its
/// memory, what the allocator keeps of freed blocks cannot grow either. Password hashing
/// holds at most `HASHING_AT_ONCE` × 19 MiB, whatever clients do.
#[derive(Debug)]
struct HashingPool {
    permits: Arc<tokio::sync::Semaphore>,
    memory: Arc<std::sync::Mutex<Vec<HashingMemory>>>,
    /// Requests waiting for a place. Beyond [`HASHING_QUEUE`] a new one is turned away at once
    /// (429), so waiting sign-ins, which are requests in flight, cannot fill a listener's
    /// connection cap.
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

/// The most requests waiting for a hashing place at once.
const HASHING_QUEUE: usize = 32;

/// Counts a request waiting for a hashing place while it lives.
struct Waiting(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl HashingPool {
    fn new(at_once: usize) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(at_once)),
            memory: Arc::new(std::sync::Mutex::new(Vec::with_capacity(at_once))),
            waiting: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }
    }

    /// Runs `work` with a buffer, off the async workers, once a place is free.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut HashingMemory) -> T + Send + 'static,
    ) -> Result<T> {
        let queued = self
            .waiting
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let waiting = Waiting(Arc::clone(&self.waiting));
        if queued >= HASHING_QUEUE {
            return Err(Error::RateLimited(
                "Too many passwords are being checked at once; try again in a moment.".into(),
            ));
        }
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("password hashing closed".into()))?;
        drop(waiting);
        let pool = Arc::clone(&self.memory);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let lock = |p: &std::sync::Mutex<Vec<HashingMemory>>| {
                p.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop()
            };
            // At most one buffer per permit is ever made.
            let mut memory = lock(&pool).unwrap_or_default();
            let out = work(&mut memory);
            pool.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(memory);
            out
        })
        .await
        .map_err(|e| Error::Internal(format!("password hashing task failed: {e}")))
    }
}

/// How long a password-reset link works.
pub const RESET_LINK_LIFETIME: i64 = 3600;

/// Password hashes computed at once at most (each takes 19 MiB and tens of milliseconds).
const HASHING_AT_ONCE: usize = 4;

/// A new web session: the user and the session ID to put in the cookie.
#[derive(Debug)]
pub struct NewSession {
    pub user: User,
    pub id: BearerSecret,
}

/// How a sign-in attempt ended.
#[derive(Debug)]
pub enum SignIn {
    Accepted(NewSession),
    /// Wrong email or password; which one is not said.
    Refused,
    /// Too many failures for this account or address; retry after this many seconds.
    Throttled {
        retry_after: i64,
    },
}

/// The label of the CSRF token derived from a session ID.
const CSRF_LABEL: &str = "keygate/csrf/v1";

/// The CSRF token that goes with a session ID: derived from it, so it need not be stored, and
/// revealing it in a page reveals nothing about the session ID.
pub fn csrf_token(session: &BearerSecret) -> String {
    session.derive(CSRF_LABEL)
}

/// Checked against when the email matches no user, so a miss costs the same time as a hit.
static DUMMY_HASH: LazyLock<Option<PasswordHashText>> =
    LazyLock::new(|| Password::new("keygate-timing-equaliser".into()).hash().ok());

#[derive(Debug)]
pub struct UserService {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    roles: RoleCatalog,
    ring: Arc<KeyRing>,
    limits: SessionLimits,
    throttle: SignInThrottle,
    hashing: HashingPool,
}

impl UserService {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        roles: RoleCatalog,
        ring: Arc<KeyRing>,
        limits: SessionLimits,
    ) -> Self {
        Self {
            store,
            clock,
            roles,
            ring,
            throttle: SignInThrottle::new(limits.throttle),
            limits,
            hashing: HashingPool::new(HASHING_AT_ONCE),
        }
    }

    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// A fresh one-time setup link for an issuer without users; `None` once it has its Account
    /// Holder. Each call replaces the previous link, so only the last one printed works.
    pub async fn setup_link(&self, issuer: IssuerId) -> Result<Option<BearerSecret>> {
        let link = BearerSecret::generate()?;
        let stored = self
            .store
            .set_setup_link(issuer, &link.hash(), self.clock.now())
            .await?;
        Ok(stored.then_some(link))
    }

    /// Whether a setup link is live (for showing the setup form).
    pub async fn setup_link_is_live(&self, link: &str) -> Result<bool> {
        match BearerSecret::parse(link) {
            Some(l) => Ok(self.store.setup_link_issuer(&l.hash()).await?.is_some()),
            None => Ok(false),
        }
    }

    /// Creates the Account Holder through the setup link, which stops working, and signs them in.
    pub async fn create_account_holder(
        &self,
        link: &str,
        person: Person,
        password: Password,
        ip: Option<IpAddr>,
    ) -> Result<NewSession> {
        let link = BearerSecret::parse(link).ok_or_else(setup_link_gone)?;
        let issuer = self
            .store
            .setup_link_issuer(&link.hash())
            .await?
            .ok_or_else(setup_link_gone)?;
        password.validate_new()?;
        let now = self.clock.now();
        let user = User {
            id: UserId::generate(),
            issuer_id: issuer,
            email: person.email,
            first_name: person.first_name,
            last_name: person.last_name,
            roles: RoleSet::from_stored(Role::ACCOUNT_HOLDER)?,
            password_hash: self.hash_password(password).await?,
            created_at: now,
        };
        let audit = NewAuditEvent::new(
            issuer,
            now,
            &Actor::Anonymous,
            AuditAction::AccountHolderCreated,
            user.id.to_string(),
        )
        .from_ip(ip)
        .with_detail(json!({"email": user.email}));
        self.store
            .create_account_holder(&link.hash(), &user, &audit)
            .await?;
        self.start_session(user, ip).await
    }

    /// Checks an email and password, throttled per account and per address.
    pub async fn sign_in(
        &self,
        email: &str,
        password: Password,
        ip: Option<IpAddr>,
    ) -> Result<SignIn> {
        let email = email.trim();
        let now = self.clock.now();
        if let Err(retry_after) = self.throttle.attempt(email, ip, now) {
            return Ok(SignIn::Throttled { retry_after });
        }
        let candidates = if email.is_empty() || !crate::user::email_fits(email) {
            Vec::new()
        } else {
            self.store.users_by_email(email).await?
        };
        let hashes: Vec<PasswordHashText> =
            candidates.iter().map(|u| u.password_hash.clone()).collect();
        let matched = self
            .hashing
            .run(move |memory| {
                if hashes.is_empty() {
                    // Same work as a real check, so timing does not say whether the email
                    // exists.
                    if let Some(dummy) = DUMMY_HASH.as_ref() {
                        let _ = password.matches_with(dummy, memory);
                    }
                    return None;
                }
                hashes.iter().position(|h| password.matches_with(h, memory))
            })
            .await?;
        let Some(user) = matched.and_then(|i| candidates.get(i)).cloned() else {
            for u in &candidates {
                let audit = NewAuditEvent::new(
                    u.issuer_id,
                    now,
                    &Actor::Anonymous,
                    AuditAction::SignInFailed,
                    u.id.to_string(),
                )
                .from_ip(ip);
                self.store.append_audit_event(&audit).await?;
            }
            if candidates.is_empty() {
                tracing::info!(source_ip = ?ip, "sign-in refused: no such account");
            }
            return Ok(SignIn::Refused);
        };
        self.throttle.succeeded(email, ip, now);
        Ok(SignIn::Accepted(self.start_session(user, ip).await?))
    }

    async fn start_session(&self, user: User, ip: Option<IpAddr>) -> Result<NewSession> {
        let id = BearerSecret::generate()?;
        let now = self.clock.now();
        let audit = NewAuditEvent::new(
            user.issuer_id,
            now,
            &Actor::User(user.id),
            AuditAction::SignedIn,
            user.id.to_string(),
        )
        .from_ip(ip);
        self.store
            .insert_session(&id.hash(), &user, now, &audit)
            .await?;
        Ok(NewSession { user, id })
    }

    /// Hashes a new password off the async workers, a few at a time.
    async fn hash_password(&self, password: Password) -> Result<PasswordHashText> {
        self.hashing
            .run(move |memory| password.hash_with(memory))
            .await?
    }

    /// The live session behind a cookie value, if any: used within the idle timeout, and
    /// younger than the absolute lifetime (an older one is ended now).
    pub async fn session(&self, id: &str) -> Result<Option<Session>> {
        let Some(id) = BearerSecret::parse(id) else {
            return Ok(None);
        };
        let now = self.clock.now();
        let found = self
            .store
            .touch_session(
                &id.hash(),
                now.saturating_sub(self.limits.idle_timeout),
                now,
            )
            .await?;
        match found {
            Some(s) if now.saturating_sub(s.created_at) >= self.limits.absolute_lifetime => {
                let audit = NewAuditEvent::new(
                    s.user.issuer_id,
                    now,
                    &Actor::System("session-lifetime"),
                    AuditAction::SignedOut,
                    s.user.id.to_string(),
                )
                .with_detail(json!({"reason": "lifetime"}));
                self.store.delete_session(&id.hash(), &audit).await?;
                Ok(None)
            }
            other => Ok(other),
        }
    }

    /// The management-API caller a session stands for.
    pub fn principal(session: &Session, ip: Option<IpAddr>) -> Principal {
        Principal {
            issuer_id: session.user.issuer_id,
            actor: Actor::User(session.user.id),
            roles: session.user.roles.clone(),
            user_id: Some(session.user.id),
            source_ip: ip,
        }
    }

    pub async fn sign_out(&self, id: &str, session: &Session, ip: Option<IpAddr>) -> Result<()> {
        let Some(id) = BearerSecret::parse(id) else {
            return Ok(());
        };
        let audit = NewAuditEvent::new(
            session.user.issuer_id,
            self.clock.now(),
            &Actor::User(session.user.id),
            AuditAction::SignedOut,
            session.user.id.to_string(),
        )
        .from_ip(ip);
        self.store.delete_session(&id.hash(), &audit).await
    }

    /// Changes a signed-in person's password: the current one must match (throttled like a
    /// sign-in), the new one must follow the rules; every other session of theirs ends, this
    /// one (`keep`) stays.
    pub async fn change_password(
        &self,
        session: &Session,
        keep: &str,
        current: Password,
        new: Password,
        ip: Option<IpAddr>,
    ) -> Result<()> {
        new.validate_new()?;
        let user = &session.user;
        let now = self.clock.now();
        if let Err(retry_after) = self.throttle.attempt(&user.email, ip, now) {
            return Err(Error::RateLimited(format!(
                "Too many wrong passwords; try again in {retry_after} s."
            )));
        }
        let stored = user.password_hash.clone();
        let matches = self
            .hashing
            .run(move |memory| current.matches_with(&stored, memory))
            .await?;
        if !matches {
            return Err(Error::attribute(
                "currentPassword",
                "The current password is not right.",
            ));
        }
        self.throttle.succeeded(&user.email, ip, now);
        let hash = self.hash_password(new).await?;
        let audit = NewAuditEvent::new(
            user.issuer_id,
            now,
            &Actor::User(user.id),
            AuditAction::PasswordChanged,
            user.id.to_string(),
        )
        .from_ip(ip)
        .with_detail(json!({"otherSessionsEnded": true}));
        let keep = BearerSecret::parse(keep).map(|k| k.hash());
        if self
            .store
            .set_password(user.issuer_id, user.id, &hash, keep.as_ref(), &audit)
            .await?
        {
            Ok(())
        } else {
            Err(Error::NotFound("There is no such user.".into()))
        }
    }

    /// Signs a person out everywhere: every session of theirs ends, this one included.
    pub async fn sign_out_everywhere(&self, session: &Session, ip: Option<IpAddr>) -> Result<u64> {
        let user = &session.user;
        let audit = NewAuditEvent::new(
            user.issuer_id,
            self.clock.now(),
            &Actor::User(user.id),
            AuditAction::SessionsEnded,
            user.id.to_string(),
        )
        .from_ip(ip);
        self.store
            .end_sessions(user.issuer_id, user.id, None, &audit)
            .await
    }

    /// A one-time link to set a new password without the old one, for an operator on the
    /// machine (`keygate admin reset-password`): valid [`RESET_LINK_LIFETIME`], replacing any
    /// earlier one. Every session of the person ends when it is used.
    pub async fn password_reset_link(&self, email: &str) -> Result<(User, BearerSecret)> {
        let users = self.store.users_by_email(email.trim()).await?;
        let user = match users.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(Error::NotFound(format!(
                    "There is no user with the email {email}."
                )));
            }
            _ => {
                return Err(Error::Conflict(format!(
                    "More than one issuer has a user with the email {email}."
                )));
            }
        };
        let link = BearerSecret::generate()?;
        let now = self.clock.now();
        let audit = NewAuditEvent::new(
            user.issuer_id,
            now,
            &Actor::System("reset-password"),
            AuditAction::PasswordResetLinkCreated,
            user.id.to_string(),
        );
        if !self
            .store
            .insert_password_reset(
                user.issuer_id,
                user.id,
                &link.hash(),
                now + RESET_LINK_LIFETIME,
                &audit,
            )
            .await?
        {
            return Err(Error::NotFound("There is no such user.".into()));
        }
        Ok((user, link))
    }

    /// The person a live reset link is for (to greet them on the page).
    pub async fn password_reset_user(&self, link: &str) -> Result<Option<User>> {
        match BearerSecret::parse(link) {
            Some(l) => {
                self.store
                    .password_reset_user(&l.hash(), self.clock.now())
                    .await
            }
            None => Ok(None),
        }
    }

    /// Uses a reset link: sets the new password, ends every session of the person, and starts a
    /// new one.
    pub async fn reset_password(
        &self,
        link: &str,
        new: Password,
        ip: Option<IpAddr>,
    ) -> Result<NewSession> {
        let gone =
            || Error::NotFound("This password reset link is spent, expired or unknown.".into());
        let link = BearerSecret::parse(link).ok_or_else(gone)?;
        new.validate_new()?;
        let now = self.clock.now();
        let user = self
            .store
            .password_reset_user(&link.hash(), now)
            .await?
            .ok_or_else(gone)?;
        let hash = self.hash_password(new).await?;
        let audit = NewAuditEvent::new(
            user.issuer_id,
            now,
            &Actor::Anonymous,
            AuditAction::PasswordReset,
            user.id.to_string(),
        )
        .from_ip(ip);
        self.store
            .reset_password(&link.hash(), user.id, now, &hash, &audit)
            .await?;
        self.throttle.succeeded(&user.email, ip, now);
        let user = User {
            password_hash: hash,
            ..user
        };
        self.start_session(user, ip).await
    }

    /// Deletes idle sessions and spent links. Run periodically.
    /// Decided with the database's clock: a node whose clock runs ahead must not end every
    /// session of the deployment.
    pub async fn sweep(&self) -> Result<u64> {
        let now = self.store.db_now().await?;
        self.store
            .sweep_sessions(now.saturating_sub(self.limits.idle_timeout), now)
            .await
    }

    /// Invites a person; returns the invitation and its one-time accept link.
    pub async fn invite(
        &self,
        admin: &IssuerAdmin<'_>,
        person: Person,
        roles: &[String],
    ) -> Result<(Invitation, BearerSecret)> {
        let roles = grantable_roles(&self.roles, roles)?;
        let now = self.clock.now();
        let invitation = Invitation {
            id: InvitationId::generate(),
            issuer_id: admin.issuer_id(),
            email: person.email,
            first_name: person.first_name,
            last_name: person.last_name,
            roles,
            created_by: admin.principal().actor.to_string(),
            created_at: now,
            expires_at: now.saturating_add(INVITATION_LIFETIME),
        };
        let link = BearerSecret::generate()?;
        let audit = NewAuditEvent::new(
            invitation.issuer_id,
            now,
            &admin.principal().actor,
            AuditAction::UserInvited,
            invitation.id.to_string(),
        )
        .from_ip(admin.principal().source_ip)
        .with_detail(json!({"email": invitation.email, "roles": invitation.roles.joined()}));
        self.store
            .insert_invitation(&invitation, &link.hash(), &audit)
            .await?;
        Ok((invitation, link))
    }

    pub async fn list_invitations(&self, admin: &IssuerAdmin<'_>) -> Result<Vec<Invitation>> {
        self.store
            .list_invitations(admin.issuer_id(), self.clock.now())
            .await
    }

    pub async fn cancel_invitation(&self, admin: &IssuerAdmin<'_>, id: &str) -> Result<()> {
        let id = InvitationId::parse(id)
            .ok_or_else(|| Error::NotFound("There is no invitation with this ID.".into()))?;
        let audit = NewAuditEvent::new(
            admin.issuer_id(),
            self.clock.now(),
            &admin.principal().actor,
            AuditAction::InvitationCancelled,
            id.to_string(),
        )
        .from_ip(admin.principal().source_ip);
        if self
            .store
            .delete_invitation(admin.issuer_id(), id, &audit)
            .await?
        {
            Ok(())
        } else {
            Err(Error::NotFound(format!(
                "There is no invitation {id} in this issuer."
            )))
        }
    }

    /// The invitation behind an accept link, while it is valid.
    pub async fn invitation(&self, link: &str) -> Result<Option<Invitation>> {
        match BearerSecret::parse(link) {
            Some(l) => {
                self.store
                    .invitation_by_link(&l.hash(), self.clock.now())
                    .await
            }
            None => Ok(None),
        }
    }

    /// Accepts an invitation: creates the user with the chosen password and signs them in.
    pub async fn accept_invitation(
        &self,
        link: &str,
        password: Password,
        ip: Option<IpAddr>,
    ) -> Result<NewSession> {
        let gone = || {
            Error::NotFound(
                "This invitation link is not valid: it was used, cancelled, or is more than 3 days old. Ask for a new invitation.".into(),
            )
        };
        let link = BearerSecret::parse(link).ok_or_else(gone)?;
        let now = self.clock.now();
        let invitation = self
            .store
            .invitation_by_link(&link.hash(), now)
            .await?
            .ok_or_else(gone)?;
        password.validate_new()?;
        let user = User {
            id: UserId::generate(),
            issuer_id: invitation.issuer_id,
            email: invitation.email.clone(),
            first_name: invitation.first_name.clone(),
            last_name: invitation.last_name.clone(),
            roles: invitation.roles.clone(),
            password_hash: self.hash_password(password).await?,
            created_at: now,
        };
        let audit = NewAuditEvent::new(
            user.issuer_id,
            now,
            &Actor::User(user.id),
            AuditAction::InvitationAccepted,
            invitation.id.to_string(),
        )
        .from_ip(ip)
        .with_detail(json!({"userId": user.id.to_string(), "email": user.email, "roles": user.roles.joined()}));
        self.store
            .accept_invitation(&link.hash(), now, &user, &audit)
            .await?;
        self.start_session(user, ip).await
    }

    pub async fn list_users(&self, admin: &IssuerAdmin<'_>) -> Result<Vec<User>> {
        self.store.list_users(admin.issuer_id()).await
    }

    /// One user: an admin may read anyone in the issuer, others only themselves.
    pub async fn get_user(&self, caller: &Principal, id: &str) -> Result<User> {
        let id = parse_user_id(id)?;
        let member = caller.user_reader(id)?;
        self.store
            .get_user(member.issuer_id(), id)
            .await?
            .ok_or_else(|| user_not_found(id))
    }

    /// Changes a user's roles; their individual key follows at once, on every node. The Account
    /// Holder's roles cannot change and `ACCOUNT_HOLDER` cannot be given.
    pub async fn set_roles(
        &self,
        admin: &IssuerAdmin<'_>,
        id: &str,
        roles: &[String],
    ) -> Result<User> {
        let id = parse_user_id(id)?;
        let roles = grantable_roles(&self.roles, roles)?;
        let now = self.clock.now();
        let audit = NewAuditEvent::new(
            admin.issuer_id(),
            now,
            &admin.principal().actor,
            AuditAction::UserRolesChanged,
            id.to_string(),
        )
        .from_ip(admin.principal().source_ip)
        .with_detail(json!({"roles": roles.joined()}));
        let (user, keys) = self
            .store
            .set_user_roles(admin.issuer_id(), id, &roles, now, &audit)
            .await?
            .ok_or_else(|| user_not_found(id))?;
        self.ring.apply(&keys, i64::MIN);
        Ok(user)
    }

    /// Removes a user, revoking their individual key at once. Never the Account Holder.
    pub async fn remove_user(&self, admin: &IssuerAdmin<'_>, id: &str) -> Result<()> {
        let id = parse_user_id(id)?;
        let now = self.clock.now();
        let audit = NewAuditEvent::new(
            admin.issuer_id(),
            now,
            &admin.principal().actor,
            AuditAction::UserRemoved,
            id.to_string(),
        )
        .from_ip(admin.principal().source_ip);
        let revoked = self
            .store
            .remove_user(admin.issuer_id(), id, now, &audit)
            .await?
            .ok_or_else(|| user_not_found(id))?;
        self.ring.apply(&revoked, i64::MIN);
        Ok(())
    }
}

fn setup_link_gone() -> Error {
    Error::NotFound(
        "This setup link is not valid: the Account Holder was already created, or a newer link was printed. Sign in instead.".into(),
    )
}

fn parse_user_id(id: &str) -> Result<UserId> {
    UserId::parse(id).ok_or_else(|| Error::NotFound("There is no user with this ID.".into()))
}

fn user_not_found(id: UserId) -> Error {
    Error::NotFound(format!("There is no user {id} in this issuer."))
}
