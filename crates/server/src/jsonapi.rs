//! JSON:API documents: rendering resources with `Content-Type: application/json` exactly (no
//! charset: real App Store Connect clients break on it), and reading request documents with a
//! size cap and errors in the SPEC shape.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keygate_core::error::Error;
use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorBody};

/// The largest request body the management API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A `200` JSON response; other statuses wrap it in a tuple.
pub fn json_response(value: &Value) -> Response {
    let mut resp = Response::new(Body::from(value.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn with_status(status: StatusCode, value: &Value) -> Response {
    (status, json_response(value)).into_response()
}

/// Reads and checks a request document: size, content type, JSON, `data` object with the
/// expected `type`. Returns the `data` object.
pub async fn read_document(
    headers: &HeaderMap,
    body: Body,
    expected_type: &str,
) -> Result<Map<String, Value>, Response> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        if essence != "application/json" && essence != "application/vnd.api+json" {
            return Err(crate::error::response(&ErrorBody::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE.as_u16(),
                "UNSUPPORTED_MEDIA_TYPE",
                "The request content type is not supported.",
                "Send the request document as application/json.",
            )));
        }
    }
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return Err(crate::error::response(&ErrorBody::new(
                StatusCode::PAYLOAD_TOO_LARGE.as_u16(),
                "ENTITY_TOO_LARGE",
                "The request entity is too large.",
                format!("Request documents are at most {MAX_BODY_BYTES} bytes."),
            )));
        }
    };
    let bad = |detail: String| ApiError(Error::body(detail)).into_response();
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("The request body is not valid JSON: {e}.")))?;
    let Value::Object(mut doc) = doc else {
        return Err(bad(
            "The request document must be a JSON object with a data member.".into(),
        ));
    };
    let Some(Value::Object(data)) = doc.remove("data") else {
        return Err(bad("The request document must have a data object.".into()));
    };
    match data.get("type") {
        Some(Value::String(t)) if t == expected_type => Ok(data),
        Some(Value::String(t)) => Err(ApiError(Error::Conflict(format!(
            "data.type is {:?}; this endpoint takes {expected_type:?}.",
            t.chars().take(40).collect::<String>()
        )))
        .into_response()),
        _ => Err(bad(format!(
            "data.type must be the string {expected_type:?}."
        ))),
    }
}

/// The `attributes` object of a request `data` (empty if absent).
pub fn attributes(data: &mut Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    match data.remove("attributes") {
        None => Ok(Map::new()),
        Some(Value::Object(a)) => Ok(a),
        Some(_) => Err(ApiError(Error::body("data.attributes must be an object."))),
    }
}

/// The default and largest page sizes of collections.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// The `limit` query parameter: 1 to [`MAX_LIMIT`].
pub fn parse_limit(v: &str) -> Result<u32, Error> {
    v.parse()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            Error::parameter("limit", format!("limit is a number from 1 to {MAX_LIMIT}."))
        })
}

/// A query parameter the endpoint does not take (shown truncated).
pub fn unknown_parameter(name: &str, takes: &str) -> Error {
    let shown: String = name.chars().take(40).collect();
    Error::parameter(
        &shown,
        format!("Unknown parameter {shown:?}; this endpoint takes {takes}."),
    )
}
