//! The management API for the issuer and its API keys (`/v1/issuer`, `/v1/apiKeys`).

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keygate_core::error::Error;
use keygate_core::key::{Algorithm, ApiKey, KeyCursor, KeyQuery, KeyType, StatusFilter};
use keygate_core::service::NewKey;
use keygate_core::time_fmt::{parse_rfc3339, rfc3339};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::jsonapi::{
    DEFAULT_LIMIT, attributes, json_response, parse_limit, read_document, unknown_parameter,
    with_status,
};

/// The `{key_id}` path segment. A segment that does not decode is a `404` in the error shape,
/// like any other unknown key, rather than axum's plain-text rejection.
#[derive(Debug)]
pub struct KeyIdParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for KeyIdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| Self(id))
            .map_err(|_| ApiError(Error::NotFound("There is no API key with this ID.".into())))
    }
}

/// A key as the API shows it to `viewer` (the caller's person, if any): the download link only
/// for someone who may take it.
fn key_resource(
    key: &ApiKey,
    now: i64,
    window: i64,
    viewer: Option<keygate_core::ids::UserId>,
) -> Value {
    let can_download = key.can_download(now, window) && key.downloadable_by(viewer);
    let self_link = format!("/v1/apiKeys/{}", key.id);
    let mut links = serde_json::Map::new();
    if can_download {
        links.insert(
            "privateKey".into(),
            json!(format!("{self_link}/privateKey")),
        );
    }
    links.insert("self".into(), json!(self_link));
    json!({
        "type": "apiKeys",
        "id": key.id.as_str(),
        "attributes": {
            "name": key.name,
            "roles": key.roles.iter().map(keygate_core::role::Role::as_str).collect::<Vec<_>>(),
            "keyType": key.key_type.as_str(),
            "algorithm": key.algorithm.as_str(),
            "issuerId": key.issuer_id.to_string(),
            "isActive": key.is_active(now),
            "canDownload": can_download,
            "privateKeyState": key.private_key.as_str(),
            "createdDate": rfc3339(key.created_at),
            "lastUsedDate": key.last_used_at.map(rfc3339),
            "requestCount": key.request_count,
            "revokedDate": key.revoked_at.map(rfc3339),
            "revokeReason": key.revoke_reason,
            "expiresAt": key.expires_at.map(rfc3339),
            "createdBy": key.created_by,
            "userId": key.user_id.map(|u| u.to_string()),
        },
        "links": links,
    })
}

/// `GET /v1/issuer`: any authenticated caller, for its own issuer.
pub async fn get_issuer(State(state): State<AppState>, Caller(p): Caller) -> ApiResult<Response> {
    let issuer = state.keys.issuer(p.member()).await?;
    Ok(json_response(&json!({
        "data": {
            "type": "issuers",
            "id": issuer.id.to_string(),
            "attributes": {"name": issuer.name, "createdDate": rfc3339(issuer.created_at)},
            "links": {"self": "/v1/issuer"},
        },
        "links": {"self": "/v1/issuer"},
    })))
}

fn parse_list_query(raw: Option<&str>, now: i64) -> Result<KeyQuery, Error> {
    let mut q = KeyQuery {
        status: None,
        key_type: None,
        owner: None,
        after: None,
        limit: DEFAULT_LIMIT,
        now,
    };
    for (k, v) in crate::jsonapi::query_pairs(raw)? {
        match k.as_str() {
            "filter[status]" => {
                q.status = Some(match v.as_str() {
                    "ACTIVE" => StatusFilter::Active,
                    "REVOKED" => StatusFilter::Revoked,
                    _ => {
                        return Err(Error::parameter(
                            "filter[status]",
                            "filter[status] is ACTIVE or REVOKED.",
                        ));
                    }
                });
            }
            "filter[keyType]" => {
                q.key_type = Some(KeyType::parse(&v).ok_or_else(|| {
                    Error::parameter("filter[keyType]", "filter[keyType] is TEAM or INDIVIDUAL.")
                })?);
            }
            "limit" => q.limit = parse_limit(&v)?,
            "cursor" => q.after = Some(KeyCursor::decode(&v)?),
            other => {
                return Err(unknown_parameter(
                    other,
                    "filter[status], filter[keyType], limit and cursor",
                ));
            }
        }
    }
    Ok(q)
}

/// `GET /v1/apiKeys`: an admin sees the issuer's keys; a person with another role, their own
/// individual keys.
pub async fn list_keys(
    State(state): State<AppState>,
    Caller(p): Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let scope = p.key_scope()?;
    let now = state.keys.now();
    let query = parse_list_query(raw.as_deref(), now)?;
    let page = state.keys.list_keys(&scope, &query).await?;
    let window = state.keys.limits().download_window;
    let data: Vec<Value> = page
        .items
        .iter()
        .map(|k| key_resource(k, now, window, p.user_id))
        .collect();
    let mut self_link = "/v1/apiKeys".to_owned();
    if let Some(r) = raw.as_deref().filter(|r| !r.is_empty()) {
        self_link.push('?');
        self_link.push_str(r);
    }
    let mut links = serde_json::Map::new();
    links.insert("self".into(), json!(self_link));
    if let Some(next) = page.next {
        let mut params: Vec<String> = raw
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("cursor="))
            .map(str::to_owned)
            .collect();
        params.push(format!("cursor={next}"));
        links.insert(
            "next".into(),
            json!(format!("/v1/apiKeys?{}", params.join("&"))),
        );
    }
    Ok(json_response(&json!({
        "data": data,
        "links": links,
        "meta": {"paging": {"total": page.total, "limit": query.limit}},
    })))
}

/// `GET /v1/apiKeys/{keyId}`: a key in the caller's scope.
pub async fn get_key(
    State(state): State<AppState>,
    Caller(p): Caller,
    KeyIdParam(id): KeyIdParam,
) -> ApiResult<Response> {
    let scope = p.key_scope()?;
    let key = state.keys.get_key(&scope, &id).await?;
    let now = state.keys.now();
    Ok(json_response(&json!({
        "data": key_resource(&key, now, state.keys.limits().download_window, p.user_id),
        "links": {"self": format!("/v1/apiKeys/{}", key.id)},
    })))
}

pub(crate) fn take_str(
    attrs: &mut Map<String, Value>,
    name: &str,
) -> Result<Option<String>, Error> {
    match attrs.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::attribute(name, format!("{name} must be a string."))),
    }
}

pub(crate) fn reject_unknown(attrs: &Map<String, Value>, allowed: &str) -> Result<(), Error> {
    match attrs.keys().next() {
        Some(k) => {
            let shown: String = k.chars().take(40).collect();
            Err(Error::attribute(
                &shown,
                format!("Unknown attribute {shown:?}; allowed: {allowed}."),
            ))
        }
        None => Ok(()),
    }
}

fn parse_new_key(mut attrs: Map<String, Value>) -> Result<NewKey, Error> {
    let name = take_str(&mut attrs, "name")?
        .ok_or_else(|| Error::attribute("name", "name is required."))?;
    let key_type = match take_str(&mut attrs, "keyType")? {
        None => KeyType::Team,
        Some(t) => KeyType::parse(&t)
            .ok_or_else(|| Error::attribute("keyType", "keyType is TEAM or INDIVIDUAL."))?,
    };
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
        None if key_type == KeyType::Individual => Vec::new(),
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
    let algorithm = match take_str(&mut attrs, "algorithm")? {
        None => Algorithm::Es256,
        Some(a) => Algorithm::parse(&a)
            .ok_or_else(|| Error::attribute("algorithm", "algorithm is ES256 or EdDSA."))?,
    };
    let public_key = take_str(&mut attrs, "publicKey")?;
    let expires_at = match take_str(&mut attrs, "expiresAt")? {
        None => None,
        Some(t) => Some(parse_rfc3339(&t).ok_or_else(|| {
            Error::attribute(
                "expiresAt",
                "expiresAt is an RFC 3339 time such as 2027-01-31T00:00:00Z.",
            )
        })?),
    };
    reject_unknown(
        &attrs,
        "name, roles, keyType, algorithm, publicKey, expiresAt",
    )?;
    Ok(NewKey {
        name,
        roles,
        key_type,
        algorithm,
        public_key,
        expires_at,
    })
}

/// `POST /v1/apiKeys`: a team key by an admin, or the caller's own individual key. Answers `201`
/// with the key and, when keygate generated the pair, `links.privateKey` for the one download.
pub async fn create_key(
    State(state): State<AppState>,
    Caller(p): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let mut data = read_document(&headers, body, "apiKeys").await?;
    let attrs = attributes(&mut data).map_err(IntoResponse::into_response)?;
    let req = parse_new_key(attrs).map_err(|e| ApiError(e).into_response())?;
    let key = state
        .keys
        .create_key(&p, req)
        .await
        .map_err(|e| ApiError(e).into_response())?;
    let now = state.keys.now();
    let mut resp = with_status(
        StatusCode::CREATED,
        &json!({
            "data": key_resource(&key, now, state.keys.limits().download_window, p.user_id),
            "links": {"self": format!("/v1/apiKeys/{}", key.id)},
        }),
    );
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/apiKeys/{}", key.id)) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

/// `GET /v1/apiKeys/{keyId}/privateKey`: a key in the caller's scope; succeeds once per key.
///
/// `HEAD` is refused: axum would run the handler and drop the body, so a link checker or a
/// `curl -I` would use up the one download.
pub async fn download_private_key(
    method: Method,
    State(state): State<AppState>,
    Caller(p): Caller,
    KeyIdParam(id): KeyIdParam,
) -> Result<Response, Response> {
    if method == Method::HEAD {
        let mut refused = crate::error::response(&ErrorBody::new(
            StatusCode::METHOD_NOT_ALLOWED.as_u16(),
            "METHOD_NOT_ALLOWED",
            "The request method is not allowed for this resource.",
            "Use GET: the private key can be fetched once, and HEAD would spend that once.",
        ));
        refused
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return Err(refused);
    }
    download(&state, &p, &id)
        .await
        .map_err(IntoResponse::into_response)
}

async fn download(
    state: &AppState,
    p: &keygate_core::authz::Principal,
    id: &str,
) -> ApiResult<Response> {
    let scope = p.key_scope()?;
    let (id, pem) = state.keys.download_private_key(&scope, id).await?;
    Ok(pem_attachment(id, &pem))
}

/// The `.p8` download response.
pub fn pem_attachment(
    id: keygate_core::ids::KeyId,
    pem: &keygate_core::crypto::PrivateKeyPem,
) -> Response {
    tracing::info!(key_id = %id, "private key downloaded");
    let mut resp = Response::new(Body::from(pem.expose().to_owned()));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"AuthKey_{id}.p8\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// `PATCH /v1/apiKeys/{keyId}` with `{"isActive": false}`: a key in the caller's scope. Revokes;
/// any other change is a `409`, since a key's name and roles are immutable.
pub async fn patch_key(
    State(state): State<AppState>,
    Caller(p): Caller,
    KeyIdParam(id): KeyIdParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let err = |e: Error| ApiError(e).into_response();
    let scope = p.key_scope().map_err(err)?;
    let mut data = read_document(&headers, body, "apiKeys").await?;
    match data.get("id") {
        Some(Value::String(doc_id)) if *doc_id == id => {}
        None => {}
        Some(_) => {
            return Err(err(Error::Conflict(
                "data.id does not match the key ID in the URL.".into(),
            )));
        }
    }
    let mut attrs = attributes(&mut data).map_err(IntoResponse::into_response)?;
    let reason = take_str(&mut attrs, "revokeReason").map_err(err)?;
    let is_active = attrs.remove("isActive");
    if let Some(k) = attrs.keys().next() {
        let shown: String = k.chars().take(40).collect();
        return Err(err(Error::Conflict(format!(
            "{shown} cannot be changed: a key's name and roles are immutable. Revoke it with isActive: false and create a new key."
        ))));
    }
    match is_active {
        Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return Err(err(Error::Conflict(
                "A revoked key cannot be reactivated; revocation is permanent.".into(),
            )));
        }
        Some(_) => return Err(err(Error::attribute("isActive", "isActive must be false."))),
        None => {
            return Err(err(Error::Conflict(
                "The only change a key accepts is {\"isActive\": false}.".into(),
            )));
        }
    }
    let key = state
        .keys
        .revoke_key(&scope, &id, reason.as_deref())
        .await
        .map_err(err)?;
    tracing::info!(key_id = %key.id, "key revoked");
    let now = state.keys.now();
    Ok(json_response(&json!({
        "data": key_resource(&key, now, state.keys.limits().download_window, p.user_id),
        "links": {"self": format!("/v1/apiKeys/{}", key.id)},
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_table() {
        assert_eq!(parse_list_query(None, 0).unwrap().limit, DEFAULT_LIMIT);
        let q = parse_list_query(Some("filter%5Bstatus%5D=REVOKED&limit=5"), 0).unwrap();
        assert_eq!(q.status, Some(StatusFilter::Revoked));
        assert_eq!(q.limit, 5);
        for bad in [
            "limit=0",
            "limit=201",
            "limit=x",
            "filter[status]=GONE",
            "filter[keyType]=x",
            "cursor=zzz",
            "bogus=1",
        ] {
            assert!(parse_list_query(Some(bad), 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn new_key_attributes() {
        let ok = |v: Value| parse_new_key(v.as_object().unwrap().clone());
        let k = ok(json!({"name": "CI", "roles": ["DEVELOPER"]})).unwrap();
        assert_eq!((k.key_type, k.algorithm), (KeyType::Team, Algorithm::Es256));
        assert!(ok(json!({"name": "CI", "roles": ["DEVELOPER"], "algorithm": "EdDSA"})).is_ok());
        for bad in [
            json!({"roles": ["DEVELOPER"]}),
            json!({"name": 5, "roles": ["DEVELOPER"]}),
            json!({"name": "x"}),
            json!({"name": "x", "roles": "DEVELOPER"}),
            json!({"name": "x", "roles": [1]}),
            json!({"name": "x", "roles": ["DEVELOPER"], "algorithm": "RS256"}),
            json!({"name": "x", "roles": ["DEVELOPER"], "expiresAt": "tomorrow"}),
            json!({"name": "x", "roles": ["DEVELOPER"], "color": "red"}),
        ] {
            assert!(ok(bad.clone()).is_err(), "{bad}");
        }
    }
}
