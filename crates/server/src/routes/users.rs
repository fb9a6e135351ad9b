//! The management API for people: `/v1/users` and `/v1/userInvitations`.

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keygate_core::error::Error;
use keygate_core::time_fmt::rfc3339;
use keygate_core::user::{Invitation, Person, User};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::jsonapi::{Paging, attributes, json_response, read_document, with_status};
use crate::routes::keys::{reject_unknown, take_str};

/// The `{id}` path segment; one that does not decode is a `404` in the error shape.
#[derive(Debug)]
pub struct IdParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| Self(id))
            .map_err(|_| ApiError(Error::NotFound("There is no object with this ID.".into())))
    }
}

fn role_names(roles: &keygate_core::role::RoleSet) -> Vec<&str> {
    roles.iter().map(keygate_core::role::Role::as_str).collect()
}

pub fn user_resource(u: &User) -> Value {
    json!({
        "type": "users",
        "id": u.id.to_string(),
        "attributes": {
            "username": u.email,
            "email": u.email,
            "firstName": u.first_name,
            "lastName": u.last_name,
            "roles": role_names(&u.roles),
            "createdDate": rfc3339(u.created_at),
        },
        "links": {"self": format!("/v1/users/{}", u.id)},
    })
}

fn invitation_resource(i: &Invitation) -> Value {
    json!({
        "type": "userInvitations",
        "id": i.id.to_string(),
        "attributes": {
            "email": i.email,
            "firstName": i.first_name,
            "lastName": i.last_name,
            "roles": role_names(&i.roles),
            "createdBy": i.created_by,
            "createdDate": rfc3339(i.created_at),
            "expirationDate": rfc3339(i.expires_at),
        },
        "links": {"self": format!("/v1/userInvitations/{}", i.id)},
    })
}

fn take_roles(attrs: &mut Map<String, Value>) -> Result<Vec<String>, Error> {
    match attrs.remove("roles") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(Error::attribute(
                    "roles",
                    "roles must be an array of role names.",
                )),
            })
            .collect(),
        None => Err(Error::attribute(
            "roles",
            "roles is required, for example [\"DEVELOPER\"].",
        )),
        Some(_) => Err(Error::attribute(
            "roles",
            "roles must be an array of role names.",
        )),
    }
}

/// `GET /v1/users`: ADMIN or `ACCOUNT_HOLDER`.
pub async fn list_users(
    State(state): State<AppState>,
    Caller(p): Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let admin = p.admin()?;
    let paging = Paging::parse(raw.as_deref())?;
    let users = state.users.list_users(&admin).await?;
    Ok(paging.document(
        users,
        |u| (u.created_at, u.id.to_string()),
        "/v1/users",
        user_resource,
    ))
}

/// `GET /v1/users/{id}`: an admin, or the user themselves.
pub async fn get_user(
    State(state): State<AppState>,
    Caller(p): Caller,
    IdParam(id): IdParam,
) -> ApiResult<Response> {
    let user = state.users.get_user(&p, &id).await?;
    Ok(json_response(&json!({
        "data": user_resource(&user),
        "links": {"self": format!("/v1/users/{}", user.id)},
    })))
}

/// `PATCH /v1/users/{id}` with `roles`: ADMIN or `ACCOUNT_HOLDER`; never the Account Holder's.
pub async fn patch_user(
    State(state): State<AppState>,
    Caller(p): Caller,
    IdParam(id): IdParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let err = |e: Error| ApiError(e).into_response();
    let admin = p.admin().map_err(err)?;
    let mut data = read_document(&headers, body, "users").await?;
    match data.get("id") {
        Some(Value::String(doc_id)) if *doc_id == id => {}
        None => {}
        Some(_) => {
            return Err(err(Error::Conflict(
                "data.id does not match the user ID in the URL.".into(),
            )));
        }
    }
    let mut attrs = attributes(&mut data).map_err(IntoResponse::into_response)?;
    let roles = take_roles(&mut attrs).map_err(err)?;
    reject_unknown(&attrs, "roles").map_err(err)?;
    let user = state
        .users
        .set_roles(&admin, &id, &roles)
        .await
        .map_err(err)?;
    Ok(json_response(&json!({
        "data": user_resource(&user),
        "links": {"self": format!("/v1/users/{}", user.id)},
    })))
}

/// `DELETE /v1/users/{id}`: ADMIN or `ACCOUNT_HOLDER`; revokes the user's individual key at once.
pub async fn delete_user(
    State(state): State<AppState>,
    Caller(p): Caller,
    IdParam(id): IdParam,
) -> ApiResult<Response> {
    let admin = p.admin()?;
    state.users.remove_user(&admin, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/userInvitations`: ADMIN or `ACCOUNT_HOLDER`.
pub async fn list_invitations(
    State(state): State<AppState>,
    Caller(p): Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let admin = p.admin()?;
    let paging = Paging::parse(raw.as_deref())?;
    let list = state.users.list_invitations(&admin).await?;
    Ok(paging.document(
        list,
        |i| (i.created_at, i.id.to_string()),
        "/v1/userInvitations",
        invitation_resource,
    ))
}

/// `POST /v1/userInvitations`: ADMIN or `ACCOUNT_HOLDER`. The answer carries the one-time accept
/// link in `links.accept`, once: keygate sends no mail, the inviter passes it on.
pub async fn create_invitation(
    State(state): State<AppState>,
    Caller(p): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let err = |e: Error| ApiError(e).into_response();
    let admin = p.admin().map_err(err)?;
    let mut data = read_document(&headers, body, "userInvitations").await?;
    let mut attrs = attributes(&mut data).map_err(IntoResponse::into_response)?;
    let required = |attrs: &mut Map<String, Value>, name: &str| {
        take_str(attrs, name)?.ok_or_else(|| Error::attribute(name, format!("{name} is required.")))
    };
    let email = required(&mut attrs, "email").map_err(err)?;
    let first = required(&mut attrs, "firstName").map_err(err)?;
    let last = required(&mut attrs, "lastName").map_err(err)?;
    let roles = take_roles(&mut attrs).map_err(err)?;
    reject_unknown(&attrs, "email, firstName, lastName, roles").map_err(err)?;
    let person = Person::validate(&email, &first, &last).map_err(err)?;
    let (invitation, link) = state
        .users
        .invite(&admin, person, &roles)
        .await
        .map_err(err)?;
    let mut doc = json!({
        "data": invitation_resource(&invitation),
        "links": {
            "self": format!("/v1/userInvitations/{}", invitation.id),
            "accept": format!("/invitations/{}", link.expose()),
        },
    });
    if let Some(obj) = doc.get_mut("data").and_then(Value::as_object_mut) {
        obj.insert(
            "meta".into(),
            json!({"acceptLinkShownOnce": true, "validUntil": rfc3339(invitation.expires_at)}),
        );
    }
    let mut resp = with_status(StatusCode::CREATED, &doc);
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/userInvitations/{}", invitation.id)) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

/// `DELETE /v1/userInvitations/{id}`: ADMIN or `ACCOUNT_HOLDER`.
pub async fn delete_invitation(
    State(state): State<AppState>,
    Caller(p): Caller,
    IdParam(id): IdParam,
) -> ApiResult<Response> {
    let admin = p.admin()?;
    state.users.cancel_invitation(&admin, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
