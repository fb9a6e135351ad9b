//! How a domain [`Error`] is shown to a client: App Store Connect's error object (`status`,
//! stable `code`, Apple's `title`, and keygate's exact `detail` and `meta.reason`). This is the
//! one mapping; the server and the tower layer only put it on the wire. It is HTTP-free (the
//! status is a number) so the core stays without IO dependencies.

use serde_json::{Value, json};

use crate::error::{Error, InvalidSource, PrivateKeyUnavailable};

/// One error object of the `{"errors":[...]}` document.
#[derive(Debug, Clone)]
pub struct ErrorBody {
    pub status: u16,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub reason: Option<&'static str>,
    pub source: Option<Value>,
}

impl ErrorBody {
    pub fn new(
        status: u16,
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

    /// The client-facing form of `e`, and for server faults the text that goes only to the log
    /// (5xx bodies stay generic).
    pub fn from_error(e: Error) -> (Self, Option<String>) {
        body_for(e)
    }

    /// The whole `{"errors":[...]}` document, with `id` (which the log repeats).
    pub fn document(&self, id: &str) -> Value {
        let mut err = serde_json::Map::new();
        err.insert("id".into(), json!(id));
        err.insert("status".into(), json!(self.status.to_string()));
        err.insert("code".into(), json!(self.code));
        err.insert("title".into(), json!(self.title));
        err.insert("detail".into(), json!(self.detail));
        if let Some(reason) = self.reason {
            err.insert("meta".into(), json!({"reason": reason}));
        }
        if let Some(source) = &self.source {
            err.insert("source".into(), source.clone());
        }
        json!({"errors": [err]})
    }
}

#[allow(clippy::too_many_lines)] // one exhaustive match is the point: every error maps here
fn body_for(e: Error) -> (ErrorBody, Option<String>) {
    match e {
        Error::NotFound(detail) => (
            ErrorBody::new(
                404,
                "NOT_FOUND",
                "The specified resource does not exist.",
                detail,
            ),
            None,
        ),
        Error::Conflict(detail) => (
            ErrorBody::new(
                409,
                "CONFLICT",
                "The request cannot be fulfilled because of the state of another resource.",
                detail,
            ),
            None,
        ),
        Error::Unauthenticated(f) => {
            let mut b = ErrorBody::new(
                401,
                "NOT_AUTHORIZED",
                "Authentication credentials are missing or invalid.",
                f.detail,
            );
            b.reason = Some(f.reason.as_str());
            (b, None)
        }
        Error::Forbidden { reason, detail } => {
            let mut b = ErrorBody::new(
                403,
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
                400,
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
                409,
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
                422,
                "ENTITY_UNPROCESSABLE",
                "The request entity is not valid.",
                detail,
            ),
            None,
        ),
        Error::PrivateKey(why) => {
            let detail = why.detail();
            let b = match why {
                PrivateKeyUnavailable::AlreadyDownloaded => ErrorBody::new(
                    410,
                    "PRIVATE_KEY_ALREADY_DOWNLOADED",
                    "The private key can be downloaded only once.",
                    detail,
                ),
                PrivateKeyUnavailable::Erased => ErrorBody::new(
                    410,
                    "PRIVATE_KEY_ERASED",
                    "The private key no longer exists.",
                    detail,
                ),
                PrivateKeyUnavailable::NeverHeld => ErrorBody::new(
                    409,
                    "CONFLICT",
                    "The request cannot be fulfilled because of the state of another resource.",
                    detail,
                ),
            };
            (b, None)
        }
        Error::RateLimited(detail) => (
            ErrorBody::new(
                429,
                "RATE_LIMIT_EXCEEDED",
                "The request rate limit has been reached.",
                detail,
            ),
            None,
        ),
        Error::Unavailable(log) => (
            ErrorBody::new(
                503,
                "SERVICE_UNAVAILABLE",
                "The service is temporarily unavailable.",
                "keygate cannot reach its database right now; verification continues, changes do not. Try again shortly.",
            ),
            Some(log),
        ),
        Error::Internal(log) => (
            ErrorBody::new(
                500,
                "INTERNAL_ERROR",
                "An unexpected error occurred.",
                "An unexpected error occurred on the server; it has been logged.",
            ),
            Some(log),
        ),
    }
}
