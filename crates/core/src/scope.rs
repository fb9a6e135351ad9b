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
    /// Splits an origin-form URI (`/path?query`) as sent in `X-Original-URI`. A `#` is kept
    /// where it stands (never trimmed), so [`Self::check_unambiguous`] refuses it: a gateway
    /// forwards the raw target, fragment and all.
    pub fn from_uri(method: &'a str, uri: &'a str) -> Self {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        Self {
            method,
            path,
            query,
        }
    }

    /// Whether this target means one thing to every server that may read it: keygate, a
    /// gateway in front, and the upstream behind (which may decode twice, resolve dot segments,
    /// read `;` as a parameter, fold fullwidth characters, or merge slashes). Every way in
    /// refuses a target that does not pass, for every key and every policy, before anything
    /// is decided; so what keygate checks is what the upstream gets, and a proxy prefix cannot
    /// be escaped. `Err` says what is wrong, for the error's detail.
    pub fn check_unambiguous(&self) -> Result<(), &'static str> {
        // One spelling per method: `get` is not `GET` to a case-sensitive upstream.
        if self.method.is_empty()
            || self.method.len() > 20
            || !self.method.bytes().all(|b| b.is_ascii_uppercase())
        {
            return Err(
                "The method must be written in capitals, as HTTP defines it (GET, not get).",
            );
        }
        if self.path.len() + self.query.len() > MAX_TARGET_BYTES {
            return Err("The request target is longer than 8192 bytes.");
        }
        if !self.path.starts_with('/') {
            return Err("The request path must start with /.");
        }
        if self.path.contains('#') || self.query.contains('#') {
            return Err("The request target holds a #; a fragment is never sent to a server.");
        }
        // On every request: decoded in place, allocating only for segments with escapes.
        let ambiguous = "The request path has a dot segment, an encoded / or \\, a ;, a control character or a malformed escape.";
        let mut segs = decoded_segments(self.path).ok_or(ambiguous)?.peekable();
        while let Some(seg) = segs.next() {
            let seg = seg.ok_or(ambiguous)?;
            if seg.is_empty() && segs.peek().is_some() {
                return Err("The request path has an empty segment (//).");
            }
            if seg.contains('%') {
                return Err("The request path is encoded twice (an escaped %).");
            }
            if reads_differently_normalized(&seg) {
                return Err(
                    "The request path has a character that some servers read as . / \\ ; % ? or # (Unicode compatibility forms).",
                );
            }
        }
        if self.query.split('&').any(|pair| {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            // As a form decoder reads it (`+` is a space), and as PHP reads it (leading spaces
            // dropped): `?+_method=` is `_method` too. Only names with a `_` or an escape can
            // be it, so others are not decoded.
            name.contains(['_', '%'])
                && form_decode(name).is_some_and(|n| n.trim().eq_ignore_ascii_case("_method"))
        }) {
            return Err(
                "A _method query parameter is not accepted: the method checked must be the method the API runs.",
            );
        }
        if self
            .query
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ')
        {
            return Err("The query has a control character or a space.");
        }
        Ok(())
    }
}

/// Longest request target (path and query) any way in accepts, as nginx's default
/// `large_client_header_buffers`.
pub const MAX_TARGET_BYTES: usize = 8192;

/// Whether a decoded segment means something else to a server that applies Unicode
/// compatibility normalization (NFKC, as IIS, some frameworks and file systems do): its NFKC
/// form holds a `.`, `/`, `\`, `;`, `%`, `?` or `#` the segment itself does not (U+2025 TWO
/// DOT LEADER is `..`, U+FF0F FULLWIDTH SOLIDUS is `/`), or one of the slash-like characters
/// that no normalization maps but some servers fold (U+2215, U+2044).
fn reads_differently_normalized(seg: &str) -> bool {
    use unicode_normalization::UnicodeNormalization as _;
    const SIGNIFICANT: [char; 7] = ['.', '/', '\\', ';', '%', '?', '#'];
    if seg.is_ascii() {
        return false;
    }
    if seg.contains(['\u{2215}', '\u{2044}', '\u{29F8}', '\u{29F9}']) {
        return true;
    }
    let count = |s: &str, c: char| s.chars().filter(|x| *x == c).count();
    let normalized: String = seg.nfkc().collect();
    SIGNIFICANT
        .iter()
        .any(|c| count(&normalized, *c) != count(seg, *c))
}

/// A request path decoded once into segments, or `None` when it must match no rule and no
/// scope: malformed escapes, dot segments, an encoded `/`, a `\\`, or a `;` (some servers read
/// `;` as a parameter separator, so `/public/..;/admin` could mean `/admin` upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath(Vec<String>);

/// Each segment of a path (after its leading `/`) decoded once; an item is `None` where a
/// segment must match nothing (the rules of [`RequestPath`]), and the whole is `None` for a
/// path that does not start with `/`.
fn decoded_segments(path: &str) -> Option<impl Iterator<Item = Option<Cow<'_, str>>>> {
    let rest = path.strip_prefix('/')?;
    Some(rest.split('/').map(|raw| {
        percent_decode(raw)
            .filter(|seg| !(seg == "." || seg == ".." || seg.contains(['/', '\\', ';', '#'])))
    }))
}

impl RequestPath {
    pub fn parse(path: &str) -> Option<Self> {
        decoded_segments(path)?
            .map(|seg| seg.map(Cow::into_owned))
            .collect::<Option<Vec<_>>>()
            .map(Self)
    }

    pub fn segments(&self) -> &[String] {
        &self.0
    }
}

/// One parsed `scope` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeEntry {
    method: String,
    path: RequestPath,
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
            path: RequestPath::parse(target.path)?,
            query: normalized_query(target.query)?,
        })
    }

    pub fn method(&self) -> &str {
        &self.method
    }

    pub fn path(&self) -> &RequestPath {
        &self.path
    }

    /// How many strings the parsed entry holds (path segments and query names and values):
    /// what it costs in memory beyond the token's bytes.
    pub fn parts(&self) -> usize {
        self.path.segments().len() + 2 * self.query.len()
    }

    /// Whether the request is the one this entry names. A request whose path or query does not
    /// decode cleanly matches nothing.
    pub fn matches(&self, target: &RequestTarget<'_>) -> bool {
        self.method == target.method
            && RequestPath::parse(target.path).is_some_and(|p| p == self.path)
            && normalized_query(target.query).is_some_and(|q| q == self.query)
    }
}

/// The query as a sorted multiset of decoded pairs without the paging parameters; `None` if
/// anything in it does not decode.
///
/// A raw `;` also fails: some servers read it as a separator like `&`, so
/// `?limit=1;filter=MAC&filter=IOS` would mean another query to them than to keygate.
fn normalized_query(query: &str) -> Option<Vec<(String, String)>> {
    if query.contains([';', '#']) {
        return None;
    }
    let mut pairs = Vec::new();
    for p in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let k = form_decode(k)?;
        if !IGNORED_PARAMS.contains(&k.as_str()) {
            pairs.push((k, form_decode(v)?));
        }
    }
    pairs.sort();
    Some(pairs)
}

fn form_decode(s: &str) -> Option<String> {
    if s.contains('+') {
        percent_decode(&s.replace('+', " ")).map(Cow::into_owned)
    } else {
        percent_decode(s).map(Cow::into_owned)
    }
}

/// Strictly decodes `%XX` escapes: `None` for an escape without two hex digits, for bytes that
/// are not UTF-8, and for control characters. Failing closed means a request that a gateway or
/// upstream might read differently matches no rule and no scope.
pub fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return (!s.chars().any(char::is_control)).then_some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let (hi, lo) = (bytes.get(i + 1)?, bytes.get(i + 2)?);
            let digit = |c: u8| char::from(c).to_digit(16);
            out.push(u8::try_from(digit(*hi)? * 16 + digit(*lo)?).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    (!text.chars().any(char::is_control)).then_some(Cow::Owned(text))
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
        // Malformed or ambiguous encodings match nothing.
        check("GET /v1/apps/%C3%A9", "GET", "/v1/apps/%C3%A9", true);
        check("GET /v1/apps?a=1", "GET", "/v1/apps?a=%+1", false);
        check("GET /v1/apps/x", "GET", "/v1/apps/x%00", false);
        assert!(ScopeEntry::parse("GET /v1/apps/%FF").is_none());
        check("GET /v1/r/a/b", "GET", "/v1/r/a%2Fb", false);
        check("GET /v1/r/a", "GET", "/v1/r/x/../a", false);
        check("GET /v1/r/a", "GET", "/v1/r/a;x=1", false);
        assert!(ScopeEntry::parse("GET /v1/r/..;/admin").is_none());
    }

    /// The hostile table of every way in (the differential tests send it through real
    /// gateways): each is refused before any key or policy is looked at.
    #[test]
    fn ambiguous_targets_are_refused_for_every_key() {
        let refused = [
            "/../internal",
            "/./../x",
            "/v1/../../x",
            "/v1/echo/%2e%2e/admin",
            "/v1/echo/%2E%2e/admin",
            "/v1/echo/.%2e/admin",
            "/v1/echo/%252e%252e/admin",
            "/v1/echo/a%2fb",
            "/v1/echo/a%5cb",
            "/v1/echo/a\\b",
            "/v1/echo/x%00",
            "/v1/apps/x#/../../../admin",
            "/v1/apps/x?a=1#/../admin",
            "/v1/echo/..;/admin",
            "/v1/echo;x=1",
            "//admin",
            "/v1//echo",
            "/v1/echo/%EF%BC%8E%EF%BC%8E/admin",
            "/v1/echo/%E2%80%A5/%E2%80%A5/other",
            "/v1/echo/%EF%B8%B0/x",
            "/v1/echo/a%EF%BC%85%32%65",
            "/v1/echo/a%EF%BC%9Bx=1",
            "/v1/echo/a%EF%BC%9F/x",
            "/v1/echo/a%EF%BC%83/x",
            "/v1/echo/%E2%84%80",
            "/v1/echo/a%E2%88%95b",
            "/v1/echo/%c0%ae%c0%ae/admin",
            "/v1/echo/a?_method=DELETE",
            "/v1/echo/a?x=1&_METHOD=DELETE",
            "/v1/echo/a?+_method=DELETE",
            "/v1/echo/a?%20_method=DELETE",
            "/v1/echo/a?%5Fmethod=DELETE",
            "/v1/echo/%",
            "v1/echo",
            "",
        ];
        for uri in refused {
            assert!(
                RequestTarget::from_uri("GET", uri)
                    .check_unambiguous()
                    .is_err(),
                "{uri:?} must be refused"
            );
        }
        let long = format!("/v1/{}", "a".repeat(MAX_TARGET_BYTES));
        assert!(
            RequestTarget::from_uri("GET", &long)
                .check_unambiguous()
                .is_err()
        );
        for uri in [
            "/",
            "/v1/echo/a",
            "/v1/echo/a/",
            "/v1/echo/a?x=1&y=%2F",
            "/v1/apps/%C3%A9",
            "/v1/echo/a.b/..c",
            "/v1/echo/%C3%A9t%C3%A9",
            "/v1/echo/%E6%97%A5%E6%9C%AC",
            "/v1/echo/a?method=x",
        ] {
            assert_eq!(
                RequestTarget::from_uri("GET", uri).check_unambiguous(),
                Ok(()),
                "{uri:?} must pass"
            );
        }
        for method in ["get", "Get", "", "G ET", "GET\t"] {
            assert!(
                RequestTarget::from_uri(method, "/v1/echo/a")
                    .check_unambiguous()
                    .is_err(),
                "{method:?} must be refused"
            );
        }
    }

    /// `;` is a separator to some servers: a scope naming query parameters matches no query
    /// that holds one.
    #[test]
    fn a_semicolon_in_the_query_matches_no_scope() {
        check(
            "GET /v1/apps?filter[platform]=IOS",
            "GET",
            "/v1/apps?limit=1;filter[platform]=MAC&filter[platform]=IOS",
            false,
        );
        check("GET /v1/apps?q=a%3Bb", "GET", "/v1/apps?q=a%3Bb", true);
    }

    #[test]
    fn decoding_is_strict() {
        assert_eq!(percent_decode("a%41b").as_deref(), Some("aAb"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        for bad in ["%", "%4", "%+1", "%zz", "%FF", "%C3", "a%0Ab", "tab\there"] {
            assert!(percent_decode(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn rejects_malformed_entries() {
        for bad in ["", "GET", "get /v1/apps", "GET v1/apps", "GET /a b", " /v1"] {
            assert!(ScopeEntry::parse(bad).is_none(), "{bad:?}");
        }
    }
}
