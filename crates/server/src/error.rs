//! The one place where domain errors become HTTP: status, stable `code`, Apple's `title`, and the
//! exact `detail` and `meta.reason`. 5xx bodies stay generic; their details go to the log under
//! the error's `id`, which the body repeats so an operator can find it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keygate_core::error::{Error, InvalidSource, PrivateKeyUnavailable};
use keygate_core::service::private_key_unavailable_detail;
use serde_json::{Value, json};

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

/// One error object of the `{"errors":[...]}` document.
#[derive(Debug)]
pub struct ErrorBody {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub reason: Option<&'static str>,
    pub source: Option<Value>,
}

impl ErrorBody {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
            reason: None,
            source: None,
        }
    }

    pub fn into_response_with_id(self) -> Response {
        let id = uuid::Uuid::new_v4().to_string();
        self.render(&id)
    }

    fn render(self, id: &str) -> Response {
        let mut err = serde_json::Map::new();
        err.insert("id".into(), json!(id));
        err.insert("status".into(), json!(self.status.as_u16().to_string()));
        err.insert("code".into(), json!(self.code));
        err.insert("title".into(), json!(self.title));
        err.insert("detail".into(), json!(self.detail));
        if let Some(reason) = self.reason {
            err.insert("meta".into(), json!({"reason": reason}));
        }
        if let Some(source) = self.source {
            err.insert("source".into(), source);
        }
        let mut resp = (
            self.status,
            crate::jsonapi::json_response(&json!({"errors": [err]})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[allow(clippy::too_many_lines)] // one exhaustive match is the point: every error maps here
fn body_for(e: Error) -> (ErrorBody, Option<String>) {
    use StatusCode as S;
    match e {
        Error::NotFound(detail) => (
            ErrorBody::new(
                S::NOT_FOUND,
                "NOT_FOUND",
                "The specified resource does not exist.",
                detail,
            ),
            None,
        ),
        Error::Conflict(detail) => (
            ErrorBody::new(
                S::CONFLICT,
                "CONFLICT",
                "The request cannot be fulfilled because of the state of another resource.",
                detail,
            ),
            None,
        ),
        Error::Unauthenticated(f) => {
            let mut b = ErrorBody::new(
                S::UNAUTHORIZED,
                "NOT_AUTHORIZED",
                "Authentication credentials are missing or invalid.",
                f.detail,
            );
            b.reason = Some(f.reason.as_str());
            (b, None)
        }
        Error::Forbidden { reason, detail } => {
            let mut b = ErrorBody::new(
                S::FORBIDDEN,
                "FORBIDDEN_ERROR",
                "This request is forbidden for security reasons.",
                detail,
            );
            b.reason = Some(reason.as_str());
            (b, None)
        }
        Error::Invalid {
            at: InvalidSource::Parameter(p),
            detail,
        } => {
            let mut b = ErrorBody::new(
                S::BAD_REQUEST,
                "PARAMETER_ERROR.INVALID",
                "A parameter has an invalid value.",
                detail,
            );
            b.source = Some(json!({"parameter": p}));
            (b, None)
        }
        Error::Invalid {
            at: InvalidSource::Pointer(p),
            detail,
        } => {
            let mut b = ErrorBody::new(
                S::CONFLICT,
                "ENTITY_ERROR.ATTRIBUTE.INVALID",
                "The provided entity includes an attribute with an invalid value.",
                detail,
            );
            b.source = Some(json!({"pointer": p}));
            (b, None)
        }
        Error::Invalid {
            at: InvalidSource::Body,
            detail,
        } => (
            ErrorBody::new(
                S::UNPROCESSABLE_ENTITY,
                "ENTITY_UNPROCESSABLE",
                "The request entity is not valid.",
                detail,
            ),
            None,
        ),
        Error::PrivateKey(why) => {
            let detail = private_key_unavailable_detail(why);
            let b = match why {
                PrivateKeyUnavailable::AlreadyDownloaded => ErrorBody::new(
                    S::GONE,
                    "PRIVATE_KEY_ALREADY_DOWNLOADED",
                    "The private key can be downloaded only once.",
                    detail,
                ),
                PrivateKeyUnavailable::Erased => ErrorBody::new(
                    S::GONE,
                    "PRIVATE_KEY_ERASED",
                    "The private key no longer exists.",
                    detail,
                ),
                PrivateKeyUnavailable::NeverHeld => ErrorBody::new(
                    S::CONFLICT,
                    "CONFLICT",
                    "The request cannot be fulfilled because of the state of another resource.",
                    detail,
                ),
            };
            (b, None)
        }
        Error::RateLimited(detail) => (
            ErrorBody::new(
                S::TOO_MANY_REQUESTS,
                "RATE_LIMIT_EXCEEDED",
                "The request rate limit has been reached.",
                detail,
            ),
            None,
        ),
        Error::Unavailable(log) => (
            ErrorBody::new(
                S::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                "The service is temporarily unavailable.",
                "keygate cannot reach its database right now; verification continues, changes do not. Try again shortly.",
            ),
            Some(log),
        ),
        Error::Internal(log) => (
            ErrorBody::new(
                S::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "An unexpected error occurred.",
                "An unexpected error occurred on the server; it has been logged.",
            ),
            Some(log),
        ),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (body, log) = body_for(self.0);
        let id = uuid::Uuid::new_v4().to_string();
        if let Some(log) = log {
            tracing::error!(error_id = %id, status = body.status.as_u16(), "{log}");
        }
        body.render(&id)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
