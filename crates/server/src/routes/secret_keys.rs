//! The management API for secret keys (`/v1/secretKeys`) and the leak-report endpoint
//! (`POST /v1/leaks`, GitHub secret scanning's partner format).

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use keygate_core::error::{AuthReason, Error};
use keygate_core::secret_key::{NewSecretKey, Restrictions, SecretKey, SecretKeyText};
use keygate_core::time_fmt::{parse_rfc3339, rfc3339};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::jsonapi::{MAX_BODY_BYTES, attributes, json_response, read_document, with_status};
use crate::routes::keys::{reject_unknown, take_str};
use crate::routes::users::IdParam;

/// A secret key as the API shows it; `secret` only in the create and roll answers.
pub fn secret_key_resource(k: &SecretKey, now: i64, secret: Option<&SecretKeyText>) -> Value {
    let mut attrs = json!({
        "name": k.name,
        "roles": k.roles.iter().map(keygate_core::role::Role::as_str).collect::<Vec<_>>(),
        "restrictions": k.restrictions.to_json(),
        "isActive": k.is_active(now),
        "createdDate": rfc3339(k.created_at),
        "createdBy": k.created_by,
        "expiresAt": k.expires_at.map(rfc3339),
        "revokedDate": k.revoked_at.map(rfc3339),
        "revokeReason": k.revoke_reason,
        "lastUsedDate": k.last_used_at.map(rfc3339),
        "requestCount": k.request_count,
        "secrets": k.live_versions(now).map(|v| json!({
            "hint": v.hint,
            "createdDate": rfc3339(v.created_at),
            "expiresAt": v.expires_at.map(rfc3339),
        })).collect::<Vec<_>>(),
    });
    if let (Some(s), Some(obj)) = (secret, attrs.as_object_mut()) {
        obj.insert("secret".into(), json!(s.expose()));
    }
    json!({
        "type": "secretKeys",
        "id": k.id.as_str(),
        "attributes": attrs,
        "links": {"self": format!("/v1/secretKeys/{}", k.id)},
    })
}

fn time_attr(attrs: &mut Map<String, Value>, name: &str) -> Result<Option<i64>, Error> {
    match take_str(attrs, name)? {
        None => Ok(None),
        Some(t) => parse_rfc3339(&t).map(Some).ok_or_else(|| {
            Error::attribute(
                name,
                format!("{name} is an RFC 3339 time such as 2027-01-31T00:00:00Z."),
            )
        }),
    }
}

fn parse_new(mut attrs: Map<String, Value>) -> Result<NewSecretKey, Error> {
    let name = take_str(&mut attrs, "name")?
        .ok_or_else(|| Error::attribute("name", "name is required."))?;
    let roles = match attrs.remove("roles") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(Error::attribute(
                    "roles",
                    "roles must be an array of role names.",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => {
            return Err(Error::attribute(
                "roles",
                "roles is required, for example [\"DEVELOPER\"].",
            ));
        }
        Some(_) => {
            return Err(Error::attribute(
                "roles",
                "roles must be an array of role names.",
            ));
        }
    };
    let restrictions = match attrs.remove("restrictions") {
        None | Some(Value::Null) => Restrictions::default(),
        Some(v) => Restrictions::from_json(&v)?,
    };
    let expires_at = time_attr(&mut attrs, "expiresAt")?;
    reject_unknown(&attrs, "name, roles, restrictions, expiresAt")?;
    Ok(NewSecretKey {
        name,
        roles,
        restrictions,
        expires_at,
    })
}

fn created(doc: &Value, id: &str) -> Response {
    let mut resp = with_status(StatusCode::CREATED, doc);
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/secretKeys/{id}")) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp
}

/// `POST /v1/secretKeys`: ADMIN or `ACCOUNT_HOLDER`. The answer holds the secret, once.
pub async fn create(
    State(state): State<AppState>,
    Caller(p): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let err = |e: Error| ApiError(e).into_response();
    let admin = p.admin().map_err(err)?;
    let mut data = read_document(&headers, body, "secretKeys").await?;
    let attrs = attributes(&mut data).map_err(IntoResponse::into_response)?;
    let req = parse_new(attrs).map_err(err)?;
    let (key, secret) = state.secrets.create(&admin, req).await.map_err(err)?;
    tracing::info!(key_id = %key.id, "secret key created");
    let doc = json!({
        "data": secret_key_resource(&key, state.secrets.now(), Some(&secret)),
        "links": {"self": format!("/v1/secretKeys/{}", key.id)},
    });
    Ok(created(&doc, key.id.as_str()))
}

/// `GET /v1/secretKeys`: ADMIN or `ACCOUNT_HOLDER`. Never a secret: hints only.
pub async fn list(
    State(state): State<AppState>,
    Caller(p): Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let admin = p.admin()?;
    let paging = crate::jsonapi::Paging::parse(raw.as_deref())?;
    let keys = state.secrets.list(&admin).await?;
    let now = state.secrets.now();
    Ok(paging.document(
        keys,
        |k| (k.created_at, k.id.to_string()),
        "/v1/secretKeys",
        |k| secret_key_resource(k, now, None),
    ))
}

/// `GET /v1/secretKeys/{id}`: ADMIN or `ACCOUNT_HOLDER`.
pub async fn get(
    State(state): State<AppState>,
    Caller(p): Caller,
    IdParam(id): IdParam,
) -> ApiResult<Response> {
    let admin = p.admin()?;
    let key = state.secrets.get(&admin, &id).await?;
    Ok(json_response(&json!({
        "data": secret_key_resource(&key, state.secrets.now(), None),
        "links": {"self": format!("/v1/secretKeys/{}", key.id)},
    })))
}

/// `PATCH /v1/secretKeys/{id}` with `{"isActive": false}`: revokes, at once and for good.
pub async fn patch(
    State(state): State<AppState>,
    Caller(p): Caller,
    IdParam(id): IdParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let err = |e: Error| ApiError(e).into_response();
    let admin = p.admin().map_err(err)?;
    let mut data = read_document(&headers, body, "secretKeys").await?;
    let mut attrs = attributes(&mut data).map_err(IntoResponse::into_response)?;
    let reason = take_str(&mut attrs, "revokeReason").map_err(err)?;
    match attrs.remove("isActive") {
        Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return Err(err(Error::Conflict(
                "A revoked secret key cannot be reactivated; revocation is permanent.".into(),
            )));
        }
        _ => {
            return Err(err(Error::Conflict(
                "The only change a secret key accepts is {\"isActive\": false}; roll it to replace its secret.".into(),
            )));
        }
    }
    if let Some(k) = attrs.keys().next() {
        return Err(err(Error::Conflict(format!(
            "{} cannot be changed; create a new secret key instead.",
            k.chars().take(40).collect::<String>()
        ))));
    }
    let key = state
        .secrets
        .revoke(&admin, &id, reason.as_deref())
        .await
        .map_err(err)?;
    tracing::info!(key_id = %key.id, "secret key revoked");
    Ok(json_response(&json!({
        "data": secret_key_resource(&key, state.secrets.now(), None),
        "links": {"self": format!("/v1/secretKeys/{}", key.id)},
    })))
}

/// `POST /v1/secretKeys/{id}/roll` with optional `oldKeyExpiresAt` (default: now). The answer
/// holds the new secret, once; the old one works until `oldKeyExpiresAt`.
pub async fn roll(
    State(state): State<AppState>,
    Caller(p): Caller,
    IdParam(id): IdParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let err = |e: Error| ApiError(e).into_response();
    let admin = p.admin().map_err(err)?;
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| err(Error::body("The request body is too large.")))?;
    let old_expires_at = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let mut data = read_document(&headers, Body::from(bytes), "secretKeys").await?;
        let mut attrs = attributes(&mut data).map_err(IntoResponse::into_response)?;
        let at = time_attr(&mut attrs, "oldKeyExpiresAt").map_err(err)?;
        reject_unknown(&attrs, "oldKeyExpiresAt").map_err(err)?;
        at
    };
    let (key, secret) = state
        .secrets
        .roll(&admin, &id, old_expires_at)
        .await
        .map_err(err)?;
    tracing::info!(key_id = %key.id, "secret key rolled");
    let doc = json!({
        "data": secret_key_resource(&key, state.secrets.now(), Some(&secret)),
        "links": {"self": format!("/v1/secretKeys/{}", key.id)},
    });
    Ok(created(&doc, key.id.as_str()))
}

/// The largest leak report read.
const MAX_LEAK_REPORT: usize = 256 * 1024;

/// `POST /v1/leaks`: a secret-scanning report (`[{"token","type","url","source"}]`) signed with
/// ECDSA P-256 over the raw body (`GITHUB-PUBLIC-KEY-SIGNATURE`, base64 DER) by a key from
/// `leak_report_public_keys`. Every matching secret key is revoked at once; the answer is
/// GitHub's feedback format, naming tokens by SHA-256 rather than repeating them.
pub async fn leaks(
    State(state): State<AppState>,
    crate::auth::PeerIp(source_ip): crate::auth::PeerIp,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let unsigned =
        |detail: &str| ApiError(Error::auth(AuthReason::BadSignature, detail.to_owned()));
    // Refused before a byte of the body is read: an unauthenticated endpoint buffers nothing
    // it will not use.
    if state.leak_report_keys.is_empty() {
        return Err(unsigned(
            "Leak reports are not accepted: no leak_report_public_keys are configured.",
        ));
    }
    if !headers.contains_key("github-public-key-signature") {
        return Err(unsigned(
            "The report needs a base64 signature in GITHUB-PUBLIC-KEY-SIGNATURE.",
        ));
    }
    let bytes: Bytes = axum::body::to_bytes(body, MAX_LEAK_REPORT)
        .await
        .map_err(|_| Error::body("The leak report is too large."))?;
    let signature = headers
        .get("github-public-key-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        })
        .ok_or_else(|| {
            unsigned("The report needs a base64 signature in GITHUB-PUBLIC-KEY-SIGNATURE.")
        })?;
    let verified = state.leak_report_keys.iter().any(|key| {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
            .verify(&bytes, &signature)
            .is_ok()
    });
    if !verified {
        return Err(unsigned(
            "The report's signature does not verify with any configured leak-report key.",
        ));
    }
    let reports: Vec<Value> = serde_json::from_slice(&bytes)
        .map_err(|_| Error::body("The report is a JSON array of {token, type, url, source}."))?;
    let mut entries = Vec::with_capacity(reports.len());
    for r in &reports {
        let field = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let token = field("token");
        if token.is_empty() {
            return Err(Error::body("Every report entry needs a token.").into());
        }
        entries.push((token, field("type"), field("url"), field("source")));
    }
    let outcomes = state.secrets.report_leaks(&entries, source_ip).await?;
    let matched = outcomes.iter().filter(|o| o.matched).count();
    tracing::warn!(
        reported = outcomes.len(),
        revoked = matched,
        "leak report received"
    );
    let body: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            json!({
                "token_hash": o.token_hash,
                "token_type": o.token_type,
                "label": if o.matched { "true_positive" } else { "false_positive" },
            })
        })
        .collect();
    Ok(json_response(&Value::Array(body)))
}
