//! Domain errors on the wire: the mapping itself is the core's
//! ([`keygate_core::error_body`]); this puts it in a response with the exact `Content-Type`,
//! `WWW-Authenticate` on 401, and logs 5xx details under the error's `id`, which the body repeats
//! so an operator can find it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keygate_core::error::Error;
pub use keygate_core::error_body::ErrorBody;

/// A response-ready error.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl From<keygate_core::error::AuthFailure> for ApiError {
    fn from(e: keygate_core::error::AuthFailure) -> Self {
        Self(Error::Unauthenticated(e))
    }
}

/// Renders one error object as the response, under a fresh error ID.
pub fn response(body: &ErrorBody) -> Response {
    render(body, &uuid::Uuid::new_v4().to_string())
}

fn render(body: &ErrorBody, id: &str) -> Response {
    let status = StatusCode::from_u16(body.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, crate::jsonapi::json_response(&body.document(id))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (body, log) = ErrorBody::from_error(self.0);
        let id = uuid::Uuid::new_v4().to_string();
        if let Some(log) = log {
            tracing::error!(error_id = %id, status = body.status, "{log}");
        }
        render(&body, &id)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
