//! In-process verification for a Rust service: a `tower` layer that checks every request the
//! way keygate's `/authz` does (credential, role, token scope, rate limit) against a key set held
//! in memory, with no network hop.
//!
//! ```no_run
//! # async fn demo(public_key_pem: &str) -> Result<(), keygate_client::ClientError> {
//! use axum::{Extension, Router, routing::get};
//! use keygate_client::layer::{KeygateLayer, Verification};
//! use keygate_core::token::VerifiedToken;
//! use std::sync::Arc;
//!
//! let verification = Verification::new().audiences(["appstoreconnect-v1"]);
//! verification.add_team_key("2X9R4HXF34", "57246542-96fe-1a63-e053-0824d011072a",
//!     public_key_pem, &["DEVELOPER"])?;
//! let app: Router = Router::new()
//!     .route("/v1/apps", get(|Extension(t): Extension<Arc<VerifiedToken>>| async move {
//!         format!("hello, key {}", t.key.id)
//!     }))
//!     .layer(KeygateLayer::new(verification.gate()));
//! # Ok(()) }
//! ```
//!
//! The key set comes from public keys you add ([`Verification::add_team_key`]), or, with the
//! `database` feature, from a keygate database that the program follows as a node would
//! ([`Verification::follow_database`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::OriginalUri;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use keygate_core::clock::{Clock, SystemClock};
use keygate_core::credential::{Credential, HeaderValues, credential};
use keygate_core::crypto::parse_public_key_pem;
use keygate_core::error::{AuthReason, Error};
use keygate_core::error_body::ErrorBody;
use keygate_core::gate::Gate;
use keygate_core::ids::{IssuerId, KeyId};
use keygate_core::key::{Algorithm, ApiKey, KeyType, PrivateKeyState};
use keygate_core::keyset::KeyRing;
use keygate_core::meter::{Meter, RateState};
use keygate_core::policy::Policy;
use keygate_core::role::RoleCatalog;
use keygate_core::scope::RequestTarget;
use keygate_core::service::Verifier;
use keygate_core::token::TokenRules;
use tower::{Layer, Service};

use crate::management::ClientError;

/// What the layer checks against: token rules, the policy and the key set.
#[derive(Debug)]
pub struct Verification {
    ring: Arc<KeyRing>,
    rules: TokenRules,
    policy: Policy,
    clock: Arc<dyn Clock>,
}

impl Default for Verification {
    fn default() -> Self {
        Self::new()
    }
}

impl Verification {
    /// keygate's defaults: audience `keygate-v1`, 20-minute tokens, no policy (any valid key may
    /// call everything), 3600 requests per key per hour.
    pub fn new() -> Self {
        Self {
            ring: Arc::new(KeyRing::new()),
            rules: TokenRules::default(),
            policy: Policy::open(),
            clock: Arc::new(SystemClock),
        }
    }

    #[must_use]
    pub fn audiences<I: IntoIterator<Item = S>, S: Into<String>>(mut self, audiences: I) -> Self {
        self.rules.audiences = audiences.into_iter().map(Into::into).collect();
        self
    }

    #[must_use]
    pub fn rules(mut self, rules: TokenRules) -> Self {
        self.rules = rules;
        self
    }

    #[must_use]
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The key set, to update it (add or revoke keys) while the service runs.
    pub fn ring(&self) -> &Arc<KeyRing> {
        &self.ring
    }

    /// Adds (or replaces) a team key by its SPKI PEM public key (`-----BEGIN PUBLIC KEY-----`),
    /// P-256 or Ed25519.
    pub fn add_team_key(
        &self,
        key_id: &str,
        issuer_id: &str,
        public_key_pem: &str,
        roles: &[&str],
    ) -> Result<(), ClientError> {
        let bad = |what: &str| ClientError::Key(format!("{what} is not valid"));
        let (algorithm, public_key) = parse_public_key_pem(public_key_pem, Algorithm::Es256)
            .map(|k| (Algorithm::Es256, k))
            .or_else(|_| {
                parse_public_key_pem(public_key_pem, Algorithm::EdDsa)
                    .map(|k| (Algorithm::EdDsa, k))
            })
            .map_err(|_| bad("the public key"))?;
        let catalog = RoleCatalog::with_custom(self.policy.roles().map(|(r, _)| r));
        let key = ApiKey {
            id: KeyId::parse(key_id).ok_or_else(|| bad("the key ID"))?,
            issuer_id: issuer_id
                .parse::<IssuerId>()
                .map_err(|_| bad("the issuer ID"))?,
            name: key_id.to_owned(),
            roles: catalog
                .key_roles(roles)
                .map_err(|e| ClientError::Key(e.to_string()))?,
            key_type: KeyType::Team,
            algorithm,
            public_key,
            private_key: PrivateKeyState::NeverHeld,
            created_by: "library".to_owned(),
            created_at: self.clock.now(),
            last_used_at: None,
            request_count: 0,
            revoked_at: None,
            revoke_reason: None,
            expires_at: None,
            user_id: None,
        };
        let seq = self.ring.seq();
        self.ring.apply(&[key], seq);
        Ok(())
    }

    /// Follows a keygate database (`sqlite://…` or another URL keygate serves from) as a node
    /// does: loads every key now, then applies changes every `every`, so keys created or
    /// revoked through keygate take effect here too. Returns the background task.
    #[cfg(feature = "database")]
    pub async fn follow_database(
        &self,
        url: &str,
        every: std::time::Duration,
    ) -> Result<tokio::task::JoinHandle<()>, ClientError> {
        let store = keygate_store::open(url)
            .await
            .map_err(|e| ClientError::Key(format!("database: {e}")))?;
        self.ring
            .reload_from(store.as_ref())
            .await
            .map_err(|e| ClientError::Key(format!("database: {e}")))?;
        let ring = Arc::clone(&self.ring);
        Ok(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if ring.sync_from(store.as_ref()).await.is_err() {
                    // Keep verifying from memory; a full reload catches up once it answers.
                    let _ = ring.reload_from(store.as_ref()).await;
                }
            }
        }))
    }

    /// The decision the layer makes, ready to share.
    pub fn gate(self) -> Gate {
        let verifier = Arc::new(Verifier::new(
            self.ring,
            Arc::new(self.policy),
            self.rules,
            Arc::clone(&self.clock),
        ));
        Gate::new(verifier, Arc::new(Meter::new(self.clock)))
    }
}

/// The `tower` layer: wrap an axum `Router` (or any service answering
/// `Response<axum::body::Body>`) with `.layer(KeygateLayer::new(gate))`.
#[derive(Debug, Clone)]
pub struct KeygateLayer {
    gate: Gate,
}

impl KeygateLayer {
    pub fn new(gate: Gate) -> Self {
        Self { gate }
    }
}

impl<S> Layer<S> for KeygateLayer {
    type Service = Keygate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Keygate {
            inner,
            gate: self.gate.clone(),
        }
    }
}

/// The service [`KeygateLayer`] makes. Allowed requests reach the inner service with the
/// `Arc<`[`VerifiedToken`](keygate_core::token::VerifiedToken)`>` in their extensions; refused ones are
/// answered with keygate's error document. Both carry `X-Rate-Limit` once the key is known.
#[derive(Debug, Clone)]
pub struct Keygate<S> {
    inner: S,
    gate: Gate,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<Request<B>> for Keygate<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        strip_identity(req.headers_mut());
        let decision = {
            // Under `Router::nest` the URI has lost its prefix; policy and scopes name the path
            // the client sent.
            let uri = req
                .extensions()
                .get::<OriginalUri>()
                .map_or(req.uri(), |o| &o.0);
            let target = RequestTarget {
                method: req.method().as_str(),
                path: uri.path(),
                query: uri.query().unwrap_or(""),
            };
            let headers = req.headers();
            match keygate_core::gate::refuse_overrides(headers.keys().map(HeaderName::as_str))
                .and_then(|()| bearer(headers))
            {
                Ok(token) => self
                    .gate
                    .check(token, &target)
                    .map_err(|r| (r.error, r.rate)),
                Err(e) => Err((e, None)),
            }
        };
        match decision {
            Ok(admitted) => {
                let rate = admitted.rate;
                if let keygate_core::gate::Identity::Token(token) = admitted.identity {
                    req.extensions_mut().insert(token);
                }
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let mut resp = fut.await?;
                    set_rate(&mut resp, &rate);
                    Ok(resp)
                })
            }
            Err((error, rate)) => {
                let mut resp = refusal(error);
                if let Some(rate) = rate {
                    set_rate(&mut resp, &rate);
                }
                Box::pin(std::future::ready(Ok(resp)))
            }
        }
    }
}

/// The request's credential, read exactly as keygate's server reads it. Secret keys are not
/// verified in-process.
fn bearer(headers: &HeaderMap) -> Result<&str, Error> {
    let values =
        |name: &str| HeaderValues::of(headers.get_all(name).iter().map(HeaderValue::as_bytes));
    match credential(values("authorization"), values("x-api-key"))? {
        Credential::Token(t) => Ok(t),
        Credential::SecretKey(_) => Err(Error::auth(
            AuthReason::UnknownSecretKey,
            "Secret keys are checked by a keygate server, not by the in-process layer.",
        )),
    }
}

/// Removes every client-sent `X-Keygate-*` header, so a handler never mistakes one for
/// keygate's word.
fn strip_identity(headers: &mut HeaderMap) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-keygate-"))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

fn refusal(error: Error) -> Response<Body> {
    let (body, _) = ErrorBody::from_error(error);
    let id = uuid::Uuid::new_v4().to_string();
    let bytes = serde_json::to_vec(&body.document(&id)).unwrap_or_default();
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() =
        StatusCode::from_u16(body.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if body.status == 401 {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

fn set_rate(resp: &mut Response<Body>, rate: &RateState) {
    if let Ok(v) = HeaderValue::from_str(&rate.header_value()) {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-rate-limit"), v);
    }
    if let Some(secs) = rate.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
}
