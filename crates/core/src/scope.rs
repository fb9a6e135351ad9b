//! The request a credential is checked against, and token `scope` entries
//! (`"GET /v1/apps?filter[platform]=IOS"`): same method, same path, and the same query
//! parameters as an unordered multiset, ignoring the paging parameters `limit`, `cursor`, `sort`.

use std::borrow::Cow;

/// Query parameters that never affect whether a scope entry matches.
const IGNORED_PARAMS: [&str; 3] = ["limit", "cursor", "sort"];

/// The method and target of the request being authorized.
#[derive(Debug, Clone, Copy)]
pub struct RequestTarget<'a> {
    pub method: &'a str,
    /// The path, still percent-encoded as it arrived.
    pub path: &'a str,
    /// The query string without `?`; empty when there is none.
    pub query: &'a str,
}

impl<'a> RequestTarget<'a> {
    /// Splits an origin-form URI (`/path?query`) as sent in `X-Original-URI`.
    pub fn from_uri(method: &'a str, uri: &'a str) -> Self {
        let uri = uri.split_once('#').map_or(uri, |(u, _)| u);
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        Self {
            method,
            path,
            query,
        }
    }
}

/// One parsed `scope` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeEntry {
    method: String,
    path: String,
    /// Decoded, paging parameters removed, sorted.
    query: Vec<(String, String)>,
}

impl ScopeEntry {
    /// Parses `"METHOD /path?query"`; `None` if it is not of that form.
    pub fn parse(s: &str) -> Option<Self> {
        let (method, uri) = s.split_once(' ')?;
        if method.is_empty()
            || !method.bytes().all(|b| b.is_ascii_uppercase())
            || !uri.starts_with('/')
            || uri.contains(' ')
        {
            return None;
        }
        let target = RequestTarget::from_uri(method, uri);
        Some(Self {
            method: method.to_owned(),
            path: percent_decode(target.path).into_owned(),
            query: normalized_query(target.query),
        })
    }

    pub fn method(&self) -> &str {
        &self.method
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn matches(&self, target: &RequestTarget<'_>) -> bool {
        self.method == target.method
            && self.path == percent_decode(target.path)
            && self.query == normalized_query(target.query)
    }
}

fn normalized_query(query: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .filter(|(k, _)| !IGNORED_PARAMS.contains(&k.as_str()))
        .collect();
    pairs.sort();
    pairs
}

fn form_decode(s: &str) -> String {
    if s.contains('+') {
        percent_decode(&s.replace('+', " ")).into_owned()
    } else {
        percent_decode(s).into_owned()
    }
}

/// Decodes `%XX` escapes; a malformed escape is kept literally. Bytes that do not form UTF-8
/// are replaced, which can only make a match fail, never succeed wrongly.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(scope: &str, method: &str, uri: &str, expect: bool) {
        let entry = ScopeEntry::parse(scope).unwrap_or_else(|| panic!("bad scope {scope}"));
        assert_eq!(
            entry.matches(&RequestTarget::from_uri(method, uri)),
            expect,
            "{scope} vs {method} {uri}"
        );
    }

    #[test]
    fn scope_matching_table() {
        check("GET /v1/apps", "GET", "/v1/apps", true);
        check("GET /v1/apps", "POST", "/v1/apps", false);
        check("GET /v1/apps", "GET", "/v1/apps/1", false);
        check(
            "GET /v1/apps",
            "GET",
            "/v1/apps?limit=10&cursor=abc&sort=name",
            true,
        );
        check("GET /v1/apps?limit=5", "GET", "/v1/apps", true);
        check("GET /v1/apps?a=1&b=2", "GET", "/v1/apps?b=2&a=1", true);
        check("GET /v1/apps?a=1&a=1", "GET", "/v1/apps?a=1", false);
        check("GET /v1/apps?a=1", "GET", "/v1/apps?a=1&a=1", false);
        check("GET /v1/apps?a=1", "GET", "/v1/apps?a=2", false);
        check("GET /v1/apps?a=1", "GET", "/v1/apps", false);
        check("GET /v1/apps", "GET", "/v1/apps?extra=1", false);
        check(
            "GET /v1/apps?filter[platform]=IOS",
            "GET",
            "/v1/apps?filter%5Bplatform%5D=IOS",
            true,
        );
        check("GET /v1/apps/%41", "GET", "/v1/apps/A", true);
        check(
            "GET /v1/salesReports?q=a+b",
            "GET",
            "/v1/salesReports?q=a%20b",
            true,
        );
    }

    #[test]
    fn rejects_malformed_entries() {
        for bad in ["", "GET", "get /v1/apps", "GET v1/apps", "GET /a b", " /v1"] {
            assert!(ScopeEntry::parse(bad).is_none(), "{bad:?}");
        }
    }
}
