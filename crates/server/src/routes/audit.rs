//! The audit log of the caller's issuer (`GET /v1/auditEvents`), newest first.

use axum::extract::{RawQuery, State};
use axum::response::Response;
use keygate_core::audit::AuditEvent;
use keygate_core::error::Error;
use keygate_core::time_fmt::rfc3339;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::jsonapi::{DEFAULT_LIMIT, json_response, parse_limit, unknown_parameter};

fn resource(e: &AuditEvent) -> Value {
    let hash = e.hash.iter().fold(String::with_capacity(64), |mut acc, b| {
        use std::fmt::Write as _;
        let _ = write!(acc, "{b:02x}");
        acc
    });
    json!({
        "type": "auditEvents",
        "id": e.seq.to_string(),
        "attributes": {
            "action": e.event.action.as_str(),
            "actor": e.event.actor,
            "target": e.event.target,
            "sourceIp": e.event.source_ip.map(|ip| ip.to_string()),
            "createdDate": rfc3339(e.event.at),
            "detail": e.event.detail,
            "hash": hash,
        },
    })
}

/// `limit` and `cursor` (the `id` of the last event seen).
fn parse_query(raw: Option<&str>) -> Result<(u32, Option<i64>), Error> {
    let mut limit = DEFAULT_LIMIT;
    let mut cursor = None;
    for (k, v) in crate::jsonapi::query_pairs(raw)? {
        match k.as_str() {
            "limit" => limit = parse_limit(&v)?,
            "cursor" => {
                cursor = Some(v.parse().ok().filter(|n: &i64| *n > 0).ok_or_else(|| {
                    Error::parameter("cursor", "the cursor is not one keygate issued")
                })?);
            }
            other => return Err(unknown_parameter(other, "limit and cursor")),
        }
    }
    Ok((limit, cursor))
}

/// `GET /v1/auditEvents`: `ADMIN` or `ACCOUNT_HOLDER`.
pub async fn list(
    State(state): State<AppState>,
    Caller(p): Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let admin = p.admin()?;
    let (limit, cursor) = parse_query(raw.as_deref())?;
    let page = state.keys.audit_events(&admin, cursor, limit).await?;
    let data: Vec<Value> = page.items.iter().map(resource).collect();
    let mut links = serde_json::Map::new();
    links.insert(
        "self".into(),
        json!(format!(
            "/v1/auditEvents?limit={limit}{}",
            cursor.map(|c| format!("&cursor={c}")).unwrap_or_default()
        )),
    );
    if let Some(next) = page.next {
        links.insert(
            "next".into(),
            json!(format!("/v1/auditEvents?limit={limit}&cursor={next}")),
        );
    }
    Ok(json_response(&json!({
        "data": data,
        "links": links,
        "meta": {"paging": {"total": page.total, "limit": limit}},
    })))
}
