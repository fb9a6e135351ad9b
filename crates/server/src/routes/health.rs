//! Liveness and readiness.

use axum::extract::State;
use axum::response::Response;
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::jsonapi::json_response;

/// `GET /healthz`: the process is up. No authentication.
pub async fn healthz() -> Response {
    json_response(&json!({"status": "ok"}))
}

/// A node whose last successful read of the change feed is older than this is not ready: it
/// may be accepting keys revoked elsewhere.
pub const FEED_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// A node whose clock differs from the database's by more than this many seconds is not ready:
/// it would judge token lifetimes and expiries by the wrong time.
pub const MAX_CLOCK_SKEW: i64 = 5;

/// `GET /readyz`: the database answers, this node follows its change feed (last read within
/// [`FEED_STALE_AFTER`]), and its clock agrees with the database's (within
/// [`MAX_CLOCK_SKEW`] s). No authentication. Each failure says why.
pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    // Bounded: a health check must answer, and a database that does not answer in 2 s is the
    // answer.
    tokio::time::timeout(std::time::Duration::from_secs(2), state.keys.store().ping())
        .await
        .map_err(|_| {
            keygate_core::error::Error::Unavailable("the database did not answer within 2 s".into())
        })??;
    let feed_age = state.keys.feed_read_age();
    let skew = state.keys.clock_skew().await?;
    let mut problems = Vec::new();
    match feed_age {
        Some(age) if age <= FEED_STALE_AFTER => {}
        Some(age) => problems.push(format!(
            "the change feed was last read {} s ago; this node may accept keys revoked on others",
            age.as_secs()
        )),
        None => problems.push("the change feed has not been read yet".to_owned()),
    }
    if skew.abs() > MAX_CLOCK_SKEW {
        problems.push(format!(
            "this node's clock differs from the database's by {skew} s (more than {MAX_CLOCK_SKEW} s)"
        ));
    }
    if !problems.is_empty() {
        tracing::warn!(problems = %problems.join("; "), "not ready");
        return Ok(crate::error::response(&crate::error::ErrorBody::new(
            503,
            "SERVICE_UNAVAILABLE",
            "The service is temporarily unavailable.",
            format!("Not ready: {}.", problems.join("; ")),
        )));
    }
    let doc = json!({
        "status": "ready",
        "keys": state.ring.len(),
        "feedReadAgeMs": feed_age.map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
        "clockSkewSeconds": skew,
    });
    Ok(json_response(&doc))
}
