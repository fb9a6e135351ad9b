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

/// A query string's `name=value` pairs, percent-decoded, in order; one that does not decode
/// (or holds control characters) is a `400`.
pub fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, Error> {
    let bad = || Error::parameter("query", "The query string is not validly percent-encoded.");
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = keygate_core::scope::percent_decode(k).ok_or_else(bad)?;
            let v = keygate_core::scope::percent_decode(v).ok_or_else(bad)?;
            Ok((k.into_owned(), v.into_owned()))
        })
        .collect()
}

/// `limit` and `cursor` of a collection the server pages in memory: one an issuer holds few of
/// (users, invitations, secret keys), read whole and shown newest first.
#[derive(Debug, Clone)]
pub struct Paging {
    pub limit: u32,
    /// `(created_at, id)` of the last item of the previous page.
    after: Option<(i64, String)>,
}

impl Paging {
    /// Reads the query: `limit` (1 to [`MAX_LIMIT`]) and `cursor` (from a `links.next`); any
    /// other parameter is a `400`.
    pub fn parse(raw: Option<&str>) -> Result<Self, Error> {
        let mut paging = Self {
            limit: DEFAULT_LIMIT,
            after: None,
        };
        for (k, v) in query_pairs(raw)? {
            match k.as_str() {
                "limit" => paging.limit = parse_limit(&v)?,
                "cursor" => {
                    let bad = || Error::parameter("cursor", "the cursor is not one keygate issued");
                    let (at, id) = v.split_once('.').ok_or_else(bad)?;
                    let at = at.parse().map_err(|_| bad())?;
                    if id.is_empty() || id.len() > 64 {
                        return Err(bad());
                    }
                    paging.after = Some((at, id.to_owned()));
                }
                other => return Err(unknown_parameter(other, "limit and cursor")),
            }
        }
        Ok(paging)
    }

    /// The collection document for one page of `items`: sorted newest first by
    /// `(created_at, id)`, after the cursor, at most `limit`, with `links.next` when more follow
    /// and `meta.paging.total` counting them all.
    pub fn document<T>(
        &self,
        mut items: Vec<T>,
        order: impl Fn(&T) -> (i64, String),
        path: &str,
        resource: impl Fn(&T) -> Value,
    ) -> Response {
        let total = items.len();
        items.sort_by_key(|item| std::cmp::Reverse(order(item)));
        let after = self.after.clone();
        let mut rest = items
            .into_iter()
            .filter(|item| after.as_ref().is_none_or(|a| order(item) < *a))
            .peekable();
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        let mut data = Vec::with_capacity(limit.min(total));
        let mut last = None;
        while data.len() < limit {
            let Some(item) = rest.next() else { break };
            data.push(resource(&item));
            last = Some(order(&item));
        }
        let mut links = Map::new();
        let self_link = match &self.after {
            Some((at, id)) => format!("{path}?limit={}&cursor={at}.{id}", self.limit),
            None => format!("{path}?limit={}", self.limit),
        };
        links.insert("self".into(), Value::String(self_link));
        if let (Some((at, id)), Some(_)) = (last, rest.peek()) {
            links.insert(
                "next".into(),
                Value::String(format!("{path}?limit={}&cursor={at}.{id}", self.limit)),
            );
        }
        json_response(&serde_json::json!({
            "data": data,
            "links": links,
            "meta": {"paging": {"total": total, "limit": self.limit}},
        }))
    }
}
