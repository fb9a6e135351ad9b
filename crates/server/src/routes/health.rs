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

/// `GET /readyz`: the database answers. No authentication.
pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.keys.store().ping().await?;
    Ok(json_response(
        &json!({"status": "ready", "keys": state.ring.len()}),
    ))
}
